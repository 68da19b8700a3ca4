package dashboards

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"gopkg.in/yaml.v3"

	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/test/harness"
)

// TestDashboardsEndToEnd runs the whole metrics path with real processes: a
// dev broker, two workers, one statsd_exporter per worker (with
// deploy/statsd/mapping.yml) and a Prometheus server scraping both exporters
// every second, with deploy/prometheus/alerts.yml loaded. A scripted
// scenario (load through /count/, a bad and a late record, windows
// expiring, livechecks every second, a second worker joining, leaving and
// joining again: rebalances, hand-overs and recoveries) makes every metric
// move; then every listed metric must be in Prometheus with its labels,
// every query of the generated Grafana dashboard (panels, annotations,
// variables) must return data, and every alert rule must evaluate without
// error.
func TestDashboardsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: starts a broker, workers, exporters and Prometheus")
	}
	began := time.Now()
	prometheusBin := harness.RequireProgram(t, "prometheus", "prometheus")
	root := harness.Root(t)
	dir := t.TempDir()
	exporterBin := buildBinaries(t, dir)
	t.Logf("built the worker, the dev broker and statsd_exporter in %s", time.Since(began).Round(time.Millisecond))
	// Every wait below together: about a minute when all goes well.
	st := &stack{root: root, dir: dir, bud: budget{end: time.Now().Add(3 * time.Minute)}}

	st.broker = harness.StartBroker(t, dir, "-registry-addr", "127.0.0.1:0")
	st.startExporters(t, exporterBin)
	st.startPrometheus(t, prometheusBin)
	st.runScenario(t)
	procs := st.running()

	st.checkFacts(t, procs)
	st.checkListedMetrics(t, procs)
	if v, err := st.server.scalar(`sum(statsd_exporter_events_conflict_total)`); err != nil || v != 0 {
		t.Errorf("statsd_exporter dropped events whose type conflicts with a mapped metric: %g (%v)", v, err)
	}
	t.Logf("scenario done after %s", time.Since(began).Round(time.Millisecond))

	exprs, variableQueries := grafanaQueries(t)
	// The interval variables cover the whole scenario, as a dashboard zoomed
	// out over it would.
	window := fmt.Sprintf("%ds", int(time.Since(st.promStarted).Seconds())+15)
	st.checkPanelQueries(t, procs, exprs, window)
	st.checkVariableQueries(t, variableQueries, window)
	st.checkAlertRules(t, procs)
	st.checkAlertSignals(t, procs)
	t.Logf("end to end in %s", time.Since(began).Round(time.Millisecond))
}

// stack is the processes of the end-to-end test: the broker, an exporter
// per worker, Prometheus and the workers.
type stack struct {
	root, dir   string
	bud         budget
	broker      *harness.Broker
	exporters   []*exporter
	instances   []string // the exporters' instance labels
	promProc    *harness.Proc
	promStarted time.Time
	server      promClient
	a, b        *harness.Worker   // b is nil while the second worker is down
	envB        map[string]string // the second worker's, kept across restarts
}

// buildBinaries builds the worker, the dev broker and statsd_exporter, and
// returns the path of statsd_exporter.
func buildBinaries(t *testing.T, dir string) string {
	t.Helper()
	harness.WorkerBinary(t)
	harness.Build(t, "devbroker")
	// The version pinned by this module's tool directive.
	exporterBin := filepath.Join(dir, "bin", "statsd_exporter")
	goBuild(t, ".", exporterBin, "github.com/prometheus/statsd_exporter")
	return exporterBin
}

