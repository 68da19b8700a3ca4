package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
)

// Under exactly_once a commit interval is one transaction holding the
// changelog records and the source offset, which the coordinator takes
// only for the member's current generation. In the middle of a cooperative
// rebalance a member's generation is on its way out, and the coordinator
// refuses the offsets (ILLEGAL_GENERATION on TxnOffsetCommit). The member
// must abort the transaction and do it again once it knows its new
// generation, its tables handing out the same keys; a partition that moves
// meanwhile is recovered by its next owner from what was committed. The
// counts stay exact throughout: nothing lost, nothing counted twice.

// eosPartitions is the source topic's partition count here: enough that a
// second worker takes some partitions and the first keeps some.
const eosPartitions = 4

// refusingBroker is an in-process cluster of two brokers that refuses one
// member's transactional offset commits while the member rejoins its
// group. The member's rejoin is held on its way to the coordinator, so the
// rebalance a second worker started stays open, and every TxnOffsetCommit
// the member sends meanwhile is answered ILLEGAL_GENERATION, as a
// coordinator answers a member whose generation it no longer takes. Per
// transactional id it counts the commits it refused and the transactions
// aborted.
//
// A broker answers a connection's requests in order, and sarama fetches
// over the connection its group's JoinGroup waits on when the coordinator
// also leads the partitions: holding the rejoin would stop the member's
// fetches too, and with them the commits to refuse. The source partitions
// therefore lead on the other broker (sourceAwayFromCoordinator).
type refusingBroker struct {
	c       *kfake.Cluster
	addrs   []string
	parked  chan struct{} // closed once the member's rejoin is held
	release chan struct{} // closed to let the held rejoin go on
	once    sync.Once

	mu       sync.Mutex
	member   string // whose rejoin is held and whose commits are refused
	held     bool
	refusing bool
	refused  map[string]int // TxnOffsetCommits answered ILLEGAL_GENERATION
	aborted  map[string]int // EndTxn requests that abort, once armed
}

// startRefusingBroker starts the cluster with the refusal's controls
// installed, disarmed.
func startRefusingBroker(t *testing.T) *refusingBroker {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(2), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	b := &refusingBroker{
		c: c, addrs: c.ListenAddrs(),
		parked: make(chan struct{}), release: make(chan struct{}),
		refused: map[string]int{}, aborted: map[string]int{},
	}
	c.ControlKey(int16(kmsg.JoinGroup), b.holdRejoin)
	c.ControlKey(int16(kmsg.TxnOffsetCommit), b.refuseCommit)
	c.ControlKey(int16(kmsg.EndTxn), b.countAbort)
	return b
}

// sourceAwayFromCoordinator creates cfg's source topic with its partitions
// led by the broker that does not coordinate cfg's group.
func (b *refusingBroker) sourceAwayFromCoordinator(t *testing.T, cfg *config.Config) {
	t.Helper()
	if err := b.c.CreateTopic(cfg.Topic, eosPartitions, nil); err != nil {
		t.Fatal(err)
	}
	other := 1 - b.c.CoordinatorFor(cfg.Group) // the nodes are 0 and 1
	for p := range int32(eosPartitions) {
		if err := b.c.MoveTopicPartition(cfg.Topic, p, other); err != nil {
			t.Fatal(err)
		}
	}
}

// brokers is the cluster's bootstrap list, as KAFKA_BROKERS takes it.
func (b *refusingBroker) brokers() string { return strings.Join(b.addrs, ",") }

// arm makes member's next JoinGroup the one held, and starts counting
// aborted transactions.
func (b *refusingBroker) arm(member string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.member = member
}

// holdRejoin holds the armed member's rejoin until releaseJoin, refusing
// its commits meanwhile; the broker then handles the JoinGroup as usual.
func (b *refusingBroker) holdRejoin(req kmsg.Request) (kmsg.Response, error, bool) {
	join := req.(*kmsg.JoinGroupRequest)
	b.mu.Lock()
	hold := !b.held && b.member != "" && join.MemberID == b.member
	if hold {
		b.held, b.refusing = true, true
	}
	b.mu.Unlock()
	if hold {
		close(b.parked)
		b.c.SleepControl(func() { <-b.release })
	}
	return nil, nil, false
}

