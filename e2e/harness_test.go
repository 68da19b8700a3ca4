// Package e2e_test runs the worker and the dev broker as real processes and
// drives them only through what an operator has: environment variables,
// HTTP pages, Kafka topics (through kcat), signals and the JSON log.
//
// TestMain builds cmd/pageviews and cmd/devbroker once. When the tests run
// with -race, the binaries are built with -race too, and any data race they
// report fails the test that started them (PAGEVIEWS_E2E_RACE=0 or 1
// overrides this).
//
// PAGEVIEWS_E2E_KEEP_LOGS=DIR keeps every process's stdout and stderr in
// DIR/<test>/ instead of a temporary directory.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// binaries are the paths TestMain built.
var binaries struct {
	worker, broker string
	race           bool
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pageviews-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)

	binaries.race = raceEnabled
	if v := os.Getenv("PAGEVIEWS_E2E_RACE"); v != "" {
		binaries.race = v == "1" || v == "true"
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if binaries.race {
		args = append(args, "-race")
	}
	args = append(args, "github.com/gofaust/pageviews/cmd/pageviews", "github.com/gofaust/pageviews/cmd/devbroker")
	// go test puts its own toolchain's bin directory first in PATH.
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go %s: %v\n", strings.Join(args, " "), err)
		return 1
	}
	binaries.worker = filepath.Join(dir, "pageviews")
	binaries.broker = filepath.Join(dir, "devbroker")
	return m.Run()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ---------------------------------------------------------------------------
// Processes and their logs.

// logSink keeps a process's output in a file and, split into lines, in
// memory, and wakes waiters on every new line.
type logSink struct {
	mu      sync.Mutex
	f       *os.File
	partial []byte
	lines   []string
	changed chan struct{} // closed and replaced when a line arrives
}

func newLogSink(path string) (*logSink, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &logSink{f: f, changed: make(chan struct{})}, nil
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.f.Write(p)
	s.partial = append(s.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.lines = append(s.lines, string(s.partial[:i]))
		s.partial = s.partial[i+1:]
		added = true
	}
	if added {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return len(p), nil
}

// snapshot returns the complete lines so far and a channel closed when more
// arrive.
func (s *logSink) snapshot() ([]string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clip(s.lines), s.changed
}

// all returns every line, including an unterminated last one.
func (s *logSink) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.lines)
	if len(s.partial) > 0 {
		out = append(out, string(s.partial))
	}
	return out
}

// proc is a process started by a test. It is killed when the test ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *logSink
	stderr *logSink
	done   chan struct{} // closed once the process has exited
	state  *os.ProcessState
}

// startProc starts bin with exactly env (plus PATH and HOME), capturing its
// stdout and stderr into files in dir.
func startProc(t testing.TB, name, dir, bin string, args []string, env map[string]string) *proc {
	t.Helper()
	if keep := os.Getenv("PAGEVIEWS_E2E_KEEP_LOGS"); keep != "" {
		// Keep the logs after the test, for a look at a passing run.
		dir = filepath.Join(keep, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := newLogSink(filepath.Join(dir, name+".stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	errs, err := newLogSink(filepath.Join(dir, name+".stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if v := os.Getenv("GORACE"); v != "" {
		cmd.Env = append(cmd.Env, "GORACE="+v)
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	cmd.Stdout, cmd.Stderr = out, errs
	// If the test binary dies, the kernel kills its processes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdout: out, stderr: errs, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		out.f.Close()
		errs.f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			p.dumpTail(t, 40)
		}
		for _, l := range errs.all() {
			if strings.Contains(l, "WARNING: DATA RACE") {
				t.Errorf("%s reported a data race; its stderr:\n%s", name, strings.Join(errs.all(), "\n"))
				break
			}
		}
	})
	t.Logf("started %s (pid %d); logs in %s", name, cmd.Process.Pid, dir)
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// dumpTail logs the last n lines of both outputs, each cut to a readable
// length (a goroutine dump is one very long JSON line).
func (p *proc) dumpTail(t testing.TB, n int) {
	t.Helper()
	for _, s := range []struct {
		what string
		sink *logSink
	}{{"stdout", p.stdout}, {"stderr", p.stderr}} {
		lines := s.sink.all()
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		for i, l := range lines {
			if len(l) > 600 {
				lines[i] = l[:600] + "...(cut)"
			}
		}
		t.Logf("--- last %d lines of %s %s ---\n%s", len(lines), p.name, s.what, strings.Join(lines, "\n"))
	}
}

// signal sends sig to the process.
func (p *proc) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if !p.running() {
		t.Fatalf("%s: cannot send %v, it has already exited (%v)", p.name, sig, p.state)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: send %v: %v", p.name, sig, err)
	}
}

// waitExit waits up to timeout for the process to exit and returns its
// exit code (-1 when a signal killed it).
func (p *proc) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.name, timeout)
		return 0
	}
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	<-p.done
}

