package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// gitIn runs git in dir, apart from the user's configuration, and returns
// its output.
func gitIn(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := gitCommand(dir, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// gitCommand is git with args in dir, apart from the user's configuration.
func gitCommand(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL="+os.DevNull, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=test", "GIT_AUTHOR_EMAIL=test@example.com",
		"GIT_COMMITTER_NAME=test", "GIT_COMMITTER_EMAIL=test@example.com")
	return cmd
}

// commitAll commits everything in the repository dir (made on first use)
// and returns the commit.
func commitAll(t testing.TB, dir, msg string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		gitIn(t, dir, "init", "-q")
	}
	gitIn(t, dir, "add", "-A")
	gitIn(t, dir, "commit", "-q", "--no-verify", "-m", msg)
	return gitIn(t, dir, "rev-parse", "HEAD")
}

// writeFiles writes (or with "" deletes) files under dir.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if text == "" {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// editFile replaces the first old in a file with new, and fails if the
// file lacks old.
func editFile(t testing.TB, file, old, new string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s lacks %q", file, old)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readText(t testing.TB, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// updateWorker runs newworker update on the worker dir from the template
// from, and returns its output.
func updateWorker(t testing.TB, dir, from string, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	args := append([]string{"update", "-dir", dir, "-from", from}, extra...)
	stdout, stderr, err = generate(t, "", args...)
	t.Logf("newworker %s:\n%s%s", strings.Join(args, " "), stdout, stderr)
	return stdout, stderr, err
}

// TestUpdateRules runs every rule of the three-way update on the small
// template: files only the template changed follow it, files only the
// worker changed stay, changes of both are merged, overlapping ones are
// conflicts with markers, and files the template added or removed are
// added or removed unless the worker has its own there.
func TestUpdateRules(t *testing.T) {
	src := fakeTemplate(t)
	writeFiles(t, src, map[string]string{
		"notes/gone.md":   "# gone\n",
		"notes/mine.md":   "# mine\n",
		"notes/clash.txt": "one\ntwo\nthree\n",
		"notes/drop.txt":  "drop\n",
		"notes/keep.txt":  "keep\n",
		"internal/w/w2.go": "package w\n\n// First is the first constant.\nconst First = 1\n\n" +
			"// Middle keeps the two edits apart.\nconst Middle = 2\n\n// Last is the last constant.\nconst Last = 3\n",
	})
	commitAll(t, src, "A")
	worker := filepath.Join(t.TempDir(), "gadgets")
	if _, stderr, err := generate(t, "", "-from", src, "-out", worker, "-no-input", "-module", "example.com/acme/gadgets"); err != nil {
		t.Fatalf("bake: %v\n%s", err, stderr)
	}
	rec, err := readRecord(worker)
	if err != nil {
		t.Fatal(err)
	}
	if !isCommit(rec.Version) || rec.Modified || rec.Answers["name"] != "gadgets" || rec.Files["cmd/gadgets/main.go"] == "" {
		t.Fatalf("record: version %q modified %v answers %v files %v", rec.Version, rec.Modified, rec.Answers, rec.Files)
	}
	commitAll(t, worker, "baked")

	// The worker's own changes.
	editFile(t, filepath.Join(worker, "internal/w/w2.go"), "const First = 1", "const First = 10")
	editFile(t, filepath.Join(worker, "notes/clash.txt"), "two", "two, as the worker says")
	editFile(t, filepath.Join(worker, "notes/mine.md"), "# mine", "# mine, edited")
	writeFiles(t, worker, map[string]string{"local.txt": "the worker's own\n", "notes/drop.txt": "", "notes/keep.txt": ""})
	commitAll(t, worker, "edits")

	// The template's.
	editFile(t, filepath.Join(src, "internal/w/w2.go"), "const Last = 3", "const Last = 30")
	editFile(t, filepath.Join(src, "notes/clash.txt"), "two", "two, as the template says")
	editFile(t, filepath.Join(src, "cmd/widgets/main.go"), `println("widgets")`, `println("widgets, B")`)
	editFile(t, filepath.Join(src, "notes/drop.txt"), "drop", "drop, changed")
	writeFiles(t, src, map[string]string{"notes/gone.md": "", "notes/mine.md": "", "local.txt": "the template's\n", "internal/w/new.go": "package w\n\nconst New = 4\n"})
	b := commitAll(t, src, "B")

	// A dry run writes nothing, and says what would happen.
	stdout, _, err := updateWorker(t, worker, src, "-dry-run")
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if !strings.Contains(stdout, "conflict  notes/clash.txt") || !strings.Contains(stdout, "Nothing written") {
		t.Errorf("dry run output lacks the conflict or the note:\n%s", stdout)
	}
	if st := gitIn(t, worker, "status", "--porcelain"); st != "" {
		t.Fatalf("the dry run changed the worker:\n%s", st)
	}

	// A worker with changes not committed is refused.
	writeFiles(t, worker, map[string]string{"scratch.txt": "x\n"})
	if _, _, err := updateWorker(t, worker, src); !isUsage(err) || !strings.Contains(err.Error(), "not committed") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("dirty worker: err = %v, want a one-line usage error", err)
	}
	writeFiles(t, worker, map[string]string{"scratch.txt": ""})

	stdout, _, err = updateWorker(t, worker, src)
	var cerr *conflictError
	if !errors.As(err, &cerr) || isUsage(err) {
		t.Fatalf("err = %v, want the conflicts (exit status 1)", err)
	}
	if want := []string{"local.txt", "notes/clash.txt", "notes/drop.txt"}; !slices.Equal(cerr.paths, want) {
		t.Errorf("conflicts %q, want %q", cerr.paths, want)
	}
	for _, line := range []string{"updated   cmd/gadgets/main.go", "merged    internal/w/w2.go", "added     internal/w/new.go",
		"removed   notes/gone.md", "kept      notes/mine.md"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("output lacks %q", line)
		}
	}
	checkUpdatedRules(t, worker)
	rec, err = readRecord(worker)
	if err != nil || rec.Version != b || rec.Files["internal/w/new.go"] == "" || rec.Files["notes/gone.md"] != "" {
		t.Errorf("record after the update: %v, version %s (want %s), files %v", err, rec.Version, b, rec.Files)
	}
}

