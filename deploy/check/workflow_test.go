package check

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
)

// The GitHub Actions workflows, held to the code and to the Makefile:
//
//   - every job that runs tests installs what they look up on PATH, through
//     the one list of .ci/deps (`make ci-deps`), which must name every
//     program the tests require (harness.RequireProgram and its wrappers)
//     and every program a make target requires in CI (`command -v` next to
//     $CI);
//   - every action is pinned to a commit, with the version in a comment;
//   - every job has a timeout, and a job that runs tests uploads its logs
//     when it fails;
//   - setup-go takes the Go of go.mod's toolchain line;
//   - nothing is published unless every check of the pull requests passed,
//     and what a tag publishes (the image with its SBOM, provenance and
//     attestation; the chart) is all there;
//   - Dependabot covers every module, the actions, the images, the compose
//     file and the charts.
//
// Everything is found by reading the files: none of it names the project,
// so a generated worker passes the same tests (the bake runs them).

// workflowJob is a job of a workflow, as far as these tests read it.
type workflowJob struct {
	RunsOn         any            `yaml:"runs-on"`
	Needs          stringList     `yaml:"needs"`
	Uses           string         `yaml:"uses"`
	TimeoutMinutes any            `yaml:"timeout-minutes"`
	Steps          []workflowStep `yaml:"steps"`
}

type workflowStep struct {
	Name string         `yaml:"name"`
	ID   string         `yaml:"id"`
	If   string         `yaml:"if"`
	Uses string         `yaml:"uses"`
	Run  string         `yaml:"run"`
	With map[string]any `yaml:"with"`
}

// label names a step in messages.
func (s workflowStep) label(i int) string {
	switch {
	case s.Name != "":
		return fmt.Sprintf("step %d (%s)", i+1, s.Name)
	case s.Uses != "":
		return fmt.Sprintf("step %d (%s)", i+1, s.Uses)
	}
	return fmt.Sprintf("step %d", i+1)
}

// stringList is a YAML string or list of strings (needs:).
type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = []string{n.Value}
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*l = s
	return nil
}

type workflow struct {
	file string // relative to the repository root
	root *yaml.Node
	on   yaml.Node
	jobs map[string]*workflowJob
}

// triggers lists the events of on:, in any of its three forms.
func (w *workflow) triggers() []string {
	switch w.on.Kind {
	case yaml.ScalarNode:
		return []string{w.on.Value}
	case yaml.SequenceNode:
		var out []string
		for _, n := range w.on.Content {
			out = append(out, n.Value)
		}
		return out
	case yaml.MappingNode:
		var out []string
		for i := 0; i+1 < len(w.on.Content); i += 2 {
			out = append(out, w.on.Content[i].Value)
		}
		return out
	}
	return nil
}

// triggeredBy reports whether the workflow runs on one of events.
func (w *workflow) triggeredBy(events ...string) bool {
	for _, e := range w.triggers() {
		if slices.Contains(events, e) {
			return true
		}
	}
	return false
}

// onTagPush reports whether the workflow runs on pushed tags.
func (w *workflow) onTagPush() bool {
	if w.on.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(w.on.Content); i += 2 {
		if w.on.Content[i].Value != "push" || w.on.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		push := w.on.Content[i+1]
		for j := 0; j+1 < len(push.Content); j += 2 {
			if push.Content[j].Value == "tags" {
				return true
			}
		}
	}
	return false
}

