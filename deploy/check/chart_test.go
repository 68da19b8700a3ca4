package check

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rendering is one helm template run of one values set: the directory
// `make lint-deploy` wrote it to names the Kubernetes version helm was told
// (--kube-version) and whether the Prometheus Operator's API was there
// (--api-versions monitoring.coreos.com/v1).
type rendering struct {
	dir        string // v1.37.2, v1.29.6, v1.37.2-monitoring
	file       string // chart-default.yaml, chart-<ci values set>.yaml
	kube       string // the Kubernetes version: 1.37.2
	minor      int    // 1.<minor> of it
	monitoring bool
	objs       []map[string]any
}

func (r rendering) String() string { return r.dir + "/" + r.file }

// renderingDirRE matches the directories of PAGEVIEWS_RENDERED_DIR.
var renderingDirRE = regexp.MustCompile(`^v(1\.(\d+)\.\d+)(-monitoring)?$`)

// renderedCharts reads the manifests `make lint-deploy` rendered with
// `helm template` (one file per values set, one directory per Kubernetes
// version and API set) from PAGEVIEWS_RENDERED_DIR.
func renderedCharts(t *testing.T) []rendering {
	t.Helper()
	root := os.Getenv("PAGEVIEWS_RENDERED_DIR")
	if root == "" {
		skipOrFail(t, "PAGEVIEWS_RENDERED_DIR is not set: run `make -f deploy/deploy.mk lint-deploy`, which renders the chart first")
	}
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []rendering
	for _, d := range dirs {
		m := renderingDirRE.FindStringSubmatch(d.Name())
		if !d.IsDir() || m == nil {
			continue
		}
		minor, _ := strconv.Atoi(m[2])
		files, err := filepath.Glob(filepath.Join(root, d.Name(), "chart-*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no chart-*.yaml in %s", filepath.Join(root, d.Name()))
		}
		for _, f := range files {
			out = append(out, rendering{dir: d.Name(), file: filepath.Base(f), kube: m[1], minor: minor, monitoring: m[3] != "", objs: decodeAll(t, f)})
		}
	}
	if len(out) == 0 {
		t.Fatalf("no v1.<minor>.<patch>[-monitoring] directory of rendered charts in %s", root)
	}
	return out
}

