package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
)

// windowVars are the settings behind each field of a window definition.
var windowVars = map[string]string{"size": "WINDOW_SIZE", "step": "WINDOW_STEP", "grace": "WINDOW_GRACE"}

// checkWindows refuses to start when the windowed table's store in dir was
// built with other windows than the configuration asks for: its buckets
// would be read and added to as if they had the new size. The refusal is a
// configuration error (exit 2) naming the old and the new value and the
// way to change windows.
func checkWindows(t interface{ CheckDefinition() error }, dir string) error {
	err := t.CheckDefinition()
	var derr *table.DefinitionError
	if !errors.As(err, &derr) {
		return err
	}
	name := windowVars[derr.Field]
	if name == "" {
		name = "window " + derr.Field
	}
	return &config.Error{
		Var:   name,
		Value: derr.Current,
		Allowed: fmt.Sprintf("%s, the window %s that the table %s in %s was built with (changing it needs a reset of that table: see \"Changing the window\" in the README)",
			derr.Stored, derr.Field, derr.Table, dir),
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
