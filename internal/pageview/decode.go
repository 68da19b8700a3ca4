package pageview

import (
	"time"
	"unsafe"
)

// decodeFast parses the common shape of a PageView without reflection:
// an object with the fields page, count and timestamp in any order, plain
// ASCII strings without escapes, an integer count and a UTC timestamp with
// millisecond precision. For anything else it returns ok false and Decode
// falls back to encoding/json, so the two always agree (a differential fuzz
// test holds them to that). With borrow, Page shares b's memory.
func decodeFast(b []byte, borrow bool) (pv PageView, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return pv, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return pv, skipSpace(b, i+1) == len(b)
	}
	for {
		var key []byte
		key, i, ok = plainString(b, i)
		if !ok {
			return pv, false
		}
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != ':' {
			return pv, false
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "page":
			var v []byte
			if v, i, ok = plainString(b, i); !ok {
				return pv, false
			}
			if borrow {
				pv.Page = unsafe.String(unsafe.SliceData(v), len(v))
			} else {
				pv.Page = string(v)
			}
		case "count":
			if pv.Count, i, ok = plainInt(b, i); !ok {
				return pv, false
			}
		case "timestamp":
			var v []byte
			if v, i, ok = plainString(b, i); !ok {
				return pv, false
			}
			if pv.Timestamp, ok = parseMillisUTC(v); !ok {
				return pv, false
			}
		default:
			return pv, false
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return pv, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return pv, skipSpace(b, i+1) == len(b)
		default:
			return pv, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string of printable ASCII without escapes.
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

// plainInt reads a JSON integer that fits an int64 comfortably.
func plainInt(b []byte, i int) (int64, int, bool) {
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
	digits := i - start
	if digits == 0 || digits > 18 || (digits > 1 && b[start] == '0') {
		return 0, i, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, i, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}

// parseMillisUTC parses exactly "2006-01-02T15:04:05.000Z".
func parseMillisUTC(s []byte) (time.Time, bool) {
	if len(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z' {
		return time.Time{}, false
	}
	num := func(from, to int) (int, bool) {
		n := 0
		for _, c := range s[from:to] {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 7)
	day, ok3 := num(8, 10)
	hour, ok4 := num(11, 13)
	minute, ok5 := num(14, 16)
	sec, ok6 := num(17, 19)
	ms, ok7 := num(20, 23)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
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
