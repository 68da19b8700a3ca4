package table

import (
	"fmt"
	"strconv"
	"testing"
	"time"
)

// TestFlushedBoundsTheCache fills a partition's cache past maxCleanEntries,
// updates some keys and adds new ones between a Flush and its Flushed, and
// checks that Flushed keeps exactly those dirty entries, that every
// dropped value is read back from the store, and that the next Flush hands
// out the dirty keys with their latest values.
func TestFlushedBoundsTheCache(t *testing.T) {
	db := openStore(t)
	tb := New("totals", "totals-changelog", Int64{}, db)
	if _, _, err := tb.Assign(0); err != nil {
		t.Fatal(err)
	}
	inc := func(v int64) int64 { return v + 1 }
	update := func(key string) {
		t.Helper()
		if err := tb.Update(0, key, inc); err != nil {
			t.Fatal(err)
		}
	}
	const n = maxCleanEntries + 1000
	for i := range n {
		update("/page/" + strconv.Itoa(i))
	}
	recs, err := tb.Flush(0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("first flush: %d records, want %d", len(recs), n)
	}
	// While the flush is on its way: ten flushed keys change again, and
	// five keys are new.
	want := map[string]int64{}
	for i := range 10 {
		k := "/page/" + strconv.Itoa(i*1000)
		update(k)
		want[k] = 2
	}
	for i := range 5 {
		k := fmt.Sprintf("/new/%d", i)
		update(k)
		want[k] = 1
	}
	b := db.NewBatch()
	if err := tb.Write(0, b, int64(len(recs))-1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	tb.Flushed(0)

	if got := tb.Stats().Cached; got != len(want) {
		t.Errorf("%d entries cached after Flushed, want the %d dirty ones", got, len(want))
	}
	for _, i := range []int{1, 999, maxCleanEntries, n - 1} {
		k := "/page/" + strconv.Itoa(i)
		if v, ok, err := tb.Get(0, k); err != nil || !ok || v != 1 {
			t.Errorf("Get(%s) = %d, %v, %v after its entry was dropped, want 1 from the store", k, v, ok, err)
		}
	}
	recs, err = tb.Flush(0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, r := range recs {
		v, err := Int64{}.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		got[string(r.Key)] = v
	}
	if len(got) != len(want) {
		t.Errorf("second flush: %d records %v, want %v", len(got), got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("second flush: %s = %d, want %d", k, got[k], v)
		}
	}
}
