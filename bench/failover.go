package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// The failover benchmark: three workers share page_views, one partition of
// it (the target) holds at least a million changelog records, and its owner
// is killed with SIGKILL. It times how long the group takes to notice (the
// session timeout, mostly) and how long the new owner then takes to process
// the partition again, once with no standby copies (cold) and once with one
// standby copy of each partition, each on a broker and workers of its own.
//
// The marks are the workers' log lines, whose times are the workers' wall
// clock (the same machine's as the kill's): the kill to the new owner's
// "partition assigned" is the detection; from there to its "partition
// resumed" (recovered, about to process) the failover; its "recovered"
// lines say how many changelog records it replayed. Its assignment_latency,
// recovery_records and assignment_replayed_records metrics are read too and
// printed beside them. The changelog records are counted from the broker's
// offsets, which also count transaction markers (a few per second).
const (
	failoverGroup     = "pageviews"
	failoverTopic     = "page_views"
	failoverPartition = int32(0)
	failoverWorkers   = 3
	// failoverSession is the lowest KAFKA_SESSION_TIMEOUT the worker
	// accepts: the kill is noticed as soon as it can be.
	failoverSession = "6s"
	// failoverTimeout bounds each phase of a run.
	failoverTimeout = 3 * time.Minute
	// failoverTrickle is how long the steady load runs before the kill,
	// so that every partition is being processed when it comes.
	failoverTrickle = 2 * time.Second
)

// failoverTables are the worker's tables; table t's changelog is
// <group>-<t>-changelog.
func failoverTables() []string { return []string{"views", "totals"} }

func changelogOf(table string) string { return failoverGroup + "-" + table + "-changelog" }

// failoverFigures are one run's measurements for one setting.
type failoverFigures struct {
	replicas int
	// changelog is how many records the target's changelog partitions
	// held at the kill, in all and per table.
	changelog int64
	perTable  map[string]int64
	owner     int       // the worker killed
	killed    time.Time // just before the kill, wall clock as the log lines are
	copies    []int     // the workers that kept a standby copy of the target at the kill
	// copied is, per table, the last offset the new owner's standby copy
	// had committed at the kill; nil when it kept none.
	copied   map[string]int64
	heldCopy bool
	t        takeover // the new owner's log of the takeover
	// detect is from the kill to the new owner's "partition assigned";
	// failover from there to its "partition resumed".
	detect, failover time.Duration
	// What the new owner's metrics said of the takeover: assignment_latency
	// (-1 when no sample came), the sum of recovery_records, and the
	// assignment_replayed_records samples with their copy tag ("" when the
	// worker sends none).
	latencyMS       float64
	recoveryRecords int64
	replayedMetric  string
	rssMiB          float64 // the new owner's peak RSS
	warnings        []string
}

// failoverBench runs, o.failoverRuns times, a cold failover and a failover
// with standby copies, each on a broker and workers of its own, and returns
// the figures by key (medians over the runs).
func failoverBench(o options) (map[string]string, error) {
	fmt.Printf("machine: %d cores; failover of partition %d of %d (at least %d changelog records) among %d workers; KAFKA_SESSION_TIMEOUT=%s commit_interval=%s runs=%d\n",
		numCPU(), failoverPartition, o.partitions, o.failoverRecords, failoverWorkers, failoverSession, o.commitInterval, o.failoverRuns)
	if o.failoverRuns < 1 {
		return nil, fmt.Errorf("failover runs %d: want at least 1", o.failoverRuns)
	}
	began := time.Now()
	var cold, standby []failoverFigures
	for run := 1; run <= o.failoverRuns; run++ {
		for _, replicas := range []int{0, 1} {
			fig, err := failoverRun(o, replicas)
			for _, w := range fig.warnings {
				fmt.Println("  worker log:", w)
			}
			if err != nil {
				return nil, fmt.Errorf("failover run %d, TABLE_STANDBY_REPLICAS=%d: %w", run, replicas, err)
			}
			printFailover(run, fig)
			if replicas == 0 {
				cold = append(cold, fig)
			} else {
				standby = append(standby, fig)
			}
		}
		c, s := cold[len(cold)-1], standby[len(standby)-1]
		fmt.Printf("failover_run=%d cold_ms=%.0f cold_replayed_records=%d standby_ms=%.0f replayed_records=%d detect_cold_ms=%.0f detect_standby_ms=%.0f changelog_records=%d standby_new_owner_held_copy=%t\n",
			run, ms(c.failover), c.t.replayed, ms(s.failover), s.t.replayed, ms(c.detect), ms(s.detect), min(c.changelog, s.changelog), s.heldCopy)
	}
	fmt.Printf("failover benchmark: %d runs in %.0fs\n", o.failoverRuns, time.Since(began).Seconds())
	return failoverResults(cold, standby), nil
}

