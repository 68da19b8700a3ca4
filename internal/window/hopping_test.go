package window_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/window"
)

func TestStartsOfHoppingWindows(t *testing.T) {
	w := window.Hopping{Size: 6 * time.Second, Step: 3 * time.Second}
	for _, tc := range []struct {
		ms   int64
		want []int64
	}{
		{10_000, []int64{9_000, 6_000}},
		{9_000, []int64{9_000, 6_000}},
		{8_999, []int64{6_000, 3_000}},
		{0, []int64{0, -3_000}},
		{-1, []int64{-3_000, -6_000}},
	} {
		if got := w.Starts(nil, tc.ms); !slices.Equal(got, tc.want) {
			t.Errorf("Starts(%d) = %v, want %v", tc.ms, got, tc.want)
		}
	}
	tumbling := window.Hopping{Size: time.Minute}
	if got := tumbling.Starts(nil, 90_000); !slices.Equal(got, []int64{60_000}) || !tumbling.Tumbling() || w.Tumbling() {
		t.Errorf("tumbling Starts(90s) = %v, Tumbling() = %v; hopping Tumbling() = %v", got, tumbling.Tumbling(), w.Tumbling())
	}
}

// Every window that holds a time is among its starts, once: size/step of
// them, aligned to the step, the latest first.
func TestStartsHoldTheirTime(t *testing.T) {
	for _, w := range []window.Hopping{
		{Size: time.Second, Step: time.Second},
		{Size: 6 * time.Second, Step: 3 * time.Second},
		{Size: time.Minute, Step: 15 * time.Second},
		{Size: time.Hour, Step: time.Minute},
		{Size: 1500 * time.Millisecond, Step: 500 * time.Millisecond},
	} {
		size, step := w.Size.Milliseconds(), w.Step.Milliseconds()
		for ms := int64(-5 * size); ms < 5*size; ms += 997 {
			starts := w.Starts(nil, ms)
			if int64(len(starts)) != size/step {
				t.Fatalf("%v/%v at %d: %d windows, want %d", w.Size, w.Step, ms, len(starts), size/step)
			}
			for i, s := range starts {
				if s > ms || ms >= w.End(s) || s%step != 0 || (i > 0 && s != starts[i-1]-step) {
					t.Fatalf("%v/%v at %d: starts %v", w.Size, w.Step, ms, starts)
				}
			}
			if starts[0] != w.StartMs(ms) {
				t.Fatalf("%v/%v at %d: StartMs %d is not the latest start %d", w.Size, w.Step, ms, w.StartMs(ms), starts[0])
			}
		}
	}
}

// A window closes once the closing time reaches its end plus the grace
// period, and ClosedBelow splits the closed windows from the open ones.
func TestClosed(t *testing.T) {
	for _, w := range []window.Hopping{
		{Size: 4 * time.Second, Grace: time.Second},
		{Size: 4 * time.Second},
		{Size: 6 * time.Second, Step: 3 * time.Second, Grace: 1500 * time.Millisecond},
		{Size: time.Minute, Step: 15 * time.Second, Grace: 10 * time.Second},
	} {
		t.Run(fmt.Sprintf("%v/%v/%v", w.Size, w.Step, w.Grace), func(t *testing.T) {
			if w.Closed(0, w.Size.Milliseconds()+w.Grace.Milliseconds()-1) || !w.Closed(0, w.Size.Milliseconds()+w.Grace.Milliseconds()) {
				t.Errorf("the window at 0 does not close exactly at its end plus grace")
			}
			step := w.Step.Milliseconds()
			if step == 0 {
				step = w.Size.Milliseconds()
			}
			for at := int64(-30_000); at < 30_000; at += 331 {
				below := w.ClosedBelow(at)
				if w.StartMs(below) != below {
					t.Fatalf("at %d: ClosedBelow %d is not a window start", at, below)
				}
				if w.Closed(below, at) || !w.Closed(below-step, at) {
					t.Fatalf("at %d: ClosedBelow %d does not split closed from open windows", at, below)
				}
			}
		})
	}
}

func TestFirstLiveOfHoppingWindows(t *testing.T) {
	w := window.Hopping{Size: time.Minute, Step: 15 * time.Second, Expires: 5 * time.Minute}
	for wm := int64(-600_000); wm < 600_000; wm += 997 {
		first := w.FirstLive(wm)
		if w.StartMs(first) != first || w.Expired(first, wm) || !w.Expired(first-15_000, wm) {
			t.Fatalf("watermark %d: FirstLive %d does not split expired from live windows", wm, first)
		}
	}
}

func TestDefinitionNamesTheStep(t *testing.T) {
	for w, want := range map[window.Hopping]string{
		{Size: time.Minute}: "size=1m0s step=1m0s",
		{Size: time.Minute, Step: time.Minute, Grace: time.Second}: "size=1m0s step=1m0s",
		{Size: 6 * time.Second, Step: 3 * time.Second}:             "size=6s step=3s",
	} {
		if got := w.Definition(); got != want {
			t.Errorf("%+v: Definition() = %q, want %q", w, got, want)
		}
	}
}
