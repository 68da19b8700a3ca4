package kafka_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/kafka"
)

// follower returns a Follower on its own clients of addr, as the worker
// has one: the backlog read committed, the tail uncommitted.
func follower(t *testing.T, addr string) *kafka.Follower {
	t.Helper()
	return kafka.NewFollower(kafka.RangeReader{Client: readerClient(t, addr)}, consumer(t, addr))
}

// consumer returns a sarama consumer on a client of its own of addr.
func consumer(t *testing.T, addr string) sarama.Consumer {
	t.Helper()
	c, err := sarama.NewConsumerFromClient(readerClient(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func produce(t *testing.T, addr string, ks ...string) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = kafka.Version
	cfg.Producer.Return.Successes = true
	p, err := sarama.NewSyncProducer([]string{addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, k := range ks {
		if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "log", Key: sarama.StringEncoder(k), Value: sarama.StringEncoder("v-" + k)}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFollowerReadsBacklogThenTail: a partition is followed from the
// oldest offset through its backlog and on into records produced later,
// each once, in order, committed ones only; a pause holds the tail back.
func TestFollowerReadsBacklogThenTail(t *testing.T) {
	_, addr := rangeLog(t)
	pc := follower(t, addr).Follow("log", 0, sarama.OffsetOldest)
	defer pc.Close()
	backlog := append(keys("k", 0, 10), keys("k", 10, 17)...)
	if got := keysOf(take(t, pc, len(backlog))); !slices.Equal(got, backlog) {
		t.Errorf("backlog %v, want %v", got, backlog)
	}

	produce(t, addr, keys("t", 0, 3)...)
	got := take(t, pc, 3)
	if !slices.Equal(keysOf(got), keys("t", 0, 3)) {
		t.Errorf("tail %v, want t0 to t2", keysOf(got))
	}
	if hwm := pc.HighWaterMarkOffset(); hwm != got[2].Offset+1 {
		t.Errorf("high watermark %d, want %d", hwm, got[2].Offset+1)
	}

	pc.Pause()
	time.Sleep(300 * time.Millisecond) // past a fetch already asked for
	produce(t, addr, "p0")
	select {
	case m := <-pc.Messages():
		t.Fatalf("record %s delivered while paused", m.Key)
	case <-time.After(500 * time.Millisecond):
	}
	pc.Resume()
	if got := keysOf(take(t, pc, 1)); !slices.Equal(got, []string{"p0"}) {
		t.Errorf("after the pause %v, want p0", got)
	}
}

// TestFollowerFromTheEnd: a partition followed from its end has no
// backlog, and from an offset inside it reads the rest of it first.
func TestFollowerFromTheEnd(t *testing.T) {
	_, addr := rangeLog(t)
	f := follower(t, addr)
	end, err := readerClient(t, addr).GetOffset("log", 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	atEnd := f.Follow("log", 0, end)
	produce(t, addr, "e0")
	if got := keysOf(take(t, atEnd, 1)); !slices.Equal(got, []string{"e0"}) {
		t.Errorf("from the end %v, want e0", got)
	}
	if err := atEnd.Close(); err != nil {
		t.Fatal(err)
	}

	// The same partition again, once the first let it go, from k15.
	rest := f.Follow("log", 0, end-3)
	defer rest.Close()
	if got := keysOf(take(t, rest, 3)); !slices.Equal(got, []string{"k15", "k16", "e0"}) {
		t.Errorf("from %d %v, want k15 k16 e0", end-3, got)
	}
}

// rangeLogFrom is rangeLog with the records below offset start deleted, as
// retention deletes them.
func rangeLogFrom(t *testing.T, start int64) string {
	t.Helper()
	_, addr := rangeLog(t)
	admin, err := sarama.NewClusterAdminFromClient(readerClient(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteRecords("log", map[int32]int64{0: start}); err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestFollowerFromBeforeTheLogStart: an offset the broker no longer holds
// (records deleted, as retention does) goes on from the oldest it holds,
// as a group's claim resets, and the backlog from there is read whole.
func TestFollowerFromBeforeTheLogStart(t *testing.T) {
	addr := rangeLogFrom(t, 5)
	f := follower(t, addr)
	oldest := f.Follow("log", 0, sarama.OffsetOldest)
	want := keysOf(take(t, oldest, 12)) // k5 to k16
	if want[0] != "k5" {
		t.Fatalf("the oldest record kept is %s, want k5", want[0])
	}
	if err := oldest.Close(); err != nil { // one consumer of a partition at a time
		t.Fatal(err)
	}

	gone := f.Follow("log", 0, 2)
	defer gone.Close()
	if got := keysOf(take(t, gone, len(want))); !slices.Equal(got, want) {
		t.Errorf("from a deleted offset %v, want %v", got, want)
	}
	produce(t, addr, "t0")
	if got := keysOf(take(t, gone, 1)); !slices.Equal(got, []string{"t0"}) {
		t.Errorf("then %v, want t0", got)
	}
}

// TestFollowerAfterAnUnfinishedClose: a partition followed again while
// its previous follow is still closing (a runtime lets a released
// partition's source go without waiting, and the group may hand the
// partition straight back) starts once the previous one has let the
// partition go, without an error, and reads on from where it is asked to.
func TestFollowerAfterAnUnfinishedClose(t *testing.T) {
	_, addr := rangeLog(t)
	f := follower(t, addr)
	first := f.Follow("log", 0, sarama.OffsetOldest)
	backlog := take(t, first, 17)
	first.AsyncClose()

	from := backlog[15].Offset
	again := f.Follow("log", 0, from)
	defer again.Close()
	if got, want := keysOf(take(t, again, 2)), keysOf(backlog[15:]); !slices.Equal(got, want) {
		t.Errorf("followed again from %d: %v, want %v", from, got, want)
	}
	produce(t, addr, "t0")
	if got := keysOf(take(t, again, 1)); !slices.Equal(got, []string{"t0"}) {
		t.Errorf("then %v, want t0", got)
	}
	select {
	case e := <-again.Errors():
		t.Errorf("error while the previous follow closed: %v", e.Err)
	default:
	}
}

// TestFollowerClosedWhileItsTailWaits: a follow closed while its tail
// waits for the partition's previous consumer to let go, and its backlog's
// reader waits for room on a full Messages, stops that reader before it
// closes Messages: Close returns, and Messages holds what was delivered,
// then closes. The reader went on sending on the closed channel and
// panicked (three revoke cells of the fault matrix found it).
func TestFollowerClosedWhileItsTailWaits(t *testing.T) {
	_, addr := rangeLog(t)
	cl := readerClientWith(t, addr, func(cfg *sarama.Config) {
		cfg.ChannelBufferSize = 4 // the backlog, 17 records, fills it
	})
	f := kafka.NewFollower(kafka.RangeReader{Client: cl}, consumer(t, addr))

	end, err := cl.GetOffset("log", 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	holder := f.Follow("log", 0, end)
	defer holder.Close()
	produce(t, addr, "t0")
	take(t, holder, 1) // its tail is open (before its backlog is read) and holds the partition

	pc := f.Follow("log", 0, sarama.OffsetOldest)
	for deadline := time.Now().Add(30 * time.Second); len(pc.Messages()) < cap(pc.Messages()); {
		if time.Now().After(deadline) {
			pc.Close()
			t.Fatalf("the backlog filled %d of Messages' %d in 30 s", len(pc.Messages()), cap(pc.Messages()))
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() { pc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close has not returned after 30 s")
	}
	var got []string
	for m := range pc.Messages() {
		got = append(got, string(m.Key))
	}
	if want := keys("k", 0, 4); !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

// TestFollowerFromPastTheEnd: an offset past the partition's end (its
// topic made again, say) goes on from the offset Consumer.Offsets.Initial
// names, the oldest here, as a group's claim resets: the whole log is read,
// then what comes after.
func TestFollowerFromPastTheEnd(t *testing.T) {
	_, addr := rangeLog(t)
	end, err := readerClient(t, addr).GetOffset("log", 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	pc := follower(t, addr).Follow("log", 0, end+100)
	defer pc.Close()
	want := append(keys("k", 0, 10), keys("k", 10, 17)...)
	if got := keysOf(take(t, pc, len(want))); !slices.Equal(got, want) {
		t.Errorf("from past the end %v, want %v", got, want)
	}
	produce(t, addr, "t0")
	if got := keysOf(take(t, pc, 1)); !slices.Equal(got, []string{"t0"}) {
		t.Errorf("then %v, want t0", got)
	}
}

// TestFollowerStopsOutOfRange: with StopOutOfRange, an offset the broker
// no longer holds, or one past the end, stops the follow as a sarama
// partition consumer stops: the error on Errors, Messages closed, nothing
// delivered.
func TestFollowerStopsOutOfRange(t *testing.T) {
	addr := rangeLogFrom(t, 5)
	end, err := readerClient(t, addr).GetOffset("log", 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	f := follower(t, addr)
	f.StopOutOfRange = true
	for _, from := range []int64{2, end + 100} {
		pc := f.Follow("log", 0, from)
		select {
		case m, ok := <-pc.Messages():
			if ok {
				pc.Close()
				t.Fatalf("from %d: delivered %s at %d, want Messages closed", from, m.Key, m.Offset)
			}
		case <-time.After(30 * time.Second):
			pc.Close()
			t.Fatalf("from %d: still following after 30 s, want it stopped", from)
		}
		var errs []error
		for e := range pc.Errors() {
			errs = append(errs, e.Err)
		}
		if !slices.ContainsFunc(errs, func(err error) bool { return errors.Is(err, sarama.ErrOffsetOutOfRange) }) {
			t.Errorf("from %d: errors %v, want one out of range", from, errs)
		}
		if err := pc.Close(); err != nil {
			t.Errorf("from %d: Close: %v", from, err)
		}
	}
}
