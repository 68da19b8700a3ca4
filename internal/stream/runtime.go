package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/tracing"
)

// idleCommit is how long a partition must go without records before it
// commits ahead of its interval.
const idleCommit = 50 * time.Millisecond

// A partition that has just worked through a backlog (drainedBacklog
// records or more since its last flush, or since it was last quiet, and
// the broker holds nothing more) commits after drainedIdle without
// records, and without the quarter-interval spacing: the records decide
// how often that can be, at most once per drainedBacklog of them, so a
// sparse stream is not committed more often than before.
const (
	drainedBacklog = 4096
	drainedIdle    = 5 * time.Millisecond
)

// A partition commits ahead of its interval once its tables hold maxDirty
// changed keys; it counts them every dirtyCheckEvery records.
const (
	maxDirty        = 32768
	dirtyCheckEvery = 1024
)

// Changelogs reads the changelog ranges that recoveries replay
// (kafka.RangeReader): records from offset from up to end, in order, on a
// consumer closed by the replay.
type Changelogs interface {
	ConsumeRange(topic string, p int32, from, end int64) sarama.PartitionConsumer
}

// Sources read the source topic's partitions for their claims
// (kafka.Follower): from offset from on (or where sarama.OffsetOldest or
// OffsetNewest is), in order, until closed. A claim's own consumer is then
// paused and only tells of the partition's release.
type Sources interface {
	Follow(topic string, p int32, from int64) sarama.PartitionConsumer
}

// source is what a partition loop reads its records from: the claim's
// consumer or a Sources one.
type source interface {
	Messages() <-chan *sarama.ConsumerMessage
	HighWaterMarkOffset() int64
	Pause()
	Resume()
}

// claimSource reads a claim through its own consumer.
type claimSource struct {
	sarama.ConsumerGroupClaim
	group sarama.ConsumerGroup
}

func (c claimSource) Pause()  { c.group.Pause(map[string][]int32{c.Topic(): {c.Partition()}}) }
func (c claimSource) Resume() { c.group.Resume(map[string][]int32{c.Topic(): {c.Partition()}}) }

// Options wire a Runtime.
type Options struct {
	Topic           string // the source topic
	DeadLetterTopic string
	CommitInterval  time.Duration
	Tables          []Table
	Handler         Handler

	Group   sarama.ConsumerGroup // consumes Topic
	Client  sarama.Client        // reads changelog offsets
	Restore Changelogs           // replays changelogs
	// Sources read the claimed partitions; nil reads them through the
	// claims' consumers.
	Sources Sources
	// Cooperative: the group's protocol is cooperative, where a partition
	// released while the session goes on is told by its claim's Messages
	// closing. With Sources, the claims' consumers then stay open (paused)
	// to tell it; under the eager protocol the session's end tells every
	// release, and they are closed at once, so that the end of a session
	// does not wait on their closing (sarama's consumer looks at paused
	// partitions every 100 ms).
	Cooperative bool
	DB          *store.DB
	State       *State
	// Transactions returns the transactional producer of partition p (a
	// stable transactional id per partition, so the next owner fences this
	// one; see "The membership fence"). Each commit interval is one
	// transaction holding the changelog records, the dead letters and,
	// unless OffsetsAfter, the source offset (exactly-once). Recovery and
	// standbys read the changelogs read_committed.
	Transactions func(p int32) (*kafka.Producer, error)
	// OffsetsAfter, with Transactions, keeps the source offset out of the
	// transaction (at-least-once): each commit interval's transaction holds
	// the changelog records and dead letters only, and the offset is
	// committed once it committed and the store holds the state. The
	// transactional id still fences a previous owner, so a write of an
	// expelled member can never land after the next owner's.
	OffsetsAfter bool
	// GroupID is the consumer group, for the offsets of transactions.
	GroupID string
	// Hooks observe the runtime (metrics); nil observes nothing.
	Hooks Hooks
	// Standby keeps warm copies of partitions this worker does not own;
	// nil keeps none.
	Standby *Standby
	// Committer, when set, commits source offsets over a connection of its
	// own (see kafka.OffsetCommitter); nil commits through the group
	// session, behind its fetches.
	Committer Committer
	// Metadata returns the metadata committed with partition p's offset,
	// where the previous owner left its release time (ReleaseMetadata),
	// for the unprocessed-time figure; nil skips it.
	Metadata func(p int32) (string, bool)
	Log      *slog.Logger
	Clock    func() time.Time
	// Recovering is how many partitions replay their changelogs at once
	// (0: DefaultRecovering); the others wait their turn (see takeSlot).
	Recovering int
}

// ReleaseMetadata is the commit metadata of a partition released at t.
// Other commits carry none.
func ReleaseMetadata(t time.Time) string { return "released:" + strconv.FormatInt(t.UnixMilli(), 10) }

// ReleasedAt reads ReleaseMetadata.
func ReleasedAt(meta string) (time.Time, bool) {
	ms, ok := strings.CutPrefix(meta, "released:")
	n, err := strconv.ParseInt(ms, 10, 64)
	return time.UnixMilli(n), ok && err == nil
}

// Committer commits a group member's source offset (offset is the next
// record to read) on a connection of its own.
type Committer interface {
	Commit(generation int32, member, topic string, p int32, offset int64, metadata string) error
}

// Runtime runs the agent over the partitions the group assigns.
type Runtime struct {
	o Options

	fatalOnce sync.Once
	fatal     chan error

	mu sync.Mutex
	// stop ends Run (fail).
	stop context.CancelFunc
	// expel ends the current group session, so that the member joins
	// again (see expelled).
	expel context.CancelCauseFunc
	// released are the partitions this process released, when and in
	// which generation.
	released map[int32]release
	// sources are the partitions' sources (with Options.Sources), paused
	// while the runtime is (Pause).
	sources map[int32]source
	paused  bool
	// turns are the partitions replaying their changelogs.
	turns turns
}

type release struct {
	at         time.Time
	generation int32
}

// New returns a runtime; Run starts it.
func New(o Options) *Runtime {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Hooks == nil {
		o.Hooks = NopHooks{}
	}
	return &Runtime{o: o, fatal: make(chan error, 1), turns: newTurns(o.Recovering)}
}

