package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/table"
)

// This file is the harness of the fault matrix (faultmatrix_test.go): a
// worker run in-process through run, as main runs it, a readiness observer,
// the page views a cell sends, and the check that reads the tables back
// from their changelogs.

// matrixPages is how many pages a cell's views are spread over.
const matrixPages = 20

// cellWorker is one worker of a cell, run through run.
type cellWorker struct {
	name   string
	dir    string // DATA_DIR, relative to the cell's root
	logs   *lineWatcher
	base   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // what run returned, once done is closed

	mu      sync.Mutex
	samples []readySample
}

// readySample is one answer of /ready/.
type readySample struct {
	at     time.Time
	ready  bool
	reason string
}

// startCellWorker starts a worker with vars and waits until it listens. It
// returns nil, with run's error in err, when run returns before that.
func startCellWorker(name string, vars map[string]string) (*cellWorker, error) {
	w := &cellWorker{name: name, logs: newLineWatcher(), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		defer close(w.done)
		w.err = run(ctx, nil, env(vars), w.logs)
	}()
	deadline := time.After(60 * time.Second)
	for {
		if l := w.logs.all("http listening"); len(l) > 0 {
			w.base = "http://" + l[0]["addr"].(string)
			go w.observe(ctx)
			return w, nil
		}
		select {
		case <-w.done:
			return w, fmt.Errorf("%s returned before listening: %w", name, w.err)
		case <-deadline:
			return w, fmt.Errorf("%s not listening within 60s", name)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// observe polls /ready/ until the worker stops, keeping every answer.
func (w *cellWorker) observe(ctx context.Context) {
	client := &http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		resp, err := client.Get(w.base + "/ready/")
		if err == nil {
			var r struct {
				Ready  bool   `json:"ready"`
				Reason string `json:"reason"`
			}
			if json.NewDecoder(resp.Body).Decode(&r) == nil {
				w.mu.Lock()
				w.samples = append(w.samples, readySample{at: time.Now(), ready: r.Ready, reason: r.Reason})
				w.mu.Unlock()
			}
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
		case <-w.done:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// notReadyBetween returns the reasons /ready/ gave for not being ready
// between from and to.
func (w *cellWorker) notReadyBetween(from, to time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var reasons []string
	for _, s := range w.samples {
		if s.ready || s.at.Before(from) || s.at.After(to) {
			continue
		}
		if !slices.Contains(reasons, s.reason) {
			reasons = append(reasons, s.reason)
		}
	}
	return reasons
}

// ready reports whether the last answer of /ready/ was ready.
func (w *cellWorker) ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.samples) > 0 && w.samples[len(w.samples)-1].ready
}

// exited reports whether run has returned.
func (w *cellWorker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// stop cancels the worker (a warm shutdown, as on TERM) and returns what
// run returned, or an error when it did not return in time.
func (w *cellWorker) stop() error {
	w.cancel()
	select {
	case <-w.done:
		return w.err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%s: run did not return within 60s of the shutdown", w.name)
	}
}

// partitions returns the partitions this worker reports holding.
func (w *cellWorker) partitions() []int32 {
	var p held
	if err := getJSONErr(w.base+"/report/?local=1", &p); err != nil {
		return nil
	}
	return p.Partitions
}

// getJSONErr is getJSON returning errors instead of failing the test: the
// worker under test may be gone.
func getJSONErr(url string, v any) error {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: status %d: %w", url, resp.StatusCode, err)
	}
	return nil
}

// viewSender sends page views through /count/ and counts the views the
// worker acknowledged, per page.
type viewSender struct {
	mu    sync.Mutex
	acked map[string]int64
	next  int
}

func newViewSender() *viewSender { return &viewSender{acked: map[string]int64{}} }

func pageName(i int) string { return "/p/" + strconv.Itoa(i%matrixPages) }

// send sends n views through base, four at a time, spread over the pages.
// It returns how many were acknowledged.
func (s *viewSender) send(base string, n int) int {
	client := &http.Client{Timeout: 15 * time.Second}
	s.mu.Lock()
	first := s.next
	s.next += n
	s.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	work := make(chan int)
	for range 4 {
		wg.Go(func() {
			for i := range work {
				page := pageName(i)
				resp, err := client.Get(base + "/count/?page=" + page)
				if err != nil {
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					continue
				}
				s.mu.Lock()
				s.acked[page]++
				s.mu.Unlock()
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	for i := first; i < first+n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	return ok
}

// waitCounted polls /report/ on base until, for up to d, it is not stale
// and counts each page at least as often as want says. Each page is
// checked, not the sum: under at-least-once the views processed twice
// would make up for views not processed yet. It returns the pages still
// short when it gives up.
func waitCounted(base string, want map[string]int64, d time.Duration) (string, bool) {
	deadline := time.Now().Add(d)
	short := "no report"
	for time.Now().Before(deadline) {
		var rep pageview.Report
		if err := getJSONErr(base+"/report/", &rep); err == nil {
			short = shortPages(rep, want)
			if short == "" && !rep.Stale {
				return "", true
			}
			if short == "" {
				short = "stale"
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return short, false
}

// shortPages names the pages rep counts less often than want, at most
// three of them.
func shortPages(rep pageview.Report, want map[string]int64) string {
	var short []string
	for _, page := range slices.Sorted(maps.Keys(want)) {
		if got := rep.Pages[page].Count; got < want[page] {
			if len(short) == 3 {
				short = append(short, "...")
				break
			}
			short = append(short, fmt.Sprintf("%s=%d want %d", page, got, want[page]))
		}
	}
	return strings.Join(short, ", ")
}

// newMatrixCluster starts an in-process kfake cluster for one cell.
func newMatrixCluster(brokers int) (*kfake.Cluster, error) {
	return kfake.NewCluster(kfake.NumBrokers(brokers), kfake.GroupMinSessionTimeout(time.Second))
}

// topicContents reads every partition of topic from its start and returns
// the last value of each key (values nil for tombstones are dropped) and
// how many records each key has. readCommitted skips aborted transactions.
// The cluster is quiet when this runs (every worker stopped, no fault
// left), so a partition is read when its high watermark is reached or, for
// a commit marker at the end that is never delivered, after a quiet second.
func topicContents(brokers []string, topic string, readCommitted bool) (last map[string][]byte, counts map[string]int64, err error) {
	cfg := sarama.NewConfig()
	cfg.Version = kafka.Version
	cfg.ClientID = "faultmatrix-reader"
	cfg.Consumer.Return.Errors = true
	if readCommitted {
		cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	}
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", topic, err)
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", topic, err)
	}
	defer consumer.Close()
	recs, err := readRecords(client, consumer, topic)
	if err != nil {
		return nil, nil, err
	}
	last, counts = lastPerKey(recs)
	return last, counts, nil
}

// topicRecord is a record read by topicContents.
type topicRecord struct {
	p      int32
	off    int64
	key    string
	value  []byte
	isNull bool
}

// readRecords reads the partitions of topic concurrently, as topicContents
// describes, and returns their records in no particular order.
func readRecords(client sarama.Client, consumer sarama.Consumer, topic string) ([]topicRecord, error) {
	parts, err := client.Partitions(topic)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", topic, err)
	}
	var mu sync.Mutex
	var recs []topicRecord
	var errs []error
	var wg sync.WaitGroup
	for _, p := range parts {
		hwm, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, p, err)
		}
		if hwm == 0 {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, p, err)
		}
		wg.Go(func() {
			defer pc.Close()
			got, err := readPartition(pc, p, hwm)
			mu.Lock()
			defer mu.Unlock()
			recs = append(recs, got...)
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s/%d: %w", topic, p, err))
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return recs, nil
}

// readPartition returns the records of partition p that pc delivers until
// the one before the high watermark hwm, an error, or a quiet second.
func readPartition(pc sarama.PartitionConsumer, p int32, hwm int64) ([]topicRecord, error) {
	var recs []topicRecord
	for {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				return recs, nil
			}
			recs = append(recs, topicRecord{p: p, off: m.Offset, key: string(m.Key), value: m.Value, isNull: m.Value == nil})
			if m.Offset+1 >= hwm {
				return recs, nil
			}
		case err := <-pc.Errors():
			return recs, err
		case <-time.After(time.Second):
			return recs, nil
		}
	}
}

// lastPerKey replays recs in partition and offset order and returns the
// last value of each key, tombstones deleting it, and how many records
// each key has.
func lastPerKey(recs []topicRecord) (last map[string][]byte, counts map[string]int64) {
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].p != recs[j].p {
			return recs[i].p < recs[j].p
		}
		return recs[i].off < recs[j].off
	})
	last, counts = map[string][]byte{}, map[string]int64{}
	for _, r := range recs {
		counts[r.key]++
		if r.isNull {
			delete(last, r.key)
			continue
		}
		last[r.key] = r.value
	}
	return last, counts
}

// tableState is what the changelogs say the tables hold, per page: the
// totals table's value and the sum of the views table over its windows.
type tableState struct {
	totals, views map[string]int64
}

// readTables recovers both tables from their changelogs, last value per key
// winning, decoded with the tables' codec.
func readTables(brokers []string, cfg *config.Config) (tableState, error) {
	eos := cfg.Guarantee == config.ExactlyOnce
	st := tableState{totals: map[string]int64{}, views: map[string]int64{}}
	codec := table.Int64{}
	totals, _, err := topicContents(brokers, app.Changelog(cfg.Group, "totals"), eos)
	if err != nil {
		return st, err
	}
	for k, v := range totals {
		n, err := codec.Decode(v)
		if err != nil {
			return st, fmt.Errorf("%s key %q: %w", app.Changelog(cfg.Group, "totals"), k, err)
		}
		st.totals[k] = n
	}
	viewsTable, _ := tableNames()
	views, _, err := topicContents(brokers, app.Changelog(cfg.Group, viewsTable), eos)
	if err != nil {
		return st, err
	}
	for k, v := range views {
		if k == "\x00closed" {
			continue // the partition's closed-up-to point, not a window
		}
		i := strings.LastIndexByte(k, '|')
		if i < 0 {
			return st, fmt.Errorf("%s key %q has no window", app.Changelog(cfg.Group, viewsTable), k)
		}
		n, err := codec.Decode(v)
		if err != nil {
			return st, fmt.Errorf("%s key %q: %w", app.Changelog(cfg.Group, viewsTable), k, err)
		}
		st.views[k[:i]] += n
	}
	return st, nil
}

// compareCounts compares what a table holds per page with what was sent:
// exact under exactly-once, at least as much under at-least-once. It
// returns a one-line description of the mismatch, or "".
func compareCounts(what string, got, want map[string]int64, exact bool) string {
	var bad []string
	var gotSum, wantSum int64
	pages := map[string]bool{}
	for k := range want {
		pages[k] = true
	}
	for k := range got {
		pages[k] = true
	}
	keys := make([]string, 0, len(pages))
	for k := range pages {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		gotSum += got[k]
		wantSum += want[k]
		if got[k] < want[k] || exact && got[k] != want[k] {
			bad = append(bad, fmt.Sprintf("%s=%d want %d", k, got[k], want[k]))
		}
	}
	if len(bad) == 0 {
		return ""
	}
	wrong := len(bad)
	rel := ">="
	if exact {
		rel = "=="
	}
	if len(bad) > 4 {
		bad = append(bad[:4], "...")
	}
	return fmt.Sprintf("%s: %d of %d pages wrong (sum %d, want %s %d): %s", what, wrong, len(keys), gotSum, rel, wantSum, strings.Join(bad, ", "))
}
