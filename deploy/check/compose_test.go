package check

import (
	"cmp"
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// observability is the compose profile of Grafana and Jaeger.
const observability = "observability"

// loadCompose loads docker-compose.yml the way `docker compose` does
// (schema validation, interpolation, merge keys, relative paths resolved),
// with an empty environment so that the result does not depend on the shell,
// and the services of the given profiles besides those of none.
func loadCompose(tb testing.TB, profiles ...string) *types.Project {
	tb.Helper()
	return loadComposeEnv(tb, nil, profiles...)
}

// loadComposeEnv is loadCompose in the environment env (KEY=value).
func loadComposeEnv(tb testing.TB, env []string, profiles ...string) *types.Project {
	tb.Helper()
	root := repoRoot(tb)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
		cli.WithProfiles(profiles),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		tb.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func service(tb testing.TB, p *types.Project, name string) types.ServiceConfig {
	tb.Helper()
	s, ok := p.Services[name]
	if !ok {
		tb.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

func env(s types.ServiceConfig, name string) string {
	if v, ok := s.Environment[name]; ok && v != nil {
		return *v
	}
	return ""
}

// TestComposeFilesExist checks every file docker-compose.yml builds from or
// mounts: the Dockerfile and its context, the statsd mapping, the Prometheus
// config, Grafana's provisioning and the dashboards directory.
func TestComposeFilesExist(t *testing.T) {
	p := loadCompose(t, "*")
	for name, s := range p.Services {
		if s.Build != nil {
			mustExist(t, s.Build.Context, true, name+" build context")
			df := s.Build.Dockerfile
			if !filepath.IsAbs(df) {
				df = filepath.Join(s.Build.Context, df)
			}
			mustExist(t, df, false, name+" Dockerfile")
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			fi, err := os.Stat(inRepo(t, v.Source))
			if err != nil {
				t.Errorf("%s mounts %s at %s, which does not exist", name, v.Source, v.Target)
				continue
			}
			if !v.ReadOnly {
				t.Errorf("%s mounts the repository's %s writable; mount it :ro", name, v.Source)
			}
			// A file mounted where a directory is expected (or the reverse)
			// makes the container fail at start.
			if wantDir := !strings.Contains(filepath.Base(v.Target), "."); wantDir != fi.IsDir() {
				t.Errorf("%s mounts %s (directory: %v) at %s", name, v.Source, fi.IsDir(), v.Target)
			}
		}
	}
	// What the brief of the stack promises, by path.
	root := repoRoot(t)
	for _, want := range []struct {
		path string
		dir  bool
	}{
		{"Dockerfile", false},
		{"deploy/statsd/mapping.yml", false},
		{"deploy/prometheus/prometheus.yml", false},
		{"deploy/grafana/provisioning/datasources", true},
		{"deploy/grafana/provisioning/dashboards", true},
		{"dashboards/grafana", true},
		{"deploy/jaeger/config.yaml", false},
	} {
		if !mounted(p, filepath.Join(root, want.path)) {
			t.Errorf("docker-compose.yml does not use %s", want.path)
		}
		mustExist(t, want.path, want.dir, "docker-compose.yml")
	}
}

func mounted(p *types.Project, abs string) bool {
	for _, s := range p.Services {
		if s.Build != nil && (filepath.Join(s.Build.Context, s.Build.Dockerfile) == abs || s.Build.Dockerfile == abs) {
			return true
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && (v.Source == abs || strings.HasPrefix(abs, v.Source+string(filepath.Separator))) {
				return true
			}
		}
	}
	return false
}

// TestComposeWorkers checks the two workers: one group, distinct static
// member ids, advertised URLs that name the worker itself, their own state
// volumes and host ports, Kafka and the topics ready before they start, and
// only settings the worker reads.
func TestComposeWorkers(t *testing.T) {
	p := loadCompose(t)
	workers := []string{"worker-1", "worker-2"}
	seen := map[string]string{}
	unique := func(kind, value, who string) {
		t.Helper()
		if value == "" {
			t.Errorf("%s: %s is empty", who, kind)
			return
		}
		if prev, ok := seen[kind+"="+value]; ok {
			t.Errorf("%s and %s share %s=%s", prev, who, kind, value)
		}
		seen[kind+"="+value] = who
	}
	var names []string
	for _, w := range workers {
		s := service(t, p, w)
		if s.Build == nil {
			t.Errorf("%s is not built from the Dockerfile", w)
		}
		if got := env(s, "KAFKA_BROKERS"); got != "kafka:9092" {
			t.Errorf("%s: KAFKA_BROKERS=%q, want kafka:9092", w, got)
		}
		unique("KAFKA_INSTANCE_ID", env(s, "KAFKA_INSTANCE_ID"), w)
		adv := env(s, "ADVERTISED_URL")
		unique("ADVERTISED_URL", adv, w)
		if u, err := url.Parse(adv); err != nil || (u.Hostname() != w && u.Hostname() != s.Hostname) {
			t.Errorf("%s: ADVERTISED_URL=%q does not name the worker's own host", w, adv)
		}
		var dataVolume string
		for _, v := range s.Volumes {
			if v.Target == env(s, "DATA_DIR") && v.Type == types.VolumeTypeVolume {
				dataVolume = v.Source
			}
		}
		unique("DATA_DIR volume", dataVolume, w)
		if len(s.Ports) != 1 || s.Ports[0].Target != 8088 {
			t.Errorf("%s: want one published port for 8088, got %+v", w, s.Ports)
		} else {
			unique("host port", s.Ports[0].Published, w)
		}
		for dep, cond := range map[string]string{"kafka": "service_healthy", "topics": "service_completed_successfully"} {
			if d, ok := s.DependsOn[dep]; !ok || d.Condition != cond {
				t.Errorf("%s: want depends_on %s with condition %s", w, dep, cond)
			}
		}
		if s.StopGracePeriod == nil || durationOf(t, env(s, "SHUTDOWN_TIMEOUT")) >= int64(*s.StopGracePeriod) {
			t.Errorf("%s: stop_grace_period must exceed SHUTDOWN_TIMEOUT=%s", w, env(s, "SHUTDOWN_TIMEOUT"))
		}
		// Telemetry goes to services of this file.
		for _, v := range []string{"DD_AGENT_HOST"} {
			if _, ok := p.Services[env(s, v)]; !ok {
				t.Errorf("%s: %s=%q is not a service of docker-compose.yml", w, v, env(s, v))
			}
		}
		if u, err := url.Parse(env(s, "OTEL_EXPORTER_OTLP_ENDPOINT")); err != nil || u.Hostname() != "jaeger" {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT=%q does not point at jaeger", w, env(s, "OTEL_EXPORTER_OTLP_ENDPOINT"))
		}
		for name := range s.Environment {
			names = append(names, name)
		}
	}
	envReport(t, "docker-compose.yml", dedupe(names))
	if got := seen["host port=8088"] + "," + seen["host port=8089"]; got != "worker-1,worker-2" {
		t.Errorf("want worker-1 on host port 8088 and worker-2 on 8089, got %q", got)
	}
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// TestComposeKafka checks the broker (KRaft, official image, a healthcheck)
// and that the one-shot topics service creates the four topics the worker
// uses, co-partitioned, with the changelogs' cleanup policies.
func TestComposeKafka(t *testing.T) {
	p := loadCompose(t)
	k := service(t, p, "kafka")
	if !regexp.MustCompile(`^apache/kafka:3\.9\.\d+$`).MatchString(k.Image) {
		t.Errorf("kafka image %q: want apache/kafka:3.9.x", k.Image)
	}
	if got := env(k, "KAFKA_PROCESS_ROLES"); got != "broker,controller" {
		t.Errorf("KAFKA_PROCESS_ROLES=%q: want a combined KRaft node", got)
	}
	if env(k, "CLUSTER_ID") == "" {
		t.Error("kafka has no CLUSTER_ID: KRaft storage cannot be formatted")
	}
	if k.HealthCheck == nil || len(k.HealthCheck.Test) == 0 {
		t.Error("kafka has no healthcheck")
	}

	topics := service(t, p, "topics")
	if d, ok := topics.DependsOn["kafka"]; !ok || d.Condition != "service_healthy" {
		t.Error("topics must wait for a healthy kafka")
	}
	script := strings.Join(topics.Command, "\n")
	w := service(t, p, "worker-1")
	partitions := env(w, "PARTITIONS")
	want := map[string][]string{
		env(w, "PAGE_VIEWS_TOPIC"):                  nil,
		env(w, "KAFKA_GROUP") + "-views-changelog":  {"cleanup.policy=compact,delete"},
		env(w, "KAFKA_GROUP") + "-totals-changelog": {"cleanup.policy=compact"},
		env(w, "PAGE_VIEWS_TOPIC") + "-dlq":         nil,
		env(w, "PAGE_VIEWS_TOPIC") + "-windows":     nil,
	}
	created := regexp.MustCompile(`--create[^\n]*--topic (\S+)((?:\\\n|[^\n])*)`).FindAllStringSubmatch(script, -1)
	got := map[string]string{}
	for _, m := range created {
		got[m[1]] = m[2]
	}
	for topic, configs := range want {
		args, ok := got[topic]
		if !ok {
			t.Errorf("topics does not create %s", topic)
			continue
		}
		if !strings.Contains(args, "--partitions "+partitions+" ") {
			t.Errorf("topic %s is not created with PARTITIONS=%s partitions: %s", topic, partitions, args)
		}
		for _, c := range configs {
			if !strings.Contains(args, "--config "+c+" ") && !strings.HasSuffix(strings.TrimSpace(args), "--config "+c) {
				t.Errorf("topic %s is not created with %s: %s", topic, c, args)
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("topics creates %d topics, want %d: %v", len(got), len(want), got)
	}
}

// TestComposeSchemaRegistry checks the schema registry the workers use:
// Confluent's image at a pinned version, its schemas stored in this file's
// Kafka, a healthcheck on its API, its port published on loopback only and
// clear of the dev registry of `make run`, and every worker pointed at it and
// waiting until it is healthy (a worker refuses to start without it).
func TestComposeSchemaRegistry(t *testing.T) {
	p := loadCompose(t)
	const name = "schema-registry"
	sr := service(t, p, name)
	if !regexp.MustCompile(`^confluentinc/cp-schema-registry:[78]\.\d+\.\d+$`).MatchString(sr.Image) {
		t.Errorf("%s image %q: want confluentinc/cp-schema-registry:<7.x or 8.x>, a pinned version", name, sr.Image)
	}
	if env(sr, "SCHEMA_REGISTRY_HOST_NAME") == "" {
		t.Errorf("%s: SCHEMA_REGISTRY_HOST_NAME is empty", name)
	}
	if d, ok := sr.DependsOn["kafka"]; !ok || d.Condition != "service_healthy" {
		t.Errorf("%s must wait for a healthy kafka", name)
	}
	// The registry stores its schemas in the broker the workers use, on the
	// same listener.
	brokers := map[string]bool{}
	for _, b := range strings.Split(env(service(t, p, "worker-1"), "KAFKA_BROKERS"), ",") {
		brokers[strings.TrimSpace(b)] = true
	}
	store := env(sr, "SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS")
	for _, b := range strings.Split(store, ",") {
		b = strings.TrimSpace(b)
		if _, addr, ok := strings.Cut(b, "://"); ok {
			b = addr
		}
		if !brokers[b] {
			t.Errorf("%s: SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS=%q names %q, not a broker of the workers' KAFKA_BROKERS", name, store, b)
		}
	}
	// The ports it listens on.
	listens := map[string]bool{}
	for _, l := range strings.Split(env(sr, "SCHEMA_REGISTRY_LISTENERS"), ",") {
		u, err := url.Parse(strings.TrimSpace(l))
		if err != nil || u.Scheme != "http" || u.Port() == "" {
			t.Errorf("%s: SCHEMA_REGISTRY_LISTENERS entry %q: want http://<host>:<port>", name, l)
			continue
		}
		listens[u.Port()] = true
	}
	checkRegistryHealthcheck(t, name, sr, listens)
	if len(sr.Ports) == 0 {
		t.Errorf("%s publishes no port: the host cannot reach it", name)
	}
	for _, port := range sr.Ports {
		if port.HostIP != "127.0.0.1" {
			t.Errorf("%s publishes host port %s on %s: bind it to 127.0.0.1 only", name, port.Published, cmp.Or(port.HostIP, "every interface"))
		}
		if !listens[strconv.Itoa(int(port.Target))] {
			t.Errorf("%s publishes container port %d, where it does not listen", name, port.Target)
		}
		// `make run` serves its dev registry on 127.0.0.1:8081
		// (EMBEDDED_REGISTRY_ADDR).
		if port.Published == "8081" {
			t.Errorf("%s publishes host port 8081, which the embedded dev registry of `make run` uses", name)
		}
	}
	for _, w := range []string{"worker-1", "worker-2"} {
		s := service(t, p, w)
		raw := env(s, "SCHEMA_REGISTRY_URL")
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || (u.Hostname() != name && u.Hostname() != sr.Hostname) || !listens[u.Port()] {
			t.Errorf("%s: SCHEMA_REGISTRY_URL=%q, want http://%s:<a port of SCHEMA_REGISTRY_LISTENERS>", w, raw, name)
		}
		if d, ok := s.DependsOn[name]; !ok || d.Condition != "service_healthy" {
			t.Errorf("%s: want depends_on %s with condition service_healthy", w, name)
		}
	}
}

// checkRegistryHealthcheck checks that the registry's healthcheck asks its
// API for the subjects, on a port it listens on: it answers only once it has
// read its schemas from Kafka.
func checkRegistryHealthcheck(t *testing.T, name string, sr types.ServiceConfig, listens map[string]bool) {
	if sr.HealthCheck == nil || len(sr.HealthCheck.Test) == 0 {
		t.Errorf("%s has no healthcheck: the workers cannot wait for it", name)
		return
	}
	probed := false
	for _, arg := range sr.HealthCheck.Test {
		for _, f := range strings.Fields(arg) {
			u, err := url.Parse(f)
			probed = probed || (err == nil && u.Scheme == "http" && listens[u.Port()] && u.Path == "/subjects")
		}
	}
	if !probed {
		t.Errorf("%s: the healthcheck %q does not request /subjects on a port of SCHEMA_REGISTRY_LISTENERS", name, sr.HealthCheck.Test)
	}
}

// TestComposeObservability checks that statsd_exporter reads the mapping,
// Prometheus scrapes statsd_exporter, and Grafana's provisioning points at
// Prometheus and at the mounted dashboards directory.
func TestComposeObservability(t *testing.T) {
	p := loadCompose(t, observability)
	root := repoRoot(t)
	exporters := checkStatsdExporter(t, p, root)
	checkPrometheus(t, p, root, exporters)
	checkGrafana(t, p, root)
}

// composeWorkers are the workers of docker-compose.yml.
func composeWorkers() []string { return []string{"worker-1", "worker-2"} }

// checkStatsdExporter checks that every worker sends its metrics to a
// statsd_exporter of its own, which loads the mapping and listens where
// the worker sends. A gauge is one series per name and tags in an
// exporter: two workers sending to one exporter would overwrite each
// other's partitions assigned, generation, members and runtime gauges,
// since nothing in their tags tells them apart. It returns the exporters,
// by worker.
func checkStatsdExporter(t *testing.T, p *types.Project, root string) map[string]string {
	exporters := map[string]string{}
	owner := map[string]string{}
	for _, w := range composeWorkers() {
		ws := service(t, p, w)
		name := env(ws, "DD_AGENT_HOST")
		if prev, ok := owner[name]; ok {
			t.Errorf("%s and %s send DogStatsD to one exporter %q: their per-worker gauges would overwrite each other", prev, w, name)
		}
		owner[name], exporters[w] = w, name
		se, ok := p.Services[name]
		if !ok {
			t.Errorf("%s: DD_AGENT_HOST=%q is not a service of docker-compose.yml", w, name)
			continue
		}
		if !strings.HasPrefix(se.Image, "prom/statsd-exporter:") {
			t.Errorf("%s: DD_AGENT_HOST=%q runs %q, not statsd_exporter", w, name, se.Image)
		}
		mapping := mountTarget(se, filepath.Join(root, "deploy/statsd/mapping.yml"))
		if mapping == "" || !containsArg(se.Command, "--statsd.mapping-config="+mapping) {
			t.Errorf("%s does not load deploy/statsd/mapping.yml (mounted at %q, command %q)", name, mapping, se.Command)
		}
		if env(ws, "DD_DOGSTATSD_PORT") != "9125" || !containsArg(se.Command, "--statsd.listen-udp=:9125") {
			t.Errorf("%s and %s disagree on the DogStatsD port (9125/udp)", w, name)
		}
		if !containsArg(se.Command, "--web.listen-address=:9102") {
			t.Errorf("%s does not serve its metrics on :9102 (command %q)", name, se.Command)
		}
		if _, ok := ws.DependsOn[name]; !ok {
			t.Errorf("%s does not depend on its exporter %s", w, name)
		}
	}
	return exporters
}

// checkPrometheus checks that prometheus mounts its configuration and
// scrapes every worker's exporter in the pageviews job, each as a target of
// its own (its instance label names the worker), and only services of the
// compose file.
func checkPrometheus(t *testing.T, p *types.Project, root string, exporters map[string]string) {
	prom := service(t, p, "prometheus")
	if mountTarget(prom, filepath.Join(root, "deploy/prometheus/prometheus.yml")) == "" {
		t.Error("prometheus does not mount deploy/prometheus/prometheus.yml")
	}
	var promCfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			HonorLabels   bool   `yaml:"honor_labels"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "deploy/prometheus/prometheus.yml", &promCfg)
	scraped := map[string]int{}
	for _, sc := range promCfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("prometheus target %q: %v", target, err)
					continue
				}
				if sc.JobName == "pageviews" && port == "9102" && sc.HonorLabels {
					scraped[host]++
				}
				if _, ok := p.Services[host]; !ok && host != "localhost" {
					t.Errorf("prometheus target %q is not a service of docker-compose.yml", target)
				}
			}
		}
	}
	for w, e := range exporters {
		if scraped[e] != 1 {
			t.Errorf("prometheus's pageviews job (honor_labels) scrapes %s:9102, %s's exporter, %d times, want once", e, w, scraped[e])
		}
	}
}

// checkGrafana checks where grafana mounts its provisioning, and that the
// provisioning's data sources and dashboard providers point at services of
// the compose file and at the mounted dashboards directory.
func checkGrafana(t *testing.T, p *types.Project, root string) {
	g := service(t, p, "grafana")
	provisioning := mountTarget(g, filepath.Join(root, "deploy/grafana/provisioning"))
	dashboards := mountTarget(g, filepath.Join(root, "dashboards/grafana"))
	if provisioning != "/etc/grafana/provisioning" {
		t.Errorf("grafana mounts deploy/grafana/provisioning at %q, want /etc/grafana/provisioning", provisioning)
	}
	checkGrafanaDatasources(t, p)
	checkGrafanaDashboards(t, dashboards)
}

// checkGrafanaDatasources checks that Grafana's data sources include
// Prometheus and point at services of the compose file.
func checkGrafanaDatasources(t *testing.T, p *types.Project) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, Type, URL, UID string
		} `yaml:"datasources"`
	}
	readYAML(t, "deploy/grafana/provisioning/datasources/datasources.yml", &ds)
	hasProm := false
	for _, d := range ds.Datasources {
		u, err := url.Parse(d.URL)
		if err != nil || u.Host == "" {
			t.Errorf("datasource %s: bad url %q", d.Name, d.URL)
			continue
		}
		if _, ok := p.Services[u.Hostname()]; !ok {
			t.Errorf("datasource %s points at %s, which is not a service of docker-compose.yml", d.Name, u.Host)
		}
		hasProm = hasProm || d.Type == "prometheus"
	}
	if ds.APIVersion != 1 || !hasProm {
		t.Errorf("datasources.yml: want apiVersion 1 and a prometheus data source, got %+v", ds)
	}
}

// checkGrafanaDashboards checks that Grafana's dashboard providers read the
// directory where dashboards/grafana is mounted.
func checkGrafanaDashboards(t *testing.T, dashboards string) {
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name    string
			Type    string
			Options struct {
				Path string
			}
		} `yaml:"providers"`
	}
	readYAML(t, "deploy/grafana/provisioning/dashboards/dashboards.yml", &dp)
	if dp.APIVersion != 1 || len(dp.Providers) == 0 {
		t.Fatalf("dashboards.yml: want apiVersion 1 and a provider, got %+v", dp)
	}
	for _, pr := range dp.Providers {
		if pr.Type != "file" || pr.Options.Path != dashboards {
			t.Errorf("dashboard provider %s reads %q, but dashboards/grafana is mounted at %q", pr.Name, pr.Options.Path, dashboards)
		}
	}
}

func mountTarget(s types.ServiceConfig, source string) string {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && v.Source == source {
			return v.Target
		}
	}
	return ""
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

func readYAML(tb testing.TB, path string, v any) {
	tb.Helper()
	b, err := os.ReadFile(inRepo(tb, path))
	if err != nil {
		tb.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(false)
	if err := dec.Decode(v); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
}

func durationOf(tb testing.TB, s string) int64 {
	tb.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		tb.Fatalf("duration %q: %v", s, err)
	}
	return int64(d)
}

// TestComposeLoopback checks that every port of every service, in every
// profile, is published on the host's loopback only: Grafana lets any
// visitor in as an admin, and Kafka, the schema registry, Jaeger and the
// workers take requests without credentials.
func TestComposeLoopback(t *testing.T) {
	p := loadCompose(t, "*")
	published := 0
	for name, s := range p.Services {
		for _, port := range s.Ports {
			published++
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes container port %d on %s: bind it to 127.0.0.1 (\"127.0.0.1:%s:%d\")",
					name, port.Target, cmp.Or(port.HostIP, "every interface"), cmp.Or(port.Published, "<port>"), port.Target)
			}
		}
	}
	if published == 0 {
		t.Error("docker-compose.yml publishes no port at all")
	}
	// Grafana's anonymous admin is the reason: check it is what runs.
	g := service(t, p, "grafana")
	if env(g, "GF_AUTH_ANONYMOUS_ENABLED") == "true" && len(g.Ports) == 0 {
		t.Error("grafana publishes no port: the host cannot reach it")
	}
}

// TestComposeProfiles checks that Grafana and Jaeger run only with the
// observability profile, and the rest of the stack with any: the workers,
// Kafka and Prometheus must not depend on them (compose-go's consistency
// check fails loading the file without the profile otherwise).
func TestComposeProfiles(t *testing.T) {
	optional := map[string]bool{"grafana": true, "jaeger": true}
	base := loadCompose(t)
	full := loadCompose(t, observability)
	for name, s := range full.Services {
		switch {
		case optional[name]:
			if !slices.Equal(s.Profiles, []string{observability}) {
				t.Errorf("%s has profiles %v, want [%s]", name, s.Profiles, observability)
			}
			if _, ok := base.Services[name]; ok {
				t.Errorf("%s runs without the %s profile", name, observability)
			}
		default:
			if len(s.Profiles) > 0 {
				t.Errorf("%s has profiles %v: only Grafana and Jaeger are optional", name, s.Profiles)
			}
			if _, ok := base.Services[name]; !ok {
				t.Errorf("%s does not run without the %s profile", name, observability)
			}
		}
	}
	for name := range optional {
		if _, ok := full.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no %s service in the %s profile", name, observability)
		}
	}
}

// jaegerConfig is the part of deploy/jaeger/config.yaml the checks read.
type jaegerConfig struct {
	Service struct {
		Extensions []string `yaml:"extensions"`
		Pipelines  map[string]struct {
			Receivers []string `yaml:"receivers"`
			Exporters []string `yaml:"exporters"`
		} `yaml:"pipelines"`
	} `yaml:"service"`
	Extensions struct {
		Storage struct {
			Backends map[string]any `yaml:"backends"`
		} `yaml:"jaeger_storage"`
		Query struct {
			Storage struct {
				Traces string `yaml:"traces"`
			} `yaml:"storage"`
			HTTP struct {
				Endpoint string `yaml:"endpoint"`
			} `yaml:"http"`
		} `yaml:"jaeger_query"`
		Health struct {
			HTTP struct {
				Endpoint string `yaml:"endpoint"`
			} `yaml:"http"`
		} `yaml:"healthcheckv2"`
	} `yaml:"extensions"`
	Receivers struct {
		OTLP struct {
			Protocols struct {
				GRPC struct {
					Endpoint string `yaml:"endpoint"`
				} `yaml:"grpc"`
				HTTP struct {
					Endpoint string `yaml:"endpoint"`
				} `yaml:"http"`
			} `yaml:"protocols"`
		} `yaml:"otlp"`
	} `yaml:"receivers"`
	Exporters struct {
		Storage struct {
			TraceStorage string `yaml:"trace_storage"`
		} `yaml:"jaeger_storage_exporter"`
	} `yaml:"exporters"`
}

// readJaegerConfig reads deploy/jaeger/config.yaml and checks it: OTLP over
// gRPC on 4317 and HTTP on 4318, into a storage backend it defines, which the
// query service (the UI) reads; every listener on all of the container's
// interfaces (Jaeger's own default is loopback, which a container's port
// mapping cannot reach). It returns the config.
func readJaegerConfig(t *testing.T) jaegerConfig {
	var cfg jaegerConfig
	readYAML(t, "deploy/jaeger/config.yaml", &cfg)
	listeners := map[string]string{
		"receivers.otlp.protocols.grpc": cfg.Receivers.OTLP.Protocols.GRPC.Endpoint,
		"receivers.otlp.protocols.http": cfg.Receivers.OTLP.Protocols.HTTP.Endpoint,
		"extensions.jaeger_query.http":  cfg.Extensions.Query.HTTP.Endpoint,
		"extensions.healthcheckv2.http": cfg.Extensions.Health.HTTP.Endpoint,
	}
	for what, ep := range listeners {
		host, _, err := net.SplitHostPort(ep)
		if err != nil || host != "0.0.0.0" {
			t.Errorf("deploy/jaeger/config.yaml: %s endpoint %q: want 0.0.0.0:<port>", what, ep)
		}
	}
	if port(cfg.Receivers.OTLP.Protocols.GRPC.Endpoint) != "4317" || port(cfg.Receivers.OTLP.Protocols.HTTP.Endpoint) != "4318" {
		t.Errorf("deploy/jaeger/config.yaml: OTLP on %q and %q, want the standard ports 4317 (gRPC) and 4318 (HTTP)",
			cfg.Receivers.OTLP.Protocols.GRPC.Endpoint, cfg.Receivers.OTLP.Protocols.HTTP.Endpoint)
	}
	traces := cfg.Service.Pipelines["traces"]
	if !slices.Contains(traces.Receivers, "otlp") || !slices.Contains(traces.Exporters, "jaeger_storage_exporter") {
		t.Errorf("deploy/jaeger/config.yaml: the traces pipeline %+v does not take OTLP into Jaeger's storage", traces)
	}
	store := cfg.Exporters.Storage.TraceStorage
	if _, ok := cfg.Extensions.Storage.Backends[store]; !ok || cfg.Extensions.Query.Storage.Traces != store {
		t.Errorf("deploy/jaeger/config.yaml: the exporter writes to %q, the query service reads %q, the backends are %v",
			store, cfg.Extensions.Query.Storage.Traces, cfg.Extensions.Storage.Backends)
	}
	for _, ext := range []string{"jaeger_storage", "jaeger_query"} {
		if !slices.Contains(cfg.Service.Extensions, ext) {
			t.Errorf("deploy/jaeger/config.yaml: extension %s is not enabled (service.extensions)", ext)
		}
	}
	return cfg
}

// port is the port of a host:port endpoint.
func port(endpoint string) string {
	_, p, _ := net.SplitHostPort(endpoint)
	return p
}

// TestComposeJaeger checks the compose Jaeger: v2 (the v1 all-in-one image
// is end of life) at a pinned version, running deploy/jaeger/config.yaml,
// publishing OTLP and the UI where the config listens, with a healthcheck on
// its health endpoint; the workers send OTLP/HTTP to its receiver, but only
// when PAGEVIEWS_TRACES=otlp asks, since Jaeger runs only in its profile.
func TestComposeJaeger(t *testing.T) {
	cfg := readJaegerConfig(t)
	p := loadCompose(t, observability)
	j := service(t, p, "jaeger")
	if !regexp.MustCompile(`^jaegertracing/jaeger:2\.\d+\.\d+$`).MatchString(j.Image) {
		t.Errorf("jaeger image %q: want jaegertracing/jaeger:2.x.y (Jaeger v2), a pinned version", j.Image)
	}
	target := mountTarget(j, filepath.Join(repoRoot(t), "deploy/jaeger/config.yaml"))
	if target == "" || !slices.Equal([]string(j.Command), []string{"--config", target}) {
		t.Errorf("jaeger does not run deploy/jaeger/config.yaml (mounted at %q, command %q)", target, j.Command)
	}
	targets := map[string]bool{}
	for _, pt := range j.Ports {
		targets[strconv.Itoa(int(pt.Target))] = true
	}
	for what, ep := range map[string]string{
		"OTLP gRPC": cfg.Receivers.OTLP.Protocols.GRPC.Endpoint,
		"OTLP HTTP": cfg.Receivers.OTLP.Protocols.HTTP.Endpoint,
		"the UI":    cfg.Extensions.Query.HTTP.Endpoint,
	} {
		if !targets[port(ep)] {
			t.Errorf("jaeger does not publish %s (%s)", what, ep)
		}
	}
	if j.HealthCheck == nil || !strings.Contains(strings.Join(j.HealthCheck.Test, " "), ":"+port(cfg.Extensions.Health.HTTP.Endpoint)+"/status") {
		t.Errorf("jaeger's healthcheck does not ask its health endpoint %s/status", cfg.Extensions.Health.HTTP.Endpoint)
	}

	// The workers: OTLP/HTTP to the receiver, off by default.
	withTraces := loadComposeEnv(t, []string{"PAGEVIEWS_TRACES=otlp"}, observability)
	for _, w := range []string{"worker-1", "worker-2"} {
		s := service(t, p, w)
		u, err := url.Parse(env(s, "OTEL_EXPORTER_OTLP_ENDPOINT"))
		if err != nil || u.Hostname() != "jaeger" || u.Port() != port(cfg.Receivers.OTLP.Protocols.HTTP.Endpoint) || env(s, "OTEL_EXPORTER_OTLP_PROTOCOL") != "http/protobuf" {
			t.Errorf("%s: OTLP to %q over %q, want http/protobuf to jaeger's HTTP receiver (%s)", w,
				env(s, "OTEL_EXPORTER_OTLP_ENDPOINT"), env(s, "OTEL_EXPORTER_OTLP_PROTOCOL"), cfg.Receivers.OTLP.Protocols.HTTP.Endpoint)
		}
		if got := env(s, "OTEL_TRACES_EXPORTER"); got != "none" {
			t.Errorf("%s: OTEL_TRACES_EXPORTER=%q by default, want none (Jaeger runs only in the %s profile)", w, got, observability)
		}
		if got := env(service(t, withTraces, w), "OTEL_TRACES_EXPORTER"); got != "otlp" {
			t.Errorf("%s: OTEL_TRACES_EXPORTER=%q with PAGEVIEWS_TRACES=otlp, want otlp", w, got)
		}
		if _, ok := s.DependsOn["jaeger"]; ok {
			t.Errorf("%s depends on jaeger, which runs only in the %s profile", w, observability)
		}
	}

	// Grafana's Jaeger data source reads the query service.
	var ds struct {
		Datasources []struct{ Type, URL string } `yaml:"datasources"`
	}
	readYAML(t, "deploy/grafana/provisioning/datasources/datasources.yml", &ds)
	for _, d := range ds.Datasources {
		if d.Type != "jaeger" {
			continue
		}
		if u, err := url.Parse(d.URL); err != nil || u.Hostname() != "jaeger" || u.Port() != port(cfg.Extensions.Query.HTTP.Endpoint) {
			t.Errorf("Grafana's Jaeger data source %q does not point at jaeger's query service (%s)", d.URL, cfg.Extensions.Query.HTTP.Endpoint)
		}
	}
}
