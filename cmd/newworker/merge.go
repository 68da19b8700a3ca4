package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// What an update does to a file. A file in none of these is left alone:
// the worker already has the template's version, or only the worker
// changed it.
const (
	actUpdated  = "updated"  // the worker had not changed it: the template's new version replaces it
	actAdded    = "added"    // new in the template
	actRemoved  = "removed"  // gone from the template, and the worker had not changed it
	actMerged   = "merged"   // both changed it, in different lines
	actConflict = "conflict" // both changed it, and the changes overlap: markers, or a note
	actKept     = "kept"     // gone from the template, but the worker changed it
)

// update is one run of newworker update: the worker (ours) and the two
// bakes of the template with its answers, the version it was made from
// (base, nil when unknown) and the newer one (theirs).
type update struct {
	dir          string
	rec          *bakeRecord
	base, theirs *baked
	labels       [3]string // ours, the base and theirs, as the conflict markers name them
}

// change is what an update does to one file.
type change struct {
	path   string // slash-separated, relative to the worker's root
	action string
	note   string
	write  *fileState // what to write, if anything
}

// fileState is one side's version of a file: absent, a symbolic link, a
// directory in the way, or bytes with a mode.
type fileState struct {
	exists bool
	dir    bool
	link   string // the target of a symbolic link, slash-separated
	data   []byte
	mode   fs.FileMode
}

func readState(root, rel string) (fileState, error) {
	p := filepath.Join(root, filepath.FromSlash(rel))
	info, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileState{}, nil
	case err != nil:
		return fileState{}, err
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		return fileState{exists: true, link: filepath.ToSlash(target)}, err
	case info.IsDir():
		return fileState{exists: true, dir: true}, nil
	}
	data, err := os.ReadFile(p)
	return fileState{exists: true, data: data, mode: info.Mode().Perm()}, err
}

// hash is the file's fingerprint as .newworker.json records it.
func (s fileState) hash() string {
	switch {
	case !s.exists || s.dir:
		return ""
	case s.link != "":
		return linkHash(s.link)
	}
	return fileHash(s.data)
}

func (s fileState) same(o fileState) bool {
	return s.exists == o.exists && s.dir == o.dir && s.link == o.link && bytes.Equal(s.data, o.data)
}

// text reports whether a line merge can take the file: absent (empty) or
// a regular file of text.
func (s fileState) text() bool { return !s.dir && s.link == "" && !isBinary(s.data) }

// plan decides what happens to each file that the record, the base or the
// newer bake knows. Files only the worker has are not looked at.
func (u *update) plan() ([]change, error) {
	paths := map[string]bool{}
	for _, files := range []map[string]string{u.rec.Files, u.theirs.files, u.base.filesOrNil()} {
		for p := range files {
			paths[p] = true
		}
	}
	delete(paths, recordFile)
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		if !filepath.IsLocal(filepath.FromSlash(p)) {
			return nil, fmt.Errorf("%s: %q is not a path inside the worker", recordFile, p)
		}
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	var changes []change
	for _, p := range sorted {
		ours, err := readState(u.dir, p)
		if err != nil {
			return nil, err
		}
		theirs, err := readState(u.theirs.dir, p)
		if err != nil {
			return nil, err
		}
		var base fileState
		if u.base != nil {
			if base, err = readState(u.base.dir, p); err != nil {
				return nil, err
			}
		}
		c, err := u.decide(p, ours, base, theirs)
		if err != nil {
			return nil, err
		}
		if c.action != "" {
			changes = append(changes, c)
		}
	}
	return changes, nil
}

func (b *baked) filesOrNil() map[string]string {
	if b == nil {
		return nil
	}
	return b.files
}

// decide is the three-way rule for one file. A file the worker left as
// the template wrote it (its hash is the recorded one) follows the
// template; a file only the worker changed stays; a file both changed is
// merged. Nothing the worker changed is overwritten.
func (u *update) decide(p string, ours, base, theirs fileState) (change, error) {
	recorded, hasBase := u.rec.Files[p], u.base != nil
	untouched := ours.exists && (recorded != "" && ours.hash() == recorded || recorded == "" && hasBase && ours.same(base))
	c := change{path: p}
	switch {
	case ours.same(theirs):
		// Already the template's new version (or gone from both).
	case untouched && !theirs.exists:
		c.action = actRemoved
	case untouched:
		c.action, c.write = actUpdated, &theirs
	case !ours.exists && (recorded != "" || base.exists):
		// The worker deleted it. A template that changed it since
		// brings it back, so that the change is seen.
		if theirs.exists && !(hasBase && base.same(theirs)) {
			c.action, c.write = actConflict, &theirs
			c.note = "deleted here, changed in the template: its new version is written; delete it again if it is not wanted"
		}
	case !ours.exists:
		c.action, c.write = actAdded, &theirs
	case hasBase && base.same(theirs):
		// Only the worker changed it.
	case !theirs.exists:
		c.action, c.note = actKept, "removed from the template, changed here"
	default:
		return u.merge(c, ours, base, theirs)
	}
	return c, nil
}

// merge brings the template's change of one file (base to theirs) into
// the worker's version of it, line by line. Without a base (a file the
// template added where the worker has one of its own, or a worker of an
// unknown version) every difference is a conflict.
func (u *update) merge(c change, ours, base, theirs fileState) (change, error) {
	if !ours.text() || !theirs.text() || !base.text() {
		c.action = actConflict
		c.note = "changed here and in the template, and not text: kept as it is; take the template's version by hand if it is wanted"
		return c, nil
	}
	out, n, err := merge3(ours.data, base.data, theirs.data, u.labels)
	if err != nil {
		return c, fmt.Errorf("merge %s: %w", c.path, err)
	}
	c.write = &fileState{exists: true, data: out, mode: ours.mode}
	switch {
	case n == 0:
		c.action = actMerged
	case !base.exists:
		c.action, c.note = actConflict, "the template added a file where this project has its own: resolve the markers"
	default:
		c.action, c.note = actConflict, fmt.Sprintf("changed here and in the template, in the same lines: resolve the markers (%s)", plural(n, "conflict"))
	}
	return c, nil
}

