package stream

import (
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
)

// slowToLetGo is a consumer whose partition consumers let go of their
// partitions 200 ms after they are closed, as sarama's do when a fetch is
// in flight: a copy at its changelog's end long-polls a broker for up to
// MaxWaitTime (on the dev broker they let go almost at once).
type slowToLetGo struct{ sarama.Consumer }

func (c slowToLetGo) ConsumePartition(topic string, p int32, offset int64) (sarama.PartitionConsumer, error) {
	pc, err := c.Consumer.ConsumePartition(topic, p, offset)
	if err != nil {
		return nil, err
	}
	return &slowPartition{PartitionConsumer: pc}, nil
}

type slowPartition struct {
	sarama.PartitionConsumer
	once sync.Once
}

func (pc *slowPartition) AsyncClose() {
	pc.once.Do(func() {
		go func() {
			time.Sleep(200 * time.Millisecond)
			pc.PartitionConsumer.AsyncClose()
		}()
	})
}

func (pc *slowPartition) Close() error {
	pc.AsyncClose()
	time.Sleep(200 * time.Millisecond)
	return pc.PartitionConsumer.Close()
}

// A standby copy stopped and started again at once (its partition assigned
// here and taken away again, as quick rebalances do) waits for its last
// changelog consumer to let go of the partition, which it does only after
// its fetch in flight returns (slowToLetGo), rather than failing (sarama's "already being
// consumed") and waiting for the next reconcile; then it copies on.
func TestStandbyCopyStartedAgainWhileItsConsumerCloses(t *testing.T) {
	client, prod := kfakeClient(t, 1, "totals-changelog")
	send := func(key string, v int64) {
		t.Helper()
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "totals-changelog", Key: sarama.StringEncoder(key),
			Value: sarama.StringEncoder(strconv.FormatInt(v, 10))}); err != nil {
			t.Fatal(err)
		}
	}
	send("/a", 1)
	send("/b", 1)
	// The copies read on a client of their own, as the worker's do: on
	// the one that answers the offset lookups, a lookup would queue behind
	// the long-polling fetch, so no copy could start before that returned.
	copies := testClient(t, []string{client.Brokers()[0].Addr()}, "copies", "totals-changelog")
	consumer, err := sarama.NewConsumerFromClient(copies)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	restore := slowToLetGo{consumer}
	db, _, err := store.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	s := &Standby{Replicas: 1, Tables: []Table{table.New("totals", "totals-changelog", table.Int64{}, db)},
		Client: client, Reader: kafka.RangeReader{Client: copies}, Restore: restore, DB: db, Every: time.Hour, // reconciles only when placed
		Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	s.Place([]int32{0}, nil)
	done := make(chan error, 1)
	go func() { done <- s.Run(t.Context()) }()

	// caughtUp waits until the copy of partition 0 has stored the
	// changelog to its end, which is end.
	caughtUp := func(end int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var behind int64 = -1
			s.Lag(func(_ string, p int32, n int64) {
				if p == 0 {
					behind = n
				}
			})
			cp, stored, err := db.Checkpoint("totals", 0)
			if err != nil {
				t.Fatal(err)
			}
			if behind == 0 && stored && cp.Offset == end-1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the copy did not reach offset %d (behind %d)", end, behind)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	caughtUp(2) // now long-polling at the end

	s.Activate(0) // assigned here: the copy stops...
	s.Deactivate(0)
	s.Place([]int32{0}, nil) // ...and is wanted back at once
	send("/c", 1)
	caughtUp(3) // a copy that failed would wait for the next reconcile, an hour away
	select {
	case err := <-done:
		t.Fatalf("standby stopped: %v", err)
	default:
	}
}
