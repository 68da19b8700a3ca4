package app

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
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
	env := &tableEnv{group: "orders", db: db, windows: map[string]window.Hopping{"sums": {Size: 30 * time.Second, Expires: 2 * time.Minute}}, clock: clock}

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

// TestPeersServedBeforeThePage: on a page whose Reads answer peers, the
// runtime serves a peer's request (?local=1) and the page sees only its
// own; a bad partition list is the peer's mistake, 400.
func TestPeersServedBeforeThePage(t *testing.T) {
	type n struct {
		N int `json:"n"`
	}
	s := &Services{Log: slog.New(slog.DiscardHandler), Owned: func() []int32 { return []int32{0} }}
	NewReads(s, "/sums/", func(url.Values, int32) (n, error) { return n{7}, nil }, func(a, b n) n { return n{a.N + b.N} })
	pages := s.withPeers([]web.Page{{Path: "/sums/", Handler: func(w http.ResponseWriter, r *http.Request) { web.JSON(w, http.StatusOK, "page") }}})
	for query, want := range map[string]string{
		"":                            `"page"`,
		"?local=1":                    `{"partitions":[0],"n":7}`,
		"?local=1&by_partition=1":     `{"by_partition":[{"partition":0,"n":7}]}`,
		"?local=1&partitions=0,x":     `partitions must be`,
		"?local=1&partitions=1":       `{"partitions":[],"n":0}`,
		"?local=0&partitions=garbage": `"page"`,
	} {
		rec := httptest.NewRecorder()
		pages[0].Handler(rec, httptest.NewRequest(http.MethodGet, "/sums/"+query, nil))
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/sums/%s = %d %s, want %s", query, rec.Code, rec.Body, want)
		}
	}
}
