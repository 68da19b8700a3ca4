package devbroker_test

import (
	"log/slog"
	"testing"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/devbroker"
)

// TestTopicsExistBeforeAnyWorker: a producer writes to a topic the broker
// was told to create, with no worker ever started, as with a provisioned
// Kafka.
func TestTopicsExistBeforeAnyWorker(t *testing.T) {
	b, err := devbroker.Start(devbroker.Options{Addr: "127.0.0.1:0", Partitions: 3, Topics: []string{"orders"}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cfg := sarama.NewConfig()
	cfg.Producer.Return.Successes = true
	cfg.Metadata.AllowAutoTopicCreation = false
	client, err := sarama.NewClient(b.Addrs(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	parts, err := client.Partitions("orders")
	if err != nil || len(parts) != 3 {
		t.Fatalf("partitions of orders = %v, %v; want 3", parts, err)
	}
	prod, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "orders", Value: sarama.StringEncoder("1")}); err != nil {
		t.Fatalf("produce to a created topic: %v", err)
	}
	if _, err := client.Partitions("other"); err == nil {
		t.Error("a topic not asked for exists: the broker must not create topics on its own")
	}
}
