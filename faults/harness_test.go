package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bins are the binaries TestMain builds; empty when it built none (-short
// or fuzzing), and then the tests that need processes skip.
var bins struct{ worker, broker string }

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() || fuzzing() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "pageviews-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	return m.Run()
}

// fuzzing reports whether this process fuzzes (as coordinator or worker):
// then building the binaries again in every fuzz worker would be waste.
func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

// build compiles the worker (with the race detector when the tests run
// under it) and the dev broker from the parent module into dir.
func build(dir string) error {
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(mod, []byte("module github.com/gofaust/pageviews\n")) {
		return fmt.Errorf("%s is not the pageviews module (go.mod: %v)", root, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	workerArgs := []string{"build", "-o", filepath.Join(dir, "pageviews")}
	if raceEnabled {
		workerArgs = append(workerArgs, "-race")
	}
	for _, args := range [][]string{
		append(workerArgs, "./cmd/pageviews"),
		{"build", "-o", filepath.Join(dir, "devbroker"), "./cmd/devbroker"},
	} {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	bins.worker = filepath.Join(dir, "pageviews")
	bins.broker = filepath.Join(dir, "devbroker")
	return nil
}

// needProcesses skips a test that runs the binaries when TestMain built
// none.
func needProcesses(t testing.TB) {
	t.Helper()
	if bins.worker == "" {
		t.Skip("runs the worker and broker processes: not with -short or while fuzzing")
	}
}

// needChaos skips the long suites unless CHAOS=1.
func needChaos(t testing.TB) {
	t.Helper()
	needProcesses(t)
	if os.Getenv("CHAOS") != "1" {
		t.Skip("long suite: set CHAOS=1 to run it")
	}
}

// output collects a child's output by line, copies it to a file, and wakes
// whoever waits for a line.
type output struct {
	mu      sync.Mutex
	lines   []string
	partial []byte
	file    *os.File
	wake    chan struct{}
}

func newOutput(path string) (*output, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &output{file: f, wake: make(chan struct{})}, nil
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.file.Write(p)
	o.partial = append(o.partial, p...)
	woke := false
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		o.lines = append(o.lines, string(o.partial[:i]))
		o.partial = o.partial[i+1:]
		woke = true
	}
	if woke {
		close(o.wake)
		o.wake = make(chan struct{})
	}
	return len(p), nil
}

// snapshot returns the lines so far and a channel closed on the next one.
func (o *output) snapshot() ([]string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lines[:len(o.lines):len(o.lines)], o.wake
}

func (o *output) all() []string {
	lines, _ := o.snapshot()
	return lines
}

func (o *output) String() string { return strings.Join(o.all(), "\n") }

func tail(lines []string, n int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// proc is a child process: the worker or the broker.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{} // closed when it has exited
	err            error         // how it exited, once done is closed
}

// logDir is where a test's processes write their output: FAULTS_LOG_DIR
// (kept) or the test's temporary directory.
func logDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FAULTS_LOG_DIR"); d != "" {
		dir := filepath.Join(d, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// startProc starts bin with exactly env. The child is in its own process
// group and dies with the test process; the test's cleanup kills it if it
// is still running and shows its last lines when the test failed.
func startProc(t testing.TB, dir, name, bin string, args, env []string) *proc {
	t.Helper()
	stdout, err := newOutput(filepath.Join(dir, name+".stdout"))
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := newOutput(filepath.Join(dir, name+".stderr"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdout: stdout, stderr: stderr, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = stdout.file.Close()
		_ = stderr.file.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			t.Logf("--- %s: last lines of stdout\n%s\n--- %s: stderr\n%s", name, tail(stdout.all(), 30), name, tail(stderr.all(), 30))
		}
		if raceEnabled && strings.Contains(stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", name, tail(stderr.all(), 80))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the process group and waits for the exit.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not exit 30s after SIGKILL", p.name)
	}
}

// waitLine waits for the first output line (from the start) that match
// accepts, and returns it.
func (p *proc) waitLine(t testing.TB, out *output, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		lines, wake := out.snapshot()
		for _, l := range lines[seen:] {
			if match(l) {
				return l
			}
		}
		seen = len(lines)
		select {
		case <-wake:
		case <-p.done:
			lines, _ := out.snapshot()
			for _, l := range lines[seen:] {
				if match(l) {
					return l
				}
			}
			t.Fatalf("%s exited (%v) before %s\nstdout:\n%s\nstderr:\n%s", p.name, p.err, what, tail(p.stdout.all(), 30), tail(p.stderr.all(), 30))
		case <-deadline.C:
			t.Fatalf("%s: no %s within %s\nstdout:\n%s\nstderr:\n%s", p.name, what, timeout, tail(p.stdout.all(), 30), tail(p.stderr.all(), 30))
		}
	}
}

// entry is one JSON log line of the worker.
type entry map[string]any

func (e entry) str(k string) string { s, _ := e[k].(string); return s }

// entries returns the worker's log lines whose msg is msg.
func (p *proc) entries(msg string) []entry {
	var out []entry
	for _, l := range p.stdout.all() {
		if !strings.Contains(l, msg) {
			continue
		}
		var e entry
		if json.Unmarshal([]byte(l), &e) == nil && e.str("msg") == msg {
			out = append(out, e)
		}
	}
	return out
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// broker is a dev broker process.
type broker struct {
	p    *proc
	addr string // what it advertises
}

// startBroker starts bin/devbroker listening on addr (port 0 picks one),
// advertising advertise when set.
func startBroker(t testing.TB, dir, addr, advertise string) *broker {
	t.Helper()
	args := []string{"-addr", addr}
	if advertise != "" {
		args = append(args, "-advertise", advertise)
	}
	p := startProc(t, dir, "devbroker", bins.broker, args, []string{"PATH=/usr/bin:/bin"})
	const prefix = "devbroker listening on "
	line := p.waitLine(t, p.stdout, 30*time.Second, "the listening line", func(l string) bool { return strings.HasPrefix(l, prefix) })
	return &broker{p: p, addr: strings.TrimPrefix(line, prefix)}
}

// worker is a pageviews process and what it takes to start it again.
type worker struct {
	t    testing.TB
	dir  string // log directory
	name string
	env  []string
	runs int
	p    *proc
	addr string // HTTP host:port of the current process
}

// workerEnv is the environment every test worker gets; extra overrides it.
func workerEnv(brokers, dataDir string, extra map[string]string) []string {
	m := map[string]string{
		"KAFKA_BROKERS":    brokers,
		"WEB_ADDR":         "127.0.0.1:0",
		"DATA_DIR":         dataDir,
		"LOG_FORMAT":       "json",
		"SHUTDOWN_TIMEOUT": "20s",
		"GORACE":           "halt_on_error=0",
	}
	for k, v := range extra {
		m[k] = v
	}
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	return env
}

// startWorker starts a worker and waits until its HTTP server listens.
func startWorker(t testing.TB, dir, name string, env []string) *worker {
	t.Helper()
	w := &worker{t: t, dir: dir, name: name, env: env}
	w.start()
	return w
}

func (w *worker) start() {
	w.t.Helper()
	w.runs++
	name := w.name
	if w.runs > 1 {
		name = fmt.Sprintf("%s.run%d", w.name, w.runs)
	}
	w.p = startProc(w.t, w.dir, name, bins.worker, nil, w.env)
	line := w.p.waitLine(w.t, w.p.stdout, 60*time.Second, `"http listening"`, func(l string) bool {
		return strings.Contains(l, `"msg":"http listening"`)
	})
	var e entry
	if err := json.Unmarshal([]byte(line), &e); err != nil || e.str("addr") == "" {
		w.t.Fatalf("%s: cannot read the address from %q: %v", name, line, err)
	}
	w.addr = e.str("addr")
}

// kill9 kills the worker's process at once (SIGKILL) and waits for it.
func (w *worker) kill9() {
	w.t.Helper()
	w.p.kill(w.t)
}

func (w *worker) url(path string) string { return "http://" + w.addr + path }

// requireRunning fails the test when the worker has exited.
func (w *worker) requireRunning(what string) {
	w.t.Helper()
	if w.p.exited() {
		w.t.Fatalf("%s: the worker exited (%v) %s\nlast log lines:\n%s\nstderr:\n%s", w.p.name, w.p.err, what,
			tail(w.p.stdout.all(), 40), tail(w.p.stderr.all(), 20))
	}
}

// httpClient is shared by the load and the probes: enough idle connections
// per worker for the load's concurrency.
var httpClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
}

// get fetches url and returns the status and body.
func get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes(), err
}

// probe is a short GET for polling.
func probe(url string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return get(ctx, url)
}

// waitFor polls cond every 50ms until it holds or timeout passes; detail is
// what the failure message shows.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %s: %s", what, timeout, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ready reports whether the worker answers /ready/ with 200.
func (w *worker) ready() (bool, string) {
	if w.p.exited() {
		return false, fmt.Sprintf("%s exited: %v\n%s", w.p.name, w.p.err, tail(w.p.stdout.all(), 20))
	}
	code, body, err := probe(w.url("/ready/"))
	if err != nil {
		return false, err.Error()
	}
	return code == http.StatusOK, fmt.Sprintf("%d %s", code, bytes.TrimSpace(body))
}

func (w *worker) waitReady(timeout time.Duration) {
	w.t.Helper()
	waitFor(w.t, timeout, w.name+" ready", w.ready)
}

// pageReport and report are what /report/ answers.
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

func (w *worker) report() (report, error) {
	var r report
	code, body, err := probe(w.url("/report/"))
	if err != nil {
		return r, err
	}
	if code != http.StatusOK {
		return r, fmt.Errorf("/report/ answered %d %s", code, body)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("/report/ is not a report: %v: %s", err, body)
	}
	return r, nil
}

// isJSONError reports whether body is {"error":"..."} with a message.
func isJSONError(body []byte) bool {
	var e struct {
		Error *string `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error != nil && *e.Error != ""
}

// errorsJoin keeps the first few distinct messages of errs, for failure
// messages that would otherwise repeat one error thousands of times.
func errorsJoin(errs map[string]int) error {
	var out []error
	for msg, n := range errs {
		out = append(out, fmt.Errorf("%dx %s", n, msg))
		if len(out) == 8 {
			break
		}
	}
	return errors.Join(out...)
}
