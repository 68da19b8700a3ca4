package window_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/window"
)

// minute is the default window of the worker: 1m windows expiring after 5m.
var minute = window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}

func TestStartMs(t *testing.T) {
	tests := []struct {
		name string
		size time.Duration
		ms   int64
		want int64
	}{
		{"epoch", time.Minute, 0, 0},
		{"first millisecond", time.Minute, 1, 0},
		{"last millisecond of the first window", time.Minute, 59_999, 0},
		{"exact boundary starts the next window", time.Minute, 60_000, 60_000},
		{"just after a boundary", time.Minute, 60_001, 60_000},
		{"inside a later window", time.Minute, 10*60_000 + 12_345, 10 * 60_000},
		{"one millisecond before the epoch", time.Minute, -1, -60_000},
		{"negative exact boundary", time.Minute, -60_000, -60_000},
		{"just after a negative boundary", time.Minute, -59_999, -60_000},
		{"just before a negative boundary", time.Minute, -60_001, -120_000},
		{"one second windows", time.Second, 1_500, 1_000},
		{"one second windows before the epoch", time.Second, -1_500, -2_000},
		{"hour windows", time.Hour, 2*3_600_000 + 1, 2 * 3_600_000},
		{"windows not dividing a day", 7 * time.Second, 20_000, 14_000},
		{"windows not dividing a day, negative", 7 * time.Second, -1, -7_000},
		{"2026 timestamp", time.Minute, 1_795_708_800_123, 1_795_708_800_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := window.Hopping{Size: tt.size, Expires: 5 * tt.size}
			if got := w.StartMs(tt.ms); got != tt.want {
				t.Errorf("Hopping{Size: %v}.StartMs(%d) = %d, want %d", tt.size, tt.ms, got, tt.want)
			}
		})
	}
}

func TestStart(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want time.Time
	}{
		{
			name: "mid-window",
			t:    time.Date(2026, 11, 26, 16, 0, 30, 123_000_000, time.UTC),
			want: time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC),
		},
		{
			name: "exact boundary",
			t:    time.Date(2026, 11, 26, 16, 1, 0, 0, time.UTC),
			want: time.Date(2026, 11, 26, 16, 1, 0, 0, time.UTC),
		},
		{
			name: "sub-millisecond before a boundary stays in the earlier window",
			t:    time.Date(2026, 11, 26, 16, 0, 59, 999_999_999, time.UTC),
			want: time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC),
		},
		{
			name: "other time zone is aligned to the epoch, not local time",
			t:    time.Date(2026, 11, 26, 17, 30, 45, 0, time.FixedZone("plus0130", 90*60)),
			want: time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC),
		},
		{
			name: "before the epoch",
			t:    time.Date(1969, 12, 31, 23, 59, 59, 500_000_000, time.UTC),
			want: time.Date(1969, 12, 31, 23, 59, 0, 0, time.UTC),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := minute.Start(tt.t), tt.want.UnixMilli(); got != want {
				t.Errorf("Start(%v) = %d (%v), want %d (%v)", tt.t, got, time.UnixMilli(got).UTC(), want, tt.want)
			}
		})
	}
}

func TestEnd(t *testing.T) {
	tests := []struct {
		size  time.Duration
		start int64
		want  int64
	}{
		{time.Minute, 0, 60_000},
		{time.Minute, -60_000, 0},
		{time.Minute, 1_795_708_800_000, 1_795_708_860_000},
		{time.Second, 5_000, 6_000},
		{90 * time.Second, 0, 90_000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/%d", tt.size, tt.start), func(t *testing.T) {
			w := window.Hopping{Size: tt.size, Expires: 5 * tt.size}
			if got := w.End(tt.start); got != tt.want {
				t.Errorf("End(%d) = %d, want %d", tt.start, got, tt.want)
			}
		})
	}
}

// TestStartEndContain checks that the window of t holds t: start <= t < end.
func TestStartEndContain(t *testing.T) {
	sizes := []time.Duration{time.Second, 7 * time.Second, time.Minute, time.Hour}
	for _, size := range sizes {
		w := window.Hopping{Size: size, Expires: size}
		for ms := int64(-3 * size.Milliseconds()); ms <= 3*size.Milliseconds(); ms += size.Milliseconds()/7 + 1 {
			start := w.StartMs(ms)
			if start > ms || ms >= w.End(start) {
				t.Fatalf("size %v: %d not in its window [%d, %d)", size, ms, start, w.End(start))
			}
			if start%size.Milliseconds() != 0 {
				t.Fatalf("size %v: start %d of %d is not aligned to the epoch", size, start, ms)
			}
		}
	}
}

func TestExpired(t *testing.T) {
	const m = int64(60_000)
	tests := []struct {
		name      string
		start     int64
		watermark int64
		want      bool
	}{
		{"window of the watermark", 10 * m, 10*m + 1, false},
		{"future window", 11 * m, 10 * m, false},
		// End(4m) = 5m; 5m < 10m - 5m is false: the window is live at
		// exactly the expiry boundary.
		{"end exactly expires before the watermark", 4 * m, 10 * m, false},
		{"one millisecond past the boundary", 4 * m, 10*m + 1, true},
		{"long expired", 0, 10 * m, true},
		{"previous window still live", 9 * m, 10 * m, false},
		{"negative window start", -m, 4 * m, false},
		{"negative window expired", -m, 5*m + 1, true},
		{"zero watermark", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := minute.Expired(tt.start, tt.watermark); got != tt.want {
				t.Errorf("Expired(start=%d, watermark=%d) = %v, want %v (end %d, cut-off %d)",
					tt.start, tt.watermark, got, tt.want, minute.End(tt.start), tt.watermark-minute.Expires.Milliseconds())
			}
		})
	}
}

