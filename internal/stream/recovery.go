package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
)

const (
	// restoreBatch is how many changelog records go into one store batch
	// (with a checkpoint) while recovering, so a crash during a long
	// recovery resumes where it stopped.
	restoreBatch = 20000
	// loadFrom is the length of replay from which recovery writes its
	// batches as table files the store ingests (store.NewLoadBatch),
	// skipping the memtable. A shorter replay, such as a restart's
	// catch-up or a small partition moving in a rebalance, is not worth a
	// file and its syncs: they added tens of milliseconds to the stop of
	// each partition a cooperative rebalance moves. From 4,096 a file
	// pays: a worker recovering 64 partitions of 1 M changelog records
	// (views replays of some 14,000 records) took 0.64 to 1.39 s against
	// 1.04 to 1.96 s with files from 20,000 records (six pairs in turns).
	loadFrom = 4096
	// progressEvery is how often a long recovery logs its progress.
	progressEvery = 5 * time.Second
	// quietCheck is how long a replay waits for a record before it asks
	// the broker what is left below the end offset: compaction and
	// transaction markers leave gaps, so the offset just below the end may
	// never be delivered, and only the broker can tell such a gap from
	// records that are late (a leader move, a broker restarting).
	quietCheck = 200 * time.Millisecond
	// markerCheck is quietCheck when only the last offset below the end is
	// left of a replay: that is nearly always the commit
	// marker of the changelog's last transaction, which is never
	// delivered, and every new owner and activated standby would wait
	// quietCheck for it.
	markerCheck = 5 * time.Millisecond
	// stallCheck is how often a replay that is waiting for records it
	// knows are there asks again, and stallLogEvery how often it says so.
	stallCheck    = time.Second
	stallLogEvery = 5 * time.Second
)

// errRevoked ends a recovery whose partition was taken away meanwhile.
var errRevoked = errors.New("partition revoked during recovery")

// restoring is the recovery of one table partition.
type restoring struct {
	t     Table
	log   *slog.Logger
	start int64 // first offset to replay
	// end is the offset recovery replays up to: the last stable offset,
	// measured when it began.
	end    int64
	pc     sarama.PartitionConsumer
	left   atomic.Int64 // records left to replay, for the partition's progress
	stored bool         // replay starts from a checkpoint in the store
}

// recover replays each table's changelog partition from the offset after the
// stored checkpoint to the high watermark. All tables' replays are started
// together so their fetches overlap, once the partition has a recovery slot
// (takeSlot). While it runs, the claim may deliver a source record (kept in
// w.pending for processing afterwards) or be revoked (errRevoked).
func (w *partitionWorker) recover(ctx context.Context, msgs <-chan *sarama.ConsumerMessage) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer w.watchClaim(msgs, cancel)()
	var rs []*restoring
	defer func() {
		for _, r := range rs {
			if r.pc != nil {
				r.pc.AsyncClose()
			}
		}
	}()
	var total int64
	for _, t := range w.r.o.Tables {
		r, err := w.prepare(ctx, t)
		if err != nil {
			return stopped(ctx, fmt.Errorf("recover %s: %w", t.Name(), err))
		}
		rs = append(rs, r)
		total += max(r.end-r.start, 0)
		w.fromStore = w.fromStore || r.stored
	}
	w.replayed = total
	w.r.o.State.progress(w.p, total)
	for _, r := range rs {
		w.r.o.Hooks.RecoveryProgress(r.t.Name(), w.p, max(r.end-r.start, 0), -1, 0)
	}
	if total > 0 {
		release, err := w.takeSlot(ctx, total)
		if err != nil {
			return stopped(ctx, err)
		}
		defer release()
		for _, r := range rs {
			w.open(r)
		}
	}
	// Every table's replay runs at once: a changelog that nobody reads
	// fills its consumer's buffer, and sarama then holds back the fetches
	// of every partition of that broker.
	errs := make([]error, len(rs))
	var replays sync.WaitGroup
	for i, r := range rs {
		replays.Go(func() {
			if err := w.replay(ctx, r, rs); err != nil {
				errs[i] = fmt.Errorf("recover %s: %w", r.t.Name(), err)
				cancel(err)
			}
		})
	}
	replays.Wait()
	if err := context.Cause(ctx); err != nil {
		// The first failure, not the cancellations it caused.
		for _, e := range errs {
			if e != nil && !errors.Is(e, context.Canceled) {
				return e
			}
		}
		return err
	}
	w.r.o.State.progress(w.p, 0)
	return nil
}

