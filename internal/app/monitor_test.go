package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/test/harness"
)

// xssKey is a table key that is markup: the page must show it as text.
const xssKey = "<img src=x onerror=alert(1)>"

// monitorState is the part of GET /monitor/state the test reads.
type monitorState struct {
	Self  string
	Group struct {
		Name         string
		Generation   int32
		MembersStale bool `json:"members_stale"`
		Members      []struct {
			URL        string
			Partitions []int32
			Self       bool
		}
	}
	Partitions []struct {
		Partition int32
		State     string
		Lag       *struct{ Records int64 }
	}
	Rebalances []struct {
		Generation int32
		Partitions []struct {
			Partition  int32
			Event      string
			RecoveryMs *int64 `json:"recovery_ms"`
		}
	}
	Tables []struct {
		Name string
		Keys int64
	}
	Charts []struct {
		Table string
		Keys  []struct {
			Key    string
			Counts []float64
		}
	}
}

func (s *monitorState) charted(key string) bool {
	for _, c := range s.Charts {
		if slices.ContainsFunc(c.Keys, func(k struct {
			Key    string
			Counts []float64
		}) bool {
			return k.Key == key
		}) {
			return true
		}
	}
	return false
}

func (s *monitorState) count(state string) (n int) {
	for _, p := range s.Partitions {
		if p.State == state {
			n++
		}
	}
	return n
}

