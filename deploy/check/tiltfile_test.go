package check

import (
	"fmt"
	"maps"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
	"gopkg.in/yaml.v3"
)

// tilt records what the Tiltfile asked of Tilt. The stubs below accept the
// parameters Tilt's builtins of the same name accept (so a misspelt keyword
// fails here as it would in `tilt up`), check the paths they are given, and
// record the rest for the assertions of TestTiltfile.
type tilt struct {
	tb testing.TB

	locals         []string
	localResources []localResource
	dockerBuilds   []dockerBuild
	k8sYAMLFiles   []string // files applied
	objects        []map[string]any
	helmCalls      []helmCall
	k8sResources   []k8sResource
	readFiles      []string
	listDirs       []string
}

type localResource struct {
	name, cmd string
	deps      []string
}

type dockerBuild struct {
	ref, context, dockerfile, dockerfileContents string
	syncs                                        [][2]string
	runs                                         []string
}

type helmCall struct {
	chart, name string
	values      []string
	set         []string
}

type k8sResource struct {
	workload     string
	portForwards []int
	hosts        []string // the host each forward binds, "" for Tilt's default (localhost)
	deps         []string
}

// blob is Tilt's Blob: text that str() returns.
type blob struct{ text string }

func (b blob) String() string        { return b.text }
func (b blob) Type() string          { return "blob" }
func (b blob) Freeze()               {}
func (b blob) Truth() starlark.Bool  { return b.text != "" }
func (b blob) Hash() (uint32, error) { return starlark.String(b.text).Hash() }

// portForward is Tilt's port_forward() result.
type portForward struct {
	local, container int
	host             string
}

func (p portForward) String() string {
	return fmt.Sprintf("port_forward(%d, %d)", p.local, p.container)
}
func (p portForward) Type() string          { return "port_forward" }
func (p portForward) Freeze()               {}
func (p portForward) Truth() starlark.Bool  { return true }
func (p portForward) Hash() (uint32, error) { return uint32(p.local), nil }

// liveUpdateStep is sync() or run().
type liveUpdateStep struct {
	kind string
	args [2]string
}

func (s liveUpdateStep) String() string        { return s.kind + "(" + s.args[0] + ")" }
func (s liveUpdateStep) Type() string          { return "live_update_" + s.kind + "_step" }
func (s liveUpdateStep) Freeze()               {}
func (s liveUpdateStep) Truth() starlark.Bool  { return true }
func (s liveUpdateStep) Hash() (uint32, error) { return starlark.String(s.args[0]).Hash() }

// builtinFunc is the Go side of a Starlark builtin.
type builtinFunc func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)

// builtins returns the names the Tiltfile finds predeclared: the stubs of
// Tilt's builtins and of its os module.
func (tl *tilt) builtins() starlark.StringDict {
	osPath := starlarkstruct.FromStringDict(starlarkstruct.Default, newBuiltins(map[string]builtinFunc{
		"basename": tl.basename,
		"join":     tl.join,
		"exists":   tl.exists,
	}))
	osModule := newBuiltins(map[string]builtinFunc{"getenv": tl.getenv})
	osModule["path"] = osPath

	globals := newBuiltins(map[string]builtinFunc{
		"version_settings":   tl.versionSettings,
		"local":              tl.local,
		"local_resource":     tl.localResource,
		"docker_build":       tl.dockerBuild,
		"sync":               tl.sync,
		"run":                tl.run,
		"k8s_yaml":           tl.k8sYAML,
		"helm":               tl.helm,
		"listdir":            tl.listdir,
		"read_file":          tl.readFile,
		"encode_yaml":        tl.encodeYAML,
		"encode_yaml_stream": tl.encodeYAMLStream,
		"port_forward":       tl.portForward,
		"k8s_resource":       tl.k8sResource,
	})
	globals["os"] = starlarkstruct.FromStringDict(starlarkstruct.Default, osModule)
	return globals
}

