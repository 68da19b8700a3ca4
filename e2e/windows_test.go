package e2e_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// The acceptance tests of closed windows: a window of the views table
// closes once the wall clock of a caught-up partition reaches its end plus
// grace, and each page's final count in it reaches <source>-windows. kcat
// reads that topic read_committed (librdkafka's default), so under
// exactly_once a result counts only once its transaction has committed.

// closeWithin is how long after its end plus grace a window's result must
// be in the closed-window topic (the acceptance).
const closeWithin = 5 * time.Second

// eventTime is the form of a PageView's timestamp (pageview.Encode).
const eventTime = "2006-01-02T15:04:05.000Z07:00"

// closedWindowEnv is the settings of a worker of these tests: the suite's,
// the broker's, no livecheck (its synthetic views would be events the
// tests did not send), and then extra (the windows).
func closedWindowEnv(t testing.TB, b *broker, extra map[string]string) map[string]string {
	return workerEnv(filepath.Join(t.TempDir(), "data"), b.env(), map[string]string{"LIVECHECK_INTERVAL": "0"}, extra)
}

// With WINDOW_SIZE=4s and WINDOW_GRACE=1s, 5 views of /a give exactly one
// result for their window, count 5, within 5s of its end plus grace and
// without any further event. A view of /a produced afterwards with an event
// time inside that window is late: the result stays as it was, /a's total
// counts it, and so does the late_events metric.
func TestWindowClosesOnceAndLateViewIsLate(t *testing.T) {
	for _, guarantee := range []string{"at_least_once", "exactly_once"} {
		t.Run(guarantee, func(t *testing.T) { tumblingWindowCloses(t, guarantee) })
	}
}

func tumblingWindowCloses(t *testing.T, guarantee string) {
	const page, views = "/a", 5
	const size, grace = 4 * time.Second, time.Second
	kcatBin := harness.RequireKcat(t)
	sink := newStatsdSink(t)
	b := startBroker(t)
	w := startWorker(t, "worker", closedWindowEnv(t, b, map[string]string{
		"WINDOW_SIZE": size.String(), "WINDOW_GRACE": grace.String(), "PROCESSING_GUARANTEE": guarantee,
		// Metrics to the test's listener; counts go out every 500ms.
		"DD_DOGSTATSD_PORT": sink.port(), "METRICS_INTERVAL": "500ms",
	}))
	w.WaitReady(t, 60*time.Second)
	watch := watchClosedWindows(t, kcatBin, b)

	waitEarlyInWindow(size)
	sent := sendViews(t, w, kcatBin, b, page, views)
	start := windowStart(sent[0].at, size)
	for _, v := range sent {
		if got := windowStart(v.at, size); !got.Equal(start) {
			t.Fatalf("the %d views of %s fell into the windows starting at %s and %s: /count/ took more than half a window",
				views, page, start.Format(time.RFC3339), got.Format(time.RFC3339))
		}
	}
	w.WaitReport(t, 30*time.Second, fmt.Sprintf("%d views of %s", views, page), func(r pageview.Report) bool {
		return r.Pages[page].Count == views
	})

	result := waitWindowResult(t, watch, kcatBin, b, page, start, size, grace)
	checkWindowResult(t, result, page, start, size, views)
	if n := sink.count("late_events", "table:"+windowedTable()); n != 0 {
		t.Errorf("late_events is %d before any late view, want 0", n)
	}

	lateView(t, w, kcatBin, b, page, sent[0].partition, start.Add(size/2), views+1)
	if n := sink.waitCount(t, "late_events", "table:"+windowedTable(), 1, 30*time.Second); n != 1 {
		t.Errorf("late_events is %d after one late view, want 1", n)
	}
	// The flush that processed the late view has committed: had it changed
	// the window's result, the topic would show it now.
	waitCommittedViews(t, committedViews(t, b), views+1, 30*time.Second)
	got := pageResults(readClosedWindows(t, kcatBin, b), page)
	if len(got) != 1 || got[0].Offset != result.Offset {
		t.Fatalf("after the late view %s holds %d results for %s, want only the one at offset %d: %s",
			b.topic+"-windows", len(got), page, result.Offset, describeResults(got))
	}
	checkWindowResult(t, got[0], page, start, size, views)
	if n := sink.count("late_events", "table:"+windowedTable()); n != 1 {
		t.Errorf("late_events is %d at the end of the test, want 1", n)
	}
}

