package dashboards

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"

	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/test/harness"
)

// TestGeneratedFilesUpToDate renders the dashboards in memory and compares
// them with the committed files: run `make dashboards` after changing the
// definitions (or the metric list).
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := Render(".")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s: %v (run `make dashboards`)", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what the definitions render: run `make dashboards` (or `go run ./gen` in dashboards/) and commit the result", name)
		}
	}
}

// listed maps every metric name of the worker's list to its definition.
func listed() map[string]*metrics.Def {
	out := map[string]*metrics.Def{}
	for _, d := range metrics.All() {
		out[d.Name] = d
	}
	return out
}

// promMetric finds the metric names in PromQL: the namespace's names, which
// is every metric the worker emits through statsd_exporter.
var promMetric = regexp.MustCompile(`\b` + Namespace + `_([a-z0-9_]+)`)

// promNames returns the listed metrics expr uses, and the names it uses
// that are not listed (a histogram's _bucket, _sum and _count series count
// as their timing's name).
func promNames(expr string) (used []string, unknown []string) {
	defs := listed()
	for _, m := range promMetric.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		if d, ok := defs[name]; ok {
			used = append(used, d.Name)
			continue
		}
		found := false
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if d, ok := defs[strings.TrimSuffix(name, suffix)]; ok && strings.HasSuffix(name, suffix) && d.Kind == metrics.Timing {
				used, found = append(used, d.Name), true
			}
		}
		if !found {
			unknown = append(unknown, m[0])
		}
	}
	return used, unknown
}

// ddMetric finds the metric names in a Datadog query: "agg:name{".
var ddMetric = regexp.MustCompile(`(?:^|[:(\s])(` + Namespace + `\.[a-z0-9_.]+)\{`)

// The aggregates the Datadog Agent makes of a DogStatsD timer.
var timerSuffixes = []string{".avg", ".count", ".median", ".max", ".95percentile"}

func ddNames(query string) (used []string, unknown []string) {
	defs := listed()
	for _, m := range ddMetric.FindAllStringSubmatch(query, -1) {
		name := strings.TrimPrefix(m[1], Namespace+".")
		if d, ok := defs[name]; ok && d.Kind != metrics.Timing {
			used = append(used, d.Name)
			continue
		}
		found := false
		for _, suffix := range timerSuffixes {
			if d, ok := defs[strings.TrimSuffix(name, suffix)]; ok && strings.HasSuffix(name, suffix) && d.Kind == metrics.Timing {
				used, found = append(used, d.Name), true
			}
		}
		if !found {
			unknown = append(unknown, m[1])
		}
	}
	return used, unknown
}

// TestGrafanaUsesListedMetrics checks every query of the generated Grafana
// dashboard names only listed metrics, and that every listed metric shows
// on some panel.
func TestGrafanaUsesListedMetrics(t *testing.T) {
	raw, err := os.ReadFile(GrafanaFile)
	if err != nil {
		t.Fatal(err)
	}
	exprs, variables, err := PanelQueries(raw)
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	for _, q := range append(exprs, variables...) {
		used, unknown := promNames(q)
		if len(used) == 0 {
			t.Errorf("query names no metric of the list: %s", q)
		}
		for _, u := range unknown {
			t.Errorf("query names %s, which is not in internal/metrics/list.go: %s", u, q)
		}
		for _, u := range used {
			shown[u] = true
		}
	}
	for _, d := range metrics.All() {
		if !shown[d.Name] {
			t.Errorf("metric %s.%s shows on no Grafana panel", Namespace, d.Name)
		}
	}
}

