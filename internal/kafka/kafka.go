// Package kafka wraps the sarama client: the client configuration every part
// of the worker shares, topic creation and the co-partitioning check, and a
// producer whose callers wait for the broker's acknowledgement.
package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	gometrics "github.com/rcrowley/go-metrics"
)

func init() {
	// sarama measures every request into a go-metrics registry that nothing
	// reads: the worker reports what it does through its own metrics. Its
	// histograms keep samples per broker, about a megabyte on a heap that
	// GOGC 200 lets grow to three times what is live. Nil metrics skip them.
	gometrics.UseNilMetrics = true
}

// Version is the Kafka protocol version the worker speaks. Set explicitly:
// sarama's default is far older and lacks cooperative rebalancing. A
// variable only because sarama's versions are structs; nothing assigns it.
var Version = sarama.V3_9_0_0

// Options are the client settings that come from the worker's config.
type Options struct {
	ClientID       string
	Group          string
	InstanceID     string
	Cooperative    bool            // incremental (cooperative-sticky) rebalancing, else eager sticky
	ManualTopics   map[string]bool // topics produced to an explicit partition (changelogs)
	SessionTimeout time.Duration
	// Advertise is what this member tells the rest of its group (its HTTP
	// URL), through the subscription user data; see Advertise.
	Advertise []byte
	Security  Security
	// ReadCommitted makes consumers skip records of open and aborted
	// transactions (exactly-once processing).
	ReadCommitted bool
	// StandbyReplicas and Standbys feed the standby-aware strategy (see
	// NewStandbyStrategy); Standbys may be nil.
	StandbyReplicas int
	Standbys        Standbys
}

// NewConfig returns the sarama configuration of the worker: an idempotent
// producer with acks=all, manual offset commits, consumption from the oldest
// offset for a new group, and the chosen rebalance protocol.
func NewConfig(o Options) (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.Version = Version
	c.ClientID = o.ClientID

	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Net.MaxOpenRequests = 1 // required by sarama for the idempotent producer
	c.Producer.Flush.Bytes = 256 << 10
	c.Producer.Flush.Frequency = time.Millisecond
	manual := o.ManualTopics
	c.Producer.Partitioner = func(topic string) sarama.Partitioner {
		if manual[topic] {
			return sarama.NewManualPartitioner(topic)
		}
		return sarama.NewHashPartitioner(topic)
	}

	c.Consumer.Return.Errors = true
	if o.ReadCommitted {
		c.Consumer.IsolationLevel = sarama.ReadCommitted
	}
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	// Offsets are committed by the stream runtime only after the state they
	// depend on is durable; sarama must never commit on its own.
	c.Consumer.Offsets.AutoCommit.Enable = false
	// Per partition and fetch. sarama decodes a whole fetch, hands every
	// partition its records, and waits for all of them before it fetches
	// again: smaller fetches keep that pipeline moving. In the benchmark
	// (docs/benchmarks.md) 256 KiB against sarama's 1 MiB took the worker
	// from about 0.9 to 1.2 M events/s and halved its peak RSS.
	c.Consumer.Fetch.Default = 256 << 10
	// sarama holds a broker connection for the whole of a request, and a
	// fetch with nothing to return waits on the broker for MaxWaitTime.
	// Offset commits and heartbeats to the same broker queue behind it, so
	// this bounds how long the commit at the end of a burst waits.
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	// A partition loop stops reading while it commits (changelog acks, a
	// store batch). A deep buffer lets the fetcher keep delivering meanwhile
	// instead of stalling every partition of the broker behind that one.
	c.ChannelBufferSize = 4096
	c.Consumer.Group.InstanceId = o.InstanceID
	if o.SessionTimeout > 0 {
		c.Consumer.Group.Session.Timeout = o.SessionTimeout
	}
	// A member learns of a rebalance from its next heartbeat. Under
	// cooperative rebalancing the partitions that move wait for two rounds,
	// the second announced by heartbeat only, so the interval is most of
	// what a moved partition stands still. In the rebalance benchmark
	// (docs/benchmarks.md, two workers, a third joining) the two moved
	// partitions stood still 3.1 s each at sarama's 3 s, 0.7 s at 500 ms,
	// 0.16 to 0.27 s at 100 ms and 0.10 to 0.17 s at 50 ms. A cooperative
	// rebalance must stop less work than an eager one (the sum over
	// partitions of the time each stands still): at 100 ms it did in only
	// some runs (medians of five: 315 against 340, 424 against 366
	// partition-ms), at 50 ms in every one (218 against 376, 329 against
	// 393). Twenty heartbeats a second per member are small requests the
	// coordinator answers from memory.
	c.Consumer.Group.Heartbeat.Interval = 50 * time.Millisecond
	c.Consumer.Group.Rebalance.GroupStrategies = groupStrategies(o)
	// A JoinGroup is parked by the coordinator for up to the rebalance
	// timeout; a shorter read timeout abandons it and joins again, which
	// can keep a rebalance from ever finishing.
	c.Net.ReadTimeout = c.Consumer.Group.Rebalance.Timeout + 10*time.Second
	c.Metadata.Retry.Max = 10
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	if err := o.Security.apply(c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("kafka client config: %w", err)
	}
	return c, nil
}

