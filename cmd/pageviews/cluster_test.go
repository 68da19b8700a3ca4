package main

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
)

// TestReportFromAnyWorker runs two workers in one group on a broker
// process: /report/ on either shows every page, including the pages whose
// partitions the other worker owns.
func TestReportFromAnyWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	vars := func() map[string]string {
		return map[string]string{
			"KAFKA_BROKERS":   brokers,
			"WEB_ADDR":        "127.0.0.1:0",
			"DATA_DIR":        t.TempDir(),
			"WINDOW_SIZE":     "1m",
			"COMMIT_INTERVAL": "100ms",
			// No livecheck: its synthetic views add to the changelogs'
			// exact counts.
			"LIVECHECK_INTERVAL": "0",
		}
	}
	// A fixed clock in the middle of a window: every view lands in the
	// window of now, whatever the wall clock does.
	now := time.Now().Truncate(time.Minute).Add(30 * time.Second)
	clock := func() time.Time { return now }
	a := startWorker(t, vars(), clock)
	b := startWorker(t, vars(), clock)

	const pages = 40
	want := map[string]pageview.PageReport{}
	for i := range pages {
		page := "/p/" + strconv.Itoa(i)
		n := 1 + i%3
		for range n {
			getJSON(t, a.base+"/count/?page="+page, nil)
		}
		want[page] = pageview.PageReport{Now: int64(n), Count: int64(n), Report: pageview.NotEnough}
	}

	// Wait until the group settled with both workers owning partitions and
	// both answering the whole report.
	for _, w := range []*worker{a, b} {
		eventually(t, 30*time.Second, "complete report on "+w.base, func() (bool, string) {
			var rep pageview.Report
			getJSON(t, w.base+"/report/", &rep)
			var pa, pb held
			getJSON(t, a.base+"/report/?local=1", &pa)
			getJSON(t, b.base+"/report/?local=1", &pb)
			ok := !rep.Stale && reflect.DeepEqual(rep.Pages, want) && len(pa.Partitions) > 0 && len(pb.Partitions) > 0
			return ok, fmt.Sprintf("stale=%v missing=%v pages=%d; a holds %v, b holds %v",
				rep.Stale, rep.MissingPartitions, len(rep.Pages), pa.Partitions, pb.Partitions)
		})
	}

	// Each worker alone holds only part of the pages: the complete answers
	// above came through routing.
	var pa, pb held
	getJSON(t, a.base+"/report/?local=1", &pa)
	getJSON(t, b.base+"/report/?local=1", &pb)
	if len(pa.Pages) == pages || len(pb.Pages) == pages || len(pa.Pages)+len(pb.Pages) != pages {
		t.Errorf("local pages: a %d, b %d; want a split of %d", len(pa.Pages), len(pb.Pages), pages)
	}
	for _, p := range pa.Partitions {
		for _, q := range pb.Partitions {
			if p == q {
				t.Errorf("partition %d reported by both workers", p)
			}
		}
	}
}

// TestStandbyFailover: with TABLE_STANDBY_REPLICAS=1 a worker keeps warm
// copies of the other's partitions, so when it takes them over it replays
// only the changelog tail, and no count is lost.
func TestStandbyFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	vars := func() map[string]string {
		return map[string]string{
			"KAFKA_BROKERS":          brokers,
			"WEB_ADDR":               "127.0.0.1:0",
			"DATA_DIR":               t.TempDir(),
			"COMMIT_INTERVAL":        "100ms",
			"TABLE_STANDBY_REPLICAS": "1",
			"LOG_LEVEL":              "debug", // for "standby copy committed"
		}
	}
	now := time.Now().Truncate(time.Minute).Add(30 * time.Second)
	clock := func() time.Time { return now }
	a := startWorker(t, vars(), clock)
	b := startWorker(t, vars(), clock)

	pa := waitBothOwn(t, a, b, partitionsOf(t, vars()))
	const views = 300
	for i := range views {
		getJSON(t, a.base+"/count/?page=/p/"+strconv.Itoa(i%30), nil)
	}
	waitStandbyCopies(t, b, pa.Partitions)
	var before pageview.Report
	eventually(t, 10*time.Second, "all views counted", func() (bool, string) {
		before = pageview.Report{}
		getJSON(t, b.base+"/report/", &before)
		return before.Count == views && !before.Stale, fmt.Sprintf("%+v", before.Count)
	})

	a.stop(t)
	var after pageview.Report
	eventually(t, 60*time.Second, "b serves every partition", func() (bool, string) {
		after = pageview.Report{}
		getJSON(t, b.base+"/report/", &after)
		return !after.Stale && after.Count == views, fmt.Sprintf("stale=%v count=%d missing=%v", after.Stale, after.Count, after.MissingPartitions)
	})
	if !reflect.DeepEqual(after.Pages, before.Pages) {
		t.Errorf("report changed across the failover:\nbefore %v\nafter  %v", before.Pages, after.Pages)
	}
	checkRecoveredFromStandby(t, b, pa.Partitions)
	if t.Failed() {
		t.Logf("a held %v; b's log:\n%s", pa.Partitions, b.logs)
	}
}

