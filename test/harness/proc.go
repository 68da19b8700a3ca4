package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Output keeps what a process writes to one stream: in a file, and split
// into lines in memory, waking whoever waits for a line.
type Output struct {
	mu      sync.Mutex
	file    *os.File
	partial []byte
	lines   []string
	wake    chan struct{} // closed and replaced when a line arrives
}

func newOutput(path string) (*Output, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &Output{file: f, wake: make(chan struct{})}, nil
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.file.Write(p)
	o.partial = append(o.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		o.lines = append(o.lines, string(o.partial[:i]))
		o.partial = o.partial[i+1:]
		added = true
	}
	if added {
		close(o.wake)
		o.wake = make(chan struct{})
	}
	return len(p), nil
}

// snapshot returns the complete lines so far and a channel closed when the
// next one arrives.
func (o *Output) snapshot() ([]string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clip(o.lines), o.wake
}

// Lines returns every line so far, an unterminated last one included.
func (o *Output) Lines() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := slices.Clone(o.lines)
	if len(o.partial) > 0 {
		out = append(out, string(o.partial))
	}
	return out
}

// String returns the output so far.
func (o *Output) String() string { return strings.Join(o.Lines(), "\n") }

// Tail returns the last n lines.
func (o *Output) Tail(n int) string {
	lines := o.Lines()
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Proc is a process a test started. It is killed when the test ends, its
// last lines are logged when the test failed, and a data race it reports
// fails the test.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	Stdout *Output
	Stderr *Output
	done   chan struct{} // closed once the process has exited
	err    error         // how it exited, once done is closed
}

// Start starts bin with args and exactly env, plus PATH, HOME and GORACE
// from the test's own environment unless env sets them. Its output goes to
// dir/<name>.stdout and dir/<name>.stderr.
func Start(t testing.TB, dir, name, bin string, args []string, env map[string]string) *Proc {
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
	cmd.Env = environ(env)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group, so that a Ctrl-C on the terminal reaches only
	// the test; killed when the test process dies (a -timeout panic runs no
	// cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Stdout: stdout, Stderr: stderr, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = stdout.file.Close()
		_ = stderr.file.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.cleanup(t) })
	t.Logf("started %s (pid %d); output in %s", name, cmd.Process.Pid, dir)
	return p
}

// environ is env with the variables every process needs, sorted.
func environ(env map[string]string) []string {
	all := map[string]string{"PATH": os.Getenv("PATH"), "HOME": os.Getenv("HOME")}
	if v := os.Getenv("GORACE"); v != "" {
		all["GORACE"] = v
	}
	for k, v := range env {
		all[k] = v
	}
	out := make([]string, 0, len(all))
	for k, v := range all {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

func (p *Proc) cleanup(t testing.TB) {
	if p.Running() {
		p.kill()
	}
	if t.Failed() {
		t.Log(p.Tail(40))
	}
	if strings.Contains(p.Stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("%s reported a data race; its stderr:\n%s", p.Name, p.Stderr.String())
	}
}

// Tail returns the last n lines of both outputs, each cut to a readable
// length (a goroutine dump is one very long JSON line), for failure
// messages.
func (p *Proc) Tail(n int) string {
	var b strings.Builder
	for _, o := range []struct {
		what string
		out  *Output
	}{{"stdout", p.Stdout}, {"stderr", p.Stderr}} {
		lines := o.out.Lines()
		lines = lines[max(0, len(lines)-n):]
		fmt.Fprintf(&b, "--- last %d lines of %s %s ---\n", len(lines), p.Name, o.what)
		for _, l := range lines {
			if len(l) > 600 {
				l = l[:600] + "...(cut)"
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Err is how the process exited (nil for status 0); nil while it runs.
func (p *Proc) Err() error {
	if p.Running() {
		return nil
	}
	return p.err
}

// ExitCode is the exit status, -1 when a signal ended the process or while
// it runs.
func (p *Proc) ExitCode() int {
	if p.Running() {
		return -1
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process, which must still run.
func (p *Proc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if !p.Running() {
		t.Fatalf("%s: cannot send %v, it has already exited (%v)", p.Name, sig, p.err)
	}
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: send %v: %v", p.Name, sig, err)
	}
}

// Kill ends the process and its group with SIGKILL, as a crash would, and
// waits for it.
func (p *Proc) Kill(t testing.TB) {
	t.Helper()
	if !p.kill() {
		t.Errorf("%s did not exit 30s after SIGKILL", p.Name)
	}
}

func (p *Proc) kill() bool {
	if p.Running() {
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-p.done:
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// Terminate sends TERM and waits up to timeout for the exit; a process
// still running then is killed. It returns how the process exited.
func (p *Proc) Terminate(timeout time.Duration) error {
	if p.Running() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
	}
	return p.Err()
}

// WaitExit waits up to timeout for the process to exit and returns its exit
// status (-1 when a signal ended it).
func (p *Proc) WaitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.Name, timeout)
		return 0
	}
}

// WaitLine waits until a stdout line, from the first, satisfies match and
// returns it. It fails when the process exits first or timeout passes.
func (p *Proc) WaitLine(t testing.TB, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		lines, wake := p.Stdout.snapshot()
		for _, l := range lines[seen:] {
			if match(l) {
				return l
			}
		}
		seen = len(lines)
		select {
		case <-wake:
		case <-p.done:
			// The output is complete once the process has exited: one last
			// look.
			for _, l := range p.Stdout.Lines()[seen:] {
				if match(l) {
					return l
				}
			}
			t.Fatalf("%s exited (%v) before it logged %s", p.Name, p.err, what)
		case <-deadline.C:
			t.Fatalf("%s did not log %s within %s", p.Name, what, timeout)
		}
	}
}

// Entry is one JSON line of a log.
type Entry map[string]any

// Str returns field k as a string, "" when it is not one.
func (e Entry) Str(k string) string {
	s, _ := e[k].(string)
	return s
}

// Num returns field k as an integer, 0 when it is not a number.
func (e Entry) Num(k string) int64 {
	f, _ := e[k].(float64)
	return int64(f)
}

// Bool returns field k as a boolean, false when it is not one.
func (e Entry) Bool(k string) bool {
	b, _ := e[k].(bool)
	return b
}

// EntriesWhere returns the JSON lines of stdout that match.
func (p *Proc) EntriesWhere(match func(Entry) bool) []Entry {
	var out []Entry
	for _, l := range p.Stdout.Lines() {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var e Entry
		if json.Unmarshal([]byte(l), &e) == nil && match(e) {
			out = append(out, e)
		}
	}
	return out
}

// Entries returns the JSON lines of stdout whose msg is msg.
func (p *Proc) Entries(msg string) []Entry {
	return p.EntriesWhere(func(e Entry) bool { return e.Str("msg") == msg })
}

// WaitEntry waits for a JSON line of stdout whose msg is msg.
func (p *Proc) WaitEntry(t testing.TB, timeout time.Duration, msg string) Entry {
	t.Helper()
	quoted, _ := json.Marshal(msg)
	needle := `"msg":` + string(quoted)
	l := p.WaitLine(t, timeout, "msg "+string(quoted), func(l string) bool { return strings.Contains(l, needle) })
	var e Entry
	if err := json.Unmarshal([]byte(l), &e); err != nil {
		t.Fatalf("%s: log line is not JSON: %v: %.300s", p.Name, err, l)
	}
	return e
}
