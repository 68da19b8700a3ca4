package app

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/gofaust/pageviews/internal/stream"
)

// monitorState is the JSON of GET /monitor/state.
type monitorState struct {
	Now        time.Time       `json:"now"`
	Self       string          `json:"self"`
	Group      groupView       `json:"group"`
	Partitions []partitionView `json:"partitions"`
	Rebalances []rebalance     `json:"rebalances"` // newest first
	Tables     []tableView     `json:"tables"`
	Store      storeView       `json:"store"`
	Livecheck  livecheckView   `json:"livecheck"`
	Charts     []chartView     `json:"charts"`
}

type groupView struct {
	Name        string       `json:"name"`
	Generation  int32        `json:"generation"`
	Joined      bool         `json:"joined"`
	Rebalancing bool         `json:"rebalancing"`
	Ready       bool         `json:"ready"`
	Reason      string       `json:"reason,omitempty"`
	Members     []memberView `json:"members"`
	// MembersError is why the members could not be read (the coordinator
	// moving, a rebalance): the page keeps the ones it had.
	MembersError string `json:"members_error,omitempty"`
	// MembersStale: the members, as the coordinator was last asked (a
	// cached answer, up to the directory's cache time old, or older while a
	// lookup is slow), disagree with what this worker holds now: it is
	// missing or listed twice, or listed with other partitions. During a
	// rebalance one side or the other is behind the group; the page marks
	// the list stale rather than show it as current.
	MembersStale bool `json:"members_stale,omitempty"`
}

type memberView struct {
	ID         string  `json:"id"`
	ClientID   string  `json:"client_id"`
	Host       string  `json:"host"`
	URL        string  `json:"url"`
	Partitions []int32 `json:"partitions"`
	Self       bool    `json:"self"`
}

// partitionView is a partition held here: processing or recovering (the
// runtime's), or a standby copy.
type partitionView struct {
	Partition int32         `json:"partition"`
	State     string        `json:"state"` // "recovering", "processing" or "standby"
	Since     *time.Time    `json:"since,omitempty"`
	Recovery  *recoveryView `json:"recovery,omitempty"`
	Lag       *lagView      `json:"lag,omitempty"`
	Next      int64         `json:"next_offset"`      // -1: unknown
	Committed int64         `json:"committed_offset"` // -1: unknown
	// Behind is how many changelog records a standby copy is behind, by
	// table.
	Behind  map[string]int64 `json:"standby_behind,omitempty"`
	Waiting string           `json:"waiting,omitempty"`
	Stalled string           `json:"stalled,omitempty"`
}

type recoveryView struct {
	Remaining int64   `json:"remaining"` // -1: not measured yet
	Total     int64   `json:"total"`
	Done      float64 `json:"done"`        // 0 to 1
	ETA       float64 `json:"eta_seconds"` // -1: unknown
}

// lagView is the last sample of a partition's lag, the figures of the
// consumer_lag and consumer_lag_seconds metrics.
type lagView struct {
	Records   int64     `json:"records"`
	Seconds   float64   `json:"seconds"`
	EndOffset int64     `json:"end_offset"`
	SampledAt time.Time `json:"sampled_at"`
	// Stale: sampled before the partition was assigned here, or more than
	// a few sampling intervals ago.
	Stale bool `json:"stale"`
}

// rebalance is one rebalance as this worker lived it: the partitions it
// released and resumed, with how long each was stopped.
type rebalance struct {
	Generation int32               `json:"generation"`
	At         time.Time           `json:"at"`
	StoppedMs  *int64              `json:"stopped_ms"` // until every partition processed again; null: in progress
	Partitions []rebalancePartView `json:"partitions"`
	// resumed: a partition resumed in it.
	resumed bool
}

type rebalancePartView struct {
	Partition int32  `json:"partition"`
	Event     string `json:"event"` // "released" or "resumed"
	// Released: how long flushing and handing it back took.
	ReleaseMs int64 `json:"release_ms,omitempty"`
	// Resumed: how long recovery took, how many changelog records it
	// replayed from which copy, and how long the partition went
	// unprocessed since its release (null: unknown, after a crash).
	RecoveryMs    int64  `json:"recovery_ms,omitempty"`
	UnprocessedMs *int64 `json:"unprocessed_ms,omitempty"`
	Replayed      int64  `json:"replayed,omitempty"`
	Copy          string `json:"copy,omitempty"`
}

