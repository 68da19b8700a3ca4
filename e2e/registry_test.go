package e2e_test

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// The acceptance tests of the schema registry. The registry is srfake
// served over HTTP on a loopback listener the test owns (or the worker's
// embedded dev registry), the broker the dev broker process (or the
// cluster of KAFKA_BROKERS), and records are produced and read back with
// sarama, framed as Confluent's clients frame them: byte 0, the schema id
// in 4 bytes big-endian, the Avro body.

// pageViewV2Schema is the worker's PageView schema with an optional field
// added: a worker built with the first version reads it without a deploy.
var pageViewV2Schema = evolve(func(fields []map[string]any) []map[string]any {
	return append(fields, map[string]any{"name": "referrer", "type": []any{"null", "string"}, "default": nil})
})

// pageViewIntPageSchema changes page to an int: no reader of the first
// version can read it.
var pageViewIntPageSchema = evolve(func(fields []map[string]any) []map[string]any {
	for _, f := range fields {
		if f["name"] == "page" {
			f["type"] = "int"
		}
	}
	return fields
})

// evolve is the worker's own PageView schema (whatever a generated worker
// named its record) with its fields changed by change.
func evolve(change func([]map[string]any) []map[string]any) string {
	var s struct {
		Type      string           `json:"type"`
		Name      string           `json:"name"`
		Namespace string           `json:"namespace"`
		Fields    []map[string]any `json:"fields"`
	}
	if err := json.Unmarshal([]byte(pageview.NewCodec().Schema()), &s); err != nil {
		panic(err)
	}
	s.Fields = change(s.Fields)
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// pageViewV2 is a record of pageViewV2Schema.
type pageViewV2 struct {
	Page      string    `avro:"page"`
	Count     int64     `avro:"count"`
	Timestamp time.Time `avro:"timestamp"`
	Referrer  *string   `avro:"referrer"`
}

// unknownSchemaID is an id no registry of these tests has handed out.
const unknownSchemaID = 9999

// A worker on the embedded broker starts the embedded dev registry and
// registers its schema there; /count/ then writes framed Avro whose id the
// registry serves, and a plain JSON view from another client is still
// counted.
func TestRegistryEmbedded(t *testing.T) {
	kcatBin := harness.RequireKcat(t)
	kafkaAddr, registryAddr := harness.FreeAddr(t), harness.FreeAddr(t)
	w := startWorker(t, "worker", workerEnv(filepath.Join(t.TempDir(), "data"), dayWindows, map[string]string{
		"EMBEDDED_KAFKA_ADDR": kafkaAddr, "EMBEDDED_REGISTRY_ADDR": registryAddr, "LIVECHECK_INTERVAL": "0",
	}))
	w.WaitReady(t, 60*time.Second)
	registryURL := "http://" + registryAddr
	notices := w.EntriesWhere(func(e harness.Entry) bool {
		return strings.HasPrefix(e.Str("msg"), "SCHEMA_REGISTRY_URL is empty")
	})
	if len(notices) != 1 || notices[0].Str("url") != registryURL {
		t.Fatalf("want one notice that the embedded registry started at %s; got %v", registryURL, notices)
	}

	subject := pageview.Topic + "-value"
	var subjects []string
	getJSON(t, registryURL+"/subjects", &subjects)
	if !slices.Contains(subjects, subject) {
		t.Fatalf("GET /subjects = %q, want %s among them", subjects, subject)
	}

	const avroPage, jsonPage = "/avro", "/json"
	w.Count(t, avroPage)
	rec := waitRecord(t, kafkaAddr, pageview.Topic, avroPage)
	id := frameID(t, rec.Value)
	if bound := boundID(t, w, subject); id != bound {
		t.Errorf("the record of /count/ carries schema id %d; the worker bound %s to id %d", id, subject, bound)
	}
	var served sr.Schema
	getJSON(t, fmt.Sprintf("%s/schemas/ids/%d", registryURL, id), &served)
	writer := parseSchema(t, served.Schema)
	if own := parseSchema(t, pageview.NewCodec().Schema()); writer.Fingerprint() != own.Fingerprint() {
		t.Errorf("schema id %d is %s, want the worker's PageView schema", id, served.Schema)
	}
	var pv pageview.PageView
	if err := avro.Unmarshal(writer, rec.Value[5:], &pv); err != nil || pv.Page != avroPage {
		t.Errorf("the record of /count/ read by schema id %d: %+v, %v; want page %s", id, pv, err, avroPage)
	}

	view := fmt.Sprintf(`{"page":%q,"count":1,"timestamp":%q}`, jsonPage, time.Now().UTC().Format(eventTime))
	harness.Kcat(t, kcatBin, view+"\n", "-P", "-b", kafkaAddr, "-t", pageview.Topic, "-k", jsonPage, "-q")
	b := &broker{addr: kafkaAddr, topic: pageview.Topic, group: pageview.App().Name}
	waitCommittedViews(t, committedViews(t, b), 2, 60*time.Second)
	requireCounts(t, w.Report(t), map[string]int64{avroPage: 1, jsonPage: 1})
	requireNoDeadLetters(t, kafkaAddr, pageview.Topic)
}

// With a registry, a closed window's count goes to <topic>-windows as
// registry-framed Avro of PageViewWindow, under <topic>-windows-value.
func TestRegistryClosedWindows(t *testing.T) {
	rs := serveRegistry(t)
	b := startBroker(t)
	w := startWorker(t, "worker", registryEnv(t, b, rs, map[string]string{
		"WINDOW_SIZE": "1s", "WINDOW_GRACE": "0s", "WINDOW_EXPIRES": "1m",
	}))
	w.WaitReady(t, 60*time.Second)
	const page = "/closed"
	w.Count(t, page)
	rec := waitRecord(t, b.addr, b.topic+"-windows", page)
	subject := b.topic + "-windows-value"
	id := frameID(t, rec.Value)
	if bound := boundID(t, w, subject); id != bound {
		t.Errorf("the closed window's record carries schema id %d; the worker bound %s to id %d", id, subject, bound)
	}
	var served sr.Schema
	getJSON(t, fmt.Sprintf("%s/schemas/ids/%d", rs.url(), id), &served)
	var got pageview.WindowCount
	if err := avro.Unmarshal(parseSchema(t, served.Schema), rec.Value[5:], &got); err != nil {
		t.Fatalf("the closed window's record by schema id %d: %v", id, err)
	}
	if got.Page != page || got.Count != 1 || got.End.Sub(got.Start) != time.Second {
		t.Errorf("closed window = %+v, want one view of %s in a 1s window", got, page)
	}
}

// countingV1 starts a registry, a broker and a worker bound to the
// registry, and has the worker count n framed v1 views of pages pages:
// what the tests of a registry changing under a running worker start from.
func countingV1(t *testing.T, n, pages int) (*registryServer, *broker, *harness.Worker, sarama.SyncProducer, func() int64, map[string]int64) {
	t.Helper()
	rs := serveRegistry(t)
	b := startBroker(t)
	w := startWorker(t, "worker", registryEnv(t, b, rs))
	w.WaitReady(t, 60*time.Second)
	v1 := boundID(t, w, b.topic+"-value")
	committed := committedViews(t, b)
	p := newProducer(t, b.addr)
	want := map[string]int64{}
	produce(t, p, avroViews(t, b.topic, v1Views(v1), "/v1", n, pages, want))
	waitCommittedViews(t, committed, int64(n), 60*time.Second)
	return rs, b, w, p, committed, want
}

// A schema registered while the worker runs, with an added optional field,
// is read by the running worker: every record of the new version is
// counted, none is dead-lettered, and the worker never restarts.
func TestRegistryEvolution(t *testing.T) {
	const before, after, pages = 100, 500, 10
	rs, b, w, p, committed, want := countingV1(t, before, pages)
	subject := b.topic + "-value"

	v2, version := rs.register(t, subject, pageViewV2Schema)
	t.Logf("registered version %d (id %d) of %s while the worker runs", version, v2, subject)
	produce(t, p, avroViews(t, b.topic, v2Views(v2), "/v2", after, pages, want))
	waitCommittedViews(t, committed, before+after, 60*time.Second)

	requireCounts(t, w.Report(t), want)
	requireNoDeadLetters(t, b.addr, b.topic)
	if !w.Running() {
		t.Fatalf("the worker exited: %v", w.Err())
	}
	if n := len(w.Entries("schema bound")); n != 2 {
		t.Errorf("the worker bound %d schemas, want 2 (its two subjects, once): it must not bind again for a new version", n)
	}
}

// A latest version the worker's schema cannot read stops the worker before
// it touches Kafka: exit status 2, one line on stderr naming the subject,
// the worker's version and the latest, and nothing registered.
func TestRegistryIncompatible(t *testing.T) {
	rs := serveRegistry(t)
	b := startBroker(t)
	subject := b.topic + "-value"
	_, own := rs.register(t, subject, pageview.NewCodec().Schema())
	rs.register(t, subject, pageViewV2Schema)
	badID, bad := rs.register(t, subject, pageViewIntPageSchema)

	p := harness.Start(t, logDir(t), "worker", harness.WorkerBinary(t), nil, registryEnv(t, b, rs))
	if code := p.WaitExit(t, 60*time.Second); code != 2 {
		t.Fatalf("exit status %d, want 2", code)
	}
	lines := p.Stderr.Lines()
	if len(lines) != 1 {
		t.Fatalf("stderr has %d lines, want exactly 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	want := fmt.Sprintf("pageviews: schema: subject %s: this worker's schema (version %d) of %s cannot read version %d (id %d), the latest: ",
		subject, own, pageview.NewCodec().Name(), bad, badID)
	if !strings.HasPrefix(lines[0], want) || len(lines[0]) == len(want) {
		t.Fatalf("stderr line\n  %s\nwant it to start with\n  %s\nand name the cause", lines[0], want)
	}
	t.Logf("stderr: %s", lines[0])
	if s, ok := rs.reg.GetSchema(subject, bad+1); ok {
		t.Errorf("the worker registered version %d (id %d) in %s", s.Version, s.ID, subject)
	}
}

// Records of an unknown schema id are dead-lettered, each once, with the
// error named, while the valid records around them are counted exactly and
// /ready/ stays ready throughout: a bad record is the record's fault, not
// the registry's.
func TestRegistryBadRecords(t *testing.T) {
	const n, pages = 1000, 10
	rs := serveRegistry(t)
	b := startBroker(t)
	w := startWorker(t, "worker", registryEnv(t, b, rs))
	w.WaitReady(t, 60*time.Second)
	ready := watchReady(w)
	v1 := boundID(t, w, b.topic+"-value")

	want := map[string]int64{}
	good := avroViews(t, b.topic, v1Views(v1), "/good", n, pages, want)
	var msgs []*sarama.ProducerMessage
	for _, m := range good {
		value := m.Value.(sarama.ByteEncoder)
		bad := append(frame(unknownSchemaID), value[5:]...)
		msgs = append(msgs, &sarama.ProducerMessage{Topic: m.Topic, Key: m.Key, Value: sarama.ByteEncoder(bad)}, m)
	}
	produce(t, newProducer(t, b.addr), msgs)
	waitCommittedViews(t, committedViews(t, b), 2*n, 60*time.Second)

	requireCounts(t, w.Report(t), want)
	dead := waitDeadLetters(t, b.addr, b.topic, n)
	wantErr := fmt.Sprintf("unknown schema id %d", unknownSchemaID)
	sources := map[string]bool{}
	for _, d := range dead {
		sources[d.Headers["source.partition"]+"/"+d.Headers["source.offset"]] = true
		if id := frameID(t, d.Value); id != unknownSchemaID {
			t.Fatalf("a dead letter holds a record of schema id %d, want only %d", id, unknownSchemaID)
		}
		if e := d.Headers["error"]; !strings.Contains(e, wantErr) {
			t.Fatalf("dead letter error header %q does not say %q", e, wantErr)
		}
		if src := d.Headers["source.topic"]; src != b.topic {
			t.Fatalf("dead letter source.topic %q, want %s", src, b.topic)
		}
	}
	if len(sources) != n {
		t.Errorf("the %d dead letters come from %d source records, want %d: one each", n, len(sources), n)
	}
	polls, notReady := ready.finish()
	if len(notReady) > 0 {
		t.Errorf("/ready/ answered not ready %d times of %d while bad records were dead-lettered; the first: %s", len(notReady), polls, notReady[0])
	}
	t.Logf("/ready/ answered ready all %d times it was asked", polls)
}

// While the registry is down, a record of a schema id the worker has not
// seen yet waits instead of being dead-lettered, and /ready/ says why,
// naming the registry; once the same registry answers again on the same
// address the partition goes on and every record is counted.
func TestRegistryOutage(t *testing.T) {
	const before, during, pages = 100, 200, 10
	rs, b, w, p, committed, want := countingV1(t, before, pages)
	subject := b.topic + "-value"
	v2, _ := rs.register(t, subject, pageViewV2Schema)

	rs.stop()
	t.Logf("the registry at %s is down", rs.url())
	produce(t, p, avroViews(t, b.topic, v2Views(v2), "/v2", during, pages, want))
	reason := waitNotReady(t, w, 60*time.Second)
	t.Logf("/ready/ while the registry is down: %s", reason)
	for _, s := range []string{"waits", rs.url()} {
		if !strings.Contains(reason, s) {
			t.Errorf("/ready/ reason %q does not say %q", reason, s)
		}
	}
	requireNoDeadLetters(t, b.addr, b.topic)
	if len(w.Entries("record waits for an unavailable service; trying again")) == 0 {
		t.Error(`the worker did not log "record waits for an unavailable service; trying again"`)
	}

	rs.start(t)
	t.Logf("the registry answers again at %s", rs.url())
	waitCommittedViews(t, committed, before+during, 60*time.Second)
	w.WaitReady(t, 60*time.Second)
	requireCounts(t, w.Report(t), want)
	requireNoDeadLetters(t, b.addr, b.topic)
}

// ---------------------------------------------------------------------------
// The registry.

// registryServer serves an srfake registry on a loopback address that
// stays the same across stop and start, so that an outage can end.
type registryServer struct {
	reg  *srfake.Registry
	addr string // 127.0.0.1:0 until the first start
	srv  *http.Server
	done chan struct{}
}

// serveRegistry serves a new registry until the test ends.
func serveRegistry(t testing.TB) *registryServer {
	t.Helper()
	rs := &registryServer{reg: srfake.NewRegistry(), addr: "127.0.0.1:0"}
	rs.start(t)
	t.Cleanup(rs.stop)
	return rs
}

// start listens on the registry's address (on a free port the first time)
// and serves.
func (rs *registryServer) start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", rs.addr)
	if err != nil {
		t.Fatalf("schema registry: listen on %s: %v", rs.addr, err)
	}
	rs.addr = ln.Addr().String()
	srv := &http.Server{Handler: rs.reg.Handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	rs.srv, rs.done = srv, done
}

// stop closes the listener and every connection: the registry is
// unreachable until start. What it holds stays.
func (rs *registryServer) stop() {
	if rs.srv == nil {
		return
	}
	_ = rs.srv.Close()
	<-rs.done
	rs.srv = nil
}

func (rs *registryServer) url() string { return "http://" + rs.addr }

// register adds an Avro schema to subject, in the registry the test
// serves (which checks no compatibility); it returns its id and version.
func (rs *registryServer) register(t testing.TB, subject, text string) (id, version int) {
	t.Helper()
	id, version, err := rs.reg.RegisterSchema(subject, sr.Schema{Schema: text, Type: sr.TypeAvro})
	if err != nil {
		t.Fatalf("register a schema in %s: %v", subject, err)
	}
	return id, version
}

// registryEnv is the settings of a worker on b and rs, without the
// livecheck: its synthetic views would be records the tests did not send.
func registryEnv(t testing.TB, b *broker, rs *registryServer, extra ...map[string]string) map[string]string {
	env := []map[string]string{dayWindows, b.env(), {"SCHEMA_REGISTRY_URL": rs.url(), "LIVECHECK_INTERVAL": "0"}}
	return workerEnv(filepath.Join(t.TempDir(), "data"), append(env, extra...)...)
}

// boundID is the schema id the worker logged it bound subject to.
func boundID(t testing.TB, w *harness.Worker, subject string) int {
	t.Helper()
	for _, e := range w.Entries("schema bound") {
		if e.Str("subject") == subject {
			return int(e.Num("id"))
		}
	}
	t.Fatalf("%s did not log that it bound %s", w.Name, subject)
	return 0
}

// getJSON requests url and decodes its 200 answer into v.
func getJSON(t testing.TB, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// ---------------------------------------------------------------------------
// Framed Avro.

func parseSchema(t testing.TB, text string) avro.Schema {
	t.Helper()
	s, err := avro.Parse(text)
	if err != nil {
		t.Fatalf("parse Avro schema: %v\n%s", err, text)
	}
	return s
}

// frame is the header of a registry-framed record of schema id.
func frame(id int) []byte {
	h := make([]byte, 5)
	binary.BigEndian.PutUint32(h[1:], uint32(id))
	return h
}

// frameID is the schema id of a registry-framed record.
func frameID(t testing.TB, value []byte) int {
	t.Helper()
	if len(value) < 5 || value[0] != 0 {
		t.Fatalf("record %q is not registry-framed: want byte 0 and a 4-byte schema id first", value)
	}
	return int(binary.BigEndian.Uint32(value[1:5]))
}

// pageViewV1 and pageViewWithReferrer make the value of the i-th view of
// page.
func pageViewV1(page string, i int) any {
	return pageview.PageView{Page: page, Count: int64(i + 1), Timestamp: time.Now()}
}

func pageViewWithReferrer(page string, i int) any {
	v := pageViewV2{Page: page, Count: int64(i + 1), Timestamp: time.Now()}
	if i%2 == 0 {
		ref := fmt.Sprintf("https://example.com/%d", i)
		v.Referrer = &ref
	}
	return v
}

// viewEncoding is how a producer of the tests writes views: framed with
// schema id, the body encoded by schema from what value makes of the i-th
// view of a page.
type viewEncoding struct {
	id     int
	schema string
	value  func(page string, i int) any
}

// v1Views writes by the worker's own schema, registered as id.
func v1Views(id int) viewEncoding {
	return viewEncoding{id: id, schema: pageview.NewCodec().Schema(), value: pageViewV1}
}

// v2Views writes by pageViewV2Schema, registered as id.
func v2Views(id int) viewEncoding {
	return viewEncoding{id: id, schema: pageViewV2Schema, value: pageViewWithReferrer}
}

// avroViews makes n views spread round-robin over pages pages named
// prefix/NN, each keyed by its page, and adds them to want.
func avroViews(t testing.TB, topic string, enc viewEncoding, prefix string, n, pages int, want map[string]int64) []*sarama.ProducerMessage {
	t.Helper()
	s := parseSchema(t, enc.schema)
	out := make([]*sarama.ProducerMessage, n)
	for i := range out {
		page := fmt.Sprintf("%s/%02d", prefix, i%pages)
		body, err := avro.Marshal(s, enc.value(page, i))
		if err != nil {
			t.Fatalf("encode a view of %s as Avro: %v", page, err)
		}
		out[i] = &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(append(frame(enc.id), body...))}
		want[page]++
	}
	return out
}

// requireCounts fails unless the report's totals are exactly want.
func requireCounts(t testing.TB, r pageview.Report, want map[string]int64) {
	t.Helper()
	var sum int64
	for page, n := range want {
		sum += n
		if got := r.Pages[page].Count; got != n {
			t.Errorf("page %s: count %d, want %d", page, got, n)
		}
	}
	if r.Count != sum || len(r.Pages) != len(want) {
		t.Fatalf("report: want %d views over %d pages; got %s", sum, len(want), harness.Summarize(r))
	}
}

// ---------------------------------------------------------------------------
// Kafka, through sarama.

func saramaConfig() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.ClientID = "pageviews-e2e"
	cfg.Net.DialTimeout = 5 * time.Second
	// Reading a topic must not create it.
	cfg.Metadata.AllowAutoTopicCreation = false
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Return.Successes = true
	return cfg
}

// newProducer is a producer of the test's own, closed when the test ends;
// it partitions by key as the worker's producer does.
func newProducer(t testing.TB, addr string) sarama.SyncProducer {
	t.Helper()
	p, err := sarama.NewSyncProducer([]string{addr}, saramaConfig())
	if err != nil {
		t.Fatalf("kafka producer on %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// produce sends msgs and waits until the brokers have them all.
func produce(t testing.TB, p sarama.SyncProducer, msgs []*sarama.ProducerMessage) {
	t.Helper()
	if err := p.SendMessages(msgs); err != nil {
		t.Fatalf("produce %d records: %v", len(msgs), err)
	}
}

// record is a record as a read_committed consumer sees it.
type record struct {
	Partition  int32
	Offset     int64
	Key, Value []byte
	Headers    map[string]string
}

// readTopic reads every record of topic below each partition's last stable
// offset, as a read_committed consumer does: the worker writes dead letters
// in transactions, so the topic holds their markers, and records of
// aborted transactions that no consumer sees. A topic that does not exist
// holds none.
func readTopic(t testing.TB, addr, topic string) []record {
	t.Helper()
	client, err := sarama.NewClient([]string{addr}, saramaConfig())
	if err != nil {
		t.Fatalf("kafka client on %s: %v", addr, err)
	}
	defer client.Close()
	partitions, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return nil
	}
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	var out []record
	for _, p := range partitions {
		out = append(out, readPartition(t, client, topic, p)...)
	}
	return out
}

// readPartition fetches partition p of topic from its start to its last
// stable offset. It fetches by hand rather than with sarama's consumer,
// which skips transaction markers without saying where it is, so a reader
// could not tell the end of the partition from a record still to come.
func readPartition(t testing.TB, client sarama.Client, topic string, p int32) []record {
	t.Helper()
	leader, err := client.Leader(topic, p)
	if err != nil {
		t.Fatalf("leader of %s/%d: %v", topic, p, err)
	}
	offset, err := client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		t.Fatalf("%s/%d: oldest offset: %v", topic, p, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var out []record
	for {
		req := &sarama.FetchRequest{Version: 11, MaxWaitTime: 100, MinBytes: 1, MaxBytes: 16 << 20,
			Isolation: sarama.ReadCommitted, SessionEpoch: -1}
		req.AddBlock(topic, p, offset, 16<<20, -1)
		resp, err := leader.Fetch(req)
		if err != nil {
			t.Fatalf("fetch %s/%d at offset %d: %v", topic, p, offset, err)
		}
		block := resp.GetBlock(topic, p)
		if block == nil || !errors.Is(block.Err, sarama.ErrNoError) {
			t.Fatalf("fetch %s/%d at offset %d: %v", topic, p, offset, block)
		}
		if offset >= block.LastStableOffset {
			return out
		}
		next := committedRecords(block, p, &out)
		if next <= offset && time.Now().After(deadline) {
			t.Fatalf("%s/%d: stuck at offset %d below the last stable offset %d", topic, p, offset, block.LastStableOffset)
		}
		offset = max(offset, next)
	}
}

// committedRecords adds the records of block's batches to out, leaving out
// the transaction markers and the batches of aborted transactions, and
// returns the offset after its last batch.
func committedRecords(block *sarama.FetchResponseBlock, p int32, out *[]record) (next int64) {
	aborted := slices.Clone(block.AbortedTransactions)
	slices.SortFunc(aborted, func(a, b *sarama.AbortedTransaction) int { return cmp.Compare(a.FirstOffset, b.FirstOffset) })
	open := map[int64]bool{} // producers inside an aborted transaction
	for _, rs := range block.RecordsSet {
		b := rs.RecordBatch
		if b == nil {
			continue // an old message set: the worker writes none
		}
		for len(aborted) > 0 && aborted[0].FirstOffset <= b.LastOffset() {
			open[aborted[0].ProducerID] = true
			aborted = aborted[1:]
		}
		next = b.LastOffset() + 1
		switch {
		case b.Control:
			// The key of a marker is its version, then its type: 0 is abort.
			if len(b.Records) > 0 && len(b.Records[0].Key) >= 4 && binary.BigEndian.Uint16(b.Records[0].Key[2:4]) == 0 {
				delete(open, b.ProducerID)
			}
		case b.IsTransactional && open[b.ProducerID]:
		default:
			for _, r := range b.Records {
				rec := record{Partition: p, Offset: b.FirstOffset + r.OffsetDelta, Key: r.Key, Value: r.Value, Headers: map[string]string{}}
				for _, h := range r.Headers {
					rec.Headers[string(h.Key)] = string(h.Value)
				}
				*out = append(*out, rec)
			}
		}
	}
	return next
}

// waitRecord waits until topic holds a record keyed key and returns it.
func waitRecord(t testing.TB, addr, topic, key string) record {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, r := range readTopic(t, addr, topic) {
			if string(r.Key) == key {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds no record keyed %s after 30s", topic, key)
		}
		time.Sleep(harness.PollInterval)
	}
}

// waitDeadLetters waits until the dead-letter topic of source holds n
// records, and fails when it holds more. A commit of the source offsets
// can be seen a moment before the markers of its transaction, which make
// its dead letters readable.
func waitDeadLetters(t testing.TB, addr, source string, n int) []record {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		dead := readTopic(t, addr, source+"-dlq")
		if len(dead) > n {
			t.Fatalf("%d dead letters, want %d", len(dead), n)
		}
		if len(dead) == n {
			return dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters, want %d, 30s after the worker committed every source record", len(dead), n)
		}
		time.Sleep(harness.PollInterval)
	}
}

// requireNoDeadLetters fails when the dead-letter topic of source holds a
// record.
func requireNoDeadLetters(t testing.TB, addr, source string) {
	t.Helper()
	if dead := readTopic(t, addr, source+"-dlq"); len(dead) != 0 {
		t.Fatalf("%d records dead-lettered, want none; the first: partition %d offset %d, error %q",
			len(dead), dead[0].Partition, dead[0].Offset, dead[0].Headers["error"])
	}
}

// ---------------------------------------------------------------------------
// Readiness.

// readyWatch asks /ready/ over and over in the background and keeps every
// answer that was not ready; its fields are the goroutine's until done is
// closed.
type readyWatch struct {
	stop, done chan struct{}
	polls      int
	notReady   []string
}

func watchReady(w *harness.Worker) *readyWatch {
	rw := &readyWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(rw.done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ok, why := w.Ready(ctx)
			cancel()
			rw.polls++
			if !ok {
				rw.notReady = append(rw.notReady, why)
			}
			select {
			case <-rw.stop:
				return
			case <-time.After(harness.PollInterval):
			}
		}
	}()
	return rw
}

// finish stops the watch and returns how often it asked and the answers
// that were not ready.
func (rw *readyWatch) finish() (polls int, notReady []string) {
	close(rw.stop)
	<-rw.done
	return rw.polls, rw.notReady
}

// waitNotReady polls /ready/ until it answers 503 with a reason, and
// returns the reason.
func waitNotReady(t testing.TB, w *harness.Worker, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		status, body, err := w.Get(context.Background(), "/ready/")
		if err == nil && status == http.StatusServiceUnavailable {
			var r struct {
				Ready  bool   `json:"ready"`
				Reason string `json:"reason"`
			}
			if jerr := json.Unmarshal(body, &r); jerr != nil || r.Ready || r.Reason == "" {
				t.Fatalf("%s: /ready/ answered 503 %s; want ready:false with a reason", w.Name, body)
			}
			return r.Reason
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /ready/ still answers %d %s (%v) %s later", w.Name, status, body, err, timeout)
		}
		time.Sleep(harness.PollInterval)
	}
}
