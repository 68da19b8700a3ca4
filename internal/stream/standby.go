package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
)

// Standby keeps warm copies of table partitions this worker does not own by
// tailing their changelogs into the local store (Faust's standby tables,
// goka's hot standby, Kafka Streams' standby replicas). When such a
// partition is assigned to this worker, its recovery only replays the
// changelog records that arrived since the copy's last checkpoint.
//
// Which worker keeps which copy is the group leader's choice (Place, from
// the standby-aware strategy of internal/kafka, which also sends a failed
// owner's partitions to the copy least behind: Behind). Until a placement
// arrives (or while the group runs another strategy, in a rolling upgrade)
// it follows from the group alone: members are ordered by their advertised
// URL, and the Replicas members after a partition's owner keep a copy.
type Standby struct {
	Replicas int
	Self     string
	Owners   func() (map[int32]string, error)
	// Tables are separate instances of the worker's tables over the same
	// store: a partition is held by the active instance or the standby one,
	// never both.
	Tables []Table
	Client sarama.Client
	// Reader reads a copy's changelog up to its end when the copy starts,
	// and Restore what comes after; not the recoveries' (see tailTable).
	// Nothing else may consume Restore's partitions.
	Reader  kafka.RangeReader
	Restore sarama.Consumer
	DB      *store.DB
	Log     *slog.Logger
	// Every is how often the standby set is recomputed.
	Every time.Duration
	// SweepEvery is how often the expired windows of the partitions held
	// neither here nor as copies are deleted (sweep); 0 never.
	SweepEvery time.Duration
	// CatchingUp is how many copies catch up at once (0:
	// DefaultRecovering), as recoveries take turns: a copy far behind
	// reads as fast as a recovery and buffers as much. The others wait
	// their turn; a copy gives its turn back once it has caught up, or
	// goes quiet.
	CatchingUp int
	turns      turns
	// copies follows the changelogs with Reader and Restore. A copy
	// started again at once (its partition assigned here and taken away
	// again, as quick rebalances do) waits for its last consumer to let go
	// of the partition (kafka.Exclusive), rather than failing and waiting
	// for the next reconcile.
	copies *kafka.Follower

	mu      sync.Mutex
	active  map[int32]bool // partitions the runtime processes here
	tailers map[int32]*tailer
	// fatal is a copy's error that trying again cannot cure; its own
	// mutex, since the copies set it while mu may be held waiting for them.
	fatalMu sync.Mutex
	fatal   error
	// The copies' distance to their changelogs' ends, and the leader's
	// placement: their own mutex, for the same reason (and so that the
	// group's assignment never waits for a copy to stop).
	posMu     sync.Mutex
	behind    map[copyKey]int64
	placed    []int32
	placedSet bool
	assigned  []int32       // with the placement: copies of these run on, none start
	kick      chan struct{} // a placement arrived: reconcile now
}

// copyKey names the copy of one table partition.
type copyKey struct {
	table string
	p     int32
}

type tailer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Run keeps the standby set up to date, and sweeps the store, until ctx
// ends.
func (s *Standby) Run(ctx context.Context) error {
	if s.Replicas <= 0 && s.SweepEvery <= 0 {
		<-ctx.Done()
		return nil
	}
	s.init()
	kick := s.kicks()
	t := time.NewTicker(s.Every)
	defer t.Stop()
	var swept time.Time
	for {
		if s.Replicas > 0 {
			s.reconcile(ctx)
		}
		if s.SweepEvery > 0 && time.Since(swept) >= s.SweepEvery {
			s.sweep(ctx)
			swept = time.Now()
		}
		s.fatalMu.Lock()
		fatal := s.fatal
		s.fatalMu.Unlock()
		if fatal != nil {
			s.mu.Lock()
			for p := range s.tailers {
				s.stopLocked(p)
			}
			s.mu.Unlock()
			return fmt.Errorf("standby copy: %w", fatal)
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			for p := range s.tailers {
				s.stopLocked(p)
			}
			s.mu.Unlock()
			return nil
		case <-t.C:
		case <-kick:
		}
	}
}

func (s *Standby) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active == nil {
		s.active = map[int32]bool{}
		s.tailers = map[int32]*tailer{}
		s.turns = newTurns(s.CatchingUp)
		s.copies = kafka.NewFollower(s.Reader, s.Restore)
		s.copies.StopOutOfRange = true
	}
}

