package main

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// producer is an async producer whose acknowledgements are drained and
// whose failures are counted, for the benchmark's loads.
type producer struct {
	sarama.AsyncProducer
	failed atomic.Int64
	wg     sync.WaitGroup
}

func newProducer(addr string, cfg *sarama.Config) (*producer, error) {
	ap, err := sarama.NewAsyncProducer([]string{addr}, cfg)
	if err != nil {
		return nil, err
	}
	p := &producer{AsyncProducer: ap}
	p.wg.Go(func() {
		for range ap.Successes() {
		}
	})
	p.wg.Go(func() {
		for range ap.Errors() {
			p.failed.Add(1)
		}
	})
	return p, nil
}

// close sends what is buffered, waits for every outcome and fails if any
// record was not acknowledged.
func (p *producer) close() error {
	err := p.AsyncProducer.Close()
	p.wg.Wait()
	if n := p.failed.Load(); n > 0 {
		return fmt.Errorf("%d records failed", n)
	}
	return err
}

// stampLayout is the PageView timestamp format.
const stampLayout = "2006-01-02T15:04:05.000Z"

// pageView is the record /count/ would publish for one view of page: keyed
// by the page, made at (record timestamp), stamp being at in stampLayout.
func pageView(topic, page string, count int64, at time.Time, stamp string) *sarama.ProducerMessage {
	v := `{"page":"` + page + `","count":` + strconv.FormatInt(count, 10) + `,"timestamp":"` + stamp + `"}`
	return &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(page), Value: sarama.StringEncoder(v), Timestamp: at}
}

// createTopics creates the topics with partitions partitions each.
func createTopics(addr string, partitions int, topics ...string) error {
	admin, err := sarama.NewClusterAdmin([]string{addr}, saramaConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	for _, t := range topics {
		if err := admin.CreateTopic(t, &sarama.TopicDetail{NumPartitions: int32(partitions), ReplicationFactor: 1}, false); err != nil {
			return fmt.Errorf("create %s: %w", t, err)
		}
	}
	return nil
}