// sortedJobs lists the job names in order, for stable messages.
func (w *workflow) sortedJobs() []string {
	names := make([]string, 0, len(w.jobs))
	for name := range w.jobs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// loadWorkflows reads .github/workflows/*.yml and *.yaml.
func loadWorkflows(t *testing.T) map[string]*workflow {
	t.Helper()
	root := repoRoot(t)
	var files []string
	for _, pattern := range []string{"*.yml", "*.yaml"} {
		m, err := filepath.Glob(filepath.Join(root, ".github", "workflows", pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no workflow in .github/workflows")
	}
	out := map[string]*workflow{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		rel = filepath.ToSlash(rel)
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		var body struct {
			On   yaml.Node               `yaml:"on"`
			Jobs map[string]*workflowJob `yaml:"jobs"`
		}
		if err := doc.Decode(&body); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		out[rel] = &workflow{file: rel, root: &doc, on: body.On, jobs: body.Jobs}
	}
	return out
}

// sortedWorkflows lists the workflows in file order.
func sortedWorkflows(ws map[string]*workflow) []*workflow {
	out := make([]*workflow, 0, len(ws))
	for _, w := range ws {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].file < out[j].file })
	return out
}

// actionIs reports whether uses: names the action repo (owner/name), at any
// ref.
func actionIs(uses, repo string) bool {
	return strings.HasPrefix(strings.ToLower(uses), strings.ToLower(repo)+"@")
}

// ---- Shell scripts: what a run: step (or .ci/run) runs.

var (
	fdRedirectRE  = regexp.MustCompile(`\d*>&\d*-?|&>>?`)
	redirectRE    = regexp.MustCompile(`^\d*(>>?|<)(.*)$`)
	shellSplitRE  = regexp.MustCompile(`;|&&|\|\||\||&`)
	assignmentRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	shellKeywords = map[string]bool{"do": true, "then": true, "else": true, "elif": true, "if": true,
		"while": true, "until": true, "!": true, "{": true, "(": true, "time": true, "sudo": true, "env": true, "exec": true, "command": true}
)

// shellCommands splits a script into simple commands, closely enough to
// find make, go, the scripts of .ci, helm and apt-get: continuation lines
// joined, comments and redirections dropped, split at newlines, ;, &&, ||
// and |, and leading keywords, sudo and variable assignments dropped.
// Quotes around a word are removed, not interpreted.
func shellCommands(script string) [][]string {
	script = strings.ReplaceAll(script, "\\\n", " ")
	script = fdRedirectRE.ReplaceAllString(script, " ")
	var out [][]string
	for _, line := range strings.Split(script, "\n") {
		for i := 0; i < len(line); i++ {
			if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
				line = line[:i]
				break
			}
		}
		for _, part := range shellSplitRE.Split(line, -1) {
			var words []string
			fields := strings.Fields(part)
			for i := 0; i < len(fields); i++ {
				if m := redirectRE.FindStringSubmatch(fields[i]); m != nil {
					if m[2] == "" {
						i++ // the file
					}
					continue
				}
				words = append(words, strings.Trim(fields[i], `"'`))
			}
			for len(words) > 0 {
				w := strings.TrimLeft(words[0], "({")
				switch {
				case w == "":
					words = words[1:]
					continue
				case shellKeywords[w] || assignmentRE.MatchString(w):
					words = words[1:]
					continue
				}
				words[0] = w
				break
			}
			if len(words) > 0 {
				out = append(out, words)
			}
		}
	}
	return out
}

// scriptPath is the script a command runs (bash .ci/run, ./.ci/run: .ci/run),
// or else its first word.
func scriptPath(words []string) string {
	p := words[0]
	if (p == "bash" || p == "sh") && len(words) > 1 {
		p = words[1]
	}
	return strings.TrimPrefix(p, "./")
}

// stepKind is what a step does, as far as these tests care.
type stepKind struct {
	installs   bool     // runs .ci/deps (make ci-deps, or .ci/run, which does)
	needsDeps  []string // commands that run Go tests or actionlint
	runsTests  []string // those, and helm test
	aptInstall []string // packages installed outside .ci/deps
	publishes  []string // helm push, docker push, registry logins
}

var makeDryRuns sync.Map // make arguments -> output of make -n

// makeDryRun is what `make -n args` would run, from the repository root,
// with the environment of an outer make removed.
func makeDryRun(t *testing.T, args []string) string {
	t.Helper()
	key := strings.Join(args, "\x00")
	if out, ok := makeDryRuns.Load(key); ok {
		return out.(string)
	}
	cmd := exec.Command("make", append([]string{"-n", "-C", repoRoot(t)}, args...)...)
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MAKEFILES":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	makeDryRuns.Store(key, string(out))
	return string(out)
}

var testCommandRE = regexp.MustCompile(`(?m)\bgo\s+test\b|\bactionlint\b`)

// classify reads a run: script.
func classify(t *testing.T, script string) stepKind {
	t.Helper()
	return classifyCommands(t, shellCommands(script))
}

