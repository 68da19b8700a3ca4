package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A full disk at start-up is the one failure Pebble does not return: its
// Open flushes the memtable replayed from the write-ahead log and waits for
// the flush, which it retries at once, forever, when a write fails. So the
// store puts a file system under Pebble that notices "no space left on
// device", slows every retry down with a growing pause (bounded CPU and log
// lines), and lets Open give up after a while with an error that says so,
// instead of spinning without a word. When space comes back in time, the
// flush succeeds and Open goes on: nothing is lost, the WAL is intact.

// NoSpaceError is the failure to open a store on a full disk.
type NoSpaceError struct {
	Dir    string
	Waited time.Duration
	Err    error
}

func (e *NoSpaceError) Error() string {
	return fmt.Sprintf("store %s: no space left on device: the store could not write for %s; free space on that disk and start again (nothing is lost: the store's log and the changelogs hold the state): %v",
		e.Dir, e.Waited.Round(time.Second), e.Err)
}

func (e *NoSpaceError) Unwrap() error { return e.Err }

// isNoSpace reports whether err is the disk being full.
func isNoSpace(err error) bool {
	return err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT))
}

// spaceFS wraps the store's file system and tracks writes that fail for
// want of space: each one pauses before it returns, twice as long as the
// one before (up to maxPause), so that Pebble's immediate retries cost
// little. An episode of such failures ends when none has happened for
// quiet (longer than maxPause): a success proves little, since syncing an
// empty file works on a full disk.
type spaceFS struct {
	vfs.FS
	sleep func(time.Duration)

	mu    sync.Mutex
	since time.Time // first failure of the current episode
	at    time.Time // latest failure
	fails int       // failures in the episode
	last  error
}

const (
	firstPause = 50 * time.Millisecond
	maxPause   = 2 * time.Second
	quiet      = 3 * maxPause
)

func newSpaceFS(fs vfs.FS) *spaceFS {
	return &spaceFS{FS: fs, sleep: time.Sleep}
}

// check pauses after a failure for want of space and returns err.
func (s *spaceFS) check(err error) error {
	if !isNoSpace(err) {
		return err
	}
	s.mu.Lock()
	now := time.Now()
	if s.at.IsZero() || now.Sub(s.at) > quiet {
		s.since, s.fails = now, 0
	}
	s.at = now
	s.fails++
	s.last = err
	pause := maxPause
	if s.fails < 8 {
		pause = min(firstPause<<(s.fails-1), maxPause)
	}
	s.mu.Unlock()
	s.sleep(pause)
	return err
}

// stuck returns since when writes have been failing for want of space
// (zero when they are not), and the last such error.
func (s *spaceFS) stuck() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || time.Since(s.at) > quiet {
		return time.Time{}, nil
	}
	return s.since, s.last
}

func (s *spaceFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := s.FS.Create(name, category)
	if err != nil {
		return nil, s.check(err)
	}
	return &spaceFile{File: f, fs: s}, nil
}

func (s *spaceFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := s.FS.OpenReadWrite(name, category, opts...)
	if err != nil {
		return nil, s.check(err)
	}
	return &spaceFile{File: f, fs: s}, nil
}

func (s *spaceFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := s.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		return nil, s.check(err)
	}
	return &spaceFile{File: f, fs: s}, nil
}

func (s *spaceFS) MkdirAll(dir string, perm os.FileMode) error {
	return s.check(s.FS.MkdirAll(dir, perm))
}

func (s *spaceFS) Unwrap() vfs.FS { return s.FS }

// spaceFile reports its writes' outcomes to its spaceFS.
type spaceFile struct {
	vfs.File
	fs *spaceFS
}

func (f *spaceFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	return n, f.fs.check(err)
}

func (f *spaceFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	return n, f.fs.check(err)
}

func (f *spaceFile) Preallocate(offset, length int64) error {
	return f.fs.check(f.File.Preallocate(offset, length))
}

func (f *spaceFile) Sync() error { return f.fs.check(f.File.Sync()) }

func (f *spaceFile) SyncData() error { return f.fs.check(f.File.SyncData()) }

func (f *spaceFile) SyncTo(length int64) (bool, error) {
	full, err := f.File.SyncTo(length)
	return full, f.fs.check(err)
}

// rateLimited logs at most one line per interval for a recurring event,
// and says how many it left out. Pebble reports every failed background
// write; on a full disk that is one line per retry. It reports every write
// stall too: a replay or a catch-up that outruns the flushes meets one
// after another.
type rateLimited struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time // time.Now when nil

	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (r *rateLimited) Error(msg string, args ...any) { r.logAt(slog.LevelError, msg, args...) }

func (r *rateLimited) Warn(msg string, args ...any) { r.logAt(slog.LevelWarn, msg, args...) }

func (r *rateLimited) logAt(level slog.Level, msg string, args ...any) {
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	r.mu.Lock()
	at := now()
	if !r.last.IsZero() && at.Sub(r.last) < r.interval {
		r.dropped++
		r.mu.Unlock()
		return
	}
	dropped := r.dropped
	r.last, r.dropped = at, 0
	r.mu.Unlock()
	if dropped > 0 {
		args = append(args, "repeats_not_logged", dropped)
	}
	r.log.Log(context.Background(), level, msg, args...)
}
