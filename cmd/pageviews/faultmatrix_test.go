package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/config"
)

// The fault matrix injects, for each Kafka request the worker makes, a
// retriable error, a leader or coordinator move and a fatal error, in each
// phase the request occurs in, and checks every cell for:
//   - no panic;
//   - no loss under at_least_once, exact counts under exactly_once, read back
//     from the changelogs after the workers stopped;
//   - a fatal error makes run return one line naming the cause (except on
//     publishing a view from /count/, which must answer 503 naming it:
//     the worker does not depend on that request);
//   - /ready/ says why while the worker waits on a retriable fault (in the
//     phases where waiting is what the worker does: joining, recovering,
//     flushing).
//
// A cell is named request/phase/fault/guarantee. The suite is slow
// (minutes) and runs only with FAULT_MATRIX=1 (make test-faults).
// Every cell runs in a process of its own (this test binary again), so a
// panic fails its cell and not the whole matrix. Settings:
//
//	FAULT_MATRIX=1                  run the matrix
//	FAULT_MATRIX_ONLY=<regexp>      only the cells whose name matches
//	FAULT_MATRIX_PARALLEL=<n>       cells at once (default 4)
//	FAULT_MATRIX_LOG_DIR=<dir>      keep each cell's output and worker logs there
//
// One cell: FAULT_MATRIX=1 FAULT_MATRIX_ONLY='^Fetch/recovery/move/alo$' go test -run TestFaultMatrix -v ./cmd/pageviews

// phase is when in a worker's life a fault is injected.
type phase string

const (
	// phaseJoin: the first start of a fresh group (join, offsets, producer
	// ids), before any processing.
	phaseJoin phase = "join"
	// phaseRecovery: a worker with an empty store takes partitions whose
	// changelogs hold data, and replays them.
	phaseRecovery phase = "recovery"
	// phaseProcessing: a running worker consuming page views (and
	// publishing them from /count/).
	phaseProcessing phase = "processing"
	// phaseFlush: a running worker's commit step: changelog records,
	// offset commit or the transaction that holds both.
	phaseFlush phase = "flush"
	// phaseStandby: two workers with TABLE_STANDBY_REPLICAS=1 tailing each
	// other's changelogs, then a failover.
	phaseStandby phase = "standby"
	// phaseRevoke: a second worker joins a running one; the first revokes
	// partitions (cooperative), flushing and committing them.
	phaseRevoke phase = "revoke"
)

// faultKind is the class of error injected.
type faultKind string

const (
	kindRetriable faultKind = "retriable"
	kindMove      faultKind = "move"
	kindFatal     faultKind = "fatal"
	// kindOutOfRange answers fetches with OFFSET_OUT_OF_RANGE for a few
	// seconds, which sarama treats by reporting the error and closing the
	// partition consumer.
	kindOutOfRange faultKind = "out_of_range"
	// kindMoved really moves, on a cluster of three brokers, the leaders
	// of the partitions the request goes to (MoveTopicPartition), or the
	// coordinators (RehashCoordinators): the old ones then answer
	// NOT_LEADER_OR_FOLLOWER or NOT_COORDINATOR to every request. In the
	// recovery cells the move comes before the worker starts (a replay this
	// small is over within a fetch or two), so they test finding the new
	// leader; a move in the middle of a replay is the move cell's
	// NOT_LEADER_OR_FOLLOWER. (kerr calls that code NOT_LEADER_FOR_PARTITION.)
	kindMoved faultKind = "moved"
)

// cell is one entry of the matrix.
type cell struct {
	req   kmsg.Key
	phase phase
	kind  faultKind
	eos   bool
}

func (c cell) name() string {
	g := "alo"
	if c.eos {
		g = "eos"
	}
	return fmt.Sprintf("%s/%s/%s/%s", c.req.Name(), c.phase, c.kind, g)
}

