package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/gofaust/pageviews/internal/tracing"
)

// Producer sends records through one idempotent async producer and lets
// each caller wait for the acknowledgement of its own records.
type Producer struct {
	ap   sarama.AsyncProducer
	done chan struct{}
	wg   sync.WaitGroup
	// closeOnce makes Close safe to call again (sarama's is not).
	closeOnce sync.Once
	closeErr  error
	// OnAck observes records' outcomes (metrics): n records of topic,
	// acknowledged (err nil) or failed, latency their mean time from Send.
	// Acknowledgements come in bursts, one call per topic of a burst. Set
	// it before use.
	OnAck func(topic string, n int, latency time.Duration, err error)
	// MaxMessageBytes is the largest record (sarama's ByteSize) the
	// producer takes; larger ones it refuses without sending them.
	MaxMessageBytes int
}

// Ack is a group of records whose acknowledgements one caller waits for.
type Ack struct {
	mu      sync.Mutex
	pending int
	err     error
	offsets map[int32]int64 // highest acknowledged offset per partition
	done    chan struct{}
	sent    time.Time
}

// NewAck returns an Ack for n records.
func NewAck(n int) *Ack {
	a := &Ack{pending: n, done: make(chan struct{})}
	if n == 0 {
		close(a.done)
	}
	return a
}

func (a *Ack) finish(partition int32, offset int64, err error) { a.finishN(partition, offset, 1, err) }

// finishN ends n records of the group, of one partition; offset is the
// highest of them.
func (a *Ack) finishN(partition int32, offset int64, n int, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil && a.err == nil {
		a.err = err
	}
	if err == nil {
		if a.offsets == nil {
			a.offsets = make(map[int32]int64, 1)
		}
		if cur, ok := a.offsets[partition]; !ok || offset > cur {
			a.offsets[partition] = offset
		}
	}
	a.pending -= n
	if a.pending == 0 {
		close(a.done)
	}
}

