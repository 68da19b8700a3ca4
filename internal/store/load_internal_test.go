package store

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

// windowLoad fills a loading batch as a recovery of the views table does:
// n writes of pages in hourly windows, in changelog (random) order, with
// a page written twice now and then.
func windowLoad(rng *rand.Rand, n int) *loading {
	l := new(loading)
	hour := int64(1_796_000_000_000)
	for range n {
		k := appendPrefix(nil, kindData, "views", 3)
		k = binary.BigEndian.AppendUint64(k, uint64(hour-int64(rng.IntN(9))*3_600_000)^(1<<63))
		k = append(k, "/page/"+strconv.Itoa(rng.IntN(n/4+1))...)
		l.add(k, []byte(strconv.Itoa(rng.IntN(1000))), rng.IntN(50) == 0)
	}
	return l
}

// checkSorted checks l.sorted against a stable comparison sort of l's
// writes: keys in order, and of equal keys only the last write.
func checkSorted(t *testing.T, l *loading) {
	t.Helper()
	ops := slices.Clone(l.ops)
	slices.SortStableFunc(ops, func(a, b loadOp) int { return bytes.Compare(l.key(a), l.key(b)) })
	var last []loadOp
	for i, op := range ops {
		if i+1 < len(ops) && bytes.Equal(l.key(op), l.key(ops[i+1])) {
			continue
		}
		last = append(last, op)
	}
	if got := l.sorted(); !slices.Equal(got, last) {
		t.Fatalf("%d writes: the sort kept %d writes, a stable comparison sort %d, or their order differs", len(ops), len(got), len(last))
	}
}

// TestLoadSortedKeepsLastWrite checks the radix sort against a stable
// comparison sort: keys in order, and of equal keys only the last write.
func TestLoadSortedKeepsLastWrite(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, smallSort, smallSort + 1, 1000, 20000} {
		l := windowLoad(rng, n)
		// Keys of lengths that end inside others' shared prefixes.
		l.add([]byte{kindData}, []byte("a"), false)
		l.add(appendPrefix(nil, kindData, "views", 3), []byte("b"), false)
		checkSorted(t, l)
	}
}

// BenchmarkLoadSorted sorts a recovery batch of 20,000 window writes.
func BenchmarkLoadSorted(b *testing.B) {
	l := windowLoad(rand.New(rand.NewPCG(1, 2)), 20000)
	ops := slices.Clone(l.ops)
	b.ReportAllocs()
	for b.Loop() {
		l.ops = append(l.ops[:0], ops...)
		l.sorted()
	}
}

// FuzzLoadSorted sorts writes whose keys are cut from the input, many of
// them prefixes of each other or sharing long prefixes, and checks the
// result as TestLoadSortedKeepsLastWrite does.
func FuzzLoadSorted(f *testing.F) {
	f.Add([]byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"), uint8(3))
	f.Add([]byte("\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x02"), uint8(5))
	f.Add(bytes.Repeat([]byte("views\x00\x00\x00\x00\x03/page/1"), 8), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		l := new(loading)
		// Keys are windows of the input of lengths 0 to 11 (so some end
		// where others go on), moving by step, over the input repeated
		// so that a batch is larger than smallSort.
		n := len(data)
		if n == 0 {
			return
		}
		for i := range 4 * n {
			at := i * int(step%16+1) % n
			k := data[at:min(n, at+i%12)]
			l.add(append([]byte("prefix"), k...), []byte{byte(i)}, i%7 == 0)
		}
		checkSorted(t, l)
	})
}
