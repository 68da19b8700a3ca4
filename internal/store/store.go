// Package store keeps table state on local disk in Pebble.
//
// One DB holds every table of a worker. Each table partition has its own key
// range, so one partition can be wiped or range-deleted without touching the
// others, and a checkpoint per table partition records the changelog offset
// the values correspond to. Values and their checkpoint are always written in
// one batch, so the two never disagree after a crash.
//
// A batch is synced when it commits: one batch per partition and commit
// interval, never per event. Pebble keeps unsynced write-ahead-log writes in
// its own buffer, so without the sync a killed process (not only a crashed
// machine) would lose its recent checkpoints and recover from further back.
// Values and checkpoint always travel in one batch, so whatever is lost is
// lost together and replayed from the changelog.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// DB is the worker's local state store.
type DB struct {
	pdb    *pebble.DB
	lock   *pebble.Lock
	dir    string
	stalls *atomic.Int64
	// bgErrors counts Pebble's background errors (failed flushes and
	// compactions), which it retries and reports only to its listener.
	bgErrors *atomic.Int64
	writer   sstable.WriterOptions // for the table files of NewLoadBatch
	fs       vfs.FS
	// closing guards Keys, which background work calls, against Close:
	// Pebble must not close with an iterator open.
	closing sync.RWMutex
	closed  bool
}

// ErrClosed is what Keys returns once Close has begun.
var ErrClosed = errors.New("store closed")

// Stats are what the store reports for gauges.
type Stats struct {
	DiskBytes   uint64
	Compactions int64
	WriteStalls int64
	// BackgroundErrors counts failed background flushes and compactions:
	// Pebble retries them, so only this count and the log show them.
	BackgroundErrors int64
	// MemTableBytes and BlockCacheBytes are what Pebble holds in memory:
	// its memtables, and the data blocks it caches.
	MemTableBytes   uint64
	BlockCacheBytes int64
}

// Stats returns the store's size, its memory, and cumulative compaction,
// stall and background error counts.
// The size is that of the files in the store's directory: Pebble's own
// figure leaves out the write-ahead log it is writing, which holds
// everything since the last flush of its memtable.
func (d *DB) Stats() Stats {
	var size uint64
	_ = filepath.WalkDir(d.dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if info, err := e.Info(); err == nil {
				size += uint64(info.Size())
			}
		}
		return nil // a file removed while walked is not counted
	})
	m := d.pdb.Metrics()
	return Stats{
		DiskBytes: size, Compactions: m.Compact.Count, WriteStalls: d.stalls.Load(),
		BackgroundErrors: d.bgErrors.Load(), MemTableBytes: m.MemTable.Size, BlockCacheBytes: m.BlockCache.Size,
	}
}

// Open opens the store in dir, creating it when missing. The directory is
// locked while the store is open: a second worker on the same directory
// gets a *LockedError and must not touch it.
//
// A store that Pebble reports as corrupt (a damaged or missing file, a
// checksum that does not match) is wiped and created empty, and wiped
// reports that this happened, so every table partition is rebuilt from its
// changelog. Any other error (permissions, too many open files, a full
// disk) is returned as it is: wiping would not cure it, and could destroy
// a good store.
//
// On a full disk Open waits for space, retrying with growing pauses, and
// gives up after a while with a *NoSpaceError (see OpenWith).
func Open(dir string, log *slog.Logger) (db *DB, wiped bool, err error) {
	return OpenWith(context.Background(), dir, log, Options{})
}

// Options tune OpenWith; the zero value is what Open uses.
type Options struct {
	// NoSpaceWait is how long Open waits for a full disk to accept writes
	// again before it gives up with a *NoSpaceError; 20s when zero.
	NoSpaceWait time.Duration
	// FS is the file system under the store; the operating system's when
	// nil. Tests put a full disk there.
	FS vfs.FS
}

