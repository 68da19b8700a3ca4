package sums

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/stream"
)

type answer struct {
	Key    string `json:"key"`
	Window int64  `json:"window"`
	Total  int64  `json:"total"`
}

func get(t *testing.T, d *app.Driver, key string) answer {
	t.Helper()
	code, body := d.Get("/sums/?key=" + key)
	if code != http.StatusOK {
		t.Fatalf("/sums/?key=%s: %d %s", key, code, body)
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("/sums/?key=%s: %v: %s", key, err, body)
	}
	return a
}

func TestSumsPerWindowAndInTotal(t *testing.T) {
	d := app.NewDriver(t, App(), map[string]string{"PARTITIONS": "3"}, time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC))
	want := map[string]int64{}
	send := func(key string, amount int64) {
		t.Helper()
		if err := d.Send(key, []byte(strconv.FormatInt(amount, 10))); err != nil {
			t.Fatalf("send %s %d: %v", key, amount, err)
		}
		want[key] += amount
	}
	for i := range 10 {
		send("acct-"+strconv.Itoa(i%4), int64(100*i-250))
	}
	for key, total := range want {
		if got := get(t, d, key); got.Window != total || got.Total != total {
			t.Errorf("%s = %+v, want %d in the window and in total", key, got, total)
		}
	}

	// A window later the window of now starts empty; totals keep counting.
	d.Advance(d.Config().Windows["sums"].Size)
	send("acct-1", 7)
	if got := get(t, d, "acct-1"); got.Window != 7 || got.Total != want["acct-1"] {
		t.Errorf("acct-1 a window later = %+v, want window 7, total %d", got, want["acct-1"])
	}
	d.Flush()
	if n := len(d.Output(app.Changelog(d.Config().Group, "totals"))); n != len(want) {
		t.Errorf("totals changelog holds %d records after one flush, want one per account (%d)", n, len(want))
	}
}

func TestSumsRefusesWhatItCannotAdd(t *testing.T) {
	d := app.NewDriver(t, App(), nil, time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC))
	for _, bad := range []string{"", "12.5", "lots", "99999999999999999999"} {
		if err := d.Send("acct", []byte(bad)); !errors.Is(err, stream.ErrInvalid) {
			t.Errorf("amount %q: error %v, want one wrapping stream.ErrInvalid (dead-lettered)", bad, err)
		}
	}
	if code, _ := d.Get("/sums/"); code != http.StatusBadRequest {
		t.Errorf("/sums/ without a key: %d, want 400", code)
	}
}
