// Package jsonscan reads the common shape of a record's JSON value without
// reflection: one flat object of plain strings and integers. It is a codec's
// fast path; for anything else it answers false and the codec falls back to
// encoding/json, so a codec built on it accepts exactly what encoding/json
// does (hold it to that with a differential fuzz test, as the example's
// decoder does).
package jsonscan

import (
	"encoding/binary"
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
	n, i, ok := Int(s.b, s.i)
	s.i, s.bad = i, s.bad || !ok
	return n
}

// Int reads an integer as Scanner.Int does, from b[i:]; next is the index
// after it.
func Int(b []byte, i int) (n int64, next int, ok bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || digits > 18 || (digits > 1 && b[start] == '0') ||
		(i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E')) {
		return 0, i, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}

func space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// PlainString reads a string as Scanner.String does, from the quote at
// b[i]; next is the index after the closing quote. With Int, it reads a
// value of one fixed shape ahead of a Scanner, as the example's decoder does.
func PlainString(b []byte, i int) (v []byte, next int, ok bool) { return plainString(b, i) }

func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	j := i + 1
	// Eight bytes at a time while none of them ends the string or makes it
	// one this scanner refuses; the loop below finds which one does.
	for ; j+8 <= len(b); j += 8 {
		if special(binary.LittleEndian.Uint64(b[j:])) {
			break
		}
	}
	for ; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, i, false
		}
	}
	return nil, i, false
}

// special reports whether any of the eight bytes in x is '"', '\\', a
// control character (below 0x20) or not ASCII (0x80 and above).
func special(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	zeroIn := func(v uint64) uint64 { return (v - ones) & ^v & highs } // a zero byte in v
	below20 := (x - 0x20*ones) & ^x & highs                            // a byte below 0x20
	return (x&highs | below20 | zeroIn(x^('"'*ones)) | zeroIn(x^('\\'*ones))) != 0
}

// MillisUTC parses exactly "2006-01-02T15:04:05.000Z", a valid date.
func MillisUTC(s []byte) (time.Time, bool) {
	if len(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z' {
		return time.Time{}, false
	}
	c := (*[24]byte)(s)
	v := func(i int) byte { return c[i] - '0' } // a digit's value; above 9 (wrapped) if not a digit
	if max(v(0), v(1), v(2), v(3), v(5), v(6), v(8), v(9), v(11), v(12), v(14), v(15), v(17), v(18), v(20), v(21), v(22)) > 9 {
		return time.Time{}, false
	}
	d := func(i int) int { return int(v(i)) }
	year := d(0)*1000 + d(1)*100 + d(2)*10 + d(3)
	month, day := d(5)*10+d(6), d(8)*10+d(9)
	hour, minute, sec := d(11)*10+d(12), d(14)*10+d(15), d(17)*10+d(18)
	ms := d(20)*100 + d(21)*10 + d(22)
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	secs := (daysSinceEpoch(year, month, day)*24+int64(hour))*3600 + int64(minute)*60 + int64(sec)
	return time.UnixMilli(secs*1000 + int64(ms)).UTC(), true
}

// daysSinceEpoch counts the days from 1970-01-01 to a date of the
// proleptic Gregorian calendar (year 0 to 9999): whole 400-year cycles,
// then years counted from March, so that February's leap day is the last
// day of a year.
func daysSinceEpoch(year, month, day int) int64 {
	if month <= 2 {
		year--
	}
	year += 400 // year 0's January and February belong to year -1
	cycle := year / 400
	yoc := year - cycle*400                            // year of cycle, 0-399
	doy := (153*((month+9)%12)+2)/5 + day - 1          // day of the year from March 1
	doc := yoc*365 + yoc/4 - yoc/100 + doy             // day of the cycle
	return int64(cycle-1)*146097 + int64(doc) - 719468 // 719468: days from 0000-03-01 to 1970-01-01
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
