// Package pageview is the worker's domain: the PageView record and its codec,
// the agent that counts views into a windowed and a totals table, the report,
// /count/ and the livecheck's record. App declares it to the runtime.
package pageview

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/gofaust/pageviews/internal/jsonscan"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// PageView is the value of a record on the page-views topic, keyed by page.
type PageView struct {
	Page string `json:"page"`
	// Count is the sender's in-memory counter when it sent the view.
	Count int64 `json:"count"`
	// Timestamp is the event time; the record timestamp is used when absent.
	Timestamp time.Time `json:"timestamp,omitzero"`
}

// MaxPageLen is the longest page a valid page view holds, in bytes.
const MaxPageLen = 1024

// Errors that make a page view invalid.
var (
	ErrNoPage      = errors.New("page is missing")
	ErrPageTooLong = fmt.Errorf("page is longer than %d bytes", MaxPageLen)
	ErrNotUTF8     = jsonscan.ErrNotUTF8
)

// Decode parses and validates a PageView; now is the worker's clock, for
// the future-timestamp check.
func Decode(b []byte, now time.Time) (PageView, error) { return decode(b, now, false) }

// decode is Decode whose Page, with borrow, shares b's memory (the agent's).
func decode(b []byte, now time.Time, borrow bool) (pv PageView, err error) {
	pv, ok := decodeFast(b, borrow)
	if !ok {
		if pv, err = decodeJSON(b); err != nil {
			return pv, fmt.Errorf("decode page view: %w", err)
		}
	}
	switch {
	case pv.Page == "":
		return pv, ErrNoPage
	case len(pv.Page) > MaxPageLen:
		return pv, ErrPageTooLong
	case !pv.Timestamp.IsZero():
		return pv, window.CheckTime(pv.Timestamp, now)
	}
	return pv, nil
}

// decodeFast reads the common shape of a PageView (jsonscan); ok is false
// for anything else.
func decodeFast(b []byte, borrow bool) (pv PageView, ok bool) {
	s := jsonscan.Object(b)
	for s.Next() {
		switch string(s.Key()) {
		case "page":
			if v := s.String(); borrow {
				pv.Page = unsafe.String(unsafe.SliceData(v), len(v))
			} else {
				pv.Page = string(v)
			}
		case "count":
			pv.Count = s.Int()
		case "timestamp":
			if pv.Timestamp, ok = jsonscan.MillisUTC(s.String()); !ok {
				s.Fail()
			}
		default:
			s.Fail()
		}
	}
	return pv, s.Done()
}

// decodeJSON is the fallback, apart so the fast path's value stays on the stack.
func decodeJSON(b []byte) (pv PageView, err error) {
	err = jsonscan.Unmarshal(b, &pv)
	return pv, err
}

// Encode renders a PageView as JSON, the event time in UTC to the millisecond.
func Encode(pv PageView) []byte {
	page, _ := json.Marshal(pv.Page)
	b := fmt.Appendf(make([]byte, 0, 64+len(page)), `{"page":%s,"count":%d`, page, pv.Count)
	if !pv.Timestamp.IsZero() {
		b = pv.Timestamp.UTC().AppendFormat(append(b, `,"timestamp":"`...), `2006-01-02T15:04:05.000Z07:00"`)
	}
	return append(b, '}')
}

// Tables are the agent's: views per page and window, and per page in all.
type Tables struct {
	Views  *table.Windowed[int64]
	Totals *table.Table[int64]
}

// Agent counts page views. It implements stream.Handler.
type Agent struct {
	Tables
	Clock func() time.Time
	Late  func(*stream.Event) // a view for a closed window (it still counts in totals)
}

func inc(v int64) int64 { return v + 1 }

// Handle counts a view in the window of its event time and in its total.
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
	if ts.IsZero() { // the producer's clock, held to the same limits
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
		a.Late(ev)
	}
	return a.Totals.Update(ev.Partition, pv.Page, inc)
}

// The seed's report texts, and the count from which a page is trending.
const (
	Trending    = "Trending now"
	LessPopular = "Less popular compared to 2 minutes back"
	NotEnough   = "Not enough data"
	TrendingAt  = 5
)

// Trend is the seed's rule: trending from TrendingAt views in the window
// of now, less popular when the window two minutes back held more.
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
