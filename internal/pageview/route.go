package pageview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
// over HTTP (GET <owner>/report/?local=1&by_partition=1&partitions=...).
// Partitions whose owner is unknown, recovering or unreachable are listed
// as missing and the report is marked stale; partial numbers are never
// shown as complete.
//
// A peer's answer is not trusted: it is read up to MaxPeerAnswer bytes,
// only the partitions asked of that peer are kept, and an answer that is
// larger, undecodable, or names a partition twice counts for nothing, so
// every partition asked of that peer is missing. A peer of an earlier
// version (during a rolling upgrade) ignores by_partition and answers its
// counts summed over the partitions it read (a Partial). Such an answer is
// kept when it names only partitions that were asked, each once: the sum
// is then over asked partitions only. One that names a partition not asked
// cannot be split, so it counts for nothing.
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

// MaxPeerAnswer bounds the size of a peer's answer, in bytes: 100,000 to
// 200,000 page lines, depending on the length of the pages. A larger answer
// is refused and the peer's partitions are reported missing, rather than
// held in memory; a report of one page (?page=) stays far below it.
const MaxPeerAnswer = 8 << 20

// LocalPartial serves a peer's request for this worker's partitions, in the
// format of earlier versions: summed over the partitions.
func (rt *Router) LocalPartial(page string, partitions []int32, reserved bool) (*Partial, error) {
	return rt.Local.Local(page, partitions, reserved)
}

// LocalByPartition serves a peer's request for this worker's partitions,
// each partition's counts apart.
func (rt *Router) LocalByPartition(page string, partitions []int32, reserved bool) (*PeerAnswer, error) {
	parts, err := rt.Local.ByPartition(page, partitions, reserved)
	if err != nil {
		return nil, err
	}
	return &PeerAnswer{ByPartition: parts}, nil
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
			mu.Lock()
			total.Merge(part)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total, n, nil
}

// fetch asks owner for the partitions parts and returns what it answered
// for them; see Router for what is kept of an answer.
func (rt *Router) fetch(ctx context.Context, owner, page string, parts []int32, reserved bool) (*Partial, error) {
	q := url.Values{"local": {"1"}, "by_partition": {"1"}}
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
	if resp.ContentLength > MaxPeerAnswer {
		return nil, fmt.Errorf("%s answered %d bytes: %w", owner, resp.ContentLength, errAnswerTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPeerAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s: %w", owner, err)
	}
	if len(body) > MaxPeerAnswer {
		return nil, fmt.Errorf("%s answered more than %d bytes: %w", owner, MaxPeerAnswer, errAnswerTooLarge)
	}
	var ans answer
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("decode answer of %s: %w", owner, err)
	}
	part, ignored, err := ans.keep(parts)
	if err != nil {
		return nil, fmt.Errorf("answer of %s: %w", owner, err)
	}
	if len(ignored) > 0 {
		rt.Log.Warn("report: ignored partitions a peer was not asked for", "owner", owner, "asked", parts, "ignored", ignored)
	}
	return part, nil
}

var errAnswerTooLarge = fmt.Errorf("answer larger than the limit of %d bytes", MaxPeerAnswer)

// answer is a peer's answer as it arrives: by partition, or from a peer of
// an earlier version, summed (Partitions and Pages).
type answer struct {
	ByPartition []PartitionCounts `json:"by_partition"`
	Partitions  []int32           `json:"partitions"`
	Pages       map[string]Counts `json:"pages"`
}

// keep returns the counts of the partitions in asked that a answered, and
// the partitions it answered that were not asked (left out). It fails when
// the answer is malformed: then none of it can be trusted.
func (a *answer) keep(asked []int32) (*Partial, []int32, error) {
	seen := map[int32]bool{}
	once := func(p int32) error {
		if seen[p] {
			return fmt.Errorf("partition %d answered twice", p)
		}
		seen[p] = true
		return nil
	}
	if a.ByPartition == nil {
		// A peer of an earlier version: its pages are one sum, so it is
		// kept whole or not at all.
		for _, p := range a.Partitions {
			if err := once(p); err != nil {
				return nil, nil, err
			}
			if !slices.Contains(asked, p) {
				return nil, nil, fmt.Errorf("partition %d answered, not asked, and summed with the others", p)
			}
		}
		if len(a.Partitions) == 0 && len(a.Pages) > 0 {
			return nil, nil, errors.New("pages without partitions")
		}
		return &Partial{Partitions: slices.Clone(a.Partitions), Pages: a.Pages}, nil, nil
	}
	out := &Partial{Partitions: []int32{}, Pages: map[string]Counts{}}
	var ignored []int32
	for _, pc := range a.ByPartition {
		if err := once(pc.Partition); err != nil {
			return nil, nil, err
		}
		if !slices.Contains(asked, pc.Partition) {
			ignored = append(ignored, pc.Partition)
			continue
		}
		out.Merge(&Partial{Partitions: []int32{pc.Partition}, Pages: pc.Pages})
	}
	return out, ignored, nil
}
