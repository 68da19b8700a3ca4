// Command bench measures the worker as a real process against the dev broker
// run as its own process: it preloads page views, runs the worker until
// every record is processed and committed, and prints events/s, CPU seconds
// and peak RSS. With -bare it also measures a bare sarama consumer reading
// the same records without processing (the ceiling), and with -recovery the
// rebuild of an empty DATA_DIR from the changelogs the run produced. With
// -failover it runs only the failover benchmark instead (failover.go): the
// owner of a partition killed, cold and with standby copies.
//
// It ends with machine-readable key=value lines.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/devregistry"
	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/schema"
)

type options struct {
	worker, broker string
	events, pages  int
	partitions     int
	bare, recovery bool
	rebalanceRuns  int
	latencyRate    int
	latencyFor     time.Duration
	keep           bool
	cpuprofile     string
	profileFor     time.Duration
	commitInterval string
	peer           string
	hopping        bool
	avro           bool
	topic          string // the source topic runWorker waits on
	runs           int    // throughput and recovery runs, each beside a bare one
	// The failover benchmark, run instead of the others.
	failover        bool
	failoverRuns    int
	failoverRecords int
	failoverPages   int
	// The warm-up benchmark, run instead of the others.
	warmup bool
}

func main() {
	var o options
	flag.StringVar(&o.worker, "worker", "bin/pageviews", "worker binary")
	flag.StringVar(&o.broker, "broker", "bin/devbroker", "dev broker binary")
	flag.IntVar(&o.events, "events", envInt("BENCH_EVENTS", 1_000_000), "page views to preload")
	flag.IntVar(&o.pages, "pages", 10_000, "distinct pages")
	flag.IntVar(&o.partitions, "partitions", 8, "partitions of page_views")
	flag.IntVar(&o.runs, "runs", envInt("BENCH_RUNS", 3), "runs of the throughput and of the recovery benchmark, each followed by a bare consumer's run: the figures are medians, and each ratio the median of the runs' ratios to the bare run beside them")
	flag.BoolVar(&o.bare, "bare", true, "also measure a bare sarama consumer")
	flag.BoolVar(&o.avro, "avro", true, "also measure the worker over the same views written as registry-framed Avro (a dev schema registry in this process)")
	flag.BoolVar(&o.hopping, "hopping", true, "also measure the worker with hopping windows of a quarter step (WINDOW_STEP=WINDOW_SIZE/4: 4 windows per event)")
	flag.BoolVar(&o.recovery, "recovery", true, "also measure the recovery of an empty DATA_DIR from as many changelog records as -events")
	flag.IntVar(&o.rebalanceRuns, "rebalance-runs", 3, "runs of the rebalance benchmark per protocol (a third worker joining two under load); 0 skips it")
	flag.IntVar(&o.latencyRate, "latency-rate", 20_000, "page views per second of the steady load after the backlog, for the end-to-end latency; 0 skips it")
	flag.DurationVar(&o.latencyFor, "latency-for", 5*time.Second, "how long the steady load runs")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	flag.StringVar(&o.peer, "peer", "bin/goka-peer", "goka peer binary (bench/peer); empty skips it")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write CPU profiles of the worker: its aggregation to this file, its recovery to the file with .recovery appended")
	flag.DurationVar(&o.profileFor, "cpuprofile-for", 2*time.Second, "how long each -cpuprofile profile samples, from the worker's start (whole seconds)")
	flag.StringVar(&o.commitInterval, "commit-interval", "1s", "the worker's COMMIT_INTERVAL: the last commit comes up to one interval after the last event")
	flag.BoolVar(&o.failover, "failover", false, "run only the failover benchmark: kill -9 of the owner of a partition with -failover-records changelog records among three workers, cold and with standby copies")
	flag.IntVar(&o.failoverRuns, "failover-runs", envInt("FAILOVER_RUNS", 3), "runs of the failover benchmark, each setting from scratch")
	flag.IntVar(&o.failoverRecords, "failover-records", 1_000_000, "changelog records (both tables) the killed partition holds at least")
	// Beyond about 65,000 pages a partition the worker processes a round
	// many times slower (it keeps fewer of them cached): rounds of fewer
	// pages keep the load to seconds.
	flag.IntVar(&o.failoverPages, "failover-pages", 50_000, "distinct pages of the failover load: it sends one view of each page in rounds, each round committed before the next, until the changelogs hold -failover-records records")
	flag.BoolVar(&o.warmup, "warmup", false, "run only the warm-up benchmark: a worker joins one that holds every partition, with -events changelog records over -partitions, and recovers its share and catches up standby copies of the rest")
	flag.BoolVar(&scaleCfg.on, "scale", false, "run only the scale benchmark: throughput, peak RSS, p99 latency and recovery with one of pages, partitions and events varied at a time from -pages, -partitions and -events")
	flag.StringVar(&scaleCfg.pages, "scale-pages", "10000,100000,1000000", "distinct pages of the scale benchmark (comma-separated)")
	flag.StringVar(&scaleCfg.partitions, "scale-partitions", "8,32,64", "partitions of the scale benchmark (comma-separated)")
	flag.StringVar(&scaleCfg.events, "scale-events", "1000000,10000000", "events of the scale benchmark (comma-separated)")
	flag.StringVar(&scaleCfg.svg, "scale-svg", "", "write the scale benchmark's chart (SVG) to this file; empty skips it")
	flag.StringVar(&scaleCfg.docs, "scale-docs", "", "rewrite the scale section of this markdown file (between <!-- scale:begin --> and <!-- scale:end -->); empty skips it")
	flag.StringVar(&scaleCfg.memLimit, "scale-memlimit", "410MiB", "GOMEMLIMIT of the scale benchmark's worker, by default what it sets itself in the chart's container (80% of 512 MiB); empty runs it without")
	flag.BoolVar(&soakCfg.on, "soak", false, "run only the soak: one worker with its default windows under a steady load for -soak-minutes, its RSS sampled every 10 s")
	flag.Float64Var(&soakCfg.minutes, "soak-minutes", 30, "how long the soak's load runs, in minutes (at least 2)")
	flag.IntVar(&soakCfg.rate, "soak-rate", 20_000, "page views per second of the soak's load")
	flag.IntVar(&soakCfg.pages, "soak-pages", 10_000, "distinct pages of the soak's load")
	flag.StringVar(&soakCfg.docs, "soak-docs", "", "rewrite the soak section of this markdown file (between <!-- soak:begin --> and <!-- soak:end -->); empty skips it")
	flag.Parse()
	var results map[string]string
	var err error
	keys := resultKeys()
	if o.failover {
		results, err = failoverBench(o)
		keys = failoverKeys()
	} else if o.warmup {
		results, err = warmupBench(o)
		keys = warmupKeys()
	} else if scaleCfg.on {
		results, keys, err = scaleBench(o, scaleCfg)
	} else if soakCfg.on {
		results, err = soakBench(o, soakCfg)
		keys = soakKeys()
	} else {
		results, err = run(o)
	}
	// The machine-readable lines, last.
	for _, k := range keys {
		if v, ok := results[k]; ok {
			fmt.Printf("%s=%s\n", k, v)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// resultKeys are the machine-readable figures, in the order printed.
func resultKeys() []string {
	return []string{"events_per_second", "bare_records_per_second", "goka_events_per_second", "ratio_vs_goka", "ratio_vs_bare",
		"source_range_read_records_per_second", "ratio_vs_range_read",
		"recovery_records_per_second", "bare_changelog_records_per_second", "recovery_ratio",
		"range_read_records_per_second", "recovery_ratio_vs_range_read", "cpu_seconds", "peak_rss_mib",
		"hopping_events_per_second", "hopping_peak_rss_mib", "hopping_ratio",
		"avro_events_per_second", "avro_peak_rss_mib", "avro_ratio",
		"latency_p50_ms", "latency_p99_ms", "backlog_latency_p50_ms", "backlog_latency_p99_ms",
		"rebalance_cooperative_ms", "rebalance_cooperative_partition_stop_ms", "rebalance_eager_ms", "rebalance_eager_partition_stop_ms",
		"coop_stopped_partition_ms", "eager_stopped_partition_ms"}
}

// run measures and prints what it measures; it returns the figures by key.
func run(o options) (map[string]string, error) {
	dir, addr, done, err := brokerIn(o, "pageviews-bench-")
	if err != nil {
		return nil, err
	}
	defer done()

	fmt.Printf("machine: %d cores; events=%d pages=%d partitions=%d commit_interval=%s\n", numCPU(), o.events, o.pages, o.partitions, o.commitInterval)
	began := time.Now()
	if err := preload(addr, o); err != nil {
		return nil, fmt.Errorf("preload: %w", err)
	}
	fmt.Printf("preload: %d records in %.1fs\n", o.events, time.Since(began).Seconds())

	results := map[string]string{}
	agg, err := throughput(o, addr, dir, results)
	if err != nil {
		return nil, err
	}
	fmt.Printf("latency over the backlog: p50 %.0f ms, p99 %.0f ms (%d samples; mostly the wait in the backlog)\n",
		agg.backlog.p50, agg.backlog.p99, agg.backlog.samples)
	if agg.steadyEvents > 0 {
		fmt.Printf("latency at %d views/s:    p50 %.1f ms, p99 %.1f ms (%d samples of %d views, record timestamp to table update)\n",
			o.latencyRate, agg.steady.p50, agg.steady.p99, agg.steady.samples, agg.steadyEvents)
	}

	results["backlog_latency_p50_ms"] = fmt.Sprintf("%.0f", agg.backlog.p50)
	results["backlog_latency_p99_ms"] = fmt.Sprintf("%.0f", agg.backlog.p99)
	if agg.steadyEvents > 0 {
		results["latency_p50_ms"] = fmt.Sprintf("%.1f", agg.steady.p50)
		results["latency_p99_ms"] = fmt.Sprintf("%.1f", agg.steady.p99)
	}
	if o.hopping {
		if err := hopping(o, addr, dir, agg, results); err != nil {
			return nil, err
		}
	}
	if o.avro {
		if err := avroRun(o, addr, dir, agg, results); err != nil {
			return nil, err
		}
	}
	if err := comparisons(o, addr, dir, agg.rate, results); err != nil {
		return nil, err
	}
	if err := rebalances(o, addr, results); err != nil {
		return nil, err
	}
	return results, nil
}

// brokerIn makes a temporary directory (kept with -keep) and starts a dev
// broker in it; done stops the broker and removes the directory.
func brokerIn(o options, prefix string) (dir, addr string, done func(), err error) {
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", nil, err
	}
	remove := func() {
		if !o.keep {
			os.RemoveAll(dir)
		}
	}
	broker, addr, err := startBroker(o.broker, filepath.Join(dir, "broker"))
	if err != nil {
		remove()
		return "", "", nil, err
	}
	return dir, addr, func() { stopProcess(broker); remove() }, nil
}

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}

func startBroker(bin, dataDir string) (*exec.Cmd, string, error) {
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0")
	_ = dataDir // the benchmark keeps the broker in memory, as a fast disk would
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "devbroker listening on "); ok {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return cmd, addr, nil
		}
	}
	_ = cmd.Process.Kill()
	return nil, "", errors.New("dev broker exited before listening")
}

