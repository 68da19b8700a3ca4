package jsonscan

import (
	"encoding/binary"
	"testing"
)

// TestSpecial checks the eight-byte test against the byte-wise rule for
// every byte value at every position, over backgrounds of bytes near the
// rule's edges.
func TestSpecial(t *testing.T) {
	bytewise := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80 }
	for _, bg := range []byte{'a', ' ', '!', '#', '[', ']', '~', 0x7f, 0x1f, 0x80, '"'} {
		for pos := range 8 {
			for c := range 256 {
				var buf [8]byte
				for i := range buf {
					buf[i] = bg
				}
				buf[pos] = byte(c)
				want := bytewise(bg) || bytewise(byte(c))
				if got := special(binary.LittleEndian.Uint64(buf[:])); got != want {
					t.Fatalf("% x: special %v, want %v", buf, got, want)
				}
			}
		}
	}
}