// matrixCells lists the cells: each request in each phase it occurs in,
// with every kind of fault, under at_least_once, and under exactly_once
// too where its handling differs (read_committed fetches, offsets inside
// the transaction).
func matrixCells() []cell {
	kinds := []faultKind{kindRetriable, kindMove, kindFatal}
	var cells []cell
	add := func(req kmsg.Key, eos bool, phases ...phase) {
		for _, p := range phases {
			for _, k := range kinds {
				cells = append(cells, cell{req: req, phase: p, kind: k, eos: eos})
			}
		}
	}
	add(kmsg.Fetch, false, phaseRecovery, phaseProcessing, phaseStandby)
	add(kmsg.Fetch, true, phaseRecovery, phaseProcessing)
	// A standby copy lists offsets only when it starts, which is when its
	// worker joins: that is the join and recovery cells.
	add(kmsg.ListOffsets, false, phaseJoin, phaseRecovery)
	add(kmsg.ListOffsets, true, phaseRecovery)
	add(kmsg.Metadata, false, phaseJoin, phaseRecovery, phaseProcessing, phaseFlush)
	add(kmsg.Metadata, true, phaseFlush)
	add(kmsg.Produce, false, phaseProcessing, phaseFlush, phaseRevoke)
	add(kmsg.Produce, true, phaseFlush, phaseRevoke)
	add(kmsg.OffsetCommit, false, phaseFlush, phaseRevoke)
	add(kmsg.OffsetFetch, false, phaseJoin, phaseRecovery, phaseRevoke)
	add(kmsg.OffsetFetch, true, phaseJoin, phaseRevoke)
	add(kmsg.JoinGroup, false, phaseJoin, phaseRevoke)
	add(kmsg.JoinGroup, true, phaseRevoke)
	add(kmsg.SyncGroup, false, phaseJoin, phaseRevoke)
	add(kmsg.SyncGroup, true, phaseRevoke)
	add(kmsg.Heartbeat, false, phaseProcessing, phaseRevoke)
	add(kmsg.Heartbeat, true, phaseProcessing, phaseRevoke)
	// Under both guarantees each partition writes its changelogs in
	// transactions of its own producer (the fence against an expelled
	// member); only exactly_once puts the offsets in them.
	add(kmsg.InitProducerID, false, phaseJoin, phaseRecovery)
	add(kmsg.InitProducerID, true, phaseRecovery, phaseRevoke)
	add(kmsg.AddPartitionsToTxn, false, phaseFlush, phaseRevoke)
	add(kmsg.AddPartitionsToTxn, true, phaseFlush, phaseRevoke)
	add(kmsg.AddOffsetsToTxn, true, phaseFlush, phaseRevoke)
	add(kmsg.TxnOffsetCommit, true, phaseFlush, phaseRevoke)
	add(kmsg.EndTxn, false, phaseFlush, phaseRevoke)
	add(kmsg.EndTxn, true, phaseFlush, phaseRevoke)
	// OFFSET_OUT_OF_RANGE on changelog fetches, as retention, a
	// DeleteRecords or a recreated topic gives.
	cells = append(cells,
		cell{req: kmsg.Fetch, phase: phaseRecovery, kind: kindOutOfRange},
		cell{req: kmsg.Fetch, phase: phaseStandby, kind: kindOutOfRange},
	)
	// Real moves of leaders and coordinators, where a worker meets them
	// most: replaying, processing, committing, and while the group
	// rebalances.
	for _, c := range []cell{
		{req: kmsg.Fetch, phase: phaseRecovery}, {req: kmsg.Fetch, phase: phaseRecovery, eos: true},
		{req: kmsg.Fetch, phase: phaseProcessing}, {req: kmsg.Fetch, phase: phaseStandby},
		{req: kmsg.Produce, phase: phaseFlush}, {req: kmsg.Produce, phase: phaseFlush, eos: true},
		{req: kmsg.Produce, phase: phaseRevoke},
		{req: kmsg.JoinGroup, phase: phaseRevoke}, {req: kmsg.JoinGroup, phase: phaseRevoke, eos: true},
		{req: kmsg.OffsetCommit, phase: phaseFlush}, {req: kmsg.Heartbeat, phase: phaseProcessing},
		{req: kmsg.InitProducerID, phase: phaseRecovery, eos: true}, {req: kmsg.EndTxn, phase: phaseFlush, eos: true},
	} {
		c.kind = kindMoved
		cells = append(cells, c)
	}
	return cells
}

// groupRequests are answered by the group coordinator.
var groupRequests = map[kmsg.Key]bool{
	kmsg.OffsetCommit: true, kmsg.OffsetFetch: true, kmsg.JoinGroup: true,
	kmsg.SyncGroup: true, kmsg.Heartbeat: true, kmsg.TxnOffsetCommit: true,
}

// txnRequests are answered by the transaction coordinator.
var txnRequests = map[kmsg.Key]bool{
	kmsg.InitProducerID: true, kmsg.AddPartitionsToTxn: true, kmsg.AddOffsetsToTxn: true, kmsg.EndTxn: true,
}

// faultErr is the error a cell injects.
func (c cell) faultErr() *kerr.Error {
	coordinated := c.coordinated()
	switch c.kind {
	case kindOutOfRange:
		return kerr.OffsetOutOfRange
	case kindMove, kindMoved:
		if coordinated {
			return kerr.NotCoordinator
		}
		return kerr.NotLeaderForPartition
	case kindRetriable:
		switch {
		case coordinated:
			return kerr.CoordinatorLoadInProgress
		case c.req == kmsg.Produce:
			// Answered after the records were appended, as a slow broker
			// does: the idempotent producer must not duplicate them.
			return kerr.RequestTimedOut
		case c.req == kmsg.Metadata:
			return kerr.LeaderNotAvailable
		default:
			return kerr.KafkaStorageError
		}
	}
	switch {
	case c.req == kmsg.InitProducerID && c.phase == phaseJoin:
		// Every producer's, the shared idempotent one's first.
		return kerr.ClusterAuthorizationFailed
	case c.req == kmsg.TxnOffsetCommit || groupRequests[c.req]:
		return kerr.GroupAuthorizationFailed
	case txnRequests[c.req]:
		return kerr.TransactionalIDAuthorizationFailed
	default:
		return kerr.TopicAuthorizationFailed
	}
}

