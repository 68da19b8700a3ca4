package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The scale benchmark (-scale) measures the worker at larger settings, one
// dimension varied at a time from the base (-pages, -partitions, -events):
// throughput, peak RSS, p99 latency under a steady load after the backlog,
// and the recovery of as many changelog records as events. Each setting
// runs on a broker of its own, started afresh.

// scaleConfig holds the -scale flags.
type scaleConfig struct {
	on                        bool
	pages, partitions, events string // comma-separated values of each dimension
	svg, docs                 string // where to draw the chart and rewrite the docs section; empty skips
	// memLimit is the worker's GOMEMLIMIT: by default what the worker sets
	// itself in the chart's container (80% of its 512 MiB memory limit),
	// since the RSS target is about the worker as deployed.
	memLimit string
}

var scaleCfg scaleConfig

// scalePoint is one setting and what was measured at it.
type scalePoint struct {
	pages, partitions, events int
	rate, rssMiB, p99         float64
	recSeconds, recRate       float64
	recRSSMiB                 float64
}

// scaleDim is one varied dimension: its values and the point of each.
type scaleDim struct {
	name   string
	values []int
	points []int // indexes into the plan's points
}

// scalePlan lists the points to run, each once, and the dimensions they
// belong to (the base point belongs to every dimension that includes its
// value).
type scalePlan struct {
	points []scalePoint
	dims   []scaleDim
}

// planScale builds the plan from the flags and the base setting.
func planScale(cfg scaleConfig, base scalePoint) (scalePlan, error) {
	var plan scalePlan
	index := map[[3]int]int{}
	for _, d := range []struct{ name, list string }{{"pages", cfg.pages}, {"partitions", cfg.partitions}, {"events", cfg.events}} {
		values, err := parseInts(d.list)
		if err != nil {
			return plan, fmt.Errorf("-scale-%s: %w", d.name, err)
		}
		dim := scaleDim{name: d.name, values: values}
		for _, v := range values {
			p := base
			switch d.name {
			case "pages":
				p.pages = v
			case "partitions":
				p.partitions = v
			case "events":
				p.events = v
			}
			key := [3]int{p.pages, p.partitions, p.events}
			i, ok := index[key]
			if !ok {
				i = len(plan.points)
				index[key] = i
				plan.points = append(plan.points, p)
			}
			dim.points = append(dim.points, i)
		}
		plan.dims = append(plan.dims, dim)
	}
	if len(plan.points) == 0 {
		return plan, errors.New("no settings to run")
	}
	return plan, nil
}

// parseInts parses a comma-separated list of positive integers; "" is none.
func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// scaleBench runs every point of the plan and reports them; it returns the
// machine-readable figures and their keys in order.
func scaleBench(o options, cfg scaleConfig) (map[string]string, []string, error) {
	base := scalePoint{pages: o.pages, partitions: o.partitions, events: o.events}
	plan, err := planScale(cfg, base)
	if err != nil {
		return nil, nil, err
	}
	fmt.Printf("machine: %d cores; scale: %d settings from the base pages=%d partitions=%d events=%d; steady load %d views/s for %s; commit_interval=%s; worker GOMEMLIMIT=%q\n",
		numCPU(), len(plan.points), base.pages, base.partitions, base.events, o.latencyRate, o.latencyFor, o.commitInterval, cfg.memLimit)
	began := time.Now()
	for i := range plan.points {
		p := &plan.points[i]
		t := time.Now()
		if err := runScalePoint(o, p, cfg.memLimit); err != nil {
			return nil, nil, fmt.Errorf("pages=%d partitions=%d events=%d: %w", p.pages, p.partitions, p.events, err)
		}
		fmt.Printf("scale [%d/%d] pages=%d partitions=%d events=%d: %.0f events/s, peak rss %.1f MiB, p99 %.1f ms, recovery %.2fs (%.0f records/s, peak rss %.1f MiB); %.0fs\n",
			i+1, len(plan.points), p.pages, p.partitions, p.events, p.rate, p.rssMiB, p.p99,
			p.recSeconds, p.recRate, p.recRSSMiB, time.Since(t).Seconds())
	}
	fmt.Printf("scale benchmark: %d settings in %.0fs\n\n", len(plan.points), time.Since(began).Seconds())
	fmt.Print(scaleTable(plan, o.latencyRate))
	results, keys := scaleResults(plan)
	if cfg.svg != "" {
		if err := os.WriteFile(cfg.svg, []byte(scaleChart(plan, o.latencyRate).svg()), 0o644); err != nil {
			return results, keys, err
		}
		fmt.Println("chart:", cfg.svg)
	}
	if cfg.docs != "" {
		body := scaleDocs(plan, o.latencyRate, time.Now(), docsImage(cfg.docs, cfg.svg))
		if err := writeSection(cfg.docs, "scale", "Scale", body); err != nil {
			return results, keys, err
		}
		fmt.Println("docs:", cfg.docs)
	}
	return results, keys, nil
}

