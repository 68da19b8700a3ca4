package pageview

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// BenchmarkAgentHandle measures the agent's hot path: decode one page view
// and update both tables through the write-back cache, over 1,000 pages.
func BenchmarkAgentHandle(b *testing.B) {
	db, _, err := store.Open(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	clock := func() time.Time { return now }
	tables := Tables{
		Views:  table.NewWindowed("views", "v", table.Int64{}, db, window.Hopping{Size: time.Minute, Expires: 5 * time.Minute}, clock),
		Totals: table.New("totals", "t", table.Int64{}, db),
	}
	for _, t := range []stream.Table{tables.Views, tables.Totals} {
		if _, _, err := t.Assign(0); err != nil {
			b.Fatal(err)
		}
	}
	a := &Agent{Tables: tables, Codec: NewCodec(), Clock: clock}
	evs := make([]stream.Event, 1000)
	for i := range evs {
		pv := PageView{Page: "/page/" + strconv.Itoa(i), Count: int64(i), Timestamp: now}
		evs[i] = stream.Event{Value: Encode(pv), Timestamp: now}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := a.Handle(&evs[i%len(evs)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode measures the page-view decoder on the common shape.
func BenchmarkDecode(b *testing.B) {
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	v := Encode(PageView{Page: "/some/page/path", Count: 12345, Timestamp: now})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(v, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeAvro measures the codec on a registry-framed view of the
// worker's own schema (the writer schema cached after the first record),
// next to BenchmarkDecode's JSON.
func BenchmarkDecodeAvro(b *testing.B) {
	srv := httptest.NewServer(srfake.NewRegistry().Handler())
	defer srv.Close()
	reg, err := schema.Connect(schema.Options{URL: srv.URL})
	if err != nil {
		b.Fatal(err)
	}
	c := NewCodec()
	if _, err := c.Bind(context.Background(), reg, Topic+"-value"); err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 16, 0, 30, 0, time.UTC)
	v, err := c.Encode(PageView{Page: "/some/page/path", Count: 12345, Timestamp: now})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		pv, err := c.Decode(v)
		if err == nil {
			err = validate(pv, now)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