// failoverKeys are the failover benchmark's machine-readable figures, in
// the order printed.
func failoverKeys() []string {
	return []string{"failover_cold_ms", "failover_standby_ms", "failover_replayed_records", "failover_cold_replayed_records",
		"failover_detect_ms", "failover_changelog_records", "failover_standby_ratio", "failover_standby_held_copy", "failover_runs"}
}

// failoverResults are the medians over the runs; the changelog records are
// the smallest of any run, and failover_standby_held_copy counts the
// standby runs whose new owner kept a copy of the partition.
func failoverResults(cold, standby []failoverFigures) map[string]string {
	pick := func(figs []failoverFigures, f func(failoverFigures) float64) float64 {
		xs := make([]float64, len(figs))
		for i, fig := range figs {
			xs[i] = f(fig)
		}
		return median(xs)
	}
	failover := func(f failoverFigures) float64 { return ms(f.failover) }
	replayed := func(f failoverFigures) float64 { return float64(f.t.replayed) }
	all := slices.Concat(cold, standby)
	records := all[0].changelog
	held := 0
	for _, f := range all {
		records = min(records, f.changelog)
		if f.replicas > 0 && f.heldCopy {
			held++
		}
	}
	coldMS, standbyMS := pick(cold, failover), pick(standby, failover)
	return map[string]string{
		"failover_cold_ms":               fmt.Sprintf("%.0f", coldMS),
		"failover_standby_ms":            fmt.Sprintf("%.0f", standbyMS),
		"failover_replayed_records":      fmt.Sprintf("%.0f", pick(standby, replayed)),
		"failover_cold_replayed_records": fmt.Sprintf("%.0f", pick(cold, replayed)),
		"failover_detect_ms":             fmt.Sprintf("%.0f", pick(all, func(f failoverFigures) float64 { return ms(f.detect) })),
		"failover_changelog_records":     strconv.FormatInt(records, 10),
		"failover_standby_ratio":         fmt.Sprintf("%.2f", standbyMS/max(coldMS, 1)),
		"failover_standby_held_copy":     strconv.Itoa(held),
		"failover_runs":                  strconv.Itoa(len(standby)),
	}
}

