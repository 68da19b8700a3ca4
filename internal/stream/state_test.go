package stream

import "testing"

// TestPositionActive: records in flight count from the committed offset,
// and before a group's first commit from the claim's first record, so a
// new group's first backlog does not read as nothing in flight.
func TestPositionActive(t *testing.T) {
	for _, c := range []struct {
		name string
		pos  Position
		want int64
	}{
		{"committed", Position{Next: 500, Committed: 200, From: 100}, 300},
		{"all committed", Position{Next: 500, Committed: 500, From: 100}, 0},
		{"no commit yet", Position{Next: 500, Committed: -1, From: 100}, 400},
		{"no commit, nothing taken", Position{Next: -2, Committed: -1, From: -1}, 0},
		{"committed, nothing taken", Position{Next: 42, Committed: 42, From: -1}, 0},
	} {
		if got := c.pos.Active(); got != c.want {
			t.Errorf("%s: Active() = %d, want %d", c.name, got, c.want)
		}
	}
}
