package truth

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// TestJoin: two workers share the partitions and go idle for longer than
// idle; a third joins. Each worker's last generation is the group's, the
// partitions held add up, and the partitions the newcomer took over went
// unprocessed for the handoff only, not since their last commit.
func TestJoin(t *testing.T) {
	s := newScenario(t, "join")
	const idle = 6 * time.Second
	a := s.start("a", t.TempDir(), nil)
	b := s.start("b", t.TempDir(), nil)
	ts := time.Now()
	s.kafka.produce(6000, func(i int) *sarama.ProducerMessage {
		return view(fmt.Sprintf("/join/%d", i%300), i, ts)
	})
	hwm := s.caughtUp(time.Minute)
	s.waitHeld([]*worker{a, b})
	// Idle: no record, no commit, from here on.
	time.Sleep(idle)

	c := s.start("c", t.TempDir(), nil)
	workers := []*worker{a, b, c}
	held := s.waitHeld(workers)
	s.settled(c, hwmOf(hwm, held[c.Name]), 30*time.Second)

	s.joinShares(workers, held)
	s.joinMoved(c, idle)
	// The group's view of the join.
	for _, w := range workers {
		s.joinRebalance(w)
	}
	var returns, released int
	for _, w := range []*worker{a, b} {
		returns += len(values(w.sink.find("rebalance_return_latency", nil)))
		released += len(w.Entries("partition released"))
	}
	s.check(returns == released && released > 0, "rebalance_return_latency",
		"one timing per partition released log line of a and b", fmt.Sprintf("%d timings, %d lines", returns, released))
}

// joinShares checks each worker's last generation against the group's,
// the newest any worker was assigned in, and its partitions_assigned
// against what it serves.
func (s *scenario) joinShares(workers []*worker, held map[string][]int32) {
	var gen int64
	for _, w := range workers {
		gen = max(gen, maxGeneration(w.Entries("partition assigned")), maxGeneration(w.Entries("all partitions processing")))
	}
	var gens, sums []string
	genOK, sumOK := true, true
	var total float64
	for _, w := range workers {
		g, _ := w.sink.last("generation", nil)
		gens = append(gens, fmt.Sprintf("%s=%v", w.Name, g))
		genOK = genOK && g == float64(gen)
		n, _ := w.sink.last("partitions_assigned", nil)
		total += n
		sums = append(sums, fmt.Sprintf("%s=%v (holds %d)", w.Name, n, len(held[w.Name])))
		sumOK = sumOK && n == float64(len(held[w.Name]))
	}
	s.check(genOK, "generation", fmt.Sprintf("last sample of every worker: the group's generation %d (partition assigned log lines)", gen), strings.Join(gens, " "))
	s.check(sumOK && total == partitions, "partitions_assigned",
		fmt.Sprintf("each what /report/?local=1 serves; %d in all", partitions), strings.Join(sums, " "))
}

// joinMoved checks the partitions c took over: c logged how long each went
// unprocessed, which is below the idle time before the join.
func (s *scenario) joinMoved(c *worker, idle time.Duration) {
	logged := map[string]int64{}
	for _, e := range c.Entries("partition resumed") {
		if _, ok := e["unprocessed_ms"]; ok {
			logged[fmt.Sprint(e.Num("partition"))] = e.Num("unprocessed_ms")
		}
	}
	sent := c.sink.lastBy("partition_unprocessed_seconds", "partition", nil)
	ok := len(logged) > 0 && len(sent) == len(logged)
	for p, ms := range logged {
		v, found := sent[p]
		ok = ok && found && v >= 0 && v < idle.Seconds() && math.Abs(v*1000-float64(ms)) <= 1
	}
	s.check(ok, "partition_unprocessed_seconds",
		fmt.Sprintf("each moved partition: below the %s idle time before the join (the handoff, not the last commit), the unprocessed_ms c logged %v", idle, logged),
		formatKeyed("p", sent))
}

// joinRebalance checks w's view of the join: its rebalance state, the
// generations it joined, and a timing or a count per log line.
func (s *scenario) joinRebalance(w *worker) {
	state := w.sink.gauges("rebalance_state", nil)
	s.check(len(state) > 0 && slices.Contains(state, 1) && state[len(state)-1] == 0, "rebalance_state",
		"1 at some sample during the join, 0 at the end", fmt.Sprintf("%s: 1 seen %v, last %v", w.Name, slices.Contains(state, 1), state[len(state)-1]))
	// Before it joined, a worker samples generation 0.
	gs := slices.DeleteFunc(w.sink.gauges("generation", nil), func(g float64) bool { return g == 0 })
	joined := int64(gs[len(gs)-1]-gs[0]) + 1
	s.check(w.sink.sum("rebalances", nil) == joined, "rebalances",
		"generations joined: 1 + the last generation sample - the first after the join", fmt.Sprintf("%s: %d (generations %v to %v)", w.Name, w.sink.sum("rebalances", nil), gs[0], gs[len(gs)-1]))
	ends := values(w.sink.find("rebalance_end_latency", nil))
	lines := w.Entries("all partitions processing")
	endOK := len(ends) == len(lines)
	for i := range min(len(ends), len(lines)) {
		endOK = endOK && math.Abs(ends[i]-float64(lines[i].Num("rebalance_ms"))) < 1
	}
	s.check(endOK, "rebalance_end_latency", "one per all partitions processing log line, its rebalance_ms",
		fmt.Sprintf("%s: %d timings, %d lines", w.Name, len(ends), len(lines)))
	complete := w.sink.sumBy("assignments_complete", "partition", nil)
	resumed := map[string]int64{}
	for _, e := range w.Entries("partition resumed") {
		resumed[fmt.Sprint(e.Num("partition"))]++
	}
	s.check(maps.Equal(complete, resumed), "assignments_complete", "one per partition resumed log line", fmt.Sprintf("%s: %v", w.Name, complete))
}

// waitHeld waits until the workers serve every partition exactly once,
// each at least one, twice in a row, and returns what each serves.
func (s *scenario) waitHeld(workers []*worker) map[string][]int32 {
	s.t.Helper()
	var held map[string][]int32
	streak := 0
	s.eventually("partitions served once", 90*time.Second, func() (bool, string) {
		held = map[string][]int32{}
		seen := map[int32]int{}
		for _, w := range workers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ready, why := w.Ready(ctx)
			var l struct{ Partitions []int32 }
			if ready {
				loc, err := w.TryLocal(ctx)
				l.Partitions, why = loc.Partitions, fmt.Sprint(err)
				ready = err == nil
			}
			cancel()
			if !ready || len(l.Partitions) == 0 {
				streak = 0
				return false, fmt.Sprintf("%s: ready %v (%s), partitions %v", w.Name, ready, why, l.Partitions)
			}
			held[w.Name] = l.Partitions
			for _, p := range l.Partitions {
				seen[p]++
			}
		}
		for p := range int32(partitions) {
			if seen[p] != 1 {
				streak = 0
				return false, fmt.Sprintf("partition %d served %d times: %v", p, seen[p], held)
			}
		}
		streak++
		return streak >= 2, ""
	})
	return held
}

// hwmOf keeps the high watermarks of parts.
func hwmOf(hwm map[int32]int64, parts []int32) map[int32]int64 {
	out := map[int32]int64{}
	for _, p := range parts {
		out[p] = hwm[p]
	}
	return out
}