// printFailover says what one run measured, and for a run with standby
// copies whether the partition went to a worker that kept one.
func printFailover(run int, f failoverFigures) {
	setting := "cold"
	if f.replicas > 0 {
		setting = "standby"
	}
	fmt.Printf("failover run %d %s (TABLE_STANDBY_REPLICAS=%d): partition %d held %d changelog records (%s); worker-%d owned it and was killed\n",
		run, setting, f.replicas, failoverPartition, f.changelog, tableCounts(f.perTable), f.owner)
	from := "an empty store"
	if f.t.stored > 0 {
		from = fmt.Sprintf("a stored checkpoint (%d of %d tables)", f.t.stored, f.t.recovering)
	}
	fmt.Printf("  worker-%d took it over in generation %d; detection %.0f ms (kill to its \"partition assigned\"), failover %.0f ms (to its \"partition resumed\"), replaying %d records from %s\n",
		f.t.worker, f.t.generation, ms(f.detect), ms(f.failover), f.t.replayed, from)
	switch {
	case f.replicas == 0:
	case f.heldCopy:
		fmt.Printf("  worker-%d held a standby copy of partition %d at the kill (committed up to %s)\n", f.t.worker, failoverPartition, tableCounts(f.copied))
	default:
		fmt.Printf("  worker-%d held NO standby copy of partition %d (the copies were on %s): the group's assignor did not send the partition to a copy\n",
			f.t.worker, failoverPartition, workerList(f.copies))
	}
	replayed := f.replayedMetric
	if replayed == "" {
		replayed = "not sent"
	}
	fmt.Printf("  worker-%d metrics for partition %d: assignment_latency %.0f ms, recovery_records %d, assignment_replayed_records %s; peak rss %.1f MiB\n",
		f.t.worker, failoverPartition, f.latencyMS, f.recoveryRecords, replayed, f.rssMiB)
}

func tableCounts(m map[string]int64) string {
	var parts []string
	for _, t := range failoverTables() {
		if n, ok := m[t]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", t, n))
		}
	}
	return strings.Join(parts, ", ")
}

func workerList(ws []int) string {
	if len(ws) == 0 {
		return "no worker"
	}
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = "worker-" + strconv.Itoa(w)
	}
	return strings.Join(parts, ", ")
}