// refuseCommit answers the member's TxnOffsetCommit ILLEGAL_GENERATION for
// every partition while its rejoin is held; any other goes on.
func (b *refusingBroker) refuseCommit(req kmsg.Request) (kmsg.Response, error, bool) {
	commit := req.(*kmsg.TxnOffsetCommitRequest)
	b.mu.Lock()
	refuse := b.refusing && commit.MemberID == b.member
	if refuse {
		b.refused[commit.TransactionalID]++
	}
	b.mu.Unlock()
	if !refuse {
		return nil, nil, false
	}
	b.c.KeepControl()
	resp := commit.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
	for _, rt := range commit.Topics {
		st := kmsg.NewTxnOffsetCommitResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = kerr.IllegalGeneration.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp, nil, true
}

// countAbort counts the transactions aborted once the broker is armed.
func (b *refusingBroker) countAbort(req kmsg.Request) (kmsg.Response, error, bool) {
	end := req.(*kmsg.EndTxnRequest)
	b.mu.Lock()
	if b.member != "" && !end.Commit {
		b.aborted[end.TransactionalID]++
	}
	b.mu.Unlock()
	return nil, nil, false
}

// releaseJoin stops the refusal and lets the held rejoin go on; calling
// it again is fine.
func (b *refusingBroker) releaseJoin() {
	b.mu.Lock()
	b.refusing = false
	b.mu.Unlock()
	b.once.Do(func() { close(b.release) })
}

// waitParked waits until the member's rejoin is held.
func (b *refusingBroker) waitParked(t *testing.T, w *worker) {
	t.Helper()
	select {
	case <-b.parked:
	case <-time.After(60 * time.Second):
		t.Fatalf("the first worker did not rejoin within 60s of the second one's start\n%s", w.logs)
	}
}

// refusals reports whether each of ids had at least n commits refused and
// n transactions aborted, and the counts so far.
func (b *refusingBroker) refusals(ids []string, n int) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ok := true
	var state []string
	for _, id := range ids {
		ok = ok && b.refused[id] >= n && b.aborted[id] >= n
		state = append(state, fmt.Sprintf("%s refused %d aborted %d", id, b.refused[id], b.aborted[id]))
	}
	return ok, strings.Join(state, ", ")
}

// unaborted returns the transactional ids with more commits refused than
// transactions aborted.
func (b *refusingBroker) unaborted() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for id, n := range b.refused {
		if b.aborted[id] < n {
			ids = append(ids, fmt.Sprintf("%s (refused %d, aborted %d)", id, n, b.aborted[id]))
		}
	}
	return ids
}

// eosVars configures an exactly-once worker on brokers with its own store,
// day-long windows, no livecheck (its synthetic views would add
// transactions of their own) and no standby copies.
func eosVars(t *testing.T, brokers string) map[string]string {
	return map[string]string{
		"KAFKA_BROKERS":        brokers,
		"WEB_ADDR":             "127.0.0.1:0",
		"DATA_DIR":             t.TempDir(),
		"PARTITIONS":           strconv.Itoa(eosPartitions),
		"PROCESSING_GUARANTEE": string(config.ExactlyOnce),
		"COMMIT_INTERVAL":      "100ms",
		"WINDOW_SIZE":          "24h",
		"WINDOW_EXPIRES":       "48h",
		"LIVECHECK_INTERVAL":   "0",
		// No standby copies: the next owner must rebuild what A held from
		// the committed changelogs, which the test holds it to.
		"TABLE_STANDBY_REPLICAS": "0",
	}
}

// midWindowClock runs at the real rate from the middle of the current
// window of size, so that a test never crosses a window boundary: a view
// stamped with it stays in its window and never turns late, and the
// windows' sums can be held to the views sent. The time stays near the
// real date, so broker retention keeps the changelogs.
func midWindowClock(size time.Duration) func() time.Time {
	now := time.Now()
	shift := now.Truncate(size).Add(size / 2).Sub(now)
	return func() time.Time { return time.Now().Add(shift) }
}

