package faults

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// badKind is one way a record can be unusable, the error the worker must
// name in the dead letter's error header, and how to make such a value.
type badKind struct {
	name  string
	error string // a substring of the error header
	make  func(rng *rand.Rand, now time.Time) []byte
}

var badKinds = []badKind{
	{"json", "decode page view", func(rng *rand.Rand, _ time.Time) []byte {
		return []byte([]string{
			`{"page":"/bad`,
			`not json at all`,
			`{"page":"/x","count":"7"}`,
			`[1,2,3]`,
			`{"page":"/x",}`,
			`{"page":"/x" "count":1}`,
			`{"page": /x}`,
			`"just a string"`,
			`{"page":"/x","timestamp":"yesterday"}`,
			`{"page":"/x","count":1}}`,
		}[rng.IntN(10)])
	}},
	{"nopage", "page is missing", func(rng *rand.Rand, _ time.Time) []byte {
		return []byte([]string{
			`{"count":1}`,
			`{"page":"","count":2}`,
			`{}`,
			`null`,
			`{"page":null,"count":3}`,
			`{"pages":"/x"}`,
		}[rng.IntN(6)])
	}},
	{"long", "longer than 1024 bytes", func(rng *rand.Rand, _ time.Time) []byte {
		page := "/" + strings.Repeat("p", 1024+rng.IntN(2000)) // 1025 bytes or more
		return fmt.Appendf(nil, `{"page":%q,"count":1}`, page)
	}},
	{"utf8", "not valid UTF-8", func(rng *rand.Rand, _ time.Time) []byte {
		return []byte([]string{
			"{\"page\":\"/\xff\xfe\",\"count\":1}",
			"{\"page\":\"/caf\xc3\x28\",\"count\":1}",
			"{\"page\":\"/ok\",\"count\":1}\xc0\xaf",
			"{\"page\":\"/\xed\xa0\x80\"}",
		}[rng.IntN(4)])
	}},
	{"future", "too far in the future", func(rng *rand.Rand, now time.Time) []byte {
		ts := []time.Time{
			now.Add(2 * time.Hour),
			now.Add(72 * time.Hour),
			time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC),
		}[rng.IntN(3)]
		return fmt.Appendf(nil, `{"page":"/future","count":1,"timestamp":%q}`, ts.UTC().Format("2006-01-02T15:04:05.000Z"))
	}},
}

// TestBadInput has an outside client (kcat) write 10,000 malformed records
// interleaved with 10,000 valid page views. The valid views are counted
// exactly per page, every malformed record lands once in page_views-dlq
// with headers naming the error and the source topic, partition and
// offset, and the worker never stops being ready.
func TestBadInput(t *testing.T) {
	needProcesses(t)
	kcat := harness.RequireKcat(t)
	const perKind = 2000 // 5 kinds: 10,000 malformed records
	const valid = 10000
	pages := pageNames("/valid", 50)

	dir := logDir(t)
	b := harness.StartBroker(t, dir)
	w := startWorker(t, dir, "worker", workerEnv(b.Addr, filepath.Join(t.TempDir(), "data"), nil))
	w.WaitReady(t, 60*time.Second)
	mon := startMonitor(w)

	in := makeBadInput(t, pages, perKind, valid)
	harness.Kcat(t, kcat, "", "-P", "-b", b.Addr, "-t", topic, "-K:", "-l", in.file)

	k := openKafka(t, b.Addr)
	k.waitDrained(t, group, topic, 120*time.Second)

	r := checkValidCounted(t, w, pages, in.want, valid)
	dead, sources := checkDeadLetters(t, k, in)

	// The sources the dead letters name hold the malformed records.
	if len(sources) > 0 {
		checkSources(t, k, sources, in.badValue)
	}

	polls := checkStayedReady(t, w, mon)
	t.Logf("%d malformed and %d valid records: %d dead letters, %d views counted on %d pages; /ready/ polled %d times, never unready",
		len(in.badValue), valid, dead, r.Count, len(r.Pages), polls)
}

// badInput is what TestBadInput has kcat write: a file of records, the
// malformed values and their kinds by key, and the valid views by page.
type badInput struct {
	file      string
	badValue  map[string][]byte
	badKindOf map[string]badKind
	want      map[string]int64
}

