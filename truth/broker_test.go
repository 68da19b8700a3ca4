package truth

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
)

// kafkaTruth asks the broker what the metrics claim: high watermarks,
// committed offsets, and records of a topic.
type kafkaTruth struct {
	t      testing.TB
	addr   string
	client sarama.Client
	admin  sarama.ClusterAdmin
}

func newKafkaTruth(t testing.TB, addr string) *kafkaTruth {
	t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "truth"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatalf("kafka admin: %v", err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return &kafkaTruth{t: t, addr: addr, client: client, admin: admin}
}

// hwms returns the high watermark of each partition of topic.
func (k *kafkaTruth) hwms(topic string) map[int32]int64 {
	k.t.Helper()
	return k.offsets(topic, sarama.OffsetNewest)
}

func (k *kafkaTruth) offsets(topic string, which int64) map[int32]int64 {
	k.t.Helper()
	if err := k.client.RefreshMetadata(topic); err != nil {
		k.t.Fatalf("metadata of %s: %v", topic, err)
	}
	parts, err := k.client.Partitions(topic)
	if err != nil {
		k.t.Fatalf("partitions of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	for _, p := range parts {
		o, err := k.client.GetOffset(topic, p, which)
		if err != nil {
			k.t.Fatalf("offset of %s/%d: %v", topic, p, err)
		}
		out[p] = o
	}
	return out
}

// committed returns the group's committed offset of each partition of
// topic (-1: none).
func (k *kafkaTruth) committed(group, topic string) map[int32]int64 {
	k.t.Helper()
	parts, err := k.client.Partitions(topic)
	if err != nil {
		k.t.Fatalf("partitions of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	resp, err := k.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		// No member committed yet.
		for _, p := range parts {
			out[p] = -1
		}
		return out
	}
	if err != nil {
		k.t.Fatalf("committed offsets of %s: %v", group, err)
	}
	for _, p := range parts {
		b := resp.GetBlock(topic, p)
		if b == nil {
			out[p] = -1
			continue
		}
		if !errors.Is(b.Err, sarama.ErrNoError) {
			k.t.Fatalf("committed offset of %s/%d: %v", topic, p, b.Err)
		}
		out[p] = b.Offset
	}
	return out
}

// readCommitted returns, per partition, the values of the records of
// topic a read_committed consumer receives, up to the high watermarks of
// now. The high watermark counts transaction markers too, which no
// consumer receives: a partition is read once a record at its last offset
// arrived, or nothing arrived for a while.
func (k *kafkaTruth) readCommitted(topic string) map[int32][][]byte {
	k.t.Helper()
	return k.readCommittedWhere(topic, nil)
}

// readKeys is readCommitted of a changelog without the records that hold
// no table key: a windowed table's closed-up-to point per partition, whose
// key starts with a zero byte (no key of a page does).
func (k *kafkaTruth) readKeys(changelog string) map[int32][][]byte {
	k.t.Helper()
	return k.readCommittedWhere(changelog, func(m *sarama.ConsumerMessage) bool { return len(m.Key) == 0 || m.Key[0] != 0 })
}

// readCommittedWhere is readCommitted of the records keep keeps (nil:
// all).
func (k *kafkaTruth) readCommittedWhere(topic string, keep func(*sarama.ConsumerMessage) bool) map[int32][][]byte {
	k.t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "truth-reader", ReadCommitted: true})
	if err != nil {
		k.t.Fatal(err)
	}
	consumer, err := sarama.NewConsumer([]string{k.addr}, cfg)
	if err != nil {
		k.t.Fatalf("consumer: %v", err)
	}
	defer consumer.Close()
	var (
		mu   sync.Mutex
		out  = map[int32][][]byte{}
		errs []error
		wg   sync.WaitGroup
	)
	for p, hwm := range k.hwms(topic) {
		out[p] = nil
		if hwm == 0 {
			continue
		}
		wg.Go(func() {
			vals, err := readPartition(consumer, topic, p, hwm, keep)
			mu.Lock()
			defer mu.Unlock()
			out[p] = vals
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		k.t.Fatalf("read %s: %v", topic, errs)
	}
	return out
}

func readPartition(consumer sarama.Consumer, topic string, p int32, hwm int64, keep func(*sarama.ConsumerMessage) bool) ([][]byte, error) {
	pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
	if err != nil {
		return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
	}
	defer pc.Close()
	var vals [][]byte
	idle := time.NewTimer(2 * time.Second)
	defer idle.Stop()
	for {
		select {
		case m := <-pc.Messages():
			if keep == nil || keep(m) {
				vals = append(vals, m.Value)
			}
			if m.Offset >= hwm-1 {
				return vals, nil
			}
			idle.Reset(2 * time.Second)
		case err := <-pc.Errors():
			return vals, fmt.Errorf("consume %s/%d: %w", topic, p, err)
		case <-idle.C:
			return vals, nil
		}
	}
}

// produce sends n records made by msg with an asynchronous producer and
// waits until the broker acknowledged each of them.
func (k *kafkaTruth) produce(n int, msg func(i int) *sarama.ProducerMessage) {
	k.t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "truth-producer"})
	if err != nil {
		k.t.Fatal(err)
	}
	cfg.Producer.Flush.Messages = 2000
	p, err := sarama.NewAsyncProducer([]string{k.addr}, cfg)
	if err != nil {
		k.t.Fatalf("producer: %v", err)
	}
	var (
		wg     sync.WaitGroup
		acked  int
		failed []error
	)
	wg.Go(func() {
		for range p.Successes() {
			acked++
		}
	})
	wg.Go(func() {
		for e := range p.Errors() {
			failed = append(failed, e.Err)
		}
	})
	for i := range n {
		p.Input() <- msg(i)
	}
	p.AsyncClose()
	wg.Wait()
	if len(failed) > 0 || acked != n {
		k.t.Fatalf("produced %d records: %d acknowledged, %d failed (first: %v)", n, acked, len(failed), first(failed))
	}
}

func first(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// total adds up the values of m.
func total(m map[int32]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// partitionKey is how the metrics tag a partition.
func partitionKey(p int32) string { return fmt.Sprint(p) }

// producer sends batches of records and waits for their acknowledgement.
type producer struct {
	t testing.TB
	p sarama.SyncProducer
}

func (k *kafkaTruth) producer() *producer {
	k.t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "truth-flow"})
	if err != nil {
		k.t.Fatal(err)
	}
	p, err := sarama.NewSyncProducer([]string{k.addr}, cfg)
	if err != nil {
		k.t.Fatalf("producer: %v", err)
	}
	k.t.Cleanup(func() { _ = p.Close() })
	return &producer{t: k.t, p: p}
}

// send sends msgs; it returns what went wrong instead of failing the test,
// for goroutines.
func (p *producer) send(msgs []*sarama.ProducerMessage) error {
	return p.p.SendMessages(msgs)
}

// view is a valid source record of page, keyed by the page as the worker
// keys it, with ts as its record timestamp and event time.
func view(page string, count int, ts time.Time) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{
		Topic:     sourceTopic,
		Key:       sarama.StringEncoder(page),
		Value:     sarama.ByteEncoder(pageview.Encode(pageview.PageView{Page: page, Count: int64(count), Timestamp: ts})),
		Timestamp: ts,
	}
}

// count is how many records recs holds.
func count(recs map[int32][][]byte) int {
	n := 0
	for _, vs := range recs {
		n += len(vs)
	}
	return n
}

// tableNames are the example's windowed and plain tables, named as its
// declaration names them (a generated worker renames them there).
func tableNames() (views, totals string) {
	ts := pageview.App().Tables
	return ts[0].Name(), ts[1].Name()
}