// classifyCommands reads commands as shellCommands splits them.
func classifyCommands(t *testing.T, cmds [][]string) stepKind {
	t.Helper()
	var k stepKind
	for _, words := range cmds {
		cmd := strings.Join(words, " ")
		switch p := scriptPath(words); {
		case p == ".ci/deps":
			k.installs = true
			continue
		case p == ".ci/run":
			k.installs = true
			k.needsDeps = append(k.needsDeps, cmd)
			k.runsTests = append(k.runsTests, cmd)
			continue
		}
		switch words[0] {
		case "make":
			var args []string
			for _, a := range words[1:] {
				if strings.HasPrefix(a, "-j") || strings.HasPrefix(a, "--jobs") || strings.Contains(a, "${{") {
					continue
				}
				args = append(args, a)
			}
			if slices.Contains(args, "ci-deps") {
				k.installs = true
			}
			if testCommandRE.MatchString(makeDryRun(t, args)) {
				k.needsDeps = append(k.needsDeps, cmd)
				k.runsTests = append(k.runsTests, cmd)
			}
		case "go":
			if len(words) > 1 && words[1] == "test" {
				k.needsDeps = append(k.needsDeps, cmd)
				k.runsTests = append(k.runsTests, cmd)
			}
		case "helm":
			switch {
			case len(words) > 1 && words[1] == "test":
				k.runsTests = append(k.runsTests, cmd)
			case len(words) > 1 && words[1] == "push", len(words) > 2 && words[1] == "registry" && words[2] == "login":
				k.publishes = append(k.publishes, cmd)
			}
		case "docker", "oras", "crane", "cosign":
			if len(words) > 1 && (words[1] == "push" || words[1] == "login" || words[1] == "sign" || words[1] == "attest") {
				k.publishes = append(k.publishes, cmd)
			}
		case "apt-get", "apt", "aptitude":
			if slices.Contains(words, "install") {
				k.aptInstall = append(k.aptInstall, cmd)
			}
		}
		if words[0] != "make" && words[0] != "go" && slices.ContainsFunc(words, func(w string) bool { return strings.Contains(w, "actionlint") }) {
			k.needsDeps = append(k.needsDeps, cmd)
			k.runsTests = append(k.runsTests, cmd)
		}
		// go tool [-modfile=...] actionlint, or helm through go tool.
		if words[0] == "go" && len(words) > 2 && words[1] == "tool" {
			rest := slices.DeleteFunc(slices.Clone(words[2:]), func(w string) bool { return strings.HasPrefix(w, "-") })
			switch {
			case len(rest) > 0 && rest[0] == "actionlint":
				k.needsDeps = append(k.needsDeps, cmd)
				k.runsTests = append(k.runsTests, cmd)
			case len(rest) > 1 && rest[0] == "helm" && rest[1] == "test":
				k.runsTests = append(k.runsTests, cmd)
			case len(rest) > 1 && rest[0] == "helm" && rest[1] == "push":
				k.publishes = append(k.publishes, cmd)
			}
		}
	}
	return k
}

// jobKind sums up a job: its steps' kinds, and which step first installs
// and first runs tests that need the packages.
type jobKind struct {
	steps        []stepKind
	firstInstall int // -1: none
	firstNeeds   int // -1: none
	publishes    []string
}

func (jk jobKind) needsDeps() bool { return jk.firstNeeds >= 0 }

func (jk jobKind) runsTests() bool {
	return slices.ContainsFunc(jk.steps, func(s stepKind) bool { return len(s.runsTests) > 0 })
}

func classifyJob(t *testing.T, j *workflowJob) jobKind {
	t.Helper()
	jk := jobKind{firstInstall: -1, firstNeeds: -1}
	for i, s := range j.Steps {
		k := classify(t, s.Run)
		switch {
		case actionIs(s.Uses, "docker/login-action"):
			k.publishes = append(k.publishes, s.Uses)
		case actionIs(s.Uses, "docker/build-push-action"):
			if v, ok := s.With["push"]; ok && fmt.Sprint(v) != "false" {
				k.publishes = append(k.publishes, s.Uses+" with push: "+fmt.Sprint(v))
			}
		case actionIs(s.Uses, "actions/attest-build-provenance"), actionIs(s.Uses, "actions/attest"):
			k.publishes = append(k.publishes, s.Uses)
		}
		if k.installs && jk.firstInstall < 0 {
			jk.firstInstall = i
		}
		if len(k.needsDeps) > 0 && jk.firstNeeds < 0 {
			jk.firstNeeds = i
		}
		jk.publishes = append(jk.publishes, k.publishes...)
		jk.steps = append(jk.steps, k)
	}
	return jk
}

// ---- What the tests need: from the Go sources, the Makefiles and .ci/deps.

// requirement is a program the tests look up on PATH: any of programs, from
// the Debian package pkg (empty when only the program is known).
type requirement struct {
	pkg      string
	programs []string
	where    string
}

func (r requirement) String() string {
	if r.pkg == "" {
		return fmt.Sprintf("%s (%s)", r.programs[0], r.where)
	}
	return fmt.Sprintf("%s from Debian package %s (%s)", strings.Join(r.programs, " or "), r.pkg, r.where)
}

