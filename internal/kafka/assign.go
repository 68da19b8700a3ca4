package kafka

import (
	"cmp"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/IBM/sarama"
)

// StandbyStrategyName is the group protocol of the standby-aware strategy.
const StandbyStrategyName = "sticky-standby"

// Standbys is the worker's side of the standby-aware strategy: what a member
// reports of its standby copies when it joins, and where the leader tells it
// to keep copies after each assignment.
type Standbys interface {
	// Behind returns, for each partition this member keeps a live standby
	// copy of, how many changelog records the copy is behind (all tables).
	Behind() map[int32]int64
	// Stored returns the same for the partitions whose state this member
	// holds in its store without running a copy (it owned them before a
	// restart, say): the group gives them back to it before others.
	Stored() map[int32]int64
	// Place gives the partitions this member should keep copies of, and
	// those it was assigned: a copy of one of those may run on until the
	// partition's recovery takes its place.
	Place(standby, assigned []int32)
}

// NewStandbyStrategy returns a sticky balance strategy that knows about
// standby copies (Kafka Streams' high-availability assignor, without its
// warm-up moves):
//   - a member keeps what it owns, up to its share: balance is kept within
//     one partition per member;
//   - a partition with no owner (its owner left) goes to the member whose
//     standby copy is the least behind, among those with room;
//   - replicas standby copies of each partition go to members other than its
//     owner, those that hold a copy already first, spread evenly;
//   - partition p of every subscribed topic goes to the same member, so the
//     tables stay co-partitioned with the source.
//
// Members report their copies and what they own in their subscription user
// data. With cooperative, a partition that moves between two live members
// is withheld from its new owner until the old one has revoked it (KIP-429);
// the old owner's rejoin then hands it over. standbys may be nil.
func NewStandbyStrategy(cooperative bool, replicas int, standbys Standbys) sarama.BalanceStrategy {
	return &standbyStrategy{cooperative: cooperative, replicas: replicas, standbys: standbys}
}

type standbyStrategy struct {
	cooperative bool
	replicas    int
	standbys    Standbys

	mu         sync.Mutex
	owned      []int32            // partitions this member was last assigned
	generation int32              // of that assignment
	placed     map[string][]int32 // the leader's last plan of standby copies, by member
}

// memberData is a member's subscription user data.
type memberData struct {
	Generation int32           `json:"generation"`
	Owned      []int32         `json:"owned,omitempty"`
	Behind     map[int32]int64 `json:"behind,omitempty"`
	Stored     map[int32]int64 `json:"stored,omitempty"`
}

// assignmentData is the leader's user data in a member's assignment.
type assignmentData struct {
	Standby []int32 `json:"standby,omitempty"`
}

func (s *standbyStrategy) Name() string { return StandbyStrategyName }

func (s *standbyStrategy) SupportedProtocols() []sarama.RebalanceProtocol {
	if s.cooperative {
		return []sarama.RebalanceProtocol{sarama.RebalanceProtocolCooperative, sarama.RebalanceProtocolEager}
	}
	return []sarama.RebalanceProtocol{sarama.RebalanceProtocolEager}
}

func (s *standbyStrategy) SubscriptionUserData([]string) ([]byte, error) {
	s.mu.Lock()
	d := memberData{Generation: s.generation, Owned: s.owned}
	s.mu.Unlock()
	if s.standbys != nil {
		d.Behind, d.Stored = s.standbys.Behind(), s.standbys.Stored()
	}
	return json.Marshal(d)
}

func (s *standbyStrategy) OnAssignment(a *sarama.ConsumerGroupMemberAssignment, generation int32) {
	var owned []int32
	var d assignmentData
	if a != nil {
		owned = partitionNumbers(a.Topics)
		_ = json.Unmarshal(a.UserData, &d) // none from a leader of another version: no copies
	}
	s.mu.Lock()
	s.owned, s.generation = owned, generation
	s.mu.Unlock()
	if s.standbys != nil {
		s.standbys.Place(d.Standby, owned)
	}
}

func (s *standbyStrategy) AssignmentData(memberID string, _ map[string][]int32, _ int32) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(assignmentData{Standby: s.placed[memberID]})
}

