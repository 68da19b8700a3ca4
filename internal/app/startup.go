package app

// What start-up needs beyond wiring: steps that TERM can interrupt, and the
// checks of the local store that fail start-up with one clear line.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
)

// checkWindows refuses to start when a windowed table's store in dir was
// built with other windows than the configuration asks for: its buckets
// would be read and added to as if they had the new size. The refusal is a
// configuration error (exit 2) naming the old and the new value and the
// way to change windows.
func checkWindows(a *App, t stream.Table, dir string) error {
	w, ok := t.(interface{ CheckDefinition() error })
	if !ok {
		return nil
	}
	return windowsChanged(a, w.CheckDefinition(), dir)
}

// windowsChanged turns a *table.DefinitionError in err (the store in dir,
// or a changelog, holds windows of another definition) into the
// configuration error that names the setting of a's table; other errors
// pass as they are.
func windowsChanged(a *App, err error, dir string) error {
	var derr *table.DefinitionError
	if !errors.As(err, &derr) {
		return err
	}
	name := "window " + derr.Field
	for _, w := range a.Spec().Windows {
		if w.Table == derr.Table {
			name = w.Var + "_" + strings.ToUpper(derr.Field)
		}
	}
	where := "in " + dir
	if derr.InChangelog {
		where = "in its changelog"
	}
	return &config.Error{
		Var:   name,
		Value: derr.Current,
		Allowed: fmt.Sprintf("%s, the window %s that the table %s %s was built with (changing it needs a reset of that table: see \"Changing the window\" in the README)",
			derr.Stored, derr.Field, derr.Table, where),
	}
}

// openStore opens the local store in dir. A store another worker holds, or
// a full disk that stays full, fails start-up with one line naming dir;
// TERM while it waits for space interrupts it.
func openStore(ctx context.Context, dir string, log *slog.Logger) (*store.DB, bool, error) {
	db, wiped, err := store.OpenWith(ctx, dir, log, store.Options{})
	if err != nil && ctx.Err() != nil {
		return nil, false, fmt.Errorf("%w while waiting to open the store", errStartInterrupted)
	}
	return db, wiped, err
}

// errStartInterrupted ends a start-up step that ctx ended.
var errStartInterrupted = errors.New("start-up interrupted by shutdown")

// interruptible runs a start-up step that can block on the network and
// returns as soon as ctx ends: sarama does not take a context, and a broker
// that accepts connections but never answers holds it for minutes, while
// TERM must end the worker within SHUTDOWN_TIMEOUT. The abandoned step goes
// on in the background until sarama gives up; release then frees what it
// made, if it made anything.
func interruptible[T any](ctx context.Context, what string, step func() (T, error), release func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := step()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
	}
	go func() {
		if r := <-done; r.err == nil && release != nil {
			release(r.v)
		}
	}()
	var zero T
	return zero, fmt.Errorf("%w while waiting to %s", errStartInterrupted, what)
}
