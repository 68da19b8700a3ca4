package kafka

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/IBM/sarama"
)

// member is a member's subscription in a Plan test.
type member struct {
	owned      []int32
	generation int32
	behind     map[int32]int64
}

func metadata(t *testing.T, topics []string, ms map[string]member, cooperative bool) map[string]sarama.ConsumerGroupMemberMetadata {
	t.Helper()
	out := map[string]sarama.ConsumerGroupMemberMetadata{}
	for id, m := range ms {
		d := memberData{Generation: m.generation, Behind: m.behind}
		meta := sarama.ConsumerGroupMemberMetadata{Version: 1, Topics: topics}
		if cooperative {
			for _, topic := range topics {
				meta.OwnedPartitions = append(meta.OwnedPartitions, &sarama.OwnedPartition{Topic: topic, Partitions: m.owned})
			}
		} else {
			d.Owned = m.owned
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		meta.UserData = b
		out[id] = meta
	}
	return out
}

func partitions(n int32) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(i)
	}
	return out
}

// owners maps each partition of topic in plan to its member.
func owners(t *testing.T, plan sarama.BalanceStrategyPlan, topic string) map[int32]string {
	t.Helper()
	out := map[int32]string{}
	for id, topics := range plan {
		for _, p := range topics[topic] {
			if prev, dup := out[p]; dup {
				t.Fatalf("partition %d assigned to %s and %s", p, prev, id)
			}
			out[p] = id
		}
	}
	return out
}

func counts(o map[int32]string) map[string]int {
	c := map[string]int{}
	for _, id := range o {
		c[id]++
	}
	return c
}

