package metrics

import (
	"net/http"
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
)

// StreamHooks turn the stream runtime's observations into metrics. It
// implements stream.Hooks.
type StreamHooks struct {
	C     *Client
	Topic string
}

func (h *StreamHooks) tp(p int32) []string {
	return []string{Tag("topic", h.Topic), Partition(p)}
}

// AllProcessing implements stream.Hooks.
func (h *StreamHooks) AllProcessing(stalled time.Duration, _ int) {
	h.C.Timing(RebalanceEndLatency, stalled)
}

// Group sends one sample of the worker's place in its group: the
// generation it is in, how many generations it joined since the previous
// sample's (every member joins each one), and whether it stopped
// processing anything it holds since then.
func (h *StreamHooks) Group(generation, previous int32, rebalancing bool) {
	joined := int64(0)
	if generation > previous {
		joined = int64(generation - previous)
		if previous == 0 {
			joined = 1 // the first join, in whatever generation
		}
	}
	h.C.Count(Rebalances, joined)
	h.C.Gauge(Generation, float64(generation))
	state := 0.0
	if rebalancing {
		state = 1
	}
	h.C.Gauge(RebalanceState, state)
}

// Resumed implements stream.Hooks.
func (h *StreamHooks) Resumed(p int32, recovery, unprocessed time.Duration) {
	h.C.Count(AssignmentsComplete, 1, Partition(p))
	h.C.Timing(AssignmentLatency, recovery, Partition(p))
	if unprocessed >= 0 {
		h.C.Gauge(UnprocessedTime, unprocessed.Seconds(), Partition(p))
	}
}

// AssignFailed implements stream.Hooks.
func (h *StreamHooks) AssignFailed(p int32) { h.C.Count(AssignmentsError, 1, Partition(p)) }

// Released implements stream.Hooks.
func (h *StreamHooks) Released(p int32, took time.Duration) {
	h.C.Timing(RebalanceReturnLatency, took, Partition(p))
}

// RecoveryProgress implements stream.Hooks.
func (h *StreamHooks) RecoveryProgress(tbl string, p int32, remaining int64, eta time.Duration, replayed int64) {
	tags := []string{Tag("table", tbl), Partition(p)}
	h.C.Gauge(RecoveryRemaining, float64(remaining), tags...)
	if eta >= 0 {
		h.C.Gauge(RecoveryETA, eta.Seconds(), tags...)
	}
	h.C.Count(RecoveryRecords, replayed, tags...)
}

// Replayed implements stream.Hooks.
func (h *StreamHooks) Replayed(p int32, records int64, copy string) {
	h.C.Count(ReplayedRecords, records, Partition(p), Tag("copy", copy))
}

// Processed implements stream.Hooks.
func (h *StreamHooks) Processed(p int32, n, dead int64) {
	tags := h.tp(p)
	h.C.Count(MessagesReceived, n, tags...)
	h.C.Count(Events, n-dead, tags...)
	if dead > 0 {
		h.C.Count(DeadLetters, dead, tags...)
	}
}

// EventRuntime implements stream.Hooks.
func (h *StreamHooks) EventRuntime(p int32, d time.Duration) { h.C.Timing(EventRuntime, d, h.tp(p)...) }

// EventLatency implements stream.Hooks.
func (h *StreamHooks) EventLatency(p int32, d time.Duration) { h.C.Timing(EventLatency, d, h.tp(p)...) }

// Position sends one sample of partition p: the last offset processed,
// the next committed, the records processed and not committed, the
// broker's high watermark (negative: unknown) and the age of the last
// record processed while the partition lags.
func (h *StreamHooks) Position(p int32, read, committed, active, hwm int64, lag time.Duration) {
	tags := h.tp(p)
	if read >= 0 {
		h.C.Gauge(ReadOffset, float64(read), tags...)
	}
	if committed >= 0 {
		h.C.Gauge(CommittedOffset, float64(committed), tags...)
	}
	h.C.Gauge(MessagesActive, float64(active), tags...)
	if hwm >= 0 {
		h.C.Gauge(EndOffset, float64(hwm), tags...)
		h.C.Gauge(ConsumerLag, float64(max(hwm-(read+1), 0)), tags...)
		h.C.Gauge(ConsumerLagSecs, lag.Seconds(), tags...)
	}
}

