package stream

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// Directory tells which worker owns each partition of the source topic, so
// that reads can be routed to the owner (Faust's table routing, Kafka
// Streams' interactive queries). Each worker advertises its HTTP URL as the
// user data of its group membership; the directory reads the group's
// members and assignments from the coordinator and caches them briefly.
//
// The answer may lag a rebalance by up to the cache time, or longer while a
// lookup is slow. Callers must not trust it blindly: the owner says which
// partitions it actually served.
//
// Lookups must not wait behind the group's own requests. A broker answers
// the requests of one connection in order, and a member's JoinGroup is held
// by the coordinator until the rebalance completes, up to the rebalance
// timeout: a lookup sent on the same connection waits as long. So Admin
// must be on a client of its own, not the group's; and one lookup runs at a
// time, without the lock held, while other callers get the last answer.
type Directory struct {
	Admin GroupDescriber // on a client that no consumer group uses
	Group string
	Topic string
	TTL   time.Duration

	mu      sync.Mutex
	owners  map[int32]string
	members []Member // as the lookup of owners saw them
	at      time.Time
	// lookup is closed when the lookup in flight ends; nil when none is.
	lookup chan struct{}
	err    error // of the last lookup
}

// GroupDescriber is the part of sarama.ClusterAdmin the directory uses.
type GroupDescriber interface {
	DescribeConsumerGroups(groups []string) ([]*sarama.GroupDescription, error)
}

// Owners returns the advertised URL of the owner of each assigned
// partition. The map is shared: callers must not change it.
//
// When the cached answer is older than TTL, the caller looks the group up
// again; callers that come while that lookup is in flight get the cached
// answer at once, or, when there is none yet, wait for the lookup's.
func (d *Directory) Owners() (map[int32]string, error) {
	d.mu.Lock()
	// Real time, not the injected event clock: this is a cache age.
	if d.owners != nil && time.Since(d.at) < d.TTL {
		defer d.mu.Unlock()
		return d.owners, nil
	}
	if wait := d.lookup; wait != nil {
		if owners := d.owners; owners != nil {
			d.mu.Unlock()
			return owners, nil
		}
		d.mu.Unlock()
		<-wait
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.owners == nil {
			return nil, d.err
		}
		return d.owners, nil
	}
	done := make(chan struct{})
	d.lookup = done
	d.mu.Unlock()

	owners, members, err := d.describe()

	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookup, d.err = nil, err
	close(done)
	if err != nil {
		return nil, err
	}
	d.owners, d.members, d.at = owners, members, time.Now()
	return owners, nil
}

// Member is one member of the group as the coordinator describes it: its
// ids, its advertised URL ("" when it advertises none) and its partitions
// of the source topic, in order.
type Member struct {
	ID, ClientID, Host, URL string
	Partitions              []int32
}

// Members returns the group's members as the last lookup saw them, ordered
// by member id; like Owners, it looks again once that answer is older than
// TTL. The slice is shared: callers must not change it.
func (d *Directory) Members() ([]Member, error) {
	if _, err := d.Owners(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.members, nil
}

// describe reads the group's members and assignments from the coordinator.
func (d *Directory) describe() (map[int32]string, []Member, error) {
	groups, err := d.Admin.DescribeConsumerGroups([]string{d.Group})
	if err != nil {
		return nil, nil, fmt.Errorf("describe group %s: %w", d.Group, err)
	}
	if len(groups) != 1 {
		return nil, nil, fmt.Errorf("describe group %s: %d answers", d.Group, len(groups))
	}
	if !errors.Is(groups[0].Err, sarama.ErrNoError) {
		return nil, nil, fmt.Errorf("describe group %s: %w", d.Group, groups[0].Err)
	}
	owners := map[int32]string{}
	var members []Member
	for id, m := range groups[0].Members {
		member := Member{ID: id, ClientID: m.ClientId, Host: m.ClientHost}
		meta, err := m.GetMemberMetadata()
		if err == nil && meta != nil {
			member.URL = string(kafka.Advertised(meta.UserData))
		}
		if as, err := m.GetMemberAssignment(); err == nil && as != nil {
			member.Partitions = slices.Sorted(slices.Values(as.Topics[d.Topic]))
		}
		members = append(members, member)
		if member.URL == "" {
			continue // a member that advertises nothing cannot be asked
		}
		for _, p := range member.Partitions {
			owners[p] = member.URL
		}
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return owners, members, nil
}