// Wait blocks until every record of the group is acknowledged or failed, or
// ctx ends. It returns the first error.
func (a *Ack) Wait(ctx context.Context) error {
	select {
	case <-a.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Failed reports whether every record is done and one of them failed.
func (a *Ack) Failed() bool {
	select {
	case <-a.done:
	default:
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err != nil
}

// Err returns the first error of the group once every record is done; nil
// before then or when all were acknowledged.
func (a *Ack) Err() error {
	select {
	case <-a.done:
	default:
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Offset returns the highest acknowledged offset of partition p, or -1.
func (a *Ack) Offset(p int32) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if o, ok := a.offsets[p]; ok {
		return o
	}
	return -1
}

// NewProducer starts a producer on client, whose config must come from
// NewConfig.
func NewProducer(client sarama.Client) (*Producer, error) {
	// The idempotent producer asks for its producer id at once, which a
	// coordinator that is loading or moving refuses for a moment.
	var ap sarama.AsyncProducer
	err := retryFor(topicsRetry, func() (err error) {
		ap, err = sarama.NewAsyncProducerFromClient(client)
		return err
	})
	if err != nil {
		return nil, err
	}
	return wrap(ap, client.Config()), nil
}

// NewTransactionalProducer starts a producer with its own client whose
// transactional id is id. Starting it fences any older producer with the
// same id (a zombie owner of the partition) and aborts its open transaction.
//
// txnSpan is the longest a transaction stays open (about a commit
// interval): the transaction timeout is 10 s or three times that, and at
// most the brokers' default limit (transaction.max.timeout.ms, 15 min).
func NewTransactionalProducer(brokers []string, base *sarama.Config, id string, txnSpan time.Duration) (*Producer, error) {
	c := *base
	c.Producer.Transaction.ID = id
	// A transaction spans at most about a commit interval. A short timeout
	// bounds how long a transaction a crashed owner left open holds back
	// the next owner (its offset fetch answers UNSTABLE_OFFSET_COMMIT
	// until the transaction ends); 10 s is Kafka Streams' default.
	c.Producer.Transaction.Timeout = min(max(10*time.Second, 3*txnSpan), maxTransactionTimeout)
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Net.MaxOpenRequests = 1
	c.ClientID = base.ClientID + "-txn"
	// Like the idempotent producer's, its first request (InitProducerId)
	// is refused for a moment by a coordinator that is loading or moving.
	var ap sarama.AsyncProducer
	err := retryFor(topicsRetry, func() (err error) {
		ap, err = sarama.NewAsyncProducer(brokers, &c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transactional producer %s: %w", id, err)
	}
	return wrap(ap, &c), nil
}

// FinalError reports whether a produce error will recur however often the
// record is sent again: the record itself is refused (too large, invalid),
// by the broker or by sarama before sending.
func FinalError(err error) bool {
	var cerr sarama.ConfigurationError
	return errors.As(err, &cerr) || errors.Is(err, sarama.ErrMessageSizeTooLarge) ||
		errors.Is(err, sarama.ErrInvalidRecord) || errors.Is(err, sarama.ErrInvalidMessage) ||
		errors.Is(err, sarama.ErrInvalidMessageSize) || errors.Is(err, sarama.ErrInvalidTimestamp)
}

// Begin starts a transaction unless one is open.
func (p *Producer) Begin() error {
	if p.ap.TxnStatus()&sarama.ProducerTxnFlagInTransaction != 0 {
		return nil
	}
	return p.ap.BeginTxn()
}

// TransactionFailed reports whether the open transaction failed (a record
// in it was refused) and can only be aborted.
func (p *Producer) TransactionFailed() bool {
	return p.ap.TxnStatus()&sarama.ProducerTxnFlagAbortableError != 0
}

// Dead reports whether the transactional producer met a fatal error (it was
// fenced, say) and can do nothing more.
func (p *Producer) Dead() bool {
	return p.ap.TxnStatus()&sarama.ProducerTxnFlagFatalError != 0
}

// InTransaction reports whether a transaction is open.
func (p *Producer) InTransaction() bool {
	return p.ap.TxnStatus()&sarama.ProducerTxnFlagInTransaction != 0
}

// CommitWithOffsets adds the consumer offsets to the open transaction and
// commits it: the records sent in it and the offsets become visible
// together, or not at all.
func (p *Producer) CommitWithOffsets(offsets map[string][]*sarama.PartitionOffsetMetadata, group *sarama.ConsumerGroupMetadata) error {
	if err := p.ap.AddOffsetsToTxnWithGroupMetadata(offsets, group); err != nil {
		return fmt.Errorf("add offsets to transaction: %w", err)
	}
	if err := p.ap.CommitTxn(); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// maxTransactionTimeout is the brokers' default transaction.max.timeout.ms;
// a producer asking for more is refused.
const maxTransactionTimeout = 15 * time.Minute

// Commit commits the open transaction: the records sent in it become
// visible to read_committed readers.
func (p *Producer) Commit() error {
	if err := p.ap.CommitTxn(); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// Abort aborts the open transaction.
func (p *Producer) Abort() error { return p.ap.AbortTxn() }

func wrap(ap sarama.AsyncProducer, c *sarama.Config) *Producer {
	p := &Producer{ap: ap, done: make(chan struct{}), MaxMessageBytes: c.Producer.MaxMessageBytes}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		burst := make([]*sarama.ProducerMessage, 0, maxBurst)
		for m := range ap.Successes() {
			// Take what else is waiting, and finish it together: a flush's
			// records are acknowledged a produce request at a time.
			burst = append(burst[:0], m)
		more:
			for len(burst) < maxBurst {
				select {
				case m, ok := <-ap.Successes():
					if !ok {
						break more
					}
					burst = append(burst, m)
				default:
					break more
				}
			}
			p.acknowledged(burst)
			clear(burst)
		}
	}()
	go func() {
		defer p.wg.Done()
		for e := range ap.Errors() {
			if a, ok := e.Msg.Metadata.(*Ack); ok {
				if p.OnAck != nil {
					p.OnAck(e.Msg.Topic, 1, time.Since(a.sent), e.Err)
				}
				a.finish(e.Msg.Partition, -1, e.Err)
			}
		}
	}()
	return p
}

// maxBurst bounds the acknowledgements finished together.
const maxBurst = 1024

// acknowledged finishes a burst of acknowledged records: OnAck once per
// topic, then each run of records of one Ack and partition at once. OnAck
// comes first so that a caller its Ack wakes finds its records counted.
func (p *Producer) acknowledged(msgs []*sarama.ProducerMessage) {
	if p.OnAck != nil {
		now := time.Now()
		topics := make([]topicAcks, 0, 4) // a flush's changelogs and results: on the stack
		for i := 0; i < len(msgs); {
			m := msgs[i]
			j, _ := runEnd(msgs, i)
			n := j - i
			i = j
			a, ok := m.Metadata.(*Ack)
			if !ok {
				continue
			}
			// A burst holds the records of a few topics (a flush's
			// changelogs and its closed windows' results): searched, not
			// hashed.
			k := slices.IndexFunc(topics, func(t topicAcks) bool { return t.topic == m.Topic })
			if k < 0 {
				k = len(topics)
				topics = append(topics, topicAcks{topic: m.Topic})
			}
			topics[k].n += n
			topics[k].latency += time.Duration(n) * now.Sub(a.sent)
		}
		for _, t := range topics {
			p.OnAck(t.topic, t.n, t.latency/time.Duration(t.n), nil)
		}
	}
	for i := 0; i < len(msgs); {
		m := msgs[i]
		j, highest := runEnd(msgs, i)
		if a, ok := m.Metadata.(*Ack); ok {
			a.finishN(m.Partition, highest, j-i, nil)
		}
		i = j
	}
}

// runEnd returns the end of the run of records from msgs[i] on that share
// its Ack, topic and partition, and the highest offset among them.
func runEnd(msgs []*sarama.ProducerMessage, i int) (int, int64) {
	m := msgs[i]
	j, highest := i+1, m.Offset
	for j < len(msgs) && msgs[j].Metadata == m.Metadata && msgs[j].Partition == m.Partition && msgs[j].Topic == m.Topic {
		highest = max(highest, msgs[j].Offset)
		j++
	}
	return j, highest
}

// topicAcks sums a burst's acknowledgements of one topic: records, and the
// sum of their latencies.
type topicAcks struct {
	topic   string
	n       int
	latency time.Duration
}

// Bytes is a record's key or value for sarama, like sarama.ByteEncoder,
// but held by pointer: a ByteEncoder stored in the Encoder interface costs
// an allocation of its own, and a flush of many records allocates their
// Bytes in one slice.
type Bytes struct{ B []byte }

// Encode implements sarama.Encoder.
func (b *Bytes) Encode() ([]byte, error) { return b.B, nil }

// Length implements sarama.Encoder.
func (b *Bytes) Length() int { return len(b.B) }

// ErrClosed is returned when sending on a closed producer.
var ErrClosed = errors.New("producer closed")

// Send queues msgs, all belonging to ack. It does not wait.
func (p *Producer) Send(ack *Ack, msgs ...*sarama.ProducerMessage) (err error) {
	defer func() {
		// Input panics once the producer is closed during shutdown.
		if recover() != nil {
			err = ErrClosed
		}
	}()
	ack.sent = time.Now()
	for _, m := range msgs {
		m.Metadata = ack
		p.ap.Input() <- m
	}
	return nil
}

// SendAndWait sends one record and waits for its acknowledgement. It
// returns the record's partition and offset. A producer span continues the
// trace in ctx, and its context travels in the record's headers (W3C
// traceparent), so the consumer continues the same trace.
func (p *Producer) SendAndWait(ctx context.Context, m *sarama.ProducerMessage) (int32, int64, error) {
	ctx, span := tracing.Tracer().Start(ctx, "send "+m.Topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", m.Topic)))
	defer span.End()
	otel.GetTextMapPropagator().Inject(ctx, tracing.ProducerHeaders{M: m})
	ack := NewAck(1)
	if err := p.Send(ack, m); err != nil {
		span.SetStatus(codes.Error, err.Error())
		return 0, 0, err
	}
	if err := ack.Wait(ctx); err != nil {
		span.SetStatus(codes.Error, err.Error())
		return 0, 0, err
	}
	span.SetAttributes(attribute.Int64("messaging.kafka.destination.partition", int64(m.Partition)),
		attribute.Int64("messaging.kafka.message.offset", m.Offset))
	return m.Partition, m.Offset, nil
}

// Close flushes what is queued and stops the producer.
func (p *Producer) Close() error {
	p.closeOnce.Do(func() {
		p.closeErr = p.ap.Close()
		p.wg.Wait()
	})
	return p.closeErr
}
