package pageview

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// LivecheckPage is the reserved page of the synthetic views.
const LivecheckPage = ReservedPrefix + "livecheck"

// Livecheck proves the whole pipeline works (Faust's LiveCheck, made
// small): it publishes a synthetic view of LivecheckPage through the same
// path as /count/, and checks the view reaches the totals table within the
// SLO. Synthetic views are counted like any other but never reported.
//
// The result is the health check Check (served on /livecheck) and the
// livecheck metrics through Observe.
type Livecheck struct {
	Publish func(ctx context.Context, page string) (int64, error)
	Count   func(ctx context.Context, page string) (Counts, bool, error)
	SLO     time.Duration
	// Poll is how often the table is read while waiting.
	Poll  time.Duration
	Sleep func(ctx context.Context, d time.Duration) error
	// Observe receives each result: ok, and the latency when ok.
	Observe func(ok bool, latency time.Duration, err error)
	Now     func() time.Time

	mu   sync.Mutex
	last error
	ran  bool
	at   time.Time
}

// ErrLivecheckSLO is the failure of a synthetic view that was not counted
// in time.
var ErrLivecheckSLO = errors.New("synthetic page view not counted within the SLO")

// Run performs one livecheck.
func (l *Livecheck) Run(ctx context.Context) error {
	err := l.run(ctx)
	l.mu.Lock()
	l.last, l.ran, l.at = err, true, l.Now()
	l.mu.Unlock()
	return err
}

func (l *Livecheck) run(ctx context.Context) error {
	before, complete, err := l.Count(ctx, LivecheckPage)
	switch {
	case err != nil:
		return l.fail(fmt.Errorf("read baseline: %w", err))
	case !complete:
		// The baseline must cover every partition, or a view already
		// counted could pass for the new one.
		return l.fail(errors.New("read baseline: not every partition answered"))
	}
	began := l.Now()
	if _, err := l.Publish(ctx, LivecheckPage); err != nil {
		return l.fail(err)
	}
	for {
		c, _, err := l.Count(ctx, LivecheckPage)
		if err == nil && c.Count > before.Count {
			took := l.Now().Sub(began)
			l.Observe(true, took, nil)
			return nil
		}
		if l.Now().Sub(began) >= l.SLO {
			return l.fail(fmt.Errorf("%w (%s)", ErrLivecheckSLO, l.SLO))
		}
		if err := l.Sleep(ctx, l.Poll); err != nil {
			return err
		}
	}
}

func (l *Livecheck) fail(err error) error {
	l.Observe(false, 0, err)
	return fmt.Errorf("livecheck: %w", err)
}

// Check is the health check: the error of the last livecheck, or nil when
// it passed or this worker has not run one (it is not the leader).
func (l *Livecheck) Check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}
