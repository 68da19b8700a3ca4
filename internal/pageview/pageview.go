// Package pageview is the worker's domain: the PageView record and its
// codec, the agent that counts page views into the views (windowed) and
// totals tables, the per-page report, /count/ and the livecheck's record.
// App declares it to the runtime (internal/app).
//
// This is the package a new worker replaces; the runtime stays as it is.
package pageview

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/gofaust/pageviews/internal/jsonscan"
	"github.com/gofaust/pageviews/internal/window"
)

// PageView is the value of a record on the page-views topic; its key is the
// page path.
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
	ErrBadPage     = errors.New("page is not valid UTF-8")
	ErrNotUTF8     = errors.New("record is not valid UTF-8")
)

// Decode parses and validates a PageView. now is the worker's clock, for the
// future-timestamp check.
func Decode(b []byte, now time.Time) (PageView, error) { return decode(b, now, false) }

// decode is Decode whose Page, with borrow, may share b's memory: the
// agent's hot path copies the page into the tables' keys anyway.
func decode(b []byte, now time.Time, borrow bool) (PageView, error) {
	pv, ok := decodeFast(b, borrow)
	if !ok {
		// The fast path takes only ASCII, so only here can b be invalid
		// UTF-8. encoding/json would silently replace invalid UTF-8 with
		// U+FFFD, making different raw pages one page; refuse such records.
		if !utf8.Valid(b) {
			return PageView{}, ErrNotUTF8
		}
		var err error
		if pv, err = decodeJSON(b); err != nil {
			return pv, err
		}
		if !utf8.ValidString(pv.Page) {
			return pv, ErrBadPage
		}
	}
	switch {
	case pv.Page == "":
		return pv, ErrNoPage
	case len(pv.Page) > MaxPageLen:
		return pv, ErrPageTooLong
	case !pv.Timestamp.IsZero():
		if err := window.CheckTime(pv.Timestamp, now); err != nil {
			return pv, err
		}
	}
	return pv, nil
}

// decodeFast reads the common shape of a PageView (jsonscan); ok is false
// for anything else. With borrow, Page shares b's memory.
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

// decodeJSON is the general decoder, kept apart from Decode so that the
// value Decode returns does not escape to the heap on the fast path.
func decodeJSON(b []byte) (PageView, error) {
	var pv PageView
	if err := json.Unmarshal(b, &pv); err != nil {
		return PageView{}, fmt.Errorf("decode page view: %w", err)
	}
	return pv, nil
}

// Encode renders a PageView as the JSON the topic carries, with the event
// time in UTC at millisecond precision.
func Encode(pv PageView) []byte {
	page, _ := json.Marshal(pv.Page)
	b := fmt.Appendf(make([]byte, 0, 64+len(page)), `{"page":%s,"count":%d`, page, pv.Count)
	if !pv.Timestamp.IsZero() {
		b = pv.Timestamp.UTC().AppendFormat(append(b, `,"timestamp":"`...), `2006-01-02T15:04:05.000Z07:00"`)
	}
	return append(b, '}')
}
