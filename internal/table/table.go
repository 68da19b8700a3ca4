// Package table implements Faust-style tables: key/value state partitioned
// exactly like the source topic, kept in the local store and backed by a
// Kafka changelog topic.
//
// Updates go to a per-partition write-back cache. The stream runtime flushes
// it once per commit interval: the dirty keys become changelog records (many
// updates of one key in an interval become one record), and once the broker
// has acknowledged them the values and the changelog offset are written to
// the store in one batch. Reads see the cache first and the store second.
//
// Table is a plain table; Windowed keeps one value per key and tumbling
// window and expires old windows by range deletion.
package table

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gofaust/pageviews/internal/store"
)

// Codec turns values into bytes and back. The same bytes are stored locally
// and written to the changelog.
type Codec[V any] interface {
	// Append appends v's encoding to dst and returns the extended slice,
	// as strconv's Append functions do; a flush encodes many values into
	// one buffer this way.
	Append(dst []byte, v V) []byte
	Decode(b []byte) (V, error)
}

// Int64 stores integers as decimal text, readable with any Kafka tool.
type Int64 struct{}

// Append implements Codec.
func (Int64) Append(dst []byte, v int64) []byte { return strconv.AppendInt(dst, v, 10) }

// Decode implements Codec.
func (Int64) Decode(b []byte) (int64, error) { return parseDecimal(b) }

// ErrNotAssigned is returned when a partition is used that this worker does
// not hold.
var ErrNotAssigned = errors.New("partition not assigned to this worker")

// Record is a record produced by a flush: to the table's changelog, in
// the table's partition, or, when Topic is set, to that topic (a closed
// window's result).
type Record struct {
	Topic      string
	Key, Value []byte
	Timestamp  time.Time
	// Headers go with the record to the changelog.
	Headers []Header
}

// Header is a changelog record header.
type Header struct {
	Key   string
	Value []byte
}

// maxCleanEntries bounds the clean entries one partition keeps cached
// between flushes; above it the clean entries are dropped after a flush.
const maxCleanEntries = 1 << 16

// core holds what Table and Windowed share: partitions, cache and store.
type core[V any] struct {
	name      string
	changelog string
	codec     Codec[V]
	db        *store.DB

	// toChangelog and fromChangelog convert between user keys (the store's
	// layout) and changelog keys.
	toChangelog   func(dst, userKey []byte) []byte
	fromChangelog func(dst, changelogKey []byte) ([]byte, error)

	// parts holds each partition's state at its index (nil: not held).
	// Assign and Revoke, rare, replace the slice under mu; every update
	// reads it without a lock (a read lock's shared counter, written by
	// every partition's goroutine, cost more than the lookup) and without
	// hashing (a map lookup per update cost 3% of the agent).
	mu    sync.Mutex
	parts atomic.Pointer[[]*part[V]]

	retrieved, updated, deleted, expired, skipped atomic.Int64
	// filtering counts the partitions with a key filter (built or being
	// built), whose data writes must add their keys to it.
	filtering atomic.Int32
}

// Stats are a table's cumulative counters and its cache size.
type Stats struct {
	Retrieved int64 // keys read from the store (cache misses that found a value)
	Updated   int64 // keys flushed to the changelog
	Deleted   int64 // keys deleted by changelog tombstones
	Expired   int64 // windows expired
	Skipped   int64 // store lookups skipped: the key filter had never seen the key
	Cached    int   // keys in the write-back caches
}

// Stats returns the table's counters.
func (c *core[V]) Stats() Stats {
	st := Stats{
		Retrieved: c.retrieved.Load(), Updated: c.updated.Load(),
		Deleted: c.deleted.Load(), Expired: c.expired.Load(), Skipped: c.skipped.Load(),
	}
	for _, pt := range *c.parts.Load() {
		if pt == nil {
			continue
		}
		pt.mu.Lock()
		st.Cached += len(pt.cache)
		pt.mu.Unlock()
	}
	return st
}