// waitBothOwn waits until workers a and b each own partitions, and
// together all partitions of the topic, and returns what a holds.
func waitBothOwn(t *testing.T, a, b *worker, partitions int) held {
	t.Helper()
	var pa held
	eventually(t, 30*time.Second, "both workers own partitions", func() (bool, string) {
		var pb held
		getJSON(t, a.base+"/report/?local=1", &pa)
		getJSON(t, b.base+"/report/?local=1", &pb)
		return len(pa.Partitions) > 0 && len(pb.Partitions) > 0 && len(pa.Partitions)+len(pb.Partitions) == partitions,
			fmt.Sprintf("a %v b %v", pa.Partitions, pb.Partitions)
	})
	return pa
}

// waitStandbyCopies waits until b's standby copies of both tables of
// partitions hold some of the views: a copy started before the views came
// (it logs "caught up" at once, on an empty changelog) says nothing, and
// the group may still move partitions when the workers have just started.
func waitStandbyCopies(t *testing.T, b *worker, partitions []int32) {
	t.Helper()
	eventually(t, 30*time.Second, "standby copies on b hold views", func() (bool, string) {
		caught := map[string]bool{}
		for _, l := range b.logs.all("standby copy committed") {
			if off, ok := l["offset"].(float64); ok && off >= 0 {
				caught[fmt.Sprint(l["table"], l["partition"])] = true
			}
		}
		views, totals := tableNames()
		for _, p := range partitions {
			if !caught[fmt.Sprint(views, p)] || !caught[fmt.Sprint(totals, p)] {
				return false, fmt.Sprintf("caught up: %v, a holds %v", caught, partitions)
			}
		}
		return true, ""
	})
}

// checkRecoveredFromStandby checks that b recovered both tables of every
// partition it took over from its warm copy.
func checkRecoveredFromStandby(t *testing.T, b *worker, took []int32) {
	t.Helper()
	n := 0
	for _, l := range b.logs.all("recovering") {
		p := int32(l["partition"].(float64))
		if !slices.Contains(took, p) {
			continue
		}
		n++
		if l["stored"] != true {
			t.Errorf("partition %d table %v recovered without a standby copy: %v", p, l["table"], l)
		}
	}
	if n != 2*len(took) {
		t.Errorf("b logged %d recoveries of a's partitions, want %d", n, 2*len(took))
	}
}

// partitionsOf is the partition count the worker configured by vars creates
// (PARTITIONS, or its default).
func partitionsOf(t *testing.T, vars map[string]string) int {
	t.Helper()
	cfg, err := loadConfig(env(vars))
	if err != nil {
		t.Fatal(err)
	}
	return int(cfg.Partitions)
}

// TestStandbyCopyCaughtUpOnACommittedChangelog: a standby copy that starts
// on changelogs whose last offset is a transaction's commit marker, which
// a read_committed consumer never receives, still says it caught up.
func TestStandbyCopyCaughtUpOnACommittedChangelog(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	vars := func() map[string]string {
		return map[string]string{
			"KAFKA_BROKERS": brokers, "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
			"COMMIT_INTERVAL": "100ms", "TABLE_STANDBY_REPLICAS": "1", "PARTITIONS": "2",
			"LIVECHECK_INTERVAL": "0", // its synthetic page would be a 21st key in totals
		}
	}
	a := startWorker(t, vars(), time.Now)
	for i := range 20 {
		getJSON(t, a.base+"/count/?page=/c/"+strconv.Itoa(i), nil)
	}
	eventually(t, 30*time.Second, "views counted and committed on a", func() (bool, string) {
		n := heldViews(t, a.base)
		return n == 20 && len(a.logs.all("partition resumed")) > 0, fmt.Sprint(n)
	})
	// Committed: a read_committed reader sees every page in both changelogs,
	// which therefore end with a transaction's commit marker.
	eventually(t, 30*time.Second, "changelogs committed", func() (bool, string) {
		var got []int
		views, totals := tableNames()
		for _, tbl := range []string{views, totals} {
			last, _, err := topicContents([]string{brokers}, "pageviews-"+tbl+"-changelog", true)
			if err != nil {
				return false, err.Error()
			}
			got = append(got, len(last))
		}
		return got[0] >= 20 && got[1] == 20, fmt.Sprintf("keys committed: views %d (a page and window each), totals %d", got[0], got[1])
	})

	b := startWorker(t, vars(), time.Now)
	eventually(t, 30*time.Second, "b's standby copies of a's partitions caught up", func() (bool, string) {
		copies := b.logs.all("standby copy caught up")
		return len(copies) > 0, fmt.Sprintf("%d copies caught up; b logged %d standby lines", len(copies), len(b.logs.all("standby copy started")))
	})
	for _, l := range b.logs.all("standby copy caught up") {
		if off, ok := l["offset"].(float64); !ok || off < 0 {
			t.Errorf("a copy of a changelog that holds records caught up at offset %v: %v", l["offset"], l)
		}
	}
}