// runScalePoint measures one setting on a broker of its own.
func runScalePoint(o options, p *scalePoint, memLimit string) error {
	dir, addr, done, err := brokerIn(o, "pageviews-scale-")
	if err != nil {
		return err
	}
	defer done()
	o.pages, o.partitions, o.events = p.pages, p.partitions, p.events
	o.cpuprofile, o.topic, o.runs = "", "", 1
	began := time.Now()
	if err := preload(addr, o); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	fmt.Printf("preload: %d records in %.1fs\n", o.events, time.Since(began).Seconds())
	var env []string
	if memLimit != "" {
		env = append(env, "GOMEMLIMIT="+memLimit)
	}
	agg, err := runWorker(o, addr, filepath.Join(dir, "worker"), "pageviews", int64(o.events), env...)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	p.rate, p.rssMiB, p.p99 = agg.rate, agg.rssMiB, agg.steady.p99
	rec, err := recoveryBench(o, addr, filepath.Join(dir, "recovery"), o.events, env...)
	if err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	p.recSeconds, p.recRate, p.recRSSMiB = rec.seconds, rec.rate, rec.rssMiB
	return nil
}

// scaleValue is the varied value of point p in dimension dim.
func scaleValue(dim string, p scalePoint) int {
	switch dim {
	case "pages":
		return p.pages
	case "partitions":
		return p.partitions
	}
	return p.events
}

// scaleTable is the plain-text table of every dimension's points.
func scaleTable(plan scalePlan, rate int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %10s %10s %10s %12s %9s %12s %10s %14s %9s\n", "varying", "pages", "partitions", "events",
		"events/s", "rss MiB", fmt.Sprintf("p99 ms@%s", compact(float64(rate))), "recovery s", "recovery rec/s", "rec MiB")
	for _, d := range plan.dims {
		for _, i := range d.points {
			p := plan.points[i]
			fmt.Fprintf(&b, "%-10s %10d %10d %10d %12.0f %9.1f %12.1f %10.2f %14.0f %9.1f\n", d.name, p.pages, p.partitions, p.events,
				p.rate, p.rssMiB, p.p99, p.recSeconds, p.recRate, p.recRSSMiB)
		}
	}
	return b.String()
}

// scaleResults are the machine-readable figures: one set per point of each
// dimension (scale_<dimension>_<value>_<figure>), and the throughput of
// the most pages against the fewest with its peak RSS.
func scaleResults(plan scalePlan) (map[string]string, []string) {
	results := map[string]string{}
	var keys []string
	put := func(k, v string) {
		if _, ok := results[k]; !ok {
			keys = append(keys, k)
		}
		results[k] = v
	}
	for _, d := range plan.dims {
		for _, i := range d.points {
			p := plan.points[i]
			prefix := fmt.Sprintf("scale_%s_%d_", d.name, scaleValue(d.name, p))
			put(prefix+"events_per_second", fmt.Sprintf("%.0f", p.rate))
			put(prefix+"peak_rss_mib", fmt.Sprintf("%.1f", p.rssMiB))
			put(prefix+"latency_p99_ms", fmt.Sprintf("%.1f", p.p99))
			put(prefix+"recovery_seconds", fmt.Sprintf("%.2f", p.recSeconds))
			put(prefix+"recovery_records_per_second", fmt.Sprintf("%.0f", p.recRate))
		}
		if d.name != "pages" || len(d.points) < 2 {
			continue
		}
		lo, hi := plan.points[d.points[0]], plan.points[d.points[0]]
		for _, i := range d.points {
			if p := plan.points[i]; p.pages < lo.pages {
				lo = p
			} else if p.pages > hi.pages {
				hi = p
			}
		}
		if lo.rate > 0 {
			put(fmt.Sprintf("scale_throughput_ratio_%s_vs_%s_pages", countLabel(hi.pages), countLabel(lo.pages)), fmt.Sprintf("%.2f", hi.rate/lo.rate))
		}
		put(fmt.Sprintf("scale_peak_rss_mib_%s_pages", countLabel(hi.pages)), fmt.Sprintf("%.1f", hi.rssMiB))
	}
	return results, keys
}

