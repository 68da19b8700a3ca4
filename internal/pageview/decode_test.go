package pageview

import (
	"encoding/json"
	"testing"
	"time"
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

// FuzzDecodeEncodedAgrees holds the decoder of Encode's own shape to the
// decoder of any field order: whatever the first accepts, the second reads
// the same.
func FuzzDecodeEncodedAgrees(f *testing.F) {
	for _, s := range []string{
		`{"page":"/home","count":12,"timestamp":"2026-11-26T16:00:00.123Z"}`,
		`{"page":"/home","count":-1}`,
		`{"page":"","count":0}`,
		`{"page":"/a","count":01}`,
		`{"page":"/a","count":1,"timestamp":"2026-11-26T16:00:00.123Z"} `,
		`{"page":"/a","count":1,"timestamp":null}`,
		`{"page":"/a","count":1.5}`,
		`{"page":"/\u00e9","count":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		enc, ok := decodeEncoded(b, false)
		if !ok {
			return
		}
		fields, ok := decodeFields(b, false)
		if !ok {
			t.Fatalf("%q: read as Encode's shape %+v, not by its fields", b, enc)
		}
		if enc.Page != fields.Page || enc.Count != fields.Count || !enc.Timestamp.Equal(fields.Timestamp) ||
			enc.Timestamp.Location() != fields.Timestamp.Location() {
			t.Fatalf("%q: Encode's shape %+v, by fields %+v", b, enc, fields)
		}
	})
}

// TestDecodeEncodedReadsEncode: what Encode writes takes the shape's path.
func TestDecodeEncodedReadsEncode(t *testing.T) {
	for _, pv := range []PageView{
		{Page: "/a", Count: 1},
		{Page: "/some/page", Count: -7, Timestamp: time.Date(2026, 11, 26, 16, 0, 0, 123e6, time.UTC)},
	} {
		got, ok := decodeEncoded(Encode(pv), false)
		if !ok || got != pv {
			t.Errorf("decodeEncoded(Encode(%+v)) = %+v, %v", pv, got, ok)
		}
	}
}