type entry[V any] struct {
	key   string // the cache's key, so a flush reads the dirty list without a lookup
	val   V
	dirty bool
}

type part[V any] struct {
	mu        sync.Mutex
	cache     map[string]*entry[V]
	dirty     []*entry[V] // dirty entries, in first-update order; expiry clears an entry's flag as it drops it
	watermark int64       // newest event time (Unix ms) seen, for expiry
	offset    int64       // changelog offset of the last record the store holds; -1 for none
	// flushing holds what the last Flush handed out, as sent: Write stores
	// exactly these values, so the store never holds a value the changelog
	// lacks. Flushed clears it.
	flushing []flushed
	scratch  []byte
	valBuf   []byte
	// expiredTo is the expiry cut-off of the last expiry (windowed tables).
	expiredTo int64
	// evictedBelow is the window start below which the cache holds no
	// entries: closed windows' (windowed tables: Windowed.Flushed).
	evictedBelow int64
	// filter, once built, answers whether the store may hold a key, so a
	// cache miss of a key it has never seen skips the store lookup;
	// building is the next filter, while its keys are read from the store
	// (from the partition's first update, and after a flush once the
	// filter holds twice the keys it was built with: deleted keys stay in
	// it). A build reads the store, so it starts only when every key
	// written so far is there.
	// Every data write adds its key to both. builtKeys is the filter's
	// keys when built; unfiltered is set when a build failed.
	filter, building *keyFilter
	builtKeys        int
	unfiltered       bool
	// rangedTo is the cut-off of the last expiry range deletion stored,
	// ranging that of the one the last Flush's batch holds; both are
	// math.MinInt64 when there is none.
	ranging, rangedTo int64
	// Windowed tables close windows: every window starting before closed
	// is closed and its result emitted (durable: in the store's checkpoint
	// and the changelog). closing is where the last Flush closed up to,
	// before that flush is stored; wallClose is the wall-clock time (Unix
	// ms) the partition was last caught up at, which closes windows too.
	closed, closing, wallClose int64
	// observed is where Close.Closed was last told of closed windows: a
	// flush done again does not count them twice.
	observed int64
	starts   []int64
}

// forgetRanges makes the next expiry delete its range again.
func (pt *part[V]) forgetRanges() { pt.ranging, pt.rangedTo = math.MinInt64, math.MinInt64 }

// checkpoint is the partition's checkpoint; pt.mu is held.
func (pt *part[V]) checkpoint() store.Checkpoint {
	return store.Checkpoint{Offset: pt.offset, Watermark: pt.watermark, Closed: max(pt.closed, pt.closing)}
}

type flushed struct {
	key   string
	value []byte
}

// Name is the table's name, also its store key space.
func (c *core[V]) Name() string { return c.name }

// Changelog is the table's changelog topic.
func (c *core[V]) Changelog() string { return c.changelog }

func (c *core[V]) part(p int32) (*part[V], error) {
	var pt *part[V]
	if parts := *c.parts.Load(); p >= 0 && int(p) < len(parts) {
		pt = parts[p]
	}
	if pt == nil {
		return nil, fmt.Errorf("table %s partition %d: %w", c.name, p, ErrNotAssigned)
	}
	return pt, nil
}

// Assign makes partition p usable, starting from what the store holds, and
// returns the stored checkpoint (ok false if the store holds nothing).
func (c *core[V]) Assign(p int32) (store.Checkpoint, bool, error) {
	if p < 0 {
		return store.Checkpoint{}, false, fmt.Errorf("table %s: partition %d: a partition is not negative", c.name, p)
	}
	cp, ok, err := c.db.Checkpoint(c.name, p)
	if err != nil {
		return cp, false, err
	}
	pt := &part[V]{cache: make(map[string]*entry[V]), offset: -1}
	pt.forgetRanges()
	if ok {
		pt.offset, pt.watermark, pt.closed = cp.Offset, cp.Watermark, cp.Closed
	}
	c.setPart(p, pt)
	return cp, ok, nil
}