// Run consumes until ctx ends or a partition fails in a way the runtime
// cannot recover from. Before it returns, every partition has been flushed
// and committed (on a clean stop) and the group has been left.
func (r *Runtime) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	r.stop = cancel
	r.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() {
		for err := range r.o.Group.Errors() {
			r.consumerError(err)
		}
	})
	var runErr error
	for ctx.Err() == nil {
		sctx, expel := context.WithCancelCause(ctx)
		r.mu.Lock()
		r.expel = expel
		r.mu.Unlock()
		err := r.o.Group.Consume(sctx, []string{r.o.Topic}, (*groupHandler)(r))
		expel(nil)
		select {
		case runErr = <-r.fatal:
			cancel()
		default:
		}
		if runErr != nil || ctx.Err() != nil {
			break
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			break
		}
		var lost *lostError
		if errors.As(context.Cause(sctx), &lost) {
			r.o.Log.Warn("joining the group again after losing membership", "cause", lost.err)
			continue
		}
		if kafka.Fatal(err) {
			runErr = fmt.Errorf("consumer group: %w", err)
			break
		}
		if err != nil {
			r.o.Log.Warn("consumer group session ended; joining again", "error", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	if runErr == nil {
		select {
		case runErr = <-r.fatal: // failed while the loop was ending
		default:
		}
	}
	r.o.State.setJoined(false, 0, nil)
	closeErr := r.o.Group.Close()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	if closeErr != nil {
		return fmt.Errorf("leave group: %w", closeErr)
	}
	return nil
}

// Pause stops fetching from every partition this worker holds; processing
// of what was fetched goes on, and the worker stays in its group.
func (r *Runtime) Pause() { r.hold(true) }

// Resume undoes Pause. The claims' own consumers stay paused when Sources
// read the partitions.
func (r *Runtime) Resume() { r.hold(false) }

func (r *Runtime) hold(paused bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = paused
	switch {
	case r.o.Sources != nil:
	case paused:
		r.o.Group.PauseAll()
	default:
		r.o.Group.ResumeAll()
	}
	for _, s := range r.sources {
		if paused {
			s.Pause()
		} else {
			s.Resume()
		}
	}
}

// openSource returns what partition worker w reads its claim's records
// from, and what closes it.
func (r *Runtime) openSource(w *partitionWorker, claim sarama.ConsumerGroupClaim) (source, func()) {
	if r.o.Sources == nil {
		return claimSource{claim, r.o.Group}, func() {}
	}
	// The claim's consumer is paused before its first fetch (so is its
	// partition in the group's consumer, across assignments).
	r.o.Group.Pause(map[string][]int32{claim.Topic(): {w.p}})
	pc := r.o.Sources.Follow(claim.Topic(), w.p, claim.InitialOffset())
	r.mu.Lock()
	if r.sources == nil {
		r.sources = map[int32]source{}
	}
	r.sources[w.p] = pc
	if r.paused {
		pc.Pause()
	}
	r.mu.Unlock()
	stop := make(chan struct{})
	if c, ok := claim.(interface{ AsyncClose() }); ok && !r.o.Cooperative {
		c.AsyncClose() // the session's end tells the release
	} else {
		go watchRelease(claim, pc, stop)
	}
	go func() {
		for e := range pc.Errors() {
			r.consumerError(e)
		}
	}()
	return pc, func() {
		close(stop)
		r.mu.Lock()
		delete(r.sources, w.p)
		r.mu.Unlock()
		// Not waited for: the claim's release waits on this partition,
		// and the rebalance on the release.
		pc.AsyncClose()
	}
}

// watchRelease closes pc once the claim's Messages close, which tells the
// partition's release, unless stop closes first.
func watchRelease(claim sarama.ConsumerGroupClaim, pc sarama.PartitionConsumer, stop <-chan struct{}) {
	released := claim.Messages()
	for {
		select {
		case _, ok := <-released:
			if !ok {
				pc.AsyncClose()
				return
			}
			// Fetched before the pause: the source reads it too.
		case <-stop:
			return
		}
	}
}

// consumerError handles an error the consumers report: one that trying
// again cannot cure (not authorized, say) stops the worker, since it would
// otherwise leave its partitions silently unprocessed; sarama and the
// sources retry the rest.
func (r *Runtime) consumerError(err error) {
	if kafka.Fatal(err) {
		r.fail(fmt.Errorf("consumer group: %w", err))
		return
	}
	r.o.Log.Warn("consumer group error", "error", err)
}

// resumeSource resumes w's source after a pause of its own, unless the
// runtime is paused.
func (w *partitionWorker) resumeSource() {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	if !w.r.paused {
		w.src.Resume()
	}
}

// fail stops the worker: a partition hit an error it cannot get past, and
// leaving it unprocessed while the member still holds it would stall it.
func (r *Runtime) fail(err error) {
	r.fatalOnce.Do(func() {
		r.o.State.setFatal(err)
		r.fatal <- err
		r.mu.Lock()
		stop := r.stop
		r.mu.Unlock()
		if stop != nil {
			stop()
		}
	})
}

type groupHandler Runtime

func (h *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	r := (*Runtime)(h)
	// Register every claim before saying joined, so readiness waits for all
	// of them rather than for those whose goroutines happened to start
	// first, and never sees a joined worker with nothing registered.
	for _, ps := range sess.Claims() {
		for _, p := range ps {
			r.o.State.assign(p, r.o.Clock())
		}
	}
	r.o.State.setJoined(true, sess.GenerationID(), sess.GenerationID)
	r.o.Log.Info("joined group", "generation", sess.GenerationID(), "member", sess.MemberID(), "claims", sess.Claims())
	return nil
}

func (h *groupHandler) Cleanup(sess sarama.ConsumerGroupSession) error {
	r := (*Runtime)(h)
	r.o.State.setJoined(false, sess.GenerationID(), nil)
	r.o.Log.Info("left group session", "generation", sess.GenerationID())
	return nil
}

func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	r := (*Runtime)(h)
	w := &partitionWorker{r: r, p: claim.Partition(), sess: sess, log: r.o.Log.With("partition", claim.Partition()), last: -1, pos: newPosition()}
	w.log.Info("partition assigned", "generation", sess.GenerationID(), "offset", claim.InitialOffset())
	r.o.State.seeGeneration(sess.GenerationID())
	w.claim = claim
	w.assignedAt = time.Now()
	defer func() { w.log.Info("partition released", "generation", sess.GenerationID()) }()
	if err := w.run(claim); err != nil && !errors.Is(err, errDropped) && !errors.Is(err, releasedError{}) {
		err = fmt.Errorf("partition %d: %w", claim.Partition(), err)
		r.o.Log.Error("partition failed; stopping the worker", "error", err)
		r.fail(err)
		return err
	}
	return nil
}

// partitionWorker owns one assigned partition: recovery, processing and
// flushing all happen on its goroutine, so the tables' write-back caches
// for the partition have a single writer.
type partitionWorker struct {
	r    *Runtime
	p    int32
	sess sarama.ConsumerGroupSession
	log  *slog.Logger

	last int64 // offset of the last processed source record
	// dirtyCheck is the offset from which cacheFull counts again.
	dirtyCheck int64
	flushed    int64 // offset of the last flushed source record
	// uncommitted: the last flush is durable but the coordinator did not
	// take its offset; the next flush commits it again.
	uncommitted bool
	dead        []deadLetter
	// inflight is the flush committing in the background while the loop
	// goes on processing; deadQueued the dead letters of records
	// processed meanwhile, sent once it is done (the producer is its).
	inflight   *inflightFlush
	deadQueued []deadLetter
	lastFlush  time.Time               // when the last flush was done
	quiet      int64                   // the last record processed when the partition last went quiet
	pending    *sarama.ConsumerMessage // a source record received during recovery
	txp        *kafka.Producer         // this partition's transactional producer

	claim      sarama.ConsumerGroupClaim
	src        source // the claim's records
	assignedAt time.Time
	processed  int64     // records processed since the last report to the hooks
	deadCount  int64     // of which dead-lettered
	lastTS     time.Time // record timestamp of the last processed record
	pos        *position // what samples read of last, flushed and lastTS
	now        time.Time // the clock when the current batch was taken
	ev         Event
	// blocked is a record that met ErrUnavailable (blockedErr): await
	// tries it again.
	blocked    *sarama.ConsumerMessage
	blockedErr error
	// What recovery started from: a running standby copy, a checkpoint in
	// the store; and the changelog records it replayed.
	fromCopy, fromStore bool
	replayed            int64
}

func (w *partitionWorker) run(claim sarama.ConsumerGroupClaim) error {
	r := w.r
	r.o.State.assign(w.p, r.o.Clock())
	defer r.o.State.revoke(w.p)
	src, closeSource := r.openSource(w, claim)
	defer closeSource()
	w.src = src
	r.o.State.watch(w.p, func() int { return len(src.Messages()) }, w.pos)
	// The standby copy of this partition (if any) stops before recovery
	// reads the store, and may start again once the partition is released.
	w.fromCopy = r.o.Standby.Activate(w.p)
	defer r.o.Standby.Deactivate(w.p)
	defer func() {
		for _, t := range r.o.Tables {
			t.Revoke(w.p)
		}
	}()
	// Before recovery: starting the producer fences the previous owner and
	// aborts its open transaction, so the changelog's end is final.
	txp, err := r.o.Transactions(w.p)
	if err != nil {
		return err
	}
	w.txp = txp
	defer func() {
		// w.txp: abort may have replaced the producer.
		if err := w.txp.Close(); err != nil {
			w.log.Warn("close transactional producer", "error", err)
		}
	}()
	ctx := w.sess.Context()
	if err := w.recover(ctx, src.Messages()); err != nil {
		if ctx.Err() != nil || errors.Is(err, errRevoked) {
			w.log.Info("recovery stopped: partition revoked or worker stopping")
			return nil // nothing was processed, so nothing to flush
		}
		r.o.Hooks.AssignFailed(w.p)
		return err
	}
	w.resumed()
	w.flushed = claim.InitialOffset() - 1
	w.last = w.flushed
	w.pos.next.Store(w.last + 1)
	if w.flushed >= 0 {
		w.pos.committed.Store(w.flushed + 1) // the offset the claim started from
	}
	r.o.State.beat(w.p)
	if w.pending != nil {
		w.now = r.o.Clock()
		w.begin(w.pending)
		if err := w.process(w.pending); err != nil {
			return err
		}
		w.pending = nil
	}
	// Whatever ends the loop, a flush still in flight finishes before
	// the producer closes and the tables let the partition go.
	defer w.waitInflight()
	return w.loop(ctx, src.Messages())
}

// loop processes the partition's records and commits every commit
// interval, and early when the partition goes quiet, until the partition
// is revoked or the session ends.
func (w *partitionWorker) loop(ctx context.Context, msgs <-chan *sarama.ConsumerMessage) error {
	r := w.r
	// Partitions assigned together would all commit at the same moments and
	// queue behind each other at the producer (one request in flight per
	// broker) and the store; the first commit of each comes at its own
	// point in the interval, which spreads them out.
	phase := r.o.CommitInterval * time.Duration(w.p%16+1) / 17
	ticker := time.NewTicker(phase)
	defer ticker.Stop()
	phased := false
	// Besides every commit interval, a partition that goes quiet commits
	// early (at most every quarter interval): the end of a burst is then
	// durable and committed within about idleCommit, while under steady
	// load the interval alone sets the pace and keeps the coalescing.
	// Quiet means the broker held nothing more as of the last fetch: a
	// pause while it does is a fetch on its way (fetchGap).
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	w.lastFlush = time.Now()
	w.quiet = w.last
	for {
		select {
		case err := <-w.inflightDone():
			if err := w.landed(ctx, err); err != nil {
				return err
			}
		case m, ok := <-msgs:
			revoked, err := w.take(m, ok, msgs)
			if err != nil {
				return err
			}
			if !revoked && w.blocked != nil {
				// What came before the record is committed, so a long
				// wait holds no open transaction or unflushed state.
				if err := w.commit(ctx); err != nil {
					return err
				}
				revoked, err = w.await(ctx, msgs)
				if err != nil {
					return err
				}
			}
			if revoked {
				return w.stop(ctx)
			}
			r.o.State.beat(w.p)
			if w.cacheFull() {
				if err := w.commitBehind(ctx); err != nil {
					return err
				}
			}
			idle.Reset(w.idleFor(msgs))
		case <-idle.C:
			drained := w.drained(msgs)
			w.quiet = w.last
			if w.last == w.flushed || w.fetchGap() {
				break
			}
			if wait := r.o.CommitInterval/4 - time.Since(w.lastFlush); wait > 0 && !drained {
				idle.Reset(wait) // committed a moment ago: commit once that is a quarter interval old
				break
			}
			if err := w.commitBehind(ctx); err != nil {
				return err
			}
		case <-ticker.C:
			if !phased {
				ticker.Reset(r.o.CommitInterval)
				phased = true
			}
			if err := w.commitBehind(ctx); err != nil {
				return err
			}
		case <-ctx.Done():
			return w.stop(ctx)
		}
	}
}

// drained reports whether the partition has worked through a backlog: at
// least drainedBacklog records since its last flush (or the one in
// flight) or since it was last quiet, none waiting in msgs and none more
// in the broker as of the last fetch (a transaction's commit marker may
// follow the last record). A backlog whose end came just after a commit
// in its interval waited a quarter interval for its last records'
// commit otherwise: in the benchmark, one run in two took 0.8 s instead
// of 0.57 s for a million records.
func (w *partitionWorker) drained(msgs <-chan *sarama.ConsumerMessage) bool {
	since := w.flushed
	if w.inflight != nil {
		since = w.inflight.upto
	}
	return w.last-min(since, w.quiet) >= drainedBacklog && len(msgs) == 0 && w.src != nil && !w.fetchGap()
}

// fetchGap reports whether the broker held records past the last one
// taken (and the commit marker that may follow it), as of the last fetch
// that returned records: the partition has nothing to process because
// those are on their way, not because its input ended. Committing in such
// a pause in a backlog cut the interval short: fewer updates coalesced,
// more changelog records per event, which slowed the fetches and made
// more pauses (at 100,000 pages the benchmark's worker settled at
// anywhere from 350,000 to 520,000 events/s; 720,000 to 780,000 without).
func (w *partitionWorker) fetchGap() bool {
	return w.src != nil && w.src.HighWaterMarkOffset() > w.last+2
}

// cacheFull reports whether the partition's tables hold maxDirty changed
// keys or more, checked once every dirtyCheckEvery records: the write-back
// cache is bounded by keys as well as by the interval. With every event a
// new key (a million pages) an interval's keys, and the flush's records
// beside them, took the heap to the worker's memory limit.
func (w *partitionWorker) cacheFull() bool {
	if w.last < w.dirtyCheck {
		return false
	}
	w.dirtyCheck = w.last + dirtyCheckEvery
	n := 0
	for _, t := range w.r.o.Tables {
		n += t.Dirty(w.p)
	}
	return n >= maxDirty
}

// idleFor is how long the partition waits without records before it
// commits ahead of its interval.
func (w *partitionWorker) idleFor(msgs <-chan *sarama.ConsumerMessage) time.Duration {
	if w.drained(msgs) {
		return drainedIdle
	}
	return idleCommit
}

// commit flushes and commits in the loop, after the flush in flight; one
// that failed is done again.
func (w *partitionWorker) commit(ctx context.Context) error {
	if err := w.flushRetrying(ctx, w.settle()); err != nil {
		return w.failed(ctx, err)
	}
	w.lastFlush = time.Now()
	w.report()
	return nil
}

// commitBehind starts a flush whose commit goes on in the background (see
// flushBehind), after the one in flight.
func (w *partitionWorker) commitBehind(ctx context.Context) error {
	if w.inflight != nil {
		if err := w.landed(ctx, <-w.inflight.done); err != nil {
			return err
		}
	}
	if err := w.flushBehind(ctx); err != nil {
		return w.failed(ctx, err)
	}
	return nil
}

// landed ends the flush in flight, which ended with err; one that failed
// is done again in the loop.
func (w *partitionWorker) landed(ctx context.Context, err error) error {
	if err := w.settled(err); err != nil {
		if err := w.flushRetrying(ctx, err); err != nil {
			return w.failed(ctx, err)
		}
	}
	w.lastFlush = time.Now()
	w.report()
	return nil
}

// failed ends the loop after a flush that could not be done: a member
// that lost its place drops the partition, a session that ended releases
// it, and any other failure stops the partition.
func (w *partitionWorker) failed(ctx context.Context, err error) error {
	var lost *lostError
	if errors.As(err, &lost) {
		return w.drop(lost)
	}
	if ctx.Err() != nil {
		return w.release(ctx)
	}
	return err
}

// resumed marks the partition recovered and logs how long it went
// unprocessed: from its release by the previous owner (this process, or
// the release time it committed) to now. After a crash nobody recorded a
// release, and the figure is unknown.
func (w *partitionWorker) resumed() {
	r := w.r
	if took, gen, n, done := r.o.State.recovered(w.p, time.Now()); done {
		w.log.Info("all partitions processing", "rebalance_ms", took.Milliseconds(), "generation", gen, "partitions", n)
		r.o.Hooks.AllProcessing(took, n)
	}
	copied := "none"
	switch {
	case w.fromCopy:
		copied = "standby"
	case w.fromStore:
		copied = "local"
	}
	took := time.Since(w.assignedAt)
	unprocessed := time.Duration(-1)
	if at, ok := w.releasedAt(); ok {
		unprocessed = max(time.Since(at), 0)
		w.log.Info("partition resumed", "unprocessed_ms", unprocessed.Milliseconds(), "generation", w.sess.GenerationID(),
			"recovery_ms", took.Milliseconds(), "replayed", w.replayed, "copy", copied)
	} else {
		w.log.Info("partition resumed", "generation", w.sess.GenerationID(), "unprocessed", "unknown: no release recorded (the previous owner crashed, or the partition is new)",
			"recovery_ms", took.Milliseconds(), "replayed", w.replayed, "copy", copied)
	}
	r.o.Hooks.Replayed(w.p, w.replayed, copied)
	r.o.Hooks.Resumed(w.p, took, unprocessed)
}

// releasedAt is when the partition was last released: as its previous
// owner committed, or else by this process in the rebalance just before.
// A committed release is consumed: the offset is committed again with this
// worker's own metadata, so that the owner after a crash of this one does
// not read it.
func (w *partitionWorker) releasedAt() (time.Time, bool) {
	r := w.r
	r.mu.Lock()
	own, ok := r.released[w.p]
	delete(r.released, w.p)
	r.mu.Unlock()
	if r.o.Metadata != nil {
		if meta, found := r.o.Metadata(w.p); found {
			if at, isRelease := ReleasedAt(meta); isRelease {
				if off := w.claim.InitialOffset(); off >= 0 && r.o.Committer != nil {
					_ = r.o.Committer.Commit(w.sess.GenerationID(), w.sess.MemberID(), r.o.Topic, w.p, off, "")
				}
				return at, true
			}
		}
	}
	// Released here in an older generation, someone else may have held
	// it since.
	return own.at, ok && w.sess.GenerationID() <= own.generation+1
}

// publishRelease records when the partition was released: in this process,
// and as the metadata of one more commit of its offset, for the next
// owner's unprocessed-time figure (an idle partition commits nothing else,
// so its last commit may be minutes old). A failed commit costs only that
// figure.
func (w *partitionWorker) publishRelease() {
	r, at := w.r, time.Now()
	r.mu.Lock()
	if r.released == nil {
		r.released = map[int32]release{}
	}
	r.released[w.p] = release{at: at, generation: w.sess.GenerationID()}
	r.mu.Unlock()
	if w.flushed < 0 || r.o.Committer == nil {
		return
	}
	if err := r.o.Committer.Commit(w.sess.GenerationID(), w.sess.MemberID(), r.o.Topic, w.p, w.flushed+1, ReleaseMetadata(at)); err != nil {
		w.log.Debug("release time not committed", "error", err)
	}
}

// report hands the figures of the last commit interval to the hooks.
func (w *partitionWorker) report() {
	h := w.r.o.Hooks
	if w.processed > 0 {
		h.Processed(w.p, w.processed, w.deadCount)
		w.processed, w.deadCount = 0, 0
	}
	if !w.uncommitted {
		w.pos.committed.Store(w.flushed + 1)
	}
	w.r.o.State.beat(w.p)
}

// begin notes m as the claim's first record, if it is (the claim has
// processed nothing: offsets are never negative): a group with no
// committed offset counts its records in flight from there.
func (w *partitionWorker) begin(m *sarama.ConsumerMessage) {
	if w.last < 0 {
		w.pos.from.Store(m.Offset)
	}
}

// take processes m (ok false: the partition was revoked) and what is
// already buffered behind it, up to 1024 records, without going back to
// the select of loop. One clock reading serves them all.
func (w *partitionWorker) take(m *sarama.ConsumerMessage, ok bool, msgs <-chan *sarama.ConsumerMessage) (revoked bool, err error) {
	w.now = w.r.o.Clock()
	if ok {
		w.begin(m)
	}
	defer func() {
		w.pos.next.Store(w.last + 1)
		if !w.lastTS.IsZero() {
			w.pos.lastTS.Store(w.lastTS.UnixNano())
		}
	}()
	for drained := 0; ; drained++ {
		if !ok {
			return true, nil
		}
		if err := w.process(m); err != nil {
			if errors.Is(err, ErrUnavailable) {
				w.blocked, w.blockedErr = m, err
				return false, nil
			}
			return false, err
		}
		if drained == 1024 {
			return false, nil
		}
		select {
		case m, ok = <-msgs:
		default:
			return false, nil
		}
	}
}

// Backoff of a record that meets ErrUnavailable.
const (
	awaitFirst = 100 * time.Millisecond
	awaitMax   = 5 * time.Second
)

// await tries the blocked record again with backoff until it goes through,
// then what arrived behind it, in order. The partition is paused meanwhile,
// so what it buffers is bounded, and its Messages channel is still read:
// its closing tells a revocation, which ends the wait with revoked (the
// blocked record and those behind it are not committed, and the next owner
// processes them). The session ending ends it too.
func (w *partitionWorker) await(ctx context.Context, msgs <-chan *sarama.ConsumerMessage) (revoked bool, err error) {
	r := w.r
	w.src.Pause()
	defer w.resumeSource()
	defer r.o.State.waiting(w.p, nil)
	queue := []*sarama.ConsumerMessage{w.blocked}
	cause := w.blockedErr
	w.blocked, w.blockedErr = nil, nil
	backoff, tries := awaitFirst, 0
	for len(queue) > 0 {
		if cause == nil {
			w.now = r.o.Clock()
			if cause = w.process(queue[0]); cause == nil {
				queue = queue[1:]
				w.pos.next.Store(w.last + 1)
				continue
			}
			if !errors.Is(cause, ErrUnavailable) {
				return false, cause
			}
		}
		if tries%20 == 0 {
			w.log.Warn("record waits for an unavailable service; trying again", "offset", queue[0].Offset, "attempt", tries+1, "error", cause)
		}
		r.o.State.waiting(w.p, cause)
		tries++
		timer := time.NewTimer(backoff)
	wait:
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					timer.Stop()
					return true, nil
				}
				queue = append(queue, m)
				continue wait
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return true, nil
			}
			break
		}
		backoff = min(2*backoff, awaitMax)
		cause = nil
	}
	if tries > 0 {
		w.log.Info("service available again: the partition goes on", "attempts", tries+1)
	}
	return false, nil
}

