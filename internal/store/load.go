package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
)

// A recovery that replays a long changelog into the store writes each batch
// of records as a sorted table file and hands the file to Pebble whole
// (ingestion), instead of inserting record by record into a memtable that
// is later flushed to a file of the same contents: in the recovery
// benchmark the memtable inserts and flushes were over half of the
// worker's CPU (docs/benchmarks.md).
//
// Ingestion gives every write of the file one sequence number above
// everything already in the store, so an ingested batch reads exactly as
// the same writes committed in a batch at that moment: the last write of a
// key in the file wins, a deletion in it hides older values. Pebble places
// the file in the lowest level it overlaps nothing in, so the first batch
// of an empty partition lands in the bottom level with nothing to compact.

// loadDir is the subdirectory of the store where table files are written
// before they are ingested; Pebble links them into the store and removes
// the originals. Open empties it: what a crash leaves there is unfinished.
const loadDir = "load"

// loadOp is one write buffered by a loading batch: its key and value are
// at off in the arena, so a later write has a larger off.
type loadOp struct {
	off        int
	klen, vlen uint32
	del        bool
}

// loading holds the data writes of a batch made by NewLoadBatch.
type loading struct {
	arena    []byte
	ops, tmp []loadOp
}

func (l *loading) key(op loadOp) []byte { return l.arena[op.off : op.off+int(op.klen)] }

func (l *loading) value(op loadOp) []byte {
	v := op.off + int(op.klen)
	return l.arena[v : v+int(op.vlen)]
}

func (l *loading) add(key, value []byte, del bool) {
	l.ops = append(l.ops, loadOp{off: len(l.arena), klen: uint32(len(key)), vlen: uint32(len(value)), del: del})
	l.arena = append(append(l.arena, key...), value...)
}

// sorted orders the writes by key, keeping only the last write of each key.
func (l *loading) sorted() []loadOp {
	l.tmp = slices.Grow(l.tmp[:0], len(l.ops))[:len(l.ops)]
	l.radix(l.ops, l.tmp, 0)
	out := l.ops[:0]
	for i, op := range l.ops {
		if i+1 < len(l.ops) && bytes.Equal(l.key(op), l.key(l.ops[i+1])) {
			continue // a later write of the same key follows
		}
		out = append(out, op)
	}
	return out
}

// smallSort is the size below which radix sorts by comparisons.
const smallSort = 24

// radix sorts ops, whose keys agree in their first depth bytes, by the rest
// of their keys, and keeps writes of equal keys in the order they were
// made; tmp is scratch of the same length. It sorts by one byte at a time
// (most significant first): the keys of a batch share long prefixes, and a
// comparison sort compared those prefixes again and again (a quarter of a
// recovery's CPU).
func (l *loading) radix(ops, tmp []loadOp, depth int) {
	if len(ops) <= smallSort {
		// Insertion sort, moving a write only past greater keys: stable.
		for i := 1; i < len(ops); i++ {
			for j := i; j > 0 && bytes.Compare(l.key(ops[j-1])[depth:], l.key(ops[j])[depth:]) > 0; j-- {
				ops[j-1], ops[j] = ops[j], ops[j-1]
			}
		}
		return
	}
	// Bytes every key shares are skipped in one pass, not counted a byte
	// at a time: a table's keys share its prefix, and pages their own (a
	// fifth of the sort's time in a recovery batch). Past them, the keys
	// differ or the shortest ends, so they fall into two buckets or more,
	// unless all are equal.
	depth = l.shared(ops, depth)
	// Bucket 0 holds the keys that end here; bucket 1+b those whose byte
	// at depth is b.
	var starts [258]int
	for _, op := range ops {
		starts[l.bucket(op, depth)+1]++
	}
	if starts[1] == len(ops) {
		return // all equal: in the order they were written
	}
	for b := 1; b < len(starts); b++ {
		starts[b] += starts[b-1]
	}
	next := starts
	for _, op := range ops {
		b := l.bucket(op, depth)
		tmp[next[b]] = op
		next[b]++
	}
	copy(ops, tmp)
	for b := 1; b < 257; b++ {
		if lo, hi := starts[b], starts[b+1]; hi-lo > 1 {
			l.radix(ops[lo:hi], tmp[lo:hi], depth+1)
		}
	}
}

// shared returns the depth at which the keys of ops, which agree in their
// first depth bytes, first differ or the shortest of them ends.
func (l *loading) shared(ops []loadOp, depth int) int {
	first := l.key(ops[0])
	end := len(first)
	for _, op := range ops[1:] {
		k := l.key(op)
		end = min(end, len(k))
		if bytes.Equal(k[depth:end], first[depth:end]) {
			continue
		}
		i := depth
		for k[i] == first[i] {
			i++
		}
		if end = i; end == depth {
			return depth
		}
	}
	return end
}

// bucket is radix's bucket of op at depth: 0 when its key has no byte
// there, else 1 + the byte.
func (l *loading) bucket(op loadOp, depth int) int {
	if depth >= int(op.klen) {
		return 0
	}
	return 1 + int(l.arena[op.off+depth])
}

// NewLoadBatch starts a batch for a bulk load such as a long recovery: its
// data writes (SetData, DeleteData) are written to a table file and
// ingested when it commits, and its other writes (checkpoints, range
// deletions) are committed as a batch right after. A data write that comes
// after a range deletion goes into that batch too, behind the deletion, so
// every write lands in the order it was made.
//
// The two steps are not one atomic write: a crash between them leaves the
// data without its checkpoint. A load may do that, because its data writes
// are a changelog replayed in order: the next recovery replays them again
// from the previous checkpoint. The other way round (a checkpoint ahead of
// its data) cannot happen, as the file is in before the batch commits.
func (d *DB) NewLoadBatch() *Batch {
	return &Batch{b: d.pdb.NewBatch(), db: d, load: loadings.Get().(*loading)}
}

// loadings keeps the buffers of committed loading batches for the next:
// a recovery commits one batch after another of about the same size.
var loadings = sync.Pool{New: func() any { return new(loading) }}

// release returns the batch's buffer to loadings.
func (b *Batch) release() {
	if b.load != nil {
		b.load.ops, b.load.arena = b.load.ops[:0], b.load.arena[:0]
		loadings.Put(b.load)
		b.load = nil
	}
}

// loadSeq numbers the files written for ingestion.
var loadSeq atomic.Int64

// ingest writes the batch's data writes to a table file and ingests it.
func (b *Batch) ingest() error {
	l, d := b.load, b.db
	if len(l.ops) == 0 {
		return nil
	}
	ops := l.sorted()
	dir := filepath.Join(d.dir, loadDir)
	if err := d.fs.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("store load directory: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%d-%d.sst", os.Getpid(), loadSeq.Add(1)))
	f, err := d.fs.Create(path, "load")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), d.writer)
	for _, op := range ops {
		if op.del {
			err = w.Delete(l.key(op))
		} else {
			err = w.Set(l.key(op), l.value(op))
		}
		if err != nil {
			break
		}
	}
	if cerr := w.Close(); err == nil {
		err = cerr // Close syncs and closes the file
	}
	if err == nil {
		err = d.pdb.Ingest(context.Background(), []string{path})
	}
	if err != nil {
		_ = d.fs.Remove(path) // Pebble removed it if the ingestion took it
		return fmt.Errorf("store load of %d writes: %w", len(ops), err)
	}
	return nil
}
