package faults

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// The closed-window crash run: short tumbling windows that close many times
// while views go through /count/ of three workers and one worker at a time
// is killed with SIGKILL and started again on its data directory. Nothing
// expires during the run, so the views changelog still holds every window
// when the run is checked.
const (
	cwSize        = 2 * time.Second
	cwGrace       = time.Second
	cwExpires     = 10 * time.Minute
	cwPages       = 40
	cwConcurrency = 8
	cwKills       = 3
	// cwKillEvery is the load before each kill (a kill also waits for a
	// stable group); the load runs as long again after the last one.
	cwKillEvery = 8 * time.Second
	// cwTopic is where a closed window's count goes; cwClosedKey is the
	// views changelog's key of a partition's closed-up-to point.
	cwTopic     = topic + "-windows"
	cwClosedKey = "\x00closed"
)

// cwResult is what one closed-window run measured.
type cwResult struct {
	guarantee               string
	acked, unknown          int64
	inWindows               int64 // views in the changelog's windows
	pairs, records          int   // (page, window) pairs; records read
	withoutValue            int   // acknowledged pairs with no changelog value: every view late
	kills, duplicates       int
	load, drain, closeAfter time.Duration
}

// TestClosedWindowsKill9 checks page_views-windows against the views
// changelog after a crash run with 2s windows: under exactly_once every
// closed (page, window) has exactly one record, with the changelog's final
// count; under at_least_once none is missing (duplicates are reported).
func TestClosedWindowsKill9(t *testing.T) {
	needChaos(t)
	seed := faultsSeed(t)
	var results []*cwResult
	for _, g := range []string{"exactly_once", "at_least_once"} {
		res := &cwResult{guarantee: g}
		results = append(results, res)
		t.Run(g, func(t *testing.T) { closedWindowsRun(t, res, seed) })
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-14s %7s %7s %6s %9s %6s %5s %6s %5s %8s %7s %7s\n", "guarantee", "acked", "unknown",
		"late", "(pg,win)", "recs", "dups", "no-val", "kills", "load", "drain", "closed")
	for _, r := range results {
		fmt.Fprintf(&b, "%-14s %7d %7d %6d %9d %6d %5d %6d %5d %8s %7s %7s\n", r.guarantee, r.acked, r.unknown,
			r.acked-r.inWindows, r.pairs, r.records, r.duplicates, r.withoutValue, r.kills, r.load.Round(100*time.Millisecond),
			r.drain.Round(100*time.Millisecond), r.closeAfter.Round(100*time.Millisecond))
	}
	b.WriteString("late: acknowledged views in no window of the changelog (late, or unknown ones that went through);\n" +
		"(pg,win): (page, window) pairs of the views changelog; recs: page_views-windows records; dups: records beyond one per\n" +
		"pair; no-val: pairs that got acknowledged views but have no changelog value (every view late) and so no record;\n" +
		"drain: from the load's end until the group committed everything; closed: from then until every window closed\n")
	t.Log(b.String())
}

// closedWindowsRun is one run under res.guarantee; it fills res as it goes.
func closedWindowsRun(t *testing.T, res *cwResult, seed uint64) {
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	var ws []*worker
	for i := range crashWorkers {
		env := workerEnv(b.Addr, filepath.Join(t.TempDir(), fmt.Sprintf("data%d", i)), map[string]string{
			"PROCESSING_GUARANTEE":  res.guarantee,
			"KAFKA_SESSION_TIMEOUT": "6s",
			"WINDOW_SIZE":           cwSize.String(),
			"WINDOW_GRACE":          cwGrace.String(),
			"WINDOW_EXPIRES":        cwExpires.String(),
		})
		ws = append(ws, startWorker(t, dir, fmt.Sprintf("worker%d", i), env))
	}
	for _, w := range ws {
		w.WaitReady(t, 120*time.Second)
	}
	tl := newTally(cwSize)
	p := newPool(seed, ws...)
	c := &crashCluster{t: t, res: &crashResult{guarantee: res.guarantee}, ws: ws, pool: p, tally: tl}
	c.kafka = openKafka(t, b.Addr)
	c.load = startLoad(p, pageNames("/win", cwPages), tl, 0, cwConcurrency)
	cwKillUnderLoad(c, rand.New(rand.NewPCG(seed, 2)))
	c.load.stop()
	_, res.acked, res.unknown = tl.totals()
	res.kills, res.load = c.res.kills, c.load.took
	t.Logf("%s: load done in %s: %d acknowledged, %d unknown, %d kills; outcomes: %s", res.guarantee,
		res.load.Round(time.Millisecond), res.acked, res.unknown, res.kills, tl.outcomeSummary())

	stopped := time.Now()
	c.kafka.waitDrained(t, group, topic, 3*time.Minute, c.supervise)
	res.drain = time.Since(stopped)
	var cl cwChangelog
	waitFor(t, 2*time.Minute, "every window of the run closed", func() (bool, string) {
		c.supervise()
		cl = readCwChangelog(t, c.kafka)
		return cl.allClosed(dir)
	})
	res.closeAfter = time.Since(stopped) - res.drain
	recs := readCwRecords(t, c.kafka)
	res.pairs, res.records = len(cl.counts), 0
	for wk, n := range cl.counts {
		res.inWindows += n
		res.records += len(recs[wk])
	}
	res.duplicates = checkCwRecords(t, res.guarantee, dir, cl, recs)
	res.withoutValue = cwLate(t, res.guarantee, tl, cl)
	t.Logf("%s: %d (page, window) pairs over %d partitions, %d records on %s, %d duplicates, %d kills; every window closed %s after the load's end",
		res.guarantee, res.pairs, len(cl.newest), res.records, cwTopic, res.duplicates, res.kills, (res.drain + res.closeAfter).Round(time.Millisecond))
	if cl.backward > 0 {
		t.Logf("%s: a partition's closed-up-to point went back %d times in the views changelog", res.guarantee, cl.backward)
	}
}

