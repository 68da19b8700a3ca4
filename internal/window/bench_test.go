package window

import (
	"testing"
	"time"
)

// sink keeps the compiler from dropping the benchmarked calls.
var sink int64

// BenchmarkWindowLookup measures finding the window of an event time and
// checking whether it has expired: what the agent does for every view.
func BenchmarkWindowLookup(b *testing.B) {
	w := Hopping{Size: time.Minute, Expires: 5 * time.Minute}
	base := time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)
	times := make([]time.Time, 1024)
	for i := range times {
		times[i] = base.Add(time.Duration(i) * 937 * time.Millisecond)
	}
	watermark := times[len(times)-1].UnixMilli()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		start := w.Start(times[i%len(times)])
		if !w.Expired(start, watermark) {
			sink += start
		}
	}
}
