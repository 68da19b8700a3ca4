package faults

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// The crash run: views sent through /count/ of three workers while one
// worker at a time is killed with SIGKILL and started again on its data
// directory.
const (
	crashViews       = 200_000
	crashPages       = 500
	crashConcurrency = 16
	crashWorkers     = 3
	crashKills       = 5
	// crashBacklog views are then written straight to the topic, to measure
	// how fast the workers process without /count/ in front.
	crashBacklog = 1_000_000
	// A day-long window holds the whole run unless it crosses midnight UTC;
	// the tally then knows which views fell on which side.
	crashWindow  = 24 * time.Hour
	crashExpires = 48 * time.Hour
)

// crashResult is what one run measured.
type crashResult struct {
	guarantee         string
	sent, acked       int64 // through /count/, during the kills
	unknown           int64
	backlog           int64 // written straight to the topic afterwards
	counted           int64 // the report's total over every page
	load, endToEnd    time.Duration
	processBacklog    time.Duration
	kills             int
	crashes           int // workers that exited by themselves
	windowsChecked    int
	boundaryCrossings int64
}

func (r crashResult) overcount() int64 { return r.counted - r.acked - r.backlog }

func rate(n int64, d time.Duration) float64 { return float64(n) / max(d.Seconds(), 1e-9) }

// TestEOSKill9 runs the crash run under exactly_once, where every page's
// total and every window's count must equal the acknowledged views
// exactly, and then under at_least_once, where nothing may be lost and the
// overcount is reported. It prints the figures of both and the throughput
// cost of exactly-once.
func TestEOSKill9(t *testing.T) {
	needChaos(t)
	seed := faultsSeed(t)

	var results []*crashResult
	for _, g := range []string{"exactly_once", "at_least_once"} {
		res := &crashResult{guarantee: g}
		results = append(results, res)
		t.Run(g, func(t *testing.T) { crashRun(t, res, seed) })
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\n%-14s %7s %7s %7s %7s %7s %6s %5s %7s %8s %8s %9s %9s %10s\n",
		"guarantee", "events", "acked", "unknown", "backlog", "totals", "over", "kills", "crashes",
		"load", "views/s", "to-drain", "backlog", "backlog/s")
	for _, r := range results {
		over := "n/a" // the run failed before the report
		if r.counted > 0 {
			over = strconv.FormatInt(r.overcount(), 10)
		}
		fmt.Fprintf(&b, "%-14s %7d %7d %7d %7d %7d %6s %5d %7d %8s %8.0f %9s %9s %10.0f\n",
			r.guarantee, r.sent, r.acked, r.unknown, r.backlog, r.counted, over, r.kills, r.crashes,
			r.load.Round(100*time.Millisecond), rate(r.acked, r.load), r.endToEnd.Round(100*time.Millisecond),
			r.processBacklog.Round(100*time.Millisecond), rate(r.backlog, r.processBacklog))
	}
	b.WriteString("events/acked/unknown: /count/ calls during the kills; crashes: workers that exited by themselves;\n" +
		"views/s: acknowledged over the load's duration; " +
		"to-drain: from the first view until every record was committed; backlog: views written straight to the topic\n" +
		"afterwards and the time until all were committed; totals: the report over every page; over: totals - acked - backlog\n")
	if len(results) == 2 && results[0].counted > 0 && results[1].counted > 0 {
		eos, alo := results[0], results[1]
		fmt.Fprintf(&b, "exactly_once vs at_least_once: /count/ load %+.1f%%, load to drained %+.1f%%, backlog processing %+.1f%% (negative is the cost of exactly_once)\n",
			100*(rate(eos.acked, eos.load)/rate(alo.acked, alo.load)-1),
			100*(rate(eos.acked, eos.endToEnd)/rate(alo.acked, alo.endToEnd)-1),
			100*(rate(eos.backlog, eos.processBacklog)/max(rate(alo.backlog, alo.processBacklog), 1e-9)-1))
		fmt.Fprintf(&b, "at_least_once overcount after %d kills: %d views (%.3f%% of the acknowledged)\n",
			alo.kills, alo.overcount(), 100*float64(alo.overcount())/float64(max(alo.acked, 1)))
	}
	t.Log(b.String())
}

// faultsSeed is the seed of the choice of workers to kill: FAULTS_SEED,
// or the clock's, logged so that a run can be repeated.
func faultsSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FAULTS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FAULTS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (FAULTS_SEED=%d repeats the choice of workers to kill)", seed, seed)
	return seed
}