// merge3 merges the change from base to theirs into ours with git
// merge-file, in its default style (<<<<<<<, =======, >>>>>>>) whatever
// the user's configuration says, and returns the result and the number of
// conflicts it marked.
func merge3(ours, base, theirs []byte, labels [3]string) ([]byte, int, error) {
	dir, err := os.MkdirTemp("", "newworker-merge-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(dir)
	names := []string{"ours", "base", "theirs"}
	for i, data := range [][]byte{ours, base, theirs} {
		if err := os.WriteFile(filepath.Join(dir, names[i]), data, 0o600); err != nil {
			return nil, 0, err
		}
	}
	cmd := exec.Command("git", "-c", "merge.conflictStyle=merge", "merge-file", "--stdout",
		"-L", labels[0], "-L", labels[1], "-L", labels[2], names[0], names[1], names[2])
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	// The exit status is the number of conflicts, or negative (255) on
	// an error.
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.Bytes(), 0, nil
	case errors.As(err, &exit) && exit.ExitCode() > 0 && exit.ExitCode() < 128:
		return stdout.Bytes(), exit.ExitCode(), nil
	}
	return nil, 0, fmt.Errorf("git merge-file: %v: %s", err, strings.TrimSpace(stderr.String()))
}

// apply writes the planned changes into the worker.
func (u *update) apply(changes []change) error {
	for _, c := range changes {
		p := filepath.Join(u.dir, filepath.FromSlash(c.path))
		var err error
		switch {
		case c.action == actRemoved:
			if err = os.Remove(p); err == nil {
				pruneDirs(u.dir, filepath.Dir(p))
			}
		case c.write != nil:
			err = writeState(p, *c.write)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", c.path, err)
		}
	}
	return nil
}

// writeState writes s at p, replacing what is there.
func writeState(p string, s fileState) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if info, err := os.Lstat(p); err == nil && (s.link != "" || info.Mode()&fs.ModeSymlink != 0) {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	if s.link != "" {
		return os.Symlink(filepath.FromSlash(s.link), p)
	}
	if err := os.WriteFile(p, s.data, s.mode); err != nil {
		return err
	}
	return os.Chmod(p, s.mode)
}

// pruneDirs removes dir and its parents below root while they are empty:
// a directory the template dropped goes with its last file.
func pruneDirs(root, dir string) {
	for d := dir; d != root && within(root, d); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			return
		}
	}
}

// reportPlan lists the changes, one a line, and what to do next.
func reportPlan(w io.Writer, rec *bakeRecord, newer *source, theirs *baked, changes []change, dryRun bool) {
	verb := "Updating"
	if dryRun {
		verb = "Would update"
	}
	fmt.Fprintf(w, "%s %s: template %s %s -> %s\n", verb, rec.Answers["module"], newer.t.Module, shortVersion(rec.Version), shortVersion(newer.record))
	for _, v := range newer.t.Variables {
		if _, ok := rec.Answers[v.Name]; !ok {
			fmt.Fprintf(w, "  new variable -%s: %s (the template's suggestion)\n", v.Name, theirs.answers[v.Name])
		}
	}
	conflicts := 0
	for _, c := range changes {
		line := fmt.Sprintf("  %-9s %s", c.action, c.path)
		if c.note != "" {
			line += ": " + c.note
		}
		fmt.Fprintln(w, line)
		if c.action == actConflict {
			conflicts++
		}
	}
	fmt.Fprintf(w, "%s, %s.\n", plural(len(changes)-countKept(changes), "file changed"), plural(conflicts, "conflict"))
	switch {
	case dryRun:
		fmt.Fprintln(w, "Nothing written (-dry-run).")
	case conflicts > 0:
		fmt.Fprintln(w, "Next: resolve each conflict (edit out the <<<<<<< ======= >>>>>>> markers), run the tests, review git diff, commit.")
		fmt.Fprintln(w, "To drop the update instead: git reset --hard && git clean -fd")
	default:
		fmt.Fprintln(w, "Next: run the tests, review git diff, commit.")
	}
}

func countKept(changes []change) int {
	n := 0
	for _, c := range changes {
		if c.action == actKept {
			n++
		}
	}
	return n
}

// shortVersion shortens a commit to twelve digits, as a pseudo-version
// does; other versions are shown as they are.
func shortVersion(v string) string {
	if isCommit(v) {
		return v[:12]
	}
	return v
}

// plural writes "1 file changed", "2 files changed".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	noun, rest, _ := strings.Cut(what, " ")
	return strings.TrimSpace(fmt.Sprintf("%d %ss %s", n, noun, rest))
}

// conflictError is an update that left conflicts, after writing every
// other change and the record: exit status 1.
type conflictError struct{ paths []string }

func (e *conflictError) Error() string {
	return fmt.Sprintf("update: %s, in %s: resolve, run the tests, then commit", plural(len(e.paths), "conflict"), strings.Join(e.paths, ", "))
}

// conflictsOf is the error an update with conflicts ends with, or nil.
func conflictsOf(changes []change) error {
	var paths []string
	for _, c := range changes {
		if c.action == actConflict {
			paths = append(paths, c.path)
		}
	}
	if paths == nil {
		return nil
	}
	return &conflictError{paths}
}
