package dashboards

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

// TestMain removes the binaries the end-to-end test built.
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// goBuild builds pkg in dir's module into out.
func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s (in %s): %v\n%s", pkg, dir, err, b)
	}
}

// budget bounds the waits of a test: each wait has its own timeout, and
// none runs past the budget's end.
type budget struct{ end time.Time }

// within is the deadline of a wait of at most d.
func (b budget) within(d time.Duration) time.Time {
	if t := time.Now().Add(d); t.Before(b.end) {
		return t
	}
	return b.end
}

// eventually polls cond until it holds or the deadline passes; it fails at
// once when one of procs exits.
func eventually(t *testing.T, deadline time.Time, what string, procs []*harness.Proc, cond func() (bool, string)) {
	t.Helper()
	began := time.Now()
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		for _, p := range procs {
			if !p.Running() {
				t.Fatalf("%s: %s exited (%v)\n%s", what, p.Name, p.Err(), p.Tail(40))
			}
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, p := range procs {
				b.WriteString(p.Tail(15))
			}
			t.Fatalf("%s: not after %s (last: %s)\n%s", what, time.Since(began).Round(time.Millisecond), last, b.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// httpGet fetches url and returns the status and body.
func httpGet(url string) (int, []byte, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// promClient queries a Prometheus server's HTTP API.
type promClient struct{ base string }

// sample is one series of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return 0
	}
	return f
}

type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
}

func (c promClient) get(path string, params url.Values) (json.RawMessage, error) {
	status, body, err := httpGet(c.base + path + "?" + params.Encode())
	if err != nil {
		return nil, err
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s: status %d: %s", path, status, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// query runs an instant query and returns its series (a vector or a
// scalar as one series).
func (c promClient) query(q string) ([]sample, error) {
	data, err := c.get("/api/v1/query", url.Values{"query": {q}})
	if err != nil {
		return nil, err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	switch d.ResultType {
	case "vector":
		var out []sample
		err := json.Unmarshal(d.Result, &out)
		return out, err
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return nil, err
		}
		return []sample{{Value: v}}, nil
	}
	return nil, fmt.Errorf("result type %s", d.ResultType)
}

// scalar is the sum of a query's values (0 with no series).
func (c promClient) scalar(q string) (float64, error) {
	s, err := c.query(q)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, x := range s {
		sum += x.value()
	}
	return sum, nil
}

// labelValues lists the values of label over the series matching match.
func (c promClient) labelValues(label, match string) ([]string, error) {
	data, err := c.get("/api/v1/label/"+label+"/values", url.Values{"match[]": {match}})
	if err != nil {
		return nil, err
	}
	var out []string
	err = json.Unmarshal(data, &out)
	return out, err
}
