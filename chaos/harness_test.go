package chaos_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
)

// bins are the binaries TestMain builds for this run.
var bins struct{ worker, broker string }

// TestMain builds the worker and the dev broker once, only when the suite is
// enabled, so `go test ./...` without CHAOS=1 costs nothing.
func TestMain(m *testing.M) {
	if os.Getenv("CHAOS") != "1" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "pageviews-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: temp dir:", err)
		os.Exit(1)
	}
	bins.worker = filepath.Join(dir, "pageviews")
	bins.broker = filepath.Join(dir, "devbroker")
	for _, b := range []struct{ out, pkg string }{
		{bins.worker, "github.com/gofaust/pageviews/cmd/pageviews"},
		{bins.broker, "github.com/gofaust/pageviews/cmd/devbroker"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: go build %s: %v\n", b.pkg, err)
			_ = os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func requireChaos(t *testing.T) {
	t.Helper()
	if os.Getenv("CHAOS") != "1" {
		t.Skip("chaos suite: set CHAOS=1 (make chaos) to run real broker and worker processes")
	}
}

// childAttrs puts a child in its own process group, so a Ctrl-C on the
// terminal reaches only the test, and kills it when the test process dies
// (a -timeout panic runs no cleanups).
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// syncBuffer is a bytes.Buffer safe for a child's writes and the test's
// reads, optionally copied to a file.
type syncBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	file *os.File
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		_, _ = b.file.Write(p)
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// broker is the dev broker process.
type broker struct {
	addr   string
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *syncBuffer
}

// startBroker starts a dev broker on a free port with its own data
// directory and waits for the line that names its address.
func startBroker(t *testing.T, logDir string) *broker {
	t.Helper()
	errFile, err := os.Create(filepath.Join(logDir, "broker.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = errFile.Close() })
	b := &broker{done: make(chan struct{}), stderr: &syncBuffer{file: errFile}}
	b.cmd = exec.Command(bins.broker, "-addr", "127.0.0.1:0", "-data-dir", filepath.Join(logDir, "broker-data"))
	b.cmd.Stderr = b.stderr
	b.cmd.SysProcAttr = childAttrs()
	out, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start devbroker: %v", err)
	}
	addrc := make(chan string, 1)
	go func() {
		defer close(b.done)
		r := bufio.NewReader(out)
		line, _ := r.ReadString('\n')
		addrc <- strings.TrimSpace(strings.TrimPrefix(line, "devbroker listening on "))
		_, _ = io.Copy(io.Discard, r)
		_ = b.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	})
	select {
	case b.addr = <-addrc:
	case <-time.After(30 * time.Second):
		t.Fatalf("devbroker printed no address within 30s; stderr:\n%s", b.stderr)
	}
	if _, _, err := net.SplitHostPort(b.addr); err != nil {
		t.Fatalf("devbroker address %q: %v; stderr:\n%s", b.addr, err, b.stderr)
	}
	return b
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

// logSink receives a worker's stdout: it keeps every parsed line, copies
// the raw log to a file, and notices when the HTTP server listens.
type logSink struct {
	mu        sync.Mutex
	p         *proc
	file      *os.File
	partial   []byte
	lines     []logLine
	listening atomic.Bool
}

func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.file.Write(b)
	s.partial = append(s.partial, b...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		if l, ok := parseLine(s.partial[:i]); ok {
			l.Worker, l.Incarnation = s.p.slot.name, s.p.n
			s.lines = append(s.lines, l)
			if l.Msg == "http listening" {
				s.listening.Store(true)
			}
		}
		s.partial = s.partial[i+1:]
	}
	return len(b), nil
}

func (s *logSink) snapshot() []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// proc is one run (incarnation) of a worker process.
type proc struct {
	slot     *slot
	n        int
	cmd      *exec.Cmd
	logs     *logSink
	stderr   *syncBuffer
	done     chan struct{}
	exitErr  error  // valid once done is closed
	signaled string // "TERM" or "KILL" once the test sent one; under slot.mu
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) describe() string {
	return fmt.Sprintf("%s (run %d, pid %d)", p.slot.name, p.n, p.cmd.Process.Pid)
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

func (s *slot) running() bool {
	p := s.current()
	return p != nil && !p.exited()
}

// serving is true while the current run's HTTP server may answer.
func (s *slot) serving() bool {
	p := s.current()
	return p != nil && !p.exited() && p.logs.listening.Load()
}

// cluster is one scenario's broker and workers.
type cluster struct {
	t        *testing.T
	logDir   string
	broker   *broker
	protocol string
	static   bool
	slots    []*slot
	http     *http.Client

	mu         sync.Mutex
	unexpected []string // workers that exited without being told to
}

// newCluster starts a fresh broker and prepares n worker slots (none is
// started). Workers get free ports chosen now and kept across restarts.
func newCluster(t *testing.T, n int, protocol string, static bool) *cluster {
	t.Helper()
	logDir := t.TempDir()
	if d := os.Getenv("CHAOS_LOG_DIR"); d != "" {
		logDir = filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_"))
		_ = os.RemoveAll(logDir)
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := &cluster{
		t: t, logDir: logDir, protocol: protocol, static: static,
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}},
	}
	c.broker = startBroker(t, logDir)
	for i := range n {
		s := &slot{c: c, idx: i, name: fmt.Sprintf("worker-%d", i), dataDir: filepath.Join(logDir, fmt.Sprintf("worker-%d-data", i))}
		s.addr = freeAddr(t)
		s.base = "http://" + s.addr
		c.slots = append(c.slots, s)
	}
	// Registered after the broker's cleanup, so it runs first: workers die
	// before the broker they talk to.
	t.Cleanup(c.killAll)
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
	})
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (c *cluster) env(s *slot) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"KAFKA_BROKERS=" + c.broker.addr,
		"WEB_ADDR=" + s.addr,
		"DATA_DIR=" + s.dataDir,
		"KAFKA_GROUP=pageviews",
		"KAFKA_REBALANCE_PROTOCOL=" + c.protocol,
		"KAFKA_SESSION_TIMEOUT=" + sessionTimeout.String(),
		"COMMIT_INTERVAL=" + commitInterval.String(),
		"WINDOW_SIZE=24h",
		"WINDOW_EXPIRES=48h",
		"PARTITIONS=" + strconv.Itoa(partitions),
		"SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(),
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
	}
	if c.static {
		env = append(env, "KAFKA_INSTANCE_ID="+s.name)
	}
	return env
}

