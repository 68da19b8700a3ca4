package app

import (
	"slices"
	"time"

	"github.com/gofaust/pageviews/internal/stream"
)

// monitorHooks pass every observation of the stream runtime on to the
// metrics, and give the monitor the figures of the log lines "partition
// resumed" and "all partitions processing", and the recoveries' progress.
type monitorHooks struct {
	stream.Hooks
	m *monitor
}

// Resumed implements stream.Hooks.
func (h monitorHooks) Resumed(p int32, recovery, unprocessed time.Duration) {
	h.Hooks.Resumed(p, recovery, unprocessed)
	h.m.resumed(p, recovery, unprocessed)
}

// Replayed implements stream.Hooks.
func (h monitorHooks) Replayed(p int32, records int64, copy string) {
	h.Hooks.Replayed(p, records, copy)
	h.m.replayed(p, records, copy)
}

// Released implements stream.Hooks.
func (h monitorHooks) Released(p int32, took time.Duration) {
	h.Hooks.Released(p, took)
	h.m.event(rebalancePartView{Partition: p, Event: "released", ReleaseMs: took.Milliseconds()})
}

// AllProcessing implements stream.Hooks.
func (h monitorHooks) AllProcessing(stalled time.Duration, partitions int) {
	h.Hooks.AllProcessing(stalled, partitions)
	h.m.allProcessing(stalled)
}

// RecoveryProgress implements stream.Hooks.
func (h monitorHooks) RecoveryProgress(table string, p int32, remaining int64, eta time.Duration, replayed int64) {
	h.Hooks.RecoveryProgress(table, p, remaining, eta, replayed)
	h.m.progress(table, p, remaining, eta)
}

// progress records how much table's recovery of p has left; the first
// report of a recovery is its size.
func (m *monitor) progress(table string, p int32, remaining int64, eta time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recovery[p] == nil {
		m.recovery[p] = map[string]recoveryProgress{}
	}
	rp := m.recovery[p][table]
	m.recovery[p][table] = recoveryProgress{total: max(rp.total, remaining), remaining: remaining, eta: eta}
}

// replayed starts p's entry in the current rebalance with what its
// recovery replayed; resumed, which the runtime calls next, completes it.
func (m *monitor) replayed(p int32, records int64, copy string) {
	m.event(rebalancePartView{Partition: p, Event: "resumed", Replayed: records, Copy: copy})
}

// resumed completes p's entry with the figures of the log line
// "partition resumed", and forgets its recovery.
func (m *monitor) resumed(p int32, recovery, unprocessed time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recovery, p)
	for _, r := range slices.Backward(m.rebalances) {
		for i := len(r.Partitions) - 1; i >= 0; i-- {
			if e := &r.Partitions[i]; e.Partition == p && e.Event == "resumed" {
				e.RecoveryMs = recovery.Milliseconds()
				if unprocessed >= 0 {
					ms := unprocessed.Milliseconds()
					e.UnprocessedMs = &ms
				}
				return
			}
		}
	}
}

// event adds e to the rebalance it belongs to.
func (m *monitor) event(e rebalancePartView) {
	generation := m.state.View().Generation
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.current(generation, e.Event == "released")
	r.resumed = r.resumed || e.Event == "resumed"
	r.Partitions = append(r.Partitions, e)
}

// allProcessing records that every partition held here processes again,
// after this worker had not processed everything it holds for stalled.
func (m *monitor) allProcessing(stalled time.Duration) {
	generation := m.state.View().Generation
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := stalled.Milliseconds()
	m.current(generation, false).StoppedMs = &ms
}

// current is the rebalance an event belongs to, started when it is a new
// one; m.mu is held. Releases come first, in the old generation; the
// resumptions follow in the new one, on each partition's own goroutine, so
// in any order around the report that all partitions process. A rebalance
// is thus the releases up to the first resumption, and every resumption of
// its generation.
func (m *monitor) current(generation int32, release bool) *rebalance {
	var r *rebalance
	if n := len(m.rebalances); n > 0 {
		r = m.rebalances[n-1]
	}
	if r == nil || r.resumed && (release || r.Generation != generation) {
		r = &rebalance{At: time.Now(), Partitions: []rebalancePartView{}}
		m.rebalances = append(m.rebalances, r)
		if len(m.rebalances) > keepRebalances {
			m.rebalances = m.rebalances[len(m.rebalances)-keepRebalances:]
		}
	}
	r.Generation = max(r.Generation, generation)
	return r
}

// sampled records the lag of each processing partition, as the metrics
// sampled it at.
func (m *monitor) sampled(lag map[int32]lagSample, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lag, m.lagAt = lag, at
}

// livechecked records the outcome of a livecheck run here.
func (m *monitor) livechecked(ok bool, took time.Duration, err error) {
	v := &livecheckView{Declared: true, Ran: true, OK: ok, At: time.Now(), TookMs: took.Milliseconds()}
	if err != nil {
		v.Error = err.Error()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.live = v
}