// stampedViews publishes page views to the source topic as an outside
// producer does: keyed by page, so each lands in its page's partition, and
// stamped with the workers' clock. The producer is idempotent, so a retried
// send cannot put a view in the topic twice.
type stampedViews struct {
	p     sarama.SyncProducer
	topic string
	clock func() time.Time
}

func newStampedViews(t *testing.T, brokers []string, topic string, clock func() time.Time) *stampedViews {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = kafka.Version
	conf.Producer.Idempotent = true
	conf.Producer.RequiredAcks = sarama.WaitForAll
	conf.Producer.Return.Successes = true
	conf.Net.MaxOpenRequests = 1
	p, err := sarama.NewSyncProducer(brokers, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &stampedViews{p: p, topic: topic, clock: clock}
}

// send publishes n views of each of pages and adds them to want.
func (v *stampedViews) send(t *testing.T, want map[string]int64, pages []string, n int) {
	t.Helper()
	var msgs []*sarama.ProducerMessage
	for range n {
		for _, page := range pages {
			value := fmt.Sprintf(`{"page":%q,"count":1,"timestamp":%q}`, page, v.clock().UTC().Format(time.RFC3339Nano))
			msgs = append(msgs, &sarama.ProducerMessage{Topic: v.topic, Key: sarama.StringEncoder(page), Value: sarama.StringEncoder(value)})
		}
	}
	if err := v.p.SendMessages(msgs); err != nil {
		t.Fatalf("publish views: %v", err)
	}
	for _, m := range msgs {
		want[string(m.Key.(sarama.StringEncoder))]++
	}
}

// pagesOverPartitions names perPartition pages under prefix for each
// source partition (the worker's partitioner, sarama's hash of the key),
// so that every partition has views of its own.
func pagesOverPartitions(t *testing.T, prefix string, perPartition int) []string {
	t.Helper()
	hash := sarama.NewHashPartitioner("")
	have := map[int32]int{}
	var pages []string
	for i := 0; len(pages) < perPartition*eosPartitions; i++ {
		page := prefix + strconv.Itoa(i)
		p, err := hash.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(page)}, eosPartitions)
		if err != nil {
			t.Fatal(err)
		}
		if have[p] < perPartition {
			have[p]++
			pages = append(pages, page)
		}
	}
	return pages
}

// waitExactReport polls /report/ at base until it is complete and counts
// each page of want exactly as often as its views were sent. A page counted
// more often fails at once: under exactly_once no owner holds a view twice,
// not even for a moment.
func waitExactReport(t *testing.T, base string, want map[string]int64) {
	t.Helper()
	eventually(t, 60*time.Second, "the report counts every view exactly once", func() (bool, string) {
		var rep pageview.Report
		getJSON(t, base+"/report/", &rep)
		got := map[string]int64{}
		for page, r := range rep.Pages {
			got[page] = r.Count
			if r.Count > want[page] {
				t.Fatalf("%s counts %d views of %s, more than the %d sent: a view was counted twice", base, r.Count, page, want[page])
			}
		}
		if diff := compareCounts("report", got, want, true); diff != "" || rep.Stale {
			return false, fmt.Sprintf("stale=%v missing=%v %s", rep.Stale, rep.MissingPartitions, diff)
		}
		return true, ""
	})
}

// joinedMember waits for w's first join and returns its member id.
func joinedMember(t *testing.T, w *worker) string {
	t.Helper()
	id, _ := w.logs.wait(t, "joined group", 30*time.Second)["member"].(string)
	if id == "" {
		t.Fatalf("joined group without a member id:\n%s", w.logs)
	}
	return id
}

