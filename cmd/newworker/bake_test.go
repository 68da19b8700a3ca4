package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
)

// The answers of the bake: every variable differs from the template's.
var bake = map[string]string{
	"module":      "example.com/acme/clicks",
	"name":        "clicks",
	"org":         "acme",
	"topic":       "click_events",
	"table":       "hits",
	"window":      "30s",
	"expires":     "2m",
	"partitions":  "12",
	"owner":       "streaming",
	"description": "Counts clicks per page in 30-second windows",
}

// offlineGo is the environment of the go commands run on a generated
// project: the module cache only, never the network. -trimpath keeps the
// build cache valid across temporary directories, so a second bake
// compiles little.
func offlineGo() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "GOFLAGS" || k == "GOPROXY" || k == "GOWORK" || k == "GOTOOLCHAIN" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOFLAGS=-mod=mod -trimpath", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
}

// goCmd runs go with args in dir and fails the test with its output.
func goCmd(t testing.TB, dir string, env []string, args ...string) string {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("go", args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	t.Logf("go %s (in %s): %s", strings.Join(args, " "), dir, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// requireBake skips a test that bakes the template unless BAKE=1 (make
// bake): each builds and tests a generated worker, minutes on a cold
// machine, too long for make test.
func requireBake(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("BAKE") != "1" {
		t.Skipf("%s: set BAKE=1 (make bake) to run it", what)
	}
}

// TestBake generates a worker with every answer changed and checks that it
// stands on its own: it vets and tests offline, its chart lints, its
// workflows pass the workflow tests, its dashboards and alerts use its
// metric namespace, and nothing in it names the template outside the
// allow-list of template.json.
func TestBake(t *testing.T) {
	requireBake(t, "bake: builds and tests a generated project")
	t.Parallel()
	root, tmpl := templateRoot(t)
	out := bakeProject(t, root, bake)

	t.Run("layout", func(t *testing.T) { checkLayout(t, out) })
	t.Run("record", func(t *testing.T) { checkRecord(t, out, bake) })
	t.Run("settings", func(t *testing.T) { checkSettings(t, out, bake["partitions"]) })
	t.Run("no template names", func(t *testing.T) { checkNoTemplateNames(t, tmpl, out) })
	t.Run("metric namespace", func(t *testing.T) { checkNamespace(t, out) })
	t.Run("helm lint", func(t *testing.T) { helmLint(t, root, out) })

	env := offlineGo()
	t.Run("go vet", func(t *testing.T) {
		goCmd(t, out, env, "vet", "./...")
		// Nested modules whose go.mod points at the generated module
		// (their replace and require lines were rewritten). Their own
		// dependencies are in the module cache only if someone fetched
		// them (CI fetches the main module's and tools/'s).
		for _, dir := range nestedModules(t, out) {
			cmd := exec.Command("go", "vet", "./...")
			cmd.Dir, cmd.Env = dir, env
			output, err := cmd.CombinedOutput()
			switch {
			case err != nil && bytes.Contains(output, []byte("disabled by GOPROXY=off")):
				t.Logf("*** not vetting %s: its dependencies are not in the module cache (go mod download in that module of the template fetches them)", dir)
			case err != nil:
				t.Errorf("go vet ./... in %s: %v\n%s", dir, err, output)
			}
		}
	})
	t.Run("go test -short", func(t *testing.T) {
		goCmd(t, out, env, "test", "-short", "-count=1", "./...")
	})
	t.Run("workflow tests", func(t *testing.T) { workflowTests(t, out, env) })
}

// workflowTests runs, in the generated project's deploy/check, the tests of
// its workflows, Dependabot configuration, CI packages and Dockerfile: held
// to the generated code and Makefile as the template's are to its own (the
// chart tests there need a rendered chart, which `make lint-deploy` of the
// project makes). deploy/check's dependencies come from the module cache:
// `make lint-deploy` in the template, or `go mod download` in its
// deploy/check, puts them there.
func workflowTests(t *testing.T, out string, env []string) {
	dir := filepath.Join(out, "deploy", "check")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("the generated project has no deploy/check module: %v", err)
	}
	cmd := exec.Command("go", "test", "-count=1",
		"-run", "^(TestWorkflow.*|TestCIDeps.*|TestReleaseWorkflow|TestDependabot|TestDockerfile)$", ".")
	cmd.Dir, cmd.Env = dir, env
	start := time.Now()
	output, err := cmd.CombinedOutput()
	t.Logf("go test (the workflow tests, in %s): %s", dir, time.Since(start).Round(time.Millisecond))
	switch {
	case err != nil && bytes.Contains(output, []byte("disabled by GOPROXY=off")):
		msg := "deploy/check's dependencies are not in the module cache (cd deploy/check && go mod download)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s, and CI=true: the workflow tests must run\n%s", msg, output)
		}
		t.Skipf("\n\n*** SKIPPING the generated project's workflow tests: %s ***\n", msg)
	case err != nil:
		t.Errorf("the generated project's workflow tests: %v\n%s", err, output)
	case bytes.Contains(output, []byte("no tests to run")):
		t.Errorf("the generated project's deploy/check has none of the workflow tests:\n%s", output)
	}
}

