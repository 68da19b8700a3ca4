package chaos_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// The shape of every scenario. The figures that bound the overcount
// (loadRate, commitInterval) are passed to the workers from here too.
const (
	partitions     = 8
	numPages       = 100
	loadRate       = 300 // /count/ calls per second, all workers together
	loadClients    = 24  // concurrent callers sharing that rate
	commitInterval = time.Second
	sessionTimeout = 10 * time.Second
	// shutdownTimeout is the worker's SHUTDOWN_TIMEOUT; a TERMed worker gets
	// this plus the HTTP grace period and some margin before it is killed.
	shutdownTimeout = 30 * time.Second
	exitDeadline    = shutdownTimeout + 15*time.Second
	// askTimeout bounds one question to a worker while the suite polls.
	askTimeout = 10 * time.Second
)

// TestMain removes the binaries the tests built. Without CHAOS=1 every test
// skips before it builds anything, so `go test ./...` costs nothing here.
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func requireChaos(t *testing.T) {
	t.Helper()
	if os.Getenv("CHAOS") != "1" {
		t.Skip("chaos suite: set CHAOS=1 (make chaos) to run real broker and worker processes")
	}
}

// logLine is one JSON line of a worker's log, with the fields the suite
// reads.
type logLine struct {
	Time          time.Time
	Level, Msg    string
	Partition     int32 // -1 when absent
	Generation    int32 // -1 when absent
	UnprocessedMS int64 // -1 when absent
	RebalanceMS   int64 // -1 when absent
	Worker        string
	Incarnation   int
	Raw           string
}

func parseLine(raw []byte) (logLine, bool) {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return logLine{}, false
	}
	num := func(k string) int64 {
		if f, ok := m[k].(float64); ok {
			return int64(f)
		}
		return -1
	}
	l := logLine{
		Partition:     int32(num("partition")),
		Generation:    int32(num("generation")),
		UnprocessedMS: num("unprocessed_ms"),
		RebalanceMS:   num("rebalance_ms"),
		Raw:           string(raw),
	}
	l.Msg, _ = m["msg"].(string)
	l.Level, _ = m["level"].(string)
	if s, ok := m["time"].(string); ok {
		l.Time, _ = time.Parse(time.RFC3339Nano, s)
	}
	return l, true
}

// proc is one run (incarnation) of a worker process.
type proc struct {
	*harness.Worker
	slot     *slot
	n        int
	signaled string // "TERM" or "KILL" once the test sent one; under slot.mu
}

func (p *proc) describe() string {
	return fmt.Sprintf("%s (run %d, pid %d)", p.slot.name, p.n, p.Cmd.Process.Pid)
}

// lines returns the run's log lines, parsed.
func (p *proc) lines() []logLine {
	var out []logLine
	for _, raw := range p.Stdout.Lines() {
		if l, ok := parseLine([]byte(raw)); ok {
			l.Worker, l.Incarnation = p.slot.name, p.n
			out = append(out, l)
		}
	}
	return out
}

// slot is one worker identity: its name, data directory and port survive
// restarts, so a restarted worker advertises the same URL and keeps its
// state.
type slot struct {
	c       *cluster
	idx     int
	name    string
	dataDir string
	addr    string
	base    string

	mu    sync.Mutex
	procs []*proc
}

func (s *slot) current() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.procs) == 0 {
		return nil
	}
	return s.procs[len(s.procs)-1]
}

// running is true while the current run lives; it serves HTTP from its
// start on (the harness waits until it listens).
func (s *slot) running() bool {
	p := s.current()
	return p != nil && p.Running()
}

// cluster is one scenario's broker and workers.
type cluster struct {
	t        *testing.T
	logDir   string
	broker   *harness.Broker
	protocol string
	static   bool
	slots    []*slot
}

// newCluster starts a fresh broker and prepares n worker slots (none is
// started). Workers get free ports chosen now and kept across restarts.
func newCluster(t *testing.T, n int, protocol string, static bool) *cluster {
	t.Helper()
	c := &cluster{t: t, logDir: harness.LogDir(t, "CHAOS_LOG_DIR"), protocol: protocol, static: static}
	brokerData := filepath.Join(c.logDir, "broker-data")
	dataDirs := []string{brokerData}
	for i := range n {
		name := fmt.Sprintf("worker-%d", i)
		s := &slot{c: c, idx: i, name: name, dataDir: filepath.Join(c.logDir, name+"-data"), addr: harness.FreeAddr(t)}
		s.base = "http://" + s.addr
		c.slots = append(c.slots, s)
		dataDirs = append(dataDirs, s.dataDir)
	}
	// A kept log directory may hold an earlier run's data: start afresh.
	for _, d := range dataDirs {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	c.broker = harness.StartBroker(t, c.logDir, "-data-dir", brokerData)
	// Registered after the broker's cleanup, so it runs before it; the
	// workers' own cleanups, registered as they start, run earlier still.
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
	})
	return c
}

