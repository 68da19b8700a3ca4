package truth

import (
	"fmt"
	"io/fs"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
)

// TestCatchUp: 300k page views wait on the source topic before the worker
// starts. While it catches up, messages_active is above 0; at the end each
// partition's offsets are the broker's, the counts are the records sent,
// and the table and HTTP figures are what the broker and the test know.
func TestCatchUp(t *testing.T) {
	s := newScenario(t, "catch-up")
	const records, pages = 300_000, 1000
	ts := time.Now().Truncate(time.Millisecond)
	s.kafka.produce(records, func(i int) *sarama.ProducerMessage {
		return view(fmt.Sprintf("/catch-up/%d", i%pages), i, ts)
	})
	sent := s.kafka.hwms(sourceTopic)
	if total(sent) != records {
		t.Fatalf("the broker holds %d records after %d were acknowledged", total(sent), records)
	}

	dataDir := t.TempDir()
	started := time.Now()
	w := s.start("worker", dataDir, map[string]string{"COMMIT_INTERVAL": "2s"})
	hwm := s.caughtUp(3 * time.Minute)
	committed := s.kafka.committed(group, sourceTopic)
	s.settled(w, hwm, 30*time.Second)

	s.catchUpOffsets(w, records, hwm, committed)
	s.catchUpEvents(w, records, hwm, ts, started)
	s.catchUpTables(w, pages)
	s.catchUpGroup(w)
	s.catchUpHTTP(w)
	s.catchUpRuntime(w, started)
}

// catchUpOffsets checks the catch-up's offsets and lag: messages_active
// above 0 while the records were processed and 0 at the end, and each
// partition's offsets the broker's.
func (s *scenario) catchUpOffsets(w *worker, records int, hwm, committed map[int32]int64) {
	k := w.sink
	active := k.gauges("messages_active", nil)
	s.check(slices.Max(append(active, 0)) > 0, "messages_active",
		fmt.Sprintf("above 0 while %d records were processed between commits 2s apart", records),
		fmt.Sprintf("max %v in %d samples", slices.Max(append(active, 0)), len(active)))
	if last := k.lastBy("messages_active", "partition", nil); !allEqual(last, partitionsOf(hwm), 0) {
		s.check(false, "messages_active", "0 at the end", fmt.Sprint(last))
	}
	s.partitionGauges(w, "end_offset", "broker high watermark", hwm)
	s.partitionGauges(w, "committed_offset", "group's committed offset (ListConsumerGroupOffsets)", committed)
	readNext := map[int32]int64{}
	for p, v := range k.lastBy("read_offset", "partition", nil) {
		readNext[parsePartition(s.t, p)] = int64(v) + 1
	}
	s.check(maps.Equal(readNext, committed), "read_offset", "+1 equals the group's committed offset, per partition",
		fmt.Sprintf("+1: %v; committed %v", readNext, committed))
	s.partitionGauges(w, "consumer_lag", "0: the broker's lag (high watermark - committed)", zeros(hwm))
	s.partitionGauges(w, "consumer_lag_seconds", "0 once nothing lags", zeros(hwm))
}

// catchUpEvents checks the counts of the records processed and the
// timings of the events: the records of each partition, one timing in 64
// at least, each latency between the worker's start and now.
func (s *scenario) catchUpEvents(w *worker, records int, hwm map[int32]int64, ts, started time.Time) {
	k := w.sink
	s.partitionCounts(w, "messages_received", "records on the partition (high watermark)", hwm)
	s.partitionCounts(w, "events", "records sent, all valid", hwm)
	s.check(k.sum("dead_letters", nil) == 0, "dead_letters", "0: every record valid", fmt.Sprint(k.sum("dead_letters", nil)))

	// One event in 64 is timed, counted from the partition's last report:
	// at least ceil(n/64) of a partition's n events.
	var least int64
	for _, n := range hwm {
		least += (n + 63) / 64
	}
	runtimes, latencies := values(k.find("event_runtime", nil)), values(k.find("event_latency", nil))
	s.check(int64(len(runtimes)) >= least && len(runtimes) <= records, "event_runtime",
		fmt.Sprintf("between %d (1 in 64 per partition) and %d timings, each >= 0", least, records),
		fmt.Sprintf("%d timings, min %.3fms", len(runtimes), minOf(runtimes)))
	if minOf(runtimes) < 0 {
		s.check(false, "event_runtime", "each >= 0", fmt.Sprint(minOf(runtimes)))
	}
	// Every record's timestamp is ts, from before the worker started: no
	// event was processed sooner after it than the start, nor later than now.
	lo, hi := started.Sub(ts).Seconds()*1000, time.Since(ts).Seconds()*1000
	s.check(len(latencies) == len(runtimes) && minOf(latencies) >= lo && maxOf(latencies) <= hi, "event_latency",
		fmt.Sprintf("one per timed event (%d), each between %.0fms (record timestamp to worker start) and %.0fms (to now)", len(runtimes), lo, hi),
		fmt.Sprintf("%d, min %.0fms, max %.0fms", len(latencies), minOf(latencies), maxOf(latencies)))
	commits := values(k.find("commit_latency", nil))
	s.check(len(commits) > 0 && minOf(commits) >= 0, "commit_latency", "sent, each >= 0 (a bound: its truth is inside the process)",
		fmt.Sprintf("%d timings, max %.1fms", len(commits), maxOf(commits)))
}