// newBuiltins makes each function a Starlark builtin of its name.
func newBuiltins(fns map[string]builtinFunc) starlark.StringDict {
	d := make(starlark.StringDict, len(fns))
	for name, f := range fns {
		d[name] = starlark.NewBuiltin(name, f)
	}
	return d
}

// basename is os.path.basename.
func (tl *tilt) basename(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p); err != nil {
		return nil, err
	}
	return starlark.String(filepath.Base(p)), nil
}

// join is os.path.join.
func (tl *tilt) join(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, _ []starlark.Tuple) (starlark.Value, error) {
	parts := make([]string, len(args))
	for i, a := range args {
		s, ok := starlark.AsString(a)
		if !ok {
			return nil, fmt.Errorf("join: want strings")
		}
		parts[i] = s
	}
	return starlark.String(filepath.Join(parts...)), nil
}

// exists is os.path.exists, for paths relative to the repository's root.
func (tl *tilt) exists(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p); err != nil {
		return nil, err
	}
	_, err := os.Stat(inRepo(tl.tb, p))
	return starlark.Bool(err == nil), nil
}

// getenv is os.getenv in an empty environment, as on a fresh machine.
func (tl *tilt) getenv(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var key string
	var def starlark.Value = starlark.None
	if err := starlark.UnpackArgs(b.Name(), args, kw, "key", &key, "default?", &def); err != nil {
		return nil, err
	}
	return def, nil
}

// versionSettings is version_settings: it only checks its arguments.
func (tl *tilt) versionSettings(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var checkUpdates bool
	var constraint string
	return starlark.None, starlark.UnpackArgs(b.Name(), args, kw, "check_updates?", &checkUpdates, "constraint?", &constraint)
}

// local records the command and returns what it would print.
func (tl *tilt) local(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var cmd, cmdBat, dir string
	var quiet, echoOff bool
	var env *starlark.Dict
	if err := starlark.UnpackArgs(b.Name(), args, kw, "command", &cmd, "quiet?", &quiet, "command_bat?", &cmdBat, "echo_off?", &echoOff, "env?", &env, "dir?", &dir); err != nil {
		return nil, err
	}
	tl.locals = append(tl.locals, cmd)
	// Nothing runs: answer what the commands used here print.
	if cmd == "go env GOARCH" {
		return blob{"amd64\n"}, nil
	}
	return blob{""}, nil
}

// localResource records a local_resource: its name, command and deps.
func (tl *tilt) localResource(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var name string
	var cmd, serveCmd, cmdBat, serveCmdBat, dir, serveDir starlark.Value
	var deps, ignore, resourceDeps, links, labels *starlark.List
	var triggerMode, readinessProbe starlark.Value
	var autoInit, allowParallel bool
	var env, serveEnv *starlark.Dict
	if err := starlark.UnpackArgs(b.Name(), args, kw, "name", &name, "cmd?", &cmd, "deps?", &deps,
		"trigger_mode?", &triggerMode, "resource_deps?", &resourceDeps, "ignore?", &ignore,
		"auto_init?", &autoInit, "serve_cmd?", &serveCmd, "cmd_bat?", &cmdBat, "serve_cmd_bat?", &serveCmdBat,
		"allow_parallel?", &allowParallel, "links?", &links, "labels?", &labels, "env?", &env,
		"serve_env?", &serveEnv, "readiness_probe?", &readinessProbe, "dir?", &dir, "serve_dir?", &serveDir); err != nil {
		return nil, err
	}
	c, _ := starlark.AsString(cmd)
	tl.localResources = append(tl.localResources, localResource{name: name, cmd: c, deps: strings_(deps)})
	return starlark.None, nil
}

