package app_test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/kafka"
)

// TestDrainedBacklogCommitsAtOnce: with a commit interval of an hour, a
// partition that works through a backlog of thousands of records commits
// them as soon as it has caught up, while a few records after it wait for
// the interval (a sparse stream is not committed more often).
func TestDrainedBacklogCommitsAtOnce(t *testing.T) {
	brokers := startCluster(t)
	for _, guarantee := range []string{"at_least_once", "exactly_once"} {
		t.Run(guarantee, func(t *testing.T) {
			topic, group := "backlog-"+guarantee, "backlog-"+guarantee
			w := startSums(t, map[string]string{
				"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
				"PARTITIONS": "1", "COMMIT_INTERVAL": "1h", "PROCESSING_GUARANTEE": guarantee,
				"LIVECHECK_INTERVAL": "0", "KAFKA_GROUP": group, "AMOUNTS_TOPIC": topic,
			})
			w.waitReady(t)
			want := map[string]int64{}
			// One produce request: the first fetch already shows the
			// whole backlog in the partition's high watermark.
			sendBatch(t, brokers, topic, want, 5000, 0, 7)
			w.waitTotals(t, want)
			waitCommitted(t, brokers, group, topic)

			sendBatch(t, brokers, topic, want, 10, 5000, 7)
			w.waitTotals(t, want)
			committed, _, err := committedOffsets(brokers, group, topic)
			if err != nil {
				t.Fatal(err)
			}
			if committed[0] != 5000 {
				t.Errorf("after 10 more records: committed offset %d, want 5000 until the interval ends", committed[0])
			}
		})
	}
}

// TestBacklogEndAfterAnEarlyCommit: a backlog of more new keys than a
// partition's cache holds commits once on the way (the cache full), and
// the few thousand records after that are committed as soon as the
// backlog is worked through, not a quarter interval after that commit.
func TestBacklogEndAfterAnEarlyCommit(t *testing.T) {
	brokers := startCluster(t)
	const topic, group = "full-backlog", "full-backlog"
	w := startSums(t, map[string]string{
		"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
		"PARTITIONS": "1", "COMMIT_INTERVAL": "1h", "LIVECHECK_INTERVAL": "0",
		"KAFKA_GROUP": group, "AMOUNTS_TOPIC": topic,
	})
	w.waitReady(t)
	want := map[string]int64{}
	// 34,000 keys: the cache is full from 32,768 (checked every 1,024
	// records), which leaves fewer than the 4,096 records after it that
	// would count as a backlog of their own.
	sendBatch(t, brokers, topic, want, 34000, 0, 34000)
	w.waitTotals(t, want)
	waitCommitted(t, brokers, group, topic)
}

// sendBatch sends n amounts from the from-th on in one produce request,
// over keys accounts, and adds them to want.
func sendBatch(t *testing.T, brokers []string, topic string, want map[string]int64, n, from, keys int) {
	t.Helper()
	pc := sarama.NewConfig()
	pc.Producer.Return.Successes = true
	// Held until all n are buffered: by default sarama sends what it has
	// as soon as it can, and on a busy machine the backlog went out in two
	// requests, so that the worker drained the first part, committed it,
	// and waited for the interval with the rest.
	pc.Producer.Flush.Messages = n
	// sarama counts a record at its largest encoding (about 50 bytes
	// here), and a batch it thinks too big goes out at once and leaves
	// the rest short of n for ever; the broker checks the real size.
	pc.Producer.MaxMessageBytes = 4 << 20
	p, err := sarama.NewSyncProducer(brokers, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	msgs := make([]*sarama.ProducerMessage, 0, n)
	for i := from; i < from+n; i++ {
		key, amount := fmt.Sprintf("acct-%d", i%keys), int64(i%50-10)
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: 0, Key: sarama.StringEncoder(key),
			Value: sarama.StringEncoder(strconv.FormatInt(amount, 10))})
		want[key] += amount
	}
	if err := p.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
}

