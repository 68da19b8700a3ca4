package table_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// t0 starts a minute window: 2026-11-26T16:00:00Z is Unix ms 1795708800000.
var t0 = time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)

const t0ms = 1_795_708_800_000

// win is the worker's default window: 1m, expiring after 5m.
var win = window.Hopping{Size: time.Minute, Grace: 5 * time.Minute, Expires: 5 * time.Minute}

// forever never expires a window, so a table made with it reads whatever the
// store holds.
var forever = window.Hopping{Size: time.Minute, Expires: 100_000 * time.Hour}

// clock is an injected wall clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func newDB(t testing.TB) *store.DB {
	t.Helper()
	db, _, err := store.Open(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// tbl is what the runtime drives on both kinds of table.
type tbl interface {
	Assign(p int32) (store.Checkpoint, bool, error)
	Flush(p int32, now time.Time) ([]table.Record, error)
	Write(p int32, b *store.Batch, offset int64) error
	Flushed(p int32)
	Restore(p int32, b *store.Batch, key, value []byte, ts time.Time) error
	Recovered(p int32, b *store.Batch, offset int64) error
}

func assign(t testing.TB, tb tbl, parts ...int32) {
	t.Helper()
	for _, p := range parts {
		if _, _, err := tb.Assign(p); err != nil {
			t.Fatalf("Assign(%d): %v", p, err)
		}
	}
}

// commitFlush runs one commit interval as the runtime does: Flush, then (as
// if the changelog acknowledged the records up to offset) Write, commit the
// batch, Flushed. It returns the records.
func commitFlush(t testing.TB, db *store.DB, tb tbl, p int32, now time.Time, offset int64) []table.Record {
	t.Helper()
	recs, err := tb.Flush(p, now)
	if err != nil {
		t.Fatalf("Flush(%d): %v", p, err)
	}
	b := db.NewBatch()
	if err := tb.Write(p, b, offset); err != nil {
		b.Discard()
		t.Fatalf("Write(%d): %v", p, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	tb.Flushed(p)
	return recs
}

// restore replays changelog records into partition p of tb and finishes
// recovery at the offset of the last one.
func restore(t testing.TB, db *store.DB, tb tbl, p int32, recs []table.Record) {
	t.Helper()
	b := db.NewBatch()
	for i, r := range recs {
		if err := tb.Restore(p, b, r.Key, r.Value, r.Timestamp); err != nil {
			b.Discard()
			t.Fatalf("Restore(record %d %q=%q): %v", i, r.Key, r.Value, err)
		}
	}
	if err := tb.Recovered(p, b, int64(len(recs)-1)); err != nil {
		b.Discard()
		t.Fatalf("Recovered: %v", err)
	}
	if err := b.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func inc(v int64) int64 { return v + 1 }

func add(n int64) func(int64) int64 { return func(v int64) int64 { return v + n } }

func newTotals(db *store.DB) *table.Table[int64] {
	return table.New("totals", "pageviews-totals-changelog", table.Int64{}, db)
}

func newViews(db *store.DB, w window.Hopping, c *clock) *table.Windowed[int64] {
	return table.NewWindowed("views", "pageviews-views-changelog", table.Int64{}, db, w, c.Now)
}

func update(t testing.TB, tb *table.Table[int64], p int32, key string, fn func(int64) int64) {
	t.Helper()
	if err := tb.Update(p, key, fn); err != nil {
		t.Fatalf("Update(%d, %q): %v", p, key, err)
	}
}

func updateAt(t testing.TB, tb *table.Windowed[int64], p int32, key string, ts time.Time) {
	t.Helper()
	applied, err := tb.Update(p, key, ts, inc)
	if err != nil {
		t.Fatalf("Update(%d, %q, %v): %v", p, key, ts, err)
	}
	if !applied {
		t.Fatalf("Update(%d, %q, %v) was not applied", p, key, ts)
	}
}

// scanAll returns every key and value of partition p.
func scanAll(t testing.TB, tb *table.Table[int64], p int32) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	if err := tb.Scan(p, func(k string, v int64) {
		if _, dup := out[k]; dup {
			t.Errorf("Scan yielded %q twice", k)
		}
		out[k] = v
	}); err != nil {
		t.Fatalf("Scan(%d): %v", p, err)
	}
	return out
}

func scanWindow(t testing.TB, tb *table.Windowed[int64], p int32, start int64) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	if err := tb.ScanWindow(p, start, func(k string, v int64) {
		if _, dup := out[k]; dup {
			t.Errorf("ScanWindow yielded %q twice", k)
		}
		out[k] = v
	}); err != nil {
		t.Fatalf("ScanWindow(%d, %d): %v", p, start, err)
	}
	return out
}

func wantGet(t testing.TB, what string, v int64, ok bool, err error, want int64, wantOK bool) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if v != want || ok != wantOK {
		t.Errorf("%s = %d, %v, want %d, %v", what, v, ok, want, wantOK)
	}
}

// records renders changelog records as key=value for comparison.
// records renders the changelog records of a flush, leaving out the
// closed-up-to point (closed windows have tests of their own).
func records(recs []table.Record) []string {
	var out []string
	for _, r := range recs {
		switch {
		case r.Topic != "" || strings.HasPrefix(string(r.Key), "\x00"):
		case r.Value == nil:
			out = append(out, string(r.Key)+"=<nil>")
		default:
			out = append(out, string(r.Key)+"="+string(r.Value))
		}
	}
	return out
}

func TestInt64Codec(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 42, 1 << 40, -1 << 63, 1<<63 - 1} {
		b := table.Int64{}.Append([]byte("x"), v)
		if want := "x" + strconv.FormatInt(v, 10); string(b) != want {
			t.Errorf("Append(%d) = %q, want %q", v, b, want)
		}
		got, err := table.Int64{}.Decode(b[1:])
		if err != nil || got != v {
			t.Errorf("Decode(%q) = %d, %v, want %d", b[1:], got, err, v)
		}
	}
	for _, bad := range []string{"", "x", "1.5", "99999999999999999999"} {
		if _, err := (table.Int64{}).Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q) succeeded", bad)
		}
	}
}

