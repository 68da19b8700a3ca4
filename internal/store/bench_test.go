package store_test

import (
	"log/slog"
	"strconv"
	"testing"

	"github.com/gofaust/pageviews/internal/store"
)

func benchDB(b *testing.B) *store.DB {
	b.Helper()
	db, _, err := store.Open(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// BenchmarkCommit measures the store side of one commit interval: a batch
// of 1,000 values and a checkpoint, synced to disk.
func BenchmarkCommit(b *testing.B) {
	benchBatches(b, 1000, (*store.Batch).Commit)
}

// BenchmarkCommitUnsynced is BenchmarkCommit without waiting for the disk,
// as recovery writes its intermediate batches.
func BenchmarkCommitUnsynced(b *testing.B) {
	benchBatches(b, 1000, (*store.Batch).CommitUnsynced)
}

func benchBatches(b *testing.B, n int, commit func(*store.Batch) error) {
	db := benchDB(b)
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = []byte("/page/" + strconv.Itoa(i))
	}
	value := []byte("12345")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		batch := db.NewBatch()
		for _, k := range keys {
			if err := batch.SetData("views", 0, k, value); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.SetCheckpoint("views", 0, store.Checkpoint{Offset: int64(i), Watermark: int64(i)}); err != nil {
			b.Fatal(err)
		}
		if err := commit(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
}