// Activate is called by the runtime before it recovers partition p: the
// standby copy of p stops (its last batch committed) and is not restarted
// until Deactivate. It reports whether a copy of p was running.
func (s *Standby) Activate(p int32) bool {
	if s == nil {
		return false
	}
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active[p] = true
	running := s.tailers[p] != nil
	s.stopLocked(p)
	return running
}

func (s *Standby) kicks() chan struct{} {
	s.posMu.Lock()
	defer s.posMu.Unlock()
	if s.kick == nil {
		s.kick = make(chan struct{}, 1)
	}
	return s.kick
}

// Place sets the partitions this worker keeps copies of, as the group's
// leader placed them (kafka.Standbys); the copies follow at once. The copy
// of a partition just assigned here runs on until Activate stops it, so
// that its recovery starts from where the copy got to.
func (s *Standby) Place(standby, assigned []int32) {
	if s == nil {
		return
	}
	kick := s.kicks()
	s.posMu.Lock()
	s.placed, s.assigned, s.placedSet = slices.Clone(standby), slices.Clone(assigned), true
	s.posMu.Unlock()
	select {
	case kick <- struct{}{}:
	default:
	}
}

// Behind returns, for each partition with a running copy, how many
// changelog records its copies (all tables) are behind (kafka.Standbys).
func (s *Standby) Behind() map[int32]int64 {
	if s == nil {
		return nil
	}
	s.posMu.Lock()
	defer s.posMu.Unlock()
	out := make(map[int32]int64, len(s.behind))
	for k, n := range s.behind {
		out[k.p] += n
	}
	return out
}

// Stored returns, for each partition this worker neither processes nor
// copies but holds in its store (every table checkpointed: it owned the
// partition, or copied it, before), how many changelog records its state
// is behind (kafka.Standbys). A worker restarted on its volume reports
// the partitions it had, so the group can give them back to it.
func (s *Standby) Stored() map[int32]int64 {
	if s == nil || len(s.Tables) == 0 || s.DB == nil || s.Client == nil {
		return nil
	}
	ps, err := s.Client.Partitions(s.Tables[0].Changelog())
	if err != nil {
		return nil // none reported: the group assigns as if nothing were stored
	}
	s.mu.Lock()
	skip := map[int32]bool{}
	for p := range s.active {
		skip[p] = true
	}
	for p := range s.tailers {
		skip[p] = true
	}
	s.mu.Unlock()
	out := map[int32]int64{}
	for _, p := range ps {
		if skip[p] {
			continue
		}
		if n, ok := s.storedBehind(p); ok {
			out[p] = n
		}
	}
	return out
}

// storedBehind is how far the stored state of partition p is behind its
// changelogs' ends; ok is false unless every table has a checkpoint.
func (s *Standby) storedBehind(p int32) (n int64, ok bool) {
	for _, t := range s.Tables {
		cp, ok, err := s.DB.Checkpoint(t.Name(), p)
		if err != nil || !ok {
			return 0, false
		}
		end, err := s.Client.GetOffset(t.Changelog(), p, sarama.OffsetNewest)
		if err != nil {
			return 0, false
		}
		n += max(end-cp.Offset-1, 0)
	}
	return n, true
}

// Lag calls fn with how far each running copy of a table partition is
// behind its changelog's end.
func (s *Standby) Lag(fn func(table string, p int32, behind int64)) {
	if s == nil {
		return
	}
	s.posMu.Lock()
	defer s.posMu.Unlock()
	for k, n := range s.behind {
		fn(k.table, k.p, n)
	}
}

// setBehind records the distance of table's copy of p to its changelog's
// end; a negative n forgets the copy.
func (s *Standby) setBehind(table string, p int32, n int64) {
	s.posMu.Lock()
	defer s.posMu.Unlock()
	if s.behind == nil {
		s.behind = map[copyKey]int64{}
	}
	if n < 0 {
		delete(s.behind, copyKey{table, p})
		return
	}
	s.behind[copyKey{table, p}] = n
}

// Deactivate is called by the runtime once it no longer processes p.
func (s *Standby) Deactivate(p int32) {
	if s == nil {
		return
	}
	s.init()
	s.mu.Lock()
	delete(s.active, p)
	s.mu.Unlock()
}

