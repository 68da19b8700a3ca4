package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// The warm-up benchmark: a first worker holds every partition, rebuilt from
// changelogs the benchmark fills; then a second worker joins with an empty
// DATA_DIR and the default TABLE_STANDBY_REPLICAS (1). The second worker is
// warm once each partition is either its own and recovered, or a standby
// copy of the first worker's that has caught up (both tables each). It
// replays most of the changelogs at once, half as recoveries and half as
// copies, each kind a bounded number of partitions at a time.

// warmupFigures are what the second worker's log and /proc say.
type warmupFigures struct {
	records       int64   // changelog records the benchmark wrote
	firstSeconds  float64 // the first worker's recovery of every partition
	firstRSSMiB   float64
	seconds       float64 // the second worker: "joined group" to warm
	rssMiB        float64 // its peak RSS by then
	recovered     int     // partitions it recovered
	caughtUp      int     // partitions whose standby copy caught up
	recoveryWaits int     // "recovery waits its turn" lines
	copyWaits     int     // "standby copy waits its turn" lines
}

// warmupKeys are the warm-up benchmark's machine-readable figures.
func warmupKeys() []string {
	return []string{"warmup_changelog_records", "warmup_first_recovery_seconds", "warmup_first_peak_rss_mib",
		"warmup_seconds", "warmup_peak_rss_mib", "warmup_recovered_partitions", "warmup_caught_up_copies",
		"warmup_recovery_waits", "warmup_copy_waits"}
}

func warmupBench(o options) (map[string]string, error) {
	dir, addr, done, err := brokerIn(o, "pageviews-warmup-")
	if err != nil {
		return nil, err
	}
	defer done()
	fmt.Printf("machine: %d cores; warm-up: %d changelog records on %d partitions\n", numCPU(), o.events, o.partitions)
	began := time.Now()
	var f warmupFigures
	if f.records, err = preloadChangelogs(addr, o.partitions, o.events/(recoveryWindows+1)); err != nil {
		return nil, fmt.Errorf("preload changelogs: %w", err)
	}
	fmt.Printf("preload: %d changelog records in %.1fs\n", f.records, time.Since(began).Seconds())

	first, firstLines, err := startWarmupWorker(o, addr, filepath.Join(dir, "first"))
	if err != nil {
		return nil, err
	}
	defer stopProcess(first)
	w, err := watchWarmup(first, firstLines, o.partitions, o.partitions, false)
	if err != nil {
		return nil, fmt.Errorf("first worker: %w", err)
	}
	f.firstSeconds, f.firstRSSMiB = w.seconds, w.rssMiB
	fmt.Printf("first worker: recovered %d partitions in %.2fs, peak rss %.1f MiB\n", w.recovered, w.seconds, w.rssMiB)

	second, secondLines, err := startWarmupWorker(o, addr, filepath.Join(dir, "second"))
	if err != nil {
		return nil, err
	}
	defer stopProcess(second)
	// With two members the group gives the second half the partitions.
	if w, err = watchWarmup(second, secondLines, o.partitions, o.partitions/2, true); err != nil {
		return nil, fmt.Errorf("second worker: %w", err)
	}
	f.seconds, f.rssMiB, f.recovered, f.caughtUp, f.recoveryWaits, f.copyWaits =
		w.seconds, w.rssMiB, w.recovered, w.caughtUp, w.recoveryWaits, w.copyWaits
	fmt.Printf("second worker: warm in %.2fs (%d partitions recovered, %d standby copies caught up; %d recoveries and %d copies waited their turn), peak rss %.1f MiB\n",
		f.seconds, f.recovered, f.caughtUp, f.recoveryWaits, f.copyWaits, f.rssMiB)
	return map[string]string{
		"warmup_changelog_records":      strconv.FormatInt(f.records, 10),
		"warmup_first_recovery_seconds": fmt.Sprintf("%.2f", f.firstSeconds),
		"warmup_first_peak_rss_mib":     fmt.Sprintf("%.1f", f.firstRSSMiB),
		"warmup_seconds":                fmt.Sprintf("%.2f", f.seconds),
		"warmup_peak_rss_mib":           fmt.Sprintf("%.1f", f.rssMiB),
		"warmup_recovered_partitions":   strconv.Itoa(f.recovered),
		"warmup_caught_up_copies":       strconv.Itoa(f.caughtUp),
		"warmup_recovery_waits":         strconv.Itoa(f.recoveryWaits),
		"warmup_copy_waits":             strconv.Itoa(f.copyWaits),
	}, nil
}