// faults returns the faults of the cell, selecting the request and, for
// requests on partitions, the topics the phase uses them on.
func (c cell) faults(cfg *config.Config) []kfake.Fault {
	f := kfake.Fault{Keys: []kmsg.Key{c.req}, Err: c.faultErr(), Count: -1}
	if groupRequests[c.req] {
		f.Group = cfg.Group
	}
	if c.req == kmsg.InitProducerID && c.phase != phaseJoin {
		// The partitions' transactional producers, not the idempotent one
		// every worker starts with (the join cell has that).
		var fs []kfake.Fault
		for p := range cfg.Partitions {
			g := f
			g.TxnID = fmt.Sprintf("%s-%s-%d", cfg.Group, cfg.Topic, p)
			fs = append(fs, g)
		}
		return fs
	}
	topics := c.topics(cfg)
	if len(topics) == 0 {
		return []kfake.Fault{f}
	}
	var fs []kfake.Fault
	for _, t := range topics {
		g := f
		g.Topic = t
		fs = append(fs, g)
	}
	return fs
}

// coordinated reports whether the cell's request goes to a coordinator.
func (c cell) coordinated() bool { return groupRequests[c.req] || txnRequests[c.req] }

// topics returns the topics the cell's request goes to in its phase, for
// requests on partitions.
func (c cell) topics(cfg *config.Config) []string {
	var topics []string
	switch c.req {
	case kmsg.Fetch, kmsg.ListOffsets, kmsg.Metadata:
		if c.phase == phaseRecovery || c.phase == phaseStandby || c.phase == phaseFlush {
			topics = changelogsOf(cfg.Group)
		} else {
			topics = []string{cfg.Topic}
		}
	case kmsg.Produce:
		if c.phase == phaseProcessing {
			topics = []string{cfg.Topic}
		} else {
			topics = changelogsOf(cfg.Group)
		}
	}
	return topics
}

// fatal reports whether the cell's fault is one the worker cannot get past,
// so run must return an error.
func (c cell) fatal() bool { return c.kind == kindFatal && !c.perRequest() }

// perRequest reports whether the cell's request serves one HTTP request
// only: publishing a view from /count/. A fatal error there fails that
// request (503 naming the cause), not the worker, whose processing does
// not depend on it.
func (c cell) perRequest() bool { return c.req == kmsg.Produce && c.phase == phaseProcessing }

// movesLeaders reports whether the cell moves partition leaders (on three
// brokers) besides its fault: a client asks for metadata in the middle of
// processing only when a leader moved.
func (c cell) movesLeaders() bool {
	return c.kind == kindMoved && !c.coordinated() ||
		c.req == kmsg.Metadata && (c.phase == phaseProcessing || c.phase == phaseFlush)
}

// waits reports whether the worker waits on the cell's fault, so /ready/
// must say why meanwhile.
func (c cell) waits() bool {
	if c.kind == kindFatal || c.kind == kindOutOfRange || c.kind == kindMoved {
		// A real move leaves a leader or coordinator to go to at once:
		// the worker has nothing to wait for.
		return false
	}
	switch c.phase {
	case phaseJoin, phaseRecovery, phaseFlush:
		return true
	}
	return false
}

// cellResult is what a cell's process reports to the matrix.
type cellResult struct {
	Pass    bool     `json:"pass"`
	Notes   []string `json:"notes"`
	Ready   string   `json:"ready"` // what /ready/ said during the fault
	Seconds float64  `json:"seconds"`
}

