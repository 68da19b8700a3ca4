package kafka_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/kafka"
)

// rangeLog is a one-partition topic on an in-process broker holding, in
// order: plain records k0 to k9, an aborted transaction of a0 to a2, a
// committed one of k10 to k14, and plain records k15 and k16.
func rangeLog(t *testing.T) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := c.ListenAddrs()[0]
	conf := func(txn string) *sarama.Config {
		cfg := sarama.NewConfig()
		cfg.Version = kafka.Version
		cfg.Producer.Return.Successes = true
		cfg.Producer.RequiredAcks = sarama.WaitForAll
		cfg.Producer.Idempotent = true
		cfg.Producer.Transaction.ID = txn
		cfg.Net.MaxOpenRequests = 1
		return cfg
	}
	send := func(p sarama.SyncProducer, keys ...string) {
		for _, k := range keys {
			if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "log", Key: sarama.StringEncoder(k), Value: sarama.StringEncoder("v-" + k)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	plain, err := sarama.NewSyncProducer([]string{addr}, conf(""))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	txn, err := sarama.NewSyncProducer([]string{addr}, conf("reader-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	send(plain, keys("k", 0, 10)...)
	for _, commit := range []bool{false, true} {
		if err := txn.BeginTxn(); err != nil {
			t.Fatal(err)
		}
		if commit {
			send(txn, keys("k", 10, 15)...)
			err = txn.CommitTxn()
		} else {
			send(txn, keys("a", 0, 3)...)
			err = txn.AbortTxn()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	send(plain, keys("k", 15, 17)...)
	return c, addr
}

func keys(prefix string, from, to int) []string {
	var ks []string
	for i := from; i < to; i++ {
		ks = append(ks, fmt.Sprintf("%s%d", prefix, i))
	}
	return ks
}

func readerClient(t *testing.T, addr string) sarama.Client {
	t.Helper()
	return readerClientWith(t, addr, func(*sarama.Config) {})
}

// readerClientWith is readerClient with its config changed by change.
func readerClientWith(t *testing.T, addr string, change func(*sarama.Config)) sarama.Client {
	t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "reader-test", ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	change(cfg)
	cl, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// take reads n records from pc, failing after 30 s without one.
func take(t *testing.T, pc sarama.PartitionConsumer, n int) []*sarama.ConsumerMessage {
	t.Helper()
	var got []*sarama.ConsumerMessage
	for len(got) < n {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				t.Fatalf("Messages closed after %d records, want %d", len(got), n)
			}
			got = append(got, m)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d records after 30 s, want %d", len(got), n)
		}
	}
	return got
}

// closeEmpty closes pc and fails if it had delivered more than was taken.
func closeEmpty(t *testing.T, pc sarama.PartitionConsumer) {
	t.Helper()
	if err := pc.Close(); err != nil {
		t.Fatal(err)
	}
	for m := range pc.Messages() {
		t.Errorf("record %s at offset %d delivered past the range", m.Key, m.Offset)
	}
}

func keysOf(ms []*sarama.ConsumerMessage) []string {
	var ks []string
	for _, m := range ms {
		ks = append(ks, string(m.Key))
	}
	return ks
}

// TestRangeReaderDeliversItsRange: a range is read from its first offset
// to its end, committed records only and in order, and nothing past end.
func TestRangeReaderDeliversItsRange(t *testing.T) {
	_, addr := rangeLog(t)
	cl := readerClient(t, addr)
	end, err := cl.GetOffset("log", 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	r := kafka.RangeReader{Client: cl}

	all := r.ConsumeRange("log", 0, 3, end)
	got := take(t, all, 14)
	if want := append(keys("k", 3, 10), keys("k", 10, 17)...); !slices.Equal(keysOf(got), want) {
		t.Errorf("read %v, want %v (no aborted record, no marker)", keysOf(got), want)
	}
	for i, m := range got {
		if m.Topic != "log" || m.Partition != 0 || string(m.Value) != "v-"+string(m.Key) || m.Timestamp.IsZero() {
			t.Errorf("record %d: %+v", i, m)
		}
		if i > 0 && m.Offset <= got[i-1].Offset {
			t.Errorf("offset %d after %d", m.Offset, got[i-1].Offset)
		}
	}
	if hwm := all.HighWaterMarkOffset(); hwm != end {
		t.Errorf("high watermark %d, want %d", hwm, end)
	}
	closeEmpty(t, all)

	// A range ending inside the first batches stops there.
	head := r.ConsumeRange("log", 0, 0, 5)
	if got := keysOf(take(t, head, 5)); !slices.Equal(got, keys("k", 0, 5)) {
		t.Errorf("read %v, want k0 to k4", got)
	}
	closeEmpty(t, head)
}

// TestRangeReaderWaitsOutLeaderMoves: fetches answered "not leader" are
// reported on Errors and tried again, and the range is read whole.
func TestRangeReaderWaitsOutLeaderMoves(t *testing.T) {
	c, addr := rangeLog(t)
	cl := readerClient(t, addr)
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: "log", Err: kerr.NotLeaderForPartition, Count: 3})
	defer h.Remove()
	pc := kafka.RangeReader{Client: cl}.ConsumeRange("log", 0, 0, 10)
	if got := keysOf(take(t, pc, 10)); !slices.Equal(got, keys("k", 0, 10)) {
		t.Errorf("read %v, want k0 to k9", got)
	}
	if h.Hits() != 3 {
		t.Errorf("%d fetches faulted, want 3", h.Hits())
	}
	closeEmpty(t, pc)
	var reported int
	for err := range pc.Errors() {
		if !errors.Is(err.Err, sarama.ErrNotLeaderForPartition) {
			t.Errorf("error %v, want not leader", err)
		}
		reported++
	}
	if reported != 3 {
		t.Errorf("%d errors reported, want 3", reported)
	}
}

// TestRangeReaderOutOfRange: an offset the log does not hold is reported
// and closes Messages, as sarama's consumer does, for the caller to start
// again where the log is.
func TestRangeReaderOutOfRange(t *testing.T) {
	_, addr := rangeLog(t)
	pc := kafka.RangeReader{Client: readerClient(t, addr)}.ConsumeRange("log", 0, 1000, 2000)
	select {
	case m, ok := <-pc.Messages():
		if ok {
			t.Fatalf("record at offset %d, want none", m.Offset)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Messages still open 30 s after reading out of range")
	}
	err, ok := <-pc.Errors()
	if !ok || !errors.Is(err.Err, sarama.ErrOffsetOutOfRange) {
		t.Errorf("error %v (open %v), want offset out of range", err, ok)
	}
	pc.AsyncClose()
}
