package table

import (
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/window"
)

func benchStore(b *testing.B) *store.DB {
	b.Helper()
	db, _, err := store.Open(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

func inc(v int64) int64 { return v + 1 }

// BenchmarkWindowedUpdate measures one update through the write-back cache
// over 1,000 keys (window lookup included), in tumbling windows.
func BenchmarkWindowedUpdate(b *testing.B) {
	benchUpdate(b, window.Hopping{Size: time.Minute, Expires: 5 * time.Minute})
}

// BenchmarkHoppingUpdate is BenchmarkWindowedUpdate with hopping windows of
// a quarter step: each event updates size/step = 4 windows.
func BenchmarkHoppingUpdate(b *testing.B) {
	benchUpdate(b, window.Hopping{Size: time.Minute, Step: 15 * time.Second, Expires: 5 * time.Minute})
}

func benchUpdate(b *testing.B, w window.Hopping) {
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	t := NewWindowed("views", "c", Int64{}, benchStore(b), w, func() time.Time { return now })
	if _, _, err := t.Assign(0); err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "/page/" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := t.Update(0, keys[i%len(keys)], now, inc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFlush measures one commit of 1,000 dirty keys: changelog
// records, the store batch (synced) and marking them clean.
func BenchmarkFlush(b *testing.B) {
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	db := benchStore(b)
	t := NewWindowed("views", "c", Int64{}, db, window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}, func() time.Time { return now })
	if _, _, err := t.Assign(0); err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "/page/" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for _, k := range keys {
			if _, err := t.Update(0, k, now, inc); err != nil {
				b.Fatal(err)
			}
		}
		recs, err := t.Flush(0, now)
		if err != nil || len(recs) < len(keys) { // and the first flush's closed-up-to point
			b.Fatalf("flush: %d records, %v", len(recs), err)
		}
		batch := db.NewBatch()
		if err := t.Write(0, batch, int64(i)); err != nil {
			b.Fatal(err)
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		t.Flushed(0)
	}
}

// BenchmarkRestore measures recovery's work per changelog record of a
// windowed table: parse the changelog key, check the value, and add both to
// the store batch, committed every 20,000 records, as recovery does for a
// replay shorter than that (through the memtable).
func BenchmarkRestore(b *testing.B) {
	benchRestore(b, (*store.DB).NewBatch)
}

// BenchmarkRestoreLoad is BenchmarkRestore for a long replay: each batch of
// 20,000 is sorted, written as a table file and ingested.
func BenchmarkRestoreLoad(b *testing.B) {
	benchRestore(b, (*store.DB).NewLoadBatch)
}

func benchRestore(b *testing.B, newBatch func(*store.DB) *store.Batch) {
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	db := benchStore(b)
	t := NewWindowed("views", "c", Int64{}, db, window.Hopping{Size: time.Hour, Expires: 24 * time.Hour}, func() time.Time { return now })
	if _, _, err := t.Assign(0); err != nil {
		b.Fatal(err)
	}
	start := strconv.FormatInt(now.Truncate(time.Hour).UnixMilli(), 10)
	keys := make([][]byte, 100_000)
	for i := range keys {
		keys[i] = []byte("/page/" + strconv.Itoa(i) + "|" + start)
	}
	value := []byte("42")
	batch := newBatch(db)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := t.Restore(0, batch, keys[i%len(keys)], value, now); err != nil {
			b.Fatal(err)
		}
		if i%20_000 == 19_999 {
			if err := batch.CommitUnsynced(); err != nil {
				b.Fatal(err)
			}
			batch = newBatch(db)
		}
	}
	batch.Discard()
}
