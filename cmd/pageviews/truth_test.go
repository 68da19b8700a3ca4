package main

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// truthVars are the settings of a worker whose metrics go to sink.
func truthVars(t *testing.T, brokers string, sink *statsdSink, extra map[string]string) map[string]string {
	vars := map[string]string{
		"KAFKA_BROKERS":      brokers,
		"WEB_ADDR":           "127.0.0.1:0",
		"DATA_DIR":           t.TempDir(),
		"COMMIT_INTERVAL":    "100ms",
		"DD_AGENT_HOST":      "127.0.0.1",
		"DD_DOGSTATSD_PORT":  sink.port(),
		"DD_ENV":             "test",
		"METRICS_INTERVAL":   "200ms",
		"LIVECHECK_INTERVAL": "0",
	}
	for k, v := range extra {
		vars[k] = v
	}
	return vars
}

// TestHandoffMetricsTellTheTruth: worker a holds every partition and goes
// idle, so its last commits grow old; then b joins and takes some of them
// over (a cooperative handoff).
//   - b's partition_unprocessed_seconds is the handoff, from a's release to
//     b's resumption, not the age of a's last commit (at least idle).
//   - a, which only lost partitions, follows the group's generation.
//   - b's rebalance_state showed its join, and is 0 once it processes; a's
//     showed the partitions it released.
func TestHandoffMetricsTellTheTruth(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	sinkA, sinkB := newStatsdSink(t), newStatsdSink(t)
	a := startWorker(t, truthVars(t, brokers, sinkA, nil), time.Now)
	for i := range 40 {
		getJSON(t, a.base+"/count/?page=/t/"+strconv.Itoa(i), nil)
	}
	eventually(t, 30*time.Second, "views counted", func() (bool, string) {
		n := heldViews(t, a.base)
		return n == 40, fmt.Sprint(n)
	})
	// Idle: no commit on a from here on.
	const idle = 5 * time.Second
	time.Sleep(idle)

	b := startWorker(t, truthVars(t, brokers, sinkB, nil), time.Now)
	resumed := b.logs.wait(t, "partition resumed", 30*time.Second)
	p := strconv.Itoa(int(resumed["partition"].(float64)))
	eventually(t, 10*time.Second, "b's unprocessed time of partition "+p, func() (bool, string) {
		v := sinkB.values("pageviews.partition_unprocessed_seconds", map[string]string{"partition": p})
		return len(v) > 0, ""
	})
	t.Logf("b's partition_unprocessed_seconds: %v", sinkB.values("pageviews.partition_unprocessed_seconds", nil))
	for _, v := range sinkB.values("pageviews.partition_unprocessed_seconds", nil) {
		if v < 0 || v >= idle.Seconds() {
			t.Errorf("partition_unprocessed_seconds = %.3f after a handoff; a's last commit was %s or more before it, the handoff much less", v, idle)
		}
	}

	// The generation b joined in, from its own log, is the group's.
	generation := 0.0
	for _, l := range b.logs.all("partition assigned") {
		generation = max(generation, l["generation"].(float64))
	}
	eventually(t, 10*time.Second, "a follows the group's generation", func() (bool, string) {
		v := sinkA.values("pageviews.generation", nil)
		return len(v) > 0 && v[len(v)-1] >= generation, fmt.Sprintf("a sends %v, the group is in %v", last(v), generation)
	})
	if len(a.logs.all("partition released")) == 0 {
		t.Error("a released no partition: no handoff happened")
	}

	eventually(t, 10*time.Second, "b's rebalance_state back to 0", func() (bool, string) {
		v := sinkB.values("pageviews.rebalance_state", nil)
		return len(v) > 0 && v[len(v)-1] == 0, fmt.Sprint(v)
	})
	if v := sinkB.values("pageviews.rebalance_state", nil); !slices.Contains(v, 1) {
		t.Errorf("b's rebalance_state never showed its join: %v", v)
	}
	if v := sinkA.values("pageviews.rebalance_state", nil); !slices.Contains(v, 1) {
		t.Errorf("a's rebalance_state never showed the partitions it released: %v", v)
	}
}

// TestCatchUpMetricsTellTheTruth: a worker starts behind a preloaded topic
// and commits rarely. While it catches up, messages_active (processed, not
// committed) is above 0; at the end it is 0 again, consumer_lag is 0 and
// end_offset is the broker's high watermark.
func TestCatchUpMetricsTellTheTruth(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	brokers := startDevBroker(t)
	sink := newStatsdSink(t)
	vars := truthVars(t, brokers, sink, map[string]string{"COMMIT_INTERVAL": "3s", "METRICS_INTERVAL": "100ms", "PARTITIONS": "1"})
	first := startWorker(t, vars, time.Now) // creates the topic
	first.stop(t)

	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "preload"})
	if err != nil {
		t.Fatal(err)
	}
	prod, err := sarama.NewSyncProducer([]string{brokers}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const records = 300_000
	ts := time.Now()
	batch := make([]*sarama.ProducerMessage, 0, 1000)
	for i := range records {
		batch = append(batch, &sarama.ProducerMessage{Topic: "page_views", Key: sarama.StringEncoder("/c"),
			Value: sarama.StringEncoder(`{"page":"/c","count":` + strconv.Itoa(i) + `}`), Timestamp: ts})
		if len(batch) == cap(batch) {
			if err := prod.SendMessages(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	prod.Close()

	startWorker(t, vars, time.Now)
	eventually(t, 60*time.Second, "caught up and committed", func() (bool, string) {
		v := sink.values("pageviews.committed_offset", nil)
		return len(v) > 0 && v[len(v)-1] >= records, fmt.Sprint(last(v))
	})
	// The gauges of one sample can come in separate packets, so
	// messages_active is awaited rather than read beside committed_offset.
	eventually(t, 10*time.Second, "messages_active above 0 in the catch-up, then 0 with all committed", func() (bool, string) {
		active := sink.values("pageviews.messages_active", nil)
		return slices.Max(append(active, 0)) > 0 && last(active) == 0, fmt.Sprint(active)
	})
	eventually(t, 10*time.Second, "lag 0 at the high watermark", func() (bool, string) {
		end, lag := sink.values("pageviews.end_offset", nil), sink.values("pageviews.consumer_lag", nil)
		return last(end) == records && last(lag) == 0, fmt.Sprintf("end_offset %v, consumer_lag %v", last(end), last(lag))
	})
}

// last is the last of v, or -1.
func last(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	return v[len(v)-1]
}
