package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// The recovery benchmark has topics of its own, so it neither disturbs nor
// depends on the aggregation runs: an empty source topic, and the two
// changelogs of the group "recovery" filled by the benchmark.
const (
	recoveryGroup  = "recovery"
	recoverySource = "recovery_source"
	recoveryViews  = recoveryGroup + "-views-changelog"
	recoveryTotals = recoveryGroup + "-totals-changelog"
	// recoveryWindows is how many hourly windows each page has in the
	// views changelog; the totals changelog holds one record per page.
	recoveryWindows = 9
)

type recoveryResult struct {
	records int64     // changelog records replayed
	rate    float64   // the worker's records/s, the runs' median
	bare    float64   // a bare consume of the same changelogs, records/s, the runs' median
	ratios  []float64 // each run's rate against the bare consume after it
	// A read of the same changelogs with the worker's own reader
	// (kafka.RangeReader, which skips sarama's 100 ms wait before a first
	// fetch), records/s, the runs' median, and each run's rate against it:
	// what the replay's own work costs.
	ranged       float64
	rangedRatios []float64
	seconds      float64 // the runs' median
	cpu          float64 // the runs' median
	rssMiB       float64 // the highest of the runs
}

// recoveryBench fills the changelogs with n records (pages × windows in the
// views changelog plus one total per page), then o.runs times rebuilds an
// empty DATA_DIR from them with a worker and consumes the same changelogs
// with a bare sarama consumer, in turns (see throughput). env is added to
// the worker's environment.
func recoveryBench(o options, addr, dataDir string, n int, env ...string) (recoveryResult, error) {
	var res recoveryResult
	pages := n / (recoveryWindows + 1)
	began := time.Now()
	written, err := preloadChangelogs(addr, o.partitions, pages)
	if err != nil {
		return res, fmt.Errorf("preload changelogs: %w", err)
	}
	fmt.Printf("recovery preload: %d changelog records (%d pages × %d windows + %d totals) in %.1fs\n",
		written, pages, recoveryWindows, pages, time.Since(began).Seconds())
	var rates, bares, rangeds, seconds, cpus []float64
	for i := range max(1, o.runs) {
		run, dir := o, dataDir
		if i > 0 {
			run.cpuprofile, dir = "", fmt.Sprintf("%s-run%d", dataDir, i+1)
		}
		records, secs, cpu, rss, err := recoverWorker(run, addr, dir, env...)
		if err != nil {
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		if records != written {
			return res, fmt.Errorf("run %d: the worker replayed %d changelog records, %d were written", i+1, records, written)
		}
		bare, err := bareConsume(addr, []string{recoveryViews, recoveryTotals}, o.partitions)
		if err != nil {
			return res, fmt.Errorf("bare changelog consumer, run %d: %w", i+1, err)
		}
		ranged, err := rangeRead(addr, []string{recoveryViews, recoveryTotals}, o.partitions, true)
		if err != nil {
			return res, fmt.Errorf("changelog range read, run %d: %w", i+1, err)
		}
		rate := float64(records) / secs
		if o.runs > 1 {
			fmt.Printf("recovery: %8.0f records/s (run %d; %.2fs, cpu %.2fs, peak rss %.1f MiB); bare changelog consume %.0f records/s; range read %.0f records/s\n",
				rate, i+1, secs, cpu, rss, bare, ranged)
		}
		res.records, res.rssMiB = records, max(res.rssMiB, rss)
		rates, bares, seconds, cpus = append(rates, rate), append(bares, bare), append(seconds, secs), append(cpus, cpu)
		res.ratios, res.rangedRatios = append(res.ratios, rate/bare), append(res.rangedRatios, rate/ranged)
		rangeds = append(rangeds, ranged)
	}
	res.rate, res.bare, res.seconds, res.cpu, res.ranged = median(rates), median(bares), median(seconds), median(cpus), median(rangeds)
	return res, nil
}

// rangeRead reads every record of the topics' partitions, all at once, with
// the reader the worker's recoveries and backlogs use and the worker's
// client settings for it (read_committed for changelogs), doing nothing
// with them.
func rangeRead(addr string, topics []string, partitions int, readCommitted bool) (float64, error) {
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "bench-range-read", ReadCommitted: readCommitted})
	if err != nil {
		return 0, err
	}
	client, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		return 0, err
	}
	defer client.Close()
	return readAll(client, topics, partitions, func(topic string, p int32, hwm int64) (sarama.PartitionConsumer, error) {
		return kafka.RangeReader{Client: client}.ConsumeRange(topic, p, 0, hwm), nil
	})
}

