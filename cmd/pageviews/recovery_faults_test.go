package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/pageview"
)

// The tests here inject Kafka errors into a worker's changelog reads
// through the in-process broker's faults, against the real sarama client,
// and check that recovery and standby copies neither lose state nor stop
// the worker.

const (
	viewsChangelog  = "pageviews-views-changelog"
	totalsChangelog = "pageviews-totals-changelog"
)

// startFaultBroker starts an in-process broker whose faults the test sets.
func startFaultBroker(t testing.TB) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func faultVars(t testing.TB, c *kfake.Cluster) map[string]string {
	return map[string]string{
		"KAFKA_BROKERS":   c.ListenAddrs()[0],
		"WEB_ADDR":        "127.0.0.1:0",
		"DATA_DIR":        t.TempDir(),
		"PARTITIONS":      "2",
		"WINDOW_SIZE":     "24h",
		"WINDOW_EXPIRES":  "48h",
		"COMMIT_INTERVAL": "100ms",
		// No livecheck: its synthetic views, every 30 s by default, add
		// records to the exact counts of offsets and changelogs.
		"LIVECHECK_INTERVAL": "0",
	}
}

// countViews sends n views per page through /count/ and waits until the
// worker's report holds them all; it returns what was sent.
func countViews(t testing.TB, base string, pages, n int) map[string]int64 {
	t.Helper()
	want := map[string]int64{}
	for i := range pages {
		page := "/f/" + strconv.Itoa(i)
		for range n {
			if st := getJSON(t, base+"/count/?page="+page, nil); st != 200 {
				t.Fatalf("/count/ status %d", st)
			}
		}
		want[page] = int64(n)
	}
	waitCounts(t, base, want)
	return want
}

// waitCounts waits until /report/ shows exactly want as each page's total.
func waitCounts(t testing.TB, base string, want map[string]int64) {
	t.Helper()
	eventually(t, 60*time.Second, "report holds every view", func() (bool, string) {
		var rep pageview.Report
		getJSON(t, base+"/report/", &rep)
		for page, n := range want {
			if rep.Pages[page].Count != n {
				return false, fmt.Sprintf("%s count %d, want %d (stale=%v)", page, rep.Pages[page].Count, n, rep.Stale)
			}
		}
		return !rep.Stale, "stale"
	})
}

// readyReasons polls /ready/ until it answers 200 and returns the reasons
// it gave meanwhile. It fails when the worker stops first.
func readyReasons(t testing.TB, w *worker, timeout time.Duration) []string {
	t.Helper()
	var reasons []string
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-w.done:
			w.done <- err
			t.Fatalf("worker stopped while recovering: %v\n%s", err, w.logs)
		default:
		}
		var r struct {
			Ready  bool
			Reason string
		}
		if getJSON(t, w.base+"/ready/", &r) == 200 && r.Ready {
			return reasons
		}
		if len(reasons) == 0 || reasons[len(reasons)-1] != r.Reason {
			reasons = append(reasons, r.Reason)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within %s; reasons %q\n%s", timeout, reasons, w.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seedChangelogs runs a worker with vars that counts views into the
// changelogs and stops; it returns what it counted.
func seedChangelogs(t *testing.T, vars map[string]string) map[string]int64 {
	t.Helper()
	a := startWorker(t, vars, time.Now)
	want := countViews(t, a.base, 10, 5)
	a.stop(t)
	return want
}

// seededBroker starts an in-process broker and seeds its changelogs with a
// worker of vars (seedChangelogs); it skips the test in -short mode.
func seededBroker(t *testing.T, vars func(testing.TB, *kfake.Cluster) map[string]string) (*kfake.Cluster, map[string]int64) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	return c, seedChangelogs(t, vars(t, c))
}

// TestRecoveryWaitsOutLeaderMove: the changelog's leader answers the
// recovery's fetches NOT_LEADER_OR_FOLLOWER a few times, as during a
// rolling broker restart, and the reader backs off between tries. Recovery must
// wait for the records, say why while it waits, and restore every count:
// it used to take a quiet spell for the end of the changelog and claim
// records it never read.
func TestRecoveryWaitsOutLeaderMove(t *testing.T) {
	c, want := seededBroker(t, faultVars)

	// A dozen refusals a changelog, shared by its two partitions: the
	// reader's backoff doubles from 10 ms, so the wait lasts some 600 ms,
	// long enough for /ready/ (read every 20 ms) to be seen saying why.
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: viewsChangelog, Err: kerr.NotLeaderForPartition, Count: 12},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: totalsChangelog, Err: kerr.NotLeaderForPartition, Count: 12})
	defer h.Remove()
	b := launchWorker(t, faultVars(t, c), time.Now) // an empty store: replays everything
	reasons := readyReasons(t, b, 90*time.Second)
	if h.Hits() == 0 {
		t.Fatal("no fetch was faulted: the test did not exercise recovery under a leader move")
	}
	waitCounts(t, b.base, want)
	if !slices.ContainsFunc(reasons, func(r string) bool { return strings.HasPrefix(r, "recovering: ") }) {
		t.Errorf("/ready/ reasons while recovering %q, want one saying why recovery waits (recovering: ...)", reasons)
	}
	for _, l := range b.logs.all("recovered") {
		if l["records"] == float64(0) {
			t.Errorf("a partition recovered 0 records from a changelog holding them: %v", l)
		}
	}
}

