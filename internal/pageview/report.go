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

// Report is what /report/ shows; in JSON, Now is named after the window
// (WindowField).
type Report struct {
	Now   int64                 `json:"-"`
	Count int64                 `json:"count"`
	Pages map[string]PageReport `json:"pages"`
	Stale bool                  `json:"stale"`
	// MissingPartitions lists the partitions the report could not read
	// (owner unknown, recovering or unreachable); the numbers leave them out.
	MissingPartitions []int32 `json:"missing_partitions,omitempty"`
	// Window is the size of the windows; zero is taken as a minute.
	Window time.Duration `json:"-"`
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
	err := json.Unmarshal(b, (*plain)(r))
	r.Now = windowCount(b)
	return err
}

// UnmarshalJSON reads a page's line whatever its window is called.
func (p *PageReport) UnmarshalJSON(b []byte) error {
	type plain PageReport
	err := json.Unmarshal(b, (*plain)(p))
	p.Now = windowCount(b)
	return err
}

// windowCount is the count in the window of now of a JSON object.
func windowCount(b []byte) (n int64) {
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(b, &fields)
	for k, v := range fields {
		if strings.Contains(k, "_within_") {
			_ = json.Unmarshal(v, &n)
		}
	}
	return n
}

// Counts are one page's numbers in some partitions: the window of now, the
// window two minutes back, and the total. They add up across partitions;
// the report text is derived from the sums.
type Counts struct {
	Now   int64 `json:"now"`
	Back  int64 `json:"back"`
	Count int64 `json:"count"`
}

func (c Counts) plus(d Counts) Counts {
	return Counts{Now: c.Now + d.Now, Back: c.Back + d.Back, Count: c.Count + d.Count}
}

// PageCounts are the counts of the pages of some partitions: a partition's
// answer to a cluster-wide read (app.Reads), and their sum.
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

// Reporter answers /report/ for the whole cluster: this worker's
// partitions from its tables, the others from their owners (app.Reads).
// A partition whose owner is unknown, recovering or unreachable is listed
// as missing and the report is stale; so is one made before the worker
// is ready.
type Reporter struct {
	Tables
	Clock func() time.Time
	Ready func() (bool, string)
	Reads *app.Reads[PageCounts]
}

// NewReporter returns the reporter of tables through s.
func NewReporter(s *app.Services, tables Tables) *Reporter {
	r := &Reporter{Tables: tables, Clock: s.Clock, Ready: s.Ready}
	r.Reads = app.NewReads(s, "/report/", r.local, merge)
	return r
}

// Report is the report of every page, or only of page.
func (r *Reporter) Report(ctx context.Context, page string) (*Report, error) {
	total, missing, err := r.Reads.Sum(ctx, url.Values{"page": {page}})
	if err != nil {
		return nil, err
	}
	ready, _ := r.Ready()
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

// Count returns the counts of page, reserved pages included (the
// livecheck reads its own this way), and whether every partition answered.
func (r *Reporter) Count(ctx context.Context, page string) (Counts, bool, error) {
	total, missing, err := r.Reads.Sum(ctx, url.Values{"page": {page}, "reserved": {"1"}})
	return total.Pages[page], len(missing) == 0, err
}

// local reads partition p, whole or not at all (a partition revoked
// half-way is left out): ?page= narrows to one page; pages under
// ReservedPrefix only with ?reserved=1.
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
	now, w := r.Clock(), r.Views.Window()
	err := errors.Join(r.Totals.Scan(p, add(Counts{Count: 1})),
		r.Views.ScanWindow(p, w.Start(now), add(Counts{Now: 1})),
		r.Views.ScanWindow(p, w.Start(now.Add(-2*time.Minute)), add(Counts{Back: 1})))
	return out, err
}
