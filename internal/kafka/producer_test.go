package kafka_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/devbroker"
	"github.com/gofaust/pageviews/internal/kafka"
)

// TestProducerFinishesAcknowledgementsInBursts sends groups of records that
// share produce requests (two topics, both partitions) and checks what the
// bursts of acknowledgements add up to: the highest offset per partition of
// each group of one topic (an Ack's offsets are by partition), and OnAck's
// counts per topic.
func TestProducerFinishesAcknowledgementsInBursts(t *testing.T) {
	b, err := devbroker.Start(devbroker.Options{Addr: "127.0.0.1:0", DataDir: filepath.Join(t.TempDir(), "broker"),
		Partitions: 2, Topics: []string{"a", "b"}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "test", ManualTopics: map[string]bool{"a": true, "b": true}})
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient([]string{b.Addrs()[0]}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	p, err := kafka.NewProducer(client)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	sent, calls := map[string]int{}, 0
	p.OnAck = func(topic string, n int, latency time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil || latency < 0 {
			t.Errorf("OnAck(%s, %d, %v, %v): want an acknowledgement", topic, n, latency, err)
		}
		sent[topic] += n
		calls++
	}
	defer p.Close()

	// Group g sends per[g][topic][partition] records.
	per := []map[string][2]int{
		{"a": {700, 0}},
		{"a": {0, 3}, "b": {250, 251}},
		{"b": {1, 0}},
	}
	acks := make([]*kafka.Ack, len(per))
	for g, topics := range per {
		var msgs []*sarama.ProducerMessage
		for topic, counts := range topics {
			for part, n := range counts {
				for i := range n {
					msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: int32(part),
						Key: &kafka.Bytes{B: fmt.Appendf(nil, "%d-%d", g, i)}, Value: &kafka.Bytes{B: []byte("v")}})
				}
			}
		}
		acks[g] = kafka.NewAck(len(msgs))
		if err := p.Send(acks[g], msgs...); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for g, a := range acks {
		if err := a.Wait(ctx); err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
	}

	// Each partition's records were written in group order, from offset 0.
	next := map[string]*[2]int64{"a": {}, "b": {}}
	want := map[string]int{}
	for g, topics := range per {
		for _, topic := range []string{"a", "b"} {
			counts := topics[topic]
			for part, n := range counts {
				next[topic][part] += int64(n)
				want[topic] += n
				if n > 0 && len(topics) == 1 {
					if got := acks[g].Offset(int32(part)); got != next[topic][part]-1 {
						t.Errorf("group %d: highest offset of %s/%d = %d, want %d", g, topic, part, got, next[topic][part]-1)
					}
				}
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for topic, n := range want {
		if sent[topic] != n {
			t.Errorf("OnAck counted %d records of %s, want %d", sent[topic], topic, n)
		}
	}
	if calls >= want["a"]+want["b"] {
		t.Errorf("OnAck called %d times for %d records: want bursts", calls, want["a"]+want["b"])
	}
}
