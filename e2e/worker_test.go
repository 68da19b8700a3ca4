package e2e_test

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// dayWindows make exact window counts comparable: a test would have to run
// across midnight UTC to see the window of now change, and sameWindows
// detects that.
var dayWindows = map[string]string{"WINDOW_SIZE": "24h", "WINDOW_EXPIRES": "48h"}

const daySize = 24 * time.Hour

// With KAFKA_BROKERS unset the worker starts its own broker, becomes ready,
// and counts what /count/ publishes.
func TestEmbeddedBrokerCountsPageViews(t *testing.T) {
	harness.WorkerBinary(t) // built before the clock starts: the first test may build it
	began := time.Now()
	kafkaAddr := harness.FreeAddr(t)
	w := startWorker(t, "worker", workerEnv(t.TempDir(), dayWindows, map[string]string{
		"EMBEDDED_KAFKA_ADDR": kafkaAddr,
	}))

	notices := w.EntriesWhere(func(e harness.Entry) bool { return strings.HasPrefix(e.Str("msg"), "KAFKA_BROKERS is empty") })
	if len(notices) != 1 {
		t.Fatalf("the worker logged %d notices that it started the embedded dev broker, want 1", len(notices))
	}
	embedded := notices[0]
	if got := embedded.Str("addr"); got != kafkaAddr {
		t.Fatalf("embedded broker logged addr %q, want EMBEDDED_KAFKA_ADDR %q", got, kafkaAddr)
	}
	if embedded.Str("level") != "WARN" {
		t.Errorf("embedded broker notice logged at %q, want WARN", embedded.Str("level"))
	}

	w.WaitReady(t, 60*time.Second-time.Since(began))

	// The embedded broker speaks on the configured address.
	c, err := net.DialTimeout("tcp", kafkaAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("embedded broker is not listening on %s: %v", kafkaAddr, err)
	}
	c.Close()

	var health map[string]string
	w.GetJSON(t, "/", http.StatusOK, &health)
	if health["status"] != "ok" {
		t.Fatalf(`GET / = %v, want {"status":"ok"}`, health)
	}

	windows := windowsAt(time.Now(), daySize)
	for i := int64(1); i <= 7; i++ {
		if n := w.Count(t, "/a"); n != i {
			t.Fatalf("/count/ call %d answered count %d, want %d (the process's counter)", i, n, i)
		}
	}
	r := w.WaitReport(t, 30*time.Second, `7 views of /a`, func(r pageview.Report) bool {
		return r.Pages["/a"].Count == 7 && (r.Pages["/a"].Now == 7 || windowsAt(time.Now(), daySize) != windows)
	})
	if !sameWindows(t, windows, daySize) {
		return
	}
	want := pageview.Report{Now: 7, Count: 7, Stale: false, Pages: map[string]pageview.PageReport{
		"/a": {Now: 7, Count: 7, Report: "Trending now"},
	}}
	compareReports(t, want, r, true)
}

