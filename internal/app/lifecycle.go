package app

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// An actor is one component of the worker: its start beside its stop.
type actor struct {
	name  string
	start func(context.Context) error
	// stop undoes a start that succeeded; nil when there is nothing to
	// undo. A start that fails undoes its own work.
	stop func() error
}

// runGroup starts actors in order and stops those that started in the
// reverse order, so one list of actors states both the start-up order and
// the shutdown order.
type runGroup struct {
	started []actor
}

// errStopsTimedOut is what stopAll returns when the budget runs out.
var errStopsTimedOut = errors.New("stops did not finish")

// startAll runs the starts in order, until one fails.
func (g *runGroup) startAll(ctx context.Context, actors []actor) error {
	for _, a := range actors {
		if err := a.start(ctx); err != nil {
			return err
		}
		g.started = append(g.started, a)
	}
	return nil
}

// stopAll runs the stops of the actors that started, last first, and waits
// for them at most budget. A stop that fails is named in the error; so is
// the one still running when the budget ran out (errStopsTimedOut), which
// goes on in the background.
func (g *runGroup) stopAll(budget time.Duration) error {
	var current atomic.Pointer[string]
	done := make(chan error, 1)
	go func() {
		var errs []error
		for _, a := range slices.Backward(g.started) {
			if a.stop == nil {
				continue
			}
			current.Store(&a.name)
			if err := a.stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", a.name, err))
			}
		}
		done <- errors.Join(errs...)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(budget):
		name := "?"
		if p := current.Load(); p != nil {
			name = *p
		}
		return fmt.Errorf("%w: stopping %s", errStopsTimedOut, name)
	}
}
