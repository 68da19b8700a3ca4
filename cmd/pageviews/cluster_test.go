package main

import (
	"fmt"
	"reflect"
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
			var pa, pb pageview.Partial
			getJSON(t, a.base+"/report/?local=1", &pa)
			getJSON(t, b.base+"/report/?local=1", &pb)
			ok := !rep.Stale && reflect.DeepEqual(rep.Pages, want) && len(pa.Partitions) > 0 && len(pb.Partitions) > 0
			return ok, fmt.Sprintf("stale=%v missing=%v pages=%d; a holds %v, b holds %v",
				rep.Stale, rep.MissingPartitions, len(rep.Pages), pa.Partitions, pb.Partitions)
		})
	}

	// Each worker alone holds only part of the pages: the complete answers
	// above came through routing.
	var pa, pb pageview.Partial
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
