package check

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/statsd_exporter/pkg/mapper"
)

// TestStatsdMapping loads deploy/statsd/mapping.yml with statsd_exporter's
// own mapper (strict YAML, the regexes compiled) and checks how the worker's
// metric names come out in Prometheus. The Helm chart must ship the very same
// file.
func TestStatsdMapping(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "deploy/statsd/mapping.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := &mapper.MetricMapper{}
	if err := m.InitFromYAMLString(string(data)); err != nil {
		t.Fatalf("deploy/statsd/mapping.yml: %v", err)
	}

	// Every metric docs/metrics.md lists (the contract dashboards use) keeps
	// its name, dots turned into underscores; timings become histograms in
	// seconds, with hour-long buckets for rebalances, recoveries,
	// assignments and how late a window closes.
	doc, err := os.ReadFile(filepath.Join(root, "docs/metrics.md"))
	if err != nil {
		t.Fatalf("docs/metrics.md lists the metrics the mapping must cover: %v", err)
	}
	rows := regexp.MustCompile("(?m)^\\| `pageviews\\.([a-z0-9_.]+)` \\| ([a-z]+) \\|").FindAllStringSubmatch(string(doc), -1)
	if len(rows) < 10 {
		t.Fatalf("found only %d metrics in docs/metrics.md: has its table changed?", len(rows))
	}
	types := map[string]mapper.MetricType{
		"count": mapper.MetricTypeCounter, "gauge": mapper.MetricTypeGauge,
		"timing": mapper.MetricTypeObserver, "histogram": mapper.MetricTypeObserver, "distribution": mapper.MetricTypeObserver,
	}
	long := regexp.MustCompile(`rebalance|recovery|assignment|shutdown|window_close`)
	for _, row := range rows {
		metric, kind := "pageviews."+row[1], row[2]
		typ, ok := types[kind]
		if !ok {
			t.Errorf("%s: unknown kind %q in docs/metrics.md", metric, kind)
			continue
		}
		mapping, _, ok := m.GetMapping(metric, typ)
		if !ok {
			t.Errorf("%s (%s) matches no rule", metric, kind)
			continue
		}
		// The exporter turns the dots the rules keep into underscores.
		want := "pageviews_" + strings.ReplaceAll(row[1], ".", "_")
		if got := mapper.EscapeMetricName(mapping.Name); got != want {
			t.Errorf("%s -> %s, want %s", metric, got, want)
		}
		if typ != mapper.MetricTypeObserver {
			continue
		}
		top := 10.0
		if long.MatchString(row[1]) {
			top = 3600
		}
		if mapping.ObserverType != mapper.ObserverTypeHistogram || mapping.HistogramOptions == nil ||
			len(mapping.HistogramOptions.Buckets) == 0 || mapping.HistogramOptions.Buckets[len(mapping.HistogramOptions.Buckets)-1] != top {
			t.Errorf("%s: want a histogram whose last bucket is %gs, got %+v", metric, top, mapping.HistogramOptions)
		}
	}

	chartCopy, err := os.ReadFile(filepath.Join(root, "deploy/helm/pageviews/files/statsd-mapping.yml"))
	if err != nil {
		t.Fatalf("the chart's files/statsd-mapping.yml (a copy of deploy/statsd/mapping.yml: module zips drop links): %v", err)
	}
	if !bytes.Equal(chartCopy, data) {
		t.Error("deploy/helm/pageviews/files/statsd-mapping.yml differs from deploy/statsd/mapping.yml: copy it again")
	}
}
