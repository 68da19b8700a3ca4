package kafka_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// deadline is closed after d: a stop for waits that must end well before.
func deadline(t *testing.T, d time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	tm := time.AfterFunc(d, func() { close(ch) })
	t.Cleanup(func() { tm.Stop() })
	return ch
}

// TestExclusiveWaitsForThePartitionsConsumer: a partition asked for while
// its consumer is open waits, where sarama's consumer fails with "already
// being consumed": it gives up when told to, and otherwise reads from its
// own offset once the first consumer is closed.
func TestExclusiveWaitsForThePartitionsConsumer(t *testing.T) {
	_, addr := rangeLog(t)
	e := kafka.NewExclusive(consumer(t, addr))
	first, err := e.Consume(nil, "log", 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	backlog := take(t, first, 17)

	stop := make(chan struct{})
	close(stop)
	if pc, err := e.Consume(stop, "log", 0, sarama.OffsetOldest); !errors.Is(err, kafka.ErrStopped) {
		if pc != nil {
			pc.Close()
		}
		t.Fatalf("Consume of a partition consumed, stopped: %v, want ErrStopped", err)
	}

	from := backlog[15].Offset
	type opened struct {
		pc  sarama.PartitionConsumer
		err error
	}
	again := make(chan opened, 1)
	go func() {
		pc, err := e.Consume(deadline(t, 20*time.Second), "log", 0, from)
		again <- opened{pc, err}
	}()
	first.AsyncClose()
	o := <-again
	if o.err != nil {
		t.Fatalf("Consume once the first consumer was closed: %v", o.err)
	}
	defer o.pc.Close()
	if got, want := keysOf(take(t, o.pc, 2)), keysOf(backlog[15:]); !slices.Equal(got, want) {
		t.Errorf("consumed again from %d: %v, want %v", from, got, want)
	}
}

// TestExclusiveGivesBackAPartitionItFailedToOpen: a consume that fails
// (an offset past the end) leaves the partition free for the next.
func TestExclusiveGivesBackAPartitionItFailedToOpen(t *testing.T) {
	_, addr := rangeLog(t)
	e := kafka.NewExclusive(consumer(t, addr))
	if pc, err := e.Consume(nil, "log", 0, 1000); !errors.Is(err, sarama.ErrOffsetOutOfRange) {
		if pc != nil {
			pc.Close()
		}
		t.Fatalf("Consume from past the end: %v, want %v", err, sarama.ErrOffsetOutOfRange)
	}
	pc, err := e.Consume(deadline(t, 20*time.Second), "log", 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatalf("Consume after a failed one: %v", err)
	}
	if got, want := keysOf(take(t, pc, 10)), keys("k", 0, 10); !slices.Equal(got, want) {
		t.Errorf("after a failed Consume: %v, want %v", got, want)
	}
	if err := pc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
