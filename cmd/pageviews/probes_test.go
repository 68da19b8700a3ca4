package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/stream"
)

// status returns the status code and body of GET url.
func status(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startWorkerWith is startWorker with test hooks into the worker.
func startWorkerWith(t testing.TB, vars map[string]string, hooks app.Hooks) *worker {
	t.Helper()
	w := launchWorkerWith(t, vars, hooks)
	waitReady(t, w.base, 30*time.Second)
	return w
}

// TestLiveWhenStuck injects a stall into the agent: while a partition with
// records waiting makes no progress for STALL_TIMEOUT, /live answers 503;
// once the loop moves again, 200.
func TestLiveWhenStuck(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	release := make(chan struct{})
	var once sync.Once
	unstick := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unstick)
	stalling := func(next stream.Handler) stream.Handler {
		return stream.HandlerFunc(func(ev *stream.Event) error {
			if strings.Contains(string(ev.Value), `"/stuck"`) {
				<-release
			}
			return next.Handle(ev)
		})
	}
	w := startWorkerWith(t, map[string]string{
		"KAFKA_BROKERS":      startDevBroker(t),
		"WEB_ADDR":           "127.0.0.1:0",
		"DATA_DIR":           t.TempDir(),
		"COMMIT_INTERVAL":    "100ms",
		"STALL_TIMEOUT":      "1s",
		"PARTITIONS":         "1",
		"LIVECHECK_INTERVAL": "0",
	}, app.Hooks{Clock: time.Now, Handler: stalling})

	if st, body := status(t, w.base+"/live"); st != http.StatusOK {
		t.Fatalf("/live before the stall: %d %s", st, body)
	}
	// The first view sticks in the agent; the next ones wait behind it.
	go func() {
		if resp, err := http.Get(w.base + "/count/?page=/stuck"); err == nil {
			resp.Body.Close()
		}
	}()
	for range 3 {
		getJSON(t, w.base+"/count/?page=/behind", nil)
	}
	eventually(t, 20*time.Second, "/live reports the stuck loop", func() (bool, string) {
		st, body := status(t, w.base+"/live?full=1")
		return st == http.StatusServiceUnavailable && strings.Contains(body, "stuck"), fmt.Sprint(st, " ", body)
	})
	unstick()
	eventually(t, 20*time.Second, "/live healthy again", func() (bool, string) {
		st, body := status(t, w.base+"/live")
		return st == http.StatusOK, fmt.Sprint(st, " ", body)
	})
}

// TestLivecheckFailsAndHeals pauses consumption (the pipeline is broken
// though the worker is up): the livecheck's health check and metric report
// the failure, and both recover when consumption resumes.
func TestLivecheckFailsAndHeals(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	sink := newStatsdSink(t)
	var rt *stream.Runtime
	w := startWorkerWith(t, map[string]string{
		"KAFKA_BROKERS":      startDevBroker(t),
		"WEB_ADDR":           "127.0.0.1:0",
		"DATA_DIR":           t.TempDir(),
		"COMMIT_INTERVAL":    "100ms",
		"LIVECHECK_INTERVAL": "1s",
		"LIVECHECK_SLO":      "700ms",
		"DD_AGENT_HOST":      "127.0.0.1",
		"DD_DOGSTATSD_PORT":  sink.port(),
		"METRICS_INTERVAL":   "200ms",
	}, app.Hooks{Clock: time.Now, Runtime: func(r *stream.Runtime) { rt = r }})

	failures := func() int64 { return sink.sum("pageviews.livecheck_failure") }
	successes := func() int64 { return sink.sum("pageviews.livecheck_success") }
	eventually(t, 20*time.Second, "a livecheck passes", func() (bool, string) {
		st, body := status(t, w.base+"/livecheck")
		return st == http.StatusOK && successes() > 0, fmt.Sprint(st, " ", body)
	})

	rt.Pause()
	eventually(t, 20*time.Second, "the livecheck fails while consumption is paused", func() (bool, string) {
		st, body := status(t, w.base+"/livecheck")
		return st == http.StatusServiceUnavailable && failures() > 0, fmt.Sprint(st, " ", body, " failures ", failures())
	})
	if n := sink.sum("pageviews.livecheck_failure"); n == 0 {
		t.Errorf("no livecheck_failure metric")
	}

	rt.Resume()
	before := successes()
	eventually(t, 20*time.Second, "the livecheck passes again", func() (bool, string) {
		st, body := status(t, w.base+"/livecheck")
		return st == http.StatusOK && successes() > before, fmt.Sprint(st, " ", body)
	})
	// Synthetic views never show in the report.
	var rep struct{ Pages map[string]any }
	getJSON(t, w.base+"/report/", &rep)
	for page := range rep.Pages {
		if strings.HasPrefix(page, "/_pageviews/") {
			t.Errorf("report shows the synthetic page %s", page)
		}
	}
}
