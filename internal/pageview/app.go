package pageview

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
)

// Topic is the default page-views topic. Pages under ReservedPrefix are
// synthetic views (the livecheck's): counted, never reported; /count/ refuses
// them, and the agent takes one only with SyntheticHeader (naming the sender).
const (
	Topic           = "page_views"
	ReservedPrefix  = "/_pageviews/"
	LivecheckPage   = ReservedPrefix + "livecheck"
	SyntheticHeader = "pageviews-synthetic"
)

// App declares the page-view worker: views from PAGE_VIEWS_TOPIC, two tables
// and their agent, closed windows' counts to <topic>-windows, /count/,
// /report/, the livecheck and a crontab that logs a summary.
func App() *app.App {
	codec := NewCodec()
	views := app.NewWindowed("views", table.Int64{}, app.Window{Var: "WINDOW", Size: time.Minute, Grace: 10 * time.Second, Expires: 5 * time.Minute}).
		OnClose(func(page string, start, end time.Time, n int64) any { // a page's final count in a window
			if strings.HasPrefix(page, ReservedPrefix) {
				return nil // synthetic: never reported
			}
			return WindowCount{Page: page, Start: start, End: end, Count: n}
		}).
		Emits(NewWindowCodec())
	totals := app.NewPlain("totals", table.Int64{})
	return &app.App{
		Name:   "pageviews",
		Source: app.Topic{Var: "PAGE_VIEWS_TOPIC", Name: Topic, Codec: codec},
		Tables: []app.TableDecl{views, totals},
		Start: func(s *app.Services) (app.Parts, error) {
			tables := Tables{Views: views.Table(), Totals: totals.Table()}
			p := &pages{s: s, codec: codec, reporter: NewReporter(s, tables)}
			return app.Parts{
				Agent:     &Agent{Tables: tables, Codec: codec, Clock: s.Clock, Late: s.Late("views")},
				Pages:     []web.Page{{Path: "/count/", JSON: p.countPage}, {Path: "/report/", JSON: p.reportPage}},
				Livecheck: app.ProbeOf(p.livecheck, p.livecheckCount),
				Timers:    []app.Timer{{Name: "summary", Cron: "*/15 * * * *", Leader: true, Run: p.summary}},
			}, nil
		},
	}
}

// pages serve /count/ and /report/; the livecheck and the summary use them.
type pages struct {
	s        *app.Services
	codec    *schema.Codec[PageView]
	reporter *Reporter
	n        atomic.Int64 // this process's count of the views it sent
}

// publish sends a view of page (synthetic, from sender, when set) and
// returns the process's count of the users' views once the broker has it.
func (o *pages) publish(ctx context.Context, page, sender string) (int64, error) {
	pv := PageView{Page: page, Timestamp: o.s.Clock()}
	m := &sarama.ProducerMessage{Topic: o.s.Config.Topic, Key: sarama.StringEncoder(page), Timestamp: pv.Timestamp}
	if sender != "" {
		m.Headers = []sarama.RecordHeader{{Key: []byte(SyntheticHeader), Value: []byte(sender)}}
	} else {
		pv.Count = o.n.Add(1)
	}
	v, err := o.codec.Encode(pv)
	if err != nil {
		return 0, err
	}
	m.Value = sarama.ByteEncoder(v)
	if _, _, err := o.s.Producer.SendAndWait(ctx, m); err != nil {
		return 0, fmt.Errorf("publish page view: %w", err)
	}
	return pv.Count, nil
}

func (o *pages) countPage(r *http.Request) (any, error) {
	page, err := web.Param(r, "page", "/", MaxPageLen)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(page, ReservedPrefix) {
		return nil, web.Errorf(http.StatusBadRequest, "pages under %s are reserved for the worker's synthetic views", ReservedPrefix)
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second) // for the broker's ack
	defer cancel()
	n, err := o.publish(ctx, page, "")
	if err != nil {
		return nil, web.Errorf(http.StatusServiceUnavailable, "page view not published: %v", err)
	}
	return map[string]int64{"count": n}, nil
}

func (o *pages) reportPage(r *http.Request) (any, error) {
	page, err := web.Param(r, "page", "", MaxPageLen)
	if err != nil {
		return nil, err
	}
	return o.reporter.Report(r.Context(), page)
}

// livecheck sends the livecheck's view; livecheckCount reads it back.
func (o *pages) livecheck(ctx context.Context) error {
	_, err := o.publish(ctx, LivecheckPage, "livecheck")
	return err
}

func (o *pages) livecheckCount(ctx context.Context) (int64, bool, error) {
	return o.reporter.Count(ctx, LivecheckPage)
}

func (o *pages) summary(ctx context.Context) error {
	rep, err := o.reporter.Report(ctx, "")
	if err == nil {
		o.s.Log.Info("table summary", "pages", len(rep.Pages), "views_total", rep.Count, "views_in_window", rep.Now, "stale", rep.Stale)
	}
	return err
}
