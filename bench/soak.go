package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// The soak (-soak) runs one worker with its default windows under a steady
// load for many minutes and follows its resident memory: windows close and
// expire over the run, so what the worker keeps should level off.

// soakConfig holds the -soak flags.
type soakConfig struct {
	on          bool
	minutes     float64
	rate, pages int
	docs        string // the docs file whose soak section is rewritten; empty skips
}

var soakCfg soakConfig

const (
	soakGroup    = "pageviews-soak"
	soakInterval = 10 * time.Second
)

// soakSample is one look at the worker during the soak.
type soakSample struct {
	at        time.Duration // since the load started
	rssMiB    float64       // VmRSS
	produced  int64         // views handed to the producer so far
	committed int64         // the group's committed offsets, summed
	end       int64         // the topic's high watermarks, summed
	// What the worker last reported of its memory (DogStatsD gauges, sent
	// every METRICS_INTERVAL), in MiB: Go heap objects, Pebble's block
	// cache and memtables. 0 before the first report.
	heapMiB, cacheMiB, memtableMiB float64
}

// The worker's gauges the soak follows besides its RSS.
const (
	heapMetric     = "pageviews.go_heap_bytes"
	cacheMetric    = "pageviews.pebble_block_cache_bytes"
	memtableMetric = "pageviews.pebble_memtable_bytes"
)

// soakFigures are the soak's results.
type soakFigures struct {
	minutes         float64
	views           int64
	rate            float64 // views/s achieved
	behindMax       int64   // the most views the producer was behind its schedule
	baseAt          time.Duration
	baseMiB, endMiB float64
	// The same two means of the heap, block cache and memtable gauges.
	baseParts, endParts [3]float64
	peakMiB             float64 // VmHWM
	latency             latencyFigures
	minuteMeans         []float64
	warnings, errors    int // worker log lines at those levels
}

// soakKeys are the soak's machine-readable figures, in the order printed.
func soakKeys() []string {
	return []string{"soak_minutes", "soak_views", "soak_views_per_second", "soak_producer_behind_max", "soak_rss_baseline_minute",
		"soak_rss_mib_at_5m", "soak_rss_mib_end", "soak_rss_growth_mib_after_5m", "soak_peak_rss_mib",
		"soak_latency_p50_ms", "soak_latency_p99_ms", "soak_worker_errors"}
}

// soakBench runs the soak and returns its figures by key.
func soakBench(o options, cfg soakConfig) (map[string]string, error) {
	d := time.Duration(cfg.minutes * float64(time.Minute))
	if d < 2*time.Minute {
		return nil, fmt.Errorf("-soak-minutes %g: want at least 2 (a minute at the end, one before it)", cfg.minutes)
	}
	fmt.Printf("machine: %d cores; soak: %d views/s over %d pages on %d partitions for %s; default windows; commit_interval=%s\n",
		numCPU(), cfg.rate, cfg.pages, o.partitions, d, o.commitInterval)
	dir, addr, done, err := brokerIn(o, "pageviews-soak-")
	if err != nil {
		return nil, err
	}
	defer done()
	if err := createTopics(addr, o.partitions, "page_views"); err != nil {
		return nil, err
	}
	sink, err := startMetricSink(latencyMetric, heapMetric, cacheMetric, memtableMetric)
	if err != nil {
		return nil, err
	}
	statsd := &statsdSink{sink}
	defer statsd.close()
	w, err := startSoakWorker(o, addr, filepath.Join(dir, "worker"), statsd.url())
	if err != nil {
		return nil, err
	}
	defer stopProcess(w.cmd)
	fig, err := soakRun(o, cfg, addr, d, w, statsd)
	if err != nil {
		return nil, err
	}
	fig.warnings, fig.errors = int(w.warnings.Load()), int(w.errors.Load())
	printSoak(fig)
	if cfg.docs != "" {
		if err := writeSection(cfg.docs, "soak", "Soak", soakDocs(fig, cfg, time.Now())); err != nil {
			return soakResults(fig), err
		}
		fmt.Println("docs:", cfg.docs)
	}
	return soakResults(fig), nil
}