// TestRecoverySurvivesFetchErrors: transient fetch errors during recovery
// (sarama retries them itself) must not stop the worker.
func TestRecoverySurvivesFetchErrors(t *testing.T) {
	c, want := seededBroker(t, faultVars)

	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: viewsChangelog, Err: kerr.UnknownServerError, Count: 2},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: totalsChangelog, Err: kerr.UnknownServerError, Count: 2})
	defer h.Remove()
	b := launchWorker(t, faultVars(t, c), time.Now)
	readyReasons(t, b, 90*time.Second)
	if h.Hits() == 0 {
		t.Fatal("no fetch was faulted")
	}
	waitCounts(t, b.base, want)
}

// TestRecoveryAfterOffsetOutOfRange: sarama closes a partition consumer
// whose offset fell out of range. Recovery starts it again instead of
// failing the worker, and loses nothing the changelog still holds.
func TestRecoveryAfterOffsetOutOfRange(t *testing.T) {
	c, want := seededBroker(t, faultVars)

	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: viewsChangelog, Err: kerr.OffsetOutOfRange, Count: 1})
	defer h.Remove()
	b := launchWorker(t, faultVars(t, c), time.Now)
	readyReasons(t, b, 90*time.Second)
	if h.Hits() == 0 {
		t.Fatal("no fetch was faulted")
	}
	waitCounts(t, b.base, want)
	if len(b.logs.all("changelog consumer stopped; starting it again")) == 0 {
		t.Errorf("no log line about the restarted changelog consumer\n%s", b.logs)
	}
}

// TestStandbySurvivesOffsetOutOfRange: a standby copy whose changelog
// consumer sarama closes (OFFSET_OUT_OF_RANGE) fails and starts again; it
// used to take the closed channel's nil record and crash the process.
func TestStandbySurvivesOffsetOutOfRange(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	vars := func() map[string]string {
		v := faultVars(t, c)
		v["TABLE_STANDBY_REPLICAS"] = "1"
		return v
	}
	a := startWorker(t, vars(), time.Now)
	b := startWorker(t, vars(), time.Now)
	for _, w := range []*worker{a, b} {
		w.logs.wait(t, "standby copy started", 60*time.Second)
	}
	want := countViews(t, a.base, 10, 3)

	const faults = 6
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: viewsChangelog, Err: kerr.OffsetOutOfRange, Count: faults})
	defer h.Remove()
	// New views make the standby copies fetch; each faulted fetch closes a
	// copy's consumer, and the copy starts again at the next reconcile.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i := 0; h.Hits() < faults; i++ {
		if ctx.Err() != nil {
			t.Fatalf("only %d of %d fetches faulted\nA:\n%s\nB:\n%s", h.Hits(), faults, a.logs, b.logs)
		}
		page := "/f/" + strconv.Itoa(i%10)
		getJSON(t, a.base+"/count/?page="+page, nil)
		want[page]++
		time.Sleep(20 * time.Millisecond)
	}
	waitCounts(t, a.base, want)
	failed := 0
	for _, w := range []*worker{a, b} {
		select {
		case err := <-w.done:
			t.Fatalf("a worker stopped: %v", err)
		default:
		}
		failed += len(w.logs.all("standby copy failed; retrying at the next reconcile"))
	}
	if failed == 0 {
		t.Errorf("no standby copy reported its stopped consumer")
	}
	// The copies still work: the survivor of a stop takes over with them
	// and reports every count.
	a.stop(t)
	waitCounts(t, b.base, want)
}

// TestWindowSizeChangeInChangelogIsRefused: a worker whose store is new
// (a new pod, a wiped volume) but whose changelog holds windows of another
// size refuses to go on, as a store that recorded them does: exit 2, one
// line naming WINDOW_SIZE, the old size and the new.
func TestWindowSizeChangeInChangelogIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	vars := faultVars(t, c)
	vars["WINDOW_SIZE"], vars["WINDOW_EXPIRES"] = "1m", "5m"
	seedChangelogs(t, vars)

	vars = faultVars(t, c) // a new DATA_DIR: nothing recorded in the store
	vars["WINDOW_SIZE"], vars["WINDOW_EXPIRES"] = "2m", "10m"
	logs := newLineWatcher()
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- run(ctx, nil, env(vars), logs) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the worker went on with windows of another size\n%s", logs)
	}
	var cerr *config.Error
	if !errors.As(err, &cerr) || cerr.Var != "WINDOW_SIZE" {
		t.Fatalf("run returned %v, want a configuration error (exit 2) naming WINDOW_SIZE", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "1m0s") || !strings.Contains(msg, "2m0s") || !strings.Contains(msg, "changelog") || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line naming the old size (1m0s), the new (2m0s) and the changelog", msg)
	}
}