// Plan assigns the partitions (see NewStandbyStrategy).
func (s *standbyStrategy) Plan(members map[string]sarama.ConsumerGroupMemberMetadata, topics map[string][]int32) (sarama.BalanceStrategyPlan, error) {
	g := newGroupState(members, topics)
	g.keepOwned()
	g.assignFree()
	placed := g.placeStandbys(s.replicas)
	s.mu.Lock()
	s.placed = placed
	s.mu.Unlock()
	plan := make(sarama.BalanceStrategyPlan, len(g.ids))
	for _, id := range g.ids {
		plan[id] = map[string][]int32{}
	}
	for _, p := range g.parts {
		to := g.owner[p]
		if from, ok := g.current[p]; s.cooperative && ok && from != to {
			continue // withheld until from revokes it
		}
		for topic, ps := range topics {
			if slices.Contains(ps, p) {
				plan.Add(to, topic, p)
			}
		}
	}
	return plan, nil
}

// groupState is one Plan's view of the group.
type groupState struct {
	ids     []string                   // members, sorted
	parts   []int32                    // partition numbers, sorted
	current map[int32]string           // owner before this rebalance
	behind  map[string]map[int32]int64 // each member's standby copies and stored state
	stored  map[string]map[int32]bool  // of which in its store only
	owner   map[int32]string           // owner after it
	count   map[string]int
	base    int // every member's share; extra of them take one more
	extra   int
}

func newGroupState(members map[string]sarama.ConsumerGroupMemberMetadata, topics map[string][]int32) *groupState {
	g := &groupState{
		current: map[int32]string{}, behind: map[string]map[int32]int64{}, stored: map[string]map[int32]bool{},
		owner: map[int32]string{}, count: map[string]int{},
	}
	for _, ps := range topics {
		for _, p := range ps {
			if !slices.Contains(g.parts, p) {
				g.parts = append(g.parts, p)
			}
		}
	}
	slices.Sort(g.parts)
	g.ids = slices.Sorted(maps.Keys(members))
	generation := map[int32]int32{}
	for _, id := range g.ids {
		meta := members[id]
		var d memberData
		_ = json.Unmarshal(meta.UserData, &d) // a member without it reports nothing
		g.behind[id], g.stored[id] = d.Behind, map[int32]bool{}
		for p, n := range d.Stored {
			if _, copied := d.Behind[p]; !copied {
				if g.behind[id] == nil {
					g.behind[id] = map[int32]int64{}
				}
				g.behind[id][p], g.stored[id][p] = n, true
			}
		}
		owned, gen := d.Owned, d.Generation
		if len(meta.OwnedPartitions) > 0 { // the protocol's own record, under cooperative
			owned = nil
			for _, op := range meta.OwnedPartitions {
				owned = append(owned, op.Partitions...)
			}
		}
		if meta.GenerationID > 0 {
			gen = meta.GenerationID
		}
		for _, p := range owned {
			// Two claims: a member that missed a rebalance; the newer wins.
			if prev, ok := g.current[p]; slices.Contains(g.parts, p) && (!ok || gen > generation[p] && prev != id) {
				g.current[p], generation[p] = id, gen
			}
		}
	}
	if len(g.ids) > 0 {
		g.base, g.extra = len(g.parts)/len(g.ids), len(g.parts)%len(g.ids)
	}
	return g
}

// lag is how far member's copy of p is behind; MaxInt64 without one.
func (g *groupState) lag(member string, p int32) int64 {
	if n, ok := g.behind[member][p]; ok {
		return n
	}
	return math.MaxInt64
}

// moveCost is the lag of the best copy of p outside member: what moving p
// away from member would cost its next owner.
func (g *groupState) moveCost(member string, p int32) int64 {
	best := int64(math.MaxInt64)
	for _, id := range g.ids {
		if id != member {
			best = min(best, g.lag(id, p))
		}
	}
	return best
}

