package faults

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// needProcesses skips a test that runs the binaries with -short or while
// fuzzing: then building them in every fuzz worker would be waste.
func needProcesses(t testing.TB) {
	t.Helper()
	if testing.Short() || fuzzing() {
		t.Skip("runs the worker and broker processes: not with -short or while fuzzing")
	}
}

// fuzzing reports whether this process fuzzes (as coordinator or worker).
func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

// needChaos skips the long suites unless CHAOS=1.
func needChaos(t testing.TB) {
	t.Helper()
	needProcesses(t)
	if os.Getenv("CHAOS") != "1" {
		t.Skip("long suite: set CHAOS=1 to run it")
	}
}

// logDir is where a test's processes write their output: FAULTS_LOG_DIR
// (kept) or the test's temporary directory.
func logDir(t testing.TB) string {
	t.Helper()
	return harness.LogDir(t, "FAULTS_LOG_DIR")
}

// workerEnv is the environment every test worker gets; extra overrides it.
// A race the faults provoke is reported in full, not only the first.
func workerEnv(brokers, dataDir string, extra map[string]string) map[string]string {
	return harness.WorkerEnv(dataDir, map[string]string{"KAFKA_BROKERS": brokers, "GORACE": "halt_on_error=0"}, extra)
}

// worker is a pageviews process and what it takes to start it again in
// place: the same settings, under the next run's name.
type worker struct {
	*harness.Worker
	t    testing.TB
	dir  string // log directory
	name string
	env  map[string]string
	runs int
}

// startWorker starts a worker and waits until its HTTP server listens.
func startWorker(t testing.TB, dir, name string, env map[string]string) *worker {
	t.Helper()
	w := &worker{t: t, dir: dir, name: name, env: env}
	w.start()
	return w
}

func (w *worker) start() {
	w.t.Helper()
	w.runs++
	name := w.name
	if w.runs > 1 {
		name = fmt.Sprintf("%s.run%d", w.name, w.runs)
	}
	w.Worker = harness.StartWorker(w.t, w.dir, name, w.env)
}

// requireRunning fails the test when the worker has exited.
func (w *worker) requireRunning(what string) {
	w.t.Helper()
	if !w.Running() {
		w.t.Fatalf("%s: the worker exited (%v) %s\n%s", w.Name, w.Err(), what, w.Tail(40))
	}
}

// probeTimeout bounds one request of a poll.
const probeTimeout = 5 * time.Second

// probe is a short GET for polling.
func probe(w *harness.Worker, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	return w.Get(ctx, path)
}

// ready reports whether the worker answers /ready/ with 200.
func (w *worker) ready() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	return w.Ready(ctx)
}

func (w *worker) report() (pageview.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	return w.TryReport(ctx)
}

// waitFor polls cond every 50ms until it holds or timeout passes; detail is
// what the failure message shows.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %s: %s", what, timeout, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isJSONError reports whether body is {"error":"..."} with a message.
func isJSONError(body []byte) bool {
	var e struct {
		Error *string `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error != nil && *e.Error != ""
}
