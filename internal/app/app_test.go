package app

import (
	"log/slog"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// TestTableDeclarations: the runtime makes each declared table on the
// store under its derived changelog name; the active copy is the one the
// app's parts get, and a standby copy is a separate table.
func TestTableDeclarations(t *testing.T) {
	db, _, err := store.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	clock := func() time.Time { return time.Unix(1_700_000_000, 0) }
	env := &tableEnv{group: "orders", db: db, windows: map[string]window.Tumbling{"sums": {Size: 30 * time.Second, Expires: 2 * time.Minute}}, clock: clock}

	sums := NewWindowed("sums", table.Int64{}, Window{Var: "SUMS_WINDOW", Size: time.Minute, Expires: 5 * time.Minute})
	totals := NewPlain("totals", table.Int64{})
	if sums.Table() != nil || totals.Table() != nil {
		t.Fatal("a declared table has an active copy before the runtime made one")
	}
	active := sums.make(env, true)
	standby := sums.make(env, false)
	if sums.Table() == nil || any(sums.Table()) != any(active) || any(standby) == any(active) {
		t.Fatal("Table() is not the active copy, or the standby copy is the same table")
	}
	if got := active.Changelog(); got != "orders-sums-changelog" {
		t.Errorf("windowed changelog = %q", got)
	}
	if got, want := sums.Table().Window(), env.windows["sums"]; got != want {
		t.Errorf("window = %+v, want the configured %+v", got, want)
	}
	plain := totals.make(env, true)
	if got := plain.Changelog(); got != "orders-totals-changelog" || any(totals.Table()) != any(plain) {
		t.Errorf("plain changelog = %q, or Table() is not the active copy", got)
	}

	// The changelog topics: compacted; a windowed one also deleted by time,
	// well after its windows expire.
	wt, pt := sums.changelog(env), totals.changelog(env)
	if wt.Name != "orders-sums-changelog" || wt.Configs["cleanup.policy"] != "compact,delete" || wt.Configs["retention.ms"] == "" {
		t.Errorf("windowed changelog topic = %+v", wt)
	}
	if pt.Name != "orders-totals-changelog" || pt.Configs["cleanup.policy"] != "compact" {
		t.Errorf("plain changelog topic = %+v", pt)
	}
}
