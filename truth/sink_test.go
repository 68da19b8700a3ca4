package truth

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

// namespace is the prefix of every metric the worker sends.
const namespace = "pageviews."

// point is one line of a DogStatsD datagram: a metric with its values
// (several for an aggregated timing), its kind and its tags, and when the
// datagram arrived.
type point struct {
	At     time.Time
	Seq    int // arrival order, over the whole listener
	Name   string
	Kind   string // c, g, ms, h, d, s
	Values []float64
	Tags   map[string]string
}

// sink is a real UDP DogStatsD listener for one worker: it keeps every
// line it receives, in arrival order.
type sink struct {
	udpPort string

	mu     sync.Mutex
	points []point
	bad    []string // lines that are not DogStatsD metrics
}

func newSink(t testing.TB) *sink {
	t.Helper()
	s := &sink{}
	s.udpPort = harness.ListenStatsd(t, s.add)
	return s
}

// port is the listener's UDP port, for DD_DOGSTATSD_PORT.
func (s *sink) port() string { return s.udpPort }

func (s *sink) add(at time.Time, datagram string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, line := range strings.Split(datagram, "\n") {
		if line == "" {
			continue
		}
		p, ok := parseLine(line)
		if !ok {
			s.bad = append(s.bad, line)
			continue
		}
		p.At, p.Seq = at, len(s.points)
		s.points = append(s.points, p)
	}
}

// parseLine reads "name:v[:v...]|kind[|@rate][|#k:v,k:v][|...]".
func parseLine(line string) (point, bool) {
	name, rest, ok := strings.Cut(line, ":")
	if !ok || name == "" {
		return point{}, false
	}
	fields := strings.Split(rest, "|")
	if len(fields) < 2 {
		return point{}, false
	}
	p := point{Name: name, Kind: fields[1], Tags: map[string]string{}}
	for _, v := range strings.Split(fields[0], ":") {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return point{}, false
		}
		p.Values = append(p.Values, f)
	}
	for _, f := range fields[2:] {
		if list, ok := strings.CutPrefix(f, "#"); ok {
			for _, kv := range strings.Split(list, ",") {
				k, v, _ := strings.Cut(kv, ":")
				p.Tags[k] = v
			}
		}
	}
	return p, true
}

// matches reports whether p is metric name (without the namespace) and
// carries every tag of match.
func (p point) matches(name string, match map[string]string) bool {
	if p.Name != namespace+name {
		return false
	}
	for k, v := range match {
		if p.Tags[k] != v {
			return false
		}
	}
	return true
}

// find returns the points of metric name whose tags include match, in
// arrival order.
func (s *sink) find(name string, match map[string]string) []point {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []point
	for _, p := range s.points {
		if p.matches(name, match) {
			out = append(out, p)
		}
	}
	return out
}

// gauges returns the values of gauge name whose tags include match, in
// arrival order.
func (s *sink) gauges(name string, match map[string]string) []float64 {
	var out []float64
	for _, p := range s.find(name, match) {
		out = append(out, p.Values...)
	}
	return out
}

// last returns the last value of gauge name whose tags include match.
func (s *sink) last(name string, match map[string]string) (float64, bool) {
	v := s.gauges(name, match)
	if len(v) == 0 {
		return 0, false
	}
	return v[len(v)-1], true
}

// sum adds up every value of count name whose tags include match.
func (s *sink) sum(name string, match map[string]string) int64 {
	var n float64
	for _, p := range s.find(name, match) {
		for _, v := range p.Values {
			n += v
		}
	}
	return int64(n)
}

// byTag groups the points of metric name by the value of tag key.
func (s *sink) byTag(name, key string, match map[string]string) map[string][]point {
	out := map[string][]point{}
	for _, p := range s.find(name, match) {
		out[p.Tags[key]] = append(out[p.Tags[key]], p)
	}
	return out
}

// lastBy returns the last value of gauge name for each value of tag key.
func (s *sink) lastBy(name, key string, match map[string]string) map[string]float64 {
	out := map[string]float64{}
	for k, ps := range s.byTag(name, key, match) {
		vs := ps[len(ps)-1].Values
		out[k] = vs[len(vs)-1]
	}
	return out
}

// sumBy adds up count name for each value of tag key.
func (s *sink) sumBy(name, key string, match map[string]string) map[string]int64 {
	out := map[string]int64{}
	for k, ps := range s.byTag(name, key, match) {
		var n float64
		for _, p := range ps {
			for _, v := range p.Values {
				n += v
			}
		}
		out[k] = int64(n)
	}
	return out
}

// problems lists lines that were not metrics, names outside the
// namespace, and lines without the global tags env and version.
func (s *sink) problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.bad {
		out = append(out, "not a metric: "+l)
	}
	seen := map[string]bool{}
	for _, p := range s.points {
		var why string
		switch {
		case !strings.HasPrefix(p.Name, namespace):
			why = "outside the namespace"
		case p.Tags["env"] == "" || p.Tags["version"] == "":
			why = "without env and version tags"
		default:
			continue
		}
		if !seen[p.Name+why] {
			seen[p.Name+why] = true
			out = append(out, p.Name+" "+why)
		}
	}
	slices.Sort(out)
	return out
}
