package stream

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestCronNext(t *testing.T) {
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		spec, from, want string
	}{
		{"* * * * *", "2026-11-26T16:00:30Z", "2026-11-26T16:01:00Z"},
		{"*/15 * * * *", "2026-11-26T16:00:00Z", "2026-11-26T16:15:00Z"},
		{"*/15 * * * *", "2026-11-26T16:59:00Z", "2026-11-26T17:00:00Z"},
		{"0 3 * * *", "2026-11-26T16:00:00Z", "2026-11-27T03:00:00Z"},
		{"30 9 1 * *", "2026-11-26T16:00:00Z", "2026-12-01T09:30:00Z"},
		{"0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"},
		{"0 12 * * 1-5", "2026-11-27T12:00:00Z", "2026-11-30T12:00:00Z"}, // Friday noon -> Monday
		{"0 0 13 * 5", "2026-11-01T00:00:00Z", "2026-11-06T00:00:00Z"},   // day 13 or any Friday
		{"5,10 8-9 * * *", "2026-11-26T08:07:00Z", "2026-11-26T08:10:00Z"},
		{"5,10 8-9 * * *", "2026-11-26T09:10:00Z", "2026-11-27T08:05:00Z"},
	}
	for _, tt := range tests {
		c, err := ParseCron(tt.spec)
		if err != nil {
			t.Fatalf("ParseCron(%q): %v", tt.spec, err)
		}
		if got := c.Next(at(tt.from)); !got.Equal(at(tt.want)) {
			t.Errorf("%q after %s = %s, want %s", tt.spec, tt.from, got.Format(time.RFC3339), tt.want)
		}
	}
	for _, bad := range []string{"", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"} {
		if _, err := ParseCron(bad); err == nil {
			t.Errorf("ParseCron(%q) accepted it", bad)
		}
	}
}

// fakeTimers is a clock whose After channels fire when the test advances it.
type fakeTimers struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	added   chan struct{}
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func (f *fakeTimers) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeTimers) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	f.waiters = append(f.waiters, fakeWaiter{at: f.now.Add(d), ch: ch})
	select {
	case f.added <- struct{}{}:
	default:
	}
	return ch
}

// advance moves the clock and fires every timer that is due.
func (f *fakeTimers) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(f.now) {
			w.ch <- f.now
			continue
		}
		kept = append(kept, w)
	}
	f.waiters = kept
}

func (f *fakeTimers) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

func TestSchedulerTimersAndLeader(t *testing.T) {
	clock := &fakeTimers{now: time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC), added: make(chan struct{}, 100)}
	var leader atomic.Bool
	var everywhere, onLeader, cron atomic.Int64
	ran := make(chan string, 100)
	s := &Scheduler{Now: clock.Now, After: clock.After, Leader: leader.Load, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.Timer("gauges", 10*time.Second, false, func(context.Context) error { everywhere.Add(1); ran <- "gauges"; return nil })
	s.Timer("livecheck", 10*time.Second, true, func(context.Context) error { onLeader.Add(1); ran <- "livecheck"; return nil })
	if err := s.Crontab("summary", "*/15 * * * *", false, func(context.Context) error { cron.Add(1); ran <- "summary"; return nil }); err != nil {
		t.Fatal(err)
	}
	var tasks []string
	s.Task("first", func(context.Context) error { tasks = append(tasks, "first"); return nil })
	s.Task("second", func(context.Context) error { tasks = append(tasks, "second"); return nil })
	if err := s.RunTasks(context.Background()); err != nil || len(tasks) != 2 || tasks[0] != "first" {
		t.Fatalf("tasks ran %v (%v), want first then second", tasks, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	waitPending := func(n int) {
		t.Helper()
		for clock.pending() < n {
			select {
			case <-clock.added:
			case <-time.After(5 * time.Second):
				t.Fatalf("only %d of %d timers armed", clock.pending(), n)
			}
		}
	}
	step := func(d time.Duration, want ...string) {
		t.Helper()
		waitPending(3)
		clock.advance(d)
		got := map[string]int{}
		for range want {
			select {
			case name := <-ran:
				got[name]++
			case <-time.After(5 * time.Second):
				t.Fatalf("after %s: ran %v, want %v", d, got, want)
			}
		}
	}
	step(10*time.Second, "gauges") // not the leader: the livecheck skips
	waitPending(3)                 // every job has looked at the leader and re-armed
	leader.Store(true)
	step(10*time.Second, "gauges", "livecheck")
	step(15*time.Minute, "gauges", "livecheck", "summary")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if everywhere.Load() != 3 || onLeader.Load() != 2 || cron.Load() != 1 {
		t.Errorf("runs: gauges %d livecheck %d summary %d, want 3, 2, 1", everywhere.Load(), onLeader.Load(), cron.Load())
	}
}