// cwKillUnderLoad kills a random worker after every cwKillEvery of load,
// each time once the group is stable and every worker ready and nothing
// the victim answers is outstanding, and starts it again at once on its
// data directory; the load then runs cwKillEvery more.
func cwKillUnderLoad(c *crashCluster, victims *rand.Rand) {
	t, p := c.t, c.pool
	t.Helper()
	last := time.Now() // the start, then the last kill
	loadFor := func(what string) {
		waitFor(t, cwKillEvery+2*time.Minute, what, func() (bool, string) {
			c.supervise()
			return time.Since(last) >= cwKillEvery, fmt.Sprintf("%d views sent (%s)", c.load.done(), c.tally.outcomeSummary())
		})
	}
	for i := 1; i <= cwKills; i++ {
		loadFor(fmt.Sprintf("%s of load before kill %d", cwKillEvery, i))
		waitFor(t, 3*time.Minute, fmt.Sprintf("a stable group before kill %d", i), func() (bool, string) {
			c.supervise()
			state, err := c.kafka.groupState(group)
			if err != nil || state != "Stable" {
				return false, fmt.Sprintf("group %q %v", state, err)
			}
			return c.allReady()
		})
		s := p.slots[victims.IntN(len(p.slots))]
		p.drain(s)
		if !s.w.Running() {
			c.crashed(s)
		}
		s.w.Kill(t)
		c.res.kills++
		_, acked, _ := c.tally.totals()
		t.Logf("kill %d: SIGKILL %s after %d views sent, %d acknowledged", i, s.w.Name, c.load.done(), acked)
		s.w.start()
		p.activate(s)
		last = time.Now()
	}
	loadFor(fmt.Sprintf("%s of load after the last kill", cwKillEvery))
}

// cwChangelog is the views changelog as a read_committed reader, and so a
// recovering worker, sees it: the last value of each key.
type cwChangelog struct {
	counts map[windowKey]int64
	part   map[windowKey]int32
	closed map[int32]int64 // each partition's closed-up-to point (a window start, Unix ms)
	newest map[int32]int64 // each partition's newest window start of a page
	// backward counts closed-up-to points lower than one before them.
	backward int
}

func readCwChangelog(t testing.TB, k *kafkaClient) cwChangelog {
	t.Helper()
	cl := cwChangelog{counts: map[windowKey]int64{}, part: map[windowKey]int32{}, closed: map[int32]int64{}, newest: map[int32]int64{}}
	for _, m := range k.readAll(t, group+"-views-changelog", sarama.ReadCommitted) {
		key, p := string(m.Key), m.Partition
		if key == cwClosedKey {
			n, err := strconv.ParseInt(string(m.Value), 10, 64)
			if err != nil {
				t.Fatalf("views changelog %d/%d: closed-up-to point %q is not a number", p, m.Offset, m.Value)
			}
			if n < cl.closed[p] {
				cl.backward++
			}
			cl.closed[p] = max(cl.closed[p], n)
			continue
		}
		if strings.HasPrefix(key, pageview.ReservedPrefix) {
			continue // the livecheck's views
		}
		i := strings.LastIndexByte(key, '|')
		start, err := strconv.ParseInt(key[i+1:], 10, 64)
		if i < 0 || err != nil {
			t.Fatalf("views changelog %d/%d: key %q is not page|window start", p, m.Offset, key)
		}
		wk := windowKey{key[:i], start}
		if m.Value == nil {
			delete(cl.counts, wk)
			continue
		}
		n, err := strconv.ParseInt(string(m.Value), 10, 64)
		if err != nil {
			t.Fatalf("views changelog %d/%d: key %q value %q is not a count", p, m.Offset, key, m.Value)
		}
		cl.counts[wk], cl.part[wk] = n, p
		if s, ok := cl.newest[p]; !ok || start > s {
			cl.newest[p] = start
		}
	}
	return cl
}