// dockerBuild records a docker_build with its live update steps.
func (tl *tilt) dockerBuild(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var ref, context, dockerfile, dockerfileContents, target, ssh, network, secret, extraTag, platform string
	var buildArgs *starlark.Dict
	var liveUpdate, ignore, only, entrypoint, containerArgs, cacheFrom, extraHosts *starlark.List
	var matchInEnvVars, pull bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "ref", &ref, "context?", &context,
		"build_args?", &buildArgs, "dockerfile?", &dockerfile, "dockerfile_contents?", &dockerfileContents,
		"live_update?", &liveUpdate, "match_in_env_vars?", &matchInEnvVars, "ignore?", &ignore, "only?", &only,
		"entrypoint?", &entrypoint, "target?", &target, "ssh?", &ssh, "network?", &network, "secret?", &secret,
		"extra_tag?", &extraTag, "container_args?", &containerArgs, "cache_from?", &cacheFrom, "pull?", &pull,
		"platform?", &platform, "extra_hosts?", &extraHosts); err != nil {
		return nil, err
	}
	if context == "" {
		context = "."
	}
	d := dockerBuild{ref: ref, context: context, dockerfile: dockerfile, dockerfileContents: dockerfileContents}
	if liveUpdate != nil {
		for i := 0; i < liveUpdate.Len(); i++ {
			step, ok := liveUpdate.Index(i).(liveUpdateStep)
			if !ok {
				return nil, fmt.Errorf("docker_build: live_update[%d] is %s, not a live update step", i, liveUpdate.Index(i).Type())
			}
			if step.kind == "sync" {
				d.syncs = append(d.syncs, step.args)
			} else {
				d.runs = append(d.runs, step.args[0])
			}
		}
	}
	tl.dockerBuilds = append(tl.dockerBuilds, d)
	return starlark.None, nil
}

// sync is the live update step sync().
func (tl *tilt) sync(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var local, remote string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "local_path", &local, "remote_path", &remote); err != nil {
		return nil, err
	}
	return liveUpdateStep{kind: "sync", args: [2]string{local, remote}}, nil
}

// run is the live update step run().
func (tl *tilt) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var trigger starlark.Value
	var echoOff bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "cmd", &cmd, "trigger?", &trigger, "echo_off?", &echoOff); err != nil {
		return nil, err
	}
	return liveUpdateStep{kind: "run", args: [2]string{cmd}}, nil
}

// k8sYAML records the files and objects given to k8s_yaml.
func (tl *tilt) k8sYAML(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var v starlark.Value
	var allowDuplicates bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "yaml", &v, "allow_duplicates?", &allowDuplicates); err != nil {
		return nil, err
	}
	return starlark.None, tl.k8sYAMLValue(v)
}

// helm records the chart, release name, values files and --set values.
func (tl *tilt) helm(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var chart, name, namespace, kubeVersion string
	var values, set starlark.Value
	var skipCRDs bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "pathToChartDir", &chart, "name?", &name,
		"namespace?", &namespace, "values?", &values, "set?", &set, "kube_version?", &kubeVersion,
		"skip_crds?", &skipCRDs); err != nil {
		return nil, err
	}
	h := helmCall{chart: chart, name: name, values: stringOrList(values), set: stringOrList(set)}
	tl.helmCalls = append(tl.helmCalls, h)
	return blob{"# helm template " + chart}, nil
}

// listdir records the directory and lists the files in it.
func (tl *tilt) listdir(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var dir string
	var recursive bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "directory", &dir, "recursive?", &recursive); err != nil {
		return nil, err
	}
	tl.listDirs = append(tl.listDirs, dir)
	entries, err := os.ReadDir(inRepo(tl.tb, dir))
	if err != nil {
		return nil, err
	}
	var files []starlark.Value
	for _, e := range entries {
		if !e.IsDir() {
			files = append(files, starlark.String(filepath.Join(inRepo(tl.tb, dir), e.Name())))
		}
	}
	return starlark.NewList(files), nil
}

// readFile records the file and returns its contents.
func (tl *tilt) readFile(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var path string
	var def starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "file_path", &path, "default?", &def); err != nil {
		return nil, err
	}
	tl.readFiles = append(tl.readFiles, path)
	data, err := os.ReadFile(inRepo(tl.tb, path))
	if err != nil {
		return nil, err
	}
	return blob{string(data)}, nil
}