// startWarmupWorker starts a worker of the recovery benchmark's group (its
// changelogs, an empty source) with its default standby copies, and returns
// its JSON log lines.
func startWarmupWorker(o options, addr, dataDir string) (*exec.Cmd, <-chan []byte, error) {
	cmd := exec.Command(o.worker)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+addr, "DATA_DIR="+dataDir, "WEB_ADDR=127.0.0.1:0", "KAFKA_GROUP="+recoveryGroup,
		"PAGE_VIEWS_TOPIC="+recoverySource, "LOG_FORMAT=json", "PARTITIONS="+strconv.Itoa(o.partitions),
		"WINDOW_SIZE=1h", "WINDOW_EXPIRES=24h", "LIVECHECK_INTERVAL=0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return cmd, logLines(out), nil
}

// warmupLog is what a worker's log has said so far of its partitions.
type warmupLog struct {
	f      warmupFigures
	joined time.Time
	// Assigned partitions, whether each has resumed; the tables whose
	// standby copy caught up, by partition.
	assigned map[int]bool
	caught   map[int]map[string]bool
}

// line notes one JSON log line.
func (w *warmupLog) line(raw []byte) {
	var l struct {
		Time      time.Time `json:"time"`
		Msg       string    `json:"msg"`
		Partition *int      `json:"partition"`
		Table     string    `json:"table"`
	}
	if json.Unmarshal(raw, &l) != nil {
		return
	}
	switch {
	case l.Msg == "joined group" && w.joined.IsZero():
		w.joined = l.Time
	case l.Msg == "recovery waits its turn: other partitions are replaying":
		w.f.recoveryWaits++
	case l.Msg == "standby copy waits its turn: other copies are catching up":
		w.f.copyWaits++
	case l.Partition == nil:
	case l.Msg == "partition assigned":
		w.assigned[*l.Partition] = false
	case l.Msg == "partition released":
		delete(w.assigned, *l.Partition)
	case l.Msg == "partition resumed":
		w.assigned[*l.Partition] = true
		w.f.seconds = l.Time.Sub(w.joined).Seconds()
	case l.Msg == "standby copy caught up":
		if w.caught[*l.Partition] == nil {
			w.caught[*l.Partition] = map[string]bool{}
		}
		w.caught[*l.Partition][l.Table] = true
		w.f.seconds = l.Time.Sub(w.joined).Seconds()
	}
}

// warm reports whether the worker processes at least share of the
// partitions, none of its partitions is still recovering, and, with
// copies, every other partition's copy has caught up (both tables).
func (w *warmupLog) warm(partitions, share int, copies bool) bool {
	mine, others := 0, 0
	for p := range partitions {
		resumed, ok := w.assigned[p]
		switch {
		case ok && !resumed:
			return false
		case ok:
			mine++
		case copies && len(w.caught[p]) == 2:
			others++
		}
	}
	return mine >= share && mine+others == partitions
}

// watchWarmup reads a worker's log until it is warm (warmupLog.warm). The
// clock runs from its "joined group" line.
func watchWarmup(cmd *exec.Cmd, lines <-chan []byte, partitions, share int, copies bool) (warmupFigures, error) {
	w := &warmupLog{assigned: map[int]bool{}, caught: map[int]map[string]bool{}}
	timeout := time.After(10 * time.Minute)
	sample := time.NewTicker(20 * time.Millisecond)
	defer sample.Stop()
	for !w.warm(partitions, share, copies) {
		select {
		case raw, ok := <-lines:
			if !ok {
				return w.f, errors.New("exited before it was warm")
			}
			w.line(raw)
		case <-sample.C:
			w.f.rssMiB = max(w.f.rssMiB, rssHWM(cmd.Process.Pid))
		case <-timeout:
			return w.f, fmt.Errorf("not warm after 10 minutes: %d partitions assigned, %d with copies catching up", len(w.assigned), len(w.caught))
		}
	}
	w.f.rssMiB = max(w.f.rssMiB, rssHWM(cmd.Process.Pid))
	for p := range partitions {
		if _, mine := w.assigned[p]; mine {
			w.f.recovered++
		} else if len(w.caught[p]) == 2 {
			w.f.caughtUp++
		}
	}
	go func() {
		for range lines {
		}
	}()
	return w.f, nil
}
