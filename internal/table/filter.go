package table

import (
	"hash/maphash"
	"math/bits"
)

// A keyFilter answers whether the store may hold a key of one table
// partition. It never answers no for a key the store holds, so a table
// skips the store lookup of a key the filter has not seen: with every
// event a new key (a page's first view in a window), those lookups found
// nothing and were most of the worker's time.
//
// It is a chain of Bloom filters, each twice the capacity of the one before,
// so it grows with the keys without knowing their number in advance; a key
// goes into the newest. Deleted keys stay in it until the partition's
// filter is built again from the store (part.build).
type keyFilter struct {
	blooms []bloom
	keys   int // keys added (those it already answered yes for are not)
}

// bloom is one Bloom filter of 10 bits a key with 7 probes: about 1% false
// positives when full.
type bloom struct {
	words    []uint64
	mask     uint64 // bits - 1; the bit count is a power of two
	n, limit int
}

const (
	bloomProbes = 7
	// firstFilterKeys is the capacity of a filter's first Bloom filter.
	firstFilterKeys = 1 << 14
)

var filterSeed = maphash.MakeSeed()

func hashKey(k []byte) uint64    { return maphash.Bytes(filterSeed, k) }
func hashString(k string) uint64 { return maphash.String(filterSeed, k) }

func newKeyFilter(capacity int) *keyFilter {
	return &keyFilter{blooms: []bloom{newBloom(max(capacity, firstFilterKeys))}}
}

func newBloom(capacity int) bloom {
	n := uint64(capacity) * 10
	n = 1 << bits.Len64(n-1) // round up to a power of two, at least 64
	n = max(n, 64)
	return bloom{words: make([]uint64, n/64), mask: n - 1, limit: capacity}
}

// probes derives the probe sequence from one 64-bit hash (Kirsch and
// Mitzenmacher's double hashing); the odd step visits distinct bits.
func probes(h uint64) (start, step uint64) { return h, (h>>32 | h<<32) | 1 }

func (b *bloom) has(h uint64) bool {
	x, step := probes(h)
	for range bloomProbes {
		bit := x & b.mask
		if b.words[bit>>6]&(1<<(bit&63)) == 0 {
			return false
		}
		x += step
	}
	return true
}

func (b *bloom) add(h uint64) {
	x, step := probes(h)
	for range bloomProbes {
		bit := x & b.mask
		b.words[bit>>6] |= 1 << (bit & 63)
		x += step
	}
	b.n++
}

// mayHold reports whether a key of hash h may have been added.
func (f *keyFilter) mayHold(h uint64) bool {
	for i := len(f.blooms) - 1; i >= 0; i-- {
		if f.blooms[i].has(h) {
			return true
		}
	}
	return false
}

// add records a key by its hash.
func (f *keyFilter) add(h uint64) {
	if f.mayHold(h) {
		return
	}
	last := &f.blooms[len(f.blooms)-1]
	if last.n >= last.limit {
		f.blooms = append(f.blooms, newBloom(2*last.limit))
		last = &f.blooms[len(f.blooms)-1]
	}
	last.add(h)
	f.keys++
}

// bytes is the filter's size in memory.
func (f *keyFilter) bytes() int {
	n := 0
	for _, b := range f.blooms {
		n += 8 * len(b.words)
	}
	return n
}