// groupStrategies are the standby-aware strategy and, second, sarama's
// sticky one, which the coordinator picks while members of an older version
// (that know only it) are still in the group, during a rolling upgrade.
func groupStrategies(o Options) []sarama.BalanceStrategy {
	fallback := sarama.NewBalanceStrategySticky()
	if o.Cooperative {
		fallback = sarama.NewBalanceStrategyCooperativeSticky()
	}
	return []sarama.BalanceStrategy{
		Advertise(NewStandbyStrategy(o.Cooperative, o.StandbyReplicas, o.Standbys), o.Advertise),
		Advertise(fallback, o.Advertise),
	}
}

// Topic is a topic the worker needs.
type Topic struct {
	Name    string
	Configs map[string]string
}

// topicsRetry bounds how long EnsureTopics and NewProducer try again after
// errors that a moving leader or coordinator gives.
const topicsRetry = 2 * time.Minute

// ErrCoPartitioning is returned when a table's changelog does not have as
// many partitions as the source topic, so table partition p could not live
// in changelog partition p.
var ErrCoPartitioning = errors.New("topics are not co-partitioned")

// EnsureTopics creates the source topic, the changelogs and the other topics
// when missing, with partitions partitions (or as many as the source topic
// already has), and verifies that every changelog has as many partitions as
// the source. It returns that count.
//
// A leader or controller that is moving (or a topic just created whose
// leaders are not elected yet) makes it try again for up to topicsRetry.
func EnsureTopics(admin sarama.ClusterAdmin, source Topic, changelogs, others []Topic, partitions int32, replication int16, log *slog.Logger) (int32, error) {
	var existing map[string]sarama.TopicDetail
	err := retryFor(topicsRetry, func() (err error) {
		existing, err = admin.ListTopics()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("list topics: %w", err)
	}
	if d, ok := existing[source.Name]; ok {
		partitions = d.NumPartitions
	}
	all := append([]Topic{source}, changelogs...)
	for _, t := range append(all, others...) {
		if _, ok := existing[t.Name]; ok {
			continue
		}
		detail := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replication, ConfigEntries: map[string]*string{}}
		for k, v := range t.Configs {
			detail.ConfigEntries[k] = &v
		}
		err := retryFor(topicsRetry, func() error { return admin.CreateTopic(t.Name, detail, false) })
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			return 0, fmt.Errorf("create topic %s: %w", t.Name, err)
		}
		log.Info("created topic", "topic", t.Name, "partitions", partitions, "configs", t.Configs)
	}
	names := make([]string, len(all))
	for i, t := range all {
		names[i] = t.Name
	}
	counts := map[string]int{}
	err = retryFor(topicsRetry, func() error {
		meta, err := admin.DescribeTopics(names)
		if err != nil {
			return fmt.Errorf("describe topics: %w", err)
		}
		for _, m := range meta {
			if !errors.Is(m.Err, sarama.ErrNoError) {
				return fmt.Errorf("describe topic %s: %w", m.Name, m.Err)
			}
			counts[m.Name] = len(m.Partitions)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, t := range changelogs {
		if counts[t.Name] != counts[source.Name] {
			return 0, fmt.Errorf("%w: %s has %d partitions but %s has %d; table partition p must live in changelog partition p, so delete the changelog or give it %d partitions",
				ErrCoPartitioning, source.Name, counts[source.Name], t.Name, counts[t.Name], counts[source.Name])
		}
	}
	return int32(counts[source.Name]), nil
}

// WindowedChangelogConfigs are the topic configs of a windowed table's
// changelog: compacted, and deleted by time once far beyond expiry.
func WindowedChangelogConfigs(size, expires time.Duration) map[string]string {
	retention := 2 * (size + expires)
	if retention < 7*24*time.Hour {
		retention = 7 * 24 * time.Hour
	}
	return map[string]string{
		"cleanup.policy": "compact,delete",
		"retention.ms":   strconv.FormatInt(retention.Milliseconds(), 10),
	}
}

// ChangelogConfigs are the topic configs of a plain table's changelog.
func ChangelogConfigs() map[string]string {
	return map[string]string{"cleanup.policy": "compact"}
}