// crashRun fills res as it goes, so a failed run still shows its figures.
func crashRun(t *testing.T, res *crashResult, seed uint64) {
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	ws := startCrashWorkers(t, dir, b.Addr, res.guarantee)
	pages := pageNames("/eos", crashPages)
	tl := newTally(crashWindow)
	p := newPool(seed, ws...)
	victims := rand.New(rand.NewPCG(seed, 1))
	began := time.Now()
	c := &crashCluster{t: t, res: res, ws: ws, pool: p, tally: tl}
	c.load = startLoad(p, pages, tl, crashViews, crashConcurrency)
	c.kafka = openKafka(t, b.Addr)
	c.killWorkers(victims)
	c.finishLoad()
	c.kafka.waitDrained(t, group, topic, 5*time.Minute, c.supervise)
	res.endToEnd = time.Since(began)
	c.processBacklog(b.Addr, pages)

	r := c.completeReport()
	reportNow := windowStart(time.Now(), crashWindow)
	res.counted = r.Count
	for _, n := range tl.straddle {
		res.boundaryCrossings += n
	}
	if res.boundaryCrossings > 0 {
		t.Logf("%d acknowledged views were sent across a window boundary (midnight UTC): their window is known only as one of two", res.boundaryCrossings)
	}

	over := checkNothingLost(t, res.guarantee, tl, pages, r)
	if res.guarantee != "exactly_once" {
		t.Logf("at_least_once: %d views counted beyond the %d acknowledged and %d written directly (%d pages over)", res.overcount(), res.acked, res.backlog, len(over))
		return
	}
	if len(over) > 0 {
		t.Errorf("exactly_once counted views twice on %d pages:\n%s", len(over), strings.Join(first(over, 20), "\n"))
	}
	checkWindowOfNow(t, tl, pages, r, reportNow)

	// Every window and every total, from the changelogs as a read_committed
	// consumer (and so a recovering worker) sees them.
	res.windowsChecked = checkChangelogs(t, c.kafka, tl, pages)
	t.Logf("exactly_once: %d page totals and %d page windows equal the acknowledged views", len(pages), res.windowsChecked)
}

// startCrashWorkers starts the crash run's workers under guarantee and
// waits until each is ready.
func startCrashWorkers(t *testing.T, dir, addr, guarantee string) []*worker {
	t.Helper()
	var ws []*worker
	for i := range crashWorkers {
		env := workerEnv(addr, filepath.Join(t.TempDir(), fmt.Sprintf("data%d", i)), map[string]string{
			"PROCESSING_GUARANTEE":  guarantee,
			"KAFKA_SESSION_TIMEOUT": "6s",
			"WINDOW_SIZE":           crashWindow.String(),
			"WINDOW_EXPIRES":        crashExpires.String(),
		})
		ws = append(ws, startWorker(t, dir, fmt.Sprintf("worker%d", i), env))
	}
	for _, w := range ws {
		w.WaitReady(t, 120*time.Second)
	}
	return ws
}

// crashCluster is the workers of a crash run, the load sent to them and
// what the run measured.
type crashCluster struct {
	t     *testing.T
	res   *crashResult
	ws    []*worker
	pool  *pool
	tally *tally
	load  *load
	kafka *kafkaClient
}

// crashed fails the run for a worker that exited by itself.
func (c *crashCluster) crashed(s *slot) {
	c.t.Helper()
	c.res.crashes++
	c.t.Errorf("%s exited by itself (%v) during the %s run:\nstderr: %s\nits last errors:\n%s",
		s.w.Name, s.w.Err(), c.res.guarantee, strings.TrimSpace(s.w.Stderr.String()), lastErrors(s.w.Proc, 5))
}

// supervise fails the run for every worker that exited by itself and
// starts it again, so that the run, and its exactly-once check, go on.
func (c *crashCluster) supervise() {
	c.t.Helper()
	for _, s := range c.pool.slots {
		if !s.w.Running() {
			c.pool.drain(s)
			c.crashed(s)
			s.w.start()
			c.pool.activate(s)
		}
	}
}

// allReady reports whether every worker answers ready; a worker whose
// joins keep timing out points at a group that cannot finish a rebalance.
func (c *crashCluster) allReady() (bool, string) {
	for _, w := range c.ws {
		if ok, detail := w.ready(); !ok {
			msg := fmt.Sprintf("%s: %s", w.Name, detail)
			if n := len(w.Entries("consumer group session ended; joining again")); n >= 2 {
				msg += fmt.Sprintf("; its joins timed out %d times (see TestDevBrokerExpiresMemberThatDiedInJoin)", n)
			}
			return false, msg
		}
	}
	return true, ""
}

