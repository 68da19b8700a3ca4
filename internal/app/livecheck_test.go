package app

import (
	"context"
	"errors"
	"testing"
	"time"
)

// probe counts what Send sent once delay reads have passed; complete
// says whether every partition answers.
type probe struct {
	sent, delay, reads int
	incomplete         bool
}

func (p *probe) Read(context.Context) (int64, bool, error) {
	p.reads++
	if p.sent > 0 && p.reads > p.delay {
		return int64(p.sent), !p.incomplete, nil
	}
	return 0, !p.incomplete, nil
}

func (p *probe) Send(context.Context) error { p.sent++; return nil }

// TestLivecheck runs the runtime's livecheck on a clock that moves only
// when it polls: a record seen in time passes, one never seen fails at
// the SLO, an incomplete baseline fails at once; Check keeps the last.
func TestLivecheck(t *testing.T) {
	now := time.Unix(0, 0)
	type outcome struct {
		ok   bool
		took time.Duration
	}
	var seen []outcome
	run := func(p *probe) error {
		l := newLivecheck(p, time.Second, func(ok bool, took time.Duration, _ error) { seen = append(seen, outcome{ok, took}) })
		l.now = func() time.Time { return now }
		l.sleep = func(_ context.Context, d time.Duration) error { now = now.Add(d); return nil }
		err := l.Run(context.Background())
		if !errors.Is(l.Check(), err) && l.Check() != err {
			t.Errorf("Check() = %v after a run that returned %v", l.Check(), err)
		}
		return err
	}

	if err := run(&probe{delay: 3}); err != nil {
		t.Errorf("record seen after 3 reads: %v", err)
	}
	if err := run(&probe{delay: 1 << 30}); !errors.Is(err, ErrLivecheckSLO) {
		t.Errorf("record never seen: %v, want ErrLivecheckSLO", err)
	}
	p := &probe{incomplete: true}
	if err := run(p); err == nil || p.sent != 0 {
		t.Errorf("incomplete baseline: %v with %d records sent, want a failure before sending", err, p.sent)
	}
	want := []outcome{{true, 200 * time.Millisecond}, {false, 0}, {false, 0}}
	if len(seen) != len(want) {
		t.Fatalf("observed %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("outcome %d = %+v, want %+v", i, seen[i], want[i])
		}
	}
}