// OpenWith is Open with options, and returns early with ctx's error when
// ctx ends while it waits for space.
func OpenWith(ctx context.Context, dir string, log *slog.Logger, o Options) (db *DB, wiped bool, err error) {
	if o.NoSpaceWait <= 0 {
		o.NoSpaceWait = 20 * time.Second
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("create store directory: %w", err)
	}
	lock, err := pebble.LockDirectory(dir, o.FS)
	if err != nil {
		return nil, false, lockError(dir, err)
	}
	space := newSpaceFS(o.FS)
	db, err = openWaiting(ctx, dir, lock, space, log, o.NoSpaceWait)
	if err == nil {
		return db, false, nil
	}
	if !corrupt(err) {
		_ = lock.Close()
		return nil, false, err
	}
	log.Warn("local store is corrupt; wiping it and rebuilding every partition from the changelogs",
		"dir", dir, "error", err)
	if err := wipe(dir); err != nil {
		_ = lock.Close()
		return nil, false, fmt.Errorf("wipe corrupt store %s: %w", dir, err)
	}
	db, err = openWaiting(ctx, dir, lock, space, log, o.NoSpaceWait)
	if err != nil {
		_ = lock.Close()
		return nil, true, err
	}
	return db, true, nil
}

// openWaiting opens the store, and while the disk is full waits up to wait
// for space: Pebble's Open either fails for want of space (then it is
// tried again; the file system has paused) or blocks retrying its flush
// (then it is left to finish in the background, and closes the store it
// opened if it ever does).
func openWaiting(ctx context.Context, dir string, lock *pebble.Lock, space *spaceFS, log *slog.Logger, wait time.Duration) (*DB, error) {
	type result struct {
		db  *DB
		err error
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	abandon := func(done <-chan result) {
		go func() {
			if r := <-done; r.err == nil {
				// The lock is released by the caller, once this closes.
				_ = r.db.pdb.Close()
			}
		}()
	}
	for {
		done := make(chan result, 1)
		go func() {
			db, err := open(dir, lock, space, log)
			done <- result{db, err}
		}()
	wait:
		for {
			select {
			case r := <-done:
				if !isNoSpace(r.err) {
					return r.db, r.err
				}
				// Pause before the next attempt, also when the failing
				// write was not one the file system saw.
				_ = space.check(r.err)
				if since, _ := space.stuck(); !since.IsZero() && time.Since(since) >= wait {
					return nil, &NoSpaceError{Dir: dir, Waited: time.Since(since), Err: r.err}
				}
				break wait
			case <-ctx.Done():
				abandon(done)
				return nil, fmt.Errorf("open store %s: %w", dir, context.Cause(ctx))
			case <-tick.C:
				if since, last := space.stuck(); !since.IsZero() && time.Since(since) >= wait {
					abandon(done)
					return nil, &NoSpaceError{Dir: dir, Waited: time.Since(since), Err: last}
				}
			}
		}
	}
}

// corrupt reports whether Pebble found the store corrupt: it marks damaged
// files (checksums, a malformed MANIFEST or WAL) as ErrCorruption. Its
// consistency check at open, which finds a table file that the MANIFEST
// lists missing or of another size, reports without the mark; those two
// messages are recognised by their text (pinned by the store's tests).
func corrupt(err error) bool {
	if pebble.IsCorruptionError(err) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "object size mismatch") ||
		errors.Is(err, os.ErrNotExist) && strings.Contains(msg, "unknown to the objstorage provider")
}

// lockFile is the name of Pebble's lock file in the store directory.
const lockFile = "LOCK"

// wipe removes everything in dir but the lock file, which this process
// holds: removing it would let another process lock a new file of the same
// name while this one still writes.
func wipe(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// LockedError is the failure to open a store that another process, or
// another DB of this process, has open.
type LockedError struct {
	Dir string
	// PID is the process holding the lock, 0 when unknown.
	PID int
	Err error
}

func (e *LockedError) Error() string {
	holder := "another process"
	if e.PID == os.Getpid() {
		holder = "this process"
	} else if e.PID != 0 {
		holder = fmt.Sprintf("process %d", e.PID)
	}
	return fmt.Sprintf("store %s is locked by %s (another worker running on the same DATA_DIR?): every worker needs its own DATA_DIR", e.Dir, holder)
}

func (e *LockedError) Unwrap() error { return e.Err }

// lockError tells a lock held by someone else from a failure to create the
// lock file (permissions, a full disk), which is returned as it is.
func lockError(dir string, err error) error {
	var perr *fs.PathError
	if errors.As(err, &perr) {
		return fmt.Errorf("lock store %s: %w", dir, err)
	}
	// Pebble refuses a second lock within one process before asking the
	// kernel, with a plain error.
	if !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EACCES) {
		return &LockedError{Dir: dir, PID: os.Getpid(), Err: err}
	}
	return &LockedError{Dir: dir, PID: lockHolder(filepath.Join(dir, lockFile)), Err: err}
}

