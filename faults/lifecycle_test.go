package faults

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

// The lifecycle tests send real signals to the real worker, with the dev
// broker paused (SIGSTOP) where the worker must not depend on it, and
// check the exit-time bounds the worker promises: SHUTDOWN_TIMEOUT plus a
// second for TERM at any moment, a second for QUIT or a second TERM.

// signal sends sig to the process and returns when it was sent.
func signal(t testing.TB, p *harness.Proc, sig syscall.Signal) time.Time {
	t.Helper()
	at := time.Now()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.Name, sig, err)
	}
	return at
}

// waitExit waits up to timeout for the process to exit and returns how
// long after since it did, and its exit status.
func waitExit(t testing.TB, p *harness.Proc, since time.Time, timeout time.Duration) (time.Duration, int) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(timeout):
		t.Fatalf("%s still running %s after the signal\nstdout:\n%s\nstderr:\n%s", p.Name, time.Since(since).Round(time.Millisecond),
			p.Stdout.Tail(30), p.Stderr.Tail(20))
	}
	took := time.Since(since)
	return took, p.ExitCode()
}

// pause stops the broker process (SIGSTOP): its connections stay open and
// its port accepts, but nothing answers, as with a hung broker. The test's
// cleanup resumes it.
func pause(t testing.TB, b *harness.Broker) {
	t.Helper()
	if err := syscall.Kill(b.Cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("pause the broker: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(b.Cmd.Process.Pid, syscall.SIGCONT) })
}

// countViews sends n views of page through the worker.
func (w *worker) countViews(page string, n int) {
	w.t.Helper()
	for range n {
		code, body, err := probe(w.Worker, "/count/?page="+page)
		if err != nil || code != http.StatusOK {
			w.t.Fatalf("/count/?page=%s: %d %s %v", page, code, body, err)
		}
	}
}

// TestTermDuringStartup sends TERM while the worker connects to a broker
// that does not answer: it must exit, and cleanly, since nothing had
// started. The wait for the exit is a minute, against a SHUTDOWN_TIMEOUT of
// 5 s; how long it took is logged, a figure rather than a check.
func TestTermDuringStartup(t *testing.T) {
	needProcesses(t)
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	pause(t, b)
	const shutdown = 5 * time.Second
	p := harness.Start(t, dir, "worker", harness.WorkerBinary(t), nil, workerEnv(b.Addr, filepath.Join(t.TempDir(), "data"), map[string]string{
		"SHUTDOWN_TIMEOUT": shutdown.String(),
		"LOG_LEVEL":        "debug", // sarama's lines show when it is connecting
	}))
	p.WaitLine(t, 60*time.Second, "sarama fetching metadata", func(l string) bool {
		return strings.Contains(l, `"component":"sarama"`) && strings.Contains(l, "fetching metadata")
	})
	sent := signal(t, p, syscall.SIGTERM)
	took, status := waitExit(t, p, sent, 60*time.Second)
	t.Logf("exited %s after TERM during start-up (SHUTDOWN_TIMEOUT=%s), status %d", took.Round(time.Millisecond), shutdown, status)
	if status != 0 {
		t.Errorf("exit status %d after TERM during start-up, want 0\nstderr:\n%s", status, p.Stderr.Tail(10))
	}
	if len(p.Entries("stopped during start-up")) != 1 {
		t.Errorf("no \"stopped during start-up\" line:\n%s", p.Stdout.Tail(10))
	}
}

// warmShutdownStuck starts a worker, waits until it is ready, pauses the
// broker and sends TERM: the warm shutdown then waits for the broker (it
// flushes, commits and leaves the group) until its SHUTDOWN_TIMEOUT, which
// is long here, so only the second signal can end it in time.
func warmShutdownStuck(t *testing.T) *worker {
	t.Helper()
	needProcesses(t)
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	w := startWorker(t, dir, "worker", workerEnv(b.Addr, filepath.Join(t.TempDir(), "data"), map[string]string{
		"SHUTDOWN_TIMEOUT": "2m",
		"COMMIT_INTERVAL":  "100ms",
	}))
	w.WaitReady(t, 60*time.Second)
	w.countViews("/home", 3)
	pause(t, b)
	signal(t, w.Proc, syscall.SIGTERM)
	w.WaitLine(t, 30*time.Second, "the warm shutdown line", func(l string) bool {
		return strings.Contains(l, `"msg":"TERM: warm shutdown`)
	})
	if !w.Running() {
		t.Fatalf("the worker finished its warm shutdown with the broker paused: %v", w.Err())
	}
	return w
}

// TestQuitDuringWarmShutdown: QUIT ends a warm shutdown at once: the worker
// exits, status 3, long before its SHUTDOWN_TIMEOUT (2 m) would end the
// warm shutdown stuck on the paused broker.
func TestQuitDuringWarmShutdown(t *testing.T) {
	w := warmShutdownStuck(t)
	sent := signal(t, w.Proc, syscall.SIGQUIT)
	took, status := waitExit(t, w.Proc, sent, 30*time.Second)
	t.Logf("exited %s after QUIT during a warm shutdown, status %d", took.Round(time.Millisecond), status)
	if status != 3 {
		t.Errorf("exit status %d after QUIT, want 3", status)
	}
	if len(w.Entries("QUIT: cold shutdown, exiting without flushing; the changelogs hold the state")) != 1 {
		t.Errorf("no QUIT line:\n%s", w.Stdout.Tail(10))
	}
}

// TestSecondTermTurnsShutdownCold: a second TERM during a warm shutdown
// makes it cold, and one line says so: the worker exits, status 3, long
// before its SHUTDOWN_TIMEOUT (2 m).
func TestSecondTermTurnsShutdownCold(t *testing.T) {
	w := warmShutdownStuck(t)
	sent := signal(t, w.Proc, syscall.SIGTERM)
	took, status := waitExit(t, w.Proc, sent, 30*time.Second)
	t.Logf("exited %s after a second TERM, status %d", took.Round(time.Millisecond), status)
	if status != 3 {
		t.Errorf("exit status %d after the second TERM, want 3", status)
	}
	var cold []string
	for _, l := range w.Stdout.Lines() {
		if strings.Contains(l, "shutdown turned cold") {
			cold = append(cold, l)
		}
	}
	if len(cold) != 1 {
		t.Errorf("%d lines say the shutdown turned cold, want 1:\n%s", len(cold), w.Stdout.Tail(10))
	}
}

// TestSecondWorkerOnSameDataDir starts a second worker on the first one's
// DATA_DIR: it must exit 1 with one line naming the store and the first
// worker's process, and leave the first worker's store alone, so that after
// a restart every table partition starts from its checkpoint.
func TestSecondWorkerOnSameDataDir(t *testing.T) {
	needProcesses(t)
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	k := openKafka(t, b.Addr)
	dataDir := filepath.Join(t.TempDir(), "data")
	env := workerEnv(b.Addr, dataDir, map[string]string{"COMMIT_INTERVAL": "100ms"})
	first := startWorker(t, dir, "first", env)
	first.WaitReady(t, 60*time.Second)
	pages := pageNames("/p", 20)
	for _, p := range pages {
		first.countViews(p, 2)
	}
	k.waitDrained(t, group, topic, 60*time.Second)

	second := harness.Start(t, dir, "second", harness.WorkerBinary(t), nil, env)
	took, status := waitExit(t, second, time.Now(), 60*time.Second)
	if status != 1 {
		t.Fatalf("the second worker exited with status %d after %s, want 1\nstderr:\n%s", status, took, second.Stderr.Tail(10))
	}
	state := filepath.Join(dataDir, "state")
	errLines := second.Stderr.Lines()
	want := fmt.Sprintf("is locked by process %d", first.Cmd.Process.Pid)
	if len(errLines) != 1 || !strings.Contains(errLines[0], state) || !strings.Contains(errLines[0], want) {
		t.Errorf("the second worker's stderr:\n%s\nwant one line naming %s and saying %q", strings.Join(errLines, "\n"), state, want)
	}

	// The first worker goes on, and its store is whole.
	first.requireRunning("after the second worker tried its DATA_DIR")
	for _, p := range pages {
		first.countViews(p, 1)
	}
	k.waitDrained(t, group, topic, 60*time.Second)
	sent := signal(t, first.Proc, syscall.SIGTERM)
	if _, status := waitExit(t, first.Proc, sent, 60*time.Second); status != 0 {
		t.Fatalf("the first worker's warm shutdown exited %d", status)
	}
	first.start()
	first.WaitReady(t, 60*time.Second)
	recovering := first.Entries("recovering")
	if len(recovering) == 0 {
		t.Fatal("no recovery lines after the restart")
	}
	for _, e := range recovering {
		if stored, _ := e["stored"].(bool); !stored {
			t.Errorf("after the restart, %s partition %v has no checkpoint: %v", e.Str("table"), e["partition"], e)
		}
	}
	checkCounts(t, first, pages, 3)
}

// checkCounts waits until /report/ counts want views of every page.
func checkCounts(t *testing.T, w *worker, pages []string, want int64) {
	t.Helper()
	waitFor(t, 60*time.Second, "every page counted", func() (bool, string) {
		r, err := w.report()
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pages {
			if got := r.Pages[p].Count; got != want {
				return false, fmt.Sprintf("%s counted %d, want %d", p, got, want)
			}
		}
		return true, ""
	})
}

// TestWindowSizeChangeIsRefused restarts a worker with another WINDOW_SIZE:
// it must exit 2 with one line naming both sizes. The reset the README
// documents (delete the windowed table's changelog and the store, then
// start with the new size) must then work: totals survive, and the new
// windows count from there.
func TestWindowSizeChangeIsRefused(t *testing.T) {
	needProcesses(t)
	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	k := openKafka(t, b.Addr)
	dataDir := filepath.Join(t.TempDir(), "data")
	env := func(size string) map[string]string {
		return workerEnv(b.Addr, dataDir, map[string]string{"COMMIT_INTERVAL": "100ms", "WINDOW_SIZE": size})
	}
	w := startWorker(t, dir, "worker", env("1m"))
	w.WaitReady(t, 60*time.Second)
	w.countViews("/home", 3)
	k.waitDrained(t, group, topic, 60*time.Second)
	stop(t, w)

	changed := harness.Start(t, dir, "changed", harness.WorkerBinary(t), nil, env("2m"))
	took, status := waitExit(t, changed, time.Now(), 60*time.Second)
	if status != 2 {
		t.Fatalf("with WINDOW_SIZE changed the worker exited %d after %s, want 2\nstderr:\n%s", status, took, changed.Stderr.Tail(10))
	}
	lines := changed.Stderr.Lines()
	if len(lines) != 1 || !strings.Contains(lines[0], "WINDOW_SIZE") || !strings.Contains(lines[0], "1m0s") || !strings.Contains(lines[0], "2m0s") {
		t.Errorf("stderr:\n%s\nwant one line naming WINDOW_SIZE, the old 1m0s and the new 2m0s", strings.Join(lines, "\n"))
	}

	// The documented reset: every worker stopped, the windowed table's
	// changelog deleted, the stores deleted.
	if err := k.admin.DeleteTopic("pageviews-views-changelog"); err != nil {
		t.Fatalf("delete the windowed changelog: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(dataDir, "state")); err != nil {
		t.Fatal(err)
	}
	w.env = env("2m")
	w.start()
	w.WaitReady(t, 60*time.Second)
	w.countViews("/home", 2)
	k.waitDrained(t, group, topic, 60*time.Second)
	var now int64
	waitFor(t, 60*time.Second, "the views counted in totals and in the 2-minute window", func() (bool, string) {
		code, body, err := probe(w.Worker, "/report/?page=/home")
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprint(code, string(body), err)
		}
		var r struct {
			Pages map[string]map[string]any `json:"pages"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return false, err.Error()
		}
		home := r.Pages["/home"]
		count, _ := home["count"].(float64)
		// The field is named for the window (page_views_within_...).
		now = -1
		for k, v := range home {
			if n, ok := v.(float64); ok && strings.HasPrefix(k, "page_views_within_") {
				now = int64(n)
			}
		}
		// The totals table kept the 3 views from before the reset.
		return count == 5 && now >= 1, string(body)
	})
	// The two views are in the window of now unless the test straddled a
	// window boundary; either way no old window was read as a new one.
	if now > 2 {
		t.Errorf("the 2-minute window of now holds %d views, but only 2 were sent after the reset", now)
	}
	stop(t, w)
	// The new size is now the recorded one.
	w.start()
	w.WaitReady(t, 60*time.Second)
	stop(t, w)
}

// stop sends TERM and expects a clean exit.
func stop(t *testing.T, w *worker) {
	t.Helper()
	sent := signal(t, w.Proc, syscall.SIGTERM)
	if _, status := waitExit(t, w.Proc, sent, 60*time.Second); status != 0 {
		t.Fatalf("%s exited %d after TERM\nstderr:\n%s", w.Name, status, w.Stderr.Tail(10))
	}
}

// tmpfs mounts a tmpfs of size bytes at dir and unmounts it when the test
// ends. It needs root (or CAP_SYS_ADMIN); without, it skips, loudly, or
// fails under CI, where the full-disk test must run.
func tmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("NOT TESTED: cannot mount a tmpfs for the full disk (needs root or CAP_SYS_ADMIN): %v: %s", err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fill writes a file in dir until the disk is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			break
		}
	}
	// The last partial chunk may have left a few bytes; fill them too.
	for {
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
	return path
}

// TestFullDiskAtStartup starts a worker whose store must flush its log on a
// full disk: it must exit (the wait is a minute) naming the directory and
// "no space left", log at most a few lines a second meanwhile, and, once space is
// back, start with every view it had.
func TestFullDiskAtStartup(t *testing.T) {
	needProcesses(t)
	dir := logDir(t)
	disk := filepath.Join(t.TempDir(), "disk")
	tmpfs(t, disk, 8<<20) // before the processes: their cleanup runs first
	b := harness.StartBroker(t, dir)
	k := openKafka(t, b.Addr)
	env := workerEnv(b.Addr, disk, map[string]string{"COMMIT_INTERVAL": "100ms"})
	w := startWorker(t, dir, "worker", env)
	w.WaitReady(t, 60*time.Second)
	pages := pageNames("/p", 10)
	for _, p := range pages {
		w.countViews(p, 2)
	}
	k.waitDrained(t, group, topic, 60*time.Second)
	// Killed, the worker leaves its last writes in the store's log only:
	// the next open must write them to a table file.
	w.Kill(t)
	filler := fill(t, disk)

	started := time.Now()
	full := harness.Start(t, dir, "full", harness.WorkerBinary(t), nil, env)
	took, status := waitExit(t, full, started, 60*time.Second)
	t.Logf("on a full disk the worker exited %s after it started, status %d, with %d log lines", took.Round(time.Millisecond), status, len(full.Stdout.Lines()))
	if status != 1 {
		t.Errorf("exit status %d on a full disk, want 1", status)
	}
	state := filepath.Join(disk, "state")
	lines := full.Stderr.Lines()
	if len(lines) != 1 || !strings.Contains(lines[0], state) || !strings.Contains(lines[0], "no space left") {
		t.Errorf("stderr:\n%s\nwant one line naming %s and saying \"no space left\"", strings.Join(lines, "\n"), state)
	}
	perSecond := map[string]int{}
	for _, l := range full.Stdout.Lines() {
		var e harness.Entry
		if json.Unmarshal([]byte(l), &e) == nil && e.Str("component") == "store" && len(e.Str("time")) >= 19 {
			perSecond[e.Str("time")[:19]]++
		}
	}
	for sec, n := range perSecond {
		if n > 3 {
			t.Errorf("%d store log lines in the second %s, want at most a few", n, sec)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	w.start()
	w.WaitReady(t, 60*time.Second)
	checkCounts(t, w, pages, 2)
}