// startExporters starts one statsd_exporter per worker: the worker's
// identity in Prometheus is the exporter's instance label, as with the Helm
// chart's sidecar, which also starts and stops with its worker.
func (st *stack) startExporters(t *testing.T, bin string) {
	t.Helper()
	st.exporters = make([]*exporter, 2)
	for i := range st.exporters {
		st.exporters[i] = &exporter{
			name:       fmt.Sprintf("statsd_exporter-%d", i),
			bin:        bin,
			mapping:    filepath.Join(st.root, "deploy/statsd/mapping.yml"),
			statsdPort: harness.FreePort(t, "udp"),
			instance:   harness.FreeAddr(t),
		}
		st.exporters[i].start(t, st.bud, st.dir)
	}
	st.instances = []string{st.exporters[0].instance, st.exporters[1].instance}
}

// startPrometheus starts Prometheus scraping the exporters and waits until
// it is ready.
func (st *stack) startPrometheus(t *testing.T, bin string) {
	t.Helper()
	promAddr := harness.FreeAddr(t)
	promConfig := filepath.Join(st.dir, "prometheus.yml")
	writePrometheusConfig(t, st.root, promConfig, st.instances)
	st.promStarted = time.Now()
	st.promProc = harness.Start(t, st.dir, "prometheus", bin, []string{
		"--config.file=" + promConfig,
		"--storage.tsdb.path=" + filepath.Join(st.dir, "tsdb"),
		"--web.listen-address=" + promAddr,
	}, nil)
	st.server = promClient{base: "http://" + promAddr}
	eventually(t, st.bud.within(30*time.Second), "prometheus ready", []*harness.Proc{st.promProc}, func() (bool, string) {
		code, _, err := httpGet(st.server.base + "/-/ready")
		return code == http.StatusOK, fmt.Sprint(code, err)
	})
}

// workerEnv is the environment of a worker, with a data directory of its
// own, that sends its metrics to e and keeps standbyReplicas standby copies.
func (st *stack) workerEnv(t *testing.T, e *exporter, standbyReplicas int) map[string]string {
	return harness.WorkerEnv(t.TempDir(), map[string]string{
		"KAFKA_BROKERS":       st.broker.Addr,
		"SCHEMA_REGISTRY_URL": st.broker.Registry,
		"COMMIT_INTERVAL":     "100ms",
		// One-second windows that close a second after their end and
		// expire a second later: windows close (their counts go to
		// page_views-windows) and expire while the test runs.
		"WINDOW_SIZE":            "1s",
		"WINDOW_GRACE":           "1s",
		"WINDOW_EXPIRES":         "2s",
		"DD_AGENT_HOST":          "127.0.0.1",
		"DD_DOGSTATSD_PORT":      strconv.Itoa(e.statsdPort),
		"DD_ENV":                 "e2e",
		"DD_SERVICE":             "pageviews",
		"DD_VERSION":             "e2e",
		"METRICS_INTERVAL":       "200ms",
		"LIVECHECK_INTERVAL":     "1s",
		"LIVECHECK_SLO":          "5s",
		"TABLE_STANDBY_REPLICAS": strconv.Itoa(standbyReplicas),
		"LOG_LEVEL":              "info",
	})
}

// running lists the processes that must not exit on their own.
func (st *stack) running() []*harness.Proc {
	ps := []*harness.Proc{st.broker.Proc, st.promProc, st.exporters[0].proc, st.a.Proc}
	if st.b != nil {
		ps = append(ps, st.exporters[1].proc, st.b.Proc)
	}
	return ps
}

// held waits until the two workers hold the 8 partitions between them, the
// first worker holding onFirst of them (-1: some, not all), as Prometheus
// sees it.
func (st *stack) held(t *testing.T, what string, onFirst float64) {
	t.Helper()
	eventually(t, st.bud.within(60*time.Second), what, st.running(), func() (bool, string) {
		s, err := st.server.query(`pageviews_partitions_assigned{env="e2e"}`)
		if err != nil {
			return false, err.Error()
		}
		got := map[string]float64{}
		for _, x := range s {
			got[x.Metric["instance"]] = x.value()
		}
		n1, n2 := got[st.instances[0]], got[st.instances[1]]
		ok := n1+n2 == 8 && (onFirst < 0 && n1 > 0 && n2 > 0 || onFirst == n1)
		return ok, fmt.Sprint(got)
	})
}

