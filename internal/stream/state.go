package stream

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// State is what the runtime tells the outside about its group membership and
// partitions. It is safe for concurrent use; the web pages and probes read
// it while the runtime writes it.
type State struct {
	mu         sync.Mutex
	joined     bool
	generation int32
	parts      map[int32]*PartitionState
	fatal      error
	// stalled is when the worker last stopped processing everything it
	// holds (a join or an assignment); zero while all partitions process.
	stalled time.Time
	// stalledSince is whether it stopped since the last Sample, so a
	// rebalance shorter than the sampling interval still shows.
	stalledSince bool
	// live is the session's generation as the group moves on (sarama
	// updates it at every cooperative rejoin); nil outside a session.
	live func() int32
}

// Position is how far a partition got: the next offset to process, the
// next offset committed (-1: not yet known) and the timestamp of the last
// record processed. From is the offset the partition's claim took its
// first record at (-1: none yet), which is where a group with no
// committed offset starts.
type Position struct {
	Next, Committed, From int64
	LastRecord            time.Time
}

// Active is the count of records processed and not committed: since the
// committed offset, or, until the group's first commit of the partition,
// since the claim's first record (0 before it).
func (p Position) Active() int64 {
	switch {
	case p.Committed >= 0:
		return max(p.Next-p.Committed, 0)
	case p.From >= 0:
		return max(p.Next-p.From, 0)
	}
	return 0
}

// position is a partition loop's Position, written by the loop and read
// by samples.
type position struct {
	next, committed, from, lastTS atomic.Int64
}

func newPosition() *position {
	p := &position{}
	p.next.Store(-1)
	p.committed.Store(-1)
	p.from.Store(-1)
	return p
}

func (p *position) get() Position {
	pos := Position{Next: p.next.Load(), Committed: p.committed.Load(), From: p.from.Load()}
	if ts := p.lastTS.Load(); ts != 0 {
		pos.LastRecord = time.Unix(0, ts)
	}
	return pos
}

// Sample is what the metrics read at each interval.
type Sample struct {
	// Generation is the group generation this worker is in now (0 before
	// it joined).
	Generation int32
	// Rebalancing is true while the worker does not process everything it
	// holds, or did not at some point since the last Sample.
	Rebalancing bool
	// Positions are the held partitions that process, by partition.
	Positions map[int32]Position
}

// Sample reads the state for the metrics.
func (s *State) Sample() Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Sample{Generation: s.generation, Rebalancing: s.stalledSince || !s.stalled.IsZero(), Positions: map[int32]Position{}}
	if s.live != nil {
		out.Generation = max(out.Generation, s.live())
	}
	s.stalledSince = false
	for p, ps := range s.parts {
		if ps.pos != nil && !ps.Recovering {
			out.Positions[p] = ps.pos.get()
		}
	}
	return out
}

// PartitionState describes one assigned partition.
type PartitionState struct {
	Recovering bool
	Remaining  int64 // changelog records left to replay
	Since      time.Time
	Stalled    error // why the partition cannot commit right now
	Waiting    error // why its recovery, or its next record, is not making progress right now
	// Beat is when the partition's loop last made progress. Pending counts
	// records fetched and waiting for the loop; the fetcher fills it
	// whatever the loop does. pos is how far the loop got (Sample).
	Beat    time.Time
	Pending func() int
	pos     *position
}

// NewState returns the state of a worker that has not joined yet.
func NewState() *State {
	return &State{parts: make(map[int32]*PartitionState)}
}

func (s *State) setJoined(joined bool, generation int32, live func() int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled.IsZero() {
		s.stalled, s.stalledSince = time.Now(), true
	}
	s.live = live
	if !joined {
		// Every claim of the session has ended; drop any that registered
		// in Setup but never started.
		clear(s.parts)
	}
	s.joined, s.generation = joined, generation
}

// seeGeneration records a generation seen on an assignment; with
// cooperative rebalancing Setup runs once, so new generations show up
// here.
func (s *State) seeGeneration(generation int32) {
	s.mu.Lock()
	s.generation = max(s.generation, generation)
	s.mu.Unlock()
}

func (s *State) setFatal(err error) {
	s.mu.Lock()
	s.fatal = err
	s.mu.Unlock()
}

func (s *State) assign(p int32, now time.Time) {
	s.mu.Lock()
	s.parts[p] = &PartitionState{Recovering: true, Remaining: -1, Since: now, Beat: time.Now()}
	if s.stalled.IsZero() {
		s.stalled, s.stalledSince = time.Now(), true
	}
	s.mu.Unlock()
}

func (s *State) progress(p int32, remaining int64) {
	s.mu.Lock()
	if ps := s.parts[p]; ps != nil {
		ps.Remaining = remaining
	}
	s.mu.Unlock()
}

// recovered marks p processing. When that makes every held partition
// process, done is true and took is how long the worker had not been
// processing everything it holds (the rebalance as this worker saw it).
func (s *State) recovered(p int32, now time.Time) (took time.Duration, generation int32, partitions int, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps := s.parts[p]; ps != nil {
		ps.Recovering, ps.Remaining = false, 0
	}
	for _, ps := range s.parts {
		if ps.Recovering {
			return 0, s.generation, len(s.parts), false
		}
	}
	if !s.joined || s.stalled.IsZero() {
		return 0, s.generation, len(s.parts), false
	}
	took = now.Sub(s.stalled)
	s.stalled = time.Time{}
	return took, s.generation, len(s.parts), true
}

