// Package window is the arithmetic of hopping and tumbling windows, with
// Faust's semantics and what Faust lacks: a grace period and closing.
//
// A window of size S holds the timestamps in [start, start+S). Windows
// start every step H (H divides S), aligned to the Unix epoch, so an event
// belongs to S/H windows; tumbling windows are hopping windows with H = S.
// Windows are identified by their start in Unix milliseconds. A window
// closes once the time that closes windows (stream time, or the wall clock
// on a caught-up partition) reaches its end plus Grace, and expires when its
// end is older than Expires before the newest event time of its partition.
package window

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Hopping describes windows of Size that start every Step; a zero Step
// means Size (tumbling windows). Config guarantees Size of at least 1s,
// whole milliseconds, and a Step that divides it.
type Hopping struct {
	Size    time.Duration
	Step    time.Duration
	Grace   time.Duration
	Expires time.Duration
}

func (w Hopping) sizeMs() int64 { return w.Size.Milliseconds() }

func (w Hopping) stepMs() int64 {
	if w.Step <= 0 {
		return w.sizeMs()
	}
	return w.Step.Milliseconds()
}

// Every is how often a window starts: Step, or Size for tumbling windows.
func (w Hopping) Every() time.Duration { return time.Duration(w.stepMs()) * time.Millisecond }

// Tumbling reports whether the windows do not overlap.
func (w Hopping) Tumbling() bool { return w.stepMs() == w.sizeMs() }

// Start returns the start (Unix ms) of the latest window that holds t.
func (w Hopping) Start(t time.Time) int64 {
	return w.StartMs(t.UnixMilli())
}

// StartMs returns the start of the latest window that holds the Unix ms
// timestamp ms. Timestamps before the epoch floor towards minus infinity.
func (w Hopping) StartMs(ms int64) int64 {
	s := w.stepMs()
	r := ms % s
	if r < 0 {
		r += s
	}
	return ms - r
}

// Starts appends to dst the starts of every window that holds ms, latest
// first: Size/Step of them.
func (w Hopping) Starts(dst []int64, ms int64) []int64 {
	for s := w.StartMs(ms); s > ms-w.sizeMs(); s -= w.stepMs() {
		dst = append(dst, s)
	}
	return dst
}

// End returns the exclusive end (Unix ms) of the window starting at start.
func (w Hopping) End(start int64) int64 { return start + w.sizeMs() }

// Closed reports whether the window starting at start is closed when the
// time that closes windows is at (Unix ms): at has reached its end plus
// the grace period.
func (w Hopping) Closed(start, at int64) bool {
	return at >= w.End(start)+w.Grace.Milliseconds()
}

// ClosedBelow returns the start from which windows are still open at at:
// every window starting before it is closed.
func (w Hopping) ClosedBelow(at int64) int64 {
	// Open <=> start + size + grace > at <=> start > at - size - grace.
	return w.alignUp(at - w.sizeMs() - w.Grace.Milliseconds() + 1)
}

// Expired reports whether the window starting at start has expired when the
// newest event time seen on its partition is watermark (Unix ms).
func (w Hopping) Expired(start, watermark int64) bool {
	return w.End(start) < watermark-w.Expires.Milliseconds()
}

// FirstLive returns the start of the oldest window that has not expired at
// watermark. Every window starting before it has expired, so expiry can
// delete the key range below it.
func (w Hopping) FirstLive(watermark int64) int64 {
	// End(start) >= watermark - expires  <=>  start >= watermark - expires - size.
	return w.alignUp(watermark - w.Expires.Milliseconds() - w.sizeMs())
}

// alignUp is the first window start at or after ms.
func (w Hopping) alignUp(ms int64) int64 {
	first := w.StartMs(ms)
	if first < ms {
		first += w.stepMs()
	}
	return first
}

// Definition describes the windows as space-separated name=value fields
// ("size=1m0s step=1m0s"), the form in which a table records the windows
// its data was built with. Fields are only ever added, so a definition
// recorded before a field existed ("size=1m0s") still compares by the
// fields it has. The grace period is not part of it: changing it changes
// only which windows are still open.
func (w Hopping) Definition() string {
	return "size=" + w.Size.String() + " step=" + w.Every().String()
}

// Words is a window size in words, for a name that follows the window:
// 1_minute, 30_seconds, 2_hours, 1500_milliseconds. Zero is taken as a
// minute.
func Words(size time.Duration) string {
	if size <= 0 {
		size = time.Minute
	}
	for _, u := range []struct {
		d         time.Duration
		one, many string
	}{{time.Hour, "hour", "hours"}, {time.Minute, "minute", "minutes"}, {time.Second, "second", "seconds"}} {
		if size%u.d == 0 {
			if n := int64(size / u.d); n != 1 {
				return strconv.FormatInt(n, 10) + "_" + u.many
			}
			return "1_" + u.one
		}
	}
	return strconv.FormatInt(size.Milliseconds(), 10) + "_milliseconds"
}

// MaxFuture is how far past the worker's clock an event time may be.
// Windows expire relative to the newest event time, so one absurd
// timestamp would otherwise expire every live window.
const MaxFuture = time.Hour

// Errors of CheckTime.
var (
	ErrFuture  = errors.New("timestamp is too far in the future")
	ErrBadTime = errors.New("timestamp is outside the years 0000 to 9999")
)

// The bounds of the years 0000 to 9999 in UTC, in Unix seconds: comparing
// them is cheaper than the year of every event.
var (
	minTimeUnix = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	maxTimeUnix = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
)

// CheckTime refuses an event time that windows cannot sensibly hold: more
// than MaxFuture ahead of now, or outside the years 0000 to 9999 in UTC
// (which JSON and Avro timestamps cannot carry).
func CheckTime(ts, now time.Time) error {
	if sec := ts.Unix(); sec < minTimeUnix || sec >= maxTimeUnix {
		return fmt.Errorf("%w: %s", ErrBadTime, ts.Format(time.RFC3339Nano))
	}
	if ts.After(now.Add(MaxFuture)) {
		return fmt.Errorf("%w: %s", ErrFuture, ts.Format(time.RFC3339Nano))
	}
	return nil
}
