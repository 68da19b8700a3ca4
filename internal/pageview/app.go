package pageview

import (
	"context"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/table"
)

// Topic is the default name of the page-views topic.
const Topic = "page_views"

// App declares the page-view worker: page views from PAGE_VIEWS_TOPIC,
// two tables, the agent that fills them, /count/ and /report/, the
// livecheck, and a crontab that logs a summary.
func App() *app.App {
	views := app.NewWindowed("views", table.Int64{}, app.Window{Var: "WINDOW", Size: time.Minute, Expires: 5 * time.Minute})
	totals := app.NewPlain("totals", table.Int64{})
	return &app.App{
		Name:   "pageviews",
		Source: app.Topic{Var: "PAGE_VIEWS_TOPIC", Name: Topic},
		Tables: []app.TableDecl{views, totals},
		Start: func(s *app.Services) (app.Parts, error) {
			tables := Tables{Views: views.Table(), Totals: totals.Table()}
			router := NewReporter(s, tables)
			publisher := &Publisher{Sender: s.Producer, Topic: s.Config.Topic, Clock: s.Clock}
			livecheck := app.ProbeOf(
				func(ctx context.Context) error { return publisher.Synthetic(ctx, "livecheck", LivecheckPage) },
				func(ctx context.Context) (int64, bool, error) {
					c, complete, err := router.Count(ctx, LivecheckPage)
					return c.Count, complete, err
				})
			summary := func(ctx context.Context) error {
				rep, err := router.Report(ctx, "")
				if err != nil {
					return err
				}
				s.Log.Info("table summary", "pages", len(rep.Pages), "views_total", rep.Count, "views_in_window", rep.Now, "stale", rep.Stale)
				return nil
			}
			return app.Parts{
				Agent:     &Agent{Tables: tables, Clock: s.Clock, Late: s.Late("views")},
				Pages:     pages{publisher, router, s.Ready, s.Log.With("component", "web")}.list(),
				Livecheck: livecheck,
				Timers:    []app.Timer{{Name: "summary", Cron: "*/15 * * * *", Leader: true, Run: summary}},
			}, nil
		},
	}
}
