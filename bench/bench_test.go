package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// buildBinaries builds the worker and the dev broker for a test, and
// returns their paths.
func buildBinaries(t *testing.T) (worker, broker string) {
	t.Helper()
	bin := t.TempDir()
	for _, pkg := range []string{"pageviews", "devbroker"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, pkg), "../cmd/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return filepath.Join(bin, "pageviews"), filepath.Join(bin, "devbroker")
}

// TestBenchRuns runs the whole benchmark on a small load (no goka peer: it
// is a module of its own) so that it cannot rot unnoticed as the worker
// changes: every figure must come out and make sense, with the throughput
// and recovery runs taken twice each. It asserts no speed.
func TestBenchRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker and six workers")
	}
	worker, broker := buildBinaries(t)
	const events = 20_000
	results, err := run(options{
		worker: worker, broker: broker,
		events: events, pages: 200, partitions: 8, runs: 2, bare: true, recovery: true, hopping: true, avro: true,
		rebalanceRuns: 1, latencyRate: 2000, latencyFor: time.Second, commitInterval: "1s",
	})
	if err != nil {
		t.Fatal(err)
	}
	num := func(k string) float64 {
		t.Helper()
		v, ok := results[k]
		if !ok {
			t.Errorf("no %s", k)
			return 0
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Errorf("%s=%q: %v", k, v, err)
		}
		return f
	}
	for _, k := range resultKeys() {
		if k == "goka_events_per_second" || k == "ratio_vs_goka" {
			continue
		}
		if v := num(k); v < 0 {
			t.Errorf("%s=%v is negative", k, v)
		}
	}
	for _, k := range []string{"events_per_second", "bare_records_per_second", "source_range_read_records_per_second", "recovery_records_per_second",
		"bare_changelog_records_per_second", "range_read_records_per_second", "peak_rss_mib", "rebalance_cooperative_ms", "rebalance_eager_ms", "hopping_events_per_second", "avro_events_per_second"} {
		if num(k) == 0 {
			t.Errorf("%s is 0", k)
		}
	}
	if p50, p99 := num("latency_p50_ms"), num("latency_p99_ms"); p99 < p50 {
		t.Errorf("latency p99 %v below p50 %v", p99, p50)
	}
	// Backlogged records waited for the worker to start: they are older
	// than the ones of the steady load.
	if backlog, steady := num("backlog_latency_p50_ms"), num("latency_p50_ms"); backlog <= steady {
		t.Errorf("latency over the backlog (p50 %v ms) not above the steady load's (%v ms)", backlog, steady)
	}
}
