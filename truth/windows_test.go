package truth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// The windows of TestWindows: tumbling windows of windowSize, aligned to
// the Unix epoch, that close windowGrace after their end.
const (
	windowsTopic = sourceTopic + "-windows"
	windowSize   = 3 * time.Second
	windowGrace  = time.Second
	// windowsSent is how many windows the test sends views in, and
	// windowPages how many pages it views.
	windowsSent = 3
	windowPages = 8
	// windowLagMargin is how far window_close_lag may exceed the time from
	// its window's end plus grace to the test's first read of the window's
	// record: the worker measures before it sends, the test reads after the
	// commit, on the same clock; the margin covers rounding only.
	windowLagMargin = 250 * time.Millisecond
)

// TestWindows: views of several pages through /count/ in three windows of
// 3 s (grace 1 s), and a few late views once their window's results are on
// page_views-windows. windows_closed counts the windows whose records are
// there, one timing of window_close_lag comes with each, and late_events
// counts the late views; the records' counts are the views sent.
func TestWindows(t *testing.T) {
	s := newScenario(t, "windows")
	began := time.Now()
	w := s.start("worker", t.TempDir(), map[string]string{
		"WINDOW_SIZE":    windowSize.String(),
		"WINDOW_STEP":    windowSize.String(),
		"WINDOW_GRACE":   windowGrace.String(),
		"WINDOW_EXPIRES": "1m",
	})
	w.WaitReady(t, time.Minute)
	watch := watchWindows(t, s.broker.Addr)

	batches := s.sendInWindows(w)
	onTime := s.kafka.readCommitted(sourceTopic)
	src := readSourceViews(t, onTime, batches)
	late := s.sendLate(src, watch)
	watch.waitFor(s, "a record on "+windowsTopic+" for every page and window viewed", src.pageWindows(0), 30*time.Second)
	hwm := s.caughtUp(time.Minute)
	s.settled(w, hwm, 30*time.Second)

	onTopic := s.kafka.readCommitted(windowsTopic)
	recs := watch.records(t)
	t.Logf("sent %d views in %d windows (%s), %d late; %d records on %s",
		src.n, len(src.starts()), formatBatches(batches), late, count(onTopic), windowsTopic)
	s.windowsClosed(w, src, onTopic)
	checkWindowRecords(t, src, recs, onTopic)
	s.windowCloseLag(w, recs, began)
	s.windowsLate(w, src, onTime, late, hwm, onTopic)
}

// windowStart is the start (Unix ms) of the window that holds t.
func windowStart(t time.Time) int64 {
	ms, size := t.UnixMilli(), windowSize.Milliseconds()
	return ms - ms%size
}

// pageWindow is a page's window; partWindow a partition's. start is the
// window's start in Unix ms.
type (
	pageWindow struct {
		page  string
		start int64
	}
	partWindow struct {
		p     int32
		start int64
	}
)

// windowBatch is the views the test sent through /count/ in one window,
// and when its calls began and ended.
type windowBatch struct {
	from, to time.Time
	n        int
}

func formatBatches(bs []windowBatch) string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprintf("%d views from %s to %s", b.n, b.from.Format("15:04:05.000"), b.to.Format("15:04:05.000")))
	}
	return strings.Join(out, ", ")
}

// windowPlan is the views of the k-th window, one page per view: page i
// gets 1 to 7 views, and each window leaves two pages out.
func windowPlan(k int) []string {
	var pages []string
	for i := range windowPages {
		if (i+k)%4 == 0 {
			continue
		}
		for range 1 + (3*i+2*k)%7 {
			pages = append(pages, fmt.Sprintf("/windows/%d", i))
		}
	}
	return pages
}

