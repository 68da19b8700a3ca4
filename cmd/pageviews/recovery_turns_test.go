package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/app"
)

// A worker replays at most Recovering partitions' changelogs at once (the
// rest wait their turn), so what a recovery holds in memory does not grow
// with the partitions a worker is given. These tests run it with one at a
// time, against the in-process broker.

func turnVars(t testing.TB, c *kfake.Cluster) map[string]string {
	v := faultVars(t, c)
	v["PARTITIONS"] = "4"
	return v
}

// TestRecoveryTakesTurns: partitions recovering one at a time never replay
// side by side, and together restore every count.
func TestRecoveryTakesTurns(t *testing.T) {
	c, want := seededBroker(t, turnVars)

	b := launchWorkerWith(t, turnVars(t, c), app.Hooks{Recovering: 1}) // an empty store: replays everything
	readyReasons(t, b, 90*time.Second)
	waitCounts(t, b.base, want)

	// In the log's order, a partition's replay runs from its "replaying"
	// line to the "recovered" line of its last table with records to
	// replay (each said so in a "recovering" line before); no other
	// partition may start in between.
	tables := map[any]int{}
	replayed := 0
	var open any // the partition replaying, nil between turns
	left := 0    // its tables not yet recovered
	for _, l := range b.logs.all("recovering", "replaying", "recovered") {
		p := l["partition"]
		switch {
		case l["msg"] == "recovering":
			if l["records"] != float64(0) {
				tables[p]++
			}
		case l["msg"] == "replaying" && open != nil:
			t.Fatalf("partition %v started replaying while partition %v was (%d tables left); log:\n%s", p, open, left, b.logs)
		case l["msg"] == "replaying":
			open, left = p, tables[p]
			replayed++
		case p == open:
			if left--; left == 0 {
				open = nil
			}
		}
	}
	if replayed < 2 {
		t.Fatalf("%d partitions replayed, want at least 2 for turns to matter; log:\n%s", replayed, b.logs)
	}
}

// TestRecoveryWaitingTurnRevoked: partitions waiting for their turn, behind
// one whose replay cannot go on (every changelog fetch fails), are revoked
// when a second worker joins. They must let go at once, so the second
// worker gets its share while the replay in turn is still held up, and
// not stop the worker; both workers then recover every count.
func TestRecoveryWaitingTurnRevoked(t *testing.T) {
	c, want := seededBroker(t, turnVars)

	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: viewsChangelog, Err: kerr.NotLeaderForPartition, Count: -1})
	defer h.Remove()
	a := launchWorkerWith(t, turnVars(t, c), app.Hooks{Recovering: 1})
	a.logs.wait(t, "recovery waits its turn: other partitions are replaying", 60*time.Second)
	eventually(t, 60*time.Second, "the replay in turn is held up", func() (bool, string) {
		return h.Hits() > 0, fmt.Sprintf("%d fetches faulted", h.Hits())
	})
	eventually(t, 60*time.Second, "/ready/ says a partition waits its turn", func() (bool, string) {
		var r struct{ Reason string }
		getJSON(t, a.base+"/ready/", &r)
		return strings.Contains(r.Reason, "waits its turn"), r.Reason
	})
	b := launchWorkerWith(t, turnVars(t, c), app.Hooks{Recovering: 1})
	// The group gives the second worker half the partitions once the
	// first has released them, which a partition waiting its turn must do
	// without waiting for the replay ahead of it to end.
	eventually(t, 60*time.Second, "the second worker is given its share", func() (bool, string) {
		n := len(b.logs.all("partition assigned"))
		return n == 2, fmt.Sprintf("%d partitions assigned to the second worker, want 2", n)
	})
	h.Remove()
	for _, w := range []*worker{a, b} {
		readyReasons(t, w, 90*time.Second)
	}
	waitCounts(t, a.base, want)
	for name, w := range map[string]*worker{"first": a, "second": b} {
		select {
		case err := <-w.done:
			t.Fatalf("%s worker stopped: %v\n%s", name, err, w.logs)
		default:
		}
		if n := len(w.logs.all("partition failed; stopping the worker")); n > 0 {
			t.Errorf("%s worker: %d partitions failed\n%s", name, n, w.logs)
		}
	}
}

// TestStandbyCopiesTakeTurns: standby copies catch up one at a time when
// told to, each giving its turn back once it has caught up, and every copy
// still catches up; the partitions then fail over to them with every count.
func TestStandbyCopiesTakeTurns(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	vars := func() map[string]string {
		v := turnVars(t, c)
		v["TABLE_STANDBY_REPLICAS"] = "1"
		v["LOG_LEVEL"] = "debug" // a copy's turn is logged at debug
		return v
	}
	a := startWorker(t, vars(), time.Now)
	want := countViews(t, a.base, 10, 5)
	b := startWorkerWith(t, vars(), app.Hooks{Recovering: 1})

	// Each of b's copies of a's two partitions, both tables, catches up.
	// The copies b holds are those it started and has neither stopped nor
	// been assigned the partition of since: the assignor first leaves
	// every partition with a, whose state is warm, while b copies all four,
	// and moves two to b once it can, so b may catch up copies of more
	// than a's two partitions on the way (6 tables in one run in three).
	eventually(t, 60*time.Second, "the second worker's copies catch up", func() (bool, string) {
		caught := map[string]map[any]bool{} // held copies: the tables caught up since the copy started
		for _, l := range b.logs.all("standby copy started", "standby copy stopped", "partition assigned", "standby copy caught up") {
			p := fmt.Sprint(l["partition"])
			switch l["msg"] {
			case "standby copy started":
				caught[p] = map[any]bool{}
			case "standby copy stopped", "partition assigned":
				delete(caught, p)
			default:
				if tables, ok := caught[p]; ok {
					tables[l["table"]] = true
				}
			}
		}
		n := 0
		for _, tables := range caught {
			n += len(tables)
		}
		return len(caught) == 2 && n == 4, fmt.Sprintf("copies of %d partitions held, %d of their tables caught up; want 2 and 4", len(caught), n)
	})
	if len(b.logs.all("standby copy waits its turn: other copies are catching up")) == 0 {
		t.Fatalf("no standby copy waited for its turn, with one copy catching up at a time\n%s", b.logs)
	}
	// In the log's order, no copy starts catching up while another's turn
	// has not ended.
	var open any
	for _, l := range b.logs.all("standby copy catching up", "standby copy's turn ends") {
		p := l["partition"]
		switch {
		case l["msg"] == "standby copy catching up" && open != nil:
			t.Fatalf("the copy of partition %v started catching up during the turn of partition %v\n%s", p, open, b.logs)
		case l["msg"] == "standby copy catching up":
			open = p
		case p == open:
			open = nil
		}
	}
	a.stop(t)
	readyReasons(t, b, 90*time.Second)
	waitCounts(t, b.base, want)
}
