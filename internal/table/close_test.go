package table_test

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/window"
)

// closing is a table of 4s windows with 1s of grace whose close handler
// emits "key start-end=value" to the topic "closed".
func closing(t testing.TB, db *store.DB, w window.Hopping, c *clock) (*table.Windowed[int64], *[]time.Duration) {
	t.Helper()
	tb := newViews(db, w, c)
	var lags []time.Duration
	tb.OnClose(table.Close[int64]{
		Topic: "closed",
		Emit: func(key string, start, end time.Time, v int64) ([]byte, error) {
			return fmt.Appendf(nil, "%s-%s=%d", start.Format("15:04:05"), end.Format("15:04:05"), v), nil
		},
		Closed: func(_ int32, lag time.Duration) { lags = append(lags, lag) },
	})
	assign(t, tb, 0)
	return tb, &lags
}

// emitted renders the close handler's records of a flush.
func emitted(recs []table.Record) []string {
	var out []string
	for _, r := range recs {
		if r.Topic != "" {
			out = append(out, r.Topic+" "+string(r.Key)+" "+string(r.Value)+" @"+r.Timestamp.UTC().Format("15:04:05"))
		}
	}
	return out
}

// closedUpTo is the closed-up-to point a flush wrote to the changelog, or
// -1 when it wrote none.
func closedUpTo(t testing.TB, recs []table.Record) int64 {
	t.Helper()
	for _, r := range recs {
		if r.Topic == "" && string(r.Key) == "\x00closed" {
			n, err := strconv.ParseInt(string(r.Value), 10, 64)
			if err != nil {
				t.Fatalf("closed-up-to point %q: %v", r.Value, err)
			}
			return n
		}
	}
	return -1
}

var fourSeconds = window.Hopping{Size: 4 * time.Second, Grace: time.Second, Expires: time.Minute}

// Stream time closes a window once it reaches end plus grace; the result
// goes out once, with the flush, and an event for the window afterwards is
// late: not added, still readable until the window expires.
func TestStreamTimeClosesWindows(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb, lags := closing(t, db, fourSeconds, c)
	for range 5 {
		updateAt(t, tb, 0, "/a", t0.Add(time.Second))
	}
	updateAt(t, tb, 0, "/b", t0.Add(2*time.Second))
	// Stream time 4.999s: end (4s) plus grace (1s) not reached.
	updateAt(t, tb, 0, "/c", t0.Add(4999*time.Millisecond))
	if got := emitted(commitFlush(t, db, tb, 0, t0, 0)); got != nil {
		t.Fatalf("flush before end+grace emitted %q", got)
	}
	// 5s: the window [0s, 4s) closes.
	updateAt(t, tb, 0, "/c", t0.Add(5*time.Second))
	c.Set(t0.Add(7 * time.Second))
	recs := commitFlush(t, db, tb, 0, c.Now(), 1)
	want := []string{"closed /a 16:00:00-16:00:04=5 @16:00:04", "closed /b 16:00:00-16:00:04=1 @16:00:04"}
	if got := emitted(recs); !slices.Equal(got, want) {
		t.Errorf("flush at end+grace emitted %q, want %q", got, want)
	}
	if got := closedUpTo(t, recs); got != t0ms+4000 {
		t.Errorf("closed up to %d, want %d", got, t0ms+4000)
	}
	if !slices.Equal(*lags, []time.Duration{2 * time.Second}) {
		t.Errorf("close lags %v, want one of 2s (closed at 7s, due at 5s)", *lags)
	}
	// Late: /a at 3s no longer counts in its window, which stays readable.
	if applied, err := tb.Update(0, "/a", t0.Add(3*time.Second), inc); err != nil || applied {
		t.Errorf("Update of a closed window = %v, %v, want late", applied, err)
	}
	v, ok, err := tb.Get(0, "/a", t0ms)
	wantGet(t, "Get(/a) in the closed window", v, ok, err, 5, true)
	if got := emitted(commitFlush(t, db, tb, 0, c.Now(), 2)); got != nil {
		t.Errorf("the next flush emitted %q again", got)
	}
}

// A caught-up partition closes its windows on the wall clock, with no
// further event.
func TestWallClockClosesWindowsOfAQuietPartition(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb, _ := closing(t, db, fourSeconds, c)
	updateAt(t, tb, 0, "/a", t0.Add(time.Second))
	commitFlush(t, db, tb, 0, t0, 0)
	if tb.CloseAt(0, t0.Add(4999*time.Millisecond)) {
		t.Error("CloseAt(4.999s) says a window is due")
	}
	if !tb.CloseAt(0, t0.Add(5*time.Second)) {
		t.Fatal("CloseAt(5s) says no window is due")
	}
	want := []string{"closed /a 16:00:00-16:00:04=1 @16:00:04"}
	if got := emitted(commitFlush(t, db, tb, 0, t0, 1)); !slices.Equal(got, want) {
		t.Errorf("flush after CloseAt emitted %q, want %q", got, want)
	}
	if tb.CloseAt(0, t0.Add(6*time.Second)) {
		t.Error("CloseAt says a window is due after it was emitted")
	}
}