func TestTableUpdateGet(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0, 1)
	if tb.Name() != "totals" || tb.Changelog() != "pageviews-totals-changelog" {
		t.Errorf("Name, Changelog = %q, %q", tb.Name(), tb.Changelog())
	}

	v, ok, err := tb.Get(0, "/home")
	wantGet(t, "Get before any update", v, ok, err, 0, false)

	update(t, tb, 0, "/home", inc)
	update(t, tb, 0, "/home", inc)
	update(t, tb, 0, "/home", add(10))
	update(t, tb, 1, "/home", inc)
	update(t, tb, 0, "/about", inc)

	v, ok, err = tb.Get(0, "/home")
	wantGet(t, "Get(0, /home)", v, ok, err, 12, true)
	v, ok, err = tb.Get(1, "/home")
	wantGet(t, "Get(1, /home)", v, ok, err, 1, true)
	v, ok, err = tb.Get(1, "/about")
	wantGet(t, "Get(1, /about)", v, ok, err, 0, false)

	if got, want := scanAll(t, tb, 0), map[string]int64{"/home": 12, "/about": 1}; !maps.Equal(got, want) {
		t.Errorf("Scan(0) = %v, want %v", got, want)
	}
	parts := tb.Partitions()
	slices.Sort(parts)
	if want := []int32{0, 1}; !slices.Equal(parts, want) {
		t.Errorf("Partitions() = %v, want %v", parts, want)
	}
}

func TestNotAssigned(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	totals, views := newTotals(db), newViews(db, win, c)
	assign(t, totals, 0)
	assign(t, views, 0)
	totals.Revoke(0)
	views.Revoke(0)

	tests := []struct {
		name string
		call func() error
	}{
		{"Table.Update", func() error { return totals.Update(0, "k", inc) }},
		{"Table.Get", func() error { _, _, err := totals.Get(3, "k"); return err }},
		{"Table.Scan", func() error { return totals.Scan(0, func(string, int64) {}) }},
		{"Table.Flush", func() error { _, err := totals.Flush(0, t0); return err }},
		{"Table.Write", func() error { return totals.Write(0, db.NewBatch(), 1) }},
		{"Table.Recovered", func() error { return totals.Recovered(0, db.NewBatch(), 1) }},
		{"Windowed.Update", func() error { _, err := views.Update(0, "k", t0, inc); return err }},
		{"Windowed.Get", func() error { _, _, err := views.Get(0, "k", t0ms); return err }},
		{"Windowed.Now", func() error { _, _, err := views.Now(0, "k"); return err }},
		{"Windowed.ScanWindow", func() error { return views.ScanWindow(0, t0ms, func(string, int64) {}) }},
		{"Windowed.Flush", func() error { _, err := views.Flush(0, t0); return err }},
		{"Windowed.Write", func() error { return views.Write(0, db.NewBatch(), 1) }},
		{"Windowed.Restore", func() error { return views.Restore(0, db.NewBatch(), []byte("k|0"), []byte("1"), t0) }},
		{"Windowed.Recovered", func() error { return views.Recovered(0, db.NewBatch(), 1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, table.ErrNotAssigned) {
				t.Errorf("error = %v, want ErrNotAssigned", err)
			}
		})
	}
	if got := views.Watermark(0); got != 0 {
		t.Errorf("Watermark of an unassigned partition = %d, want 0", got)
	}
	if got := totals.Partitions(); len(got) != 0 {
		t.Errorf("Partitions() after Revoke = %v", got)
	}
}

func TestTableFlushCoalesces(t *testing.T) {
	tests := []struct {
		name    string
		updates []string // keys, each updated once with inc, in order
		want    []string // records, in first-update order
	}{
		{"nothing", nil, []string{}},
		{"one update", []string{"/a"}, []string{"/a=1"}},
		{"many updates of one key", []string{"/a", "/a", "/a", "/a", "/a"}, []string{"/a=5"}},
		{"interleaved keys", []string{"/b", "/a", "/b", "/c", "/a", "/b"}, []string{"/b=3", "/a=2", "/c=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newDB(t)
			tb := newTotals(db)
			assign(t, tb, 2)
			for _, k := range tt.updates {
				update(t, tb, 2, k, inc)
			}
			if got := tb.Dirty(2); got != len(tt.want) {
				t.Errorf("Dirty = %d before the flush, want %d (the keys changed)", got, len(tt.want))
			}
			recs := commitFlush(t, db, tb, 2, t0, int64(len(tt.want)))
			if got := tb.Dirty(2); got != 0 {
				t.Errorf("Dirty = %d after the flush, want 0", got)
			}
			if got := records(recs); !slices.Equal(got, tt.want) {
				t.Errorf("Flush = %q, want %q", got, tt.want)
			}
			for _, r := range recs {
				if !r.Timestamp.Equal(t0) {
					t.Errorf("record %q timestamp %v, want the flush time %v", r.Key, r.Timestamp, t0)
				}
			}
			// A flushed table has nothing dirty.
			if recs, err := tb.Flush(2, t0); err != nil || len(recs) != 0 {
				t.Errorf("second Flush = %q, %v, want nothing", records(recs), err)
			}
		})
	}
}

func TestTableFlushAfterFlushed(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	update(t, tb, 0, "/a", inc)
	update(t, tb, 0, "/b", inc)
	commitFlush(t, db, tb, 0, t0, 1)

	// Only the keys updated since the last flush are produced, with their
	// whole value.
	update(t, tb, 0, "/b", add(4))
	update(t, tb, 0, "/b", inc)
	recs := commitFlush(t, db, tb, 0, t0, 2)
	if got, want := records(recs), []string{"/b=6"}; !slices.Equal(got, want) {
		t.Errorf("Flush = %q, want %q", got, want)
	}
}

