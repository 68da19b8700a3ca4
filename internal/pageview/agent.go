package pageview

import (
	"fmt"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
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
	now := ev.Now
	if now.IsZero() {
		now = a.Clock()
	}
	pv, err := decode(ev.Value, now, true)
	if err != nil {
		return fmt.Errorf("%w: %w", stream.ErrInvalid, err)
	}
	if _, synthetic := ev.Header(SyntheticHeader); strings.HasPrefix(pv.Page, ReservedPrefix) && !synthetic {
		return fmt.Errorf("%w: page %q is reserved for synthetic views, and the record has no %s header", stream.ErrInvalid, pv.Page, SyntheticHeader)
	}
	ts := pv.Timestamp
	if ts.IsZero() {
		// The record timestamp comes from the producer's clock; hold it to
		// the same limits as a timestamp in the value.
		ts = ev.Timestamp
		if err := window.CheckTime(ts, now); err != nil {
			return fmt.Errorf("%w: record timestamp: %w", stream.ErrInvalid, err)
		}
	}
	applied, err := a.Views.UpdateAt(ev.Partition, pv.Page, ts, now, inc)
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