func TestFirstLive(t *testing.T) {
	const m = int64(60_000)
	tests := []struct {
		name      string
		win       window.Hopping
		watermark int64
		want      int64
	}{
		// Cut-off 5m: the window [4m, 5m) ends exactly at it and is live.
		{"watermark on a boundary", minute, 10 * m, 4 * m},
		{"one millisecond later the boundary window expires", minute, 10*m + 1, 5 * m},
		{"last millisecond of a window", minute, 11*m - 1, 5 * m},
		{"zero watermark", minute, 0, -6 * m},
		{"negative watermark", minute, -1, -6 * m},
		{"expires equal to size", window.Hopping{Size: time.Minute, Expires: time.Minute}, 10*m + 1, 9 * m},
		{"size not dividing expires", window.Hopping{Size: 7 * time.Second, Expires: 20 * time.Second}, 100_000, 77_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.win.FirstLive(tt.watermark); got != tt.want {
				t.Errorf("FirstLive(%d) = %d, want %d", tt.watermark, got, tt.want)
			}
		})
	}
}

// TestFirstLiveSplitsExpired checks the property expiry relies on: every
// window starting before FirstLive(w) is expired at w, and FirstLive(w)
// itself (and every later window) is not.
func TestFirstLiveSplitsExpired(t *testing.T) {
	wins := []window.Hopping{
		{Size: time.Second, Expires: time.Second},
		{Size: time.Second, Expires: 2500 * time.Millisecond},
		{Size: 7 * time.Second, Expires: 20 * time.Second},
		{Size: time.Minute, Expires: 5 * time.Minute},
		{Size: time.Minute, Expires: 61 * time.Second},
		{Size: time.Hour, Expires: 24 * time.Hour},
	}
	for _, w := range wins {
		t.Run(fmt.Sprintf("size=%v/expires=%v", w.Size, w.Expires), func(t *testing.T) {
			size := w.Size.Milliseconds()
			span := w.Expires.Milliseconds() + 3*size
			// Walk watermarks around the epoch and around a 2026 time at a
			// step that is coprime with every size, so boundaries and the
			// milliseconds beside them are all hit.
			for _, base := range []int64{0, 1_795_708_800_000} {
				for wm := base - span; wm <= base+span; wm += 997 {
					checkFirstLive(t, w, wm)
					checkFirstLive(t, w, w.StartMs(wm))   // watermark on a boundary
					checkFirstLive(t, w, w.StartMs(wm)-1) // just before one
				}
			}
		})
	}
}

func checkFirstLive(t testing.TB, w window.Hopping, wm int64) {
	t.Helper()
	first := w.FirstLive(wm)
	size := w.Size.Milliseconds()
	if w.StartMs(first) != first {
		t.Fatalf("watermark %d: FirstLive %d is not a window start", wm, first)
	}
	if w.Expired(first, wm) {
		t.Fatalf("watermark %d: FirstLive %d is expired", wm, first)
	}
	if !w.Expired(first-size, wm) {
		t.Fatalf("watermark %d: window %d before FirstLive %d is not expired", wm, first-size, first)
	}
	if !w.Expired(first-5*size, wm) {
		t.Fatalf("watermark %d: window %d long before FirstLive %d is not expired", wm, first-5*size, first)
	}
	if w.Expired(first+size, wm) {
		t.Fatalf("watermark %d: window %d after FirstLive %d is expired", wm, first+size, first)
	}
	if w.Expired(w.StartMs(wm), wm) {
		t.Fatalf("watermark %d: the window holding the watermark is expired", wm)
	}
}

func TestWords(t *testing.T) {
	for size, want := range map[time.Duration]string{
		0: "1_minute", time.Minute: "1_minute", 30 * time.Second: "30_seconds", 2 * time.Minute: "2_minutes",
		time.Hour: "1_hour", 90 * time.Second: "90_seconds", 1500 * time.Millisecond: "1500_milliseconds",
	} {
		if got := window.Words(size); got != want {
			t.Errorf("Words(%v) = %q, want %q", size, got, want)
		}
	}
}

// TestCheckTimeBounds: the years 0000 to 9999 in UTC, to the nanosecond,
// whatever the zone, and no further than MaxFuture ahead.
func TestCheckTimeBounds(t *testing.T) {
	first := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
	after := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	far := after.Add(time.Hour) // no bound below is in the future
	for _, c := range []struct {
		ts   time.Time
		want error
	}{
		{first, nil},
		{first.Add(-time.Nanosecond), window.ErrBadTime},
		{first.In(time.FixedZone("east", 3600)), nil},
		{after.Add(-time.Nanosecond), nil},
		{after, window.ErrBadTime},
		{far.Add(window.MaxFuture + time.Second), window.ErrBadTime},
	} {
		if err := window.CheckTime(c.ts, far); !errors.Is(err, c.want) {
			t.Errorf("CheckTime(%s): %v, want %v", c.ts.Format(time.RFC3339Nano), err, c.want)
		}
	}
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	if err := window.CheckTime(now.Add(window.MaxFuture+time.Millisecond), now); !errors.Is(err, window.ErrFuture) {
		t.Errorf("an hour and a millisecond ahead: %v, want %v", err, window.ErrFuture)
	}
}