func TestTableStateSurvivesReassign(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0, 1)
	update(t, tb, 0, "/home", add(3))
	update(t, tb, 0, "/about", inc)
	update(t, tb, 1, "/home", add(7))
	commitFlush(t, db, tb, 0, t0, 17)
	commitFlush(t, db, tb, 1, t0, 4)
	tb.Revoke(0)
	tb.Revoke(1)

	// A new table instance on the same store sees only the store.
	fresh := newTotals(db)
	for _, tt := range []struct {
		p    int32
		want store.Checkpoint
	}{{0, store.Checkpoint{Offset: 17}}, {1, store.Checkpoint{Offset: 4}}} {
		cp, ok, err := fresh.Assign(tt.p)
		if err != nil || !ok || cp != tt.want {
			t.Errorf("Assign(%d) = %+v, %v, %v, want %+v", tt.p, cp, ok, err, tt.want)
		}
	}
	v, ok, err := fresh.Get(0, "/home")
	wantGet(t, "Get(0, /home)", v, ok, err, 3, true)
	v, ok, err = fresh.Get(1, "/home")
	wantGet(t, "Get(1, /home)", v, ok, err, 7, true)
	if got, want := scanAll(t, fresh, 0), map[string]int64{"/home": 3, "/about": 1}; !maps.Equal(got, want) {
		t.Errorf("Scan(0) = %v, want %v", got, want)
	}

	// Updates continue from the stored value.
	update(t, fresh, 0, "/home", inc)
	recs := commitFlush(t, db, fresh, 0, t0, 18)
	if got, want := records(recs), []string{"/home=4"}; !slices.Equal(got, want) {
		t.Errorf("Flush = %q, want %q", got, want)
	}
}

func TestTableOffsetNeverGoesBack(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	update(t, tb, 0, "/a", inc)
	commitFlush(t, db, tb, 0, t0, 10)
	// A flush that produced nothing for this table acknowledges offset -1.
	commitFlush(t, db, tb, 0, t0, -1)
	cp, ok, err := db.Checkpoint("totals", 0)
	if err != nil || !ok || cp.Offset != 10 {
		t.Errorf("checkpoint = %+v, %v, %v, want offset 10", cp, ok, err)
	}
}

func TestTableScanMergesCacheOverStore(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	update(t, tb, 0, "/a", inc)
	update(t, tb, 0, "/b", add(2))
	commitFlush(t, db, tb, 0, t0, 1)
	tb.Revoke(0)
	assign(t, tb, 0) // empty cache: /a and /b only in the store

	update(t, tb, 0, "/b", inc) // cached over the store
	update(t, tb, 0, "/c", inc) // only cached
	want := map[string]int64{"/a": 1, "/b": 3, "/c": 1}
	if got := scanAll(t, tb, 0); !maps.Equal(got, want) {
		t.Errorf("Scan = %v, want %v", got, want)
	}
}