// releasing records that the worker stops processing a partition it holds
// (a revocation or a shutdown): the next Sample shows a rebalance.
func (s *State) releasing() {
	s.mu.Lock()
	s.stalledSince = true
	s.mu.Unlock()
}

func (s *State) revoke(p int32) {
	s.mu.Lock()
	delete(s.parts, p)
	s.mu.Unlock()
}

// Ready reports whether the worker has joined its group and recovered every
// assigned partition; reason says why not.
func (s *State) Ready() (ready bool, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.fatal != nil:
		return false, "failed: " + s.fatal.Error()
	case !s.joined:
		return false, "joining"
	}
	for _, ps := range s.parts {
		if ps.Stalled != nil {
			return false, "cannot commit: " + ps.Stalled.Error()
		}
	}
	for _, ps := range s.parts {
		if ps.Recovering && ps.Waiting != nil {
			return false, "recovering: " + ps.Waiting.Error()
		}
	}
	for _, ps := range s.parts {
		if ps.Recovering {
			return false, "recovering"
		}
	}
	for p, ps := range s.parts {
		if ps.Waiting != nil {
			return false, fmt.Sprintf("partition %d waits: %v", p, ps.Waiting)
		}
	}
	return true, ""
}

// beat records that partition p's loop made progress.
func (s *State) beat(p int32) {
	now := time.Now()
	s.mu.Lock()
	if ps := s.parts[p]; ps != nil {
		ps.Beat = now
	}
	s.mu.Unlock()
}

// watch gives the state a way to see partition p's fetched records and
// its position.
func (s *State) watch(p int32, pending func() int, pos *position) {
	s.mu.Lock()
	if ps := s.parts[p]; ps != nil {
		ps.Pending, ps.pos = pending, pos
	}
	s.mu.Unlock()
}

// ErrStuck is the liveness failure of a processing loop that stopped.
var ErrStuck = errors.New("processing loop stuck")

// Live reports an error when a partition that has records waiting has not
// made progress for stall: the process is stuck and restarting it helps.
// Waiting for brokers (retries) and recovering count as progress.
func (s *State) Live(stall time.Duration) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, ps := range s.parts {
		lagging := ps.Pending != nil && ps.Pending() > 0
		if lagging && !ps.Recovering && now.Sub(ps.Beat) > stall {
			return fmt.Errorf("%w: partition %d has records waiting and made no progress for %s", ErrStuck, p, now.Sub(ps.Beat).Round(time.Second))
		}
	}
	return nil
}

// stall records that partition p cannot commit (err), or can again (nil).
func (s *State) stall(p int32, err error) {
	s.mu.Lock()
	if ps := s.parts[p]; ps != nil {
		ps.Stalled = err
	}
	s.mu.Unlock()
}

// waiting records why partition p's recovery or processing waits (err),
// or that it goes on again (nil). A wait counts as progress for Live.
func (s *State) waiting(p int32, err error) {
	s.mu.Lock()
	if ps := s.parts[p]; ps != nil {
		ps.Waiting = err
		ps.Beat = time.Now()
	}
	s.mu.Unlock()
}

// Assigned returns the partitions this worker holds, in order, and which of
// them are still recovering.
func (s *State) Assigned() (all, recovering []int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, ps := range s.parts {
		all = append(all, p)
		if ps.Recovering {
			recovering = append(recovering, p)
		}
	}
	slices.Sort(all)
	slices.Sort(recovering)
	return all, recovering
}

// Recovered returns the assigned partitions that are processing (recovery
// done), in order.
func (s *State) Recovered() []int32 {
	all, recovering := s.Assigned()
	out := all[:0:0]
	for _, p := range all {
		if !slices.Contains(recovering, p) {
			out = append(out, p)
		}
	}
	return out
}

// PartitionView is one held partition as a status page shows it.
type PartitionView struct {
	Partition  int32
	Recovering bool
	Remaining  int64     // changelog records left to replay (-1: not measured yet)
	Since      time.Time // when it was assigned (the runtime's clock)
	Waiting    string    // why its recovery, or its next record, waits; "" when it does not
	Stalled    string    // why it cannot commit; "" when it can
	Position   Position  // Next is -1 until it processes
}

// View is the state as a status page reads it: the group and every held
// partition, in order. Unlike Sample, reading it changes nothing, so a page
// polling it never hides a rebalance from the metrics.
type View struct {
	Joined      bool
	Generation  int32
	Rebalancing bool
	Partitions  []PartitionView
}

// View reads the state for a status page.
func (s *State) View() View {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := View{Joined: s.joined, Generation: s.generation, Rebalancing: !s.stalled.IsZero()}
	if s.live != nil {
		v.Generation = max(v.Generation, s.live())
	}
	for p, ps := range s.parts {
		pv := PartitionView{Partition: p, Recovering: ps.Recovering, Remaining: ps.Remaining, Since: ps.Since,
			Position: Position{Next: -1, Committed: -1}}
		if ps.Waiting != nil {
			pv.Waiting = ps.Waiting.Error()
		}
		if ps.Stalled != nil {
			pv.Stalled = ps.Stalled.Error()
		}
		if ps.pos != nil {
			pv.Position = ps.pos.get()
		}
		v.Partitions = append(v.Partitions, pv)
	}
	slices.SortFunc(v.Partitions, func(a, b PartitionView) int { return int(a.Partition) - int(b.Partition) })
	return v
}