// soakWorker is the worker process of the soak and what its log told.
type soakWorker struct {
	cmd              *exec.Cmd
	exited           chan struct{} // closed when its output ends
	warnings, errors atomic.Int64
}

// startSoakWorker starts the worker with its default windows and waits
// until it has joined its group.
func startSoakWorker(o options, addr, dataDir, statsdURL string) (*soakWorker, error) {
	w := &soakWorker{cmd: exec.Command(o.worker), exited: make(chan struct{})}
	w.cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+addr, "DATA_DIR="+dataDir, "WEB_ADDR=127.0.0.1:0", "KAFKA_GROUP="+soakGroup,
		"LOG_FORMAT=json", "PARTITIONS="+strconv.Itoa(o.partitions), "LIVECHECK_INTERVAL=0",
		"COMMIT_INTERVAL="+o.commitInterval, "DD_DOGSTATSD_URL="+statsdURL)
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	w.cmd.Stderr = os.Stderr
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	joined := make(chan struct{})
	go w.follow(out, joined)
	select {
	case <-joined:
		return w, nil
	case <-w.exited:
		stopProcess(w.cmd)
		return nil, errors.New("worker exited before joining its group")
	case <-time.After(60 * time.Second):
		stopProcess(w.cmd)
		return nil, errors.New("worker did not join its group within 60s")
	}
}

// follow reads the worker's JSON log: it closes joined at the first
// "joined group" line, counts and prints warnings and errors, and closes
// w.exited when the log ends.
func (w *soakWorker) follow(out io.Reader, joined chan struct{}) {
	defer close(w.exited)
	for raw := range logLines(out) {
		var l struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(raw, &l) != nil {
			continue
		}
		switch {
		case l.Msg == "joined group" && joined != nil:
			close(joined)
			joined = nil
		case l.Level == "WARN" || l.Level == "ERROR":
			n := &w.warnings
			if l.Level == "ERROR" {
				n = &w.errors
			}
			if n.Add(1) <= 5 {
				fmt.Println("  worker log:", string(raw))
			}
		}
	}
}

// soakRun produces the load for d, sampling the worker every soakInterval,
// then waits until the group has committed every view.
func soakRun(o options, cfg soakConfig, addr string, d time.Duration, w *soakWorker, statsd *statsdSink) (soakFigures, error) {
	fig := soakFigures{minutes: d.Minutes()}
	probe, err := newLagProbe(addr, soakGroup, o.partitions)
	if err != nil {
		return fig, err
	}
	defer probe.close()
	var produced, behind atomic.Int64
	type loadResult struct {
		n   int64
		err error
	}
	loaded := make(chan loadResult, 1)
	start := time.Now()
	go func() {
		n, err := paceLoad(addr, cfg.pages, cfg.rate, d, &produced, &behind)
		loaded <- loadResult{n, err}
	}()
	fmt.Printf("%8s %9s %8s %8s %8s %12s %12s %10s %12s\n", "elapsed", "rss MiB", "heap", "cache", "memtab", "produced", "committed", "lag", "views/s")
	samples := []soakSample{probe.sample(w.cmd.Process.Pid, 0, 0)}
	printSoakSample(samples[0], 0)
	tick := time.NewTicker(soakInterval)
	defer tick.Stop()
	var load loadResult
	for done := false; !done; {
		select {
		case load = <-loaded:
			done = true
		case <-w.exited:
			return fig, errors.New("worker exited during the soak")
		case now := <-tick.C:
			s := probe.sample(w.cmd.Process.Pid, now.Sub(start), produced.Load())
			s.heapMiB, s.cacheMiB, s.memtableMiB = statsd.lastMiB(heapMetric), statsd.lastMiB(cacheMetric), statsd.lastMiB(memtableMetric)
			if s.rssMiB == 0 {
				return fig, errors.New("worker gone: no VmRSS")
			}
			printSoakSample(s, float64(s.produced-samples[len(samples)-1].produced)/(s.at-samples[len(samples)-1].at).Seconds())
			samples = append(samples, s)
		}
	}
	if load.err != nil {
		return fig, fmt.Errorf("load: %w", load.err)
	}
	if last := samples[len(samples)-1]; d-last.at > soakInterval/2 {
		s := probe.sample(w.cmd.Process.Pid, time.Since(start), produced.Load())
		printSoakSample(s, float64(s.produced-last.produced)/(s.at-last.at).Seconds())
		samples = append(samples, s)
	}
	fig.views, fig.rate, fig.behindMax = load.n, float64(load.n)/d.Seconds(), behind.Load()
	if err := probe.waitCommitted(load.n, w.exited, 5*time.Minute); err != nil {
		return fig, fmt.Errorf("the group did not commit the %d views produced: %w", load.n, err)
	}
	fmt.Printf("committed: all %d views, %.1fs after the load ended\n", load.n, time.Since(start.Add(d)).Seconds())
	fig.peakMiB = rssHWM(w.cmd.Process.Pid)
	time.Sleep(metricsDelay)
	fig.latency = figuresOf(statsd.since(start))
	fig.baseAt, fig.baseMiB, fig.endMiB = rssFigures(samples, d)
	for i, part := range memoryParts {
		fig.baseParts[i], fig.endParts[i] = memoryFigures(samples, d, part)
	}
	fig.minuteMeans = minuteMeans(samples, d)
	return fig, nil
}

