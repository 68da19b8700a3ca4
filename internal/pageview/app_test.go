package pageview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/stream"
)

// The app as the runtime runs it, through the test driver: /count/ goes
// to the agent, /report/ reads the tables, the clock moves windows.

// newDriver starts the app on four partitions at a minute boundary, so
// that the windows of a test are plain.
func newDriver(t *testing.T) *app.Driver {
	return app.NewDriver(t, App(), map[string]string{"PARTITIONS": "4"}, time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC))
}

// count views page n times through /count/.
func count(t *testing.T, d *app.Driver, page string, n int) {
	t.Helper()
	for range n {
		if code, body := d.Get("/count/?page=" + page); code != http.StatusOK {
			t.Fatalf("/count/?page=%s: %d %s", page, code, body)
		}
	}
}

func report(t *testing.T, d *app.Driver) Report {
	t.Helper()
	code, body := d.Get("/report/")
	if code != http.StatusOK {
		t.Fatalf("/report/: %d %s", code, body)
	}
	var rep Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("/report/: %v: %s", err, body)
	}
	return rep
}

func TestAppCountsInWindowsThroughTheDriver(t *testing.T) {
	d := newDriver(t)
	count(t, d, "/home", TrendingAt+1)
	count(t, d, "/about", 1)
	rep := report(t, d)
	if got := rep.Pages["/home"]; got.Now != TrendingAt+1 || got.Count != TrendingAt+1 || got.Report != Trending {
		t.Errorf("/home in its first window = %+v", got)
	}
	if rep.Now != TrendingAt+2 || rep.Count != TrendingAt+2 || rep.Stale {
		t.Errorf("totals = now %d, count %d, stale %v; want %d, %d, false", rep.Now, rep.Count, rep.Stale, TrendingAt+2, TrendingAt+2)
	}

	// Two minutes later /home has one view in the window of now and more in
	// the window two minutes back: less popular. The total keeps every view.
	d.Advance(2 * time.Minute)
	count(t, d, "/home", 1)
	rep = report(t, d)
	if got := rep.Pages["/home"]; got.Now != 1 || got.Count != TrendingAt+2 || got.Report != LessPopular {
		t.Errorf("/home two minutes later = %+v, want now 1, count %d, %q", got, TrendingAt+2, LessPopular)
	}
	if got, ok := rep.Pages["/about"]; !ok || got.Now != 0 || got.Count != 1 {
		t.Errorf("/about two minutes later = %+v (listed: %v), want now 0, count 1", got, ok)
	}
}

func TestAppFlushWritesChangelogs(t *testing.T) {
	d := newDriver(t)
	count(t, d, "/home", 3)
	d.Flush()
	totals := d.Output(app.Changelog(d.Config().Group, "totals"))
	if len(totals) != 1 {
		t.Fatalf("totals changelog holds %d records after one flush of one page, want 1", len(totals))
	}
	k, _ := totals[0].Key.Encode()
	v, _ := totals[0].Value.Encode()
	if string(k) != "/home" || string(v) != "3" {
		t.Errorf("totals changelog record = %q: %q, want \"/home\": \"3\"", k, v)
	}
	// One page in one window, and the partition's closed-up-to point.
	var keys []string
	for _, m := range d.Output(app.Changelog(d.Config().Group, "views")) {
		k, _ := m.Key.Encode()
		keys = append(keys, string(k))
	}
	if start := d.Now().Truncate(time.Minute).UnixMilli(); !slices.Equal(keys, []string{fmt.Sprintf("/home|%d", start), "\x00closed"}) {
		t.Errorf("views changelog keys = %q, want /home's window and the closed-up-to point", keys)
	}
	// Nothing changed since: the next flush writes nothing.
	d.Flush()
	if n := len(d.Output(app.Changelog(d.Config().Group, "totals"))); n != 1 {
		t.Errorf("a flush with no changes wrote to the changelog (%d records)", n)
	}
}