// start starts a new run of worker i, with its data directory as it is.
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
	stem := filepath.Join(c.logDir, fmt.Sprintf("%s.run%d", s.name, n))
	out, err := os.Create(stem + ".log")
	if err != nil {
		t.Fatal(err)
	}
	errf, err := os.Create(stem + ".stderr")
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{slot: s, n: n, done: make(chan struct{}), stderr: &syncBuffer{file: errf}}
	p.logs = &logSink{p: p, file: out}
	p.cmd = exec.Command(bins.worker)
	p.cmd.Env = c.env(s)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.stderr
	p.cmd.SysProcAttr = childAttrs()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", s.name, err)
	}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	go func() {
		err := p.cmd.Wait()
		_ = out.Close()
		_ = errf.Close()
		s.mu.Lock()
		p.exitErr = err
		sig := p.signaled
		s.mu.Unlock()
		if sig == "" {
			c.mu.Lock()
			c.unexpected = append(c.unexpected, fmt.Sprintf("%s exited on its own (%v); stderr:\n%s", p.describe(), err, tail(p.stderr.String(), 20)))
			c.mu.Unlock()
		}
		close(p.done)
	}()
	t.Logf("started %s (run %d, pid %d) on %s", s.name, n, p.cmd.Process.Pid, s.addr)
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
		if p == nil || p.exited() {
			t.Fatalf("%s is not running", s.name)
		}
		s.mu.Lock()
		p.signaled = name
		s.mu.Unlock()
		if err := p.cmd.Process.Signal(sig); err != nil {
			t.Fatalf("%s %s: %v", name, p.describe(), err)
		}
		t.Logf("sent %s to %s", name, p.describe())
		ps = append(ps, p)
	}
	deadline := time.After(exitDeadline)
	for _, p := range ps {
		select {
		case <-p.done:
		case <-deadline:
			t.Errorf("%s did not exit within %s of %s; killing it", p.describe(), exitDeadline, name)
			_ = p.cmd.Process.Kill()
			<-p.done
			continue
		}
		if sig == syscall.SIGTERM && p.exitErr != nil {
			t.Errorf("%s: warm shutdown failed: %v; stderr:\n%s", p.describe(), p.exitErr, tail(p.stderr.String(), 20))
		}
	}
}

// killAll kills every worker still running; it is the cleanup.
func (c *cluster) killAll() {
	for _, s := range c.slots {
		if p := s.current(); p != nil && !p.exited() {
			s.mu.Lock()
			p.signaled = "KILL"
			s.mu.Unlock()
			_ = p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
			}
		}
	}
}

// checkCrashes fails the test, at once, when a worker exited without being
// told to: waiting further would only hide the crash behind a timeout.
func (c *cluster) checkCrashes() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.unexpected) > 0 {
		c.t.Fatalf("worker crashed:\n%s", strings.Join(c.unexpected, "\n"))
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
			out = append(out, p.logs.snapshot()...)
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
	var b strings.Builder
	lines := c.lines()
	slices.SortStableFunc(lines, func(a, b logLine) int { return a.Time.Compare(b.Time) })
	for _, l := range lines {
		if keep[l.Msg] || l.Level == "WARN" || l.Level == "ERROR" {
			fmt.Fprintf(&b, "%s run%d %s\n", l.Worker, l.Incarnation, trimLine(l.Raw))
		}
	}
	c.t.Logf("worker logs (membership, recovery, warnings) in %s:\n%s", c.logDir, tail(b.String(), 400))
}