// stop ends processing when the session ends or the partition is revoked.
// While the worker still owns the partition (a rebalance, a revocation or a
// shutdown) it flushes and commits. When the member lost its place in the
// group, another worker may already own the partition, so the unflushed
// updates are dropped and the new owner processes those events again from
// the last commit. sarama does not always say why it ended a session (a
// rejoin answered UNKNOWN_MEMBER_ID ends it with no cause); the flush is
// then safe all the same: a new owner's transactional producer fenced this
// one, which fails (a *lostError) rather than write over the new owner.
func (w *partitionWorker) stop(ctx context.Context) error {
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); lostMembership(cause) {
			return w.drop(cause)
		}
	}
	began := time.Now()
	w.r.o.State.releasing()
	// The flush in flight first; one that failed is part of the last.
	err := w.settle()
	var ce0 *commitError
	if err == nil || errors.As(err, &ce0) {
		err = w.flushWatched(context.Background())
	}
	var lost *lostError
	if errors.As(err, &lost) {
		return w.drop(lost)
	}
	if err != nil {
		w.r.o.State.stall(w.p, err)
	}
	if err == nil && w.uncommitted {
		w.commitAfterRejoin(ctx)
	}
	if err == nil && !w.uncommitted {
		w.publishRelease()
	}
	w.report()
	w.r.o.Hooks.Released(w.p, time.Since(began))
	var ce *commitError
	if errors.As(err, &ce) {
		// The state is durable; only the offset is missing. Whoever owns
		// the partition next processes the events since the last commit
		// again. Stopping the worker would not help.
		w.log.Warn("could not commit the offset when releasing the partition; the events since the last commit will be processed again", "error", err)
		return nil
	}
	var pe *produceError
	if err != nil && ctx.Err() != nil && errors.As(err, &pe) {
		// The session ended (brokers unreachable, say) and the last flush
		// could not reach them either. Nothing was committed, so nothing is
		// lost: the events since the last commit are processed again by
		// whoever owns the partition next. Stopping the worker would help
		// no one.
		w.log.Warn("could not flush at the end of the session; the events since the last commit will be processed again", "error", err)
		return nil
	}
	return err
}

