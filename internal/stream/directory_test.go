package stream

import (
	"errors"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/kafka"
)

// fakeGroups answers DescribeConsumerGroups with whatever describe returns
// for the n-th call (from 1).
type fakeGroups struct {
	calls    atomic.Int32
	describe func(n int32) ([]*sarama.GroupDescription, error)
}

func (f *fakeGroups) DescribeConsumerGroups([]string) ([]*sarama.GroupDescription, error) {
	return f.describe(f.calls.Add(1))
}

// group describes a group whose members advertise the URLs of owners and
// are assigned the partitions of topic t that owners gives them.
func group(t testing.TB, owners map[string][]int32) []*sarama.GroupDescription {
	t.Helper()
	g := &sarama.GroupDescription{Err: sarama.ErrNoError, State: "Stable", Members: map[string]*sarama.GroupMemberDescription{}}
	for url, parts := range owners {
		adv := kafka.Advertise(sarama.NewBalanceStrategyRange(), []byte(url)).(sarama.SubscriptionUserDataBalanceStrategy)
		ud, err := adv.SubscriptionUserData([]string{"t"})
		if err != nil {
			t.Fatal(err)
		}
		meta := kmsg.ConsumerMemberMetadata{Topics: []string{"t"}, UserData: ud}
		as := kmsg.ConsumerMemberAssignment{Topics: []kmsg.ConsumerMemberAssignmentTopic{{Topic: "t", Partitions: parts}}}
		g.Members[url] = &sarama.GroupMemberDescription{MemberMetadata: meta.AppendTo(nil), MemberAssignment: as.AppendTo(nil)}
	}
	// A member that advertises nothing cannot be asked: it owns nothing
	// in the directory.
	meta := kmsg.ConsumerMemberMetadata{Topics: []string{"t"}}
	as := kmsg.ConsumerMemberAssignment{Topics: []kmsg.ConsumerMemberAssignmentTopic{{Topic: "t", Partitions: []int32{9}}}}
	g.Members["mute"] = &sarama.GroupMemberDescription{MemberMetadata: meta.AppendTo(nil), MemberAssignment: as.AppendTo(nil)}
	return []*sarama.GroupDescription{g}
}

func TestDirectoryOwners(t *testing.T) {
	f := &fakeGroups{describe: func(int32) ([]*sarama.GroupDescription, error) {
		return group(t, map[string][]int32{"http://a": {0, 2}, "http://b": {1}}), nil
	}}
	d := &Directory{Admin: f, Group: "g", Topic: "t", TTL: time.Hour}
	for range 2 {
		owners, err := d.Owners()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[int32]string{0: "http://a", 1: "http://b", 2: "http://a"}; !maps.Equal(owners, want) {
			t.Errorf("Owners() = %v, want %v", owners, want)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("%d lookups within the cache time, want 1", n)
	}
}

// TestDirectoryServesCacheDuringLookup: while a lookup is in flight, other
// callers get the last answer at once, and start no lookup of their own.
// Were Owners to wait for the lookup in flight, the test would hang: the
// lookup ends only after the call returns.
func TestDirectoryServesCacheDuringLookup(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	f := &fakeGroups{describe: func(n int32) ([]*sarama.GroupDescription, error) {
		if n == 1 {
			return group(t, map[string][]int32{"http://old": {0}}), nil
		}
		if n == 2 {
			close(entered)
			<-release
		}
		return group(t, map[string][]int32{"http://new": {0}}), nil
	}}
	// TTL 0: every call finds the cached answer too old.
	d := &Directory{Admin: f, Group: "g", Topic: "t", TTL: 0}
	if _, err := d.Owners(); err != nil {
		t.Fatal(err)
	}

	slow := make(chan map[int32]string, 1)
	go func() {
		owners, err := d.Owners()
		if err != nil {
			t.Error(err)
		}
		slow <- owners
	}()
	<-entered
	owners, err := d.Owners()
	if err != nil || owners[0] != "http://old" {
		t.Errorf("Owners() during a lookup = %v, %v; want the cached answer", owners, err)
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("%d lookups, want 2: a caller started a lookup while one was in flight", n)
	}
	close(release)
	if owners := <-slow; owners[0] != "http://new" {
		t.Errorf("the caller that looked up got %v, want its lookup's answer", owners)
	}
	if owners, err := d.Owners(); err != nil || owners[0] != "http://new" {
		t.Errorf("Owners() after the lookup = %v, %v; want the new answer", owners, err)
	}
}

// TestDirectoryLookupFails: a failed lookup is returned, not cached; the
// next call looks up again.
func TestDirectoryLookupFails(t *testing.T) {
	broken := errors.New("coordinator unavailable")
	f := &fakeGroups{describe: func(n int32) ([]*sarama.GroupDescription, error) {
		if n == 1 {
			return nil, broken
		}
		return group(t, map[string][]int32{"http://a": {0}}), nil
	}}
	d := &Directory{Admin: f, Group: "g", Topic: "t", TTL: time.Hour}
	if _, err := d.Owners(); !errors.Is(err, broken) {
		t.Errorf("Owners() = %v, want %v", err, broken)
	}
	if owners, err := d.Owners(); err != nil || owners[0] != "http://a" {
		t.Errorf("Owners() after a failed lookup = %v, %v", owners, err)
	}
}
