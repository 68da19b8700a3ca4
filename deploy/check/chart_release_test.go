package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// sleepActionMinor is the first Kubernetes minor (1.30) whose kubelet runs
// the preStop sleep action by default (PodLifecycleSleepAction, beta). On
// 1.29 the gate is alpha and off, and the API server drops the field.
const sleepActionMinor = 30

// preStopWant is the preStop sleep each values set asks for, in
// seconds, where the cluster has the sleep action: the default, a longer one,
// and none. Other values sets are only checked for consistency.
var preStopWant = map[string]int{
	"chart-default.yaml":            10,
	"chart-minimal-values.yaml":     10,
	"chart-sidecar-values.yaml":     3,
	"chart-nondefault-values.yaml":  20,
	"chart-made-secret-values.yaml": 0,
}

// checkPreStop checks the worker's preStop hook: the kubelet's sleep action
// (the distroless image has no shell and no sleep binary for an exec hook),
// only on a Kubernetes that runs it, and as long as the values ask. The grace
// period covering it is checked by checkShutdown.
func checkPreStop(t *testing.T, r rendering, sts map[string]any) {
	worker := workerContainer(t, get(sts, "spec", "template", "spec"))
	preStop := get(worker, "lifecycle", "preStop")
	if r.minor < sleepActionMinor {
		if get(worker, "lifecycle") != nil {
			t.Errorf("Kubernetes 1.%d has no sleep action by default, but the worker has a lifecycle hook: %v", r.minor, get(worker, "lifecycle"))
		}
		return
	}
	if preStop != nil {
		if m, _ := preStop.(map[string]any); len(m) != 1 || m["sleep"] == nil {
			t.Errorf("the worker's preStop hook is %v: only the sleep action works in the distroless image", preStop)
		}
	}
	sleep, _ := get(preStop, "sleep", "seconds").(int)
	want, known := preStopWant[r.file]
	switch {
	case known && sleep != want:
		t.Errorf("preStop sleep %ds, want %ds on Kubernetes 1.%d", sleep, want, r.minor)
	case preStop != nil && sleep <= 0:
		t.Errorf("preStop hook without a positive sleep: %v", preStop)
	}
}

// TestChartHelmTest checks the `helm test` hook of every rendering: one Job
// that asks the release's Service (not a pod, not the headless Service) for
// /ready and /report/, runs once, as a non-root user in a pinned image, and
// whose pod no selector of the chart takes for a worker.
func TestChartHelmTest(t *testing.T) {
	for _, r := range renderedCharts(t) {
		t.Run(r.String(), func(t *testing.T) {
			var hooks []map[string]any
			for _, o := range r.objs {
				if str(get(o, "metadata", "annotations", "helm.sh/hook")) != "" {
					hooks = append(hooks, o)
				}
			}
			if len(hooks) != 1 || hooks[0]["kind"] != "Job" || str(get(hooks[0], "metadata", "annotations", "helm.sh/hook")) != "test" {
				t.Fatalf("want one hook, a Job annotated helm.sh/hook: test; got %d hooks", len(hooks))
			}
			checkTestJob(t, r.objs, hooks[0])
		})
	}
}

