// Package pageview is the worker's domain, declared to the runtime by App: the PageView record and its codec,
// the agent that counts views into a windowed and a totals table, the report, /count/ and the livecheck.
package pageview

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/gofaust/pageviews/internal/jsonscan"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// PageView is a record's value on the page-views topic, keyed by page: JSON, or Avro (pageview.avsc).
type PageView struct {
	Page string `json:"page" avro:"page"`
	// Count is the sender's in-memory counter when it sent the view.
	Count int64 `json:"count" avro:"count"`
	// Timestamp is the event time; the record timestamp is used when absent
	// (JSON only: the Avro schema requires it).
	Timestamp time.Time `json:"timestamp,omitzero" avro:"timestamp"`
}

// The records' Avro schemas, registered under <topic>-value and <topic>-windows-value.
var (
	//go:embed pageview.avsc
	sourceSchema string
	//go:embed window.avsc
	windowSchema string
)

// NewCodec is the page-views topic's codec: registry-framed Avro once bound to
// a registry, JSON otherwise; it reads both. A Page from JSON shares the record's memory.
func NewCodec() *schema.Codec[PageView] {
	return schema.NewCodec(sourceSchema,
		func(pv PageView) ([]byte, error) { return Encode(pv), nil },
		func(b []byte) (PageView, error) { return parse(b, true) })
}

// WindowCount is a page's final count in a closed window, on the closed-window topic.
type WindowCount struct {
	Page  string    `json:"page" avro:"page"`
	Start time.Time `json:"window_start" avro:"window_start"`
	End   time.Time `json:"window_end" avro:"window_end"`
	Count int64     `json:"count" avro:"count"`
}

// MaxPageLen is the longest valid page in bytes; the errors make a page view invalid.
const MaxPageLen = 1024

var (
	ErrNoPage      = errors.New("page is missing")
	ErrPageTooLong = fmt.Errorf("page is longer than %d bytes", MaxPageLen)
	ErrNotUTF8     = jsonscan.ErrNotUTF8
)

// Decode parses and validates a PageView; now is the worker's clock.
func Decode(b []byte, now time.Time) (PageView, error) {
	pv, err := parse(b, false)
	if err != nil {
		return pv, err
	}
	return pv, validate(pv, now)
}

// parse reads a JSON PageView; with borrow, its Page shares b's memory.
func parse(b []byte, borrow bool) (pv PageView, err error) {
	pv, ok := decodeFast(b, borrow)
	if !ok {
		if pv, err = decodeJSON(b); err != nil {
			return pv, fmt.Errorf("decode page view: %w", err)
		}
	}
	return pv, nil
}

// validate checks a page view however it was encoded; errors wrap stream.ErrInvalid.
func validate(pv PageView, now time.Time) (err error) {
	switch {
	case pv.Page == "":
		err = ErrNoPage
	case len(pv.Page) > MaxPageLen:
		err = ErrPageTooLong
	case !utf8.ValidString(pv.Page):
		err = ErrNotUTF8
	case !pv.Timestamp.IsZero():
		err = window.CheckTime(pv.Timestamp, now)
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", stream.ErrInvalid, err)
	}
	return err
}

// decodeFast reads the common shapes of a PageView; ok is false for anything else.
func decodeFast(b []byte, borrow bool) (pv PageView, ok bool) {
	if pv, ok = decodeEncoded(b, borrow); ok {
		return pv, true
	}
	return decodeFields(b, borrow)
}

// decodeEncoded reads exactly what Encode writes, the fields in its order
// and no spaces, without looking at field names one by one; ok is false
// for anything else.
func decodeEncoded(b []byte, borrow bool) (pv PageView, ok bool) {
	const page, count, stamp = `{"page":`, `,"count":`, `,"timestamp":`
	if len(b) < len(page) || string(b[:len(page)]) != page {
		return pv, false
	}
	v, i, ok := jsonscan.PlainString(b, len(page))
	if !ok || len(b)-i < len(count) || string(b[i:i+len(count)]) != count {
		return pv, false
	}
	if pv.Count, i, ok = jsonscan.Int(b, i+len(count)); !ok {
		return pv, false
	}
	if len(b)-i > len(stamp) && string(b[i:i+len(stamp)]) == stamp {
		var t []byte
		if t, i, ok = jsonscan.PlainString(b, i+len(stamp)); !ok {
			return pv, false
		}
		if pv.Timestamp, ok = jsonscan.MillisUTC(t); !ok {
			return pv, false
		}
	}
	if i != len(b)-1 || b[i] != '}' {
		return pv, false
	}
	if borrow {
		pv.Page = unsafe.String(unsafe.SliceData(v), len(v))
	} else {
		pv.Page = string(v)
	}
	return pv, true
}

// decodeFields reads a flat object of the PageView's fields in any order.
func decodeFields(b []byte, borrow bool) (pv PageView, ok bool) {
	s := jsonscan.Object(b)
	for s.Next() {
		switch string(s.Key()) {
		case "page":
			pv.Page = s.Text(borrow)
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
	Codec *schema.Codec[PageView] // NewCodec()
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
	var pv PageView
	var err error
	if b := ev.Value; len(b) > 0 && b[0] == 0 {
		pv, err = a.Codec.Decode(b) // registry-framed Avro
	} else if pv, err = parse(b, true); err != nil { // JSON directly: through the codec it cost +26% per event (BenchmarkAgentHandle)
		err = fmt.Errorf("%w: %w", stream.ErrInvalid, err)
	}
	if err == nil {
		if pv.Timestamp.IsZero() {
			pv.Timestamp = ev.Timestamp // the producer's clock, held to the same limits
		}
		err = validate(pv, now)
	}
	if err != nil {
		return err // invalid, or the registry unavailable
	}
	if _, synthetic := ev.Header(SyntheticHeader); strings.HasPrefix(pv.Page, ReservedPrefix) && !synthetic {
		return fmt.Errorf("%w: page %q is reserved for synthetic views, and the record has no %s header", stream.ErrInvalid, pv.Page, SyntheticHeader)
	}
	applied, err := a.Views.UpdateAt(ev.Partition, pv.Page, pv.Timestamp, now, inc)
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

// Trend is the seed's rule: trending from TrendingAt views now, less popular if two minutes back held more.
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
