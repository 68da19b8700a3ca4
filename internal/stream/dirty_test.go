package stream

import "testing"

// dirtyTable is a table that reports n changed keys in every partition.
type dirtyTable struct {
	Table
	n *int
}

func (d dirtyTable) Dirty(int32) int { return *d.n }

// A partition commits ahead of its interval once its tables together hold
// maxDirty changed keys, and counts them once every dirtyCheckEvery
// records, not at each.
func TestCacheFullCountsEveryTable(t *testing.T) {
	totals, windows := 0, 0
	w := &partitionWorker{r: &Runtime{o: Options{Tables: []Table{dirtyTable{n: &totals}, dirtyTable{n: &windows}}}}}

	w.last = 0
	totals, windows = maxDirty/2, maxDirty/2-1
	if w.cacheFull() {
		t.Fatalf("full at %d changed keys, want full from %d", totals+windows, maxDirty)
	}
	windows++
	for w.last = 1; w.last < dirtyCheckEvery; w.last++ {
		if w.cacheFull() {
			t.Fatalf("counted again %d records after the last count, want every %d", w.last, dirtyCheckEvery)
		}
	}
	if !w.cacheFull() {
		t.Fatalf("not full with %d changed keys %d records after the last count", totals+windows, w.last)
	}
}