// sendInWindows sends the views of windowPlan through /count/, each
// window's from a tenth of a window after its start, and returns what it
// sent. The worker stamps each view with its clock; the windows the views
// fall in are read back from the broker.
func (s *scenario) sendInWindows(w *worker) []windowBatch {
	size := windowSize.Milliseconds()
	first := (time.Now().UnixMilli()/size + 1) * size
	var out []windowBatch
	for k := range windowsSent {
		time.Sleep(time.Until(time.UnixMilli(first + int64(k)*size).Add(windowSize / 10)))
		pages := windowPlan(k)
		from := time.Now()
		w.SendViews(s.t, pages, 4)
		out = append(out, windowBatch{from: from, to: time.Now(), n: len(pages)})
	}
	return out
}

// sourceViews are the views on the source topic as the broker holds them.
type sourceViews struct {
	n       int
	byPage  map[pageWindow]int64 // views per page and window
	windows map[partWindow]bool  // the windows that held views
	part    map[string]int32     // the partition of each page
}

// readSourceViews reads the views of recs, the source topic's records,
// and requires them to be the views the test sent: as many, each stamped
// while a batch of /count/ calls ran, each page on one partition.
func readSourceViews(t *testing.T, recs map[int32][][]byte, batches []windowBatch) sourceViews {
	t.Helper()
	src := sourceViews{byPage: map[pageWindow]int64{}, windows: map[partWindow]bool{}, part: map[string]int32{}}
	sent := 0
	for _, b := range batches {
		sent += b.n
	}
	for p, vs := range recs {
		for _, v := range vs {
			var pv struct {
				Page      string    `json:"page"`
				Timestamp time.Time `json:"timestamp"`
			}
			if err := json.Unmarshal(v, &pv); err != nil || pv.Timestamp.IsZero() {
				t.Fatalf("%s/%d holds %s: not a view stamped by /count/ (%v)", sourceTopic, p, v, err)
			}
			in := slices.ContainsFunc(batches, func(b windowBatch) bool {
				return !pv.Timestamp.Before(b.from.Truncate(time.Millisecond)) && !pv.Timestamp.After(b.to)
			})
			if q, ok := src.part[pv.Page]; (ok && q != p) || !in {
				t.Fatalf("%s/%d holds %s: on partition %d before, or stamped outside the test's calls (%s)", sourceTopic, p, v, q, formatBatches(batches))
			}
			src.n++
			src.part[pv.Page] = p
			src.byPage[pageWindow{pv.Page, windowStart(pv.Timestamp)}]++
			src.windows[partWindow{p, windowStart(pv.Timestamp)}] = true
		}
	}
	if src.n != sent {
		t.Fatalf("%s holds %d views; the test sent %d through /count/", sourceTopic, src.n, sent)
	}
	return src
}

// starts are the starts of the windows that held views, in order.
func (src sourceViews) starts() []int64 {
	var out []int64
	for pw := range src.byPage {
		if !slices.Contains(out, pw.start) {
			out = append(out, pw.start)
		}
	}
	slices.Sort(out)
	return out
}

// pageWindows are the pages' windows that held views, those starting
// before before only when before is not 0.
func (src sourceViews) pageWindows(before int64) map[pageWindow]bool {
	out := map[pageWindow]bool{}
	for pw := range src.byPage {
		if before == 0 || pw.start < before {
			out[pw] = true
		}
	}
	return out
}

// sendLate waits until the records of every window but the newest are on
// page_views-windows (so those windows are closed on their pages'
// partitions), then sends with the test's producer one view of each of two
// pages of each of those windows, stamped in the window's middle: late
// views. It returns how many it sent.
func (s *scenario) sendLate(src sourceViews, watch *windowWatch) int {
	starts := src.starts()
	closed := src.pageWindows(starts[len(starts)-1])
	watch.waitFor(s, "the records of every window but the newest", closed, 30*time.Second)
	var msgs []*sarama.ProducerMessage
	for _, start := range starts[:len(starts)-1] {
		var pages []string
		for pw := range closed {
			if pw.start == start {
				pages = append(pages, pw.page)
			}
		}
		slices.Sort(pages)
		for _, page := range pages[:min(2, len(pages))] {
			msgs = append(msgs, view(page, 0, time.UnixMilli(start).Add(windowSize/2)))
		}
	}
	if err := s.kafka.producer().send(msgs); err != nil {
		s.t.Fatal(err)
	}
	return len(msgs)
}