// killWorkers kills a random worker at evenly spaced points of the load,
// each time once nothing it answers is outstanding, and starts it again at
// once.
//
// A kill waits for a stable group with every worker ready: a worker killed
// while its JoinGroup is parked stays in the dev broker's group for good
// and the group never rebalances again, which
// TestDevBrokerExpiresMemberThatDiedInJoin pins on its own; here it would
// only keep the exactly-once check from running.
func (c *crashCluster) killWorkers(victims *rand.Rand) {
	t, l, tl, p := c.t, c.load, c.tally, c.pool
	t.Helper()
	kills := 0
	for i := 1; i <= crashKills; i++ {
		at := int64(crashViews * i / (crashKills + 1))
		waitFor(t, 10*time.Minute, fmt.Sprintf("%d views sent", at), func() (bool, string) {
			c.supervise()
			return l.done() >= at, fmt.Sprintf("%d sent (%s)", l.done(), tl.outcomeSummary())
		})
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
		kills++
		c.res.kills = kills
		_, acked, _ := tl.totals()
		t.Logf("kill %d: SIGKILL %s after %d views sent, %d acknowledged", kills, s.w.Name, l.done(), acked)
		s.w.start()
		p.activate(s)
	}
}

// finishLoad waits until the load is done, records its figures and waits
// until every worker is ready.
func (c *crashCluster) finishLoad() {
	t, l, tl, res := c.t, c.load, c.tally, c.res
	t.Helper()
	waitFor(t, 10*time.Minute, "the load done", func() (bool, string) {
		c.supervise()
		return l.finished(), fmt.Sprintf("%d sent (%s)", l.done(), tl.outcomeSummary())
	})
	loadTook := l.took
	sent, acked, unknown := tl.totals()
	res.sent, res.acked, res.unknown, res.load = sent, acked, unknown, loadTook
	t.Logf("%s: load done in %s: %d sent, %d acknowledged, %d unknown; outcomes: %s",
		res.guarantee, loadTook.Round(time.Millisecond), sent, acked, unknown, tl.outcomeSummary())

	waitFor(t, 3*time.Minute, "every worker ready", func() (bool, string) {
		c.supervise()
		return c.allReady()
	})
}

// processBacklog writes a backlog straight to the topic and measures how
// fast the workers process it when /count/ (which bounds the load's rate)
// is not in front.
func (c *crashCluster) processBacklog(addr string, pages []string) {
	t, res := c.t, c.res
	t.Helper()
	backlogBegan := time.Now()
	produceBacklog(t, addr, pages, crashBacklog, c.tally)
	c.kafka.waitDrained(t, group, topic, 5*time.Minute, c.supervise)
	res.processBacklog = time.Since(backlogBegan)
	res.backlog = crashBacklog
	t.Logf("%s: a backlog of %d views processed in %s", res.guarantee, crashBacklog, res.processBacklog.Round(time.Millisecond))
}

// completeReport waits for a report of the first worker that is neither
// stale nor missing partitions.
func (c *crashCluster) completeReport() pageview.Report {
	c.t.Helper()
	var r pageview.Report
	waitFor(c.t, 2*time.Minute, "a complete report", func() (bool, string) {
		var err error
		if r, err = c.ws[0].report(); err != nil {
			return false, err.Error()
		}
		return !r.Stale && len(r.MissingPartitions) == 0, fmt.Sprintf("stale %v, missing %v", r.Stale, r.MissingPartitions)
	})
	return r
}

// checkNothingLost checks that every page of r counts at least its
// acknowledged views, under either guarantee, and returns the pages that
// count more than their acknowledged and unknown views together.
func checkNothingLost(t *testing.T, guarantee string, tl *tally, pages []string, r pageview.Report) (over []string) {
	t.Helper()
	var lost []string
	for _, pg := range pages {
		got, want := r.Pages[pg].Count, tl.ackedOf(pg)
		if got < want {
			lost = append(lost, fmt.Sprintf("%s: counted %d of %d acknowledged", pg, got, want))
		}
		if got > want+tl.unknownOf(pg) {
			over = append(over, fmt.Sprintf("%s: counted %d, acknowledged %d, unknown %d", pg, got, want, tl.unknownOf(pg)))
		}
	}
	if len(lost) > 0 {
		t.Errorf("%s lost acknowledged views on %d pages:\n%s", guarantee, len(lost), strings.Join(first(lost, 20), "\n"))
	}
	return over
}

