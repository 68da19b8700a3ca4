package pageview_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
	"github.com/gofaust/pageviews/internal/window"
)

// t0 is the worker's clock in these tests, on a minute boundary.
var t0 = time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)

var win = window.Hopping{Size: time.Minute, Grace: 5 * time.Minute, Expires: 5 * time.Minute}

// clock is an injected wall clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// decodeCase is a case of TestDecode: an input and the page view it
// decodes to, or the error it fails with.
type decodeCase struct {
	name    string
	in      string
	want    pageview.PageView
	wantErr error // a sentinel, or errAny for any error
}

func TestDecode(t *testing.T) {
	for _, tt := range append(validDecodeCases(), invalidDecodeCases()...) {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pageview.Decode([]byte(tt.in), t0)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Decode(%q): %v", tt.in, err)
			case tt.wantErr == nil:
				if !equalPageView(got, tt.want) {
					t.Errorf("Decode(%q) = %+v, want %+v", tt.in, got, tt.want)
				}
			case err == nil:
				t.Errorf("Decode(%q) = %+v, want error %v", tt.in, got, tt.wantErr)
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Errorf("Decode(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
		})
	}
}

// validDecodeCases are the inputs Decode accepts.
func validDecodeCases() []decodeCase {
	return []decodeCase{
		{
			name: "the contract example",
			in:   `{"page":"/home","count":12,"timestamp":"2026-11-26T16:00:00.123Z"}`,
			want: pageview.PageView{Page: "/home", Count: 12, Timestamp: t0.Add(123 * time.Millisecond)},
		},
		{
			name: "missing timestamp",
			in:   `{"page":"/home","count":1}`,
			want: pageview.PageView{Page: "/home", Count: 1},
		},
		{
			name: "null timestamp",
			in:   `{"page":"/home","count":1,"timestamp":null}`,
			want: pageview.PageView{Page: "/home", Count: 1},
		},
		{
			name: "missing count",
			in:   `{"page":"/"}`,
			want: pageview.PageView{Page: "/"},
		},
		{
			name: "time zone offset",
			in:   `{"page":"/tz","count":3,"timestamp":"2026-11-26T17:30:00+01:30"}`,
			want: pageview.PageView{Page: "/tz", Count: 3, Timestamp: t0},
		},
		{
			name: "nanoseconds",
			in:   `{"page":"/ns","timestamp":"2026-11-26T15:59:59.999999999Z"}`,
			want: pageview.PageView{Page: "/ns", Timestamp: t0.Add(-time.Nanosecond)},
		},
		{
			name: "unknown fields are ignored",
			in:   `{"page":"/x","count":2,"referrer":"/home","extra":{"a":[1,2]}}`,
			want: pageview.PageView{Page: "/x", Count: 2},
		},
		{
			name: "unicode page",
			in:   `{"page":"/caf\u00e9/日本","count":1}`,
			want: pageview.PageView{Page: "/café/日本", Count: 1},
		},
		{
			name: "page of exactly the maximum length",
			in:   `{"page":"/` + strings.Repeat("a", pageview.MaxPageLen-1) + `"}`,
			want: pageview.PageView{Page: "/" + strings.Repeat("a", pageview.MaxPageLen-1)},
		},
		{
			name: "timestamp exactly MaxFuture ahead",
			in:   `{"page":"/soon","timestamp":"2026-11-26T17:00:00Z"}`,
			want: pageview.PageView{Page: "/soon", Timestamp: t0.Add(window.MaxFuture)},
		},
		{
			name: "old timestamp",
			in:   `{"page":"/old","timestamp":"2001-01-01T00:00:00Z"}`,
			want: pageview.PageView{Page: "/old", Timestamp: time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)},
		},
	}
}

