package kafka

import (
	"errors"
	"sync"

	"github.com/IBM/sarama"
)

// Exclusive hands out a sarama consumer's partitions one consumer at a
// time, and a partition asked for again before its previous consumer has
// let go of it waits for that instead of failing.
//
// sarama's consumer takes a partition once at a time: ConsumePartition
// fails with "already being consumed" until the previous partition
// consumer has stopped, which after AsyncClose is when its fetch in flight
// returns (at a partition's end, a long poll of up to MaxWaitTime). A
// partition the runtime let go of and was handed straight back, as quick
// rebalances do, would otherwise fail to open and be retried.
//
// Every partition consumer from Consume must be closed (AsyncClose or
// Close), also after it stopped on its own: the next consumer of its
// partition waits for that.
type Exclusive struct {
	consumer sarama.Consumer

	mu   sync.Mutex
	held map[topicPartition]chan struct{} // closed when the partition's consumer has let go of it
}

// NewExclusive returns an Exclusive handing out consumer's partitions.
// Nothing else may consume them from consumer.
func NewExclusive(consumer sarama.Consumer) *Exclusive {
	return &Exclusive{consumer: consumer, held: map[topicPartition]chan struct{}{}}
}

// ErrStopped is what Consume returns when it gave up waiting.
var ErrStopped = errors.New("stopped while the partition's previous consumer closed")

// Consume returns a consumer of topic partition p from offset, once the
// partition's previous consumer from e has let go of it; ErrStopped if
// stop is closed first.
func (e *Exclusive) Consume(stop <-chan struct{}, topic string, p int32, offset int64) (sarama.PartitionConsumer, error) {
	k := topicPartition{topic, p}
	mine := make(chan struct{})
	for {
		e.mu.Lock()
		prev := e.held[k]
		if prev == nil {
			e.held[k] = mine
		}
		e.mu.Unlock()
		if prev == nil {
			break
		}
		select {
		case <-prev:
		case <-stop:
			return nil, ErrStopped
		}
	}
	pc, err := e.consumer.ConsumePartition(topic, p, offset)
	if err != nil {
		e.release(k, mine)
		return nil, err
	}
	return &exclusivePartition{PartitionConsumer: pc, let: func() { e.release(k, mine) }, done: make(chan struct{})}, nil
}

// release gives partition k back: its consumer, mine, has let go of it.
func (e *Exclusive) release(k topicPartition, mine chan struct{}) {
	e.mu.Lock()
	if e.held[k] == mine {
		delete(e.held, k)
	}
	e.mu.Unlock()
	close(mine)
}

// exclusivePartition is a partition consumer from Exclusive: closing it
// gives its partition back once sarama's consumer has let go of it.
type exclusivePartition struct {
	sarama.PartitionConsumer
	let  func()
	once sync.Once
	done chan struct{} // closed once let has run
	err  error         // what the inner Close returned
}

// AsyncClose closes the consumer in the background: sarama's Close returns
// only once the consumer has let go of its partition, and its AsyncClose
// does not say when that is.
func (pc *exclusivePartition) AsyncClose() {
	pc.once.Do(func() { go pc.close() })
}

// Close closes the consumer and waits until its partition is given back.
func (pc *exclusivePartition) Close() error {
	pc.once.Do(pc.close)
	<-pc.done
	return pc.err
}

func (pc *exclusivePartition) close() {
	pc.err = pc.PartitionConsumer.Close()
	pc.let()
	close(pc.done)
}
