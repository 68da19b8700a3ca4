package pageview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
)

// Topic is the default topic. Pages under ReservedPrefix are synthetic views (the livecheck's): counted,
// never reported, refused by /count/, taken by the agent only with SyntheticHeader (naming the sender).
const (
	Topic           = "page_views"
	ReservedPrefix  = "/_pageviews/"
	LivecheckPage   = ReservedPrefix + "livecheck"
	SyntheticHeader = "pageviews-synthetic"
)

// App declares the worker: views from PAGE_VIEWS_TOPIC, two tables and their agent, closed
// windows' counts to <topic>-windows, /count/, /report/, the livecheck and a summary crontab.
func App() *app.App {
	codec := NewCodec()
	views := app.NewWindowed("views", table.Int64{}, app.Window{Var: "WINDOW", Size: time.Minute, Grace: 10 * time.Second, Expires: 5 * time.Minute}).
		OnClose(func(page string, start, end time.Time, n int64) any { // a page's final count in a window
			if strings.HasPrefix(page, ReservedPrefix) {
				return nil // synthetic: never reported
			}
			return WindowCount{Page: page, Start: start, End: end, Count: n}
		}).
		Emits(schema.NewCodec[WindowCount](windowSchema, nil, nil))
	totals := app.NewPlain("totals", table.Int64{})
	return &app.App{
		Name:   "pageviews",
		Source: app.Topic{Var: "PAGE_VIEWS_TOPIC", Name: Topic, Codec: codec},
		Tables: []app.TableDecl{views, totals},
		Start: func(s *app.Services) (app.Parts, error) {
			r := NewReporter(s, Tables{Views: views.Table(), Totals: totals.Table()}, codec)
			return app.Parts{
				Agent: &Agent{Tables: r.Tables, Codec: codec, Clock: s.Clock, Late: s.Late("views")},
				Pages: []web.Page{{Path: "/count/", JSON: r.countPage}, {Path: "/report/", JSON: r.reportPage}},
				Livecheck: app.ProbeOf(func(ctx context.Context) error { _, err := r.publish(ctx, LivecheckPage, "livecheck"); return err },
					func(ctx context.Context) (int64, bool, error) { return r.Count(ctx, LivecheckPage) }), // the view, and its count
				Timers: []app.Timer{{Name: "summary", Cron: "*/15 * * * *", Leader: true, Run: r.summary}},
			}, nil
		},
	}
}

// Reporter answers /report/ from the tables of owned partitions and the owners of others (app.Reads),
// stale if one is missing or not ready; it publishes /count/'s views with codec.
type Reporter struct {
	Tables
	s     *app.Services
	codec *schema.Codec[PageView]
	Reads *app.Reads[PageCounts]
	n     atomic.Int64 // this process's count of the views it sent
}

// NewReporter returns the reporter of tables through s.
func NewReporter(s *app.Services, tables Tables, codec *schema.Codec[PageView]) *Reporter {
	r := &Reporter{Tables: tables, s: s, codec: codec}
	r.Reads = app.NewReads(s, "/report/", r.local, merge)
	return r
}

// publish sends a view of page (synthetic from sender, if set); it returns the count of users' views sent.
func (rp *Reporter) publish(ctx context.Context, page, sender string) (int64, error) {
	pv := PageView{Page: page, Timestamp: rp.s.Clock()}
	var hs []sarama.RecordHeader
	if sender != "" {
		hs = []sarama.RecordHeader{{Key: []byte(SyntheticHeader), Value: []byte(sender)}}
	} else {
		pv.Count = rp.n.Add(1)
	}
	v, err := rp.codec.Encode(pv)
	if err == nil {
		_, _, err = rp.s.Producer.SendAndWait(ctx, &sarama.ProducerMessage{Topic: rp.s.Config.Topic,
			Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(v), Timestamp: pv.Timestamp, Headers: hs})
	}
	if err != nil {
		return 0, fmt.Errorf("publish page view: %w", err)
	}
	return pv.Count, nil
}

