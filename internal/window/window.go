// Package window is the arithmetic of tumbling windows with Faust semantics.
//
// A window of size S holds the timestamps in [start, start+S), where
// start = t - t mod S, aligned to the Unix epoch. Windows are identified by
// their start in Unix milliseconds. A window expires when its end is older
// than Expires before the newest event time seen on its partition.
package window

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Tumbling describes fixed-size, non-overlapping windows.
type Tumbling struct {
	Size    time.Duration
	Expires time.Duration
}

// sizeMs is the window size in milliseconds; config guarantees at least 1s.
func (w Tumbling) sizeMs() int64 { return w.Size.Milliseconds() }

// Start returns the start (Unix ms) of the window that holds t.
func (w Tumbling) Start(t time.Time) int64 {
	return w.StartMs(t.UnixMilli())
}

// StartMs returns the start of the window that holds the Unix ms timestamp ms.
// Timestamps before the epoch floor towards minus infinity.
func (w Tumbling) StartMs(ms int64) int64 {
	s := w.sizeMs()
	r := ms % s
	if r < 0 {
		r += s
	}
	return ms - r
}

// End returns the exclusive end (Unix ms) of the window starting at start.
func (w Tumbling) End(start int64) int64 { return start + w.sizeMs() }

// Expired reports whether the window starting at start has expired when the
// newest event time seen on its partition is watermark (Unix ms).
func (w Tumbling) Expired(start, watermark int64) bool {
	return w.End(start) < watermark-w.Expires.Milliseconds()
}

// FirstLive returns the start of the oldest window that has not expired at
// watermark. Every window starting before it has expired, so expiry can
// delete the key range below it.
func (w Tumbling) FirstLive(watermark int64) int64 {
	// End(start) >= watermark - expires  <=>  start >= watermark - expires - size.
	lowest := watermark - w.Expires.Milliseconds() - w.sizeMs()
	first := w.StartMs(lowest)
	if first < lowest {
		first += w.sizeMs()
	}
	return first
}

// Definition describes the windows as space-separated name=value fields
// ("size=1m0s"), the form in which a table records the windows its data
// was built with. Fields are only ever added (a step and a grace period
// will join the size), so a definition recorded before a field existed
// still compares by the fields it has.
func (w Tumbling) Definition() string {
	return "size=" + w.Size.String()
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

// CheckTime refuses an event time that windows cannot sensibly hold: more
// than MaxFuture ahead of now, or outside the years 0000 to 9999 in UTC
// (which JSON and Avro timestamps cannot carry).
func CheckTime(ts, now time.Time) error {
	if y := ts.UTC().Year(); y < 0 || y > 9999 {
		return fmt.Errorf("%w: %s", ErrBadTime, ts.Format(time.RFC3339Nano))
	}
	if ts.After(now.Add(MaxFuture)) {
		return fmt.Errorf("%w: %s", ErrFuture, ts.Format(time.RFC3339Nano))
	}
	return nil
}