// datadogQueries lists every metric query of the Datadog dashboard JSON.
func datadogQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(DatadogFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["data_source"] == "metrics" {
				if q, ok := x["query"].(string); ok {
					out = append(out, q)
				}
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
	if len(out) == 0 {
		t.Fatal("no metric queries in the Datadog dashboard")
	}
	return out
}

// TestDatadogDashboardUsesListedMetrics checks the Datadog dashboard names
// only listed metrics, scoped by its template variables, and shows every
// listed metric.
func TestDatadogDashboardUsesListedMetrics(t *testing.T) {
	shown := map[string]bool{}
	for _, q := range datadogQueries(t) {
		used, unknown := ddNames(q)
		if len(used) == 0 {
			t.Errorf("query names no metric of the list: %s", q)
		}
		for _, u := range unknown {
			t.Errorf("query names %s, which is not in internal/metrics/list.go (timers may carry %v): %s", u, timerSuffixes, q)
		}
		if !strings.Contains(q, DatadogScope) {
			t.Errorf("query is not scoped by the template variables %s: %s", DatadogScope, q)
		}
		for _, u := range used {
			shown[u] = true
		}
	}
	for _, d := range metrics.All() {
		if !shown[d.Name] {
			t.Errorf("metric %s.%s shows on no Datadog widget", Namespace, d.Name)
		}
	}
}

// TestPanelsInBothBackends checks every panel has queries for both
// backends, and a description for operators.
func TestPanelsInBothBackends(t *testing.T) {
	titles := map[string]bool{}
	for _, row := range Rows() {
		for _, p := range row.Panels {
			if titles[p.Title] {
				t.Errorf("two panels are titled %q", p.Title)
			}
			titles[p.Title] = true
			if len(p.Prom) == 0 || len(p.Datadog) == 0 {
				t.Errorf("panel %q: %d PromQL and %d Datadog queries, want both", p.Title, len(p.Prom), len(p.Datadog))
			}
			if p.Tells == "" || p.Do == "" {
				t.Errorf("panel %q does not say what it tells and what to do", p.Title)
			}
			if (p.Viz == Stat) && len(p.Datadog) != 1 {
				t.Errorf("stat panel %q needs exactly one Datadog query", p.Title)
			}
			if p.Viz == Table {
				var prom, dd []string
				for _, q := range p.Prom {
					prom = append(prom, q.Column)
				}
				for _, q := range p.Datadog {
					dd = append(dd, q.Alias)
				}
				if !slices.Equal(prom, dd) {
					t.Errorf("table %q: columns %q in Grafana, %q in Datadog, want the same", p.Title, prom, dd)
				}
			}
		}
	}
}

// monitor is one Datadog monitor of datadog/monitors.json.
type monitor struct {
	Name     string   `json:"name"`
	Type     string   `json:"type"`
	Query    string   `json:"query"`
	Message  string   `json:"message"`
	Tags     []string `json:"tags"`
	Priority int      `json:"priority"`
	Options  struct {
		Thresholds struct {
			Critical *float64 `json:"critical"`
		} `json:"thresholds"`
	} `json:"options"`
}

// monitorThreshold is the comparison that ends a monitor query.
var monitorThreshold = regexp.MustCompile(`\s(>=|<=|>|<|==)\s*(-?[0-9.]+)\s*$`)

// TestDatadogMonitors checks datadog/monitors.json: monitors the monitor
// API takes, naming only listed metrics, with a critical threshold equal to
// the one in the query, each tagged alert:<name> after the Prometheus alert
// that watches the same condition, one for one.
func TestDatadogMonitors(t *testing.T) {
	raw, err := os.ReadFile("datadog/monitors.json")
	if err != nil {
		t.Fatal(err)
	}
	var mons []monitor
	if err := json.Unmarshal(raw, &mons); err != nil {
		t.Fatalf("datadog/monitors.json is not a JSON array of monitors: %v", err)
	}
	alerts := map[string]bool{}
	for _, r := range alertRules(t, harness.Root(t)) {
		alerts[r.Alert] = true
	}
	covered := map[string]bool{}
	for _, m := range mons {
		if m.Name == "" || m.Message == "" || m.Type != "query alert" {
			t.Errorf("monitor %q: want a name, a message and type \"query alert\"", m.Name)
		}
		if m.Priority < 1 || m.Priority > 5 {
			t.Errorf("monitor %q: priority %d, want 1 to 5", m.Name, m.Priority)
		}
		used, unknown := ddNames(m.Query)
		if len(used) == 0 {
			t.Errorf("monitor %q names no metric of the list: %s", m.Name, m.Query)
		}
		for _, u := range unknown {
			t.Errorf("monitor %q names %s, which is not in internal/metrics/list.go: %s", m.Name, u, m.Query)
		}
		th := monitorThreshold.FindStringSubmatch(m.Query)
		if th == nil {
			t.Errorf("monitor %q: query ends in no threshold: %s", m.Name, m.Query)
		} else if v, _ := strconv.ParseFloat(th[2], 64); m.Options.Thresholds.Critical == nil || *m.Options.Thresholds.Critical != v {
			t.Errorf("monitor %q: options.thresholds.critical must equal the query's threshold %s", m.Name, th[2])
		}
		var alert string
		for _, tag := range m.Tags {
			if a, ok := strings.CutPrefix(tag, "alert:"); ok {
				alert = a
			}
		}
		if !alerts[alert] {
			t.Errorf("monitor %q: tag alert:%s names no alert of deploy/prometheus/alerts.yml", m.Name, alert)
		}
		if covered[alert] {
			t.Errorf("two monitors for alert %s", alert)
		}
		covered[alert] = true
	}
	var missing []string
	for a := range alerts {
		if !covered[a] {
			missing = append(missing, a)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("Prometheus alerts without a Datadog monitor: %v", missing)
	}
}

// TestAlertsUseListedMetrics checks the Prometheus alerting rules name only
// listed metrics.
func TestAlertsUseListedMetrics(t *testing.T) {
	for _, r := range alertRules(t, harness.Root(t)) {
		used, unknown := promNames(r.Expr)
		if len(used) == 0 {
			t.Errorf("alert %s names no metric of the list", r.Alert)
		}
		for _, u := range unknown {
			t.Errorf("alert %s names %s, which is not in internal/metrics/list.go", r.Alert, u)
		}
	}
}

// TestReadmeDescribesEveryAlert checks README.md has a section per alert
// (the alerts' runbook annotations link to it).
func TestReadmeDescribesEveryAlert(t *testing.T) {
	readme, err := os.ReadFile(ReadmeFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range alertRules(t, harness.Root(t)) {
		if !bytes.Contains(readme, []byte("### "+r.Alert+"\n")) {
			t.Errorf("README.md has no section \"### %s\"", r.Alert)
		}
	}
}

// failed reports whether the SDK returned an error: it returns a nil
// cog.BuildErrors inside a non-nil error when all went well.
func failed(err error) bool {
	var be cog.BuildErrors
	if errors.As(err, &be) {
		return len(be) > 0
	}
	return err != nil
}

// TestGrafanaJSONValid reads the committed dashboard back with the Grafana
// Foundation SDK, strictly (unknown fields fail), validates it, and checks
// the layout: unique panel ids, panels within the 24 columns, none
// overlapping.
func TestGrafanaJSONValid(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile(GrafanaFile)
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 the committed file is the v1 model (see Grafana).
	var d dashboard.Dashboard
	if err := d.UnmarshalJSONStrict(raw); failed(err) {
		t.Fatalf("%s does not read back strictly: %v", GrafanaFile, err)
	}
	if err := d.Validate(); failed(err) {
		t.Fatalf("%s: %v", GrafanaFile, err)
	}
	if d.Uid == nil || *d.Uid != GrafanaUID {
		t.Errorf("uid %v, want %q", d.Uid, GrafanaUID)
	}
	type box struct {
		title      string
		x, y, w, h uint32
	}
	var boxes []box
	ids := map[uint32]string{}
	addID := func(id uint32, title string) {
		if prev, ok := ids[id]; ok {
			t.Errorf("panels %q and %q share id %d", prev, title, id)
		}
		ids[id] = title
	}
	for _, p := range d.Panels {
		switch {
		case p.Panel != nil:
			title := *p.Panel.Title
			addID(*p.Panel.Id, title)
			g := p.Panel.GridPos
			boxes = append(boxes, box{title, g.X, g.Y, g.W, g.H})
		case p.RowPanel != nil:
			addID(p.RowPanel.Id, *p.RowPanel.Title)
			g := p.RowPanel.GridPos
			boxes = append(boxes, box{*p.RowPanel.Title, g.X, g.Y, g.W, g.H})
			for _, c := range p.RowPanel.Panels {
				addID(*c.Id, *c.Title)
			}
		}
	}
	for i, a := range boxes {
		if a.x+a.w > 24 {
			t.Errorf("panel %q runs past the 24 columns", a.title)
		}
		for _, b := range boxes[i+1:] {
			if a.x < b.x+b.w && b.x < a.x+a.w && a.y < b.y+b.h && b.y < a.y+a.h {
				t.Errorf("panels %q and %q overlap", a.title, b.title)
			}
		}
	}
}
