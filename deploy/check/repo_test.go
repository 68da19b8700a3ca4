package check

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the repository's top directory: this package lives in
// deploy/check.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		tb.Fatalf("repository root %s has no go.mod: %v", dir, err)
	}
	return dir
}

// inRepo turns a path as a deploy file writes it (relative to the repository
// root, or absolute) into an absolute path, and fails when it leaves the
// repository.
func inRepo(tb testing.TB, path string) string {
	tb.Helper()
	root := repoRoot(tb)
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	path = filepath.Clean(path)
	if rel, err := filepath.Rel(root, path); err != nil || strings.HasPrefix(rel, "..") {
		tb.Fatalf("%s is outside the repository", path)
	}
	return path
}

// mustExist fails unless path (relative to the repository root) exists, and
// is a directory when dir is true.
func mustExist(tb testing.TB, path string, dir bool, what string) {
	tb.Helper()
	abs := inRepo(tb, path)
	fi, err := os.Stat(abs)
	if err != nil {
		tb.Errorf("%s: %s does not exist", what, path)
		return
	}
	if fi.IsDir() != dir {
		kind := "a file"
		if dir {
			kind = "a directory"
		}
		tb.Errorf("%s: %s is not %s", what, path, kind)
	}
}

// skipOrFail skips a test whose prerequisite is missing, loudly, on a
// developer's machine, and fails it in CI (CI=true), where everything must run.
func skipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := "SKIPPED: " + format
	if os.Getenv("CI") == "true" {
		tb.Fatalf(msg+" (CI=true: this must run in CI)", args...)
	}
	tb.Logf("\n\n*** "+msg+" ***\n", args...)
	tb.SkipNow()
}

var (
	workerEnvOnce sync.Once
	workerEnvSet  map[string]bool
	workerEnvErr  error
)

// workerEnv lists the environment variables the worker itself reads:
// those of docs/settings.md, which is generated from the declarations (the
// runtime's and the app's) and kept equal to them by a test.
func workerEnv(tb testing.TB) map[string]bool {
	tb.Helper()
	workerEnvOnce.Do(func() {
		workerEnvSet = map[string]bool{}
		data, err := os.ReadFile(filepath.Join(repoRoot(tb), "docs", "settings.md"))
		if err != nil {
			workerEnvErr = err
			return
		}
		for _, m := range settingRowRE.FindAllStringSubmatch(string(data), -1) {
			workerEnvSet[m[1]] = true
		}
	})
	if workerEnvErr != nil {
		tb.Fatal(workerEnvErr)
	}
	if len(workerEnvSet) < 10 {
		tb.Fatalf("found only %d environment variables in docs/settings.md: has its table changed?", len(workerEnvSet))
	}
	return workerEnvSet
}

// settingRowRE matches a row of the table in docs/settings.md.
var settingRowRE = regexp.MustCompile("(?m)^\\| `([A-Z][A-Z0-9_]*)` \\|")

// libraryEnv are variables read by a library the worker links or by the Go
// runtime rather than by internal/config.
var libraryEnv = map[string]string{
	"GOMEMLIMIT":   "the Go runtime",
	"GODEBUG":      "the Go runtime",
	"GOMAXPROCS":   "the Go runtime",
	"DD_ENTITY_ID": "datadog-go (origin detection)",
}

// pendingEnv are standard variables the deploy files set ahead of the
// worker: they take effect once the worker reads them.
var pendingEnv = map[string]string{
	"OTEL_RESOURCE_ATTRIBUTES": "internal/tracing builds its resource without the OpenTelemetry environment detector (resource.WithFromEnv)",
}

// expansionOnly are set for $(VAR) expansion in other variables' values.
var expansionOnly = map[string]bool{"POD_NAME": true, "POD_NAMESPACE": true}

// envReport checks the variables a deploy file sets: each must be read by
// the worker (internal/config), a library or the runtime; anything else is a
// typo or a setting the worker lost. Pending ones are listed, not failed.
func envReport(tb testing.TB, what string, names []string) {
	tb.Helper()
	known := workerEnv(tb)
	sort.Strings(names)
	var pending []string
	for _, name := range names {
		switch {
		case known[name], expansionOnly[name], libraryEnv[name] != "":
		case pendingEnv[name] != "":
			pending = append(pending, name+": "+pendingEnv[name])
		default:
			tb.Errorf("%s sets %s, which neither the worker (internal/config) nor a library it links reads", what, name)
		}
	}
	if len(pending) > 0 {
		tb.Logf("NOTE: %s sets variables the worker does not read yet (no effect today):\n  %s",
			what, strings.Join(pending, "\n  "))
	}
}
