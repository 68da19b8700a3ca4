package pageview

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
)

// Tables are the two tables the agent keeps.
type Tables struct {
	// Views counts page views per page and tumbling window.
	Views *table.Windowed[int64]
	// Totals counts page views per page since the beginning.
	Totals *table.Table[int64]
}

// Agent counts page views. It implements stream.Handler.
type Agent struct {
	Tables
	Clock func() time.Time
	// Late counts views whose window had already expired; they still count
	// in totals.
	Late func(partition int32)
}

func inc(v int64) int64 { return v + 1 }

// Handle counts one page view in the window of its event time and in the
// page's total.
func (a *Agent) Handle(ev *stream.Event) error {
	now := a.Clock()
	pv, err := Decode(ev.Value, now)
	if err != nil {
		return fmt.Errorf("%w: %w", stream.ErrInvalid, err)
	}
	ts := pv.Timestamp
	if ts.IsZero() {
		// The record timestamp comes from the producer's clock; hold it to
		// the same limits as a timestamp in the value.
		ts = ev.Timestamp
		if err := CheckTime(ts, now); err != nil {
			return fmt.Errorf("%w: record timestamp: %w", stream.ErrInvalid, err)
		}
	}
	applied, err := a.Views.Update(ev.Partition, pv.Page, ts, inc)
	if err != nil {
		return err
	}
	if !applied && a.Late != nil {
		a.Late(ev.Partition)
	}
	return a.Totals.Update(ev.Partition, pv.Page, inc)
}

// The report texts of the seed's agent.
const (
	Trending    = "Trending now"
	LessPopular = "Less popular compared to 2 minutes back"
	NotEnough   = "Not enough data"
)

// TrendingAt is the now-window count from which a page is trending.
const TrendingAt = 5

// Trend is the seed's report rule for one page: trending when the window of
// now holds at least TrendingAt views, less popular when the window two
// minutes back held more than the window of now, otherwise not enough data.
func Trend(now, twoMinutesBack int64) string {
	switch {
	case now >= TrendingAt:
		return Trending
	case twoMinutesBack > now:
		return LessPopular
	default:
		return NotEnough
	}
}

// PageReport is one page's line of the report.
type PageReport struct {
	Now    int64  `json:"page_views_within_1_minute"`
	Count  int64  `json:"count"`
	Report string `json:"report"`
}

// Report is what /report/ shows.
type Report struct {
	Now   int64                 `json:"page_views_within_1_minute"`
	Count int64                 `json:"count"`
	Pages map[string]PageReport `json:"pages"`
	Stale bool                  `json:"stale"`
}

// ReservedPrefix starts the pages used by synthetic traffic (the livecheck);
// they are counted like any other page but never reported.
const ReservedPrefix = "/_pageviews/"

// Reporter builds reports from the tables of the partitions this worker
// holds.
type Reporter struct {
	Tables
	Clock func() time.Time
}

// Report returns the report for every page, or only for page when it is not
// empty. A partition revoked while the report is built is skipped; the
// caller marks such a report stale.
func (r *Reporter) Report(page string) (*Report, error) {
	now := r.Clock()
	win := r.Views.Window()
	nowStart := win.Start(now)
	backStart := win.Start(now.Add(-2 * time.Minute))
	rep := &Report{Pages: map[string]PageReport{}}
	add := func(key string, f func(*PageReport)) {
		if page != "" && key != page || len(key) >= len(ReservedPrefix) && key[:len(ReservedPrefix)] == ReservedPrefix {
			return
		}
		pr := rep.Pages[key]
		f(&pr)
		rep.Pages[key] = pr
	}
	back := map[string]int64{}
	parts := r.Totals.Partitions()
	slices.Sort(parts)
	for _, p := range parts {
		// Read the partition whole before merging it, so a partition revoked
		// half-way adds nothing.
		totals, nows, backs := map[string]int64{}, map[string]int64{}, map[string]int64{}
		err := r.Totals.Scan(p, func(k string, v int64) { totals[k] += v })
		if err == nil {
			err = r.Views.ScanWindow(p, nowStart, func(k string, v int64) { nows[k] += v })
		}
		if err == nil {
			err = r.Views.ScanWindow(p, backStart, func(k string, v int64) { backs[k] += v })
		}
		if errors.Is(err, table.ErrNotAssigned) {
			rep.Stale = true
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("report partition %d: %w", p, err)
		}
		for k, v := range totals {
			add(k, func(pr *PageReport) { pr.Count += v })
		}
		for k, v := range nows {
			add(k, func(pr *PageReport) { pr.Now += v })
		}
		for k, v := range backs {
			back[k] += v
		}
	}
	for k, pr := range rep.Pages {
		pr.Report = Trend(pr.Now, back[k])
		rep.Pages[k] = pr
		rep.Now += pr.Now
		rep.Count += pr.Count
	}
	return rep, nil
}
