package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// logAt returns a worker's JSON log line at t with the given message and
// fields (a JSON object's members, without braces).
func logAt(t time.Time, msg, fields string) []byte {
	return fmt.Appendf(nil, `{"time":%q,"level":"INFO","msg":%q,%s}`, t.Format(time.RFC3339Nano), msg, fields)
}

func TestFailoverLogFollowsTheTakeover(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	f := newFailoverLog(0)
	// Worker 1 keeps a copy of partition 0, worker 2 one of partition 1.
	f.line(1, logAt(at(0), "standby copy started", `"component":"standby","partition":0`))
	f.line(2, logAt(at(0), "standby copy started", `"component":"standby","partition":1`))
	f.line(1, logAt(at(10), "standby copy committed", `"component":"standby","partition":0,"table":"views","offset":10`))
	f.line(1, logAt(at(10), "standby copy committed", `"component":"standby","partition":0,"table":"totals","offset":9`))
	f.line(2, logAt(at(10), "standby copy committed", `"component":"standby","partition":1,"table":"views","offset":99`))

	if w, ok, why := f.caughtUp(map[string]int64{"views": 13, "totals": 11}, 0); ok {
		t.Errorf("caught up (worker-%d) with views 2 short of the end", w)
	} else if !strings.HasPrefix(why, "worker-1 ") || !strings.HasSuffix(why, " at 10 of 13") {
		t.Errorf("why = %q, want worker-1's views copy at 10 of 13", why)
	}
	// One short of the end: the last offset may be a commit marker.
	if w, ok, why := f.caughtUp(map[string]int64{"views": 12, "totals": 11}, 0); !ok || w != 1 {
		t.Errorf("caughtUp = worker-%d, %v (%s); want worker-1", w, ok, why)
	}
	if _, ok, _ := f.caughtUp(map[string]int64{"views": 12, "totals": 11}, 1); ok {
		t.Error("the owner's own copy counted")
	}

	f.kill(0, at(100))
	f.line(1, logAt(at(120), "standby copy committed", `"component":"standby","partition":0,"table":"views","offset":11`))
	// Before the kill, and of another partition: not the takeover.
	f.line(2, logAt(at(50), "partition assigned", `"component":"stream","partition":0,"generation":3`))
	f.line(2, logAt(at(6000), "partition assigned", `"component":"stream","partition":1,"generation":4`))
	if _, ok, why := f.takenOver(); ok || why != "partition 0 not assigned since the kill" {
		t.Fatalf("takenOver = %v, %q", ok, why)
	}
	// Worker 2 is assigned it and loses it before processing; worker 1
	// takes it over.
	f.line(2, logAt(at(6100), "partition assigned", `"component":"stream","partition":0,"generation":4`))
	f.line(2, logAt(at(6150), "partition released", `"component":"stream","partition":0,"generation":4`))
	f.line(1, logAt(at(6200), "partition assigned", `"component":"stream","partition":0,"generation":5`))
	f.line(1, logAt(at(6210), "recovering", `"component":"stream","partition":0,"table":"views","records":2,"stored":true`))
	f.line(1, logAt(at(6210), "recovering", `"component":"stream","partition":0,"table":"totals","records":1,"stored":false`))
	f.line(1, logAt(at(6250), "recovered", `"component":"stream","partition":0,"table":"views","records":2`))
	f.line(1, logAt(at(6260), "recovered", `"component":"stream","partition":0,"table":"totals","records":1`))
	if _, ok, why := f.takenOver(); ok || why != "worker-1 recovering partition 0 (2 of 2 tables recovered)" {
		t.Fatalf("takenOver = %v, %q", ok, why)
	}
	f.line(1, logAt(at(6270), "partition resumed", `"component":"stream","partition":0,"generation":5`))
	f.line(1, logAt(at(7000), "recovered", `"component":"stream","partition":0,"table":"views","records":50`))

	got, ok, why := f.takenOver()
	if !ok {
		t.Fatalf("not taken over: %s", why)
	}
	want := takeover{worker: 1, generation: 5, assigned: at(6200), resumed: at(6270),
		recovering: 2, stored: 1, announced: 3, recovered: 2, replayed: 3}
	if got != want {
		t.Errorf("takeover = %+v\nwant       %+v", got, want)
	}
	copies, copied := f.atKill(1)
	if !slices.Equal(copies, []int{1}) || !maps.Equal(copied, map[string]int64{"views": 10, "totals": 9}) {
		t.Errorf("atKill(1) = %v, %v; want [1], views 10 totals 9 (as at the kill)", copies, copied)
	}
	if copies, copied := f.atKill(2); !slices.Equal(copies, []int{1}) || copied != nil {
		t.Errorf("atKill(2) = %v, %v; want [1], nil", copies, copied)
	}
}