// catchUpTables checks the tables against their changelogs: each commit
// writes a changed key once to its changelog (and a windowed table, besides
// its keys, its partitions' closed-up-to points, which messages_sent
// counts and table_keys_updated does not).
func (s *scenario) catchUpTables(w *worker, pages int) {
	k := w.sink
	views, totals := tableNames()
	for _, table := range []string{views, totals} {
		changelog := app.Changelog(group, table)
		keys := int64(count(s.kafka.readKeys(changelog)))
		written := int64(count(s.kafka.readCommitted(changelog)))
		s.check(k.sum("table_keys_updated", map[string]string{"table": table}) == keys, "table_keys_updated",
			fmt.Sprintf("records of keys on %s (read_committed; not the closed-up-to points): %d", changelog, keys),
			fmt.Sprintf("table %s: %d", table, k.sum("table_keys_updated", map[string]string{"table": table})))
		sentTo := k.sum("messages_sent", map[string]string{"topic": changelog})
		s.check(sentTo == written, "messages_sent", fmt.Sprintf("records on %s: %d", changelog, written), fmt.Sprint(sentTo))
		cached, _ := k.last("table_keys", map[string]string{"table": table})
		s.check(cached > 0 && cached <= float64(pages), "table_keys",
			fmt.Sprintf("between 1 and the %d pages sent (one 24h window of views)", pages), fmt.Sprintf("%s: %v", table, cached))
	}
	sendLat := values(k.find("send_latency", nil))
	s.check(len(sendLat) > 0 && minOf(sendLat) >= 0, "send_latency", "sent, each >= 0 (a bound)",
		fmt.Sprintf("%d timings, max %.1fms", len(sendLat), maxOf(sendLat)))
}

// catchUpGroup checks the group's metrics: one worker, one generation.
func (s *scenario) catchUpGroup(w *worker) {
	k := w.sink
	gen := maxGeneration(w.Entries("partition assigned"))
	lastGen, _ := k.last("generation", nil)
	s.check(lastGen == float64(gen), "generation", fmt.Sprintf("the generation of the partition assigned log lines: %d", gen), fmt.Sprint(lastGen))
	s.check(k.sum("rebalances", nil) == 1, "rebalances", "1: the only worker joined one generation", fmt.Sprint(k.sum("rebalances", nil)))
	state := k.gauges("rebalance_state", nil)
	s.check(slices.Contains(state, 1) && state[len(state)-1] == 0, "rebalance_state", "1 while joining and recovering, then 0",
		fmt.Sprintf("%d samples, 1 seen: %v, last %v", len(state), slices.Contains(state, 1), state[len(state)-1]))
	assigned, _ := k.last("partitions_assigned", nil)
	s.check(assigned == partitions, "partitions_assigned", fmt.Sprintf("%d: every partition", partitions), fmt.Sprint(assigned))
	standby, _ := k.last("standby_partitions", nil)
	s.check(standby == 0, "standby_partitions", "0: TABLE_STANDBY_REPLICAS=0", fmt.Sprint(standby))
	ends := values(k.find("rebalance_end_latency", nil))
	logged := w.Entries("all partitions processing")
	s.check(len(ends) == len(logged) && len(ends) > 0 && math.Abs(ends[0]-float64(logged[0].Num("rebalance_ms"))) < 1, "rebalance_end_latency",
		fmt.Sprintf("one per all partitions processing log line (%d), its rebalance_ms", len(logged)), fmt.Sprintf("%v ms", ends))
}