// skipDir reports whether a walk of the repository leaves out a directory:
// hidden ones (.git, .cache, .github), build output and local data, test
// fixtures.
func skipDir(rel, name string) bool {
	return rel != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" ||
		name == "node_modules" || rel == "bin" || rel == "data")
}

// repoFiles lists the repository's files (slash-separated, relative to the
// root) for which keep is true.
func repoFiles(t *testing.T, keep func(rel string) bool) []string {
	t.Helper()
	root := repoRoot(t)
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if skipDir(rel, d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if keep(rel) {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// requireCallRE matches the helpers a test calls for an outside program:
// harness.RequireProgram(t, debianPackage, names...), in any case.
var requireCallRE = regexp.MustCompile(`(?i)^requireprogram$`)

// codeRequirements finds every RequireProgram call in the repository's Go
// sources (the wrappers, such as RequireKcat, call it with literals too).
func codeRequirements(t *testing.T) []requirement {
	t.Helper()
	root := repoRoot(t)
	var out []requirement
	fset := token.NewFileSet()
	for _, rel := range repoFiles(t, func(rel string) bool { return strings.HasSuffix(rel, ".go") }) {
		f, err := parser.ParseFile(fset, filepath.Join(root, rel), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			var name string
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				name = fn.Name
			case *ast.SelectorExpr:
				name = fn.Sel.Name
			}
			if !requireCallRE.MatchString(name) {
				return true
			}
			pos := fset.Position(call.Pos())
			where := fmt.Sprintf("%s:%d", rel, pos.Line)
			lits := make([]string, 0, len(call.Args))
			for _, a := range call.Args[min(1, len(call.Args)):] {
				lit, ok := a.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING || call.Ellipsis.IsValid() {
					t.Errorf("%s: %s takes a Debian package and program names that are not string literals: "+
						"this test cannot tell what CI must install", where, name)
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				lits = append(lits, s)
			}
			if len(lits) < 2 {
				t.Errorf("%s: %s with %d arguments: want (t, debianPackage, names...)", where, name, len(call.Args))
				return true
			}
			out = append(out, requirement{pkg: lits[0], programs: lits[1:], where: where})
			return true
		})
	}
	return out
}

var (
	commandVRE = regexp.MustCompile(`command -v ([A-Za-z0-9_.+-]+)`)
	makeCIRE   = regexp.MustCompile(`\$\$\{?CI\b`)
)

// makeRequirements finds the programs make targets look up with
// `command -v` in a recipe line that also reads $CI: those that fail in CI
// when missing (shellcheck, for actionlint).
func makeRequirements(t *testing.T) []requirement {
	t.Helper()
	root := repoRoot(t)
	var out []requirement
	for _, rel := range repoFiles(t, func(rel string) bool {
		return path.Base(rel) == "Makefile" || strings.HasSuffix(rel, ".mk")
	}) {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i < len(lines); i++ {
			start, logical := i, lines[i]
			for strings.HasSuffix(logical, "\\") && i+1 < len(lines) {
				i++
				logical = strings.TrimSuffix(logical, "\\") + " " + lines[i]
			}
			if !makeCIRE.MatchString(logical) {
				continue
			}
			for _, m := range commandVRE.FindAllStringSubmatch(logical, -1) {
				out = append(out, requirement{programs: []string{m[1]}, where: fmt.Sprintf("%s:%d", rel, start+1)})
			}
		}
	}
	return out
}

// depsTable is the program -> Debian package list of .ci/deps.
func depsTable(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), ".ci", "deps"))
	if err != nil {
		t.Fatalf("the list of CI's system packages: %v", err)
	}
	m := regexp.MustCompile(`(?s)\nprograms='\n(.*?)\n'\n`).FindSubmatch(data)
	if m == nil {
		t.Fatal(".ci/deps: no programs='...' list (a program and its Debian package a line)")
	}
	table := map[string]string{}
	for _, line := range strings.Split(string(m[1]), "\n") {
		f := strings.Fields(line)
		switch len(f) {
		case 0:
		case 2:
			table[f[0]] = f[1]
		default:
			t.Errorf(".ci/deps: %q: want a program and its Debian package", line)
		}
	}
	return table
}

