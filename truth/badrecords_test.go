package truth

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// TestBadRecords: records that are not page views (not JSON, invalid
// UTF-8) go to the dead-letter topic; dead_letters counts exactly the
// records there, which are the bad records sent. Late views (older than
// their window's expiry) are counted as late.
func TestBadRecords(t *testing.T) {
	s := newScenario(t, "bad records")
	w := s.start("worker", t.TempDir(), nil)
	w.WaitReady(t, time.Minute)

	bad := [][]byte{
		[]byte("not json"),
		[]byte("{\"page\":"),
		[]byte("\xff\xfe\xfd"),
		[]byte("{\"page\":\"/bad/\xff\",\"count\":1}"),
		[]byte("{\"page\":\"/ok\",\"count\":\"\xc3\x28\"}"),
	}
	now := time.Now()
	const good = 200
	var msgs []*sarama.ProducerMessage
	for i := range good {
		msgs = append(msgs, view(fmt.Sprintf("/good/%d", i%20), i, now))
	}
	for i, v := range bad {
		msgs = append(msgs, &sarama.ProducerMessage{Topic: sourceTopic, Key: sarama.StringEncoder(fmt.Sprintf("/bad/%d", i)), Value: sarama.ByteEncoder(v)})
	}
	// Late: after a view of now, views of the same page four days old, their
	// 24h window long past its 48h expiry.
	const late = 3
	msgs = append(msgs, view("/late", 0, now))
	for i := range late {
		msgs = append(msgs, view("/late", i+1, now.Add(-96*time.Hour)))
	}
	prod := s.kafka.producer()
	if err := prod.send(msgs); err != nil {
		t.Fatal(err)
	}
	hwm := s.caughtUp(time.Minute)
	s.settled(w, hwm, 30*time.Second)
	k := w.sink

	dlq := s.kafka.readCommitted(dlqTopic)
	var onDLQ [][]byte
	for _, vs := range dlq {
		onDLQ = append(onDLQ, vs...)
	}
	sameRecords := len(onDLQ) == len(bad)
	for _, v := range bad {
		sameRecords = sameRecords && slices.ContainsFunc(onDLQ, func(d []byte) bool { return bytes.Equal(d, v) })
	}
	dead := k.sum("dead_letters", nil)
	s.check(dead == int64(len(onDLQ)) && dead == int64(len(bad)) && sameRecords, "dead_letters",
		fmt.Sprintf("records on %s (read_committed): %d; bad records sent: %d, the same values: %v", dlqTopic, len(onDLQ), len(bad), sameRecords), fmt.Sprint(dead))
	sentDLQ := k.sum("messages_sent", map[string]string{"topic": dlqTopic})
	s.check(sentDLQ == int64(len(onDLQ)), "messages_sent", fmt.Sprintf("records on %s: %d", dlqTopic, len(onDLQ)), fmt.Sprint(sentDLQ))
	all := int64(len(msgs))
	s.check(k.sum("messages_received", nil) == all, "messages_received", fmt.Sprintf("records sent: %d", all), fmt.Sprint(k.sum("messages_received", nil)))
	valid := all - int64(len(bad))
	s.check(k.sum("events", nil) == valid, "events", fmt.Sprintf("valid records sent (late ones included): %d", valid), fmt.Sprint(k.sum("events", nil)))
	s.check(k.sum("late_events", nil) == late, "late_events", fmt.Sprintf("views older than their window's expiry sent: %d", late), fmt.Sprint(k.sum("late_events", nil)))
	s.check(k.sum("flush_failures", nil) == 0 && k.sum("send_errors", nil) == 0, "flush_failures",
		"0, and send_errors 0: the broker refused nothing (no warning logged)",
		fmt.Sprintf("%d, send_errors %d", k.sum("flush_failures", nil), k.sum("send_errors", nil)))
	if n := len(w.Entries("dead-lettering record")); n != len(bad) {
		t.Errorf("the worker logged %d dead-lettering record lines for %d bad records", n, len(bad))
	}
	warns := w.EntriesWhere(func(e entry) bool {
		return (e.Str("level") == "WARN" || e.Str("level") == "ERROR") && e.Str("msg") != "dead-lettering record"
	})
	if len(warns) > 0 {
		t.Errorf("the worker logged warnings: %v", warns)
	}
}

// TestStoreSize: pebble_size_bytes is the size of the store on disk.
func TestStoreSize(t *testing.T) {
	requireTruth(t)
	s := newScenario(t, "store size")
	dataDir := t.TempDir()
	w := s.start("worker", dataDir, nil)
	ts := time.Now()
	s.kafka.produce(20_000, func(i int) *sarama.ProducerMessage {
		return view(fmt.Sprintf("/store/%d", i%5000), i, ts)
	})
	hwm := s.caughtUp(time.Minute)
	s.settled(w, hwm, 30*time.Second)
	size, _ := w.sink.last("pebble_size_bytes", nil)
	disk := dirSize(t, filepath.Join(dataDir, "state"))
	s.check(size >= float64(disk)/2 && size <= float64(disk)*2, "pebble_size_bytes",
		fmt.Sprintf("within a factor of 2 of the size of the files in DATA_DIR/state (%d bytes)", disk), fmt.Sprint(size))
}
