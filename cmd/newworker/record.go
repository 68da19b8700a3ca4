package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// recordFile is where a new project keeps the record of its bake,
// relative to its root.
const recordFile = ".newworker.json"

// develVersion is the version of a template that was neither a module
// version nor a git checkout: it cannot be fetched again.
const develVersion = "devel"

// bakeRecord is .newworker.json: what a worker was made from and with. A
// template is copied once; the record is what lets `newworker update` bake
// the same template again (the merge base), bake a newer one with the same
// answers, and tell the files the worker changed from those it did not.
type bakeRecord struct {
	Comment string `json:"$comment"`
	// Template is the template's module path.
	Template string `json:"template"`
	// Version is the module version when the template came from the
	// module proxy, the full commit when it was a git checkout, else
	// "devel".
	Version string `json:"version"`
	// Modified says the checkout had changes not committed: the commit
	// alone does not make the same files again.
	Modified bool `json:"modified,omitempty"`
	// Answers holds every variable of the template, as the bake took it.
	Answers map[string]string `json:"answers"`
	// Files holds the sha256 of each file the bake wrote, by
	// slash-separated path: a file that still has it is the template's,
	// and an update may replace it.
	Files map[string]string `json:"files"`
}

// newRecord describes a bake of the template at f with answers, which
// wrote files (hashes by path).
func newRecord(f found, module string, answers, files map[string]string) *bakeRecord {
	version := f.version
	if f.module == "" {
		version = f.commit
		if version == "" {
			version = develVersion
		}
	}
	return &bakeRecord{
		Comment:  "Written by newworker: the template, version and answers this project was made with, and the sha256 of each file it wrote. `newworker update` reads it to bring in later versions of the template; keep it in git and leave it to the command.",
		Template: module,
		Version:  version,
		Modified: f.modified,
		Answers:  answers,
		Files:    files,
	}
}

// writeRecord writes rec as .newworker.json in dir.
func writeRecord(dir string, rec *bakeRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, recordFile), append(data, '\n'), 0o644)
}

// readRecord reads the .newworker.json of the worker in dir.
func readRecord(dir string) (*bakeRecord, error) {
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, usagef("%s has no %s: run update in a project made by newworker (one made before it recorded its bakes needs to be made again)", dir, recordFile)
	}
	if err != nil {
		return nil, err
	}
	var rec bakeRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", recordFile, err)
	}
	if rec.Template == "" || rec.Version == "" || rec.Answers["module"] == "" {
		return nil, fmt.Errorf("%s: lacks the template, its version or the module answer", recordFile)
	}
	if rec.Files == nil {
		rec.Files = map[string]string{}
	}
	return &rec, nil
}

// fileHash is how the record fingerprints a file: the sha256 of its bytes.
func fileHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// linkHash fingerprints a symbolic link by its target.
func linkHash(target string) string {
	return fileHash([]byte("symlink " + filepath.ToSlash(target)))
}

// checkoutState returns the commit a template directory is checked out
// at, and whether it has changes not committed; commit is "" when dir is
// not in a git repository.
func checkoutState(dir string) (commit string, modified bool) {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--verify", "--quiet", "HEAD").Output()
	if err != nil {
		return "", false
	}
	status, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--", ".").Output()
	return strings.TrimSpace(string(out)), err != nil || len(bytes.TrimSpace(status)) > 0
}

// checkoutLabel is how the README names a checkout: by the first twelve
// digits of its commit, as a pseudo-version does, so that the same commit
// is always named the same way.
func checkoutLabel(commit string) string {
	if commit == "" {
		return "(checkout)"
	}
	return "(checkout at " + commit[:min(12, len(commit))] + ")"
}

// isCommit reports whether v is a full git commit id.
func isCommit(v string) bool {
	return regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`).MatchString(v)
}