// release stops processing when the session ended while a flush failed,
// and ends the partition's loop (a releasedError): a partition is released
// once, and nothing of it is processed, flushed or committed after that.
func (w *partitionWorker) release(ctx context.Context) error {
	if err := w.stop(ctx); err != nil {
		return err
	}
	return releasedError{}
}

// releasedError ends a partition's loop after release; it is not a failure.
type releasedError struct{}

func (releasedError) Error() string { return "partition released" }

// drop ends processing of a partition whose member lost, or may have lost,
// its membership: the updates since the last flush are not written (the
// tables forget them when the partition is revoked), nothing is committed,
// and the session ends so that the member joins again. Whoever owns the
// partition next, this worker included, recovers it from the changelog and
// processes the events since the last commit again.
func (w *partitionWorker) drop(cause error) error {
	w.waitInflight()
	w.log.Warn("lost group membership; dropping unflushed updates for the next owner to redo",
		"cause", cause, "unflushed_records", w.last-w.flushed)
	lost, ok := cause.(*lostError)
	if !ok {
		lost = &lostError{cause}
	}
	w.r.expelled(lost)
	w.dead, w.deadQueued = nil, nil
	return errDropped
}

// errDropped ends a partition's loop after drop; it is not a failure.
var errDropped = errors.New("partition dropped after losing group membership")

