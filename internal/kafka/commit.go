package kafka

import (
	"errors"
	"fmt"

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
}

// ErrCommitRejected wraps the coordinator's refusal of a commit, typically
// because the group is rebalancing or the member is no longer current.
var ErrCommitRejected = errors.New("offset commit rejected")

// Commit commits offset (the next offset to read) of topic partition p for
// the member of the given generation, with metadata. When the coordinator
// cannot be reached or has moved, it looks the coordinator up again and
// tries once more.
func (c *OffsetCommitter) Commit(generation int32, member, topic string, p int32, offset int64, metadata string) error {
	req := sarama.NewOffsetCommitRequest(c.Client.Config(), c.Group)
	req.ConsumerGroupGeneration = generation
	req.ConsumerID = member
	if c.InstanceID != "" {
		id := c.InstanceID
		req.GroupInstanceId = &id
	}
	req.AddBlockWithLeaderEpoch(topic, p, offset, -1, 0, metadata)

	err := c.send(req, topic, p)
	var rejected *rejection
	if err == nil || (errors.As(err, &rejected) && !rejected.coordinatorMoved()) {
		return err
	}
	// A broken connection, a coordinator that died or moved: the client
	// would otherwise keep its cached coordinator until its next metadata
	// refresh, minutes away.
	if rerr := c.Client.RefreshCoordinator(c.Group); rerr != nil {
		return fmt.Errorf("%w (finding the coordinator of group %s again: %w)", err, c.Group, rerr)
	}
	return c.send(req, topic, p)
}

// rejection is an error code in the coordinator's answer.
type rejection struct{ code sarama.KError }

func (r *rejection) Error() string { return ErrCommitRejected.Error() + ": " + r.code.Error() }

// Unwrap lets errors.Is match both ErrCommitRejected and the code.
func (r *rejection) Unwrap() []error { return []error{ErrCommitRejected, r.code} }

func (r *rejection) coordinatorMoved() bool {
	return r.code == sarama.ErrNotCoordinatorForConsumer || r.code == sarama.ErrConsumerCoordinatorNotAvailable ||
		r.code == sarama.ErrOffsetsLoadInProgress
}

func (c *OffsetCommitter) send(req *sarama.OffsetCommitRequest, topic string, p int32) error {
	broker, err := c.Client.Coordinator(c.Group)
	if err != nil {
		return fmt.Errorf("find the coordinator of group %s: %w", c.Group, err)
	}
	// sarama closes the connection itself when the request fails, and
	// opens it again on the next use.
	resp, err := broker.CommitOffset(req)
	if err != nil {
		return fmt.Errorf("commit offset: %w", err)
	}
	kerr, ok := resp.Errors[topic][p]
	if !ok {
		return fmt.Errorf("commit offset: no answer for %s/%d", topic, p)
	}
	if !errors.Is(kerr, sarama.ErrNoError) {
		return &rejection{code: kerr}
	}
	return nil
}
