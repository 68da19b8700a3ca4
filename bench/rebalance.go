package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

// The load during a rebalance run: a steady stream of page views, spread
// over enough pages that every partition gets its share.
const (
	rebalanceRate  = 2000 // page views per second
	rebalancePages = 1000
	// rebalanceQuiet is how long the group must show no membership change
	// before a state counts as final.
	rebalanceQuiet = time.Second
	// rebalanceTimeout bounds each phase of a run.
	rebalanceTimeout = 90 * time.Second
)

// rebalanceResult holds the figures of rebalanceBench for one protocol.
type rebalanceResult struct {
	Protocol string
	// Millis is, per run, the time from starting the third worker (t0) to
	// the moment every partition is processing again under its final
	// owner (t1). t1 is the latest "partition resumed" among the
	// partitions assigned after t0 and still held once the group has
	// settled: every partition held by exactly one of the three workers,
	// each worker holding its share, nothing changing for rebalanceQuiet.
	// A worker logs "partition resumed" when it has recovered the
	// partition and starts processing it. Partitions assigned before t0
	// and never revoked (with the cooperative protocol, those that stay
	// put) do not stop, so they do not count; with the eager protocol
	// every partition is revoked and assigned again, so all of them do.
	// Every run also checks that the group's committed offsets of every
	// partition move on after t1, which only the final owners can do.
	Millis []float64
	Median float64
	// JoinMillis is, per run, the part of Millis before the group starts
	// to rebalance: from t0 to the first "joined group" or "partition
	// released" line after it. It is the third worker's start-up and the
	// wait for the other members to hear of the rebalance (at their next
	// heartbeat); Millis minus JoinMillis is the rebalance itself.
	JoinMillis []float64
	// GapMillis is, per run, the longest time one partition went
	// unprocessed: the largest unprocessed_ms of the "partition resumed"
	// lines after t0, the time from the partition's last commit (which its
	// previous owner makes as it lets the partition go) to its new owner
	// processing it again.
	GapMillis []float64
	MedianGap float64
	// StoppedMillis is, per run, the work the rebalance stopped: the sum
	// over the partitions assigned after t0 of the time each went
	// unprocessed (as in GapMillis). It is what the two protocols are
	// compared by: cooperative stops fewer partitions, eager stops them
	// for less long each.
	StoppedMillis []float64
	MedianStopped float64
	// Stopped is, per run, how many partitions were released after t0:
	// every partition with the eager protocol, only those that moved with
	// the cooperative one.
	Stopped []int
	// Generations is, per run, how many new group generations the
	// rebalance took.
	Generations []int
	// Warnings are the distinct warning and error lines the workers
	// logged, first occurrence of each message, prefixed with the run and
	// the worker.
	Warnings []string
}

