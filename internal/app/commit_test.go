package app_test

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/IBM/sarama"
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
			sendBatch(t, brokers, topic, want, 5000, 0)
			w.waitTotals(t, want)
			waitCommitted(t, brokers, group, topic)

			sendBatch(t, brokers, topic, want, 10, 5000)
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

// sendBatch sends n amounts from the from-th on in one produce request,
// and adds them to want.
func sendBatch(t *testing.T, brokers []string, topic string, want map[string]int64, n, from int) {
	t.Helper()
	pc := sarama.NewConfig()
	pc.Producer.Return.Successes = true
	p, err := sarama.NewSyncProducer(brokers, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	msgs := make([]*sarama.ProducerMessage, 0, n)
	for i := from; i < from+n; i++ {
		key, amount := fmt.Sprintf("acct-%d", i%7), int64(i%50-10)
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: 0, Key: sarama.StringEncoder(key),
			Value: sarama.StringEncoder(strconv.FormatInt(amount, 10))})
		want[key] += amount
	}
	if err := p.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
}
