package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PollInterval is how often the waits of this package ask again.
const PollInterval = 25 * time.Millisecond

// Worker is a worker process (cmd/pageviews) and its HTTP address.
type Worker struct {
	*Proc
	Base   string            // http://127.0.0.1:PORT, from its "http listening" line
	Env    map[string]string // what it was started with
	dir    string            // where its output goes
	client *http.Client
}

// WorkerEnv returns the settings a test worker needs, with each of extra
// on top in turn: HTTP on a free loopback port, DATA_DIR, the JSON log the
// harness reads, and a SHUTDOWN_TIMEOUT that Stop waits for.
func WorkerEnv(dataDir string, extra ...map[string]string) map[string]string {
	env := map[string]string{
		"WEB_ADDR": "127.0.0.1:0",
		// With the embedded broker, the embedded registry on a port of
		// its own (workers of a test run side by side).
		"EMBEDDED_REGISTRY_ADDR": "127.0.0.1:0",
		"DATA_DIR":               dataDir,
		"LOG_FORMAT":             "json",
		"SHUTDOWN_TIMEOUT":       "20s",
	}
	for _, e := range extra {
		maps.Copy(env, e)
	}
	return env
}

// StartWorker starts the worker with env, its output in dir/<name>.*, and
// waits until it serves HTTP. Each start needs a name of its own.
func StartWorker(t testing.TB, dir, name string, env map[string]string) *Worker {
	t.Helper()
	p := Start(t, dir, name, WorkerBinary(t), nil, env)
	e := p.WaitEntry(t, 60*time.Second, "http listening")
	addr := e.Str("addr")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("%s: http listening on %q: %v", name, addr, err)
	}
	// A client of its own: Stop closes its idle connections.
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 64,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		},
	}
	return &Worker{Proc: p, Base: "http://" + addr, Env: env, dir: dir, client: client}
}

// Restart starts a new process with the same settings, once this one has
// exited.
func (w *Worker) Restart(t testing.TB, name string) *Worker {
	t.Helper()
	if w.Running() {
		t.Fatalf("%s is still running", w.Name)
	}
	return StartWorker(t, w.dir, name, w.Env)
}

// Stop sends TERM and requires exit status 0 within SHUTDOWN_TIMEOUT.
func (w *Worker) Stop(t testing.TB) {
	t.Helper()
	timeout, err := time.ParseDuration(w.Env["SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Fatalf("SHUTDOWN_TIMEOUT %q: %v", w.Env["SHUTDOWN_TIMEOUT"], err)
	}
	// The transport dials in the background and parks connections it did
	// not use, and a shutdown with such a connection open waits for it
	// (see e2e's TestTermWhileClientsConnectExits0).
	w.client.CloseIdleConnections()
	w.Signal(t, syscall.SIGTERM)
	if code := w.WaitExit(t, timeout); code != 0 {
		t.Fatalf("%s: exit status %d after TERM, want 0", w.Name, code)
	}
}

// Get requests path and returns the status and the body.
func (w *Worker) Get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.Base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// GetJSON requests path, requires status want and decodes the body into v.
func (w *Worker) GetJSON(t testing.TB, path string, want int, v any) {
	t.Helper()
	status, body, err := w.Get(context.Background(), path)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", w.Name, path, err)
	}
	if status != want {
		t.Fatalf("%s: GET %s: status %d, want %d; body %s", w.Name, path, status, want, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("%s: GET %s: body is not the expected JSON: %v: %s", w.Name, path, err, body)
	}
}

// Ready asks /ready/ once and reports whether it answered 200, and
// otherwise what it answered.
func (w *Worker) Ready(ctx context.Context) (bool, string) {
	if !w.Running() {
		return false, fmt.Sprintf("%s exited (%v)", w.Name, w.Err())
	}
	status, body, err := w.Get(ctx, "/ready/")
	if err != nil {
		return false, err.Error()
	}
	return status == http.StatusOK, fmt.Sprintf("%d %s", status, strings.TrimSpace(string(body)))
}

// WaitReady polls /ready/ until it answers 200 {"ready":true}: the worker
// has joined its group and recovered every partition it was assigned. Any
// answer but that or 503 {"ready":false} with a reason fails the test.
func (w *Worker) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		if !w.Running() {
			t.Fatalf("%s exited (%v) before it was ready (last /ready/: %s)", w.Name, w.Err(), last)
		}
		status, body, err := w.Get(context.Background(), "/ready/")
		if err == nil {
			var r struct {
				Ready  bool   `json:"ready"`
				Reason string `json:"reason"`
			}
			if jerr := json.Unmarshal(body, &r); jerr != nil {
				t.Fatalf("%s: /ready/ answered %d with non-JSON %q", w.Name, status, body)
			}
			switch {
			case status == http.StatusOK && r.Ready:
				return
			case status == http.StatusServiceUnavailable && !r.Ready && r.Reason != "":
				last = fmt.Sprintf("503 %s", body)
			default:
				t.Fatalf("%s: /ready/ answered %d %s; want 200 ready:true or 503 ready:false with a reason", w.Name, status, body)
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready within %s (last /ready/: %s)", w.Name, timeout, last)
		}
		time.Sleep(PollInterval)
	}
}

// Count calls /count/ for page and returns the counter it answers.
func (w *Worker) Count(t testing.TB, page string) int64 {
	t.Helper()
	var r struct {
		Count *int64 `json:"count"`
	}
	w.GetJSON(t, "/count/?page="+url.QueryEscape(page), http.StatusOK, &r)
	if r.Count == nil {
		t.Fatalf("%s: /count/ answered without a count", w.Name)
	}
	return *r.Count
}

// TryCount is Count for goroutines: it returns what went wrong instead of
// failing the test.
func (w *Worker) TryCount(ctx context.Context, page string) error {
	status, body, err := w.Get(ctx, "/count/?page="+url.QueryEscape(page))
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("/count/?page=%s: status %d: %s", page, status, body)
	}
	return nil
}

// SendViews calls /count/ once per element of pages, from concurrency
// goroutines, and fails the test on the first call that does not answer
// 200.
func (w *Worker) SendViews(t testing.TB, pages []string, concurrency int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	work := make(chan string)
	errs := make(chan error, concurrency)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for p := range work {
				if err := w.TryCount(ctx, p); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
feed:
	for _, p := range pages {
		select {
		case work <- p:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("%s: %v", w.Name, err)
	default:
	}
}