// TestCIDepsListsWhatTestsRequire: .ci/deps installs every program the Go
// tests and the make targets require, from the package they name, and
// `make ci-deps` runs it.
func TestCIDepsListsWhatTestsRequire(t *testing.T) {
	table := depsTable(t)
	reqs := append(codeRequirements(t), makeRequirements(t)...)
	for _, r := range reqs {
		ok := slices.ContainsFunc(r.programs, func(p string) bool {
			pkg, listed := table[p]
			return listed && (r.pkg == "" || pkg == r.pkg)
		})
		if !ok {
			t.Errorf(".ci/deps does not install %s", r)
		}
	}
	if len(reqs) == 0 {
		t.Log("no test looks up an outside program (harness.RequireProgram): .ci/deps may be empty")
	}
	if !strings.Contains(makeDryRun(t, []string{"ci-deps"}), ".ci/deps") {
		t.Error("make ci-deps does not run .ci/deps")
	}
}

// TestWorkflowJobsInstallWhatTestsRequire: every job that runs Go tests or
// actionlint (directly, through a make target whose recipe does, or through
// .ci/run) installs .ci/deps' packages first, and no job installs packages
// of its own; .ci/run does the same.
func TestWorkflowJobsInstallWhatTestsRequire(t *testing.T) {
	reqs := append(codeRequirements(t), makeRequirements(t)...)
	var need []string
	for _, r := range reqs {
		need = append(need, "  "+r.String())
	}
	testJobs := 0
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		for _, name := range w.sortedJobs() {
			j := w.jobs[name]
			jk := classifyJob(t, j)
			for i, s := range jk.steps {
				for _, c := range s.aptInstall {
					t.Errorf("%s: job %s, %s: %q installs packages outside the one list: add them to .ci/deps and run make ci-deps",
						w.file, name, j.Steps[i].label(i), c)
				}
			}
			if !jk.needsDeps() {
				continue
			}
			testJobs++
			first := j.Steps[jk.firstNeeds]
			switch {
			case jk.firstInstall < 0:
				t.Errorf("%s: job %s runs tests (%s: %s) but never installs what they require (make ci-deps):\n%s",
					w.file, name, first.label(jk.firstNeeds), strings.Join(jk.steps[jk.firstNeeds].needsDeps, "; "), strings.Join(need, "\n"))
			case jk.firstInstall > jk.firstNeeds:
				t.Errorf("%s: job %s installs what the tests require (%s) after it runs them (%s)",
					w.file, name, j.Steps[jk.firstInstall].label(jk.firstInstall), first.label(jk.firstNeeds))
			}
		}
	}
	if testJobs == 0 {
		t.Error("no workflow job runs tests (make test, go test, ...): has this test lost track of them?")
	}

	data, err := os.ReadFile(filepath.Join(repoRoot(t), ".ci", "run"))
	if err != nil {
		if os.IsNotExist(err) {
			return
		}
		t.Fatal(err)
	}
	installed := false
	for _, words := range shellCommands(string(data)) {
		k := classifyCommands(t, [][]string{words})
		if k.installs && scriptPath(words) != ".ci/run" {
			installed = true
		}
		if len(k.needsDeps) > 0 && !installed {
			t.Errorf(".ci/run runs tests (%s) before it installs what they require (make ci-deps)", strings.Join(words, " "))
			break
		}
		for _, c := range k.aptInstall {
			t.Errorf(".ci/run: %q installs packages outside the one list: add them to .ci/deps", c)
		}
	}
}

// TestWorkflowJobsHaveTimeouts: no job may hang for GitHub's six hours.
func TestWorkflowJobsHaveTimeouts(t *testing.T) {
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		for _, name := range w.sortedJobs() {
			j := w.jobs[name]
			if j.Uses != "" {
				continue // a reusable workflow's jobs carry their own
			}
			if j.TimeoutMinutes == nil {
				t.Errorf("%s: job %s has no timeout-minutes", w.file, name)
			}
		}
	}
}

// TestWorkflowTestLogsUploaded: a job that runs tests keeps what they
// printed when it fails.
func TestWorkflowTestLogsUploaded(t *testing.T) {
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		for _, name := range w.sortedJobs() {
			j := w.jobs[name]
			jk := classifyJob(t, j)
			if !jk.runsTests() {
				continue
			}
			uploads := slices.ContainsFunc(j.Steps, func(s workflowStep) bool {
				return actionIs(s.Uses, "actions/upload-artifact") && strings.Contains(s.If, "failure()")
			})
			if !uploads {
				t.Errorf("%s: job %s runs tests but uploads no logs on failure (actions/upload-artifact with if: failure())", w.file, name)
			}
		}
	}
}

