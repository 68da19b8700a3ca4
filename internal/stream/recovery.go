package stream

import (
	"context"
	"fmt"
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
	// restoreIdle is how long recovery waits for a record before it asks
	// the broker whether the high watermark was reached. Compaction and
	// transaction markers leave gaps in offsets, so the last offset below the
	// high watermark may never arrive.
	restoreIdle = 2 * time.Second
)

// recover replays each table's changelog partition from the offset after the
// stored checkpoint to the high watermark.
func (w *partitionWorker) recover(ctx context.Context) error {
	for _, t := range w.r.o.Tables {
		if err := w.recoverTable(ctx, t); err != nil {
			return fmt.Errorf("recover %s: %w", t.Name(), err)
		}
	}
	return nil
}

func (w *partitionWorker) recoverTable(ctx context.Context, t Table) error {
	r := w.r
	topic := t.Changelog()
	cp, ok, err := t.Assign(w.p)
	if err != nil {
		return err
	}
	hwm, err := r.o.Client.GetOffset(topic, w.p, sarama.OffsetNewest)
	if err != nil {
		return fmt.Errorf("high watermark of %s/%d: %w", topic, w.p, err)
	}
	low, err := r.o.Client.GetOffset(topic, w.p, sarama.OffsetOldest)
	if err != nil {
		return fmt.Errorf("log start of %s/%d: %w", topic, w.p, err)
	}
	start := low
	if ok {
		start = cp.Offset + 1
		if start > hwm {
			w.log.Warn("local store is ahead of the changelog; wiping the partition and rebuilding it from the start",
				"table", t.Name(), "stored_offset", cp.Offset, "high_watermark", hwm)
			if err := t.Wipe(w.p); err != nil {
				return err
			}
			start = low
		}
		if start < low {
			start = low
		}
	}
	total := hwm - start
	log := w.log.With("table", t.Name(), "changelog", topic)
	log.Info("recovering", "from_offset", start, "high_watermark", hwm, "records", total, "stored", ok)
	r.o.State.progress(w.p, total)
	if total <= 0 {
		b := r.o.DB.NewBatch()
		if err := t.Recovered(w.p, b, -1); err != nil {
			b.Discard()
			return err
		}
		return b.Commit()
	}

	pc, err := r.o.Restore.ConsumePartition(topic, w.p, start)
	if err != nil {
		return fmt.Errorf("consume %s/%d from %d: %w", topic, w.p, start, err)
	}
	defer pc.AsyncClose()

	began := r.o.Clock()
	nextLog := began.Add(progressEvery)
	b := r.o.DB.NewBatch()
	defer func() { b.Discard() }()
	last := start - 1
	var replayed int64
	idle := time.NewTimer(restoreIdle)
	defer idle.Stop()

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

	for last+1 < hwm {
		select {
		case m := <-pc.Messages():
			if err := t.Restore(w.p, b, m.Key, m.Value, m.Timestamp); err != nil {
				return err
			}
			last = m.Offset
			replayed++
			if replayed%restoreBatch == 0 {
				if err := commit(); err != nil {
					return err
				}
				r.o.State.progress(w.p, hwm-last-1)
				if now := r.o.Clock(); now.After(nextLog) {
					nextLog = now.Add(progressEvery)
					rate := float64(replayed) / now.Sub(began).Seconds()
					left := hwm - last - 1
					log.Info("recovery progress", "records_left", left, "records_per_second", int64(rate),
						"eta", (time.Duration(float64(left) / rate * float64(time.Second))).Round(time.Second).String())
				}
			}
			idle.Reset(restoreIdle) // since Go 1.23 Reset drops a pending expiry
		case err := <-pc.Errors():
			return fmt.Errorf("replay %s/%d: %w", topic, w.p, err)
		case <-idle.C:
			// Nothing arrived for a while: the rest of the range is a gap.
			log.Info("changelog has no records up to the high watermark; recovery complete", "last_offset", last, "high_watermark", hwm)
			last = hwm - 1
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := commit(); err != nil {
		return err
	}
	r.o.State.progress(w.p, 0)
	elapsed := r.o.Clock().Sub(began)
	log.Info("recovered", "records", replayed, "seconds", elapsed.Seconds(),
		"records_per_second", int64(float64(replayed)/max(elapsed.Seconds(), 1e-9)))
	return nil
}