func TestFaultMatrix(t *testing.T) {
	if name := os.Getenv("FAULT_MATRIX_CELL"); name != "" {
		for _, c := range matrixCells() {
			if c.name() == name {
				runCell(t, c)
				return
			}
		}
		t.Fatalf("no cell %q", name)
	}
	if os.Getenv("FAULT_MATRIX") != "1" {
		t.Skip("the fault matrix takes minutes: run it with FAULT_MATRIX=1 (make test-faults)")
	}
	var only *regexp.Regexp
	if s := os.Getenv("FAULT_MATRIX_ONLY"); s != "" {
		only = regexp.MustCompile(s)
	}
	parallel := 4
	if s := os.Getenv("FAULT_MATRIX_PARALLEL"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FAULT_MATRIX_PARALLEL=%q: want a positive number", s)
		}
		parallel = n
	}
	logDir := os.Getenv("FAULT_MATRIX_LOG_DIR")
	if logDir != "" {
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var cells []cell
	for _, c := range matrixCells() {
		if only == nil || only.MatchString(c.name()) {
			cells = append(cells, c)
		}
	}
	began := time.Now()
	results := make([]cellOutcome, len(cells))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, c := range cells {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = runCellProcess(c, logDir)
		})
	}
	wg.Wait()
	for i, c := range cells {
		t.Run(c.name(), func(t *testing.T) {
			if o := results[i]; o.verdict != "PASS" {
				t.Errorf("%s: %s", o.verdict, strings.Join(o.res.Notes, "; "))
			}
		})
	}
	t.Logf("fault matrix: %d cells in %s\n%s", len(cells), time.Since(began).Round(time.Second), matrixTable(cells, results))
}

// cellOutcome is a cell's result as the matrix sees it.
type cellOutcome struct {
	verdict string // PASS, FAIL, PANIC or CRASH
	res     cellResult
}

// runCellProcess runs one cell in a process of its own and reads its result.
func runCellProcess(c cell, logDir string) cellOutcome {
	dir, err := os.MkdirTemp("", "faultmatrix")
	if err != nil {
		return cellOutcome{verdict: "CRASH", res: cellResult{Notes: []string{err.Error()}}}
	}
	defer os.RemoveAll(dir)
	resultFile := filepath.Join(dir, "result.json")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFaultMatrix$", "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "FAULT_MATRIX_CELL="+c.name(), "FAULT_MATRIX_RESULT="+resultFile)
	out, runErr := cmd.CombinedOutput()
	if logDir != "" {
		name := strings.NewReplacer("/", "_").Replace(c.name()) + ".log"
		_ = os.WriteFile(filepath.Join(logDir, name), out, 0o644)
	}
	var o cellOutcome
	b, err := os.ReadFile(resultFile)
	if err == nil {
		err = json.Unmarshal(b, &o.res)
	}
	switch {
	case strings.Contains(string(out), "\npanic: ") || strings.HasPrefix(string(out), "panic: "):
		o.verdict = "PANIC"
		o.res.Notes = append(o.res.Notes, "the process panicked: "+panicLine(string(out)))
	case err != nil:
		o.verdict = "CRASH"
		o.res.Notes = append(o.res.Notes, fmt.Sprintf("no result (%v); exit: %v", err, runErr))
	case o.res.Pass && runErr == nil:
		o.verdict = "PASS"
	default:
		o.verdict = "FAIL"
	}
	return o
}

// panicLine is the panic message and the first frame below it.
func panicLine(out string) string {
	i := strings.Index(out, "panic: ")
	rest := out[i:]
	lines := strings.SplitN(rest, "\n", 8)
	var keep []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "goroutine ") || strings.HasPrefix(l, "[signal") {
			continue
		}
		keep = append(keep, l)
		if len(keep) == 3 {
			break
		}
	}
	return strings.Join(keep, " | ")
}

// matrixTable renders the results as a Markdown table.
func matrixTable(cells []cell, results []cellOutcome) string {
	var b strings.Builder
	b.WriteString("| request | phase | fault | guarantee | result | seconds | /ready/ during the fault | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	counts := map[string]int{}
	for i, c := range cells {
		o := results[i]
		counts[o.verdict]++
		g := "at_least_once"
		if c.eos {
			g = "exactly_once"
		}
		notes := strings.Join(o.res.Notes, "; ")
		notes = strings.ReplaceAll(notes, "|", "\\|")
		notes = strings.ReplaceAll(notes, "\n", " ")
		ready := strings.ReplaceAll(o.res.Ready, "|", "\\|")
		fmt.Fprintf(&b, "| %s | %s | %s (%s) | %s | %s | %.0f | %s | %s |\n",
			c.req.Name(), c.phase, c.kind, c.faultErr().Message, g, o.verdict, o.res.Seconds, ready, notes)
	}
	fmt.Fprintf(&b, "\n%d PASS, %d FAIL, %d PANIC, %d CRASH\n", counts["PASS"], counts["FAIL"], counts["PANIC"], counts["CRASH"])
	return b.String()
}

// cellRun is the state of one cell in its own process.
type cellRun struct {
	t       *testing.T
	c       cell
	cluster *kfake.Cluster
	brokers []string
	cfg     *config.Config
	sender  *viewSender
	workers []*cellWorker
	res     cellResult
	root    string

	faultFrom, faultTo time.Time
	handle             *kfake.FaultHandle
}

// fail marks the cell failed with a note; the check goes on.
func (r *cellRun) fail(format string, args ...any) {
	r.t.Helper()
	msg := fmt.Sprintf(format, args...)
	r.res.Notes = append(r.res.Notes, msg)
	r.t.Error(msg)
}

// note adds what was observed without failing the cell.
func (r *cellRun) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.res.Notes = append(r.res.Notes, msg)
	r.t.Log(msg)
}

