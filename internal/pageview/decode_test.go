package pageview

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeFastAgrees holds the reflection-free decoder to encoding/json:
// whatever the fast path accepts, encoding/json accepts with the same value.
func FuzzDecodeFastAgrees(f *testing.F) {
	for _, s := range []string{
		`{"page":"/home","count":12,"timestamp":"2026-11-26T16:00:00.123Z"}`,
		`{"count":-3,"page":"/a"}`,
		` { "page" : "/x" , "timestamp" : "2024-02-29T23:59:59.999Z" } `,
		`{"page":"/a","page":"/b"}`,
		`{"page":"/a","count":01}`,
		`{"page":"/a","timestamp":"2023-02-29T00:00:00.000Z"}`,
		`{}`,
		`{"Page":"/a"}`,
		`{"page":"/\u00e9"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeFast(b, false)
		if !ok {
			return
		}
		if !utf8.Valid(b) {
			t.Fatalf("fast path accepted invalid UTF-8 %q", b)
		}
		borrowed, _ := decodeFast(b, true)
		if borrowed != fast {
			t.Fatalf("%q: borrowed %+v, copied %+v", b, borrowed, fast)
		}
		var slow PageView
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json rejects it: %v", b, err)
		}
		if fast.Page != slow.Page || fast.Count != slow.Count || !fast.Timestamp.Equal(slow.Timestamp) ||
			fast.Timestamp.Location() != slow.Timestamp.Location() {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, slow)
		}
	})
}
