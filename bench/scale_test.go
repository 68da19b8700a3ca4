package main

import (
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestChartSVGIsWellFormedAndShowsTheValues(t *testing.T) {
	c := chart{
		title: "pages & <partitions>",
		rows:  []string{"events/s", "peak RSS MiB"},
		cols: []chartCol{
			{name: "pages", xs: []float64{1e4, 1e5, 1e6}, ys: [][]float64{{1_316_185, 945_000, 12_500}, {97.3, 130, 412}}},
			{name: "partitions", xs: []float64{8}, ys: [][]float64{{1_316_185}, {97.3}}},
			{name: "events", xs: []float64{1e6, 1e7}, ys: [][]float64{{1_316_185, 0}, {97.3, 0}}}, // the last not measured
		},
	}
	doc := c.svg()
	var texts []string
	circles := 0
	dec := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if tok.Name.Local == "circle" {
				circles++
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	for _, want := range []string{"pages & <partitions>", "1.32M", "945k", "12.5k", "97.3", "130", "412",
		"10k", "100k", "1M", "8", "10M", "events/s", "peak RSS MiB", "pages (log scale)", "varying events"} {
		if !slices.Contains(texts, want) {
			t.Errorf("no text %q in the chart; texts: %q", want, texts)
		}
	}
	// A point per measured figure: 3+1+1 in each of the two rows.
	if circles != 10 {
		t.Errorf("%d points drawn, want 10", circles)
	}
}

func TestChartLogScale(t *testing.T) {
	at := logScale([]float64{10, 100, 1000}, 0, 200)
	for x, want := range map[float64]float64{10: 0, 100: 100, 1000: 200} {
		if got := at(x); got < want-1e-9 || got > want+1e-9 {
			t.Errorf("x %g at %g, want %g", x, got, want)
		}
	}
	if got := logScale([]float64{8}, 0, 200)(8); got != 100 {
		t.Errorf("a single value at %g, want the middle", got)
	}
}

func TestSectionReplacedBetweenTheMarkersOnly(t *testing.T) {
	doc := "# Benchmarks\n\nhand-written\n\n## Scale\n\nhow to run it\n\n<!-- scale:begin -->\nold figures\n<!-- scale:end -->\n\nafter the section\n"
	got := replaceSection(doc, "scale", "Scale", "new figures")
	want := "# Benchmarks\n\nhand-written\n\n## Scale\n\nhow to run it\n\n<!-- scale:begin -->\nnew figures\n<!-- scale:end -->\n\nafter the section\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// Again: the same result, nothing piles up.
	if again := replaceSection(got, "scale", "Scale", "new figures\n"); again != want {
		t.Errorf("second rewrite:\n%s", again)
	}
	// Another section's markers are left alone.
	two := want + "\n## Soak\n\n<!-- soak:begin -->\nsoak figures\n<!-- soak:end -->\n"
	if got := replaceSection(two, "scale", "Scale", "x"); !strings.Contains(got, "soak figures") || !strings.Contains(got, "<!-- scale:begin -->\nx\n<!-- scale:end -->") {
		t.Errorf("rewrite with two sections:\n%s", got)
	}
}

func TestSectionAppendedWhenMissing(t *testing.T) {
	got := replaceSection("# Benchmarks\n\ntext", "soak", "Soak", "figures\n")
	want := "# Benchmarks\n\ntext\n\n## Soak\n\n<!-- soak:begin -->\nfigures\n<!-- soak:end -->\n"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	// A begin marker without its end is not a section.
	if got := replaceSection("a\n<!-- soak:begin -->\nb\n", "soak", "Soak", "c"); !strings.HasSuffix(got, "## Soak\n\n<!-- soak:begin -->\nc\n<!-- soak:end -->\n") ||
		!strings.HasPrefix(got, "a\n<!-- soak:begin -->\nb\n") {
		t.Errorf("got %q", got)
	}
}

func TestScalePlanSharesTheBase(t *testing.T) {
	base := scalePoint{pages: 10_000, partitions: 8, events: 1_000_000}
	plan, err := planScale(scaleConfig{pages: "10000,100000,1_000_000", partitions: "8, 32,64", events: "1000000,10000000"}, base)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.points) != 6 {
		t.Fatalf("%d points, want 6 (the base once): %+v", len(plan.points), plan.points)
	}
	for _, d := range plan.dims {
		if plan.points[d.points[0]] != base {
			t.Errorf("%s starts at %+v, want the base", d.name, plan.points[d.points[0]])
		}
	}
	if p := plan.points[plan.dims[1].points[2]]; p.partitions != 64 || p.pages != 10_000 || p.events != 1_000_000 {
		t.Errorf("partitions 64 point is %+v", p)
	}
	if _, err := planScale(scaleConfig{pages: "10k"}, base); err == nil {
		t.Error("10k accepted as a number of pages")
	}
}

func TestScaleResultKeys(t *testing.T) {
	plan, err := planScale(scaleConfig{pages: "10000,100000,1000000", partitions: "8", events: "1000000"},
		scalePoint{pages: 10_000, partitions: 8, events: 1_000_000})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []float64{1_000_000, 800_000, 250_000} {
		plan.points[i].rate, plan.points[i].rssMiB = r, float64(100*(i+1))
	}
	results, keys := scaleResults(plan)
	for k, want := range map[string]string{
		"scale_throughput_ratio_1m_vs_10k_pages": "0.25",
		"scale_peak_rss_mib_1m_pages":            "300.0",
		"scale_pages_100000_events_per_second":   "800000",
		"scale_partitions_8_events_per_second":   "1000000",
		"scale_events_1000000_peak_rss_mib":      "100.0",
	} {
		if results[k] != want {
			t.Errorf("%s = %q, want %q", k, results[k], want)
		}
	}
	if len(keys) != len(results) {
		t.Errorf("%d keys for %d results", len(keys), len(results))
	}
}

func TestSoakRSSWindows(t *testing.T) {
	// A sample every 10 s for 12 minutes: 50 MiB until 4 minutes in, then
	// alternating 60 and 70 (a GC sawtooth), then 80 for the last minute.
	var samples []soakSample
	for at := time.Duration(0); at <= 12*time.Minute; at += 10 * time.Second {
		rss := 50.0
		switch {
		case at > 11*time.Minute:
			rss = 80
		case at >= 4*time.Minute && (at/(10*time.Second))%2 == 0:
			rss = 60
		case at >= 4*time.Minute:
			rss = 70
		}
		samples = append(samples, soakSample{at: at, rssMiB: rss, cacheMiB: rss / 10})
	}
	baseAt, base, end := rssFigures(samples, 12*time.Minute)
	if baseAt != 5*time.Minute || base < 64 || base > 66 || end < 77 || end > 80 {
		t.Errorf("rssFigures = %s, %g, %g; want 5m, about 65, the last minute's mean", baseAt, base, end)
	}
	if baseAt, _, _ := rssFigures(samples, 4*time.Minute); baseAt != 2*time.Minute {
		t.Errorf("a 4-minute soak's baseline at %s, want its middle", baseAt)
	}
	if got := minuteMeans(samples, 12*time.Minute); len(got) != 12 || got[0] != 50 {
		t.Errorf("minuteMeans = %v", got)
	}
	if got := meanRSS(samples[:2], time.Hour, 2*time.Hour); got != 50 {
		t.Errorf("meanRSS without samples in the window = %g, want the nearest one's", got)
	}
	if base, end := memoryFigures(samples, 12*time.Minute, memoryParts[1]); base < 6.4 || base > 6.6 || end < 7.7 || end > 8 {
		t.Errorf("block cache figures %g, %g; want a tenth of the RSS figures", base, end)
	}
}

func TestScaleCompactLabels(t *testing.T) {
	for v, want := range map[float64]string{10_000: "10k", 1e6: "1M", 1e7: "10M", 1_316_185: "1.32M", 8: "8", 97.3: "97.3", 0: "0", 250: "250", 1500: "1.5k"} {
		if got := compact(v); got != want {
			t.Errorf("compact(%g) = %q, want %q", v, got, want)
		}
	}
	for n, want := range map[int]string{10_000: "10k", 1_000_000: "1m", 1_500_000: "1500k", 1234: "1234"} {
		if got := countLabel(n); got != want {
			t.Errorf("countLabel(%d) = %q, want %q", n, got, want)
		}
	}
	if got := commas(1316185.4); got != "1,316,185" {
		t.Errorf("commas = %q", got)
	}
}
