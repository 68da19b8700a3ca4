package stream

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// Scheduler runs a worker's tasks, timers and crontabs (Faust's
// @app.task, @app.timer and @app.crontab):
//
//   - a Task runs once at start, before processing begins;
//   - a Timer runs every interval;
//   - a Crontab runs on a cron schedule (minute hour day-of-month month
//     day-of-week, in UTC).
//
// A timer or crontab "on leader" runs only on the worker that owns
// partition 0 of the source topic, so it runs once per group.
//
// Time comes from Now and After, so tests drive it with a fake clock.
type Scheduler struct {
	Now    func() time.Time
	After  func(time.Duration) <-chan time.Time
	Leader func() bool
	Log    *slog.Logger

	tasks []job
	jobs  []job
}

type job struct {
	name     string
	onLeader bool
	next     func(now time.Time) time.Time
	fn       func(ctx context.Context) error
}

// Task adds fn to run once at start.
func (s *Scheduler) Task(name string, fn func(ctx context.Context) error) {
	s.tasks = append(s.tasks, job{name: name, fn: fn})
}

// Timer adds fn to run every interval.
func (s *Scheduler) Timer(name string, every time.Duration, onLeader bool, fn func(ctx context.Context) error) {
	s.jobs = append(s.jobs, job{name: name, onLeader: onLeader, fn: fn,
		next: func(now time.Time) time.Time { return now.Add(every) }})
}

// Crontab adds fn to run on the cron schedule spec.
func (s *Scheduler) Crontab(name, spec string, onLeader bool, fn func(ctx context.Context) error) error {
	c, err := ParseCron(spec)
	if err != nil {
		return fmt.Errorf("crontab %s: %w", name, err)
	}
	s.jobs = append(s.jobs, job{name: name, onLeader: onLeader, fn: fn, next: c.Next})
	return nil
}

// RunTasks runs every task once, in the order added; the first error stops
// the start-up.
func (s *Scheduler) RunTasks(ctx context.Context) error {
	for _, t := range s.tasks {
		if err := t.fn(ctx); err != nil {
			return fmt.Errorf("task %s: %w", t.name, err)
		}
	}
	return nil
}

// Run runs the timers and crontabs until ctx ends. A failing run is logged
// and the job goes on at its next time.
func (s *Scheduler) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, j := range s.jobs {
		g.Go(func() error {
			for {
				now := s.Now()
				select {
				case <-ctx.Done():
					return nil
				case <-s.After(j.next(now).Sub(now)):
				}
				if j.onLeader && (s.Leader == nil || !s.Leader()) {
					continue
				}
				if err := j.fn(ctx); err != nil && ctx.Err() == nil {
					s.Log.Warn("scheduled job failed", "job", j.name, "error", err)
				}
			}
		})
	}
	return g.Wait()
}

// Cron is a parsed cron schedule.
type Cron struct {
	minute, hour, dom, month, dow [64]bool
	domAny, dowAny                bool
}

// ParseCron parses a five-field cron spec: minute (0-59), hour (0-23),
// day of month (1-31), month (1-12) and day of week (0-6, Sunday 0). Each
// field is *, a number, a range a-b, a list a,b and may have a step /n.
func ParseCron(spec string) (*Cron, error) {
	f := strings.Fields(spec)
	if len(f) != 5 {
		return nil, fmt.Errorf("cron spec %q: want 5 fields (minute hour day-of-month month day-of-week)", spec)
	}
	c := &Cron{domAny: f[2] == "*", dowAny: f[4] == "*"}
	for i, r := range []struct {
		set    *[64]bool
		lo, hi int
	}{{&c.minute, 0, 59}, {&c.hour, 0, 23}, {&c.dom, 1, 31}, {&c.month, 1, 12}, {&c.dow, 0, 6}} {
		if err := parseField(f[i], r.lo, r.hi, r.set); err != nil {
			return nil, fmt.Errorf("cron spec %q field %d: %w", spec, i+1, err)
		}
	}
	return c, nil
}

func parseField(field string, lo, hi int, set *[64]bool) error {
	for _, part := range strings.Split(field, ",") {
		step := 1
		if base, s, ok := strings.Cut(part, "/"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return fmt.Errorf("bad step %q", s)
			}
			step, part = n, base
		}
		from, to := lo, hi
		switch {
		case part == "*":
		case strings.Contains(part, "-"):
			a, b, _ := strings.Cut(part, "-")
			var err1, err2 error
			from, err1 = strconv.Atoi(a)
			to, err2 = strconv.Atoi(b)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("bad range %q", part)
			}
		default:
			n, err := strconv.Atoi(part)
			if err != nil {
				return fmt.Errorf("bad value %q", part)
			}
			from, to = n, n
			if step > 1 {
				to = hi
			}
		}
		if from < lo || to > hi || from > to {
			return fmt.Errorf("%q is outside %d-%d", part, lo, hi)
		}
		for v := from; v <= to; v += step {
			set[v] = true
		}
	}
	return nil
}

// Next returns the first minute strictly after t (in UTC) that the schedule
// matches.
func (c *Cron) Next(t time.Time) time.Time {
	t = t.UTC().Truncate(time.Minute).Add(time.Minute)
	// A schedule matches at least once in four years; give up after that.
	for limit := 0; limit < 4*366*24*60; limit++ {
		if !c.month[int(t.Month())] {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if !c.hour[t.Hour()] {
			t = t.Truncate(time.Hour).Add(time.Hour)
			continue
		}
		if !c.minute[t.Minute()] {
			t = t.Add(time.Minute)
			continue
		}
		return t
	}
	return time.Time{}
}

// dayMatches follows cron: when both day fields are restricted, either
// matching is enough.
func (c *Cron) dayMatches(t time.Time) bool {
	dom, dow := c.dom[t.Day()], c.dow[int(t.Weekday())]
	switch {
	case c.domAny && c.dowAny:
		return true
	case c.domAny:
		return dow
	case c.dowAny:
		return dom
	default:
		return dom || dow
	}
}