// allClosed reports whether every partition's closed-up-to point has passed
// its newest window, and otherwise which partitions lag and who held them.
func (cl cwChangelog) allClosed(dir string) (bool, string) {
	var open []string
	for p, s := range cl.newest {
		if cl.closed[p] <= s {
			open = append(open, fmt.Sprintf("partition %d closed up to %s, its newest window starts %s; its owners:\n%s",
				p, cwTime(cl.closed[p]), cwTime(s), cwHistory(dir, p)))
		}
	}
	slices.Sort(open)
	return len(open) == 0, strings.Join(first(open, 3), "\n")
}

// cwRecord is one record of page_views-windows for a (page, window).
type cwRecord struct {
	partition int32
	offset    int64
	count     int64
}

// readCwRecords reads page_views-windows read_committed. A record whose
// value is not the page, an RFC 3339 UTC start and end cwSize apart and a
// count, or whose timestamp is not the window's end, fails the test.
func readCwRecords(t testing.TB, k *kafkaClient) map[windowKey][]cwRecord {
	t.Helper()
	recs := map[windowKey][]cwRecord{}
	var bad []string
	for _, m := range k.readAll(t, cwTopic, sarama.ReadCommitted) {
		var v struct {
			Page  string `json:"page"`
			Start string `json:"window_start"`
			End   string `json:"window_end"`
			Count *int64 `json:"count"`
		}
		err := json.Unmarshal(m.Value, &v)
		start, serr := time.Parse(time.RFC3339, v.Start)
		end, eerr := time.Parse(time.RFC3339, v.End)
		if err != nil || serr != nil || eerr != nil || v.Count == nil || v.Page != string(m.Key) || end.Sub(start) != cwSize ||
			!strings.HasSuffix(v.End, "Z") || !m.Timestamp.Equal(end) {
			bad = append(bad, fmt.Sprintf("%d/%d key %q timestamp %s value %s", m.Partition, m.Offset, m.Key, m.Timestamp.UTC().Format(time.RFC3339Nano), m.Value))
			continue
		}
		if strings.HasPrefix(v.Page, pageview.ReservedPrefix) {
			continue
		}
		wk := windowKey{v.Page, start.UnixMilli()}
		recs[wk] = append(recs[wk], cwRecord{m.Partition, m.Offset, *v.Count})
	}
	if len(bad) > 0 {
		t.Errorf("%d records of %s are not {page, window_start, window_end (RFC 3339 UTC, %s apart), count} timestamped with the window's end:\n%s",
			len(bad), cwTopic, cwSize, strings.Join(first(bad, 10), "\n"))
	}
	return recs
}

