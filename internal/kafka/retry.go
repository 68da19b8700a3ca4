package kafka

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/IBM/sarama"
)

// Fatal reports whether a Kafka error will not go away by trying again:
// the worker is not allowed to do what it does (authorization), or the
// cluster cannot do it at all. Such an error stops the worker, with its
// cause, rather than be retried for ever.
func Fatal(err error) bool {
	for _, k := range []sarama.KError{
		sarama.ErrTopicAuthorizationFailed, sarama.ErrGroupAuthorizationFailed,
		sarama.ErrClusterAuthorizationFailed, sarama.ErrTransactionalIDAuthorizationFailed,
		sarama.ErrSASLAuthenticationFailed, sarama.ErrUnsupportedVersion,
		sarama.ErrInvalidGroupId, sarama.ErrInconsistentGroupProtocol, sarama.ErrUnsupportedForMessageFormat,
	} {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

// Retriable reports whether a Kafka error is one that trying again after a
// moment may get past: a leader or coordinator moving or loading, a broker
// restarting, a network error.
func Retriable(err error) bool {
	for _, k := range []sarama.KError{
		sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition, sarama.ErrRequestTimedOut,
		sarama.ErrUnknownTopicOrPartition, sarama.ErrKafkaStorageError, sarama.ErrNotCoordinatorForConsumer,
		sarama.ErrConsumerCoordinatorNotAvailable, sarama.ErrOffsetsLoadInProgress, sarama.ErrNetworkException,
		sarama.ErrNotEnoughReplicas, sarama.ErrNotEnoughReplicasAfterAppend, sarama.ErrReplicaNotAvailable,
		sarama.ErrFencedLeaderEpoch, sarama.ErrUnknownLeaderEpoch, sarama.ErrConcurrentTransactions,
		sarama.ErrOffsetNotAvailable, sarama.ErrUnstableOffsetCommit,
	} {
		if errors.Is(err, k) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, sarama.ErrOutOfBrokers) ||
		errors.Is(err, sarama.ErrNotConnected) || errors.Is(err, sarama.ErrBrokerNotAvailable)
}

// retryFor calls fn until it succeeds, returns an error that is not
// Retriable, or tries have gone on for longer than d; it pauses between
// tries, growing from 100 ms to 1 s.
func retryFor(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	pause := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil || !Retriable(err) || time.Now().Add(pause).After(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Second)
	}
}
