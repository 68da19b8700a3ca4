package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gofaust/pageviews/internal/store"
)

// logBuffer collects log output; Pebble logs from its own goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openDB opens the store in dir, expects it not to be wiped, and closes it
// when the test ends.
func openDB(t testing.TB, dir string) *store.DB {
	t.Helper()
	db, wiped, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	if wiped {
		t.Fatalf("Open(%s) wiped a healthy store", dir)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// kv is one user key and value of a table partition.
type kv struct{ k, v string }

func commit(t testing.TB, b *store.Batch) {
	t.Helper()
	if err := b.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// put writes pairs into a table partition in one batch.
func put(t testing.TB, db *store.DB, table string, p int32, pairs ...kv) {
	t.Helper()
	b := db.NewBatch()
	for _, e := range pairs {
		if err := b.Set(store.DataKey(table, p, []byte(e.k)), []byte(e.v)); err != nil {
			t.Fatalf("Set(%s/%d %q): %v", table, p, e.k, err)
		}
	}
	commit(t, b)
}

// get reads one user key of a table partition.
func get(t testing.TB, db *store.DB, table string, p int32, key string) (string, bool) {
	t.Helper()
	v, ok, err := db.Get(nil, store.DataKey(table, p, []byte(key)))
	if err != nil {
		t.Fatalf("Get(%s/%d %q): %v", table, p, key, err)
	}
	return string(v), ok
}

// scan returns every pair Scan yields, in order.
func scan(t testing.TB, db *store.DB, table string, p int32, prefix string) []kv {
	t.Helper()
	var out []kv
	var pre []byte
	if prefix != "" {
		pre = []byte(prefix)
	}
	err := db.Scan(table, p, pre, func(k, v []byte) error {
		out = append(out, kv{string(k), string(v)})
		return nil
	})
	if err != nil {
		t.Fatalf("Scan(%s/%d %q): %v", table, p, prefix, err)
	}
	return out
}

func checkpoint(t testing.TB, db *store.DB, table string, p int32) (store.Checkpoint, bool) {
	t.Helper()
	cp, ok, err := db.Checkpoint(table, p)
	if err != nil {
		t.Fatalf("Checkpoint(%s/%d): %v", table, p, err)
	}
	return cp, ok
}

func TestOpenEmpty(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "state")
	db := openDB(t, dir)
	if _, ok := get(t, db, "views", 0, "k"); ok {
		t.Error("a new store holds a value")
	}
	if _, ok := checkpoint(t, db, "views", 0); ok {
		t.Error("a new store holds a checkpoint")
	}
	if got := scan(t, db, "views", 0, ""); len(got) != 0 {
		t.Errorf("a new store scans %v", got)
	}
}

func TestBatchIsAtomic(t *testing.T) {
	db := openDB(t, t.TempDir())
	put(t, db, "views", 1, kv{"gone", "old"})

	b := db.NewBatch()
	for _, e := range []kv{{"a", "1"}, {"b", "2"}} {
		if err := b.Set(store.DataKey("views", 1, []byte(e.k)), []byte(e.v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(store.DataKey("views", 1, []byte("gone"))); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCheckpoint("views", 1, store.Checkpoint{Offset: 41, Watermark: 1000}); err != nil {
		t.Fatal(err)
	}
	if got := b.Len(); got != 4 {
		t.Errorf("Len() = %d, want 4", got)
	}

	// Nothing is visible before the commit.
	if _, ok := get(t, db, "views", 1, "a"); ok {
		t.Error("a value is visible before Commit")
	}
	if v, ok := get(t, db, "views", 1, "gone"); !ok || v != "old" {
		t.Errorf("a deleted key is gone before Commit: %q, %v", v, ok)
	}
	if _, ok := checkpoint(t, db, "views", 1); ok {
		t.Error("the checkpoint is visible before Commit")
	}

	commit(t, b)
	want := []kv{{"a", "1"}, {"b", "2"}}
	if got := scan(t, db, "views", 1, ""); !slices.Equal(got, want) {
		t.Errorf("after Commit: Scan = %v, want %v", got, want)
	}
	if cp, ok := checkpoint(t, db, "views", 1); !ok || cp != (store.Checkpoint{Offset: 41, Watermark: 1000}) {
		t.Errorf("after Commit: Checkpoint = %+v, %v", cp, ok)
	}
}

func TestBatchDiscard(t *testing.T) {
	db := openDB(t, t.TempDir())
	put(t, db, "views", 0, kv{"keep", "1"})
	b := db.NewBatch()
	if err := b.Set(store.DataKey("views", 0, []byte("new")), []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(store.DataKey("views", 0, []byte("keep"))); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCheckpoint("views", 0, store.Checkpoint{Offset: 9}); err != nil {
		t.Fatal(err)
	}
	b.Discard()
	if got, want := scan(t, db, "views", 0, ""), []kv{{"keep", "1"}}; !slices.Equal(got, want) {
		t.Errorf("after Discard: Scan = %v, want %v", got, want)
	}
	if _, ok := checkpoint(t, db, "views", 0); ok {
		t.Error("after Discard: a checkpoint exists")
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	tests := []store.Checkpoint{
		{Offset: 0, Watermark: 0},
		{Offset: -1, Watermark: 0},
		{Offset: 123456789, Watermark: 1_795_708_800_123},
		{Offset: math.MaxInt64, Watermark: math.MinInt64},
		{Offset: 7, Watermark: -60_000},
		{Offset: 7, Watermark: 1_795_708_800_123, Closed: 1_795_708_740_000},
		{Offset: 8, Watermark: 0, Closed: -60_000},
	}
	db := openDB(t, t.TempDir())
	for i, want := range tests {
		t.Run(fmt.Sprintf("%+v", want), func(t *testing.T) {
			p := int32(i)
			b := db.NewBatch()
			if err := b.SetCheckpoint("totals", p, want); err != nil {
				t.Fatal(err)
			}
			commit(t, b)
			if got, ok := checkpoint(t, db, "totals", p); !ok || got != want {
				t.Errorf("Checkpoint = %+v, %v, want %+v", got, ok, want)
			}
		})
	}
}

func TestScanRange(t *testing.T) {
	db := openDB(t, t.TempDir())
	fillNeighbours(t, db)
	for _, tt := range []struct {
		from, to string
		want     []string
	}{
		{"", "\xff\xff\xff", []string{"", "\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"a", "b", []string{"a", "ab", "abc"}},
		{"ab", "abc", []string{"ab"}},
		{"abc", "\xff", []string{"abc", "b"}},
		{"b", "b", nil},
		{"c", "d", nil},
	} {
		var keys []string
		err := db.ScanRange("views", 1, []byte(tt.from), []byte(tt.to), func(k, v []byte) error {
			if !strings.HasPrefix(string(v), "views/1/") {
				t.Errorf("key %q has value %q from another table partition", k, v)
			}
			keys = append(keys, string(k))
			return nil
		})
		if err != nil || !slices.Equal(keys, tt.want) {
			t.Errorf("ScanRange(%q, %q) = %q, %v; want %q", tt.from, tt.to, keys, err, tt.want)
		}
	}
}

func TestCheckpointsAreSeparate(t *testing.T) {
	db := openDB(t, t.TempDir())
	cps := map[string]store.Checkpoint{
		"views/0":  {Offset: 1, Watermark: 10},
		"views/1":  {Offset: 2, Watermark: 20},
		"view/0":   {Offset: 3, Watermark: 30},
		"totals/0": {Offset: 4, Watermark: 40},
	}
	b := db.NewBatch()
	for id, cp := range cps {
		table, p := splitID(t, id)
		if err := b.SetCheckpoint(table, p, cp); err != nil {
			t.Fatal(err)
		}
	}
	commit(t, b)
	for id, want := range cps {
		table, p := splitID(t, id)
		if got, ok := checkpoint(t, db, table, p); !ok || got != want {
			t.Errorf("Checkpoint(%s) = %+v, %v, want %+v", id, got, ok, want)
		}
	}
	if _, ok := checkpoint(t, db, "views", 2); ok {
		t.Error("Checkpoint(views/2) exists")
	}
	// Checkpoints are not data: a scan does not see them.
	if got := scan(t, db, "views", 0, ""); len(got) != 0 {
		t.Errorf("Scan(views/0) = %v, want nothing", got)
	}
}

func splitID(t testing.TB, id string) (string, int32) {
	t.Helper()
	table, p, ok := strings.Cut(id, "/")
	if !ok {
		t.Fatalf("bad id %q", id)
	}
	var n int32
	if _, err := fmt.Sscan(p, &n); err != nil {
		t.Fatalf("bad id %q: %v", id, err)
	}
	return table, n
}

func TestGetAppendsToDst(t *testing.T) {
	db := openDB(t, t.TempDir())
	put(t, db, "totals", 3, kv{"/home", "12"})
	dst := []byte("prefix:")
	got, ok, err := db.Get(dst, store.DataKey("totals", 3, []byte("/home")))
	if err != nil || !ok {
		t.Fatalf("Get = %q, %v, %v", got, ok, err)
	}
	if string(got) != "prefix:12" {
		t.Errorf("Get = %q, want %q", got, "prefix:12")
	}
	got, ok, err = db.Get(dst, store.DataKey("totals", 3, []byte("/absent")))
	if err != nil || ok || string(got) != "prefix:" {
		t.Errorf("Get(absent) = %q, %v, %v, want dst unchanged, false, nil", got, ok, err)
	}
}

// fillNeighbours writes keys that sort right next to partition 1 of table
// "views": the partitions beside it, tables whose names share a prefix with
// it, and user keys full of 0x00 and 0xff bytes.
func fillNeighbours(t testing.TB, db *store.DB) {
	t.Helper()
	keys := []kv{{"", "empty"}, {"\x00", "zero"}, {"a", "a"}, {"ab", "ab"}, {"abc", "abc"}, {"b", "b"}, {"\xff", "ff"}, {"\xff\xff", "ffff"}}
	for _, p := range []int32{0, 1, 2, 256, math.MaxInt32} {
		for _, table := range []string{"views", "view", "viewsx", "totals"} {
			pairs := make([]kv, len(keys))
			for i, e := range keys {
				pairs[i] = kv{e.k, fmt.Sprintf("%s/%d/%s", table, p, e.v)}
			}
			put(t, db, table, p, pairs...)
		}
		b := db.NewBatch()
		if err := b.SetCheckpoint("views", p, store.Checkpoint{Offset: int64(p)}); err != nil {
			t.Fatal(err)
		}
		commit(t, b)
	}
}

func TestScan(t *testing.T) {
	db := openDB(t, t.TempDir())
	fillNeighbours(t, db)
	tests := []struct {
		table  string
		p      int32
		prefix string
		want   []string // the user keys, in order
	}{
		{"views", 1, "", []string{"", "\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"views", 1, "a", []string{"a", "ab", "abc"}},
		{"views", 1, "ab", []string{"ab", "abc"}},
		{"views", 1, "abc", []string{"abc"}},
		{"views", 1, "abcd", nil},
		{"views", 1, "\x00", []string{"\x00"}},
		{"views", 1, "\xff", []string{"\xff", "\xff\xff"}},
		{"views", 1, "\xff\xff", []string{"\xff\xff"}},
		{"views", 1, "c", nil},
		{"view", 1, "", []string{"", "\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"viewsx", 2, "\xff", []string{"\xff", "\xff\xff"}},
		{"views", 255, "", nil},
		{"views", 256, "a", []string{"a", "ab", "abc"}},
		{"views", math.MaxInt32, "", []string{"", "\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"views", math.MaxInt32, "\xff", []string{"\xff", "\xff\xff"}},
		{"absent", 1, "", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d/%q", tt.table, tt.p, tt.prefix), func(t *testing.T) {
			got := scan(t, db, tt.table, tt.p, tt.prefix)
			var keys []string
			for _, e := range got {
				keys = append(keys, e.k)
				// The value names the table and partition it was written to,
				// so a scan that leaked out of its partition shows here.
				if want := fmt.Sprintf("%s/%d/", tt.table, tt.p); !strings.HasPrefix(e.v, want) {
					t.Errorf("key %q has value %q from another table partition, want prefix %q", e.k, e.v, want)
				}
			}
			if !slices.Equal(keys, tt.want) {
				t.Errorf("Scan keys = %q, want %q", keys, tt.want)
			}
		})
	}
}

func TestScanStopsOnError(t *testing.T) {
	db := openDB(t, t.TempDir())
	put(t, db, "views", 0, kv{"a", "1"}, kv{"b", "2"}, kv{"c", "3"})
	stop := errors.New("stop")
	var seen []string
	err := db.Scan("views", 0, nil, func(k, _ []byte) error {
		seen = append(seen, string(k))
		if string(k) == "b" {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("Scan error = %v, want %v", err, stop)
	}
	if want := []string{"a", "b"}; !slices.Equal(seen, want) {
		t.Errorf("Scan visited %q, want %q", seen, want)
	}
}

func TestDeleteBelow(t *testing.T) {
	tests := []struct {
		below string
		want  []string // user keys left in views/1
	}{
		{"", []string{"", "\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"\x00", []string{"\x00", "a", "ab", "abc", "b", "\xff", "\xff\xff"}},
		{"ab", []string{"ab", "abc", "b", "\xff", "\xff\xff"}},
		{"aa", []string{"ab", "abc", "b", "\xff", "\xff\xff"}},
		{"b", []string{"b", "\xff", "\xff\xff"}},
		{"\xff\xff", []string{"\xff\xff"}},
		{"\xff\xff\xff", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.below), func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fillNeighbours(t, db)
			before := snapshot(t, db)

			b := db.NewBatch()
			if err := b.DeleteBelow("views", 1, []byte(tt.below)); err != nil {
				t.Fatal(err)
			}
			commit(t, b)

			var keys []string
			for _, e := range scan(t, db, "views", 1, "") {
				keys = append(keys, e.k)
			}
			if !slices.Equal(keys, tt.want) {
				t.Errorf("after DeleteBelow(%q): keys %q, want %q", tt.below, keys, tt.want)
			}
			// Every other table partition and every checkpoint is untouched.
			after := snapshot(t, db)
			for id, pairs := range before {
				if id == "views/1" {
					continue
				}
				if !slices.Equal(after[id], pairs) {
					t.Errorf("%s changed: %q, want %q", id, after[id], pairs)
				}
			}
			if cp, ok := checkpoint(t, db, "views", 1); !ok || cp.Offset != 1 {
				t.Errorf("checkpoint of views/1 = %+v, %v, want offset 1", cp, ok)
			}
		})
	}
}

// snapshot reads every table partition fillNeighbours writes.
func snapshot(t testing.TB, db *store.DB) map[string][]kv {
	t.Helper()
	out := map[string][]kv{}
	for _, p := range []int32{0, 1, 2, 256, math.MaxInt32} {
		for _, table := range []string{"views", "view", "viewsx", "totals"} {
			out[fmt.Sprintf("%s/%d", table, p)] = scan(t, db, table, p, "")
		}
	}
	return out
}

func TestWipePartition(t *testing.T) {
	for _, p := range []int32{0, 1, math.MaxInt32} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fillNeighbours(t, db)
			before := snapshot(t, db)

			if err := db.WipePartition("views", p); err != nil {
				t.Fatalf("WipePartition: %v", err)
			}
			id := fmt.Sprintf("views/%d", p)
			after := snapshot(t, db)
			if len(after[id]) != 0 {
				t.Errorf("%s still holds %q", id, after[id])
			}
			if _, ok := checkpoint(t, db, "views", p); ok {
				t.Errorf("%s still has a checkpoint", id)
			}
			for other, pairs := range before {
				if other != id && !slices.Equal(after[other], pairs) {
					t.Errorf("%s changed: %q, want %q", other, after[other], pairs)
				}
			}
			for _, q := range []int32{0, 1, 2, 256, math.MaxInt32} {
				if q == p {
					continue
				}
				if cp, ok := checkpoint(t, db, "views", q); !ok || cp.Offset != int64(q) {
					t.Errorf("checkpoint of views/%d = %+v, %v, want offset %d", q, cp, ok, q)
				}
			}

			// The partition is usable again.
			put(t, db, "views", p, kv{"new", "1"})
			if got, want := scan(t, db, "views", p, ""), []kv{{"new", "1"}}; !slices.Equal(got, want) {
				t.Errorf("after rewrite: Scan = %v, want %v", got, want)
			}
		})
	}
}

func TestReopenKeepsState(t *testing.T) {
	dir := t.TempDir()
	db, _, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	put(t, db, "totals", 2, kv{"/home", "12"}, kv{"/about", "3"})
	b := db.NewBatch()
	if err := b.SetCheckpoint("totals", 2, store.Checkpoint{Offset: 99, Watermark: 5}); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	db = openDB(t, dir)
	if got, want := scan(t, db, "totals", 2, ""), []kv{{"/about", "3"}, {"/home", "12"}}; !slices.Equal(got, want) {
		t.Errorf("after reopen: Scan = %v, want %v", got, want)
	}
	if cp, ok := checkpoint(t, db, "totals", 2); !ok || cp != (store.Checkpoint{Offset: 99, Watermark: 5}) {
		t.Errorf("after reopen: Checkpoint = %+v, %v", cp, ok)
	}
}

// writeAndClose fills a new store in dir with enough data that closing it
// (which flushes the memtable) leaves at least one .sst file, and returns
// the .sst paths.
func writeAndClose(t testing.TB, dir string) []string {
	t.Helper()
	db, _, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	for i := range 5000 {
		key := fmt.Appendf(nil, "/page/%05d", i)
		if err := b.Set(store.DataKey("views", int32(i%4), key), fmt.Appendf(nil, "%d-some-padding-to-fill-blocks", i)); err != nil {
			t.Fatal(err)
		}
	}
	for p := range int32(4) {
		if err := b.SetCheckpoint("views", p, store.Checkpoint{Offset: 1250, Watermark: 1}); err != nil {
			t.Fatal(err)
		}
	}
	commit(t, b)
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ssts, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ssts) == 0 {
		t.Fatalf("no .sst file in %s after Close", dir)
	}
	return ssts
}

func TestOpenCorruptStoreIsWiped(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(t testing.TB, dir string, ssts []string)
	}{
		{
			// Pebble compares each table's size with the MANIFEST on open.
			name: "sst truncated to half",
			corrupt: func(t testing.TB, _ string, ssts []string) {
				for _, f := range ssts {
					truncate(t, f, func(size int64) int64 { return size / 2 })
				}
			},
		},
		{
			name: "sst truncated to nothing",
			corrupt: func(t testing.TB, _ string, ssts []string) {
				for _, f := range ssts {
					truncate(t, f, func(int64) int64 { return 0 })
				}
			},
		},
		{
			name: "sst missing its last byte",
			corrupt: func(t testing.TB, _ string, ssts []string) {
				for _, f := range ssts {
					truncate(t, f, func(size int64) int64 { return size - 1 })
				}
			},
		},
		{
			name: "sst deleted",
			corrupt: func(t testing.TB, _ string, ssts []string) {
				for _, f := range ssts {
					if err := os.Remove(f); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
		{
			name: "manifest overwritten",
			corrupt: func(t testing.TB, dir string, _ []string) {
				manifests, err := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
				if err != nil || len(manifests) == 0 {
					t.Fatalf("no MANIFEST in %s: %v", dir, err)
				}
				for _, f := range manifests {
					overwrite(t, f, 0, -1)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ssts := writeAndClose(t, dir)
			tt.corrupt(t, dir, ssts)
			checkWipedAndUsable(t, dir)
		})
	}
}

// TestOpenDamagedStoreIsWiped damages a data block of an .sst file without
// changing its size, as bit rot would: Open must find it (CheckLevels
// verifies block checksums) and wipe the store.
func TestOpenDamagedStoreIsWiped(t *testing.T) {
	dir := t.TempDir()
	ssts := writeAndClose(t, dir)
	for _, f := range ssts {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		// The first data blocks start at offset 0 and the footer and index
		// are at the end, so the first quarter is data.
		overwrite(t, f, fi.Size()/4, 64)
	}
	checkWipedAndUsable(t, dir)
}

// checkWipedAndUsable opens the corrupt store in dir and checks that Open
// wiped it, logged why, and left an empty store that works and persists.
func checkWipedAndUsable(t testing.TB, dir string) {
	t.Helper()
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	db, wiped, err := store.Open(dir, log)
	if err != nil {
		t.Fatalf("Open(corrupt store): %v", err)
	}
	if !wiped {
		_ = db.Close()
		t.Fatal("Open(corrupt store): wiped = false, want true")
	}
	if !strings.Contains(logs.String(), "corrupt") {
		t.Errorf("Open did not log why it wiped the store: %q", logs.String())
	}
	for p := range int32(4) {
		if got := scan(t, db, "views", p, ""); len(got) != 0 {
			t.Errorf("wiped store: views/%d holds %d keys", p, len(got))
		}
		if cp, ok := checkpoint(t, db, "views", p); ok {
			t.Errorf("wiped store: views/%d has checkpoint %+v", p, cp)
		}
	}

	put(t, db, "views", 0, kv{"after", "wipe"})
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	db = openDB(t, dir)
	if got, want := scan(t, db, "views", 0, ""), []kv{{"after", "wipe"}}; !slices.Equal(got, want) {
		t.Errorf("rebuilt store after reopen: Scan = %v, want %v", got, want)
	}
}

func truncate(t testing.TB, path string, size func(int64) int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size(fi.Size())); err != nil {
		t.Fatal(err)
	}
}

// overwrite replaces n bytes of path at off with 0xAA (n < 0: to the end),
// keeping the file's size.
func overwrite(t testing.TB, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n < 0 {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		n = fi.Size() - off
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xAA}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

// TestOpenLockedStoreIsLeftAlone opens a store that is already open: the
// second Open must fail with a LockedError naming the directory, and must
// not wipe the store the first one is writing.
func TestOpenLockedStoreIsLeftAlone(t *testing.T) {
	dir := t.TempDir()
	first, _, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	put(t, first, "views", 1, kv{"/home", "7"})

	second, wiped, err := store.Open(dir, discardLog())
	if err == nil {
		_ = second.Close()
		t.Fatal("second Open of an open store succeeded")
	}
	var locked *store.LockedError
	if !errors.As(err, &locked) {
		t.Fatalf("second Open: %v (%T), want a *store.LockedError", err, err)
	}
	if wiped {
		t.Error("second Open reported a wipe")
	}
	if locked.Dir != dir || !strings.Contains(err.Error(), dir) || strings.Contains(err.Error(), "\n") {
		t.Errorf("second Open: error %q (dir %q) should name %s in one line", err, locked.Dir, dir)
	}
	if v, ok := get(t, first, "views", 1, "/home"); !ok || v != "7" {
		t.Errorf("first store after the second Open: /home = %q, %v; want 7", v, ok)
	}
	put(t, first, "views", 1, kv{"/about", "1"})
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Closing releases the directory.
	db := openDB(t, dir)
	if got, want := scan(t, db, "views", 1, ""), []kv{{"/about", "1"}, {"/home", "7"}}; !slices.Equal(got, want) {
		t.Errorf("after reopen: Scan = %v, want %v", got, want)
	}
}

// TestOpenFailureThatIsNotCorruptionKeepsTheStore makes Open fail for a
// reason that is not corruption (the OPTIONS file is a directory, whose
// which reads fail with EISDIR, as they would with EACCES or EMFILE): Open
// must return the cause and leave every file in place.
func TestOpenFailureThatIsNotCorruptionKeepsTheStore(t *testing.T) {
	dir := t.TempDir()
	ssts := writeAndClose(t, dir)
	options, err := filepath.Glob(filepath.Join(dir, "OPTIONS-*"))
	if err != nil || len(options) != 1 {
		t.Fatalf("want one OPTIONS file in %s: %v %v", dir, options, err)
	}
	current := options[0]
	saved := current + ".saved"
	if err := os.Rename(current, saved); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(current, 0o755); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	db, wiped, err := store.Open(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil {
		_ = db.Close()
		t.Fatal("Open with the OPTIONS file a directory succeeded")
	}
	if wiped || strings.Contains(logs.String(), "wiping") {
		t.Errorf("Open wiped the store for %v", err)
	}
	for _, f := range ssts {
		if _, serr := os.Stat(f); serr != nil {
			t.Errorf("after the failed Open: %v", serr)
		}
	}
	if err := os.Remove(current); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(saved, current); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, dir)
	if cp, ok := checkpoint(t, db, "views", 0); !ok || cp.Offset != 1250 {
		t.Errorf("store after the cause was removed: checkpoint %+v, %v; want offset 1250", cp, ok)
	}
}

func TestPartitionsWithACheckpoint(t *testing.T) {
	db := openDB(t, t.TempDir())
	b := db.NewBatch()
	for _, p := range []int32{7, 0, 300, math.MaxInt32} {
		if err := b.SetCheckpoint("views", p, store.Checkpoint{Offset: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetCheckpoint("viewsx", 5, store.Checkpoint{Offset: 1}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetData("views", 9, []byte("k"), []byte("v")); err != nil { // data without a checkpoint
		t.Fatal(err)
	}
	commit(t, b)
	got, err := db.Partitions("views")
	if want := []int32{0, 7, 300, math.MaxInt32}; err != nil || !slices.Equal(got, want) {
		t.Errorf("Partitions(views) = %v, %v; want %v", got, err, want)
	}
	if got, _ := db.Partitions("absent"); len(got) != 0 {
		t.Errorf("Partitions(absent) = %v", got)
	}
}

// TestStatsMemory checks that Stats reports Pebble's memory: an open store
// has a memtable (its block cache fills only as blocks are read) and no
// background error.
func TestStatsMemory(t *testing.T) {
	db := openDB(t, t.TempDir())
	if err := db.SetDefinition("views", "tumbling 1m"); err != nil {
		t.Fatal(err)
	}
	st := db.Stats()
	if st.MemTableBytes == 0 || st.BlockCacheBytes < 0 || st.BackgroundErrors != 0 {
		t.Errorf("stats %+v: want memtable bytes above 0 and no background error", st)
	}
}

// TestKeysPages: Keys yields a partition's user keys in order, limit at a
// time from after the last one, none of a neighbour's; after Close it
// returns ErrClosed.
func TestKeysPages(t *testing.T) {
	dir := t.TempDir()
	db, _, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("k%02d", i)
		want = append(want, k)
		for _, p := range []int32{2, 3, 4} {
			if err := b.SetData("views", p, []byte(k), []byte("1")); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.SetData("totals", 3, []byte(k), []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	var got []string
	var after []byte
	for pages := 1; ; pages++ {
		last, more, err := db.Keys("views", 3, after, 10, func(k []byte) { got = append(got, string(k)) })
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			if pages != 3 {
				t.Errorf("%d pages of 10 for 25 keys, want 3", pages)
			}
			break
		}
		after = slices.Clone(last)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Keys = %q, want %q", got, want)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.Keys("views", 3, nil, 10, func([]byte) {}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Keys after Close = %v, want ErrClosed", err)
	}
}