func (c *cluster) env(s *slot) map[string]string {
	env := harness.WorkerEnv(s.dataDir, map[string]string{
		"KAFKA_BROKERS":            c.broker.Addr,
		"WEB_ADDR":                 s.addr,
		"KAFKA_GROUP":              "pageviews",
		"KAFKA_REBALANCE_PROTOCOL": c.protocol,
		"KAFKA_SESSION_TIMEOUT":    sessionTimeout.String(),
		"COMMIT_INTERVAL":          commitInterval.String(),
		"WINDOW_SIZE":              "24h",
		"WINDOW_EXPIRES":           "48h",
		"PARTITIONS":               strconv.Itoa(partitions),
		"SHUTDOWN_TIMEOUT":         shutdownTimeout.String(),
		"LOG_LEVEL":                "info",
	})
	if c.static {
		env["KAFKA_INSTANCE_ID"] = s.name
	}
	return env
}

// start starts a new run of worker i, with its data directory as it is, and
// waits until it serves HTTP.
func (c *cluster) start(i int) *proc {
	t := c.t
	t.Helper()
	s := c.slots[i]
	if s.running() {
		t.Fatalf("%s is already running", s.name)
	}
	s.mu.Lock()
	n := len(s.procs) + 1
	s.mu.Unlock()
	p := &proc{slot: s, n: n}
	p.Worker = harness.StartWorker(t, c.logDir, fmt.Sprintf("%s.run%d", s.name, n), c.env(s))
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// signal sends sig to the current run of each worker in idxs and waits for
// them all to exit. After TERM, a worker must shut down warmly: exit status
// 0 within SHUTDOWN_TIMEOUT. One that does not is killed and reported.
func (c *cluster) signal(sig syscall.Signal, idxs ...int) {
	t := c.t
	t.Helper()
	name := map[syscall.Signal]string{syscall.SIGTERM: "TERM", syscall.SIGKILL: "KILL"}[sig]
	var ps []*proc
	for _, i := range idxs {
		s := c.slots[i]
		p := s.current()
		if p == nil || !p.Running() {
			t.Fatalf("%s is not running", s.name)
		}
		s.mu.Lock()
		p.signaled = name
		s.mu.Unlock()
		p.Signal(t, sig)
		t.Logf("sent %s to %s", name, p.describe())
		ps = append(ps, p)
	}
	deadline := time.After(exitDeadline)
	for _, p := range ps {
		select {
		case <-p.Done():
		case <-deadline:
			t.Errorf("%s did not exit within %s of %s; killing it", p.describe(), exitDeadline, name)
			p.Kill(t)
			continue
		}
		if sig == syscall.SIGTERM && p.Err() != nil {
			t.Errorf("%s: warm shutdown failed: %v; stderr:\n%s", p.describe(), p.Err(), p.Stderr.Tail(20))
		}
	}
}

// checkCrashes fails the test, at once, when a worker exited without being
// told to: waiting further would only hide the crash behind a timeout.
func (c *cluster) checkCrashes() {
	c.t.Helper()
	var crashed []string
	for _, s := range c.slots {
		s.mu.Lock()
		for _, p := range s.procs {
			if !p.Running() && p.signaled == "" {
				crashed = append(crashed, fmt.Sprintf("%s exited on its own (%v); stderr:\n%s", p.describe(), p.Err(), p.Stderr.Tail(20)))
			}
		}
		s.mu.Unlock()
	}
	if len(crashed) > 0 {
		c.t.Fatalf("worker crashed:\n%s", strings.Join(crashed, "\n"))
	}
}

// lines returns every parsed log line of every worker run, oldest run
// first.
func (c *cluster) lines() []logLine {
	var out []logLine
	for _, s := range c.slots {
		s.mu.Lock()
		ps := slices.Clone(s.procs)
		s.mu.Unlock()
		for _, p := range ps {
			out = append(out, p.lines()...)
		}
	}
	return out
}

// dumpLogs writes the membership and recovery lines of every worker to the
// test log, for a failure to be read without the log files.
func (c *cluster) dumpLogs() {
	keep := map[string]bool{
		"joined group": true, "left group session": true, "partition assigned": true,
		"partition released": true, "partition resumed": true, "all partitions processing": true,
		"recovering": true, "recovered": true, "stopped cleanly": true,
	}
	var b []string
	lines := c.lines()
	slices.SortStableFunc(lines, func(a, b logLine) int { return a.Time.Compare(b.Time) })
	for _, l := range lines {
		if keep[l.Msg] || l.Level == "WARN" || l.Level == "ERROR" {
			b = append(b, fmt.Sprintf("%s run%d %s", l.Worker, l.Incarnation, trimLine(l.Raw)))
		}
	}
	c.t.Logf("worker logs (membership, recovery, warnings) in %s:\n%s", c.logDir, strings.Join(b[max(0, len(b)-400):], "\n"))
}

func trimLine(raw string) string {
	raw = strings.Replace(raw, `"service":"pageviews",`, "", 1)
	raw = strings.Replace(raw, `"component":"stream",`, "", 1)
	if len(raw) > 400 {
		raw = raw[:400] + "..."
	}
	return raw
}

// live returns the runs that are running.
func (c *cluster) live() []*proc {
	var out []*proc
	for _, s := range c.slots {
		if p := s.current(); p != nil && p.Running() {
			out = append(out, p)
		}
	}
	return out
}

// poll calls cond until it holds or timeout passes, checking for crashed
// workers between tries; it fails the test with cond's last state.
func (c *cluster) poll(what string, timeout time.Duration, cond func() (bool, string)) {
	t := c.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.checkCrashes()
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; last state: %s", what, timeout, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitSettled waits until every running worker is ready, the running
// workers between them serve every partition exactly once, each serves at
// least one (when there are enough partitions to go round), and every
// worker's /report/ is complete (not stale). It holds for two polls in a
// row, so a cooperative rebalance caught between its phases does not pass.
// It returns who serves what.
func (c *cluster) waitSettled(what string, timeout time.Duration) map[int][]int32 {
	c.t.Helper()
	var held map[int][]int32
	streak := 0
	c.poll(what+": group settled", timeout, func() (bool, string) {
		live := c.live()
		held = map[int][]int32{}
		owner := map[int32]string{}
		var problems []string
		ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
		defer cancel()
		for _, w := range live {
			s := w.slot
			if ok, detail := w.Ready(ctx); !ok {
				problems = append(problems, fmt.Sprintf("%s not ready (%s)", s.name, detail))
				continue
			}
			part, err := w.TryLocal(ctx)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s local report: %v", s.name, err))
				continue
			}
			held[s.idx] = part.Partitions
			if len(part.Partitions) == 0 && len(live) <= partitions {
				problems = append(problems, s.name+" serves no partition")
			}
			for _, p := range part.Partitions {
				if o, dup := owner[p]; dup {
					problems = append(problems, fmt.Sprintf("partition %d served by %s and %s", p, o, s.name))
				}
				owner[p] = s.name
			}
			if rep, err := w.TryReport(ctx); err != nil || rep.Stale {
				problems = append(problems, fmt.Sprintf("%s report: err %v stale %v missing %v", s.name, err, rep.Stale, rep.MissingPartitions))
			}
		}
		if len(live) == 0 {
			problems = append(problems, "no worker running")
		}
		for p := range int32(partitions) {
			if _, ok := owner[p]; !ok {
				problems = append(problems, fmt.Sprintf("partition %d served by nobody", p))
			}
		}
		if len(problems) > 0 {
			streak = 0
			return false, strings.Join(problems, "; ")
		}
		streak++
		return streak >= 2, fmt.Sprintf("settled %v", held)
	})
	c.t.Logf("%s: settled, partitions served %s", what, formatHeld(c, held))
	return held
}

func formatHeld(c *cluster, held map[int][]int32) string {
	var parts []string
	for _, s := range c.slots {
		if ps, ok := held[s.idx]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", s.name, ps))
		}
	}
	return strings.Join(parts, " ")
}