// lateView produces with kcat a view of page, keyed page, with event time
// at, and waits until page's total is total. It goes to partition, where
// /count/ sent page's views: stream time and the closed-up-to point are a
// partition's, and kcat's default partitioner (librdkafka's
// consistent_random) would put the key elsewhere than the worker's
// producer (sarama's FNV-1a hash) does, into a partition whose windows are
// still open.
func lateView(t testing.TB, w *harness.Worker, kcatBin string, b *broker, page string, partition int32, at time.Time, total int64) {
	t.Helper()
	value := fmt.Sprintf(`{"page":%q,"count":1,"timestamp":%q}`, page, at.UTC().Format(eventTime))
	harness.Kcat(t, kcatBin, value+"\n", "-P", "-b", b.addr, "-t", b.topic, "-k", page,
		"-p", strconv.Itoa(int(partition)), "-q")
	t.Logf("produced the late view %s into partition %d", value, partition)
	w.WaitReport(t, 30*time.Second, fmt.Sprintf("the late view in the total of %s (%d)", page, total), func(r pageview.Report) bool {
		return r.Pages[page].Count == total
	})
}

// With WINDOW_SIZE=6s and WINDOW_STEP=3s a view belongs to two windows
// that start 3s apart; one view gives two results of count 1 as they
// close. WINDOW_GRACE is 1s to keep the test short.
func TestHoppingWindowsCloseWithTheirOwnResults(t *testing.T) {
	const page = "/h"
	const size, step, grace = 6 * time.Second, 3 * time.Second, time.Second
	kcatBin := harness.RequireKcat(t)
	b := startBroker(t)
	w := startWorker(t, "worker", closedWindowEnv(t, b, map[string]string{
		"WINDOW_SIZE": size.String(), "WINDOW_STEP": step.String(), "WINDOW_GRACE": grace.String(),
	}))
	w.WaitReady(t, 60*time.Second)
	watch := watchClosedWindows(t, kcatBin, b)

	at := sendViews(t, w, kcatBin, b, page, 1)[0].at
	latest := windowStart(at, step)
	starts := []time.Time{latest.Add(-step), latest}
	var results []closedWindow
	for _, start := range starts {
		if at.Before(start) || !at.Before(start.Add(size)) {
			t.Fatalf("the view at %s is not in the window [%s, %s)", at.Format(eventTime), start.Format(time.RFC3339), start.Add(size).Format(time.RFC3339))
		}
		r := waitWindowResult(t, watch, kcatBin, b, page, start, size, grace)
		checkWindowResult(t, r, page, start, size, 1)
		results = append(results, r)
	}
	got := pageResults(readClosedWindows(t, kcatBin, b), page)
	if len(got) != 2 {
		t.Fatalf("%s holds %d results for %s, want 2 (the windows starting at %s and %s): %s", b.topic+"-windows", len(got), page,
			starts[0].Format(time.RFC3339), starts[1].Format(time.RFC3339), describeResults(got))
	}
	if results[0].Offset == results[1].Offset {
		t.Fatalf("both windows' results are the record at offset %d", results[0].Offset)
	}
}

// ---------------------------------------------------------------------------
// Views.

// sentView is a view in the source topic: its event time and partition.
type sentView struct {
	at        time.Time
	partition int32
}

// windowStart is the start of the latest window of step that holds at;
// windows are aligned to the Unix epoch.
func windowStart(at time.Time, step time.Duration) time.Time {
	ms, s := at.UnixMilli(), step.Milliseconds()
	return time.UnixMilli(ms - ms%s).UTC()
}

// waitEarlyInWindow returns once the current window of size has at least
// half of it left, waiting for the next window when it has not.
func waitEarlyInWindow(size time.Duration) {
	now := time.Now()
	if end := windowStart(now, size).Add(size); end.Sub(now) < size/2 {
		time.Sleep(time.Until(end) + 20*time.Millisecond)
	}
}

// sendViews calls /count/ n times for page and returns the views as the
// source topic holds them, in order: the worker stamps a view's event time
// when it publishes it.
func sendViews(t testing.TB, w *harness.Worker, kcatBin string, b *broker, page string, n int) []sentView {
	t.Helper()
	for range n {
		w.Count(t, page)
	}
	var out []sentView
	for _, rec := range harness.ConsumeAll(t, kcatBin, b.addr, b.topic) {
		if rec.Key == nil || *rec.Key != page || rec.Payload == nil {
			continue
		}
		pv, err := pageview.Decode([]byte(*rec.Payload), time.Now())
		if err != nil {
			t.Fatalf("%s partition %d offset %d is not a page view: %v: %s", b.topic, rec.Partition, rec.Offset, err, *rec.Payload)
		}
		out = append(out, sentView{at: pv.Timestamp, partition: rec.Partition})
	}
	if len(out) != n {
		t.Fatalf("%s holds %d views of %s after %d /count/ calls", b.topic, len(out), page, n)
	}
	return out
}

