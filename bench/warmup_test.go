package main

import (
	"strconv"
	"testing"
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