// closedWindow is one record of page_views-windows as the test's
// read_committed consumer received it.
type closedWindow struct {
	p      int32
	offset int64
	key    string
	ts     time.Time // the record's timestamp
	seen   time.Time // when the test received it
	Page   string    `json:"page"`
	Start  time.Time `json:"window_start"`
	End    time.Time `json:"window_end"`
	Count  *int64    `json:"count"`
}

// windowWatch reads page_views-windows read_committed through the whole
// scenario and keeps each record with the time it arrived.
type windowWatch struct {
	mu   sync.Mutex
	recs []closedWindow
	bad  []string
}

// watchWindows starts reading every partition of page_views-windows from
// its start.
func watchWindows(t *testing.T, addr string) *windowWatch {
	t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "truth-windows", ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := sarama.NewConsumer([]string{addr}, cfg)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	ww := &windowWatch{}
	var (
		wg  sync.WaitGroup
		pcs []sarama.PartitionConsumer
	)
	t.Cleanup(func() {
		for _, pc := range pcs {
			pc.AsyncClose()
		}
		wg.Wait()
		_ = consumer.Close()
	})
	parts, err := consumer.Partitions(windowsTopic)
	if err != nil || len(parts) != partitions {
		t.Fatalf("partitions of %s: %v (%v), want %d", windowsTopic, parts, err, partitions)
	}
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(windowsTopic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("consume %s/%d: %v", windowsTopic, p, err)
		}
		pcs = append(pcs, pc)
		wg.Go(func() {
			for m := range pc.Messages() {
				ww.add(m, time.Now())
			}
		})
		wg.Go(func() {
			for e := range pc.Errors() {
				ww.mu.Lock()
				ww.bad = append(ww.bad, e.Error())
				ww.mu.Unlock()
			}
		})
	}
	return ww
}

// add keeps m, or notes why its value is not a closed window's result.
func (ww *windowWatch) add(m *sarama.ConsumerMessage, seen time.Time) {
	c := closedWindow{p: m.Partition, offset: m.Offset, key: string(m.Key), ts: m.Timestamp, seen: seen}
	dec := json.NewDecoder(bytes.NewReader(m.Value))
	dec.DisallowUnknownFields()
	err := dec.Decode(&c)
	if err == nil && (c.Page == "" || c.Start.IsZero() || c.End.IsZero() || c.Count == nil) {
		err = fmt.Errorf("a field is missing")
	}
	ww.mu.Lock()
	defer ww.mu.Unlock()
	if err != nil {
		ww.bad = append(ww.bad, fmt.Sprintf("%s/%d@%d %s: %v", windowsTopic, m.Partition, m.Offset, m.Value, err))
		return
	}
	ww.recs = append(ww.recs, c)
}

// records returns what arrived so far, and fails the test on anything
// that was not a closed window's result.
func (ww *windowWatch) records(t *testing.T) []closedWindow {
	t.Helper()
	ww.mu.Lock()
	defer ww.mu.Unlock()
	if len(ww.bad) > 0 {
		t.Errorf("%s: %s", windowsTopic, strings.Join(ww.bad, "; "))
	}
	return slices.Clone(ww.recs)
}

// arrived is the pages' windows whose records arrived so far.
func (ww *windowWatch) arrived() map[pageWindow]bool {
	ww.mu.Lock()
	defer ww.mu.Unlock()
	out := map[pageWindow]bool{}
	for _, r := range ww.recs {
		out[pageWindow{r.Page, r.Start.UnixMilli()}] = true
	}
	return out
}