func (rp *Reporter) countPage(req *http.Request) (any, error) {
	page, err := web.Param(req, "page", "/", MaxPageLen)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(page, ReservedPrefix) {
		return nil, web.Errorf(http.StatusBadRequest, "pages under %s are reserved for the worker's synthetic views", ReservedPrefix)
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second) // for the broker's ack
	defer cancel()
	n, err := rp.publish(ctx, page, "")
	if err != nil {
		return nil, web.Errorf(http.StatusServiceUnavailable, "page view not published: %v", err)
	}
	return map[string]int64{"count": n}, nil
}

func (rp *Reporter) reportPage(req *http.Request) (any, error) {
	page, err := web.Param(req, "page", "", MaxPageLen)
	if err != nil {
		return nil, err
	}
	return rp.Report(req.Context(), page)
}

func (rp *Reporter) summary(ctx context.Context) error {
	sum, err := rp.Summary(ctx)
	if err == nil {
		rp.s.Log.Info("table summary", "pages", sum.Pages, "views_total", sum.Count, "views_in_window", sum.Now, "stale", sum.Stale)
	}
	return err
}

// Summary is the report's sums without its pages: what the summary timer logs.
type Summary struct {
	// Pages are the pages with views, reserved ones left out, counted in each partition: a page is in
	// one partition (its key's), unless the source topic gained partitions since its first views.
	Pages int64 `json:"pages"`
	Count int64 `json:"count"`
	Now   int64 `json:"now"` // views in the window of now
	Stale bool  `json:"stale"`
}

func (s Summary) plus(d Summary) Summary {
	return Summary{Pages: s.Pages + d.Pages, Count: s.Count + d.Count, Now: s.Now + d.Now}
}

// Summary sums the report as the tables are read (?summary=1, answered by owners as well), keeping no page:
// with a million pages the report would build a million-entry map for four numbers.
func (rp *Reporter) Summary(ctx context.Context) (Summary, error) {
	total, missing, err := rp.Reads.Sum(ctx, url.Values{"summary": {"1"}})
	if err != nil {
		return Summary{}, err
	}
	var sum Summary
	if total.Sum != nil {
		sum = *total.Sum
	}
	for _, c := range total.Pages { // from owners of an earlier version, which answer every page
		if c.Now != 0 || c.Count != 0 {
			sum = sum.plus(Summary{Pages: 1, Count: c.Count, Now: c.Now})
		}
	}
	ready, _ := rp.s.Ready()
	sum.Stale = len(missing) > 0 || !ready
	return sum, nil
}

// Report is what /report/ shows; in JSON, Now is named after the window.
type Report struct {
	Now               int64                 `json:"-"`
	Count             int64                 `json:"count"`
	Pages             map[string]PageReport `json:"pages"`
	Stale             bool                  `json:"stale"`
	MissingPartitions []int32               `json:"missing_partitions,omitempty"` // unread, left out of the numbers
	Window            time.Duration         `json:"-"`                            // zero is taken as a minute
}

// PageReport is one page's line of the report.
type PageReport struct {
	Now    int64  `json:"-"`
	Count  int64  `json:"count"`
	Report string `json:"report"`
}