// commitOffset commits the source offset after the last flushed record. A
// commit that does not go through
// loses nothing (the state is durable; a new owner would process the events
// since the previous commit again), and the next flush tries it again:
//   - rejected because the group is rebalancing while this member keeps the
//     partition (cooperative), it waits for the new generation;
//   - rejected because the member left the group, the session ends anyway;
//   - failed otherwise (brokers unreachable), it is a failed flush: the
//     partition shows as stalled and flushRetrying tries again.
func (w *partitionWorker) commitOffset() error { return w.commitOffsetAt(w.flushed + 1) }

// commitOffsetAt commits next, the offset after the last flushed record.
func (w *partitionWorker) commitOffsetAt(next int64) error {
	r := w.r
	if r.o.Committer == nil {
		w.sess.MarkOffset(r.o.Topic, w.p, next, "")
		w.sess.Commit()
		return nil
	}
	err := r.o.Committer.Commit(w.sess.GenerationID(), w.sess.MemberID(), r.o.Topic, w.p, next, "")
	w.uncommitted = err != nil
	switch {
	case err == nil:
		// Not a proof of membership for the fence: the coordinator takes
		// commits of a member while a rebalance that will remove it is
		// pending.
		return nil
	case errors.Is(err, sarama.ErrIllegalGeneration) || errors.Is(err, sarama.ErrRebalanceInProgress):
		w.log.Info("offset commit deferred: the group is rebalancing", "offset", next, "generation", w.sess.GenerationID(), "error", err)
		return nil
	case removed(err):
		// The flush is durable; the member must not write again.
		w.log.Warn("offset commit rejected: no longer a member of the group", "offset", next, "generation", w.sess.GenerationID(), "error", err)
		return &lostError{fmt.Errorf("commit offset %d: %w", next, err)}
	default:
		return &commitError{fmt.Errorf("commit offset %d: %w", next, err)}
	}
}

// commitError is a source offset that could not be committed although the
// state it depends on is durable. A later attempt may get through; if none
// does, a new owner processes the events since the previous commit again.
type commitError struct{ err error }

func (e *commitError) Error() string { return e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

// retryable reports whether a failed flush may succeed later: the brokers
// did not take the records or the commit.
func retryable(err error) bool {
	var pe *produceError
	var ce *commitError
	return (errors.As(err, &pe) || errors.As(err, &ce)) && !kafka.Fatal(err)
}

// commitAfterRejoin retries a commit the coordinator deferred while the
// group was rebalancing: a release that overlaps this member's rejoin waits
// a little for the new generation (sarama's offset manager held commits
// back the same way), and gives up with a warning. A session that ended
// (ctx) gets no new generation, so it does not wait.
func (w *partitionWorker) commitAfterRejoin(ctx context.Context) {
	gen := w.sess.GenerationID()
	for range 20 {
		if ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
		if w.sess.GenerationID() == gen {
			continue
		}
		gen = w.sess.GenerationID()
		if err := w.commitOffset(); err != nil || !w.uncommitted {
			break
		}
	}
	if w.uncommitted {
		w.log.Warn("released the partition without committing its offset: the group was rebalancing; the events since the last commit will be processed again", "offset", w.flushed+1)
	}
}

// lostError is a member that was, or may have been, removed from its group:
// another member may own its partitions and write their changelogs, so it
// must not write them any more. See the package doc.
type lostError struct{ err error }

func (e *lostError) Error() string { return "group membership lost: " + e.err.Error() }
func (e *lostError) Unwrap() error { return e.err }

// expelled ends the current session because the member lost, or may have
// lost, its membership: every partition drops its unflushed updates (stop)
// and the member joins again, recovering from the changelogs whatever it
// is given.
func (r *Runtime) expelled(lost *lostError) {
	r.mu.Lock()
	expel := r.expel
	r.mu.Unlock()
	if expel != nil {
		expel(lost)
	}
}

// removed reports whether the coordinator answered that it no longer knows
// this member (its session expired, or another instance took its id).
func removed(err error) bool {
	return errors.Is(err, sarama.ErrUnknownMemberId) || errors.Is(err, sarama.ErrFencedInstancedId)
}

// lostMembership reports whether a session ended because this member is no
// longer part of the group (fenced, expired, or a revocation that timed out).
func lostMembership(cause error) bool {
	return errors.Is(cause, sarama.ErrUnknownMemberId) ||
		errors.Is(cause, sarama.ErrIllegalGeneration) ||
		errors.Is(cause, sarama.ErrFencedInstancedId) ||
		errors.Is(cause, sarama.ErrRebalanceTimedOut)
}

func (w *partitionWorker) process(m *sarama.ConsumerMessage) error {
	// One Event is reused for every record of the partition: the handler
	// must not keep it, and the hot path does not allocate for it.
	ctx := context.Background()
	var span trace.Span
	if tracing.HasContext(m.Headers) {
		// Continue the producer's trace: one span per traced event.
		ctx = otel.GetTextMapPropagator().Extract(ctx, tracing.ConsumerHeaders(m.Headers))
		ctx, span = tracing.Tracer().Start(ctx, "process "+m.Topic, trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attribute.Int64("messaging.kafka.destination.partition", int64(m.Partition)),
				attribute.Int64("messaging.kafka.message.offset", m.Offset)))
		defer span.End()
	}
	w.ev = Event{
		Ctx:       ctx,
		Partition: m.Partition,
		Offset:    m.Offset,
		Key:       m.Key,
		Value:     m.Value,
		Timestamp: m.Timestamp,
		Headers:   m.Headers,
		Now:       w.now,
	}
	var err error
	if w.processed&63 == 0 {
		began := time.Now()
		err = w.r.o.Handler.Handle(&w.ev)
		done := time.Now()
		w.r.o.Hooks.EventRuntime(w.p, done.Sub(began))
		if !m.Timestamp.IsZero() && err == nil {
			w.r.o.Hooks.EventLatency(w.p, max(done.Sub(m.Timestamp), 0))
		}
	} else {
		err = w.r.o.Handler.Handle(&w.ev)
	}
	w.processed++
	w.lastTS = m.Timestamp
	if err != nil {
		if span != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		if !errors.Is(err, ErrInvalid) {
			return fmt.Errorf("offset %d: %w", m.Offset, err)
		}
		if err := w.deadLetter(ctx, m, err); err != nil {
			return err
		}
	}
	w.last = m.Offset
	return nil
}

// deadLetter queues the record for the dead-letter topic; the next flush
// waits for it before it commits the source offset.
func (w *partitionWorker) deadLetter(ctx context.Context, m *sarama.ConsumerMessage, cause error) error {
	w.log.WarnContext(ctx, "dead-lettering record", "offset", m.Offset, "error", cause)
	w.deadCount++
	if w.inflight != nil {
		// The producer is the flush's until it is done: the dead letter
		// waits (see settled).
		w.deadQueued = append(w.deadQueued, deadLetter{src: m, cause: cause.Error(), ack: kafka.NewAck(1), aborted: true})
		return nil
	}
	p, err := w.producer()
	if err != nil {
		return err
	}
	d := deadLetter{src: m, cause: cause.Error(), ack: kafka.NewAck(1)}
	d.msg = d.record(w.r.o.DeadLetterTopic, p.MaxMessageBytes)
	w.dead = append(w.dead, d)
	return p.Send(d.ack, d.msg)
}

