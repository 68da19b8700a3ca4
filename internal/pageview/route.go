package pageview

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"

	"github.com/gofaust/pageviews/internal/app"
)

// Router answers /report/ for the whole cluster through the runtime's
// cluster-wide reads (app.Reads): the partitions this worker owns from its
// own tables, the others from their owners (GET <owner>/report/?local=1&
// by_partition=1&partitions=...). Partitions whose owner is unknown,
// recovering or unreachable, or whose answer cannot be trusted, are listed
// as missing and the report is marked stale; partial numbers are never
// shown as complete.
type Router struct {
	Local *Reporter
	Reads *app.Reads[PartitionPages]
}

// PartitionPages are one partition's counts, as a peer answers them.
type PartitionPages struct {
	Pages map[string]Counts `json:"pages"`
}

// MaxPeerAnswer bounds the size of a peer's answer, in bytes: 100,000 to
// 200,000 page lines, depending on the length of the pages. A larger answer
// is refused and the peer's partitions are reported missing, rather than
// held in memory; a report of one page (?page=) stays far below it.
const MaxPeerAnswer = app.DefaultMaxAnswer

// NewRouter returns the router of local's partitions through s.
func NewRouter(s *app.Services, local *Reporter) *Router {
	rt := &Router{Local: local}
	rt.Reads = app.NewReads(s, "/report/", rt.localPages)
	rt.Reads.MaxAnswer = MaxPeerAnswer
	rt.Reads.Summed = summed
	return rt
}

// localPages reads this worker's partitions among want for a peer or for
// itself: ?page= narrows to one page, ?reserved=1 includes the synthetic
// ones.
func (rt *Router) localPages(q url.Values, want []int32) (map[int32]PartitionPages, error) {
	parts, err := rt.Local.ByPartition(q.Get("page"), want, q.Get("reserved") == "1")
	if err != nil {
		return nil, err
	}
	out := make(map[int32]PartitionPages, len(parts))
	for _, pc := range parts {
		out[pc.Partition] = PartitionPages{Pages: pc.Pages}
	}
	return out, nil
}

// summed reads the answer of a peer of an earlier version: the sum of the
// partitions it read.
func summed(body []byte) ([]int32, PartitionPages, error) {
	var p Partial
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, PartitionPages{}, err
	}
	if len(p.Partitions) == 0 && len(p.Pages) > 0 {
		return nil, PartitionPages{}, errors.New("pages without partitions")
	}
	return p.Partitions, PartitionPages{Pages: p.Pages}, nil
}

// LocalPartial serves a request for this worker's partitions without
// by_partition (the answer of earlier versions): summed over the
// partitions.
func (rt *Router) LocalPartial(page string, partitions []int32, reserved bool) (*Partial, error) {
	return rt.Local.Local(page, partitions, reserved)
}

// ServePeer answers a peer's request for partitions (by_partition=1).
func (rt *Router) ServePeer(w http.ResponseWriter, r *http.Request) { rt.Reads.ServePeer(w, r) }

// Report builds the cluster-wide report for every page, or only for page.
func (rt *Router) Report(ctx context.Context, page string) (*Report, error) {
	total, missing, err := rt.gather(ctx, page, false)
	if err != nil {
		return nil, err
	}
	rep := total.Report()
	rep.Window = rt.Local.Views.Window().Size
	rep.MissingPartitions = missing
	rep.Stale = len(missing) > 0
	return rep, nil
}

// Count returns the cluster-wide counts of one page, reserved pages
// included (the livecheck reads its synthetic page this way), and whether
// every partition answered.
func (rt *Router) Count(ctx context.Context, page string) (Counts, bool, error) {
	total, missing, err := rt.gather(ctx, page, true)
	if err != nil {
		return Counts{}, false, err
	}
	return total.Pages[page], len(missing) == 0, nil
}

// gather reads every partition and sums what was read.
func (rt *Router) gather(ctx context.Context, page string, reserved bool) (*Partial, []int32, error) {
	q := url.Values{}
	if page != "" {
		q.Set("page", page)
	}
	if reserved {
		q.Set("reserved", "1")
	}
	vals, missing, err := rt.Reads.All(ctx, q)
	if err != nil {
		return nil, nil, err
	}
	total := &Partial{Partitions: []int32{}, Pages: map[string]Counts{}}
	for _, p := range slices.Sorted(maps.Keys(vals)) {
		total.Merge(&Partial{Partitions: []int32{p}, Pages: vals[p].Pages})
	}
	return total, missing, nil
}
