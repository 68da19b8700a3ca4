package main

import (
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/window"
	"github.com/gofaust/pageviews/test/harness"
)

// fakeClock is a settable clock shared by the worker and the test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// TestMain removes the dev broker binary the tests built.
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// startDevBroker starts cmd/devbroker as its own process, with its data in
// a temporary directory, and returns its address. The process is stopped at
// cleanup.
func startDevBroker(t testing.TB) string {
	t.Helper()
	return harness.StartBroker(t, t.TempDir(), "-data-dir", t.TempDir()).Addr
}

// worker is a worker run in-process with an injected clock.
type worker struct {
	base   string
	logs   *lineWatcher
	cancel context.CancelFunc
	done   chan error
}

func startWorker(t testing.TB, vars map[string]string, clock func() time.Time) *worker {
	t.Helper()
	w := launchWorker(t, vars, clock)
	waitReady(t, w.base, 30*time.Second)
	return w
}

// launchWorker starts a worker and returns once it listens, without
// waiting for it to be ready, so a test can watch its start and recovery.
func launchWorker(t testing.TB, vars map[string]string, clock func() time.Time) *worker {
	t.Helper()
	return launchWorkerWith(t, vars, app.Hooks{Clock: clock})
}

// launchWorkerWith is launchWorker with test hooks into the worker.
func launchWorkerWith(t testing.TB, vars map[string]string, hooks app.Hooks) *worker {
	t.Helper()
	cfg, err := loadConfig(env(vars))
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{logs: newLineWatcher(), done: make(chan error, 1)}
	log := slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	addr := make(chan string, 1)
	hooks.Listening = func(a string) { addr <- a }
	go func() { w.done <- runWorker(ctx, cfg, log, hooks) }()
	select {
	case a := <-addr:
		w.base = "http://" + a
	case err := <-w.done:
		t.Fatalf("worker stopped before listening: %v\n%s", err, w.logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("worker not listening within 30s\n%s", w.logs)
	}
	t.Cleanup(func() { w.stop(t) })
	return w
}

// stop shuts the worker down warmly and waits for it; stopping twice is fine.
func (w *worker) stop(t testing.TB) {
	t.Helper()
	if w.cancel == nil {
		return
	}
	w.cancel()
	w.cancel = nil
	select {
	case err := <-w.done:
		if err != nil {
			t.Errorf("worker returned %v\n%s", err, w.logs)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("worker did not stop within 30s")
	}
}

// storedWindowStarts lists the window starts the views table holds on disk
// for partition 0, read straight from the store of a stopped worker.
func storedWindowStarts(t testing.TB, dataDir string) map[int64]int {
	t.Helper()
	db, _, err := store.Open(filepath.Join(dataDir, "state"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	starts := map[int64]int{}
	views, _ := tableNames()
	err = db.Scan(views, 0, nil, func(k, _ []byte) error {
		starts[int64(binary.BigEndian.Uint64(k)^(1<<63))]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return starts
}

// TestExpiryAcrossRestart drives event time with an injected clock: a
// window older than WINDOW_EXPIRES disappears from reads and from the store,
// and stays gone after a restart that rebuilds the store from the changelog.
func TestExpiryAcrossRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	dataDir := t.TempDir()
	vars := map[string]string{
		"KAFKA_BROKERS":   brokers,
		"WEB_ADDR":        "127.0.0.1:0",
		"DATA_DIR":        dataDir,
		"PARTITIONS":      "1", // one partition, so one watermark governs both pages
		"WINDOW_SIZE":     "1m",
		"WINDOW_EXPIRES":  "5m",
		"COMMIT_INTERVAL": "50ms",
	}
	win := window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}
	// Event times near the real date, so broker retention keeps the
	// changelog, but in the middle of a window of the fake clock.
	t0 := time.Now().Truncate(time.Minute).Add(30 * time.Second)
	clock := &fakeClock{now: t0}

	w := startWorker(t, vars, clock.Now)
	expireOldWindow(t, w, clock, t0)
	clock.Set(t0.Add(10 * time.Minute))
	w.stop(t)

	oldStart := win.Start(t0)
	if n := storedWindowStarts(t, dataDir)[oldStart]; n != 0 {
		t.Errorf("store still holds %d keys of the expired window", n)
	}

	// Rebuild the store from the changelog: the old window must not come back.
	if err := os.RemoveAll(filepath.Join(dataDir, "state")); err != nil {
		t.Fatal(err)
	}
	w = startWorker(t, vars, clock.Now)
	if got := w.logs.all("recovering"); len(got) == 0 {
		t.Fatalf("restart logged no recovery")
	}
	clock.Set(t0)
	checkOldExpired(t, w, "after recovery from the changelog")
	clock.Set(t0.Add(10 * time.Minute))
	if r := reportOf(t, w); r.Pages["/new"].Now != 1 {
		t.Errorf("after recovery /new = %+v, want 1 in the window of now", r.Pages["/new"])
	}
	w.stop(t)
	starts := storedWindowStarts(t, dataDir)
	if starts[oldStart] != 0 {
		t.Errorf("recovered store holds %d keys of the expired window", starts[oldStart])
	}
	if starts[win.Start(t0.Add(10*time.Minute))] != 1 {
		t.Errorf("recovered store lacks the live window: %v", starts)
	}
}

// expireOldWindow counts three views of /old at t0, then moves event time
// on until /old's window expires, and checks that, read as of t0, the
// window is gone and its total stays. It leaves the clock at t0.
func expireOldWindow(t *testing.T, w *worker, clock *fakeClock, t0 time.Time) {
	t.Helper()
	for range 3 {
		getJSON(t, w.base+"/count/?page=/old", nil)
	}
	eventually(t, 10*time.Second, "/old counted in its window", func() (bool, string) {
		r := reportOf(t, w)
		return r.Pages["/old"].Now == 3, strings.TrimSpace(w.logs.String()[max(0, len(w.logs.String())-400):])
	})

	// Ten minutes of event time later, one view of another page moves the
	// partition's watermark past the old window's expiry.
	clock.Set(t0.Add(10 * time.Minute))
	getJSON(t, w.base+"/count/?page=/new", nil)
	eventually(t, 10*time.Second, "/new counted", func() (bool, string) {
		r := reportOf(t, w)
		return r.Pages["/new"].Now == 1, ""
	})

	// Read as of t0 again: the old window is gone, its total stays.
	clock.Set(t0)
	checkOldExpired(t, w, "after expiry")
}

// reportOf is the report of the worker w.
func reportOf(t *testing.T, w *worker) pageview.Report {
	var rep pageview.Report
	getJSON(t, w.base+"/report/", &rep)
	return rep
}

// checkOldExpired checks that w reads /old's expired window as 0 and its
// total as 3; when says at which step of the test.
func checkOldExpired(t *testing.T, w *worker, when string) {
	t.Helper()
	r := reportOf(t, w)
	old := r.Pages["/old"]
	if old.Now != 0 || old.Count != 3 {
		t.Errorf("%s: /old = %+v, want the expired window to read 0 and the total 3", when, old)
	}
}
