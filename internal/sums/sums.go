// Package sums is a second, small app: the sum of an amount per key, in
// the window of now and in total, on one page. It is what a team's own
// worker looks like on the runtime, and the runtime's own tests run their
// guarantees against it, apart from the example domain.
package sums

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
	"github.com/gofaust/pageviews/internal/window"
)

// App declares the worker: records keyed by account with a whole amount
// as their value (e.g. "250") on AMOUNTS_TOPIC, summed per window and in
// total; GET /sums/?key=<account> answers both.
func App() *app.App {
	windows := app.NewWindowed("sums", table.Int64{}, app.Window{Var: "SUMS_WINDOW", Size: time.Minute, Expires: 5 * time.Minute})
	totals := app.NewPlain("totals", table.Int64{})
	return &app.App{
		Name:   "sums",
		Source: app.Topic{Var: "AMOUNTS_TOPIC", Name: "amounts"},
		Tables: []app.TableDecl{windows, totals},
		Start: func(s *app.Services) (app.Parts, error) {
			late := s.Late("sums")
			agent := func(ev *stream.Event) error {
				amount, err := strconv.ParseInt(strings.TrimSpace(string(ev.Value)), 10, 64)
				if err != nil {
					return fmt.Errorf("%w: amount %q: %w", stream.ErrInvalid, ev.Value, err)
				}
				if err := window.CheckTime(ev.Timestamp, ev.Now); err != nil {
					return fmt.Errorf("%w: %w", stream.ErrInvalid, err) // it would expire every window
				}
				add := func(v int64) int64 { return v + amount }
				key := string(ev.Key)
				applied, err := windows.Table().UpdateAt(ev.Partition, key, ev.Timestamp, ev.Now, add)
				if err != nil {
					return err
				}
				if !applied {
					late(ev)
				}
				return totals.Table().Update(ev.Partition, key, add)
			}
			page := func(w http.ResponseWriter, r *http.Request) {
				key := r.URL.Query().Get("key")
				if key == "" {
					web.Error(w, http.StatusBadRequest, "give the account: ?key=<account>")
					return
				}
				p, err := s.PartitionOf(key)
				if err != nil {
					web.Error(w, http.StatusServiceUnavailable, "partition unknown: "+err.Error())
					return
				}
				if !slices.Contains(s.Owned(), p) {
					// Tables are read where they live: the owner answers.
					if owners, err := s.Owners(); err == nil && owners[p] != "" && owners[p] != s.Self {
						http.Redirect(w, r, owners[p]+r.URL.RequestURI(), http.StatusTemporaryRedirect)
						return
					}
					web.Error(w, http.StatusServiceUnavailable, fmt.Sprintf("partition %d of %q is not ready anywhere yet", p, key))
					return
				}
				now, _, err := windows.Table().Now(p, key)
				total, _, err2 := totals.Table().Get(p, key)
				if err != nil || err2 != nil {
					web.Error(w, http.StatusServiceUnavailable, fmt.Sprintf("partition %d moved while read; ask again", p))
					return
				}
				web.JSON(w, http.StatusOK, map[string]any{"key": key, "window": now, "total": total})
			}
			return app.Parts{Agent: stream.HandlerFunc(agent), Pages: []web.Page{{Path: "/sums/", Handler: page}}}, nil
		},
	}
}
