package table

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/window"
)

// Windowed is a table with one value per key and window (hopping, or
// tumbling).
//
// In the store a key is the window start (8 bytes, order-preserving) followed
// by the user's key, so that all keys of a window are adjacent and expiring
// every window before a cut-off is one range deletion. In the changelog a
// key is the user's key, '|', and the window start in Unix milliseconds.
type Windowed[V any] struct {
	core[V]
	win     window.Hopping
	clock   func() time.Time
	onClose *Close[V]
}

// Close is what a windowed table does when a window closes: for each key
// with a value in the window, Emit returns the value of the record sent to
// Topic, keyed by the key and timestamped with the window's end (nil sends
// nothing; an error fails the flush). The records go out with the flush
// that closes the window: in its transaction under exactly-once.
type Close[V any] struct {
	Topic string
	Emit  func(key string, start, end time.Time, v V) ([]byte, error)
	// Closed, if set, is told of each closed window that held a value, and
	// how long after its end plus grace the flush closed it.
	Closed func(p int32, lag time.Duration)
}

// OnClose sets what closing a window does.
func (t *Windowed[V]) OnClose(c Close[V]) { t.onClose = &c }

// closedKey is the changelog key of a partition's closed-up-to point, the
// window start below which every window is closed (a decimal in Unix ms).
// A window key always ends in '|' and digits, so this one is never one.
const closedKey = "\x00closed"

// MaxClockSkew is how far past the wall clock an event time may move a
// partition's stream time (the newest event time, from which windows
// expire) in UpdateAt. Events further ahead still count in their own
// window.
const MaxClockSkew = 5 * time.Second

// NewWindowed returns a windowed table. clock gives wall-clock time for Now.
func NewWindowed[V any](name, changelog string, codec Codec[V], db *store.DB, win window.Hopping, clock func() time.Time) *Windowed[V] {
	t := &Windowed[V]{
		core: core[V]{
			name: name, changelog: changelog, codec: codec, db: db,
			toChangelog:   windowToChangelog,
			fromChangelog: windowFromChangelog,
		},
		win:   win,
		clock: clock,
	}
	t.parts.Store(&[]*part[V]{})
	return t
}

// Window returns the table's window definition.
func (t *Windowed[V]) Window() window.Hopping { return t.win }

// DefinitionError is a table whose store was built with other windows than
// the table has now: reading it would mix window sizes.
type DefinitionError struct {
	Table string
	// Field is the first field that differs ("size"), Stored its recorded
	// value and Current the table's.
	Field, Stored, Current string
	// InChangelog: the changelog recorded it, not the store.
	InChangelog bool
}

func (e *DefinitionError) Error() string {
	return fmt.Sprintf("table %s holds windows of %s %s, not %s", e.Table, e.Field, e.Stored, e.Current)
}

// CheckDefinition compares the table's windows with those its store
// recorded, and records them when the store has none (a new or wiped
// store). It returns a *DefinitionError when a recorded field differs.
func (t *Windowed[V]) CheckDefinition() error {
	current := t.win.Definition()
	stored, ok, err := t.db.Definition(t.name)
	if err != nil {
		return err
	}
	if !ok {
		return t.db.SetDefinition(t.name, current)
	}
	now := definitionFields(current)
	for _, f := range strings.Fields(stored) {
		name, value, _ := strings.Cut(f, "=")
		if cur, ok := now[name]; ok && cur != value {
			return &DefinitionError{Table: t.name, Field: name, Stored: value, Current: cur}
		}
	}
	if stored != current {
		// A field was added since the store recorded its definition.
		return t.db.SetDefinition(t.name, current)
	}
	return nil
}

func definitionFields(def string) map[string]string {
	m := make(map[string]string)
	for _, f := range strings.Fields(def) {
		name, value, _ := strings.Cut(f, "=")
		m[name] = value
	}
	return m
}

func appendWindowKey(dst []byte, start int64, key string) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(start)^(1<<63))
	return append(dst, key...)
}

func windowStartOf(userKey []byte) int64 {
	return int64(binary.BigEndian.Uint64(userKey) ^ (1 << 63))
}

func windowToChangelog(dst, userKey []byte) []byte {
	dst = append(dst, userKey[8:]...)
	dst = append(dst, '|')
	return strconv.AppendInt(dst, windowStartOf(userKey), 10)
}

var errWindowKey = errors.New("windowed changelog key must end in |<window start ms>")

func windowFromChangelog(dst, k []byte) ([]byte, error) {
	i := bytes.LastIndexByte(k, '|')
	if i < 0 {
		return dst, errWindowKey
	}
	start, err := parseDecimal(k[i+1:])
	if err != nil {
		return dst, errWindowKey
	}
	return appendWindowKey(dst, start, string(k[:i])), nil
}