// lockHolder asks the kernel which process holds the lock on path (Pebble
// takes an fcntl lock); 0 when it cannot tell.
func lockHolder(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil || lk.Type == syscall.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}

// The store's memory and its level-0 bound, which the dashboards' advice
// quotes; open says why each is what it is.
const (
	MemTableSize = 8 << 20  // one memtable; a second fills while a full one is flushed
	CacheSize    = 96 << 20 // Pebble's block cache, the memtables' room reserved in it
	L0StopWrites = 48       // level-0 files at which Pebble stops writes (a stall)
)

func open(dir string, lock *pebble.Lock, fs vfs.FS, log *slog.Logger) (*DB, error) {
	stalls, bgErrors := new(atomic.Int64), new(atomic.Int64)
	opts := &pebble.Options{
		// 4 MiB memtables made a recovery write each record many times
		// over; long replays now bypass them (NewLoadBatch), and the key
		// filters spare new keys the lookups that more level-0 tables made
		// dear (1 M pages: 177,000-179,000 events/s at 8 MiB, 160,000-
		// 170,000 at 32). They are most of the live heap without cgo: 8
		// MiB halves RSS in the soak, at the same speed at 10,000 pages.
		MemTableSize: MemTableSize,
		// A recovery flushes memtable after memtable into level 0. With
		// Pebble's threshold of 4 files it also compacted them while
		// replaying; 16 leaves that for later, when the worker has CPU to
		// spare: 1.7 -> 1.4 CPU s for a 1 M-record recovery (median of 4).
		// Reads only reach the store on a cache miss.
		L0CompactionThreshold: 16,
		L0StopWritesThreshold: L0StopWrites,
		// Pebble counts the memtables against its block cache, so the
		// cache must hold them and leave room for blocks. While a full
		// memtable is flushed the next one fills: with 32 MiB memtables
		// 96 MiB left 32 MiB to data and filter blocks even then (80 MiB
		// with the 8 MiB ones). At 64 MiB two 32 MiB memtables took
		// it all, and with 1 M distinct pages (every key new, so every
		// update a store lookup that reads each level-0 table's filter)
		// the filters were read from disk again for every lookup: 9,000
		// events/s against 124,000 at 96 MiB (docs/benchmarks.md, Scale).
		// It is also the bound of Pebble's memory, memtables included.
		CacheSize:     CacheSize,
		Lock:          lock,
		FS:            fs,
		Logger:        pebbleLogger{log},
		EventListener: listener(dir, log, stalls, bgErrors),
	}
	// A key the store does not hold but a table's key filter lets through
	// (a false positive, or a key since deleted) is looked up and not
	// found; with up to 16 level-0 files the filters keep such a miss
	// from reading every one of them.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	// Table files a crash left unfinished before their ingestion.
	if err := fs.RemoveAll(filepath.Join(dir, loadDir)); err != nil {
		return nil, fmt.Errorf("clear %s: %w", filepath.Join(dir, loadDir), err)
	}
	pdb, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble %s: %w", dir, err)
	}
	// CheckLevels reads every table and verifies its checksums, so a
	// truncated or damaged file is found now rather than on a later read.
	if err := pdb.CheckLevels(nil); err != nil {
		_ = pdb.Close()
		return nil, fmt.Errorf("check pebble %s: %w", dir, err)
	}
	// The table files of NewLoadBatch are written as Pebble writes its own
	// (Open fills in the defaults of a copy of opts, so fill in this one's).
	opts.EnsureDefaults()
	writer := opts.MakeWriterOptions(0, pdb.FormatMajorVersion().MaxTableFormat())
	return &DB{pdb: pdb, lock: lock, dir: dir, stalls: stalls, bgErrors: bgErrors, writer: writer, fs: fs}, nil
}