// runScenario makes every metric move: load on the first worker, a bad and
// a late record, then the second worker joining, leaving and joining again.
func (st *stack) runScenario(t *testing.T) {
	t.Helper()
	st.a = harness.StartWorker(t, st.dir, "worker-a", st.workerEnv(t, st.exporters[0], 1))
	waitReady(t, st.a, st.bud, st.running())
	// Load on the first worker, long enough for one-second windows to
	// expire behind it.
	load(t, []*harness.Worker{st.a}, "/p/", 48)
	produceBadRecords(t, st.broker.Addr)
	st.joinSecondWorker(t)
	st.restartSecondWorker(t)
}

// produceBadRecords sends a record that is not JSON (dead-lettered) and one
// an hour old (late: its window closed long ago), from an outside producer.
func produceBadRecords(t *testing.T, brokers string) {
	t.Helper()
	produceRaw(t, brokers, "/p/0", []byte("not json"))
	late := fmt.Sprintf(`{"page":"/p/1","count":1,"timestamp":%q}`, time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano))
	produceRaw(t, brokers, "/p/1", []byte(late))
}

// joinSecondWorker starts the second worker: a rebalance; the first hands
// partitions over, and the second recovers them from the changelogs. It
// keeps no standby copies, which would have replayed the changelogs before
// the partitions arrive; the first keeps standby copies of what it gives.
func (st *stack) joinSecondWorker(t *testing.T) {
	t.Helper()
	st.envB = st.workerEnv(t, st.exporters[1], 0)
	st.b = harness.StartWorker(t, st.dir, "worker-b", st.envB)
	waitReady(t, st.b, st.bud, st.running())
	st.held(t, "partitions split between the two workers", -1)
	load(t, []*harness.Worker{st.a, st.b}, "/q/", 48)
}

// restartSecondWorker stops the second worker (a warm shutdown: it hands
// its partitions back, and the first takes them over from its standby
// copies) with its exporter, and brings it back with its data: two more
// rebalances, so that rare events happen more than once on the first
// worker. Prometheus sees a series grow only from its second event
// on: statsd_exporter creates it at the first.
func (st *stack) restartSecondWorker(t *testing.T) {
	t.Helper()
	_ = st.b.Terminate(stopTimeout)
	st.exporters[1].stop()
	st.b = nil
	st.held(t, "the first worker holds every partition", 8)
	st.checkWorkerMissing(t)
	load(t, []*harness.Worker{st.a}, "/r/", 32)
	st.exporters[1].start(t, st.bud, st.dir)
	st.b = harness.StartWorker(t, st.dir, "worker-b.run2", st.envB)
	waitReady(t, st.b, st.bud, st.running())
	st.held(t, "partitions split again", -1)
	load(t, []*harness.Worker{st.a, st.b}, "/s/", 32)
}

