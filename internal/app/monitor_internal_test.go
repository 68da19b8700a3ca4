package app

import (
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/stream"
)

// TestMonitorGroupsARebalance: the releases of a rebalance and the
// resumptions that follow, in whatever order the partitions' goroutines
// report them around "all partitions processing", make one entry with each
// partition's figures; the next release starts the next entry.
func TestMonitorGroupsARebalance(t *testing.T) {
	m := &monitor{state: stream.NewState(), recovery: map[int32]map[string]recoveryProgress{}}
	h := monitorHooks{stream.NopHooks{}, m}
	h.Released(0, 5*time.Millisecond)
	h.Replayed(2, 10, "standby")
	h.Resumed(2, 20*time.Millisecond, 30*time.Millisecond)
	h.AllProcessing(40*time.Millisecond, 2)
	h.Replayed(3, 0, "none")
	h.Resumed(3, time.Millisecond, -1)
	h.Released(2, time.Millisecond)

	got := m.recent()
	if len(got) != 2 {
		t.Fatalf("rebalances = %+v, want 2", got)
	}
	first := got[1]
	if len(first.Partitions) != 3 || first.StoppedMs == nil || *first.StoppedMs != 40 {
		t.Fatalf("first rebalance = %+v, want p0 released, p2 and p3 resumed, stopped 40 ms", first)
	}
	p2, p3 := first.Partitions[1], first.Partitions[2]
	if p2.RecoveryMs != 20 || p2.UnprocessedMs == nil || *p2.UnprocessedMs != 30 || p2.Replayed != 10 || p2.Copy != "standby" {
		t.Errorf("p2 = %+v, want recovery 20 ms, unprocessed 30 ms, 10 replayed from standby", p2)
	}
	if p3.RecoveryMs != 1 || p3.UnprocessedMs != nil {
		t.Errorf("p3 = %+v, want recovery 1 ms, unprocessed unknown", p3)
	}
	if got[0].StoppedMs != nil || got[0].Partitions[0].Event != "released" {
		t.Errorf("second rebalance = %+v, want p2 released, in progress", got[0])
	}
}

// TestMonitorRecoveryProgress: a recovering partition's size is the most
// its tables had left; its ETA the slowest table's, unknown while a table
// with records left has not measured its speed.
func TestMonitorRecoveryProgress(t *testing.T) {
	m := &monitor{recovery: map[int32]map[string]recoveryProgress{}}
	m.progress("a", 1, 100, -1)
	m.progress("b", 1, 50, -1)
	if rv := m.recoveryOf(stream.PartitionView{Partition: 1, Remaining: 150}); rv.Total != 150 || rv.Done != 0 || rv.ETA != -1 {
		t.Errorf("at the start: %+v, want total 150, done 0, ETA unknown", rv)
	}
	m.progress("a", 1, 40, 2*time.Second)
	m.progress("b", 1, 20, 3*time.Second)
	if rv := m.recoveryOf(stream.PartitionView{Partition: 1, Remaining: 60}); rv.Total != 150 || rv.Done != 0.6 || rv.ETA != 3 {
		t.Errorf("later: %+v, want total 150, done 0.6, ETA 3 s", rv)
	}
}