func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V3_9_0_0
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Flush.Bytes = 512 << 10
	c.Producer.Flush.Frequency = 5 * time.Millisecond
	c.Consumer.Fetch.Default = 1 << 20
	return c
}

// preload creates page_views and produces the events, spread over the
// pages, with event times of now.
func preload(addr string, o options) error {
	if err := createTopics(addr, o.partitions, "page_views"); err != nil {
		return err
	}
	p, err := newProducer(addr, saramaConfig())
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	stamp := now.Format(stampLayout)
	for i := range o.events {
		p.Input() <- pageView("page_views", "/page/"+strconv.Itoa(i%o.pages), int64(i+1), now, stamp)
	}
	return p.close()
}

type aggResult struct {
	rate, seconds, cpu, rssMiB float64
	// End-to-end latency (record timestamp to table update) over the
	// backlog, which measures mostly how long records waited in it, and
	// under a steady load below capacity once the backlog is processed.
	backlog, steady latencyFigures
	steadyEvents    int64
}

// throughput runs the worker over the preloaded events o.runs times, each
// with a group and DATA_DIR of its own, and with -bare a bare consumer of
// the same events after each. Taking turns, each worker run is compared
// with a bare run taken moments later, so a machine whose speed drifts
// within minutes moves both sides of each ratio alike; ratio_vs_bare is the
// median of the runs' ratios. The first run alone measures the latencies
// and takes the CPU profile; the others, and the bare consumer after each,
// take every record in the topic, its steady load's included. It adds the throughput figures to results and
// returns the first run's, with the medians' rate and CPU and the highest
// peak RSS.
func throughput(o options, addr, dir string, results map[string]string) (aggResult, error) {
	var first aggResult
	var rates, cpus, bares, ratios, rangeds, rangedRatios []float64
	for i := range max(1, o.runs) {
		run, group, data, want := o, "pageviews", "worker", int64(o.events)
		if i > 0 {
			// The first run's steady load is in the topic too: the
			// later runs take it as part of their backlog.
			run.latencyRate, run.cpuprofile = 0, ""
			group, data = fmt.Sprintf("pageviews-run%d", i+1), fmt.Sprintf("worker-run%d", i+1)
			want += first.steadyEvents
		}
		agg, err := runWorker(run, addr, filepath.Join(dir, data), group, want)
		if err != nil {
			return first, fmt.Errorf("worker, run %d: %w", i+1, err)
		}
		fmt.Printf("worker:   %8.0f events/s  (run %d; %.2fs, cpu %.2fs, peak rss %.1f MiB)\n",
			agg.rate, i+1, agg.seconds, agg.cpu, agg.rssMiB)
		if i == 0 {
			first = agg
		}
		rates, cpus = append(rates, agg.rate), append(cpus, agg.cpu)
		first.rssMiB = max(first.rssMiB, agg.rssMiB)
		if !o.bare {
			continue
		}
		bare, err := bareConsume(addr, []string{"page_views"}, o.partitions)
		if err != nil {
			return first, fmt.Errorf("bare consumer, run %d: %w", i+1, err)
		}
		ranged, err := rangeRead(addr, []string{"page_views"}, o.partitions, false)
		if err != nil {
			return first, fmt.Errorf("range read, run %d: %w", i+1, err)
		}
		fmt.Printf("bare:     %8.0f records/s (run %d; sarama consumer, no processing); range read %.0f records/s (the worker's backlog reader)\n", bare, i+1, ranged)
		bares, ratios = append(bares, bare), append(ratios, agg.rate/bare)
		rangeds, rangedRatios = append(rangeds, ranged), append(rangedRatios, agg.rate/ranged)
	}
	first.rate, first.cpu = median(rates), median(cpus)
	fmt.Printf("worker:   %8.0f events/s  (median of %d runs; cpu %.2fs, peak rss %.1f MiB)\n",
		first.rate, len(rates), first.cpu, first.rssMiB)
	results["events_per_second"] = fmt.Sprintf("%.0f", first.rate)
	results["peak_rss_mib"] = fmt.Sprintf("%.1f", first.rssMiB)
	results["cpu_seconds"] = fmt.Sprintf("%.2f", first.cpu)
	if o.bare {
		fmt.Printf("bare:     %8.0f records/s (median); ratio_vs_bare %.2f, the median of the runs' %s\n",
			median(bares), median(ratios), joinRatios(ratios))
		results["bare_records_per_second"] = fmt.Sprintf("%.0f", median(bares))
		results["ratio_vs_bare"] = fmt.Sprintf("%.2f", median(ratios))
		fmt.Printf("range read: %8.0f records/s (median; the worker's backlog reader, no processing); ratio_vs_range_read %.2f, the median of the runs' %s\n",
			median(rangeds), median(rangedRatios), joinRatios(rangedRatios))
		results["source_range_read_records_per_second"] = fmt.Sprintf("%.0f", median(rangeds))
		results["ratio_vs_range_read"] = fmt.Sprintf("%.2f", median(rangedRatios))
	}
	return first, nil
}