// listener reports Pebble's events: corruption and background errors at
// error level, write stalls as warnings, each counted in stalls and
// bgErrors; background errors and stalls log at most a line a second.
func listener(dir string, log *slog.Logger, stalls, bgErrors *atomic.Int64) *pebble.EventListener {
	background := &rateLimited{log: log, interval: time.Second}
	stallLog := &rateLimited{log: log, interval: time.Second}
	return &pebble.EventListener{
		// Pebble's default treats a checksum mismatch as fatal. Report it
		// as an error instead: Open then wipes the store, and a read in a
		// running worker fails its partition, whose restart rebuilds the
		// state from the changelog.
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			log.Error("store data corruption", "path", info.Path, "error", info.Details)
		},
		// A failing background write is retried at once and reported
		// each time; on a full disk that would be thousands of lines a
		// second.
		BackgroundError: func(err error) {
			bgErrors.Add(1)
			background.Error("store background error", "dir", dir, "error", err)
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			stalls.Add(1)
			stallLog.Warn("store write stall", "reason", info.Reason)
		},
	}
}

// Close flushes memtables, closes the store and releases its directory.
func (d *DB) Close() error {
	defer d.lock.Close()
	d.closing.Lock()
	d.closed = true
	d.closing.Unlock()
	if err := d.pdb.Flush(); err != nil {
		_ = d.pdb.Close()
		return fmt.Errorf("flush store: %w", err)
	}
	return d.pdb.Close()
}

// Metrics exposes Pebble's metrics for gauges.
func (d *DB) Metrics() *pebble.Metrics { return d.pdb.Metrics() }

// Key layout. Every key starts with a kind byte, the table name, a zero byte
// and the partition as a big-endian uint32:
//
//	'd' table 0x00 partition userkey   a value
//	'm' table 0x00 partition           the checkpoint
//	'f' table 0x00                     the table's definition
const (
	kindData       = 'd'
	kindMeta       = 'm'
	kindDefinition = 'f'
)

func definitionKey(table string) []byte {
	return append(append([]byte{kindDefinition}, table...), 0)
}

// Definition returns what SetDefinition recorded for a table; ok is false
// when nothing was.
func (d *DB) Definition(table string) (def string, ok bool, err error) {
	v, closer, err := d.pdb.Get(definitionKey(table))
	if errors.Is(err, pebble.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read definition of %s: %w", table, err)
	}
	defer closer.Close()
	return string(v), true, nil
}

// SetDefinition records how a table's data is laid out (a windowed
// table's window, say), so that a later start with another layout can be
// refused instead of reading the old data wrongly. It survives partition
// wipes; a wipe of the whole store removes it with the data.
func (d *DB) SetDefinition(table, def string) error {
	if err := d.pdb.Set(definitionKey(table), []byte(def), pebble.Sync); err != nil {
		return fmt.Errorf("record definition of %s: %w", table, err)
	}
	return nil
}

func prefix(kind byte, table string, partition int32, extra int) []byte {
	return appendPrefix(make([]byte, 0, 1+len(table)+1+4+extra), kind, table, partition)
}

func appendPrefix(k []byte, kind byte, table string, partition int32) []byte {
	k = append(k, kind)
	k = append(k, table...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, uint32(partition))
}

// DataKey returns the store key of userKey in a table partition.
func DataKey(table string, partition int32, userKey []byte) []byte {
	return append(prefix(kindData, table, partition, len(userKey)), userKey...)
}

// AppendDataKey appends the store key of userKey in a table partition to
// dst.
func AppendDataKey(dst []byte, table string, partition int32, userKey []byte) []byte {
	return append(appendPrefix(dst, kindData, table, partition), userKey...)
}

// dataBounds returns the key range of a whole table partition.
func dataBounds(table string, partition int32) (lo, hi []byte) {
	lo = prefix(kindData, table, partition, 0)
	// Partitions are never negative, so partition+1 sorts after partition
	// even at the top of the int32 range once read as uint32.
	hi = prefix(kindData, table, partition+1, 0)
	return lo, hi
}

// Checkpoint is what the store knows about a table partition: the changelog
// offset of the last record its values include, the partition's newest
// event time (Unix ms) used for window expiry, and the start (Unix ms)
// below which every window is closed and its result emitted (windowed
// tables; 0 for none yet).
type Checkpoint struct {
	Offset    int64
	Watermark int64
	Closed    int64
}