// makeBadInput writes perKind malformed records of every kind and valid
// views of pages, shuffled, to a file for kcat.
func makeBadInput(t *testing.T, pages []string, perKind, valid int) *badInput {
	t.Helper()
	in := &badInput{badValue: map[string][]byte{}, badKindOf: map[string]badKind{}, want: map[string]int64{}}
	rng := rand.New(rand.NewPCG(7, 11))
	now := time.Now()
	var recs []kcatRecord
	for _, k := range badKinds {
		for i := range perKind {
			key := fmt.Sprintf("bad-%s-%05d", k.name, i)
			v := k.make(rng, now)
			if bytes.ContainsAny(v, "\n") {
				t.Fatalf("a %s value holds a newline", k.name)
			}
			recs = append(recs, kcatRecord{[]byte(key), v})
			in.badValue[key] = v
			in.badKindOf[key] = k
		}
	}
	for i := range valid {
		page := pages[rng.IntN(len(pages))]
		in.want[page]++
		v := fmt.Appendf(nil, `{"page":%q,"count":%d,"timestamp":%q}`, page, i+1, now.UTC().Format("2006-01-02T15:04:05.000Z"))
		if i%4 == 0 {
			// Without a timestamp the record's own timestamp is used.
			v = fmt.Appendf(nil, `{"page":%q,"count":%d}`, page, i+1)
		}
		recs = append(recs, kcatRecord{[]byte(page), v})
	}
	rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	in.file = writeKcatRecords(t, recs)
	return in
}

// kcatRecord is one record for kcat to produce.
type kcatRecord struct{ key, value []byte }

