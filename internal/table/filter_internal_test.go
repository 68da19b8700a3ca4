package table

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/store"
)

// TestKeyFilterHoldsEveryKey: whatever was added is answered yes through
// every growth step, keys never added mostly no, and the size stays near
// the 10 bits a key it is made of.
func TestKeyFilterHoldsEveryKey(t *testing.T) {
	f := newKeyFilter(0)
	const n = 300_000 // from the first Bloom filter of 16,384 keys, five growths
	for i := range n {
		f.add(hashKey(fmt.Appendf(nil, "/page/%d|w", i)))
	}
	if f.keys > n || f.keys < n*99/100 {
		t.Errorf("keys = %d after %d distinct keys (a key it already answers yes for is not counted)", f.keys, n)
	}
	for i := range n {
		if !f.mayHold(hashKey(fmt.Appendf(nil, "/page/%d|w", i))) {
			t.Fatalf("key %d added but not held", i)
		}
	}
	falsePos := 0
	for i := range n {
		if f.mayHold(hashString(fmt.Sprintf("/other/%d|w", i))) {
			falsePos++
		}
	}
	if rate := float64(falsePos) / n; rate > 0.05 {
		t.Errorf("false positives %.2f%% of keys never added, want a few percent at most", 100*rate)
	}
	if per := float64(f.bytes()) / n; per > 4 {
		t.Errorf("%.1f bytes a key, want about 2.5", per)
	}
	t.Logf("%d Bloom filters, %d bytes for %d keys, %.2f%% false positives", len(f.blooms), f.bytes(), n, 100*float64(falsePos)/n)
	if hashKey([]byte("/a|1")) != hashString("/a|1") {
		t.Error("a key hashes differently as bytes and as a string")
	}
}

// TestBuildKeepsKeysWrittenMeanwhile holds a build after its first chunk of
// the store's keys, writes new keys, and lets it finish: the filter it
// makes holds the stored keys and the new ones.
func TestBuildKeepsKeysWrittenMeanwhile(t *testing.T) {
	db := openStore(t)
	inc := func(v int64) int64 { return v + 1 }
	flush := func(tb *Table[int64], offset int64) {
		t.Helper()
		if _, err := tb.Flush(0, time.Now()); err != nil {
			t.Fatal(err)
		}
		b := db.NewBatch()
		if err := tb.Write(0, b, offset); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		tb.Flushed(0)
	}
	tb := New("totals", "totals-changelog", Int64{}, db)
	if _, _, err := tb.Assign(0); err != nil {
		t.Fatal(err)
	}
	for i := range 3 * buildChunk {
		if err := tb.Update(0, fmt.Sprintf("/old/%d", i), inc); err != nil {
			t.Fatal(err)
		}
	}
	flush(tb, 0)
	waitFilter(t, tb) // its build, begun at the first update, has ended
	tb.Revoke(0)

	held, release := make(chan struct{}), make(chan struct{})
	builtChunk = func() {
		select {
		case held <- struct{}{}:
			<-release
		case <-release:
		}
	}
	t.Cleanup(func() { builtChunk = nil })
	tb = New("totals", "totals-changelog", Int64{}, db)
	if _, _, err := tb.Assign(0); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if err := tb.Update(0, fmt.Sprintf("/new/%d", i), inc); err != nil {
			t.Fatal(err)
		}
	}
	<-held // the build is past its first chunk, the keys written below are not in the store yet
	flush(tb, 1)
	close(release)
	pt := waitFilter(t, tb)
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, k := range []string{"/old/%d", "/new/%d"} {
		for i := range 500 {
			if key := fmt.Sprintf(k, i); !pt.filter.mayHold(hashString(key)) {
				t.Fatalf("the filter does not hold %s, which the store holds", key)
			}
		}
	}
	if pt.builtKeys < 3*buildChunk+500 {
		t.Errorf("built with %d keys, want at least %d", pt.builtKeys, 3*buildChunk+500)
	}
}

// waitFilter waits for partition 0's filter to be built.
func waitFilter(t *testing.T, tb *Table[int64]) *part[int64] {
	t.Helper()
	pt, err := tb.part(0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pt.mu.Lock()
		done := pt.filter != nil && pt.building == nil
		pt.mu.Unlock()
		if done {
			return pt
		}
		if time.Now().After(deadline) {
			t.Fatal("the filter was not built within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// openStore opens a store in a temporary directory for the test, closed
// at its end.
func openStore(t *testing.T) *store.DB {
	t.Helper()
	db, _, err := store.Open(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}