// failoverRun is one run from scratch: a broker, three workers, the load,
// the kill, the takeover.
func failoverRun(o options, replicas int) (fig failoverFigures, err error) {
	fig.replicas = replicas
	g, err := startFailoverCluster(o, replicas)
	if err != nil {
		return fig, err
	}
	defer func() {
		fig.warnings = g.f.warningLines()
		if cerr := g.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := g.fill(); err != nil {
		return fig, err
	}
	if err := g.kill(&fig); err != nil {
		return fig, err
	}
	return fig, g.measure(&fig)
}

// failoverCluster is one run's broker and workers.
type failoverCluster struct {
	o       options
	dir     string
	broker  *exec.Cmd
	addr    string
	admin   sarama.ClusterAdmin
	sinks   []*metricSink // each worker's DogStatsD
	urls    []string      // each worker's ADVERTISED_URL
	workers []*benchWorker
	victim  int // the worker killed; -1 before the kill
	f       *fleet
	log     *failoverLog
	load    *pageLoad
}

func startFailoverCluster(o options, replicas int) (g *failoverCluster, err error) {
	g = &failoverCluster{o: o, victim: -1, f: newFleet(o.partitions), log: newFailoverLog(failoverPartition)}
	g.f.tap = g.log.line
	defer func() {
		if err != nil {
			_ = g.close()
		}
	}()
	if g.dir, err = os.MkdirTemp("", "pageviews-failover-"); err != nil {
		return g, err
	}
	if g.broker, g.addr, err = startBroker(o.broker, filepath.Join(g.dir, "broker")); err != nil {
		return g, err
	}
	if g.admin, err = sarama.NewClusterAdmin([]string{g.addr}, saramaConfig()); err != nil {
		return g, err
	}
	if err := createTopics(g.addr, o.partitions, failoverTopic); err != nil {
		return g, err
	}
	env := append(os.Environ(),
		"KAFKA_BROKERS="+g.addr, "KAFKA_GROUP="+failoverGroup, "PAGE_VIEWS_TOPIC="+failoverTopic,
		"PARTITIONS="+strconv.Itoa(o.partitions), "KAFKA_SESSION_TIMEOUT="+failoverSession,
		"TABLE_STANDBY_REPLICAS="+strconv.Itoa(replicas), "COMMIT_INTERVAL="+o.commitInterval,
		// Debug: the standby copies' "standby copy committed" lines tell
		// how far each copy is.
		"LOG_FORMAT=json", "LOG_LEVEL=debug", "LIVECHECK_INTERVAL=0", "WINDOW_SIZE=1h", "WINDOW_EXPIRES=2h")
	for i := range failoverWorkers {
		port, err := freePort()
		if err != nil {
			return g, err
		}
		sink, err := startMetricSink(failoverMetrics()...)
		if err != nil {
			return g, err
		}
		g.sinks = append(g.sinks, sink)
		url := "http://127.0.0.1:" + strconv.Itoa(port)
		g.urls = append(g.urls, url)
		w, err := startBenchWorker(o.worker, append(slices.Clip(env), "WEB_ADDR=127.0.0.1:"+strconv.Itoa(port),
			"ADVERTISED_URL="+url, "DD_DOGSTATSD_URL="+sink.url()), filepath.Join(g.dir, "worker-"+strconv.Itoa(i)), g.f, i)
		if err != nil {
			return g, err
		}
		g.workers = append(g.workers, w)
	}
	return g, nil
}

// live lists the workers not killed.
func (g *failoverCluster) live() []*benchWorker {
	var out []*benchWorker
	for i, w := range g.workers {
		if i != g.victim {
			out = append(out, w)
		}
	}
	return out
}

func (g *failoverCluster) close() error {
	var errs []error
	if g.load != nil {
		errs = append(errs, g.load.stop())
	}
	errs = append(errs, stopWorkers(g.live()))
	for _, s := range g.sinks {
		s.close()
	}
	if g.admin != nil {
		errs = append(errs, g.admin.Close())
	}
	if g.broker != nil {
		stopProcess(g.broker)
	}
	if g.dir != "" && !g.o.keep {
		errs = append(errs, os.RemoveAll(g.dir))
	}
	return errors.Join(errs...)
}

// fill waits for the workers to share the partitions, then loads the
// target partition in rounds, each one view of every one of
// o.failoverPages pages, until its changelogs hold o.failoverRecords
// records, waiting after each round until it is processed and committed:
// the write-back cache makes one record per page and table of each round.
func (g *failoverCluster) fill() error {
	if _, err := waitFor(failoverTimeout, g.workers, func() (bool, string) { return g.f.settled(failoverWorkers, time.Time{}) }); err != nil {
		return fmt.Errorf("%d workers did not settle: %w", failoverWorkers, err)
	}
	owner, err := g.owner()
	if err != nil {
		return err
	}
	perRound := len(failoverTables()) * g.o.failoverPages
	rounds := (g.o.failoverRecords + perRound - 1) / perRound
	began := time.Now()
	for r := 1; r <= rounds; r++ {
		if err := loadPartition(g.addr, failoverTopic, g.o.partitions, failoverPartition, g.o.failoverPages); err != nil {
			return fmt.Errorf("load: %w", err)
		}
		want := int64(r * g.o.failoverPages)
		if _, err := waitCommitted(g.addr, failoverTopic, failoverGroup, g.o.partitions, want, g.workers[owner].cmd, nil); err != nil {
			return fmt.Errorf("worker-%d: %w", owner, err)
		}
	}
	fmt.Printf("failover load: %d rounds of %d views (one per page) into partition %d, processed and committed in %.1fs\n",
		rounds, g.o.failoverPages, failoverPartition, time.Since(began).Seconds())
	return nil
}

// owner is the worker the group assigned the target partition to, as the
// group's coordinator describes it.
func (g *failoverCluster) owner() (int, error) {
	url, err := partitionOwner(g.admin, failoverGroup, failoverTopic, failoverPartition)
	if err != nil {
		return 0, err
	}
	i := slices.Index(g.urls, url)
	if i < 0 {
		return 0, fmt.Errorf("partition %d owned by %q, not one of the workers", failoverPartition, url)
	}
	return i, nil
}

// kill waits, with standby copies, until a copy of the target has caught
// up with its changelogs; then it starts a steady load and kills the
// target's owner with SIGKILL.
func (g *failoverCluster) kill(fig *failoverFigures) error {
	owner, err := g.owner()
	if err != nil {
		return err
	}
	if fig.replicas > 0 {
		ends, _, err := changelogEnds(g.addr, failoverPartition)
		if err != nil {
			return err
		}
		began := time.Now()
		holder := -1
		_, err = waitFor(failoverTimeout, g.workers, func() (bool, string) {
			var ok bool
			var why string
			holder, ok, why = g.log.caughtUp(ends, owner)
			return ok, why
		})
		if err != nil {
			return fmt.Errorf("no standby copy of partition %d caught up: %w", failoverPartition, err)
		}
		fmt.Printf("failover standby: worker-%d's copy of partition %d caught up with %s %.1fs after the load\n",
			holder, failoverPartition, tableCounts(ends), time.Since(began).Seconds())
	}
	if g.load, err = startLoad(g.addr, failoverTopic); err != nil {
		return err
	}
	time.Sleep(failoverTrickle)
	if _, fig.perTable, err = changelogEnds(g.addr, failoverPartition); err != nil {
		return err
	}
	for _, n := range fig.perTable {
		fig.changelog += n
	}
	if fig.changelog < int64(g.o.failoverRecords) {
		return fmt.Errorf("partition %d holds %d changelog records, fewer than %d", failoverPartition, fig.changelog, g.o.failoverRecords)
	}
	fig.owner = owner
	fig.killed = time.Now().Round(0)
	g.log.kill(owner, fig.killed)
	g.victim = owner
	return g.workers[owner].kill()
}

// measure waits for a surviving worker to process the target again, and
// for its commits to move on, and reads the figures from its log and
// metrics.
func (g *failoverCluster) measure(fig *failoverFigures) error {
	var t takeover
	_, err := waitFor(failoverTimeout, g.live(), func() (bool, string) {
		var ok bool
		var why string
		t, ok, why = g.log.takenOver()
		return ok, why
	})
	if err != nil {
		return fmt.Errorf("partition %d not taken over: %w", failoverPartition, err)
	}
	fig.t = t
	fig.detect, fig.failover = t.assigned.Sub(fig.killed), t.resumed.Sub(t.assigned)
	fig.copies, fig.copied = g.log.atKill(t.worker)
	fig.heldCopy = slices.Contains(fig.copies, t.worker)
	fig.rssMiB = rssHWM(g.workers[t.worker].cmd.Process.Pid)
	if err := waitAdvanced(g.admin, failoverGroup, failoverTopic, g.o.partitions, g.live()); err != nil {
		return fmt.Errorf("after the failover: %w", err)
	}
	time.Sleep(metricsDelay) // the new owner's last metrics
	tag := "partition:" + strconv.Itoa(int(failoverPartition))
	sink := g.sinks[t.worker]
	fig.latencyMS = -1
	for _, s := range sink.since(fig.killed, "pageviews.assignment_latency", tag) {
		fig.latencyMS = s.value
	}
	for _, s := range sink.since(fig.killed, "pageviews.recovery_records", tag) {
		fig.recoveryRecords += int64(s.value)
	}
	var replayed []string
	for _, s := range sink.since(fig.killed, "pageviews.assignment_replayed_records", tag) {
		copyTag := "copy:?"
		if i := slices.IndexFunc(s.tags, func(t string) bool { return strings.HasPrefix(t, "copy:") }); i >= 0 {
			copyTag = s.tags[i]
		}
		replayed = append(replayed, fmt.Sprintf("%.0f (%s)", s.value, copyTag))
	}
	fig.replayedMetric = strings.Join(replayed, ", ")
	return nil
}

// kill kills the worker with SIGKILL, as kill -9 does, and waits for it to
// be gone.
func (w *benchWorker) kill() error {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()
	if err := w.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill worker pid %d: %w", w.cmd.Process.Pid, err)
	}
	<-w.done
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that nothing listened on a
// moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// loadPartition produces one view of each of pages distinct pages, each a
// page the worker's hash partitioner puts in partition p of topic.
func loadPartition(addr, topic string, partitions int, p int32, pages int) error {
	prod, err := newProducer(addr, saramaConfig())
	if err != nil {
		return err
	}
	hash := sarama.NewHashPartitioner(topic)
	now := time.Now().UTC()
	stamp := now.Format(stampLayout)
	for i, sent := 0, 0; sent < pages; i++ {
		m := pageView(topic, "/failover/"+strconv.Itoa(i), int64(sent+1), now, stamp)
		q, err := hash.Partition(m, int32(partitions))
		if err != nil {
			_ = prod.close()
			return err
		}
		if q == p {
			prod.Input() <- m
			sent++
		}
	}
	return prod.close()
}

// changelogEnds returns, per table, the end offset of its changelog
// partition p and how many records that partition holds (by its offsets).
func changelogEnds(addr string, p int32) (ends, records map[string]int64, err error) {
	client, err := sarama.NewClient([]string{addr}, saramaConfig())
	if err != nil {
		return nil, nil, err
	}
	defer client.Close()
	ends, records = map[string]int64{}, map[string]int64{}
	for _, t := range failoverTables() {
		end, err := client.GetOffset(changelogOf(t), p, sarama.OffsetNewest)
		if err != nil {
			return nil, nil, fmt.Errorf("end of %s/%d: %w", changelogOf(t), p, err)
		}
		start, err := client.GetOffset(changelogOf(t), p, sarama.OffsetOldest)
		if err != nil {
			return nil, nil, fmt.Errorf("start of %s/%d: %w", changelogOf(t), p, err)
		}
		ends[t], records[t] = end, end-start
	}
	return ends, records, nil
}

// partitionOwner returns the advertised URL of the member the group
// assigned partition p of topic to.
func partitionOwner(admin sarama.ClusterAdmin, group, topic string, p int32) (string, error) {
	groups, err := admin.DescribeConsumerGroups([]string{group})
	if err != nil {
		return "", fmt.Errorf("describe group %s: %w", group, err)
	}
	if len(groups) != 1 || !errors.Is(groups[0].Err, sarama.ErrNoError) {
		return "", fmt.Errorf("describe group %s: no description", group)
	}
	for _, m := range groups[0].Members {
		meta, err := m.GetMemberMetadata()
		if err != nil || meta == nil {
			continue
		}
		as, err := m.GetMemberAssignment()
		if err != nil || as == nil {
			continue
		}
		if slices.Contains(as.Topics[topic], p) {
			return string(kafka.Advertised(meta.UserData)), nil
		}
	}
	return "", fmt.Errorf("partition %d of %s is not assigned", p, topic)
}

// failoverLog follows the workers' logs for the failover of one
// partition: which workers keep a standby copy of it and how far each copy
// committed, and, once its owner is killed, the takeover by a survivor.
// Times are the log lines' times.
type failoverLog struct {
	mu     sync.Mutex
	p      int32
	copies map[int]map[int32]bool   // the partitions each worker keeps copies of
	copied map[int]map[string]int64 // per worker and table, the last offset its copy of p committed
	killed time.Time
	victim int
	// What copies and copied said of p at the kill.
	copiesAtKill []int
	copiedAtKill map[int]map[string]int64
	t            takeover
}

// takeover is a survivor's recovery of the partition after the kill, as
// its log tells.
type takeover struct {
	worker     int // -1 until a survivor is assigned the partition
	generation int32
	assigned   time.Time
	resumed    time.Time // zero until it processes the partition
	recovering int       // "recovering" lines, one per table
	stored     int       // of which started from a checkpoint in the store
	announced  int64     // records the "recovering" lines announced
	recovered  int       // "recovered" lines
	replayed   int64     // records the "recovered" lines reported
}

func newFailoverLog(p int32) *failoverLog {
	return &failoverLog{p: p, copies: map[int]map[int32]bool{}, copied: map[int]map[string]int64{}, victim: -1, t: takeover{worker: -1}}
}

// line reads one of worker's JSON log lines.
func (f *failoverLog) line(worker int, raw []byte) {
	var l struct {
		Time       time.Time `json:"time"`
		Msg        string    `json:"msg"`
		Partition  *int32    `json:"partition"`
		Table      string    `json:"table"`
		Offset     int64     `json:"offset"`
		Generation int32     `json:"generation"`
		Records    int64     `json:"records"`
		Stored     bool      `json:"stored"`
	}
	if json.Unmarshal(raw, &l) != nil || l.Partition == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch l.Msg {
	case "standby copy started":
		if f.copies[worker] == nil {
			f.copies[worker] = map[int32]bool{}
		}
		f.copies[worker][*l.Partition] = true
	case "standby copy stopped":
		delete(f.copies[worker], *l.Partition)
	}
	if *l.Partition != f.p {
		return
	}
	t := &f.t
	ours := worker == t.worker && t.resumed.IsZero()
	switch l.Msg {
	case "standby copy committed", "standby copy caught up":
		if f.copied[worker] == nil {
			f.copied[worker] = map[string]int64{}
		}
		if last, ok := f.copied[worker][l.Table]; !ok || l.Offset > last {
			f.copied[worker][l.Table] = l.Offset
		}
	case "partition assigned":
		if !f.killed.IsZero() && worker != f.victim && t.worker < 0 && l.Time.After(f.killed) {
			*t = takeover{worker: worker, generation: l.Generation, assigned: l.Time}
		}
	case "partition released":
		if ours { // taken away before it processed: wait for the next owner
			*t = takeover{worker: -1}
		}
	case "recovering":
		if ours {
			t.recovering++
			t.announced += l.Records
			if l.Stored {
				t.stored++
			}
		}
	case "recovered":
		if ours {
			t.recovered++
			t.replayed += l.Records
		}
	case "partition resumed":
		if ours {
			t.resumed = l.Time
		}
	}
}

// kill notes that victim is killed at t, and which copies of the partition
// the others keep.
func (f *failoverLog) kill(victim int, t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed, f.victim = t, victim
	f.copiesAtKill = nil
	for w, ps := range f.copies {
		if w != victim && ps[f.p] {
			f.copiesAtKill = append(f.copiesAtKill, w)
		}
	}
	slices.Sort(f.copiesAtKill)
	f.copiedAtKill = map[int]map[string]int64{}
	for w, m := range f.copied {
		f.copiedAtKill[w] = maps.Clone(m)
	}
}

// atKill returns the workers that kept a copy of the partition at the kill
// and how far worker's copy had committed then (nil when it kept none).
func (f *failoverLog) atKill(worker int) ([]int, map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.copiesAtKill, worker) {
		return slices.Clone(f.copiesAtKill), nil
	}
	return slices.Clone(f.copiesAtKill), maps.Clone(f.copiedAtKill[worker])
}

