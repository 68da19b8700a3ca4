package chaos_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/window"
	"github.com/gofaust/pageviews/test/harness"
)

// Windows across a rolling restart (Faust issue #385: windows of a
// partition that moved to another worker never expired there). The windows
// are 2s long and expire 6s after their end, so during the run many close
// and expire, on partitions that move as each worker in turn is stopped
// with TERM and started again.
const (
	rwSize    = 2 * time.Second
	rwGrace   = time.Second
	rwExpires = 6 * time.Second
	// rwViews is the views table's changelog, rwClosed the topic of closed
	// windows' counts, rwClosedKey the changelog key of a partition's
	// closed-up-to point.
	rwViews     = "pageviews-views-changelog"
	rwClosed    = "page_views-windows"
	rwClosedKey = "\x00closed"
)

// rwWin is the workers' windows, for the arithmetic of expiry.
var rwWin = window.Hopping{Size: rwSize, Grace: rwGrace, Expires: rwExpires}

// rwMaxWindows is the most windows one partition's store may hold: from
// the oldest that has not expired at its stream time to the one holding it.
var rwMaxWindows = int((rwExpires+rwSize)/rwSize) + 1

// TestClosedWindowsRollingRestarts sends views while each worker in turn is
// stopped with TERM and started again, then checks that every (page,
// window) of the views changelog has its record on page_views-windows,
// that a stopped worker's store never holds more windows per partition
// than WINDOW_EXPIRES allows nor any its own stream time has expired, and
// that once the expiry time has passed (and one more commit) the owner of
// each partition holds none of the load's windows.
func TestClosedWindowsRollingRestarts(t *testing.T) {
	requireChaos(t)
	kcat := harness.RequireKcat(t)
	began := time.Now()
	c := newCluster(t, 3, "cooperative", false)
	for i := range c.slots {
		rwStart(c, i)
	}
	owners := c.waitSettled("start", 90*time.Second)
	ld := c.startLoad()
	time.Sleep(rwExpires) // windows close and expire before the first restart
	moved := rwRollingRestart(c, owners, began)
	ld.Stop()
	c.checkCrashes()
	t.Logf("load: %d calls in %s, %d acknowledged, %d refused, %d ambiguous; %d partitions changed owner", ld.sent.Load(),
		ld.stopped.Sub(ld.started).Round(time.Millisecond), ld.total(), ld.refused.Load(), ld.ambiguous.Load(), moved)

	cl := rwWaitClosed(c, kcat, "every window of the load closed")
	rwCheckRecords(c, kcat, cl, ld)
	loadNewest := cl.newestAll()

	// Stream time moves only with events: once the load's windows are past
	// WINDOW_EXPIRES, one more view of every page moves it on, and the
	// commit that closes that view's window expires the load's windows.
	c.poll("the load's windows past WINDOW_EXPIRES", time.Minute, func() (bool, string) {
		return time.Now().After(ld.stopped.Add(rwExpires + rwSize + time.Second)), "waiting for the clock"
	})
	held := c.waitSettled("before the last views", 90*time.Second)
	w := c.live()[0]
	for i := range numPages {
		w.Count(t, pageName(i))
	}
	rwWaitClosed(c, kcat, "the last views' windows closed")
	// The copies a moved partition left behind expire with the workers'
	// sweep, every WINDOW_EXPIRES/2: two rounds, with time to read the
	// changelogs' ends.
	time.Sleep(rwExpires + 2*time.Second)
	c.signal(syscall.SIGTERM, 0, 1, 2)
	rwCheckExpired(c, held, loadNewest)
	t.Logf("done in %s", time.Since(began).Round(time.Second))
}

// rwRollingRestart stops each worker in turn with TERM, checks its store,
// waits until the others have taken its partitions over and their windows
// have closed and expired there, and starts it again; the windows then
// close and expire on whoever the group gives them to. It returns how many
// times a partition changed owner, from who served what at the start
// (owners).
func rwRollingRestart(c *cluster, owners map[int][]int32, began time.Time) (moved int) {
	t := c.t
	t.Helper()
	ownerOf := func(held map[int][]int32) map[int32]int {
		m := map[int32]int{}
		for idx, ps := range held {
			for _, p := range ps {
				m[p] = idx
			}
		}
		return m
	}
	before := ownerOf(owners)
	settled := func(what string) {
		now := ownerOf(c.waitSettled(what, 90*time.Second))
		for p, idx := range now {
			if before[p] != idx {
				moved++
			}
		}
		before = now
	}
	for i, s := range c.slots {
		c.signal(syscall.SIGTERM, i)
		rwCheckStore(t, s, rwScanStore(t, s), fmt.Sprintf("stopped in the rolling restart (%s of the run)", time.Since(began).Round(time.Second)))
		settled(fmt.Sprintf("the others took over from %s", s.name))
		time.Sleep(rwExpires) // the moved partitions' windows close and expire on their new owners
		rwStart(c, i)
		settled(fmt.Sprintf("restart of %s", s.name))
		time.Sleep(rwExpires)
	}
	if moved == 0 {
		t.Fatalf("no partition changed owner during the rolling restart: the test checked nothing that moved")
	}
	return moved
}