// checkCwRecords compares the records of page_views-windows with the views
// changelog and returns how many records repeat a (page, window). No
// closed window of the changelog may lack its record; under exactly_once
// none may have two, and each record's count must be the changelog's.
func checkCwRecords(t *testing.T, guarantee, dir string, cl cwChangelog, recs map[windowKey][]cwRecord) (dups int) {
	t.Helper()
	var missing, twice, wrong, unknown []string
	for wk, rs := range recs {
		n, ok := cl.counts[wk]
		if !ok {
			unknown = append(unknown, fmt.Sprintf("%s window %s: %d records, the first %d/%d counting %d, and no changelog value",
				wk.page, cwTime(wk.start), len(rs), rs[0].partition, rs[0].offset, rs[0].count))
			continue
		}
		if len(rs) > 1 {
			dups += len(rs) - 1
			twice = append(twice, fmt.Sprintf("%s window %s (views partition %d): %d records %v", wk.page, cwTime(wk.start), cl.part[wk], len(rs), rs))
		}
		for _, r := range rs {
			if r.count != n {
				wrong = append(wrong, fmt.Sprintf("%s window %s (views partition %d): record %d/%d counts %d, the changelog %d",
					wk.page, cwTime(wk.start), cl.part[wk], r.partition, r.offset, r.count, n))
			}
		}
	}
	missingIn := map[int32]bool{}
	for wk, n := range cl.counts {
		if p := cl.part[wk]; wk.start < cl.closed[p] && len(recs[wk]) == 0 {
			missing = append(missing, fmt.Sprintf("%s window %s (views partition %d, closed up to %s): %d views in the changelog, no record",
				wk.page, cwTime(wk.start), p, cwTime(cl.closed[p]), n))
			missingIn[p] = true
		}
	}
	for _, l := range [][]string{missing, twice, wrong, unknown} {
		slices.Sort(l)
	}
	if len(missing) > 0 {
		var owners []string
		for p := range missingIn {
			owners = append(owners, fmt.Sprintf("owners of views partition %d:\n%s", p, cwHistory(dir, p)))
		}
		slices.Sort(owners)
		t.Errorf("%s: %d closed (page, window) pairs of %d have no record on %s:\n%s\n%s", guarantee, len(missing),
			len(cl.counts), cwTopic, strings.Join(first(missing, 20), "\n"), strings.Join(first(owners, 2), "\n"))
	}
	report := t.Errorf
	if guarantee != "exactly_once" {
		report = t.Logf // at least once: allowed, only reported
	}
	if len(twice) > 0 {
		report("%s: %d (page, window) pairs have more than one record on %s (%d records too many):\n%s",
			guarantee, len(twice), cwTopic, dups, strings.Join(first(twice, 20), "\n"))
	}
	if len(wrong) > 0 {
		report("%s: %d records of %s differ from the changelog's final count:\n%s", guarantee, len(wrong), cwTopic, strings.Join(first(wrong, 20), "\n"))
	}
	if len(unknown) > 0 {
		report("%s: %d (page, window) pairs of %s are not in the views changelog:\n%s", guarantee, len(unknown), cwTopic, strings.Join(first(unknown, 20), "\n"))
	}
	return dups
}

// cwHistory is the membership and recovery lines about partition p in the
// logs of every worker run in dir (killed runs too), the last 30: who held
// the partition when.
func cwHistory(dir string, p int32) string {
	files, _ := filepath.Glob(filepath.Join(dir, "worker*.stdout"))
	keep := map[string]bool{"partition assigned": true, "partition released": true, "partition resumed": true, "recovering": true, "recovered": true}
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		run := strings.TrimSuffix(filepath.Base(f), ".stdout")
		for _, l := range strings.Split(string(data), "\n") {
			var e harness.Entry
			if json.Unmarshal([]byte(l), &e) != nil || e.Str("partition") != "" || e["partition"] == nil || int32(e.Num("partition")) != p {
				continue
			}
			if keep[e.Str("msg")] || e.Str("level") == "WARN" || e.Str("level") == "ERROR" {
				at, _ := time.Parse(time.RFC3339Nano, e.Str("time"))
				lines = append(lines, line{at, fmt.Sprintf("%s %s: %.300s", at.UTC().Format("15:04:05.000"), run, l)})
			}
		}
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	var out []string
	for _, l := range lines[max(0, len(lines)-30):] {
		out = append(out, l.text)
	}
	return strings.Join(out, "\n")
}

// cwTime shows a window start (Unix ms) as RFC 3339 UTC with milliseconds.
func cwTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// cwLate logs the acknowledged views that their window does not hold, by
// window and views partition, and returns how many (page, window) pairs
// with acknowledged views have no value in the changelog at all (every view
// came late, so no record either). Only logged: whether a view comes late
// depends on timing. The tally knows a view's window when its /count/ call
// began and ended in it.
func cwLate(t *testing.T, guarantee string, tl *tally, cl cwChangelog) (withoutValue int) {
	t.Helper()
	partOf := map[string]int32{}
	for wk, p := range cl.part {
		partOf[wk.page] = p
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	byWindow := map[int64]map[int32]int64{}
	var late int64
	for wk, n := range tl.windows {
		got, ok := cl.counts[wk]
		if !ok {
			withoutValue++
		}
		if n <= got {
			continue
		}
		p, known := partOf[wk.page]
		if !known {
			p = -1
		}
		if byWindow[wk.start] == nil {
			byWindow[wk.start] = map[int32]int64{}
		}
		byWindow[wk.start][p] += n - got
		late += n - got
	}
	var lines []string
	for start, parts := range byWindow {
		var ps []string
		for p, n := range parts {
			ps = append(ps, fmt.Sprintf("p%d %d", p, n))
		}
		slices.Sort(ps)
		lines = append(lines, fmt.Sprintf("window %s: %s", cwTime(start), strings.Join(ps, ", ")))
	}
	slices.Sort(lines)
	t.Logf("%s: %d acknowledged views are missing from their window (late); %d (page, window) pairs that got acknowledged views have no changelog value and so no record; by window and views partition:\n%s",
		guarantee, late, withoutValue, strings.Join(lines, "\n"))
	return withoutValue
}