// encodeYAML is encode_yaml.
func (tl *tilt) encodeYAML(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var obj starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "obj", &obj); err != nil {
		return nil, err
	}
	out, err := yaml.Marshal(toGo(obj))
	if err != nil {
		return nil, err
	}
	return blob{string(out)}, nil
}

// encodeYAMLStream is encode_yaml_stream.
func (tl *tilt) encodeYAMLStream(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var objs *starlark.List
	if err := starlark.UnpackArgs(b.Name(), args, kw, "objs", &objs); err != nil {
		return nil, err
	}
	var docs []string
	for i := 0; i < objs.Len(); i++ {
		out, err := yaml.Marshal(toGo(objs.Index(i)))
		if err != nil {
			return nil, err
		}
		docs = append(docs, string(out))
	}
	return blob{strings.Join(docs, "---\n")}, nil
}

// portForward is port_forward().
func (tl *tilt) portForward(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var local int
	var container starlark.Value = starlark.None
	var name, linkPath, host string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "local_port", &local, "container_port?", &container,
		"name?", &name, "link_path?", &linkPath, "host?", &host); err != nil {
		return nil, err
	}
	c := local
	if container != starlark.None {
		n, err := starlark.AsInt32(container)
		if err != nil {
			return nil, err
		}
		c = n
	}
	return portForward{local, c, host}, nil
}

// k8sResource records a k8s_resource: its workload, local ports and deps.
func (tl *tilt) k8sResource(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var workload, newName, discovery string
	var portForwards, links, labels, triggerMode, podReadiness starlark.Value
	var extraSelectors, resourceDeps, objects *starlark.List
	var autoInit bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "workload?", &workload, "new_name?", &newName,
		"port_forwards?", &portForwards, "extra_pod_selectors?", &extraSelectors, "trigger_mode?", &triggerMode,
		"resource_deps?", &resourceDeps, "objects?", &objects, "auto_init?", &autoInit,
		"pod_readiness?", &podReadiness, "links?", &links, "labels?", &labels,
		"discovery_strategy?", &discovery); err != nil {
		return nil, err
	}
	r := k8sResource{workload: workload, deps: strings_(resourceDeps)}
	if l, ok := portForwards.(*starlark.List); ok {
		for i := 0; i < l.Len(); i++ {
			switch pf := l.Index(i).(type) {
			case portForward:
				r.portForwards = append(r.portForwards, pf.local)
				r.hosts = append(r.hosts, pf.host)
			case starlark.Int:
				n, _ := pf.Int64()
				r.portForwards = append(r.portForwards, int(n))
				r.hosts = append(r.hosts, "")
			default:
				return nil, fmt.Errorf("k8s_resource: port forward %s", pf)
			}
		}
	}
	tl.k8sResources = append(tl.k8sResources, r)
	return starlark.None, nil
}

func (tl *tilt) k8sYAMLValue(v starlark.Value) error {
	switch x := v.(type) {
	case starlark.String:
		tl.k8sYAMLFiles = append(tl.k8sYAMLFiles, string(x))
	case *starlark.List:
		for i := 0; i < x.Len(); i++ {
			if err := tl.k8sYAMLValue(x.Index(i)); err != nil {
				return err
			}
		}
	case blob:
		if strings.HasPrefix(x.text, "# helm template ") {
			return nil // the chart, checked through helmCalls
		}
		dec := yaml.NewDecoder(strings.NewReader(x.text))
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); err != nil {
				if err.Error() == "EOF" {
					return nil
				}
				return fmt.Errorf("k8s_yaml: %w", err)
			}
			if obj != nil {
				tl.objects = append(tl.objects, obj)
			}
		}
	default:
		return fmt.Errorf("k8s_yaml: unsupported %s", v.Type())
	}
	return nil
}

func strings_(l *starlark.List) []string {
	if l == nil {
		return nil
	}
	var out []string
	for i := 0; i < l.Len(); i++ {
		if s, ok := starlark.AsString(l.Index(i)); ok {
			out = append(out, s)
		}
	}
	return out
}