func plan(t *testing.T, s sarama.BalanceStrategy, topics map[string][]int32, ms map[string]member, cooperative bool) sarama.BalanceStrategyPlan {
	t.Helper()
	p, err := s.Plan(metadata(t, slices.Sorted(maps.Keys(topics)), ms, cooperative), topics)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStandbyStrategyBalancesAFreshGroup(t *testing.T) {
	for _, n := range []int32{1, 2, 8, 9} {
		for _, m := range []int{1, 2, 3, 5} {
			t.Run(fmt.Sprintf("%d partitions %d members", n, m), func(t *testing.T) {
				ms := map[string]member{}
				for i := range m {
					ms[fmt.Sprintf("m%d", i)] = member{}
				}
				o := owners(t, plan(t, NewStandbyStrategy(true, 1, nil), map[string][]int32{"src": partitions(n)}, ms, true), "src")
				if len(o) != int(n) {
					t.Fatalf("%d of %d partitions assigned: %v", len(o), n, o)
				}
				lo, hi := int(n), 0
				for id := range ms {
					lo, hi = min(lo, counts(o)[id]), max(hi, counts(o)[id])
				}
				if hi-lo > 1 {
					t.Errorf("counts %v: more than one partition apart", counts(o))
				}
			})
		}
	}
}

// A member that joins takes partitions only from the members over their
// share; under cooperative rebalancing they are withheld in this round
// (their owner revokes them first), and the next round hands them over.
func TestStandbyStrategyIsStickyAndCooperative(t *testing.T) {
	topics := map[string][]int32{"src": partitions(6)}
	ms := map[string]member{"a": {owned: []int32{0, 1, 2}, generation: 4}, "b": {owned: []int32{3, 4, 5}, generation: 4}, "c": {}}
	first := owners(t, plan(t, NewStandbyStrategy(true, 0, nil), topics, ms, true), "src")
	for p, id := range first {
		if was := map[bool]string{true: "a", false: "b"}[p < 3]; id != was {
			t.Errorf("round 1: partition %d went from %s to %s without a revocation", p, was, id)
		}
	}
	if len(first) != 4 || counts(first)["c"] != 0 {
		t.Fatalf("round 1: %v, want a and b to keep 2 each and c nothing yet", first)
	}
	// a and b revoked what they no longer hold, and rejoin.
	var a, b []int32
	for p, id := range first {
		if id == "a" {
			a = append(a, p)
		} else {
			b = append(b, p)
		}
	}
	ms = map[string]member{"a": {owned: a, generation: 5}, "b": {owned: b, generation: 5}, "c": {}}
	second := owners(t, plan(t, NewStandbyStrategy(true, 0, nil), topics, ms, true), "src")
	if c := counts(second); c["a"] != 2 || c["b"] != 2 || c["c"] != 2 {
		t.Fatalf("round 2: %v, want 2 each", second)
	}
	for p, id := range first {
		if second[p] != id {
			t.Errorf("round 2 moved partition %d from %s to %s", p, id, second[p])
		}
	}
}

// The partitions of a member that left go to the members whose standby
// copies of them are the least behind.
func TestStandbyStrategySendsAFailedOwnersPartitionsToTheirCopies(t *testing.T) {
	topics := map[string][]int32{"src": partitions(6), "src-table-changelog": partitions(6)}
	// c owned 4 and 5 and died; b's copy of 4 and a's copy of 5 are caught up.
	ms := map[string]member{
		"a": {owned: []int32{0, 1}, generation: 7, behind: map[int32]int64{4: 90_000, 5: 1}},
		"b": {owned: []int32{2, 3}, generation: 7, behind: map[int32]int64{4: 0, 5: 80_000}},
	}
	for _, cooperative := range []bool{true, false} {
		p := plan(t, NewStandbyStrategy(cooperative, 1, nil), topics, ms, cooperative)
		o := owners(t, p, "src")
		if o[4] != "b" || o[5] != "a" {
			t.Errorf("cooperative=%v: partition 4 went to %s, 5 to %s; want b and a, whose copies are caught up", cooperative, o[4], o[5])
		}
		if changelog := owners(t, p, "src-table-changelog"); !maps.Equal(o, changelog) {
			t.Errorf("cooperative=%v: not co-partitioned: source %v, changelog %v", cooperative, o, changelog)
		}
	}
}

// Copies never go to the owner, spread evenly (and one owner's over
// several members), and stay where they are.
func TestStandbyStrategyPlacesCopies(t *testing.T) {
	topics := map[string][]int32{"src": partitions(8)}
	ms := map[string]member{
		"a": {owned: []int32{0, 1, 2}, generation: 3, behind: map[int32]int64{3: 0, 6: 0}},
		"b": {owned: []int32{3, 4, 5}, generation: 3, behind: map[int32]int64{0: 0, 7: 0}},
		"c": {owned: []int32{6, 7}, generation: 3, behind: map[int32]int64{1: 0, 4: 0}},
	}
	for replicas := 1; replicas <= 3; replicas++ {
		s := NewStandbyStrategy(true, replicas, nil)
		o := owners(t, plan(t, s, topics, ms, true), "src")
		held := map[int32][]string{}
		perMember := map[string]int{}
		for id := range ms {
			var d assignmentData
			b, err := s.AssignmentData(id, nil, 4)
			if err != nil || json.Unmarshal(b, &d) != nil {
				t.Fatalf("assignment data of %s: %q, %v", id, b, err)
			}
			for _, p := range d.Standby {
				if o[p] == id {
					t.Errorf("replicas=%d: %s keeps a copy of partition %d, which it owns", replicas, id, p)
				}
				held[p] = append(held[p], id)
			}
			perMember[id] = len(d.Standby)
		}
		want := min(replicas, 2)
		for _, p := range partitions(8) {
			if len(held[p]) != want {
				t.Errorf("replicas=%d: partition %d has copies on %v, want %d", replicas, p, held[p], want)
			}
		}
		lo, hi := 8, 0
		for _, n := range perMember {
			lo, hi = min(lo, n), max(hi, n)
		}
		if hi-lo > 1 {
			t.Errorf("replicas=%d: copies per member %v, more than one apart", replicas, perMember)
		}
		// One owner's partitions spread: a's three over b and c.
		if onB := len(slices.DeleteFunc([]int32{0, 1, 2}, func(p int32) bool { return !slices.Contains(held[p], "b") })); replicas == 1 && (onB == 0 || onB == 3) {
			t.Errorf("the copies of a's partitions are all on one member: %v", held)
		}
		if replicas == 1 {
			for p, id := range map[int32]string{3: "a", 6: "a", 0: "b", 7: "b", 1: "c", 4: "c"} {
				if !slices.Contains(held[p], id) {
					t.Errorf("the copy of partition %d moved away from %s (now on %v)", p, id, held[p])
				}
			}
		}
	}
}

// A static member back from a quick restart owns nothing, but its store
// holds its partitions: it gets them back, ahead of a standby copy that is
// as far along, and of members with fewer partitions.
func TestStandbyStrategyGivesAMemberBackWhatItStores(t *testing.T) {
	topics := map[string][]int32{"src": partitions(8)}
	ms := metadata(t, []string{"src"}, map[string]member{
		"w0": {owned: []int32{0, 1, 2}, generation: 5},
		"w2": {owned: []int32{3, 7}, generation: 5, behind: map[int32]int64{5: 1}},
	}, true)
	d, err := json.Marshal(memberData{Generation: -1, Stored: map[int32]int64{4: 1, 5: 1, 6: 1}})
	if err != nil {
		t.Fatal(err)
	}
	ms["w1"] = sarama.ConsumerGroupMemberMetadata{Version: 1, Topics: []string{"src"}, UserData: d}
	p, err := NewStandbyStrategy(true, 1, nil).Plan(ms, topics)
	if err != nil {
		t.Fatal(err)
	}
	if got := owners(t, p, "src"); got[4] != "w1" || got[5] != "w1" || got[6] != "w1" {
		t.Errorf("owners %v: w1 should get back 4, 5 and 6, which its store holds", got)
	}
}

// Of two members claiming a partition, the one of the newer generation
// owns it (the other missed a rebalance).
func TestStandbyStrategyResolvesStaleClaims(t *testing.T) {
	topics := map[string][]int32{"src": partitions(4)}
	ms := map[string]member{"a": {owned: []int32{0, 1}, generation: 9}, "b": {owned: []int32{1, 2, 3}, generation: 8}}
	o := owners(t, plan(t, NewStandbyStrategy(false, 0, nil), topics, ms, false), "src")
	if o[0] != "a" || o[1] != "a" || o[2] != "b" || o[3] != "b" {
		t.Errorf("owners %v, want a: 0 1 and b: 2 3", o)
	}
}

type fakeStandbys struct {
	behind map[int32]int64
	placed []int32
}

func (f *fakeStandbys) Behind() map[int32]int64 { return f.behind }
func (f *fakeStandbys) Stored() map[int32]int64 { return nil }
func (f *fakeStandbys) Place(ps, _ []int32)     { f.placed = ps }

// What a member reports and learns goes through the advertising wrapper
// and sarama's encodings intact.
func TestStandbyStrategyUserDataRoundTrip(t *testing.T) {
	fs := &fakeStandbys{behind: map[int32]int64{2: 17}}
	s := Advertise(NewStandbyStrategy(true, 1, fs), []byte("http://w1:6066"))
	ud, err := s.(sarama.SubscriptionUserDataBalanceStrategy).SubscriptionUserData([]string{"src"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(Advertised(ud)); got != "http://w1:6066" {
		t.Errorf("advertised %q", got)
	}
	members := map[string]sarama.ConsumerGroupMemberMetadata{
		"w1": {Version: 1, Topics: []string{"src"}, UserData: ud},
		"w0": {Version: 1, Topics: []string{"src"}, OwnedPartitions: []*sarama.OwnedPartition{{Topic: "src", Partitions: []int32{0, 1, 2}}}},
	}
	p, err := s.Plan(members, map[string][]int32{"src": partitions(3)})
	if err != nil {
		t.Fatal(err)
	}
	if o := owners(t, p, "src"); o[0] != "w0" || o[1] != "w0" {
		t.Errorf("owners %v: w0 should keep two", o)
	}
	b, err := s.AssignmentData("w1", p["w1"], 2)
	if err != nil {
		t.Fatal(err)
	}
	s.(sarama.OnAssignmentBalanceStrategy).OnAssignment(&sarama.ConsumerGroupMemberAssignment{Topics: p["w1"], UserData: b}, 2)
	if len(fs.placed) == 0 {
		t.Errorf("w1 was placed no copies; the assignment's data was %q", b)
	}
	ud, err = s.(sarama.SubscriptionUserDataBalanceStrategy).SubscriptionUserData([]string{"src"})
	if err != nil {
		t.Fatal(err)
	}
	_, inner, _ := split(ud)
	var d memberData
	if err := json.Unmarshal(inner, &d); err != nil || d.Generation != 2 || d.Behind[2] != 17 {
		t.Errorf("next subscription %s (%v): want generation 2 and partition 2's copy 17 behind", inner, err)
	}
}
