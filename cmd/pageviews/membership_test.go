// sarama v1.61.1 has a data race of its own in its transaction manager:
// transitionTo writes lastError under statusLock while
// publishTxnPartitions reads it under partitionInTxnLock. A producer the
// new owner fenced, which these tests make on purpose, can meet it, and
// the race detector then fails the test for sarama's race. They run
// without it: make test runs them in a pass of their own.

//go:build !race

package main

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
)

// The membership fence (internal/stream, "The membership fence"): a member
// the coordinator removed from the group must not write a changelog that a
// new owner already recovered and wrote, or a later recovery restores the
// older value. These tests remove a member while it holds partitions, the
// way a slow network does it: its rejoin is held on the way to the
// coordinator until its session expires, and the coordinator then answers
// it UNKNOWN_MEMBER_ID. They check the changelogs as a fresh recovery reads
// them: the last value of each key wins.

const (
	viewsTopic = "page_views"
	// dropLine is what a member logs when it drops its unflushed updates
	// after losing its membership.
	dropLine = "lost group membership; dropping unflushed updates for the next owner to redo"
)

// fenceBroker is an in-process broker whose JoinGroup and Produce requests
// the test can hold on their way in, as a slow network would.
type fenceBroker struct {
	c    *kfake.Cluster
	addr string

	mu sync.Mutex
	// produced lists the topic partitions of every Produce request the
	// broker took, in order; a held request counts when it is let go.
	produced []produced
	join     *hold // the held JoinGroup, if any
	produce  *hold // the held changelog Produce, if any
}

// produced is one topic partition of a Produce request and the producer
// that sent it.
type produced struct {
	by        writer
	topic     string
	partition int32
}

// writer is a producer as the broker knows it: its id and epoch. A
// partition's transactional producers share an id; each new one (a new
// owner's) has a higher epoch and fences the ones before it.
type writer struct {
	pid   int64
	epoch int16
}

// hold keeps one matching request from the broker until release. held
// receives the producer id of a held Produce (0 for a JoinGroup).
type hold struct {
	member    string // JoinGroup: the member id to hold
	topic     string // Produce: a topic partition the request must write
	partition int32
	armed     bool
	held      chan int64
	releaseCh chan struct{}
	// let is closed once the held request is let go: the broker handles
	// it next, before any request that comes later.
	let  chan struct{}
	once sync.Once
}

func (h *hold) release() { h.once.Do(func() { close(h.releaseCh) }) }

func newHold() *hold {
	return &hold{armed: true, held: make(chan int64, 1), releaseCh: make(chan struct{}), let: make(chan struct{})}
}

// startFenceBroker starts a single-node kfake cluster for the workers to
// use through KAFKA_BROKERS.
func startFenceBroker(t *testing.T) *fenceBroker {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b := &fenceBroker{c: c, addr: c.ListenAddrs()[0]}
	t.Cleanup(c.Close)
	c.ControlKey(int16(kmsg.JoinGroup), func(req kmsg.Request) (kmsg.Response, error, bool) {
		join := req.(*kmsg.JoinGroupRequest)
		b.mu.Lock()
		h := b.join
		hit := h != nil && h.armed && join.MemberID == h.member
		if hit {
			h.armed = false
		}
		b.mu.Unlock()
		if hit {
			h.held <- 0
			c.SleepControl(func() { <-h.releaseCh })
			close(h.let)
		}
		return nil, nil, false // the broker answers it as usual
	})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		by := writer{pid: -1}
		var hit *hold
		var writes []produced
		b.mu.Lock()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range tp.Partitions {
				var batch kmsg.RecordBatch
				if batch.ReadFrom(p.Records) == nil {
					by = writer{pid: batch.ProducerID, epoch: batch.ProducerEpoch}
				}
				writes = append(writes, produced{by: by, topic: tp.Topic, partition: p.Partition})
				if h := b.produce; h != nil && h.armed && tp.Topic == h.topic && p.Partition == h.partition {
					h.armed = false
					hit = h
				}
			}
		}
		b.mu.Unlock()
		if hit != nil {
			hit.held <- by.pid
			c.SleepControl(func() { <-hit.releaseCh })
		}
		// A held request lands when it is let go: record it then.
		b.mu.Lock()
		b.produced = append(b.produced, writes...)
		b.mu.Unlock()
		if hit != nil {
			close(hit.let)
		}
		return nil, nil, false
	})
	return b
}

