package app_test

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"github.com/gofaust/pageviews/internal/app"
)

type sum struct {
	Sum int64 `json:"sum"`
}

// holding returns the Local and Owned of a worker that holds the
// partitions of values; Local reads the query's "times" factor into the
// sums (the app's own parameters reach peers too).
func holding(values map[int32]int64) (func(url.Values, int32) (sum, error), func() []int32) {
	local := func(q url.Values, p int32) (sum, error) {
		times := int64(1)
		if q.Get("times") == "10" {
			times = 10
		}
		return sum{values[p] * times}, nil
	}
	return local, func() []int32 { return slices.Collect(maps.Keys(values)) }
}

// TestReadsAcrossWorkers: partitions 0 and 1 are read here, 2 from a peer
// that runs the same reads, 3 from a peer that answers it twice (not
// trusted), 4 has no owner this worker knows and does not hold.
func TestReadsAcrossWorkers(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	peerLocal, peerOwned := holding(map[int32]int64{2: 20, 9: 90})
	peerReads := &app.Reads[sum]{Path: "/sums/", Local: peerLocal, Owned: peerOwned, Log: log}
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !app.IsPeer(r) || r.URL.Path != "/sums/" {
			http.Error(w, "not a peer's request", http.StatusBadRequest)
			return
		}
		peerReads.ServePeer(w, r)
	}))
	defer peer.Close()
	twice := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"by_partition":[{"partition":3,"sum":3},{"partition":3,"sum":3}]}`))
	}))
	defer twice.Close()

	local, owned := holding(map[int32]int64{0: 1, 1: 2})
	owners := map[int32]string{0: "http://self", 1: "http://self", 2: peer.URL, 3: twice.URL}
	r := &app.Reads[sum]{
		Path: "/sums/", Local: local, Owned: owned, Self: "http://self",
		Owners:     func() (map[int32]string, error) { return owners, nil },
		Partitions: func() (int32, error) { return 5, nil },
		Client:     &http.Client{}, Log: log,
	}
	got, missing, err := r.All(context.Background(), url.Values{"times": {"10"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int32]sum{0: {10}, 1: {20}, 2: {200}}
	if len(got) != len(want) {
		t.Errorf("read %v, want %v", got, want)
	}
	for p, v := range want {
		if got[p] != v {
			t.Errorf("partition %d = %v, want %v", p, got[p], v)
		}
	}
	if !slices.Equal(missing, []int32{3, 4}) {
		t.Errorf("missing = %v, want [3 4] (answered twice; no owner)", missing)
	}
}