// catchUpHTTP checks the HTTP metrics against the test's own requests: the
// test is the only client.
func (s *scenario) catchUpHTTP(w *worker) {
	k := w.sink
	const requests = 7
	for range requests {
		w.Report(s.t)
	}
	// The client aggregates for 100 ms and flushes every second: wait until
	// every request is in, then one flush more, so that one too many would
	// show as well.
	s.eventually("every request counted", 30*time.Second, func() (bool, string) {
		n, lat := k.sum("http_requests", nil), len(values(k.find("http_latency", map[string]string{"path": "/report/"})))
		return n >= requests && lat >= requests, fmt.Sprintf("%d requests, %d latencies", n, lat)
	})
	time.Sleep(1500 * time.Millisecond)
	reqs := k.sum("http_requests", nil)
	ok200 := k.sum("http_requests", map[string]string{"path": "/report/", "status_code": "200"})
	s.check(reqs == requests && ok200 == requests, "http_requests", fmt.Sprintf("%d: the test's GET /report/ calls, the only ones", requests),
		fmt.Sprintf("%d in all, %d path:/report/ status_code:200", reqs, ok200))
	httpLat := values(k.find("http_latency", map[string]string{"path": "/report/"}))
	s.check(len(httpLat) == requests, "http_latency", fmt.Sprintf("one per request (%d)", requests), fmt.Sprint(len(httpLat)))
}

// catchUpRuntime checks the Go runtime and Pebble gauges. They have no
// truth outside the process: bounds only.
func (s *scenario) catchUpRuntime(w *worker, started time.Time) {
	k := w.sink
	gor, _ := k.last("go_goroutines", nil)
	heap, _ := k.last("go_heap_bytes", nil)
	pauses := k.gauges("go_gc_pause_seconds", nil)
	s.check(gor > 0 && gor < 10000, "go_goroutines", "between 1 and 10000 (the liveness bound)", fmt.Sprint(gor))
	s.check(heap > 1<<20 && heap < 4<<30, "go_heap_bytes", "between 1 MiB and 4 GiB", fmt.Sprint(heap))
	s.check(minOf(pauses) >= 0 && slices.IsSorted(pauses) && maxOf(pauses) < time.Since(started).Seconds(), "go_gc_pause_seconds",
		"the total since start: each >= 0, never decreasing, below the worker's lifetime", fmt.Sprintf("last %.4fs over %d samples", maxOf(pauses), len(pauses)))
	comp, stalls := k.sum("pebble_compactions", nil), k.sum("pebble_write_stalls", nil)
	s.check(comp >= 0 && stalls >= 0 && len(k.find("pebble_compactions", nil)) > 0, "pebble_compactions",
		"sent, >= 0 (a bound: Pebble's own count)", fmt.Sprintf("%d compactions, %d write stalls", comp, stalls))
}

// partitionGauges checks the last value of gauge name of every partition
// against want.
func (s *scenario) partitionGauges(w *worker, name, truth string, want map[int32]int64) {
	s.t.Helper()
	got := w.sink.lastBy(name, "partition", nil)
	s.check(allMatch(got, want), name, truth+", per partition", fmt.Sprintf("%s; truth %s", formatKeyed("p", got), formatWant(want)))
}

// partitionCounts checks the sum of count name of every partition against
// want.
func (s *scenario) partitionCounts(w *worker, name, truth string, want map[int32]int64) {
	s.t.Helper()
	got := map[string]float64{}
	for p, n := range w.sink.sumBy(name, "partition", nil) {
		got[p] = float64(n)
	}
	s.check(allMatch(got, want), name, truth+", per partition", fmt.Sprintf("sum %d; %s; truth %s", int64(sumMap(got)), formatKeyed("p", got), formatWant(want)))
}

func allMatch(got map[string]float64, want map[int32]int64) bool {
	if len(got) < len(want) {
		return false
	}
	for p, v := range want {
		g, ok := got[partitionKey(p)]
		if !ok || g != float64(v) {
			return false
		}
	}
	return true
}

func allEqual(got map[string]float64, parts []int32, v float64) bool {
	for _, p := range parts {
		if got[partitionKey(p)] != v {
			return false
		}
	}
	return true
}

func partitionsOf(m map[int32]int64) []int32 {
	var out []int32
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func zeros(m map[int32]int64) map[int32]int64 {
	out := map[int32]int64{}
	for p := range m {
		out[p] = 0
	}
	return out
}

func formatWant(m map[int32]int64) string {
	var parts []string
	for _, p := range partitionsOf(m) {
		parts = append(parts, fmt.Sprintf("p%d=%d", p, m[p]))
	}
	return strings.Join(parts, " ")
}

func parsePartition(t testing.TB, s string) int32 {
	t.Helper()
	var p int32
	if _, err := fmt.Sscan(s, &p); err != nil {
		t.Fatalf("partition tag %q: %v", s, err)
	}
	return p
}

// values are the values of points, in arrival order.
func values(ps []point) []float64 {
	var out []float64
	for _, p := range ps {
		out = append(out, p.Values...)
	}
	return out
}

func minOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return slices.Min(v)
}

func maxOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return slices.Max(v)
}

func sumMap(m map[string]float64) float64 {
	var n float64
	for _, v := range m {
		n += v
	}
	return n
}

// dirSize is the size of the regular files under dir.
func dirSize(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatalf("size of %s: %v", dir, err)
	}
	return n
}