// vars is the environment of a worker of the cell with state in dir.
func (r *cellRun) vars(dir string) map[string]string {
	g := string(config.AtLeastOnce)
	if r.c.eos {
		g = string(config.ExactlyOnce)
	}
	v := map[string]string{
		"KAFKA_BROKERS":         strings.Join(r.brokers, ","),
		"WEB_ADDR":              "127.0.0.1:0",
		"DATA_DIR":              dir,
		"PARTITIONS":            "2",
		"COMMIT_INTERVAL":       "150ms",
		"PROCESSING_GUARANTEE":  g,
		"KAFKA_SESSION_TIMEOUT": "6s",
		"SHUTDOWN_TIMEOUT":      "20s",
		"LIVECHECK_INTERVAL":    "0",
		// A day-long window: a cell never straddles a window boundary
		// except at midnight, so late views never leave the views table.
		"WINDOW_SIZE":    "24h",
		"WINDOW_EXPIRES": "48h",
	}
	if r.c.phase == phaseStandby {
		v["TABLE_STANDBY_REPLICAS"] = "1"
	}
	return v
}

// start starts a worker with state in dir (relative to the cell's root).
// A worker that returns before it listens is reported and returned as is.
func (r *cellRun) start(name, dir string) *cellWorker {
	r.t.Helper()
	w, err := startCellWorker(name, r.vars(filepath.Join(r.root, dir)))
	w.dir = dir
	if err != nil && !w.exited() {
		r.t.Fatalf("start %s: %v", name, err)
	}
	r.workers = append(r.workers, w)
	return w
}

// install injects the cell's fault.
func (r *cellRun) install() {
	r.faultFrom = time.Now()
	if r.c.kind == kindMoved {
		r.move()
		return
	}
	r.handle = r.cluster.Fault(r.c.faults(r.cfg)...)
	if r.c.movesLeaders() {
		r.move()
	}
	r.t.Logf("fault installed: %s", r.c.name())
}

// move moves the coordinators, or the leaders of the cell's topics to the
// next broker.
func (r *cellRun) move() {
	if r.c.coordinated() {
		r.cluster.RehashCoordinators()
		r.t.Log("coordinators moved")
		return
	}
	for _, topic := range r.c.topics(r.cfg) {
		for p := range r.cfg.Partitions {
			from := r.cluster.LeaderFor(topic, p)
			if from < 0 {
				continue // created by the worker later; it starts where kfake puts it
			}
			to := (from + 1) % int32(len(r.brokers))
			if err := r.cluster.MoveTopicPartition(topic, p, to); err != nil {
				r.t.Fatalf("move %s/%d: %v", topic, p, err)
			}
			r.t.Logf("moved %s/%d from broker %d to %d", topic, p, from, to)
		}
	}
}

// lift removes the fault.
func (r *cellRun) lift() {
	if r.handle != nil {
		r.handle.Remove()
		r.t.Logf("fault removed after %d hits", r.handle.Hits())
	}
	if r.faultTo.IsZero() {
		r.faultTo = time.Now()
	}
}

