package app

// Reads across the cluster: a table partition is read where it lives.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
)

// defaultReadTimeout bounds a request to a peer.
const defaultReadTimeout = 5 * time.Second

// DefaultMaxAnswer bounds a peer's answer, in bytes, when Reads.MaxAnswer
// is not set.
const DefaultMaxAnswer = 8 << 20

// Reads reads a value P of every partition of the source topic: the
// partitions this worker holds from its own tables (Local), the others from
// their owners over HTTP (GET <owner><Path>?local=1&by_partition=1&
// partitions=..., served by ServePeer). Sum merges them (Merge); the
// partitions nobody answered for come back apart, so that a result is
// never shown as complete when it is not.
//
// A peer's answer is not trusted: it is read up to MaxAnswer bytes, only
// the partitions asked of that peer are kept, and an answer that is
// larger, undecodable or names a partition twice counts for nothing: every
// partition asked of that peer is then missing.
//
// On the wire each partition is {"partition": p, ...P's fields}, so P must
// encode as a JSON object. Without by_partition=1 (as earlier versions
// ask) the answer is the merge of the partitions read: {"partitions":
// [...], ...P's fields}; an answer of that shape from a peer of an earlier
// version is kept whole, under the first of its partitions.
type Reads[P any] struct {
	// Path is the app's page that answers peers (ServePeer).
	Path string
	// Local reads partition p of this worker's tables; q carries the
	// page's own parameters. An error wrapping table.ErrNotAssigned (the
	// partition was revoked while read) leaves the partition out.
	Local func(q url.Values, p int32) (P, error)
	// Merge adds from to into and returns the sum.
	Merge func(into, from P) P
	// Owned lists the partitions this worker holds and has recovered.
	Owned      func() []int32
	Self       string
	Owners     func() (map[int32]string, error)
	Partitions func() (int32, error)
	Client     *http.Client
	Log        *slog.Logger
	MaxAnswer  int64
}

// NewReads returns the reads of the app's page path through s. The
// runtime answers peers' requests on that page (ServePeer): the page's
// handler sees only its own.
func NewReads[P any](s *Services, path string, local func(q url.Values, p int32) (P, error), merge func(into, from P) P) *Reads[P] {
	r := &Reads[P]{Path: path, Local: local, Merge: merge, Owned: s.Owned, Self: s.Self, Owners: s.Owners, Partitions: s.Partitions,
		Client: &http.Client{Timeout: defaultReadTimeout}, Log: s.Log.With("component", "reads")}
	if s.peers == nil {
		s.peers = map[string]http.HandlerFunc{}
	}
	s.peers[path] = r.ServePeer
	return r
}

// Sum is All merged in partition order: the sum of every partition that
// was read, and the partitions that were not.
func (r *Reads[P]) Sum(ctx context.Context, q url.Values) (P, []int32, error) {
	var total P
	vals, missing, err := r.All(ctx, q)
	if err != nil {
		return total, nil, err
	}
	return r.merged(vals), missing, nil
}

func (r *Reads[P]) merged(vals map[int32]P) P {
	var total P
	for _, p := range slices.Sorted(maps.Keys(vals)) {
		total = r.Merge(total, vals[p])
	}
	return total
}

