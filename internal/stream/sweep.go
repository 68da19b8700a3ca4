package stream

import (
	"context"
	"time"

	"github.com/IBM/sarama"
)

// staleExpirer is a table whose copies of partitions held elsewhere can
// expire (table.Windowed).
type staleExpirer interface {
	Table
	ExpireStale(p int32, streamTime int64) error
}

// sweep expires the windows of the partitions this worker keeps in its
// store but neither processes nor copies: what a partition left behind
// when it moved. Nothing else would expire them until the partition came
// back. Their stream time is the newest timestamp on their changelog, as
// each flush stamps its records with it.
func (s *Standby) sweep(ctx context.Context) {
	for _, t := range s.Tables {
		x, ok := t.(staleExpirer)
		if !ok {
			continue
		}
		parts, err := s.DB.Partitions(t.Name())
		if err != nil {
			s.Log.Warn("sweep: partitions of the store", "table", t.Name(), "error", err)
			continue
		}
		for _, p := range parts {
			s.mu.Lock()
			held := s.active[p] || s.tailers[p] != nil
			s.mu.Unlock()
			if held || ctx.Err() != nil {
				continue
			}
			ts, err := s.changelogTime(ctx, t.Changelog(), p)
			if err == nil {
				err = x.ExpireStale(p, ts)
			}
			if err != nil {
				s.Log.Debug("sweep: partition skipped", "table", t.Name(), "partition", p, "error", err)
			}
		}
	}
}

// changelogTime is the newest record timestamp (Unix ms) near the end of a
// changelog partition; 0 when it is empty. It reads the last records only,
// and may stop one short of the last (a commit marker may take that
// offset): an older time expires less, never more.
func (s *Standby) changelogTime(ctx context.Context, topic string, p int32) (int64, error) {
	end, err := s.Client.GetOffset(topic, p, sarama.OffsetNewest)
	if err != nil || end == 0 {
		return 0, err
	}
	first, err := s.Client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return 0, err
	}
	pc, err := s.Restore.ConsumePartition(topic, p, max(end-32, first))
	if err != nil {
		return 0, err
	}
	defer pc.AsyncClose()
	var newest int64
	timeout := time.NewTimer(time.Second)
	defer timeout.Stop()
	for {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				return newest, nil
			}
			newest = max(newest, m.Timestamp.UnixMilli())
			if m.Offset >= end-2 {
				return newest, nil
			}
		case <-timeout.C: // the rest is markers, or a transaction still open
			return newest, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