// Update applies fn to the value of key in every window holding ts, in
// partition p. It advances the partition's stream time (watermark) to ts.
// applied is false when a window of ts had already closed (the event is
// late): that window's update is dropped.
func (t *Windowed[V]) Update(p int32, key string, ts time.Time, fn func(V) V) (applied bool, err error) {
	return t.UpdateAt(p, key, ts, time.Time{}, fn)
}

// UpdateAt is Update for an event processed at wall-clock time now: stream
// time follows event time, but not past now by more than MaxClockSkew. One
// view stamped by a client whose clock runs ahead would otherwise expire
// every live window and have on-time views dropped as late; the view itself
// still counts in its own window. A zero now sets no limit.
func (t *Windowed[V]) UpdateAt(p int32, key string, ts, now time.Time, fn func(V) V) (applied bool, err error) {
	pt, err := t.part(p)
	if err != nil {
		return false, err
	}
	ms := ts.UnixMilli()
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if ms > pt.watermark {
		st := ms
		if !now.IsZero() {
			st = min(st, now.Add(MaxClockSkew).UnixMilli())
		}
		pt.watermark = max(pt.watermark, st)
	}
	open := t.openFrom(pt)
	applied = true
	pt.starts = t.win.Starts(pt.starts[:0], ms)
	for _, start := range pt.starts {
		if start < open {
			applied = false
			continue
		}
		pt.scratch = appendWindowKey(pt.scratch[:0], start, key)
		if err := t.update(p, pt, pt.scratch, fn); err != nil {
			return false, err
		}
	}
	return applied, nil
}

// openFrom is the start of the oldest window of partition pt still open:
// neither closed by a flush nor by stream time; pt.mu is held.
func (t *Windowed[V]) openFrom(pt *part[V]) int64 {
	from := int64(math.MinInt64) // nothing closed yet
	if pt.closed != 0 || pt.closing != 0 {
		from = max(pt.closed, pt.closing)
	}
	if pt.watermark != 0 {
		from = max(from, t.win.ClosedBelow(pt.watermark))
	}
	return from
}

// CloseAt tells the table that partition p is caught up at the wall-clock
// time now: windows whose end plus grace it has passed close at the next
// flush even if no event moves stream time there. It reports whether a
// window is due to close.
func (t *Windowed[V]) CloseAt(p int32, now time.Time) bool {
	return t.closeAt(p, now, true)
}

// DueAt reports whether CloseAt(p, now) would find a window due, and
// changes nothing.
func (t *Windowed[V]) DueAt(p int32, now time.Time) bool {
	return t.closeAt(p, now, false)
}

