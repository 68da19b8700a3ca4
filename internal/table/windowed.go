package table

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/window"
)

// Windowed is a table with one value per key and tumbling window.
//
// In the store a key is the window start (8 bytes, order-preserving) followed
// by the user's key, so that all keys of a window are adjacent and expiring
// every window before a cut-off is one range deletion. In the changelog a
// key is the user's key, '|', and the window start in Unix milliseconds.
type Windowed[V any] struct {
	core[V]
	win   window.Tumbling
	clock func() time.Time
}

// MaxClockSkew is how far past the wall clock an event time may move a
// partition's stream time (the newest event time, from which windows
// expire) in UpdateAt. Events further ahead still count in their own
// window.
const MaxClockSkew = 5 * time.Second

// NewWindowed returns a windowed table. clock gives wall-clock time for Now.
func NewWindowed[V any](name, changelog string, codec Codec[V], db *store.DB, win window.Tumbling, clock func() time.Time) *Windowed[V] {
	return &Windowed[V]{
		core: core[V]{
			name: name, changelog: changelog, codec: codec, db: db,
			toChangelog:   windowToChangelog,
			fromChangelog: windowFromChangelog,
			parts:         make(map[int32]*part[V]),
		},
		win:   win,
		clock: clock,
	}
}

// Window returns the table's window definition.
func (t *Windowed[V]) Window() window.Tumbling { return t.win }

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
	start, err := strconv.ParseInt(string(k[i+1:]), 10, 64)
	if err != nil {
		return dst, errWindowKey
	}
	return appendWindowKey(dst, start, string(k[:i])), nil
}

// Update applies fn to the value of key in the window holding ts, in
// partition p. It advances the partition's stream time (watermark) to ts.
// applied is false when that window has already expired; the update is
// then dropped.
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
	start := t.win.StartMs(ms)
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if ms > pt.watermark {
		st := ms
		if !now.IsZero() {
			st = min(st, now.Add(MaxClockSkew).UnixMilli())
		}
		pt.watermark = max(pt.watermark, st)
	}
	if t.win.Expired(start, pt.watermark) {
		return false, nil
	}
	pt.scratch = appendWindowKey(pt.scratch[:0], start, key)
	return true, t.update(p, pt, pt.scratch, fn)
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
	if err := b.DeleteBelow(t.name, p, appendWindowKey(nil, first, "")); err != nil {
		return err
	}
	// Count each window once, as the partition's expiry cut-off passes it.
	if pt.expiredTo != 0 && first > pt.expiredTo {
		t.expired.Add((first - pt.expiredTo) / t.win.Size.Milliseconds())
	}
	pt.expiredTo = first
	for k := range pt.cache {
		if windowStartOf([]byte(k)) < first {
			delete(pt.cache, k)
		}
	}
	return nil
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
	if ms := ts.UnixMilli(); ms > pt.watermark {
		pt.watermark = ms
	}
	pt.scratch, err = t.restore(p, b, key, value, pt.scratch)
	pt.mu.Unlock()
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
	return b.SetCheckpoint(t.name, p, store.Checkpoint{Offset: pt.offset, Watermark: pt.watermark})
}

// Flush returns the changelog records of partition p's dirty windows. Their
// timestamp is the partition's watermark, so that recovery can restore it
// and the changelog's time retention follows event time.
//
// Each record carries the window definition in a DefinitionHeader header,
// so that a recovery into a store built from scratch still finds out when
// the changelog holds windows of another size.
func (t *Windowed[V]) Flush(p int32, _ time.Time) ([]Record, error) {
	recs, err := t.core.Flush(p, time.UnixMilli(t.Watermark(p)))
	if len(recs) > 0 {
		h := []Header{{Key: DefinitionHeader, Value: []byte(t.win.Definition())}}
		for i := range recs {
			recs[i].Headers = h
		}
	}
	return recs, err
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