// Checkpoint returns the stored checkpoint of a table partition; ok is false
// when the store holds nothing for it.
func (d *DB) Checkpoint(table string, partition int32) (cp Checkpoint, ok bool, err error) {
	v, closer, err := d.pdb.Get(prefix(kindMeta, table, partition, 0))
	if errors.Is(err, pebble.ErrNotFound) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint %s/%d: %w", table, partition, err)
	}
	defer closer.Close()
	// 16 bytes: written before windows closed.
	if len(v) != 16 && len(v) != 24 {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint %s/%d: %d bytes, want 16 or 24", table, partition, len(v))
	}
	cp = Checkpoint{
		Offset:    int64(binary.BigEndian.Uint64(v)),
		Watermark: int64(binary.BigEndian.Uint64(v[8:])),
	}
	if len(v) == 24 {
		cp.Closed = int64(binary.BigEndian.Uint64(v[16:]))
	}
	return cp, true, nil
}

// Get appends the value of key to dst. ok is false when the key is absent.
func (d *DB) Get(dst, key []byte) (val []byte, ok bool, err error) {
	v, closer, err := d.pdb.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return dst, false, nil
	}
	if err != nil {
		return dst, false, err
	}
	dst = append(dst, v...)
	return dst, true, closer.Close()
}

// Scan calls fn for each key of a table partition that starts with
// userPrefix, in key order, passing the user key (without the store prefix).
// The slices are only valid during the call.
func (d *DB) Scan(table string, partition int32, userPrefix []byte, fn func(userKey, value []byte) error) error {
	lo := DataKey(table, partition, userPrefix)
	var hi []byte
	if len(userPrefix) == 0 {
		_, hi = dataBounds(table, partition)
	} else {
		hi = upperBound(lo)
	}
	return d.scan(table, partition, lo, hi, fn)
}

// ScanRange is Scan over the user keys in [from, to).
func (d *DB) ScanRange(table string, partition int32, from, to []byte, fn func(userKey, value []byte) error) error {
	return d.scan(table, partition, DataKey(table, partition, from), DataKey(table, partition, to), fn)
}

func (d *DB) scan(table string, partition int32, lo, hi []byte, fn func(userKey, value []byte) error) error {
	it, err := d.pdb.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	skip := len(prefix(kindData, table, partition, 0))
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return err
		}
		if err := fn(it.Key()[skip:], v); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close()
}

// Keys calls fn with up to limit user keys of a table partition, in order,
// from the first after the user key after (from the first key when after
// is nil). It returns the last key it passed to fn and whether the
// partition holds more; after Close it returns ErrClosed.
func (d *DB) Keys(table string, partition int32, after []byte, limit int, fn func(userKey []byte)) (last []byte, more bool, err error) {
	d.closing.RLock()
	defer d.closing.RUnlock()
	if d.closed {
		return nil, false, ErrClosed
	}
	lo, hi := dataBounds(table, partition)
	if after != nil {
		// The smallest key greater than after: after with a zero byte.
		lo = append(AppendDataKey(nil, table, partition, after), 0)
	}
	it, err := d.pdb.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, err
	}
	skip := len(prefix(kindData, table, partition, 0))
	n := 0
	ok := it.First()
	for ; ok && n < limit; ok = it.Next() {
		last = append(last[:0], it.Key()[skip:]...)
		fn(last)
		n++
	}
	if err := it.Close(); err != nil {
		return nil, false, err
	}
	return last, ok, nil
}

// upperBound returns the smallest key greater than every key with prefix p.
func upperBound(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// Partitions lists the partitions of table that have a checkpoint in the
// store, in order.
func (d *DB) Partitions(table string) ([]int32, error) {
	lo := append(append([]byte{kindMeta}, table...), 0)
	it, err := d.pdb.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: upperBound(lo)})
	if err != nil {
		return nil, err
	}
	var out []int32
	for ok := it.First(); ok; ok = it.Next() {
		if k := it.Key(); len(k) == len(lo)+4 {
			out = append(out, int32(binary.BigEndian.Uint32(k[len(lo):])))
		}
	}
	return out, it.Close()
}

// WipePartition removes every value and the checkpoint of a table partition.
func (d *DB) WipePartition(table string, partition int32) error {
	b := d.NewBatch()
	lo, hi := dataBounds(table, partition)
	if err := b.b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	if err := b.b.Delete(prefix(kindMeta, table, partition, 0), nil); err != nil {
		return err
	}
	return b.Commit()
}