// waitCommittedViews waits until the worker's group has committed want
// source records.
func waitCommittedViews(t testing.TB, committed func() int64, want int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for n := committed(); n != want; n = committed() {
		if time.Now().After(deadline) {
			t.Fatalf("the group committed %d source records, not %d, within %s", n, want, timeout)
		}
		time.Sleep(harness.PollInterval)
	}
}

// ---------------------------------------------------------------------------
// Closed windows.

// closedWindow is a record of the closed-window topic as kcat -J prints
// it: key page, value {"page","window_start","window_end","count"},
// timestamp the window's end.
type closedWindow struct {
	Partition int32   `json:"partition"`
	Offset    int64   `json:"offset"`
	Ts        int64   `json:"ts"`
	Key       *string `json:"key"`
	Payload   *string `json:"payload"`
	value     struct {
		Page        string `json:"page"`
		WindowStart string `json:"window_start"`
		WindowEnd   string `json:"window_end"`
		Count       int64  `json:"count"`
	}
}

// parseClosedWindow reads one line of kcat -J; a value that is not the
// JSON object leaves the decoded value empty (checkWindowResult says so).
func parseClosedWindow(line string) (closedWindow, error) {
	var r closedWindow
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return r, fmt.Errorf("kcat -J printed a line that is not JSON: %v: %s", err, line)
	}
	if r.Payload != nil {
		_ = json.Unmarshal([]byte(*r.Payload), &r.value)
	}
	return r, nil
}

// is reports whether r is page's result for the window starting at start.
func (r closedWindow) is(page string, start time.Time) bool {
	return r.Key != nil && *r.Key == page && r.value.WindowStart == start.UTC().Format(time.RFC3339)
}

func (r closedWindow) String() string {
	key, payload := "<nil>", "<nil>"
	if r.Key != nil {
		key = *r.Key
	}
	if r.Payload != nil {
		payload = *r.Payload
	}
	return fmt.Sprintf("[partition %d offset %d ts %s key %s] %s", r.Partition, r.Offset, time.UnixMilli(r.Ts).UTC().Format(eventTime), key, payload)
}