// checkFacts waits until Prometheus sees what the scenario did.
func (st *stack) checkFacts(t *testing.T, procs []*harness.Proc) {
	facts := []struct {
		what, query string
		atLeast     float64
	}{
		{"views counted", `sum(pageviews_events{env="e2e"})`, 160},
		{"the bad record dead-lettered", `sum(pageviews_dead_letters{env="e2e"})`, 1},
		{"the old record counted late", `sum(pageviews_late_events{env="e2e"})`, 1},
		{"windows expired", `sum(pageviews_window_expiries{env="e2e"})`, 1},
		{"windows closed", `sum(pageviews_windows_closed{env="e2e"})`, 1},
		{"registry-framed views read", `sum(pageviews_schema_records{env="e2e"})`, 1},
		{"windows closed with their lag timed", `sum(pageviews_window_close_lag_count{env="e2e"})`, 1},
		{"changelog records replayed in a recovery", `sum(pageviews_recovery_records{env="e2e"})`, 1},
		{"a second generation", `max(pageviews_generation{env="e2e"})`, 2},
		{"partitions handed over", `sum(pageviews_rebalance_return_latency_count{env="e2e"})`, 1},
		{"livechecks succeeded", `sum(pageviews_livecheck_success{env="e2e"})`, 1},
		{"offset commits counted", `sum(pageviews_commits{env="e2e"})`, 1},
		// Each worker's own exporter keeps its gauges apart: both report
		// a group of two, under their own instance.
		{"each worker reports the group's two members", `count(pageviews_group_members{env="e2e"} == 2)`, 2},
		{"each worker reports its store's memtables", `count(pageviews_pebble_memtable_bytes{env="e2e"} > 0)`, 2},
		{"standby copies kept", `sum(pageviews_standby_partitions{env="e2e"})`, 1},
		{"standby copies' lag sampled", `count(pageviews_standby_lag{env="e2e"})`, 1},
		// Every assignment reports what it replayed and what it started
		// from: the second worker's first join starts from nothing and
		// replays what the first wrote, and the first worker takes the
		// second's partitions back from its standby copies when the
		// second leaves. The second worker's first series leave with its
		// first exporter, so these look over the whole scenario.
		{"partitions taken over from nothing", `count(last_over_time(pageviews_assignment_replayed_records{env="e2e",copy="none"}[10m]))`, 1},
		{"partitions taken over from standby copies", `count(last_over_time(pageviews_assignment_replayed_records{env="e2e",copy="standby"}[10m]))`, 1},
		{"changelog records replayed to take partitions over", `sum(last_over_time(pageviews_assignment_replayed_records{env="e2e"}[10m]))`, 1},
	}
	factsBy := st.bud.within(60 * time.Second)
	for _, f := range facts {
		eventually(t, factsBy, f.what, procs, func() (bool, string) {
			v, err := st.server.scalar(f.query)
			if err != nil {
				return false, err.Error()
			}
			return v >= f.atLeast, fmt.Sprintf("%s = %g, want >= %g", f.query, v, f.atLeast)
		})
	}
}

