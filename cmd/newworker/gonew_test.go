package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// gonewFallback is the x/tools version of gonew when tools/go.mod pins none.
const gonewFallback = "v0.51.0"

// TestGonew makes a project from this checkout with plain gonew, as someone
// who never heard of newworker would: the checkout is published as a
// pseudo-version on a file:// module proxy, gonew fetches it from there,
// and the result must build and vet. Offline: gonew itself is installed
// from the module cache (the x/tools that tools/go.mod pins for
// staticcheck), used as a file:// proxy.
func TestGonew(t *testing.T) {
	requireBake(t, "gonew: builds a generated project")
	t.Parallel()
	root, tmpl := templateRoot(t)
	tmp := t.TempDir()
	gomodcache := strings.TrimSpace(goCmd(t, root, offlineGo(), "env", "GOMODCACHE"))

	gonew := installGonew(t, root, gomodcache, filepath.Join(tmp, "bin"))

	// Publish the checkout: the files of the module as a commit would hold
	// them (not what .gitignore ignores), zipped as the proxy serves them.
	version := "v0.0.0-20260101000000-000000000000"
	proxy := filepath.Join(tmp, "proxy")
	publish(t, root, tmpl, version, proxy)

	// gonew downloads into a module cache of its own, so the fake version
	// never lands in the real one; -modcacherw lets TempDir remove it.
	dst := filepath.Join(tmp, "clicks")
	cmd := exec.Command(gonew, tmpl.Module+"@"+version, "example.com/acme/clicks", dst)
	cmd.Dir = tmp
	cmd.Env = append(offlineGo(),
		"GOPROXY=file://"+filepath.ToSlash(proxy),
		"GOMODCACHE="+filepath.Join(tmp, "modcache"),
		"GOFLAGS=-modcacherw",
		"GOSUMDB=off",
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gonew: %v\n%s", err, out)
	}

	data, err := os.ReadFile(filepath.Join(dst, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if got := modfile.ModulePath(data); got != "example.com/acme/clicks" {
		t.Fatalf("go.mod of the gonew project says module %q", got)
	}
	env := offlineGo() // the real module cache now: the dependencies are there
	goCmd(t, dst, env, "build", "./...")
	goCmd(t, dst, env, "vet", "./...")

	// The same version through newworker, as `go run ...@latest` runs it:
	// it finds its template with go mod download, as gonew does. A module
	// download holds no nested modules, and the generator says so.
	t.Run("go run newworker@version", func(t *testing.T) {
		runNewworkerAt(t, tmpl, version, proxy, gomodcache, filepath.Join(tmp, "fromproxy"))
	})
}

// runNewworkerAt generates a worker into out with go run of newworker at
// version, from the module proxy directory proxy, and checks it: the
// template's version named, no warning, new imports, every nested module.
func runNewworkerAt(t *testing.T, tmpl *Template, version, proxy, gomodcache, out string) {
	tmp := filepath.Dir(out)
	cmd := exec.Command("go", "run", tmpl.Module+"/cmd/newworker@"+version,
		"-module", "example.com/acme/clicks", "-out", out, "-no-input")
	cmd.Dir = tmp
	cmd.Env = append(offlineGo(),
		"GOPROXY=file://"+filepath.ToSlash(proxy)+",file://"+filepath.ToSlash(filepath.Join(gomodcache, "cache", "download")),
		"GOMODCACHE="+filepath.Join(tmp, "modcache"),
		"GOFLAGS=-modcacherw",
		"GOSUMDB=off",
	)
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run newworker@%s: %v\n%s", version, err, output)
	}
	if want := "from " + tmpl.Module + " " + version; !strings.Contains(string(output), want) {
		t.Errorf("output lacks %q:\n%s", want, output)
	}
	if rec, err := readRecord(out); err != nil || rec.Version != version {
		t.Errorf("%s: %v, version %q, want %q", recordFile, err, rec.Version, version)
	}
	if strings.Contains(string(output), "warning") {
		t.Errorf("warnings:\n%s", output)
	}
	data, err := os.ReadFile(filepath.Join(out, "cmd", "clicks", "main.go"))
	if err != nil || !strings.Contains(string(data), `"example.com/acme/clicks/internal/`) {
		t.Errorf("cmd/clicks/main.go not generated with the new imports: %v", err)
	}
	// The nested modules, fetched one by one, are there and point at
	// the new module.
	for _, sub := range tmpl.Modules {
		data, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(sub), "go.mod"))
		if err != nil {
			t.Errorf("nested module %s missing: %v", sub, err)
			continue
		}
		if mod := modfile.ModulePath(data); mod != "example.com/acme/clicks/"+sub {
			t.Errorf("%s/go.mod says module %q", sub, mod)
		}
	}
	// The same command updates the worker to the version it was built
	// from, through the module proxy: the same version, so nothing
	// changes.
	commitAll(t, out, "baked")
	update := exec.Command("go", "run", tmpl.Module+"/cmd/newworker@"+version, "update")
	update.Dir, update.Env = out, cmd.Env
	if output, err := update.CombinedOutput(); err != nil || !strings.Contains(string(output), "0 files changed, 0 conflicts.") {
		t.Errorf("go run newworker@%s update: %v\n%s", version, err, output)
	}
	if st := gitIn(t, out, "status", "--porcelain"); st != "" {
		t.Errorf("an update to the same version changed the worker:\n%s", st)
	}
}