// get walks a decoded manifest: get(obj, "spec", "template", "spec").
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func byKind(objs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

func named(objs []map[string]any, kind, name string) map[string]any {
	for _, o := range byKind(objs, kind) {
		if str(get(o, "metadata", "name")) == name {
			return o
		}
	}
	return nil
}

// TestChart checks the rendered StatefulSet against the contracts the worker
// and the rebalance strategy depend on (deploy/README.md), for every values
// set lint-deploy renders.
func TestChart(t *testing.T) {
	for _, r := range renderedCharts(t) {
		t.Run(r.String(), func(t *testing.T) {
			objs := r.objs
			sets := byKind(objs, "StatefulSet")
			if len(sets) != 1 {
				t.Fatalf("want one StatefulSet, got %d", len(sets))
			}
			checkStatefulSet(t, objs, sets[0])
			checkPreStop(t, r, sets[0])
			checkRegistryValues(t, r.file, objs, sets[0])
			if r.file == "chart-default.yaml" {
				pdbs := byKind(objs, "PodDisruptionBudget")
				if len(pdbs) != 1 || str(get(pdbs[0], "spec", "maxUnavailable")) != "50%" {
					t.Errorf("default values: want one PodDisruptionBudget with maxUnavailable 50%%, got %v", pdbs)
				}
			}
		})
	}
}

// checkStatefulSet checks the StatefulSet sts among the rendered objects.
func checkStatefulSet(t *testing.T, objs []map[string]any, sts map[string]any) {
	spec := get(sts, "spec")
	pod := get(spec, "template", "spec")
	if got := str(get(spec, "podManagementPolicy")); got != "Parallel" {
		t.Errorf("podManagementPolicy %q, want Parallel", got)
	}
	headless := checkHeadlessService(t, objs, spec)
	worker := workerContainer(t, pod)
	envs := workerEnvVars(t, worker)
	checkWorkerEnv(t, envs, worker, headless)
	checkDataDir(t, envs, spec, worker)
	checkMountedFiles(t, envs, pod, worker)
	checkRegistry(t, envs)
	checkSecretRefs(t, objs, get(spec, "template"))
	checkShutdown(t, envs, pod)
	checkProbes(t, worker)
	checkSecurity(t, pod)
	checkMetrics(t, objs, pod, worker, envs.value)
}

// checkHeadlessService checks that the governing headless Service publishes
// not-ready pods, so that workers resolve each other while recovering, and
// returns its name.
func checkHeadlessService(t *testing.T, objs []map[string]any, spec any) string {
	headless := str(get(spec, "serviceName"))
	svc := named(objs, "Service", headless)
	if svc == nil || str(get(svc, "spec", "clusterIP")) != "None" || get(svc, "spec", "publishNotReadyAddresses") != true {
		t.Errorf("serviceName %q: want a headless Service with publishNotReadyAddresses", headless)
	}
	return headless
}

// workerContainer is the pod's container named worker.
func workerContainer(t *testing.T, pod any) map[string]any {
	var worker map[string]any
	for _, c := range list(get(pod, "containers")) {
		if str(get(c, "name")) == "worker" {
			worker, _ = c.(map[string]any)
		}
	}
	if worker == nil {
		t.Fatal("no container named worker")
	}
	return worker
}

// envVars is a container's environment: each variable's entry by name.
type envVars map[string]map[string]any

// value is the variable's literal value.
func (e envVars) value(name string) string { return str(e[name]["value"]) }

// fieldRef is the pod field the variable comes from.
func (e envVars) fieldRef(name string) string {
	return str(get(e[name], "valueFrom", "fieldRef", "fieldPath"))
}

// workerEnvVars reads the worker's environment, checking that no variable
// is set twice and that $(VAR) references only variables defined before.
func workerEnvVars(t *testing.T, worker map[string]any) envVars {
	envs := envVars{}
	var names []string
	for i, e := range list(worker["env"]) {
		em, _ := e.(map[string]any)
		name := str(em["name"])
		if _, dup := envs[name]; dup {
			t.Errorf("env %s is set twice", name)
		}
		// $(VAR) expands only variables defined earlier in the list.
		for _, ref := range regexp.MustCompile(`\$\(([A-Z0-9_]+)\)`).FindAllStringSubmatch(str(em["value"]), -1) {
			if _, ok := envs[ref[1]]; !ok {
				t.Errorf("env %d (%s) expands $(%s), which is not defined before it", i, name, ref[1])
			}
		}
		envs[name] = em
		names = append(names, name)
	}
	envReport(t, "the chart", names)
	return envs
}

// checkWorkerEnv checks the worker's identity, addresses, log format,
// brokers and credentials.
func checkWorkerEnv(t *testing.T, envs envVars, worker map[string]any, headless string) {
	if _, ok := envs["KAFKA_INSTANCE_ID"]; ok && envs.fieldRef("KAFKA_INSTANCE_ID") != "metadata.name" {
		t.Error("KAFKA_INSTANCE_ID must be the pod name (fieldRef metadata.name)")
	}
	if envs.fieldRef("POD_NAME") != "metadata.name" || envs.fieldRef("POD_NAMESPACE") != "metadata.namespace" {
		t.Error("POD_NAME and POD_NAMESPACE must come from the pod's metadata")
	}
	port := str(get(worker, "ports", 0, "containerPort"))
	wantURL := regexp.MustCompile(`^http://\$\(POD_NAME\)\.` + regexp.QuoteMeta(headless) + `\.\$\(POD_NAMESPACE\)\.svc(\.[a-z0-9.-]+)?:` + port + `$`)
	if !wantURL.MatchString(envs.value("ADVERTISED_URL")) {
		t.Errorf("ADVERTISED_URL=%q, want http://$(POD_NAME).%s.$(POD_NAMESPACE).svc:%s", envs.value("ADVERTISED_URL"), headless, port)
	}
	if envs.value("WEB_ADDR") != ":"+port {
		t.Errorf("WEB_ADDR=%q but the container port is %s", envs.value("WEB_ADDR"), port)
	}
	if envs.value("LOG_FORMAT") != "json" {
		t.Errorf("LOG_FORMAT=%q, want json", envs.value("LOG_FORMAT"))
	}
	if envs.value("KAFKA_BROKERS") == "" {
		t.Error("KAFKA_BROKERS is empty: every pod would start the embedded dev broker")
	}
	for _, secret := range []string{"KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME", "SCHEMA_REGISTRY_PASSWORD", "SCHEMA_REGISTRY_USERNAME"} {
		if e, ok := envs[secret]; ok && get(e, "valueFrom", "secretKeyRef", "name") == nil {
			t.Errorf("%s must come from a Secret (secretKeyRef)", secret)
		}
	}
}

// checkDataDir checks that DATA_DIR is on the volume claim template.
func checkDataDir(t *testing.T, envs envVars, spec any, worker map[string]any) {
	claim := str(get(spec, "volumeClaimTemplates", 0, "metadata", "name"))
	if envs.value("DATA_DIR") != "/data" || mountOf(worker, "/data") != claim || claim == "" {
		t.Errorf("DATA_DIR=%q must be /data, mounted from the volumeClaimTemplate %q", envs.value("DATA_DIR"), claim)
	}
}

// checkMountedFiles checks that the files the worker opens are mounted,
// read-only, from a Secret that projects them.
func checkMountedFiles(t *testing.T, envs envVars, pod any, worker map[string]any) {
	for _, v := range []string{"KAFKA_TLS_CA_FILE", "KAFKA_TLS_CERT_FILE", "KAFKA_TLS_KEY_FILE", "SCHEMA_REGISTRY_CA_FILE"} {
		path := envs.value(v)
		if path == "" {
			continue
		}
		vol := mountOf(worker, filepath.Dir(path))
		if vol == "" {
			t.Errorf("%s=%s is on no volume mount", v, path)
			continue
		}
		if !mountReadOnly(worker, filepath.Dir(path)) {
			t.Errorf("%s=%s: volume %s is mounted writable", v, path, vol)
		}
		found := false
		for _, pv := range list(get(pod, "volumes")) {
			if str(get(pv, "name")) != vol {
				continue
			}
			for _, item := range list(get(pv, "secret", "items")) {
				found = found || str(get(item, "path")) == filepath.Base(path)
			}
		}
		if !found {
			t.Errorf("%s=%s: volume %s projects no %s", v, path, vol, filepath.Base(path))
		}
	}
}

// checkShutdown checks that the kubelet's KILL comes after the preStop
// sleep and SHUTDOWN_TIMEOUT: the grace period counts from the start of the
// preStop hook.
func checkShutdown(t *testing.T, envs envVars, pod any) {
	timeout, err := time.ParseDuration(envs.value("SHUTDOWN_TIMEOUT"))
	if err != nil {
		t.Errorf("SHUTDOWN_TIMEOUT=%q: %v", envs.value("SHUTDOWN_TIMEOUT"), err)
	}
	sleep, _ := get(workerContainer(t, pod), "lifecycle", "preStop", "sleep", "seconds").(int)
	grace, _ := get(pod, "terminationGracePeriodSeconds").(int)
	if time.Duration(grace)*time.Second <= time.Duration(sleep)*time.Second+timeout {
		t.Errorf("terminationGracePeriodSeconds=%d is not above the preStop sleep (%ds) plus SHUTDOWN_TIMEOUT=%s", grace, sleep, timeout)
	}
}

// checkProbes checks the worker's probes and the time the startup probe
// allows for recovery.
func checkProbes(t *testing.T, worker map[string]any) {
	for probe, path := range map[string]string{"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/live"} {
		if got := str(get(worker, probe, "httpGet", "path")); got != path {
			t.Errorf("%s on %q, want %s", probe, got, path)
		}
	}
	period, _ := get(worker, "startupProbe", "periodSeconds").(int)
	failures, _ := get(worker, "startupProbe", "failureThreshold").(int)
	if budget := time.Duration(period*failures) * time.Second; budget < 30*time.Minute {
		t.Errorf("the startup probe allows %s for recovery, want at least 30m", budget)
	}
}

// checkSecurity checks the pod's and every container's security settings
// and that every container has resources.
func checkSecurity(t *testing.T, pod any) {
	if get(pod, "securityContext", "runAsNonRoot") != true {
		t.Error("the pod does not set runAsNonRoot")
	}
	if get(pod, "automountServiceAccountToken") != false {
		t.Error("the pod mounts a service account token it never uses")
	}
	containers := append(list(get(pod, "containers")), list(get(pod, "initContainers"))...)
	for _, c := range containers {
		sc := get(c, "securityContext")
		name := str(get(c, "name"))
		if get(sc, "allowPrivilegeEscalation") != false {
			t.Errorf("container %s allows privilege escalation", name)
		}
		if str(get(sc, "capabilities", "drop", 0)) != "ALL" {
			t.Errorf("container %s does not drop ALL capabilities", name)
		}
		if str(get(sc, "seccompProfile", "type")) != "RuntimeDefault" && str(get(pod, "securityContext", "seccompProfile", "type")) != "RuntimeDefault" {
			t.Errorf("container %s has no RuntimeDefault seccomp profile", name)
		}
		if name == "worker" && get(sc, "readOnlyRootFilesystem") != true {
			t.Error("the worker's root filesystem is writable")
		}
		if get(c, "resources") == nil {
			t.Errorf("container %s has no resources", name)
		}
	}
}

// checkMetrics: with the statsd_exporter sidecar the worker sends to it (UDP
// on 127.0.0.1:9125 or its Unix socket), and the sidecar reads the repo's
// mapping; without it, to the node's Datadog agent.
func checkMetrics(t *testing.T, objs []map[string]any, pod any, worker map[string]any, value func(string) string) {
	var sidecar any
	for _, c := range list(get(pod, "initContainers")) {
		if str(get(c, "name")) == "statsd-exporter" {
			sidecar = c
		}
	}
	url := value("DD_DOGSTATSD_URL")
	if sidecar == nil {
		if url == "" && value("DD_AGENT_HOST") == "" {
			hostIP := false
			for _, e := range list(worker["env"]) {
				hostIP = hostIP || (str(get(e, "name")) == "DD_AGENT_HOST" && str(get(e, "valueFrom", "fieldRef", "fieldPath")) == "status.hostIP")
			}
			if !hostIP {
				t.Error("without the sidecar, DD_AGENT_HOST must be the node's IP (status.hostIP) or DD_DOGSTATSD_URL a socket")
			}
		}
		return
	}
	if get(sidecar, "restartPolicy") != "Always" {
		t.Error("the statsd-exporter sidecar is not a native sidecar (restartPolicy: Always)")
	}
	args := strings.Join(strings.Fields(fmt.Sprint(get(sidecar, "args"))), " ")
	switch {
	case strings.HasPrefix(url, "unix://"):
		if !strings.Contains(args, "--statsd.listen-unixgram="+strings.TrimPrefix(url, "unix://")) {
			t.Errorf("DD_DOGSTATSD_URL=%s but the sidecar listens on %s", url, args)
		}
	case value("DD_AGENT_HOST") == "127.0.0.1" && value("DD_DOGSTATSD_PORT") == "9125":
		if !strings.Contains(args, "--statsd.listen-udp=127.0.0.1:9125") {
			t.Errorf("the worker sends to 127.0.0.1:9125 but the sidecar listens on %s", args)
		}
	default:
		t.Errorf("with the sidecar, the worker sends metrics elsewhere (DD_AGENT_HOST=%q DD_DOGSTATSD_URL=%q)", value("DD_AGENT_HOST"), url)
	}
	mapping, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/statsd/mapping.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range byKind(objs, "ConfigMap") {
		if str(get(cm, "data", "mapping.yml")) == string(mapping) {
			return
		}
	}
	t.Error("no ConfigMap carries deploy/statsd/mapping.yml as mapping.yml")
}

// checkRegistry checks the schema registry settings together, as the worker
// reads them: credentials and a CA bundle only with a URL, a URL the worker
// accepts, a CA bundle only for https, and a user name only with a password.
func checkRegistry(t *testing.T, envs envVars) {
	raw := envs.value("SCHEMA_REGISTRY_URL")
	_, hasURL := envs["SCHEMA_REGISTRY_URL"]
	if !hasURL {
		for _, v := range []string{"SCHEMA_REGISTRY_USERNAME", "SCHEMA_REGISTRY_PASSWORD", "SCHEMA_REGISTRY_CA_FILE"} {
			if _, ok := envs[v]; ok {
				t.Errorf("%s is set without SCHEMA_REGISTRY_URL: it has no effect", v)
			}
		}
		return
	}
	// The worker's own check (internal/config, serviceURL): the URL is logged,
	// so credentials never ride in it.
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		t.Errorf("SCHEMA_REGISTRY_URL=%q: want an absolute http(s) URL without user info or query", raw)
	}
	if _, ok := envs["SCHEMA_REGISTRY_CA_FILE"]; ok && (u == nil || u.Scheme != "https") {
		t.Errorf("SCHEMA_REGISTRY_CA_FILE is set but SCHEMA_REGISTRY_URL=%q is not https", raw)
	}
	_, user := envs["SCHEMA_REGISTRY_USERNAME"]
	_, password := envs["SCHEMA_REGISTRY_PASSWORD"]
	if user != password {
		t.Errorf("SCHEMA_REGISTRY_USERNAME (set: %v) and SCHEMA_REGISTRY_PASSWORD (set: %v): want both or neither", user, password)
	}
}

