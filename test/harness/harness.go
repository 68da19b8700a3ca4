// Package harness runs the worker and the dev broker as real processes for
// the suites that test them from the outside: e2e/, chaos/, faults/ and the
// dashboards' end-to-end test. It builds cmd/pageviews and cmd/devbroker
// once per test process, starts them with exactly the environment a test
// gives, keeps every line they write (in memory, and in files a test can
// keep), and talks to a worker only as an operator would: HTTP pages,
// signals and the JSON log.
//
// A suite calls Main from its TestMain, so that the binaries are removed
// when its tests end:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
//
// When the tests run with the race detector, the binaries are built with it
// too, and a data race a process reports fails the test that started it
// (PAGEVIEWS_TEST_RACE=0 or 1 overrides this).
package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// module is the import path of the module whose commands the harness
// builds.
const module = "github.com/gofaust/pageviews"

// built holds the binaries of this test process. It is package state
// because nothing else lives as long as the process: every test asks for
// the binaries, and building them again for each would cost seconds a
// test. Main removes them.
var built struct {
	sync.Mutex
	dir   string
	paths map[string]string
}

// Main runs the tests and removes the binaries they built; it returns the
// exit code for os.Exit.
func Main(m *testing.M) int {
	code := m.Run()
	built.Lock()
	defer built.Unlock()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
		built.dir, built.paths = "", nil
	}
	return code
}

// Build returns the binary of ./cmd/<name> of the module, built the first
// time a test of this process asks for it.
func Build(t testing.TB, name string) string {
	t.Helper()
	built.Lock()
	defer built.Unlock()
	if p, ok := built.paths[name]; ok {
		return p
	}
	if built.dir == "" {
		dir, err := os.MkdirTemp("", "pageviews-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		built.dir, built.paths = dir, map[string]string{}
	}
	bin := filepath.Join(built.dir, name)
	args := []string{"build", "-o", bin}
	if race() {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/"+name)
	// go test puts its own toolchain's bin directory first in PATH.
	cmd := exec.Command("go", args...)
	// In the module's own directory: a nested module that requires this one
	// would otherwise build the worker with its own dependency versions.
	cmd.Dir = Root(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	built.paths[name] = bin
	return bin
}

// WorkerBinary returns the worker's binary, built once.
func WorkerBinary(t testing.TB) string { return Build(t, "pageviews") }

// race reports whether the binaries get the race detector.
func race() bool {
	if v := os.Getenv("PAGEVIEWS_TEST_RACE"); v != "" {
		return v == "1" || v == "true"
	}
	return raceEnabled
}

// Root returns the module's directory, also from a nested module that
// requires and replaces it.
func Root(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("go list -m %s: %v (run the tests inside the module or a module that requires it)", module, err)
	}
	return dir
}

// LogDir returns the directory for the output of a test's processes:
// $keepVar/<test name> when that variable is set, kept after the test, or
// else a temporary directory.
func LogDir(t testing.TB, keepVar string) string {
	t.Helper()
	keep := os.Getenv(keepVar)
	if keep == "" {
		return t.TempDir()
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, t.Name())
	dir := filepath.Join(keep, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// FreePort returns a loopback port that was free a moment ago on network
// ("tcp" or "udp"), for settings that cannot take port 0.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns a loopback TCP address whose port was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t, "tcp"))
}