// preloadChangelogs writes the changelogs in the worker's format: views keys
// are "page|window start ms", totals keys are the page; values are decimal
// counts. A page's records all go to the partition of the page.
func preloadChangelogs(addr string, partitions, pages int) (int64, error) {
	if err := createTopics(addr, partitions, recoverySource, recoveryViews, recoveryTotals); err != nil {
		return 0, err
	}
	cfg := saramaConfig()
	cfg.Producer.Partitioner = sarama.NewManualPartitioner
	p, err := newProducer(addr, cfg)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	hour := now.Truncate(time.Hour)
	for i := range pages {
		page := "/page/" + strconv.Itoa(i)
		part := int32(i % partitions)
		for w := range recoveryWindows {
			start := hour.Add(-time.Duration(w) * time.Hour).UnixMilli()
			p.Input() <- &sarama.ProducerMessage{Topic: recoveryViews, Partition: part, Timestamp: now,
				Key:   sarama.StringEncoder(page + "|" + strconv.FormatInt(start, 10)),
				Value: sarama.StringEncoder(strconv.Itoa(1 + (i+w)%100))}
		}
		p.Input() <- &sarama.ProducerMessage{Topic: recoveryTotals, Partition: part, Timestamp: now,
			Key: sarama.StringEncoder(page), Value: sarama.StringEncoder(strconv.Itoa(1000 + i%1000))}
	}
	if err := p.close(); err != nil {
		return 0, err
	}
	// What the changelogs hold, by their offsets.
	client, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		return 0, err
	}
	defer client.Close()
	var n int64
	for _, t := range []string{recoveryViews, recoveryTotals} {
		for p := range int32(partitions) {
			hwm, err := client.GetOffset(t, p, sarama.OffsetNewest)
			if err != nil {
				return 0, err
			}
			n += hwm
		}
	}
	return n, nil
}

// recoverWorker starts a worker of the group "recovery" with an empty
// DATA_DIR and reads from its log how many changelog records it replayed and
// how long that took: from the first "recovering" line to the last
// "recovered" line (up to stream.DefaultRecovering partitions replay at
// once, each with all its tables; the others wait their turn). env is added
// to the worker's environment.
func recoverWorker(o options, addr, dataDir string, env ...string) (records int64, seconds, cpu, rssMiB float64, err error) {
	cmd := exec.Command(o.worker)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+addr, "DATA_DIR="+dataDir, "WEB_ADDR=127.0.0.1:0", "KAFKA_GROUP="+recoveryGroup,
		"PAGE_VIEWS_TOPIC="+recoverySource, "LOG_FORMAT=json", "PARTITIONS="+strconv.Itoa(o.partitions),
		"WINDOW_SIZE=1h", "WINDOW_EXPIRES=24h", "LIVECHECK_INTERVAL=0")
	cmd.Env = append(cmd.Env, env...)
	if o.cpuprofile != "" {
		cmd.Env = append(cmd.Env, "PPROF_ADDR=127.0.0.1:6061")
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, 0, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, 0, err
	}
	defer stopProcess(cmd)
	profiled := make(chan error, 1)
	if o.cpuprofile != "" {
		go func() { profiled <- fetchProfile(o.cpuprofile+".recovery", o.profileFor) }()
	} else {
		profiled <- nil
	}
	lines := logLines(out)
	var first, last time.Time
	recovered, want := 0, 2*o.partitions
	timeout := time.After(10 * time.Minute)
	var peak float64
	sample := time.NewTicker(20 * time.Millisecond)
	defer sample.Stop()
	for recovered < want {
		select {
		case raw, ok := <-lines:
			if !ok {
				return records, 0, 0, peak, errors.New("worker exited while recovering")
			}
			var l struct {
				Time    time.Time `json:"time"`
				Msg     string    `json:"msg"`
				Records int64     `json:"records"`
			}
			if json.Unmarshal(raw, &l) != nil {
				continue
			}
			switch l.Msg {
			case "recovering":
				if first.IsZero() {
					first = l.Time
				}
			case "recovered":
				records += l.Records
				last = l.Time
				recovered++
			}
		case <-sample.C:
			peak = max(peak, rssHWM(cmd.Process.Pid))
		case <-timeout:
			return records, 0, 0, peak, fmt.Errorf("only %d of %d table partitions recovered within 10 minutes", recovered, want)
		}
	}
	peak = max(peak, rssHWM(cmd.Process.Pid))
	if err := <-profiled; err != nil {
		return records, 0, 0, peak, fmt.Errorf("cpu profile: %w", err)
	}
	go func() {
		for range lines {
		}
	}()
	stopProcess(cmd)
	if cmd.ProcessState != nil {
		cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	return records, last.Sub(first).Seconds(), cpu, peak, nil
}

// logLines sends each line of out, and closes when out ends.
func logLines(out io.Reader) <-chan []byte {
	lines := make(chan []byte, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
	}()
	return lines
}
