// Package truth holds the worker's metrics to the truth, from the outside:
// the real worker and dev broker run as processes (test/harness), each
// worker sends its DogStatsD metrics to a UDP listener of its own, and
// every value checked is compared with what the broker says (high
// watermarks, committed offsets, topic contents), what the worker logged,
// or what the test sent. See README.md.
//
// The suite runs with TRUTH=1 (make test-truth); without it every
// process test skips before it builds anything.
package truth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

// The shape of every scenario.
const (
	partitions  = 6
	sourceTopic = "page_views"
	dlqTopic    = sourceTopic + "-dlq"
	group       = "pageviews"
	// metricsInterval is the workers' METRICS_INTERVAL, the shortest
	// allowed.
	metricsInterval = 100 * time.Millisecond
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func requireTruth(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("metric truth suite: real processes")
	}
	if os.Getenv("TRUTH") != "1" {
		t.Skip("metric truth suite: set TRUTH=1 (make test-truth) to run real broker and worker processes")
	}
}

// scenario is one test's broker, its workers and the table of what was
// checked.
type scenario struct {
	t      *testing.T
	name   string
	dir    string
	broker *harness.Broker
	kafka  *kafkaTruth

	mu   sync.Mutex
	rows []row
}

// row is one line of the table a scenario prints: a metric, the truth it
// was held to and the value it sent.
type row struct {
	metric, truth, value string
	ok                   bool
}

// newScenario starts a fresh broker with the source topic created.
func newScenario(t *testing.T, name string) *scenario {
	t.Helper()
	requireTruth(t)
	s := &scenario{t: t, name: name, dir: harness.LogDir(t, "TRUTH_LOG_DIR")}
	s.broker = harness.StartBroker(t, s.dir,
		"-data-dir", filepath.Join(t.TempDir(), "broker"),
		"-topics", sourceTopic, "-partitions", fmt.Sprint(partitions))
	s.kafka = newKafkaTruth(t, s.broker.Addr)
	t.Cleanup(s.print)
	return s
}

// worker is a worker process and the listener of its metrics.
type worker struct {
	*harness.Worker
	sink *sink
}

// start starts a worker on dataDir whose metrics go to a listener of its
// own, and waits until it serves HTTP.
func (s *scenario) start(name, dataDir string, extra map[string]string) *worker {
	s.t.Helper()
	sk := newSink(s.t)
	env := harness.WorkerEnv(dataDir, map[string]string{
		"KAFKA_BROKERS":         s.broker.Addr,
		"KAFKA_GROUP":           group,
		"PAGE_VIEWS_TOPIC":      sourceTopic,
		"PARTITIONS":            fmt.Sprint(partitions),
		"DD_AGENT_HOST":         "127.0.0.1",
		"DD_DOGSTATSD_PORT":     sk.port(),
		"DD_ENV":                "truth",
		"DD_VERSION":            "truth-1",
		"METRICS_INTERVAL":      metricsInterval.String(),
		"COMMIT_INTERVAL":       "500ms",
		"LIVECHECK_INTERVAL":    "0",
		"KAFKA_SESSION_TIMEOUT": "10s",
		"WINDOW_SIZE":           "24h",
		"WINDOW_EXPIRES":        "48h",
		"OTEL_TRACES_EXPORTER":  "none",
		"LOG_LEVEL":             "info",
	}, extra)
	w := harness.StartWorker(s.t, s.dir, name, env)
	s.t.Cleanup(func() {
		if p := sk.problems(); len(p) > 0 {
			s.t.Errorf("%s sent malformed or untagged metrics: %s", name, strings.Join(p, "; "))
		}
	})
	return &worker{Worker: w, sink: sk}
}

// check records one comparison in the table and fails the test when it
// does not hold.
func (s *scenario) check(ok bool, metric, truth, value string) {
	s.t.Helper()
	s.mu.Lock()
	s.rows = append(s.rows, row{metric: metric, truth: truth, value: value, ok: ok})
	s.mu.Unlock()
	if !ok {
		s.t.Errorf("%s: %s, but the worker sent %s", metric, truth, value)
	}
}

// print logs the scenario's table, in the form of the README's.
func (s *scenario) print() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rows) == 0 {
		return
	}
	var b strings.Builder
	b.WriteString("| metric | scenario | truth | value |\n")
	for _, r := range s.rows {
		mark := ""
		if !r.ok {
			mark = " (FAIL)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s%s |\n", r.metric, s.name, r.truth, r.value, mark)
	}
	s.t.Logf("metric truth, %s:\n%s", s.name, b.String())
}

// eventually calls cond until it holds or timeout passes; it fails the
// test with cond's last state.
func (s *scenario) eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %s; last: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// caughtUp waits until the group committed every record of the source
// topic, and returns the high watermarks.
func (s *scenario) caughtUp(timeout time.Duration) map[int32]int64 {
	s.t.Helper()
	var hwm map[int32]int64
	s.eventually("every record committed", timeout, func() (bool, string) {
		hwm = s.kafka.hwms(sourceTopic)
		committed := s.kafka.committed(group, sourceTopic)
		for p, h := range hwm {
			if committed[p] != h {
				return false, fmt.Sprintf("high watermarks %v, committed %v", hwm, committed)
			}
		}
		return true, ""
	})
	return hwm
}

// settled waits until the samples of every partition of w show the
// broker's figures: end_offset the high watermark, committed_offset the
// group's offset.
func (s *scenario) settled(w *worker, hwm map[int32]int64, timeout time.Duration) {
	s.t.Helper()
	s.eventually(w.Name+"'s samples at the broker's offsets", timeout, func() (bool, string) {
		end := w.sink.lastBy("end_offset", "partition", nil)
		com := w.sink.lastBy("committed_offset", "partition", nil)
		for p, h := range hwm {
			if end[partitionKey(p)] != float64(h) || com[partitionKey(p)] != float64(h) {
				return false, fmt.Sprintf("high watermarks %v; end_offset %v, committed_offset %v", hwm, end, com)
			}
		}
		return true, ""
	})
	// The client sends what it aggregated from buffers it flushes at
	// least every second: after this, every gauge has arrived with a value
	// sampled once the figures above held.
	time.Sleep(1500 * time.Millisecond)
}

// maxGeneration is the highest generation of log entries.
func maxGeneration(entries []harness.Entry) int64 {
	var g int64
	for _, e := range entries {
		g = max(g, e.Num("generation"))
	}
	return g
}

// entry is one JSON line of a worker's log.
type entry = harness.Entry