// bakeProject generates a project from the template at root with answers,
// and fails on any warning of the generator.
func bakeProject(t *testing.T, root string, answers map[string]string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), answers["name"])
	args := []string{"-from", root, "-out", out, "-no-input"}
	for _, name := range varFlags() {
		args = append(args, "-"+name, answers[name])
	}
	start := time.Now()
	stdout, stderr, err := generate(t, "", args...)
	if err != nil {
		t.Fatalf("newworker %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	t.Logf("generated in %s", time.Since(start).Round(time.Millisecond))
	if stderr != "" {
		t.Errorf("the generator warned (a name it could not rename, or a default it did not find):\n%s", stderr)
	}
	return out
}

func checkLayout(t *testing.T, out string) {
	for _, p := range []string{"cmd/clicks/main.go", "deploy/helm/clicks/Chart.yaml", "README.md", "CODEOWNERS", "catalog-info.yaml"} {
		if _, err := os.Stat(filepath.Join(out, p)); err != nil {
			t.Errorf("missing %s", p)
		}
	}
	for _, p := range []string{"templates", "cmd/newworker", "cmd/pageviews", "deploy/helm/pageviews", "bin", "data", ".cache"} {
		if _, err := os.Lstat(filepath.Join(out, p)); err == nil {
			t.Errorf("%s was copied", p)
		}
	}
	want := map[string][]string{
		"README.md":  {"# clicks\n", "Counts clicks per page in 30-second windows", "`click_events`", "`clicks-hits-changelog`", "`CLICK_EVENTS_TOPIC`", "@acme/streaming"},
		"CODEOWNERS": {"* @acme/streaming\n"},
		// The records are named after the topic, in the organisation's and
		// the service's namespace; their subjects follow the topic.
		"internal/pageview/pageview.avsc": {`"name": "ClickEvent"`, `"namespace": "com.github.acme.clicks"`},
		"internal/pageview/window.avsc":   {`"name": "ClickEventWindow"`, `"namespace": "com.github.acme.clicks"`},
		"catalog-info.yaml":               {"  name: clicks\n", "  owner: streaming\n", `"Counts clicks per page in 30-second windows"`},
		"go.mod":                          {"module example.com/acme/clicks\n"},
		"deploy/helm/clicks/Chart.yaml":   {"\nname: clicks\n"},
		"Dockerfile":                      {"./cmd/clicks", "/usr/local/bin/clicks"},
	}
	for file, subs := range want {
		data, _ := os.ReadFile(filepath.Join(out, file))
		for _, s := range subs {
			if !strings.Contains(string(data), s) {
				t.Errorf("%s lacks %q", file, s)
			}
		}
	}
	if data, err := os.ReadFile(filepath.Join(out, ".github/workflows/ci.yml")); err == nil && regexp.MustCompile(`(?m)^  bake:`).Match(data) {
		t.Error("ci.yml keeps the template's bake job")
	}
}

// checkRecord reads .newworker.json back: the answers, a version update
// can fetch again, and the hash of every file the bake wrote.
func checkRecord(t *testing.T, out string, answers map[string]string) {
	rec, err := readRecord(out)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(rec.Answers, answers) {
		t.Errorf("recorded answers %v, want %v", rec.Answers, answers)
	}
	if !isCommit(rec.Version) && rec.Version != develVersion {
		t.Errorf("recorded version %q: want the template checkout's commit (or devel outside git)", rec.Version)
	}
	n := 0
	err = filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		rel = filepath.ToSlash(rel)
		if rel == recordFile {
			return nil
		}
		s, err := readState(out, rel)
		if err != nil {
			return err
		}
		if n++; rec.Files[rel] != s.hash() {
			t.Errorf("%s: recorded hash %q, the file's %q", rel, rec.Files[rel], s.hash())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(rec.Files) || n < 50 {
		t.Errorf("%d files in the project, %d in the record", n, len(rec.Files))
	}
}

// checkSettings reads the chosen defaults back: from the config code and
// the app's window declaration, the chart and docker-compose.
func checkSettings(t *testing.T, out, partitions string) {
	found := map[string]string{}
	for _, file := range []string{"internal/config/config.go", "internal/pageview/app.go"} {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, filepath.Join(out, file), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr: // r.integer("PARTITIONS", 8, ...)
				if len(n.Args) < 2 {
					return true
				}
				if lit, ok := n.Args[0].(*ast.BasicLit); ok && lit.Value == `"PARTITIONS"` {
					if v, ok := n.Args[1].(*ast.BasicLit); ok {
						found["PARTITIONS"] = v.Value
					}
				}
			case *ast.CompositeLit: // app.Window{Var: "WINDOW", Size: ..., Expires: ...}
				fields := map[string]ast.Expr{}
				for _, e := range n.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if id, ok := kv.Key.(*ast.Ident); ok {
							fields[id.Name] = kv.Value
						}
					}
				}
				if lit, ok := fields["Var"].(*ast.BasicLit); ok && lit.Value == `"WINDOW"` {
					size, _ := evalDuration(fields["Size"])
					expires, _ := evalDuration(fields["Expires"])
					found["WINDOW_SIZE"], found["WINDOW_EXPIRES"] = size.String(), expires.String()
				}
			}
			return true
		})
	}
	for env, want := range map[string]string{"WINDOW_SIZE": "30s", "WINDOW_EXPIRES": "2m0s", "PARTITIONS": partitions} {
		if found[env] != want {
			t.Errorf("default of %s = %q, want %q", env, found[env], want)
		}
	}
	for file, subs := range map[string][]string{
		"deploy/helm/clicks/values.yaml": {"  clickEventsTopic: click_events", "  partitions: " + partitions + " ", "  windowSize: 30s ", "  windowExpires: 2m ", "  group: clicks ", "repository: ghcr.io/acme/clicks"},
		"docker-compose.yml":             {"CLICK_EVENTS_TOPIC: click_events", `PARTITIONS: "` + partitions + `"`, "WINDOW_SIZE: 30s", "WINDOW_EXPIRES: 2m", "DD_SERVICE: clicks", "--topic clicks-hits-changelog --partitions " + partitions, "--topic click_events-dlq --partitions " + partitions},
		"deploy/kafka/kafka.yaml":        {"--topic click_events --partitions " + partitions + " "},
	} {
		data, _ := os.ReadFile(filepath.Join(out, file))
		for _, s := range subs {
			if !strings.Contains(string(data), s) {
				t.Errorf("%s lacks %q", file, s)
			}
		}
	}
}