// keepOwned leaves each member what it owns, up to its share. Members that
// own the most take the extra slots; a member over its share keeps the
// partitions that would be dearest to move.
func (g *groupState) keepOwned() {
	owned := map[string][]int32{}
	for _, p := range g.parts {
		if id, ok := g.current[p]; ok {
			owned[id] = append(owned[id], p)
		}
	}
	ids := slices.Clone(g.ids)
	slices.SortStableFunc(ids, func(a, b string) int { return cmp.Compare(len(owned[b]), len(owned[a])) })
	for _, id := range ids {
		ps := owned[id]
		keep := min(len(ps), g.base)
		if len(ps) > g.base && g.extra > 0 {
			keep, g.extra = g.base+1, g.extra-1
		}
		slices.SortStableFunc(ps, func(a, b int32) int { return cmp.Compare(g.moveCost(id, b), g.moveCost(id, a)) })
		for _, p := range ps[:keep] {
			g.owner[p] = id
		}
		g.count[id] = keep
	}
}

// assignFree gives each partition without an owner to the member with room
// whose copy of it is the least behind, else to the least loaded member.
// The partitions with the best copies go first, so that the room their
// holders have goes to them.
func (g *groupState) assignFree() {
	var free []int32
	for _, p := range g.parts {
		if _, ok := g.owner[p]; !ok {
			free = append(free, p)
		}
	}
	best := func(p int32) int64 {
		b := int64(math.MaxInt64)
		for _, id := range g.ids {
			b = min(b, g.lag(id, p))
		}
		return b
	}
	slices.SortStableFunc(free, func(a, b int32) int { return cmp.Compare(best(a), best(b)) })
	for _, p := range free {
		var to string
		for _, id := range g.ids {
			room := g.count[id] < g.base || g.count[id] == g.base && g.extra > 0
			if room && (to == "" || g.better(id, to, p)) {
				to = id
			}
		}
		if g.count[to] == g.base {
			g.extra--
		}
		g.owner[p] = to
		g.count[to]++
	}
}

// better reports whether a should take p rather than b: a closer copy, then
// its state in the store (a member back from a restart gets its partitions
// back), then fewer partitions (ties go to the first in order).
func (g *groupState) better(a, b string, p int32) bool {
	if la, lb := g.lag(a, p), g.lag(b, p); la != lb {
		return la < lb
	}
	if sa, sb := g.stored[a][p], g.stored[b][p]; sa != sb {
		return sa
	}
	return g.count[a] < g.count[b]
}

// placeStandbys chooses replicas members other than the owner for a copy of
// each partition: spread evenly, and one owner's partitions over different
// members (so that when it fails, its partitions go to several members,
// each with room for one), then members that hold a copy already. A
// partition withheld in a cooperative move counts as its current owner's,
// and its new owner keeps its copy until it takes it over.
func (g *groupState) placeStandbys(replicas int) map[string][]int32 {
	placed := map[string][]int32{}
	replicas = min(replicas, len(g.ids)-1)
	if replicas <= 0 {
		return placed
	}
	limit := (len(g.parts)*replicas + len(g.ids) - 1) / len(g.ids)
	active := func(p int32) string {
		if cur, ok := g.current[p]; ok {
			return cur
		}
		return g.owner[p]
	}
	// of[member][owner]: copies member keeps of owner's partitions.
	of := map[string]map[string]int{}
	for _, id := range g.ids {
		of[id] = map[string]int{}
	}
	for _, p := range g.parts {
		owner := active(p)
		candidates := slices.DeleteFunc(slices.Clone(g.ids), func(id string) bool { return id == owner })
		slices.SortStableFunc(candidates, func(a, b string) int {
			if c := cmp.Compare(boolInt(len(placed[a]) >= limit), boolInt(len(placed[b]) >= limit)); c != 0 {
				return c
			}
			if c := cmp.Compare(of[a][owner], of[b][owner]); c != 0 {
				return c
			}
			if c := cmp.Compare(g.lag(a, p), g.lag(b, p)); c != 0 {
				return c
			}
			return cmp.Compare(len(placed[a]), len(placed[b]))
		})
		for _, id := range candidates[:replicas] {
			placed[id] = append(placed[id], p)
			of[id][owner]++
		}
	}
	return placed
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// partitionNumbers are the partition numbers in an assignment, sorted.
func partitionNumbers(topics map[string][]int32) []int32 {
	var out []int32
	for _, ps := range topics {
		for _, p := range ps {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}
