package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/devbroker"
	"github.com/gofaust/pageviews/internal/kafka"
)

func startBroker(t *testing.T, addr, dataDir string) *devbroker.Broker {
	t.Helper()
	b, err := devbroker.Start(devbroker.Options{Addr: addr, DataDir: dataDir, Partitions: 2, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func clientConfig(t *testing.T, group string) *sarama.Config {
	t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "test", Group: group, Cooperative: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metadata.Retry.Backoff = 50 * time.Millisecond
	return cfg
}

func newClient(t *testing.T, addr, group string) sarama.Client {
	t.Helper()
	c, err := sarama.NewClient([]string{addr}, clientConfig(t, group))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// committed reads the group's committed offset and metadata of topic/p.
func committed(t *testing.T, client sarama.Client, group, topic string, p int32) (int64, string) {
	t.Helper()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {p}})
	if err != nil {
		t.Fatal(err)
	}
	b := resp.GetBlock(topic, p)
	if b == nil {
		t.Fatalf("no committed offset for %s/%d", topic, p)
	}
	return b.Offset, b.Metadata
}

// member joins group as a consumer of topic and reports its generation and
// member id; it stays in the group until the test ends.
type member struct {
	joined chan sarama.ConsumerGroupSession
}

func (m *member) Setup(s sarama.ConsumerGroupSession) error {
	select {
	case m.joined <- s:
	default:
	}
	return nil
}
func (m *member) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for range c.Messages() {
	}
	return nil
}

func join(t *testing.T, addr, group, topic string) sarama.ConsumerGroupSession {
	t.Helper()
	cg, err := sarama.NewConsumerGroup([]string{addr}, group, clientConfig(t, group))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	m := &member{joined: make(chan sarama.ConsumerGroupSession, 1)}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := cg.Consume(ctx, []string{topic}, m); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cg.Close()
	})
	select {
	case s := <-m.joined:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("the consumer did not join its group within 30s")
		return nil
	}
}

func TestOffsetCommitterCommitsForTheMember(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0", "")
	defer b.Close()
	addr := b.Addrs()[0]
	const group, topic = "g", "t"
	client := newClient(t, addr, group)
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	sess := join(t, addr, group, topic)

	c := &kafka.OffsetCommitter{Client: client, Group: group}
	if err := c.Commit(sess.GenerationID(), sess.MemberID(), topic, 1, 42, "at 42"); err != nil {
		t.Fatalf("commit as the current member: %v", err)
	}
	if off, meta := committed(t, client, group, topic, 1); off != 42 || meta != "at 42" {
		t.Errorf("committed %d %q, want 42 \"at 42\"", off, meta)
	}

	// A commit of a past generation is refused, with the coordinator's code.
	err = c.Commit(sess.GenerationID()-1, sess.MemberID(), topic, 1, 50, "stale")
	if !errors.Is(err, kafka.ErrCommitRejected) || !errors.Is(err, sarama.ErrIllegalGeneration) {
		t.Errorf("commit of generation %d: %v; want a rejection with ILLEGAL_GENERATION", sess.GenerationID()-1, err)
	}
	if off, _ := committed(t, client, group, topic, 1); off != 42 {
		t.Errorf("after the refused commit the offset is %d, want 42", off)
	}
}

// A coordinator that went away and came back (a broker restart) is found
// again by the next commit: the committer does not keep failing on the
// connection it had.
func TestOffsetCommitterAfterCoordinatorRestart(t *testing.T) {
	// Reserve a port so the broker can come back on the same address.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir() // the topic and the offsets outlive the restart
	b := startBroker(t, addr, dir)
	const group, topic = "simple", "t"
	client := newClient(t, addr, group)
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	// A group without members takes commits of generation -1 (a consumer
	// that assigns partitions itself).
	c := &kafka.OffsetCommitter{Client: client, Group: group}
	if err := c.Commit(-1, "", topic, 0, 7, ""); err != nil {
		t.Fatalf("first commit: %v", err)
	}

	b.Close()
	b = startBroker(t, addr, dir)
	defer b.Close()
	if err := c.Commit(-1, "", topic, 0, 9, "again"); err != nil {
		t.Fatalf("commit after the broker came back: %v", err)
	}
	if off, meta := committed(t, client, group, topic, 0); off != 9 || meta != "again" {
		t.Errorf("committed %d %q, want 9 \"again\"", off, meta)
	}
}
