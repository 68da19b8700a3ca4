package store

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

// TestRateLimitedSaysWhatItLeftOut: within an interval only the first of a
// burst is logged, at its level; the next line after the interval counts
// the ones left out.
func TestRateLimitedSaysWhatItLeftOut(t *testing.T) {
	var out bytes.Buffer
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	r := &rateLimited{log: slog.New(slog.NewJSONHandler(&out, nil)), interval: time.Second, now: func() time.Time { return at }}
	for range 15 {
		r.Warn("store write stall", "reason", "memtable count limit reached")
		at = at.Add(30 * time.Millisecond)
	}
	at = at.Add(time.Second)
	r.Warn("store write stall", "reason", "L0 file count limit exceeded")

	type line struct {
		Level   string `json:"level"`
		Msg     string `json:"msg"`
		Reason  string `json:"reason"`
		Dropped *int   `json:"repeats_not_logged"`
	}
	var lines []line
	for dec := json.NewDecoder(&out); dec.More(); {
		var l line
		if err := dec.Decode(&l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	// 15 stalls 30 ms apart span 420 ms: the first two seconds' lines
	// are the first stall and the one after the interval.
	if len(lines) != 2 {
		t.Fatalf("%d lines logged, want 2: %+v", len(lines), lines)
	}
	if l := lines[0]; l.Level != "WARN" || l.Reason != "memtable count limit reached" || l.Dropped != nil {
		t.Errorf("first line %+v, want the first stall at WARN with nothing left out", l)
	}
	if l := lines[1]; l.Level != "WARN" || l.Reason != "L0 file count limit exceeded" || l.Dropped == nil || *l.Dropped != 14 {
		t.Errorf("second line %+v, want the later stall with repeats_not_logged 14", l)
	}
}
