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
)

const (
	// restoreBatch is how many changelog records go into one store batch
	// (with a checkpoint) while recovering, so a crash during a long
	// recovery resumes where it stopped.
	restoreBatch = 20000
	// progressEvery is how often a long recovery logs its progress.
	progressEvery = 5 * time.Second
	// restoreIdle is how long recovery waits for a record before it treats
	// the rest of the range as a gap. Compaction and transaction markers
	// leave gaps in offsets, so the offset just below the high watermark
	// may never arrive.
	restoreIdle = 2 * time.Second
	// markerIdle is the shorter wait when only a transaction marker can be
	// left below the high watermark: under exactly-once every transaction
	// ends with a commit marker that a read_committed consumer never sees.
	markerIdle = 200 * time.Millisecond
)

// errRevoked ends a recovery whose partition was taken away meanwhile.
var errRevoked = errors.New("partition revoked during recovery")

// restoring is the recovery of one table partition.
type restoring struct {
	t     Table
	log   *slog.Logger
	start int64 // first offset to replay
	hwm   int64 // high watermark when recovery began
	pc    sarama.PartitionConsumer
	left  atomic.Int64 // records left to replay, for the partition's progress
}

// recover replays each table's changelog partition from the offset after the
// stored checkpoint to the high watermark. All tables' replays are started
// together so their fetches overlap. While it runs, the claim may deliver a
// source record (kept in w.pending for processing afterwards) or be revoked
// (errRevoked).
func (w *partitionWorker) recover(ctx context.Context, msgs <-chan *sarama.ConsumerMessage) error {
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
		r, err := w.prepare(t)
		if err != nil {
			return fmt.Errorf("recover %s: %w", t.Name(), err)
		}
		rs = append(rs, r)
		total += r.hwm - r.start
	}
	w.r.o.State.progress(w.p, total)
	for _, r := range rs {
		w.r.o.Hooks.RecoveryProgress(r.t.Name(), w.p, max(r.hwm-r.start, 0), -1, 0)
	}
	// Every table's replay runs at once: a changelog that nobody reads
	// fills its consumer's buffer, and sarama then holds back the fetches
	// of every partition of that broker.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errs := make([]error, len(rs))
	var replays, watcher sync.WaitGroup
	for i, r := range rs {
		replays.Go(func() {
			if err := w.replay(ctx, r, rs); err != nil {
				errs[i] = fmt.Errorf("recover %s: %w", r.t.Name(), err)
				cancel(err)
			}
		})
	}
	// Meanwhile the claim may deliver a source record (kept for after
	// recovery; at most one is held) or be revoked.
	done := make(chan struct{})
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
	replays.Wait()
	close(done)
	watcher.Wait()
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

// prepare reads the stored checkpoint and the changelog's offsets, decides
// where replay starts, and starts the partition consumer when there is
// anything to replay.
func (w *partitionWorker) prepare(t Table) (*restoring, error) {
	log := w.log.With("table", t.Name(), "changelog", t.Changelog())
	start, hwm, stored, err := replayRange(t, w.r.o.Client, w.p, log)
	if err != nil {
		return nil, err
	}
	log.Info("recovering", "from_offset", start, "high_watermark", hwm, "records", max(hwm-start, 0), "stored", stored)
	rs := &restoring{t: t, log: log, start: start, hwm: hwm}
	rs.left.Store(max(hwm-start, 0))
	if start < hwm {
		rs.pc, err = w.r.o.Restore.ConsumePartition(t.Changelog(), w.p, start)
		if err != nil {
			return nil, fmt.Errorf("consume %s/%d from %d: %w", t.Changelog(), w.p, start, err)
		}
	}
	return rs, nil
}

// replayRange assigns table partition p and decides where its changelog
// replay starts: after the stored checkpoint, or at the log start when the
// store holds nothing or is ahead of the changelog (then it is wiped).
// stored reports whether the store's contents are kept. Recovery and
// standby copies share it.
func replayRange(t Table, client sarama.Client, p int32, log *slog.Logger) (start, hwm int64, stored bool, err error) {
	topic := t.Changelog()
	cp, stored, err := t.Assign(p)
	if err != nil {
		return 0, 0, false, err
	}
	hwm, err = client.GetOffset(topic, p, sarama.OffsetNewest)
	if err != nil {
		return 0, 0, false, fmt.Errorf("high watermark of %s/%d: %w", topic, p, err)
	}
	low, err := client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return 0, 0, false, fmt.Errorf("log start of %s/%d: %w", topic, p, err)
	}
	if !stored {
		return low, hwm, false, nil
	}
	if cp.Offset+1 > hwm {
		log.Warn("local store is ahead of the changelog; wiping the partition and rebuilding it from the start",
			"stored_offset", cp.Offset, "high_watermark", hwm)
		if err := t.Wipe(p); err != nil {
			return 0, 0, false, err
		}
		return low, hwm, false, nil
	}
	return max(cp.Offset+1, low), hwm, true, nil
}