// Committed implements stream.Hooks.
func (h *StreamHooks) Committed(p int32, took time.Duration) {
	h.C.Count(Commits, 1, h.tp(p)...)
	h.C.Timing(CommitLatency, took, h.tp(p)...)
}

// FlushFailed implements stream.Hooks.
func (h *StreamHooks) FlushFailed(p int32) { h.C.Count(Stalls, 1, h.tp(p)...) }

// Zero sends 0 for the error and rare-event counters of the partitions
// held, so dashboards show 0 rather than no data while nothing goes wrong
// (counts add up, so a 0 never hides a real event).
func (h *StreamHooks) Zero(partitions []int32, topics []string, windowed ...string) {
	for _, p := range partitions {
		h.C.Count(AssignmentsError, 0, Partition(p))
		h.C.Count(Stalls, 0, h.tp(p)...)
		// A partition that never commits still has its series, so that
		// "no commit" reads as a flat count rather than no data.
		h.C.Count(Commits, 0, h.tp(p)...)
		h.C.Count(DeadLetters, 0, h.tp(p)...)
		for _, w := range windowed {
			h.C.Count(LateEvents, 0, Tag("table", w), Partition(p))
			h.C.Count(WindowsClosed, 0, Tag("table", w), Partition(p))
		}
	}
	for _, t := range topics {
		h.C.Count(SendErrors, 0, Tag("topic", t))
	}
	h.C.Count(LivecheckFailure, 0)
	h.C.Count(LivecheckSuccess, 0)
}

// Closed counts a window of table tbl closed on partition p, lag after its
// end plus grace.
func (h *StreamHooks) Closed(tbl string, p int32, lag time.Duration) {
	h.C.Count(WindowsClosed, 1, Tag("table", tbl), Partition(p))
	h.C.Timing(WindowCloseLag, lag, Tag("table", tbl))
}

// Late counts an event that came after one of its windows had closed.
func (h *StreamHooks) Late(tbl string, p int32) {
	h.C.Count(LateEvents, 1, Tag("table", tbl), Partition(p))
}

// OnAck observes n produced records of topic (kafka.Producer.OnAck):
// acknowledged, latency their mean, or failed.
func (c *Client) OnAck(topic string, n int, latency time.Duration, err error) {
	t := Tag("topic", topic)
	if err != nil {
		c.Count(SendErrors, int64(n), t)
		return
	}
	c.Count(MessagesSent, int64(n), t)
	c.Timing(SendLatency, latency, t)
}

// Sampler emits the gauges and counters that are read rather than observed:
// table and store figures, partitions held, and Go runtime figures. Call
// Sample on a timer.
type Sampler struct {
	C          *Client
	Tables     map[string]interface{ Stats() table.Stats }
	Store      interface{ Stats() store.Stats }
	Partitions func() int
	Standby    func() int
	// StandbyLag calls its argument with each standby copy's distance to
	// its changelog's end (stream.Standby.Lag).
	StandbyLag func(func(table string, p int32, behind int64))
	// Registry, if set, is the schema registry the codecs use.
	Registry *schema.Registry
	// Members, if set, counts the group's members as the worker last saw
	// them (stream.Directory.Members); ok is false when it could not tell.
	Members func() (n int, ok bool)

	last    map[string]table.Stats
	lastDB  store.Stats
	lastReg schema.Stats
	samples []metrics.Sample
}

