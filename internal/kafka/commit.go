package kafka

import (
	"errors"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
)

// OffsetCommitter commits a consumer group member's source offsets over a
// client of its own.
//
// sarama keeps one connection per broker and client, and holds it for the
// whole of a request. The group's client spends most of its time in fetches
// that wait on the broker for records (up to Consumer.MaxWaitTime), so a
// commit sent through it queues behind them: at the end of a burst that was
// most of the commit's latency. On its own connection a commit waits only
// for the coordinator.
type OffsetCommitter struct {
	Client     sarama.Client // not the group's client
	Group      string
	InstanceID string // static membership, if any

	mu sync.Mutex // one commit in flight: the client's connection takes one request at a time
}

// ErrCommitRejected wraps the coordinator's refusal of a commit, typically
// because the group is rebalancing or the member is no longer current.
var ErrCommitRejected = errors.New("offset commit rejected")

// Commit commits offset (the next offset to read) of topic partition p for
// the member of the given generation, with metadata.
func (c *OffsetCommitter) Commit(generation int32, member, topic string, p int32, offset int64, metadata string) error {
	req := sarama.NewOffsetCommitRequest(c.Client.Config(), c.Group)
	req.ConsumerGroupGeneration = generation
	req.ConsumerID = member
	if c.InstanceID != "" {
		id := c.InstanceID
		req.GroupInstanceId = &id
	}
	req.AddBlockWithLeaderEpoch(topic, p, offset, -1, 0, metadata)

	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		err = c.send(req, topic, p)
		if !errors.Is(err, sarama.ErrNotCoordinatorForConsumer) && !errors.Is(err, sarama.ErrConsumerCoordinatorNotAvailable) &&
			!errors.Is(err, sarama.ErrOffsetsLoadInProgress) {
			return err
		}
		// The coordinator moved or is starting: look it up again, once.
		if rerr := c.Client.RefreshCoordinator(c.Group); rerr != nil {
			return fmt.Errorf("find the coordinator of group %s: %w", c.Group, rerr)
		}
	}
	return err
}

func (c *OffsetCommitter) send(req *sarama.OffsetCommitRequest, topic string, p int32) error {
	broker, err := c.Client.Coordinator(c.Group)
	if err != nil {
		return fmt.Errorf("find the coordinator of group %s: %w", c.Group, err)
	}
	resp, err := broker.CommitOffset(req)
	if err != nil {
		// The connection is broken: let the next commit dial again.
		_ = broker.Close()
		return fmt.Errorf("commit offset: %w", err)
	}
	kerr, ok := resp.Errors[topic][p]
	if !ok {
		return fmt.Errorf("commit offset: no answer for %s/%d", topic, p)
	}
	if !errors.Is(kerr, sarama.ErrNoError) {
		return fmt.Errorf("%w: %w", ErrCommitRejected, kerr)
	}
	return nil
}
