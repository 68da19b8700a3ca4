package pageview

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// Sender sends one record and waits for the broker's acknowledgement.
type Sender interface {
	SendAndWait(ctx context.Context, m *sarama.ProducerMessage) (partition int32, offset int64, err error)
}

// Publisher sends page views to the page-views topic, keyed by page.
type Publisher struct {
	Sender Sender
	Topic  string
	Clock  func() time.Time

	n atomic.Int64
}

// Publish counts a view of page in this process's counter and sends it. It
// returns the counter once the broker has acknowledged the record.
func (p *Publisher) Publish(ctx context.Context, page string) (int64, error) {
	return p.publish(ctx, page, nil)
}

// Synthetic returns a Publish for synthetic views of pages under
// ReservedPrefix: their records carry SyntheticHeader naming sender.
func (p *Publisher) Synthetic(sender string) func(ctx context.Context, page string) (int64, error) {
	return func(ctx context.Context, page string) (int64, error) {
		// A slice per record: the producer adds the trace context to it.
		return p.publish(ctx, page, []sarama.RecordHeader{{Key: []byte(SyntheticHeader), Value: []byte(sender)}})
	}
}

func (p *Publisher) publish(ctx context.Context, page string, headers []sarama.RecordHeader) (int64, error) {
	n := p.n.Add(1)
	pv := PageView{Page: page, Count: n, Timestamp: p.Clock()}
	_, _, err := p.Sender.SendAndWait(ctx, &sarama.ProducerMessage{
		Topic:     p.Topic,
		Key:       sarama.StringEncoder(page),
		Value:     sarama.ByteEncoder(Encode(pv)),
		Headers:   headers,
		Timestamp: pv.Timestamp,
	})
	if err != nil {
		return 0, fmt.Errorf("publish page view: %w", err)
	}
	return n, nil
}