func TestAppLateAndInvalidRecords(t *testing.T) {
	d := newDriver(t)
	cfg := d.Config()
	// Once the partition's stream time is now, a view whose window expired
	// long before counts in the total only.
	count(t, d, "/old", 1)
	old := d.Now().Add(-2 * cfg.Windows["views"].Expires)
	if err := d.Send("/old", Encode(PageView{Page: "/old", Count: 2, Timestamp: old})); err != nil {
		t.Fatalf("late view: %v", err)
	}
	if got := d.Late("views"); got != 1 {
		t.Errorf("late events = %d, want 1", got)
	}
	if got := report(t, d).Pages["/old"]; got.Count != 2 || got.Now != 1 {
		t.Errorf("/old = %+v, want count 2 and 1 in the window of now", got)
	}

	// Bad input is refused as invalid: the runtime dead-letters it.
	for _, bad := range [][]byte{[]byte("{"), Encode(PageView{Page: ReservedPrefix + "x", Count: 1, Timestamp: d.Now()})} {
		if err := d.Send("k", bad); !errors.Is(err, stream.ErrInvalid) {
			t.Errorf("record %q: error %v, want one wrapping stream.ErrInvalid", bad, err)
		}
	}
}

func TestAppLivecheckPassesThroughTheDriver(t *testing.T) {
	d := newDriver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		if err := d.Livecheck(ctx); err != nil {
			t.Fatalf("livecheck %d: %v", i+1, err)
		}
	}
	// Synthetic views never show in the report.
	if rep := report(t, d); len(rep.Pages) != 0 || rep.Count != 0 {
		t.Errorf("report after livechecks = %+v, want empty", rep)
	}
	if code, body := d.Get("/livecheck"); code != http.StatusOK {
		t.Errorf("/livecheck after passing runs: %d %s", code, body)
	}
}

// A window closes once the clock passes its end plus grace: each page's
// final count goes to the closed-window topic once, and a view for the
// window after that is late.
func TestAppEmitsClosedWindowsOnce(t *testing.T) {
	d := newDriver(t)
	start := d.Now()
	win := d.Config().Windows["views"]
	count(t, d, "/home", 3)
	count(t, d, "/about", 1)
	topic := d.Config().WindowsTopic()
	d.Advance(win.Size + win.Grace - time.Second)
	d.Flush()
	if out := d.Output(topic); len(out) != 0 {
		t.Fatalf("%d results before the end plus grace", len(out))
	}
	d.Advance(time.Second)
	d.Flush()
	d.Flush()
	var got []string
	for _, m := range d.Output(topic) {
		k, _ := m.Key.Encode()
		v, _ := m.Value.Encode()
		if !m.Timestamp.Equal(start.Add(win.Size)) {
			t.Errorf("%s: timestamp %v, want the window's end", k, m.Timestamp)
		}
		got = append(got, string(k)+" "+string(v))
	}
	span := fmt.Sprintf(`"window_start":%q,"window_end":%q`, start.Format(time.RFC3339), start.Add(win.Size).Format(time.RFC3339))
	want := []string{
		`/about {"page":"/about",` + span + `,"count":1}`,
		`/home {"page":"/home",` + span + `,"count":3}`,
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("closed-window results:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Late: in the total, not in the closed window, and counted.
	if err := d.Send("/home", Encode(PageView{Page: "/home", Timestamp: start.Add(win.Size / 2)})); err != nil {
		t.Fatal(err)
	}
	if d.Late("views") != 1 {
		t.Errorf("late views = %d, want 1", d.Late("views"))
	}
	d.Flush()
	if n := len(d.Output(topic)); n != 2 {
		t.Errorf("%d results after a late view, want the 2 emitted", n)
	}
	if rep := report(t, d); rep.Pages["/home"].Count != 4 {
		t.Errorf("/home total = %d, want 4 (the late view counts)", rep.Pages["/home"].Count)
	}
}

// The livecheck's views are the worker's own: they take no number from the
// users' counter and close into no window result.
func TestLivecheckViewsStayTheWorkers(t *testing.T) {
	d := newDriver(t)
	if err := d.Livecheck(context.Background()); err != nil {
		t.Fatalf("livecheck: %v", err)
	}
	code, body := d.Get("/count/?page=/home")
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"count":1}` {
		t.Errorf("/count/ after a livecheck = %d %s, want the users' first view: {\"count\":1}", code, body)
	}
	d.Advance(2 * time.Minute)
	d.Flush()
	for _, m := range d.Output(d.Config().WindowsTopic()) {
		if k, _ := m.Key.Encode(); strings.HasPrefix(string(k), ReservedPrefix) {
			t.Errorf("the closed-window topic holds the synthetic page %s", k)
		}
	}
	if n := len(d.Output(d.Config().WindowsTopic())); n != 1 {
		t.Errorf("%d closed-window results, want /home's only", n)
	}
}