// TestFetchGapIsNotQuiet: a partition with nothing to process while the
// broker holds more of its records (as of its last fetch) is waiting for
// them, not quiet, and does not commit ahead of its interval; once it has
// taken all the broker holds, it does. The records held back here are
// those of a transaction still open, which the exactly-once worker's
// consumer (read_committed) may not read yet. In a backlog the same gap
// came whenever fetching fell behind, and committing in it shortened the
// intervals that coalesce updates: more changelog records, slower fetching,
// more gaps.
func TestFetchGapIsNotQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker against a broker")
	}
	const topic, group, partitions, p = "gap", "gap", 16, int32(15)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()
	keys := keysIn(topic, p, partitions, 5)

	// Both in the broker before the worker's first fetch, which then
	// shows the transaction's records in the high watermark.
	want := map[string]int64{}
	plain := producer(t, brokers, "")
	sendAmounts(t, plain, topic, p, keys, 0, 10, want) // offsets 0 to 9
	txp := producer(t, brokers, "gap-test")
	if err := txp.BeginTxn(); err != nil {
		t.Fatal(err)
	}
	held := map[string]int64{}
	sendAmounts(t, txp, topic, p, keys, 10, 5, held) // 10 to 14, its commit marker 15

	// Partition 15 commits by its interval first at 16/17 of one (15 s)
	// after it starts, and early no sooner than a quarter (4 s).
	w := startSums(t, map[string]string{
		"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
		"PARTITIONS": "16", "COMMIT_INTERVAL": "16s", "PROCESSING_GUARANTEE": "exactly_once",
		"LIVECHECK_INTERVAL": "0", "KAFKA_GROUP": group, "AMOUNTS_TOPIC": topic,
	})
	w.waitReady(t)
	started := time.Now()
	w.waitTotals(t, want)
	time.Sleep(time.Until(started.Add(6 * time.Second)))
	committed, _, err := committedOffsets(brokers, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	if committed[p] != -1 {
		t.Fatalf("committed offset %d while the broker held records the worker had not taken; want nothing committed before the interval", committed[p])
	}

	if err := txp.CommitTxn(); err != nil {
		t.Fatal(err)
	}
	for k, v := range held {
		want[k] += v
	}
	w.waitTotals(t, want)
	for { // quiet now: committed well before the interval (15 s)
		committed, _, err := committedOffsets(brokers, group, topic)
		if err == nil && committed[p] == 15 {
			break
		}
		if time.Since(started) > 13*time.Second {
			t.Fatalf("committed offset %d (error %v) once the partition took every record the broker held; want 15 before the interval", committed[p], err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keysIn returns n keys that sarama's hash partitioner puts in partition p
// of topic's partitions.
func keysIn(topic string, p, partitions int32, n int) []string {
	hash := sarama.NewHashPartitioner(topic)
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("acct-%d", i)
		if q, err := hash.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(k)}, partitions); err == nil && q == p {
			keys = append(keys, k)
		}
	}
	return keys
}

// producer is a sync producer that sends each message to the partition
// the message names; transactional when given a transactional ID.
func producer(t *testing.T, brokers []string, transactionalID string) sarama.SyncProducer {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	conf.Producer.Return.Successes = true
	conf.Producer.Partitioner = sarama.NewManualPartitioner
	if transactionalID != "" {
		conf.Producer.Idempotent = true
		conf.Producer.RequiredAcks = sarama.WaitForAll
		conf.Producer.Transaction.ID = transactionalID
		conf.Net.MaxOpenRequests = 1
	}
	p, err := sarama.NewSyncProducer(brokers, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// sendAmounts sends n amounts, the from-th on, keyed by keys in turn, to
// partition p, and adds them to sent.
func sendAmounts(t *testing.T, prod sarama.SyncProducer, topic string, p int32, keys []string, from, n int, sent map[string]int64) {
	t.Helper()
	for i := from; i < from+n; i++ {
		key, amount := keys[i%len(keys)], int64(i%50-10)
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: p, Key: sarama.StringEncoder(key),
			Value: sarama.StringEncoder(strconv.FormatInt(amount, 10))}); err != nil {
			t.Fatal(err)
		}
		sent[key] += amount
	}
}
