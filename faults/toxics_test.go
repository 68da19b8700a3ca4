package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// group and topic are the worker's defaults, which these tests keep.
const (
	group = "pageviews"
	topic = "page_views"
)

// proxied is a dev broker behind an in-process toxiproxy, and one worker
// that reaches the broker only through the proxy: the broker advertises the
// proxy's address, so every request after bootstrap goes through it too.
type proxied struct {
	proxy  *toxiproxy.Proxy
	broker *harness.Broker
	worker *worker
	kafka  *kafkaClient
}

func startProxied(t *testing.T, extra map[string]string) *proxied {
	t.Helper()
	dir := logDir(t)
	f, err := os.Create(filepath.Join(dir, "toxiproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.New(f).Level(zerolog.InfoLevel))

	upstream := harness.FreeAddr(t)
	proxy := toxiproxy.NewProxy(server, "kafka", "127.0.0.1:0", upstream)
	if err := proxy.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(proxy.Stop)
	b := harness.StartBroker(t, dir, "-addr", upstream, "-advertise", proxy.Listen)
	if b.Addr != proxy.Listen {
		t.Fatalf("the broker advertises %s, not the proxy %s", b.Addr, proxy.Listen)
	}
	env := workerEnv(proxy.Listen, filepath.Join(t.TempDir(), "data"), extra)
	w := startWorker(t, dir, "worker", env)
	return &proxied{proxy: proxy, broker: b, worker: w, kafka: openKafka(t, proxy.Listen)}
}

// toxic adds a toxic given as toxiproxy's JSON and returns its removal.
func (c *proxied) toxic(t *testing.T, spec string) (remove func()) {
	t.Helper()
	tw, err := c.proxy.Toxics.AddToxicJson(strings.NewReader(spec))
	if err != nil {
		t.Fatalf("add toxic %s: %v", spec, err)
	}
	var once sync.Once
	remove = func() {
		once.Do(func() {
			if err := c.proxy.Toxics.RemoveToxic(context.Background(), tw.Name); err != nil {
				t.Errorf("remove toxic %s: %v", tw.Name, err)
			}
		})
	}
	t.Cleanup(remove)
	return remove
}

// monitor polls a worker's /ready/ and /live every 50ms and remembers what
// they answered.
type monitor struct {
	w    *worker
	stop chan struct{}
	done chan struct{}

	mu           sync.Mutex
	polls        int
	everReady    bool
	unreadyLate  []string  // 503s of /ready/ after it had been ready
	firstUnready time.Time // when the first of them came
	live         []string  // /live answers other than 200
}

func startMonitor(w *worker) *monitor {
	m := &monitor{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			m.poll()
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

func (m *monitor) poll() {
	if !m.w.Running() {
		return
	}
	now := time.Now()
	at := now.Format("15:04:05.000")
	rcode, rbody, rerr := probe(m.w.Worker, "/ready/")
	lcode, lbody, lerr := probe(m.w.Worker, "/live")
	m.mu.Lock()
	defer m.mu.Unlock()
	m.polls++
	switch {
	case rcode == http.StatusOK && rerr == nil:
		m.everReady = true
	case m.everReady:
		if m.firstUnready.IsZero() {
			m.firstUnready = now
		}
		if rerr != nil {
			m.unreadyLate = append(m.unreadyLate, at+" error "+rerr.Error())
		} else {
			m.unreadyLate = append(m.unreadyLate, fmt.Sprintf("%s %d %s", at, rcode, strings.TrimSpace(string(rbody))))
		}
	}
	if lerr != nil {
		m.live = append(m.live, at+" error "+lerr.Error())
	} else if lcode != http.StatusOK {
		m.live = append(m.live, fmt.Sprintf("%s %d %s", at, lcode, strings.TrimSpace(string(lbody))))
	}
}

// finish stops polling and returns the 503s of /ready/ after the worker had
// been ready, and the /live failures.
func (m *monitor) finish() (unready, live []string, polls int) {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unreadyLate, m.live, m.polls
}

// checkNoLoss waits for a complete report and checks that every page counts
// at least its acknowledged views. It returns the surplus: views counted
// beyond the acknowledged ones (views whose /count/ failed but which were
// published after all, or views processed twice).
func checkNoLoss(t *testing.T, w *worker, tl *tally, pages []string) (surplus int64) {
	t.Helper()
	var r pageview.Report
	waitFor(t, 60*time.Second, "a complete report", func() (bool, string) {
		var err error
		r, err = w.report()
		if err != nil {
			return false, err.Error()
		}
		return !r.Stale && len(r.MissingPartitions) == 0, fmt.Sprintf("stale %v, missing partitions %v", r.Stale, r.MissingPartitions)
	})
	var lost []string
	var over []string
	for _, p := range pages {
		got, acked, unknown := r.Pages[p].Count, tl.ackedOf(p), tl.unknownOf(p)
		if got < acked {
			lost = append(lost, fmt.Sprintf("%s: counted %d of %d acknowledged", p, got, acked))
		}
		if got > acked {
			surplus += got - acked
			over = append(over, fmt.Sprintf("%s: %d counted, %d acknowledged, %d unknown", p, got, acked, unknown))
		}
	}
	if len(lost) > 0 {
		t.Errorf("acknowledged views lost on %d pages:\n%s", len(lost), strings.Join(lost, "\n"))
	}
	if len(over) > 0 {
		t.Logf("surplus on %d pages:\n%s", len(over), strings.Join(over, "\n"))
	}
	return surplus
}

// TestLatency counts views while every answer of the broker comes 200ms
// late: all acknowledged views are counted, exactly.
func TestLatency(t *testing.T) {
	needProcesses(t)
	c := startProxied(t, nil)
	c.worker.WaitReady(t, 60*time.Second)
	mon := startMonitor(c.worker)

	remove := c.toxic(t, `{"name":"latency","type":"latency","stream":"downstream","attributes":{"latency":200}}`)
	pages := pageNames("/latency", 20)
	tl := newTally(0)
	began := time.Now()
	l := startLoad(newPool(1, c.worker), pages, tl, 200, 16)
	l.wait()
	sent, acked, unknown := tl.totals()
	t.Logf("200ms latency: %d views sent, %d acknowledged, %d unknown in %s (outcomes: %s)",
		sent, acked, unknown, time.Since(began).Round(time.Millisecond), tl.outcomeSummary())
	if acked != sent {
		t.Errorf("%d of %d views were not acknowledged under 200ms latency: %s", sent-acked, sent, tl.outcomeSummary())
	}
	// The worker consumes and commits with the latency still on.
	c.kafka.waitDrained(t, group, topic, 90*time.Second)
	remove()

	surplus := checkNoLoss(t, c.worker, tl, pages)
	if surplus != 0 {
		t.Errorf("%d views counted beyond the %d acknowledged, with no failure to explain them", surplus, acked)
	}
	unready, live, polls := mon.finish()
	c.worker.requireRunning("under latency")
	if len(live) > 0 {
		t.Errorf("/live failed %d times:\n%s", len(live), strings.Join(live, "\n"))
	}
	t.Logf("/ready/ and /live polled %d times; /ready/ not ready %d times after ready", polls, len(unready))
}

// TestConnectionResets resets every connection to the broker for a moment
// while views are counted: no acknowledged view is lost, the worker stays
// live and becomes ready again.
func TestConnectionResets(t *testing.T) {
	needProcesses(t)
	c := startProxied(t, nil)
	c.worker.WaitReady(t, 60*time.Second)
	mon := startMonitor(c.worker)

	pages := pageNames("/resets", 20)
	tl := newTally(0)
	l := startLoad(newPool(2, c.worker), pages, tl, 0, 8)
	waitFor(t, 30*time.Second, "views acknowledged before the resets", func() (bool, string) {
		_, acked, _ := tl.totals()
		return acked >= 200, fmt.Sprintf("%d acknowledged", acked)
	})
	_, before, _ := tl.totals()
	// reset_peer with timeout 0 resets a connection as soon as anything
	// travels on it, in either direction.
	logFrom := len(c.worker.Stdout.Lines())
	up := c.toxic(t, `{"name":"reset_up","type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}`)
	down := c.toxic(t, `{"name":"reset_down","type":"reset_peer","stream":"downstream","attributes":{"timeout":0}}`)
	time.Sleep(3 * time.Second) // the fault lasts a moment while the load runs
	up()
	down()
	// Evidence that the resets reached the worker: what it logged meanwhile.
	warned := 0
	var sample string
	for _, l := range c.worker.Stdout.Lines()[logFrom:] {
		var e harness.Entry
		if json.Unmarshal([]byte(l), &e) != nil || (e.Str("level") != "WARN" && e.Str("level") != "ERROR") {
			continue
		}
		if warned++; sample == "" {
			sample = e.Str("msg") + ": " + e.Str("error")
		}
	}
	t.Logf("during the resets the worker logged %d warnings and errors, e.g. %q", warned, sample)
	_, during, _ := tl.totals()
	waitFor(t, 60*time.Second, "views acknowledged again after the resets", func() (bool, string) {
		_, acked, _ := tl.totals()
		return acked >= during+200, fmt.Sprintf("%d acknowledged, %d when the resets ended (%s)", acked, during, tl.outcomeSummary())
	})
	l.stop()
	sent, acked, unknown := tl.totals()
	t.Logf("resets: %d views sent, %d acknowledged (%d before the resets), %d unknown; outcomes: %s",
		sent, acked, before, unknown, tl.outcomeSummary())

	c.worker.requireRunning("after connection resets")
	c.worker.WaitReady(t, 90*time.Second)
	c.kafka.waitDrained(t, group, topic, 90*time.Second)
	surplus := checkNoLoss(t, c.worker, tl, pages)
	t.Logf("counted %d views beyond the %d acknowledged (%d requests unknown)", surplus, acked, unknown)

	unready, live, polls := mon.finish()
	c.worker.requireRunning("after connection resets")
	if len(live) > 0 {
		t.Errorf("/live failed %d times during the resets:\n%s", len(live), strings.Join(live, "\n"))
	}
	t.Logf("/ready/ and /live polled %d times; /ready/ not ready %d times after ready: %s", polls, len(unready), strings.Join(first(unready, 5), "; "))
	for _, e := range c.worker.Entries("flush failed; retrying") {
		t.Logf("worker: flush failed; retrying: %v", e["error"])
		break
	}
}

// TestBrokerOutage cuts the worker off the broker for 10 seconds while a
// flush has work pending. During the outage /count/ answers 503 with a JSON
// error and /live stays 200; the partitions that cannot commit make the
// worker not ready (flushRetrying marks them stalled). Afterwards the
// worker is ready again and every acknowledged view is counted.
func TestBrokerOutage(t *testing.T) {
	needProcesses(t)
	brokerOutage(t, 10*time.Second)
}

// TestBrokerOutageLong is the same with an outage longer than the group
// session timeout (30s): the worker must wait it out, not exit.
func TestBrokerOutageLong(t *testing.T) {
	needChaos(t)
	brokerOutage(t, 45*time.Second)
}

// brokerOutage cuts the worker off the broker for outageFor, with work
// pending, and checks how it behaves during and after the outage.
func brokerOutage(t *testing.T, outageFor time.Duration) {
	// A commit interval of 2s leaves the views below processed but not yet
	// committed when the broker goes away.
	c := startProxied(t, map[string]string{"COMMIT_INTERVAL": "2s"})
	c.worker.WaitReady(t, 60*time.Second)
	mon := startMonitor(c.worker)

	pages := pageNames("/outage", 10)
	tl := newTally(0)
	pending := startOutage(t, c, pages, tl)
	outage := time.Now()

	countDuringOutage(t, c, tl, outage)
	time.Sleep(time.Until(outage.Add(outageFor))) // the outage lasts outageFor
	exited := !c.worker.Running()
	if err := c.proxy.Start(); err != nil {
		t.Fatalf("re-enable the proxy: %v", err)
	}
	t.Logf("outage over after %s", time.Since(outage).Round(time.Millisecond))
	if exited {
		c.worker.requireRunning(fmt.Sprintf("during a %s broker outage", outageFor))
	}

	c.worker.WaitReady(t, 120*time.Second)
	c.kafka.waitDrained(t, group, topic, 90*time.Second)
	checkUnreadyInOutage(t, c, mon, outage, outageFor, pending)

	surplus := checkNoLoss(t, c.worker, tl, append(pages, "/outage/during"))
	_, acked, unknown := tl.totals()
	t.Logf("after the outage: %d acknowledged views, %d unknown, %d counted beyond the acknowledged", acked, unknown, surplus)
}

// startOutage counts views of pages until the worker has processed some
// that it has not committed yet, and then stops the proxy. It returns how
// many processed records were not committed.
func startOutage(t *testing.T, c *proxied, pages []string, tl *tally) (pending int64) {
	t.Helper()
	for attempt := 1; pending == 0; attempt++ {
		if attempt > 5 {
			t.Fatal("the worker had committed everything each of 5 times the test looked; cannot start the outage with work pending")
		}
		startLoad(newPool(3, c.worker), pages, tl, 50, 4).wait()
		_, acked, unknown := tl.totals()
		if unknown > 0 {
			t.Fatalf("before the outage %d views were not acknowledged: %s", unknown, tl.outcomeSummary())
		}
		waitFor(t, 30*time.Second, "the views processed", func() (bool, string) {
			r, err := c.worker.report()
			if err != nil {
				return false, err.Error()
			}
			return r.Count == acked, fmt.Sprintf("report counts %d of %d", r.Count, acked)
		})
		var err error
		var detail string
		if pending, detail, err = c.kafka.behind(group, topic); err != nil {
			t.Fatal(err)
		}
		if pending > 0 {
			c.proxy.Stop() // the outage: no listener, every connection closed
			t.Logf("outage begins with %d processed records not committed (%s)", pending, detail)
		}
	}
	return pending
}

// countDuringOutage checks that /count/ during the outage answers 503 with
// a JSON error.
func countDuringOutage(t *testing.T, c *proxied, tl *tally, outage time.Time) {
	t.Helper()
	code, body, err := c.worker.Get(context.Background(), "/count/?page=/outage/during")
	tl.record("/outage/during", time.Now(), time.Now(), code, body, err)
	switch {
	case err != nil:
		t.Errorf("/count/ during the outage: %v", err)
	case code != http.StatusServiceUnavailable || !isJSONError(body):
		t.Errorf("/count/ during the outage answered %d %s; want 503 with a JSON error", code, body)
	default:
		t.Logf("/count/ during the outage answered %d %s after %s", code, strings.TrimSpace(string(body)), time.Since(outage).Round(time.Millisecond))
	}
}

// checkUnreadyInOutage stops mon and checks that /live never failed and
// that /ready/ answered 503, naming the partitions that cannot commit,
// while the worker could not commit its pending records.
func checkUnreadyInOutage(t *testing.T, c *proxied, mon *monitor, outage time.Time, outageFor time.Duration, pending int64) {
	t.Helper()
	unready, live, polls := mon.finish()
	stalled := 0
	for _, u := range unready {
		if strings.Contains(u, "cannot commit") {
			stalled++
		}
	}
	flushFailures := c.worker.Entries("flush failed; retrying")
	firstUnready := "never"
	if !mon.firstUnready.IsZero() {
		firstUnready = mon.firstUnready.Sub(outage).Round(10*time.Millisecond).String() + " into the outage"
	}
	t.Logf("/ready/ polled %d times: not ready %d times after ready (%d \"cannot commit\"), first %s: %s",
		polls, len(unready), stalled, firstUnready, strings.Join(first(unready, 2), "; "))
	t.Logf("the worker logged %d failed flushes", len(flushFailures))
	if len(live) > 0 {
		t.Errorf("/live failed %d times during the outage:\n%s", len(live), strings.Join(first(live, 10), "\n"))
	}
	if len(unready) == 0 {
		t.Errorf("the worker held %d processed, uncommitted records when the broker went away and could not commit them for %s, yet /ready/ never answered 503", pending, outageFor)
	}
	if len(flushFailures) > 0 && stalled == 0 {
		t.Errorf("the worker logged %d failed flushes but /ready/ never said \"cannot commit\"", len(flushFailures))
	}
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
