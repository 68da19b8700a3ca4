package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// updateOptions are the command line of newworker update.
type updateOptions struct {
	dir    string // the worker
	from   string // the newer template: a directory or module@version
	dryRun bool
}

func parseUpdateFlags(args []string, stderr io.Writer) (*updateOptions, error) {
	fs := flag.NewFlagSet("newworker update", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &updateOptions{}
	fs.StringVar(&o.dir, "dir", ".", "the worker to update: a project made by newworker, committed to git")
	fs.StringVar(&o.from, "from", "", "the newer template: a directory, or module@version from the module proxy (default: the checkout this runs in, else the module version it was built from)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "list what would change, and write nothing")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: newworker update [-from dir|module@version] [-dir worker] [-dry-run]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("update: %v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("update: unexpected arguments %q", fs.Args())
	}
	return o, nil
}

// runUpdate brings a worker made by newworker up to a newer template. It
// bakes the version the worker was made from (the base) and the newer one
// (theirs) with the answers the worker recorded, and applies the
// difference to the worker's tree (ours) as a three-way merge, so that the
// worker's own changes stay. A conflict is left in its file between the
// usual markers and fails the command, once everything else is written
// and the record is up to date: resolving, testing and committing
// finishes the update, and git undoes it.
func runUpdate(args []string, stdout, stderr io.Writer) error {
	o, err := parseUpdateFlags(args, stderr)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	rec, err := readRecord(dir)
	if err != nil {
		return err
	}
	// A dry run writes nothing, so there is nothing to undo.
	if !o.dryRun {
		if err := checkClean(dir); err != nil {
			return err
		}
	}
	warn := func(format string, args ...any) {
		fmt.Fprintf(stderr, "newworker: warning: "+format+"\n", args...)
	}
	newer, err := openSource(o.from, warn)
	if err != nil {
		return err
	}
	defer newer.close()
	theirs, err := bakeFrom(newer, rec.Answers, warn)
	if err != nil {
		return fmt.Errorf("bake %s %s: %w", newer.t.Module, newer.version, err)
	}
	defer theirs.close()
	base, err := bakeBase(rec, newer, warn)
	if err != nil {
		return err
	}
	defer base.close()

	u := &update{dir: dir, rec: rec, base: base, theirs: theirs,
		labels: [3]string{"yours", "template " + rec.Version, "template " + newer.record}}
	changes, err := u.plan()
	if err != nil {
		return err
	}
	reportPlan(stdout, rec, newer, theirs, changes, o.dryRun)
	if o.dryRun {
		return nil
	}
	if err := u.apply(changes); err != nil {
		return err
	}
	if err := writeRecord(dir, newRecord(newer.found, newer.t.Module, theirs.answers, theirs.files)); err != nil {
		return err
	}
	return conflictsOf(changes)
}

// checkClean refuses a worker whose git status is not clean: an update
// writes over its files, and git is how an update is undone.
func checkClean(dir string) error {
	out, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--", ".").Output()
	if err != nil {
		return usagef("%s is not a git repository: commit the worker to git first (git init; git add -A; git commit), so that an update can be undone", dir)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		return usagef("%s has changes not committed (git status): commit or stash them first, so that the update can be undone", dir)
	}
	return nil
}

// source is one version of the template, on disk and ready to bake.
type source struct {
	found
	t        *Template
	tree     string // the files to bake: found.dir, or a copy with the nested modules of a module version
	record   string // the version as .newworker.json records it
	cleanups []string
}

func (s *source) close() {
	if s == nil {
		return
	}
	for _, d := range s.cleanups {
		os.RemoveAll(d)
	}
}

// openSource finds the newer template: a directory, module@version
// through the module proxy, or by default the template the command itself
// belongs to, as a bake finds it (go run .../cmd/newworker@latest update,
// or go run ./cmd/newworker update -dir ../clicks in a checkout).
func openSource(from string, warn func(string, ...any)) (*source, error) {
	if info, err := os.Stat(from); from == "" || err == nil && info.IsDir() {
		f, err := findTemplate(from)
		if err != nil {
			return nil, err
		}
		return prepare(f, warn)
	}
	mod, version, ok := strings.Cut(from, "@")
	if !ok || module.CheckPath(mod) != nil || version == "" {
		return nil, usagef("-from %s: no such directory, and not module@version", from)
	}
	info, err := download(from)
	if err != nil {
		return nil, err
	}
	return prepare(found{dir: info.Dir, version: info.Version, module: mod, hash: info.Origin.Hash}, warn)
}

// prepare loads the template at f and, for a module version, adds its
// nested modules.
func prepare(f found, warn func(string, ...any)) (*source, error) {
	t, err := loadTemplate(f.dir)
	if err != nil {
		return nil, err
	}
	s := &source{found: f, t: t, tree: f.dir, record: newRecord(f, t.Module, nil, nil).Version}
	if f.module != "" {
		staging, err := assemble(f, t, warn)
		if err != nil {
			return nil, err
		}
		s.tree = staging
		s.cleanups = append(s.cleanups, staging)
	}
	return s, nil
}

// bakeBase bakes again the version the worker was made from: the base of
// the merge. A worker made from a template of unknown version has no base
// (nil): a file both it and the template changed is then a conflict.
func bakeBase(rec *bakeRecord, newer *source, warn func(string, ...any)) (*baked, error) {
	if rec.Version == develVersion {
		warn("the worker was made from a template of unknown version (devel): every file both it and the template changed is a conflict")
		return nil, nil
	}
	if rec.Modified {
		warn("the worker was made from changes not committed on top of %s: merges use %s as their base", rec.Version, rec.Version)
	}
	old, err := oldSource(rec, newer, warn)
	if err != nil {
		return nil, fmt.Errorf("the template the worker was made from (%s): %w", rec.Version, err)
	}
	defer old.close()
	b, err := bakeFrom(old, rec.Answers, func(string, ...any) {})
	if err != nil {
		return nil, fmt.Errorf("bake %s %s again: %w", rec.Template, rec.Version, err)
	}
	return b, nil
}

// oldSource finds the version the worker was made from: in the git
// history of the newer template's checkout when that has it (a commit, a
// release's tag, the commit of a pseudo-version), else through the module
// proxy, as the bake fetches a module version.
func oldSource(rec *bakeRecord, newer *source, warn func(string, ...any)) (*source, error) {
	var dir string
	if newer.module == "" {
		var err error
		if dir, err = archiveAt(newer.dir, gitRev(rec.Version)); err != nil {
			return nil, err
		}
	}
	if dir != "" {
		// The README names a checkout by its commit, a module by its
		// version: the same name as in the first bake.
		label := rec.Version
		if isCommit(label) {
			label = checkoutLabel(label)
		}
		old, err := prepare(found{dir: dir, version: label}, warn)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		old.cleanups = append(old.cleanups, dir)
		return old, nil
	}
	if !semver.IsValid(rec.Version) && !isCommit(rec.Version) {
		return nil, fmt.Errorf("%s: %q is neither a module version nor a commit", recordFile, rec.Version)
	}
	info, err := download(rec.Template + "@" + rec.Version)
	if err != nil {
		return nil, err
	}
	return prepare(found{dir: info.Dir, version: info.Version, module: rec.Template, hash: info.Origin.Hash}, warn)
}

// gitRev is the git revision of a recorded version: a commit as it is,
// the commit a pseudo-version names, or a release's tag.
func gitRev(v string) string {
	if module.IsPseudoVersion(v) {
		if rev, err := module.PseudoVersionRev(v); err == nil {
			return rev
		}
	}
	return v
}

// archiveAt writes the template as it was at rev into a new temporary
// directory, from the git repository that holds the checkout repo. It
// returns "" when repo is not in git or its history lacks rev.
func archiveAt(repo, rev string) (string, error) {
	prefix, err := exec.Command("git", "-C", repo, "rev-parse", "--show-prefix").Output()
	if err != nil {
		return "", nil
	}
	commit, err := exec.Command("git", "-C", repo, "rev-parse", "--verify", "--quiet", rev+"^{commit}").Output()
	if err != nil {
		return "", nil
	}
	tree := strings.TrimSpace(string(commit))
	if p := strings.TrimSuffix(strings.TrimSpace(string(prefix)), "/"); p != "" {
		tree += ":" + p
	}
	dir, err := os.MkdirTemp("", "newworker-base-")
	if err != nil {
		return "", err
	}
	if err := extract(repo, tree, dir); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("git archive %s: %w", tree, err)
	}
	return dir, nil
}