// hold waits until the fault answered a request, then keeps it for a
// while, long enough for a client's backoff, and removes it. It reports
// whether the fault was hit at all.
func (r *cellRun) hold(d time.Duration) bool {
	if r.handle == nil { // a real move: nothing to count or remove
		time.Sleep(time.Until(r.faultFrom.Add(d)))
		r.lift()
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hit := r.handle.Wait(ctx, 1) == nil
	if !hit {
		r.fail("the fault was never hit: the worker made no %s request in this phase within 30s", r.c.req.Name())
	}
	if wait := time.Until(r.faultFrom.Add(d)); wait > 0 {
		time.Sleep(wait)
	}
	r.lift()
	return hit
}

// expectExit waits for one of ws to stop on the fatal fault and checks its
// error. It returns the worker that stopped, or nil.
func (r *cellRun) expectExit(ws ...*cellWorker) *cellWorker {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, w := range ws {
			if w.exited() {
				r.checkFatalError(w)
				return w
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.fail("fatal %s on %s: no worker stopped within 30s (run did not return an error)", r.c.faultErr().Message, r.c.req.Name())
	return nil
}

// checkFatalError checks that run returned one line naming the cause.
func (r *cellRun) checkFatalError(w *cellWorker) {
	err := w.err
	if err == nil {
		r.fail("fatal %s: %s stopped with a nil error (exit status 0)", r.c.faultErr().Message, w.name)
		return
	}
	msg := err.Error()
	r.note("%s exited: %s", w.name, msg)
	if strings.Contains(msg, "\n") {
		r.fail("the error of %s spans %d lines", w.name, strings.Count(msg, "\n")+1)
	}
	cause := sarama.KError(r.c.faultErr().Code).Error()
	if !strings.Contains(msg, cause) && !strings.Contains(msg, r.c.faultErr().Message) {
		r.fail("the error of %s does not name the cause %q", w.name, cause)
	}
}

// checkRefused checks that /count/ refuses a view it cannot publish with
// an error naming the cause.
func (r *cellRun) checkRefused(w *cellWorker) {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(w.base + "/count/?page=/refused")
	if err != nil {
		r.fail("/count/ during the fault: %v", err)
		return
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	cause := sarama.KError(r.c.faultErr().Code).Error()
	switch {
	case resp.StatusCode == http.StatusOK:
		r.fail("/count/ answered 200 although %s refused the view", r.c.faultErr().Message)
	case !strings.Contains(e.Error, cause):
		r.fail("/count/ answered %d with error %q, which does not name the cause %q", resp.StatusCode, e.Error, cause)
	default:
		r.note("/count/ answered %d: %s", resp.StatusCode, e.Error)
	}
}

// expectAlive checks that the workers did not stop on a fault they should
// have waited out; a worker that stopped is restarted so the check of the
// counts can go on.
func (r *cellRun) expectAlive(ws ...*cellWorker) []*cellWorker {
	out := make([]*cellWorker, len(ws))
	for i, w := range ws {
		out[i] = w
		if !w.exited() {
			continue
		}
		if r.c.kind == kindOutOfRange && w.err != nil && !strings.Contains(w.err.Error(), "\n") {
			// Stopping on a changelog that lost records it needs is a
			// choice; the counts decide whether it lost anything.
			r.note("%s stopped on OFFSET_OUT_OF_RANGE: %v", w.name, w.err)
		} else {
			r.fail("%s stopped on a %s fault it should have waited out: %v", w.name, r.c.kind, w.err)
		}
		out[i] = r.restart(w)
	}
	return out
}

// restart starts a stopped worker again with the same state.
func (r *cellRun) restart(w *cellWorker) *cellWorker {
	r.t.Helper()
	nw := r.start(w.name+"'", w.dir)
	if nw.exited() {
		r.t.Fatalf("%s did not start again: %v", w.name, nw.err)
	}
	return nw
}

// revive starts a worker again that stopped on its own, outside the checks
// of the fault (which restart the workers they expect to stop), so the
// cell can still check the counts.
func (r *cellRun) revive(w *cellWorker, when string) *cellWorker {
	r.t.Helper()
	if !w.exited() {
		return w
	}
	switch {
	case r.c.fatal() && w.err != nil && strings.Contains(w.err.Error(), sarama.KError(r.c.faultErr().Code).Error()):
		// A later stop on the same fatal fault (a request of this worker
		// that met it before it was removed).
		r.checkFatalError(w)
	case r.c.kind == kindOutOfRange && w.err != nil && !strings.Contains(w.err.Error(), "\n"):
		r.note("%s stopped %s: %v", w.name, when, w.err)
	default:
		r.fail("%s stopped %s: %v", w.name, when, w.err)
	}
	return r.restart(w)
}

// waitReady waits until w answers ready, starting it again if it stops
// (at most twice), and returns the worker to go on with. The wait is longer
// than a transaction timeout (sarama's default is a minute), which is how
// long a transaction left open can hold the group's offsets.
func (r *cellRun) waitReady(w *cellWorker) *cellWorker {
	began := time.Now()
	deadline := began.Add(90 * time.Second)
	restarts := 0
	for time.Now().Before(deadline) {
		if w.ready() {
			if took := time.Since(began); took > 20*time.Second {
				r.note("%s became ready only after %s", w.name, took.Round(time.Second))
			}
			return w
		}
		if w.exited() {
			if restarts == 2 {
				r.fail("%s keeps stopping: %v", w.name, w.err)
				return w
			}
			restarts++
			w = r.revive(w, "while waiting to be ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.fail("%s not ready within 90s after the fault was removed", w.name)
	return w
}

// sendCounted sends n views through w and waits until the report counts
// every acknowledged view.
func (r *cellRun) sendCounted(w *cellWorker, n int) {
	r.sender.send(w.base, n)
	r.waitCounted(w, 30*time.Second)
}

// waitCounted waits, for up to d, until the report of w counts every view
// in the page views topic, so that stopping the workers next leaves none
// unprocessed; it notes when the report does not get there.
func (r *cellRun) waitCounted(w *cellWorker, d time.Duration) {
	_, sent, err := topicContents(r.brokers, r.cfg.Topic, false)
	if err != nil {
		r.note("read %s: %v", r.cfg.Topic, err)
		return
	}
	if short, ok := waitCounted(w.base, sent, d); !ok {
		r.note("report of %s did not count every view within %s (short: %s)", w.name, d, short)
	}
}

// checkReadiness checks what /ready/ said while the fault was in place.
func (r *cellRun) checkReadiness(ws ...*cellWorker) {
	var reasons []string
	for _, w := range ws {
		for _, s := range w.notReadyBetween(r.faultFrom, r.faultTo.Add(200*time.Millisecond)) {
			reasons = append(reasons, w.name+": "+s)
		}
	}
	if len(reasons) > 0 {
		short := make([]string, 0, 3)
		for _, s := range reasons {
			if len(s) > 90 {
				s = s[:90] + "..."
			}
			if len(short) == 3 {
				short = append(short, "...")
				break
			}
			short = append(short, s)
		}
		r.res.Ready = "not ready: " + strings.Join(short, "; ")
	} else {
		r.res.Ready = "ready"
	}
	if !r.c.waits() {
		return
	}
	for _, s := range reasons {
		if !strings.HasSuffix(s, ": ") {
			return
		}
	}
	r.fail("/ready/ never said why the worker was waiting while the fault was in place (saw: %s)", r.res.Ready)
}

// stopAll stops the workers in turn and checks they stop cleanly. A worker
// that stopped on its own fails the cell, and is started again to process
// what it left before it is stopped, so the counts still tell whether
// anything was lost.
func (r *cellRun) stopAll(ws ...*cellWorker) {
	for _, w := range ws {
		if w.exited() {
			w = r.waitReady(r.revive(w, "on its own before the end of the cell"))
			r.waitCounted(w, 30*time.Second)
		}
		if err := w.stop(); err != nil {
			r.fail("%s did not stop cleanly: %v", w.name, err)
		}
	}
}

// checkCounts reads the page views topic and the tables' changelogs and
// compares them.
func (r *cellRun) checkCounts() {
	r.lift()
	_, sent, err := topicContents(r.brokers, r.cfg.Topic, false)
	if err != nil {
		r.fail("read %s: %v", r.cfg.Topic, err)
		return
	}
	r.sender.mu.Lock()
	acked := r.sender.acked
	r.sender.mu.Unlock()
	if d := compareCounts(r.cfg.Topic+" holds the acknowledged views", sent, acked, false); d != "" {
		r.fail("%s", d)
	}
	st, err := readTables(r.brokers, r.cfg)
	if err != nil {
		r.fail("read the changelogs: %v", err)
		return
	}
	for _, x := range []struct {
		name string
		got  map[string]int64
	}{{"totals", st.totals}, {"views", st.views}} {
		if d := compareCounts(x.name, x.got, sent, r.c.eos); d != "" {
			r.fail("%s", d)
		}
	}
}

// runCell runs one cell of the matrix in this process.
func runCell(t *testing.T, c cell) {
	began := time.Now()
	r := &cellRun{t: t, c: c, sender: newViewSender(), root: t.TempDir()}
	defer func() {
		r.res.Seconds = time.Since(began).Seconds()
		r.res.Pass = !t.Failed()
		if t.Failed() && len(r.res.Notes) == 0 {
			r.res.Notes = append(r.res.Notes, "failed (see the cell's log)")
		}
		if f := os.Getenv("FAULT_MATRIX_RESULT"); f != "" {
			b, _ := json.Marshal(r.res)
			_ = os.WriteFile(f, b, 0o644)
		}
		if t.Failed() {
			for _, w := range r.workers {
				t.Logf("log of %s:\n%s", w.name, w.logs)
			}
		}
	}()
	brokers := 1
	if c.kind == kindMoved || c.movesLeaders() {
		brokers = 3
	}
	cluster, err := newMatrixCluster(brokers)
	if err != nil {
		t.Fatal(err)
	}
	r.cluster = cluster
	r.brokers = cluster.ListenAddrs()
	r.cfg, err = loadConfig(env(r.vars(r.root)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, w := range r.workers {
			if !w.exited() {
				_ = w.stop()
			}
		}
		cluster.Close()
	}()
	switch c.phase {
	case phaseJoin:
		r.runJoin()
	case phaseRecovery:
		r.runRecovery()
	case phaseProcessing, phaseFlush:
		r.runSteady()
	case phaseStandby:
		r.runStandby()
	case phaseRevoke:
		r.runRevoke()
	}
}

// afterFault handles the fault's course on workers ws: for a fatal fault,
// one of them must stop with a clear error, and is started again without
// the fault; otherwise the fault is held for a while, removed, and every
// worker must still be running. It returns the workers to go on with.
func (r *cellRun) afterFault(ws ...*cellWorker) []*cellWorker {
	if r.c.kind == kindFatal && r.c.perRequest() {
		r.checkRefused(ws[0])
	}
	if r.c.fatal() {
		stopped := r.expectExit(ws...)
		r.lift()
		out := make([]*cellWorker, len(ws))
		copy(out, ws)
		if stopped == nil {
			return out
		}
		// Another worker may go down on the same fault a moment later.
		time.Sleep(time.Second)
		for i, w := range out {
			if w.exited() {
				if w != stopped {
					r.checkFatalError(w)
				}
				out[i] = r.restart(w)
			}
		}
		return out
	}
	hold := 2 * time.Second
	if r.c.kind == kindOutOfRange {
		// Long enough for the standby copies to start again (every 2s)
		// and meet the error a few times.
		hold = 7 * time.Second
	}
	r.hold(hold)
	stopped := false
	for _, w := range ws {
		stopped = stopped || w.exited()
	}
	if !stopped {
		// A worker that stopped fails the cell already; what its /ready/
		// said before says nothing more.
		r.checkReadiness(ws...)
	}
	return r.expectAlive(ws...)
}

// runJoin: the fault is in place when a fresh group starts.
func (r *cellRun) runJoin() {
	r.install()
	a := r.start("a", "a")
	a = r.afterFault(a)[0]
	a = r.waitReady(a)
	r.sendCounted(a, 60)
	r.stopAll(a)
	r.checkCounts()
}

// runRecovery: a worker fills the changelogs and stops; the fault is in
// place when a worker with an empty store takes over and replays them.
func (r *cellRun) runRecovery() {
	seed := r.waitReady(r.start("seed", "seed"))
	r.sendCounted(seed, 100)
	r.stopAll(seed)

	r.install()
	b := r.start("b", "b")
	b = r.afterFault(b)[0]
	b = r.waitReady(b)
	r.sendCounted(b, 60)
	r.stopAll(b)
	r.checkCounts()
}

// runSteady: the fault hits a running worker while it processes views.
func (r *cellRun) runSteady() {
	a := r.waitReady(r.start("a", "a"))
	r.sendCounted(a, 60)

	r.install()
	var sending sync.WaitGroup
	base := a.base
	sending.Go(func() { r.sender.send(base, 60) })
	a = r.afterFault(a)[0]
	sending.Wait()
	a = r.waitReady(a)
	r.sendCounted(a, 60)
	r.stopAll(a)
	r.checkCounts()
}

// runStandby: two workers keep standby copies of each other's partitions;
// the fault hits the copies; then one worker stops and the other takes its
// partitions over from its copies.
func (r *cellRun) runStandby() {
	a := r.waitReady(r.start("a", "a"))
	b := r.waitReady(r.start("b", "b"))
	a, b = r.waitSplit(a, b)
	r.sendCounted(a, 100)
	// Let the copies catch up before the fault.
	time.Sleep(2 * time.Second)

	r.install()
	var sending sync.WaitGroup
	sending.Go(func() { r.sender.send(a.base, 60) })
	ws := r.afterFault(a, b)
	sending.Wait()
	a, b = r.waitReady(ws[0]), r.waitReady(ws[1])
	r.sendCounted(a, 60)
	r.stopAll(a)
	b = r.revive(b, "when the other stopped")
	r.waitCounted(b, 60*time.Second)
	r.stopAll(b)
	r.checkCounts()
}

// runRevoke: the fault is in place when a second worker joins a running
// one, which revokes partitions while views keep coming.
func (r *cellRun) runRevoke() {
	a := r.waitReady(r.start("a", "a"))
	r.sendCounted(a, 60)

	stop := make(chan struct{})
	var sending sync.WaitGroup
	sending.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if a.exited() {
				return
			}
			r.sender.send(a.base, 4)
		}
	})
	r.install()
	b := r.start("b", "b")
	ws := r.afterFault(a, b)
	close(stop)
	sending.Wait()
	a, b = r.waitReady(ws[0]), r.waitReady(ws[1])
	a, b = r.waitSplit(a, b)
	r.sendCounted(b, 60)
	r.stopAll(b, a)
	r.checkCounts()
}

// waitSplit waits until both workers hold partitions, starting again one
// that stops meanwhile, and returns the workers to go on with.
func (r *cellRun) waitSplit(a, b *cellWorker) (*cellWorker, *cellWorker) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if len(a.partitions()) > 0 && len(b.partitions()) > 0 {
			return a, b
		}
		a = r.waitReady(r.revive(a, "while the group settled"))
		b = r.waitReady(r.revive(b, "while the group settled"))
		time.Sleep(100 * time.Millisecond)
	}
	r.fail("the two workers did not share the partitions within 60s (a holds %v, b holds %v)", a.partitions(), b.partitions())
	return a, b
}

// changelogsOf are the changelogs of the example's tables in group.
func changelogsOf(group string) []string {
	views, totals := tableNames()
	return []string{app.Changelog(group, totals), app.Changelog(group, views)}
}