// rebalanceBench measures, with 2 workers under load, the time from a third worker joining
// until all partitions are processing again, for one protocol ("cooperative" or "eager").
func rebalanceBench(workerBin, brokerAddr, protocol string, partitions int, runs int) (rebalanceResult, error) {
	res := rebalanceResult{Protocol: protocol}
	if protocol != "cooperative" && protocol != "eager" {
		return res, fmt.Errorf("rebalance protocol %q: want cooperative or eager", protocol)
	}
	dir, err := os.MkdirTemp("", "pageviews-rebalance-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	for run := 1; run <= runs; run++ {
		fig, err := rebalanceRun(workerBin, brokerAddr, protocol, partitions, run, filepath.Join(dir, strconv.Itoa(run)))
		for _, w := range fig.warnings {
			res.Warnings = append(res.Warnings, fmt.Sprintf("run %d %s", run, w))
		}
		if err != nil {
			return res, fmt.Errorf("%s run %d: %w", protocol, run, err)
		}
		res.Millis = append(res.Millis, ms(fig.took))
		res.JoinMillis = append(res.JoinMillis, ms(fig.join))
		res.GapMillis = append(res.GapMillis, ms(fig.gap))
		res.StoppedMillis = append(res.StoppedMillis, ms(fig.stoppedFor))
		res.Stopped = append(res.Stopped, fig.stopped)
		res.Generations = append(res.Generations, fig.generations)
	}
	res.Median = median(res.Millis)
	res.MedianGap = median(res.GapMillis)
	res.MedianStopped = median(res.StoppedMillis)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// runFigures are one run's measurements.
type runFigures struct {
	took        time.Duration
	join        time.Duration
	gap         time.Duration
	stoppedFor  time.Duration // summed over the partitions
	stopped     int
	generations int
	warnings    []string
}

// rebalanceRun is one run on a fresh group and source topic: load, two
// workers settled, a third one started, the group settled again.
func rebalanceRun(workerBin, brokerAddr, protocol string, partitions, run int, dir string) (fig runFigures, err error) {
	name := fmt.Sprintf("rebalance-%s-%d-%d", protocol, run, time.Now().UnixNano())
	group, topic := name, name+"-views"
	if err := createTopics(brokerAddr, partitions, topic); err != nil {
		return fig, err
	}
	admin, err := sarama.NewClusterAdmin([]string{brokerAddr}, saramaConfig())
	if err != nil {
		return fig, err
	}
	defer admin.Close()
	load, err := startLoad(brokerAddr, topic)
	if err != nil {
		return fig, err
	}
	defer func() {
		if lerr := load.stop(); lerr != nil && err == nil {
			err = lerr
		}
	}()

	f := newFleet(partitions)
	defer func() { fig.warnings = f.warningLines() }()
	env := append(os.Environ(),
		"KAFKA_BROKERS="+brokerAddr, "KAFKA_GROUP="+group, "PAGE_VIEWS_TOPIC="+topic,
		"PARTITIONS="+strconv.Itoa(partitions), "KAFKA_REBALANCE_PROTOCOL="+protocol,
		"WEB_ADDR=127.0.0.1:0", "LOG_FORMAT=json", "LOG_LEVEL=info", "LIVECHECK_INTERVAL=0",
		"WINDOW_SIZE=1h", "WINDOW_EXPIRES=2h", "COMMIT_INTERVAL=1s")
	var workers []*benchWorker
	defer func() {
		if serr := stopWorkers(workers); serr != nil && err == nil {
			err = serr
		}
	}()
	start := func() error {
		i := len(workers)
		w, err := startBenchWorker(workerBin, env, filepath.Join(dir, "worker-"+strconv.Itoa(i)), f, i)
		if err != nil {
			return err
		}
		workers = append(workers, w)
		return nil
	}
	for range 2 {
		if err := start(); err != nil {
			return fig, err
		}
	}

	// Two workers share the partitions and every partition is committed
	// (so "partition resumed" lines carry the time of the last commit),
	// then its commits move on: both workers are processing.
	var t0 time.Time
	if _, err := waitFor(rebalanceTimeout, workers, func() (bool, string) { return f.settled(2, t0) }); err != nil {
		return fig, fmt.Errorf("two workers did not settle: %w", err)
	}
	if err := waitAdvanced(admin, group, topic, partitions, workers); err != nil {
		return fig, fmt.Errorf("two workers: %w", err)
	}
	if _, err := waitFor(rebalanceTimeout, workers, func() (bool, string) { return f.settled(2, t0) }); err != nil {
		return fig, fmt.Errorf("two workers did not stay settled: %w", err)
	}
	gen0 := f.generation()

	t0 = time.Now().Round(0) // wall clock, as the log lines are
	if err := start(); err != nil {
		return fig, err
	}
	if _, err := waitFor(rebalanceTimeout, workers, func() (bool, string) { return f.settled(3, t0) }); err != nil {
		return fig, fmt.Errorf("three workers did not settle: %w", err)
	}
	t1, began, gap, total, stopped := f.figures(t0)
	fig.took, fig.join, fig.gap, fig.stoppedFor, fig.stopped = t1.Sub(t0), began.Sub(t0), gap, total, stopped
	fig.generations = int(f.generation() - gen0)
	if err := waitAdvanced(admin, group, topic, partitions, workers); err != nil {
		return fig, fmt.Errorf("after the rebalance: %w", err)
	}
	return fig, nil
}

// waitFor polls cond until it holds and the group has not changed for
// stopWorkers stops every worker at once.
func stopWorkers(workers []*benchWorker) error {
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Go(func() { errs[i] = w.stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// rebalanceQuiet, a worker exits, or timeout passes.
func waitFor(timeout time.Duration, workers []*benchWorker, cond func() (bool, string)) (string, error) {
	deadline := time.Now().Add(timeout)
	why := ""
	for time.Now().Before(deadline) {
		for _, w := range workers {
			if err := w.exited(); err != nil {
				return why, err
			}
		}
		var ok bool
		if ok, why = cond(); ok {
			return why, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return why, fmt.Errorf("not within %s: %s", timeout, why)
}

// waitAdvanced waits until every partition's committed offset of the group
// is past what it was when called: every partition is being processed.
func waitAdvanced(admin sarama.ClusterAdmin, group, topic string, partitions int, workers []*benchWorker) error {
	parts := make([]int32, partitions)
	for i := range parts {
		parts[i] = int32(i)
	}
	committed := func() (map[int32]int64, error) {
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
		if err != nil {
			return nil, err
		}
		out := make(map[int32]int64, partitions)
		for _, p := range parts {
			if b := resp.GetBlock(topic, p); b != nil {
				out[p] = b.Offset
			}
		}
		return out, nil
	}
	before, err := committed()
	if err != nil {
		return err
	}
	_, err = waitFor(rebalanceTimeout, workers, func() (bool, string) {
		now, err := committed()
		if err != nil {
			return false, err.Error()
		}
		var behind []string
		for _, p := range parts {
			if now[p] <= max(before[p], 0) {
				behind = append(behind, strconv.Itoa(int(p)))
			}
		}
		if len(behind) > 0 {
			return false, "committed offsets not moving on partitions " + strings.Join(behind, ",")
		}
		return true, ""
	})
	return err
}

// pageLoad produces page views at rebalanceRate until stopped.
type pageLoad struct {
	p    *producer
	quit chan struct{}
	wg   sync.WaitGroup
}

func startLoad(addr, topic string) (*pageLoad, error) {
	p, err := newProducer(addr, saramaConfig())
	if err != nil {
		return nil, err
	}
	l := &pageLoad{p: p, quit: make(chan struct{})}
	l.wg.Go(func() {
		const tick = 10 * time.Millisecond
		per := rebalanceRate * int(tick) / int(time.Second)
		t := time.NewTicker(tick)
		defer t.Stop()
		n := 0
		for {
			select {
			case <-l.quit:
				return
			case <-t.C:
			}
			now := time.Now().UTC()
			stamp := now.Format(stampLayout)
			for range per {
				n++
				p.Input() <- pageView(topic, "/rebalance/"+strconv.Itoa(n%rebalancePages), int64(n), now, stamp)
			}
		}
	})
	return l, nil
}

func (l *pageLoad) stop() error {
	close(l.quit)
	l.wg.Wait()
	if err := l.p.close(); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	return nil
}

// benchWorker is one worker process whose log feeds a fleet.
type benchWorker struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // how it exited, once done is closed
	stderr *bytes.Buffer
	mu     sync.Mutex // guards stderr and stopping
	// stopping is set once the benchmark stops it.
	stopping bool
}

func startBenchWorker(bin string, env []string, dataDir string, f *fleet, idx int) (*benchWorker, error) {
	w := &benchWorker{done: make(chan struct{}), stderr: new(bytes.Buffer)}
	w.cmd = exec.Command(bin)
	w.cmd.Env = append(slices.Clip(env), "DATA_DIR="+dataDir)
	w.cmd.Stdout = &fleetLog{f: f, worker: idx}
	w.cmd.Stderr = lockedWriter{w}
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		w.err = w.cmd.Wait()
		f.exited(idx)
		close(w.done)
	}()
	return w, nil
}

type lockedWriter struct{ w *benchWorker }

func (l lockedWriter) Write(b []byte) (int, error) {
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	if l.w.stderr.Len() < 64<<10 {
		l.w.stderr.Write(b)
	}
	return len(b), nil
}

// exited returns an error when the worker exited before it was stopped.
func (w *benchWorker) exited() error {
	select {
	case <-w.done:
	default:
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return nil
	}
	msg := strings.TrimSpace(w.stderr.String())
	if len(msg) > 2000 {
		msg = "..." + msg[len(msg)-2000:]
	}
	return fmt.Errorf("worker pid %d exited on its own (%v): %s", w.cmd.Process.Pid, w.err, msg)
}

// stop shuts the worker down warmly (TERM), killing it after 10s; it
// reports a worker that did not exit cleanly.
func (w *benchWorker) stop() error {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("worker pid %d did not stop within 10s of TERM", w.cmd.Process.Pid)
	}
	if w.err != nil {
		return fmt.Errorf("worker pid %d stopped with %v", w.cmd.Process.Pid, w.err)
	}
	return nil
}

// fleetLog splits a worker's stdout into lines for the fleet.
type fleetLog struct {
	f       *fleet
	worker  int
	partial []byte
}

func (l *fleetLog) Write(b []byte) (int, error) {
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.f.line(l.worker, l.partial[:i])
		l.partial = l.partial[i+1:]
	}
	l.partial = slices.Clip(l.partial)
	return len(b), nil
}

// holding is one partition a worker holds, as its log tells.
type holding struct {
	assigned time.Time
	resumed  time.Time     // zero until the worker processes it
	gap      time.Duration // unprocessed_ms of the resumed line; -1 when absent
}

// fleet follows the workers' logs: who holds which partition and since
// when it is processing. Times are the log lines' times.
type fleet struct {
	mu         sync.Mutex
	partitions int
	held       map[int]map[int32]*holding
	released   map[int32]time.Time // last release of each partition
	gen        int32
	changed    time.Time // bench clock: the last membership line
	// moves are the times of the "joined group" and "partition released"
	// lines: where a rebalance shows first.
	moves    []time.Time
	warned   map[string]bool
	warnings []string
	// tap, when set before the workers start, is given every line too.
	tap func(worker int, raw []byte)
}

func newFleet(partitions int) *fleet {
	return &fleet{partitions: partitions, held: map[int]map[int32]*holding{}, released: map[int32]time.Time{}, warned: map[string]bool{}}
}

func (f *fleet) line(worker int, raw []byte) {
	if f.tap != nil {
		f.tap(worker, raw)
	}
	var l struct {
		Time          time.Time `json:"time"`
		Level         string    `json:"level"`
		Msg           string    `json:"msg"`
		Component     string    `json:"component"`
		Partition     *int32    `json:"partition"`
		Generation    int32     `json:"generation"`
		UnprocessedMS *int64    `json:"unprocessed_ms"`
	}
	if json.Unmarshal(raw, &l) != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if (l.Level == "WARN" || l.Level == "ERROR") && !f.warned[l.Msg] && len(f.warnings) < 20 {
		f.warned[l.Msg] = true
		s := string(raw)
		if len(s) > 400 {
			s = s[:400] + "..."
		}
		f.warnings = append(f.warnings, fmt.Sprintf("worker-%d: %s", worker, s))
	}
	if l.Component != "stream" {
		return
	}
	held := f.held[worker]
	if held == nil {
		held = map[int32]*holding{}
		f.held[worker] = held
	}
	switch l.Msg {
	case "joined group":
		f.gen = max(f.gen, l.Generation)
		f.changed = time.Now()
		f.moves = append(f.moves, l.Time)
	case "partition assigned":
		if l.Partition == nil {
			return
		}
		f.gen = max(f.gen, l.Generation)
		held[*l.Partition] = &holding{assigned: l.Time, gap: -1}
		f.changed = time.Now()
	case "partition released":
		if l.Partition == nil {
			return
		}
		delete(held, *l.Partition)
		f.released[*l.Partition] = l.Time
		f.changed = time.Now()
		f.moves = append(f.moves, l.Time)
	case "partition resumed":
		if l.Partition == nil {
			return
		}
		if h := held[*l.Partition]; h != nil && h.resumed.IsZero() {
			h.resumed = l.Time
			if l.UnprocessedMS != nil {
				h.gap = time.Duration(*l.UnprocessedMS) * time.Millisecond
			}
		}
	}
}

func (f *fleet) exited(worker int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, worker)
	f.changed = time.Now()
}

func (f *fleet) generation() int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

func (f *fleet) warningLines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.warnings)
}

