package check

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
)

// offlineImages answers BuildKit's base image look-ups without a registry:
// a minimal Linux image config, which is all the linter reads from it.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}`)
	return ref, digest.FromBytes(cfg), cfg, nil
}

// lintDockerfile runs the checks of `docker build --check` (BuildKit's
// Dockerfile frontend, every rule, experimental ones too) and fails on any
// warning or error.
func lintDockerfile(tb testing.TB, name string, dt []byte) []instructions.Stage {
	tb.Helper()
	source := llb.NewSourceMap(nil, name, "Dockerfile", dt)
	source.Definition = &llb.Definition{} // no LLB state behind the source: it is read from disk
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{BuildArgs: map[string]string{"VERSION": "test"}},
		SourceMap:    source,
		MetaResolver: offlineImages{},
	})
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	if res.Error != nil {
		tb.Errorf("%s: %s", name, res.Error.Message)
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		tb.Errorf("%s:%d: %s: %s (%s)", name, line, w.RuleName, w.Detail, w.URL)
	}
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return stages
}

// TestDockerfile lints the production Dockerfile and checks the shape the
// chart relies on: a static build on the Go of go.mod's toolchain line,
// distroless nonroot at run time, both pinned by digest, a numeric non-root
// user, port 8088, DATA_DIR=/data as a volume, the OCI labels, the binary as
// entrypoint.
func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	dt, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages := lintDockerfile(t, "Dockerfile", dt)
	if len(stages) != 2 {
		t.Fatalf("want a build stage and a runtime stage, got %d stages", len(stages))
	}
	checkPinnedImages(t, "Dockerfile", stages)
	// The image's Go is the one CI tests and govulncheck judges: go.mod's
	// toolchain (the official image sets GOTOOLCHAIN=local, so it would
	// refuse an older one and never fetch a newer one).
	want := goToolchain(t, filepath.Join(root, "go.mod"))
	if m := goImageRE.FindStringSubmatch(stages[0].BaseName); m == nil {
		t.Errorf("build stage FROM %s, want golang:%s[-<variant>]@sha256:<digest>", stages[0].BaseName, want)
	} else if m[1] != want {
		t.Errorf("build stage FROM %s: Go %s, but go.mod's toolchain is go%s: move them together", stages[0].BaseName, m[1], want)
	}
	if got, _, _ := strings.Cut(stages[1].BaseName, "@"); got != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("runtime stage FROM %s, want gcr.io/distroless/static-debian12:nonroot", got)
	}
	text := string(dt)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "ARG VERSION"} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile does not contain %q", want)
		}
	}

	var user, entrypoint string
	var exposed, volumes []string
	env := map[string]string{}
	labels := map[string]string{}
	for _, cmd := range stages[1].Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.VolumeCommand:
			volumes = append(volumes, c.Volumes...)
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = kv.Value
			}
		case *instructions.LabelCommand:
			for _, kv := range c.Labels {
				labels[kv.Key] = strings.Trim(kv.Value, `"`)
			}
		case *instructions.EntrypointCommand:
			if !c.PrependShell && len(c.CmdLine) == 1 {
				entrypoint = c.CmdLine[0]
			}
		}
	}
	if user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") || !isNumericUser(user) {
		t.Errorf("USER %q: want a numeric non-root user, so that runAsNonRoot can be verified", user)
	}
	if strings.Join(exposed, ",") != "8088" {
		t.Errorf("EXPOSE %v, want 8088", exposed)
	}
	if env["DATA_DIR"] != "/data" || strings.Join(volumes, ",") != "/data" {
		t.Errorf("want DATA_DIR=/data declared as the one VOLUME, got DATA_DIR=%q VOLUME %v", env["DATA_DIR"], volumes)
	}
	for _, l := range []string{"title", "description", "source", "version", "revision", "created"} {
		if labels["org.opencontainers.image."+l] == "" {
			t.Errorf("no org.opencontainers.image.%s label", l)
		}
	}
	if entrypoint == "" {
		t.Error("ENTRYPOINT is not the binary in exec form")
	}
}