// checkUpdatedRules checks the worker of TestUpdateRules after its update.
func checkUpdatedRules(t *testing.T, worker string) {
	t.Helper()
	w2 := readText(t, filepath.Join(worker, "internal/w/w2.go"))
	if !strings.Contains(w2, "const First = 10") || !strings.Contains(w2, "const Last = 30") {
		t.Errorf("w2.go lacks one side of the merge:\n%s", w2)
	}
	clash := readText(t, filepath.Join(worker, "notes/clash.txt"))
	for _, s := range []string{"<<<<<<< yours\n", "two, as the worker says\n", "=======\n", "two, as the template says\n", ">>>>>>> template "} {
		if !strings.Contains(clash, s) {
			t.Errorf("clash.txt lacks %q:\n%s", s, clash)
		}
	}
	for file, want := range map[string]string{
		"local.txt":         "the worker's own",
		"notes/drop.txt":    "drop, changed", // deleted by the worker, changed since: back, to be seen
		"notes/mine.md":     "# mine, edited",
		"internal/w/new.go": "const New = 4",
	} {
		if got := readText(t, filepath.Join(worker, file)); !strings.Contains(got, want) {
			t.Errorf("%s = %q, want it to hold %q", file, got, want)
		}
	}
	if main := readText(t, filepath.Join(worker, "cmd/gadgets/main.go")); !strings.Contains(main, `"gadgets, B"`) {
		t.Errorf("cmd/gadgets/main.go not updated:\n%s", main)
	}
	for _, gone := range []string{"notes/gone.md", "notes/keep.txt"} {
		if _, err := os.Stat(filepath.Join(worker, gone)); err == nil {
			t.Errorf("%s is there", gone)
		}
	}
}

