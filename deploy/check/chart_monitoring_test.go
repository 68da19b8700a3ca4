package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// monitoringWant is what each values set renders where the cluster serves
// monitoring.coreos.com/v1: the defaults have no statsd_exporter sidecar
// (metrics go to Datadog), so nothing; the sets with the sidecar both
// objects, but the made-secret values turn the rule off. Other values sets
// are only checked for consistency.
var monitoringWant = map[string]struct{ podMonitor, rule bool }{
	"chart-default.yaml":            {},
	"chart-minimal-values.yaml":     {},
	"chart-sidecar-values.yaml":     {podMonitor: true, rule: true},
	"chart-nondefault-values.yaml":  {podMonitor: true, rule: true},
	"chart-made-secret-values.yaml": {podMonitor: true},
}

// TestChartMonitoring checks that the PodMonitor and the PrometheusRule are
// rendered only with the Prometheus Operator's API (and the sidecar), that
// the PodMonitor scrapes the sidecar's metrics port of the workers, and that
// the rule's groups are those of deploy/prometheus/alerts.yml.
func TestChartMonitoring(t *testing.T) {
	var podMonitors, rules int
	for _, r := range renderedCharts(t) {
		t.Run(r.String(), func(t *testing.T) {
			pms, prs := byKind(r.objs, "PodMonitor"), byKind(r.objs, "PrometheusRule")
			podMonitors += len(pms)
			rules += len(prs)
			if !r.monitoring {
				if len(pms)+len(prs) > 0 {
					t.Fatalf("rendered without monitoring.coreos.com/v1, yet has %d PodMonitors and %d PrometheusRules: a cluster without the operator's CRDs would refuse the release", len(pms), len(prs))
				}
				return
			}
			sts := byKind(r.objs, "StatefulSet")
			if len(sts) != 1 {
				t.Fatalf("want one StatefulSet, got %d", len(sts))
			}
			sidecar := sidecarOf(get(sts[0], "spec", "template", "spec"))
			if want, ok := monitoringWant[r.file]; ok {
				if (len(pms) == 1) != want.podMonitor || (len(prs) == 1) != want.rule || len(pms) > 1 || len(prs) > 1 {
					t.Errorf("%d PodMonitors and %d PrometheusRules, want podMonitor=%v rule=%v", len(pms), len(prs), want.podMonitor, want.rule)
				}
			}
			if sidecar == nil && len(pms)+len(prs) > 0 {
				t.Errorf("no statsd_exporter sidecar, yet %d PodMonitors and %d PrometheusRules: there is nothing to scrape", len(pms), len(prs))
			}
			for _, pm := range pms {
				checkPodMonitor(t, pm, sts[0], sidecar)
			}
			for _, pr := range prs {
				checkPrometheusRule(t, pr, sts[0])
			}
		})
	}
	if podMonitors == 0 || rules == 0 {
		t.Errorf("the renderings hold %d PodMonitors and %d PrometheusRules: want both rendered at least once (the values sets with the sidecar, with the monitoring API)", podMonitors, rules)
	}
}

// sidecarOf is the pod's statsd-exporter native sidecar, or nil.
func sidecarOf(pod any) map[string]any {
	for _, c := range list(get(pod, "initContainers")) {
		if str(get(c, "name")) == "statsd-exporter" {
			m, _ := c.(map[string]any)
			return m
		}
	}
	return nil
}