// deadLetter is a dead-letter record and the acknowledgement the next flush
// waits for; a record whose send failed is sent again by the next flush.
type deadLetter struct {
	src   *sarama.ConsumerMessage
	cause string
	msg   *sarama.ProducerMessage
	ack   *kafka.Ack
	// aborted: it went out in a transaction that was aborted.
	aborted bool
	// refused counts the times the record itself was refused (too large,
	// invalid); each makes the next attempt smaller, and after
	// maxRefusals the dead letter is given up.
	refused int
}

// Dead letters are cut to fit: a poison record can be as large as the
// broker takes, and the headers a dead letter adds would push it past the
// producer's limit, which refuses it every time and would stall the
// partition for ever.
const (
	// deadLetterSlack is kept free below the producer's limit.
	deadLetterSlack = 256
	// maxErrorHeader bounds the error header.
	maxErrorHeader = 1024
	// refusedValueBytes is the most of the value kept once a dead letter
	// was refused; refusedKeyBytes the most of the key kept once it was
	// refused twice (and then no value at all).
	refusedValueBytes = 64 << 10
	refusedKeyBytes   = 1024
	// maxRefusals: after the record was refused this often, the dead
	// letter is given up, logged and counted, so the partition goes on.
	maxRefusals = 3
)

// record builds the dead-letter record of d for topic, no larger than
// maxBytes (sarama's measure): the source key, value and headers naming the
// error and the source position; cut (and marked so, with the original
// sizes) when it would not fit, or smaller still after refusals.
func (d *deadLetter) record(topic string, maxBytes int) *sarama.ProducerMessage {
	m := d.src
	cause := d.cause
	if len(cause) > maxErrorHeader {
		cause = cause[:maxErrorHeader]
	}
	msg := &sarama.ProducerMessage{
		Topic: topic,
		Key:   sarama.ByteEncoder(m.Key),
		Value: sarama.ByteEncoder(m.Value),
		Headers: []sarama.RecordHeader{
			{Key: []byte("error"), Value: []byte(cause)},
			{Key: []byte("source.topic"), Value: []byte(m.Topic)},
			{Key: []byte("source.partition"), Value: strconv.AppendInt(nil, int64(m.Partition), 10)},
			{Key: []byte("source.offset"), Value: strconv.AppendInt(nil, m.Offset, 10)},
		},
	}
	limit := maxBytes - deadLetterSlack
	if maxBytes <= 0 {
		limit = 1 << 62
	}
	key, value := m.Key, m.Value
	switch {
	case d.refused >= 2:
		key, value = key[:min(len(key), refusedKeyBytes)], nil
	case d.refused == 1:
		value = value[:min(len(value), refusedValueBytes)]
	}
	msg.Key, msg.Value = sarama.ByteEncoder(key), sarama.ByteEncoder(value)
	if len(key) == len(m.Key) && len(value) == len(m.Value) && msg.ByteSize(2) <= limit {
		return msg
	}
	msg.Headers = append(msg.Headers,
		sarama.RecordHeader{Key: []byte("truncated"), Value: []byte("true")},
		sarama.RecordHeader{Key: []byte("original.key.size"), Value: strconv.AppendInt(nil, int64(len(m.Key)), 10)},
		sarama.RecordHeader{Key: []byte("original.value.size"), Value: strconv.AppendInt(nil, int64(len(m.Value)), 10)},
	)
	if over := msg.ByteSize(2) - limit; over > 0 {
		cut := min(over, len(value))
		value = value[:len(value)-cut]
		if over -= cut; over > 0 {
			key = key[:max(len(key)-over, 0)]
		}
		msg.Key, msg.Value = sarama.ByteEncoder(key), sarama.ByteEncoder(value)
	}
	return msg
}

// resend prepares d to go out again after a failed or aborted send. It
// reports false when the dead letter is given up.
func (w *partitionWorker) resend(d *deadLetter, maxBytes int) bool {
	if err := d.ack.Err(); err != nil && kafka.FinalError(err) {
		d.refused++
		if d.refused >= maxRefusals {
			w.log.Error("dead letter refused by the brokers; giving it up so the partition goes on",
				"source_offset", d.src.Offset, "source_value_bytes", len(d.src.Value), "error", err)
			return false
		}
		w.log.Warn("dead letter refused; sending it again smaller", "source_offset", d.src.Offset, "attempt", d.refused+1, "error", err)
		d.msg = d.record(w.r.o.DeadLetterTopic, maxBytes)
	}
	d.ack, d.aborted = kafka.NewAck(1), false
	return true
}

// errSlowCommit is the stall reason while a commit waits for the brokers.
var errSlowCommit = errors.New("waiting for the brokers to acknowledge the commit")

// produceError marks a failure to get records acknowledged by the brokers,
// which a later attempt may overcome (unlike a failing local store).
type produceError struct{ err error }

func (e *produceError) Error() string { return e.err.Error() }
func (e *produceError) Unwrap() error { return e.err }

// flushRetrying flushes; while the brokers cannot take the records it
// retries with backoff, and the partition waits (nothing is committed, so
// nothing is lost). The partition shows as stalled meanwhile, which makes
// the worker not ready. A transaction that could be
// aborted (the coordinator refused the generation, the brokers refused a
// record) is done again the same way; one that could not leaves the
// producer in an unknown state, so the partition fails instead and the
// worker restarts from the last committed transaction.
//
// failed, if not nil, is how a first attempt made elsewhere (a flush in the
// background) failed.
func (w *partitionWorker) flushRetrying(ctx context.Context, failed error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := failed
		if attempt > 1 || failed == nil {
			err = w.flushWatched(ctx)
		}
		if err == nil {
			if attempt > 1 {
				w.log.Info("flush succeeded again", "attempts", attempt)
			}
			return nil
		}
		// Only an aborted transaction or a refused offset commit (a
		// commitError) is done again; after any other failure the producer's state is
		// unknown and the worker restarts from the last committed one.
		var ce *commitError
		if ctx.Err() != nil || !retryable(err) || !errors.As(err, &ce) {
			return err
		}
		w.r.o.State.stall(w.p, err)
		w.r.o.State.beat(w.p) // waiting for the brokers is not being stuck
		w.r.o.Hooks.FlushFailed(w.p)
		w.log.Warn("flush failed; retrying", "attempt", attempt, "backoff", backoff.String(), "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// flushWatched flushes; a flush that waits longer than a commit interval
// for the brokers shows as stalled at once, not only after the producer's
// retries, and a successful one clears the stall.
func (w *partitionWorker) flushWatched(ctx context.Context) error {
	return w.watched(func() error { return w.flush(ctx) })
}

// watched runs fn, a flush or the part of one that waits for the brokers,
// as flushWatched describes.
func (w *partitionWorker) watched(fn func() error) error {
	var mu sync.Mutex
	finished := false
	slow := time.AfterFunc(w.r.o.CommitInterval, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			w.r.o.State.stall(w.p, errSlowCommit)
		}
	})
	err := fn()
	mu.Lock()
	finished = true
	mu.Unlock()
	slow.Stop()
	if err == nil {
		w.r.o.State.stall(w.p, nil)
	}
	return err
}

// producer returns this partition's transactional producer with a
// transaction open.
func (w *partitionWorker) producer() (*kafka.Producer, error) {
	if w.txp.Dead() {
		// A record of the last transaction met a fatal error; fenced by
		// the partition's new owner is the one a worker meets.
		return nil, &lostError{fmt.Errorf("the transactional producer of partition %d can do nothing more (fenced by a new owner)", w.p)}
	}
	if w.txp.TransactionFailed() {
		// A dead letter sent in this transaction was refused: the
		// transaction can only be aborted. Its dead letters go out again
		// in the next one (the changelog records go out only at a flush,
		// so none were in it).
		cause := w.txnCause(errors.New("transaction failed"), nil)
		if err := w.abort(); err != nil {
			return nil, fmt.Errorf("abort failed transaction (%w): %w", cause, err)
		}
		w.log.Warn("transaction aborted; its dead letters go out again in the next", "cause", cause)
		for i := range w.dead {
			w.dead[i].aborted = true
		}
	}
	if err := w.txp.Begin(); err != nil {
		if fenced(err) {
			return nil, w.replaced(err)
		}
		return nil, fmt.Errorf("begin transaction: %w", err)
	}
	return w.txp, nil
}