func TestTableRestore(t *testing.T) {
	// Build a changelog by running the table through several intervals.
	src := newDB(t)
	tb := newTotals(src)
	assign(t, tb, 3)
	var changelog []table.Record
	intervals := [][]string{
		{"/a", "/b", "/a"},
		{"/b", "/c"},
		{"/a", "/a", "/a", "/d"},
	}
	for _, keys := range intervals {
		for _, k := range keys {
			update(t, tb, 3, k, inc)
		}
		changelog = append(changelog, commitFlush(t, src, tb, 3, t0, int64(len(changelog)))...)
	}
	want := scanAll(t, tb, 3)

	tests := []struct {
		name  string
		extra []table.Record
		want  map[string]int64
	}{
		{"replay", nil, want},
		{
			name:  "tombstone deletes",
			extra: []table.Record{{Key: []byte("/c"), Value: nil}},
			want:  map[string]int64{"/a": 5, "/b": 2, "/d": 1},
		},
		{
			name:  "tombstone of an absent key",
			extra: []table.Record{{Key: []byte("/never"), Value: nil}},
			want:  want,
		},
		{
			name:  "later record wins",
			extra: []table.Record{{Key: []byte("/d"), Value: []byte("40")}, {Key: []byte("/d"), Value: []byte("41")}},
			want:  map[string]int64{"/a": 5, "/b": 2, "/c": 1, "/d": 41},
		},
		{
			name:  "set after tombstone",
			extra: []table.Record{{Key: []byte("/a"), Value: nil}, {Key: []byte("/a"), Value: []byte("9")}},
			want:  map[string]int64{"/a": 9, "/b": 2, "/c": 1, "/d": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newDB(t)
			fresh := newTotals(db)
			assign(t, fresh, 3)
			recs := append(slices.Clone(changelog), tt.extra...)
			restore(t, db, fresh, 3, recs)
			if got := scanAll(t, fresh, 3); !maps.Equal(got, tt.want) {
				t.Errorf("after Restore: Scan = %v, want %v", got, tt.want)
			}
			for k, w := range tt.want {
				v, ok, err := fresh.Get(3, k)
				wantGet(t, "Get("+k+")", v, ok, err, w, true)
			}
			cp, ok, err := db.Checkpoint("totals", 3)
			if err != nil || !ok || cp.Offset != int64(len(recs)-1) {
				t.Errorf("checkpoint = %+v, %v, %v, want offset %d", cp, ok, err, len(recs)-1)
			}
			// A reassigned instance reads the same from the store.
			again := newTotals(db)
			assign(t, again, 3)
			if got := scanAll(t, again, 3); !maps.Equal(got, tt.want) {
				t.Errorf("after reassign: Scan = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTableRestoreRejectsBadValue(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	b := db.NewBatch()
	defer b.Discard()
	if err := tb.Restore(0, b, []byte("/a"), []byte("twelve"), t0); err == nil {
		t.Error("Restore of a value the codec cannot decode succeeded")
	}
}

func TestTableWipe(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0, 1)
	update(t, tb, 0, "/a", inc)
	update(t, tb, 1, "/a", inc)
	commitFlush(t, db, tb, 0, t0, 5)
	commitFlush(t, db, tb, 1, t0, 6)
	update(t, tb, 0, "/cached", inc)

	if err := tb.Wipe(0); err != nil {
		t.Fatalf("Wipe: %v", err)
	}
	if got := scanAll(t, tb, 0); len(got) != 0 {
		t.Errorf("after Wipe: Scan(0) = %v", got)
	}
	if recs, err := tb.Flush(0, t0); err != nil || len(recs) != 0 {
		t.Errorf("after Wipe: Flush = %q, %v, want nothing", records(recs), err)
	}
	if _, ok, _ := db.Checkpoint("totals", 0); ok {
		t.Error("after Wipe: the checkpoint of partition 0 remains")
	}
	v, ok, err := tb.Get(1, "/a")
	wantGet(t, "Get(1, /a) after wiping partition 0", v, ok, err, 1, true)
	if cp, ok, _ := db.Checkpoint("totals", 1); !ok || cp.Offset != 6 {
		t.Errorf("checkpoint of partition 1 = %+v, %v, want offset 6", cp, ok)
	}
}

// TestFlushAgainAfterUnacknowledgedFlush: when the changelog records of a
// flush are never acknowledged (the runtime's ack wait fails, e.g. on
// cancellation, and it flushes again), the next Flush must hand out the same
// dirty keys again; otherwise their values reach neither the store nor the
// changelog while the source offsets are committed.
func TestFlushAgainAfterUnacknowledgedFlush(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	update(t, tb, 0, "/a", inc)
	if recs, err := tb.Flush(0, t0); err != nil || len(recs) != 1 {
		t.Fatalf("Flush = %q, %v", records(recs), err)
	}
	// The acknowledgement never came; the runtime flushes again.
	recs := commitFlush(t, db, tb, 0, t0, 0)
	if got, want := records(recs), []string{"/a=1"}; !slices.Equal(got, want) {
		t.Errorf("second Flush = %q, want %q", got, want)
	}
	tb.Revoke(0)
	fresh := newTotals(db)
	assign(t, fresh, 0)
	v, ok, err := fresh.Get(0, "/a")
	wantGet(t, "Get from the store", v, ok, err, 1, true)
}

// TestUpdateBetweenFlushAndFlushed: an update made after Flush handed out a
// key but before Flushed must be produced by the next Flush. Today the
// runtime never does this (one goroutine per partition), but the table's
// locking suggests it is allowed.
func TestUpdateBetweenFlushAndFlushed(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	update(t, tb, 0, "/a", inc)
	recs, err := tb.Flush(0, t0)
	if err != nil {
		t.Fatal(err)
	}
	update(t, tb, 0, "/a", inc) // between Flush and Flushed
	b := db.NewBatch()
	if err := tb.Write(0, b, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	tb.Flushed(0)
	if got, want := records(recs), []string{"/a=1"}; !slices.Equal(got, want) {
		t.Errorf("first Flush = %q, want %q", got, want)
	}
	next := commitFlush(t, db, tb, 0, t0, 1)
	if got, want := records(next), []string{"/a=2"}; !slices.Equal(got, want) {
		t.Errorf("next Flush = %q, want %q (the update after the first Flush)", got, want)
	}
}

func TestTableConcurrentReadersAndWriter(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	const n = 2000
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			if err := tb.Update(0, fmt.Sprintf("/p%d", i%10), inc); err != nil {
				t.Error(err)
				return
			}
			if i%500 == 499 {
				if _, err := tb.Flush(0, t0); err != nil {
					t.Error(err)
					return
				}
				b := db.NewBatch()
				if err := tb.Write(0, b, int64(i)); err != nil {
					b.Discard()
					t.Error(err)
					return
				}
				if err := b.Commit(); err != nil {
					t.Error(err)
					return
				}
				tb.Flushed(0)
			}
		}
	})
	for range 3 {
		wg.Go(func() {
			for range 200 {
				var sum int64
				if err := tb.Scan(0, func(_ string, v int64) { sum += v }); err != nil {
					t.Error(err)
					return
				}
				if sum < 0 || sum > n {
					t.Errorf("Scan sums to %d, outside [0, %d]", sum, n)
					return
				}
				if _, _, err := tb.Get(0, "/p3"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var sum int64
	for _, v := range scanAll(t, tb, 0) {
		sum += v
	}
	if sum != n {
		t.Errorf("total after %d updates = %d", n, sum)
	}
}

func TestWindowedUpdateGet(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0.Add(30 * time.Second)}
	tb := newViews(db, win, c)
	assign(t, tb, 0, 1)
	if tb.Window() != win {
		t.Errorf("Window() = %+v, want %+v", tb.Window(), win)
	}

	updateAt(t, tb, 0, "/home", t0.Add(1*time.Second))
	updateAt(t, tb, 0, "/home", t0.Add(59*time.Second+999*time.Millisecond))
	updateAt(t, tb, 0, "/home", t0)
	updateAt(t, tb, 0, "/home", t0.Add(time.Minute)) // the next window starts exactly here
	updateAt(t, tb, 1, "/home", t0)

	tests := []struct {
		p     int32
		start int64
		want  int64
		ok    bool
	}{
		{0, t0ms, 3, true},
		{0, t0ms + 60_000, 1, true},
		{0, t0ms - 60_000, 0, false},
		{1, t0ms, 1, true},
		{1, t0ms + 60_000, 0, false},
	}
	for _, tt := range tests {
		v, ok, err := tb.Get(tt.p, "/home", tt.start)
		wantGet(t, fmt.Sprintf("Get(%d, /home, %d)", tt.p, tt.start), v, ok, err, tt.want, tt.ok)
	}
	if got := tb.Watermark(0); got != t0ms+60_000 {
		t.Errorf("Watermark(0) = %d, want %d", got, t0ms+60_000)
	}
	if got := tb.Watermark(1); got != t0ms {
		t.Errorf("Watermark(1) = %d, want %d", got, t0ms)
	}
	if got, want := scanWindow(t, tb, 0, t0ms), map[string]int64{"/home": 3}; !maps.Equal(got, want) {
		t.Errorf("ScanWindow(0, t0) = %v, want %v", got, want)
	}
}

func TestWindowedRelativeReads(t *testing.T) {
	db := newDB(t)
	c := &clock{}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	// 1 view in [t0, t0+1m), 2 in the next window, 3 in the one after.
	for i, n := range []int{1, 2, 3} {
		for range n {
			updateAt(t, tb, 0, "/p", t0.Add(time.Duration(i)*time.Minute+10*time.Second))
		}
	}

	tests := []struct {
		name  string
		clock time.Time
		read  func() (int64, bool, error)
		want  int64
		ok    bool
	}{
		{"Now in the first window", t0.Add(30 * time.Second), func() (int64, bool, error) { return tb.Now(0, "/p") }, 1, true},
		{"Now on a window boundary", t0.Add(time.Minute), func() (int64, bool, error) { return tb.Now(0, "/p") }, 2, true},
		{"Now a millisecond before a boundary", t0.Add(2*time.Minute - time.Millisecond), func() (int64, bool, error) { return tb.Now(0, "/p") }, 2, true},
		{"Now in the third window", t0.Add(2*time.Minute + 59*time.Second), func() (int64, bool, error) { return tb.Now(0, "/p") }, 3, true},
		{"Now after every window", t0.Add(3 * time.Minute), func() (int64, bool, error) { return tb.Now(0, "/p") }, 0, false},
		{"Now before every window", t0.Add(-time.Millisecond), func() (int64, bool, error) { return tb.Now(0, "/p") }, 0, false},
		// The other reads ignore the clock: it is far away.
		{"Current", t0.Add(time.Hour), func() (int64, bool, error) { return tb.Current(0, "/p", t0.Add(90*time.Second)) }, 2, true},
		{"Current on a boundary", t0.Add(time.Hour), func() (int64, bool, error) { return tb.Current(0, "/p", t0.Add(2*time.Minute)) }, 3, true},
		{"Value is Current", t0.Add(time.Hour), func() (int64, bool, error) { return tb.Value(0, "/p", t0.Add(90*time.Second)) }, 2, true},
		{"Delta one minute back", t0.Add(time.Hour), func() (int64, bool, error) {
			return tb.Delta(0, "/p", t0.Add(2*time.Minute+5*time.Second), time.Minute)
		}, 2, true},
		{"Delta two minutes back", t0.Add(time.Hour), func() (int64, bool, error) {
			return tb.Delta(0, "/p", t0.Add(2*time.Minute+5*time.Second), 2*time.Minute)
		}, 1, true},
		{"Delta crossing a boundary", t0.Add(time.Hour), func() (int64, bool, error) {
			return tb.Delta(0, "/p", t0.Add(time.Minute), time.Millisecond)
		}, 1, true},
		{"Delta zero", t0.Add(time.Hour), func() (int64, bool, error) {
			return tb.Delta(0, "/p", t0.Add(time.Minute), 0)
		}, 2, true},
		{"unknown key", t0.Add(30 * time.Second), func() (int64, bool, error) { return tb.Now(0, "/other") }, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Set(tt.clock)
			v, ok, err := tt.read()
			wantGet(t, tt.name, v, ok, err, tt.want, tt.ok)
		})
	}
}

func TestWindowedFlushCoalesces(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	for range 5 {
		updateAt(t, tb, 0, "/a", t0.Add(5*time.Second))
	}
	updateAt(t, tb, 0, "/b", t0.Add(10*time.Second))
	updateAt(t, tb, 0, "/a", t0.Add(70*time.Second))
	updateAt(t, tb, 0, "/a", t0.Add(20*time.Second))
	updateAt(t, tb, 0, "/b", t0.Add(75*time.Second))

	recs := commitFlush(t, db, tb, 0, t0.Add(time.Hour), 4)
	want := []string{
		fmt.Sprintf("/a|%d=6", t0ms),
		fmt.Sprintf("/b|%d=1", t0ms),
		fmt.Sprintf("/a|%d=1", t0ms+60_000),
		fmt.Sprintf("/b|%d=1", t0ms+60_000),
	}
	if got := records(recs); !slices.Equal(got, want) {
		t.Errorf("Flush = %q, want %q", got, want)
	}
	// The record timestamp is the partition's watermark, not the flush time,
	// so that recovery restores the watermark.
	for _, r := range recs {
		if got := r.Timestamp.UnixMilli(); got != t0ms+75_000 {
			t.Errorf("record %q timestamp %d, want the watermark %d", r.Key, got, t0ms+75_000)
		}
	}
	if recs, err := tb.Flush(0, t0); err != nil || len(recs) != 0 {
		t.Errorf("second Flush = %q, %v, want nothing", records(recs), err)
	}
}

func TestWindowedChangelogKey(t *testing.T) {
	tests := []struct {
		name string
		key  string
		ts   time.Time
		want string
	}{
		{"page", "/home", t0.Add(12 * time.Second), "/home|1795708800000"},
		{"page with a pipe", "/a|b", t0.Add(61 * time.Second), "/a|b|1795708860000"},
		{"page ending in digits after a pipe", "/x|123", t0, "/x|123|1795708800000"},
		{"empty page", "", t0, "|1795708800000"},
		{"epoch", "/e", time.UnixMilli(59_999), "/e|0"},
		{"before the epoch", "/old", time.UnixMilli(-1), "/old|-60000"},
		{"unicode page", "/café", t0, "/café|1795708800000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newDB(t)
			c := &clock{now: tt.ts}
			tb := newViews(db, win, c)
			assign(t, tb, 5)
			updateAt(t, tb, 5, tt.key, tt.ts)
			updateAt(t, tb, 5, tt.key, tt.ts)
			recs := commitFlush(t, db, tb, 5, tt.ts, 0)
			if got, want := records(recs), []string{tt.want + "=2"}; !slices.Equal(got, want) {
				t.Fatalf("Flush = %q, want %q", got, want)
			}

			// The key round-trips: restoring the record into an empty store
			// gives the same window and key.
			db2 := newDB(t)
			restored := newViews(db2, win, c)
			assign(t, restored, 5)
			restore(t, db2, restored, 5, recs)
			start := win.Start(tt.ts)
			v, ok, err := restored.Get(5, tt.key, start)
			wantGet(t, "Get after Restore", v, ok, err, 2, true)
			if got, want := scanWindow(t, restored, 5, start), map[string]int64{tt.key: 2}; !maps.Equal(got, want) {
				t.Errorf("ScanWindow after Restore = %v, want %v", got, want)
			}
			if got, want := restored.Watermark(5), tb.Watermark(5); got != want {
				t.Errorf("Watermark after Restore = %d, want the source's %d", got, want)
			}
		})
	}
}

func TestWindowedRestoreRejectsBadKey(t *testing.T) {
	for _, key := range []string{"/home", "/home|", "/home|abc", "/home|12|x", "/home|1.5"} {
		t.Run(key, func(t *testing.T) {
			db := newDB(t)
			tb := newViews(db, win, &clock{})
			assign(t, tb, 0)
			b := db.NewBatch()
			defer b.Discard()
			if err := tb.Restore(0, b, []byte(key), []byte("1"), t0); err == nil {
				t.Errorf("Restore(%q) succeeded", key)
			}
		})
	}
}

func TestWindowedRestore(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	src := newViews(db, win, c)
	assign(t, src, 0)
	var changelog []table.Record
	intervals := []struct {
		ts   time.Time
		keys []string
	}{
		{t0, []string{"/a", "/b", "/a"}},
		{t0.Add(40 * time.Second), []string{"/a"}},
		{t0.Add(80 * time.Second), []string{"/c", "/b"}},
	}
	for _, in := range intervals {
		for _, k := range in.keys {
			updateAt(t, src, 0, k, in.ts)
		}
		changelog = append(changelog, commitFlush(t, db, src, 0, t0, int64(len(changelog)))...)
	}
	tombstone := table.Record{Key: fmt.Appendf(nil, "/c|%d", t0ms+60_000), Timestamp: t0.Add(80 * time.Second)}

	tests := []struct {
		name  string
		recs  []table.Record
		first map[string]int64 // window t0
		next  map[string]int64 // window t0+1m
	}{
		{"replay", changelog, map[string]int64{"/a": 3, "/b": 1}, map[string]int64{"/c": 1, "/b": 1}},
		{"tombstone", append(slices.Clone(changelog), tombstone), map[string]int64{"/a": 3, "/b": 1}, map[string]int64{"/b": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db2 := newDB(t)
			tb := newViews(db2, win, c)
			assign(t, tb, 0)
			restore(t, db2, tb, 0, tt.recs)
			if got := scanWindow(t, tb, 0, t0ms); !maps.Equal(got, tt.first) {
				t.Errorf("ScanWindow(t0) = %v, want %v", got, tt.first)
			}
			if got := scanWindow(t, tb, 0, t0ms+60_000); !maps.Equal(got, tt.next) {
				t.Errorf("ScanWindow(t0+1m) = %v, want %v", got, tt.next)
			}
			// The same reads come from the source table.
			for k, w := range tt.first {
				v, ok, err := src.Get(0, k, t0ms)
				wantGet(t, "source Get("+k+")", v, ok, err, w, true)
			}
			if got, want := tb.Watermark(0), int64(t0ms+80_000); got != want {
				t.Errorf("Watermark = %d, want %d", got, want)
			}
			cp, ok, err := db2.Checkpoint("views", 0)
			if err != nil || !ok || (cp.Offset != int64(len(tt.recs)-1) || cp.Watermark != t0ms+80_000) {
				t.Errorf("checkpoint = %+v, %v, %v", cp, ok, err)
			}
		})
	}
}

// expiryFixture fills partition 0 with one view of /old in window t0 and one
// of /new in window t0+6m, flushed to the store, and returns the table. The
// watermark is t0+6m: window t0 ends at t0+1m, exactly expiry (5m) before
// the watermark, so it is still live.
func expiryFixture(t testing.TB) (*store.DB, *clock, *table.Windowed[int64]) {
	t.Helper()
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/old", t0.Add(10*time.Second))
	updateAt(t, tb, 0, "/new", t0.Add(6*time.Minute))
	commitFlush(t, db, tb, 0, t0, 1)
	return db, c, tb
}

func TestWindowedExpiryBoundary(t *testing.T) {
	_, _, tb := expiryFixture(t)
	v, ok, err := tb.Get(0, "/old", t0ms)
	wantGet(t, "Get(/old) at the expiry boundary", v, ok, err, 1, true)
	// Closed, though: stream time has reached its end plus the grace
	// period (5m, as long as the expiry), so an event for it is late.
	if applied, err := tb.Update(0, "/old", t0.Add(59*time.Second), inc); err != nil || applied {
		t.Errorf("Update of the boundary window = %v, %v, want late", applied, err)
	}
}

func TestWindowedExpiry(t *testing.T) {
	db, c, tb := expiryFixture(t)

	// One millisecond more of event time expires window t0.
	updateAt(t, tb, 0, "/new", t0.Add(6*time.Minute+time.Millisecond))
	if got := tb.Watermark(0); got != t0ms+6*60_000+1 {
		t.Fatalf("Watermark = %d", got)
	}
	v, ok, err := tb.Get(0, "/old", t0ms)
	wantGet(t, "Get(/old) in an expired window", v, ok, err, 0, false)
	v, ok, err = tb.Current(0, "/old", t0.Add(time.Second))
	wantGet(t, "Current(/old) in an expired window", v, ok, err, 0, false)
	c.Set(t0.Add(30 * time.Second))
	v, ok, err = tb.Now(0, "/old")
	wantGet(t, "Now(/old) with the clock in an expired window", v, ok, err, 0, false)
	if got := scanWindow(t, tb, 0, t0ms); len(got) != 0 {
		t.Errorf("ScanWindow of an expired window = %v", got)
	}
	v, ok, err = tb.Get(0, "/new", t0ms+6*60_000)
	wantGet(t, "Get(/new) in a live window", v, ok, err, 2, true)

	// A late event for the expired window is dropped, and does not move the
	// watermark back.
	applied, err := tb.Update(0, "/old", t0.Add(20*time.Second), inc)
	if err != nil || applied {
		t.Errorf("Update of an expired window = %v, %v, want not applied", applied, err)
	}
	if got := tb.Watermark(0); got != t0ms+6*60_000+1 {
		t.Errorf("Watermark after a late event = %d, want %d", got, t0ms+6*60_000+1)
	}

	// Until the next Write the store still holds the window; a table that
	// never expires anything reads the store as it is.
	peek := newViews(db, forever, c)
	assign(t, peek, 0)
	v, ok, err = peek.Get(0, "/old", t0ms)
	wantGet(t, "store before Write", v, ok, err, 1, true)

	recs := commitFlush(t, db, tb, 0, t0, 2)
	if got, want := records(recs), []string{fmt.Sprintf("/new|%d=2", t0ms+6*60_000)}; !slices.Equal(got, want) {
		t.Errorf("Flush = %q, want %q (the late event produces nothing)", got, want)
	}
	tb.Revoke(0)

	// After Write, the expired window is gone from the store.
	peek = newViews(db, forever, c)
	assign(t, peek, 0)
	v, ok, err = peek.Get(0, "/old", t0ms)
	wantGet(t, "store after Write", v, ok, err, 0, false)
	if got := scanWindow(t, peek, 0, t0ms); len(got) != 0 {
		t.Errorf("store after Write: window t0 holds %v", got)
	}
	if got, want := scanWindow(t, peek, 0, t0ms+6*60_000), map[string]int64{"/new": 2}; !maps.Equal(got, want) {
		t.Errorf("store after Write: live window holds %v, want %v", got, want)
	}

	// A fresh table with the real window reads the same and restores the
	// watermark from the checkpoint.
	fresh := newViews(db, win, c)
	cp, ok, err := fresh.Assign(0)
	if err != nil || !ok || (cp.Offset != 2 || cp.Watermark != t0ms+6*60_000+1) {
		t.Errorf("Assign = %+v, %v, %v", cp, ok, err)
	}
	if got := fresh.Watermark(0); got != t0ms+6*60_000+1 {
		t.Errorf("fresh Watermark = %d", got)
	}
	v, ok, err = fresh.Get(0, "/old", t0ms)
	wantGet(t, "fresh Get(/old)", v, ok, err, 0, false)
	if applied, err := fresh.Update(0, "/old", t0.Add(time.Second), inc); err != nil || applied {
		t.Errorf("fresh Update of an expired window = %v, %v, want not applied", applied, err)
	}
}

// TestWindowedExpiryOfDirtyWindow expires a window whose update is still in
// the write-back cache: whatever Flush produces for it, the store must not
// keep it.
func TestWindowedExpiryOfDirtyWindow(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/old", t0)
	updateAt(t, tb, 0, "/new", t0.Add(10*time.Minute))
	if got := scanWindow(t, tb, 0, t0ms); len(got) != 0 {
		t.Errorf("ScanWindow of an expired, dirty window = %v", got)
	}
	commitFlush(t, db, tb, 0, t0, 1)

	peek := newViews(db, forever, c)
	assign(t, peek, 0)
	if got := scanWindow(t, peek, 0, t0ms); len(got) != 0 {
		t.Errorf("store after Write: expired window holds %v", got)
	}
	v, ok, err := peek.Get(0, "/new", t0ms+10*60_000)
	wantGet(t, "store after Write: /new", v, ok, err, 1, true)
}

// TestWindowedExpiryAfterFailedFlush: a flush whose store batch never
// committed did not delete the expired window, so the next flush must,
// though the expiry cut-off has not moved since; and a replay that writes an
// expired window again (a copy caught up from the changelog) is deleted at
// the next flush with the same cut-off.
func TestWindowedExpiryAfterFailedFlush(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/old", t0)
	commitFlush(t, db, tb, 0, t0, 0)
	updateAt(t, tb, 0, "/new", t0.Add(10*time.Minute))

	// The flush that expires window t0: its batch is dropped, as when the
	// store write fails.
	if _, err := tb.Flush(0, t0); err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	if err := tb.Write(0, b, 1); err != nil {
		t.Fatal(err)
	}
	b.Discard()
	stored := func(when string, key string, start int64, want bool) {
		t.Helper()
		peek := newViews(db, forever, c)
		assign(t, peek, 0)
		v, ok, err := peek.Get(0, key, start)
		if err != nil || ok != want {
			t.Errorf("%s: store holds %s@%d = %d, %v, %v; want held %v", when, key, start, v, ok, err, want)
		}
	}
	stored("after the failed flush", "/old", t0ms, true)

	// The flush done again, and one more with nothing new: both at the same
	// cut-off.
	commitFlush(t, db, tb, 0, t0, 1)
	stored("after the flush done again", "/old", t0ms, false)
	stored("after the flush done again", "/new", t0ms+10*60_000, true)

	// A replay writes the expired window again; the next flush, at the
	// same cut-off, deletes it.
	b = db.NewBatch()
	if err := tb.Restore(0, b, fmt.Appendf(nil, "/old|%d", t0ms), []byte("7"), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	stored("after the replay", "/old", t0ms, true)
	updateAt(t, tb, 0, "/new", t0.Add(10*time.Minute))
	commitFlush(t, db, tb, 0, t0, 2)
	stored("after the flush that followed the replay", "/old", t0ms, false)
	v, ok, err := tb.Get(0, "/new", t0ms+10*60_000)
	wantGet(t, "Get(/new)", v, ok, err, 2, true)
}

func TestWindowedRecoveredExpires(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	// The changelog holds an old window, written when it was live; the last
	// record's timestamp (the watermark then) has since expired it.
	recs := []table.Record{
		{Key: fmt.Appendf(nil, "/old|%d", t0ms), Value: []byte("4"), Timestamp: t0.Add(30 * time.Second)},
		{Key: fmt.Appendf(nil, "/new|%d", t0ms+9*60_000), Value: []byte("2"), Timestamp: t0.Add(9*time.Minute + 30*time.Second)},
	}
	restore(t, db, tb, 0, recs)
	v, ok, err := tb.Get(0, "/new", t0ms+9*60_000)
	wantGet(t, "Get(/new)", v, ok, err, 2, true)
	v, ok, err = tb.Get(0, "/old", t0ms)
	wantGet(t, "Get(/old)", v, ok, err, 0, false)

	peek := newViews(db, forever, c)
	assign(t, peek, 0)
	if got := scanWindow(t, peek, 0, t0ms); len(got) != 0 {
		t.Errorf("store after Recovered: expired window holds %v", got)
	}
	cp, ok, err := db.Checkpoint("views", 0)
	if err != nil || !ok || (cp.Offset != 1 || cp.Watermark != t0ms+9*60_000+30_000) {
		t.Errorf("checkpoint = %+v, %v, %v", cp, ok, err)
	}
}

func TestWindowedScanWindowMergesCacheOverStore(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/a", t0)
	updateAt(t, tb, 0, "/b", t0)
	updateAt(t, tb, 0, "/a", t0.Add(time.Minute)) // another window
	commitFlush(t, db, tb, 0, t0, 2)
	tb.Revoke(0)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/b", t0.Add(time.Second))   // over the store
	updateAt(t, tb, 0, "/c", t0.Add(2*time.Second)) // cache only
	updateAt(t, tb, 0, "/d", t0.Add(2*time.Minute)) // another window, cache only

	if got, want := scanWindow(t, tb, 0, t0ms), map[string]int64{"/a": 1, "/b": 2, "/c": 1}; !maps.Equal(got, want) {
		t.Errorf("ScanWindow(t0) = %v, want %v", got, want)
	}
	if got, want := scanWindow(t, tb, 0, t0ms+60_000), map[string]int64{"/a": 1}; !maps.Equal(got, want) {
		t.Errorf("ScanWindow(t0+1m) = %v, want %v", got, want)
	}
	if got := scanWindow(t, tb, 0, t0ms+3*60_000); len(got) != 0 {
		t.Errorf("ScanWindow of an empty window = %v", got)
	}
}

// TestWindowedCacheDropsClosedWindows: after a flush, the cache drops the
// clean entries of closed windows (which no update can reach), keeps dirty
// ones, and what it dropped reads from the store.
func TestWindowedCacheDropsClosedWindows(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb := newViews(db, window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}, c)
	assign(t, tb, 0)
	cached := func(want int) {
		t.Helper()
		if got := tb.Stats().Cached; got != want {
			t.Errorf("Cached = %d, want %d", got, want)
		}
	}
	updateAt(t, tb, 0, "/a", t0)
	updateAt(t, tb, 0, "/b", t0)
	commitFlush(t, db, tb, 0, t0, 1)
	cached(2)

	if _, err := tb.Flush(0, t0); err != nil {
		t.Fatal(err)
	}
	updateAt(t, tb, 0, "/b", t0.Add(10*time.Second)) // dirty when its window closes
	updateAt(t, tb, 0, "/c", t0.Add(time.Minute))    // closes window t0
	b := db.NewBatch()
	if err := tb.Write(0, b, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	tb.Flushed(0)
	cached(2) // /b of t0 (dirty) and /c; /a of t0 dropped

	before := tb.Stats().Retrieved
	v, ok, err := tb.Get(0, "/a", t0ms)
	wantGet(t, "Get(/a, t0) from the store", v, ok, err, 1, true)
	if got := tb.Stats().Retrieved - before; got != 1 {
		t.Errorf("Get(/a, t0) read the store %d times, want 1", got)
	}
	commitFlush(t, db, tb, 0, t0, 3)
	cached(1) // /b of t0 flushed, then dropped
	v, ok, err = tb.Get(0, "/b", t0ms)
	wantGet(t, "Get(/b, t0)", v, ok, err, 2, true)
}

func TestWindowedNegativeWindows(t *testing.T) {
	// Windows before the epoch sort before later ones in the store, so
	// expiry by range deletion removes them and only them.
	db := newDB(t)
	c := &clock{now: time.UnixMilli(0)}
	tb := newViews(db, win, c)
	assign(t, tb, 0)
	updateAt(t, tb, 0, "/neg", time.UnixMilli(-90_000))
	updateAt(t, tb, 0, "/zero", time.UnixMilli(10))
	commitFlush(t, db, tb, 0, t0, 0)
	v, ok, err := tb.Get(0, "/neg", -120_000)
	wantGet(t, "Get(/neg)", v, ok, err, 1, true)

	updateAt(t, tb, 0, "/later", time.UnixMilli(5*60_000)) // expires window -2m
	commitFlush(t, db, tb, 0, t0, 1)
	peek := newViews(db, forever, c)
	assign(t, peek, 0)
	v, ok, err = peek.Get(0, "/neg", -120_000)
	wantGet(t, "store: /neg", v, ok, err, 0, false)
	v, ok, err = peek.Get(0, "/zero", 0)
	wantGet(t, "store: /zero", v, ok, err, 1, true)
}

// TestWindowedCheckDefinition: the first check records the window, the same
// window passes again after a reopen, another size is refused naming both,
// and a definition recorded before a field existed still compares by the
// fields it has.
func TestWindowedCheckDefinition(t *testing.T) {
	dir := t.TempDir()
	open := func() *store.DB {
		t.Helper()
		db, _, err := store.Open(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatalf("open store: %v", err)
		}
		return db
	}
	db := open()
	minute := table.NewWindowed("views", "c", table.Int64{}, db, win, time.Now)
	if err := minute.CheckDefinition(); err != nil {
		t.Fatalf("first check: %v", err)
	}
	if def, ok, err := db.Definition("views"); err != nil || !ok || def != "size=1m0s step=1m0s" {
		t.Fatalf("recorded definition = %q, %v, %v; want size=1m0s step=1m0s", def, ok, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = open()
	defer db.Close()
	if err := table.NewWindowed("views", "c", table.Int64{}, db, win, time.Now).CheckDefinition(); err != nil {
		t.Errorf("same window after reopen: %v", err)
	}
	two := window.Hopping{Size: 2 * time.Minute, Expires: 5 * time.Minute}
	err := table.NewWindowed("views", "c", table.Int64{}, db, two, time.Now).CheckDefinition()
	var derr *table.DefinitionError
	if !errors.As(err, &derr) || derr.Table != "views" || derr.Field != "size" || derr.Stored != "1m0s" || derr.Current != "2m0s" {
		t.Fatalf("2m on a 1m store: %v, want a DefinitionError of size 1m0s vs 2m0s", err)
	}
	// The refusal leaves the record alone.
	if def, _, _ := db.Definition("views"); def != "size=1m0s step=1m0s" {
		t.Errorf("after the refusal the definition is %q", def)
	}
	// Another expiry is not another layout.
	longer := window.Hopping{Size: time.Minute, Expires: time.Hour}
	if err := table.NewWindowed("views", "c", table.Int64{}, db, longer, time.Now).CheckDefinition(); err != nil {
		t.Errorf("another expiry: %v", err)
	}
	// Other tables are separate.
	if err := table.NewWindowed("other", "c", table.Int64{}, db, two, time.Now).CheckDefinition(); err != nil {
		t.Errorf("another table: %v", err)
	}
	// Fields are compared only when both sides have them: a definition
	// recorded by another version with a field this one lacks still
	// matches by the size.
	if err := db.SetDefinition("views", "size=1m0s extra=1"); err != nil {
		t.Fatal(err)
	}
	if err := table.NewWindowed("views", "c", table.Int64{}, db, win, time.Now).CheckDefinition(); err != nil {
		t.Errorf("a recorded field the table does not have: %v", err)
	}
}

// Int64's Decode (which windowed changelog keys share) agrees with
// strconv.ParseInt on results and errors.
func TestInt64DecodeIsParseInt(t *testing.T) {
	inputs := []string{"", "0", "7", "007", "-1", "+5", "-", "+", " 1", "1 ", "1_000", "12a",
		"999999999999999999", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
		"-9223372036854775809", "99999999999999999999", "99999999999999999999x", "1700000000000"}
	for i := range 2000 {
		inputs = append(inputs, strconv.FormatInt(int64(i)*int64(i)*7919*104729, 10), strconv.Itoa(-i*31))
	}
	for _, in := range inputs {
		want, wantErr := strconv.ParseInt(in, 10, 64)
		got, err := table.Int64{}.Decode([]byte(in))
		if got != want || fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Errorf("Decode(%q) = %d, %v; strconv.ParseInt: %d, %v", in, got, err, want, wantErr)
		}
	}
}
