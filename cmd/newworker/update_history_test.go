package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// firstRecordedVersion is the first commit of this template whose bakes
// write .newworker.json, the oldest version a worker can update from.
const firstRecordedVersion = "6dda690ad330bfd845a71175564bfd5980a2686f"

// TestUpdateFromFirstRecordedVersion updates a worker baked from a real
// earlier version of this template, its first with a bake record, to the
// template's last commit: a few days of real changes (files added, renamed
// and removed, go.mod, the runtime, the deploy files), not the synthetic
// ones of TestUpdate. The worker added a file of its own and changed no
// file of the template's, so the update must bring every change without a
// conflict and leave exactly what a fresh bake of the last commit holds,
// plus the worker's file. That equality also stands for building and
// testing it: TestBake builds and tests a fresh bake.
//
// It needs the template's git history: a clone, not a shallow one (the
// workflow's checkout fetches it whole). Without it, it skips loudly.
func TestUpdateFromFirstRecordedVersion(t *testing.T) {
	requireBake(t, "update from an earlier version: bakes this template twice")
	t.Parallel()
	root, _ := templateRoot(t)
	if !hasCommit(root, firstRecordedVersion) {
		// Not a failure even in CI: no package can install a history
		// that a shallow clone left out. The workflow fetches it whole.
		t.Skip("SKIPPED LOUDLY: the template's git history lacks " + firstRecordedVersion +
			" (a shallow clone, or no .git): the update from a real earlier version is not tested; clone with the whole history to run it")
	}
	last := gitIn(t, root, "rev-parse", "HEAD")
	src := filepath.Join(t.TempDir(), "template")
	gitIn(t, filepath.Dir(src), "clone", "-q", "--no-checkout", root, src)
	gitIn(t, src, "checkout", "-q", firstRecordedVersion)

	worker := bakeProject(t, src, bake)
	commitAll(t, worker, "baked from the first recorded version")
	const own = "internal/pageview/own.go"
	writeFiles(t, worker, map[string]string{own: "package pageview\n\n// ownNote is the worker's own.\nconst ownNote = \"mine\"\n"})
	commitAll(t, worker, "the worker's own file")

	gitIn(t, src, "checkout", "-q", last)
	stdout, _, err := updateWorker(t, worker, src)
	if err != nil {
		t.Fatalf("update from %.7s to %.7s: %v", firstRecordedVersion, last, err)
	}
	if !strings.Contains(stdout, "  updated   ") || !strings.Contains(stdout, "  added     ") {
		t.Errorf("the update lists no updated or no added file:\n%s", stdout)
	}
	if rec, err := readRecord(worker); err != nil || rec.Version != last {
		t.Errorf("record after the update: %v, %+v; want version %s", err, rec, last)
	}

	fresh := bakeProject(t, src, bake)
	got, want := treeFiles(t, worker), treeFiles(t, fresh)
	if string(got[own]) == "" {
		t.Errorf("the update lost the worker's %s", own)
	}
	delete(got, own)
	for name, data := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: in a fresh bake, missing after the update", name)
		} else if !bytes.Equal(g, data) {
			t.Errorf("%s: differs from a fresh bake after the update", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: kept after the update, not in a fresh bake", name)
		}
	}
}

// hasCommit reports whether the git repository at dir holds commit.
func hasCommit(dir, commit string) bool {
	cmd := gitCommand(dir, "cat-file", "-e", commit+"^{commit}")
	return cmd.Run() == nil
}

// treeFiles reads every file under dir but .git, by slash path; a
// symbolic link reads as its target.
func treeFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		var data []byte
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(path)
			data = []byte("-> " + target)
			if err != nil {
				return err
			}
		} else if data, err = os.ReadFile(path); err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
