package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
)

// The tests here send poison records (records the agent refuses) that are
// hard to dead-letter, and check that each is parked in the dead-letter
// topic, that the partition commits past it, and that the valid records
// around it count exactly, under both guarantees.

// sendRecords produces values to partition 0 of the source topic, in order,
// with a producer that takes records up to 2 MiB (larger than the worker's
// own limit), and returns their offsets.
func sendRecords(t testing.TB, brokers string, values ...[]byte) []int64 {
	t.Helper()
	c := sarama.NewConfig()
	c.Version = kafka.Version
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.MaxMessageBytes = 2 << 20
	c.Producer.Partitioner = sarama.NewManualPartitioner
	p, err := sarama.NewSyncProducer([]string{brokers}, c)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var offsets []int64
	for _, v := range values {
		_, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: "page_views", Partition: 0, Key: sarama.StringEncoder("k"), Value: sarama.ByteEncoder(v)})
		if err != nil {
			t.Fatalf("send a %d-byte record: %v", len(v), err)
		}
		offsets = append(offsets, off)
	}
	return offsets
}

// readTopic returns every record of partition 0 of topic, read committed.
func readTopic(t testing.TB, brokers, topic string) []*sarama.ConsumerMessage {
	t.Helper()
	c := sarama.NewConfig()
	c.Version = kafka.Version
	c.Consumer.IsolationLevel = sarama.ReadCommitted
	c.Consumer.Fetch.Max = 4 << 20
	client, err := sarama.NewClient([]string{brokers}, c)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	end, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out []*sarama.ConsumerMessage
	for {
		select {
		case m := <-pc.Messages():
			out = append(out, m)
			if m.Offset+1 >= end {
				return out
			}
		case <-time.After(3 * time.Second):
			// The rest up to the end are transaction markers.
			return out
		}
	}
}

// committedOffset returns the group's committed offset of page_views/0.
func committedOffset(t testing.TB, brokers string) int64 {
	t.Helper()
	c := sarama.NewConfig()
	c.Version = kafka.Version
	admin, err := sarama.NewClusterAdmin([]string{brokers}, c)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets("pageviews", map[string][]int32{"page_views": {0}})
	if err != nil {
		t.Fatal(err)
	}
	if b := resp.GetBlock("page_views", 0); b != nil {
		return b.Offset
	}
	return -1
}

func header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

func view(page string) []byte { return pageview.Encode(pageview.PageView{Page: page}) }

// checkPoisonParked waits until the partition committed past every record
// and the valid ones counted exactly, then returns the dead letters.
func checkPoisonParked(t *testing.T, w *worker, brokers string, offsets []int64, valid int64) []*sarama.ConsumerMessage {
	t.Helper()
	end := offsets[len(offsets)-1] + 1
	eventually(t, 60*time.Second, "partition committed past the poison record", func() (bool, string) {
		got := committedOffset(t, brokers)
		return got == end, fmt.Sprintf("committed %d, want %d", got, end)
	})
	waitCounts(t, w.base, map[string]int64{"/ok": valid})
	select {
	case err := <-w.done:
		w.done <- err
		t.Fatalf("the worker stopped: %v\n%s", err, w.logs)
	default:
	}
	return readTopic(t, brokers, "page_views-dlq")
}

// TestPoisonTooLargeToDeadLetter: a record the broker took, just under its
// 1 MiB limit, fails the agent. Its dead letter, with the headers added,
// would exceed the producer's limit, which refused it every time and
// stalled the partition for ever (at_least_once) or crash-looped the
// worker (exactly_once). It is now cut to fit and marked so.
func TestPoisonTooLargeToDeadLetter(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	for _, guarantee := range []config.Guarantee{config.AtLeastOnce, config.ExactlyOnce} {
		t.Run(string(guarantee), func(t *testing.T) {
			c := startFaultBroker(t)
			vars := faultVars(t, c)
			vars["PARTITIONS"] = "1"
			vars["PROCESSING_GUARANTEE"] = string(guarantee)
			w := startWorker(t, vars, time.Now)
			brokers := vars["KAFKA_BROKERS"]

			const size = 1_048_400
			poison := []byte(`{"page":"/` + strings.Repeat("x", size-12) + `"}`)
			if len(poison) != size {
				t.Fatalf("poison record is %d bytes, want %d", len(poison), size)
			}
			var values [][]byte
			for range 5 {
				values = append(values, view("/ok"))
			}
			values = append(values, poison)
			for range 5 {
				values = append(values, view("/ok"))
			}
			offsets := sendRecords(t, brokers, values...)

			dead := checkPoisonParked(t, w, brokers, offsets, 10)
			if len(dead) != 1 {
				t.Fatalf("%d dead letters, want 1", len(dead))
			}
			d := dead[0]
			if header(d, "truncated") != "true" || header(d, "original.value.size") != strconv.Itoa(size) {
				t.Errorf("dead letter headers truncated=%q original.value.size=%q, want true and %d",
					header(d, "truncated"), header(d, "original.value.size"), size)
			}
			if header(d, "source.offset") != strconv.FormatInt(offsets[5], 10) || header(d, "source.partition") != "0" {
				t.Errorf("dead letter source %s/%s, want 0/%d", header(d, "source.partition"), header(d, "source.offset"), offsets[5])
			}
			if len(d.Value) >= size || len(d.Value) == 0 || !strings.HasPrefix(string(poison), string(d.Value)) {
				t.Errorf("dead letter value is %d bytes, want a non-empty prefix of the %d-byte record", len(d.Value), size)
			}
		})
	}
}

// TestDeadLetterRefusedOnceExactlyOnce: the broker refuses one dead letter
// (MESSAGE_TOO_LARGE). The transaction holding it can only be aborted; the
// worker aborts it and does the interval again instead of exiting, and the
// counts stay exact with exactly one dead letter.
func TestDeadLetterRefusedOnceExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	vars := faultVars(t, c)
	vars["PARTITIONS"] = "1"
	vars["PROCESSING_GUARANTEE"] = string(config.ExactlyOnce)
	w := startWorker(t, vars, time.Now)
	brokers := vars["KAFKA_BROKERS"]

	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "page_views-dlq", Err: kerr.MessageTooLarge, Count: 1})
	defer h.Remove()
	var values [][]byte
	for range 5 {
		values = append(values, view("/ok"))
	}
	values = append(values, []byte("not a page view"))
	for range 5 {
		values = append(values, view("/ok"))
	}
	offsets := sendRecords(t, brokers, values...)

	dead := checkPoisonParked(t, w, brokers, offsets, 10)
	if h.Hits() != 1 {
		t.Fatalf("the dead letter's produce was faulted %d times, want 1", h.Hits())
	}
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want exactly 1", len(dead))
	}
	if string(dead[0].Value) != "not a page view" {
		t.Errorf("dead letter value %q, want the record", dead[0].Value)
	}
	if !strings.Contains(w.logs.String(), "MESSAGE_TOO_LARGE") && !strings.Contains(w.logs.String(), "too large") {
		t.Errorf("the log does not name the cause of the aborted transaction\n%s", w.logs)
	}
}