// caughtUp returns a worker other than owner that keeps a copy of the
// partition committed up to ends (per table, the changelog's end offset),
// or says why there is none. The last offset below an end may be the
// commit marker of the changelog's last transaction, which a copy never
// receives, so a copy one short of the end counts as caught up, as the
// worker's "standby copy caught up" line does once the copy is quiet.
func (f *failoverLog) caughtUp(ends map[string]int64, owner int) (int, bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var behind []string
	for _, w := range slices.Sorted(maps.Keys(f.copies)) {
		if w == owner || !f.copies[w][f.p] {
			continue
		}
		ok := true
		for _, t := range slices.Sorted(maps.Keys(ends)) {
			end := ends[t]
			if last, seen := f.copied[w][t]; end > 1 && (!seen || last+2 < end) {
				ok = false
				behind = append(behind, fmt.Sprintf("worker-%d %s at %d of %d", w, t, last, end))
			}
		}
		if ok {
			return w, true, ""
		}
	}
	if len(behind) == 0 {
		return -1, false, fmt.Sprintf("no worker keeps a copy of partition %d", f.p)
	}
	return -1, false, strings.Join(behind, "; ")
}

// takenOver returns the takeover and whether the new owner is processing
// the partition; otherwise it says why not.
func (f *failoverLog) takenOver() (takeover, bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.t
	switch {
	case t.worker < 0:
		return t, false, fmt.Sprintf("partition %d not assigned since the kill", f.p)
	case t.resumed.IsZero():
		return t, false, fmt.Sprintf("worker-%d recovering partition %d (%d of %d tables recovered)", t.worker, f.p, t.recovered, t.recovering)
	}
	return t, true, ""
}