// Partitions lists the partitions this worker keeps standby copies of.
func (s *Standby) Partitions() []int32 {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int32, 0, len(s.tailers))
	for p := range s.tailers {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func (s *Standby) stopLocked(p int32) {
	if tl := s.tailers[p]; tl != nil {
		tl.cancel()
		<-tl.done
		delete(s.tailers, p)
	}
}

// desired computes the partitions this worker should keep copies of: the
// leader's placement, else the rule of the group's order. keep are those
// whose running copy may run on (just assigned here), but not start.
func (s *Standby) desired() (want, keep map[int32]bool, err error) {
	s.posMu.Lock()
	placed, assigned, ok := s.placed, s.assigned, s.placedSet
	s.posMu.Unlock()
	if ok {
		want, keep = make(map[int32]bool, len(placed)), make(map[int32]bool, len(assigned))
		for _, p := range placed {
			want[p] = true
		}
		for _, p := range assigned {
			keep[p] = true
		}
		return want, keep, nil
	}
	owners, err := s.Owners()
	if err != nil {
		return nil, nil, err
	}
	members := []string{s.Self}
	for _, u := range owners {
		if !slices.Contains(members, u) {
			members = append(members, u)
		}
	}
	slices.Sort(members)
	want = map[int32]bool{}
	if len(members) < 2 {
		return want, nil, nil
	}
	for p, owner := range owners {
		i := slices.Index(members, owner)
		for k := 1; k <= s.Replicas && k < len(members); k++ {
			if members[(i+k)%len(members)] == s.Self {
				want[p] = true
			}
		}
	}
	return want, nil, nil
}

func (s *Standby) reconcile(ctx context.Context) {
	want, keep, err := s.desired()
	if err != nil {
		s.Log.Debug("standby: group members unknown", "error", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, tl := range s.tailers {
		select {
		case <-tl.done: // failed; started again below if still wanted
			delete(s.tailers, p)
			continue
		default:
		}
		if !want[p] && !keep[p] || s.active[p] {
			s.stopLocked(p)
			s.Log.Info("standby copy stopped", "partition", p)
		}
	}
	for p := range want {
		if s.active[p] || s.tailers[p] != nil {
			continue
		}
		tctx, cancel := context.WithCancel(ctx)
		tl := &tailer{cancel: cancel, done: make(chan struct{})}
		s.tailers[p] = tl
		s.Log.Info("standby copy started", "partition", p)
		go func() {
			defer close(tl.done)
			if err := s.tail(tctx, p); err != nil && !errors.Is(err, context.Canceled) {
				var derr *table.DefinitionError
				if kafka.Fatal(err) || errors.As(err, &derr) {
					s.fatalMu.Lock()
					s.fatal = err
					s.fatalMu.Unlock()
					return
				}
				s.Log.Warn("standby copy failed; retrying at the next reconcile", "partition", p, "error", err)
			}
		}()
	}
}

// tail follows every table's changelog partition p into the store until ctx
// ends, committing a batch with a checkpoint at least every second. It
// starts once the copy has a turn to catch up (CatchingUp), and gives the
// turn back when every table's copy has settled.
func (s *Standby) tail(ctx context.Context, p int32) error {
	release, err := s.turns.take(ctx, func() {
		s.Log.Info("standby copy waits its turn: other copies are catching up", "partition", p, "at_once", cap(s.turns))
	})
	if err != nil {
		return err
	}
	s.Log.Debug("standby copy catching up", "partition", p)
	end := sync.OnceFunc(func() {
		s.Log.Debug("standby copy's turn ends", "partition", p)
		release()
	})
	defer end()
	var unsettled atomic.Int32
	unsettled.Store(int32(len(s.Tables)))
	settled := func() {
		if unsettled.Add(-1) == 0 {
			end()
		}
	}
	// One table's copy failing stops the others, so that the copy of the
	// partition fails as a whole and the next reconcile starts it again.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(s.Tables))
	for _, t := range s.Tables {
		wg.Go(func() {
			if err := s.tailTable(ctx, t, p, settled); err != nil {
				errs <- fmt.Errorf("%s: %w", t.Name(), err)
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// tailTable keeps the copy of t's partition p; settled is called once,
// when the copy has caught up or gone quiet.
func (s *Standby) tailTable(ctx context.Context, t Table, p int32, settled func()) error {
	defer t.Revoke(p) // also after a failed start: Revoke of a partition not held is a no-op
	start, hwm, _, err := replayRange(ctx, t, s.Client, p, s.Log.With("partition", p, "table", t.Name()), nil)
	if err != nil {
		return err
	}
	topic := t.Changelog()
	pc := s.copies.Follow(topic, p, start)
	// Not waited for: Activate holds the standby's lock while the copy
	// ends, and the consumer lets go only after its fetch in flight
	// returns, which for a copy at its changelog's end is a long poll.
	// (Recoveries read with a consumer of their own.)
	defer pc.AsyncClose()

	c := &standbyCopy{s: s, t: t, p: p, b: s.DB.NewBatch(), last: start - 1, hwm: hwm, pc: pc, settled: settled}
	defer func() { c.b.Discard() }()
	defer s.setBehind(t.Name(), p, -1)
	c.measure()
	c.logCaughtUp(false)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	errs := pc.Errors()
	dc, _ := t.(definitionChecker)
	for {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				// The follow stops at an error it does not retry (an
				// offset out of range: retention, DeleteRecords, a
				// recreated topic). Keep what was copied; the next
				// reconcile starts the copy again from its checkpoint or
				// the log start.
				if err := c.commit(); err != nil {
					return err
				}
				return fmt.Errorf("changelog consumer of %s/%d stopped: %w", topic, p, closedCause(pc))
			}
			if dc != nil {
				if err := checkDefinition(dc, m); err != nil {
					return err
				}
			}
			if err := t.Restore(p, c.b, m.Key, m.Value, m.Timestamp); err != nil {
				return err
			}
			c.last, c.n = m.Offset, c.n+1
			c.settleNearEnd()
			if c.n >= restoreBatch {
				if err := c.commit(); err != nil {
					return err
				}
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil // closed with Messages
				break
			}
			if kafka.Fatal(err) {
				return fmt.Errorf("changelog %s/%d: %w", topic, p, err)
			}
			// sarama retries what it can (a leader move, a broken
			// connection) and closes Messages after anything else.
			s.Log.Debug("standby copy fetch error", "partition", p, "table", t.Name(), "error", err)
		case <-tick.C:
			quiet := c.n == 0
			if err := c.commit(); err != nil {
				return err
			}
			c.measure()
			if quiet {
				c.logCaughtUp(true)
				c.settle() // waiting on a broker buffers nothing
			}
		case <-ctx.Done():
			return c.commit()
		}
	}
}

// closedCause is the error a closed partition consumer left, if any.
func closedCause(pc sarama.PartitionConsumer) error {
	select {
	case err, ok := <-pc.Errors():
		if ok && err != nil {
			return err
		}
	default:
	}
	return errors.New("no error reported")
}

// standbyCopy is the copy of one table partition that tailTable keeps: b
// holds the n records applied since its last commit, up to offset last.
type standbyCopy struct {
	s        *Standby
	t        Table
	p        int32
	b        *store.Batch
	last     int64
	n        int
	hwm      int64 // the end of the changelog when the copy started
	caughtUp bool
	pc       sarama.PartitionConsumer
	settled  func() // nil once called
}

// nearEnd reports whether at most one offset of the end the copy measured
// at its start is left: nearly always a transaction's commit marker,
// which a read_committed consumer never receives.
func (c *standbyCopy) nearEnd() bool { return c.last+2 >= c.hwm }

// settleNearEnd settles the copy once it is near its end.
func (c *standbyCopy) settleNearEnd() {
	if c.nearEnd() {
		c.settle()
	}
}

// settle tells tail, once, that the copy no longer needs its turn.
func (c *standbyCopy) settle() {
	if c.settled != nil {
		c.settled()
		c.settled = nil
	}
}

// measure records how far the copy is behind the changelog's end, as the
// consumer last saw it. A caught-up copy read read_committed may stay one
// record short: a transaction's commit marker.
func (c *standbyCopy) measure() {
	end := max(c.pc.HighWaterMarkOffset(), c.hwm)
	c.s.setBehind(c.t.Name(), c.p, max(end-c.last-1, 0))
}

// commit writes the records applied since the last commit, with their
// checkpoint.
func (c *standbyCopy) commit() error {
	if c.n == 0 {
		return nil
	}
	if err := c.t.Recovered(c.p, c.b, c.last); err != nil {
		return err
	}
	if err := c.b.Commit(); err != nil {
		return err
	}
	c.b, c.n = c.s.DB.NewBatch(), 0
	c.s.Log.Debug("standby copy committed", "partition", c.p, "table", c.t.Name(), "offset", c.last)
	c.logCaughtUp(false)
	return nil
}

// logCaughtUp says once that the copy reached the end the changelog had
// when it started. A quiet copy (nothing came for a commit interval) may
// be one offset short of it: a transaction's commit marker, which a
// read_committed consumer never receives.
func (c *standbyCopy) logCaughtUp(quiet bool) {
	c.settleNearEnd()
	if !c.caughtUp && (c.last+1 >= c.hwm || quiet && c.nearEnd()) {
		c.caughtUp = true
		c.s.Log.Info("standby copy caught up", "partition", c.p, "table", c.t.Name(), "offset", c.last)
	}
}
