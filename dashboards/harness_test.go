package dashboards

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requireProgram finds an outside program the test needs. Missing, it
// skips the test with a warning on stderr (shown without -v), unless CI is
// set, where it fails: CI must install it.
func requireProgram(t *testing.T, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed (Debian package %s: apt-get install -y --no-install-recommends %s)", name, debianPackage, debianPackage)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s, and CI=true: CI must install it", msg)
	}
	fmt.Fprintf(os.Stderr, "\n*** WARNING: %s SKIPPED: %s ***\n\n", t.Name(), msg)
	t.Skip(msg)
	return ""
}

// repoRoot is the worker's repository: the parent of this module.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(wd)
	if _, err := os.Stat(filepath.Join(root, "cmd", "pageviews")); err != nil {
		t.Fatalf("expected the worker's repository above %s: %v", wd, err)
	}
	return root
}

// goBuild builds pkg in dir's module into out.
func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s (in %s): %v\n%s", pkg, dir, err, b)
	}
}

// syncBuffer collects a child's output for the test to read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a child process the test started; it is stopped (TERM, then
// KILL) when the test ends, and killed with the test process if that dies.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// start runs bin with args and env. Each stdout line goes to onLine (when
// set) as well as to the process's output buffer.
func start(t *testing.T, name, bin string, args, env []string, onLine func(string)) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stderr = p.out
	// Its own process group, so a terminal's Ctrl-C reaches only the test;
	// killed when the test process dies (a -timeout panic runs no cleanup).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			_, _ = p.out.Write([]byte(line + "\n"))
			if onLine != nil {
				onLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail is the end of the process's output, for failure messages.
func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.out.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s (last %d lines) ---\n%s", p.name, len(lines), strings.Join(lines, "\n"))
}

// freePort reserves a free port on the loopback address for network
// ("tcp" or "udp") and releases it for a child to take.
func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
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
func eventually(t *testing.T, deadline time.Time, what string, procs []*proc, cond func() (bool, string)) {
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
			if p.exited() {
				t.Fatalf("%s: %s exited\n%s", what, p.name, p.tail(40))
			}
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, p := range procs {
				b.WriteString(p.tail(15) + "\n")
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
