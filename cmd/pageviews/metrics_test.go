package main

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/devregistry"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/internal/pageview"
)

// statsdSink is a real UDP DogStatsD listener that keeps, per metric name,
// the tag keys it arrived with.
type statsdSink struct {
	conn   *net.UDPConn
	mu     sync.Mutex
	seen   map[string][]map[string]string // metric name -> tag sets
	sums   map[string]int64               // count metric name -> sum of values
	gauges map[string][]gaugeValue        // gauge metric name -> values in order
}

// gaugeValue is one value of a gauge, with its tags.
type gaugeValue struct {
	v    float64
	tags map[string]string
}

func newStatsdSink(t testing.TB) *statsdSink {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	s := &statsdSink{conn: conn, seen: map[string][]map[string]string{}, sums: map[string]int64{}, gauges: map[string][]gaugeValue{}}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				s.add(line)
			}
		}
	}()
	return s
}

// add parses "name:value[:value...]|type[|@rate]|#k:v,k:v".
func (s *statsdSink) add(line string) {
	name, rest, ok := strings.Cut(line, ":")
	if !ok {
		return
	}
	tags := map[string]string{}
	for _, field := range strings.Split(rest, "|") {
		if list, ok := strings.CutPrefix(field, "#"); ok {
			for _, kv := range strings.Split(list, ",") {
				k, v, _ := strings.Cut(kv, ":")
				tags[k] = v
			}
		}
	}
	fields := strings.Split(rest, "|")
	s.mu.Lock()
	s.seen[name] = append(s.seen[name], tags)
	if len(fields) > 1 && fields[1] == "c" {
		for _, v := range strings.Split(fields[0], ":") {
			n, _ := strconv.ParseInt(v, 10, 64)
			s.sums[name] += n
		}
	}
	if len(fields) > 1 && fields[1] == "g" {
		v, _ := strconv.ParseFloat(fields[0], 64)
		s.gauges[name] = append(s.gauges[name], gaugeValue{v: v, tags: tags})
	}
	s.mu.Unlock()
}

// values are the values gauge name arrived with, in order, of the series
// whose tags include match.
func (s *statsdSink) values(name string, match map[string]string) []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []float64
	for _, g := range s.gauges[name] {
		ok := true
		for k, v := range match {
			ok = ok && g.tags[k] == v
		}
		if ok {
			out = append(out, g.v)
		}
	}
	return out
}

// sum is the total of a count metric so far.
func (s *statsdSink) sum(name string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sums[name]
}

func (s *statsdSink) port() string {
	return strconv.Itoa(s.conn.LocalAddr().(*net.UDPAddr).Port)
}

// missing lists the declared metrics never received with all their tags.
func (s *statsdSink) missing(namespace string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, d := range metrics.All() {
		want := append(slices.Clone(metrics.GlobalTags()), d.Tags...)
		ok := false
		for _, tags := range s.seen[namespace+"."+d.Name] {
			has := true
			for _, k := range want {
				if _, found := tags[k]; !found {
					has = false
				}
			}
			ok = ok || has
		}
		if !ok {
			out = append(out, d.Name)
		}
	}
	sort.Strings(out)
	return out
}

// undeclared lists names received that the list does not declare.
func (s *statsdSink) undeclared(namespace string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	declared := map[string]bool{}
	for _, d := range metrics.All() {
		declared[namespace+"."+d.Name] = true
	}
	var out []string
	for name := range s.seen {
		if !declared[name] {
			out = append(out, name)
		}
	}
	return out
}