// paceLoad produces rate views a second over pages to page_views for d,
// each timestamped when sent. It keeps to the schedule from the start:
// when the producer blocks, the next ticks send what is due, and behind
// keeps the most views it was ever behind. produced counts what was sent.
func paceLoad(addr string, pages, rate int, d time.Duration, produced, behind *atomic.Int64) (int64, error) {
	cfg := saramaConfig()
	cfg.Producer.Flush.Bytes, cfg.Producer.Flush.Frequency = 0, 0
	p, err := newProducer(addr, cfg)
	if err != nil {
		return 0, err
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	var n int64
	for {
		elapsed := min(time.Since(start), d)
		due := int64(float64(rate) * elapsed.Seconds())
		if lag := due - n; lag > behind.Load() {
			behind.Store(lag)
		}
		at := time.Now().UTC()
		stamp := at.Format(stampLayout)
		for ; n < due; n++ {
			p.Input() <- pageView("page_views", "/page/"+strconv.FormatInt(n%int64(pages), 10), n+1, at, stamp)
			produced.Store(n + 1)
		}
		if elapsed >= d {
			break
		}
		<-t.C
	}
	return n, p.close()
}

// lagProbe reads a group's committed offsets and a topic's ends.
type lagProbe struct {
	client     sarama.Client
	admin      sarama.ClusterAdmin
	group      string
	partitions []int32
}

func newLagProbe(addr, group string, partitions int) (*lagProbe, error) {
	client, err := sarama.NewClient([]string{addr}, saramaConfig())
	if err != nil {
		return nil, err
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		client.Close()
		return nil, err
	}
	l := &lagProbe{client: client, admin: admin, group: group}
	for i := range partitions {
		l.partitions = append(l.partitions, int32(i))
	}
	return l, nil
}

func (l *lagProbe) close() { _ = l.admin.Close() }

// sample looks at the worker pid and the group; offsets it could not read
// are left at 0.
func (l *lagProbe) sample(pid int, at time.Duration, produced int64) soakSample {
	s := soakSample{at: at, rssMiB: rssNow(pid), produced: produced, committed: l.committed()}
	for _, p := range l.partitions {
		if hwm, err := l.client.GetOffset("page_views", p, sarama.OffsetNewest); err == nil {
			s.end += hwm
		}
	}
	return s
}

// committed is the sum of the group's committed offsets (0 unread).
func (l *lagProbe) committed() int64 {
	var n int64
	if resp, err := l.admin.ListConsumerGroupOffsets(l.group, map[string][]int32{"page_views": l.partitions}); err == nil {
		for _, b := range resp.Blocks["page_views"] {
			n += max(b.Offset, 0)
		}
	}
	return n
}

// waitCommitted waits until the group's committed offsets sum to want.
func (l *lagProbe) waitCommitted(want int64, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		n := l.committed()
		if n >= want {
			return nil
		}
		select {
		case <-exited:
			return errors.New("worker exited")
		case <-deadline:
			return fmt.Errorf("%d committed after %s", n, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func printSoakSample(s soakSample, rate float64) {
	fmt.Printf("%8s %9.1f %8.1f %8.1f %8.1f %12d %12d %10d %12.0f\n", s.at.Round(time.Second), s.rssMiB, s.heapMiB, s.cacheMiB, s.memtableMiB,
		s.produced, s.committed, s.end-s.committed, rate)
}

// rssNow returns the resident set size of pid in MiB, 0 when it is gone.
func rssNow(pid int) float64 { return procStatusMiB(pid, "VmRSS:") }

// rssFigures returns the baseline and end RSS of a soak of length d: each
// the mean of the samples in a minute, the minute around 5 minutes in (the
// middle of a run shorter than 10 minutes) and the last one.
func rssFigures(samples []soakSample, d time.Duration) (baseAt time.Duration, base, end float64) {
	baseAt = soakBaseline(d)
	base, end = memoryFigures(samples, d, rssOf)
	return baseAt, base, end
}

// soakBaseline is when a soak of length d takes its baseline: 5 minutes
// in, or the middle of a run shorter than 10 minutes.
func soakBaseline(d time.Duration) time.Duration {
	if d < 10*time.Minute {
		return d / 2
	}
	return 5 * time.Minute
}

// memoryParts read the heap, block cache and memtable gauges of a sample.
var memoryParts = [3]func(soakSample) float64{
	func(s soakSample) float64 { return s.heapMiB },
	func(s soakSample) float64 { return s.cacheMiB },
	func(s soakSample) float64 { return s.memtableMiB },
}

// memoryFigures returns the mean of field over the minute around the
// baseline and over the last minute of a soak of length d.
func memoryFigures(samples []soakSample, d time.Duration, field func(soakSample) float64) (base, end float64) {
	baseAt := soakBaseline(d)
	// The first sample, taken before the load, is in neither.
	base = meanOf(samples, max(baseAt-30*time.Second, 1), baseAt+30*time.Second, field)
	end = meanOf(samples, max(d-time.Minute, 1), d, field)
	return base, end
}

// meanRSS is the mean RSS of the samples taken in [from, to]; without any,
// the RSS of the sample nearest to the middle.
func meanRSS(samples []soakSample, from, to time.Duration) float64 {
	return meanOf(samples, from, to, rssOf)
}

func rssOf(s soakSample) float64 { return s.rssMiB }

// meanOf is meanRSS of another field.
func meanOf(samples []soakSample, from, to time.Duration, field func(soakSample) float64) float64 {
	var sum float64
	var n int
	var nearest soakSample
	mid := (from + to) / 2
	for i, s := range samples {
		if s.at >= from && s.at <= to {
			sum += field(s)
			n++
		}
		if i == 0 || (s.at-mid).Abs() < (nearest.at-mid).Abs() {
			nearest = s
		}
	}
	if n == 0 {
		return field(nearest)
	}
	return sum / float64(n)
}

// minuteMeans is the mean RSS of each whole minute of the soak (the
// samples after its start, up to its end).
func minuteMeans(samples []soakSample, d time.Duration) []float64 {
	var out []float64
	for m := time.Duration(0); m+time.Minute <= d+time.Second; m += time.Minute {
		out = append(out, meanRSS(samples, m+time.Nanosecond, m+time.Minute))
	}
	return out
}

func printSoak(f soakFigures) {
	fmt.Printf("load: %d views in %.1f minutes, %.0f views/s achieved; the producer was at most %d views behind its schedule\n",
		f.views, f.minutes, f.rate, f.behindMax)
	if f.baseAt != 5*time.Minute {
		fmt.Printf("the run is shorter than 10 minutes: the baseline is its middle, %s, not 5 minutes in\n", f.baseAt)
	}
	fmt.Printf("rss: %.1f MiB around %s, %.1f MiB over the last minute, growth %+.1f MiB; peak (VmHWM) %.1f MiB\n",
		f.baseMiB, f.baseAt, f.endMiB, f.endMiB-f.baseMiB, f.peakMiB)
	fmt.Printf("of which (the worker's gauges, same minutes): %s\n", partsLine(f))
	fmt.Printf("rss by minute (MiB): %s\n", joinFixed(f.minuteMeans))
	fmt.Printf("latency over the soak: p50 %.1f ms, p99 %.1f ms (%d samples)\n", f.latency.p50, f.latency.p99, f.latency.samples)
	fmt.Printf("worker log: %d warnings, %d errors\n", f.warnings, f.errors)
}

// partNames name memoryParts.
var partNames = [3]string{"Go heap objects", "Pebble block cache", "Pebble memtables"}

// partsLine tells how each gauge moved between the baseline and the end.
func partsLine(f soakFigures) string {
	parts := make([]string, len(partNames))
	for i, name := range partNames {
		parts[i] = fmt.Sprintf("%s %.1f -> %.1f MiB (%+.1f)", name, f.baseParts[i], f.endParts[i], f.endParts[i]-f.baseParts[i])
	}
	return strings.Join(parts, "; ")
}

func joinFixed(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(parts, ", ")
}

func soakResults(f soakFigures) map[string]string {
	return map[string]string{
		"soak_minutes":                 fmt.Sprintf("%g", f.minutes),
		"soak_views":                   strconv.FormatInt(f.views, 10),
		"soak_views_per_second":        fmt.Sprintf("%.0f", f.rate),
		"soak_producer_behind_max":     strconv.FormatInt(f.behindMax, 10),
		"soak_rss_baseline_minute":     fmt.Sprintf("%g", f.baseAt.Minutes()),
		"soak_rss_mib_at_5m":           fmt.Sprintf("%.1f", f.baseMiB),
		"soak_rss_mib_end":             fmt.Sprintf("%.1f", f.endMiB),
		"soak_rss_growth_mib_after_5m": fmt.Sprintf("%.1f", f.endMiB-f.baseMiB),
		"soak_peak_rss_mib":            fmt.Sprintf("%.1f", f.peakMiB),
		"soak_latency_p50_ms":          fmt.Sprintf("%.1f", f.latency.p50),
		"soak_latency_p99_ms":          fmt.Sprintf("%.1f", f.latency.p99),
		"soak_worker_errors":           strconv.Itoa(f.errors),
	}
}

// soakDocs is the generated part of the docs' Soak section.
func soakDocs(f soakFigures, cfg soakConfig, at time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run on %s, machine: %d cores; %g minutes at %s views/s over %s pages.\n\n",
		at.Format("2006-01-02"), numCPU(), f.minutes, commas(float64(cfg.rate)), commas(float64(cfg.pages)))
	b.WriteString("| figure | value |\n|---|---:|\n")
	fmt.Fprintf(&b, "| views produced (all committed) | %s |\n", commas(float64(f.views)))
	fmt.Fprintf(&b, "| views/s achieved | %s |\n", commas(f.rate))
	fmt.Fprintf(&b, "| RSS MiB around %s (baseline) | %.1f |\n", f.baseAt, f.baseMiB)
	fmt.Fprintf(&b, "| RSS MiB over the last minute | %.1f |\n", f.endMiB)
	fmt.Fprintf(&b, "| RSS growth MiB after the baseline | %+.1f |\n", f.endMiB-f.baseMiB)
	fmt.Fprintf(&b, "| peak RSS MiB (VmHWM) | %.1f |\n", f.peakMiB)
	for i, name := range partNames {
		fmt.Fprintf(&b, "| %s MiB, baseline -> last minute | %.1f -> %.1f |\n", name, f.baseParts[i], f.endParts[i])
	}
	fmt.Fprintf(&b, "| latency p50 / p99 ms | %.1f / %.1f |\n", f.latency.p50, f.latency.p99)
	fmt.Fprintf(&b, "| worker log warnings / errors | %d / %d |\n", f.warnings, f.errors)
	fmt.Fprintf(&b, "\nRSS MiB, mean of each minute: %s.\n", joinFixed(f.minuteMeans))
	return b.String()
}