// replay applies the changelog records of one table partition to the store,
// committing a batch with a checkpoint every restoreBatch records. all are
// the replays of the partition's tables, for its progress.
func (w *partitionWorker) replay(ctx context.Context, rs *restoring, all []*restoring) error {
	r := w.r
	t := rs.t
	b := r.o.DB.NewBatch()
	defer func() { b.Discard() }()
	last := rs.start - 1
	// The batches along the way carry their checkpoint and need not wait
	// for the disk: a crash loses at most some of them, and the next
	// recovery resumes from the last that made it. The last is synced,
	// which makes every earlier one durable too.
	commit := func(final bool) error {
		if err := t.Recovered(w.p, b, last); err != nil {
			return err
		}
		commit := b.CommitUnsynced
		if final {
			commit = b.Commit
		}
		if err := commit(); err != nil {
			return err
		}
		b = r.o.DB.NewBatch()
		return nil
	}
	if rs.pc == nil {
		// Nothing to replay: still report the finished recovery (0 left).
		r.o.Hooks.RecoveryProgress(t.Name(), w.p, 0, 0, 0)
		return commit(true)
	}

	began := r.o.Clock()
	nextLog := began.Add(progressEvery)
	var replayed int64
	idleFor := func() time.Duration {
		if r.o.Transactions != nil && last+2 >= rs.hwm {
			return markerIdle
		}
		return restoreIdle
	}
	idle := time.NewTimer(idleFor())
	defer idle.Stop()
	for last+1 < rs.hwm {
		select {
		case m, ok := <-rs.pc.Messages():
			if !ok {
				// sarama closes a partition consumer after a fatal error
				// (offset out of range, say), which Errors delivers.
				var cause error = errors.New("no error reported")
				select {
				case err, ok := <-rs.pc.Errors():
					if ok && err != nil {
						cause = err
					}
				default:
				}
				return fmt.Errorf("replay %s/%d: the changelog consumer stopped: %w", t.Changelog(), w.p, cause)
			}
			// Take what is already buffered without going back to select.
			for drained := 0; ; drained++ {
				if err := t.Restore(w.p, b, m.Key, m.Value, m.Timestamp); err != nil {
					return err
				}
				last = m.Offset
				replayed++
				if replayed%restoreBatch == 0 {
					if err := commit(false); err != nil {
						return err
					}
					w.reportProgress(rs, all, last, replayed, began, &nextLog)
				}
				if last+1 >= rs.hwm || drained == 1024 {
					break
				}
				var ok bool
				select {
				case m, ok = <-rs.pc.Messages():
				default:
				}
				if !ok {
					break
				}
			}
			idle.Reset(idleFor()) // since Go 1.23 Reset drops a pending expiry
		case err, ok := <-rs.pc.Errors():
			if !ok {
				return fmt.Errorf("replay %s/%d: the changelog consumer stopped", t.Changelog(), w.p)
			}
			return fmt.Errorf("replay %s/%d: %w", t.Changelog(), w.p, err)
		case <-idle.C:
			if last+2 < rs.hwm || r.o.Transactions == nil {
				rs.log.Info("changelog has no more records below the high watermark", "last_offset", last, "high_watermark", rs.hwm)
			}
			last = rs.hwm - 1
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := commit(true); err != nil {
		return err
	}
	rs.left.Store(0)
	elapsed := r.o.Clock().Sub(began)
	r.o.Hooks.RecoveryProgress(t.Name(), w.p, 0, 0, replayed%restoreBatch)
	rs.log.Info("recovered", "records", replayed, "seconds", elapsed.Seconds(),
		"records_per_second", int64(float64(replayed)/max(elapsed.Seconds(), 1e-3)))
	return nil
}

func (w *partitionWorker) reportProgress(rs *restoring, all []*restoring, last, replayed int64, began time.Time, nextLog *time.Time) {
	left := rs.hwm - last - 1
	rs.left.Store(left)
	var sum int64
	for _, r := range all {
		sum += r.left.Load()
	}
	w.r.o.State.progress(w.p, sum)
	now := w.r.o.Clock()
	rate := float64(replayed) / max(now.Sub(began).Seconds(), 1e-3)
	w.r.o.Hooks.RecoveryProgress(rs.t.Name(), w.p, left, time.Duration(float64(left)/rate*float64(time.Second)), restoreBatch)
	if now.Before(*nextLog) {
		return
	}
	*nextLog = now.Add(progressEvery)
	eta := time.Duration(float64(left) / rate * float64(time.Second)).Round(time.Second)
	rs.log.Info("recovery progress", "records_left", left, "records_per_second", int64(rate), "eta", eta.String())
}