// checkNoTemplateNames greps the project, paths included, for the
// template's names in any case. What template.json allows (and says why)
// is taken out first.
func checkNoTemplateNames(t *testing.T, tmpl *Template, out string) {
	re := regexp.MustCompile(`(?i)pageviews|page_views|gofaust`)
	var hits []string
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == out {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		rel = filepath.ToSlash(rel)
		if re.MatchString(rel) {
			hits = append(hits, rel+" (path)")
		}
		if d.IsDir() || tmpl.allowedFile(rel) {
			return nil
		}
		var data []byte
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			data = []byte(target)
		} else if data, err = os.ReadFile(p); err != nil {
			return err
		}
		for n, line := range strings.Split(tmpl.withoutAllowed(rel, string(data)), "\n") {
			if re.MatchString(line) {
				hits = append(hits, rel+":"+strconv.Itoa(n+1)+": "+strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hits {
		if i == 40 {
			t.Errorf("... and %d more", len(hits)-40)
			break
		}
		t.Errorf("names the template: %s", h)
	}
	for _, a := range tmpl.Allow {
		t.Logf("allowed in %s: %q (%s)", a.File, a.Text, a.Why)
	}
}

// checkNamespace: every metric of docs/metrics.md that dashboards, alerts
// or the statsd mapping name carries the new namespace, clicks. (DogStatsD)
// or clicks_ (Prometheus), and every dashboard uses it.
func checkNamespace(t *testing.T, out string) {
	doc, err := os.ReadFile(filepath.Join(out, "docs/metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `clicks\\.([a-z0-9_.]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		names = append(names, regexp.QuoteMeta(m[1]), regexp.QuoteMeta(strings.ReplaceAll(m[1], ".", "_")))
	}
	if len(names) < 10 {
		t.Fatalf("docs/metrics.md lists %d metrics in the clicks. namespace", len(names)/2)
	}
	ref := regexp.MustCompile(`\b([A-Za-z0-9]+)[._](` + strings.Join(names, "|") + `)\b`)
	dashboards := 0
	for _, dir := range []string{"dashboards", "deploy/prometheus", "deploy/statsd"} {
		filepath.WalkDir(filepath.Join(out, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".sum") || strings.HasSuffix(p, ".mod") {
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(out, p)
			if dir == "dashboards" && path.Ext(p) == ".json" {
				dashboards++
				if !bytes.Contains(data, []byte("clicks_")) && !bytes.Contains(data, []byte("clicks.")) {
					t.Errorf("dashboard %s uses no clicks_ or clicks. metric", rel)
				}
			}
			for _, m := range ref.FindAllStringSubmatch(string(data), -1) {
				// The topic click_events is no metric; statsd_exporter's
				// own series are not the worker's.
				if m[1] != "clicks" && m[1] != "exporter" && m[1] != "statsd" && !strings.Contains(bake["topic"], m[0]) {
					t.Errorf("%s: metric %s is not in the clicks namespace", rel, m[0])
				}
			}
			return nil
		})
	}
	if dashboards == 0 {
		t.Error("no dashboard (dashboards/**/*.json) in the generated project")
	}
}

// helmLint lints every chart of the project with the helm pinned in the
// template's tools/go.mod, for its defaults and each ci/*-values.yaml.
func helmLint(t *testing.T, root, out string) {
	toolsMod := filepath.Join(root, "tools", "go.mod")
	data, err := os.ReadFile(toolsMod)
	pinned := false
	if err == nil {
		if f, err := modfile.Parse(toolsMod, data, nil); err == nil {
			for _, tool := range f.Tool {
				pinned = pinned || tool.Path == "helm.sh/helm/v3/cmd/helm"
			}
		}
	}
	if !pinned {
		t.Skip("\n\n*** SKIPPING helm lint: helm is not pinned in tools/go.mod (add `tool helm.sh/helm/v3/cmd/helm`) ***\n")
	}
	charts, _ := filepath.Glob(filepath.Join(out, "deploy", "helm", "*", "Chart.yaml"))
	if len(charts) != 1 || filepath.Base(filepath.Dir(charts[0])) != "clicks" {
		t.Fatalf("charts %v, want deploy/helm/clicks only", charts)
	}
	chart := filepath.Dir(charts[0])
	env := offlineGo()
	goCmd(t, root, env, "tool", "-modfile="+toolsMod, "helm", "lint", "--strict", chart)
	values, _ := filepath.Glob(filepath.Join(chart, "ci", "*-values.yaml"))
	for _, v := range values {
		goCmd(t, root, env, "tool", "-modfile="+toolsMod, "helm", "lint", "--strict", chart, "-f", v)
	}
	kube := "1.37.2" // the Kubernetes version deploy/deploy.mk validates against
	if mk, err := os.ReadFile(filepath.Join(out, "deploy", "deploy.mk")); err == nil {
		if m := regexp.MustCompile(`K8S_SCHEMA_VERSION\s*\??=\s*v(\S+)`).FindSubmatch(mk); m != nil {
			kube = string(m[1])
		}
	}
	// The chart has no default broker: an install must name one.
	rendered := goCmd(t, root, env, "tool", "-modfile="+toolsMod, "helm", "template", "clicks", chart, "--kube-version", kube,
		"--set", "kafka.brokers=kafka:9092")
	for _, s := range []string{"name: clicks\n", "app.kubernetes.io/name: clicks", "value: \"click_events\"", "image: \"ghcr.io/acme/clicks:"} {
		if !strings.Contains(rendered, s) {
			t.Errorf("helm template lacks %q", s)
		}
	}
}

// nestedModules lists the directories of the project's nested modules
// whose go.mod refers to the project's module (a replace to ../).
func nestedModules(t *testing.T, out string) []string {
	var dirs []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "go.mod" || filepath.Dir(p) == out {
			return nil
		}
		data, _ := os.ReadFile(p)
		if f, err := modfile.Parse(p, data, nil); err == nil {
			for _, r := range f.Replace {
				if r.Old.Path == bake["module"] {
					dirs = append(dirs, filepath.Dir(p))
				}
			}
		}
		return nil
	})
	return dirs
}

// evalDuration evaluates a constant duration as the config and the window
// declarations write it: time.Minute, 5 * time.Minute, (time.Minute).
func evalDuration(e ast.Expr) (time.Duration, bool) {
	switch x := e.(type) {
	case *ast.ParenExpr:
		return evalDuration(x.X)
	case *ast.BasicLit:
		n, err := strconv.ParseInt(x.Value, 0, 64)
		return time.Duration(n), x.Kind == token.INT && err == nil
	case *ast.SelectorExpr:
		units := map[string]time.Duration{"Nanosecond": time.Nanosecond, "Microsecond": time.Microsecond,
			"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute, "Hour": time.Hour}
		pkg, ok := x.X.(*ast.Ident)
		d, known := units[x.Sel.Name]
		return d, ok && pkg.Name == "time" && known
	case *ast.BinaryExpr:
		a, ok1 := evalDuration(x.X)
		b, ok2 := evalDuration(x.Y)
		return a * b, x.Op == token.MUL && ok1 && ok2
	}
	return 0, false
}