// waitLine waits until a stdout line satisfies match and returns it. It
// fails when the process exits first or timeout passes.
func (p *proc) waitLine(t testing.TB, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		lines, changed := p.stdout.snapshot()
		for _, l := range lines[seen:] {
			if match(l) {
				return l
			}
		}
		seen = len(lines)
		select {
		case <-changed:
		case <-p.done:
			// The copying goroutine has finished: one last look.
			for _, l := range p.stdout.all()[seen:] {
				if match(l) {
					return l
				}
			}
			t.Fatalf("%s exited (%v) before logging %s", p.name, p.state, what)
		case <-deadline.C:
			t.Fatalf("%s did not log %s within %s", p.name, what, timeout)
		}
	}
}

// entry is one JSON log line.
type entry map[string]any

func (e entry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e entry) num(k string) int64 {
	f, _ := e[k].(float64)
	return int64(f)
}

func (e entry) boolean(k string) bool {
	b, _ := e[k].(bool)
	return b
}

// entriesWhere returns the stdout JSON lines that match.
func (p *proc) entriesWhere(match func(entry) bool) []entry {
	var out []entry
	for _, l := range p.stdout.all() {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var e entry
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

// entries returns the stdout JSON lines whose msg is msg.
func (p *proc) entries(msg string) []entry {
	return p.entriesWhere(func(e entry) bool { return e.str("msg") == msg })
}

// waitEntry waits for a JSON log line with msg msg.
func (p *proc) waitEntry(t testing.TB, timeout time.Duration, msg string) entry {
	t.Helper()
	needle := `"msg":` + jsonString(msg)
	l := p.waitLine(t, timeout, "msg "+jsonString(msg), func(l string) bool { return strings.Contains(l, needle) })
	var e entry
	if err := json.Unmarshal([]byte(l), &e); err != nil {
		t.Fatalf("%s: log line is not JSON: %v: %.300s", p.name, err, l)
	}
	return e
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ---------------------------------------------------------------------------
// The dev broker.

type broker struct {
	*proc
	addr  string
	topic string // the source topic the test's workers use
	group string // their consumer group
}

// startBroker runs cmd/devbroker on a free loopback port with its data in a
// fresh temporary directory. With KAFKA_BROKERS set in the environment the
// tests use that cluster instead (a real Kafka in CI), and each test gets a
// source topic and consumer group of its own, so tests never see each
// other's records.
func startBroker(t testing.TB) *broker {
	t.Helper()
	if ext := os.Getenv("KAFKA_BROKERS"); ext != "" {
		id := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
		t.Logf("using the Kafka cluster at %s with topic page_views-%s and group %s", ext, id, id)
		return &broker{addr: ext, topic: "page_views-" + id, group: id}
	}
	dir := t.TempDir()
	p := startProc(t, "devbroker", dir, binaries.broker,
		[]string{"-addr", "127.0.0.1:0", "-data-dir", filepath.Join(dir, "data")}, nil)
	const prefix = "devbroker listening on "
	l := p.waitLine(t, 30*time.Second, "its address", func(l string) bool { return strings.HasPrefix(l, prefix) })
	addr := strings.TrimSpace(strings.TrimPrefix(l, prefix))
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("devbroker address %q: want 127.0.0.1:PORT", addr)
	}
	return &broker{proc: p, addr: addr, topic: "page_views", group: "pageviews"}
}

// env is what a worker needs to use the broker, the test's topic and group.
func (b *broker) env() map[string]string {
	return map[string]string{"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group}
}

// ---------------------------------------------------------------------------
// The worker.

type worker struct {
	*proc
	base    string // http://127.0.0.1:PORT
	dataDir string
	env     map[string]string
}

// workerEnv returns the settings every worker in these tests uses, with
// extra on top. Exporters that could leave the machine are off.
func workerEnv(dataDir string, extra map[string]string) map[string]string {
	env := map[string]string{
		"WEB_ADDR":              "127.0.0.1:0",
		"DATA_DIR":              dataDir,
		"LOG_FORMAT":            "json",
		"SHUTDOWN_TIMEOUT":      "20s",
		"DD_AGENT_HOST":         "127.0.0.1",
		"OTEL_TRACES_EXPORTER":  "none",
		"OTEL_METRICS_EXPORTER": "none",
		"OTEL_LOGS_EXPORTER":    "none",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startWorker starts cmd/pageviews with env and waits until it serves HTTP.
// Each start gets its own log files; name tells them apart.
func startWorker(t testing.TB, name string, env map[string]string) *worker {
	t.Helper()
	p := startProc(t, name, t.TempDir(), binaries.worker, nil, env)
	e := p.waitEntry(t, 60*time.Second, "http listening")
	addr := e.str("addr")
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("%s: http listening on %q, want 127.0.0.1:PORT", name, addr)
	}
	return &worker{proc: p, base: "http://" + addr, dataDir: env["DATA_DIR"], env: env}
}

// restart starts a new worker process with the same settings.
func (w *worker) restart(t testing.TB, name string) *worker {
	t.Helper()
	if w.running() {
		t.Fatalf("%s is still running", w.name)
	}
	return startWorker(t, name, w.env)
}

// stop sends TERM and requires a clean exit within SHUTDOWN_TIMEOUT.
func (w *worker) stop(t testing.TB) {
	t.Helper()
	timeout, err := time.ParseDuration(w.env["SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Fatalf("SHUTDOWN_TIMEOUT %q: %v", w.env["SHUTDOWN_TIMEOUT"], err)
	}
	// Close this client's idle connections first: its transport dials in
	// the background and parks unused connections in its pool, and a
	// shutdown with such a connection open waits for it (see
	// TestTermWhileClientsConnectExits0).
	httpClient.CloseIdleConnections()
	w.signal(t, syscall.SIGTERM)
	if code := w.waitExit(t, timeout); code != 0 {
		t.Fatalf("%s: exit status %d after TERM, want 0", w.name, code)
	}
}

// httpClient talks to the loopback worker only; no proxy.
var httpClient = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 64,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	},
}

// get requests path and returns the status and body.
func (w *worker) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// getJSON requests path, requires want as the status and decodes the body
// into v.
func (w *worker) getJSON(t testing.TB, path string, want int, v any) {
	t.Helper()
	status, body, err := w.get(context.Background(), path)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", w.name, path, err)
	}
	if status != want {
		t.Fatalf("%s: GET %s: status %d, want %d; body %s", w.name, path, status, want, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("%s: GET %s: body is not the expected JSON: %v: %s", w.name, path, err, body)
	}
}

// pollInterval is how often waits ask again.
const pollInterval = 25 * time.Millisecond

// waitReady polls /ready/ until it answers 200 {"ready":true}: the worker
// has joined its group and recovered every partition it was assigned.
func (w *worker) waitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		if !w.running() {
			t.Fatalf("%s exited (%v) before it was ready (last /ready/: %s)", w.name, w.state, last)
		}
		status, body, err := w.get(context.Background(), "/ready/")
		if err == nil {
			var r struct {
				Ready  bool   `json:"ready"`
				Reason string `json:"reason"`
			}
			if jerr := json.Unmarshal(body, &r); jerr != nil {
				t.Fatalf("%s: /ready/ answered %d with non-JSON %q", w.name, status, body)
			}
			switch {
			case status == http.StatusOK && r.Ready:
				return
			case status == http.StatusServiceUnavailable && !r.Ready && r.Reason != "":
				last = fmt.Sprintf("503 %s", body)
			default:
				t.Fatalf("%s: /ready/ answered %d %s; want 200 ready:true or 503 ready:false with a reason", w.name, status, body)
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready within %s (last /ready/: %s)", w.name, timeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// recoveryLine is one "recovering" log line: where recovery of one table
// partition starts.
type recoveryLine struct {
	Partition  int32
	Table      string
	FromOffset int64
	EndOffset  int64
	Records    int64
	Stored     bool
}

// recoveringLines returns the first "recovering" line of each table
// partition: the recovery that followed the start of the process. (A later
// rebalance that hands a partition back logs another one, from wherever the
// first left the store.)
func recoveringLines(w *worker) map[string]recoveryLine {
	out := map[string]recoveryLine{}
	for _, e := range w.entries("recovering") {
		l := recoveryLine{
			Partition:  int32(e.num("partition")),
			Table:      e.str("table"),
			FromOffset: e.num("from_offset"),
			EndOffset:  e.num("end_offset"),
			Records:    e.num("records"),
			Stored:     e.boolean("stored"),
		}
		k := fmt.Sprintf("%s/%d", l.Table, l.Partition)
		if _, seen := out[k]; !seen {
			out[k] = l
		}
	}
	return out
}

// count calls /count/ for page and returns the counter it answers.
func (w *worker) count(t testing.TB, page string) int64 {
	t.Helper()
	var r struct {
		Count *int64 `json:"count"`
	}
	w.getJSON(t, "/count/?page="+url.QueryEscape(page), http.StatusOK, &r)
	if r.Count == nil {
		t.Fatalf("%s: /count/ answered without a count", w.name)
	}
	return *r.Count
}

// tryCount is count for goroutines: it reports failure instead of failing.
func (w *worker) tryCount(ctx context.Context, page string) error {
	status, body, err := w.get(ctx, "/count/?page="+url.QueryEscape(page))
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("/count/?page=%s: status %d: %s", page, status, body)
	}
	return nil
}

// sendViews calls /count/ once per element of pages, from concurrency
// goroutines, and fails the test on the first call that does not answer 200.
func (w *worker) sendViews(t testing.TB, pages []string, concurrency int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	work := make(chan string)
	errs := make(chan error, concurrency)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for p := range work {
				if err := w.tryCount(ctx, p); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
feed:
	for _, p := range pages {
		select {
		case work <- p:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("%s: %v", w.name, err)
	default:
	}
}

// pageReport and report mirror the JSON of /report/.
type pageReport struct {
	Now    int64  `json:"-"` // page_views_within_<window>: see UnmarshalJSON
	Count  int64  `json:"count"`
	Report string `json:"report"`
}

type report struct {
	Now   int64                 `json:"-"` // page_views_within_<window>: see UnmarshalJSON
	Count int64                 `json:"count"`
	Pages map[string]pageReport `json:"pages"`
	Stale bool                  `json:"stale"`
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

// report reads /report/ and checks that the top-level numbers are the sums
// over the pages, as the contract says.
func (w *worker) report(t testing.TB) report {
	t.Helper()
	var r report
	w.getJSON(t, "/report/", http.StatusOK, &r)
	var now, count int64
	for _, p := range r.Pages {
		now += p.Now
		count += p.Count
	}
	if now != r.Now || count != r.Count {
		t.Fatalf("%s: /report/ top level says %d now, %d total; the pages sum to %d and %d", w.name, r.Now, r.Count, now, count)
	}
	return r
}

// waitReport polls /report/ until done accepts it and returns that report.
func (w *worker) waitReport(t testing.TB, timeout time.Duration, what string, done func(report) bool) report {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := w.report(t)
		if done(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /report/ did not show %s within %s; last report: %s", w.name, what, timeout, summarize(r))
		}
		time.Sleep(pollInterval)
	}
}

// summarize renders a report briefly for failure messages.
func summarize(r report) string {
	keys := make([]string, 0, len(r.Pages))
	for k := range r.Pages {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "now=%d count=%d stale=%v pages=%d", r.Now, r.Count, r.Stale, len(r.Pages))
	for i, k := range keys {
		if i == 10 {
			fmt.Fprintf(&b, " ...")
			break
		}
		p := r.Pages[k]
		fmt.Fprintf(&b, " %s:{now=%d count=%d %q}", k, p.Now, p.Count, p.Report)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Windows.

// windowKey identifies the windows a report reads at time now: the window
// of now (page_views_within_1_minute) and the window two minutes back (for
// the report text). Window starts are aligned to the Unix epoch.
type windowKey struct{ now, back int64 }

func windowsAt(now time.Time, size time.Duration) windowKey {
	start := func(ms int64) int64 {
		s := size.Milliseconds()
		r := ms % s
		if r < 0 {
			r += s
		}
		return ms - r
	}
	ms := now.UnixMilli()
	return windowKey{now: start(ms), back: start(ms - (2 * time.Minute).Milliseconds())}
}

// sameWindows reports whether every report read between from and the call
// used the same windows. Window starts only move forward, so comparing the
// two ends is enough.
func sameWindows(t testing.TB, from windowKey, size time.Duration) bool {
	t.Helper()
	if to := windowsAt(time.Now(), size); to != from {
		t.Logf("the %s window of now (or of two minutes back) changed during the test (%v -> %v): comparing totals only", size, from, to)
		return false
	}
	return true
}

// compareReports fails unless got equals want; with windowsStable false it
// compares only the totals of each page.
func compareReports(t testing.TB, want, got report, windowsStable bool) {
	t.Helper()
	if windowsStable {
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("report differs\nwant %s\ngot  %s\n%s", summarize(want), summarize(got), reportDiff(want, got))
		}
		return
	}
	if want.Count != got.Count {
		t.Fatalf("total count: got %d, want %d", got.Count, want.Count)
	}
	for page, p := range want.Pages {
		if got.Pages[page].Count != p.Count {
			t.Errorf("page %s: count %d, want %d", page, got.Pages[page].Count, p.Count)
		}
	}
	if len(got.Pages) != len(want.Pages) {
		t.Errorf("got %d pages, want %d", len(got.Pages), len(want.Pages))
	}
}

func reportDiff(want, got report) string {
	var b strings.Builder
	if want.Now != got.Now || want.Count != got.Count || want.Stale != got.Stale {
		fmt.Fprintf(&b, "top level: want now=%d count=%d stale=%v, got now=%d count=%d stale=%v\n",
			want.Now, want.Count, want.Stale, got.Now, got.Count, got.Stale)
	}
	pages := map[string]bool{}
	for k := range want.Pages {
		pages[k] = true
	}
	for k := range got.Pages {
		pages[k] = true
	}
	keys := make([]string, 0, len(pages))
	for k := range pages {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	n := 0
	for _, k := range keys {
		w, wok := want.Pages[k]
		g, gok := got.Pages[k]
		if wok == gok && w == g {
			continue
		}
		if n++; n > 20 {
			b.WriteString("...\n")
			break
		}
		fmt.Fprintf(&b, "page %s: want %+v (present %v), got %+v (present %v)\n", k, w, wok, g, gok)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Misc.

// freeAddr returns a loopback address with a port that was free a moment
// ago, for settings that cannot take port 0.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// requireKcat returns the path of kcat. Without it the test is skipped,
// loudly, except in CI (CI=true), where it fails.
func requireKcat(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err == nil {
		return p
	}
	msg := "kcat is not on PATH: THIS TEST DID NOT RUN. Install kcat (apt-get install kcat) to run it."
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " CI=true, so a missing kcat is an error.")
	}
	fmt.Fprintln(os.Stderr, "!!! "+t.Name()+": "+msg)
	t.Skip(msg)
	return ""
}

// kcat runs kcat with args and stdin and returns its stdout.
func kcat(t testing.TB, bin string, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\nstderr: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// kafkaRecord is one record as `kcat -C -J` prints it.
type kafkaRecord struct {
	Topic     string   `json:"topic"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Headers   []string `json:"headers"`
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
}

func (r kafkaRecord) header(k string) (string, bool) {
	for i := 0; i+1 < len(r.Headers); i += 2 {
		if r.Headers[i] == k {
			return r.Headers[i+1], true
		}
	}
	return "", false
}

// consumeAll reads every record of topic with kcat.
func consumeAll(t testing.TB, bin, brokerAddr, topic string) []kafkaRecord {
	t.Helper()
	out := kcat(t, bin, "", "-C", "-b", brokerAddr, "-t", topic, "-o", "beginning", "-e", "-q", "-J")
	var recs []kafkaRecord
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var r kafkaRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("kcat -J printed a line that is not JSON: %v: %s", err, l)
		}
		recs = append(recs, r)
	}
	return recs
}

// committedViews returns a function that sums over partitions the offsets
// the worker's consumer group has committed on page_views: how many source
// records it has made durable (the runtime commits only after the changelog
// acknowledged the table updates and the store batch was written).
func committedViews(t testing.TB, b *broker) func() int64 {
	brokerAddr := b.addr
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.ClientID = "pageviews-e2e"
	cfg.Net.DialTimeout = 5 * time.Second
	admin, err := sarama.NewClusterAdmin([]string{brokerAddr}, cfg)
	if err != nil {
		t.Fatalf("kafka admin on %s: %v", brokerAddr, err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return func() int64 {
		t.Helper()
		// Every partition the group committed, however many the topic has.
		resp, err := admin.ListConsumerGroupOffsets(b.group, nil)
		if errors.Is(err, sarama.ErrGroupIDNotFound) {
			return 0 // the group has not committed anything yet
		}
		if err != nil {
			t.Fatalf("committed offsets of group %s: %v", b.group, err)
		}
		var sum int64
		for _, blk := range resp.Blocks[b.topic] {
			if blk != nil && blk.Offset > 0 {
				sum += blk.Offset
			}
		}
		return sum
	}
}
