package stream

import (
	"errors"
	"fmt"
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
// The answer may lag a rebalance by up to the cache time. Callers must not
// trust it blindly: the owner says which partitions it actually served.
type Directory struct {
	Admin sarama.ClusterAdmin
	Group string
	Topic string
	TTL   time.Duration

	mu     sync.Mutex
	owners map[int32]string
	at     time.Time
}

// Owners returns the advertised URL of the owner of each assigned partition.
func (d *Directory) Owners() (map[int32]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Real time, not the injected event clock: this is a cache age.
	now := time.Now()
	if d.owners != nil && now.Sub(d.at) < d.TTL {
		return d.owners, nil
	}
	groups, err := d.Admin.DescribeConsumerGroups([]string{d.Group})
	if err != nil {
		return nil, fmt.Errorf("describe group %s: %w", d.Group, err)
	}
	if len(groups) != 1 {
		return nil, fmt.Errorf("describe group %s: %d answers", d.Group, len(groups))
	}
	if !errors.Is(groups[0].Err, sarama.ErrNoError) {
		return nil, fmt.Errorf("describe group %s: %w", d.Group, groups[0].Err)
	}
	owners := map[int32]string{}
	for _, m := range groups[0].Members {
		meta, err := m.GetMemberMetadata()
		if err != nil || meta == nil {
			continue
		}
		url := kafka.Advertised(meta.UserData)
		if len(url) == 0 {
			continue // a member that advertises nothing cannot be asked
		}
		as, err := m.GetMemberAssignment()
		if err != nil || as == nil {
			continue
		}
		for _, p := range as.Topics[d.Topic] {
			owners[p] = string(url)
		}
	}
	d.owners, d.at = owners, now
	return owners, nil
}
