package pageview

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Router answers /report/ for the whole cluster: it reads the partitions
// this worker owns from its own tables and asks the owners of the others
// over HTTP (GET <owner>/report/?local=1&partitions=...). Partitions whose
// owner is unknown, recovering or unreachable are listed as missing and
// the report is marked stale; partial numbers are never shown as complete.
type Router struct {
	Local *Reporter
	// Self is this worker's advertised URL.
	Self string
	// Owners maps each assigned partition to its owner's URL.
	Owners func() (map[int32]string, error)
	// Partitions is the number of partitions of the source topic.
	Partitions func() (int32, error)
	Client     *http.Client
	Log        *slog.Logger
}

// LocalPartial serves a peer's request for this worker's partitions.
func (rt *Router) LocalPartial(page string, partitions []int32, reserved bool) (*Partial, error) {
	return rt.Local.Local(page, partitions, reserved)
}

// Report builds the cluster-wide report for every page, or only for page.
func (rt *Router) Report(ctx context.Context, page string) (*Report, error) {
	total, n, err := rt.gather(ctx, page, false)
	if err != nil {
		return nil, err
	}
	rep := total.Report()
	for p := range n {
		if !slices.Contains(total.Partitions, p) {
			rep.MissingPartitions = append(rep.MissingPartitions, p)
		}
	}
	rep.Stale = len(rep.MissingPartitions) > 0
	return rep, nil
}

// Count returns the cluster-wide counts of one page, reserved pages
// included (the livecheck reads its synthetic page this way), and whether
// every partition answered.
func (rt *Router) Count(ctx context.Context, page string) (Counts, bool, error) {
	total, n, err := rt.gather(ctx, page, true)
	if err != nil {
		return Counts{}, false, err
	}
	return total.Pages[page], len(total.Partitions) == int(n), nil
}

// gather asks every partition's owner for its counts and merges them.
func (rt *Router) gather(ctx context.Context, page string, reserved bool) (*Partial, int32, error) {
	n, err := rt.Partitions()
	if err != nil {
		return nil, 0, fmt.Errorf("partitions of the source topic: %w", err)
	}
	owners, err := rt.Owners()
	if err != nil {
		rt.Log.Warn("report: group members unknown; answering from this worker's partitions", "error", err)
		owners = nil
	}
	byOwner := map[string][]int32{}
	for p := range n {
		u, ok := owners[p]
		if !ok {
			u = rt.Self // unknown owner: this worker may still hold it
		}
		byOwner[u] = append(byOwner[u], p)
	}

	total := &Partial{Pages: map[string]Counts{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for owner, parts := range byOwner {
		wg.Go(func() {
			var part *Partial
			var err error
			if owner == rt.Self {
				part, err = rt.Local.Local(page, parts, reserved)
			} else {
				part, err = rt.fetch(ctx, owner, page, parts, reserved)
			}
			if err != nil {
				rt.Log.Warn("report: partitions unavailable", "owner", owner, "partitions", parts, "error", err)
				return
			}
			// Keep only what was asked of that owner: a stale directory
			// must not make two owners count one partition twice.
			kept := part.Partitions[:0]
			for _, p := range part.Partitions {
				if slices.Contains(parts, p) {
					kept = append(kept, p)
				}
			}
			part.Partitions = kept
			mu.Lock()
			total.Merge(part)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total, n, nil
}

func (rt *Router) fetch(ctx context.Context, owner, page string, parts []int32, reserved bool) (*Partial, error) {
	q := url.Values{"local": {"1"}}
	if reserved {
		q.Set("reserved", "1")
	}
	if page != "" {
		q.Set("page", page)
	}
	ps := make([]string, len(parts))
	for i, p := range parts {
		ps[i] = strconv.Itoa(int(p))
	}
	q.Set("partitions", strings.Join(ps, ","))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, owner+"/report/?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := rt.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", owner, resp.Status)
	}
	var part Partial
	if err := json.NewDecoder(resp.Body).Decode(&part); err != nil {
		return nil, fmt.Errorf("decode answer of %s: %w", owner, err)
	}
	return &part, nil
}