func TestStatsdLine(t *testing.T) {
	for _, c := range []struct {
		line   string
		ok     bool
		name   string
		kind   string
		values []float64
		tags   []string
	}{
		{line: "pageviews.recovery_records:500|c|#env:dev,table:views,partition:0", ok: true,
			name: "pageviews.recovery_records", kind: "c", values: []float64{500}, tags: []string{"env:dev", "table:views", "partition:0"}},
		{line: "pageviews.assignment_latency:12.5:3|ms|@0.5|#partition:1", ok: true,
			name: "pageviews.assignment_latency", kind: "ms", values: []float64{12.5, 3}, tags: []string{"partition:1"}},
		{line: "pageviews.rebalances:1|c", ok: true, name: "pageviews.rebalances", kind: "c", values: []float64{1}},
		{line: ""},
		{line: "pageviews.rebalances"},
		{line: "pageviews.rebalances:1"},
		{line: "pageviews.rebalances:x|c"},
		{line: ":1|c"},
	} {
		name, kind, values, tags, ok := statsdLine(c.line)
		if ok != c.ok || name != c.name || kind != c.kind || !slices.Equal(values, c.values) || !slices.Equal(tags, c.tags) {
			t.Errorf("statsdLine(%q) = %q, %q, %v, %q, %v; want %q, %q, %v, %q, %v",
				c.line, name, kind, values, tags, ok, c.name, c.kind, c.values, c.tags, c.ok)
		}
	}
}

func TestFailoverResults(t *testing.T) {
	fig := func(replicas int, failover time.Duration, replayed, changelog int64, held bool) failoverFigures {
		return failoverFigures{replicas: replicas, failover: failover, detect: 6 * time.Second,
			changelog: changelog, heldCopy: held, t: takeover{replayed: replayed}}
	}
	cold := []failoverFigures{fig(0, 1500*time.Millisecond, 1_000_100, 1_000_100, false), fig(0, 1300*time.Millisecond, 1_000_050, 1_000_050, false),
		fig(0, 2000*time.Millisecond, 1_000_000, 1_000_200, false)}
	standby := []failoverFigures{fig(1, 100*time.Millisecond, 0, 1_000_400, true), fig(1, 1400*time.Millisecond, 1_000_000, 1_000_300, false),
		fig(1, 50*time.Millisecond, 2, 1_000_010, true)}
	got := failoverResults(cold, standby)
	want := map[string]string{
		"failover_cold_ms": "1500", "failover_standby_ms": "100", "failover_replayed_records": "2",
		"failover_cold_replayed_records": "1000050", "failover_detect_ms": "6000", "failover_changelog_records": "1000010",
		"failover_standby_ratio": "0.07", "failover_standby_held_copy": "2", "failover_runs": "3",
	}
	if !maps.Equal(got, want) {
		t.Errorf("failoverResults = %v\nwant %v", got, want)
	}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, slices.Sorted(slices.Values(failoverKeys()))) {
		t.Errorf("keys %v, printed keys %v", keys, failoverKeys())
	}
}
