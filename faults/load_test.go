package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

// windowKey is one page in one tumbling window (start in Unix ms).
type windowKey struct {
	page  string
	start int64
}

// tally is what the load sent and what the workers acknowledged. A view is
// acknowledged when /count/ answered 200 {"count":n}: the broker has it.
// Any other outcome after the request reached a worker leaves it unknown:
// the record may have been written (a publish that timed out) or not.
type tally struct {
	window time.Duration // for windows; 0 skips the window accounting

	mu       sync.Mutex
	sent     int64
	acked    map[string]int64
	unknown  map[string]int64
	refused  int64               // never reached a worker
	windows  map[windowKey]int64 // acknowledged views whose window is certain
	straddle map[string]int64    // acknowledged views whose request crossed a window boundary
	outcomes map[string]int      // every non-200 outcome, for the failure messages
}

func newTally(window time.Duration) *tally {
	return &tally{
		window:   window,
		acked:    map[string]int64{},
		unknown:  map[string]int64{},
		windows:  map[windowKey]int64{},
		straddle: map[string]int64{},
		outcomes: map[string]int{},
	}
}

// windowStart is the start of the tumbling window holding t, as the worker
// computes it (aligned to the Unix epoch).
func windowStart(t time.Time, size time.Duration) int64 {
	ms, s := t.UnixMilli(), size.Milliseconds()
	return ms - ((ms%s)+s)%s
}

// record files one /count/ outcome. began and ended bracket the request, so
// they bracket the worker's clock when it stamped the view.
func (t *tally) record(page string, began, ended time.Time, code int, body []byte, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sent++
	var ok struct {
		Count *int64 `json:"count"`
	}
	switch {
	case err == nil && code == http.StatusOK && json.Unmarshal(body, &ok) == nil && ok.Count != nil:
		t.acked[page]++
		if t.window > 0 {
			if s := windowStart(began, t.window); s == windowStart(ended, t.window) {
				t.windows[windowKey{page, s}]++
			} else {
				t.straddle[page]++
			}
		}
		return
	case err != nil && errors.Is(err, syscall.ECONNREFUSED):
		t.refused++
		t.outcomes["connection refused"]++
		return
	case err != nil:
		t.outcomes["error: "+err.Error()]++
	default:
		kind := fmt.Sprintf("%d", code)
		if code != http.StatusOK && !isJSONError(body) {
			kind += " (not a JSON error)"
		}
		t.outcomes[kind]++
	}
	t.unknown[page]++
}

// totals returns how many views were sent, acknowledged and left unknown.
func (t *tally) totals() (sent, acked, unknown int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.acked {
		acked += n
	}
	for _, n := range t.unknown {
		unknown += n
	}
	return t.sent, acked, unknown
}

func (t *tally) ackedOf(page string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acked[page]
}

func (t *tally) unknownOf(page string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unknown[page]
}

// outcomeSummary lists the non-200 outcomes, most frequent first.
func (t *tally) outcomeSummary() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range t.outcomes {
		all = append(all, kv{k, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n })
	var b strings.Builder
	for i, x := range all {
		if i == 8 {
			fmt.Fprintf(&b, "; ...")
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%dx %s", x.n, x.k)
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// pool spreads the load over workers. A worker taken out of the pool gets no
// new requests, and drain waits for its requests in flight, so a worker is
// only killed when no answer of its is outstanding: then every view is
// either acknowledged or never sent.
type pool struct {
	mu    sync.Mutex
	cond  *sync.Cond
	slots []*slot
	rng   *rand.Rand
}

type slot struct {
	w        *worker
	cur      *harness.Worker // the current process
	active   bool
	inflight int
}

func newPool(seed uint64, ws ...*worker) *pool {
	p := &pool{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	p.cond = sync.NewCond(&p.mu)
	for _, w := range ws {
		p.slots = append(p.slots, &slot{w: w, cur: w.Worker, active: true})
	}
	return p
}

// acquire picks an active worker at random and counts a request in flight;
// nil when none is active.
func (p *pool) acquire() *slot {
	p.mu.Lock()
	defer p.mu.Unlock()
	var active []*slot
	for _, s := range p.slots {
		if s.active {
			active = append(active, s)
		}
	}
	if len(active) == 0 {
		return nil
	}
	s := active[p.rng.IntN(len(active))]
	s.inflight++
	return s
}

func (p *pool) release(s *slot) {
	p.mu.Lock()
	s.inflight--
	p.mu.Unlock()
	p.cond.Broadcast()
}

// drain takes s out of the pool and waits until no request to it is in
// flight (requests are bounded by the client timeout).
func (p *pool) drain(s *slot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.active = false
	for s.inflight > 0 {
		p.cond.Wait()
	}
}

// activate puts s back, at its worker's current address.
func (p *pool) activate(s *slot) {
	p.mu.Lock()
	s.cur = s.w.Worker
	s.active = true
	p.mu.Unlock()
}

// load sends /count/ requests from several goroutines: limit requests in
// all, or until stop.
type load struct {
	pool    *pool
	pages   []string
	tally   *tally
	limit   int64 // 0: until stop
	started atomic.Int64
	stopped atomic.Bool
	wg      sync.WaitGroup
	began   time.Time
	took    time.Duration // set before ended is closed
	ended   chan struct{}
}

func startLoad(p *pool, pages []string, tl *tally, limit int64, concurrency int) *load {
	l := &load{pool: p, pages: pages, tally: tl, limit: limit, began: time.Now(), ended: make(chan struct{})}
	var done sync.WaitGroup
	for i := range concurrency {
		done.Add(1)
		rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
		l.wg.Go(func() {
			defer done.Done()
			for !l.stopped.Load() {
				if n := l.started.Add(1); l.limit > 0 && n > l.limit {
					return
				}
				if !l.one(l.pages[rng.IntN(len(l.pages))]) {
					// Every worker is out of the pool for a moment (a
					// restart of the only one): try again shortly.
					l.started.Add(-1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	l.wg.Go(func() {
		done.Wait()
		l.took = time.Since(l.began)
		close(l.ended)
	})
	return l
}

// one sends one view to a worker of the pool; false when none is active.
func (l *load) one(page string) bool {
	s := l.pool.acquire()
	if s == nil {
		return false
	}
	defer l.pool.release(s)
	began := time.Now()
	code, body, err := s.cur.Get(context.Background(), "/count/?page="+url.QueryEscape(page))
	l.tally.record(page, began, time.Now(), code, body, err)
	return true
}

// stop ends the load and waits for the requests in flight.
func (l *load) stop() {
	l.stopped.Store(true)
	l.wg.Wait()
}

// finished reports whether every request of the load has been answered.
func (l *load) finished() bool {
	select {
	case <-l.ended:
		return true
	default:
		return false
	}
}

// wait waits until the load has sent its limit.
func (l *load) wait() { l.wg.Wait() }

// done returns how many requests have been started.
func (l *load) done() int64 {
	n := l.started.Load()
	if l.limit > 0 {
		n = min(n, l.limit)
	}
	return n
}

// pageNames returns n page paths under prefix.
func pageNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s/%03d", prefix, i)
	}
	return out
}
