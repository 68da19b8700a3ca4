package faults

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// kafkaClient reads what the worker wrote, from outside: committed offsets,
// high watermarks and records.
type kafkaClient struct {
	addr   string
	client sarama.Client
	admin  sarama.ClusterAdmin
}

func saramaConfig(isolation sarama.IsolationLevel) *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V3_9_0_0
	c.ClientID = "faults-test"
	c.Consumer.Return.Errors = true
	c.Consumer.IsolationLevel = isolation
	c.Metadata.Retry.Max = 20
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c
}

func openKafka(t testing.TB, addr string) *kafkaClient {
	t.Helper()
	client, err := sarama.NewClient([]string{addr}, saramaConfig(sarama.ReadUncommitted))
	if err != nil {
		t.Fatalf("kafka client on %s: %v", addr, err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatalf("kafka admin: %v", err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return &kafkaClient{addr: addr, client: client, admin: admin}
}

// behind returns how many records of topic the group has not committed
// yet, over all partitions.
func (k *kafkaClient) behind(group, topic string) (int64, string, error) {
	if err := k.client.RefreshMetadata(topic); err != nil {
		return 0, "", err
	}
	ps, err := k.client.Partitions(topic)
	if err != nil {
		return 0, "", err
	}
	resp, err := k.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ps})
	if err != nil {
		return 0, "", err
	}
	var total int64
	var parts []string
	for _, p := range ps {
		hwm, err := k.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return 0, "", err
		}
		committed := int64(0)
		if b := resp.GetBlock(topic, p); b != nil && b.Offset > 0 {
			committed = b.Offset
		}
		if lag := hwm - committed; lag != 0 {
			total += lag
			parts = append(parts, fmt.Sprintf("p%d committed %d of %d", p, committed, hwm))
		}
	}
	return total, strings.Join(parts, ", "), nil
}

// waitDrained waits until the group has committed every record of topic:
// everything sent before is then processed and durable. each runs at every
// poll.
func (k *kafkaClient) waitDrained(t testing.TB, group, topic string, timeout time.Duration, each ...func()) {
	t.Helper()
	waitFor(t, timeout, "every "+topic+" record committed by group "+group, func() (bool, string) {
		for _, f := range each {
			f()
		}
		n, detail, err := k.behind(group, topic)
		if err != nil {
			return false, err.Error()
		}
		return n == 0, fmt.Sprintf("%d behind: %s", n, detail)
	})
}

// groupState returns the group's state as the coordinator reports it
// ("Stable", "PreparingRebalance", ...).
func (k *kafkaClient) groupState(group string) (string, error) {
	ds, err := k.admin.DescribeConsumerGroups([]string{group})
	if err != nil {
		return "", err
	}
	if len(ds) != 1 {
		return "", fmt.Errorf("described %d groups", len(ds))
	}
	return ds[0].State, nil
}

// readAll reads every record of topic up to its current end. With
// read_committed, records of aborted transactions never arrive and the
// last offsets can be transaction markers, so a partition also ends when
// nothing has arrived for idle.
func (k *kafkaClient) readAll(t testing.TB, topic string, isolation sarama.IsolationLevel) []*sarama.ConsumerMessage {
	t.Helper()
	consumer, err := sarama.NewConsumer([]string{k.addr}, saramaConfig(isolation))
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer consumer.Close()
	if err := k.client.RefreshMetadata(topic); err != nil {
		t.Fatalf("metadata of %s: %v", topic, err)
	}
	ps, err := k.client.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	// Long enough for a race-built consumer on a busy 2-core machine (make
	// test runs other suites beside this one): a partition cut short here
	// loses its last records without an error under read_committed.
	const idle = 3 * time.Second
	var mu sync.Mutex
	var out []*sarama.ConsumerMessage
	var errs []string
	var wg sync.WaitGroup
	for _, p := range ps {
		low, err := k.client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("log start of %s/%d: %v", topic, p, err)
		}
		hwm, err := k.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("high watermark of %s/%d: %v", topic, p, err)
		}
		if low >= hwm {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, low)
		if err != nil {
			t.Fatalf("consume %s/%d: %v", topic, p, err)
		}
		wg.Go(func() {
			defer pc.AsyncClose()
			timer := time.NewTimer(idle)
			defer timer.Stop()
			var got []*sarama.ConsumerMessage
			for last := low - 1; last+1 < hwm; {
				select {
				case m := <-pc.Messages():
					got = append(got, m)
					last = m.Offset
					timer.Reset(idle)
				case err := <-pc.Errors():
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
					return
				case <-timer.C:
					if isolation == sarama.ReadUncommitted {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("%s/%d: nothing after offset %d of %d for %s", topic, p, last, hwm, idle))
						mu.Unlock()
					}
					last = hwm
				}
			}
			mu.Lock()
			out = append(out, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("reading %s: %s", topic, strings.Join(errs, "; "))
	}
	slices.SortFunc(out, func(a, b *sarama.ConsumerMessage) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return out
}

// header returns the value of header k of m.
func header(m *sarama.ConsumerMessage, k string) (string, bool) {
	for _, h := range m.Headers {
		if string(h.Key) == k {
			return string(h.Value), true
		}
	}
	return "", false
}