// Sample emits one round.
func (s *Sampler) Sample() {
	if s.last == nil {
		s.last = map[string]table.Stats{}
		s.samples = []metrics.Sample{
			{Name: "/sched/goroutines:goroutines"},
			{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/sched/pauses/total/gc:seconds"},
		}
	}
	for name, t := range s.Tables {
		st, prev := t.Stats(), s.last[name]
		tag := Tag("table", name)
		s.C.Count(KeysRetrieved, st.Retrieved-prev.Retrieved, tag)
		s.C.Count(LookupsSkipped, st.Skipped-prev.Skipped, tag)
		s.C.Count(KeysUpdated, st.Updated-prev.Updated, tag)
		s.C.Count(KeysDeleted, st.Deleted-prev.Deleted, tag)
		if d := st.Expired - prev.Expired; d > 0 || prev == (table.Stats{}) {
			s.C.Count(WindowExpiries, d, tag)
		}
		s.C.Gauge(TableKeys, float64(st.Cached), tag)
		s.last[name] = st
	}
	if s.Store != nil {
		s.sampleStore()
	}
	if s.Registry != nil {
		s.sampleRegistry()
	}
	if s.Partitions != nil {
		s.C.Gauge(PartitionsAssigned, float64(s.Partitions()))
	}
	if s.Members != nil {
		if n, ok := s.Members(); ok {
			s.C.Gauge(GroupMembers, float64(n))
		}
	}
	if s.Standby != nil {
		s.C.Gauge(StandbyPartitions, float64(s.Standby()))
	}
	if s.StandbyLag != nil {
		s.StandbyLag(func(tbl string, p int32, behind int64) {
			s.C.Gauge(StandbyLag, float64(behind), Tag("table", tbl), Partition(p))
		})
	}
	metrics.Read(s.samples)
	s.C.Gauge(Goroutines, float64(s.samples[0].Value.Uint64()))
	s.C.Gauge(HeapBytes, float64(s.samples[1].Value.Uint64()))
	if h := s.samples[2].Value; h.Kind() == metrics.KindFloat64Histogram {
		// The running total, not the pause since the previous sample: a
		// backend keeps one value per scrape or flush, so only a total
		// lets it derive the time spent in GC (rate() in Prometheus,
		// per_second() in Datadog). DogStatsD counts are integers, too
		// coarse for seconds, hence a gauge that only grows (the runtime's
		// histogram counts every pause since the start).
		s.C.Gauge(GCPause, histTotal(h.Float64Histogram()))
	}
}

// sampleStore sends the store's size and memory, and counts its
// compactions, write stalls and background errors since the previous
// sample (0 when there were none, so that their panels and alerts read 0
// rather than no data).
func (s *Sampler) sampleStore() {
	st := s.Store.Stats()
	s.C.Gauge(StoreSize, float64(st.DiskBytes))
	s.C.Gauge(MemTableBytes, float64(st.MemTableBytes))
	s.C.Gauge(BlockCacheSize, float64(st.BlockCacheBytes))
	s.C.Count(Compactions, st.Compactions-s.lastDB.Compactions)
	s.C.Count(WriteStalls, st.WriteStalls-s.lastDB.WriteStalls)
	s.C.Count(StoreBgErrors, st.BackgroundErrors-s.lastDB.BackgroundErrors)
	s.lastDB = st
}

// sampleRegistry counts the registry's lookups, errors and cache hits,
// and the records read per schema id, since the previous sample.
func (s *Sampler) sampleRegistry() {
	st, prev := s.Registry.Stats(), s.lastReg
	s.C.Count(RegistryLookups, st.Lookups-prev.Lookups)
	s.C.Count(RegistryErrors, st.Failures-prev.Failures)
	s.C.Count(SchemaCacheHits, st.Hits-prev.Hits)
	for id, n := range st.Records {
		if d := n - prev.Records[id]; d > 0 || prev.Records == nil {
			s.C.Count(SchemaRecords, d, Tag("schema_id", strconv.Itoa(id)))
		}
	}
	s.lastReg = st
}

// histTotal approximates the sum of a runtime histogram from bucket bounds.
func histTotal(h *metrics.Float64Histogram) float64 {
	var sum float64
	for i, n := range h.Counts {
		lo, hi := h.Buckets[i], h.Buckets[i+1]
		if lo < -1e300 {
			lo = hi
		}
		if hi > 1e300 {
			hi = lo
		}
		sum += float64(n) * (lo + hi) / 2
	}
	return sum
}

// HTTP wraps a handler to count requests by route and status, and time them.
// route maps a request to a bounded set of labels.
func (c *Client) HTTP(next http.Handler, route func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		path := Tag("path", route(r))
		c.Count(HTTPRequests, 1, path, Tag("status_code", strconv.Itoa(sw.status)))
		c.Timing(HTTPLatency, time.Since(began), path)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
