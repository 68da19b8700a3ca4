package pageview_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/pageview"
)

// TestRouterTrustsPeersOnlyForWhatItAsked routes partitions 0 and 1 to this
// worker's tables (the fixture) and 2 and 3 to a peer that answers the body
// of each case. Only the partitions asked of the peer, and answered in a
// well-formed answer, count; anything else leaves the peer's partitions
// missing and the report stale.
func TestRouterTrustsPeersOnlyForWhatItAsked(t *testing.T) {
	for _, tt := range peerAnswers() {
		t.Run(tt.name, func(t *testing.T) { checkPeerAnswer(t, tt) })
	}
}

// peerAnswer is a case of TestRouterTrustsPeersOnlyForWhatItAsked: what
// the peer answers, and the report the router gives then.
type peerAnswer struct {
	name    string
	body    string
	length  bool // send a Content-Length header
	pages   map[string]pageview.PageReport
	missing []int32
}

// peerAnswers are the cases of TestRouterTrustsPeersOnlyForWhatItAsked.
func peerAnswers() []peerAnswer {
	// What the fixture's partitions hold (see TestReport), and what a
	// well-behaved peer adds.
	own := map[string]pageview.PageReport{
		"/home":  {Now: 7, Count: 11, Report: pageview.Trending},
		"/about": {Now: 1, Count: 5, Report: pageview.LessPopular},
		"/cold":  {Now: 0, Count: 1, Report: pageview.NotEnough},
	}
	withPeer := maps.Clone(own)
	withPeer["/peer"] = pageview.PageReport{Now: 2, Count: 5, Report: pageview.NotEnough}
	const (
		p2 = `{"partition":2,"pages":{"/peer":{"now":1,"back":0,"count":2}}}`
		p3 = `{"partition":3,"pages":{"/peer":{"now":1,"back":0,"count":3}}}`
		// Partition 0 is this worker's: a peer that answers it too must
		// not add to it.
		p0 = `{"partition":0,"pages":{"/home":{"now":100,"back":0,"count":100},"/intruder":{"now":5,"back":0,"count":5}}}`
	)
	return []peerAnswer{
		{name: "by partition", body: `{"by_partition":[` + p2 + `,` + p3 + `]}`, pages: withPeer},
		{name: "pages of a partition not asked are ignored", body: `{"by_partition":[` + p2 + `,` + p0 + `,` + p3 + `]}`, pages: withPeer},
		{name: "partition answered twice", body: `{"by_partition":[` + p2 + `,` + p2 + `]}`, pages: own, missing: []int32{2, 3}},
		{name: "partition answered twice among all asked", body: `{"by_partition":[` + p2 + `,` + p3 + `,` + p3 + `]}`, pages: own, missing: []int32{2, 3}},
		{name: "nothing answered", body: `{"by_partition":[]}`, pages: own, missing: []int32{2, 3}},
		{name: "undecodable", body: `{"by_partition":[{"partition":"two"}]}`, pages: own, missing: []int32{2, 3}},
		{name: "not JSON", body: `<html>`, pages: own, missing: []int32{2, 3}},
		{name: "trailing garbage", body: `{"by_partition":[` + p2 + `,` + p3 + `]} {}`, pages: own, missing: []int32{2, 3}},
		{
			name:    "oversized",
			body:    `{"by_partition":[` + p2 + `,` + p3 + `]}` + strings.Repeat(" ", app.DefaultMaxAnswer),
			pages:   own,
			missing: []int32{2, 3},
		},
		{
			name:    "oversized, announced",
			body:    `{"by_partition":[` + p2 + `,` + p3 + `]}` + strings.Repeat(" ", app.DefaultMaxAnswer),
			length:  true,
			pages:   own,
			missing: []int32{2, 3},
		},
		{
			name:  "just under the limit",
			body:  `{"by_partition":[` + p2 + `,` + p3 + `]}` + strings.Repeat(" ", app.DefaultMaxAnswer-len(`{"by_partition":[`+p2+`,`+p3+`]}`)),
			pages: withPeer,
		},
		// A peer of an earlier version answers the sum of the partitions
		// it read.
		{name: "earlier version", body: `{"partitions":[3,2],"pages":{"/peer":{"now":2,"back":0,"count":5}}}`, pages: withPeer},
		{name: "earlier version, one partition", body: `{"partitions":[2],"pages":{"/peer":{"now":1,"back":0,"count":2}}}`, pages: withPeer2(own), missing: []int32{3}},
		{name: "earlier version, partition not asked", body: `{"partitions":[2,3,0],"pages":{"/peer":{"now":2,"back":0,"count":5},"/intruder":{"now":5,"back":0,"count":5}}}`, pages: own, missing: []int32{2, 3}},
		{name: "earlier version, partition answered twice", body: `{"partitions":[2,2],"pages":{"/peer":{"now":2,"back":0,"count":5}}}`, pages: own, missing: []int32{2, 3}},
		{name: "earlier version, pages without partitions", body: `{"partitions":[],"pages":{"/intruder":{"now":5,"back":0,"count":5}}}`, pages: own, missing: []int32{2, 3}},
	}
}