var (
	shaPinRE       = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@\s]+)?@[0-9a-f]{40}$`)
	versionNoteRE  = regexp.MustCompile(`^#\s*v?\d+(\.\d+)*([-+.][0-9A-Za-z.-]+)?\s*$`)
	dockerDigestRE = regexp.MustCompile(`^docker://[^@\s]+@sha256:[0-9a-f]{64}$`)
)

// TestWorkflowActionsPinnedBySHA: every action and reusable workflow of
// another repository is pinned to a full commit SHA, with the version it
// is in a comment (# v4.2.2) for readers and for Dependabot; a container
// action is pinned by digest. Local ones (./...) come from the same commit.
func TestWorkflowActionsPinnedBySHA(t *testing.T) {
	root := repoRoot(t)
	var paths []string
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		paths = append(paths, w.file)
	}
	// Composite actions of the repository, if any.
	filepath.WalkDir(filepath.Join(root, ".github", "actions"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (d.Name() == "action.yml" || d.Name() == "action.yaml") {
			rel, _ := filepath.Rel(root, p)
			paths = append(paths, filepath.ToSlash(rel))
		}
		return nil
	})
	pinned := 0
	for _, rel := range paths {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		var walk func(n *yaml.Node)
		walk = func(n *yaml.Node) {
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					k, v := n.Content[i], n.Content[i+1]
					if k.Value == "uses" && v.Kind == yaml.ScalarNode {
						pinned++
						switch ref := v.Value; {
						case strings.HasPrefix(ref, "./"):
						case strings.HasPrefix(ref, "docker://"):
							if !dockerDigestRE.MatchString(ref) {
								t.Errorf("%s:%d: uses: %s is not pinned by digest (docker://image:tag@sha256:...)", rel, v.Line, ref)
							}
						case !shaPinRE.MatchString(ref):
							t.Errorf("%s:%d: uses: %s is not pinned to a full commit SHA (owner/repo@<40 hex> # vX.Y.Z)", rel, v.Line, ref)
						case !versionNoteRE.MatchString(v.LineComment):
							t.Errorf("%s:%d: uses: %s has no comment naming its version (# vX.Y.Z), got %q", rel, v.Line, ref, v.LineComment)
						}
					}
				}
			}
			for _, c := range n.Content {
				walk(c)
			}
		}
		walk(&doc)
	}
	if pinned == 0 {
		t.Error("no uses: in the workflows")
	}
}