func checkTestJob(t *testing.T, objs []map[string]any, job map[string]any) {
	if policy := str(get(job, "metadata", "annotations", "helm.sh/hook-delete-policy")); strings.Contains(policy, "hook-succeeded") {
		t.Errorf("hook-delete-policy %q deletes the Job before `helm test --logs` can read it", policy)
	}
	if get(job, "spec", "backoffLimit") != 0 {
		t.Error("the test Job retries in new pods (backoffLimit is not 0): its script already asks again")
	}
	pod := get(job, "spec", "template", "spec")
	if str(get(pod, "restartPolicy")) != "Never" {
		t.Errorf("test pod restartPolicy %q, want Never", str(get(pod, "restartPolicy")))
	}
	if get(pod, "automountServiceAccountToken") != false {
		t.Error("the test pod mounts a service account token it never uses")
	}
	containers := list(get(pod, "containers"))
	if len(containers) != 1 {
		t.Fatalf("want one test container, got %d", len(containers))
	}
	c := containers[0]
	image := str(get(c, "image"))
	if _, tag, ok := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":"); !ok || tag == "" || tag == "latest" {
		t.Errorf("test image %q is not pinned to a tag", image)
	}
	if get(pod, "securityContext", "runAsNonRoot") != true || get(c, "securityContext", "allowPrivilegeEscalation") != false ||
		str(get(c, "securityContext", "capabilities", "drop", 0)) != "ALL" || get(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Errorf("the test container is not locked down like the workers: pod %v, container %v", get(pod, "securityContext"), get(c, "securityContext"))
	}
	if get(c, "resources") == nil {
		t.Error("the test container has no resources")
	}

	// Where it asks: the ClusterIP Service of the workers, on its port.
	env := map[string]string{}
	for _, e := range list(get(c, "env")) {
		env[str(get(e, "name"))] = str(get(e, "value"))
	}
	base := env["BASE_URL"]
	script := strings.Join(strings.Fields(str(get(c, "command"))), " ")
	var svc map[string]any
	for _, s := range byKind(objs, "Service") {
		if get(s, "spec", "clusterIP") == "None" {
			continue
		}
		url := "http://" + str(get(s, "metadata", "name")) + "." + str(get(s, "metadata", "namespace")) + ".svc:" + str(get(s, "spec", "ports", 0, "port"))
		if url == base {
			svc = s
		}
	}
	if svc == nil {
		t.Fatalf("the test asks BASE_URL=%q, which is not http://<Service>.<namespace>.svc:<port> of a Service of the chart", base)
	}
	for _, path := range []string{`"$BASE_URL/ready"`, `"$BASE_URL/report/"`, `'"stale":false'`} {
		if !strings.Contains(script, path) {
			t.Errorf("the test script does not use %s", path)
		}
	}
	if n, err := strconv.Atoi(env["TIMEOUT_SECONDS"]); err != nil || n <= 0 {
		t.Errorf("TIMEOUT_SECONDS=%q", env["TIMEOUT_SECONDS"])
	} else if deadline, _ := get(job, "spec", "activeDeadlineSeconds").(int); deadline <= n {
		t.Errorf("activeDeadlineSeconds=%d would kill the Job before its own %ds timeout reports", deadline, n)
	}
	checkNotAWorker(t, objs, job)
}

// checkNotAWorker fails unless the test pod is left out of every selector
// of the workers: it must not count as a worker anywhere.
func checkNotAWorker(t *testing.T, objs []map[string]any, job map[string]any) {
	t.Helper()
	labels, _ := get(job, "spec", "template", "metadata", "labels").(map[string]any)
	selectors := map[string]any{}
	for _, o := range objs {
		switch o["kind"] {
		case "Service":
			selectors["Service "+str(get(o, "metadata", "name"))] = get(o, "spec", "selector")
		case "StatefulSet", "PodDisruptionBudget":
			selectors[str(o["kind"])+" "+str(get(o, "metadata", "name"))] = get(o, "spec", "selector", "matchLabels")
		case "PodMonitor":
			selectors["PodMonitor "+str(get(o, "metadata", "name"))] = get(o, "spec", "selector", "matchLabels")
		}
	}
	for who, sel := range selectors {
		if m, _ := sel.(map[string]any); len(m) > 0 && matches(m, labels) {
			t.Errorf("%s selects the test pod (labels %v)", who, labels)
		}
	}
}

// matches reports whether labels satisfy the selector.
func matches(selector, labels map[string]any) bool {
	for k, v := range selector {
		if str(labels[k]) != str(v) {
			return false
		}
	}
	return true
}