// Revoke forgets partition p. Its store contents stay for a later
// assignment; unflushed updates are dropped, so flush first.
func (c *core[V]) Revoke(p int32) {
	pt := c.setPart(p, nil)
	if pt != nil {
		pt.mu.Lock()
		c.dropFilter(pt) // a build in progress stops
		pt.mu.Unlock()
	}
}

// startBuild starts building partition pt's key filter from the store, in
// the background; pt.mu is held. Until it is built, the filter in use (if
// any) answers.
func (c *core[V]) startBuild(p int32, pt *part[V], capacity int) {
	if pt.filter == nil {
		c.filtering.Add(1)
	}
	f := newKeyFilter(capacity)
	pt.building = f
	go c.build(p, pt, f)
}

// buildChunk is how many keys a build reads from the store at a time, and
// adds with the partition locked.
const buildChunk = 1024

// builtChunk, when set (by tests), is called after each chunk a build adds.
var builtChunk func()

// build adds every key the store holds for partition pt to f, then makes f
// the partition's filter. A write made meanwhile adds its key itself, so a
// key stored before or during the build is in f; one the scan reads and a
// write adds again is counted once.
func (c *core[V]) build(p int32, pt *part[V], f *keyFilter) {
	hashes := make([]uint64, 0, buildChunk)
	var after []byte
	for {
		hashes = hashes[:0]
		last, more, err := c.db.Keys(c.name, p, after, buildChunk, func(k []byte) {
			hashes = append(hashes, hashKey(k))
		})
		after = append(after[:0], last...)
		pt.mu.Lock()
		if pt.building != f { // revoked, or replaced
			pt.mu.Unlock()
			return
		}
		if err != nil {
			// The table works without a filter: every miss reads the
			// store, as before there was one. The lookups that follow
			// report a failing store.
			pt.unfiltered = true
			c.dropFilter(pt)
			pt.mu.Unlock()
			return
		}
		for _, h := range hashes {
			f.add(h)
		}
		if !more {
			pt.filter, pt.building, pt.builtKeys = f, nil, f.keys
		}
		pt.mu.Unlock()
		if !more {
			return
		}
		if builtChunk != nil {
			builtChunk()
		}
	}
}

// dropFilter forgets partition pt's filters; pt.mu is held.
func (c *core[V]) dropFilter(pt *part[V]) {
	if pt.filtered() {
		c.filtering.Add(-1)
	}
	pt.filter, pt.building = nil, nil
}

// filtered reports whether pt has a filter, built or being built, that a
// data write must add its key to; pt.mu is held.
func (pt *part[V]) filtered() bool { return pt.filter != nil || pt.building != nil }

// remember adds a key written to the store to pt's filters; pt.mu is held.
func (pt *part[V]) remember(h uint64) {
	if pt.building != nil {
		pt.building.add(h)
	}
	if pt.filter != nil {
		pt.filter.add(h)
	}
}

// setPart replaces partition p's state with pt (nil removes it) and
// returns the state it replaced.
func (c *core[V]) setPart(p int32, pt *part[V]) *part[V] {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.parts.Load()
	if p < 0 || int(p) >= len(old) && pt == nil {
		return nil
	}
	parts := make([]*part[V], max(len(old), int(p)+1))
	copy(parts, old)
	prev := parts[p]
	parts[p] = pt
	c.parts.Store(&parts)
	return prev
}

// Partitions lists the partitions this worker holds.
func (c *core[V]) Partitions() []int32 {
	out := []int32{}
	for p, pt := range *c.parts.Load() {
		if pt != nil {
			out = append(out, int32(p))
		}
	}
	return out
}

