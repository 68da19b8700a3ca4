package app

// The monitor page: GET /monitor/ on every worker, one self-contained page
// (its HTML, CSS and JS are in the binary) for a newcomer who has no
// Grafana. It polls GET /monitor/state, this worker's view as JSON: the
// group and its members, the partitions held here and their state, lag,
// recent rebalances, the tables, the store, the livecheck and the busiest
// keys of the windowed tables. It is generic: the tables come from the
// app's declarations.

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/web"
	"github.com/gofaust/pageviews/internal/window"
)

// monitorFiles are the page's HTML, CSS and JS. A package variable because
// the embed directive fills only those; it is read-only.
//
//go:embed monitorpage
var monitorFiles embed.FS

const (
	// keepRebalances is how many recent rebalances the page lists.
	keepRebalances = 8
	// chartWindows and chartKeys bound the chart: the busiest keys of the
	// last windows.
	chartWindows = 6
	chartKeys    = 8
	// monitorCacheFor is how long one built state answers every poller, so
	// that many open pages cost one scan of the tables.
	monitorCacheFor = time.Second
	// monitorPath is where the page is served; its state is under it.
	monitorPath = "/monitor/"
)

// monitor builds the state the page shows, and keeps what the runtime
// holds nowhere else: the recent rebalances with each partition's stop,
// the recoveries' sizes and ETAs, the last lag sample and the last
// livecheck.
type monitor struct {
	group, self string
	state       *stream.State
	members     func() ([]stream.Member, error)
	standby     *stream.Standby
	tables      []monitorTable
	store       func() store.Stats
	clock       func() time.Time // the event clock: the window of now
	livecheck   bool             // the app declared one
	sampleEvery time.Duration    // METRICS_INTERVAL: how often lag is sampled

	mu         sync.Mutex
	rebalances []*rebalance // oldest first
	recovery   map[int32]map[string]recoveryProgress
	lag        map[int32]lagSample
	lagAt      time.Time
	live       *livecheckView

	buildMu sync.Mutex
	built   *monitorState
	builtAt time.Time
}

// monitorTable is a declared table as the monitor reads its active copy.
type monitorTable struct {
	name string
	win  *window.Hopping // nil: a plain table
	// scan calls fn with every key of partition p (of the window starting
	// at start, for a windowed table) and its value as a number, when the
	// value is one.
	scan func(p int32, start int64, fn func(key string, n float64, numeric bool)) error
}

// monitored is what a declared table offers the monitor.
type monitored interface{ monitored() monitorTable }

func (t *Plain[V]) monitored() monitorTable {
	return monitorTable{name: t.name, scan: func(p int32, _ int64, fn func(string, float64, bool)) error {
		return t.active.Scan(p, func(k string, v V) { n, ok := number(v); fn(k, n, ok) })
	}}
}

func (t *Windowed[V]) monitored() monitorTable {
	win := t.active.Window()
	return monitorTable{name: t.name, win: &win, scan: func(p int32, start int64, fn func(string, float64, bool)) error {
		return t.active.ScanWindow(p, start, func(k string, v V) { n, ok := number(v); fn(k, n, ok) })
	}}
}

// number is v as a number for the chart, when its type is numeric.
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint:
		return float64(n), true
	case uint32:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float32:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

// newMonitor makes the monitor of the worker, once its group, directory,
// standbys and tables exist.
func (w *worker) newMonitor(livecheck bool) *monitor {
	m := &monitor{
		group: w.cfg.Group, self: w.self, state: w.state, members: w.directory.Members, standby: w.standby,
		store: w.db.Stats, clock: w.clock, livecheck: livecheck, sampleEvery: w.cfg.MetricsInterval,
		recovery: map[int32]map[string]recoveryProgress{},
	}
	for _, d := range w.a.Tables {
		if t, ok := d.(monitored); ok {
			m.tables = append(m.tables, t.monitored())
		}
	}
	return m
}

// pages are the monitor's pages: the page, its script and style, and its
// state. None is served when the app declares a page under /monitor/: the
// app's own comes first.
func (m *monitor) pages(app []web.Page) []web.Page {
	for _, pg := range app {
		if strings.HasPrefix(strings.TrimSuffix(pg.Path, "/")+"/", monitorPath) {
			return nil
		}
	}
	return []web.Page{
		{Path: monitorPath, Handler: asset("index.html", "text/html; charset=utf-8")},
		{Path: monitorPath + "monitor.js", Handler: asset("monitor.js", "text/javascript; charset=utf-8")},
		{Path: monitorPath + "monitor.css", Handler: asset("monitor.css", "text/css; charset=utf-8")},
		{Path: monitorPath + "state", Handler: m.serveState},
	}
}

// asset serves one of the page's files. The policy lets the page run only
// its own script and style and talk only to its own worker: a key that
// slipped through as markup could neither run nor load anything.
func asset(name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		b, err := fs.ReadFile(monitorFiles, path.Join("monitorpage", name))
		if err != nil {
			web.Error(w, http.StatusInternalServerError, "monitor page: "+err.Error())
			return
		}
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "+
			"img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		_, _ = w.Write(b)
	}
}

// serveState answers the page's poll. Every error is part of the state (a
// member list that could not be read, a table moved away while scanned):
// the page shows what it can, and a rolling restart never makes it fail.
func (m *monitor) serveState(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	web.JSON(w, http.StatusOK, m.cached())
}

// cached is the state built at most monitorCacheFor ago.
func (m *monitor) cached() *monitorState {
	m.buildMu.Lock()
	defer m.buildMu.Unlock()
	if m.built == nil || time.Since(m.builtAt) >= monitorCacheFor {
		m.built, m.builtAt = m.build(), time.Now()
	}
	return m.built
}