// invalidDecodeCases are the inputs Decode rejects, with the error.
func invalidDecodeCases() []decodeCase {
	return []decodeCase{
		{name: "empty input", in: ``, wantErr: errAny},
		{name: "not JSON", in: `page=/home`, wantErr: errAny},
		{name: "truncated JSON", in: `{"page":"/home"`, wantErr: errAny},
		{name: "array", in: `["/home"]`, wantErr: errAny},
		{name: "two values", in: `{"page":"/a"}{"page":"/b"}`, wantErr: errAny},
		{name: "page is a number", in: `{"page":1}`, wantErr: errAny},
		{name: "count is a string", in: `{"page":"/a","count":"12"}`, wantErr: errAny},
		{name: "count is a fraction", in: `{"page":"/a","count":1.5}`, wantErr: errAny},
		{name: "count overflows", in: `{"page":"/a","count":9223372036854775808}`, wantErr: errAny},
		{name: "timestamp is not RFC 3339", in: `{"page":"/a","timestamp":"26/11/2026 16:00"}`, wantErr: errAny},
		{name: "timestamp is a number", in: `{"page":"/a","timestamp":1795708800000}`, wantErr: errAny},
		{name: "timestamp is empty", in: `{"page":"/a","timestamp":""}`, wantErr: errAny},
		{name: "missing page", in: `{"count":12,"timestamp":"2026-11-26T16:00:00Z"}`, wantErr: pageview.ErrNoPage},
		{name: "empty page", in: `{"page":"","count":12}`, wantErr: pageview.ErrNoPage},
		{name: "null page", in: `{"page":null}`, wantErr: pageview.ErrNoPage},
		{name: "empty object", in: `{}`, wantErr: pageview.ErrNoPage},
		{name: "JSON null", in: `null`, wantErr: pageview.ErrNoPage},
		{
			name:    "page too long",
			in:      `{"page":"/` + strings.Repeat("a", pageview.MaxPageLen) + `"}`,
			wantErr: pageview.ErrPageTooLong,
		},
		{
			name:    "page too long in bytes, not characters",
			in:      `{"page":"/` + strings.Repeat("é", pageview.MaxPageLen/2) + `"}`,
			wantErr: pageview.ErrPageTooLong,
		},
		{
			name:    "invalid UTF-8 in the page",
			in:      "{\"page\":\"/\xff\xfe\"}",
			wantErr: pageview.ErrNotUTF8,
		},
		{
			name:    "timestamp a millisecond past MaxFuture",
			in:      `{"page":"/later","timestamp":"2026-11-26T17:00:00.001Z"}`,
			wantErr: window.ErrFuture,
		},
		{
			name:    "far-future timestamp",
			in:      `{"page":"/later","timestamp":"2099-01-01T00:00:00Z"}`,
			wantErr: window.ErrFuture,
		},
		{
			name:    "far future in another zone",
			in:      `{"page":"/later","timestamp":"2026-11-26T18:00:00.001+01:00"}`,
			wantErr: window.ErrFuture,
		},
	}
}

// errAny stands for any error in test tables.
var errAny = errors.New("any error")

// equalPageView compares page views, timestamps as instants.
func equalPageView(a, b pageview.PageView) bool {
	return a.Page == b.Page && a.Count == b.Count && a.Timestamp.Equal(b.Timestamp)
}

func TestDecodeFutureErrorNamesTimestamp(t *testing.T) {
	_, err := pageview.Decode([]byte(`{"page":"/x","timestamp":"2099-01-01T00:00:00Z"}`), t0)
	if !errors.Is(err, window.ErrFuture) || !strings.Contains(err.Error(), "2099-01-01T00:00:00Z") {
		t.Errorf("error = %v, want ErrFuture naming the timestamp", err)
	}
}

