package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/sums"
)

// The runtime's guarantees, held against an app that is not page views
// (internal/sums): whatever a team builds on the runtime keeps them.

// sumsWorker runs the sums app in-process against brokers until stop.
type sumsWorker struct {
	base   string
	cancel context.CancelFunc
	done   chan error
}

func startSums(t *testing.T, vars map[string]string, wrap ...func(stream.Handler) stream.Handler) *sumsWorker {
	t.Helper()
	hooks := app.Hooks{}
	if len(wrap) > 0 {
		hooks.Handler = wrap[0]
	}
	a := sums.App()
	cfg, err := config.Load(func(k string) string { return vars[k] }, a.Spec())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &sumsWorker{cancel: cancel, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		hooks.Listening = func(s string) { addr <- s }
		w.done <- app.RunWorker(ctx, a, cfg, slog.New(slog.DiscardHandler), hooks)
	}()
	select {
	case s := <-addr:
		w.base = "http://" + s
	case err := <-w.done:
		t.Fatalf("worker stopped before listening: %v", err)
	}
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *sumsWorker) stop(t *testing.T) {
	if w.cancel == nil {
		return
	}
	w.cancel()
	w.cancel = nil
	if err := <-w.done; err != nil {
		t.Errorf("worker stopped with %v", err)
	}
}

func (w *sumsWorker) get(path string) (int, []byte) {
	resp, err := http.Get(w.base + path)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// waitReady waits for /ready/ to say ready.
func (w *sumsWorker) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := w.get("/ready/"); code == http.StatusOK {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("worker not ready within 60s")
}

// totals reads each account's total from /sums/.
func (w *sumsWorker) totals(t *testing.T, want map[string]int64) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	for key := range want {
		code, body := w.get("/sums/?key=" + key)
		var a struct{ Total int64 }
		if code != http.StatusOK || json.Unmarshal(body, &a) != nil {
			t.Fatalf("/sums/?key=%s: %d %s", key, code, body)
		}
		got[key] = a.Total
	}
	return got
}

// startCluster starts an in-process broker for the test (skipped with
// -short) and returns its address.
func startCluster(t *testing.T) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs workers against a broker")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

func equal(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestGuaranteesOnAnotherApp: under both guarantees the sums app counts
// every amount once; a worker that starts on an empty store restores the
// tables from their changelogs, and once /ready/ says so its answers are
// already complete; amounts sent after the restart add up exactly.
func TestGuaranteesOnAnotherApp(t *testing.T) {
	brokers := startCluster(t)
	for _, guarantee := range []string{"at_least_once", "exactly_once"} {
		t.Run(guarantee, func(t *testing.T) {
			topic := "amounts-" + guarantee
			vars := func() map[string]string {
				return map[string]string{
					"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
					"PARTITIONS": "3", "COMMIT_INTERVAL": "100ms", "PROCESSING_GUARANTEE": guarantee,
					"LIVECHECK_INTERVAL": "0", "KAFKA_GROUP": "sums-" + guarantee, "AMOUNTS_TOPIC": topic,
					"KAFKA_SESSION_TIMEOUT": "6s",
				}
			}
			first := startSums(t, vars())
			first.waitReady(t)

			want := map[string]int64{}
			produce := sender(t, brokers, topic, want)
			waitTotals := func(w *sumsWorker) { t.Helper(); w.waitTotals(t, want) }
			produce(300, 0)
			waitTotals(first)
			first.stop(t)

			// A new worker on an empty store: it is ready only once the
			// changelogs are restored, so its first answer is complete.
			second := startSums(t, vars())
			second.waitReady(t)
			if got := second.totals(t, want); !equal(got, want) {
				t.Errorf("first answer after ready = %v, want %v", got, want)
			}
			produce(200, 300)
			waitTotals(second)
		})
	}
}

// TestUnavailableServiceMakesThePartitionWait: while a service the agent
// needs is down (its handler answers stream.ErrUnavailable), the partition
// waits and tries the record again; /ready/ names the cause; nothing is
// dead-lettered or lost, and once the service is back every amount adds up
// exactly, under both guarantees.
func TestUnavailableServiceMakesThePartitionWait(t *testing.T) {
	brokers := startCluster(t)
	for _, guarantee := range []string{"at_least_once", "exactly_once"} {
		t.Run(guarantee, func(t *testing.T) {
			topic := "waits-" + guarantee
			var down atomic.Bool
			var refused atomic.Int64
			wrap := func(h stream.Handler) stream.Handler {
				return stream.HandlerFunc(func(ev *stream.Event) error {
					if down.Load() {
						refused.Add(1)
						return fmt.Errorf("%w: the rates service is down", stream.ErrUnavailable)
					}
					return h.Handle(ev)
				})
			}
			w := startSums(t, map[string]string{
				"KAFKA_BROKERS": brokers[0], "WEB_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(),
				"PARTITIONS": "3", "COMMIT_INTERVAL": "100ms", "PROCESSING_GUARANTEE": guarantee,
				"LIVECHECK_INTERVAL": "0", "KAFKA_GROUP": "waits-" + guarantee, "AMOUNTS_TOPIC": topic,
			}, wrap)
			w.waitReady(t)
			want := map[string]int64{}
			send := sender(t, brokers, topic, want)
			send(100, 0)
			w.waitTotals(t, want)

			down.Store(true)
			send(200, 100)
			reason := w.waitUnready(t)
			if !strings.Contains(reason, "the rates service is down") {
				t.Errorf("/ready/ says %q, want the cause named", reason)
			}
			down.Store(false)
			w.waitTotals(t, want)
			w.waitReady(t)
			if refused.Load() < 2 {
				t.Errorf("the record was tried %d times while the service was down, want it tried again", refused.Load())
			}
		})
	}
}

// sender returns a function that sends n amounts from the from-th on, and
// adds them to want.
func sender(t *testing.T, brokers []string, topic string, want map[string]int64) func(n, from int) {
	return func(n, from int) {
		t.Helper()
		pc := sarama.NewConfig()
		pc.Producer.Return.Successes = true
		pc.Producer.Partitioner = sarama.NewHashPartitioner
		p, err := sarama.NewSyncProducer(brokers, pc)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for i := from; i < from+n; i++ {
			key, amount := fmt.Sprintf("acct-%d", i%7), int64(i%50-10)
			if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key),
				Value: sarama.StringEncoder(strconv.FormatInt(amount, 10))}); err != nil {
				t.Fatal(err)
			}
			want[key] += amount
		}
	}
}

// waitTotals waits until every account's total is want's.
func (w *sumsWorker) waitTotals(t *testing.T, want map[string]int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for got := w.totals(t, want); !equal(got, want); got = w.totals(t, want) {
		if time.Now().After(deadline) {
			t.Fatalf("totals = %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitUnready waits for /ready/ to say not ready, and returns its reason.
func (w *sumsWorker) waitUnready(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		code, body := w.get("/ready/")
		var r struct{ Reason string }
		if code == http.StatusServiceUnavailable && json.Unmarshal(body, &r) == nil {
			return r.Reason
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("worker still ready 30s after its service went down")
	return ""
}
