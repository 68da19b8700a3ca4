package main

import (
	"bytes"
	"errors"
	"go/format"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// templateRoot is the checkout these tests run in. In a project made from
// the template with plain gonew (which copies cmd/newworker too), the
// module is not the template's any more and the tests that generate skip.
func templateRoot(t testing.TB) (string, *Template) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := loadTemplate(root)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if modfile.ModulePath(data) != tmpl.Module {
		t.Skipf("module %s is not the template %s: nothing to generate from", modfile.ModulePath(data), tmpl.Module)
	}
	return root, tmpl
}

// generate runs the command as a user would and returns its output.
func generate(t testing.TB, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(args, strings.NewReader(stdin), &o, &e)
	return o.String(), e.String(), err
}

// fakeTemplate writes a small template: enough to test the questions and
// the checks without copying the real one.
func fakeTemplate(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":                   "module example.org/tmpl/widgets\n\ngo 1.26.0\n",
		"cmd/widgets/main.go":      "package main\n\nimport _ \"example.org/tmpl/widgets/internal/w\"\n\nfunc main() { println(\"widgets\") }\n",
		"internal/w/w.go":          "// Package w counts widgets on the widget_events topic.\npackage w\n\n// Topic is where WIDGET_EVENTS_TOPIC points by default.\nconst Topic = \"widget_events\"\n",
		"README.md":                "# widgets\n",
		"templates/README.md.tmpl": "# {{ .name }}\n\nFrom {{ .template }}.\n",
		"templates/template.json": `{
  "template": "example.org/tmpl/widgets",
  "variables": [
    {"name": "module", "kind": "module", "default": "example.org/tmpl/widgets", "prompt": "Module", "validate": "^[a-z0-9.]+(/[a-z0-9._-]+)+$"},
    {"name": "name", "kind": "word", "default": "widgets", "suggest": "{{ slug (base .module) }}", "prompt": "Name", "validate": "^[a-z][a-z0-9]{1,29}$"},
    {"name": "topic", "kind": "word", "default": "widget_events", "prompt": "Topic", "validate": "^[a-z][a-z0-9]*([._-][a-z0-9]+)*$"},
    {"name": "window", "kind": "setting", "env": "WINDOW_SIZE", "type": "duration", "default": "1m", "prompt": "Window", "validate": "^([0-9]+(ms|s|m|h))+$"},
    {"name": "expires", "kind": "setting", "env": "WINDOW_EXPIRES", "type": "duration", "default": "5m", "prompt": "Expiry", "validate": "^([0-9]+(ms|s|m|h))+$"}
  ],
  "skip": [".git/", "/templates/"]
}`,
	}
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestInvalidAnswersFailWithOneLine(t *testing.T) {
	src := fakeTemplate(t)
	out := filepath.Join(t.TempDir(), "new")
	tests := []struct {
		name string
		args []string
		want string // in the message
	}{
		{"module path with a space", []string{"-module", "example.com/acme/my clicks"}, "-module"},
		{"module path without a dot in its first element", []string{"-module", "acme/clicks"}, "-module"},
		{"module path in capitals", []string{"-module", "Example.com/acme/clicks"}, "-module"},
		{"name with a capital", []string{"-module", "example.com/acme/clicks", "-name", "Clicks"}, "-name"},
		{"name with a dash", []string{"-module", "example.com/acme/clicks", "-name", "click-stream"}, "-name"},
		{"name too short", []string{"-module", "example.com/acme/clicks", "-name", "c"}, "-name"},
		{"topic with a space", []string{"-module", "example.com/acme/clicks", "-topic", "click events"}, "-topic"},
		{"window not a duration", []string{"-module", "example.com/acme/clicks", "-window", "soon"}, "-window"},
		{"window below a second", []string{"-module", "example.com/acme/clicks", "-window", "500ms"}, "-window"},
		{"expiry shorter than the window", []string{"-module", "example.com/acme/clicks", "-window", "10m", "-expires", "5m"}, "-expires"},
		{"unknown variable for this template", []string{"-module", "example.com/acme/clicks", "-table", "hits"}, "-table"},
		{"no name follows from the module path", []string{"-module", "example.com/acme/x"}, "-name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-from", src, "-out", out, "-no-input"}, tt.args...)
			_, _, err := generate(t, "", args...)
			var ierr *inputError
			if err == nil || !(errors.As(err, &ierr) || isUsage(err)) {
				t.Fatalf("run(%q) = %v, want an input error (exit status 2)", tt.args, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") {
				t.Errorf("message %q: want one line naming %s", msg, tt.want)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was created by a run that failed", out)
			}
		})
	}
}

