package truth

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
)

// TestRecovery: a worker counts 20k views and stops; a new worker starts
// on an empty DATA_DIR and rebuilds both tables from their changelogs.
// Its recovery metrics are the changelogs the broker holds.
func TestRecovery(t *testing.T) {
	s := newScenario(t, "recovery")
	const records, pages = 20_000, 5000
	ts := time.Now()
	s.kafka.produce(records, func(i int) *sarama.ProducerMessage {
		return view(fmt.Sprintf("/recovery/%d", i%pages), i, ts)
	})
	first := s.start("first", t.TempDir(), nil)
	hwm := s.caughtUp(time.Minute)
	s.settled(first, hwm, 30*time.Second)
	first.Stop(t)

	views, totals := tableNames()
	tables := []string{views, totals}
	changelogs := map[string]map[int32][][]byte{}
	ends := map[string]map[int32]int64{} // high watermarks
	for _, table := range tables {
		changelogs[table] = s.kafka.readCommitted(app.Changelog(group, table))
		ends[table] = s.kafka.hwms(app.Changelog(group, table))
	}

	w := s.start("empty", t.TempDir(), nil)
	w.WaitReady(t, 2*time.Minute)
	s.settled(w, hwm, 30*time.Second)

	s.recoveryEnds(w, tables, ends)
	s.recoveryRecords(w, tables, changelogs)
	s.recoveryAssignments(w)
}

// recoveryEnds checks that every table partition was replayed to its end:
// recovery_remaining ends at 0, and the recovering log lines run from 0 to
// the changelog's high watermark.
func (s *scenario) recoveryEnds(w *worker, tables []string, ends map[string]map[int32]int64) {
	k := w.sink
	remaining := map[string]float64{}
	for _, table := range tables {
		for p, v := range k.lastBy("recovery_remaining", "partition", map[string]string{"table": table}) {
			remaining[table+"/"+p] = v
		}
	}
	s.check(len(remaining) == len(tables)*partitions && allZero(remaining), "recovery_remaining",
		fmt.Sprintf("last sample 0 for each of the %d table partitions", len(tables)*partitions), formatKeyed("", remaining))
	// The worker logged where each replay started and ended: from 0 (an
	// empty store) to the changelog's high watermark.
	logged := recoveringLines(w)
	for _, table := range tables {
		for p, end := range ends[table] {
			l, ok := logged[fmt.Sprintf("%s/%d", table, p)]
			if !ok || l.Num("from_offset") != 0 || l.Num("end_offset") != end {
				s.t.Errorf("%s/%d: recovering logged %v; the changelog ends at %d", table, p, l, end)
			}
		}
	}
}

// recoveryRecords checks the records replayed against the records a
// read_committed consumer receives, the estimate at the end of each
// replay, and the tombstones: none in the changelogs, none deleted.
func (s *scenario) recoveryRecords(w *worker, tables []string, changelogs map[string]map[int32][][]byte) {
	k := w.sink
	replayed := map[string]float64{}
	truth := map[string]float64{}
	for _, table := range tables {
		for p, n := range k.sumBy("recovery_records", "partition", map[string]string{"table": table}) {
			replayed[table+"/"+p] = float64(n)
		}
		for p, vs := range changelogs[table] {
			truth[fmt.Sprintf("%s/%d", table, p)] = float64(len(vs))
		}
	}
	s.check(maps.Equal(replayed, truth), "recovery_records",
		fmt.Sprintf("records of each changelog partition (read_committed), %d in all", int64(sumMap(truth))),
		fmt.Sprintf("%d in all; %s", int64(sumMap(replayed)), formatKeyed("", replayed)))
	eta := map[string]float64{}
	for _, table := range tables {
		for p, v := range k.lastBy("recovery_eta_seconds", "partition", map[string]string{"table": table}) {
			eta[table+"/"+p] = v
		}
	}
	s.check(len(eta) == len(tables)*partitions && allZero(eta), "recovery_eta_seconds", "0 at the end of each table partition's recovery", formatKeyed("", eta))

	var tombstones int
	for _, table := range tables {
		for _, vs := range changelogs[table] {
			for _, v := range vs {
				if v == nil {
					tombstones++
				}
			}
		}
	}
	s.check(k.sum("table_keys_deleted", nil) == int64(tombstones), "table_keys_deleted",
		fmt.Sprintf("tombstones in the changelogs: %d", tombstones), fmt.Sprint(k.sum("table_keys_deleted", nil)))
}

// recoveryAssignments checks that every partition was assigned, recovered
// and resumed once, and that nothing was received or failed.
func (s *scenario) recoveryAssignments(w *worker) {
	k := w.sink
	complete := k.sumBy("assignments_complete", "partition", nil)
	resumed := map[string]int64{}
	for _, e := range w.Entries("partition resumed") {
		resumed[fmt.Sprint(e.Num("partition"))]++
	}
	s.check(len(complete) == partitions && maps.Equal(complete, resumed), "assignments_complete",
		fmt.Sprintf("one per partition resumed log line: %d partitions", partitions), fmt.Sprint(complete))
	latency := k.byTag("assignment_latency", "partition", nil)
	lat := map[string]int64{}
	for p, pts := range latency {
		lat[p] = int64(len(values(pts)))
	}
	s.check(maps.Equal(lat, resumed), "assignment_latency", "one timing per partition resumed log line", fmt.Sprint(lat))
	assigned, _ := k.last("partitions_assigned", nil)
	s.check(assigned == partitions, "partitions_assigned", fmt.Sprintf("%d: every partition", partitions), fmt.Sprint(assigned))
	s.check(k.sum("messages_received", nil) == 0, "messages_received", "0: nothing was produced after the first worker stopped",
		fmt.Sprint(k.sum("messages_received", nil)))
	s.check(k.sum("assignments_error", nil) == 0, "assignments_error", "0: no assignment failed (no warning or error logged)",
		fmt.Sprint(k.sum("assignments_error", nil)))
}

// recoveringLines returns the first recovering log line of each table
// partition, by "table/partition".
func recoveringLines(w *worker) map[string]entry {
	out := map[string]entry{}
	for _, e := range w.Entries("recovering") {
		key := fmt.Sprintf("%s/%d", e.Str("table"), e.Num("partition"))
		if _, ok := out[key]; !ok {
			out[key] = entry(e)
		}
	}
	return out
}

func allZero(m map[string]float64) bool {
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

// formatKeyed lists m by key, each key after prefix.
func formatKeyed(prefix string, m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s%s=%v", prefix, k, m[k]))
	}
	return strings.Join(parts, " ")
}
