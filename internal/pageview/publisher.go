package pageview

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
)

// Publisher sends page views to the page-views topic, keyed by page.
type Publisher struct {
	Sender app.Sender
	Topic  string
	Clock  func() time.Time
	n      atomic.Int64
}

// Publish counts a view of page in this process's counter and sends it. It
// returns the counter once the broker has acknowledged the record.
func (p *Publisher) Publish(ctx context.Context, page string) (int64, error) {
	return p.publish(ctx, page, nil)
}

// Synthetic publishes a synthetic view of page, under ReservedPrefix, from
// sender (the SyntheticHeader's value).
func (p *Publisher) Synthetic(ctx context.Context, sender, page string) error {
	_, err := p.publish(ctx, page, []sarama.RecordHeader{{Key: []byte(SyntheticHeader), Value: []byte(sender)}})
	return err
}

func (p *Publisher) publish(ctx context.Context, page string, headers []sarama.RecordHeader) (int64, error) {
	pv := PageView{Page: page, Count: p.n.Add(1), Timestamp: p.Clock()}
	m := &sarama.ProducerMessage{Topic: p.Topic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(Encode(pv)), Headers: headers, Timestamp: pv.Timestamp}
	if _, _, err := p.Sender.SendAndWait(ctx, m); err != nil {
		return 0, fmt.Errorf("publish page view: %w", err)
	}
	return pv.Count, nil
}
