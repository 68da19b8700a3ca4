package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// latencyMetric is the worker's DogStatsD timing of the time from a
// record's timestamp to its table update, sent for 1 event in 64.
const latencyMetric = "pageviews.event_latency"

// metricsDelay is how long the worker's metrics client may hold a sample:
// it aggregates for 2 s and flushes its buffer every second.
const metricsDelay = 3500 * time.Millisecond

// statsdSink is a DogStatsD listener on UDP that keeps the worker's
// end-to-end latency samples with the time they arrived.
type statsdSink struct{ *metricSink }

func startStatsd() (*statsdSink, error) {
	m, err := startMetricSink(latencyMetric)
	if err != nil {
		return nil, err
	}
	return &statsdSink{m}, nil
}

// since returns the latency samples (ms) that arrived at or after t.
func (s *statsdSink) since(t time.Time) []float64 {
	var ms []float64
	for _, m := range s.metricSink.since(t, latencyMetric, "") {
		ms = append(ms, m.value)
	}
	return ms
}

// percentiles returns the q-quantiles of xs (nearest rank).
func percentiles(xs []float64, qs ...float64) []float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	out := make([]float64, len(qs))
	if len(s) == 0 {
		return out
	}
	for i, q := range qs {
		k := int(q*float64(len(s))+0.999999) - 1
		out[i] = s[min(max(k, 0), len(s)-1)]
	}
	return out
}

// latencyFigures are end-to-end latencies in ms.
type latencyFigures struct {
	samples  int
	p50, p99 float64
}

func figuresOf(xs []float64) latencyFigures {
	p := percentiles(xs, 0.50, 0.99)
	return latencyFigures{samples: len(xs), p50: p[0], p99: p[1]}
}

// steadyLoad produces page views to page_views at rate per second for d,
// each with the time it was made as its record timestamp, and returns how
// many it produced.
func steadyLoad(addr string, pages, rate int, d time.Duration) (int64, error) {
	cfg := saramaConfig()
	// Send as soon as possible: batching in the producer would count
	// against the worker.
	cfg.Producer.Flush.Bytes, cfg.Producer.Flush.Frequency = 0, 0
	p, err := newProducer(addr, cfg)
	if err != nil {
		return 0, err
	}
	const tick = 5 * time.Millisecond
	per := max(rate*int(tick)/int(time.Second), 1)
	t := time.NewTicker(tick)
	end := time.Now().Add(d)
	var n int64
	for now := range t.C {
		if now.After(end) {
			break
		}
		now = time.Now().UTC()
		stamp := now.Format(stampLayout)
		for range per {
			n++
			p.Input() <- pageView("page_views", "/page/"+strconv.FormatInt(n%int64(pages), 10), n, now, stamp)
		}
	}
	t.Stop()
	return n, p.close()
}

// procCPU returns the CPU seconds (user + system) pid has used so far.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / 100, nil // clock ticks; 100 per second on Linux
}