// joinRatios lists ratios as "0.81 / 0.77 / 0.84".
func joinRatios(ratios []float64) string {
	s := make([]string, len(ratios))
	for i, r := range ratios {
		s[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(s, " / ")
}

// runWorker runs the worker until the group's committed offsets cover want
// records. The clock starts at the worker's first "joined group" log line.
func runWorker(o options, addr, dataDir, group string, want int64, env ...string) (aggResult, error) {
	var res aggResult
	// The worker's metrics go to a DogStatsD listener here, as they would to
	// an agent: their cost is part of the figures, and the end-to-end
	// latency comes from them.
	statsd, err := startStatsd()
	if err != nil {
		return res, err
	}
	defer statsd.close()
	cmd := exec.Command(o.worker)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+addr, "DATA_DIR="+dataDir, "WEB_ADDR=127.0.0.1:0", "KAFKA_GROUP="+group,
		"LOG_FORMAT=json", "PARTITIONS="+strconv.Itoa(o.partitions), "WINDOW_SIZE=1h", "WINDOW_EXPIRES=2h",
		"LIVECHECK_INTERVAL=0", "COMMIT_INTERVAL="+o.commitInterval, "DD_DOGSTATSD_URL="+statsd.url())
	cmd.Env = append(cmd.Env, env...)
	if o.cpuprofile != "" {
		cmd.Env = append(cmd.Env, "PPROF_ADDR=127.0.0.1:6061")
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer stopProcess(cmd)
	var start time.Time
	select {
	case start = <-joinedAt(out):
	case <-time.After(60 * time.Second):
		return res, errors.New("worker did not join its group within 60s")
	}
	profiled := make(chan error, 1)
	if o.cpuprofile != "" {
		go func() { profiled <- fetchProfile(o.cpuprofile, o.profileFor) }()
	} else {
		profiled <- nil
	}
	var peak float64
	end, err := waitCommitted(addr, cmp.Or(o.topic, "page_views"), group, o.partitions, want, cmd, func() {
		peak = max(peak, rssHWM(cmd.Process.Pid))
	})
	if err != nil {
		return res, fmt.Errorf("worker: %w", err)
	}
	if err := <-profiled; err != nil {
		return res, fmt.Errorf("cpu profile: %w", err)
	}
	res.seconds = end.Sub(start).Seconds()
	res.rate = float64(want) / res.seconds
	res.rssMiB = max(peak, rssHWM(cmd.Process.Pid))
	if res.cpu, err = procCPU(cmd.Process.Pid); err != nil {
		return res, err
	}
	// Let the backlog's last samples arrive before the steady load starts.
	time.Sleep(metricsDelay)
	res.backlog = figuresOf(statsd.since(start))
	if o.latencyRate > 0 {
		res.steady, res.steadyEvents, err = steadyLatency(o, addr, group, want, cmd, statsd)
	}
	return res, err
}

// joinedAt sends the time of the worker's "joined group" log line, read
// from its JSON log out, which it reads to the end.
func joinedAt(out io.Reader) <-chan time.Time {
	joined := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		sent := false
		for sc.Scan() {
			var l struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "joined group" && !sent {
				joined <- l.Time
				sent = true
			}
		}
	}()
	return joined
}

// steadyLatency sends o.latencyRate views a second for o.latencyFor once
// the worker has caught up with want records, and returns the latency
// figures of those views and how many there were.
func steadyLatency(o options, addr, group string, want int64, cmd *exec.Cmd, statsd *statsdSink) (latencyFigures, int64, error) {
	began := time.Now()
	n, err := steadyLoad(addr, o.pages, o.latencyRate, o.latencyFor)
	if err != nil {
		return latencyFigures{}, 0, fmt.Errorf("steady load: %w", err)
	}
	if _, err := waitCommitted(addr, "page_views", group, o.partitions, want+n, cmd, nil); err != nil {
		return latencyFigures{}, 0, fmt.Errorf("worker under steady load: %w", err)
	}
	time.Sleep(metricsDelay)
	return figuresOf(statsd.since(began)), n, nil
}

// rssHWM returns the peak resident set size of pid in MiB.
func rssHWM(pid int) float64 { return procStatusMiB(pid, "VmHWM:") }

// procStatusMiB returns the field (a size in kB, such as "VmRSS:") of
// pid's /proc status in MiB, 0 when pid is gone.
func procStatusMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// bareConsume reads every record of the topics with one sarama consumer and
// a partition consumer per partition, all at once, doing nothing with them:
// the ceiling.
func bareConsume(addr string, topics []string, partitions int) (float64, error) {
	client, err := sarama.NewClient([]string{addr}, saramaConfig())
	if err != nil {
		return 0, err
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return 0, err
	}
	defer consumer.Close()
	return readAll(client, topics, partitions, func(topic string, p int32, _ int64) (sarama.PartitionConsumer, error) {
		return consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
	})
}

// readAll reads every record below the high watermark of each partition of
// the topics at once, each with the consumer open returns, doing nothing
// with them, and returns the records read per second, from the first
// offset lookup.
func readAll(client sarama.Client, topics []string, partitions int, open func(topic string, p int32, hwm int64) (sarama.PartitionConsumer, error)) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, topic := range topics {
		for p := range int32(partitions) {
			hwm, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return 0, err
			}
			if hwm == 0 {
				continue
			}
			pc, err := open(topic, p, hwm)
			if err != nil {
				return 0, err
			}
			wg.Go(func() {
				defer pc.AsyncClose()
				for m := range pc.Messages() {
					total.Add(1)
					if m.Offset+1 >= hwm {
						return
					}
				}
			})
		}
	}
	wg.Wait()
	return float64(total.Load()) / time.Since(start).Seconds(), nil
}

