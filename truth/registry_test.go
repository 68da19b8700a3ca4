package truth

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/gofaust/pageviews/internal/pageview"
)

// registry is a schema registry on a loopback port that the test can turn
// unavailable: it then answers 503 to everything, and counts the requests.
type registry struct {
	fake *srfake.Registry
	url  string
	down atomic.Bool
	// refused counts the requests answered 503 while down.
	refused atomic.Int64
}

func startRegistry(t *testing.T) *registry {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &registry{fake: srfake.NewRegistry(), url: "http://" + ln.Addr().String()}
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			r.refused.Add(1)
			http.Error(w, `{"error_code":50003,"message":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		r.fake.Handler().ServeHTTP(w, req)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

// pageViewV2 is PageView with an optional field added, as a newer producer
// writes it.
type pageViewV2 struct {
	pageview.PageView
	Referrer *string `avro:"referrer"`
}

// campaign is PageView with another optional field.
type campaign struct {
	pageview.PageView
	Campaign *string `avro:"campaign"`
}

// registerWith adds to the subject the PageView schema with an optional
// field, and returns its id and schema.
func (r *registry) registerWith(t *testing.T, subject, field string) (int, avro.Schema) {
	t.Helper()
	text := strings.Replace(pageview.NewCodec().Schema(), `"fields": [`,
		`"fields": [{"name": "`+field+`", "type": ["null", "string"], "default": null},`, 1)
	id, _, err := r.fake.RegisterSchema(subject, sr.Schema{Schema: text, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	return id, avro.MustParse(text)
}

// framed is a source record of schema id with an Avro body.
func framed(t *testing.T, id int, s avro.Schema, v any, page string, ts time.Time) *sarama.ProducerMessage {
	t.Helper()
	body, err := avro.Marshal(s, v)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(b[1:], uint32(id))
	return &sarama.ProducerMessage{Topic: sourceTopic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(append(b, body...)), Timestamp: ts}
}

// TestRegistry: registry-framed records of the worker's schema and of a
// newer one, of an unknown id, and of a new id while the registry is
// unavailable. schema_records counts the records of each id read,
// schema_registry_lookups the lookups the registry answered or refused,
// schema_registry_errors those it refused, and schema_cache_hits the
// framed records whose schema was already known.
func TestRegistry(t *testing.T) {
	s := newScenario(t, "schema registry")
	reg := startRegistry(t)
	w := s.start("worker", t.TempDir(), map[string]string{"SCHEMA_REGISTRY_URL": reg.url})
	w.WaitReady(t, time.Minute)
	subject := sourceTopic + "-value"
	own, ok := reg.fake.GetSchema(subject, 1)
	if !ok {
		t.Fatalf("the worker did not register its schema under %s", subject)
	}
	v2, v2Schema := reg.registerWith(t, subject, "referrer")
	ownSchema := avro.MustParse(own.Schema.Schema)

	now := time.Now()
	const ofOwn, ofV2, unknown, plain = 300, 200, 7, 50
	var msgs []*sarama.ProducerMessage
	for i := range ofOwn {
		page := fmt.Sprintf("/own/%d", i%10)
		msgs = append(msgs, framed(t, own.ID, ownSchema, pageview.PageView{Page: page, Count: int64(i), Timestamp: now}, page, now))
	}
	ref := "/from"
	for i := range ofV2 {
		page := fmt.Sprintf("/v2/%d", i%10)
		msgs = append(msgs, framed(t, v2, v2Schema, pageViewV2{PageView: pageview.PageView{Page: page, Timestamp: now}, Referrer: &ref}, page, now))
	}
	for i := range unknown {
		msgs = append(msgs, framed(t, 9999, ownSchema, pageview.PageView{Page: "/unknown", Timestamp: now}, fmt.Sprint("/unknown/", i), now))
	}
	for i := range plain {
		msgs = append(msgs, view(fmt.Sprintf("/json/%d", i%5), i, now))
	}
	if err := s.kafka.producer().send(msgs); err != nil {
		t.Fatal(err)
	}
	s.settled(w, s.caughtUp(time.Minute), 30*time.Second)

	// Unavailable: a third schema, first seen while the registry refuses.
	v3, v3Schema := reg.registerWith(t, subject, "campaign")
	reg.down.Store(true)
	const ofV3 = 20
	var late []*sarama.ProducerMessage
	for range ofV3 {
		late = append(late, framed(t, v3, v3Schema, campaign{PageView: pageview.PageView{Page: "/v3", Timestamp: now}}, "/v3", now))
	}
	if err := s.kafka.producer().send(late); err != nil {
		t.Fatal(err)
	}
	s.eventually("the worker tried the registry while it was down", 30*time.Second, func() (bool, string) {
		return reg.refused.Load() >= 2, fmt.Sprintf("%d requests refused", reg.refused.Load())
	})
	reg.down.Store(false)
	s.settled(w, s.caughtUp(time.Minute), 30*time.Second)

	k := w.sink
	byID := k.sumBy("schema_records", "schema_id", nil)
	for id, want := range map[int]int{own.ID: ofOwn, v2: ofV2, v3: ofV3} {
		got := byID[fmt.Sprint(id)]
		s.check(got == int64(want), "schema_records", fmt.Sprintf("framed records of schema id %d sent: %d", id, want), fmt.Sprint(got))
	}
	refused := reg.refused.Load()
	// The worker's own id, v2, the unknown id once (remembered), v3 once
	// refused per attempt and once answered.
	lookups := 4 + refused
	s.check(k.sum("schema_registry_lookups", nil) == lookups, "schema_registry_lookups",
		fmt.Sprintf("ids the registry was asked for: 4, plus %d requests refused while down", refused), fmt.Sprint(k.sum("schema_registry_lookups", nil)))
	s.check(k.sum("schema_registry_errors", nil) == refused, "schema_registry_errors",
		fmt.Sprintf("requests the registry refused while down: %d", refused), fmt.Sprint(k.sum("schema_registry_errors", nil)))
	hits := int64(ofOwn + ofV2 + ofV3 - 3)
	s.check(k.sum("schema_cache_hits", nil) == hits, "schema_cache_hits",
		fmt.Sprintf("framed records of known ids, less the first of each id: %d", hits), fmt.Sprint(k.sum("schema_cache_hits", nil)))
	dead := k.sum("dead_letters", nil)
	s.check(dead == unknown, "dead_letters", fmt.Sprintf("records of an unknown schema id sent: %d (none while the registry was down)", unknown), fmt.Sprint(dead))
	checkRegistryReports(t, w, ofOwn, ofV2, ofV3, plain)
}

// checkRegistryReports holds the worker's report to what was sent.
func checkRegistryReports(t *testing.T, w *worker, ofOwn, ofV2, ofV3, plain int) {
	t.Helper()
	want := map[string]int64{"/own/": int64(ofOwn), "/v2/": int64(ofV2), "/v3": int64(ofV3), "/json/": int64(plain)}
	got := map[string]int64{}
	for page, p := range w.Report(t).Pages {
		for prefix := range want {
			if strings.HasPrefix(page, prefix) {
				got[prefix] += p.Count
			}
		}
	}
	for prefix, n := range want {
		if got[prefix] != n {
			t.Errorf("pages %s*: counted %d, sent %d", prefix, got[prefix], n)
		}
	}
}