// holdJoin holds the next JoinGroup of member until release.
func (b *fenceBroker) holdJoin(t *testing.T, member string) *hold {
	h := newHold()
	h.member = member
	b.mu.Lock()
	b.join = h
	b.mu.Unlock()
	t.Cleanup(h.release)
	return h
}

// holdProduce holds the next Produce that writes topic partition p.
func (b *fenceBroker) holdProduce(t *testing.T, topic string, p int32) *hold {
	h := newHold()
	h.topic, h.partition = topic, p
	b.mu.Lock()
	b.produce = h
	b.mu.Unlock()
	t.Cleanup(h.release)
	return h
}

// mark returns how many topic partitions Produce requests wrote so far.
func (b *fenceBroker) mark() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.produced)
}

// producers returns the producer ids that wrote topic.
func (b *fenceBroker) producers(topic string) []int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []int64
	for _, p := range b.produced {
		if p.topic == topic && !slices.Contains(ids, p.by.pid) {
			ids = append(ids, p.by.pid)
		}
	}
	return ids
}

// staleWrites returns the changelog partitions written between two marks
// by a producer that was superseded: one of pids (the producers of a
// member that was removed), or a producer whose id was already seen with
// a higher epoch (a transactional producer a new owner fenced).
func (b *fenceBroker) staleWrites(pids []int64, from, to int) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	newest := map[int64]int16{}
	var out []string
	for i, p := range b.produced[:min(to, len(b.produced))] {
		stale := p.by.epoch < newest[p.by.pid]
		newest[p.by.pid] = max(newest[p.by.pid], p.by.epoch)
		if i < from || (p.topic != totalsChangelog && p.topic != viewsChangelog) {
			continue
		}
		if stale || slices.Contains(pids, p.by.pid) {
			out = append(out, fmt.Sprintf("%s/%d", p.topic, p.partition))
		}
	}
	return out
}

// fenceVars configures a worker on b with the shortest session timeout the
// configuration allows, a window far longer than the test, and no
// livecheck (its synthetic views would add flushes of their own).
func fenceVars(t *testing.T, b *fenceBroker, partitions int, commitInterval string) map[string]string {
	return map[string]string{
		"KAFKA_BROKERS":         b.addr,
		"WEB_ADDR":              "127.0.0.1:0",
		"DATA_DIR":              t.TempDir(),
		"PARTITIONS":            strconv.Itoa(partitions),
		"KAFKA_SESSION_TIMEOUT": "6s",
		"COMMIT_INTERVAL":       commitInterval,
		"WINDOW_SIZE":           "24h",
		"WINDOW_EXPIRES":        "48h",
		"LIVECHECK_INTERVAL":    "0",
	}
}