// checkPodMonitor checks that the PodMonitor selects the StatefulSet's pods
// in its namespace and scrapes the port and path the sidecar serves its
// metrics on, keeping the workers' labels and naming the instance by pod.
func checkPodMonitor(t *testing.T, pm, sts, sidecar map[string]any) {
	if ns := str(get(pm, "metadata", "namespace")); ns != str(get(sts, "metadata", "namespace")) || get(pm, "spec", "namespaceSelector") != nil {
		t.Errorf("PodMonitor in namespace %q (selector %v): want the workers' namespace only", ns, get(pm, "spec", "namespaceSelector"))
	}
	sel, _ := get(pm, "spec", "selector", "matchLabels").(map[string]any)
	podLabels, _ := get(sts, "spec", "template", "metadata", "labels").(map[string]any)
	if !reflect.DeepEqual(sel, get(sts, "spec", "selector", "matchLabels")) || !matches(sel, podLabels) {
		t.Errorf("PodMonitor selects %v, want the StatefulSet's selector %v", sel, get(sts, "spec", "selector", "matchLabels"))
	}
	endpoints := list(get(pm, "spec", "podMetricsEndpoints"))
	if len(endpoints) != 1 {
		t.Fatalf("want one podMetricsEndpoint, got %d", len(endpoints))
	}
	ep := endpoints[0]
	port := str(get(ep, "port"))
	var containerPort string
	for _, p := range list(get(sidecar, "ports")) {
		if str(get(p, "name")) == port {
			containerPort = str(get(p, "containerPort"))
		}
	}
	args := fmt.Sprint(get(sidecar, "args"))
	if containerPort == "" || !strings.Contains(args, "--web.listen-address=:"+containerPort) {
		t.Errorf("PodMonitor scrapes port %q, which is not where the statsd-exporter sidecar serves (%s)", port, args)
	}
	// statsd_exporter's default --web.telemetry-path.
	if path := str(get(ep, "path")); path != "/metrics" || strings.Contains(args, "--web.telemetry-path") {
		t.Errorf("PodMonitor scrapes path %q; the sidecar serves /metrics (%s)", path, args)
	}
	interval, err1 := time.ParseDuration(str(get(ep, "interval")))
	timeout, err2 := time.ParseDuration(str(get(ep, "scrapeTimeout")))
	if err1 != nil || err2 != nil || timeout <= 0 || timeout > interval {
		t.Errorf("interval %q and scrapeTimeout %q: want durations, the timeout no longer than the interval", str(get(ep, "interval")), str(get(ep, "scrapeTimeout")))
	}
	if get(ep, "honorLabels") != true {
		t.Error("PodMonitor does not honor the exported labels: env, service and version would become exported_*")
	}
	instance := false
	for _, rl := range list(get(ep, "relabelings")) {
		instance = instance || (str(get(rl, "targetLabel")) == "instance" && fmt.Sprint(get(rl, "sourceLabels")) == "[__meta_kubernetes_pod_name]")
	}
	if !instance {
		t.Error("PodMonitor does not set instance to the pod name: the alerts would name workers by address")
	}
}

// checkPrometheusRule checks that the rule is in the workers' namespace and
// holds exactly the groups of deploy/prometheus/alerts.yml.
func checkPrometheusRule(t *testing.T, pr, sts map[string]any) {
	if ns := str(get(pr, "metadata", "namespace")); ns != str(get(sts, "metadata", "namespace")) {
		t.Errorf("PrometheusRule in namespace %q, want the workers'", ns)
	}
	var alerts map[string]any
	readYAML(t, "deploy/prometheus/alerts.yml", &alerts)
	if len(list(alerts["groups"])) == 0 {
		t.Fatal("deploy/prometheus/alerts.yml has no groups")
	}
	if spec, _ := pr["spec"].(map[string]any); !reflect.DeepEqual(spec, map[string]any{"groups": alerts["groups"]}) {
		t.Error("the PrometheusRule's spec is not the groups of deploy/prometheus/alerts.yml")
	}
}

// TestChartAlertsCopy checks that the chart's copy of the alerting rules is
// deploy/prometheus/alerts.yml, as files/statsd-mapping.yml is the statsd
// mapping (module zips drop links, so the chart holds a copy).
func TestChartAlertsCopy(t *testing.T) {
	root := repoRoot(t)
	alerts, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	chartCopy, err := os.ReadFile(filepath.Join(root, "deploy/helm/pageviews/files/prometheus-alerts.yml"))
	if err != nil {
		t.Fatalf("the chart's files/prometheus-alerts.yml (a copy of deploy/prometheus/alerts.yml): %v", err)
	}
	if !bytes.Equal(chartCopy, alerts) {
		t.Error("deploy/helm/pageviews/files/prometheus-alerts.yml differs from deploy/prometheus/alerts.yml: copy it again")
	}
}