// MarshalJSON writes the report in the order of the HTTP contract.
func (r Report) MarshalJSON() ([]byte, error) {
	field := web.WindowField(Topic, r.Window)
	pages := make(map[string]web.Ordered, len(r.Pages))
	for k, pg := range r.Pages {
		pages[k] = web.Ordered{field, pg.Now, "count", pg.Count, "report", pg.Report}
	}
	out := web.Ordered{field, r.Now, "count", r.Count, "pages", pages, "stale", r.Stale}
	if len(r.MissingPartitions) > 0 {
		out = append(out, "missing_partitions", r.MissingPartitions)
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads a report whatever its window is called.
func (r *Report) UnmarshalJSON(b []byte) error {
	type plain Report
	return web.UnmarshalWindowed(b, (*plain)(r), &r.Now)
}

// UnmarshalJSON reads a page's line whatever its window is called.
func (p *PageReport) UnmarshalJSON(b []byte) error {
	type plain PageReport
	return web.UnmarshalWindowed(b, (*plain)(p), &p.Now)
}

// Counts are a page's views in some partitions: in the window of now, two minutes back, and in all.
type Counts struct {
	Now   int64 `json:"now"`
	Back  int64 `json:"back"`
	Count int64 `json:"count"`
}

func (c Counts) plus(d Counts) Counts {
	return Counts{c.Now + d.Now, c.Back + d.Back, c.Count + d.Count}
}

// PageCounts are a partition's answer to a read (app.Reads), and their sum: counts by page, or for
// ?summary=1 only their Sum.
type PageCounts struct {
	Pages map[string]Counts `json:"pages"`
	Sum   *Summary          `json:"sum,omitempty"`
}

func merge(into, from PageCounts) PageCounts {
	if into.Pages == nil && len(from.Pages) > 0 {
		into.Pages = map[string]Counts{}
	}
	for k, c := range from.Pages {
		into.Pages[k] = into.Pages[k].plus(c)
	}
	if from.Sum != nil {
		var sum Summary
		if into.Sum != nil {
			sum = *into.Sum
		}
		sum = sum.plus(*from.Sum)
		into.Sum = &sum
	}
	return into
}

// Report is the report of every page, or only of page.
func (rp *Reporter) Report(ctx context.Context, page string) (*Report, error) {
	total, missing, err := rp.Reads.Sum(ctx, url.Values{"page": {page}})
	if err != nil {
		return nil, err
	}
	ready, _ := rp.s.Ready()
	rep := &Report{Pages: map[string]PageReport{}, Window: rp.Views.Window().Size, MissingPartitions: missing, Stale: len(missing) > 0 || !ready}
	for k, c := range total.Pages {
		if c.Now == 0 && c.Count == 0 {
			continue // only the window two minutes back: not a page of the report
		}
		rep.Pages[k] = PageReport{Now: c.Now, Count: c.Count, Report: Trend(c.Now, c.Back)}
		rep.Now += c.Now
		rep.Count += c.Count
	}
	return rep, nil
}

// Count is page's total, reserved pages included (the livecheck's), and whether all partitions answered.
func (rp *Reporter) Count(ctx context.Context, page string) (int64, bool, error) {
	total, missing, err := rp.Reads.Sum(ctx, url.Values{"page": {page}, "reserved": {"1"}})
	return total.Pages[page].Count, len(missing) == 0, err
}

// local reads partition p whole or not at all: ?page= narrows it, ?reserved=1 adds ReservedPrefix,
// ?summary=1 sums it.
func (rp *Reporter) local(q url.Values, p int32) (PageCounts, error) {
	if q.Get("summary") == "1" {
		return rp.sumLocal(p)
	}
	page, reserved := q.Get("page"), q.Get("reserved") == "1"
	out := PageCounts{Pages: map[string]Counts{}}
	add := func(c Counts) func(string, int64) {
		return func(k string, v int64) {
			if (page == "" || k == page) && (reserved || !strings.HasPrefix(k, ReservedPrefix)) {
				out.Pages[k] = out.Pages[k].plus(Counts{Now: c.Now * v, Back: c.Back * v, Count: c.Count * v})
			}
		}
	}
	now, w := rp.s.Clock(), rp.Views.Window()
	err := errors.Join(rp.Totals.Scan(p, add(Counts{Count: 1})),
		rp.Views.ScanWindow(p, w.Start(now), add(Counts{Now: 1})),
		rp.Views.ScanWindow(p, w.Start(now.Add(-2*time.Minute)), add(Counts{Back: 1})))
	return out, err
}

// sumLocal is partition p's Summary. A page has views if it has a total, as every page in a window has.
func (rp *Reporter) sumLocal(p int32) (PageCounts, error) {
	var sum Summary
	err := rp.Totals.Scan(p, func(k string, v int64) {
		if v != 0 && !strings.HasPrefix(k, ReservedPrefix) {
			sum.Pages++
			sum.Count += v
		}
	})
	if err == nil {
		w := rp.Views.Window()
		err = rp.Views.ScanWindow(p, w.Start(rp.s.Clock()), func(k string, v int64) {
			if !strings.HasPrefix(k, ReservedPrefix) {
				sum.Now += v
			}
		})
	}
	return PageCounts{Sum: &sum}, err
}
