package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
)

// found is where the template comes from.
type found struct {
	dir     string
	version string // to name it by in the README
	// module and hash are set for a module version fetched with go mod
	// download: its path and the commit it was made from, if the proxy
	// says (the nested modules are fetched at the same commit).
	module, hash string
	// commit and modified are set for a git checkout: its commit, and
	// whether it has changes not committed (see .newworker.json).
	commit   string
	modified bool
}

// findTemplate finds the template: -from, else the checkout the command
// runs in (go run ./cmd/newworker), else the module version it was built
// from (go run .../cmd/newworker@latest), which `go mod download -json`
// fetches as gonew does.
func findTemplate(from string) (found, error) {
	if from != "" {
		dir, err := filepath.Abs(from)
		if err != nil {
			return found{}, err
		}
		return checkout(dir), nil
	}
	modPath, modVersion, fromProxy := builtFrom()
	if fromProxy {
		info, err := download(modPath + "@" + modVersion)
		if err != nil {
			return found{}, err
		}
		return found{dir: info.Dir, version: info.Version, module: modPath, hash: info.Origin.Hash}, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return found{}, err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, filepath.FromSlash(templateFile))); err == nil {
			return checkout(d), nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	return found{}, fmt.Errorf("%s is not in a checkout of the template: run this inside one, pass -from DIR, or go run %s/cmd/newworker@latest", wd, modPath)
}

// moduleInfo is what go mod download -json says of a module version.
type moduleInfo struct {
	Dir, Version, Error string
	Origin              struct{ Hash string }
}

// download fetches a module version into the module cache.
func download(modVersion string) (moduleInfo, error) {
	cmd := exec.Command("go", "mod", "download", "-json", modVersion)
	cmd.Dir = os.TempDir() // outside any module or workspace
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var info moduleInfo
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil || info.Dir == "" || runErr != nil {
		msg := strings.TrimSpace(info.Error + " " + stderr.String())
		return info, fmt.Errorf("go mod download -json %s: %v %s", modVersion, runErr, msg)
	}
	return info, nil
}

// assemble puts a downloaded template together in a temporary directory:
// the module zip, which leaves out nested modules, and each nested module
// template.json lists, fetched at the same version (or commit). The caller
// removes the directory.
func assemble(f found, t *Template, warn func(string, ...any)) (string, error) {
	dir, err := os.MkdirTemp("", "newworker-template-")
	if err != nil {
		return "", err
	}
	// The module cache is read-only; CopyFS makes the copies writable.
	if err := os.CopyFS(dir, os.DirFS(f.dir)); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	for _, sub := range t.Modules {
		path := f.module + "/" + sub
		info, err := download(path + "@" + f.version)
		if err != nil && f.hash != "" {
			info, err = download(path + "@" + f.hash)
		}
		if err != nil {
			warn("the new project lacks %s/: the nested module %s is not to be had at %s (%v)", sub, path, f.version, err)
			continue
		}
		if err := os.CopyFS(filepath.Join(dir, filepath.FromSlash(sub)), os.DirFS(info.Dir)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

// checkout describes a template directory: its commit when git can tell.
func checkout(dir string) found {
	commit, modified := checkoutState(dir)
	return found{dir: dir, version: checkoutLabel(commit), commit: commit, modified: modified}
}

// builtFrom returns the module this command was built from, and whether
// that was a version of the module proxy (go run .../cmd/newworker@v1.2.0)
// rather than a build of a local checkout (v0.0.0-...+dirty, with vcs
// settings).
func builtFrom() (path, version string, fromProxy bool) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", "", false
	}
	fromProxy = bi.Main.Version != "" && bi.Main.Version != "(devel)"
	for _, s := range bi.Settings {
		fromProxy = fromProxy && s.Key != "vcs"
	}
	return bi.Main.Path, bi.Main.Version, fromProxy
}