var goLineRE = regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)\s*$`)
var toolchainLineRE = regexp.MustCompile(`(?m)^toolchain go(\d+\.\d+\.\d+)\s*$`)

// goToolchain is the Go version a go.mod builds with: its toolchain line, or
// its go line when that is a full version and there is none. The
// repository's own go.mod must have a toolchain line.
func goToolchain(t *testing.T, gomod string) string {
	t.Helper()
	data, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	if m := toolchainLineRE.FindSubmatch(data); m != nil {
		return string(m[1])
	}
	if filepath.Clean(gomod) == filepath.Join(repoRoot(t), "go.mod") {
		t.Fatalf("go.mod has no toolchain line: CI, govulncheck and the image must build with one exact Go (toolchain go1.X.Y)")
	}
	m := goLineRE.FindSubmatch(data)
	if m == nil || strings.Count(string(m[1]), ".") != 2 {
		t.Fatalf("%s: neither a toolchain line nor a go line with a full version", gomod)
	}
	return string(m[1])
}

// TestWorkflowGoFromGoMod: every setup-go takes Go from a go.mod
// (go-version-file: setup-go reads its toolchain line first), and each
// such go.mod means the Go of the repository's toolchain line: CI tests
// the Go that ships.
func TestWorkflowGoFromGoMod(t *testing.T) {
	root := repoRoot(t)
	want := goToolchain(t, filepath.Join(root, "go.mod"))
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		for _, name := range w.sortedJobs() {
			for i, s := range w.jobs[name].Steps {
				if !actionIs(s.Uses, "actions/setup-go") {
					continue
				}
				if v, ok := s.With["go-version"]; ok {
					t.Errorf("%s: job %s, %s: go-version: %v; take it from go.mod (go-version-file) instead", w.file, name, s.label(i), v)
					continue
				}
				file, _ := s.With["go-version-file"].(string)
				if path.Base(file) != "go.mod" {
					t.Errorf("%s: job %s, %s: go-version-file %q: want a go.mod", w.file, name, s.label(i), file)
					continue
				}
				if got := goToolchain(t, inRepo(t, file)); got != want {
					t.Errorf("%s: job %s, %s: %s means Go %s, go.mod's toolchain is go%s", w.file, name, s.label(i), file, got, want)
				}
			}
		}
	}
}

// checkGates are checks a release must never skip, named: a publishing job
// waits for them (and for every other check) even if the pull request
// workflows lose track of one.
var checkGates = []string{"lint", "test", "integration", "helm", "govulncheck"}

// TestWorkflowPublishingGated: a job that publishes (a registry login or
// push, an image pushed by build-push-action, an attestation) never runs
// for a pull request, and runs only after every check job of the pull
// request workflows, through its needs: and the reusable workflows those
// call.
func TestWorkflowPublishingGated(t *testing.T) {
	ws := loadWorkflows(t)
	kinds := map[string]jobKind{}
	for _, w := range ws {
		for name, j := range w.jobs {
			kinds[w.file+":"+name] = classifyJob(t, j)
		}
	}
	// The checks: every job of a workflow that pull requests run, except
	// publishing ones.
	var checks []string
	for _, w := range sortedWorkflows(ws) {
		if !w.triggeredBy("pull_request", "pull_request_target", "merge_group") {
			continue
		}
		for _, name := range w.sortedJobs() {
			if len(kinds[w.file+":"+name].publishes) == 0 {
				checks = append(checks, w.file+":"+name)
			}
		}
	}
	for _, g := range checkGates {
		if !slices.ContainsFunc(checks, func(c string) bool { return strings.HasSuffix(c, ":"+g) }) {
			t.Errorf("no pull request workflow has a %s job", g)
		}
	}

	published := 0
	for _, w := range sortedWorkflows(ws) {
		for _, name := range w.sortedJobs() {
			jk := kinds[w.file+":"+name]
			if len(jk.publishes) == 0 {
				continue
			}
			published++
			if w.triggeredBy("pull_request", "pull_request_target") {
				t.Errorf("%s: job %s publishes (%s) in a workflow that pull requests run", w.file, name, jk.publishes[0])
			}
			done := waitsFor(ws, w.file, name)
			var missing []string
			for _, c := range checks {
				if !done[c] {
					missing = append(missing, c)
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s: job %s publishes (%s) without waiting for %s: add them to needs: (or need a job that calls their workflow)",
					w.file, name, jk.publishes[0], strings.Join(missing, ", "))
			}
		}
	}
	if published == 0 {
		t.Error("no workflow job publishes anything: where does a release go?")
	}
}

// waitsFor is every job (file:job) that job name of file runs after: its
// needs:, theirs, and every job of a reusable workflow of the repository
// that one of them calls.
func waitsFor(ws map[string]*workflow, file, name string) map[string]bool {
	done := map[string]bool{}
	var visitJob func(file, name string)
	var visitWorkflow func(file string)
	visitWorkflow = func(file string) {
		w := ws[file]
		if w == nil {
			return
		}
		for job := range w.jobs {
			if !done[file+":"+job] {
				done[file+":"+job] = true
				visitJob(file, job)
			}
		}
	}
	visitJob = func(file, name string) {
		w := ws[file]
		if w == nil || w.jobs[name] == nil {
			return
		}
		j := w.jobs[name]
		if local, ok := strings.CutPrefix(j.Uses, "./"); ok {
			visitWorkflow(path.Clean(local))
		}
		for _, n := range j.Needs {
			key := file + ":" + n
			if !done[key] {
				done[key] = true
				visitJob(file, n)
			}
		}
	}
	visitJob(file, name)
	return done
}

// TestReleaseWorkflow: a pushed tag publishes an image with an SBOM,
// max-mode provenance and an attestation, and the chart versioned after
// the tag, to an OCI registry.
func TestReleaseWorkflow(t *testing.T) {
	var image, attested, chartPackaged, chartPushed bool
	for _, w := range sortedWorkflows(loadWorkflows(t)) {
		for _, name := range w.sortedJobs() {
			j := w.jobs[name]
			buildIDs := map[string]bool{}
			for i, s := range j.Steps {
				switch {
				case actionIs(s.Uses, "docker/build-push-action"):
					if v, ok := s.With["push"]; !ok || fmt.Sprint(v) == "false" {
						continue
					}
					if !w.onTagPush() {
						t.Errorf("%s: job %s pushes an image, but the workflow does not run on tags", w.file, name)
					}
					if fmt.Sprint(s.With["sbom"]) != "true" {
						t.Errorf("%s: job %s, %s: the pushed image has no SBOM (sbom: true)", w.file, name, s.label(i))
					}
					if p := fmt.Sprint(s.With["provenance"]); !strings.Contains(p, "mode=max") {
						t.Errorf("%s: job %s, %s: provenance: %q, want mode=max", w.file, name, s.label(i), p)
					}
					if s.ID != "" {
						buildIDs[s.ID] = true
					}
					image = true
				case actionIs(s.Uses, "actions/attest-build-provenance"), actionIs(s.Uses, "actions/attest"):
					digest := fmt.Sprint(s.With["subject-digest"])
					ofImage := false
					for id := range buildIDs {
						ofImage = ofImage || strings.Contains(digest, "steps."+id+".outputs.digest")
					}
					if ofImage && fmt.Sprint(s.With["push-to-registry"]) != "true" {
						t.Errorf("%s: job %s, %s: the attestation is not pushed to the registry (push-to-registry: true)", w.file, name, s.label(i))
					}
					attested = attested || ofImage
				}
				for _, words := range shellCommands(s.Run) {
					if len(words) > 2 && words[0] == "go" && words[1] == "tool" {
						words = slices.DeleteFunc(slices.Clone(words[2:]), func(w string) bool { return strings.HasPrefix(w, "-modfile") })
					}
					cmd := " " + strings.Join(words, " ") + " "
					if len(words) > 1 && words[0] == "helm" && words[1] == "package" {
						if strings.Contains(cmd, " --version") && strings.Contains(cmd, " --app-version") {
							chartPackaged = true
						} else {
							t.Errorf("%s: job %s, %s: %q: want --version and --app-version from the tag", w.file, name, s.label(i), strings.TrimSpace(cmd))
						}
					}
					if len(words) > 2 && words[0] == "helm" && words[1] == "push" && strings.Contains(cmd, " oci://") {
						chartPushed = true
					}
				}
			}
		}
	}
	if !image {
		t.Error("no job pushes the image (docker/build-push-action with push:)")
	}
	if !attested {
		t.Error("no job attests the pushed image (actions/attest-build-provenance with the build step's digest)")
	}
	if !chartPackaged || !chartPushed {
		t.Errorf("the chart is not released: helm package --version --app-version: %v, helm push oci://: %v", chartPackaged, chartPushed)
	}
}

// TestDependabot: version updates cover every Go module, the actions, the
// Dockerfiles and Kubernetes manifests' images, the compose file and the
// Helm charts. A directory named outright must exist; a glob may match
// nothing (a generated worker has no benchmark peer).
func TestDependabot(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, ".github", "dependabot.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Updates []struct {
			Ecosystem   string   `yaml:"package-ecosystem"`
			Directory   string   `yaml:"directory"`
			Directories []string `yaml:"directories"`
		} `yaml:"updates"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	dirs := map[string][]string{}
	for _, u := range cfg.Updates {
		for _, d := range append(u.Directories, u.Directory) {
			if d == "" {
				continue
			}
			if d != "/" {
				d = strings.TrimSuffix(d, "/")
			}
			dirs[u.Ecosystem] = append(dirs[u.Ecosystem], d)
			if !strings.ContainsAny(d, "*?[") {
				if fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(d))); err != nil || !fi.IsDir() {
					t.Errorf("dependabot.yml: %s directory %s does not exist", u.Ecosystem, d)
				}
			}
		}
	}
	covered := func(eco, dir string) bool {
		for _, d := range dirs[eco] {
			if ok, _ := path.Match(d, dir); ok || d == dir {
				return true
			}
		}
		return false
	}
	want := func(eco string, keep func(rel string) bool) {
		for _, rel := range repoFiles(t, keep) {
			dir := "/" + path.Dir(rel)
			if dir == "/." {
				dir = "/"
			}
			if !covered(eco, dir) {
				t.Errorf("dependabot.yml: no %s update covers %s (for %s)", eco, dir, rel)
			}
		}
	}
	want("gomod", func(rel string) bool { return path.Base(rel) == "go.mod" })
	want("docker", func(rel string) bool { return strings.HasPrefix(path.Base(rel), "Dockerfile") })
	want("docker-compose", func(rel string) bool {
		b := path.Base(rel)
		return path.Dir(rel) == "." && (b == "docker-compose.yml" || b == "docker-compose.yaml" || b == "compose.yml" || b == "compose.yaml")
	})
	want("helm", func(rel string) bool { return path.Base(rel) == "Chart.yaml" })
	if !covered("github-actions", "/") {
		t.Error("dependabot.yml: no github-actions update for / (the workflows)")
	}
}