func TestEncode(t *testing.T) {
	tests := []struct {
		name string
		pv   pageview.PageView
		want string
	}{
		{
			name: "the contract example",
			pv:   pageview.PageView{Page: "/home", Count: 12, Timestamp: t0.Add(123 * time.Millisecond)},
			want: `{"page":"/home","count":12,"timestamp":"2026-11-26T16:00:00.123Z"}`,
		},
		{
			name: "no timestamp",
			pv:   pageview.PageView{Page: "/", Count: 1},
			want: `{"page":"/","count":1}`,
		},
		{
			name: "whole second keeps its milliseconds",
			pv:   pageview.PageView{Page: "/", Count: 1, Timestamp: t0},
			want: `{"page":"/","count":1,"timestamp":"2026-11-26T16:00:00.000Z"}`,
		},
		{
			name: "other zone is written in UTC, sub-millisecond truncated",
			pv:   pageview.PageView{Page: "/", Count: -3, Timestamp: t0.Add(999_999).In(time.FixedZone("x", -5*3600))},
			want: `{"page":"/","count":-3,"timestamp":"2026-11-26T16:00:00.000Z"}`,
		},
		{
			name: "page needing escapes",
			pv:   pageview.PageView{Page: "/a\"b\\c\n<d>", Count: 0},
			want: `{"page":"/a\"b\\c\n\u003cd\u003e","count":0}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := pageview.Encode(tt.pv)
			if string(got) != tt.want {
				t.Errorf("Encode(%+v) = %s, want %s", tt.pv, got, tt.want)
			}
			if !json.Valid(got) {
				t.Errorf("Encode(%+v) = %s is not valid JSON", tt.pv, got)
			}
		})
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		pv   pageview.PageView
		// rejected: Decode refuses what Encode wrote, as it must for an
		// event time outside the years 0000 to 9999.
		rejected bool
	}{
		{name: "typical", pv: pageview.PageView{Page: "/home", Count: 12, Timestamp: t0.Add(123 * time.Millisecond)}},
		{name: "no timestamp", pv: pageview.PageView{Page: "/home", Count: 1}},
		{name: "negative count", pv: pageview.PageView{Page: "/n", Count: -1 << 63, Timestamp: t0}},
		{name: "largest count", pv: pageview.PageView{Page: "/n", Count: 1<<63 - 1, Timestamp: t0}},
		{name: "escapes", pv: pageview.PageView{Page: "/\"quoted\"\\\t\u2028<script>&", Count: 5}},
		{name: "unicode", pv: pageview.PageView{Page: "/日本語/😀", Count: 5}},
		{name: "maximum length", pv: pageview.PageView{Page: strings.Repeat("/x", pageview.MaxPageLen/2)}},
		{name: "before the epoch", pv: pageview.PageView{Page: "/old", Timestamp: time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)}},
		{name: "exactly MaxFuture ahead", pv: pageview.PageView{Page: "/soon", Timestamp: t0.Add(window.MaxFuture)}},
		{name: "year zero", pv: pageview.PageView{Page: "/y0", Timestamp: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{
			// Decode accepts "0000-01-01T00:30:00+01:00"; in UTC that is year -1.
			name:     "year before zero",
			pv:       pageview.PageView{Page: "/y-1", Timestamp: time.Date(-1, 12, 31, 23, 30, 0, 0, time.UTC)},
			rejected: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := pageview.Encode(tt.pv)
			got, err := pageview.Decode(enc, t0)
			if tt.rejected {
				if err == nil {
					t.Fatalf("Decode(%s) accepted it, want an error", enc)
				}
				// What matters is that such a time never gets in: Decode
				// refuses the local-time spelling of it too.
				in := `{"page":"/y-1","timestamp":"0000-01-01T00:30:00+01:00"}`
				if _, err := pageview.Decode([]byte(in), t0); !errors.Is(err, window.ErrBadTime) {
					t.Fatalf("Decode(%s) = %v, want ErrBadTime", in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(Encode(%+v)) = Decode(%s): %v", tt.pv, enc, err)
			}
			if !equalPageView(got, tt.pv) {
				t.Errorf("Decode(Encode(%+v)) = %+v", tt.pv, got)
			}
		})
	}
}

func TestTrend(t *testing.T) {
	tests := []struct {
		now, back int64
		want      string
	}{
		{0, 0, pageview.NotEnough},
		{1, 1, pageview.NotEnough}, // back == now is not "more"
		{4, 4, pageview.NotEnough}, // back == now just below trending
		{4, 0, pageview.NotEnough}, // rising but below trending
		{4, 5, pageview.LessPopular},
		{0, 1, pageview.LessPopular},
		{2, 100, pageview.LessPopular},
		{5, 0, pageview.Trending},   // exactly TrendingAt
		{5, 5, pageview.Trending},   // back == now at TrendingAt
		{5, 100, pageview.Trending}, // trending wins over less popular
		{6, 2, pageview.Trending},
		{1000, 999, pageview.Trending},
	}
	if pageview.TrendingAt != 5 {
		t.Fatalf("TrendingAt = %d, the seed's rule is 5", pageview.TrendingAt)
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("now=%d/back=%d", tt.now, tt.back), func(t *testing.T) {
			if got := pageview.Trend(tt.now, tt.back); got != tt.want {
				t.Errorf("Trend(%d, %d) = %q, want %q", tt.now, tt.back, got, tt.want)
			}
		})
	}
}

// fixture is a worker's two tables on a real store, with partitions 0 and 1
// assigned.
type fixture struct {
	db     *store.DB
	clock  *clock
	tables pageview.Tables
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	db, _, err := store.Open(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	c := &clock{now: t0.Add(30 * time.Second)}
	f := &fixture{
		db:    db,
		clock: c,
		tables: pageview.Tables{
			Views:  table.NewWindowed("views", "pageviews-views-changelog", table.Int64{}, db, win, c.Now),
			Totals: table.New("totals", "pageviews-totals-changelog", table.Int64{}, db),
		},
	}
	for _, p := range []int32{0, 1} {
		if _, _, err := f.tables.Views.Assign(p); err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.tables.Totals.Assign(p); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// reporter is the fixture's Reporter on a worker alone in the group, which
// owns the partitions the totals table holds of the fixture's two.
func (f *fixture) reporter() *pageview.Reporter {
	s := services(nil)
	s.Partitions = func() (int32, error) { return 2, nil }
	s.Clock, s.Owned = f.clock.Now, f.tables.Totals.Partitions
	return pageview.NewReporter(s, f.tables, pageview.NewCodec())
}

// view counts n views of page at ts in partition p, as the agent does.
func (f *fixture) view(t testing.TB, p int32, page string, ts time.Time, n int) {
	t.Helper()
	inc := func(v int64) int64 { return v + 1 }
	for range n {
		applied, err := f.tables.Views.Update(p, page, ts, inc)
		if err != nil || !applied {
			t.Fatalf("Views.Update(%d, %q, %v) = %v, %v", p, page, ts, applied, err)
		}
		if err := f.tables.Totals.Update(p, page, inc); err != nil {
			t.Fatalf("Totals.Update(%d, %q): %v", p, page, err)
		}
	}
}

// commit flushes partition p of both tables to the store.
func (f *fixture) commit(t testing.TB, p int32) {
	t.Helper()
	b := f.db.NewBatch()
	for _, tb := range []interface {
		Flush(int32, time.Time) ([]table.Record, error)
		Write(int32, *store.Batch, int64) error
	}{f.tables.Views, f.tables.Totals} {
		if _, err := tb.Flush(p, f.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if err := tb.Write(p, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	f.tables.Views.Flushed(p)
	f.tables.Totals.Flushed(p)
}

// fill writes the views the report tests read. The clock is t0+30s, so the
// now-window starts at t0 and the window two minutes back at t0-2m.
func (f *fixture) fill(t testing.TB) {
	t.Helper()
	back := t0.Add(-2 * time.Minute)
	f.view(t, 0, "/home", t0.Add(5*time.Second), 3)
	f.view(t, 0, "/home", back.Add(10*time.Second), 2)
	f.view(t, 0, "/about", back.Add(time.Second), 4)
	f.commit(t, 0) // partition 0 is read through the store from here on
	f.view(t, 0, "/about", t0.Add(time.Second), 1)
	f.view(t, 1, "/home", t0.Add(20*time.Second), 4)
	f.view(t, 1, "/cold", t0.Add(-time.Minute), 1)           // neither window
	f.view(t, 1, "/home", t0.Add(time.Minute), 2)            // a later window
	f.view(t, 1, pageview.ReservedPrefix+"livecheck", t0, 9) // synthetic
	f.view(t, 1, pageview.ReservedPrefix+"x", back, 1)       // synthetic
}

func TestReport(t *testing.T) {
	f := newFixture(t)
	f.fill(t)
	r := f.reporter()

	home := pageview.PageReport{Now: 7, Count: 11, Report: pageview.Trending}
	about := pageview.PageReport{Now: 1, Count: 5, Report: pageview.LessPopular}
	cold := pageview.PageReport{Now: 0, Count: 1, Report: pageview.NotEnough}
	tests := []struct {
		page       string
		pages      map[string]pageview.PageReport
		now, count int64
	}{
		{"", map[string]pageview.PageReport{"/home": home, "/about": about, "/cold": cold}, 8, 17},
		{"/home", map[string]pageview.PageReport{"/home": home}, 7, 11},
		{"/about", map[string]pageview.PageReport{"/about": about}, 1, 5},
		{"/cold", map[string]pageview.PageReport{"/cold": cold}, 0, 1},
		{"/absent", map[string]pageview.PageReport{}, 0, 0},
		{pageview.ReservedPrefix + "livecheck", map[string]pageview.PageReport{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run("page="+tt.page, func(t *testing.T) {
			rep, err := r.Report(context.Background(), tt.page)
			if err != nil {
				t.Fatalf("Report(%q): %v", tt.page, err)
			}
			if !maps.Equal(rep.Pages, tt.pages) {
				t.Errorf("Pages = %+v, want %+v", rep.Pages, tt.pages)
			}
			if rep.Now != tt.now || rep.Count != tt.count {
				t.Errorf("totals = now %d, count %d, want %d, %d", rep.Now, rep.Count, tt.now, tt.count)
			}
			if rep.Stale {
				t.Error("Stale with every partition assigned")
			}
		})
	}
}

// The summary timer's sums, read without building the report, are the report's.
func TestSummaryIsTheReportsSums(t *testing.T) {
	f := newFixture(t)
	f.fill(t)
	r := f.reporter()
	rep, err := r.Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := r.Summary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := pageview.Summary{Pages: pagesByPartition(t, r), Count: rep.Count, Now: rep.Now, Stale: rep.Stale}
	if sum != want || sum.Pages <= int64(len(rep.Pages)) || sum.Now == 0 { // the fixture has /home in two partitions
		t.Errorf("Summary = %+v, want the report's %+v", sum, want)
	}
}

// pagesByPartition counts the pages of each partition's report, summed.
func pagesByPartition(t *testing.T, r *pageview.Reporter) int64 {
	t.Helper()
	parts, missing, err := r.Reads.All(context.Background(), url.Values{})
	if err != nil || len(missing) > 0 {
		t.Fatalf("read every partition: missing %v, %v", missing, err)
	}
	var n int64
	for _, pc := range parts {
		for _, c := range pc.Pages {
			if c.Now != 0 || c.Count != 0 {
				n++
			}
		}
	}
	return n
}

func TestReportFollowsTheClock(t *testing.T) {
	f := newFixture(t)
	f.fill(t)
	r := f.reporter()
	// One minute later the now-window holds the 2 later /home views, and
	// the window two minutes back is t0-1m, which holds /cold.
	f.clock.Set(t0.Add(time.Minute + 59*time.Second))
	rep, err := r.Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]pageview.PageReport{
		"/home":  {Now: 2, Count: 11, Report: pageview.NotEnough},
		"/about": {Now: 0, Count: 5, Report: pageview.NotEnough},
		"/cold":  {Now: 0, Count: 1, Report: pageview.LessPopular},
	}
	if !maps.Equal(rep.Pages, want) {
		t.Errorf("Pages = %+v, want %+v", rep.Pages, want)
	}
}

func TestReportJSON(t *testing.T) {
	f := newFixture(t)
	f.view(t, 0, "/home", t0, 5)
	r := f.reporter()
	rep, err := r.Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"page_views_within_1_minute":5,"count":5,"pages":{"/home":{"page_views_within_1_minute":5,"count":5,"report":"Trending now"}},"stale":false}`
	if string(got) != want {
		t.Errorf("report JSON = %s, want %s", got, want)
	}
	empty, err := newFixture(t).reporter().Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(empty); string(got) != `{"page_views_within_1_minute":0,"count":0,"pages":{},"stale":false}` {
		t.Errorf("empty report JSON = %s", got)
	}
}

func TestReportRevokedPartition(t *testing.T) {
	t.Run("revoked from both tables", func(t *testing.T) {
		f := newFixture(t)
		f.fill(t)
		f.tables.Views.Revoke(1)
		f.tables.Totals.Revoke(1)
		rep, err := f.reporter().Report(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		// Only partition 0 is left: /home has 3 views now and 2 two
		// minutes back.
		want := map[string]pageview.PageReport{
			"/home":  {Now: 3, Count: 5, Report: pageview.NotEnough},
			"/about": {Now: 1, Count: 5, Report: pageview.LessPopular},
		}
		if !maps.Equal(rep.Pages, want) {
			t.Errorf("Pages = %+v, want %+v", rep.Pages, want)
		}
	})
	t.Run("revoked from views while the report is built", func(t *testing.T) {
		f := newFixture(t)
		f.fill(t)
		f.tables.Views.Revoke(1) // totals still lists partition 1
		rep, err := f.reporter().Report(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Stale {
			t.Error("Stale = false with a partition revoked mid-report")
		}
		if cold, ok := rep.Pages["/cold"]; ok {
			t.Errorf("/cold lives only in the revoked partition 1, yet reported as %+v", cold)
		}
		if got, want := rep.Pages["/home"], (pageview.PageReport{Now: 3, Count: 5, Report: pageview.NotEnough}); got != want {
			t.Errorf("/home = %+v, want %+v (partition 1 skipped)", got, want)
		}
	})
}

// event builds a source record for the agent.
func event(p int32, value string, ts time.Time) *stream.Event {
	return &stream.Event{Partition: p, Value: []byte(value), Timestamp: ts}
}

func TestAgentHandle(t *testing.T) {
	start := win.Start(t0)
	tests := []struct {
		name      string
		ev        *stream.Event
		invalid   error // the sentinel a rejected record's error wraps
		window    int64 // the window the view is counted in
		lateViews bool
	}{
		{
			name:   "timestamp in the record value",
			ev:     event(0, `{"page":"/home","count":1,"timestamp":"2026-11-26T16:00:10Z"}`, t0.Add(-time.Hour)),
			window: start,
		},
		{
			name:   "no timestamp: the record timestamp is used",
			ev:     event(1, `{"page":"/home","count":1}`, t0.Add(90*time.Second)),
			window: start + 60_000,
		},
		{
			name:   "value timestamp wins over the record's",
			ev:     event(0, `{"page":"/home","timestamp":"2026-11-26T15:58:00Z"}`, t0),
			window: start - 2*60_000,
		},
		{name: "bad JSON", ev: event(0, `{"page":`, t0), invalid: errAny},
		{name: "no page", ev: event(0, `{"count":3}`, t0), invalid: pageview.ErrNoPage},
		{name: "page too long", ev: event(0, `{"page":"/`+strings.Repeat("p", pageview.MaxPageLen)+`"}`, t0), invalid: pageview.ErrPageTooLong},
		{name: "far future", ev: event(0, `{"page":"/x","timestamp":"2030-01-01T00:00:00Z"}`, t0), invalid: window.ErrFuture},
		{name: "empty value", ev: event(0, ``, t0), invalid: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var late []int32
			a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now, Late: func(ev *stream.Event) { late = append(late, ev.Partition) }}
			err := a.Handle(tt.ev)
			p := tt.ev.Partition
			if tt.invalid != nil {
				if !errors.Is(err, stream.ErrInvalid) {
					t.Fatalf("Handle error = %v, want one wrapping stream.ErrInvalid", err)
				}
				if tt.invalid != errAny && !errors.Is(err, tt.invalid) {
					t.Errorf("Handle error = %v, want one wrapping %v", err, tt.invalid)
				}
				for _, q := range []int32{0, 1} {
					if n := countKeys(t, f.tables.Totals, q); n != 0 {
						t.Errorf("an invalid record counted %d totals in partition %d", n, q)
					}
				}
				if f.tables.Views.Watermark(p) != 0 {
					t.Errorf("an invalid record moved the watermark to %d", f.tables.Views.Watermark(p))
				}
				return
			}
			if err != nil {
				t.Fatalf("Handle: %v", err)
			}
			v, ok, err := f.tables.Views.Get(p, "/home", tt.window)
			if err != nil || !ok || v != 1 {
				t.Errorf("Views.Get(%d, /home, %d) = %d, %v, %v, want 1", p, tt.window, v, ok, err)
			}
			v, ok, err = f.tables.Totals.Get(p, "/home")
			if err != nil || !ok || v != 1 {
				t.Errorf("Totals.Get(%d, /home) = %d, %v, %v, want 1", p, v, ok, err)
			}
			if other := 1 - p; countKeys(t, f.tables.Totals, other) != 0 {
				t.Errorf("the view was counted in partition %d too", other)
			}
			if len(late) != 0 {
				t.Errorf("Late called for %v", late)
			}
		})
	}
}

func countKeys(t testing.TB, tb *table.Table[int64], p int32) int {
	t.Helper()
	n := 0
	if err := tb.Scan(p, func(string, int64) { n++ }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAgentCounts(t *testing.T) {
	f := newFixture(t)
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now}
	evs := []*stream.Event{
		event(0, `{"page":"/a","count":1,"timestamp":"2026-11-26T16:00:01Z"}`, t0),
		event(0, `{"page":"/a","count":2,"timestamp":"2026-11-26T16:00:59.999Z"}`, t0),
		event(0, `{"page":"/a","count":3,"timestamp":"2026-11-26T16:01:00Z"}`, t0),
		event(0, `{"page":"/b","count":1}`, t0.Add(30*time.Second)),
		event(0, `not json`, t0),
		event(1, `{"page":"/a","count":4}`, t0),
	}
	for _, ev := range evs {
		if err := a.Handle(ev); err != nil && !errors.Is(err, stream.ErrInvalid) {
			t.Fatalf("Handle: %v", err)
		}
	}
	for _, c := range []struct {
		p          int32
		page       string
		start      int64
		view, tote int64
	}{
		{0, "/a", win.Start(t0), 2, 3},
		{0, "/a", win.Start(t0) + 60_000, 1, 3},
		{0, "/b", win.Start(t0), 1, 1},
		{1, "/a", win.Start(t0), 1, 1},
	} {
		v, _, err := f.tables.Views.Get(c.p, c.page, c.start)
		if err != nil || v != c.view {
			t.Errorf("Views.Get(%d, %s, %d) = %d, %v, want %d", c.p, c.page, c.start, v, err, c.view)
		}
		v, _, err = f.tables.Totals.Get(c.p, c.page)
		if err != nil || v != c.tote {
			t.Errorf("Totals.Get(%d, %s) = %d, %v, want %d", c.p, c.page, v, err, c.tote)
		}
	}
}

func TestAgentLateView(t *testing.T) {
	f := newFixture(t)
	var late []int32
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now, Late: func(ev *stream.Event) { late = append(late, ev.Partition) }}
	// The worker's clock is ten minutes past t0, and so is the first view:
	// it moves the stream time there, so the window of t0 has expired when
	// the second arrives.
	f.clock.Set(t0.Add(10 * time.Minute))
	for _, ev := range []*stream.Event{
		event(1, `{"page":"/a","timestamp":"2026-11-26T16:10:00Z"}`, t0),
		event(1, `{"page":"/a","timestamp":"2026-11-26T16:00:10Z"}`, t0),
	} {
		if err := a.Handle(ev); err != nil {
			t.Fatalf("Handle: %v", err)
		}
	}
	if len(late) != 1 || late[0] != 1 {
		t.Errorf("Late called for %v, want [1]", late)
	}
	if v, ok, err := f.tables.Views.Get(1, "/a", win.Start(t0)); err != nil || ok {
		t.Errorf("expired window reads %d, %v, %v, want absent", v, ok, err)
	}
	// A late view still counts in the total.
	if v, _, err := f.tables.Totals.Get(1, "/a"); err != nil || v != 2 {
		t.Errorf("Totals.Get = %d, %v, want 2", v, err)
	}

	// Without a Late hook a late view is counted the same way.
	a.Late = nil
	if err := a.Handle(event(1, `{"page":"/a","timestamp":"2026-11-26T16:00:20Z"}`, t0)); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if v, _, err := f.tables.Totals.Get(1, "/a"); err != nil || v != 3 {
		t.Errorf("Totals.Get = %d, %v, want 3", v, err)
	}
}

func TestAgentUnassignedPartition(t *testing.T) {
	f := newFixture(t)
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now}
	err := a.Handle(event(7, `{"page":"/a"}`, t0))
	if !errors.Is(err, table.ErrNotAssigned) {
		t.Errorf("Handle on an unassigned partition = %v, want ErrNotAssigned", err)
	}
	if errors.Is(err, stream.ErrInvalid) {
		t.Error("an unassigned partition is not a poison record, yet the error wraps ErrInvalid")
	}
}

// TestAgentFarFutureRecordTimestamp: MaxFuture guards the watermark against
// one absurd event time. A view without a timestamp uses the record
// timestamp as its event time, so the same guard must apply to it.
func TestAgentFarFutureRecordTimestamp(t *testing.T) {
	f := newFixture(t)
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now}
	f.view(t, 0, "/live", t0, 1)
	err := a.Handle(event(0, `{"page":"/a"}`, t0.Add(24*time.Hour)))
	if v, ok, _ := f.tables.Views.Get(0, "/live", win.Start(t0)); !ok || v != 1 {
		t.Errorf("a record timestamp a day ahead expired the live window (value %d, present %v)", v, ok)
	}
	if !errors.Is(err, stream.ErrInvalid) || !errors.Is(err, window.ErrFuture) {
		t.Errorf("Handle = %v, want ErrInvalid wrapping ErrFuture", err)
	}
}