// checkWindowOfNow checks the window of now of every page of r, the window
// starting at reportNow, against the tally.
func checkWindowOfNow(t *testing.T, tl *tally, pages []string, r pageview.Report, reportNow int64) {
	t.Helper()
	tl.mu.Lock()
	var wrongNow []string
	for _, pg := range pages {
		lo := tl.windows[windowKey{pg, reportNow}]
		hi := lo + tl.straddle[pg] + tl.unknown[pg]
		if got := r.Pages[pg].Now; got < lo || got > hi {
			wrongNow = append(wrongNow, fmt.Sprintf("%s: window of now counts %d, want %d..%d", pg, got, lo, hi))
		}
	}
	tl.mu.Unlock()
	if len(wrongNow) > 0 {
		t.Errorf("exactly_once: the window of now is wrong on %d pages:\n%s", len(wrongNow), strings.Join(first(wrongNow, 20), "\n"))
	}
}

// lastErrors returns the last n ERROR lines of a worker's log.
func lastErrors(p *harness.Proc, n int) string {
	var errs []string
	for _, l := range p.Stdout.Lines() {
		if strings.Contains(l, `"level":"ERROR"`) {
			errs = append(errs, l)
		}
	}
	return strings.Join(errs[max(0, len(errs)-n):], "\n")
}

// produceBacklog writes n page views straight to the topic, keyed by page
// like the worker's publisher, and files them in the tally as acknowledged.
func produceBacklog(t *testing.T, addr string, pages []string, n int, tl *tally) {
	t.Helper()
	c := saramaConfig(sarama.ReadUncommitted)
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	p, err := sarama.NewSyncProducer([]string{addr}, c)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(uint64(n), 3))
	const batch = 5000
	for sent := 0; sent < n; sent += batch {
		now := time.Now()
		msgs := make([]*sarama.ProducerMessage, min(batch, n-sent))
		for i := range msgs {
			page := pages[rng.IntN(len(pages))]
			pv := pageview.PageView{Page: page, Count: int64(sent + i + 1), Timestamp: now}
			msgs[i] = &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(pageview.Encode(pv)), Timestamp: now}
		}
		if err := p.SendMessages(msgs); err != nil {
			t.Fatalf("produce the backlog: %v", err)
		}
		tl.mu.Lock()
		for _, m := range msgs {
			page := string(m.Key.(sarama.StringEncoder))
			tl.sent++
			tl.acked[page]++
			tl.windows[windowKey{page, windowStart(now, tl.window)}]++
		}
		tl.mu.Unlock()
	}
}

// checkChangelogs compares the last committed value of every key of the
// views and totals changelogs with the tally, and returns how many windows
// it checked.
func checkChangelogs(t *testing.T, k *kafkaClient, tl *tally, pages []string) int {
	t.Helper()
	last := func(topic string) map[string]int64 {
		vals := map[string]int64{}
		for _, m := range k.readAll(t, topic, sarama.ReadCommitted) {
			if strings.HasPrefix(string(m.Key), pageview.ReservedPrefix) || string(m.Key) == cwClosedKey {
				continue // the livecheck's views; a partition's closed-up-to point, no table key
			}
			if m.Value == nil {
				delete(vals, string(m.Key))
				continue
			}
			n, err := strconv.ParseInt(string(m.Value), 10, 64)
			if err != nil {
				t.Fatalf("%s %d/%d: key %q value %q is not a count", topic, m.Partition, m.Offset, m.Key, m.Value)
			}
			vals[string(m.Key)] = n
		}
		return vals
	}
	views := last(group + "-views-changelog")
	totals := last(group + "-totals-changelog")

	tl.mu.Lock()
	defer tl.mu.Unlock()
	var wrong []string
	for _, pg := range pages {
		if got, want := totals[pg], tl.acked[pg]; got < want || got > want+tl.unknown[pg] {
			wrong = append(wrong, fmt.Sprintf("totals %s: %d, acknowledged %d", pg, got, want))
		}
	}
	got := map[windowKey]int64{}
	for key, n := range views {
		i := strings.LastIndexByte(key, '|')
		start, err := strconv.ParseInt(key[i+1:], 10, 64)
		if i < 0 || err != nil {
			t.Fatalf("views changelog key %q is not page|window start", key)
		}
		got[windowKey{key[:i], start}] = n
	}
	keys := map[windowKey]bool{}
	for wk := range got {
		keys[wk] = true
	}
	for wk := range tl.windows {
		keys[wk] = true
	}
	for wk := range keys {
		lo := tl.windows[wk]
		hi := lo + tl.straddle[wk.page] + tl.unknown[wk.page]
		if n := got[wk]; n < lo || n > hi {
			wrong = append(wrong, fmt.Sprintf("views %s window %s: %d, acknowledged %d..%d", wk.page,
				time.UnixMilli(wk.start).UTC().Format(time.RFC3339), n, lo, hi))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("exactly_once: %d changelog values differ from the acknowledged views:\n%s", len(wrong), strings.Join(first(wrong, 20), "\n"))
	}
	return len(keys)
}
