// Package e2e_test runs the worker and the dev broker as real processes and
// drives them only through what an operator has: environment variables,
// HTTP pages, Kafka topics (through kcat), signals and the JSON log. The
// processes are test/harness's.
//
// PAGEVIEWS_E2E_KEEP_LOGS=DIR keeps every process's stdout and stderr in
// DIR/<test>/ instead of a temporary directory.
package e2e_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// logDir is where a test's processes write their output.
func logDir(t testing.TB) string {
	t.Helper()
	return harness.LogDir(t, "PAGEVIEWS_E2E_KEEP_LOGS")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// broker is the Kafka cluster of a test: a dev broker process of its own,
// or the cluster of KAFKA_BROKERS.
type broker struct {
	addr  string
	topic string // the source topic the test's workers use
	group string // their consumer group
}

// startBroker runs cmd/devbroker with its data in a fresh temporary
// directory. With KAFKA_BROKERS set in the environment the tests use that
// cluster instead (a real Kafka in CI), and each test gets a source topic
// and consumer group of its own, so tests never see each other's records.
func startBroker(t testing.TB) *broker {
	t.Helper()
	if ext := os.Getenv("KAFKA_BROKERS"); ext != "" {
		id := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
		t.Logf("using the Kafka cluster at %s with topic page_views-%s and group %s", ext, id, id)
		return &broker{addr: ext, topic: "page_views-" + id, group: id}
	}
	b := harness.StartBroker(t, logDir(t), "-data-dir", filepath.Join(t.TempDir(), "data"))
	return &broker{addr: b.Addr, topic: "page_views", group: "pageviews"}
}

// env is what a worker needs to use the broker, the test's topic and group.
func (b *broker) env() map[string]string {
	return map[string]string{"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group}
}

// workerEnv returns the settings every worker in these tests uses, with
// each of extra on top. Exporters that could leave the machine are off.
func workerEnv(dataDir string, extra ...map[string]string) map[string]string {
	quiet := map[string]string{
		"DD_AGENT_HOST":         "127.0.0.1",
		"OTEL_TRACES_EXPORTER":  "none",
		"OTEL_METRICS_EXPORTER": "none",
		"OTEL_LOGS_EXPORTER":    "none",
	}
	return harness.WorkerEnv(dataDir, append([]map[string]string{quiet}, extra...)...)
}

// startWorker starts cmd/pageviews with env and waits until it serves HTTP.
// Each start gets its own log files; name tells them apart.
func startWorker(t testing.TB, name string, env map[string]string) *harness.Worker {
	t.Helper()
	return harness.StartWorker(t, logDir(t), name, env)
}

// recoveryLine is one "recovering" log line: where recovery of one table
// partition starts.
type recoveryLine struct {
	Partition  int32
	Table      string
	FromOffset int64
	EndOffset  int64
	Records    int64
	Stored     bool
}

// recoveringLines returns the first "recovering" line of each table
// partition: the recovery that followed the start of the process. (A later
// rebalance that hands a partition back logs another one, from wherever the
// first left the store.)
func recoveringLines(w *harness.Worker) map[string]recoveryLine {
	out := map[string]recoveryLine{}
	for _, e := range w.Entries("recovering") {
		l := recoveryLine{
			Partition:  int32(e.Num("partition")),
			Table:      e.Str("table"),
			FromOffset: e.Num("from_offset"),
			EndOffset:  e.Num("end_offset"),
			Records:    e.Num("records"),
			Stored:     e.Bool("stored"),
		}
		k := fmt.Sprintf("%s/%d", l.Table, l.Partition)
		if _, seen := out[k]; !seen {
			out[k] = l
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Windows.

// windowKey identifies the windows a report reads at time now: the window
// of now (page_views_within_1_minute) and the window two minutes back (for
// the report text). Window starts are aligned to the Unix epoch.
type windowKey struct{ now, back int64 }

func windowsAt(now time.Time, size time.Duration) windowKey {
	start := func(ms int64) int64 {
		s := size.Milliseconds()
		r := ms % s
		if r < 0 {
			r += s
		}
		return ms - r
	}
	ms := now.UnixMilli()
	return windowKey{now: start(ms), back: start(ms - (2 * time.Minute).Milliseconds())}
}

// sameWindows reports whether every report read between from and the call
// used the same windows. Window starts only move forward, so comparing the
// two ends is enough.
func sameWindows(t testing.TB, from windowKey, size time.Duration) bool {
	t.Helper()
	if to := windowsAt(time.Now(), size); to != from {
		t.Logf("the %s window of now (or of two minutes back) changed during the test (%v -> %v): comparing totals only", size, from, to)
		return false
	}
	return true
}

// compareReports fails unless got equals want; with windowsStable false it
// compares only the totals of each page.
func compareReports(t testing.TB, want, got pageview.Report, windowsStable bool) {
	t.Helper()
	if windowsStable {
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("report differs\nwant %s\ngot  %s\n%s", harness.Summarize(want), harness.Summarize(got), reportDiff(want, got))
		}
		return
	}
	if want.Count != got.Count {
		t.Fatalf("total count: got %d, want %d", got.Count, want.Count)
	}
	for page, p := range want.Pages {
		if got.Pages[page].Count != p.Count {
			t.Errorf("page %s: count %d, want %d", page, got.Pages[page].Count, p.Count)
		}
	}
	if len(got.Pages) != len(want.Pages) {
		t.Errorf("got %d pages, want %d", len(got.Pages), len(want.Pages))
	}
}

func reportDiff(want, got pageview.Report) string {
	var b strings.Builder
	if want.Now != got.Now || want.Count != got.Count || want.Stale != got.Stale {
		fmt.Fprintf(&b, "top level: want now=%d count=%d stale=%v, got now=%d count=%d stale=%v\n",
			want.Now, want.Count, want.Stale, got.Now, got.Count, got.Stale)
	}
	pages := maps.Clone(want.Pages)
	maps.Copy(pages, got.Pages)
	n := 0
	for _, k := range slices.Sorted(maps.Keys(pages)) {
		w, wok := want.Pages[k]
		g, gok := got.Pages[k]
		if wok == gok && w == g {
			continue
		}
		if n++; n > 20 {
			b.WriteString("...\n")
			break
		}
		fmt.Fprintf(&b, "page %s: want %+v (present %v), got %+v (present %v)\n", k, w, wok, g, gok)
	}
	return b.String()
}

// committedViews returns a function that sums over partitions the offsets
// the worker's consumer group has committed on page_views: how many source
// records it has made durable (the runtime commits only after the changelog
// acknowledged the table updates and the store batch was written).
func committedViews(t testing.TB, b *broker) func() int64 {
	brokerAddr := b.addr
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.ClientID = "pageviews-e2e"
	cfg.Net.DialTimeout = 5 * time.Second
	admin, err := sarama.NewClusterAdmin([]string{brokerAddr}, cfg)
	if err != nil {
		t.Fatalf("kafka admin on %s: %v", brokerAddr, err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return func() int64 {
		t.Helper()
		// Every partition the group committed, however many the topic has.
		resp, err := admin.ListConsumerGroupOffsets(b.group, nil)
		if errors.Is(err, sarama.ErrGroupIDNotFound) {
			return 0 // the group has not committed anything yet
		}
		if err != nil {
			t.Fatalf("committed offsets of group %s: %v", b.group, err)
		}
		var sum int64
		for _, blk := range resp.Blocks[b.topic] {
			if blk != nil && blk.Offset > 0 {
				sum += blk.Offset
			}
		}
		return sum
	}
}