// Batch is an atomic group of writes.
type Batch struct {
	b   *pebble.Batch
	key []byte // scratch for the store keys of SetData and DeleteData
	// load, when not nil, holds the data writes of a batch of NewLoadBatch
	// until a range deletion is made (ranged); db ingests them.
	db     *DB
	load   *loading
	ranged bool
}

// NewBatch starts a batch.
func (d *DB) NewBatch() *Batch { return &Batch{b: d.pdb.NewBatch()} }

// Set writes value under a store key made with DataKey.
func (b *Batch) Set(key, value []byte) error { return b.b.Set(key, value, nil) }

// Delete removes a store key made with DataKey.
func (b *Batch) Delete(key []byte) error { return b.b.Delete(key, nil) }

// SetData sets userKey of a table partition to value. The batch copies both,
// so the caller may reuse them at once.
func (b *Batch) SetData(table string, partition int32, userKey, value []byte) error {
	b.key = AppendDataKey(b.key[:0], table, partition, userKey)
	if b.load != nil && !b.ranged {
		b.load.add(b.key, value, false)
		return nil
	}
	return b.b.Set(b.key, value, nil)
}

// DeleteData removes userKey of a table partition.
func (b *Batch) DeleteData(table string, partition int32, userKey []byte) error {
	b.key = AppendDataKey(b.key[:0], table, partition, userKey)
	if b.load != nil && !b.ranged {
		b.load.add(b.key, nil, true)
		return nil
	}
	return b.b.Delete(b.key, nil)
}

// DeleteBelow removes every key of a table partition whose user key sorts
// before userKey. Windowed tables order keys by window start, so expiry is
// one range deletion.
func (b *Batch) DeleteBelow(table string, partition int32, userKey []byte) error {
	lo, _ := dataBounds(table, partition)
	b.ranged = true
	return b.b.DeleteRange(lo, DataKey(table, partition, userKey), nil)
}

// SetCheckpoint records the checkpoint of a table partition in the batch.
func (b *Batch) SetCheckpoint(table string, partition int32, cp Checkpoint) error {
	var v [24]byte
	binary.BigEndian.PutUint64(v[:], uint64(cp.Offset))
	binary.BigEndian.PutUint64(v[8:], uint64(cp.Watermark))
	binary.BigEndian.PutUint64(v[16:], uint64(cp.Closed))
	return b.b.Set(prefix(kindMeta, table, partition, 0), v[:], nil)
}

// Len is the number of operations in the batch.
func (b *Batch) Len() int {
	if b.load != nil {
		return int(b.b.Count()) + len(b.load.ops)
	}
	return int(b.b.Count())
}

// Commit applies the batch atomically and syncs it (see the package doc).
// A batch of NewLoadBatch ingests its data writes first.
func (b *Batch) Commit() error {
	defer b.close()
	if b.load != nil {
		if err := b.ingest(); err != nil {
			return err
		}
	}
	return b.b.Commit(pebble.Sync)
}

// CommitUnsynced applies the batch atomically without waiting for the disk:
// a crash may lose it, and any unsynced batch before it, but never part of
// it, and the next synced Commit makes every earlier batch durable too. For
// batches that carry their own checkpoint and may be redone, such as a
// recovery's.
//
// A batch of NewLoadBatch that wrote a table file is synced all the same:
// the file is on disk already, and Pebble holds small unsynced writes in
// its buffer until a block fills, so an unsynced checkpoint would be lost
// to a crash together with the progress of every file before it.
func (b *Batch) CommitUnsynced() error {
	defer b.close()
	if b.load != nil && len(b.load.ops) > 0 {
		if err := b.ingest(); err != nil {
			return err
		}
		return b.b.Commit(pebble.Sync)
	}
	return b.b.Commit(pebble.NoSync)
}

// Discard drops the batch without applying it.
func (b *Batch) Discard() { b.close() }

func (b *Batch) close() {
	_ = b.b.Close()
	b.release()
}

// pebbleLogger routes Pebble's logs through slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf must not return: Pebble calls it when continuing would corrupt the
// store. The process dies and the changelog rebuilds the state on restart.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "component", "pebble", "fatal", true)
	panic("pebble: " + msg)
}