// TestMonitorPage: every worker serves GET /monitor/, a page that reads
// GET /monitor/state. Two sums workers (so there are members, standby
// copies and rebalances to show) count amounts, one keyed by markup. The
// state names the group, its members and their URLs, this worker's
// partitions and their lag, the rebalances with each partition's
// recovery, the tables and the busiest keys. Then Chromium loads the page:
// it draws the partitions and the chart, shows the markup key as text and
// creates no element from it; and when the state stops answering, it keeps
// the last data and says it is stale.
func TestMonitorPage(t *testing.T) {
	brokers := startCluster(t)
	vars := func() map[string]string {
		return map[string]string{
			"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
			"PARTITIONS": "4", "COMMIT_INTERVAL": "100ms", "LIVECHECK_INTERVAL": "0", "KAFKA_GROUP": "sums-monitor",
			"AMOUNTS_TOPIC": "amounts-monitor", "KAFKA_SESSION_TIMEOUT": "6s", "METRICS_INTERVAL": "200ms",
			"TABLE_STANDBY_REPLICAS": "1",
		}
	}
	first := startSums(t, vars())
	first.waitReady(t)
	second := startSums(t, vars())
	second.waitReady(t)

	want := map[string]int64{}
	sender(t, brokers, "amounts-monitor", want)(60, 0)
	sendAmount(t, brokers, "amounts-monitor", xssKey, 400)

	// The worker that holds the markup key's partition, once it shows the
	// key, the two members, a lag sample and a standby copy.
	var w *sumsWorker
	var st monitorState
	eventuallyTrue(t, "a worker's monitor state shows the markup key, two members, lag and a standby copy", func() bool {
		for _, c := range []*sumsWorker{first, second} {
			// A member list caught mid-rebalance is marked stale: wait
			// for a settled one.
			if readMonitorState(t, c, &st) && st.charted(xssKey) && len(st.Group.Members) == 2 && !st.Group.MembersStale &&
				st.count("standby") > 0 && slices.ContainsFunc(st.Partitions, func(p struct {
				Partition int32
				State     string
				Lag       *struct{ Records int64 }
			}) bool {
				return p.Lag != nil
			}) {
				w = c
				return true
			}
		}
		return false
	})
	checkMonitorState(t, w, &st)

	chromium := harness.RequireProgram(t, "chromium", "chromium")
	t.Run("page", func(t *testing.T) {
		dom := browse(t, chromium, w.base+"/monitor/", "--dump-dom")
		checkMonitorDOM(t, dom)
		if !strings.Contains(dom, `<span class="key mono">&lt;img src=x onerror=alert(1)&gt;</span>`) {
			t.Errorf("the chart's legend does not show the markup key as text:\n%s", dom)
		}
		shot := filepath.Join(t.TempDir(), "monitor.png")
		browse(t, chromium, w.base+"/monitor/", "--screenshot="+shot, "--window-size=1280,1000", "--hide-scrollbars")
		if os.Getenv("UPDATE_SCREENSHOT") == "1" {
			b, err := os.ReadFile(shot)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("..", "..", "docs", "monitor.png"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("stale", func(t *testing.T) { checkMonitorStale(t, chromium, w.base) })
}

// checkMonitorStale loads the page through a proxy that answers the first
// state and fails every later one, as a worker does that a rolling restart
// took away: the page asks again, keeps its data and says it is stale.
func checkMonitorStale(t *testing.T, chromium, base string) {
	t.Helper()
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var states atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/monitor/state" && states.Add(1) > 1 {
			http.Error(rw, "restarting", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	dom := browse(t, chromium, srv.URL+"/monitor/", "--dump-dom")
	if states.Load() < 2 {
		t.Fatalf("the page asked for its state %d times, want it to try again after an answer", states.Load())
	}
	checkMonitorDOM(t, dom)
	if !strings.Contains(dom, `<body class="stale">`) || !strings.Contains(dom, "stale: the worker did not answer (HTTP 503)") {
		t.Errorf("the page does not say its data is stale after the state failed:\n%s", dom)
	}
}

// checkMonitorState checks what w's state says of the group, the
// partitions, the rebalances and the tables.
func checkMonitorState(t *testing.T, w *sumsWorker, st *monitorState) {
	t.Helper()
	if st.Self != w.base || st.Group.Name != "sums-monitor" || st.Group.Generation < 1 {
		t.Errorf("state names self %q, group %q, generation %d; want %q, sums-monitor, >= 1", st.Self, st.Group.Name, st.Group.Generation, w.base)
	}
	held := 0
	for _, m := range st.Group.Members {
		held += len(m.Partitions)
		if m.Self != (m.URL == w.base) || !strings.HasPrefix(m.URL, "http://127.0.0.1:") {
			t.Errorf("member %+v: want its advertised URL, and self only for %s", m, w.base)
		}
	}
	if held != 4 || st.count("processing") == 0 {
		t.Errorf("members hold %d partitions, this worker processes %d; want 4 and some", held, st.count("processing"))
	}
	resumed := 0
	for _, r := range st.Rebalances {
		for _, e := range r.Partitions {
			if e.Event == "resumed" && e.RecoveryMs != nil {
				resumed++
			}
		}
	}
	if resumed == 0 {
		t.Errorf("no rebalance lists a resumed partition with its recovery time: %+v", st.Rebalances)
	}
	names := map[string]int64{}
	for _, tb := range st.Tables {
		names[tb.Name] = tb.Keys
	}
	if names["sums"] == 0 || names["totals"] == 0 {
		t.Errorf("tables = %v, want keys in sums and totals", names)
	}
}

// checkMonitorDOM checks the page as Chromium left it: partition rows, a
// chart with bars, the markup key as text, and no element made of it.
func checkMonitorDOM(t *testing.T, dom string) {
	t.Helper()
	for _, want := range []string{`<tr class="partition`, `data-state="processing"`, `<svg`, `<rect class="bar c0"`,
		`<tr class="rebalance">`, `&lt;img src=x onerror=alert(1)&gt;`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s:\n%s", want, dom)
		}
	}
	if strings.Contains(strings.ToLower(dom), "<img") {
		t.Errorf("the page holds an <img> element: a key became markup:\n%s", dom)
	}
}

// browse runs headless Chromium on url with args (--dump-dom, or
// --screenshot=...) and returns its output. The virtual time budget lets
// the page's script poll a few times before Chromium dumps or shoots it.
func browse(t *testing.T, chromium, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}, args...)
	cmd := exec.CommandContext(ctx, chromium, append(args, url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func readMonitorState(t *testing.T, w *sumsWorker, st *monitorState) bool {
	t.Helper()
	code, body := w.get("/monitor/state")
	*st = monitorState{}
	return code == http.StatusOK && json.Unmarshal(body, st) == nil
}

// sendAmount sends one amount keyed key, partitioned as the workers'
// producer does.
func sendAmount(t *testing.T, brokers []string, topic, key string, amount int64) {
	t.Helper()
	pc := sarama.NewConfig()
	pc.Producer.Return.Successes = true
	pc.Producer.Partitioner = sarama.NewHashPartitioner
	p, err := sarama.NewSyncProducer(brokers, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key),
		Value: sarama.StringEncoder(fmt.Sprint(amount))}); err != nil {
		t.Fatal(err)
	}
}

// eventuallyTrue polls cond until it holds, or fails after a minute.
func eventuallyTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
