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
		return found{dir: dir, version: checkoutVersion(dir)}, nil
	}
	modPath, modVersion, local := "", "", true
	if bi, ok := debug.ReadBuildInfo(); ok {
		modPath, modVersion = bi.Main.Path, bi.Main.Version
		// A version of the module proxy, not one go build stamped from a
		// local repository (v0.0.0-...+dirty, with vcs settings).
		local = modVersion == "" || modVersion == "(devel)"
		for _, s := range bi.Settings {
			local = local || s.Key == "vcs"
		}
	}
	if !local {
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
			return found{dir: d, version: checkoutVersion(d)}, nil
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

// checkoutVersion names a checkout by its commit when git can tell.
func checkoutVersion(dir string) string {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "(checkout)"
	}
	return "(checkout at " + strings.TrimSpace(string(out)) + ")"
}
