package stream

import (
	"encoding/binary"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// staleClaim is a claim whose last fetch saw offsets up to hwm and that has
// nothing buffered: what a partition looks like while the group rebalances
// and fetches have stopped.
type staleClaim struct {
	sarama.ConsumerGroupClaim
	hwm int64
}

func (c staleClaim) HighWaterMarkOffset() int64               { return c.hwm }
func (c staleClaim) Messages() <-chan *sarama.ConsumerMessage { return nil }
func (c staleClaim) Pause()                                   {}
func (c staleClaim) Resume()                                  {}

// A partition closes its windows on the wall clock only when the broker,
// not the claim's last fetch, says nothing is left to process: records
// that reached the broker while fetches stood still are not made late.
func TestWallClockClosesOnlyWhatTheBrokerConfirms(t *testing.T) {
	client, prod := kfakeClient(t, 1, "views")
	for range 3 {
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "views", Key: sarama.StringEncoder("/a"), Value: sarama.StringEncoder("v")}); err != nil {
			t.Fatal(err)
		}
	}

	db, _, err := store.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	start := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	views := table.NewWindowed("views", "c", table.Int64{}, db, window.Hopping{Size: 4 * time.Second, Grace: time.Second, Expires: time.Minute},
		func() time.Time { return start })
	if _, _, err := views.Assign(0); err != nil {
		t.Fatal(err)
	}
	if _, err := views.Update(0, "/a", start.Add(time.Second), func(v int64) int64 { return v + 1 }); err != nil {
		t.Fatal(err)
	}
	wall := start.Add(time.Minute) // long past the window's end plus grace
	w := &partitionWorker{
		r: &Runtime{o: Options{Topic: "views", Client: client, Tables: []Table{views}, Clock: func() time.Time { return wall }}},
		p: 0,
	}

	// The first record processed; the claim's last fetch saw no more, but
	// the broker holds two more.
	w.last, w.src = 0, staleClaim{hwm: 1}
	if w.windowsDue() || !views.DueAt(0, wall) {
		t.Fatal("a window closed on the wall clock while the broker held records not processed")
	}
	if _, err := views.Flush(0, wall); err != nil || !views.DueAt(0, wall) {
		t.Fatalf("after a flush (%v) the window is closed, though the broker held records not processed", err)
	}

	// All three processed: the window closes.
	w.last, w.src = 2, staleClaim{hwm: 3}
	if !w.windowsDue() {
		t.Fatal("the window did not close on the wall clock once everything was processed")
	}
	if _, err := views.Flush(0, wall); err != nil || views.DueAt(0, wall) {
		t.Fatalf("after a flush (%v) the window is still open", err)
	}
}

// The sweep deletes what a partition that moved away left in the store,
// once its owner's stream time (the changelog's newest timestamp) has
// expired it; a partition this worker processes is left alone.
func TestSweepExpiresCopiesLeftBehind(t *testing.T) {
	client, prod := kfakeClient(t, 2, "views-changelog")
	start := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	for p := range int32(2) { // the owners' last flush: stream time start+12m
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "views-changelog", Partition: p, Key: sarama.StringEncoder("x"),
			Value: sarama.StringEncoder("1"), Timestamp: start.Add(12 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	restore, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer restore.Close()

	db, _, err := store.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	win := window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}
	left := table.NewWindowed("views", "views-changelog", table.Int64{}, db, win, func() time.Time { return start })
	inc := func(v int64) int64 { return v + 1 }
	for p := range int32(2) { // what this worker held: windows at start+4m and start+8m
		if _, _, err := left.Assign(p); err != nil {
			t.Fatal(err)
		}
		for _, at := range []time.Duration{4 * time.Minute, 8 * time.Minute} {
			if _, err := left.Update(p, "/a", start.Add(at), inc); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := left.Flush(p, start); err != nil {
			t.Fatal(err)
		}
		b := db.NewBatch()
		if err := left.Write(p, b, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		left.Revoke(p)
	}

	copies := table.NewWindowed("views", "views-changelog", table.Int64{}, db, win, func() time.Time { return start })
	s := &Standby{Tables: []Table{copies}, Client: client, Reader: kafka.RangeReader{Client: client}, Restore: restore, DB: db, Log: slog.New(slog.DiscardHandler), Every: time.Second}
	s.init()
	s.Activate(1) // processed here: not the sweep's
	s.sweep(t.Context())

	windows := func(p int32) []int64 {
		var starts []int64
		_ = db.Scan("views", p, nil, func(k, _ []byte) error {
			starts = append(starts, int64(binary.BigEndian.Uint64(k)^(1<<63)))
			return nil
		})
		return starts
	}
	if got, want := windows(0), []int64{start.Add(8 * time.Minute).UnixMilli()}; !slices.Equal(got, want) {
		t.Errorf("partition 0, left behind: windows %v, want only the live one %v", got, want)
	}
	if got := windows(1); len(got) != 2 {
		t.Errorf("partition 1, processed here: windows %v, want both kept", got)
	}
}

// kfakeClient starts a kfake broker holding topic with partitions, and
// returns a client of it and a producer that picks the partition given in
// each record.
func kfakeClient(t *testing.T, partitions int32, topic string) (sarama.Client, sarama.SyncProducer) {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	client := testClient(t, cluster.ListenAddrs(), "windows-test", topic)
	prod, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prod.Close() })
	return client, prod
}

// testClient is a client of the worker's configuration on addrs, closed
// when the test ends.
func testClient(t *testing.T, addrs []string, id, topic string) sarama.Client {
	t.Helper()
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: id, ManualTopics: map[string]bool{topic: true}})
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(addrs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