// writeKcatRecords writes recs to a file in a temporary directory, one
// record a line as "key:value", and returns its path. kcat splits at the
// first colon, so keys have none and no value holds a newline.
func writeKcatRecords(t *testing.T, recs []kcatRecord) string {
	t.Helper()
	var file bytes.Buffer
	for _, r := range recs {
		file.Write(r.key)
		file.WriteByte(':')
		file.Write(r.value)
		file.WriteByte('\n')
	}
	input := filepath.Join(t.TempDir(), "records.txt")
	if err := os.WriteFile(input, file.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return input
}

// checkValidCounted waits for a complete report and checks that it counts
// the valid views exactly per page, and nothing else. It returns the
// report.
func checkValidCounted(t *testing.T, w *worker, pages []string, want map[string]int64, valid int64) pageview.Report {
	t.Helper()
	var r pageview.Report
	waitFor(t, 60*time.Second, "a complete report", func() (bool, string) {
		var err error
		if r, err = w.report(); err != nil {
			return false, err.Error()
		}
		return !r.Stale && len(r.MissingPartitions) == 0, fmt.Sprintf("stale %v, missing %v", r.Stale, r.MissingPartitions)
	})
	var wrong []string
	for _, p := range pages {
		if got := r.Pages[p].Count; got != want[p] {
			wrong = append(wrong, fmt.Sprintf("%s: counted %d, sent %d", p, got, want[p]))
		}
	}
	for p, pr := range r.Pages {
		if _, ok := want[p]; !ok {
			wrong = append(wrong, fmt.Sprintf("%q (%d bytes) was counted %d times but no valid view named it", trim(p), len(p), pr.Count))
		}
	}
	if r.Count != valid {
		wrong = append(wrong, fmt.Sprintf("the report's total is %d, want %d", r.Count, valid))
	}
	if len(wrong) > 0 {
		t.Errorf("valid views not counted exactly:\n%s", strings.Join(first(wrong, 20), "\n"))
	}
	return r
}

// checkDeadLetters checks that every malformed record is in the dead-letter
// topic once (read as a consumer of it should: dead letters go out in the
// partition's transactions, and an aborted one's go out again in the
// next). It returns how many dead letters it read, and the key of the
// malformed record each source partition/offset they name holds.
func checkDeadLetters(t *testing.T, k *kafkaClient, in *badInput) (int, map[string]string) {
	t.Helper()
	dlq := k.readAll(t, topic+"-dlq", sarama.ReadCommitted)
	seenKey := map[string]int{}
	seenSource := map[string]string{}
	var bad []string
	for _, m := range dlq {
		seenKey[string(m.Key)]++
		bad = append(bad, in.deadLetterProblems(m, seenSource)...)
	}
	for key, n := range seenKey {
		if n > 1 {
			bad = append(bad, fmt.Sprintf("key %q dead-lettered %d times", trim(key), n))
		}
	}
	missing := 0
	for key := range in.badValue {
		if seenKey[key] == 0 {
			missing++
			if missing <= 5 {
				bad = append(bad, fmt.Sprintf("key %q (%s) never dead-lettered", key, in.badKindOf[key].name))
			}
		}
	}
	if len(dlq) != len(in.badValue) {
		t.Errorf("page_views-dlq holds %d records, want exactly %d (%d malformed records missing)", len(dlq), len(in.badValue), missing)
	}
	if len(bad) > 0 {
		t.Errorf("%d problems with the dead letters:\n%s", len(bad), strings.Join(first(bad, 20), "\n"))
	}
	return len(dlq), seenSource
}

// deadLetterProblems checks one dead letter against the malformed record
// it carries and files the source it names in seenSource.
func (in *badInput) deadLetterProblems(m *sarama.ConsumerMessage, seenSource map[string]string) []string {
	key := string(m.Key)
	var bad []string
	problem := func(format string, args ...any) {
		bad = append(bad, fmt.Sprintf("dlq %d/%d key %q: ", m.Partition, m.Offset, trim(key))+fmt.Sprintf(format, args...))
	}
	kind, ok := in.badKindOf[key]
	if !ok {
		problem("not one of the malformed records (value %q)", trim(string(m.Value)))
		return bad
	}
	if !bytes.Equal(m.Value, in.badValue[key]) {
		problem("value %q, want the original %q", trim(string(m.Value)), trim(string(in.badValue[key])))
	}
	errHdr, okErr := header(m, "error")
	srcTopic, okTopic := header(m, "source.topic")
	srcPart, okPart := header(m, "source.partition")
	srcOff, okOff := header(m, "source.offset")
	if !okErr || !okTopic || !okPart || !okOff {
		problem("headers %v, want error, source.topic, source.partition and source.offset", headerKeys(m))
		return bad
	}
	if !strings.Contains(errHdr, kind.error) {
		problem("error header %q does not name %q", errHdr, kind.error)
	}
	if srcTopic != topic {
		problem("source.topic %q", srcTopic)
	}
	p, err1 := strconv.ParseInt(srcPart, 10, 32)
	o, err2 := strconv.ParseInt(srcOff, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		problem("source.partition %q, source.offset %q are not a partition and an offset", srcPart, srcOff)
		return bad
	}
	src := srcPart + "/" + srcOff
	if other, dup := seenSource[src]; dup {
		problem("source %s also named by the dead letter of %q", src, trim(other))
	}
	seenSource[src] = key
	return bad
}

// checkStayedReady stops mon and checks that the worker still runs, that
// /ready/ never answered 503 after the worker had been ready and that /live
// never failed. It returns how many times mon polled.
func checkStayedReady(t *testing.T, w *worker, mon *monitor) int {
	t.Helper()
	unready, live, polls := mon.finish()
	w.requireRunning("after the bad input")
	if len(unready) > 0 {
		t.Errorf("/ready/ answered 503 %d times (of %d polls) after the worker had been ready:\n%s", len(unready), polls, strings.Join(first(unready, 10), "\n"))
	}
	if len(live) > 0 {
		t.Errorf("/live failed %d times:\n%s", len(live), strings.Join(first(live, 10), "\n"))
	}
	return polls
}

// checkSources reads page_views and checks that each dead letter's
// source.partition/source.offset is the malformed record it carries.
func checkSources(t *testing.T, k *kafkaClient, sources map[string]string, values map[string][]byte) {
	t.Helper()
	var wrong []string
	for _, m := range k.readAll(t, topic, sarama.ReadUncommitted) {
		src := fmt.Sprintf("%d/%d", m.Partition, m.Offset)
		key, ok := sources[src]
		if !ok {
			continue
		}
		if string(m.Key) != key || !bytes.Equal(m.Value, values[key]) {
			wrong = append(wrong, fmt.Sprintf("%s holds key %q, but its dead letter carries key %q", src, trim(string(m.Key)), trim(key)))
		}
		delete(sources, src)
	}
	for src, key := range sources {
		wrong = append(wrong, fmt.Sprintf("the dead letter of %q names %s, which does not exist", trim(key), src))
	}
	if len(wrong) > 0 {
		t.Errorf("dead letters name the wrong source records:\n%s", strings.Join(first(wrong, 20), "\n"))
	}
}

func headerKeys(m *sarama.ConsumerMessage) []string {
	var ks []string
	for _, h := range m.Headers {
		ks = append(ks, string(h.Key))
	}
	return ks
}

// trim shortens s for a failure message.
func trim(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