func stringOrList(v starlark.Value) []string {
	if s, ok := starlark.AsString(v); ok {
		return []string{s}
	}
	if l, ok := v.(*starlark.List); ok {
		return strings_(l)
	}
	return nil
}

// toGo turns Starlark values into what yaml.Marshal takes.
func toGo(v starlark.Value) any {
	switch x := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.Bool:
		return bool(x)
	case starlark.Int:
		n, _ := x.Int64()
		return n
	case starlark.Float:
		return float64(x)
	case starlark.String:
		return string(x)
	case blob:
		return x.text
	case *starlark.List:
		out := make([]any, x.Len())
		for i := range out {
			out[i] = toGo(x.Index(i))
		}
		return out
	case starlark.Tuple:
		out := make([]any, len(x))
		for i := range x {
			out[i] = toGo(x[i])
		}
		return out
	case *starlark.Dict:
		out := map[string]any{}
		for _, item := range x.Items() {
			k, _ := starlark.AsString(item[0])
			out[k] = toGo(item[1])
		}
		return out
	}
	return v.String()
}

// runTiltfile executes the Tiltfile in Tilt's Starlark dialect (top-level
// loops, sets, global reassignment) with the stubs.
func runTiltfile(t *testing.T) *tilt {
	t.Helper()
	root := repoRoot(t)
	src, err := os.ReadFile(filepath.Join(root, "Tiltfile"))
	if err != nil {
		t.Fatal(err)
	}
	tl := &tilt{tb: t}
	thread := &starlark.Thread{
		Name:  "Tiltfile",
		Print: func(_ *starlark.Thread, msg string) { t.Log("Tiltfile:", msg) },
		Load: func(_ *starlark.Thread, module string) (starlark.StringDict, error) {
			return nil, fmt.Errorf("load(%q): the Tiltfile must not need extensions fetched from the network", module)
		},
	}
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	if _, err := starlark.ExecFileOptions(opts, thread, "Tiltfile", src, tl.builtins()); err != nil {
		if ee, ok := err.(*starlark.EvalError); ok {
			t.Fatalf("Tiltfile: %s", ee.Backtrace())
		}
		t.Fatalf("Tiltfile: %v", err)
	}
	return tl
}

// TestTiltfile executes the Tiltfile and checks what it asks Tilt to do: the
// compile step builds a static binary where the image picks it up, live
// update syncs that binary, every file and directory named exists, the Helm
// --set keys are values of the chart, and the port forwards and resources
// name workloads that exist.
func TestTiltfile(t *testing.T) {
	tl := runTiltfile(t)
	binary := checkCompileStep(t, tl)
	checkDockerBuild(t, tl, binary)
	checkTiltfilePaths(t, tl)
	h := checkHelmCall(t, tl)
	checkK8sResources(t, tl, h)
	checkTiltObservability(t, tl, h)
	checkTiltImages(t, tl)

	// Hand the objects and the chart's settings to `make lint-deploy`, which
	// validates them with kubeconform and renders the chart as Tilt would.
	if dir := os.Getenv("PAGEVIEWS_TILT_OUT"); dir != "" {
		writeTiltOutputs(t, dir, tl)
	}
}

// checkCompileStep checks the local_resource that compiles the worker and
// returns the binary it builds.
func checkCompileStep(t *testing.T, tl *tilt) string {
	if len(tl.localResources) == 0 {
		t.Fatal("no local_resource compiles the worker")
	}
	compile := tl.localResources[0]
	if !strings.Contains(compile.cmd, "CGO_ENABLED=0") || !strings.Contains(compile.cmd, "go build") {
		t.Errorf("local_resource %s: %q is not a static go build", compile.name, compile.cmd)
	}
	for _, d := range compile.deps {
		if _, err := os.Stat(inRepo(t, d)); err != nil {
			t.Errorf("local_resource %s watches %s, which does not exist", compile.name, d)
		}
	}
	out := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(compile.cmd)
	if out == nil {
		t.Fatalf("compile command %q names no output (-o)", compile.cmd)
	}
	return out[1]
}

