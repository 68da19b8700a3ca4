package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	for _, r := range rs {
		if err := w.replay(ctx, r, &msgs); err != nil {
			return fmt.Errorf("recover %s: %w", r.t.Name(), err)
		}
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
// committing a batch with a checkpoint every restoreBatch records.
func (w *partitionWorker) replay(ctx context.Context, rs *restoring, msgs *<-chan *sarama.ConsumerMessage) error {
	r := w.r
	t := rs.t
	b := r.o.DB.NewBatch()
	defer func() { b.Discard() }()
	last := rs.start - 1
	commit := func() error {
		if err := t.Recovered(w.p, b, last); err != nil {
			return err
		}
		if err := b.Commit(); err != nil {
			return err
		}
		b = r.o.DB.NewBatch()
		return nil
	}
	if rs.pc == nil {
		// Nothing to replay: still report the finished recovery (0 left).
		r.o.Hooks.RecoveryProgress(t.Name(), w.p, 0, 0, 0)
		return commit()
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
		case m := <-rs.pc.Messages():
			if err := t.Restore(w.p, b, m.Key, m.Value, m.Timestamp); err != nil {
				return err
			}
			last = m.Offset
			replayed++
			if replayed%restoreBatch == 0 {
				if err := commit(); err != nil {
					return err
				}
				w.reportProgress(rs, last, replayed, began, &nextLog)
			}
			idle.Reset(idleFor()) // since Go 1.23 Reset drops a pending expiry
		case err := <-rs.pc.Errors():
			return fmt.Errorf("replay %s/%d: %w", t.Changelog(), w.p, err)
		case m, ok := <-*msgs:
			if !ok {
				return errRevoked
			}
			// A source record arrived early: keep it for after recovery and
			// stop listening, so at most one is held.
			w.pending = m
			*msgs = nil
		case <-idle.C:
			if last+2 < rs.hwm || r.o.Transactions == nil {
				rs.log.Info("changelog has no more records below the high watermark", "last_offset", last, "high_watermark", rs.hwm)
			}
			last = rs.hwm - 1
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := commit(); err != nil {
		return err
	}
	elapsed := r.o.Clock().Sub(began)
	r.o.Hooks.RecoveryProgress(t.Name(), w.p, 0, 0, replayed%restoreBatch)
	rs.log.Info("recovered", "records", replayed, "seconds", elapsed.Seconds(),
		"records_per_second", int64(float64(replayed)/max(elapsed.Seconds(), 1e-3)))
	return nil
}

func (w *partitionWorker) reportProgress(rs *restoring, last, replayed int64, began time.Time, nextLog *time.Time) {
	left := rs.hwm - last - 1
	w.r.o.State.progress(w.p, left)
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