// abort aborts the open transaction. sarama's transaction state can end up
// where it refuses the abort ("invalid transition", after produce errors
// raced with an earlier abort's epoch bump, say); the producer is then
// replaced. Its successor's InitProducerId, under the same transactional
// id, fences the old producer and has the coordinator abort whatever it
// left open, which is the abort asked for.
//
// A producer that was fenced, or that cannot abort under at-least-once,
// is a *lostError: see replaced.
func (w *partitionWorker) abort() error {
	aerr := w.txp.Abort()
	if aerr == nil || kafka.Fatal(aerr) {
		return aerr
	}
	if err := w.replaced(aerr); err != nil {
		return err
	}
	w.log.Warn("could not abort the transaction; a new producer aborts it", "error", aerr)
	if err := w.txp.Close(); err != nil {
		w.log.Warn("close transactional producer", "error", err)
	}
	txp, err := w.r.o.Transactions(w.p)
	if err != nil {
		// w.txp stays the closed producer (Close again is a no-op): the
		// partition fails and the worker restarts from the last commit.
		return fmt.Errorf("%w; new producer: %w", aerr, err)
	}
	w.txp = txp
	return nil
}

// replaced returns a *lostError when this partition's transactional
// producer must not go on: another producer took its transactional id (a
// new owner of the partition fenced this one), or, under at-least-once, it
// cannot abort. Under at-least-once nothing in the transaction proves that
// this member still owns the partition (under exactly-once its offsets
// do), and a new producer would fence the owner's: the partition drops its
// unflushed updates and the member joins again instead. It returns nil
// when the producer may be replaced.
func (w *partitionWorker) replaced(err error) error {
	if fenced(err) {
		return &lostError{fmt.Errorf("another producer took over the transactional id of partition %d: %w", w.p, err)}
	}
	if w.r.o.OffsetsAfter {
		_ = w.txp.Close() // given up either way
		return &lostError{fmt.Errorf("could not abort the transaction of partition %d: %w", w.p, err)}
	}
	return nil
}

// fenced reports whether a transactional producer was fenced by a newer
// one with its transactional id.
func fenced(err error) bool {
	return errors.Is(err, sarama.ErrProducerFenced) || errors.Is(err, sarama.ErrInvalidProducerEpoch)
}

// txnCause returns the first error of a record sent in the open
// transaction (changelog acks, dead letters), or err when none failed.
func (w *partitionWorker) txnCause(err error, acks []*kafka.Ack) error {
	for _, a := range acks {
		if e := a.Err(); e != nil {
			return fmt.Errorf("%w (a changelog record was refused: %w)", err, e)
		}
	}
	for _, d := range w.dead {
		if e := d.ack.Err(); e != nil {
			return fmt.Errorf("%w (a dead letter was refused: %w)", err, e)
		}
	}
	return err
}

// flush makes everything processed so far durable and commits it: the
// changelog records and dead letters are acknowledged, then the store batch
// is written, then the source offset is committed.
func (w *partitionWorker) flush(ctx context.Context) error {
	tail, err := w.flushHead(ctx)
	if err != nil || tail == nil {
		return err
	}
	if err := tail.commit(); err != nil {
		return err
	}
	w.flushed = tail.upto
	return nil
}

// flushTail is the part of a flush that waits for the brokers and the
// store: commit runs it, and the flush covers the source records up to
// upto once it succeeded.
type flushTail struct {
	upto   int64
	commit func() error
}

// flushHead takes what the tables hand out for the changelogs (and closed
// windows' results) and sends it; the tail it returns commits the
// transaction, waits for the acknowledgements, writes the store batch and
// commits the source offset, in that order. A nil tail: nothing to flush.
func (w *partitionWorker) flushHead(ctx context.Context) (*flushTail, error) {
	// Even under load: a caught-up partition closes by the wall clock.
	due := w.windowsDue()
	if w.last == w.flushed && !due {
		if w.uncommitted {
			return nil, w.commitOffset()
		}
		return nil, nil
	}
	r := w.r
	began := time.Now()
	ctx, span := tracing.Tracer().Start(ctx, "flush", trace.WithAttributes(
		attribute.String("messaging.destination.name", r.o.Topic), attribute.Int64("messaging.kafka.destination.partition", int64(w.p))))
	prod, err := w.producer()
	if err != nil {
		span.End()
		return nil, err
	}
	_, produceSpan := tracing.Tracer().Start(ctx, "changelog produce", trace.WithSpanKind(trace.SpanKindProducer))
	acks, err := w.send(prod, r.o.Clock())
	if err != nil {
		produceSpan.End()
		span.End()
		return nil, err
	}
	upto := w.last
	return &flushTail{upto: upto, commit: func() error {
		defer span.End()
		defer produceSpan.End() // a second End is a no-op
		if err := w.commitTransaction(acks, upto); err != nil {
			return err
		}
		// Records in flight are waited for even when the session ends
		// meanwhile (ctx): a flush given up with records still in flight
		// could see them land later, after a new owner's, and a later
		// recovery would restore the older value. sarama's delivery
		// timeout bounds the wait.
		for i, a := range acks {
			if err := a.Wait(context.WithoutCancel(ctx)); err != nil {
				return &produceError{fmt.Errorf("produce %s: %w", r.o.Tables[i].Changelog(), err)}
			}
		}
		for _, d := range w.dead {
			if err := d.ack.Wait(context.WithoutCancel(ctx)); err != nil {
				return &produceError{fmt.Errorf("produce %s: %w", r.o.DeadLetterTopic, err)}
			}
		}
		produceSpan.End()
		_, commitSpan := tracing.Tracer().Start(ctx, "commit")
		defer commitSpan.End()
		w.dead = w.dead[:0]
		if err := w.store(acks); err != nil {
			return err
		}
		if r.o.OffsetsAfter {
			if err := w.commitOffsetAt(upto + 1); err != nil {
				return err
			}
		}
		r.o.Hooks.Committed(w.p, time.Since(began))
		return nil
	}}, nil
}

// inflightFlush is a flush committing in the background.
type inflightFlush struct {
	upto int64
	done chan error
}

// flushBehind flushes with its tail in the background: the partition goes
// on processing while the flush waits for the brokers and the store, which
// would otherwise hold up every record behind it (at 20,000 views/s most
// of the p99 latency). The durability order within the flush is the same:
// changelog acknowledged, store batch written, source offset committed.
// What the loop does meanwhile touches only the tables' caches, which
// keep the flushed values apart until the store has them (Flush, Write,
// Flushed); the producer is the flush's until settled.
func (w *partitionWorker) flushBehind(ctx context.Context) error {
	tail, err := w.flushHead(ctx)
	if err != nil || tail == nil {
		return err
	}
	f := &inflightFlush{upto: tail.upto, done: make(chan error, 1)}
	w.inflight = f
	go func() { f.done <- w.watched(tail.commit) }()
	return nil
}

// inflightDone is the channel the flush in flight reports on, nil when
// none is.
func (w *partitionWorker) inflightDone() <-chan error {
	if w.inflight == nil {
		return nil
	}
	return w.inflight.done
}

// settle waits for the flush in flight, if any, and returns how it ended.
func (w *partitionWorker) settle() error {
	if w.inflight == nil {
		return nil
	}
	return w.settled(<-w.inflight.done)
}