// failoverMetrics are the worker's metrics the failover benchmark reads.
func failoverMetrics() []string {
	return []string{"pageviews.assignment_latency", "pageviews.recovery_records", "pageviews.assignment_replayed_records"}
}

// metricSample is one value of a metric, with its tags and when it
// arrived.
type metricSample struct {
	at    time.Time
	name  string
	value float64
	tags  []string
}

// metricSink is a DogStatsD listener on UDP that keeps the samples of a
// few metrics.
type metricSink struct {
	conn    *net.UDPConn
	keep    []string
	mu      sync.Mutex
	samples []metricSample
	done    chan struct{}
}

func startMetricSink(keep ...string) (*metricSink, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(8 << 20) // a burst of samples must not be dropped
	s := &metricSink{conn: conn, keep: keep, done: make(chan struct{})}
	go s.read()
	return s, nil
}

func (s *metricSink) url() string { return "udp://" + s.conn.LocalAddr().String() }

func (s *metricSink) read() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		for line := range strings.SplitSeq(string(buf[:n]), "\n") {
			name, _, values, tags, ok := statsdLine(line)
			if !ok || !slices.Contains(s.keep, name) {
				continue
			}
			s.mu.Lock()
			for _, v := range values {
				s.samples = append(s.samples, metricSample{at: now, name: name, value: v, tags: tags})
			}
			s.mu.Unlock()
		}
	}
}