func TestRefusesNonEmptyOrInsideTarget(t *testing.T) {
	src := fakeTemplate(t)
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, out, want string }{
		{"non-empty directory", full, "not empty"},
		{"a file", filepath.Join(full, "notes.txt"), "not a directory"},
		{"inside the template", filepath.Join(src, "new"), "inside the template"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := generate(t, "", "-from", src, "-out", tt.out, "-no-input", "-module", "example.com/acme/clicks")
			if err == nil || !isUsage(err) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want a one-line usage error saying %q", err, tt.want)
			}
		})
	}
	if data, err := os.ReadFile(filepath.Join(full, "notes.txt")); err != nil || string(data) != "mine" {
		t.Errorf("the non-empty target was touched: %q, %v", data, err)
	}
}

func TestNoInputNeedsModule(t *testing.T) {
	_, _, err := generate(t, "", "-from", fakeTemplate(t), "-no-input")
	if !isUsage(err) || !strings.Contains(err.Error(), "-module") {
		t.Fatalf("err = %v, want a usage error asking for -module", err)
	}
}

// TestPromptsLikeCookiecutter answers the questions on stdin: an invalid
// answer is asked again, an empty one takes the default in brackets, and
// the defaults follow earlier answers (the name from the module path).
func TestPromptsLikeCookiecutter(t *testing.T) {
	src := fakeTemplate(t)
	out := filepath.Join(t.TempDir(), "gadgets")
	answers := strings.Join([]string{
		"not a module path",        // module: invalid, asked again
		"example.com/acme/gadgets", // module
		"",                         // name: the suggestion, gadgets
		"gadget events",            // topic: invalid, asked again
		"gadget_events",            // topic
		"30s",                      // window
		"10s",                      // expires: shorter than the window, asked again
		"",                         // expires: the default, 5m
		out,                        // directory
	}, "\n") + "\n"
	stdout, stderr, err := generate(t, answers, "-from", src)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []string{
		"Module [example.org/tmpl/widgets]: ",
		"invalid module",
		"Name [gadgets]: ",
		"invalid topic",
		"Window [1m]: ",
		"shorter than the window",
		"Expiry [5m]: ",
		"cd " + out,
		"make test",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	readme, _ := os.ReadFile(filepath.Join(out, "README.md"))
	if string(readme) != "# gadgets\n\nFrom example.org/tmpl/widgets.\n" {
		t.Errorf("README.md = %q, want the rendered template", readme)
	}
	src2, _ := os.ReadFile(filepath.Join(out, "internal", "w", "w.go"))
	if !bytes.Contains(src2, []byte(`const Topic = "gadget_events"`)) || !bytes.Contains(src2, []byte("GADGET_EVENTS_TOPIC")) {
		t.Errorf("internal/w/w.go not renamed:\n%s", src2)
	}
	main, _ := os.ReadFile(filepath.Join(out, "cmd", "gadgets", "main.go"))
	if !bytes.Contains(main, []byte(`"example.com/acme/gadgets/internal/w"`)) {
		t.Errorf("cmd/gadgets/main.go: import not rewritten:\n%s", main)
	}
}

func TestInputEndsEarly(t *testing.T) {
	_, _, err := generate(t, "example.com/acme/gadgets\n", "-from", fakeTemplate(t))
	if !errors.Is(err, errNoInput) {
		t.Fatalf("err = %v, want the input to have ended", err)
	}
}

func TestRenamerSpellingsAndBoundaries(t *testing.T) {
	tmpl := &Template{Module: "github.com/gofaust/pageviews", Variables: []Variable{
		{Name: "module", Kind: kindModule, Default: "github.com/gofaust/pageviews"},
		{Name: "name", Kind: kindWord, Default: "pageviews"},
		{Name: "org", Kind: kindWord, Default: "gofaust"},
		{Name: "topic", Kind: kindWord, Default: "page_views"},
		{Name: "table", Kind: kindTable, Default: "views"},
	}}
	r := newRenamer(tmpl, map[string]string{"module": "example.com/acme/clicks", "name": "clicks", "org": "acme", "topic": "click_events", "table": "hits"})
	for _, tt := range []struct{ in, want string }{
		{"github.com/gofaust/pageviews/internal/config", "example.com/acme/clicks/internal/config"},
		{"https://github.com/gofaust/pageviews#readme", "https://example.com/acme/clicks#readme"},
		{"ghcr.io/gofaust/pageviews", "ghcr.io/acme/clicks"},
		{"pageviews.consumer_lag pageviews_consumer_lag", "clicks.consumer_lag clicks_consumer_lag"},
		{"pageviews-views-changelog page_views-dlq", "clicks-hits-changelog click_events-dlq"},
		{`"/_pageviews/"`, `"/_clicks/"`},
		{"PAGEVIEWS_E2E_RACE PAGE_VIEWS_TOPIC", "CLICKS_E2E_RACE CLICK_EVENTS_TOPIC"},
		{"pageViewsTopic: TestCountsPageViews", "clickEventsTopic: TestCountsClickEvents"},
		{"- alert: PageviewsRebalanceStorm", "- alert: ClicksRebalanceStorm"},
		{"README.md#pageviewsrebalancestorm", "README.md#clicksrebalancestorm"},
		{`table.NewWindowed("views", ...) table="views"`, `table.NewWindowed("hits", ...) table="hits"`},
		// Not words of the template: left alone.
		{"internal/pageview page views viewsx mypageviews pageviewsd", "internal/pageview page views viewsx mypageviews pageviewsd"},
	} {
		if got := r.Rename(tt.in); got != tt.want {
			t.Errorf("Rename(%q) =\n  %q, want\n  %q", tt.in, got, tt.want)
		}
	}
	// A new value that contains an old one is not renamed again.
	r2 := newRenamer(tmpl, map[string]string{"module": "github.com/acme/pageviews2", "name": "pageviewsx", "topic": "page_views_v2"})
	if got, want := r2.Rename("github.com/gofaust/pageviews pageviews page_views"), "github.com/acme/pageviews2 pageviewsx page_views_v2"; got != want {
		t.Errorf("Rename = %q, want %q", got, want)
	}
}

func TestSettingRulesInText(t *testing.T) {
	tmpl := &Template{Variables: []Variable{
		{Name: "window", Kind: kindSetting, Env: "WINDOW_SIZE", Type: "duration", Default: "1m"},
		{Name: "partitions", Kind: kindSetting, Env: "PARTITIONS", Type: "int", Default: "8"},
	}}
	r := newRenamer(tmpl, map[string]string{"window": "30s", "partitions": "12"})
	in := "  WINDOW_SIZE: 1m\n  windowSize: 1m                    # WINDOW_SIZE\n| `WINDOW_SIZE` | `1m` |\nWINDOW_SIZE=1m0s\n" +
		"  PARTITIONS: \"8\"\n  partitions: 8\n  --topic t --partitions 8 --replication-factor 1\n  partitions: 80\n"
	want := "  WINDOW_SIZE: 30s\n  windowSize: 30s                   # WINDOW_SIZE\n| `WINDOW_SIZE` | `30s` |\nWINDOW_SIZE=1m0s\n" +
		"  PARTITIONS: \"12\"\n  partitions: 12\n  --topic t --partitions 12 --replication-factor 1\n  partitions: 80\n"
	if got := r.RenameText(in, true); got != want {
		t.Errorf("RenameText =\n%s\nwant\n%s", got, want)
	}
}

func TestIgnorer(t *testing.T) {
	var ig ignorer
	ig.add("", []string{"/data/", "/bin/", "*.test", "# comment", "/.cache/", "!keep.test", "docs/**/*.tmp"})
	ig.add("sub", []string{"local.txt"})
	for _, tt := range []struct {
		path  string
		dir   bool
		wants bool
	}{
		{"data", true, true},
		{"data", false, false}, // a file named data: the rule is for directories
		{"x/data", true, false},
		{"bin", true, true},
		{"pageview.test", false, true},
		{"cmd/x/x.test", false, true},
		{"keep.test", false, false},
		{".cache", true, true},
		{"docs/a/b/c.tmp", false, true},
		{"docs/c.tmp", false, true},
		{"sub/local.txt", false, true},
		{"sub/deeper/local.txt", false, true},
		{"local.txt", false, false},
		{"internal/config/config.go", false, false},
	} {
		if got := ig.ignored(tt.path, tt.dir); got != tt.wants {
			t.Errorf("ignored(%q, dir=%v) = %v, want %v", tt.path, tt.dir, got, tt.wants)
		}
	}
}

// TestDefaultsReproduceTheTemplate generates with every default: each
// copied file must come out as it went in (Go files as gofmt writes them),
// so no rule touches what it should not. Only the rendered files and the
// template's own CI job differ.
func TestDefaultsReproduceTheTemplate(t *testing.T) {
	root, tmpl := templateRoot(t)
	out := filepath.Join(t.TempDir(), "same")
	_, stderr, err := generate(t, "", "-from", root, "-out", out, "-no-input", "-module", tmpl.Module)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr)
	}
	rendered := map[string]bool{"README.md": true, "CODEOWNERS": true, "catalog-info.yaml": true, recordFile: true}
	n := 0
	err = filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		rel = filepath.ToSlash(rel)
		if rendered[rel] {
			return nil
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		want, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			t.Errorf("%s: not in the template: %v", rel, err)
			return nil
		}
		switch {
		case strings.HasSuffix(rel, ".go") && !inTestdata(rel):
			if f, err := format.Source(want); err == nil {
				want = f
			}
		case strings.HasPrefix(rel, ".github/workflows/"):
			return nil // the template's own jobs are dropped
		}
		n++
		if !bytes.Equal(got, want) {
			t.Errorf("%s changed although every answer is the default", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Errorf("only %d files compared", n)
	}
	if strings.Contains(stderr, "warning") {
		t.Errorf("warnings:\n%s", stderr)
	}
}