// All returns the value of each partition that was read, and the
// partitions that were not (owner unknown, recovering or unreachable, or
// an answer that could not be trusted), in order.
func (r *Reads[P]) All(ctx context.Context, q url.Values) (map[int32]P, []int32, error) {
	n, err := r.Partitions()
	if err != nil {
		return nil, nil, fmt.Errorf("partitions of the source topic: %w", err)
	}
	owners, err := r.Owners()
	if err != nil {
		r.Log.Warn("group members unknown; answering from this worker's partitions", "error", err)
		owners = nil
	}
	byOwner := map[string][]int32{}
	for p := range n {
		u, ok := owners[p]
		if !ok {
			u = r.Self // unknown owner: this worker may still hold it
		}
		byOwner[u] = append(byOwner[u], p)
	}
	got := map[int32]P{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for owner, parts := range byOwner {
		wg.Go(func() {
			var vals map[int32]P
			var err error
			if owner == r.Self {
				vals, err = r.local(q, parts)
			} else {
				vals, err = r.fetch(ctx, owner, q, parts)
			}
			if err != nil {
				r.Log.Warn("partitions unavailable", "owner", owner, "partitions", parts, "error", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for p, v := range vals {
				if slices.Contains(parts, p) {
					got[p] = v
				}
			}
		})
	}
	wg.Wait()
	var missing []int32
	for p := range n {
		if _, ok := got[p]; !ok {
			missing = append(missing, p)
		}
	}
	return got, missing, nil
}

// local reads the partitions among want (all when nil) this worker holds.
func (r *Reads[P]) local(q url.Values, want []int32) (map[int32]P, error) {
	out := map[int32]P{}
	for _, p := range r.Owned() {
		if want != nil && !slices.Contains(want, p) {
			continue
		}
		v, err := r.Local(q, p)
		switch {
		case errors.Is(err, table.ErrNotAssigned):
		case err != nil:
			return nil, fmt.Errorf("read partition %d: %w", p, err)
		default:
			out[p] = v
		}
	}
	return out, nil
}

// IsPeer reports whether req asks for this worker's own partitions
// (?local=1), which ServePeer answers.
func IsPeer(req *http.Request) bool { return req.URL.Query().Get("local") == "1" }

// ServePeer answers a request for this worker's own partitions (IsPeer)
// among those asked (?partitions=0,3; all it holds without): each apart
// with by_partition=1, as peers ask, merged without.
func (r *Reads[P]) ServePeer(w http.ResponseWriter, req *http.Request) {
	var want []int32
	if raw := req.URL.Query().Get("partitions"); raw != "" {
		for _, f := range strings.Split(raw, ",") {
			p, err := strconv.ParseInt(f, 10, 32)
			if err != nil || p < 0 {
				web.Error(w, http.StatusBadRequest, "partitions must be a comma-separated list of partition numbers")
				return
			}
			want = append(want, int32(p))
		}
	}
	vals, err := r.local(req.URL.Query(), want)
	if err != nil {
		r.Log.Error("local read failed", "error", err)
		web.Error(w, http.StatusInternalServerError, "read failed: "+err.Error())
		return
	}
	var ans any
	if req.URL.Query().Get("by_partition") == "1" {
		byPart := peerAnswer[P]{ByPartition: []partValue[P]{}}
		for _, p := range slices.Sorted(maps.Keys(vals)) {
			byPart.ByPartition = append(byPart.ByPartition, partValue[P]{Partition: p, Value: vals[p]})
		}
		ans = byPart
	} else {
		parts := append([]int32{}, slices.Sorted(maps.Keys(vals))...) // [] rather than null
		ans = summedValue[P]{Partitions: parts, Value: r.merged(vals)}
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(ans); err != nil {
		r.Log.Warn("answer a peer", "error", err)
	}
}

// fetch asks owner for the partitions parts.
func (r *Reads[P]) fetch(ctx context.Context, owner string, q url.Values, parts []int32) (map[int32]P, error) {
	ask := url.Values{}
	for k, v := range q {
		ask[k] = v
	}
	ask.Set("local", "1")
	ask.Set("by_partition", "1")
	ps := make([]string, len(parts))
	for i, p := range parts {
		ps[i] = strconv.Itoa(int(p))
	}
	ask.Set("partitions", strings.Join(ps, ","))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, owner+r.Path+"?"+ask.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", owner, resp.Status)
	}
	limit := r.MaxAnswer
	if limit <= 0 {
		limit = DefaultMaxAnswer
	}
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%s answered %d bytes: %w", owner, resp.ContentLength, errAnswerTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s: %w", owner, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("%s answered more than %d bytes: %w", owner, limit, errAnswerTooLarge)
	}
	var ans peerAnswer[P]
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("decode answer of %s: %w", owner, err)
	}
	if ans.ByPartition == nil {
		return r.summed(owner, body, parts)
	}
	out := map[int32]P{}
	var ignored []int32
	for _, pv := range ans.ByPartition {
		if _, dup := out[pv.Partition]; dup || slices.Contains(ignored, pv.Partition) {
			return nil, fmt.Errorf("answer of %s: partition %d answered twice", owner, pv.Partition)
		}
		if !slices.Contains(parts, pv.Partition) {
			ignored = append(ignored, pv.Partition)
			continue
		}
		out[pv.Partition] = pv.Value
	}
	if len(ignored) > 0 {
		r.Log.Warn("ignored partitions a peer was not asked for", "owner", owner, "asked", parts, "ignored", ignored)
	}
	return out, nil
}

// summed reads the answer of a peer of an earlier version, the merge of
// the partitions it read: every partition in it must have been asked, once.
func (r *Reads[P]) summed(owner string, body []byte, asked []int32) (map[int32]P, error) {
	var sum summedValue[P]
	if err := json.Unmarshal(body, &sum); err != nil {
		return nil, fmt.Errorf("answer of %s: %w", owner, err)
	}
	out := map[int32]P{}
	for i, p := range sum.Partitions {
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("answer of %s: partition %d answered twice", owner, p)
		}
		if !slices.Contains(asked, p) {
			return nil, fmt.Errorf("answer of %s: partition %d answered, not asked, and summed with the others", owner, p)
		}
		var v P
		if i == 0 {
			v = sum.Value
		}
		out[p] = v
	}
	return out, nil
}

var errAnswerTooLarge = errors.New("answer larger than the limit")

// peerAnswer is a peer's answer: each partition's value apart.
type peerAnswer[P any] struct {
	ByPartition []partValue[P] `json:"by_partition"`
}

// partValue is one partition's value: {"partition": p, ...P's fields}.
type partValue[P any] struct {
	Partition int32
	Value     P
}

func (v partValue[P]) MarshalJSON() ([]byte, error) {
	return withField(`"partition":`+strconv.Itoa(int(v.Partition)), v.Value)
}

// withField encodes value, a JSON object, with field (`"name":value`)
// first.
func withField(field string, value any) ([]byte, error) {
	b, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, fmt.Errorf("a partition's value must encode as a JSON object, not %.20s", b)
	}
	if string(b) == "{}" {
		return []byte("{" + field + "}"), nil
	}
	return append([]byte("{"+field+","), b[1:]...), nil
}

func (v *partValue[P]) UnmarshalJSON(b []byte) error {
	var p struct {
		Partition *int32 `json:"partition"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if p.Partition == nil || *p.Partition < 0 {
		return errors.New("a partition's answer without its partition number")
	}
	v.Partition = *p.Partition
	return json.Unmarshal(b, &v.Value)
}

// summedValue is the merge of some partitions: {"partitions": [...],
// ...P's fields}.
type summedValue[P any] struct {
	Partitions []int32
	Value      P
}

func (v summedValue[P]) MarshalJSON() ([]byte, error) {
	parts, err := json.Marshal(v.Partitions)
	if err != nil {
		return nil, err
	}
	return withField(`"partitions":`+string(parts), v.Value)
}

func (v *summedValue[P]) UnmarshalJSON(b []byte) error {
	var p struct {
		Partitions []int32 `json:"partitions"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if p.Partitions == nil {
		return errors.New("an answer without its partitions")
	}
	v.Partitions = p.Partitions
	return json.Unmarshal(b, &v.Value)
}