// checkDockerBuild checks the image the compiled binary feeds and its live
// update.
func checkDockerBuild(t *testing.T, tl *tilt, binary string) {
	if len(tl.dockerBuilds) != 1 {
		t.Fatalf("want one docker_build, got %d", len(tl.dockerBuilds))
	}
	db := tl.dockerBuilds[0]
	if db.ref != "pageviews" {
		t.Errorf("docker_build ref %q: the chart's image.repository is set to pageviews", db.ref)
	}
	contextCreated := false
	for _, c := range tl.locals {
		if c == "mkdir -p "+db.context {
			contextCreated = true
		}
	}
	if _, err := os.Stat(inRepo(t, db.context)); err != nil && !contextCreated {
		t.Errorf("docker_build context %s does not exist and the Tiltfile does not create it", db.context)
	}
	if rel, err := filepath.Rel(db.context, binary); err != nil || strings.HasPrefix(rel, "..") {
		t.Errorf("the compiled binary %s is outside the docker_build context %s", binary, db.context)
	}
	if db.dockerfileContents == "" {
		mustExist(t, filepath.Join(db.context, db.dockerfile), false, "docker_build dockerfile")
	}
	synced := false
	for _, s := range db.syncs {
		if s[0] == binary {
			synced = true
		}
		if !strings.HasPrefix(s[1], "/") {
			t.Errorf("live_update sync target %q is not absolute", s[1])
		}
	}
	if !synced {
		t.Errorf("live_update does not sync the compiled binary %s (syncs: %v)", binary, db.syncs)
	}
	if len(db.runs) == 0 {
		t.Error("live_update syncs the binary but runs nothing to restart it")
	}
}

// checkTiltfilePaths checks that the files and directories the Tiltfile
// names exist, and adds the objects of its k8s_yaml files to tl.objects.
func checkTiltfilePaths(t *testing.T, tl *tilt) {
	for _, f := range tl.k8sYAMLFiles {
		mustExist(t, f, false, "k8s_yaml")
		tl.objects = append(tl.objects, decodeAll(t, f)...)
	}
	for _, f := range tl.readFiles {
		mustExist(t, f, false, "read_file")
	}
	for _, d := range tl.listDirs {
		mustExist(t, d, true, "listdir")
	}
}

// checkHelmCall checks the chart and the values the Tiltfile sets, and
// returns the one helm() call.
func checkHelmCall(t *testing.T, tl *tilt) helmCall {
	if len(tl.helmCalls) != 1 {
		t.Fatalf("want one helm() call, got %d", len(tl.helmCalls))
	}
	h := tl.helmCalls[0]
	mustExist(t, filepath.Join(h.chart, "Chart.yaml"), false, "helm chart")
	for _, v := range h.values {
		mustExist(t, v, false, "helm values")
	}
	var values map[string]any
	readYAML(t, filepath.Join(h.chart, "values.yaml"), &values)
	for _, kv := range h.set {
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			t.Errorf("helm set %q is not key=value", kv)
			continue
		}
		if !hasKey(values, strings.Split(key, ".")) {
			t.Errorf("helm set %q: %s is not a value of %s/values.yaml", kv, key, h.chart)
		}
	}
	return h
}