// A flush that is not stored (the transaction aborted) hands out the same
// results again; once stored, the closed-up-to point survives a restart
// through the store, and a new owner's recovery through the changelog.
func TestClosingIsDurable(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb, lags := closing(t, db, fourSeconds, c)
	updateAt(t, tb, 0, "/a", t0.Add(time.Second))
	updateAt(t, tb, 0, "/z", t0.Add(6*time.Second))
	first, err := tb.Flush(0, t0)
	if err != nil {
		t.Fatal(err)
	}
	again := commitFlush(t, db, tb, 0, t0, 1)
	if got, want := emitted(again), emitted(first); len(want) != 1 || !slices.Equal(got, want) {
		t.Errorf("flush after an unfinished one emitted %q, want %q again", got, want)
	}
	if len(*lags) != 1 {
		t.Errorf("the window closed by two flushes was counted %d times, want once", len(*lags))
	}
	cp, _, _ := db.Checkpoint("views", 0)
	if cp.Closed != t0ms+4000 {
		t.Errorf("checkpoint closed up to %d, want %d", cp.Closed, t0ms+4000)
	}

	// A restart on the same store: nothing emitted again, late stays late.
	tb.Revoke(0)
	again2, _ := closing(t, db, fourSeconds, c)
	if got := emitted(commitFlush(t, db, again2, 0, t0, 2)); got != nil {
		t.Errorf("after a restart the flush emitted %q again", got)
	}
	if applied, _ := again2.Update(0, "/a", t0.Add(2*time.Second), inc); applied {
		t.Error("after a restart an event for a closed window was applied")
	}

	// A new owner recovering from the changelog: the same.
	odb := newDB(t)
	other, _ := closing(t, odb, fourSeconds, c)
	var changelog []table.Record
	for _, r := range again {
		if r.Topic == "" {
			changelog = append(changelog, r)
		}
	}
	restore(t, odb, other, 0, changelog)
	if cp, _, _ := odb.Checkpoint("views", 0); cp.Closed != t0ms+4000 {
		t.Errorf("recovered checkpoint closed up to %d, want %d", cp.Closed, t0ms+4000)
	}
	if applied, _ := other.Update(0, "/a", t0.Add(2*time.Second), inc); applied {
		t.Error("after recovery an event for a closed window was applied")
	}
}

// With hopping windows an event counts in size/step windows; each closes
// on its own.
func TestHoppingWindowsCloseOneByOne(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	hop := window.Hopping{Size: 6 * time.Second, Step: 3 * time.Second, Expires: time.Minute}
	tb, _ := closing(t, db, hop, c)
	updateAt(t, tb, 0, "/a", t0.Add(4*time.Second)) // windows [-3s, 3s) is not one; [0s, 6s) and [3s, 9s)
	for _, tc := range []struct {
		at   time.Duration
		want []string
	}{
		{5 * time.Second, nil},
		{6 * time.Second, []string{"closed /a 16:00:00-16:00:06=1 @16:00:06"}},
		{8 * time.Second, nil},
		{9 * time.Second, []string{"closed /a 16:00:03-16:00:09=1 @16:00:09"}},
	} {
		tb.CloseAt(0, t0.Add(tc.at))
		if got := emitted(commitFlush(t, db, tb, 0, t0, 0)); !slices.Equal(got, tc.want) {
			t.Errorf("closing at %v emitted %q, want %q", tc.at, got, tc.want)
		}
	}
}

// Another step is another layout of the store: refused like another size.
func TestAnotherStepIsRefused(t *testing.T) {
	db := newDB(t)
	if err := newViews(db, win, &clock{now: t0}).CheckDefinition(); err != nil {
		t.Fatal(err)
	}
	hop := win
	hop.Step = 30 * time.Second
	var derr *table.DefinitionError
	err := newViews(db, hop, &clock{now: t0}).CheckDefinition()
	if !errors.As(err, &derr) || derr.Field != "step" || derr.Stored != "1m0s" || derr.Current != "30s" {
		t.Errorf("30s steps on a store of tumbling 1m windows: %v, want a DefinitionError of the step", err)
	}
	grace := win
	grace.Grace = time.Second
	if err := newViews(db, grace, &clock{now: t0}).CheckDefinition(); err != nil {
		t.Errorf("another grace period: %v, want it taken (it only changes which windows are open)", err)
	}
}

// Windows held only by the store (a restart emptied the cache) close with
// their own keys and values.
func TestWindowsCloseFromTheStore(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb, _ := closing(t, db, fourSeconds, c)
	var want []string
	for i := range 50 {
		page := fmt.Sprintf("/p%02d", i)
		for range i%3 + 1 {
			updateAt(t, tb, 0, page, t0.Add(time.Second))
		}
		want = append(want, fmt.Sprintf("closed %s 16:00:00-16:00:04=%d @16:00:04", page, i%3+1))
	}
	commitFlush(t, db, tb, 0, t0, 0)
	tb.Revoke(0)
	again, _ := closing(t, db, fourSeconds, c)
	again.CloseAt(0, t0.Add(time.Minute))
	if got := emitted(commitFlush(t, db, again, 0, t0, 1)); !slices.Equal(got, want) {
		t.Errorf("closing from the store emitted\n%q\nwant\n%q", got, want)
	}
}

// A window that stream time closes and expires at once (a jump of event
// time) is still closed, once, before it goes.
func TestAWindowExpiringWithItsCloseIsClosedFirst(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	tb, _ := closing(t, db, fourSeconds, c)
	updateAt(t, tb, 0, "/a", t0.Add(time.Second))
	commitFlush(t, db, tb, 0, t0, 0)
	updateAt(t, tb, 0, "/b", t0.Add(5*time.Minute)) // past end + grace and expiry (1m)
	want := []string{"closed /a 16:00:00-16:00:04=1 @16:00:04"}
	if got := emitted(commitFlush(t, db, tb, 0, t0, 1)); !slices.Equal(got, want) {
		t.Errorf("the flush that expires the window emitted %q, want %q", got, want)
	}
	if got := scanWindow(t, tb, 0, t0ms); len(got) != 0 {
		t.Errorf("the window is still readable after its expiry: %v", got)
	}
	if got := emitted(commitFlush(t, db, tb, 0, t0, 2)); got != nil {
		t.Errorf("the next flush emitted %q", got)
	}
}
