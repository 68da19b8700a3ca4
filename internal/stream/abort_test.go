package stream

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/kafka"
)

// TestAbortReplacesAProducerThatRefuses covers the way out when sarama
// refuses an abort: its transaction state is not one it can abort from
// (here: no transaction is open, which is where produce errors racing an
// earlier abort's epoch bump leave it). The partition gets a new producer
// under the same transactional id; its InitProducerId fences the old one and
// aborts on the coordinator what that one left open.
func TestAbortReplacesAProducerThatRefuses(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	base, err := kafka.NewConfig(kafka.Options{ClientID: "abort-test", Group: "g", ManualTopics: map[string]bool{"out": true}})
	if err != nil {
		t.Fatal(err)
	}
	made := 0
	newProducer := func(int32) (*kafka.Producer, error) {
		made++
		return kafka.NewTransactionalProducer(brokers, base, "g-out-0", time.Second)
	}
	first, err := newProducer(0)
	if err != nil {
		t.Fatal(err)
	}
	w := &partitionWorker{
		r:   &Runtime{o: Options{Transactions: newProducer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		txp: first,
	}
	defer func() {
		if err := w.txp.Close(); err != nil {
			t.Error(err)
		}
	}()

	if err := first.Abort(); err == nil {
		t.Fatal("sarama aborted a transaction that was never begun; this test no longer reaches the replacement")
	}
	if err := w.abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if w.txp == first || made != 2 {
		t.Fatalf("the producer was not replaced (producers made: %d)", made)
	}
	if err := first.Close(); err != nil { // closed by abort: again is a no-op
		t.Fatalf("second close of the replaced producer: %v", err)
	}

	// The new producer works: a transaction with a record in it, ended.
	if err := w.txp.Begin(); err != nil {
		t.Fatal(err)
	}
	ack := kafka.NewAck(1)
	if err := w.txp.Send(ack, &sarama.ProducerMessage{Topic: "out", Partition: 0, Value: sarama.StringEncoder("v")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.txp.Abort(); err != nil {
		t.Fatalf("abort with the new producer: %v", err)
	}
}