// registryWant is what each values set must make of the schema
// registry, so that lint-deploy renders every branch: the defaults none, the
// nondefault values all settings from Secrets of the user's, the made-secret
// values all settings from the Secret the chart makes. Other values sets are
// only checked for consistency.
var registryWant = map[string]struct {
	set, madeSecret bool
}{
	"chart-default.yaml":            {},
	"chart-minimal-values.yaml":     {},
	"chart-sidecar-values.yaml":     {},
	"chart-nondefault-values.yaml":  {set: true},
	"chart-made-secret-values.yaml": {set: true, madeSecret: true},
}

// checkRegistryValues checks the schema registry settings a values set
// renders against registryWant.
func checkRegistryValues(t *testing.T, file string, objs []map[string]any, sts map[string]any) {
	want, ok := registryWant[file]
	if !ok {
		return
	}
	pod := get(sts, "spec", "template", "spec")
	envs := envVars{}
	for _, e := range list(get(workerContainer(t, pod), "env")) {
		em, _ := e.(map[string]any)
		envs[str(em["name"])] = em
	}
	vars := []string{"SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_USERNAME", "SCHEMA_REGISTRY_PASSWORD", "SCHEMA_REGISTRY_CA_FILE"}
	if !want.set {
		for _, v := range vars {
			if _, ok := envs[v]; ok {
				t.Errorf("%s sets %s: want no schema registry (plain JSON)", file, v)
			}
		}
		return
	}
	for _, v := range vars {
		if _, ok := envs[v]; !ok {
			t.Errorf("%s does not set %s", file, v)
		}
	}
	// Where the credentials and the CA bundle come from: the chart's own
	// Secret (rendered here) or the user's (not rendered).
	from := map[string]string{
		"SCHEMA_REGISTRY_USERNAME": str(get(envs["SCHEMA_REGISTRY_USERNAME"], "valueFrom", "secretKeyRef", "name")),
		"SCHEMA_REGISTRY_PASSWORD": str(get(envs["SCHEMA_REGISTRY_PASSWORD"], "valueFrom", "secretKeyRef", "name")),
	}
	if ca := envs.value("SCHEMA_REGISTRY_CA_FILE"); ca != "" {
		vol := mountOf(workerContainer(t, pod), filepath.Dir(ca))
		for _, pv := range list(get(pod, "volumes")) {
			if str(get(pv, "name")) == vol {
				from["SCHEMA_REGISTRY_CA_FILE"] = str(get(pv, "secret", "secretName"))
			}
		}
	}
	for v, secret := range from {
		if secret == "" {
			t.Errorf("%s: %s comes from no Secret", file, v)
			continue
		}
		if made := named(objs, "Secret", secret) != nil; made != want.madeSecret {
			t.Errorf("%s: %s comes from Secret %s, which the chart renders: %v, want %v", file, v, secret, made, want.madeSecret)
		}
	}
}