// TestExitStatus runs the command itself: a bad answer is one line on
// stderr and exit status 2.
func TestExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "newworker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	src := fakeTemplate(t)
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-module", "example.com/acme/my clicks"}, "newworker: -module: malformed module path"},
		{[]string{"-module", "example.com/acme/clicks", "-name", "Clicks"}, `newworker: -name: "Clicks" does not match`},
		{[]string{"-module", "example.com/acme/clicks", "-out", full}, "newworker: target directory " + full + " exists and is not empty"},
	} {
		cmd := exec.Command(bin, append([]string{"-from", src, "-no-input"}, tt.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("%q: %v, want exit status 2", tt.args, err)
		}
		if msg := stderr.String(); !strings.HasPrefix(msg, tt.want) || strings.Count(msg, "\n") != 1 {
			t.Errorf("%q: stderr %q, want one line starting %q", tt.args, msg, tt.want)
		}
	}
}

// TestNestedModulesListed keeps template.json's modules in step with the
// checkout: every nested module a new project gets is listed, so that a
// template fetched from the module proxy can fetch it.
func TestNestedModulesListed(t *testing.T) {
	root, tmpl := templateRoot(t)
	var skip ignorer
	skip.add("", tmpl.Skip)
	var want []string
	for _, dir := range nestedModuleDirs(t, root) {
		if !skip.ignored(dir, true) {
			want = append(want, dir)
		}
	}
	got := append([]string(nil), tmpl.Modules...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s lists the modules %q; the checkout has %q", templateFile, got, want)
	}
}
