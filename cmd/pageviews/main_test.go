package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/store"
)

// env returns a getenv over m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// lineWatcher is an io.Writer for the worker's log that hands each JSON
// line to the watchers waiting for a message.
type lineWatcher struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   strings.Builder
	buf   []byte
	wake  chan struct{}
}

func newLineWatcher() *lineWatcher { return &lineWatcher{wake: make(chan struct{})} }

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.raw.Write(p)
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		var m map[string]any
		if json.Unmarshal(w.buf[:i], &m) == nil {
			w.lines = append(w.lines, m)
		}
		w.buf = w.buf[i+1:]
	}
	close(w.wake)
	w.wake = make(chan struct{})
	return len(p), nil
}

// wait returns the first log line whose msg is msg, waiting up to timeout.
func (w *lineWatcher) wait(t testing.TB, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		for _, l := range w.lines {
			if l["msg"] == msg {
				w.mu.Unlock()
				return l
			}
		}
		wake := w.wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-deadline:
			t.Fatalf("no log line %q within %s; log:\n%s", msg, timeout, w.String())
		}
	}
}

// all returns every log line whose msg is one of msgs, in the log's order.
func (w *lineWatcher) all(msgs ...string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range w.lines {
		if msg, _ := l["msg"].(string); slices.Contains(msgs, msg) {
			out = append(out, l)
		}
	}
	return out
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.raw.String()
}

// held is a worker's answer to /report/?local=1: the partitions it holds
// and their pages' counts, summed.
type held struct {
	Partitions []int32                    `json:"partitions"`
	Pages      map[string]pageview.Counts `json:"pages"`
}

// heldViews is the total of the views the worker at base holds.
func heldViews(t testing.TB, base string) int64 {
	var h held
	getJSON(t, base+"/report/?local=1", &h)
	n := int64(0)
	for _, c := range h.Pages {
		n += c.Count
	}
	return n
}

// getJSON fetches url and decodes its JSON body into v; it returns the status.
func getJSON(t testing.TB, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: status %d, body %q is not JSON: %v", url, resp.StatusCode, body, err)
		}
	}
	return resp.StatusCode
}

// waitReady polls /ready/ until it answers 200.
func waitReady(t testing.TB, base string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(base + "/ready/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/ready/ not 200 within %s (last error %v)", base, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; last: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunEndToEnd starts the worker through run, as main does, on the
// embedded broker and free ports, counts two pages and reads the report.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	startWindow := windowOf(time.Now())
	base := startRun(t)
	want := map[string]int{"/home": 3, "/about": 2}
	acked := countPages(t, base, want)
	checkEndToEndReport(t, base, want, acked, startWindow)

	var one pageview.Report
	getJSON(t, base+"/report/?page=/about", &one)
	if len(one.Pages) != 1 || one.Count != 2 {
		t.Errorf("?page=/about gave %+v, want only /about with count 2", one)
	}
	checkErrorAnswers(t, base)
}

// startRun starts the worker through run on the embedded broker, with 24h
// windows, and returns its base URL once it is ready. It is stopped at
// cleanup.
func startRun(t *testing.T) string {
	t.Helper()
	logs := newLineWatcher()
	ctx, cancel := context.WithCancel(context.Background())
	dataDir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env(map[string]string{
			"WEB_ADDR":               "127.0.0.1:0",
			"EMBEDDED_KAFKA_ADDR":    "127.0.0.1:0",
			"EMBEDDED_REGISTRY_ADDR": "127.0.0.1:0",
			"DATA_DIR":               dataDir,
			"WINDOW_SIZE":            "24h",
			"WINDOW_EXPIRES":         "48h",
			"COMMIT_INTERVAL":        "100ms",
		}), logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("run did not return after cancel")
		}
	})
	base := "http://" + logs.wait(t, "http listening", 30*time.Second)["addr"].(string)
	waitReady(t, base, 30*time.Second)
	return base
}

// countPages counts want[page] views of each page through /count/ at base,
// checking that each answer is this process's counter, and returns how
// many views were acknowledged.
func countPages(t *testing.T, base string, want map[string]int) int64 {
	t.Helper()
	var acked int64
	for page, n := range want {
		for range n {
			var c struct{ Count int64 }
			if st := getJSON(t, base+"/count/?page="+page, &c); st != http.StatusOK {
				t.Fatalf("/count/ status %d", st)
			}
			acked++
			if c.Count != acked {
				t.Fatalf("/count/ answered count %d, want this process's counter %d", c.Count, acked)
			}
		}
	}
	return acked
}

