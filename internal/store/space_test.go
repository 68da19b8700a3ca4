package store_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gofaust/pageviews/internal/store"
)

// fullDisk is a file system whose writes fail with ENOSPC while full is
// set, as a full disk's do.
type fullDisk struct {
	vfs.FS
	full  atomic.Bool
	fails atomic.Int64
}

func (d *fullDisk) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := d.FS.Create(name, c)
	if err != nil {
		return nil, err
	}
	return &fullFile{File: f, disk: d, name: name}, nil
}

func (d *fullDisk) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := d.FS.ReuseForWrite(oldname, newname, c)
	if err != nil {
		return nil, err
	}
	return &fullFile{File: f, disk: d, name: newname}, nil
}

type fullFile struct {
	vfs.File
	disk *fullDisk
	name string
}

func (f *fullFile) Write(p []byte) (int, error) {
	if f.disk.full.Load() {
		f.disk.fails.Add(1)
		return 0, &os.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

// crashedStore returns a store directory whose last writes are only in the
// write-ahead log, as a killed worker leaves it: opening it replays the log
// and flushes it to a table file. The store is copied while open; the copy
// has no lock holder.
func crashedStore(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	db := openDB(t, dir)
	put(t, db, "views", 3, kv{"/home", "41"}, kv{"/about", "2"})
	copyDir := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(copyDir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return copyDir
}

// countLines counts the lines of a log that contain s.
func countLines(logs *logBuffer, s string) int {
	return strings.Count(logs.String(), s)
}

// TestOpenOnFullDiskGivesUp: on a disk that stays full, Open returns a
// NoSpaceError naming the directory once NoSpaceWait has passed, instead of
// retrying forever, and logs the failing writes at most about once a
// second. When space is back the store opens with everything it held.
func TestOpenOnFullDiskGivesUp(t *testing.T) {
	dir := crashedStore(t)
	disk := &fullDisk{FS: vfs.Default}
	disk.full.Store(true)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	began := time.Now()
	db, _, err := store.OpenWith(context.Background(), dir, log, store.Options{NoSpaceWait: 3 * time.Second, FS: disk})
	took := time.Since(began)
	if err == nil {
		_ = db.Close()
		t.Fatal("Open on a full disk succeeded")
	}
	var nospace *store.NoSpaceError
	if !errors.As(err, &nospace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Open on a full disk: %v (%T), want a *store.NoSpaceError wrapping ENOSPC", err, err)
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, "no space left") || strings.Contains(msg, "\n") {
		t.Errorf("error %q should name %s and say \"no space left\" in one line", msg, dir)
	}
	if disk.fails.Load() == 0 {
		t.Fatal("the full disk saw no write: the test does not exercise the flush")
	}
	// At most one line a second (the first at once).
	if n, most := countLines(&logs, "store background error"), int(took.Seconds())+2; n > most {
		t.Errorf("%d background error lines in %s, want at most %d:\n%s", n, took, most, logs.String())
	}

	disk.full.Store(false)
	// The abandoned open finishes once there is space, and releases the
	// store when it closes what it opened.
	deadline := time.Now().Add(60 * time.Second)
	for {
		db, _, err = store.OpenWith(context.Background(), dir, discardLog(), store.Options{FS: disk})
		var locked *store.LockedError
		if !errors.As(err, &locked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Open once space is back: %v", err)
	}
	defer db.Close()
	if v, ok := get(t, db, "views", 3, "/home"); !ok || v != "41" {
		t.Errorf("after the full disk: /home = %q, %v; want 41", v, ok)
	}
}

// TestOpenOnFullDiskWaitsForSpace: space that comes back while Open waits
// lets it finish, with nothing lost.
func TestOpenOnFullDiskWaitsForSpace(t *testing.T) {
	dir := crashedStore(t)
	disk := &fullDisk{FS: vfs.Default}
	disk.full.Store(true)
	type result struct {
		db    *store.DB
		wiped bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		db, wiped, err := store.OpenWith(context.Background(), dir, discardLog(), store.Options{NoSpaceWait: 10 * time.Minute, FS: disk})
		done <- result{db, wiped, err}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for disk.fails.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the full disk saw %d failed writes in 60s, want 3", disk.fails.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	disk.full.Store(false)
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Open did not finish within 60s of space coming back")
	}
	if r.err != nil {
		t.Fatalf("Open: %v", r.err)
	}
	defer r.db.Close()
	if r.wiped {
		t.Error("Open wiped the store")
	}
	if v, ok := get(t, r.db, "views", 3, "/about"); !ok || v != "2" {
		t.Errorf("/about = %q, %v; want 2", v, ok)
	}
}

// TestOpenOnFullDiskStopsWithTheContext: a shutdown while Open waits for
// space ends the wait.
func TestOpenOnFullDiskStopsWithTheContext(t *testing.T) {
	dir := crashedStore(t)
	disk := &fullDisk{FS: vfs.Default}
	disk.full.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		db, _, err := store.OpenWith(ctx, dir, slog.New(slog.NewTextHandler(io.Discard, nil)), store.Options{NoSpaceWait: 10 * time.Minute, FS: disk})
		if err == nil {
			_ = db.Close()
		}
		done <- err
	}()
	for disk.fails.Load() < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Open after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Open did not return within 60s of the cancel")
	}
	// Let the abandoned open finish, so the directory can be removed.
	disk.full.Store(false)
	waitUnlocked(t, dir, disk)
}

// waitUnlocked waits until the store in dir can be opened (an abandoned
// open has finished and closed), and closes it.
func waitUnlocked(t testing.TB, dir string, fs vfs.FS) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		db, _, err := store.OpenWith(context.Background(), dir, discardLog(), store.Options{FS: fs})
		if err == nil {
			_ = db.Close()
			return
		}
		var locked *store.LockedError
		if !errors.As(err, &locked) || time.Now().After(deadline) {
			t.Fatalf("store still not openable: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