// checkListedMetrics waits until every listed metric reaches Prometheus
// under its mapped name, with the tags docs/metrics.md lists as labels.
func (st *stack) checkListedMetrics(t *testing.T, procs []*harness.Proc) {
	metricsBy := st.bud.within(30 * time.Second)
	for _, d := range metrics.All() {
		name := prom(d)
		if d.Kind == metrics.Timing {
			name += "_count"
		}
		labels := append([]string{"env", "service", "version", "instance"}, d.Tags...)
		eventually(t, metricsBy, "metric "+name, procs, func() (bool, string) {
			s, err := st.server.query(name + `{env="e2e"}`)
			if err != nil {
				return false, err.Error()
			}
			for _, x := range s {
				missing := ""
				for _, l := range labels {
					if x.Metric[l] == "" {
						missing += " " + l
					}
				}
				if missing == "" {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%d series, none with every label of %v", len(s), labels)
		})
	}
}

// grafanaQueries returns the queries of the generated Grafana dashboard:
// its panels' and annotations', and its template variables'.
func grafanaQueries(t *testing.T) (exprs, variableQueries []string) {
	t.Helper()
	grafanaJSON, err := os.ReadFile(GrafanaFile)
	if err != nil {
		t.Fatal(err)
	}
	exprs, variableQueries, err = PanelQueries(grafanaJSON)
	if err != nil {
		t.Fatal(err)
	}
	return exprs, variableQueries
}

// grafanaVars is the variables Grafana would substitute with worker as the
// worker variable and every interval variable set to window.
func grafanaVars(window, worker string) map[string]string {
	return map[string]string{
		"env": "e2e", "service": "pageviews", "worker": worker,
		"__rate_interval": window, "__interval": window, "__range": window,
	}
}

// checkPanelQueries checks every panel query, with the variables Grafana
// would substitute: for all workers it returns data, and for one worker at a
// time it returns only that worker's series, with data for one at least.
func (st *stack) checkPanelQueries(t *testing.T, procs []*harness.Proc, exprs []string, window string) {
	queriesBy := st.bud.within(30 * time.Second)
	for _, expr := range exprs {
		all := substitute(expr, grafanaVars(window, ".*"))
		eventually(t, queriesBy, "panel query returns data: "+all, procs, func() (bool, string) {
			s, err := st.server.query(all)
			if err != nil {
				t.Fatalf("panel query %s: %v", all, err)
			}
			return hasNumber(s), fmt.Sprintf("%d series: %v", len(s), s)
		})
		some := false
		for _, inst := range st.instances {
			// Grafana escapes a value's regex characters, and the
			// escape's backslash for the PromQL string: 127\\.0...
			one := substitute(expr, grafanaVars(window, strings.ReplaceAll(regexp.QuoteMeta(inst), `\`, `\\`)))
			s, err := st.server.query(one)
			if err != nil {
				t.Fatalf("panel query for worker %s: %s: %v", inst, one, err)
			}
			for _, x := range s {
				if x.Metric["instance"] != "" && x.Metric["instance"] != inst {
					t.Errorf("panel query for worker %s returned another worker's series %v: %s", inst, x.Metric, one)
				}
			}
			some = some || hasNumber(s)
		}
		if !some {
			t.Errorf("panel query returns data for all workers but for no single one: %s", expr)
		}
	}
	t.Logf("%d panel and annotation queries return data", len(exprs))
}

// checkVariableQueries checks that the template variables list what the
// panels need.
func (st *stack) checkVariableQueries(t *testing.T, variableQueries []string, window string) {
	for _, vq := range variableQueries {
		match := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`).FindStringSubmatch(vq)
		if match == nil {
			t.Errorf("variable query %q is not label_values(selector, label)", vq)
			continue
		}
		selector := substitute(match[1], grafanaVars(window, ".*"))
		values, err := st.server.labelValues(match[2], selector)
		if err != nil {
			t.Fatalf("variable query %s: %v", vq, err)
		}
		want := slices.Clone(map[string][]string{"env": {"e2e"}, "service": {"pageviews"}, "instance": st.instances}[match[2]])
		sort.Strings(values)
		sort.Strings(want)
		if fmt.Sprint(values) != fmt.Sprint(want) {
			t.Errorf("variable query %s lists %v, want %v", vq, values, want)
		}
	}
}

// checkAlertRules checks that every alert rule parses and evaluates on the
// server that loaded it.
func (st *stack) checkAlertRules(t *testing.T, procs []*harness.Proc) {
	for _, r := range alertRules(t, st.root) {
		if _, err := st.server.query(r.Expr); err != nil {
			t.Errorf("alert %s: %v", r.Alert, err)
		}
	}
	eventually(t, st.bud.within(30*time.Second), "every alert rule evaluated without error", procs, func() (bool, string) {
		data, err := st.server.get("/api/v1/rules", nil)
		if err != nil {
			return false, err.Error()
		}
		var rules struct {
			Groups []struct {
				Rules []struct {
					Name           string    `json:"name"`
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(data, &rules); err != nil {
			return false, err.Error()
		}
		n := 0
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Health == "err" {
					t.Fatalf("alert %s fails to evaluate: %s", r.Name, r.LastError)
				}
				if r.Health != "ok" {
					return false, r.Name + " not evaluated yet"
				}
				n++
			}
		}
		return n == len(alertRules(t, st.root)), fmt.Sprintf("%d rules evaluated", n)
	})
}

// checkWorkerMissing checks, while the second worker is down with its
// exporter, that PageviewsWorkerMissing's expression names it: Prometheus
// still has its target, which no longer answers (up is 0), and had its
// metrics a moment ago.
func (st *stack) checkWorkerMissing(t *testing.T) {
	t.Helper()
	expr := alertExpr(t, st.root, "PageviewsWorkerMissing")
	eventually(t, st.bud.within(30*time.Second), "PageviewsWorkerMissing's expression names the stopped worker", st.running(), func() (bool, string) {
		s, err := st.server.query(expr)
		if err != nil {
			t.Fatalf("PageviewsWorkerMissing: %v", err)
		}
		for _, x := range s {
			if x.Metric["instance"] == st.instances[1] {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d series: %v", len(s), s)
	})
	if s, err := st.server.query(expr); err == nil {
		for _, x := range s {
			if x.Metric["instance"] == st.instances[0] {
				t.Errorf("PageviewsWorkerMissing names the running worker %s: %v", st.instances[0], x.Metric)
			}
		}
	}
}

// alertSignals are, for the alerts whose condition the scenario does not
// meet (nothing lags a minute, stalls or fails to commit), their
// expressions without the final threshold: what the rule compares, which
// must be there for the rule to mean anything. PageviewsConsumerStuck's
// lag is a panel's (the lag panels use the same current owner), so its
// signal here is the commits it looks for.
func alertSignals(t *testing.T, root string) map[string]string {
	t.Helper()
	threshold := regexp.MustCompile(`\s*>\s*[0-9.]+\s*$`)
	out := map[string]string{}
	for _, name := range []string{"PageviewsLagAboveSLO", "PageviewsCommitFailures", "PageviewsStoreWriteStalls"} {
		expr := alertExpr(t, root, name)
		if !threshold.MatchString(expr) {
			t.Fatalf("%s does not end in a threshold: %s", name, expr)
		}
		out[name] = threshold.ReplaceAllString(expr, "")
	}
	stuck := alertExpr(t, root, "PageviewsConsumerStuck")
	commits := regexp.MustCompile(`sum by \([^)]*\) \(increase\(pageviews_commits\[[0-9]+m\]\)\)`).FindString(stuck)
	if commits == "" {
		t.Fatalf("PageviewsConsumerStuck does not sum the increase of pageviews_commits: %s", stuck)
	}
	out["PageviewsConsumerStuck"] = commits
	return out
}

// checkAlertSignals checks that what each new alert compares returns a
// number on the server: its rule would fire if the condition came.
func (st *stack) checkAlertSignals(t *testing.T, procs []*harness.Proc) {
	for name, q := range alertSignals(t, st.root) {
		eventually(t, st.bud.within(30*time.Second), name+"'s signal returns data: "+q, procs, func() (bool, string) {
			s, err := st.server.query(q)
			if err != nil {
				t.Fatalf("%s: %s: %v", name, q, err)
			}
			return hasNumber(s), fmt.Sprintf("%d series: %v", len(s), s)
		})
	}
}

// alertExpr is the expression of the alert rule name.
func alertExpr(t *testing.T, root, name string) string {
	t.Helper()
	for _, r := range alertRules(t, root) {
		if r.Alert == name {
			return strings.TrimSpace(r.Expr)
		}
	}
	t.Fatalf("deploy/prometheus/alerts.yml has no rule %s", name)
	return ""
}

// hasNumber reports whether a result holds at least one value that is a
// number: NaN (0/0, a quantile of no observations) is not data.
func hasNumber(s []sample) bool {
	for _, x := range s {
		if v := x.value(); !math.IsNaN(v) && !math.IsInf(v, 0) {
			return true
		}
	}
	return false
}

// substitute replaces Grafana's variables in a query, as Grafana does before
// it sends it ($name and ${name}; longer names first).
func substitute(expr string, vars map[string]string) string {
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	var pairs []string
	for _, k := range names {
		pairs = append(pairs, "${"+k+"}", vars[k], "$"+k, vars[k])
	}
	return strings.NewReplacer(pairs...).Replace(expr)
}

// writePrometheusConfig writes a Prometheus configuration made from the
// compose one (deploy/prometheus/prometheus.yml): its pageviews job, as it
// is, pointed at the test's exporters, scraped every second, with the
// alerting rules loaded.
func writePrometheusConfig(t *testing.T, root, path string, targets []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	var job map[string]any
	jobs, _ := cfg["scrape_configs"].([]any)
	for _, j := range jobs {
		if m, ok := j.(map[string]any); ok && m["job_name"] == "pageviews" {
			job = m
		}
	}
	if job == nil {
		t.Fatal("deploy/prometheus/prometheus.yml has no pageviews job")
	}
	job["static_configs"] = []any{map[string]any{"targets": targets}}
	job["scrape_interval"] = "1s"
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	cfg["rule_files"] = []any{filepath.Join(root, "deploy/prometheus/alerts.yml")}
	cfg["scrape_configs"] = []any{job}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// alertRule is one rule of deploy/prometheus/alerts.yml.
type alertRule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func alertRules(t *testing.T, root string) []alertRule {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatalf("deploy/prometheus/alerts.yml: %v", err)
	}
	var out []alertRule
	for _, g := range file.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("deploy/prometheus/alerts.yml has no rules")
	}
	return out
}

// stopTimeout is how long a process gets after TERM before it is killed.
const stopTimeout = 15 * time.Second

// exporter is a statsd_exporter process serving one worker.
type exporter struct {
	name, bin, mapping string
	statsdPort         int    // where its worker sends DogStatsD
	instance           string // where Prometheus scrapes it: its instance label
	runs               int
	proc               *harness.Proc
}

// start starts the exporter, its output in dir, and waits until it serves
// /metrics.
func (e *exporter) start(t *testing.T, bud budget, dir string) {
	t.Helper()
	e.runs++
	name := e.name
	if e.runs > 1 {
		name = fmt.Sprintf("%s.run%d", e.name, e.runs)
	}
	e.proc = harness.Start(t, dir, name, e.bin, []string{
		"--statsd.mapping-config=" + e.mapping,
		fmt.Sprintf("--statsd.listen-udp=127.0.0.1:%d", e.statsdPort),
		"--statsd.listen-tcp=",
		"--web.listen-address=" + e.instance,
	}, nil)
	eventually(t, bud.within(30*time.Second), e.name+" serves /metrics", []*harness.Proc{e.proc}, func() (bool, string) {
		code, _, err := httpGet("http://" + e.instance + "/metrics")
		return code == http.StatusOK, fmt.Sprint(code, err)
	})
}

func (e *exporter) stop() { _ = e.proc.Terminate(stopTimeout) }

// waitReady waits for the worker's /ready/ to answer 200: joined and every
// assigned partition recovered.
func waitReady(t *testing.T, w *harness.Worker, bud budget, procs []*harness.Proc) {
	t.Helper()
	eventually(t, bud.within(60*time.Second), w.Name+" ready", procs, func() (bool, string) {
		return w.Ready(context.Background())
	})
}

// load counts n views of 16 pages under prefix, round robin over the
// workers, 50ms apart.
func load(t *testing.T, ws []*harness.Worker, prefix string, n int) {
	t.Helper()
	for i := range n {
		w := ws[i%len(ws)]
		code, body, err := w.Get(context.Background(), fmt.Sprintf("/count/?page=%s%d", prefix, i%16))
		if err != nil || code != http.StatusOK {
			t.Fatalf("%s /count/: %d %s %v\n%s", w.Name, code, body, err, w.Tail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// produceRaw sends one record to page_views as an outside producer would,
// partitioned like the worker's own producer (by key).
func produceRaw(t *testing.T, brokers, key string, value []byte) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.ClientID = "dashboards-e2e"
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Return.Successes = true
	// sarama's default partitioner hashes the key, like the worker's
	// producer: the record lands on the partition of its page.
	cfg.Producer.Partitioner = sarama.NewHashPartitioner
	p, err := sarama.NewSyncProducer([]string{brokers}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "page_views", Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(value)}); err != nil {
		t.Fatal(err)
	}
}