func (t *Windowed[V]) closeAt(p int32, now time.Time, set bool) bool {
	pt, err := t.part(p)
	if err != nil {
		return false
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	wall := max(pt.wallClose, now.UnixMilli())
	if set {
		pt.wallClose = wall
	}
	return pt.watermark != 0 && t.win.ClosedBelow(max(pt.watermark, wall)) > max(pt.closed, pt.closing)
}

// closeWindows returns the records of the windows of partition p that are
// closed now and were not at the last flush that was stored: the close
// handler's results and the new closed-up-to point. A flush done again
// after one that failed returns them again. pt.mu is held.
func (t *Windowed[V]) closeWindows(p int32, pt *part[V]) ([]Record, error) {
	if pt.watermark == 0 {
		return nil, nil // nothing seen: no window to close
	}
	below := t.win.ClosedBelow(max(pt.watermark, pt.wallClose))
	if below <= pt.closed {
		return nil, nil
	}
	pt.closing = max(pt.closing, below)
	var recs []Record
	if c := t.onClose; c != nil {
		// Windows below the last expiry's cut-off are gone; a window that
		// expires with this flush still closes first.
		from := max(pt.closed, pt.expiredTo)
		now := t.clock()
		seen := map[int64]bool{}
		var errs []error
		err := t.scanRange(p, pt, appendWindowKey(nil, from, ""), appendWindowKey(nil, below, ""), func(k []byte, v V) {
			start := windowStartOf(k)
			end := time.UnixMilli(t.win.End(start)).UTC()
			val, err := c.Emit(string(k[8:]), time.UnixMilli(start).UTC(), end, v)
			if err != nil {
				errs = append(errs, fmt.Errorf("close window %s of %q: %w", end.Add(-t.win.Size).Format(time.RFC3339Nano), k[8:], err))
			} else if val != nil {
				// k is the store's, valid only during the call.
				recs = append(recs, Record{Topic: c.Topic, Key: bytes.Clone(k[8:]), Value: val, Timestamp: end})
			}
			if !seen[start] && c.Closed != nil && start >= pt.observed {
				seen[start] = true
				c.Closed(p, max(now.Sub(end.Add(t.win.Grace)), 0))
			}
		})
		if err := errors.Join(append(errs, err)...); err != nil {
			return nil, err
		}
		pt.observed = max(pt.observed, below)
		// In window order, then key order (the cache's entries come last).
		slices.SortFunc(recs, func(a, b Record) int {
			return cmp.Or(a.Timestamp.Compare(b.Timestamp), bytes.Compare(a.Key, b.Key))
		})
	}
	marker := Record{Key: []byte(closedKey), Value: strconv.AppendInt(nil, below, 10), Timestamp: time.UnixMilli(pt.watermark)}
	return append(recs, marker), nil
}

// Get returns the value of key in the window starting at start. Expired
// windows read as absent.
func (t *Windowed[V]) Get(p int32, key string, start int64) (V, bool, error) {
	var zero V
	pt, err := t.part(p)
	if err != nil {
		return zero, false, err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if t.win.Expired(start, pt.watermark) {
		return zero, false, nil
	}
	uk := appendWindowKey(nil, start, key)
	if e, ok := pt.cache[string(uk)]; ok {
		return e.val, true, nil
	}
	return t.load(p, pt, uk)
}

// Now reads key in the window holding wall-clock now (Faust's .now()).
func (t *Windowed[V]) Now(p int32, key string) (V, bool, error) {
	return t.Get(p, key, t.win.Start(t.clock()))
}

// Current reads key in the window holding the event time ts of the event
// being processed (Faust's .current()).
func (t *Windowed[V]) Current(p int32, key string, ts time.Time) (V, bool, error) {
	return t.Get(p, key, t.win.Start(ts))
}

// Delta reads key in the window holding ts minus d (Faust's .delta(d)).
func (t *Windowed[V]) Delta(p int32, key string, ts time.Time, d time.Duration) (V, bool, error) {
	return t.Get(p, key, t.win.Start(ts.Add(-d)))
}

// Value reads key relative to the table's default time, the event time ts
// (Faust's relative_to_stream).
func (t *Windowed[V]) Value(p int32, key string, ts time.Time) (V, bool, error) {
	return t.Current(p, key, ts)
}

// ScanWindow calls fn for every key that has a value in the window starting
// at start, in partition p. An expired window yields nothing.
func (t *Windowed[V]) ScanWindow(p int32, start int64, fn func(key string, v V)) error {
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	expired := t.win.Expired(start, pt.watermark)
	pt.mu.Unlock()
	if expired {
		return nil
	}
	return t.scan(p, appendWindowKey(nil, start, ""), func(k []byte, v V) { fn(string(k[8:]), v) })
}

// Watermark returns the newest event time seen on partition p (Unix ms).
func (t *Windowed[V]) Watermark(p int32) int64 {
	pt, err := t.part(p)
	if err != nil {
		return 0
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.watermark
}

// expire range-deletes every expired window of partition p from batch b and
// drops them from the cache; pt.mu is held.
func (t *Windowed[V]) expire(p int32, pt *part[V], b *store.Batch) error {
	if pt.watermark == 0 {
		return nil
	}
	first := t.win.FirstLive(pt.watermark)
	// Every range deletion starts at the partition's first key, so one
	// that committed covers whatever an equal cut-off would delete again,
	// and a window written below it since (only a late update to a
	// window that expired before it closed) goes with the next cut-off.
	// Repeating it at every flush left a range tombstone in each memtable
	// and level-0 table, which every store lookup then had to check.
	if first <= pt.rangedTo {
		return nil
	}
	pt.ranging = first
	if err := b.DeleteBelow(t.name, p, appendWindowKey(nil, first, "")); err != nil {
		return err
	}
	// Count each window once, as the partition's expiry cut-off passes it.
	if pt.expiredTo != 0 && first > pt.expiredTo {
		t.expired.Add((first - pt.expiredTo) / t.win.Every().Milliseconds())
	}
	pt.expiredTo = first
	for k, e := range pt.cache {
		if windowStartOf([]byte(k)) < first {
			e.dirty = false // not flushed: its window is gone
			delete(pt.cache, k)
		}
	}
	return nil
}

// Flushed ends the last flush once the store batch holding it has
// committed (core.Flushed), and drops from the cache the clean entries of
// closed windows: no update reaches them again, and reads of them go to
// the store. The cache then holds about one window's keys instead of
// every window's until it expires, and its memory levels off after the
// first window rather than growing until the first expiry.
func (t *Windowed[V]) Flushed(p int32) {
	t.core.Flushed(p)
	pt, err := t.part(p)
	if err != nil {
		return
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	below := t.openFrom(pt)
	if below <= pt.evictedBelow || below == math.MinInt64 {
		return // once per window closed: the scan reads the whole cache
	}
	kept := false
	for k, e := range pt.cache {
		if windowStartOf([]byte(k)) < below {
			if e.dirty {
				kept = true // updated before its window closed: after the next flush
			} else {
				delete(pt.cache, k)
			}
		}
	}
	if !kept {
		pt.evictedBelow = below
	}
}

// ExpireStale deletes from the store the windows of partition p, which
// this worker does not hold, that have expired when the partition's stream
// time is streamTime (Unix ms; its owner's, as its changelog records
// carry it). A copy left behind by a partition that moved then holds no
// expired window. It is safe whoever holds p meanwhile: what it deletes is
// expired for every holder, whose stream time is at least streamTime, and
// expired windows are never read.
func (t *Windowed[V]) ExpireStale(p int32, streamTime int64) error {
	if streamTime == 0 {
		return nil
	}
	b := t.db.NewBatch()
	if err := b.DeleteBelow(t.name, p, appendWindowKey(nil, t.win.FirstLive(streamTime), "")); err != nil {
		b.Discard()
		return err
	}
	return b.Commit()
}

// Write adds the last flush of partition p to batch b, together with the
// range deletion of every expired window.
func (t *Windowed[V]) Write(p int32, b *store.Batch, offset int64) error {
	return t.write(p, b, offset, func(pt *part[V]) error { return t.expire(p, pt, b) })
}

// Restore applies one changelog record to batch b during recovery. The
// record timestamp carries the partition's watermark at the time of the
// flush that wrote it.
func (t *Windowed[V]) Restore(p int32, b *store.Batch, key, value []byte, ts time.Time) error {
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if ms := ts.UnixMilli(); ms > pt.watermark {
		pt.watermark = ms
	}
	pt.forgetRanges() // the replay may write expired windows again
	if string(key) == closedKey {
		below, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil {
			return fmt.Errorf("changelog %s/%d: closed-up-to point %q: %w", t.changelog, p, value, err)
		}
		pt.closed = max(pt.closed, below)
		return nil
	}
	pt.scratch, err = t.restore(p, b, key, value, pt.scratch)
	if err == nil && value != nil && pt.filtered() {
		pt.remember(hashKey(pt.scratch))
	}
	return err
}

// Recovered finishes recovery of partition p: windows that expired while the
// changelog was replayed are deleted and the checkpoint is written.
func (t *Windowed[V]) Recovered(p int32, b *store.Batch, offset int64) error {
	pt, err := t.part(p)
	if err != nil {
		return err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if err := t.expire(p, pt, b); err != nil {
		return err
	}
	if offset > pt.offset {
		pt.offset = offset
	}
	return b.SetCheckpoint(t.name, p, pt.checkpoint())
}

// Flush returns the changelog records of partition p's dirty windows. Their
// timestamp is the partition's watermark, so that recovery can restore it
// and the changelog's time retention follows event time.
//
// Each record carries the window definition in a DefinitionHeader header,
// so that a recovery into a store built from scratch still finds out when
// the changelog holds windows of another size.
//
// It also closes the windows due (closeWindows): their results follow the
// changelog records.
func (t *Windowed[V]) Flush(p int32, _ time.Time) ([]Record, error) {
	recs, err := t.core.Flush(p, time.UnixMilli(t.Watermark(p)))
	if err != nil {
		return nil, err
	}
	if len(recs) > 0 {
		h := []Header{{Key: DefinitionHeader, Value: []byte(t.win.Definition())}}
		for i := range recs {
			recs[i].Headers = h
		}
	}
	pt, err := t.part(p)
	if err != nil {
		return nil, err
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	closed, err := t.closeWindows(p, pt)
	return append(recs, closed...), err
}

// DefinitionHeader is the changelog record header that holds a windowed
// table's window definition ("size=1m0s").
const DefinitionHeader = "window"

// CheckChangelogDefinition compares a window definition read from a
// changelog record with the table's; it returns a *DefinitionError when a
// field both name differs.
func (t *Windowed[V]) CheckChangelogDefinition(def []byte) error {
	now := definitionFields(t.win.Definition())
	for _, f := range strings.Fields(string(def)) {
		name, value, _ := strings.Cut(f, "=")
		if cur, ok := now[name]; ok && cur != value {
			return &DefinitionError{Table: t.name, Field: name, Stored: value, Current: cur, InChangelog: true}
		}
	}
	return nil
}