// checkK8sResources checks that the resources and their dependencies name
// workloads or local resources, and where the ports are forwarded.
func checkK8sResources(t *testing.T, tl *tilt, h helmCall) {
	workloads := map[string]bool{h.name: true}
	for _, obj := range tl.objects {
		switch obj["kind"] {
		case "Deployment", "StatefulSet", "Job", "DaemonSet", "Pod":
			meta, _ := obj["metadata"].(map[string]any)
			name, _ := meta["name"].(string)
			workloads[name] = true
		}
	}
	forwarded := map[int]string{}
	for _, r := range tl.k8sResources {
		if !workloads[r.workload] {
			t.Errorf("k8s_resource(%q) names no workload; have %v", r.workload, keys(workloads))
		}
		for i, p := range r.portForwards {
			forwarded[p] = r.workload
			// Grafana lets any visitor in as an admin: nothing is forwarded
			// beyond the developer's own machine.
			if h := r.hosts[i]; h != "" && h != "localhost" && h != "127.0.0.1" {
				t.Errorf("k8s_resource(%q) forwards port %d on host %q: keep Tilt's default, localhost", r.workload, p, h)
			}
		}
		for _, d := range r.deps {
			if !workloads[d] && !hasLocalResource(tl, d) {
				t.Errorf("k8s_resource(%q) depends on unknown resource %q", r.workload, d)
			}
		}
	}
	if forwarded[8088] != h.name {
		t.Errorf("port 8088 is forwarded to %q, want the worker (%s)", forwarded[8088], h.name)
	}
	if forwarded[3000] != "grafana" {
		t.Errorf("port 3000 is forwarded to %q, want grafana", forwarded[3000])
	}
	if forwarded[16686] != "jaeger" {
		t.Errorf("port 16686 is forwarded to %q, want jaeger", forwarded[16686])
	}
}

func hasLocalResource(tl *tilt, name string) bool {
	for _, r := range tl.localResources {
		if r.name == name {
			return true
		}
	}
	return false
}