// goImageRE is the official Go image at a full Go version, with an
// optional variant (bookworm, alpine3.22, ...): its version is group 1.
var goImageRE = regexp.MustCompile(`^(?:docker\.io/)?(?:library/)?golang:(\d+\.\d+\.\d+)(?:-[a-z0-9.]+)?@sha256:[0-9a-f]{64}$`)

// digestRE ends an image reference pinned by digest.
var digestRE = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)

// checkPinnedImages fails for every stage built FROM an image (not FROM an
// earlier stage, nor scratch) that has no digest: a tag alone can move
// under a release. Dependabot updates tag and digest together.
func checkPinnedImages(t *testing.T, name string, stages []instructions.Stage) {
	t.Helper()
	earlier := map[string]bool{}
	for i, st := range stages {
		base := st.BaseName
		switch {
		case earlier[strings.ToLower(base)], base == "scratch":
		case !digestRE.MatchString(base):
			t.Errorf("%s: stage %d FROM %s is not pinned by digest (image:tag@sha256:...)", name, i, base)
		case !strings.Contains(path.Base(strings.SplitN(base, "@", 2)[0]), ":"):
			t.Errorf("%s: stage %d FROM %s has a digest but no tag: keep the tag, for readers and for Dependabot", name, i, base)
		}
		if st.Name != "" {
			earlier[strings.ToLower(st.Name)] = true
		}
	}
}

func isNumericUser(u string) bool {
	for _, part := range strings.Split(u, ":") {
		if part == "" {
			return false
		}
		for _, c := range part {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// TestDockerignore checks that the build context holds what the Dockerfile
// copies and leaves out local state and the rest of the repository.
func TestDockerignore(t *testing.T) {
	root := repoRoot(t)
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(path string) bool {
		m, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, in := range []string{"go.mod", "go.sum", "cmd/pageviews/main.go", "internal/app/worker.go", "internal/config/config.go"} {
		if excluded(in) {
			t.Errorf(".dockerignore leaves out %s, which the build needs", in)
		}
	}
	for _, out := range []string{".git/HEAD", "bin/pageviews", "data/state/MANIFEST", "deploy/helm/pageviews/values.yaml",
		"internal/config/config_test.go", "e2e/worker_test.go", ".cache/k8s-schemas/x.json", "pageview.test"} {
		if !excluded(out) {
			t.Errorf(".dockerignore lets %s into the build context", out)
		}
	}
	// Every file the binary is built from (its packages in this module, with
	// any embedded files) must reach the build.
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$.Dir}}/{{.}}
{{end}}{{end}}{{end}}`, "./cmd/pageviews")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./cmd/pageviews: %v", err)
	}
	files := strings.Fields(string(out))
	if len(files) < 10 {
		t.Fatalf("go list found only %d source files of ./cmd/pageviews", len(files))
	}
	// ... and be copied into the build stage.
	dt, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var copied []string
	for _, cmd := range lintDockerfile(t, "Dockerfile", dt)[0].Commands {
		if c, ok := cmd.(*instructions.CopyCommand); ok && c.From == "" {
			copied = append(copied, c.SourcePaths...)
		}
	}
	for _, f := range append(files, filepath.Join(root, "go.sum")) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		rel = filepath.ToSlash(rel)
		if excluded(rel) {
			t.Errorf(".dockerignore leaves out %s, which ./cmd/pageviews is built from", rel)
		}
		in := false
		for _, src := range copied {
			in = in || rel == src || strings.HasPrefix(rel, strings.TrimSuffix(src, "/")+"/")
		}
		if !in {
			t.Errorf("the Dockerfile's build stage copies %v, not %s", copied, rel)
		}
	}
}

// TestTiltDockerfile lints the dev image the Tiltfile builds inline.
func TestTiltDockerfile(t *testing.T) {
	tl := runTiltfile(t)
	if len(tl.dockerBuilds) == 0 || tl.dockerBuilds[0].dockerfileContents == "" {
		t.Skip("the Tiltfile builds from a Dockerfile on disk, which TestTiltfile checks")
	}
	lintDockerfile(t, "Tiltfile (dockerfile_contents)", []byte(tl.dockerBuilds[0].dockerfileContents))
}