// Wipe deletes everything the store holds for partition p, so it is rebuilt
// from offset 0 of the changelog.
func (c *core[V]) Wipe(p int32) error {
	if err := c.db.WipePartition(c.name, p); err != nil {
		return fmt.Errorf("wipe %s/%d: %w", c.name, p, err)
	}
	if pt, err := c.part(p); err == nil {
		pt.mu.Lock()
		clear(pt.cache)
		pt.dirty, pt.offset, pt.watermark = nil, -1, 0
		pt.closed, pt.closing, pt.wallClose, pt.evictedBelow = 0, 0, 0, 0
		pt.forgetRanges()
		pt.mu.Unlock()
	}
	return nil
}

// update applies fn to the value of userKey in partition pt; pt.mu is held.
func (c *core[V]) update(p int32, pt *part[V], userKey []byte, fn func(V) V) error {
	if e, ok := pt.cache[string(userKey)]; ok {
		e.val = fn(e.val)
		if !e.dirty {
			e.dirty = true
			pt.dirty = append(pt.dirty, e)
		}
		return nil
	}
	if pt.filter == nil && pt.building == nil && !pt.unfiltered {
		// Started here, not at Assign: a partition's updates begin once
		// its recovery is stored, and never run beside a replay into it.
		c.startBuild(p, pt, 0)
	}
	v, _, err := c.load(p, pt, userKey)
	if err != nil {
		return err
	}
	k := string(userKey)
	e := &entry[V]{key: k, val: fn(v), dirty: true}
	pt.cache[k] = e
	pt.dirty = append(pt.dirty, e)
	return nil
}

// load reads userKey from the store; pt.mu is held.
func (c *core[V]) load(p int32, pt *part[V], userKey []byte) (V, bool, error) {
	var zero V
	if pt.filter != nil && !pt.filter.mayHold(hashKey(userKey)) {
		c.skipped.Add(1)
		return zero, false, nil
	}
	buf, ok, err := c.db.Get(pt.valBuf[:0], store.DataKey(c.name, p, userKey))
	pt.valBuf = buf
	if err != nil {
		return zero, false, fmt.Errorf("read %s/%d: %w", c.name, p, err)
	}
	if !ok {
		return zero, false, nil
	}
	c.retrieved.Add(1)
	v, err := c.codec.Decode(buf)
	if err != nil {
		return zero, false, fmt.Errorf("decode %s/%d: %w", c.name, p, err)
	}
	return v, true, nil
}

