package pageview

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/web"
	"github.com/gofaust/pageviews/internal/window"
)

// Report is what /report/ shows; in JSON, Now is named after the window.
type Report struct {
	Now   int64                 `json:"-"`
	Count int64                 `json:"count"`
	Pages map[string]PageReport `json:"pages"`
	Stale bool                  `json:"stale"`
	// MissingPartitions could not be read; the numbers leave them out.
	MissingPartitions []int32       `json:"missing_partitions,omitempty"`
	Window            time.Duration `json:"-"` // zero is taken as a minute
}

// PageReport is one page's line of the report.
type PageReport struct {
	Now    int64  `json:"-"`
	Count  int64  `json:"count"`
	Report string `json:"report"`
}

// WindowField is the JSON name of the count in the window of now:
// page_views_within_1_minute (the seed's), page_views_within_30_seconds.
func WindowField(size time.Duration) string { return Topic + "_within_" + window.Words(size) }

// MarshalJSON writes the report in the order of the HTTP contract.
func (r Report) MarshalJSON() ([]byte, error) {
	field := WindowField(r.Window)
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
	return windowed(b, (*plain)(r), &r.Now)
}

// UnmarshalJSON reads a page's line whatever its window is called.
func (p *PageReport) UnmarshalJSON(b []byte) error {
	type plain PageReport
	return windowed(b, (*plain)(p), &p.Now)
}

// windowed decodes b into v, and its count in the window of now into now.
func windowed(b []byte, v any, now *int64) error {
	var fields map[string]json.RawMessage
	err := json.Unmarshal(b, &fields)
	for k, f := range fields {
		if strings.Contains(k, "_within_") {
			err = errors.Join(err, json.Unmarshal(f, now))
		}
	}
	return errors.Join(err, json.Unmarshal(b, v))
}

// Counts are one page's numbers in some partitions: the window of now, the
// window two minutes back, the total. The report text comes from the sums.
type Counts struct {
	Now   int64 `json:"now"`
	Back  int64 `json:"back"`
	Count int64 `json:"count"`
}

func (c Counts) plus(d Counts) Counts {
	return Counts{c.Now + d.Now, c.Back + d.Back, c.Count + d.Count}
}

// PageCounts are a partition's answer to a read (app.Reads), and their sum.
type PageCounts struct {
	Pages map[string]Counts `json:"pages"`
}

func merge(into, from PageCounts) PageCounts {
	if into.Pages == nil {
		into.Pages = map[string]Counts{}
	}
	for k, c := range from.Pages {
		into.Pages[k] = into.Pages[k].plus(c)
	}
	return into
}

// Reporter answers /report/ for the cluster: owned partitions from the tables,
// others from their owners (app.Reads); stale if one is missing or not ready.
type Reporter struct {
	Tables
	s     *app.Services
	Reads *app.Reads[PageCounts]
}

// NewReporter returns the reporter of tables through s.
func NewReporter(s *app.Services, tables Tables) *Reporter {
	r := &Reporter{Tables: tables, s: s}
	r.Reads = app.NewReads(s, "/report/", r.local, merge)
	return r
}

// Report is the report of every page, or only of page.
func (r *Reporter) Report(ctx context.Context, page string) (*Report, error) {
	total, missing, err := r.Reads.Sum(ctx, url.Values{"page": {page}})
	if err != nil {
		return nil, err
	}
	ready, _ := r.s.Ready()
	rep := &Report{Pages: map[string]PageReport{}, Window: r.Views.Window().Size, MissingPartitions: missing, Stale: len(missing) > 0 || !ready}
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

// Count returns the total of page, reserved pages included (the livecheck
// reads its own this way), and whether every partition answered.
func (r *Reporter) Count(ctx context.Context, page string) (int64, bool, error) {
	total, missing, err := r.Reads.Sum(ctx, url.Values{"page": {page}, "reserved": {"1"}})
	return total.Pages[page].Count, len(missing) == 0, err
}

// local reads partition p whole or not at all: ?page= narrows to one page;
// pages under ReservedPrefix only with ?reserved=1.
func (r *Reporter) local(q url.Values, p int32) (PageCounts, error) {
	page, reserved := q.Get("page"), q.Get("reserved") == "1"
	out := PageCounts{Pages: map[string]Counts{}}
	add := func(c Counts) func(string, int64) {
		return func(k string, v int64) {
			if (page == "" || k == page) && (reserved || !strings.HasPrefix(k, ReservedPrefix)) {
				out.Pages[k] = out.Pages[k].plus(Counts{Now: c.Now * v, Back: c.Back * v, Count: c.Count * v})
			}
		}
	}
	now, w := r.s.Clock(), r.Views.Window()
	err := errors.Join(r.Totals.Scan(p, add(Counts{Count: 1})),
		r.Views.ScanWindow(p, w.Start(now), add(Counts{Now: 1})),
		r.Views.ScanWindow(p, w.Start(now.Add(-2*time.Minute)), add(Counts{Back: 1})))
	return out, err
}