// since returns the samples of name tagged tag (any, if empty) that
// arrived at or after t.
func (s *metricSink) since(t time.Time, name, tag string) []metricSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []metricSample
	for _, m := range s.samples {
		if m.name == name && !m.at.Before(t) && (tag == "" || slices.Contains(m.tags, tag)) {
			out = append(out, m)
		}
	}
	return out
}

// lastMiB is the last value of gauge name that arrived, in MiB (0 if
// none has).
func (s *metricSink) lastMiB(name string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.samples) - 1; i >= 0; i-- {
		if s.samples[i].name == name {
			return s.samples[i].value / (1 << 20)
		}
	}
	return 0
}

func (s *metricSink) close() {
	_ = s.conn.Close()
	<-s.done
}

// statsdLine splits a DogStatsD line, name:value[:value...]|type[|@rate]
// [|#tag,tag...], into its parts; the worker's client aggregates, so one
// line may hold many values.
func statsdLine(line string) (name, kind string, values []float64, tags []string, ok bool) {
	name, rest, found := strings.Cut(line, ":")
	fields := strings.Split(rest, "|")
	if !found || name == "" || len(fields) < 2 {
		return "", "", nil, nil, false
	}
	for v := range strings.SplitSeq(fields[0], ":") {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return "", "", nil, nil, false
		}
		values = append(values, f)
	}
	for _, f := range fields[2:] {
		if t, isTags := strings.CutPrefix(f, "#"); isTags {
			tags = strings.Split(t, ",")
		}
	}
	return name, fields[1], values, tags, true
}