// checkEndToEndReport waits until /report/ at base shows all acked views,
// then checks each page of want: its total, its views in the window of
// now unless the test straddled a window boundary since startWindow, and
// the report of /home.
func checkEndToEndReport(t *testing.T, base string, want map[string]int, acked, startWindow int64) {
	t.Helper()
	var rep pageview.Report
	eventually(t, 10*time.Second, "report shows every acknowledged view", func() (bool, string) {
		rep = pageview.Report{}
		getJSON(t, base+"/report/", &rep)
		return rep.Count == acked, fmt.Sprintf("%+v", rep)
	})
	for page, n := range want {
		got := rep.Pages[page]
		if got.Count != int64(n) {
			t.Errorf("%s count = %d, want %d", page, got.Count, n)
		}
		// The 24h window of now holds every view unless the test straddled
		// a window boundary; then only the totals are comparable.
		if got.Now != int64(n) && windowOf(time.Now()) == startWindow {
			t.Errorf("%s page_views_within_1_minute = %d, want %d", page, got.Now, n)
		}
	}
	if rep.Pages["/home"].Report != pageview.NotEnough {
		t.Errorf("/home report = %q, want %q", rep.Pages["/home"].Report, pageview.NotEnough)
	}
}

// checkErrorAnswers checks that the worker at base answers an unknown path
// with 404 and a POST to /count/ with 405, each with a JSON error.
func checkErrorAnswers(t *testing.T, base string) {
	t.Helper()
	var e struct{ Error string }
	if st := getJSON(t, base+"/nope", &e); st != http.StatusNotFound || e.Error == "" {
		t.Errorf("unknown path: status %d error %q, want 404 with a JSON error", st, e.Error)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/count/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || !json.Valid(body) {
		t.Errorf("POST /count/: status %d body %q, want 405 with a JSON error", resp.StatusCode, body)
	}
}

func windowOf(t time.Time) int64 { return t.Truncate(24 * time.Hour).Unix() }

func TestRunRejectsBadConfig(t *testing.T) {
	err := run(context.Background(), nil, env(map[string]string{"WINDOW_SIZE": "banana"}), io.Discard)
	var cerr *config.Error
	if !errors.As(err, &cerr) || cerr.Var != "WINDOW_SIZE" {
		t.Fatalf("run with WINDOW_SIZE=banana returned %v, want a config error naming WINDOW_SIZE", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("config error spans several lines: %q", err)
	}
}

// TestRunRefusesALockedDataDir starts a second worker on the DATA_DIR of a
// running one, both with the embedded broker: the second must fail with
// the store's lock error before it starts a broker on the first one's data.
func TestRunRefusesALockedDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dataDir := t.TempDir()
	cfg := map[string]string{
		"WEB_ADDR":               "127.0.0.1:0",
		"EMBEDDED_KAFKA_ADDR":    "127.0.0.1:0",
		"EMBEDDED_REGISTRY_ADDR": "127.0.0.1:0",
		"DATA_DIR":               dataDir,
	}
	logs := newLineWatcher()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, env(cfg), logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("first worker: run returned %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("first worker: run did not return after cancel")
		}
	})
	logs.wait(t, "http listening", 60*time.Second)

	second := newLineWatcher()
	err := run(context.Background(), nil, env(cfg), second)
	var locked *store.LockedError
	if !errors.As(err, &locked) {
		t.Fatalf("second worker on the same DATA_DIR: run returned %v, want a *store.LockedError", err)
	}
	if want := filepath.Join(dataDir, "state"); !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q should name %s in one line", err, want)
	}
	if n := len(second.all("KAFKA_BROKERS is empty: started the embedded dev broker; it is for development only, set KAFKA_BROKERS in production")); n != 0 {
		t.Errorf("the second worker started an embedded broker on the first one's data")
	}
}

// tableNames are the example's windowed and plain tables, named as its
// declaration names them (a generated worker renames them there).
func tableNames() (views, totals string) {
	ts := pageview.App().Tables
	return ts[0].Name(), ts[1].Name()
}