// settled ends the flush in flight, which ended with err: on success its
// records count as flushed. Dead letters that waited for it go with the
// next flush either way (the next flush after a failure is done in the
// loop and covers everything since the last success).
func (w *partitionWorker) settled(err error) error {
	f := w.inflight
	w.inflight = nil
	if err == nil {
		w.flushed = f.upto
	}
	w.dead = append(w.dead, w.deadQueued...)
	w.deadQueued = w.deadQueued[:0]
	if len(w.dead) > 0 && w.txp != nil {
		for i := range w.dead {
			if w.dead[i].msg == nil {
				w.dead[i].msg = w.dead[i].record(w.r.o.DeadLetterTopic, w.txp.MaxMessageBytes)
			}
		}
	}
	return err
}

// waitInflight waits for a flush in flight whose outcome no longer
// matters (the partition is being dropped, or its loop failed).
func (w *partitionWorker) waitInflight() {
	if w.inflight != nil {
		<-w.inflight.done
		w.inflight = nil
		w.dead = append(w.dead, w.deadQueued...)
		w.deadQueued = nil
	}
}

// windowCloser is a table whose windows close on the wall clock of a
// caught-up partition (table.Windowed).
type windowCloser interface {
	DueAt(p int32, now time.Time) bool
	CloseAt(p int32, now time.Time) bool
}

// windowsDue tells the windowed tables the wall-clock time when the
// partition is caught up, so that they close the windows it has passed
// even when no event moves stream time there, and reports whether one is
// due: then a flush must run, new records or not.
//
// Caught up means the broker holds nothing past what was processed. The
// claim's high watermark is only as fresh as the last fetch, and fetches
// stop while the group rebalances, so the broker is asked (on the admin
// client's connection) before a window closes: records already in the
// partition must not turn late. The clock is read before the broker
// answers, so a record it does not count came after the window closed.
func (w *partitionWorker) windowsDue() bool {
	r := w.r
	if r.o.Client == nil || w.src == nil || w.src.HighWaterMarkOffset() > w.last+1 || len(w.src.Messages()) > 0 {
		return false
	}
	now := r.o.Clock()
	var due []windowCloser
	for _, t := range r.o.Tables {
		if c, ok := t.(windowCloser); ok && c.DueAt(w.p, now) {
			due = append(due, c)
		}
	}
	if len(due) == 0 {
		return false
	}
	if end, err := r.o.Client.GetOffset(r.o.Topic, w.p, sarama.OffsetNewest); err != nil || end > w.last+1 {
		return false
	}
	for _, c := range due {
		c.CloseAt(w.p, now)
	}
	return true
}

// send sends the tables' changelog records of the partition, and the dead
// letters not sent yet or to be sent again, through prod. It returns the
// acknowledgements of each table's records.
func (w *partitionWorker) send(prod *kafka.Producer, now time.Time) ([]*kafka.Ack, error) {
	r := w.r
	acks := make([]*kafka.Ack, len(r.o.Tables))
	for i, t := range r.o.Tables {
		recs, err := t.Flush(w.p, now)
		if err != nil {
			return nil, fmt.Errorf("flush %s: %w", t.Name(), err)
		}
		// One allocation each for the flush's messages and their keys and
		// values, rather than three a record.
		msgs := make([]*sarama.ProducerMessage, len(recs))
		backing := make([]sarama.ProducerMessage, len(recs))
		encoded := make([]kafka.Bytes, 2*len(recs))
		var hs headerCache
		for j, rec := range recs {
			key, value := &encoded[2*j], &encoded[2*j+1]
			key.B, value.B = rec.Key, rec.Value
			backing[j] = sarama.ProducerMessage{
				Topic:     t.Changelog(),
				Partition: w.p,
				Key:       key,
				Value:     value,
				Headers:   hs.of(rec.Headers),
				Timestamp: rec.Timestamp,
			}
			msgs[j] = &backing[j]
			if rec.Topic != "" { // a closed window's result, partitioned by its key
				msgs[j].Topic = rec.Topic
			}
		}
		acks[i] = kafka.NewAck(len(msgs))
		if err := prod.Send(acks[i], msgs...); err != nil {
			return nil, &produceError{fmt.Errorf("produce %s: %w", t.Changelog(), err)}
		}
	}
	kept := w.dead[:0]
	for _, d := range w.dead {
		if d.ack.Failed() || d.aborted {
			if !w.resend(&d, prod.MaxMessageBytes) {
				continue
			}
			if err := prod.Send(d.ack, d.msg); err != nil {
				return nil, &produceError{fmt.Errorf("produce %s: %w", r.o.DeadLetterTopic, err)}
			}
		}
		kept = append(kept, d)
	}
	w.dead = kept
	return acks, nil
}

// commitTransaction commits the partition's open transaction, with the
// source offset in it under exactly-once. A transaction that does not
// commit is aborted, and the flush can be done again (a *commitError).
func (w *partitionWorker) commitTransaction(acks []*kafka.Ack, upto int64) error {
	r := w.r
	var err error
	if r.o.OffsetsAfter {
		err = w.txp.Commit()
	} else {
		offsets := map[string][]*sarama.PartitionOffsetMetadata{
			r.o.Topic: {{Partition: w.p, Offset: upto + 1}},
		}
		group := &sarama.ConsumerGroupMetadata{GroupID: r.o.GroupID, GenerationID: w.sess.GenerationID(), MemberID: w.sess.MemberID()}
		err = w.txp.CommitWithOffsets(offsets, group)
	}
	if err == nil {
		return nil
	}
	// The cause, rather than sarama's account of the transaction's state:
	// a record of it that was refused, if one was.
	err = w.txnCause(err, acks)
	if fenced(err) {
		return w.replaced(err)
	}
	if aerr := w.abort(); aerr != nil {
		return fmt.Errorf("%w; abort: %w", err, aerr)
	}
	// Aborted: its records are invisible to read_committed readers and
	// nothing was stored or committed, so the flush can be done again in a
	// new transaction: Flush hands out the same keys again, and the dead
	// letters go out again (smaller, if one was refused as too large).
	// That covers the coordinator refusing this member's generation while
	// the group rebalances (cooperative: the member keeps the partition and
	// learns its new generation when its join completes) and a record that
	// the brokers refused.
	for i := range w.dead {
		w.dead[i].aborted = true
	}
	return &commitError{fmt.Errorf("commit transaction, aborted to be done again: %w", err)}
}

// store writes the flushed values and each changelog's offset in one
// store batch.
func (w *partitionWorker) store(acks []*kafka.Ack) error {
	r := w.r
	b := r.o.DB.NewBatch()
	for i, t := range r.o.Tables {
		off := acks[i].Offset(w.p)
		if off >= 0 {
			// The transaction's commit marker follows its last record (this
			// producer is the partition's only writer): the store holds the
			// state through it, and a recovery has nothing left to read.
			off++
		}
		if err := t.Write(w.p, b, off); err != nil {
			b.Discard()
			return fmt.Errorf("write %s: %w", t.Name(), err)
		}
	}
	if err := b.Commit(); err != nil {
		return fmt.Errorf("commit store batch: %w", err)
	}
	for _, t := range r.o.Tables {
		t.Flushed(w.p)
	}
	return nil
}

// headerCache converts a table record's headers to sarama's, once for all
// the records of a flush that share them (a windowed table's definition).
type headerCache struct {
	from []table.Header
	to   []sarama.RecordHeader
}

func (c *headerCache) of(hs []table.Header) []sarama.RecordHeader {
	if len(hs) == 0 {
		return nil
	}
	if len(c.from) != len(hs) || &c.from[0] != &hs[0] {
		c.from, c.to = hs, make([]sarama.RecordHeader, len(hs))
		for i, h := range hs {
			c.to[i] = sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value}
		}
	}
	return c.to
}

// definitionChecker is a table whose changelog records carry its
// definition (table.DefinitionHeader), which a replay checks.
type definitionChecker interface {
	CheckChangelogDefinition(def []byte) error
}

// checkDefinition refuses a changelog record written with another
// definition of table t than it has now (windows of another size).
func checkDefinition(dc definitionChecker, m *sarama.ConsumerMessage) error {
	for _, h := range m.Headers {
		if string(h.Key) == table.DefinitionHeader {
			return dc.CheckChangelogDefinition(h.Value)
		}
	}
	return nil
}