type tableView struct {
	Name     string `json:"name"`
	Windowed bool   `json:"windowed"`
	Window   string `json:"window,omitempty"`
	// Keys counts the keys of the partitions processing here: all of a
	// plain table's, and those of a windowed table's last chartWindows
	// windows.
	Keys  int64  `json:"keys"`
	Error string `json:"error,omitempty"`
}

type storeView struct {
	DiskBytes   uint64 `json:"disk_bytes"`
	Compactions int64  `json:"compactions"`
}

type livecheckView struct {
	Declared bool      `json:"declared"`
	Ran      bool      `json:"ran"` // on this worker: it runs on the owner of partition 0
	OK       bool      `json:"ok"`
	At       time.Time `json:"at,omitzero"`
	TookMs   int64     `json:"took_ms,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// chartView is the busiest keys of a windowed table in its last windows,
// over the partitions processing here.
type chartView struct {
	Table      string       `json:"table"`
	Windows    []windowView `json:"windows"` // oldest first; the last holds now
	Keys       []chartKey   `json:"keys"`    // busiest first
	Partitions []int32      `json:"partitions"`
}

type windowView struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

type chartKey struct {
	Key    string    `json:"key"`
	Counts []float64 `json:"counts"` // by window, as Windows
}

type recoveryProgress struct {
	total, remaining int64
	eta              time.Duration
}

type lagSample struct {
	records, end int64
	seconds      float64
}

// build reads everything the page shows.
func (m *monitor) build() *monitorState {
	view := m.state.View()
	ready, reason := m.state.Ready()
	disk := m.store()
	st := &monitorState{
		Now: time.Now(), Self: m.self,
		Group: groupView{Name: m.group, Generation: view.Generation, Joined: view.Joined, Rebalancing: view.Rebalancing,
			Ready: ready, Reason: reason, Members: []memberView{}},
		Store: storeView{DiskBytes: disk.DiskBytes, Compactions: disk.Compactions},
	}
	if members, err := m.members(); err != nil {
		st.Group.MembersError = err.Error()
	} else {
		for _, mb := range members {
			st.Group.Members = append(st.Group.Members, memberView{ID: mb.ID, ClientID: mb.ClientID, Host: mb.Host,
				URL: mb.URL, Partitions: nonNil(mb.Partitions), Self: mb.URL == m.self})
		}
		st.Group.MembersStale = membersStale(st.Group.Members, view)
	}
	var processing []int32
	for _, pv := range view.Partitions {
		if !pv.Recovering {
			processing = append(processing, pv.Partition)
		}
	}
	m.mu.Lock()
	st.Partitions = m.partitions(view)
	st.Rebalances = m.recent()
	st.Livecheck = livecheckView{Declared: m.livecheck}
	if m.live != nil {
		st.Livecheck = *m.live
	}
	m.mu.Unlock()
	st.Partitions = append(st.Partitions, m.standbys()...)
	st.Tables, st.Charts = m.readTables(processing)
	return st
}

// membersStale tells whether members disagree with the partitions this
// worker holds in view (processing or recovering): a list that does not
// name this worker exactly once, with exactly those partitions, is not the
// group as it is now.
func membersStale(members []memberView, view stream.View) bool {
	held := make([]int32, 0, len(view.Partitions))
	for _, pv := range view.Partitions {
		held = append(held, pv.Partition)
	}
	self, stale := 0, false
	for _, mb := range members {
		if mb.Self {
			self++
			stale = stale || !slices.Equal(mb.Partitions, held)
		}
	}
	return stale || self != 1
}

// partitions are the rows of the partitions the runtime holds; m.mu is
// held.
func (m *monitor) partitions(view stream.View) []partitionView {
	out := []partitionView{}
	for _, pv := range view.Partitions {
		row := partitionView{Partition: pv.Partition, State: "processing", Next: pv.Position.Next, Committed: pv.Position.Committed,
			Waiting: pv.Waiting, Stalled: pv.Stalled}
		if !pv.Since.IsZero() {
			row.Since = &pv.Since
		}
		if pv.Recovering {
			row.State, row.Recovery = "recovering", m.recoveryOf(pv)
		} else if s, ok := m.lag[pv.Partition]; ok {
			row.Lag = &lagView{Records: s.records, Seconds: s.seconds, EndOffset: s.end, SampledAt: m.lagAt,
				Stale: m.lagAt.Before(pv.Since) || time.Since(m.lagAt) > 3*m.sampleEvery}
		}
		out = append(out, row)
	}
	return out
}

// recoveryOf is a recovering partition's progress: its size is the sum of
// what its tables had to replay, its ETA that of the slowest table (-1
// while a table with records left has not measured its speed); m.mu is
// held.
func (m *monitor) recoveryOf(pv stream.PartitionView) *recoveryView {
	rv := &recoveryView{Remaining: pv.Remaining, ETA: -1}
	known := true
	for _, tp := range m.recovery[pv.Partition] {
		rv.Total += tp.total
		if tp.remaining > 0 && tp.eta < 0 {
			known = false
		}
		rv.ETA = max(rv.ETA, tp.eta.Seconds())
	}
	if !known {
		rv.ETA = -1
	}
	rv.Total = max(rv.Total, pv.Remaining)
	if rv.Total > 0 && rv.Remaining >= 0 {
		rv.Done = 1 - float64(rv.Remaining)/float64(rv.Total)
	}
	return rv
}

// standbys are the rows of the standby copies kept here.
func (m *monitor) standbys() []partitionView {
	behind := map[int32]map[string]int64{}
	m.standby.Lag(func(table string, p int32, n int64) {
		if behind[p] == nil {
			behind[p] = map[string]int64{}
		}
		behind[p][table] = n
	})
	var out []partitionView
	for _, p := range m.standby.Partitions() {
		out = append(out, partitionView{Partition: p, State: "standby", Next: -1, Committed: -1, Behind: behind[p]})
	}
	return out
}

// recent are the recent rebalances, newest first; m.mu is held.
func (m *monitor) recent() []rebalance {
	out := make([]rebalance, 0, len(m.rebalances))
	for _, r := range slices.Backward(m.rebalances) {
		c := *r
		c.Partitions = slices.Clone(r.Partitions)
		out = append(out, c)
	}
	return out
}

// readTables counts the keys of each table over the partitions processing
// here, and charts the busiest keys of each windowed one.
func (m *monitor) readTables(processing []int32) ([]tableView, []chartView) {
	tables, charts := []tableView{}, []chartView{}
	for _, t := range m.tables {
		tv := tableView{Name: t.name, Windowed: t.win != nil}
		if t.win == nil {
			for _, p := range processing {
				if err := t.scan(p, 0, func(string, float64, bool) { tv.Keys++ }); err != nil {
					tv.Error = fmt.Sprintf("partition %d: %v", p, err) // it moved away while read
				}
			}
			tables = append(tables, tv)
			continue
		}
		tv.Window = t.win.Size.String()
		if !t.win.Tumbling() {
			tv.Window += " every " + t.win.Every().String()
		}
		chart, keys, err := m.chart(t, processing)
		tv.Keys = keys
		if err != nil {
			tv.Error = err.Error()
		}
		tables = append(tables, tv)
		if chart != nil {
			charts = append(charts, *chart)
		}
	}
	return tables, charts
}

// chart reads the last chartWindows windows of t on the processing
// partitions and keeps the chartKeys keys with the largest sums. It
// returns no chart for a table whose values are not numbers.
func (m *monitor) chart(t monitorTable, processing []int32) (*chartView, int64, error) {
	now := t.win.Start(m.clock())
	starts := make([]int64, chartWindows)
	for i := range starts {
		starts[i] = now - int64(chartWindows-1-i)*t.win.Every().Milliseconds()
	}
	counts := map[string][]float64{}
	numeric := true
	var failed error
	for _, p := range processing {
		for i, start := range starts {
			err := t.scan(p, start, func(k string, n float64, ok bool) {
				numeric = numeric && ok
				if counts[k] == nil {
					counts[k] = make([]float64, len(starts))
				}
				counts[k][i] += n
			})
			if err != nil && failed == nil {
				failed = fmt.Errorf("partition %d: %w", p, err)
			}
		}
	}
	if !numeric {
		return nil, int64(len(counts)), failed
	}
	chart := &chartView{Table: t.name, Keys: []chartKey{}, Partitions: nonNil(processing)}
	for _, s := range starts {
		chart.Windows = append(chart.Windows, windowView{Start: time.UnixMilli(s).UTC(), End: time.UnixMilli(t.win.End(s)).UTC()})
	}
	sum := func(k string) (n float64) {
		for _, c := range counts[k] {
			n += c
		}
		return n
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(sum(b), sum(a)), cmp.Compare(a, b))
	})
	for _, k := range keys[:min(len(keys), chartKeys)] {
		chart.Keys = append(chart.Keys, chartKey{Key: k, Counts: counts[k]})
	}
	return chart, int64(len(counts)), failed
}

// nonNil is ps, or an empty list: JSON [] rather than null, so the page
// need not tell them apart.
func nonNil(ps []int32) []int32 {
	if ps == nil {
		return []int32{}
	}
	return ps
}