func TestReportConcurrentWithAgent(t *testing.T) {
	f := newFixture(t)
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now}
	r := f.reporter()
	const n = 500
	var wg sync.WaitGroup
	for _, p := range []int32{0, 1} {
		wg.Go(func() {
			for i := range n {
				ev := event(p, fmt.Sprintf(`{"page":"/p%d","count":%d}`, i%7, i), t0.Add(10*time.Second))
				if err := a.Handle(ev); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			rep, err := r.Report(context.Background(), "")
			if err != nil {
				t.Error(err)
				return
			}
			// The agent updates views before totals and the report reads
			// them one after the other, so mid-stream they need not agree.
			if rep.Now < 0 || rep.Now > 2*n || rep.Count < 0 || rep.Count > 2*n {
				t.Errorf("report mid-stream: now %d, count %d", rep.Now, rep.Count)
				return
			}
		}
	})
	wg.Wait()
	rep, err := r.Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Now != 2*n || rep.Count != 2*n {
		t.Errorf("final report: now %d, count %d, want %d", rep.Now, rep.Count, 2*n)
	}
}

// fuzzNow is the worker's clock in FuzzDecode.
var fuzzNow = t0

// FuzzDecode checks that Decode never panics, that what it accepts is a
// valid page view, and that Encode of an accepted view decodes to the same
// view. Encode writes event time in UTC at millisecond precision, so the
// round trip is compared at that precision; a second round trip must then
// be exact.
func FuzzDecode(f *testing.F) {
	f.Add(pageview.Encode(pageview.PageView{Page: "/home", Count: 12, Timestamp: t0.Add(123 * time.Millisecond)}))
	f.Add([]byte(`{"page":"/","count":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pv, err := pageview.Decode(b, fuzzNow)
		if err != nil {
			return
		}
		switch {
		case pv.Page == "":
			t.Fatalf("Decode(%q) accepted an empty page", b)
		case len(pv.Page) > pageview.MaxPageLen:
			t.Fatalf("Decode(%q) accepted a page of %d bytes", b, len(pv.Page))
		case !utf8.ValidString(pv.Page):
			t.Fatalf("Decode(%q) accepted an invalid UTF-8 page %q", b, pv.Page)
		case pv.Timestamp.After(fuzzNow.Add(window.MaxFuture)):
			t.Fatalf("Decode(%q) accepted timestamp %v, past now+MaxFuture", b, pv.Timestamp)
		}
		if pv.Timestamp.UTC().Year() < 0 {
			t.Fatalf("Decode(%q) accepted timestamp %v, before the year 0000", b, pv.Timestamp)
		}

		enc := pageview.Encode(pv)
		if !json.Valid(enc) {
			t.Fatalf("Encode(%+v) = %s is not valid JSON", pv, enc)
		}
		got, err := pageview.Decode(enc, fuzzNow)
		if err != nil {
			t.Fatalf("Decode(%q) = %+v, but Decode(Encode) = Decode(%s): %v", b, pv, enc, err)
		}
		want := pv
		want.Timestamp = pv.Timestamp.Truncate(time.Millisecond)
		if !equalPageView(got, want) {
			t.Fatalf("Decode(%q) = %+v, Decode(Encode) = %+v, want %+v", b, pv, got, want)
		}
		again, err := pageview.Decode(pageview.Encode(got), fuzzNow)
		if err != nil || !equalPageView(again, got) || !bytes.Equal(pageview.Encode(again), pageview.Encode(got)) {
			t.Fatalf("second round trip of %+v = %+v, %v", got, again, err)
		}
	})
}

// A view stamped ahead of the worker's clock (a client whose clock runs
// fast) counts in its own window but moves stream time no further than
// MaxClockSkew past the clock: the live windows do not expire, and on-time
// views are not dropped as late.
func TestAgentFutureViewKeepsWindowsLive(t *testing.T) {
	f := newFixture(t)
	f.clock.Set(t0.Add(20 * time.Second))
	var late []int32
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now, Late: func(ev *stream.Event) { late = append(late, ev.Partition) }}
	for _, ev := range []*stream.Event{
		event(1, `{"page":"/a","timestamp":"2026-11-26T16:00:05Z"}`, t0),
		event(1, `{"page":"/a","timestamp":"2026-11-26T16:30:00Z"}`, t0), // 30 minutes ahead
		event(1, `{"page":"/a","timestamp":"2026-11-26T16:00:15Z"}`, t0),
	} {
		if err := a.Handle(ev); err != nil {
			t.Fatalf("Handle: %v", err)
		}
	}
	if len(late) != 0 {
		t.Errorf("Late called for %v, want no late views", late)
	}
	if v, ok, err := f.tables.Views.Get(1, "/a", win.Start(t0)); err != nil || !ok || v != 2 {
		t.Errorf("window of t0 = %d, %v, %v, want 2 (both on-time views)", v, ok, err)
	}
	if v, ok, err := f.tables.Views.Get(1, "/a", win.Start(t0.Add(30*time.Minute))); err != nil || !ok || v != 1 {
		t.Errorf("window of the future view = %d, %v, %v, want 1", v, ok, err)
	}
	wantMax := t0.Add(20*time.Second + table.MaxClockSkew).UnixMilli()
	if got := f.tables.Views.Watermark(1); got > wantMax {
		t.Errorf("stream time = %d, want at most the clock plus %s (%d)", got, table.MaxClockSkew, wantMax)
	}
}

// TestAgentReservedPageNeedsTheSyntheticHeader: a view of a reserved page
// counts only when its record carries the synthetic header, so a view that
// reached the topic some other way (a producer of its own, a replayed
// record) cannot make the livecheck pass.
func TestAgentReservedPageNeedsTheSyntheticHeader(t *testing.T) {
	f := newFixture(t)
	a := &pageview.Agent{Tables: f.tables, Codec: pageview.NewCodec(), Clock: f.clock.Now}
	page := pageview.LivecheckPage
	value := `{"page":"` + page + `"}`

	err := a.Handle(event(0, value, t0))
	if !errors.Is(err, stream.ErrInvalid) || !strings.Contains(err.Error(), pageview.SyntheticHeader) {
		t.Errorf("Handle(reserved page, no header) = %v, want ErrInvalid naming %s", err, pageview.SyntheticHeader)
	}
	other := event(0, value, t0)
	other.Headers = []*sarama.RecordHeader{{Key: []byte("traceparent"), Value: []byte("00-x")}}
	if err := a.Handle(other); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("Handle(reserved page, other header) = %v, want ErrInvalid", err)
	}
	if n := countKeys(t, f.tables.Totals, 0); n != 0 {
		t.Fatalf("views of a reserved page without the header were counted (%d keys)", n)
	}

	marked := event(0, value, t0)
	marked.Headers = []*sarama.RecordHeader{{Key: []byte(pageview.SyntheticHeader), Value: []byte("livecheck")}}
	if err := a.Handle(marked); err != nil {
		t.Fatalf("Handle(reserved page, synthetic header): %v", err)
	}
	if v, _, err := f.tables.Totals.Get(0, page); err != nil || v != 1 {
		t.Errorf("Totals.Get(%s) = %d, %v, want 1", page, v, err)
	}
	// The header matters only for reserved pages.
	if err := a.Handle(event(0, `{"page":"/home"}`, t0)); err != nil {
		t.Errorf("Handle(/home, no header): %v", err)
	}
}

// TestReportFieldFollowsTheWindow: the count in the window of now is named
// after the window, so the field never lies, and a report reads back
// whatever its window is called.
func TestReportFieldFollowsTheWindow(t *testing.T) {
	for size, want := range map[time.Duration]string{
		time.Minute: "page_views_within_1_minute", 30 * time.Second: "page_views_within_30_seconds",
		2 * time.Minute: "page_views_within_2_minutes", time.Hour: "page_views_within_1_hour",
		90 * time.Second: "page_views_within_90_seconds", 1500 * time.Millisecond: "page_views_within_1500_milliseconds",
	} {
		if got := web.WindowField(pageview.Topic, size); got != want {
			t.Errorf("WindowField(%q, %s) = %q, want %q", pageview.Topic, size, got, want)
		}
	}
	rep := pageview.Report{Now: 3, Count: 9, Window: 30 * time.Second, MissingPartitions: []int32{2},
		Pages: map[string]pageview.PageReport{"/a&b": {Now: 3, Count: 9, Report: pageview.NotEnough}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(b), `"page_views_within_30_seconds":3`) != 2 || strings.Contains(string(b), "1_minute") {
		t.Errorf("report JSON with 30s windows = %s", b)
	}
	var back pageview.Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	rep.Window = 0 // not in the JSON but in the name
	if !reflect.DeepEqual(back, rep) {
		t.Errorf("read back %+v, want %+v", back, rep)
	}
}