// countLabel names a count in a key: 10k, 1m, 1500000.
func countLabel(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "m"
	case n >= 1_000 && n%1_000 == 0:
		return strconv.Itoa(n/1_000) + "k"
	}
	return strconv.Itoa(n)
}

// scaleChart is the chart of the plan: throughput, peak RSS, p99 latency
// and recovery rate against each dimension.
func scaleChart(plan scalePlan, rate int) chart {
	c := chart{
		title: "Worker at scale, one dimension varied at a time",
		rows:  []string{"events/s", "peak RSS MiB", fmt.Sprintf("p99 ms at %s views/s", compact(float64(rate))), "recovery records/s"},
	}
	for _, d := range plan.dims {
		col := chartCol{name: d.name, ys: make([][]float64, len(c.rows))}
		for _, i := range d.points {
			p := plan.points[i]
			col.xs = append(col.xs, float64(scaleValue(d.name, p)))
			for r, y := range []float64{p.rate, p.rssMiB, p.p99, p.recRate} {
				col.ys[r] = append(col.ys[r], y)
			}
		}
		c.cols = append(c.cols, col)
	}
	return c
}

// docsImage is the chart's path relative to the docs file, or "" without
// a chart.
func docsImage(docs, svg string) string {
	if svg == "" {
		return ""
	}
	if rel, err := filepath.Rel(filepath.Dir(docs), svg); err == nil {
		return filepath.ToSlash(rel)
	}
	return svg
}

// scaleDocs is the generated part of the docs' Scale section.
func scaleDocs(plan scalePlan, rate int, at time.Time, image string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run on %s, machine: %d cores; steady load %s views/s.\n\n", at.Format("2006-01-02"), numCPU(), commas(float64(rate)))
	fmt.Fprintf(&b, "| varying | pages | partitions | events | events/s | peak RSS MiB | p99 ms at %s views/s | recovery s | recovery records/s | recovery peak RSS MiB |\n",
		commas(float64(rate)))
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, d := range plan.dims {
		for _, i := range d.points {
			p := plan.points[i]
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %.1f | %.1f | %.2f | %s | %.1f |\n", d.name, commas(float64(p.pages)), p.partitions,
				commas(float64(p.events)), commas(p.rate), p.rssMiB, p.p99, p.recSeconds, commas(p.recRate), p.recRSSMiB)
		}
	}
	if image != "" {
		fmt.Fprintf(&b, "\n![Throughput, peak RSS, p99 latency and recovery rate against pages, partitions and events](%s)\n", image)
	}
	return b.String()
}

// commas formats v rounded, with thousands separators.
func commas(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// writeSection rewrites the generated part of section name in the file at
// path (see replaceSection); a missing file is created.
func writeSection(path, name, title, body string) error {
	doc, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.WriteFile(path, []byte(replaceSection(string(doc), name, title, body)), 0o644)
}

// replaceSection replaces what lies between the markers <!-- name:begin -->
// and <!-- name:end --> in doc with body, and leaves the rest as it is.
// Without the markers it appends a section "## title" holding them.
func replaceSection(doc, name, title, body string) string {
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	if body != "" && !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	if i := strings.Index(doc, begin); i >= 0 {
		if j := strings.Index(doc[i:], end); j >= 0 {
			return doc[:i+len(begin)] + "\n" + body + doc[i+j:]
		}
	}
	if doc != "" && !strings.HasSuffix(doc, "\n") {
		doc += "\n"
	}
	if doc != "" {
		doc += "\n"
	}
	return doc + "## " + title + "\n\n" + begin + "\n" + body + end + "\n"
}