// rwStart starts a new run of worker i with the cluster's settings and the
// short windows, as cluster.start does with its own.
func rwStart(c *cluster, i int) *proc {
	t := c.t
	t.Helper()
	s := c.slots[i]
	if s.running() {
		t.Fatalf("%s is already running", s.name)
	}
	env := c.env(s)
	maps.Copy(env, map[string]string{"WINDOW_SIZE": rwSize.String(), "WINDOW_GRACE": rwGrace.String(), "WINDOW_EXPIRES": rwExpires.String()})
	s.mu.Lock()
	n := len(s.procs) + 1
	s.mu.Unlock()
	p := &proc{slot: s, n: n}
	p.Worker = harness.StartWorker(t, c.logDir, fmt.Sprintf("%s.run%d", s.name, n), env)
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// rwKey is one page in one window (start in Unix ms).
type rwKey struct {
	page  string
	start int64
}

// rwChangelog is the views changelog as a read_committed reader sees it at
// its end: the last value of each key.
type rwChangelog struct {
	counts map[rwKey]int64
	part   map[rwKey]int32
	closed map[int32]int64 // each partition's closed-up-to point (a window start)
	newest map[int32]int64 // each partition's newest window start of a page
}

func rwReadChangelog(t *testing.T, kcat, addr string) rwChangelog {
	t.Helper()
	cl := rwChangelog{counts: map[rwKey]int64{}, part: map[rwKey]int32{}, closed: map[int32]int64{}, newest: map[int32]int64{}}
	for _, r := range harness.ConsumeAll(t, kcat, addr, rwViews) {
		if r.Key == nil {
			t.Fatalf("%s %d/%d has no key", rwViews, r.Partition, r.Offset)
		}
		key, p := *r.Key, r.Partition
		if key == rwClosedKey || strings.HasPrefix(key, pageview.ReservedPrefix) {
			if n, err := strconv.ParseInt(deref(r.Payload), 10, 64); err == nil && key == rwClosedKey {
				cl.closed[p] = max(cl.closed[p], n)
			}
			continue
		}
		i := strings.LastIndexByte(key, '|')
		start, err := strconv.ParseInt(key[i+1:], 10, 64)
		if i < 0 || err != nil {
			t.Fatalf("%s %d/%d: key %q is not page|window start", rwViews, p, r.Offset, key)
		}
		k := rwKey{key[:i], start}
		if r.Payload == nil {
			delete(cl.counts, k)
			continue
		}
		n, err := strconv.ParseInt(*r.Payload, 10, 64)
		if err != nil {
			t.Fatalf("%s %d/%d: key %q value %q is not a count", rwViews, p, r.Offset, key, *r.Payload)
		}
		cl.counts[k], cl.part[k] = n, p
		if s, ok := cl.newest[p]; !ok || start > s {
			cl.newest[p] = start
		}
	}
	return cl
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// newestAll is the newest window start of any partition.
func (cl rwChangelog) newestAll() int64 {
	var n int64
	for _, s := range cl.newest {
		n = max(n, s)
	}
	return n
}

// rwWaitClosed polls the views changelog until every partition's
// closed-up-to point has passed its newest window, and returns it.
func rwWaitClosed(c *cluster, kcat, what string) rwChangelog {
	c.t.Helper()
	var cl rwChangelog
	c.poll(what, 2*time.Minute, func() (bool, string) {
		cl = rwReadChangelog(c.t, kcat, c.broker.Addr)
		var open []string
		for p, s := range cl.newest {
			if cl.closed[p] <= s {
				open = append(open, fmt.Sprintf("partition %d closed up to %s, its newest window starts %s; its owners:\n%s",
					p, rwTime(cl.closed[p]), rwTime(s), rwHistory(c, p)))
			}
		}
		slices.Sort(open)
		return len(open) == 0 && len(cl.newest) > 0, strings.Join(open[:min(len(open), 2)], "\n")
	})
	return cl
}

// rwCheckRecords checks that every (page, window) of the views changelog,
// all closed by now, has its record on page_views-windows (at least once:
// a repeat is counted, not failed), and logs the figures.
func rwCheckRecords(c *cluster, kcat string, cl rwChangelog, ld *load) {
	t := c.t
	t.Helper()
	recs := map[rwKey]int{}
	var bad []string
	for _, r := range harness.ConsumeAll(t, kcat, c.broker.Addr, rwClosed) {
		var v struct {
			Page  string    `json:"page"`
			Start time.Time `json:"window_start"`
			Count *int64    `json:"count"`
		}
		if r.Payload == nil || json.Unmarshal([]byte(*r.Payload), &v) != nil || v.Count == nil || deref(r.Key) != v.Page {
			bad = append(bad, fmt.Sprintf("%d/%d key %q value %q", r.Partition, r.Offset, deref(r.Key), deref(r.Payload)))
			continue
		}
		if !strings.HasPrefix(v.Page, pageview.ReservedPrefix) {
			recs[rwKey{v.Page, v.Start.UnixMilli()}]++
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d records of %s are not {page, window_start, window_end, count} keyed by their page:\n%s", len(bad), rwClosed, strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	var missing, owners []string
	missingIn := map[int32]bool{}
	var repeats, records int
	var inWindows int64
	for k, n := range cl.counts {
		inWindows += n
		records += recs[k]
		if recs[k] == 0 {
			p := cl.part[k]
			missing = append(missing, fmt.Sprintf("%s window %s (partition %d, closed up to %s): %d views in the changelog, no record",
				k.page, rwTime(k.start), p, rwTime(cl.closed[p]), n))
			missingIn[p] = true
		}
		repeats += max(recs[k]-1, 0)
	}
	slices.Sort(missing)
	for p := range missingIn {
		owners = append(owners, fmt.Sprintf("owners of partition %d:\n%s", p, rwHistory(c, p)))
	}
	slices.Sort(owners)
	if len(missing) > 0 {
		t.Errorf("%d (page, window) pairs of %d that got views have no record on %s:\n%s\n%s", len(missing), len(cl.counts), rwClosed,
			strings.Join(missing[:min(len(missing), 20)], "\n"), strings.Join(owners[:min(len(owners), 2)], "\n"))
	}
	t.Logf("%d (page, window) pairs with views over %d partitions, %d of their records on %s (%d repeated), %d missing; "+
		"the windows hold %d views, the load got %d acknowledged (the difference: views that came late, and at-least-once replays)",
		len(cl.counts), len(cl.newest), records, rwClosed, repeats, len(missing), inWindows, ld.total())
}

// rwHistory is the membership and recovery lines about partition p of
// every run of every worker, the last 30: who held the partition when.
func rwHistory(c *cluster, p int32) string {
	keep := map[string]bool{"partition assigned": true, "partition released": true, "partition resumed": true, "recovering": true, "recovered": true}
	lines := c.lines()
	slices.SortStableFunc(lines, func(a, b logLine) int { return a.Time.Compare(b.Time) })
	var out []string
	for _, l := range lines {
		if l.Partition == p && (keep[l.Msg] || l.Level == "WARN" || l.Level == "ERROR") {
			out = append(out, fmt.Sprintf("%s run%d %s", l.Worker, l.Incarnation, trimLine(l.Raw)))
		}
	}
	return strings.Join(out[max(0, len(out)-30):], "\n")
}

// rwTime shows a window start (Unix ms) as RFC 3339 UTC with milliseconds.
func rwTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// rwCopy is what a stopped worker's store holds of one partition of the
// views table: its checkpoint and the distinct window starts, ascending.
type rwCopy struct {
	cp     store.Checkpoint
	starts []int64
}

// rwScanStore reads the views table of a stopped worker's store, every
// partition it holds anything of.
func rwScanStore(t *testing.T, s *slot) map[int32]rwCopy {
	t.Helper()
	db, wiped, err := store.Open(filepath.Join(s.dataDir, "state"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open the store of %s: %v", s.name, err)
	}
	defer db.Close()
	if wiped {
		t.Errorf("the store of %s was corrupt and has been wiped", s.name)
	}
	out := map[int32]rwCopy{}
	for p := range int32(partitions) {
		cp, ok, err := db.Checkpoint(windowedTable(), p)
		if err != nil {
			t.Fatalf("%s: checkpoint of views/%d: %v", s.name, p, err)
		}
		var starts []int64
		err = db.Scan(windowedTable(), p, nil, func(k, _ []byte) error {
			if len(k) < 8 {
				return fmt.Errorf("key %q is not a window start and a page", k)
			}
			if st := int64(binary.BigEndian.Uint64(k) ^ (1 << 63)); len(starts) == 0 || starts[len(starts)-1] != st {
				starts = append(starts, st)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: scan views/%d: %v", s.name, p, err)
		}
		if ok || len(starts) > 0 {
			out[p] = rwCopy{cp: cp, starts: starts}
		}
	}
	return out
}

// rwCheckStore checks a stopped worker's copies: none holds more windows
// than WINDOW_EXPIRES allows, nor a window that its own stream time (its
// checkpoint's) has expired.
func rwCheckStore(t *testing.T, s *slot, copies map[int32]rwCopy, when string) {
	t.Helper()
	var held, bad []string
	for _, p := range slices.Sorted(maps.Keys(copies)) {
		cp := copies[p]
		held = append(held, fmt.Sprintf("p%d:%d", p, len(cp.starts)))
		if len(cp.starts) == 0 {
			continue
		}
		oldest, newest := cp.starts[0], cp.starts[len(cp.starts)-1]
		if len(cp.starts) > rwMaxWindows {
			bad = append(bad, fmt.Sprintf("partition %d holds %d windows (%s to %s), more than the %d that WINDOW_EXPIRES=%s allows",
				p, len(cp.starts), rwTime(oldest), rwTime(newest), rwMaxWindows, rwExpires))
		}
		if live := rwWin.FirstLive(cp.cp.Watermark); oldest < live {
			bad = append(bad, fmt.Sprintf("partition %d holds window %s, expired at its stream time %s (its oldest live window starts %s)",
				p, rwTime(oldest), rwTime(cp.cp.Watermark), rwTime(live)))
		}
	}
	t.Logf("%s %s: windows held per partition %s", s.name, when, strings.Join(held, " "))
	if len(bad) > 0 {
		t.Errorf("%s %s: its store holds windows it should have expired:\n%s", s.name, when, strings.Join(bad, "\n"))
	}
}

// rwCheckExpired reads every stopped worker's store: the owner of each
// partition at the end (held) must hold no window older than WINDOW_EXPIRES
// before the partition's stream time, and so none of the load's, the newest
// of which started at loadNewest. Neither may the copy a worker keeps of a
// partition it released: its sweep expires it by the owner's stream time.
func rwCheckExpired(c *cluster, held map[int][]int32, loadNewest int64) {
	t := c.t
	t.Helper()
	stores := map[int]map[int32]rwCopy{}
	stream := map[int32]int64{}
	for _, s := range c.slots {
		stores[s.idx] = rwScanStore(t, s)
		for p, cp := range stores[s.idx] {
			stream[p] = max(stream[p], cp.cp.Watermark)
		}
	}
	var bad, stale []string
	for _, s := range c.slots {
		rwCheckStore(t, s, stores[s.idx], "stopped at the end")
		for p, cp := range stores[s.idx] {
			live := rwWin.FirstLive(stream[p])
			old := 0
			for _, st := range cp.starts {
				if st < live {
					old++
				}
			}
			if old == 0 {
				continue
			}
			d := fmt.Sprintf("%s partition %d: %d windows from %s, older than WINDOW_EXPIRES before the partition's stream time %s (this copy's %s)",
				s.name, p, old, rwTime(cp.starts[0]), rwTime(stream[p]), rwTime(cp.cp.Watermark))
			if slices.Contains(held[s.idx], p) {
				bad = append(bad, d)
			} else {
				stale = append(stale, d)
			}
		}
	}
	slices.Sort(bad)
	slices.Sort(stale)
	if len(bad) > 0 {
		t.Errorf("the owners still hold expired windows (the load's newest window started %s; owners %s):\n%s",
			rwTime(loadNewest), formatHeld(c, held), strings.Join(bad, "\n"))
	}
	if len(stale) > 0 {
		t.Errorf("copies of partitions that moved away still hold expired windows (the sweep deletes them):\n%s", strings.Join(stale, "\n"))
	}
}

// windowedTable is the example's windowed table, named as its declaration
// names it (a generated worker renames it there).
func windowedTable() string { return pageview.App().Tables[0].Name() }
