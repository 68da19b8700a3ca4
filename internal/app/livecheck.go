package app

// The livecheck (Faust's LiveCheck, made small): the app's probe sends a
// synthetic record through its own path and the runtime checks it is
// processed within LIVECHECK_SLO.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Probe is an app's end-to-end check, which the runtime runs as its
// livecheck: on one worker of the group every LIVECHECK_INTERVAL, its
// result served on /livecheck and counted in the livecheck metrics.
type Probe interface {
	// Read returns how many synthetic records the tables have counted, and
	// whether every partition answered.
	Read(ctx context.Context) (n int64, complete bool, err error)
	// Send publishes one synthetic record through the app's own path.
	Send(ctx context.Context) error
}

// ProbeOf is the Probe that sends with send and reads with read.
func ProbeOf(send func(context.Context) error, read func(context.Context) (int64, bool, error)) Probe {
	return probeFuncs{send, read}
}

type probeFuncs struct {
	send func(context.Context) error
	read func(context.Context) (int64, bool, error)
}

func (p probeFuncs) Send(ctx context.Context) error                { return p.send(ctx) }
func (p probeFuncs) Read(ctx context.Context) (int64, bool, error) { return p.read(ctx) }

// ErrLivecheckSLO is the failure of a synthetic record that was not
// processed in time.
var ErrLivecheckSLO = errors.New("synthetic record not processed within the SLO")

// livecheck runs a probe and keeps its last result.
type livecheck struct {
	probe   Probe
	slo     time.Duration
	poll    time.Duration
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	observe func(ok bool, took time.Duration, err error)

	mu   sync.Mutex
	last error
}

func newLivecheck(p Probe, slo time.Duration, observe func(bool, time.Duration, error)) *livecheck {
	return &livecheck{probe: p, slo: slo, poll: 100 * time.Millisecond, now: time.Now, sleep: sleep, observe: observe}
}

// Run performs one livecheck.
func (l *livecheck) Run(ctx context.Context) error {
	err := l.run(ctx)
	l.mu.Lock()
	l.last = err
	l.mu.Unlock()
	return err
}

func (l *livecheck) run(ctx context.Context) error {
	before, complete, err := l.probe.Read(ctx)
	switch {
	case err != nil:
		return l.fail(fmt.Errorf("read baseline: %w", err))
	case !complete:
		// The baseline must cover every partition, or a record already
		// counted could pass for the new one.
		return l.fail(errors.New("read baseline: not every partition answered"))
	}
	began := l.now()
	if err := l.probe.Send(ctx); err != nil {
		return l.fail(err)
	}
	for {
		n, _, err := l.probe.Read(ctx)
		if err == nil && n > before {
			l.observe(true, l.now().Sub(began), nil)
			return nil
		}
		if l.now().Sub(began) >= l.slo {
			return l.fail(fmt.Errorf("%w (%s)", ErrLivecheckSLO, l.slo))
		}
		if err := l.sleep(ctx, l.poll); err != nil {
			return err
		}
	}
}

func (l *livecheck) fail(err error) error {
	l.observe(false, 0, err)
	return fmt.Errorf("livecheck: %w", err)
}

// Check is the health check: the error of the last livecheck, or nil when
// it passed or this worker has not run one (it is not the leader).
func (l *livecheck) Check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
