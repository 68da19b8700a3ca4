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
		next, pos, err := scanBlock(block, from, end)
		if err != nil || next < end {
			return next, err
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
	broker, err := client.Leader(topic, p)
	if err != nil {
		return nil, err
	}
	// A full fetch outside any fetch session (epoch -1), as sarama's consumer asks.
	req := &sarama.FetchRequest{Version: kafka.FetchVersion(client.Config().Version), MaxBytes: probeFetchBytes,
		Isolation: sarama.ReadCommitted, SessionEpoch: -1}
	req.AddBlock(topic, p, from, probeFetchBytes, -1)
	resp, err := broker.Fetch(req)
	if err != nil {
		_ = broker.Close()
		return nil, err
	}
	block := resp.GetBlock(topic, p)
	if block == nil {
		return nil, sarama.ErrIncompleteResponse
	}
	if !errors.Is(block.Err, sarama.ErrNoError) {
		if kafka.LeaderMoved(block.Err) {
			_ = client.RefreshMetadata(topic)
		}
		return nil, block.Err
	}
	return block, nil
}

// scanBlock looks through one fetch answer for the first deliverable record
// in [from, end). next is its offset, or end when the answer holds none;
// pos is the offset after the last complete batch it looked at.
func scanBlock(block *sarama.FetchResponseBlock, from, end int64) (next, pos int64, err error) {
	pos = from
	aborted := map[int64]bool{} // producers inside an aborted transaction
	txns := block.AbortedTransactions
	for _, recs := range block.RecordsSet {
		rb := recs.RecordBatch
		if rb == nil {
			// The old message format has no gaps worth telling apart: take
			// the answer as holding a record at from.
			if recs.MsgSet != nil && len(recs.MsgSet.Messages) > 0 {
				return from, pos, nil
			}
			continue
		}
		if rb.PartialTrailingRecord {
			break
		}
		last := rb.FirstOffset + int64(rb.LastOffsetDelta)
		for len(txns) > 0 && txns[0].FirstOffset <= last {
			aborted[txns[0].ProducerID] = true
			txns = txns[1:]
		}
		if last >= pos {
			pos = last + 1
		}
		if rb.Control {
			// A commit or abort marker ends the producer's transaction.
			delete(aborted, rb.ProducerID)
			continue
		}
		if rb.IsTransactional && aborted[rb.ProducerID] {
			continue
		}
		for _, r := range rb.Records {
			off := rb.FirstOffset + r.OffsetDelta
			switch {
			case off >= end:
				return end, pos, nil
			case off >= from:
				return off, pos, nil
			}
		}
	}
	return end, pos, nil
}
