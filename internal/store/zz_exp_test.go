package store_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/gofaust/pageviews/internal/store"
)

func TestExp(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	db, wiped, err := store.Open(dir, log)
	fmt.Println(wiped, err)
	b := db.NewBatch()
	for i := 0; i < 5000; i++ {
		b.Set(store.DataKey("views", 0, fmt.Appendf(nil, "key-%06d", i)), fmt.Appendf(nil, "value-%06d-padding-padding-padding", i))
	}
	b.SetCheckpoint("views", 0, store.Checkpoint{Offset: 42, Watermark: 7})
	fmt.Println(b.Commit())
	fmt.Println(db.Close())
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		fmt.Println(e.Name(), fi.Size())
	}
	ssts, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	for _, s := range ssts {
		fi, _ := os.Stat(s)
		f, _ := os.OpenFile(s, os.O_RDWR, 0)
		junk := make([]byte, 64)
		for i := range junk { junk[i] = 0xAA }
		f.WriteAt(junk, fi.Size()/4)
		f.Close()
	}
	db, wiped, err = store.Open(dir, log)
	fmt.Println("reopen", wiped, err)
	cp, ok, err := db.Checkpoint("views", 0)
	fmt.Println(cp, ok, err)
	db.Close()
}