// watchClaim keeps, while a recovery runs, the one source record the claim
// may deliver meanwhile (w.pending, for after recovery), or cancels the
// recovery with errRevoked when the claim is revoked. The returned func
// stops watching; w.pending may be read once it has returned.
func (w *partitionWorker) watchClaim(msgs <-chan *sarama.ConsumerMessage, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Go(func() {
		select {
		case m, ok := <-msgs:
			if !ok {
				cancel(errRevoked)
				return
			}
			w.pending = m
		case <-done:
		}
	})
	return func() {
		close(done)
		watcher.Wait()
	}
}

// stopped is err, or why ctx ended when it did (a revocation, errRevoked).
func stopped(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

// DefaultRecovering is how many partitions of a worker replay their
// changelogs at once. Each replay holds its consumers' buffers and a store
// batch, so with all of them replaying a recovery's memory grew with the
// partitions: a worker given 64 partitions (1 M changelog records) peaked
// at 400 to 436 MiB under its 410 MiB memory limit. At 16 it peaked at 204
// to 247 MiB and took 1.44 to 2.10 s against 1.53 to 2.30 s (three runs
// each); at 8 it took 2.2 s and more, as each replay's fetch round trips
// were no longer overlapped.
const DefaultRecovering = 16

// takeSlot waits until fewer than Options.Recovering partitions replay,
// and returns what gives the slot back. Partitions take slots in the order
// they ask; one that waits says so in the log and in /ready/'s reason, and
// the records it has left show on the monitor meanwhile.
func (w *partitionWorker) takeSlot(ctx context.Context, records int64) (release func(), err error) {
	asked := time.Now()
	release, err = w.r.turns.take(ctx, func() {
		n := cap(w.r.turns)
		w.log.Info("recovery waits its turn: other partitions are replaying", "records", records, "at_once", n)
		w.r.o.State.waiting(w.p, fmt.Errorf("partition %d waits its turn to replay (%d at once)", w.p, n))
	})
	w.r.o.State.waiting(w.p, nil)
	if err != nil {
		return nil, err
	}
	w.log.Info("replaying", "records", records, "waited", time.Since(asked).Round(time.Millisecond).String())
	return release, nil
}

// turns bounds how many replays run at once: each takes a turn, and gives
// it back when it no longer needs to read fast (its consumers' buffers
// and store batches are what a turn bounds).
type turns chan struct{}

func newTurns(n int) turns {
	if n <= 0 {
		n = DefaultRecovering
	}
	return make(turns, n)
}

// take returns once a turn is free, in the order of asking, or with why
// ctx ended; waiting, when set, runs first if the turn must be waited
// for. release gives the turn back; calling it again does nothing.
func (t turns) take(ctx context.Context, waiting func()) (release func(), err error) {
	select {
	case t <- struct{}{}:
		return t.releaser(), nil
	default:
	}
	if waiting != nil {
		waiting()
	}
	select {
	case t <- struct{}{}:
		if ctx.Err() != nil { // both were ready, and select took the turn
			<-t
			return nil, context.Cause(ctx)
		}
		return t.releaser(), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (t turns) releaser() func() {
	var once sync.Once
	return func() { once.Do(func() { <-t }) }
}

// prepare reads the stored checkpoint and the changelog's offsets and
// decides where replay starts.
func (w *partitionWorker) prepare(ctx context.Context, t Table) (*restoring, error) {
	log := w.log.With("table", t.Name(), "changelog", t.Changelog())
	waiting := func(err error) { w.r.o.State.waiting(w.p, err) }
	defer waiting(nil)
	start, end, stored, err := replayRange(ctx, t, w.r.o.Client, w.p, log, waiting)
	if err != nil {
		return nil, err
	}
	log.Info("recovering", "from_offset", start, "end_offset", end, "records", max(end-start, 0), "stored", stored)
	rs := &restoring{t: t, log: log, start: start, end: end, stored: stored}
	rs.left.Store(max(end-start, 0))
	return rs, nil
}

// open starts the changelog reader of a replay with anything to replay.
func (w *partitionWorker) open(rs *restoring) {
	if rs.start < rs.end {
		rs.pc = w.r.o.Restore.ConsumeRange(rs.t.Changelog(), w.p, rs.start, rs.end)
	}
}

// transient marks an error that passes by itself, for patiently.
type transient struct{ err error }

func (e *transient) Error() string { return e.err.Error() }
func (e *transient) Unwrap() error { return e.err }

// patiently calls fn until it succeeds, ctx ends, or it fails with an error
// that trying again will not cure; meanwhile it tells waiting (may be nil)
// and the log, at most every stallLogEvery, why it waits.
func patiently(ctx context.Context, log *slog.Logger, waiting func(error), fn func() error) error {
	pause := 100 * time.Millisecond
	var logged time.Time
	for {
		err := fn()
		var te *transient
		if err == nil || ctx.Err() != nil || !(kafka.Retriable(err) || errors.As(err, &te)) {
			return err
		}
		if waiting != nil {
			waiting(err)
		}
		if now := time.Now(); now.Sub(logged) >= stallLogEvery {
			logged = now
			log.Warn("waiting for the brokers", "error", err, "retry_in", pause.String())
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return ctx.Err()
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// replayRange assigns table partition p and decides where its changelog
// replay starts: after the stored checkpoint, or at the log start when the
// store holds nothing or is ahead of the changelog (then it is wiped). It
// ends at the last stable offset (the changelogs are read read_committed).
// stored reports whether the store's contents are kept.
// Recovery and standby copies share it.
//
// Errors of the brokers that pass (a leader moving) are waited out until
// ctx ends, telling waiting (may be nil) why.
func replayRange(ctx context.Context, t Table, client sarama.Client, p int32, log *slog.Logger, waiting func(error)) (start, end int64, stored bool, err error) {
	topic := t.Changelog()
	cp, stored, err := t.Assign(p)
	if err != nil {
		return 0, 0, false, err
	}
	var hwm, low int64
	err = patiently(ctx, log, waiting, func() (err error) {
		if hwm, err = client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return fmt.Errorf("high watermark of %s/%d: %w", topic, p, err)
		}
		if end, err = lastStableOffset(client, topic, p); err != nil {
			return fmt.Errorf("last stable offset of %s/%d: %w", topic, p, err)
		}
		if low, err = client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
			return fmt.Errorf("log start of %s/%d: %w", topic, p, err)
		}
		return nil
	})
	if err != nil {
		return 0, 0, false, err
	}
	if !stored {
		return low, end, false, nil
	}
	// Against the high watermark: a stored offset is always of a record
	// the changelog holds, of a committed transaction.
	if cp.Offset+1 > hwm {
		log.Warn("local store is ahead of the changelog; wiping the partition and rebuilding it from the start",
			"stored_offset", cp.Offset, "high_watermark", hwm)
		if err := t.Wipe(p); err != nil {
			return 0, 0, false, err
		}
		return low, end, false, nil
	}
	return max(cp.Offset+1, low), end, true, nil
}

// replay applies the changelog records of one table partition to the store,
// committing a batch with a checkpoint every restoreBatch records. all are
// the replays of the partition's tables, for its progress.
//
// It ends when it has applied every record below the end offset measured
// at the start, and never because the consumer went quiet: a quiet
// consumer may be waiting out a leader move. When nothing arrives for
// quietCheck it asks the broker (nextRecord) whether a record is left
// below the end; if none is, the rest is a gap and the replay is done;
// if one is, it waits, says why (log, /ready/), and asks again. The
// checkpoint never passes what was applied or shown to be a gap.
func (w *partitionWorker) replay(ctx context.Context, rs *restoring, all []*restoring) error {
	r := w.r
	rp := &replayer{w: w, rs: rs, all: all, last: rs.start - 1}
	rp.load = rs.pc != nil && rs.end-rs.start >= loadFrom
	rp.b = rp.newBatch()
	defer func() { rp.b.Discard() }()
	if rs.pc == nil {
		// Nothing to replay: still report the finished recovery (0 left),
		// and close the "recovering" line as a replay does, so that every
		// table's recovery in the log ends with a "recovered" line.
		r.o.Hooks.RecoveryProgress(rs.t.Name(), w.p, 0, 0, 0)
		if err := rp.commit(true); err != nil {
			return err
		}
		rs.log.Info("recovered", "records", 0, "seconds", 0, "records_per_second", 0)
		return nil
	}
	rp.began = time.Now() // recovery takes wall time, whatever the event clock
	rp.nextLog = rp.began.Add(progressEvery)
	rp.dc, _ = rs.t.(definitionChecker)
	stall := stallNotice{w: w, rs: rs}
	quiet := time.NewTimer(r.quietAfter(rp.last, rs.end))
	defer quiet.Stop()
	markerAsked := false
	errs := rs.pc.Errors()
	for rp.last+1 < rs.end {
		select {
		case m, ok := <-rs.pc.Messages():
			if !ok {
				if err := w.reopen(rs, &rp.last); err != nil {
					return err
				}
				if rs.pc != nil {
					errs = rs.pc.Errors()
				}
				quiet.Reset(quietCheck)
				continue
			}
			if err := rp.apply(m); err != nil {
				return err
			}
			stall.clear()
			quiet.Reset(r.quietAfter(rp.last, rs.end)) // since Go 1.23 Reset drops a pending expiry
		case err, ok := <-errs:
			if !ok {
				errs = nil // closed with Messages, which reopen handles
				continue
			}
			// sarama retries fetch errors itself (a leader move, a broken
			// connection) and closes Messages after an offset out of
			// range; one that trying again cannot cure stops the worker.
			if kafka.Fatal(err) {
				return fmt.Errorf("replay %s/%d: %w", rs.t.Changelog(), w.p, err)
			}
			stall.set(fmt.Errorf("fetch %s/%d: %w", rs.t.Changelog(), w.p, err))
		case <-quiet.C:
			if wait := rp.askLeader(ctx, &markerAsked, &stall); wait > 0 {
				quiet.Reset(wait)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	stall.clear()
	return rp.finish()
}

// replayer is one replay of a table partition's changelog under way.
type replayer struct {
	w   *partitionWorker
	rs  *restoring
	all []*restoring
	// b holds what was applied since the last commit; last is the offset
	// of the last record applied or shown to be a gap.
	b              *store.Batch
	load           bool // b is a store.NewLoadBatch
	last, replayed int64
	began, nextLog time.Time
	dc             definitionChecker
	// rate is the replay's recent speed in records per second, for the
	// ETA: an average of the speed between progress reports, each weighing
	// more than the ones before it. An average since the start would count
	// the set-up before the first record and overstate the time left.
	rate         float64
	rateAt       time.Time
	rateReplayed int64
}

// commit writes the batch with its checkpoint (last). The batches along the
// way need not wait for the disk: a crash loses at most some of them, and
// the next recovery resumes from the last that made it. The final one is
// synced, which makes every earlier one durable too. (A load batch's table
// file is durable once ingested, and its checkpoint is synced with it.)
func (rp *replayer) commit(final bool) error {
	if err := rp.rs.t.Recovered(rp.w.p, rp.b, rp.last); err != nil {
		return err
	}
	commit := rp.b.CommitUnsynced
	if final {
		commit = rp.b.Commit
	}
	if err := commit(); err != nil {
		return err
	}
	rp.b = rp.newBatch()
	return nil
}

func (rp *replayer) newBatch() *store.Batch {
	if rp.load {
		return rp.w.r.o.DB.NewLoadBatch()
	}
	return rp.w.r.o.DB.NewBatch()
}

// apply applies m and what is already buffered behind it (up to 1024
// records) without going back to the select of replay.
func (rp *replayer) apply(m *sarama.ConsumerMessage) error {
	rs, t := rp.rs, rp.rs.t
	for drained := 0; ; drained++ {
		if m.Offset >= rs.end {
			// Written after recovery measured the end (a late write of a
			// previous owner): not this recovery's.
			rp.last = rs.end - 1
			return nil
		}
		if rp.dc != nil {
			if err := checkDefinition(rp.dc, m); err != nil {
				return err
			}
		}
		if err := t.Restore(rp.w.p, rp.b, m.Key, m.Value, m.Timestamp); err != nil {
			return err
		}
		rp.last = m.Offset
		rp.replayed++
		if rp.replayed%restoreBatch == 0 {
			if err := rp.commit(false); err != nil {
				return err
			}
			rp.progress()
		}
		if rp.last+1 >= rs.end || drained == 1024 {
			return nil
		}
		var ok bool
		select {
		case m, ok = <-rs.pc.Messages():
		default:
		}
		if !ok {
			return nil
		}
	}
}

// askLeader asks the partition's leader what is left below the end once
// the consumer went quiet. A gap (compaction, transaction markers) ends the
// replay (last moves to the end); records that are there but not delivered
// yet are waited for. It returns when to ask again, 0 when done.
func (rp *replayer) askLeader(ctx context.Context, markerAsked *bool, stall *stallNotice) time.Duration {
	r, rs, last := rp.w.r, rp.rs, rp.last
	next, err := nextRecord(r.o.Client, rs.t.Changelog(), rp.w.p, last+1, rs.end)
	switch {
	case err != nil:
		stall.set(fmt.Errorf("no record after offset %d of the %d below the end; asking the leader: %w", last, rs.end, err))
		return stallCheck
	case next >= rs.end:
		level := slog.LevelInfo
		if last+2 >= rs.end {
			level = slog.LevelDebug // the last transaction's commit marker
		}
		rs.log.Log(ctx, level, "the rest of the changelog holds no records to replay (compacted, or transaction markers)",
			"last_offset", last, "end_offset", rs.end)
		rp.last = rs.end - 1
		return 0
	case !*markerAsked && r.quietAfter(last, rs.end) == markerCheck:
		// Not a marker but the last record, on its way: wait for it as for
		// any other before saying it is late.
		*markerAsked = true
		return quietCheck
	default:
		stall.set(fmt.Errorf("record at offset %d not delivered yet (end offset %d)", next, rs.end))
		return stallCheck
	}
}

// finish commits the last batch, synced, and reports the replay done.
func (rp *replayer) finish() error {
	if err := rp.commit(true); err != nil {
		return err
	}
	r, rs := rp.w.r, rp.rs
	rs.left.Store(0)
	elapsed := time.Since(rp.began)
	r.o.Hooks.RecoveryProgress(rs.t.Name(), rp.w.p, 0, 0, rp.replayed%restoreBatch)
	rs.log.Info("recovered", "records", rp.replayed, "seconds", elapsed.Seconds(),
		"records_per_second", int64(float64(rp.replayed)/max(elapsed.Seconds(), 1e-3)))
	return nil
}

// reopen starts the changelog reader again after it closed, which it does
// after a fatal fetch error: the offset fell out of range because
// retention, DeleteRecords or a recreated topic removed records. Records
// that are gone cannot be replayed; the replay goes on from the log start.
func (w *partitionWorker) reopen(rs *restoring, last *int64) error {
	topic := rs.t.Changelog()
	var cause error = errors.New("no error reported")
	select {
	case err, ok := <-rs.pc.Errors():
		if ok && err != nil {
			cause = err
		}
	default:
	}
	rs.pc.AsyncClose()
	rs.pc = nil
	low, err := w.r.o.Client.GetOffset(topic, w.p, sarama.OffsetOldest)
	if err != nil {
		return fmt.Errorf("replay %s/%d: the changelog consumer stopped (%w), and its log start is unknown: %w", topic, w.p, cause, err)
	}
	hwm, err := w.r.o.Client.GetOffset(topic, w.p, sarama.OffsetNewest)
	if err != nil {
		return fmt.Errorf("replay %s/%d: the changelog consumer stopped (%w), and its high watermark is unknown: %w", topic, w.p, cause, err)
	}
	from := *last + 1
	switch {
	case from > hwm:
		// The changelog lost records this replay already applied: the
		// store is ahead of it, and the next start rebuilds it.
		return fmt.Errorf("replay %s/%d: the changelog ends at %d, before the %d already replayed (recreated or truncated): %w", topic, w.p, hwm, from, cause)
	case from < low:
		rs.log.Warn("changelog records were deleted before recovery replayed them; going on from the log start",
			"from_offset", from, "log_start", low, "cause", cause)
		from = low
	default:
		rs.log.Warn("changelog consumer stopped; starting it again", "from_offset", from, "cause", cause)
	}
	if from >= rs.end {
		*last = rs.end - 1
		return nil
	}
	*last = from - 1
	rs.pc = w.r.o.Restore.ConsumeRange(topic, w.p, from, rs.end)
	return nil
}

// stallNotice makes a replay that waits for records visible: the reason
// goes to the partition's state (and so /ready/), and to the log at most
// every stallLogEvery.
type stallNotice struct {
	w      *partitionWorker
	rs     *restoring
	err    error
	logged time.Time
}

func (s *stallNotice) set(err error) {
	s.err = err
	s.w.r.o.State.waiting(s.w.p, err)
	if now := time.Now(); now.Sub(s.logged) >= stallLogEvery {
		s.logged = now
		s.rs.log.Warn("recovery waiting", "reason", err.Error(), "records_left", s.rs.left.Load())
	}
}

func (s *stallNotice) clear() {
	if s.err != nil {
		s.err = nil
		s.w.r.o.State.waiting(s.w.p, nil)
		s.rs.log.Info("recovery going on again")
	}
}

// progress reports how far the replay got, and the time left at the
// recent speed.
func (rp *replayer) progress() {
	w, rs := rp.w, rp.rs
	left := rs.end - rp.last - 1
	rs.left.Store(left)
	var sum int64
	for _, r := range rp.all {
		sum += r.left.Load()
	}
	w.r.o.State.progress(w.p, sum)
	now := time.Now()
	if !rp.rateAt.IsZero() {
		recent := float64(rp.replayed-rp.rateReplayed) / max(now.Sub(rp.rateAt).Seconds(), 1e-3)
		if rp.rate == 0 {
			rp.rate = recent
		} else {
			rp.rate = 0.5*rp.rate + 0.5*recent
		}
	}
	rp.rateAt, rp.rateReplayed = now, rp.replayed
	eta := time.Duration(-1) // unknown until two reports measured a speed
	if rp.rate > 0 {
		eta = time.Duration(float64(left) / rp.rate * float64(time.Second))
	}
	w.r.o.Hooks.RecoveryProgress(rs.t.Name(), w.p, left, eta, restoreBatch)
	if now.Before(rp.nextLog) {
		return
	}
	rp.nextLog = now.Add(progressEvery)
	etaText := "unknown"
	if eta >= 0 {
		etaText = eta.Round(time.Second).String()
	}
	rs.log.Info("recovery progress", "records_left", left, "records_per_second", int64(rp.rate), "eta", etaText)
}

// quietAfter is how long a replay that applied the records up to last
// waits for the next one before it asks the broker what is left below
// end: markerCheck when only the changelog's last offset is left (its last
// transaction's commit marker, most likely), quietCheck otherwise.
func (r *Runtime) quietAfter(last, end int64) time.Duration {
	if last+2 >= end {
		return markerCheck
	}
	return quietCheck
}