// waitConverged waits until the reports of every running worker are
// complete, identical and unchanged for a few seconds (several commit
// intervals), which means the load's last records are processed. It returns
// the last report of each worker and whether they converged; a cluster
// whose reports keep differing is a finding, not a reason to wait longer.
func (c *cluster) waitConverged(timeout time.Duration) (map[string]pageview.Report, bool, string) {
	const stableFor = 3 * time.Second
	deadline := time.Now().Add(timeout)
	var prev map[string]pageview.Report
	var stableSince time.Time
	state := ""
	for {
		c.checkCrashes()
		cur := map[string]pageview.Report{}
		var problems []string
		for _, w := range c.live() {
			ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
			rep, err := w.TryReport(ctx)
			cancel()
			name := w.slot.name
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			if rep.Stale {
				problems = append(problems, fmt.Sprintf("%s: stale, missing %v", name, rep.MissingPartitions))
			}
			cur[name] = rep
		}
		if diff := reportsDiffer(cur); diff != "" {
			problems = append(problems, diff)
		}
		switch {
		case len(problems) > 0:
			stableSince = time.Time{}
			state = strings.Join(problems, "; ")
		case prev == nil || reportsDiffer(map[string]pageview.Report{"before": anyReport(prev), "now": anyReport(cur)}) != "":
			stableSince = time.Now()
			state = "reports agree but still change"
		case time.Since(stableSince) >= stableFor:
			return cur, true, ""
		}
		prev = cur
		if time.Now().After(deadline) {
			return cur, false, state
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func anyReport(m map[string]pageview.Report) pageview.Report {
	for _, r := range m {
		return r
	}
	return pageview.Report{}
}

// reportsDiffer compares the pages and totals of the reports and describes
// the first differences; "" means they are identical.
func reportsDiffer(reps map[string]pageview.Report) string {
	names := make([]string, 0, len(reps))
	for n := range reps {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []string
	for _, n := range names[min(1, len(names)):] {
		a, b := reps[names[0]], reps[n]
		if a.Now != b.Now || a.Count != b.Count {
			out = append(out, fmt.Sprintf("totals differ: %s count=%d now=%d, %s count=%d now=%d", names[0], a.Count, a.Now, n, b.Count, b.Now))
		}
		var pages []string
		for p, pa := range a.Pages {
			if pb, ok := b.Pages[p]; !ok || pa != pb {
				pages = append(pages, fmt.Sprintf("%s: %s %+v, %s %+v", p, names[0], pa, n, b.Pages[p]))
			}
		}
		for p := range b.Pages {
			if _, ok := a.Pages[p]; !ok {
				pages = append(pages, fmt.Sprintf("%s: only %s has it: %+v", p, n, b.Pages[p]))
			}
		}
		slices.Sort(pages)
		if len(pages) > 5 {
			pages = append(pages[:5], fmt.Sprintf("... %d pages differ", len(pages)))
		}
		out = append(out, pages...)
	}
	return strings.Join(out, "; ")
}

// pagePartitions asks the owner of each partition which pages it holds,
// for telling which partition a loss or a surplus is in.
func (c *cluster) pagePartitions(held map[int][]int32) map[string]int32 {
	out := map[string]int32{}
	for idx, ps := range held {
		w := c.slots[idx].current()
		for _, p := range ps {
			ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
			part, err := w.TryLocal(ctx, p)
			cancel()
			if err != nil {
				c.t.Logf("pages of partition %d: %v", p, err)
				continue
			}
			for page := range part.Pages {
				out[page] = p
			}
		}
	}
	return out
}

// load sends /count/ calls at a bounded rate over numPages pages and every
// worker that is serving, and counts the acknowledged (200) calls per page.
type load struct {
	c      *cluster
	client *http.Client
	acked  [numPages]atomic.Int64

	sent, refused, ambiguous, dropped atomic.Int64
	started                           time.Time
	stopped                           time.Time

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func pageName(i int) string { return fmt.Sprintf("/chaos/%02d", i) }

func (c *cluster) startLoad() *load {
	l := &load{
		c: c,
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: loadClients, DisableCompression: true,
		}},
		stop:    make(chan struct{}),
		started: time.Now(),
	}
	tokens := make(chan struct{}, loadClients)
	l.wg.Go(func() {
		defer close(tokens)
		tick := time.NewTicker(time.Second / loadRate)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				select {
				case tokens <- struct{}{}:
				default:
					l.dropped.Add(1) // every caller busy: the rate stays bounded
				}
			}
		}
	})
	for range loadClients {
		l.wg.Go(func() {
			for range tokens {
				l.one()
			}
		})
	}
	c.t.Cleanup(l.Stop)
	return l
}

// one sends one call. A refused connection certainly published nothing;
// any other failure may have published the view without the caller
// hearing of it, so it is counted as ambiguous (it may show as surplus).
func (l *load) one() {
	var targets []*slot
	for _, s := range l.c.slots {
		if s.running() {
			targets = append(targets, s)
		}
	}
	if len(targets) == 0 {
		l.refused.Add(1)
		return
	}
	s := targets[rand.IntN(len(targets))]
	page := rand.IntN(numPages)
	l.sent.Add(1)
	resp, err := l.client.Get(s.base + "/count/?page=" + pageName(page))
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			l.refused.Add(1)
		} else {
			l.ambiguous.Add(1)
		}
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		l.acked[page].Add(1)
		return
	}
	l.ambiguous.Add(1)
}

// Stop stops sending and waits for the calls in flight.
func (l *load) Stop() {
	l.stopOnce.Do(func() {
		close(l.stop)
		l.wg.Wait()
		l.stopped = time.Now()
		l.client.CloseIdleConnections()
	})
}

func (l *load) total() int64 {
	var n int64
	for i := range l.acked {
		n += l.acked[i].Load()
	}
	return n
}