// checkPeerAnswer checks the report and the count of a router whose peer
// answers tt.body, and what the peer was asked.
func checkPeerAnswer(t *testing.T, tt peerAnswer) {
	peerURL, asked := answeringPeer(t, tt.body, tt.length)
	f := newFixture(t)
	f.fill(t)
	rt := router(f, map[int32]string{0: "http://self", 1: "http://self", 2: peerURL, 3: peerURL})

	rep, err := rt.Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(rep.Pages, tt.pages) {
		t.Errorf("Pages = %+v, want %+v", rep.Pages, tt.pages)
	}
	if !slices.Equal(rep.MissingPartitions, tt.missing) {
		t.Errorf("MissingPartitions = %v, want %v", rep.MissingPartitions, tt.missing)
	}
	if rep.Stale != (len(tt.missing) > 0) {
		t.Errorf("Stale = %v with partitions %v missing", rep.Stale, tt.missing)
	}
	// The livecheck's read says whether every partition answered:
	// a partition answered twice must not stand in for one missing.
	_, complete, err := rt.Count(context.Background(), "/peer")
	if err != nil {
		t.Fatal(err)
	}
	if complete != (len(tt.missing) == 0) {
		t.Errorf("Count: complete = %v with partitions %v missing", complete, tt.missing)
	}

	for _, q := range asked() {
		if !strings.Contains(q, "by_partition=1") || !strings.Contains(q, "partitions=2%2C3") {
			t.Errorf("peer asked with %q, want by_partition=1 and partitions=2,3", q)
		}
	}
}

// answeringPeer starts a peer that answers every request with body, with
// a Content-Length header if length is set. It returns the peer's URL and
// a function that returns the queries the peer was asked so far.
func answeringPeer(t *testing.T, body string, length bool) (url string, asked func() []string) {
	var mu sync.Mutex
	var queries []string
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if length {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(peer.Close)
	return peer.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(queries)
	}
}

// withPeer2 is own plus what partition 2 of the peer holds.
func withPeer2(own map[string]pageview.PageReport) map[string]pageview.PageReport {
	m := maps.Clone(own)
	m["/peer"] = pageview.PageReport{Now: 1, Count: 2, Report: pageview.NotEnough}
	return m
}

// router is a Reporter over the fixture's tables, with fixed owners (their
// number of partitions), self at http://self owning owned (all its
// tables hold when none).
func router(f *fixture, owners map[int32]string, owned ...int32) *pageview.Reporter {
	s := services(owners)
	s.Clock, s.Owned = f.clock.Now, f.tables.Totals.Partitions
	if owned != nil {
		s.Owned = func() []int32 { return owned }
	}
	return pageview.NewReporter(s, f.tables, pageview.NewCodec())
}

// services are the runtime's, as far as the router uses them: this worker
// at http://self, owners fixed.
func services(owners map[int32]string) *app.Services {
	return &app.Services{
		Self:       "http://self",
		Owners:     func() (map[int32]string, error) { return owners, nil },
		Partitions: func() (int32, error) { return int32(len(owners)), nil },
		Ready:      func() (bool, string) { return true, "" },
		Log:        slog.New(slog.DiscardHandler),
	}
}

// TestRouterAsksPeers routes between real routers through the web handler:
// partition 0 is read here, partition 1 from a peer of this version, or of
// an earlier version that answers summed counts; either way the report is
// the one a single worker holding both partitions gives.
func TestRouterAsksPeers(t *testing.T) {
	f := newFixture(t)
	f.fill(t)
	whole, err := f.reporter().Report(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, earlier := range []bool{false, true} {
		t.Run(fmt.Sprintf("earlier=%v", earlier), func(t *testing.T) {
			peerReads := router(f, nil, 1).Reads
			peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if earlier { // it answers the sum of the partitions, whatever it is asked, and knows no summary
					q := r.URL.Query()
					q.Del("by_partition")
					q.Del("summary")
					r.URL.RawQuery = q.Encode()
				}
				peerReads.ServePeer(w, r)
			}))
			t.Cleanup(peer.Close)
			rt := router(f, map[int32]string{0: "http://self", 1: peer.URL}, 0)
			rep, err := rt.Report(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			if rep.Stale || !maps.Equal(rep.Pages, whole.Pages) || rep.Now != whole.Now || rep.Count != whole.Count {
				t.Errorf("routed report = %+v, want %+v", rep, whole)
			}
			sum, err := rt.Summary(context.Background())
			if want := (pageview.Summary{Pages: pagesByPartition(t, f.reporter()), Count: whole.Count, Now: whole.Now}); err != nil || sum != want {
				t.Errorf("routed summary = %+v, %v; want %+v", sum, err, want)
			}
		})
	}
}