// waitFor waits until a record of every page's window of want arrived.
func (ww *windowWatch) waitFor(s *scenario, what string, want map[pageWindow]bool, timeout time.Duration) {
	s.t.Helper()
	s.eventually(what, timeout, func() (bool, string) {
		got := ww.arrived()
		var missing []string
		for pw := range want {
			if !got[pw] {
				missing = append(missing, fmt.Sprintf("%s@%s", pw.page, time.UnixMilli(pw.start).Format("15:04:05")))
			}
		}
		slices.Sort(missing)
		return len(missing) == 0, fmt.Sprintf("%d of %d records; missing %v", len(want)-len(missing), len(want), missing)
	})
}

// windowsClosed checks windows_closed against the records on
// page_views-windows, per partition, and against the windows that held
// views on the source topic, in all.
func (s *scenario) windowsClosed(w *worker, src sourceViews, onTopic map[int32][][]byte) {
	want := map[int32]int64{}
	for p, vs := range onTopic {
		starts := map[int64]bool{}
		for _, v := range vs {
			var r struct {
				Start time.Time `json:"window_start"`
			}
			if err := json.Unmarshal(v, &r); err != nil {
				s.t.Errorf("%s/%d holds %s: %v", windowsTopic, p, v, err)
			}
			starts[r.Start.UnixMilli()] = true
		}
		want[p] = int64(len(starts))
	}
	got := map[string]float64{}
	for p, n := range w.sink.sumBy("windows_closed", "partition", map[string]string{"table": windowedTable()}) {
		got[p] = float64(n)
	}
	s.check(allMatch(got, want) && len(got) == len(want), "windows_closed",
		fmt.Sprintf("distinct (partition, window_start) among the records on %s (read_committed), per partition", windowsTopic),
		fmt.Sprintf("sum %d; %s; truth %s", int64(sumMap(got)), formatKeyed("p", got), formatWant(want)))
	s.check(int64(sumMap(got)) == int64(len(src.windows)), "windows_closed",
		fmt.Sprintf("in all, the windows that held views: %d (partition and event time of the views on %s)", len(src.windows), sourceTopic),
		fmt.Sprint(int64(sumMap(got))))
}

// checkWindowRecords holds the records on page_views-windows to the views
// sent: one per page and window that held views, on the page's partition,
// keyed by the page, stamped with the window's end, with its count of
// views. recs are the watch's, onTopic a fresh read.
func checkWindowRecords(t *testing.T, src sourceViews, recs []closedWindow, onTopic map[int32][][]byte) {
	t.Helper()
	perPart := map[int32]int64{}
	got := map[pageWindow]int64{}
	var sum int64
	for _, r := range recs {
		pw := pageWindow{r.Page, r.Start.UnixMilli()}
		if _, dup := got[pw]; dup {
			t.Errorf("%s holds %s's window %s twice", windowsTopic, r.Page, r.Start)
		}
		got[pw] = *r.Count
		sum += *r.Count
		perPart[r.p]++
		part, known := src.part[r.Page]
		if r.key != r.Page || !r.ts.Equal(r.End) || r.End.Sub(r.Start) != windowSize || pw.start%windowSize.Milliseconds() != 0 || !known || part != r.p {
			t.Errorf("%s/%d@%d: key %q, timestamp %s, page %q, window %s to %s; want the key the page, the timestamp the window's end, a window of %s, on the page's partition %d",
				windowsTopic, r.p, r.offset, r.key, r.ts, r.Page, r.Start, r.End, windowSize, part)
		}
	}
	for p, vs := range onTopic {
		if perPart[p] != int64(len(vs)) {
			t.Errorf("%s/%d: the test's consumer received %d records, a read after the end %d", windowsTopic, p, perPart[p], len(vs))
		}
	}
	if !maps.Equal(got, src.byPage) || sum != int64(src.n) {
		t.Errorf("closed windows' counts: %v (sum %d); views sent per page and window: %v (sum %d)", got, sum, src.byPage, src.n)
	}
	t.Logf("%s: %d records (%d page windows sent), counts sum %d = views sent %d", windowsTopic, len(recs), len(src.byPage), sum, src.n)
}

