package kafka

import (
	"cmp"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// RangeReader reads offset ranges of partitions, such as the changelog
// records a recovery replays, with fetch requests of its own on its
// client's broker connections, one partition a request.
//
// sarama's consumer gathers the partitions asked of it for 100 ms before
// it fetches for them, so every replay began with a 100 ms wait: most of a
// short replay (2,000 records took 0.11 s), and paid again by each of the
// replays that take turns. A range reader fetches at once, and stops at the
// end of its range instead of polling past it: the fetches of the replays
// of one broker share a connection, where a fetch waiting on the broker for
// records holds up the others.
type RangeReader struct {
	Client sarama.Client
	// Uncommitted reads as read_uncommitted, whatever the client's
	// isolation level: a source read as its group's consumer reads it.
	Uncommitted bool
}

// ConsumeRange reads topic partition p from offset from up to end
// (exclusive). It delivers what a sarama partition consumer would, below
// end: records only (no transaction markers, nothing of aborted
// transactions when the client reads committed), in offset order, none
// below from. Fetch errors are sent on Errors and tried again after a
// backoff (retryFirst, doubling); an offset out of range is sent there too
// and then closes Messages, as sarama's does. Otherwise Messages stays
// open, past end as well, until AsyncClose or Close.
func (r RangeReader) ConsumeRange(topic string, p int32, from, end int64) sarama.PartitionConsumer {
	conf := r.Client.Config()
	c := r.newRange(topic, p, end, make(chan *sarama.ConsumerMessage, conf.ChannelBufferSize),
		make(chan *sarama.ConsumerError, conf.ChannelBufferSize))
	c.owned = true
	go c.run(from)
	return c
}

// newRange returns a range reader delivering to msgs and errs, not started.
func (r RangeReader) newRange(topic string, p int32, end int64, msgs chan *sarama.ConsumerMessage, errs chan *sarama.ConsumerError) *rangeConsumer {
	c := &rangeConsumer{client: r.Client, conf: r.Client.Config(), topic: topic, p: p, end: end, read: make(chan struct{})}
	c.pipe.init(msgs, errs)
	c.isolation = c.conf.Consumer.IsolationLevel
	if r.Uncommitted {
		c.isolation = sarama.ReadUncommitted
	}
	c.hwm.Store(-1)
	return c
}

// rangeConsumer is one range being read; it implements
// sarama.PartitionConsumer.
type rangeConsumer struct {
	client sarama.Client
	conf   *sarama.Config
	topic  string
	p      int32
	end    int64
	// isolation is the fetches' isolation level.
	isolation sarama.IsolationLevel
	pipe
	hwm atomic.Int64
	// owned: the reader closes msgs and errs when it stops (a Follower's
	// reader shares them with what comes after it).
	owned bool
	// read is closed when the reader stops fetching: the range read, an
	// offset out of range (outOfRange), a record too large, or closed.
	read       chan struct{}
	outOfRange bool
	onFetch    func(hwm int64) // called after each fetch, if set
	held       *atomic.Bool    // when set and true, no fetch (a Follower paused)
}

func (c *rangeConsumer) run(offset int64) {
	defer close(c.done)
	if c.owned {
		defer close(c.errs)
		defer close(c.msgs)
	}
	if !c.fetchRange(offset) {
		return
	}
	<-c.quit // the range is read: nothing more to fetch
}

// fetchRange delivers the range from offset; it returns false when the
// reader was closed, or stopped at an error.
func (c *rangeConsumer) fetchRange(offset int64) bool {
	defer close(c.read)
	size := c.conf.Consumer.Fetch.Default
	retries, opening := 0, 0
	for offset < c.end {
		if c.held != nil && c.held.Load() {
			if !c.wait(heldPoll) {
				return false
			}
			continue
		}
		block, err := c.fetch(offset, size)
		if errors.Is(err, sarama.ErrNotConnected) && opening < openingTries {
			// Another reader is opening the client's connection to the
			// broker: sarama's Open lets a second caller through before
			// the first holds the connection. Not worth a report.
			opening++
			if !c.wait(openingPoll) {
				return false
			}
			continue
		}
		if err != nil {
			c.report(err)
			if errors.Is(err, sarama.ErrOffsetOutOfRange) {
				c.outOfRange = true
				return false // what sarama does: the caller starts again elsewhere
			}
			if !c.wait(retryAfter(c.conf, retries)) {
				return false
			}
			retries++
			continue
		}
		retries, opening = 0, 0
		c.hwm.Store(block.HighWaterMarkOffset)
		if c.onFetch != nil {
			c.onFetch(block.HighWaterMarkOffset)
		}
		next, ok := c.deliver(block, offset)
		if !ok {
			return false
		}
		switch {
		case next > offset:
			offset, size = next, c.conf.Consumer.Fetch.Default
		case partial(block):
			// A batch larger than the fetch size came back cut off: ask
			// for more (brokers since KIP-74 return a first batch whole).
			if size = grow(size, c.conf.Consumer.Fetch.Max); size < 0 {
				c.report(sarama.ErrMessageTooLarge)
				return false
			}
		}
	}
	return true
}

// fetch asks the partition's leader for records from offset.
func (c *rangeConsumer) fetch(offset int64, size int32) (*sarama.FetchResponseBlock, error) {
	req := &sarama.FetchRequest{
		Version:     FetchVersion(c.conf.Version),
		MinBytes:    c.conf.Consumer.Fetch.Min,
		MaxWaitTime: int32(c.conf.Consumer.MaxWaitTime / time.Millisecond),
		MaxBytes:    c.conf.Consumer.Fetch.MaxBytes,
		Isolation:   c.isolation,
		RackID:      c.conf.RackID,
	}
	req.AddBlock(c.topic, c.p, offset, size, -1)
	return FetchPartition(c.client, req, c.topic, c.p)
}

// FetchPartition sends req, a fetch of topic partition p alone, to the
// partition's leader as a full fetch outside any fetch session (as
// sarama's consumer asks), and returns the answer for p. A partition error
// is returned as the error, after a metadata refresh when it says the
// leader moved.
func FetchPartition(client sarama.Client, req *sarama.FetchRequest, topic string, p int32) (*sarama.FetchResponseBlock, error) {
	broker, err := client.Leader(topic, p)
	if err != nil {
		return nil, err
	}
	req.SessionID, req.SessionEpoch = 0, -1
	resp, err := broker.Fetch(req)
	if err != nil {
		// Fetches started together race to open the client's connection
		// (the one that loses sees it not connected yet); closing it would
		// fail the others' fetches too. After any other error the client
		// opens it again.
		if !errors.Is(err, sarama.ErrNotConnected) {
			_ = broker.Close()
		}
		return nil, err
	}
	block := resp.GetBlock(topic, p)
	switch {
	case block == nil:
		return nil, sarama.ErrIncompleteResponse
	case !errors.Is(block.Err, sarama.ErrNoError):
		if LeaderMoved(block.Err) {
			_ = client.RefreshMetadata(topic)
		}
		return nil, block.Err
	}
	return block, nil
}

// deliver sends the records of block at or after offset on Messages, and
// returns the offset after the last complete batch; ok is false when the
// consumer was closed meanwhile.
func (c *rangeConsumer) deliver(block *sarama.FetchResponseBlock, offset int64) (next int64, ok bool) {
	ok = true
	take := func(m *sarama.ConsumerMessage) bool {
		if m.Offset < offset || m.Offset >= c.end {
			return true
		}
		m.Topic, m.Partition = c.topic, c.p
		ok = c.send(m)
		return ok
	}
	readCommitted := c.isolation == sarama.ReadCommitted
	next = EachBatch(block, offset, readCommitted, func(rb *sarama.RecordBatch, ms *sarama.MessageSet) bool {
		if rb != nil {
			for _, r := range rb.Records {
				ts := rb.FirstTimestamp.Add(r.TimestampDelta)
				if rb.LogAppendTime {
					ts = rb.MaxTimestamp
				}
				if !take(&sarama.ConsumerMessage{Key: r.Key, Value: r.Value, Offset: rb.FirstOffset + r.OffsetDelta, Timestamp: ts, Headers: r.Headers}) {
					return false
				}
			}
			return true
		}
		for _, mb := range ms.Messages {
			for _, m := range legacyMessages(mb) {
				if !take(m) {
					return false
				}
			}
		}
		return true
	})
	return next, ok
}

// EachBatch calls fn with each complete batch of block that a consumer is
// given, in order: not a transaction marker, and when readCommitted not
// part of an aborted transaction. A batch of the message format before
// 0.11 comes as ms, rb nil. It stops when fn returns false, and returns the
// offset after the last complete batch it came to, markers and aborted
// batches included, at least from.
func EachBatch(block *sarama.FetchResponseBlock, from int64, readCommitted bool, fn func(rb *sarama.RecordBatch, ms *sarama.MessageSet) bool) int64 {
	next := from
	txns := slices.SortedFunc(slices.Values(block.AbortedTransactions), func(a, b *sarama.AbortedTransaction) int {
		return cmp.Compare(a.FirstOffset, b.FirstOffset)
	})
	aborted := map[int64]bool{} // producers inside an aborted transaction
	for _, recs := range block.RecordsSet {
		rb, ms := recs.RecordBatch, recs.MsgSet
		if rb == nil {
			if ms == nil || ms.PartialTrailingMessage || len(ms.Messages) == 0 {
				continue
			}
			next = max(next, ms.Messages[len(ms.Messages)-1].Offset+1) // a wrapper's offset is its last message's
			if !fn(nil, ms) {
				return next
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
		next = max(next, last+1)
		switch {
		case rb.Control:
			delete(aborted, rb.ProducerID) // a marker ends the producer's transaction
		case readCommitted && rb.IsTransactional && aborted[rb.ProducerID]:
		case !fn(rb, nil):
			return next
		}
	}
	return next
}

// legacyMessages are the messages of a message block of the format before
// 0.11, a compressed wrapper's inner messages with their absolute offsets.
func legacyMessages(mb *sarama.MessageBlock) []*sarama.ConsumerMessage {
	msg := func(off int64, m *sarama.Message) *sarama.ConsumerMessage {
		return &sarama.ConsumerMessage{Key: m.Key, Value: m.Value, Offset: off, Timestamp: m.Timestamp}
	}
	if mb.Msg == nil {
		return nil
	}
	if mb.Msg.Set == nil {
		return []*sarama.ConsumerMessage{msg(mb.Offset, mb.Msg)}
	}
	inner := mb.Msg.Set.Messages
	var out []*sarama.ConsumerMessage
	for _, im := range inner {
		off := im.Offset
		if mb.Msg.Version >= 1 { // inner offsets relative to the wrapper's, which is the last one's
			off = mb.Offset - inner[len(inner)-1].Offset + im.Offset
		}
		if im.Msg != nil {
			out = append(out, msg(off, im.Msg))
		}
	}
	return out
}

func (c *rangeConsumer) send(m *sarama.ConsumerMessage) bool {
	select {
	case c.msgs <- m:
		return true
	case <-c.quit:
		return false
	}
}

// report sends err on Errors, if the client returns errors and there is
// room: a reader that does not read them must not stall the fetches.
func (c *rangeConsumer) report(err error) {
	if !c.conf.Consumer.Return.Errors {
		return
	}
	select {
	case c.errs <- &sarama.ConsumerError{Topic: c.topic, Partition: c.p, Err: err}:
	default:
	}
}

// A held reader looks again every heldPoll whether it may fetch.
const heldPoll = 10 * time.Millisecond

// A reader whose fetch finds the connection not open yet asks again every
// openingPoll, openingTries times, before it reports the error.
const (
	openingPoll  = time.Millisecond
	openingTries = 100
)

// retryFirst is how long a reader waits after a failed fetch; each failure
// in a row doubles it, up to the client's consumer retry backoff (sarama's
// 2 s, which its consumer waits every time): a connection still opening or
// a leader that moved a moment ago is usually there by the next try.
const retryFirst = 10 * time.Millisecond

// retryAfter is how long to wait after retries failures in a row.
func retryAfter(conf *sarama.Config, retries int) time.Duration {
	if f := conf.Consumer.Retry.BackoffFunc; f != nil {
		return f(retries)
	}
	return min(retryFirst<<min(retries, 16), max(conf.Consumer.Retry.Backoff, retryFirst))
}

// partial reports whether block holds nothing but a batch cut off by the
// fetch size.
func partial(block *sarama.FetchResponseBlock) bool {
	if block.Partial {
		return true
	}
	if len(block.RecordsSet) != 1 {
		return false
	}
	r := block.RecordsSet[0]
	return (r.RecordBatch != nil && r.RecordBatch.PartialTrailingRecord) || (r.MsgSet != nil && r.MsgSet.PartialTrailingMessage)
}

// grow doubles a fetch size, up to limit when it is set; -1 when it is
// there already.
func grow(size, limit int32) int32 {
	if limit > 0 && size >= limit {
		return -1
	}
	n := int32(min(int64(size)*2, math.MaxInt32))
	if limit > 0 {
		n = min(n, limit)
	}
	return n
}

// HighWaterMarkOffset is the partition's high watermark as of the last
// fetch, -1 before the first.
func (c *rangeConsumer) HighWaterMarkOffset() int64 { return c.hwm.Load() }

// A range is read to its end, never paused.
func (c *rangeConsumer) Pause()         {}
func (c *rangeConsumer) Resume()        {}
func (c *rangeConsumer) IsPaused() bool { return false }

// LeaderMoved reports whether a partition error means the client's idea of
// the partition's leader is out of date.
func LeaderMoved(err error) bool {
	return errors.Is(err, sarama.ErrNotLeaderForPartition) || errors.Is(err, sarama.ErrLeaderNotAvailable) ||
		errors.Is(err, sarama.ErrUnknownTopicOrPartition) || errors.Is(err, sarama.ErrFencedLeaderEpoch) ||
		errors.Is(err, sarama.ErrUnknownLeaderEpoch)
}

// FetchVersion is the Fetch version sarama's consumer uses for version v
// (topic names, not IDs).
func FetchVersion(v sarama.KafkaVersion) int16 {
	switch {
	case v.IsAtLeast(sarama.V2_7_0_0):
		return 12
	case v.IsAtLeast(sarama.V2_3_0_0):
		return 11
	default:
		return 4
	}
}

// pipe is what the partition consumers of this package deliver through,
// and how they are stopped: AsyncClose closes quit, and the consumer's
// goroutine closes done when it has stopped.
type pipe struct {
	msgs   chan *sarama.ConsumerMessage
	errs   chan *sarama.ConsumerError
	quit   chan struct{}
	closed sync.Once
	done   chan struct{}
}

func (c *pipe) init(msgs chan *sarama.ConsumerMessage, errs chan *sarama.ConsumerError) {
	c.msgs, c.errs, c.quit, c.done = msgs, errs, make(chan struct{}), make(chan struct{})
}

func (c *pipe) AsyncClose() { c.closed.Do(func() { close(c.quit) }) }

func (c *pipe) Close() error {
	c.AsyncClose()
	<-c.done
	return nil
}

func (c *pipe) Messages() <-chan *sarama.ConsumerMessage { return c.msgs }
func (c *pipe) Errors() <-chan *sarama.ConsumerError     { return c.errs }

// wait waits d, or until the consumer is closed (false).
func (c *pipe) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.quit:
		return false
	}
}