func hasKey(m map[string]any, path []string) bool {
	v, ok := m[path[0]]
	if !ok {
		return false
	}
	if len(path) == 1 {
		return true
	}
	sub, ok := v.(map[string]any)
	return ok && hasKey(sub, path[1:])
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func decodeAll(tb testing.TB, path string) []map[string]any {
	tb.Helper()
	f, err := os.Open(inRepo(tb, path))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if err.Error() == "EOF" {
				return out
			}
			tb.Fatalf("%s: %v", path, err)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
}

// writeTiltOutputs writes objects.yaml (what the Tiltfile generates itself),
// helm-args.txt (the chart's helm template arguments, one per line) and
// Dockerfile.dev (the dev image's Dockerfile).
func writeTiltOutputs(tb testing.TB, dir string, tl *tilt) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	var docs []string
	for _, obj := range tl.objects {
		b, err := yaml.Marshal(obj)
		if err != nil {
			tb.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	write("objects.yaml", strings.Join(docs, "---\n"))
	h := tl.helmCalls[0]
	args := []string{h.name, h.chart}
	for _, v := range h.values {
		args = append(args, "--values", v)
	}
	for _, s := range h.set {
		args = append(args, "--set", s)
	}
	write("helm-args.txt", strings.Join(args, "\n")+"\n")
	write("Dockerfile.dev", tl.dockerBuilds[0].dockerfileContents)
}

// tiltServices lists the Services the Tiltfile deploys (its own objects and
// deploy/kafka's) with their ports.
func tiltServices(tl *tilt) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, o := range byKind(tl.objects, "Service") {
		ports := map[string]bool{}
		for _, p := range list(get(o, "spec", "ports")) {
			ports[str(get(p, "port"))] = true
		}
		out[str(get(o, "metadata", "name"))] = ports
	}
	return out
}

// checkTiltObservability checks that whatever the telemetry points at is
// deployed by the Tiltfile: every Grafana data source in its ConfigMaps (the
// repository's provisioning, shared with docker-compose.yml) and the
// workers' OTLP endpoint name a Service and one of its ports, and Jaeger
// runs deploy/jaeger/config.yaml.
func checkTiltObservability(t *testing.T, tl *tilt, h helmCall) {
	services := tiltServices(tl)
	reaches := func(what, raw string) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" || u.Port() == "" {
			t.Errorf("%s: %q is not http://<service>:<port>", what, raw)
			return
		}
		ports, ok := services[u.Hostname()]
		if !ok {
			t.Errorf("%s points at %s, a Service the Tiltfile never deploys (has %v)", what, u.Host, slices.Sorted(maps.Keys(services)))
		} else if !ports[u.Port()] {
			t.Errorf("%s points at port %s of Service %s, which does not expose it", what, u.Port(), u.Hostname())
		}
	}
	datasources := 0
	for _, cm := range byKind(tl.objects, "ConfigMap") {
		data, _ := get(cm, "data").(map[string]any)
		for key, v := range data {
			var ds struct {
				Datasources []struct{ Name, URL string } `yaml:"datasources"`
			}
			if !strings.HasSuffix(key, ".yml") && !strings.HasSuffix(key, ".yaml") || yaml.Unmarshal([]byte(str(v)), &ds) != nil {
				continue
			}
			for _, d := range ds.Datasources {
				datasources++
				reaches("Grafana data source "+d.Name+" (ConfigMap "+str(get(cm, "metadata", "name"))+")", d.URL)
			}
		}
	}
	if datasources == 0 {
		t.Error("no ConfigMap of the Tiltfile provisions Grafana data sources")
	}
	for _, kv := range h.set {
		if key, value, _ := strings.Cut(kv, "="); key == "otel.endpoint" && value != "" {
			reaches("the workers' otel.endpoint", value)
		}
	}

	// Jaeger runs the repository's config, from a ConfigMap holding it.
	config, err := os.ReadFile(inRepo(t, "deploy/jaeger/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var jaeger map[string]any
	for _, d := range byKind(tl.objects, "Deployment") {
		if str(get(d, "metadata", "name")) == "jaeger" {
			jaeger = d
		}
	}
	if jaeger == nil {
		t.Fatal("the Tiltfile deploys no jaeger Deployment, which Grafana's Jaeger data source needs")
	}
	pod := get(jaeger, "spec", "template", "spec")
	c := get(pod, "containers", 0)
	if image := str(get(c, "image")); !regexp.MustCompile(`^jaegertracing/jaeger:2\.\d+\.\d+$`).MatchString(image) {
		t.Errorf("jaeger image %q: want jaegertracing/jaeger:2.x.y", image)
	}
	args := fmt.Sprint(get(c, "args"))
	runs := false
	for _, m := range list(get(c, "volumeMounts")) {
		for _, v := range list(get(pod, "volumes")) {
			if str(get(v, "name")) != str(get(m, "name")) || get(v, "configMap") == nil {
				continue
			}
			cm := named(tl.objects, "ConfigMap", str(get(v, "configMap", "name")))
			data, _ := get(cm, "data").(map[string]any)
			for key, content := range data {
				if str(content) == string(config) && args == fmt.Sprint([]any{"--config", path.Join(str(get(m, "mountPath")), key)}) {
					runs = true
				}
			}
		}
	}
	if !runs {
		t.Errorf("jaeger (args %s) does not run deploy/jaeger/config.yaml from a mounted ConfigMap", args)
	}
}

// checkTiltImages checks that an image the Tiltfile (or deploy/kafka) runs
// and docker-compose.yml runs too is the same version in both.
func checkTiltImages(t *testing.T, tl *tilt) {
	compose := map[string]string{}
	for _, s := range loadCompose(t, "*").Services {
		if repo, tag := splitImage(s.Image); tag != "" && s.Build == nil {
			compose[repo] = tag
		}
	}
	for _, o := range tl.objects {
		pod := get(o, "spec", "template", "spec")
		for _, c := range append(list(get(pod, "containers")), list(get(pod, "initContainers"))...) {
			image := str(get(c, "image"))
			repo, tag := splitImage(image)
			if want, ok := compose[repo]; ok && tag != want {
				t.Errorf("%s %s runs %s, but docker-compose.yml runs %s:%s", o["kind"], str(get(o, "metadata", "name")), image, repo, want)
			}
		}
	}
}

// splitImage splits an image reference into its repository and its tag (with
// any digest): registry.example.com:5000/team/app:1.2@sha256:... gives
// registry.example.com:5000/team/app and 1.2@sha256:....
func splitImage(image string) (repo, tag string) {
	name, digest, _ := strings.Cut(image, "@")
	slash := strings.LastIndex(name, "/")
	if colon := strings.LastIndex(name, ":"); colon > slash {
		repo, tag = name[:colon], name[colon+1:]
	} else {
		repo = name
	}
	if digest != "" {
		tag += "@" + digest
	}
	return repo, tag
}