// helmCommand is the pinned helm `make lint-deploy` runs (PAGEVIEWS_HELM,
// such as "go tool -modfile=tools/go.mod helm"), run from the repository
// root.
func helmCommand(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	fields := strings.Fields(os.Getenv("PAGEVIEWS_HELM"))
	if len(fields) == 0 {
		skipOrFail(t, "PAGEVIEWS_HELM is not set: run `make -f deploy/deploy.mk lint-deploy`, which names the pinned helm")
	}
	cmd := exec.Command(fields[0], append(fields[1:], args...)...)
	cmd.Dir = repoRoot(t)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// brokersRequired is the start of the chart's message for a missing
// kafka.brokers.
const brokersRequired = "kafka.brokers is required"

// TestChartRequiresBrokers checks that the chart has no default broker
// address and refuses to render without one, saying so: an empty
// KAFKA_BROKERS would start the embedded development broker in every pod.
func TestChartRequiresBrokers(t *testing.T) {
	const chart = "deploy/helm/pageviews"
	var values struct {
		Kafka struct {
			Brokers *string `yaml:"brokers"`
		} `yaml:"kafka"`
	}
	readYAML(t, filepath.Join(chart, "values.yaml"), &values)
	if values.Kafka.Brokers == nil || *values.Kafka.Brokers != "" {
		t.Errorf("values.yaml: kafka.brokers must be present and empty (no default broker address), got %v", values.Kafka.Brokers)
	}
	// helm's own default Kubernetes version is older than the chart's
	// kubeVersion: render for the newest version lint-deploy uses.
	kube := ""
	for _, r := range renderedCharts(t) {
		if kube == "" || r.minor > kubeMinor(kube) {
			kube = r.kube
		}
	}
	for name, args := range map[string][]string{
		"defaults":          nil,
		"an empty list":     {"--set", "kafka.brokers="},
		"a ci/ values file": {"-f", chart + "/ci/minimal-values.yaml", "--set", "kafka.brokers="},
	} {
		out, stderr, err := helmCommand(t, append([]string{"template", "pageviews", chart, "--kube-version", kube}, args...)...)
		if err == nil {
			t.Errorf("helm template with %s and no broker succeeded:\n%.300s", name, out)
			continue
		}
		if !strings.Contains(stderr, brokersRequired) {
			t.Errorf("helm template with %s and no broker fails without saying %q:\n%s", name, brokersRequired, stderr)
		}
	}
	// The same command with a broker renders: the failure above is the broker's.
	if _, stderr, err := helmCommand(t, "template", "pageviews", chart, "--kube-version", kube, "--set", "kafka.brokers=kafka:9092"); err != nil {
		t.Errorf("helm template with a broker fails: %v\n%s", err, stderr)
	}
}

// TestChartKubeVersions checks that `make lint-deploy` rendered (and so
// validates with kubeconform) the chart for the oldest Kubernetes the chart
// claims, its kubeVersion in Chart.yaml, and for a newer one.
func TestChartKubeVersions(t *testing.T) {
	var chart struct {
		KubeVersion string `yaml:"kubeVersion"`
	}
	readYAML(t, "deploy/helm/pageviews/Chart.yaml", &chart)
	m := regexp.MustCompile(`^>=\s*1\.(\d+)\.0(-0)?$`).FindStringSubmatch(chart.KubeVersion)
	if m == nil {
		t.Fatalf("Chart.yaml kubeVersion %q: want >=1.<minor>.0-0", chart.KubeVersion)
	}
	oldest, _ := strconv.Atoi(m[1])
	minors := map[int]bool{}
	lowest, highest := 1000, 0
	for _, r := range renderedCharts(t) {
		minors[r.minor] = true
		lowest, highest = min(lowest, r.minor), max(highest, r.minor)
	}
	if !minors[oldest] || lowest != oldest {
		t.Errorf("the chart claims Kubernetes 1.%d and up, but is rendered for 1.%d to 1.%d: set K8S_OLDEST_SCHEMA_VERSION in deploy/deploy.mk to a 1.%d release", oldest, lowest, highest, oldest)
	}
	if highest <= oldest {
		t.Errorf("the chart is rendered only for Kubernetes 1.%d: want the newest too", highest)
	}
	if highest < sleepActionMinor {
		t.Errorf("no rendering for Kubernetes 1.%d or newer: the preStop sleep is never rendered", sleepActionMinor)
	}
}

// kubeMinor is the minor of a Kubernetes version such as 1.37.2.
func kubeMinor(version string) int {
	parts := strings.Split(version, ".")
	if len(parts) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(parts[1])
	return n
}

// TestChartCIValuesInstallable checks that the values sets of the chart's
// ci/, which CI installs on a one-node kind cluster next to
// deploy/kafka/kafka.yaml (helm install --wait, then helm test), can come up
// there: they use that Kafka and its topics, no Secret, registry, trace
// collector, PriorityClass or StorageClass the cluster lacks, no Service
// that waits for a load balancer, and no rule that keeps two workers off one
// node. The sets of deploy/check/testdata only render.
func TestChartCIValuesInstallable(t *testing.T) {
	ci, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy/helm/pageviews/ci/*-values.yaml"))
	if err != nil || len(ci) == 0 {
		t.Fatalf("no deploy/helm/pageviews/ci/*-values.yaml (%v): CI installs nothing", err)
	}
	rendered := map[string]rendering{}
	for _, r := range renderedCharts(t) {
		if !r.monitoring && (rendered[r.file].objs == nil || r.minor > rendered[r.file].minor) {
			rendered[r.file] = r
		}
	}
	testdata, _ := filepath.Glob(filepath.Join(repoRoot(t), "deploy/check/testdata/values/*-values.yaml"))
	for _, f := range testdata {
		for _, c := range ci {
			if filepath.Base(c) == filepath.Base(f) {
				t.Errorf("%s and %s share a name: their renderings would overwrite each other", c, f)
			}
		}
	}

	// What deploy/kafka/kafka.yaml offers: its Service's ports and the
	// topics its Job creates.
	kafkaObjs := decodeAll(t, "deploy/kafka/kafka.yaml")
	brokers := map[string]bool{}
	for _, p := range list(get(named(kafkaObjs, "Service", "kafka"), "spec", "ports")) {
		brokers["kafka:"+str(get(p, "port"))] = true
	}
	topics := ""
	for _, j := range byKind(kafkaObjs, "Job") {
		topics += fmt.Sprint(get(j, "spec", "template", "spec", "containers"))
	}

	for _, f := range ci {
		name := "chart-" + strings.TrimSuffix(filepath.Base(f), ".yaml") + ".yaml"
		r, ok := rendered[name]
		if !ok {
			t.Errorf("%s was not rendered", f)
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) { checkInstallable(t, r, brokers, topics) })
	}
}

func checkInstallable(t *testing.T, r rendering, brokers map[string]bool, topics string) {
	sts := byKind(r.objs, "StatefulSet")
	if len(sts) != 1 {
		t.Fatalf("want one StatefulSet, got %d", len(sts))
	}
	pod := get(sts[0], "spec", "template", "spec")
	envs := envVars{}
	for _, e := range list(get(workerContainer(t, pod), "env")) {
		em, _ := e.(map[string]any)
		envs[str(em["name"])] = em
	}
	for _, b := range strings.Split(envs.value("KAFKA_BROKERS"), ",") {
		if !brokers[strings.TrimSpace(b)] {
			t.Errorf("KAFKA_BROKERS=%q: want deploy/kafka's Service in the release's namespace (%v)", envs.value("KAFKA_BROKERS"), brokers)
		}
	}
	if topic := envs.value("PAGE_VIEWS_TOPIC"); !strings.Contains(topics, "--topic "+topic+" ") {
		t.Errorf("PAGE_VIEWS_TOPIC=%q is not a topic deploy/kafka creates", topic)
	}
	for _, v := range []string{"SCHEMA_REGISTRY_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "KAFKA_TLS_ENABLED", "KAFKA_SASL_MECHANISM"} {
		if _, ok := envs[v]; ok {
			t.Errorf("%s is set: kind has no such service next to deploy/kafka", v)
		}
	}
	// Every Secret or ConfigMap the pod takes is one the chart renders.
	for _, c := range append(list(get(pod, "containers")), list(get(pod, "initContainers"))...) {
		for _, e := range list(get(c, "env")) {
			if n := str(get(e, "valueFrom", "secretKeyRef", "name")); n != "" && named(r.objs, "Secret", n) == nil {
				t.Errorf("env %s takes Secret %s, which the chart does not make", str(get(e, "name")), n)
			}
		}
		if len(list(get(c, "envFrom"))) > 0 {
			t.Errorf("container %s takes envFrom %v, which kind lacks", str(get(c, "name")), get(c, "envFrom"))
		}
	}
	for _, v := range list(get(pod, "volumes")) {
		if n := str(get(v, "secret", "secretName")); n != "" && named(r.objs, "Secret", n) == nil {
			t.Errorf("volume %s is Secret %s, which the chart does not make", str(get(v, "name")), n)
		}
		if n := str(get(v, "configMap", "name")); n != "" && named(r.objs, "ConfigMap", n) == nil {
			t.Errorf("volume %s is ConfigMap %s, which the chart does not make", str(get(v, "name")), n)
		}
		if get(v, "hostPath") != nil {
			t.Errorf("volume %s is a hostPath (a Datadog agent's socket), which kind lacks", str(get(v, "name")))
		}
	}
	for _, field := range []string{"priorityClassName", "imagePullSecrets", "affinity", "tolerations"} {
		if get(pod, field) != nil {
			t.Errorf("the pod sets %s: %v", field, get(pod, field))
		}
	}
	if sel, _ := get(pod, "nodeSelector").(map[string]any); len(sel) > 0 {
		t.Errorf("the pod has a nodeSelector %v", sel)
	}
	if sc := get(sts[0], "spec", "volumeClaimTemplates", 0, "spec", "storageClassName"); sc != nil {
		t.Errorf("the volumes ask for StorageClass %v: kind has only its default one", sc)
	}
	for _, svc := range byKind(r.objs, "Service") {
		if typ := str(get(svc, "spec", "type")); typ != "" && typ != "ClusterIP" {
			t.Errorf("Service %s is a %s: helm install --wait would wait for an address kind never gives", str(get(svc, "metadata", "name")), typ)
		}
	}
}