// checkSecretRefs checks the pod's references to Secrets the chart renders
// itself: every key a variable or a volume takes must be in the Secret, and
// the pod template must carry a checksum annotation per such Secret, so that
// a changed Secret rolls the pods.
func checkSecretRefs(t *testing.T, objs []map[string]any, template any) {
	pod := get(template, "spec")
	used := map[string]bool{}
	ref := func(secret, key, by string) {
		s := named(objs, "Secret", secret)
		if s == nil {
			return // a Secret of the user's
		}
		used[secret] = true
		if get(s, "stringData", key) == nil && get(s, "data", key) == nil {
			t.Errorf("%s takes key %q of Secret %s, which the chart renders without it", by, key, secret)
		}
	}
	containers := append(list(get(pod, "containers")), list(get(pod, "initContainers"))...)
	for _, c := range containers {
		for _, e := range list(get(c, "env")) {
			if name := str(get(e, "valueFrom", "secretKeyRef", "name")); name != "" {
				ref(name, str(get(e, "valueFrom", "secretKeyRef", "key")), "env "+str(get(e, "name")))
			}
		}
	}
	for _, v := range list(get(pod, "volumes")) {
		name := str(get(v, "secret", "secretName"))
		if name == "" {
			continue
		}
		for _, item := range list(get(v, "secret", "items")) {
			ref(name, str(get(item, "key")), "volume "+str(get(v, "name")))
		}
	}
	checksums := 0
	annotations, _ := get(template, "metadata", "annotations").(map[string]any)
	for k := range annotations {
		if strings.HasPrefix(k, "checksum/") && strings.HasSuffix(k, "-secret") {
			checksums++
		}
	}
	if checksums < len(used) {
		t.Errorf("the pod uses %d Secrets the chart renders but has %d checksum/*-secret annotations: a changed Secret would not restart the workers", len(used), checksums)
	}
}

// mountReadOnly reports whether the mount at path in a container is
// read-only.
func mountReadOnly(c map[string]any, path string) bool {
	for _, m := range list(c["volumeMounts"]) {
		if str(get(m, "mountPath")) == path {
			return get(m, "readOnly") == true
		}
	}
	return false
}

// mountOf is the volume mounted at path in a container.
func mountOf(c map[string]any, path string) string {
	for _, m := range list(c["volumeMounts"]) {
		if str(get(m, "mountPath")) == path {
			return str(get(m, "name"))
		}
	}
	return ""
}