// TestExactlyOnceOffsetsRefusedDuringRebalance: worker A holds every
// partition when worker B joins. A's rejoin is held at the coordinator, so
// the cooperative rebalance stays open, and each transaction A commits
// meanwhile, on every partition, has its offsets refused
// (ILLEGAL_GENERATION). A must abort each. The views in those transactions
// are of pages that get no views after them, so only a transaction done
// again, or the events redone by the partition's next owner, can put them
// in the tables. Then either:
//   - retried: the rejoin goes through; A does its transactions again in
//     its new generation and keeps some partitions, B recovers the others
//     from the committed changelogs;
//   - released: A is stopped while its commits are still refused, so it
//     releases every partition with its last transaction aborted, and B
//     recovers them all and processes their events again from the last
//     committed offsets.
//
// Both go on processing, and every page's total and window count, in the
// reports and in the changelogs read read_committed, must equal the views
// sent.
func TestExactlyOnceOffsetsRefusedDuringRebalance(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	t.Run("retried", func(t *testing.T) {
		r := startRefusal(t)
		r.k.releaseJoin()
		waitReady(t, r.b.base, 60*time.Second)
		waitBothOwn(t, r.a, r.b, eosPartitions)
		r.finish(t, r.a, r.b)
		if len(r.a.logs.all("flush succeeded again")) == 0 {
			t.Errorf("A logged no transaction that committed when done again")
		}
	})
	t.Run("released", func(t *testing.T) {
		r := startRefusal(t)
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			r.a.stop(t)
		}()
		waitReleasedUncommitted(t, r.a)
		r.k.releaseJoin()
		select {
		case <-stopped:
		case <-time.After(60 * time.Second):
			t.Fatalf("A did not stop within 60s of its rejoin going through\n%s", r.a.logs)
		}
		checkReleasedOnce(t, r.a)
		waitReady(t, r.b.base, 60*time.Second)
		eventually(t, 60*time.Second, "B holds every partition", func() (bool, string) {
			var h held
			getJSON(t, r.b.base+"/report/?local=1", &h)
			return len(h.Partitions) == eosPartitions, fmt.Sprintf("B holds %v", h.Partitions)
		})
		r.finish(t, r.b)
	})
}

// refusal is one run of the test up to the refusals: A refused on every
// partition, B waiting in the rebalance that A's held rejoin keeps open.
type refusal struct {
	k     *refusingBroker
	cfg   *config.Config
	a, b  *worker
	views *stampedViews
	later []string         // pages to send views of after the refusals
	want  map[string]int64 // views sent per page
}

// startRefusal starts the broker and A, counts views of every page, then
// starts B, holds A's rejoin and sends one view of each refused page; it
// returns once every partition's commit was refused and aborted twice (the
// transaction and its first retry).
func startRefusal(t *testing.T) *refusal {
	t.Helper()
	k := startRefusingBroker(t)
	clock := midWindowClock(24 * time.Hour)
	cfg, err := loadConfig(env(eosVars(t, k.brokers())))
	if err != nil {
		t.Fatal(err)
	}
	k.sourceAwayFromCoordinator(t, cfg)
	r := &refusal{k: k, cfg: cfg, want: map[string]int64{}, later: pagesOverPartitions(t, "/eos/later/", 2)}
	r.a = startWorker(t, eosVars(t, k.brokers()), clock)
	r.views = newStampedViews(t, k.addrs, cfg.Topic, clock)
	refused := pagesOverPartitions(t, "/eos/refused/", 2)
	r.views.send(t, r.want, append(refused, r.later...), 3)
	waitExactReport(t, r.a.base, r.want)

	k.arm(joinedMember(t, r.a))
	r.b = launchWorker(t, eosVars(t, k.brokers()), clock)
	t.Cleanup(k.releaseJoin) // before the workers stop, should the test end early
	k.waitParked(t, r.a)
	r.views.send(t, r.want, refused, 1)
	var ids []string
	for p := range eosPartitions {
		ids = append(ids, fmt.Sprintf("%s-%s-%d", cfg.Group, cfg.Topic, p))
	}
	eventually(t, 30*time.Second, "commits refused and aborted on every partition", func() (bool, string) {
		return k.refusals(ids, 2)
	})
	return r
}

// finish sends views of the later pages to the workers still running,
// waits until each of their reports counts every view exactly once, checks
// what the refusals left, stops the workers and holds the changelogs to
// the views sent.
func (r *refusal) finish(t *testing.T, running ...*worker) {
	t.Helper()
	r.views.send(t, r.want, r.later, 3)
	for _, w := range running {
		waitExactReport(t, w.base, r.want)
	}
	checkTransactionsAborted(t, r.k, r.a)
	checkRecoveredByNextOwner(t, r.b)
	for _, w := range running {
		w.stop(t)
	}
	checkChangelogsExact(t, r.k.addrs, r.cfg, r.want)
	if t.Failed() {
		t.Logf("A's log:\n%s\nB's log:\n%s", r.a.logs, r.b.logs)
	}
}