// TestMonitoringCRDs validates every rendered PodMonitor and PrometheusRule
// against the schemas of the Prometheus Operator's CRDs, from the module zip
// of the release PAGEVIEWS_MONITORING_CRDS names (deploy/deploy.mk's
// MONITORING_CRDS_VERSION), made strict as kubeconform's schemas are: a
// property the CRD does not define fails, where the API server would drop it
// without a word.
func TestMonitoringCRDs(t *testing.T) {
	version := os.Getenv("PAGEVIEWS_MONITORING_CRDS")
	if version == "" {
		skipOrFail(t, "PAGEVIEWS_MONITORING_CRDS is not set: run `make -f deploy/deploy.mk lint-deploy`, which names the Prometheus Operator release")
	}
	dir := moduleDir(t, "github.com/prometheus-operator/prometheus-operator@"+version)
	schemas := map[string]*jsonschema.Schema{}
	for kind, file := range map[string]string{
		"PodMonitor":     "monitoring.coreos.com_podmonitors.yaml",
		"PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
	} {
		schemas[kind] = crdSchema(t, filepath.Join(dir, "example", "prometheus-operator-crd", file), "v1")
	}

	validated := map[string]int{}
	for _, r := range renderedCharts(t) {
		for _, o := range r.objs {
			kind := str(o["kind"])
			sch, ok := schemas[kind]
			if !ok {
				continue
			}
			if o["apiVersion"] != "monitoring.coreos.com/v1" {
				t.Errorf("%s: %s has apiVersion %v, want monitoring.coreos.com/v1", r, kind, o["apiVersion"])
			}
			if err := sch.Validate(jsonValue(t, o)); err != nil {
				t.Errorf("%s: %s %s does not match the CRD of prometheus-operator %s:\n%v", r, kind, str(get(o, "metadata", "name")), version, err)
			}
			validated[kind]++

			// The schema must catch a misspelt field, or it checks little.
			bad := jsonValue(t, o).(map[string]any)
			bad["spec"].(map[string]any)["misspelt"] = true
			if sch.Validate(bad) == nil {
				t.Errorf("the %s schema accepts an unknown field: it is not strict", kind)
			}
		}
	}
	for kind := range schemas {
		if validated[kind] == 0 {
			t.Errorf("no %s rendered to validate", kind)
		}
	}
}

// moduleDir downloads a module into the module cache (through the module
// proxy, once) and returns its directory. It runs outside any module, so no
// go.mod is read or changed.
func moduleDir(t *testing.T, modVersion string) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", modVersion)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &info); jerr == nil && info.Error != "" {
		t.Fatalf("go mod download %s: %s", modVersion, info.Error)
	}
	if err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s: %v: %s%s", modVersion, err, out, stderr.String())
	}
	return info.Dir
}

// crdSchema compiles the openAPIV3Schema of one version of a CRD as a JSON
// schema (draft 4, whose keywords OpenAPI 3.0 schemas use), made strict.
func crdSchema(t *testing.T, path, version string) *jsonschema.Schema {
	t.Helper()
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string
				Schema struct {
					OpenAPIV3Schema map[string]any `yaml:"openAPIV3Schema"`
				}
			}
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var schema any
	for _, v := range crd.Spec.Versions {
		if v.Name == version {
			schema = jsonValue(t, v.Schema.OpenAPIV3Schema)
		}
	}
	if schema == nil {
		t.Fatalf("%s has no version %s", path, version)
	}
	strict(schema)
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft4)
	url := "file:///" + filepath.Base(path) + ".json"
	if err := c.AddResource(url, schema); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return sch
}

// strict forbids the properties a schema does not define, wherever it
// defines some and does not keep unknown fields on purpose. It walks the
// schema keywords only, so a property named like a keyword is no keyword.
func strict(node any) {
	n, ok := node.(map[string]any)
	if !ok {
		return
	}
	props, _ := n["properties"].(map[string]any)
	if _, set := n["additionalProperties"]; props != nil && !set && n["x-kubernetes-preserve-unknown-fields"] != true {
		n["additionalProperties"] = false
	}
	for _, p := range props {
		strict(p)
	}
	strict(n["items"])
	strict(n["additionalProperties"])
	strict(n["not"])
	for _, k := range []string{"allOf", "anyOf", "oneOf"} {
		for _, sub := range list(n[k]) {
			strict(sub)
		}
	}
}

// jsonValue turns a decoded YAML value into what the JSON schema validator
// takes (numbers as json.Number), through JSON.
func jsonValue(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}
