package table_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/table"
)

// TestFilterKeepsKeysWrittenDuringItsBuild: a partition assigned again over
// a store of 20,000 keys builds its filter while 70,000 new keys are
// written and then dropped from the cache (more than a partition keeps
// clean). Every one of the 90,000 keys must then be read back from the
// store: a key the filter missed would read as absent and its count would
// start again from zero.
func TestFilterKeepsKeysWrittenDuringItsBuild(t *testing.T) {
	db := newDB(t)
	tb := newTotals(db)
	assign(t, tb, 0)
	for i := range 20_000 {
		update(t, tb, 0, fmt.Sprintf("/old/%d", i), inc)
	}
	commitFlush(t, db, tb, 0, t0, 0)
	// The filter of an empty store is built at once, after a first few
	// lookups at most.
	if st := tb.Stats(); st.Skipped == 0 || st.Retrieved != 0 {
		t.Errorf("first keys of an empty store: %d lookups skipped, %d found; want most skipped, none found", st.Skipped, st.Retrieved)
	}
	tb.Revoke(0)

	tb = newTotals(db)
	assign(t, tb, 0)
	for i := range 70_000 {
		update(t, tb, 0, fmt.Sprintf("/new/%d", i), inc)
	}
	commitFlush(t, db, tb, 0, t0, 1)
	for i := range 20_000 {
		update(t, tb, 0, fmt.Sprintf("/old/%d", i), inc)
	}
	for i := range 70_000 {
		update(t, tb, 0, fmt.Sprintf("/new/%d", i), inc)
	}
	for _, prefix := range []string{"/old/", "/new/"} {
		for i := range map[string]int{"/old/": 20_000, "/new/": 70_000}[prefix] {
			k := fmt.Sprintf("%s%d", prefix, i)
			v, ok, err := tb.Get(0, k)
			if err != nil || !ok || v != 2 {
				t.Fatalf("Get(%s) = %d, %v, %v; want 2 (a stored count was missed)", k, v, ok, err)
			}
		}
	}
	if st := tb.Stats(); st.Retrieved != 90_000 {
		t.Errorf("Retrieved = %d, want 90000: every key of the second round is in the store", st.Retrieved)
	}
}

// TestFilterKeepsReplayedKeys: a changelog record applied to a partition
// whose filter is built is read back, in both kinds of table.
func TestFilterKeepsReplayedKeys(t *testing.T) {
	db := newDB(t)
	c := &clock{now: t0}
	totals, views := newTotals(db), newViews(db, win, c)
	assign(t, totals, 0)
	assign(t, views, 0)
	update(t, totals, 0, "/first", inc)
	updateAt(t, views, 0, "/first", t0)
	waitBuilt(t, totals, func() { _, _, _ = totals.Get(0, "/never") })
	waitBuilt(t, views, func() { _, _, _ = views.Get(0, "/never", t0ms) })

	var plain, windowed []table.Record
	for i := range 100 {
		plain = append(plain, table.Record{Key: fmt.Appendf(nil, "/r/%d", i), Value: []byte("5"), Timestamp: t0})
		windowed = append(windowed, table.Record{Key: fmt.Appendf(nil, "/r/%d|%d", i, t0ms), Value: []byte("5"), Timestamp: t0})
	}
	restore(t, db, totals, 0, plain)
	restore(t, db, views, 0, windowed)
	for i := range 100 {
		k := fmt.Sprintf("/r/%d", i)
		v, ok, err := totals.Get(0, k)
		wantGet(t, "totals "+k, v, ok, err, 5, true)
		v, ok, err = views.Get(0, k, t0ms)
		wantGet(t, "views "+k, v, ok, err, 5, true)
	}
}

// waitBuilt waits until a lookup (probe) of a key never written is
// skipped: the filter of partition 0 is built.
func waitBuilt(t testing.TB, tb interface{ Stats() table.Stats }, probe func()) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for probe(); tb.Stats().Skipped == 0; probe() {
		if time.Now().After(deadline) {
			t.Fatal("the key filter was not built within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
