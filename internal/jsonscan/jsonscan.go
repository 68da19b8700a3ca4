// Package jsonscan reads the common shape of a record's JSON value without
// reflection: one flat object of plain strings and integers. It is a codec's
// fast path; for anything else it answers false and the codec falls back to
// encoding/json, so a codec built on it accepts exactly what encoding/json
// does (hold it to that with a differential fuzz test, as the example's
// decoder does).
package jsonscan

import (
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Scanner reads one flat JSON object, field by field:
//
//	s := jsonscan.Object(b)
//	for s.Next() {
//		switch string(s.Key()) {
//		case "page":
//			page = s.String()
//		default:
//			s.Fail()
//		}
//	}
//	ok := s.Done()
//
// Each field's value is read by exactly one of String and Int. A Scanner
// is a value on the caller's stack: reading allocates nothing.
type Scanner struct {
	b        []byte
	i        int
	key      []byte
	started  bool
	end, bad bool
}

// Object returns a Scanner of b.
func Object(b []byte) Scanner { return Scanner{b: b} }

// Next moves to the next field and reports whether there is one.
func (s *Scanner) Next() bool {
	if s.bad || s.end {
		return false
	}
	i := space(s.b, s.i)
	switch {
	case !s.started && i < len(s.b) && s.b[i] == '{':
		s.started = true
		if i = space(s.b, i+1); i < len(s.b) && s.b[i] == '}' {
			s.i, s.end = i+1, true
			return false
		}
	case s.started && i < len(s.b) && s.b[i] == ',':
		i = space(s.b, i+1)
	case s.started && i < len(s.b) && s.b[i] == '}':
		s.i, s.end = i+1, true
		return false
	default:
		s.bad = true
		return false
	}
	key, j, ok := plainString(s.b, i)
	j = space(s.b, j)
	if !ok || j >= len(s.b) || s.b[j] != ':' {
		s.bad = true
		return false
	}
	s.key, s.i = key, space(s.b, j+1)
	return true
}

// Key is the current field's name; the bytes are b's.
func (s *Scanner) Key() []byte { return s.key }

// Fail marks the object as one the Scanner cannot read (a field the caller
// does not know, or a value it refuses).
func (s *Scanner) Fail() { s.bad = true }

// Done reports whether the whole of b was one object read without failure.
func (s *Scanner) Done() bool { return !s.bad && s.end && space(s.b, s.i) == len(s.b) }

// Quoted reports whether the current field's value is a string.
func (s *Scanner) Quoted() bool { return s.i < len(s.b) && s.b[s.i] == '"' }

// String reads the value as a string of printable ASCII without escapes;
// the bytes are b's.
func (s *Scanner) String() []byte {
	v, i, ok := plainString(s.b, s.i)
	s.i, s.bad = i, s.bad || !ok
	return v
}

// Text is String as a string: a copy, or with shared, one that shares b's
// memory (valid only while b is unchanged).
func (s *Scanner) Text(shared bool) string {
	v := s.String()
	if shared {
		return unsafe.String(unsafe.SliceData(v), len(v))
	}
	return string(v)
}

// Int reads the value as an integer of at most 18 digits, without a
// fraction or an exponent.
func (s *Scanner) Int() int64 {
	b, i := s.b, s.i
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	s.i = i
	digits := i - start
	if digits == 0 || digits > 18 || (digits > 1 && b[start] == '0') ||
		(i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E')) {
		s.bad = true
		return 0
	}
	if neg {
		n = -n
	}
	return n
}

func space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, i, false
		}
	}
	return nil, i, false
}

// MillisUTC parses exactly "2006-01-02T15:04:05.000Z", a valid date.
func MillisUTC(s []byte) (time.Time, bool) {
	if len(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z' {
		return time.Time{}, false
	}
	ok := true
	num := func(from, to int) int {
		n := 0
		for _, c := range s[from:to] {
			ok = ok && c >= '0' && c <= '9'
			n = n*10 + int(c-'0')
		}
		return n
	}
	year, month, day := num(0, 4), num(5, 7), num(8, 10)
	hour, minute, sec, ms := num(11, 13), num(14, 16), num(17, 19), num(20, 23)
	if !ok || month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, ms*int(time.Millisecond), time.UTC), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// ErrNotUTF8 refuses a value that is not valid UTF-8.
var ErrNotUTF8 = errors.New("record is not valid UTF-8")

// Unmarshal is the fallback: json.Unmarshal, except that it refuses b when
// it is not valid UTF-8. encoding/json would replace each bad byte with
// U+FFFD, making different raw strings one.
func Unmarshal(b []byte, v any) error {
	if !utf8.Valid(b) {
		return ErrNotUTF8
	}
	return json.Unmarshal(b, v)
}
