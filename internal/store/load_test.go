package store_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gofaust/pageviews/internal/store"
)

// loadStep is one write of a sequence the load test applies twice.
type loadStep struct {
	kind  int // 0 set, 1 delete, 2 delete below, 3 commit
	key   string
	value string
}

// randomSteps makes writes to one table partition over few keys, so keys
// are overwritten and deleted within a batch and across batches, with the
// occasional range deletion (as a windowed table's expiry) and commit
// (commitPerMille of the steps). Keys are of many lengths, prefixes of
// each other, and hold zero and 0xff bytes.
func randomSteps(rng *rand.Rand, n, keys, commitPerMille int) []loadStep {
	steps := make([]loadStep, 0, n)
	for i := range n {
		k := rng.IntN(keys)
		key := strings.Repeat("p", k%3) + strconv.Itoa(k) + strings.Repeat("\x00", k%2) + strings.Repeat("\xff", k%5/4)
		switch r := rng.IntN(1000); {
		case r < commitPerMille:
			steps = append(steps, loadStep{kind: 3})
		case r < 700:
			steps = append(steps, loadStep{kind: 0, key: key, value: "v" + strconv.Itoa(i)})
		case r < 880:
			steps = append(steps, loadStep{kind: 1, key: key})
		case r < 900:
			steps = append(steps, loadStep{kind: 2, key: key})
		default:
			steps = append(steps, loadStep{kind: 0, key: key, value: "w" + strconv.Itoa(i)})
		}
	}
	return append(steps, loadStep{kind: 3})
}

// applySteps writes steps to table "views" partition 1 of db in batches made by
// newBatch, a checkpoint in each, and returns what the partition holds.
func applySteps(t *testing.T, db *store.DB, newBatch func() *store.Batch, steps []loadStep) []kv {
	t.Helper()
	b := newBatch()
	for i, s := range steps {
		var err error
		switch s.kind {
		case 0:
			err = b.SetData("views", 1, []byte(s.key), []byte(s.value))
		case 1:
			err = b.DeleteData("views", 1, []byte(s.key))
		case 2:
			err = b.DeleteBelow("views", 1, []byte(s.key))
		case 3:
			if err = b.SetCheckpoint("views", 1, store.Checkpoint{Offset: int64(i)}); err == nil {
				err = b.CommitUnsynced()
			}
			b = newBatch()
		}
		if err != nil {
			t.Fatalf("step %d %+v: %v", i, s, err)
		}
	}
	b.Discard()
	return scan(t, db, "views", 1, "")
}

// A load batch leaves the store as a plain batch of the same writes does:
// the last write of a key wins, deletions hide what earlier batches wrote,
// and a range deletion removes what was written before it and nothing
// after.
func TestLoadBatchReadsAsABatch(t *testing.T) {
	plain, load := openDB(t, t.TempDir()), openDB(t, t.TempDir())
	fillNeighbours(t, plain)
	fillNeighbours(t, load)
	before := snapshot(t, load)
	for seed := range uint64(60) {
		// Small batches over few keys, then large ones (sorted by radix
		// passes rather than comparisons) over many.
		n, keys, commits := 300, 40, 80
		if seed >= 40 {
			n, keys, commits = 5000, 3000, 2
		}
		steps := randomSteps(rand.New(rand.NewPCG(seed, 7)), n, keys, commits)
		want := applySteps(t, plain, plain.NewBatch, steps)
		got := applySteps(t, load, load.NewLoadBatch, steps)
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d: a load batch left %v; a plain batch of the same writes left %v", seed, got, want)
		}
		cp, ok := checkpoint(t, load, "views", 1)
		if want := int64(len(steps) - 1); !ok || cp.Offset != want {
			t.Fatalf("seed %d: checkpoint %+v (found %v), want offset %d", seed, cp, ok, want)
		}
	}
	// The neighbouring table partitions are untouched.
	after := snapshot(t, load)
	for id, kvs := range before {
		if id != "views/1" && !slices.Equal(after[id], kvs) {
			t.Errorf("%s: %v after the loads, %v before", id, after[id], kvs)
		}
	}
}

// A load survives closing and opening the store, and what a crash left in
// the load directory is removed by the next Open.
func TestLoadBatchIsDurable(t *testing.T) {
	dir := t.TempDir()
	db, _, err := store.Open(dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewLoadBatch()
	for i := range 1000 {
		if err := b.SetData("t", 2, []byte("page"+strconv.Itoa(i)), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if b.Len() != 1000 {
		t.Errorf("Len() = %d before the commit, want 1000", b.Len())
	}
	if err := b.SetCheckpoint("t", 2, store.Checkpoint{Offset: 999}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, "load", "123-1.sst")
	if err := os.WriteFile(leftover, []byte("half a table"), 0o644); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, dir)
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("%s is still there after Open (%v)", leftover, err)
	}
	got := scan(t, db, "t", 2, "")
	if len(got) != 1000 {
		t.Fatalf("%d keys after reopening, want 1000", len(got))
	}
	for _, e := range got {
		if "page"+e.v != e.k {
			t.Fatalf("key %q holds %q", e.k, e.v)
		}
	}
	if cp, ok := checkpoint(t, db, "t", 2); !ok || cp.Offset != 999 {
		t.Errorf("checkpoint %+v (found %v) after reopening, want offset 999", cp, ok)
	}
}
