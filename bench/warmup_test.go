package main

import (
	"strconv"
	"testing"
	"time"
)

// TestWarmupRuns runs the warm-up benchmark on a small load so that it
// cannot rot unnoticed: the second worker must end with half the partitions
// its own and a caught-up copy of each of the others. It asserts no speed.
func TestWarmupRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker and two workers")
	}
	worker, broker := buildBinaries(t)
	const partitions = 6
	results, err := warmupBench(options{
		worker: worker, broker: broker,
		events: 20_000, partitions: partitions,
	})
	if err != nil {
		t.Fatal(err)
	}
	num := func(k string) float64 {
		t.Helper()
		f, err := strconv.ParseFloat(results[k], 64)
		if err != nil {
			t.Errorf("%s=%q: %v", k, results[k], err)
		}
		return f
	}
	for _, k := range warmupKeys() {
		num(k)
	}
	if got := num("warmup_recovered_partitions"); got != partitions/2 {
		t.Errorf("the second worker recovered %v partitions, want %d", got, partitions/2)
	}
	if got := num("warmup_caught_up_copies"); got != partitions/2 {
		t.Errorf("the second worker caught up %v copies, want %d", got, partitions/2)
	}
	// The benchmark's changelogs: nine windows and a total per page.
	if got := num("warmup_changelog_records"); got != 20_000 {
		t.Errorf("%v changelog records written, want 20000", got)
	}
	for _, k := range []string{"warmup_seconds", "warmup_peak_rss_mib", "warmup_first_recovery_seconds", "warmup_first_peak_rss_mib"} {
		if num(k) <= 0 {
			t.Errorf("%s is not positive", k)
		}
	}
}

// TestWarmupLogWaitsForEveryPartition feeds a second worker's log lines
// one by one: it is warm only once its own partitions have resumed and a
// copy of each other partition has caught up with both tables.
func TestWarmupLogWaitsForEveryPartition(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := &warmupLog{assigned: map[int]bool{}, caught: map[int]map[string]bool{}}
	const partitions, share = 4, 2
	steps := []struct {
		line []byte
		warm bool
	}{
		{logAt(at(0), "joined group", `"component":"stream"`), false},
		{logAt(at(5), "standby copy waits its turn: other copies are catching up", `"component":"standby","partition":2`), false},
		{logAt(at(10), "partition assigned", `"component":"stream","partition":0`), false},
		{logAt(at(10), "partition assigned", `"component":"stream","partition":1`), false},
		{logAt(at(10), "partition assigned", `"component":"stream","partition":2`), false},
		{logAt(at(20), "partition released", `"component":"stream","partition":2`), false},
		{logAt(at(300), "partition resumed", `"component":"stream","partition":0`), false},
		{logAt(at(400), "standby copy caught up", `"component":"standby","partition":2,"table":"views"`), false},
		{logAt(at(410), "standby copy caught up", `"component":"standby","partition":2,"table":"totals"`), false},
		{logAt(at(420), "standby copy caught up", `"component":"standby","partition":3,"table":"views"`), false},
		{logAt(at(430), "standby copy caught up", `"component":"standby","partition":3,"table":"totals"`), false},
		{logAt(at(500), "partition resumed", `"component":"stream","partition":1`), true},
	}
	for i, s := range steps {
		w.line(s.line)
		if got := w.warm(partitions, share, true); got != s.warm {
			t.Fatalf("after line %d (%s): warm = %v, want %v", i, s.line, got, s.warm)
		}
	}
	if w.f.seconds != 0.5 || w.f.copyWaits != 1 || w.f.recoveryWaits != 0 {
		t.Errorf("figures %+v, want warm at 0.5 s with one copy that waited", w.f)
	}
	if w.warm(partitions, share, false) {
		t.Error("warm without copies, with partitions 2 and 3 not its own")
	}
}