func describeResults(rs []closedWindow) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// readClosedWindows reads the whole closed-window topic with a new kcat.
func readClosedWindows(t testing.TB, kcatBin string, b *broker) []closedWindow {
	t.Helper()
	out := harness.Kcat(t, kcatBin, "", "-C", "-b", b.addr, "-t", b.topic+"-windows", "-o", "beginning", "-e", "-q", "-J")
	var rs []closedWindow
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		r, err := parseClosedWindow(l)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

// pageResults returns the results of page.
func pageResults(rs []closedWindow, page string) []closedWindow {
	var out []closedWindow
	for _, r := range rs {
		if r.Key != nil && *r.Key == page {
			out = append(out, r)
		}
	}
	return out
}

// watchClosedWindows starts a kcat that prints the closed-window topic as
// records arrive, for the rest of the test: it sees a result sooner after
// it is committed than a new kcat per look would.
func watchClosedWindows(t testing.TB, kcatBin string, b *broker) *harness.Proc {
	t.Helper()
	return harness.Start(t, logDir(t), "kcat-windows", kcatBin, []string{
		"-C", "-b", b.addr, "-t", b.topic + "-windows", "-o", "beginning", "-q", "-J", "-u",
		"-X", "fetch.wait.max.ms=50",
	}, nil)
}

// waitWindowResult waits for page's result of the window [start,
// start+size) and logs how long after the window's end plus grace it was
// first seen. It fails when the result is not in the topic 5s after that
// point: when the watching kcat has not printed it by then, a new kcat
// reads the topic to decide.
func waitWindowResult(t testing.TB, watch *harness.Proc, kcatBin string, b *broker, page string, start time.Time, size, grace time.Duration) closedWindow {
	t.Helper()
	closeAt := start.Add(size + grace)
	deadline := closeAt.Add(closeWithin)
	what := fmt.Sprintf("the result of %s in the window [%s, %s)", page, start.Format(time.RFC3339), start.Add(size).Format(time.RFC3339))
	for {
		for _, l := range watch.Stdout.Lines() {
			if r, err := parseClosedWindow(l); err == nil && r.is(page, start) {
				seen := time.Now()
				if seen.Before(closeAt) {
					t.Errorf("%s came %s before the window's end plus grace", what, closeAt.Sub(seen))
				}
				t.Logf("%s came %s after the window's end plus grace", what, seen.Sub(closeAt).Round(time.Millisecond))
				return r
			}
		}
		if !watch.Running() {
			t.Fatalf("the kcat watching %s exited: %v", b.topic+"-windows", watch.Err())
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(harness.PollInterval)
	}
	all := readClosedWindows(t, kcatBin, b)
	for _, r := range all {
		if r.is(page, start) {
			t.Logf("%s is in the topic %s after the window's end plus grace (the watching kcat lagged)", what, closeWithin)
			return r
		}
	}
	t.Fatalf("%s is not in %s %s after the window's end plus grace; the topic holds %s", what, b.topic+"-windows", closeWithin, describeResults(all))
	return closedWindow{}
}

// checkWindowResult checks r against page's result of count views in the
// window [start, start+size): its key, its value to the byte, and its
// timestamp, the window's end.
func checkWindowResult(t testing.TB, r closedWindow, page string, start time.Time, size time.Duration, count int64) {
	t.Helper()
	end := start.Add(size)
	key, _ := json.Marshal(page)
	want := fmt.Sprintf(`{"page":%s,"window_start":%q,"window_end":%q,"count":%d}`, key,
		start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339), count)
	if r.Key == nil || *r.Key != page || r.Payload == nil || *r.Payload != want {
		t.Fatalf("closed-window result %s, want key %s and value %s", r, page, want)
	}
	if r.Ts != end.UnixMilli() {
		t.Errorf("closed-window result %s has timestamp %s, want the window's end %s", r,
			time.UnixMilli(r.Ts).UTC().Format(eventTime), end.UTC().Format(eventTime))
	}
}

// ---------------------------------------------------------------------------
// Metrics.

// statsdSink is a DogStatsD listener on a loopback UDP port that keeps every
// line a worker sends it (DD_DOGSTATSD_PORT). The e2e suite read no metric
// until now; this reads the lines as truth/'s listener does:
// name:value[:value...]|type[|@rate][|#tag,tag...].
type statsdSink struct {
	udpPort string
	mu      sync.Mutex
	lines   []string
}

func newStatsdSink(t testing.TB) *statsdSink {
	t.Helper()
	s := &statsdSink{}
	s.udpPort = harness.ListenStatsd(t, func(_ time.Time, datagram string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, l := range strings.Split(datagram, "\n") {
			if l != "" {
				s.lines = append(s.lines, l)
			}
		}
	})
	return s
}

// port is the listener's port, for DD_DOGSTATSD_PORT.
func (s *statsdSink) port() string { return s.udpPort }

// count adds up the count metric name of the worker's namespace
// (pageviews.) over the lines tagged tag ("table:"+windowedTable()).
func (s *statsdSink) count(name, tag string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum float64
	for _, l := range s.lines {
		metric, rest, _ := strings.Cut(l, ":")
		fields := strings.Split(rest, "|")
		if metric != "pageviews."+name || len(fields) < 2 || fields[1] != "c" || !hasStatsdTag(fields[2:], tag) {
			continue
		}
		for _, v := range strings.Split(fields[0], ":") {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				sum += f
			}
		}
	}
	return int64(sum)
}

func hasStatsdTag(fields []string, tag string) bool {
	for _, f := range fields {
		if tags, ok := strings.CutPrefix(f, "#"); ok {
			for _, t := range strings.Split(tags, ",") {
				if t == tag {
					return true
				}
			}
		}
	}
	return false
}

// waitCount waits until count(name, tag) reaches at least want and returns
// it.
func (s *statsdSink) waitCount(t testing.TB, name, tag string, want int64, timeout time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.count(name, tag) < want {
		if time.Now().After(deadline) {
			t.Fatalf("metric %s{%s} is %d, not %d, %s later", name, tag, s.count(name, tag), want, timeout)
		}
		time.Sleep(harness.PollInterval)
	}
	return s.count(name, tag)
}

// windowedTable is the example's windowed table, named as its declaration
// names it (a generated worker renames it there).
func windowedTable() string { return pageview.App().Tables[0].Name() }