// fetchProfile records 2 seconds of the worker's CPU profile.
func fetchProfile(path string, d time.Duration) error {
	var resp *http.Response
	var err error
	for range 500 { // the worker may not be listening yet
		if resp, err = http.Get("http://127.0.0.1:6061/debug/pprof/profile?seconds=" + strconv.Itoa(max(1, int(d.Seconds())))); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runPeer runs the goka peer until its group has committed every record.
// The clock starts when the peer process starts: goka joins, recovers its
// (empty) table and consumes in one go.
func runPeer(o options, addr, dataDir string) (float64, error) {
	cmd := exec.Command(o.peer, "-brokers", addr, "-group", "goka-pageviews", "-data-dir", dataDir, "-window", "1h")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer stopProcess(cmd)
	end, err := waitCommitted(addr, "page_views", "goka-pageviews", o.partitions, int64(o.events), cmd, nil)
	if err != nil {
		return 0, err
	}
	return float64(o.events) / end.Sub(start).Seconds(), nil
}

// commitPoll is how often waitCommitted asks for the committed offsets, so
// how late it may see a run's end: at 20 ms that was 10 ms on average, 1.5%
// of a million-event run's 0.65 s, which the bare consumer, timed in
// process, does not pay. A poll is one small request to the broker.
const commitPoll = 5 * time.Millisecond

// waitCommitted polls a group's committed offsets on page_views until they
// sum to want, and returns when that was seen. each, when set, runs at
// every poll (the worker's RSS is sampled there).
func waitCommitted(addr, topic, group string, partitions int, want int64, cmd *exec.Cmd, each func()) (time.Time, error) {
	admin, err := sarama.NewClusterAdmin([]string{addr}, saramaConfig())
	if err != nil {
		return time.Time{}, err
	}
	defer admin.Close()
	parts := make([]int32, partitions)
	for i := range parts {
		parts[i] = int32(i)
	}
	deadline := time.Now().Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		if cmd.ProcessState != nil {
			return time.Time{}, errors.New("process exited")
		}
		if each != nil {
			each()
		}
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
		if err == nil {
			var sum int64
			for _, b := range resp.Blocks[topic] {
				if b.Offset > 0 {
					sum += b.Offset
				}
			}
			if sum >= want {
				return time.Now(), nil
			}
		}
		time.Sleep(commitPoll)
	}
	return time.Time{}, errors.New("not every record committed within 30 minutes")
}

// joinMillis lists figures in ms.
func joinMillis(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

// comparisons runs what the worker's rate is compared with, as o asks:
// the goka peer, and recovery against a bare changelog consume. They add
// their figures to results.
func comparisons(o options, addr, dir string, worker float64, results map[string]string) error {
	if o.peer != "" {
		rate, err := runPeer(o, addr, filepath.Join(dir, "peer"))
		if err != nil {
			return fmt.Errorf("goka peer: %w", err)
		}
		fmt.Printf("goka:     %8.0f events/s (goka v1.1.17 processor, defaults, LevelDB)\n", rate)
		results["goka_events_per_second"] = fmt.Sprintf("%.0f", rate)
		results["ratio_vs_goka"] = fmt.Sprintf("%.2f", worker/rate)
	}
	if o.recovery {
		rec, err := recoveryBench(o, addr, filepath.Join(dir, "recovery"), o.events)
		if err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
		fmt.Printf("recovery: %8.0f records/s (median of %d runs; %d changelog records into an empty DATA_DIR in %.2fs, cpu %.2fs, peak rss %.1f MiB)\n",
			rec.rate, len(rec.ratios), rec.records, rec.seconds, rec.cpu, rec.rssMiB)
		fmt.Printf("bare changelog consume: %8.0f records/s (median); recovery_ratio %.2f, the median of the runs' %s\n",
			rec.bare, median(rec.ratios), joinRatios(rec.ratios))
		results["recovery_records_per_second"] = fmt.Sprintf("%.0f", rec.rate)
		results["bare_changelog_records_per_second"] = fmt.Sprintf("%.0f", rec.bare)
		results["recovery_ratio"] = fmt.Sprintf("%.2f", median(rec.ratios))
		fmt.Printf("changelog range read:   %8.0f records/s (median; the worker's reader, no replay); recovery_ratio_vs_range_read %.2f, the median of the runs' %s\n",
			rec.ranged, median(rec.rangedRatios), joinRatios(rec.rangedRatios))
		results["range_read_records_per_second"] = fmt.Sprintf("%.0f", rec.ranged)
		results["recovery_ratio_vs_range_read"] = fmt.Sprintf("%.2f", median(rec.rangedRatios))
	}
	return nil
}

// rebalances times a third worker joining two, under each protocol, and
// adds the medians to results.
func rebalances(o options, addr string, results map[string]string) error {
	if o.rebalanceRuns > 0 {
		for _, protocol := range []string{"cooperative", "eager"} {
			rb, err := rebalanceBench(o.worker, addr, protocol, o.partitions, o.rebalanceRuns)
			for _, w := range rb.Warnings {
				fmt.Println("  worker log:", w)
			}
			if err != nil {
				return fmt.Errorf("rebalance: %w", err)
			}
			// From the moment the group starts to rebalance (the third
			// worker's start-up excluded) to every partition processing.
			rebal := make([]float64, len(rb.Millis))
			for i := range rb.Millis {
				rebal[i] = rb.Millis[i] - rb.JoinMillis[i]
			}
			fmt.Printf("rebalance %-12s %5.0f ms median from a third worker joining until every partition processes again (runs %s; %.0f ms from its start); longest stop of one partition %.0f ms; partitions stopped %v, for %s partition-ms in all\n",
				protocol+":", median(rebal), joinMillis(rebal), rb.Median, rb.MedianGap, rb.Stopped, joinMillis(rb.StoppedMillis))
			results["rebalance_"+protocol+"_ms"] = fmt.Sprintf("%.0f", median(rebal))
			results["rebalance_"+protocol+"_partition_stop_ms"] = fmt.Sprintf("%.0f", rb.MedianGap)
			// The sum over partitions of the time each stood still.
			short := map[string]string{"cooperative": "coop", "eager": "eager"}[protocol]
			results[short+"_stopped_partition_ms"] = fmt.Sprintf("%.0f", rb.MedianStopped)
		}
	}
	return nil
}

// hopping runs the worker again over the same records with hopping windows
// of a quarter step (each event updates four windows), and adds its figures
// next to the tumbling ones (tumbling).
func hopping(o options, addr, dir string, tumbling aggResult, results map[string]string) error {
	o.latencyRate, o.cpuprofile = 0, ""
	agg, err := runWorker(o, addr, filepath.Join(dir, "hopping"), "pageviews-hopping", int64(o.events), "WINDOW_STEP=15m")
	if err != nil {
		return fmt.Errorf("hopping worker: %w", err)
	}
	fmt.Printf("hopping:  %8.0f events/s  (WINDOW_STEP=WINDOW_SIZE/4, 4 windows per event; %.2fs, cpu %.2fs, peak rss %.1f MiB)\n",
		agg.rate, agg.seconds, agg.cpu, agg.rssMiB)
	results["hopping_events_per_second"] = fmt.Sprintf("%.0f", agg.rate)
	results["hopping_peak_rss_mib"] = fmt.Sprintf("%.1f", agg.rssMiB)
	results["hopping_ratio"] = fmt.Sprintf("%.2f", agg.rate/tumbling.rate)
	return nil
}

// avroRun runs the worker over the same views written as registry-framed
// Avro to a topic of their own, with a dev schema registry served here, and
// adds its figures next to the JSON ones.
func avroRun(o options, addr, dir string, plain aggResult, results map[string]string) error {
	reg, err := devregistry.Start(devregistry.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer func() { _ = reg.Close() }()
	const topic = "page_views_avro"
	began := time.Now()
	if err := preloadAvro(addr, reg.URL(), topic, o); err != nil {
		return fmt.Errorf("preload Avro: %w", err)
	}
	fmt.Printf("preload:  %d Avro records in %.1fs\n", o.events, time.Since(began).Seconds())
	o.latencyRate, o.cpuprofile, o.topic = 0, "", topic
	agg, err := runWorker(o, addr, filepath.Join(dir, "avro"), "pageviews-avro", int64(o.events),
		"PAGE_VIEWS_TOPIC="+topic, "SCHEMA_REGISTRY_URL="+reg.URL())
	if err != nil {
		return fmt.Errorf("worker over Avro: %w", err)
	}
	fmt.Printf("avro:     %8.0f events/s  (registry-framed Avro, resolved to the worker's schema; %.2fs, cpu %.2fs, peak rss %.1f MiB)\n",
		agg.rate, agg.seconds, agg.cpu, agg.rssMiB)
	results["avro_events_per_second"] = fmt.Sprintf("%.0f", agg.rate)
	results["avro_peak_rss_mib"] = fmt.Sprintf("%.1f", agg.rssMiB)
	results["avro_ratio"] = fmt.Sprintf("%.2f", agg.rate/plain.rate)
	return nil
}

// preloadAvro writes the benchmark's views to topic as a producer bound to
// the registry at url writes them.
func preloadAvro(addr, url, topic string, o options) error {
	if err := createTopics(addr, o.partitions, topic); err != nil {
		return err
	}
	reg, err := schema.Connect(schema.Options{URL: url})
	if err != nil {
		return err
	}
	codec := pageview.NewCodec()
	if _, err := codec.Bind(context.Background(), reg, topic+"-value"); err != nil {
		return err
	}
	p, err := newProducer(addr, saramaConfig())
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i := range o.events {
		page := "/page/" + strconv.Itoa(i%o.pages)
		v, err := codec.Encode(pageview.PageView{Page: page, Count: int64(i + 1), Timestamp: now})
		if err != nil {
			_ = p.close()
			return err
		}
		p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(v), Timestamp: now}
	}
	return p.close()
}