// windowCloseLag checks window_close_lag: one timing per closed window,
// each >= 0; in order, each within the time from a window's end plus grace
// to the test's first read of that window's record (plus a margin), and
// below the scenario's time.
func (s *scenario) windowCloseLag(w *worker, recs []closedWindow, began time.Time) {
	seen := map[partWindow]time.Time{}
	for _, r := range recs {
		k := partWindow{r.p, r.Start.UnixMilli()}
		if at, ok := seen[k]; !ok || r.seen.Before(at) {
			seen[k] = r.seen
		}
	}
	var bounds []float64
	for k, at := range seen {
		due := time.UnixMilli(k.start).Add(windowSize + windowGrace)
		bounds = append(bounds, float64((at.Sub(due)+windowLagMargin).Microseconds())/1000)
	}
	lags := values(w.sink.find("window_close_lag", map[string]string{"table": windowedTable()}))
	slices.Sort(bounds)
	slices.Sort(lags)
	elapsed := float64(time.Since(began).Milliseconds())
	// The i-th shortest lag within the i-th shortest bound, for every i:
	// each timing can be matched with a window of its own that bounds it.
	ok := len(lags) == len(bounds) && len(lags) > 0 && lags[0] >= 0 && lags[len(lags)-1] <= elapsed
	for i := range lags {
		ok = ok && i < len(bounds) && lags[i] <= bounds[i]
	}
	s.check(ok, "window_close_lag",
		fmt.Sprintf("one per closed window (%d), each >= 0 and below the scenario's %.0fms; matched shortest to shortest, each within its window's end plus grace to the test's first read of its record, +%s: %s",
			len(bounds), elapsed, windowLagMargin, formatMs(bounds)),
		fmt.Sprintf("%d timings: %s", len(lags), formatMs(lags)))
}

func formatMs(v []float64) string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(out, " ") + " ms"
}

// windowsLate checks late_events against the late views on the source
// topic, per partition: the records after the /count/ views (onTime); and
// the counts of records the worker received, processed and sent.
func (s *scenario) windowsLate(w *worker, src sourceViews, onTime map[int32][][]byte, late int, hwm map[int32]int64, onTopic map[int32][][]byte) {
	k := w.sink
	after := map[int32]int64{}
	for p, h := range hwm {
		after[p] = h - int64(len(onTime[p]))
	}
	got := map[string]float64{}
	for p, n := range k.sumBy("late_events", "partition", map[string]string{"table": windowedTable()}) {
		got[p] = float64(n)
	}
	s.check(allMatch(got, after) && total(after) == int64(late) && int64(sumMap(got)) == int64(late), "late_events",
		fmt.Sprintf("the late views sent (%d, each after its window's record reached %s), per partition: the records of %s after the /count/ views", late, windowsTopic, sourceTopic),
		fmt.Sprintf("sum %d; %s; truth %s", int64(sumMap(got)), formatKeyed("p", got), formatWant(after)))
	s.partitionCounts(w, "events", "records on the partition (high watermark), late views included", hwm)
	sent, closed := k.sum("messages_sent", map[string]string{"topic": sourceTopic}), k.sum("messages_sent", map[string]string{"topic": windowsTopic})
	s.check(sent == int64(src.n) && closed == int64(count(onTopic)), "messages_sent",
		fmt.Sprintf("%s: the /count/ views (%d); %s: its records (%d)", sourceTopic, src.n, windowsTopic, count(onTopic)),
		fmt.Sprintf("%d; %d", sent, closed))
	s.check(k.sum("flush_failures", nil) == 0, "flush_failures", "0: no flush was retried (a retried flush closes its windows again)",
		fmt.Sprint(k.sum("flush_failures", nil)))
}

// windowedTable is the example's windowed table, named as its declaration
// names it.
func windowedTable() string {
	views, _ := tableNames()
	return views
}
