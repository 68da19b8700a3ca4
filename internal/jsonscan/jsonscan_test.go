package jsonscan_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/jsonscan"
)

// scan reads b as an object of strings and integers, as a codec would.
func scan(b []byte) (map[string]any, bool) {
	out := map[string]any{}
	s := jsonscan.Object(b)
	for s.Next() {
		key := string(s.Key())
		if _, dup := out[key]; dup {
			s.Fail() // encoding/json keeps the last; a codec decides
			continue
		}
		if s.Quoted() {
			out[key] = string(s.String())
		} else {
			out[key] = float64(s.Int())
		}
	}
	return out, s.Done()
}

func TestObject(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		want map[string]any
	}{
		{`{}`, true, map[string]any{}},
		{` { "a" : "x" , "n" : -12 } `, true, map[string]any{"a": "x", "n": float64(-12)}},
		{`{"a":"x"}{}`, false, nil},
		{`{"a":"x",}`, false, nil},
		{`{"a":"\u00e9"}`, false, nil}, // escapes: encoding/json's
		{`{"n":1.5}`, false, nil},
		{`{"n":01}`, false, nil},
		{`{"n":1234567890123456789}`, false, nil},
		{`["a"]`, false, nil},
		{`{"a":"x"`, false, nil},
		{``, false, nil},
	}
	for _, tt := range tests {
		got, ok := scan([]byte(tt.in))
		if ok != tt.ok {
			t.Errorf("%s: ok = %v, want %v", tt.in, ok, tt.ok)
			continue
		}
		if ok && len(got) != len(tt.want) {
			t.Errorf("%s: %v, want %v", tt.in, got, tt.want)
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v", tt.in, k, got[k], v)
			}
		}
	}
}

// FuzzObjectAgrees: whatever the scanner reads, encoding/json reads the
// same.
func FuzzObjectAgrees(f *testing.F) {
	for _, s := range []string{`{"page":"/home","count":12}`, `{ }`, `{"a":-0}`, `{"a":"b","c":"d"}`, `{"a":1e3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := scan(b)
		if !ok {
			return
		}
		var want map[string]any
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("scanner read %q, encoding/json refuses it: %v", b, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: scanner %v, encoding/json %v", b, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("%q: %s: scanner %v, encoding/json %v", b, k, got[k], v)
			}
		}
	})
}

// TestMillisUTCEveryDay reads a time of every day of the years 0000 to
// 9999 (each at another time of day) and compares with the time it wrote.
func TestMillisUTCEveryDay(t *testing.T) {
	const layout = "2006-01-02T15:04:05.000Z07:00"
	end := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	step := 24*time.Hour + time.Hour + time.Minute + time.Second + time.Millisecond
	n := 0
	var buf []byte
	for ts := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC); ts.Before(end); ts = ts.Add(step) {
		buf = ts.AppendFormat(buf[:0], layout)
		got, ok := jsonscan.MillisUTC(buf)
		if !ok || !got.Equal(ts) {
			t.Fatalf("%s: MillisUTC %v, %v", buf, got, ok)
		}
		n++
	}
	if n < 3_400_000 {
		t.Fatalf("only %d days read", n)
	}
}

// FuzzMillisUTC: MillisUTC accepts only what time.Parse reads the same.
func FuzzMillisUTC(f *testing.F) {
	for _, s := range []string{"2026-11-26T16:00:00.123Z", "2024-02-29T23:59:59.999Z", "2023-02-29T00:00:00.000Z", "2026-13-01T00:00:00.000Z",
		"0000-01-01T00:00:00.000Z", "0000-02-29T12:00:00.000Z", "1900-02-29T00:00:00.000Z", "1969-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z", "2026-1:-01T00:00:00.000Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := jsonscan.MillisUTC([]byte(s))
		if !ok {
			return
		}
		want, err := time.Parse("2006-01-02T15:04:05.000Z07:00", s)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Fatalf("%q: MillisUTC %v, time.Parse %v, %v", s, got, want, err)
		}
	})
}
