package kafka

import (
	"bytes"
	"encoding/binary"
	"sync"

	"github.com/IBM/sarama"
)

// advertiseMagic starts the subscription user data of a member that
// advertises something (its HTTP URL) to the rest of the group.
const advertiseMagic = "pvad1"

// Advertise wraps a balance strategy so that every member's subscription
// user data also carries data (the worker's advertised URL), readable by
// anyone who describes the group (see Advertised). The wrapped strategy
// sees its own user data only, so sticky assignment keeps working.
//
// Sarama's sticky strategies keep their state in the user data: the
// cooperative one through SubscriptionUserData, the eager one through the
// assignment user data it gets back from the leader, which is captured in
// OnAssignment and sent again on the next join.
func Advertise(inner sarama.BalanceStrategy, data []byte) sarama.BalanceStrategy {
	return &advertising{inner: inner, data: bytes.Clone(data)}
}

type advertising struct {
	inner sarama.BalanceStrategy
	data  []byte

	mu       sync.Mutex
	innerSub []byte // the inner strategy's user data for the next join
}

// Advertised returns the data a member advertises in its subscription user
// data, or nil when the member does not advertise.
func Advertised(userData []byte) []byte {
	data, _, ok := split(userData)
	if !ok {
		return nil
	}
	return data
}

func join(data, inner []byte) []byte {
	out := make([]byte, 0, len(advertiseMagic)+4+len(data)+len(inner))
	out = append(out, advertiseMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(data)))
	out = append(out, data...)
	return append(out, inner...)
}

func split(userData []byte) (data, inner []byte, ok bool) {
	if !bytes.HasPrefix(userData, []byte(advertiseMagic)) || len(userData) < len(advertiseMagic)+4 {
		return nil, userData, false
	}
	rest := userData[len(advertiseMagic):]
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(n) > uint64(len(rest)) {
		return nil, userData, false
	}
	inner = rest[n:]
	if len(inner) == 0 {
		inner = nil
	}
	return rest[:n], inner, true
}

func (a *advertising) Name() string { return a.inner.Name() }

func (a *advertising) Plan(members map[string]sarama.ConsumerGroupMemberMetadata, topics map[string][]int32) (sarama.BalanceStrategyPlan, error) {
	stripped := make(map[string]sarama.ConsumerGroupMemberMetadata, len(members))
	for id, m := range members {
		_, m.UserData, _ = split(m.UserData)
		stripped[id] = m
	}
	return a.inner.Plan(stripped, topics)
}

func (a *advertising) AssignmentData(memberID string, topics map[string][]int32, generationID int32) ([]byte, error) {
	return a.inner.AssignmentData(memberID, topics, generationID)
}

// SupportedProtocols keeps the inner strategy's protocols (cooperative or
// eager); sarama asks for them to pick the rebalance protocol.
func (a *advertising) SupportedProtocols() []sarama.RebalanceProtocol {
	if s, ok := a.inner.(sarama.RebalanceProtocolBalanceStrategy); ok {
		return s.SupportedProtocols()
	}
	return []sarama.RebalanceProtocol{sarama.RebalanceProtocolEager}
}

func (a *advertising) SubscriptionUserData(topics []string) ([]byte, error) {
	if s, ok := a.inner.(sarama.SubscriptionUserDataBalanceStrategy); ok {
		inner, err := s.SubscriptionUserData(topics)
		if err != nil {
			return nil, err
		}
		return join(a.data, inner), nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return join(a.data, a.innerSub), nil
}

func (a *advertising) OnAssignment(assignment *sarama.ConsumerGroupMemberAssignment, generationID int32) {
	a.mu.Lock()
	a.innerSub = nil
	if assignment != nil {
		a.innerSub = bytes.Clone(assignment.UserData)
	}
	a.mu.Unlock()
	if s, ok := a.inner.(sarama.OnAssignmentBalanceStrategy); ok {
		s.OnAssignment(assignment, generationID)
	}
}