// settled reports whether workers 0..n-1 hold every partition between
// them, each exactly once, each worker its share (the counts differ by at
// most one), every partition assigned after t0 (unless t0 is zero) is
// processing, and no membership line came for rebalanceQuiet. Otherwise
// it says why not.
func (f *fleet) settled(n int, t0 time.Time) (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	owners := make(map[int32]int)
	counts := make([]int, n)
	var problems []string
	for w, held := range f.held {
		for p, h := range held {
			owners[p]++
			if w < n {
				counts[w]++
			}
			if !t0.IsZero() && h.assigned.After(t0) && h.resumed.IsZero() {
				problems = append(problems, fmt.Sprintf("worker-%d recovering %d", w, p))
			}
		}
	}
	for p := range int32(f.partitions) {
		if owners[p] != 1 {
			problems = append(problems, fmt.Sprintf("partition %d held %d times", p, owners[p]))
		}
	}
	if slices.Max(counts)-slices.Min(counts) > 1 {
		problems = append(problems, fmt.Sprintf("unbalanced %v", counts))
	}
	if len(problems) > 0 {
		return false, strings.Join(problems, "; ")
	}
	if quiet := time.Since(f.changed); quiet < rebalanceQuiet {
		return false, "settling"
	}
	return true, ""
}

// figures returns, for a settled group, when the last partition assigned
// after t0 resumed (t1), when the rebalance showed first after t0, the
// longest unprocessed time among the partitions assigned after t0 and the
// sum of those times, and how many partitions were released after t0.
func (f *fleet) figures(t0 time.Time) (t1, began time.Time, gap, total time.Duration, stopped int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, at := range f.moves {
		if at.After(t0) && (began.IsZero() || at.Before(began)) {
			began = at
		}
	}
	for _, held := range f.held {
		for p, h := range held {
			if !h.assigned.After(t0) {
				continue
			}
			if h.resumed.After(t1) {
				t1 = h.resumed
			}
			g := h.gap
			if rel := f.released[p]; g < 0 && rel.After(t0) {
				g = h.resumed.Sub(rel)
			}
			gap = max(gap, g)
			total += max(g, 0)
		}
	}
	for _, at := range f.released {
		if at.After(t0) {
			stopped++
		}
	}
	return t1, began, gap, total, stopped
}