// Records produced by another client (kcat) are counted; a record that is
// not a page view goes to the dead-letter topic, and the partition goes on:
// a valid record behind it in the same partition is counted too.
func TestForeignRecordsAndPoisonRecord(t *testing.T) {
	kcatBin := harness.RequireKcat(t)
	b := startBroker(t)
	w := startWorker(t, "worker", workerEnv(t.TempDir(), dayWindows, map[string]string{
		"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group,
	}))
	w.WaitReady(t, 60*time.Second)
	windows := windowsAt(time.Now(), daySize)

	const page = "/kcat"
	produce := func(value string) {
		t.Helper()
		harness.Kcat(t, kcatBin, value+"\n", "-P", "-b", b.addr, "-t", b.topic, "-k", page, "-q")
	}
	view := func(n int) string {
		return fmt.Sprintf(`{"page":%q,"count":%d,"timestamp":%q}`, page, n,
			time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	}

	produce(view(1))
	w.WaitReport(t, 30*time.Second, "the view produced by kcat", func(r pageview.Report) bool { return r.Pages[page].Count == 1 })

	poison := fmt.Sprintf("this is not JSON %d", time.Now().UnixNano())
	produce(poison)
	produce(view(2))
	r := w.WaitReport(t, 30*time.Second, "the view produced after the poison record", func(r pageview.Report) bool {
		return r.Pages[page].Count == 2
	})
	if sameWindows(t, windows, daySize) && r.Pages[page].Now != 2 {
		t.Errorf("page %s: %d views in the window of now, want 2", page, r.Pages[page].Now)
	}
	if !w.Running() {
		t.Fatalf("worker exited after the poison record: %v", w.Err())
	}
	w.WaitReady(t, 5*time.Second)

	bad := poisonRecord(t, kcatBin, b, page, poison)
	checkDeadLettered(t, w, kcatBin, b, bad)
}

// poisonRecord returns the poison record, the second of the three records
// with key page in the source topic. The three records share the key, so
// they are in one partition, in the order they were produced.
func poisonRecord(t testing.TB, kcatBin string, b *broker, page, poison string) harness.Record {
	t.Helper()
	var mine []harness.Record
	for _, rec := range harness.ConsumeAll(t, kcatBin, b.addr, b.topic) {
		if rec.Key != nil && *rec.Key == page {
			mine = append(mine, rec)
		}
	}
	if len(mine) != 3 {
		t.Fatalf("page_views holds %d records with key %s, want 3: %+v", len(mine), page, mine)
	}
	bad := mine[1]
	if bad.Payload == nil || *bad.Payload != poison {
		t.Fatalf("second record with key %s is %v, want the poison record", page, bad.Payload)
	}
	for _, rec := range mine[1:] {
		if rec.Partition != mine[0].Partition {
			t.Fatalf("records with one key landed in partitions %d and %d; the test needs one partition", mine[0].Partition, rec.Partition)
		}
	}
	if !(mine[0].Offset < mine[1].Offset && mine[1].Offset < mine[2].Offset) {
		t.Fatalf("offsets out of order: %d, %d, %d", mine[0].Offset, mine[1].Offset, mine[2].Offset)
	}
	return bad
}

// checkDeadLettered checks that the poison record bad is logged and
// dead-lettered with where it came from.
func checkDeadLettered(t testing.TB, w *harness.Worker, kcatBin string, b *broker, bad harness.Record) {
	t.Helper()
	logged := w.EntriesWhere(func(e harness.Entry) bool {
		return e.Str("msg") == "dead-lettering record" && e.Num("partition") == int64(bad.Partition) && e.Num("offset") == bad.Offset
	})
	if len(logged) == 0 {
		t.Errorf("no \"dead-lettering record\" log line for partition %d offset %d", bad.Partition, bad.Offset)
	}
	dead := waitDeadLetter(t, kcatBin, b, *bad.Payload)
	if dead.Key == nil || *dead.Key != *bad.Key {
		t.Errorf("dead letter key %v, want %s", dead.Key, *bad.Key)
	}
	for k, want := range map[string]string{
		"source.topic":     b.topic,
		"source.partition": strconv.Itoa(int(bad.Partition)),
		"source.offset":    strconv.FormatInt(bad.Offset, 10),
	} {
		if got, ok := dead.Header(k); !ok || got != want {
			t.Errorf("dead letter header %s = %q (present %v), want %q", k, got, ok, want)
		}
	}
	if e, ok := dead.Header("error"); !ok || e == "" {
		t.Errorf("dead letter has no error header: %v", dead.Headers)
	}
}

// waitDeadLetter waits until the dead-letter topic holds a record with
// payload poison, and returns it.
func waitDeadLetter(t testing.TB, kcatBin string, b *broker, poison string) harness.Record {
	t.Helper()
	var dead harness.Record
	deadline := time.Now().Add(30 * time.Second)
	for dead.Payload == nil {
		for _, rec := range harness.ConsumeAll(t, kcatBin, b.addr, b.topic+"-dlq") {
			if rec.Payload != nil && *rec.Payload == poison {
				dead = rec
			}
		}
		if dead.Payload == nil && time.Now().After(deadline) {
			t.Fatal("the poison record did not reach page_views-dlq")
		}
		if dead.Payload == nil {
			time.Sleep(harness.PollInterval)
		}
	}
	return dead
}

// USR1 logs a dump of every goroutine and changes nothing else; TERM shuts
// the worker down cleanly, with exit status 0, within SHUTDOWN_TIMEOUT.
func TestSignals(t *testing.T) {
	const shutdownTimeout = 15 * time.Second
	b := startBroker(t)
	w := startWorker(t, "worker", workerEnv(t.TempDir(), dayWindows, map[string]string{
		"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group,
		"SHUTDOWN_TIMEOUT": shutdownTimeout.String(),
		// No livecheck: a synthetic view would add to the committed count.
		"LIVECHECK_INTERVAL": "0",
	}))
	w.WaitReady(t, 60*time.Second)
	committed := committedViews(t, b)
	if n := w.Count(t, "/before"); n != 1 {
		t.Fatalf("first /count/ answered %d, want 1", n)
	}

	w.Signal(t, syscall.SIGUSR1)
	dump := w.WaitEntry(t, 30*time.Second, "USR1: goroutine dump")
	stacks := dump.Str("stacks")
	goroutines := regexp.MustCompile(`(?m)^goroutine \d+ \[`).FindAllStringIndex(stacks, -1)
	if len(goroutines) < 10 {
		t.Fatalf("USR1 dump holds %d goroutine stacks, want all of them:\n%.2000s", len(goroutines), stacks)
	}
	if n := dump.Num("goroutines"); n <= 0 {
		t.Errorf("USR1 dump says goroutines=%d", n)
	}
	// Not only the goroutine that dumps: main, the HTTP server, the Kafka
	// client and the store all have goroutines of their own.
	for _, fn := range []string{"runtime/pprof.", "main.main()", "net/http.(*Server).Serve", "github.com/IBM/sarama.", "github.com/cockroachdb/pebble/"} {
		if !strings.Contains(stacks, fn) {
			t.Errorf("USR1 dump has no goroutine in %s", fn)
		}
	}

	// Still serving after the dump.
	if !w.Running() {
		t.Fatalf("worker exited after USR1: %v", w.Err())
	}
	w.WaitReady(t, 5*time.Second)
	if n := w.Count(t, "/after"); n != 2 {
		t.Fatalf("/count/ after USR1 answered %d, want 2", n)
	}
	w.WaitReport(t, 30*time.Second, "both views", func(r pageview.Report) bool {
		return r.Pages["/before"].Count == 1 && r.Pages["/after"].Count == 1
	})

	w.Signal(t, syscall.SIGTERM)
	if code := w.WaitExit(t, shutdownTimeout); code != 0 {
		t.Fatalf("after TERM the worker exited with status %d, want 0", code)
	}
	if len(w.Entries("stopped cleanly")) != 1 {
		t.Errorf(`the worker did not log "stopped cleanly" once`)
	}
	if errs := w.Stderr.Lines(); len(errs) > 0 {
		t.Errorf("stderr after a clean shutdown is not empty:\n%s", strings.Join(errs, "\n"))
	}
	// Everything processed was committed before the worker left.
	if n := committed(); n != 2 {
		t.Errorf("after TERM the group has committed %d page_views records, want both (2)", n)
	}
}

// TERM is a warm shutdown with exit status 0 also while clients keep
// connecting, as they do while a load balancer takes a terminating pod out
// of rotation; some connections carry no request yet (a pre-connect, a TCP
// probe, a request abandoned before it was written). Such a connection is
// closed by the server's header timeout 5 s after it was accepted, just
// before the HTTP grace period ends, and the worker used to fail its
// shutdown with "stop http: context deadline exceeded" (status 1).
func TestTermWhileClientsConnectExits0(t *testing.T) {
	b := startBroker(t)
	w := startWorker(t, "worker", workerEnv(filepath.Join(t.TempDir(), "data"), dayWindows, b.env()))
	w.WaitReady(t, 60*time.Second)
	w.Count(t, "/a")

	addr := strings.TrimPrefix(w.Base, "http://")
	stop := make(chan struct{})
	done := make(chan struct{})
	connected := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := 0; w.Running(); i++ {
			// Refused once the server stops listening; that is fine.
			if c, err := net.Dial("tcp", addr); err == nil {
				conns = append(conns, c)
			}
			if i == 0 {
				close(connected)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	<-connected
	w.Stop(t)
}

// A bad setting stops the worker before it does anything: exit status 2 and
// one line on stderr naming the variable.
func TestBadConfigExitsWithStatus2(t *testing.T) {
	for _, tc := range []struct {
		name, variable, value string
	}{
		{"window size not a duration", "WINDOW_SIZE", "banana"},
		{"commit interval too short", "COMMIT_INTERVAL", "1ms"},
		{"log format unknown", "LOG_FORMAT", "xml"},
		{"brokers without ports", "KAFKA_BROKERS", "localhost"},
		{"partitions not a number", "PARTITIONS", "eight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			env := workerEnv(dataDir, map[string]string{tc.variable: tc.value})
			p := harness.Start(t, logDir(t), "worker", harness.WorkerBinary(t), nil, env)
			if code := p.WaitExit(t, 30*time.Second); code != 2 {
				t.Fatalf("exit status %d, want 2", code)
			}
			lines := p.Stderr.Lines()
			if len(lines) != 1 {
				t.Fatalf("stderr has %d lines, want exactly 1:\n%s", len(lines), strings.Join(lines, "\n"))
			}
			if !strings.Contains(lines[0], tc.variable) || !strings.Contains(lines[0], tc.value) {
				t.Errorf("stderr line %q does not name %s and its value %q", lines[0], tc.variable, tc.value)
			}
			if out := p.Stdout.Lines(); len(out) != 0 {
				t.Errorf("stdout is not empty:\n%s", strings.Join(out, "\n"))
			}
			if fileExists(dataDir) {
				t.Errorf("DATA_DIR %s was created despite the bad setting", dataDir)
			}
		})
	}
}