// TestUpdate is the update of a worker made from this template: the
// template as a git repository of three commits (A, the tree as it is; B,
// two runtime files changed and one added; C, another runtime file changed
// and B's file renamed), a worker baked from A that changed its domain and
// one runtime file where B changes it too. The update to B brings B's
// changes, keeps the worker's and stops at the one conflict; resolved, the
// worker builds and its tests pass; the update to C is clean.
func TestUpdate(t *testing.T) {
	requireBake(t, "update: bakes this template and builds the worker")
	t.Parallel()
	start := time.Now()
	root, _ := templateRoot(t)
	src := filepath.Join(t.TempDir(), "template")
	copyTemplate(t, root, src)
	commitAll(t, src, "A")
	a := gitIn(t, src, "rev-parse", "HEAD")

	const (
		recovery  = "internal/stream/recovery.go"
		lifecycle = "internal/app/lifecycle.go"
		schedule  = "internal/stream/schedule.go"
		domain    = "internal/pageview/app.go"
	)
	anchor := "\n// restoring is the recovery of one table partition.\n"
	editFile(t, filepath.Join(src, recovery), anchor, "\n// Template B: a replay ends at the offset measured when it started.\n"+anchor)
	editFile(t, filepath.Join(src, lifecycle), "\nfunc (g *runGroup) stopAll(", "\n// Template B: stopAll stops in the reverse order of startAll.\nfunc (g *runGroup) stopAll(")
	writeFiles(t, src, map[string]string{"internal/stream/later.go": "package stream\n\n// laterFile is a file of the template's version B.\nconst laterFile = \"B\"\n"})
	b := commitAll(t, src, "B")
	editFile(t, filepath.Join(src, schedule), "\nfunc (s *Scheduler) Task(", "\n// Template C: a task runs until its context ends.\nfunc (s *Scheduler) Task(")
	gitIn(t, src, "mv", "internal/stream/later.go", "internal/stream/renamed.go")
	c := commitAll(t, src, "C")
	gitIn(t, src, "checkout", "-q", a)

	worker := bakeProject(t, src, bake)
	commitAll(t, worker, "baked from A")
	editFile(t, filepath.Join(worker, recovery), anchor, "\n// The worker's own note, where B writes too.\n"+anchor)
	data := readText(t, filepath.Join(worker, domain))
	writeFiles(t, worker, map[string]string{domain: data + "\n// domainNote is the worker's own.\nconst domainNote = \"mine\"\n"})
	commitAll(t, worker, "the worker's changes")
	t.Logf("template and worker ready in %s", time.Since(start).Round(time.Millisecond))

	gitIn(t, src, "checkout", "-q", b)
	stdout, _, err := updateWorker(t, worker, src)
	var cerr *conflictError
	if !errors.As(err, &cerr) || isUsage(err) {
		t.Fatalf("update to B: err = %v, want one conflict (exit status 1)", err)
	}
	if !slices.Equal(cerr.paths, []string{recovery}) || strings.Count(stdout, "  conflict ") != 1 {
		t.Fatalf("conflicts %q, want only %s:\n%s", cerr.paths, recovery, stdout)
	}
	checkUpdateToB(t, worker, stdout)

	// Resolved the template's way: the conflict's second half.
	writeFiles(t, worker, map[string]string{recovery: takeTheirs(t, readText(t, filepath.Join(worker, recovery)))})
	env := offlineGo()
	goCmd(t, worker, env, "build", "./...")
	goCmd(t, worker, env, "test", "-short", "-count=1", "./internal/stream/", "./internal/pageview/", "./internal/window/")
	commitAll(t, worker, "update to B")

	gitIn(t, src, "checkout", "-q", c)
	if stdout, _, err = updateWorker(t, worker, src); err != nil {
		t.Fatalf("update to C: %v", err)
	}
	for _, line := range []string{"updated   " + schedule, "removed   internal/stream/later.go", "added     internal/stream/renamed.go"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("update to C: output lacks %q", line)
		}
	}
	if !strings.Contains(readText(t, filepath.Join(worker, schedule)), "// Template C:") || !strings.Contains(readText(t, filepath.Join(worker, domain)), "domainNote") {
		t.Errorf("after the update to C: %s lacks C's change or %s the worker's", schedule, domain)
	}
	if rec, err := readRecord(worker); err != nil || rec.Version != c {
		t.Errorf("record after the update to C: %v, %+v", err, rec)
	}
	goCmd(t, worker, env, "build", "./...")
	t.Logf("TestUpdate: %s", time.Since(start).Round(time.Millisecond))
}

// checkUpdateToB checks the worker of TestUpdate after its update to B.
func checkUpdateToB(t *testing.T, worker, stdout string) {
	t.Helper()
	for _, line := range []string{"updated   internal/app/lifecycle.go", "added     internal/stream/later.go"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("output lacks %q", line)
		}
	}
	for file, want := range map[string]string{
		"internal/app/lifecycle.go": "// Template B: stopAll",
		"internal/stream/later.go":  `const laterFile = "B"`,
		"internal/pageview/app.go":  `const domainNote = "mine"`,
		"internal/stream/recovery.go": "<<<<<<< yours\n// The worker's own note, where B writes too.\n=======\n" +
			"// Template B: a replay ends at the offset measured when it started.\n>>>>>>> template ",
	} {
		if got := readText(t, filepath.Join(worker, file)); !strings.Contains(got, want) {
			t.Errorf("%s lacks %q", file, want)
		}
	}
}

// takeTheirs resolves every conflict of text the template's way.
func takeTheirs(t testing.TB, text string) string {
	t.Helper()
	var out []string
	state := "" // "ours" or "theirs" inside a conflict
	for _, line := range strings.SplitAfter(text, "\n") {
		switch {
		case strings.HasPrefix(line, "<<<<<<< "):
			state = "ours"
		case state == "ours" && line == "=======\n":
			state = "theirs"
		case state == "theirs" && strings.HasPrefix(line, ">>>>>>> "):
			state = ""
		case state != "ours":
			out = append(out, line)
		}
	}
	if state != "" {
		t.Fatalf("an unfinished conflict:\n%s", text)
	}
	return strings.Join(out, "")
}

// copyTemplate copies the template at root as a commit would hold it:
// everything but .git and what .gitignore ignores.
func copyTemplate(t testing.TB, root, dst string) {
	t.Helper()
	g := &generator{src: root, t: &Template{Skip: []string{".git/"}}}
	files, err := g.files()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		to := filepath.Join(dst, filepath.FromSlash(f.rel))
		if f.link != "" {
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				t.Fatal(err)
			}
			err = os.Symlink(f.link, to)
		} else {
			err = copyPlain(filepath.Join(root, filepath.FromSlash(f.rel)), to)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