// extract unpacks git archive's tar of tree into dir.
func extract(repo, tree, dir string) error {
	cmd := exec.Command("git", "-C", repo, "archive", "--format=tar", tree)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	err = untar(tar.NewReader(out), dir)
	if err != nil {
		cmd.Process.Kill()
	}
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("%v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	return err
}

func untar(tr *tar.Reader, dir string) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !filepath.IsLocal(filepath.FromSlash(h.Name)) {
			return fmt.Errorf("%s: a path outside the archive", h.Name)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = writeFrom(p, tr, os.FileMode(h.Mode)&0o777|0o600)
			}
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(h.Linkname, p)
			}
		}
		if err != nil {
			return err
		}
	}
}

func writeFrom(p string, r io.Reader, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// baked is one version of the template, generated with a worker's answers
// into a temporary directory.
type baked struct {
	dir     string
	answers map[string]string // every variable of that version
	files   map[string]string // what the bake wrote: sha256 by path
	tmp     string
}

func (b *baked) close() {
	if b != nil {
		os.RemoveAll(b.tmp)
	}
}

// bakeFrom generates the template s with the recorded answers, as
// -no-input would: a variable the worker has no answer for (one the
// template added since) takes its suggestion, and answers for variables
// the template dropped are left out.
func bakeFrom(s *source, recorded map[string]string, warn func(string, ...any)) (*baked, error) {
	vals := map[string]string{}
	for name, v := range recorded {
		if s.t.variable(name) != nil {
			vals[name] = v
		}
	}
	answers, err := collectAnswers(s.t, &options{vals: vals, noInput: true}, nil, io.Discard, commands(s.tree))
	if err != nil {
		return nil, fmt.Errorf("the recorded answers: %w", err)
	}
	tmp, err := os.MkdirTemp("", "newworker-bake-")
	if err != nil {
		return nil, err
	}
	out := filepath.Join(tmp, answers["name"])
	g := newGenerator(s.tree, out, s.t, answers, s.version, warn)
	if err := g.generate(); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return &baked{dir: out, answers: answers, files: g.written, tmp: tmp}, nil
}
