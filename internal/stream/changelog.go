package stream

import (
	"errors"
	"fmt"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// lastStableOffset returns the last stable offset of topic partition p:
// where a replay that reads committed ends (records of transactions still
// open would never be delivered). sarama's Client.GetOffset always asks
// read-uncommitted, so this sends its own ListOffsets request.
func lastStableOffset(client sarama.Client, topic string, p int32) (int64, error) {
	broker, err := client.Leader(topic, p)
	if err != nil {
		return 0, err
	}
	req := sarama.NewOffsetRequest(client.Config().Version)
	req.IsolationLevel = sarama.ReadCommitted
	req.AddBlock(topic, p, sarama.OffsetNewest, 1)
	resp, err := broker.GetAvailableOffsets(req)
	if err != nil {
		_ = broker.Close()
		return 0, err
	}
	block := resp.GetBlock(topic, p)
	switch {
	case block == nil:
		return 0, sarama.ErrIncompleteResponse
	case !errors.Is(block.Err, sarama.ErrNoError):
		if kafka.LeaderMoved(block.Err) {
			_ = client.RefreshMetadata(topic)
		}
		return 0, block.Err
	case block.Offset >= 0:
		return block.Offset, nil
	case len(block.Offsets) == 1:
		return block.Offsets[0], nil
	}
	return 0, sarama.ErrIncompleteResponse
}

// probeFetchBytes bounds one probe fetch. The broker still returns a first
// batch larger than this whole (KIP-74).
const probeFetchBytes = 1 << 20

// nextRecord asks the leader of topic partition p for the first record a
// consumer would be given at or after offset from and before end: not a
// transaction marker, not part of an aborted transaction (when reading
// committed), not removed by compaction. It returns that record's offset,
// or end when there is none: the rest of the range is a gap that a replay
// waiting for records would wait on for ever.
//
// A replay calls it when its consumer has gone quiet before the end: the
// answer tells a gap (the replay is done) from records that are there but
// not delivered yet (a leader move, a broker being restarted; the replay
// keeps waiting).
func nextRecord(client sarama.Client, topic string, p int32, from, end int64) (int64, error) {
	for fetches := 0; from < end; fetches++ {
		if fetches == 64 {
			return 0, fmt.Errorf("no record found between offsets %d and %d after %d fetches", from, end, fetches)
		}
		block, err := probeFetch(client, topic, p, from)
		if err != nil {
			return 0, err
		}
		next, pos := scanBlock(block, from, end)
		if next < end {
			return next, nil
		}
		if pos <= from {
			// Nothing came back at from: the log holds no batch there (all
			// compacted away, or nothing visible below the last stable
			// offset), so the rest of the range is empty.
			return end, nil
		}
		from = pos
	}
	return end, nil
}

func probeFetch(client sarama.Client, topic string, p int32, from int64) (*sarama.FetchResponseBlock, error) {
	req := &sarama.FetchRequest{Version: kafka.FetchVersion(client.Config().Version), MaxBytes: probeFetchBytes, Isolation: sarama.ReadCommitted}
	req.AddBlock(topic, p, from, probeFetchBytes, -1)
	return kafka.FetchPartition(client, req, topic, p)
}

// scanBlock looks through one fetch answer for the first deliverable record
// in [from, end). next is its offset, or end when the answer holds none;
// pos is the offset after the last complete batch it looked at.
func scanBlock(block *sarama.FetchResponseBlock, from, end int64) (next, pos int64) {
	next = end
	pos = kafka.EachBatch(block, from, true, func(rb *sarama.RecordBatch, _ *sarama.MessageSet) bool {
		if rb == nil {
			// The old message format has no gaps worth telling apart: take
			// the answer as holding a record at from.
			next = from
			return false
		}
		for _, r := range rb.Records {
			if off := rb.FirstOffset + r.OffsetDelta; off >= from {
				next = min(off, end)
				return false
			}
		}
		return true
	})
	return next, pos
}