// members returns the member ids w joined its group with, in order.
func members(w *worker) []string {
	var ids []string
	for _, l := range w.logs.all("joined group") {
		if id, _ := l["member"].(string); id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// firstMember waits for w's first join and returns its member id.
func firstMember(t *testing.T, w *worker) string {
	t.Helper()
	id, _ := w.logs.wait(t, "joined group", 30*time.Second)["member"].(string)
	if id == "" {
		t.Fatalf("joined group without a member id:\n%s", w.logs)
	}
	return id
}

// waitHeld waits until h holds a request and returns what it reported.
func waitHeld(t *testing.T, h *hold, what string, w *worker) int64 {
	t.Helper()
	select {
	case v := <-h.held:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s was not held within 30s; log:\n%s", what, w.logs)
		return 0
	}
}

// changelogValues reads the totals changelog from its start as a recovery
// does (read_committed: records of aborted transactions are skipped) and
// returns every value written for each page, in log order; a fresh
// recovery restores the last one.
func changelogValues(t *testing.T, addr string) map[string][]int64 {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	conf.Consumer.Return.Errors = true
	conf.Consumer.IsolationLevel = sarama.ReadCommitted
	client, err := sarama.NewClient([]string{addr}, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	parts, err := client.Partitions(totalsChangelog)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]int64{}
	for _, p := range parts {
		end, err := client.GetOffset(totalsChangelog, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		start, err := client.GetOffset(totalsChangelog, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatal(err)
		}
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(totalsChangelog, p, start)
		if err != nil {
			t.Fatal(err)
		}
	read:
		for next := start; next < end; {
			select {
			case m := <-pc.Messages():
				next = m.Offset + 1
				n, err := strconv.ParseInt(string(m.Value), 10, 64)
				if err != nil {
					t.Fatalf("%s/%d offset %d: value %q: %v", totalsChangelog, p, m.Offset, m.Value, err)
				}
				values[string(m.Key)] = append(values[string(m.Key)], n)
			case err := <-pc.Errors():
				t.Fatalf("read %s/%d: %v", totalsChangelog, p, err)
			case <-time.After(time.Second):
				// What is left is transaction markers, which are never
				// delivered, or records of aborted transactions.
				break read
			}
		}
		pc.Close()
	}
	return values
}

// recovered is the value a fresh recovery restores from values: the last.
func recovered(values []int64) int64 {
	if len(values) == 0 {
		return 0
	}
	return values[len(values)-1]
}

// waitChangelog waits until a fresh recovery from the totals changelog
// would hold at least want[page] for every page.
func waitChangelog(t *testing.T, addr string, want map[string]int, what string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() (bool, string) {
		values := changelogValues(t, addr)
		for page, n := range want {
			if recovered(values[page]) < int64(n) {
				return false, fmt.Sprintf("changelog %v, want at least %v", values, want)
			}
		}
		return true, ""
	})
}

// checkRecovery fails t unless a fresh recovery from the totals changelog
// holds at least every view produced (at least once: none lost).
func checkRecovery(t *testing.T, addr string, want map[string]int) {
	t.Helper()
	values := changelogValues(t, addr)
	for page, n := range want {
		if got := recovered(values[page]); got < int64(n) {
			t.Errorf("%s: a fresh recovery gives %d where %d views were produced; the changelog holds %v", page, got, n, values[page])
		}
	}
}

// viewProducer sends page views to the source topic as an outside
// publisher would: keyed by page, so they land where /count/ puts them.
type viewProducer struct{ p sarama.SyncProducer }

func newViewProducer(t *testing.T, addr string) *viewProducer {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	conf.Producer.Return.Successes = true
	conf.Producer.RequiredAcks = sarama.WaitForAll
	p, err := sarama.NewSyncProducer([]string{addr}, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &viewProducer{p}
}

func (v *viewProducer) send(t *testing.T, page string, n int) {
	t.Helper()
	for range n {
		value := fmt.Sprintf(`{"page":%q,"count":1,"timestamp":%q}`, page, time.Now().UTC().Format(time.RFC3339Nano))
		if _, _, err := v.p.SendMessage(&sarama.ProducerMessage{
			Topic: viewsTopic, Key: sarama.StringEncoder(page), Value: sarama.StringEncoder(value),
		}); err != nil {
			t.Fatalf("produce a view of %s: %v", page, err)
		}
	}
}

// partitionOf is the source partition of page's views among n.
func partitionOf(t *testing.T, page string, n int) int32 {
	t.Helper()
	p, err := sarama.NewHashPartitioner(viewsTopic).Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(page)}, int32(n))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitCommitted waits until the group committed partition p of the source
// topic up to its end.
func waitCommitted(t *testing.T, addr string, p int32) {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	client, err := sarama.NewClient([]string{addr}, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "source offsets committed", func() (bool, string) {
		end, err := client.GetOffset(viewsTopic, p, sarama.OffsetNewest)
		if err != nil {
			return false, err.Error()
		}
		resp, err := admin.ListConsumerGroupOffsets("pageviews", map[string][]int32{viewsTopic: {p}})
		if err != nil {
			return false, err.Error()
		}
		b := resp.GetBlock(viewsTopic, p)
		if b == nil {
			return false, "no offset"
		}
		return b.Offset == end, fmt.Sprintf("committed %d of %d", b.Offset, end)
	})
}

// waitRejoined waits until w joined its group under a member id other than
// old: it noticed that it was removed and joined again.
func waitRejoined(t *testing.T, w *worker, old string) {
	t.Helper()
	eventually(t, 45*time.Second, "the expelled member joins again", func() (bool, string) {
		ids := members(w)
		return len(ids) > 0 && ids[len(ids)-1] != old, fmt.Sprintf("member ids %v", ids)
	})
	waitReady(t, w.base, 30*time.Second)
}

// TestExpelledMemberDropsUnflushedUpdates is issue 22's second scenario:
// worker A holds partitions with updates it has not flushed (a long commit
// interval) when its rejoin is held on the way to the coordinator. Its
// session expires, worker B takes every partition, recovers it, counts more
// views and flushes them. Then A's rejoin arrives and is answered
// UNKNOWN_MEMBER_ID, which sarama reports by ending the session with no
// cause. A must drop its updates rather than flush them over B's, and join
// again.
func TestExpelledMemberDropsUnflushedUpdates(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const partitions = 4
	k := startFenceBroker(t)
	a := startWorker(t, fenceVars(t, k, partitions, "30m"), time.Now)
	memberA := firstMember(t, a)

	// Views through A's /count/: A's producer id is the one that wrote
	// them, and A counts them without flushing (not for 30 minutes).
	want := map[string]int{}
	pages := []string{"/fence/a", "/fence/b", "/fence/c", "/fence/d", "/fence/e", "/fence/f"}
	total := 0
	for i, page := range pages {
		for range 3 + i {
			if st := getJSON(t, a.base+"/count/?page="+page, nil); st != 200 {
				t.Fatalf("/count/ on A: status %d", st)
			}
			want[page]++
			total++
		}
	}
	pidsA := k.producers(viewsTopic)
	if len(pidsA) == 0 {
		t.Fatal("no producer id seen for A's views")
	}
	eventually(t, 30*time.Second, "A counted every view", func() (bool, string) {
		var rep pageview.Report
		getJSON(t, a.base+"/report/", &rep)
		return rep.Count == int64(total), fmt.Sprintf("count %d of %d", rep.Count, total)
	})

	// B joins; A's rejoin is held, so A's session expires and B takes
	// every partition. B is ready once it recovered them.
	join := k.holdJoin(t, memberA)
	b := startWorker(t, fenceVars(t, k, partitions, "100ms"), time.Now)
	waitHeld(t, join, "A's rejoin", a)
	expelled := k.mark()
	for _, page := range pages {
		for range 2 {
			if st := getJSON(t, b.base+"/count/?page="+page, nil); st != 200 {
				t.Fatalf("/count/ on B: status %d", st)
			}
			want[page]++
		}
	}
	waitChangelog(t, k.addr, want, "B flushed every view")

	// A's rejoin arrives now and is refused: A was removed.
	join.release()
	waitRejoined(t, a, memberA)
	rejoined := k.mark()

	checkRecovery(t, k.addr, want)
	if w := k.staleWrites(pidsA, expelled, rejoined); len(w) > 0 {
		t.Errorf("A wrote changelogs after it was removed from the group: %v", w)
	}
	if len(a.logs.all(dropLine)) == 0 {
		t.Errorf("A did not log %q", dropLine)
	}
	if t.Failed() {
		t.Logf("A's log:\n%s", a.logs)
	}
}

// TestExpelledMemberInFlightWrite is issue 23's fourth item: worker A's
// flush starts while its membership is confirmed, but its changelog
// Produce is held on the way to the broker. Meanwhile A's rejoin is held
// too, its session expires, and worker B takes the partition, recovers it,
// counts more views and flushes them. Then A's Produce arrives. None of A's
// records may land after B's: a fresh recovery must still hold every view.
// B's transactional producer for the partition fenced A's when B took the
// partition: the broker refuses A's write, or it belongs to a transaction
// the coordinator aborted.
func TestExpelledMemberInFlightWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const partitions = 2
	k := startFenceBroker(t)
	a := startWorker(t, fenceVars(t, k, partitions, "100ms"), time.Now)
	memberA := firstMember(t, a)
	views := newViewProducer(t, k.addr)

	const page = "/fence/in-flight"
	p := partitionOf(t, page, partitions)
	want := map[string]int{page: 5}
	views.send(t, page, 5)
	waitChangelog(t, k.addr, want, "A flushed the first views")
	waitCommitted(t, k.addr, p)

	// A's next flush of the partition is held at the broker.
	write := k.holdProduce(t, totalsChangelog, p)
	views.send(t, page, 1)
	want[page]++
	waitHeld(t, write, "A's changelog write", a)

	join := k.holdJoin(t, memberA)
	b := startWorker(t, fenceVars(t, k, partitions, "100ms"), time.Now)
	waitHeld(t, join, "A's rejoin", a)
	views.send(t, page, 3)
	want[page] += 3
	waitChangelog(t, k.addr, want, "B flushed every view")
	byB := len(changelogValues(t, k.addr)[page])

	// A's write reaches the broker now, then its rejoin.
	write.release()
	select {
	case <-write.let:
	case <-time.After(30 * time.Second):
		t.Fatal("A's held write was not let go within 30s")
	}
	join.release()
	waitRejoined(t, a, memberA)

	checkRecovery(t, k.addr, want)
	// Whatever landed after B's flush may only be newer than it: A's
	// held write either never lands or is refused.
	values := changelogValues(t, k.addr)[page]
	for _, v := range values[byB:] {
		if v < int64(want[page]) {
			t.Errorf("an older value landed after B's flush: the changelog holds %v, of which the first %d were there when B had flushed", values, byB)
			break
		}
	}
	if t.Failed() {
		t.Logf("A's log:\n%s\nB's log:\n%s", a.logs, b.logs)
	}
}

// TestRecoverySkipsAbortedTransactions: the changelogs hold transactions
// under at_least_once too, and a transaction the coordinator aborted (an
// expelled member's, fenced by the new owner) may have put records in them
// before it was aborted. A worker recovering with an empty store must skip
// them, as a read_committed reader does, and restore only what was
// committed.
func TestRecoverySkipsAbortedTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	const partitions = 2
	k := startFenceBroker(t)
	a := startWorker(t, fenceVars(t, k, partitions, "100ms"), time.Now)
	views := newViewProducer(t, k.addr)
	const page = "/fence/aborted"
	p := partitionOf(t, page, partitions)
	want := map[string]int{page: 3}
	views.send(t, page, 3)
	waitChangelog(t, k.addr, want, "A flushed the views")
	a.stop(t)

	// A transaction that wrote a larger total, then was aborted.
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	conf.Producer.Idempotent = true
	conf.Producer.RequiredAcks = sarama.WaitForAll
	conf.Producer.Return.Successes = true
	conf.Producer.Transaction.ID = "a-member-that-was-fenced"
	conf.Producer.Partitioner = sarama.NewManualPartitioner
	conf.Net.MaxOpenRequests = 1
	zombie, err := sarama.NewSyncProducer([]string{k.addr}, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer zombie.Close()
	if err := zombie.BeginTxn(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := zombie.SendMessage(&sarama.ProducerMessage{
		Topic: totalsChangelog, Partition: p, Key: sarama.StringEncoder(page), Value: sarama.StringEncoder("1000"),
	}); err != nil {
		t.Fatal(err)
	}
	if err := zombie.AbortTxn(); err != nil {
		t.Fatal(err)
	}

	b := startWorker(t, fenceVars(t, k, partitions, "100ms"), time.Now)
	var rep pageview.Report
	if st := getJSON(t, b.base+"/report/?page="+page, &rep); st != 200 {
		t.Fatalf("/report/ on B: status %d", st)
	}
	if got := rep.Pages[page].Count; got != int64(want[page]) {
		t.Errorf("after recovery from the changelogs B counts %d views of %s, want %d: the records of the aborted transaction were applied", got, page, want[page])
	}
}