// installGonew builds gonew at the x/tools version tools/go.mod pins,
// offline from the module cache. Without it there, the test is skipped
// loudly, except in CI (CI=true), where it may use the network once.
func installGonew(t *testing.T, root, gomodcache, bin string) string {
	t.Helper()
	version := gonewFallback
	if data, err := os.ReadFile(filepath.Join(root, "tools", "go.mod")); err == nil {
		if f, err := modfile.Parse("tools/go.mod", data, nil); err == nil {
			for _, r := range f.Require {
				if r.Mod.Path == "golang.org/x/tools" {
					version = r.Mod.Version
				}
			}
		}
	}
	pkg := "golang.org/x/tools/cmd/gonew@" + version
	cacheProxy := "file://" + filepath.ToSlash(filepath.Join(gomodcache, "cache", "download"))
	install := func(proxy, sumdb string) ([]byte, error) {
		cmd := exec.Command("go", "install", pkg)
		cmd.Dir = filepath.Dir(bin)
		cmd.Env = append(offlineGo(), "GOBIN="+bin, "GOPROXY="+proxy, "GOSUMDB="+sumdb, "GOFLAGS=")
		return cmd.CombinedOutput()
	}
	out, err := install(cacheProxy, "off")
	if err != nil {
		if os.Getenv("CI") != "true" {
			t.Skipf("\n\n*** SKIPPING the gonew test: %s is not in the module cache (%v).\n"+
				"*** Fetch it once (go mod download -modfile=tools/go.mod, or go install %s); then this test runs offline.\n%s", pkg, err, pkg, out)
		}
		upstream := strings.TrimSpace(goCmd(t, root, os.Environ(), "env", "GOPROXY"))
		if out, err = install(cacheProxy+","+upstream, "sum.golang.org"); err != nil {
			t.Fatalf("go install %s (CI, network allowed): %v\n%s", pkg, err, out)
		}
	}
	return filepath.Join(bin, "gonew")
}

// publish writes version of the template module, made from the checkout at
// root, into a file:// proxy at proxy.
func publish(t *testing.T, root string, tmpl *Template, version, proxy string) {
	t.Helper()
	// Copy what a commit holds: everything but .git and what .gitignore
	// ignores (bin/, data/, .cache/, *.test). CreateFromDir itself leaves
	// out nested modules and symbolic links.
	files := filepath.Join(t.TempDir(), "module")
	g := &generator{src: root, t: &Template{Skip: []string{".git/"}}}
	list, err := g.files()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range list {
		if f.link != "" {
			continue
		}
		if err := copyPlain(filepath.Join(root, filepath.FromSlash(f.rel)), filepath.Join(files, filepath.FromSlash(f.rel))); err != nil {
			t.Fatal(err)
		}
	}
	esc, err := module.EscapePath(tmpl.Module)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(proxy, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	zf, err := os.Create(filepath.Join(dir, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	if err := modzip.CreateFromDir(zf, module.Version{Path: tmpl.Module, Version: version}, files); err != nil {
		t.Fatalf("zip the module: %v", err)
	}
	if err := zf.Close(); err != nil {
		t.Fatal(err)
	}
	writeProxyFiles(t, dir, version, filepath.Join(files, "go.mod"))

	// The nested modules at the same version, as a tag or a commit of the
	// repository gives them.
	for _, sub := range nestedModuleDirs(t, files) {
		path := tmpl.Module + "/" + sub
		esc, err := module.EscapePath(path)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(proxy, filepath.FromSlash(esc), "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		zf, err := os.Create(filepath.Join(dir, version+".zip"))
		if err != nil {
			t.Fatal(err)
		}
		if err := modzip.CreateFromDir(zf, module.Version{Path: path, Version: version}, filepath.Join(files, filepath.FromSlash(sub))); err != nil {
			t.Fatalf("zip %s: %v", path, err)
		}
		if err := zf.Close(); err != nil {
			t.Fatal(err)
		}
		writeProxyFiles(t, dir, version, filepath.Join(files, filepath.FromSlash(sub), "go.mod"))
	}
}

// writeProxyFiles writes the .mod, .info and list files of a version.
func writeProxyFiles(t *testing.T, dir, version, gomodFile string) {
	t.Helper()
	gomod, err := os.ReadFile(gomodFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		version + ".mod":  string(gomod),
		version + ".info": fmt.Sprintf(`{"Version":%q,"Time":"2026-01-01T00:00:00Z"}`, version),
		"list":            version + "\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// nestedModuleDirs lists the directories under root, slash-separated,
// that hold a go.mod of their own.
func nestedModuleDirs(t testing.TB, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && d.Name() == "go.mod" && filepath.Dir(p) != root {
			rel, _ := filepath.Rel(root, filepath.Dir(p))
			dirs = append(dirs, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func copyPlain(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