// startRegistry serves a schema registry (the dev registry, in memory) on
// a loopback port for the test, and returns its URL.
func startRegistry(t *testing.T) string {
	t.Helper()
	r, err := devregistry.Start(devregistry.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r.URL()
}

// TestEveryMetricEmitted runs a scripted scenario (counts, a bad record, a
// late view, window expiry, a second worker joining and leaving, recovery,
// livechecks) against a real UDP listener, and checks that every metric in
// the list arrived at least once with its documented tags.
func TestEveryMetricEmitted(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	sink := newStatsdSink(t)
	brokers, registry := startDevBroker(t), startRegistry(t)
	vars := func() map[string]string {
		return map[string]string{
			"KAFKA_BROKERS":          brokers,
			"SCHEMA_REGISTRY_URL":    registry,
			"WEB_ADDR":               "127.0.0.1:0",
			"DATA_DIR":               t.TempDir(),
			"COMMIT_INTERVAL":        "100ms",
			"WINDOW_SIZE":            "1m",
			"WINDOW_EXPIRES":         "2m",
			"DD_AGENT_HOST":          "127.0.0.1",
			"DD_DOGSTATSD_PORT":      sink.port(),
			"DD_ENV":                 "test",
			"METRICS_INTERVAL":       "200ms",
			"LIVECHECK_INTERVAL":     "1s",
			"TABLE_STANDBY_REPLICAS": "1",
		}
	}
	t0 := time.Now().Truncate(time.Minute).Add(30 * time.Second)
	clock := &fakeClock{now: t0}
	a := startWorker(t, vars(), clock.Now)
	for i := range 20 {
		getJSON(t, a.base+"/count/?page=/m/"+strconv.Itoa(i%4), nil)
	}

	// A bad record and a late one, from an outside producer.
	cfg, err := kafka.NewConfig(kafka.Options{ClientID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	prod, err := sarama.NewSyncProducer([]string{brokers}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	late := pageview.Encode(pageview.PageView{Page: "/late", Timestamp: t0.Add(-time.Hour)})
	for _, v := range [][]byte{[]byte("not json"), late} {
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "page_views", Key: sarama.StringEncoder("/m/0"), Value: sarama.ByteEncoder(v)}); err != nil {
			t.Fatal(err)
		}
	}
	prod.Close()

	// Event time moves on: the first window expires.
	clock.Set(t0.Add(5 * time.Minute))
	for i := range 8 {
		getJSON(t, a.base+"/count/?page=/m/"+strconv.Itoa(i), nil)
	}

	// A second worker joins (a rebalance, recovery on assignment), then
	// leaves again (recovery back on the first).
	b := startWorker(t, vars(), clock.Now)
	eventually(t, 30*time.Second, "partitions split between the workers", func() (bool, string) {
		var pa, pb held
		getJSON(t, a.base+"/report/?local=1", &pa)
		getJSON(t, b.base+"/report/?local=1", &pb)
		return len(pa.Partitions) > 0 && len(pb.Partitions) > 0, fmt.Sprint(pa.Partitions, pb.Partitions)
	})
	for i := range 8 {
		getJSON(t, b.base+"/count/?page=/n/"+strconv.Itoa(i), nil)
	}
	eventually(t, 10*time.Second, "views counted", func() (bool, string) {
		var rep pageview.Report
		getJSON(t, a.base+"/report/", &rep)
		return !rep.Stale && rep.Pages["/n/7"].Count == 1, fmt.Sprint(rep.Stale)
	})
	b.stop(t)

	eventually(t, 60*time.Second, "every listed metric emitted with its tags", func() (bool, string) {
		m := sink.missing("pageviews")
		return len(m) == 0, fmt.Sprintf("missing %v", m)
	})
	if u := sink.undeclared("pageviews"); len(u) > 0 {
		t.Errorf("metrics emitted but not in the list: %v", u)
	}
}

// seenWith reports whether metric name arrived with tag k:v.
func (s *statsdSink) seenWith(name, k, v string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tags := range s.seen[name] {
		if tags[k] == v {
			return true
		}
	}
	return false
}

// TestTransactionalSendsCounted: under exactly_once the changelog records
// go out through each partition's transactional producer; they count in
// messages_sent like the shared producer's.
func TestTransactionalSendsCounted(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	sink := newStatsdSink(t)
	a := startWorker(t, map[string]string{
		"KAFKA_BROKERS": startDevBroker(t), "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
		"COMMIT_INTERVAL": "100ms", "PROCESSING_GUARANTEE": "exactly_once", "PARTITIONS": "2",
		"DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": sink.port(), "LIVECHECK_INTERVAL": "0",
	}, time.Now)
	for i := range 10 {
		getJSON(t, a.base+"/count/?page=/t/"+strconv.Itoa(i), nil)
	}
	changelog := app.Changelog("pageviews", "totals")
	eventually(t, 30*time.Second, "messages_sent for "+changelog, func() (bool, string) {
		return sink.seenWith("pageviews.messages_sent", "topic", changelog), fmt.Sprint(sink.sum("pageviews.messages_sent"), " sent in all")
	})
}