func trimLine(raw string) string {
	raw = strings.Replace(raw, `"service":"pageviews",`, "", 1)
	raw = strings.Replace(raw, `"component":"stream",`, "", 1)
	if len(raw) > 400 {
		raw = raw[:400] + "..."
	}
	return raw
}

// live returns the workers that are running.
func (c *cluster) live() []*slot {
	var out []*slot
	for _, s := range c.slots {
		if s.running() {
			out = append(out, s)
		}
	}
	return out
}

// getJSON fetches url into v and returns the status; err is a transport or
// decoding error.
func (c *cluster) getJSON(url string, v any) (int, error) {
	resp, err := c.http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %q: %w", body, err)
		}
	}
	return resp.StatusCode, nil
}

// pageReport and report are /report/ as the HTTP contract defines it.
type pageReport struct {
	Now    int64  `json:"-"` // page_views_within_<window>: see UnmarshalJSON
	Count  int64  `json:"count"`
	Report string `json:"report"`
}

type report struct {
	Now     int64                 `json:"-"` // page_views_within_<window>: see UnmarshalJSON
	Count   int64                 `json:"count"`
	Pages   map[string]pageReport `json:"pages"`
	Stale   bool                  `json:"stale"`
	Missing []int32               `json:"missing_partitions"`
}

// UnmarshalJSON reads the count in the window of now whatever the window
// is called: page_views_within_1_minute, page_views_within_30_seconds.
func (p *pageReport) UnmarshalJSON(b []byte) error {
	type plain pageReport
	if err := json.Unmarshal(b, (*plain)(p)); err != nil {
		return err
	}
	n, err := windowCount(b)
	p.Now = n
	return err
}

// UnmarshalJSON: see pageReport's.
func (r *report) UnmarshalJSON(b []byte) error {
	type plain report
	if err := json.Unmarshal(b, (*plain)(r)); err != nil {
		return err
	}
	n, err := windowCount(b)
	r.Now = n
	return err
}

// windowCount reads the page_views_within_<window> field of a JSON object.
func windowCount(b []byte) (int64, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return 0, err
	}
	for k, v := range fields {
		if strings.HasPrefix(k, "page_views_within_") {
			var n int64
			err := json.Unmarshal(v, &n)
			return n, err
		}
	}
	return 0, nil
}

// partial is what /report/?local=1 answers: the partitions a worker serves.
type partial struct {
	Partitions []int32                    `json:"partitions"`
	Pages      map[string]json.RawMessage `json:"pages"`
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
		for _, s := range live {
			if st, err := c.getJSON(s.base+"/ready/", nil); err != nil || st != http.StatusOK {
				problems = append(problems, fmt.Sprintf("%s not ready (%d %v)", s.name, st, err))
				continue
			}
			var part partial
			if st, err := c.getJSON(s.base+"/report/?local=1", &part); err != nil || st != http.StatusOK {
				problems = append(problems, fmt.Sprintf("%s local report: %d %v", s.name, st, err))
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
			var rep report
			if st, err := c.getJSON(s.base+"/report/", &rep); err != nil || st != http.StatusOK || rep.Stale {
				problems = append(problems, fmt.Sprintf("%s report: status %d err %v stale %v missing %v", s.name, st, err, rep.Stale, rep.Missing))
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
func (c *cluster) waitConverged(timeout time.Duration) (map[string]report, bool, string) {
	const stableFor = 3 * time.Second
	deadline := time.Now().Add(timeout)
	var prev map[string]report
	var stableSince time.Time
	state := ""
	for {
		c.checkCrashes()
		cur := map[string]report{}
		var problems []string
		for _, s := range c.live() {
			var rep report
			st, err := c.getJSON(s.base+"/report/", &rep)
			if err != nil || st != http.StatusOK {
				problems = append(problems, fmt.Sprintf("%s: status %d err %v", s.name, st, err))
				continue
			}
			if rep.Stale {
				problems = append(problems, fmt.Sprintf("%s: stale, missing %v", s.name, rep.Missing))
			}
			cur[s.name] = rep
		}
		if diff := reportsDiffer(cur); diff != "" {
			problems = append(problems, diff)
		}
		switch {
		case len(problems) > 0:
			stableSince = time.Time{}
			state = strings.Join(problems, "; ")
		case prev == nil || reportsDiffer(map[string]report{"before": anyReport(prev), "now": anyReport(cur)}) != "":
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

func anyReport(m map[string]report) report {
	for _, r := range m {
		return r
	}
	return report{}
}

// reportsDiffer compares the pages and totals of the reports and describes
// the first differences; "" means they are identical.
func reportsDiffer(reps map[string]report) string {
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
		for _, p := range ps {
			var part partial
			url := fmt.Sprintf("%s/report/?local=1&partitions=%d", c.slots[idx].base, p)
			if st, err := c.getJSON(url, &part); err != nil || st != http.StatusOK {
				c.t.Logf("pages of partition %d: %d %v", p, st, err)
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
		if s.serving() {
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