// get reads userKey through the cache.
func (c *core[V]) get(p int32, userKey []byte) (V, bool, error) {
	pt, err := c.part(p)
	if err != nil {
		var zero V
		return zero, false, err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if e, ok := pt.cache[string(userKey)]; ok {
		return e.val, true, nil
	}
	return c.load(p, pt, userKey)
}

// scanRange calls fn for every key of partition pt in [from, to), merging
// the cache over the store; pt.mu is held.
func (c *core[V]) scanRange(p int32, pt *part[V], from, to []byte, fn func(userKey []byte, v V)) error {
	return c.merge(p, pt, func(k string) bool { return k >= string(from) && k < string(to) },
		func(f func(k, raw []byte) error) error { return c.db.ScanRange(c.name, p, from, to, f) }, fn)
}

// scan calls fn for every key of partition p under userPrefix, merging the
// cache over the store.
func (c *core[V]) scan(p int32, userPrefix []byte, fn func(userKey []byte, v V)) error {
	pt, err := c.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return c.merge(p, pt, func(k string) bool { return strings.HasPrefix(k, string(userPrefix)) },
		func(f func(k, raw []byte) error) error { return c.db.Scan(c.name, p, userPrefix, f) }, fn)
}

// merge calls fn for every key the store scan yields that the cache does
// not hold, then for every cached key in; pt.mu is held.
func (c *core[V]) merge(p int32, pt *part[V], in func(string) bool, scan func(func(k, raw []byte) error) error, fn func(userKey []byte, v V)) error {
	err := scan(func(k, raw []byte) error {
		if _, cached := pt.cache[string(k)]; cached {
			return nil
		}
		v, err := c.codec.Decode(raw)
		if err != nil {
			return fmt.Errorf("decode %s/%d: %w", c.name, p, err)
		}
		fn(k, v)
		return nil
	})
	if err != nil {
		return err
	}
	for k, e := range pt.cache {
		if in(k) {
			fn([]byte(k), e.val)
		}
	}
	return nil
}

// Flush returns the changelog records of partition p's dirty keys and marks
// them clean; an update after Flush makes a key dirty again for the next
// flush. The caller produces the records, waits for the acknowledgements,
// then calls Write and, after the store batch commits, Flushed. A Flush that
// follows an unfinished one (no Flushed) hands out the unfinished keys
// again, so nothing is lost when a flush fails half-way.
func (c *core[V]) Flush(p int32, ts time.Time) ([]Record, error) {
	pt, err := c.part(p)
	if err != nil {
		return nil, err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, f := range pt.flushing {
		if e := pt.cache[f.key]; e != nil && !e.dirty {
			e.dirty = true
			pt.dirty = append(pt.dirty, e)
		}
	}
	pt.flushing = pt.flushing[:0]
	recs := make([]Record, 0, len(pt.dirty))
	var buf []byte // the records' keys and values, flushChunk bytes at a time rather than two allocations each
	for _, e := range pt.dirty {
		if !e.dirty { // expired while dirty
			continue
		}
		e.dirty = false
		if cap(buf)-len(buf) < 2*len(e.key)+32 {
			buf = make([]byte, 0, max(flushChunk, 2*len(e.key)+32))
		}
		// Each append may outgrow buf into a new array: what earlier
		// records hold stays in the old one.
		n := len(buf)
		buf = c.toChangelog(buf, unsafe.Slice(unsafe.StringData(e.key), len(e.key))) // read, not kept
		key := buf[n:len(buf):len(buf)]
		n = len(buf)
		buf = c.codec.Append(buf, e.val)
		v := buf[n:len(buf):len(buf)]
		pt.flushing = append(pt.flushing, flushed{key: e.key, value: v})
		recs = append(recs, Record{Key: key, Value: v, Timestamp: ts})
	}
	clear(pt.dirty) // let go of entries the cache drops
	pt.dirty = pt.dirty[:0]
	c.updated.Add(int64(len(recs)))
	return recs, nil
}

// flushChunk is the size of the buffers a flush encodes its records into.
const flushChunk = 32 << 10

// write adds the flushed values and the checkpoint to batch b. offset is the
// highest changelog offset acknowledged for this flush, or -1 when the flush
// produced nothing for this table.
func (c *core[V]) write(p int32, b *store.Batch, offset int64, expire func(pt *part[V]) error) error {
	pt, err := c.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, f := range pt.flushing {
		if err := b.SetData(c.name, p, []byte(f.key), f.value); err != nil {
			return err
		}
		if pt.filtered() {
			pt.remember(hashString(f.key))
		}
	}
	if expire != nil {
		if err := expire(pt); err != nil {
			return err
		}
	}
	if offset > pt.offset {
		pt.offset = offset
	}
	return b.SetCheckpoint(c.name, p, pt.checkpoint())
}

// Flushed ends the last flush once the store batch holding it has
// committed, and bounds the cache.
func (c *core[V]) Flushed(p int32) {
	pt, err := c.part(p)
	if err != nil {
		return
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.flushing = pt.flushing[:0]
	pt.closed = max(pt.closed, pt.closing)
	pt.rangedTo = max(pt.rangedTo, pt.ranging)
	// Build the filter again once it has grown to twice its keys: it keeps
	// the keys of expired windows. Only here, with every key written so far
	// in the store, which the build reads.
	if pt.filter != nil && pt.building == nil && pt.filter.keys > 2*pt.builtKeys+firstFilterKeys {
		c.startBuild(p, pt, pt.filter.keys)
	}
	if len(pt.cache) > maxCleanEntries {
		// Drop the clean entries: empty the map and put back the dirty
		// ones, every one of which the dirty list holds. At a million
		// keys most of the cache is clean here, and clearing it costs a
		// fraction of deleting each entry in a walk over it.
		clear(pt.cache)
		for _, e := range pt.dirty {
			if e.dirty {
				pt.cache[e.key] = e
			}
		}
	}
}

// Dirty is how many keys of partition p changed since they were last
// handed out by Flush.
func (c *core[V]) Dirty(p int32) int {
	pt, err := c.part(p)
	if err != nil {
		return 0
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return len(pt.dirty)
}

// Restore applies one changelog record during recovery to batch b. A nil
// value deletes the key.
func (c *core[V]) restore(p int32, b *store.Batch, key, value []byte, scratch []byte) ([]byte, error) {
	uk, err := c.fromChangelog(scratch[:0], key)
	if err != nil {
		return scratch, fmt.Errorf("changelog %s/%d key %q: %w", c.changelog, p, key, err)
	}
	if value == nil {
		c.deleted.Add(1)
		return uk, b.DeleteData(c.name, p, uk)
	}
	if _, err := c.codec.Decode(value); err != nil {
		return uk, fmt.Errorf("changelog %s/%d value %q: %w", c.changelog, p, value, err)
	}
	return uk, b.SetData(c.name, p, uk, value)
}

// Table is a plain (not windowed) table.
type Table[V any] struct {
	core[V]
}

// New returns a plain table named name, backed by changelog.
func New[V any](name, changelog string, codec Codec[V], db *store.DB) *Table[V] {
	ident := func(dst, k []byte) []byte { return append(dst, k...) }
	t := &Table[V]{core[V]{
		name: name, changelog: changelog, codec: codec, db: db,
		toChangelog:   ident,
		fromChangelog: func(dst, k []byte) ([]byte, error) { return append(dst, k...), nil },
	}}
	t.parts.Store(&[]*part[V]{})
	return t
}

// Update applies fn to the value of key in partition p (the zero value when
// absent).
func (t *Table[V]) Update(p int32, key string, fn func(V) V) error {
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.scratch = append(pt.scratch[:0], key...)
	return t.update(p, pt, pt.scratch, fn)
}

// Get returns the value of key in partition p.
func (t *Table[V]) Get(p int32, key string) (V, bool, error) {
	return t.get(p, []byte(key))
}

// Scan calls fn for every key of partition p.
func (t *Table[V]) Scan(p int32, fn func(key string, v V)) error {
	return t.scan(p, nil, func(k []byte, v V) { fn(string(k), v) })
}

// Write adds the last flush of partition p to batch b.
func (t *Table[V]) Write(p int32, b *store.Batch, offset int64) error {
	return t.write(p, b, offset, nil)
}

// Restore applies one changelog record to batch b during recovery.
func (t *Table[V]) Restore(p int32, b *store.Batch, key, value []byte, _ time.Time) error {
	uk, err := t.restore(p, b, key, value, nil)
	if err != nil || value == nil || t.filtering.Load() == 0 {
		// No partition has a filter: the usual case of a replay, which
		// runs before its partition's first update starts one.
		return err
	}
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	if pt.filtered() {
		pt.remember(hashKey(uk))
	}
	pt.mu.Unlock()
	return nil
}

// Recovered finishes recovery of partition p once the store holds every
// changelog record up to offset.
func (t *Table[V]) Recovered(p int32, b *store.Batch, offset int64) error {
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if offset > pt.offset {
		pt.offset = offset
	}
	return b.SetCheckpoint(t.name, p, pt.checkpoint())
}

// parseDecimal is strconv.ParseInt(string(b), 10, 64) without the string
// copy: changelog keys and values are parsed once a record during recovery,
// and the copy was a sizeable part of it. What the fast path does not take
// (a sign, anything but digits, 19 digits or more) goes to strconv, so the
// results and errors are strconv's.
func parseDecimal(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 18 {
		return strconv.ParseInt(string(b), 10, 64)
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return strconv.ParseInt(string(b), 10, 64)
		}
		n = n*10 + int64(c-'0') // at most 18 digits: no overflow
	}
	return n, nil
}