// releasedUncommitted is what a worker logs when it releases a partition
// whose last transaction did not commit.
const releasedUncommitted = "could not commit the offset when releasing the partition; the events since the last commit will be processed again"

// waitReleasedUncommitted waits until w released every partition with its
// last transaction not committed.
func waitReleasedUncommitted(t *testing.T, w *worker) {
	t.Helper()
	eventually(t, 60*time.Second, "every partition released uncommitted", func() (bool, string) {
		ps := map[float64]bool{}
		for _, l := range w.logs.all(releasedUncommitted) {
			ps[l["partition"].(float64)] = true
		}
		return len(ps) == eosPartitions, fmt.Sprintf("released uncommitted: %v", ps)
	})
}

// checkReleasedOnce checks that w released each partition once: releasing
// a partition ends its processing, so nothing is flushed or committed for
// it after its release, and the release is counted once.
func checkReleasedOnce(t *testing.T, w *worker) {
	t.Helper()
	n := map[float64]int{}
	for _, l := range w.logs.all(releasedUncommitted) {
		n[l["partition"].(float64)]++
	}
	for p, c := range n {
		if c != 1 {
			t.Errorf("partition %v was released %d times: its processing went on after its release", p, c)
		}
	}
}

// checkTransactionsAborted checks that every refused transaction was
// aborted, and that A said so, naming the refused generation.
func checkTransactionsAborted(t *testing.T, k *refusingBroker, a *worker) {
	t.Helper()
	if ids := k.unaborted(); len(ids) > 0 {
		t.Errorf("refused transactions that were not aborted: %v", ids)
	}
	for _, l := range a.logs.all("flush failed; retrying") {
		e, _ := l["error"].(string)
		if strings.Contains(e, "aborted to be done again") && strings.Contains(e, sarama.ErrIllegalGeneration.Error()) {
			return
		}
	}
	t.Errorf("A logged no flush aborted for the refused generation")
}

// checkRecoveredByNextOwner checks that B replayed the changelogs of each
// partition it took: nothing was in its store, so every count it holds
// came from what A committed, and from what B processed after it.
func checkRecoveredByNextOwner(t *testing.T, b *worker) {
	t.Helper()
	var h held
	getJSON(t, b.base+"/report/?local=1", &h)
	replayed := map[float64]bool{}
	for _, l := range b.logs.all("recovered") {
		if n, _ := l["records"].(float64); n > 0 {
			replayed[l["partition"].(float64)] = true
		}
	}
	for _, p := range h.Partitions {
		if !replayed[float64(p)] {
			t.Errorf("B holds partition %d but replayed no changelog record of it", p)
		}
	}
}

// checkChangelogsExact reads both changelogs from the start as a fresh
// recovery does (read_committed, last value per key) and holds every
// page's total and its window counts' sum to the views sent. The totals
// changelog must also hold records that only a read_uncommitted reader
// sees: those of the aborted transactions, which recovery skips.
func checkChangelogsExact(t *testing.T, brokers []string, cfg *config.Config, want map[string]int64) {
	t.Helper()
	st, err := readTables(brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := compareCounts("totals changelog, read_committed", st.totals, want, true); diff != "" {
		t.Error(diff)
	}
	if diff := compareCounts("views changelog, read_committed, summed over windows", st.views, want, true); diff != "" {
		t.Error(diff)
	}
	_, committed, err := topicContents(brokers, totalsChangelog, true)
	if err != nil {
		t.Fatal(err)
	}
	_, all, err := topicContents(brokers, totalsChangelog, false)
	if err != nil {
		t.Fatal(err)
	}
	if records(all) <= records(committed) {
		t.Errorf("the totals changelog holds %d records read_uncommitted and %d read_committed: the aborted transactions left none", records(all), records(committed))
	}
}

// records sums per-key record counts.
func records(counts map[string]int64) int64 {
	n := int64(0)
	for _, c := range counts {
		n += c
	}
	return n
}
