package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

// viewsOver returns n page names spread round-robin over pages pages.
func viewsOver(n, pages int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("/page/%02d", i%pages)
	}
	return out
}

// requireEvenReport checks a report of n views spread evenly over pages
// pages; with windowsStable it checks the window counts and texts too.
func requireEvenReport(t testing.TB, r pageview.Report, n, pages int, windowsStable bool) {
	t.Helper()
	per := int64(n / pages)
	if r.Count != int64(n) || len(r.Pages) != pages || r.Stale {
		t.Fatalf("report: want %d views over %d pages, not stale; got %s", n, pages, harness.Summarize(r))
	}
	for page, p := range r.Pages {
		if p.Count != per {
			t.Fatalf("page %s: count %d, want %d", page, p.Count, per)
		}
		if windowsStable && (p.Now != per || p.Report != "Trending now") {
			t.Fatalf("page %s: %d views in the window of now with report %q, want %d and \"Trending now\"", page, p.Now, p.Report, per)
		}
	}
}

// The tables live in Kafka: a worker that lost its whole DATA_DIR rebuilds
// exactly the same tables from the changelogs.
func TestTablesSurviveLosingDataDir(t *testing.T) {
	const views, pages = 1000, 50
	b := startBroker(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	w := startWorker(t, "worker-1", workerEnv(dataDir, dayWindows, b.env()))
	w.WaitReady(t, 60*time.Second)

	windows := windowsAt(time.Now(), daySize)
	w.SendViews(t, viewsOver(views, pages), 8)
	before := w.WaitReport(t, 60*time.Second, fmt.Sprintf("%d views", views), func(r pageview.Report) bool {
		return r.Count == views && !r.Stale
	})
	requireEvenReport(t, before, views, pages, sameWindows(t, windows, daySize))

	w.Stop(t)
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}

	w2 := w.Restart(t, "worker-2")
	w2.WaitReady(t, 60*time.Second)
	after := w2.Report(t)
	compareReports(t, before, after, sameWindows(t, windows, daySize))

	// With DATA_DIR gone, every table partition was rebuilt from offset 0.
	var replayed int64
	for k, l := range recoveringLines(w2) {
		if l.Stored || l.FromOffset != 0 {
			t.Errorf("%s: recovery started at offset %d with stored=%v, want 0 and false after DATA_DIR was deleted", k, l.FromOffset, l.Stored)
		}
		replayed += l.Records
	}
	if replayed == 0 {
		t.Error("no changelog record was replayed")
	}
}

// /ready/ must not answer 200 before the worker holds recovered tables:
// the first report after the first 200 shows everything the worker counted
// before it restarted.
func TestReadyImpliesRecovered(t *testing.T) {
	const views, pages = 100, 10
	b := startBroker(t)
	w := startWorker(t, "worker-0", workerEnv(filepath.Join(t.TempDir(), "data"), dayWindows, b.env()))
	w.WaitReady(t, 60*time.Second)
	w.SendViews(t, viewsOver(views, pages), 8)
	w.WaitReport(t, 60*time.Second, fmt.Sprintf("%d views", views), func(r pageview.Report) bool { return r.Count == views })
	w.Stop(t)

	// A gap between the join and the registration of the claims would be
	// short; ask as fast as possible from several goroutines, over a few
	// restarts.
	for i := 1; i <= 3; i++ {
		w = w.Restart(t, fmt.Sprintf("worker-%d", i))
		first := firstReadyReport(t, w)
		// /ready/ speaks for this worker's partitions; the group may still be
		// settling (the dev broker hands a lone joiner every partition and
		// may rebalance once more), and then the report must say stale
		// rather than show partial numbers as complete.
		if !first.Stale && first.Count != views {
			t.Errorf("restart %d: /ready/ answered 200, then /report/ showed %s as complete; want all %d views",
				i, harness.Summarize(first), views)
		}
		w.WaitReport(t, 60*time.Second, fmt.Sprintf("%d views, not stale", views), func(r pageview.Report) bool { return r.Count == views && !r.Stale })
		w.Stop(t)
	}
}

// firstReadyReport polls /ready/ without pause from 8 goroutines and, as
// soon as one gets 200, reads /report/. Every request runs to its end, and
// the client's connections are closed afterwards, so that none is left open
// without a request when the worker is stopped next (see
// TestTermWhileClientsConnectExits0).
func firstReadyReport(t testing.TB, w *harness.Worker) pageview.Report {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	get := func(path string) (int, []byte, error) {
		resp, err := client.Get(w.Base + path)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, body, err
	}
	deadline := time.Now().Add(60 * time.Second)
	var (
		stop   atomic.Bool
		once   sync.Once
		got    pageview.Report
		gotErr error
		wg     sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() && time.Now().Before(deadline) && w.Running() {
				status, _, err := get("/ready/")
				if err != nil || status != http.StatusOK {
					continue
				}
				once.Do(func() {
					defer stop.Store(true)
					status, body, err := get("/report/")
					if err == nil && status != http.StatusOK {
						err = fmt.Errorf("/report/ answered %d: %s", status, body)
					}
					if err == nil {
						err = json.Unmarshal(body, &got)
					}
					gotErr = err
				})
			}
		})
	}
	wg.Wait()
	once.Do(func() { gotErr = fmt.Errorf("%s never answered /ready/ 200", w.Name) })
	if gotErr != nil {
		t.Fatal(gotErr)
	}
	return got
}

// A worker killed with SIGKILL while /count/ calls stream in loses no
// acknowledged view, and its restart replays only the changelog records
// after what its local store holds.
func TestCrashLosesNoAcknowledgedView(t *testing.T) {
	// The kill comes once the worker has committed (and so stored)
	// storedBefore source records, while views keep streaming in. Each view
	// is of a new page, so every acknowledged view can be looked for after
	// the restart.
	const storedBefore = 1000
	b := startBroker(t)
	w := startWorker(t, "worker-1", workerEnv(filepath.Join(t.TempDir(), "data"), dayWindows, map[string]string{
		"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group,
		// The restarted worker joins once the broker has expired the
		// killed member's session; keep that short.
		"KAFKA_SESSION_TIMEOUT": "6s",
	}))
	w.WaitReady(t, 60*time.Second)

	s := startCountStream(w, 8)
	defer s.cancel()
	s.waitCommitted(t, committedViews(t, b), storedBefore)
	s.killed.Store(true)
	w.Kill(t)
	s.stop()
	t.Logf("killed the worker with %d /count/ calls acknowledged out of %d attempted", len(s.acked), s.seq.Load())

	w2 := w.Restart(t, "worker-2")
	w2.WaitReady(t, 90*time.Second)
	final := waitAllCounted(t, w2, s.acked)
	if final.Count < int64(len(s.acked)) {
		t.Fatalf("total %d is below the %d acknowledged views", final.Count, len(s.acked))
	}
	t.Logf("after the restart: %d views counted for %d acknowledged (at least once: views after the last commit may count twice)",
		final.Count, len(s.acked))

	requireResumedFromStore(t, w2)
}

// countStream is /count/ calls from several goroutines, each for a page of
// its own, until the first failure or until it is stopped.
type countStream struct {
	seq     atomic.Int64
	mu      sync.Mutex
	acked   []string
	failure error // the first failed call before the kill
	killed  atomic.Bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startCountStream starts n goroutines that call w's /count/.
func startCountStream(w *harness.Worker, n int) *countStream {
	s := &countStream{}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for range n {
		s.wg.Go(func() {
			for ctx.Err() == nil {
				page := fmt.Sprintf("/crash/%06d", s.seq.Add(1))
				err := w.TryCount(ctx, page)
				s.mu.Lock()
				switch {
				case err == nil:
					s.acked = append(s.acked, page)
				case !s.killed.Load() && s.failure == nil:
					s.failure = err
				}
				s.mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	return s
}

// stop ends the calls and waits for the goroutines.
func (s *countStream) stop() {
	s.cancel()
	s.wg.Wait()
}

// waitCommitted waits until committed reports at least n source records,
// and fails the test when a call fails first.
func (s *countStream) waitCommitted(t testing.TB, committed func() int64, n int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s.mu.Lock()
		err := s.failure
		s.mu.Unlock()
		if err != nil {
			s.stop()
			t.Fatalf("/count/ failed before the crash: %v", err)
		}
		got := committed()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			s.stop()
			t.Fatalf("the worker committed %d source records in 2 minutes, want %d", got, n)
		}
		time.Sleep(harness.PollInterval)
	}
}

// waitAllCounted waits until w's report counts every acknowledged page, and
// returns that report. (The total alone can reach the number of
// acknowledged views early: at least once, views processed again count
// twice, while others still wait in the source.)
func waitAllCounted(t testing.TB, w *harness.Worker, acked []string) pageview.Report {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		final := w.Report(t)
		var missing []string
		for _, page := range acked {
			if final.Pages[page].Count < 1 {
				missing = append(missing, page)
			}
		}
		if len(missing) == 0 {
			return final
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged views are missing after the crash, among them %v; last report: %s",
				len(missing), len(acked), missing[:min(len(missing), 20)], harness.Summarize(final))
		}
		time.Sleep(harness.PollInterval)
	}
}

// requireResumedFromStore checks that w's recovery resumed from the local
// store instead of replaying everything.
func requireResumedFromStore(t testing.TB, w *harness.Worker) {
	t.Helper()
	var replayed, ends int64
	resumed := 0
	for k, l := range recoveringLines(w) {
		t.Logf("restart recovered %s: from offset %d to %d (%d records), stored=%v", k, l.FromOffset, l.EndOffset, l.Records, l.Stored)
		replayed += l.Records
		ends += l.EndOffset
		if l.Stored && l.FromOffset > 0 {
			resumed++
		}
	}
	if resumed == 0 {
		t.Errorf("no table partition resumed recovery from the local store (stored=true, from_offset>0): %v", recoveringLines(w))
	}
	if replayed >= ends {
		t.Errorf("recovery replayed %d changelog records, the whole changelogs (%d): the local store saved nothing", replayed, ends)
	}
	t.Logf("recovery replayed %d of %d changelog records; %d table partitions resumed from the store", replayed, ends, resumed)
}

// A worker killed after it committed everything it processed restarts from
// its local store, with nothing to replay, also when it processed little.
// (Pebble keeps unsynced writes in its own buffer until a 32 KiB block of
// its log fills, so with unsynced store batches a killed worker used to
// lose every checkpoint of a quiet period and recover from offset 0.)
func TestCrashKeepsStoreCheckpointsUnderLightLoad(t *testing.T) {
	const views, pages = 100, 10
	b := startBroker(t)
	w := startWorker(t, "worker-1", workerEnv(filepath.Join(t.TempDir(), "data"), dayWindows, map[string]string{
		"KAFKA_BROKERS": b.addr, "PAGE_VIEWS_TOPIC": b.topic, "KAFKA_GROUP": b.group,
		"KAFKA_SESSION_TIMEOUT": "6s",
	}))
	w.WaitReady(t, 60*time.Second)
	w.SendViews(t, viewsOver(views, pages), 8)

	// Every view is committed, so the store batch holding it and its
	// changelog offset was written before.
	committed := committedViews(t, b)
	deadline := time.Now().Add(60 * time.Second)
	for committed() < views {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not commit %d source records within a minute", views)
		}
		time.Sleep(harness.PollInterval)
	}
	w.Kill(t)

	w2 := w.Restart(t, "worker-2")
	w2.WaitReady(t, 90*time.Second)
	for k, l := range recoveringLines(w2) {
		if l.EndOffset > 0 && (!l.Stored || l.Records != 0) {
			t.Errorf("%s: recovery replays %d records from offset %d (stored=%v) up to %d; everything was committed before the kill, want nothing to replay",
				k, l.Records, l.FromOffset, l.Stored, l.EndOffset)
		}
	}
	w2.WaitReport(t, 60*time.Second, fmt.Sprintf("%d views", views), func(r pageview.Report) bool { return r.Count == views })
}

// corruption damages the Pebble files in a stopped worker's state directory.
type corruption struct {
	name  string
	apply func(t testing.TB, stateDir string)
}

// truncateHalf cuts every file matching pattern to half its size.
func truncateHalf(t testing.TB, stateDir, pattern string) {
	t.Helper()
	for _, f := range mustGlob(t, stateDir, pattern) {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, fi.Size()/2); err != nil {
			t.Fatal(err)
		}
	}
}

// garble overwrites every byte of every file matching pattern with random
// bytes, keeping the size.
func garble(t testing.TB, stateDir, pattern string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, f := range mustGlob(t, stateDir, pattern) {
		old, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, len(old))
		for i := range junk {
			junk[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(f, junk, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// flipMiddle inverts 64 bytes a quarter into every file matching pattern,
// inside its data blocks, so only checksums can tell.
func flipMiddle(t testing.TB, stateDir, pattern string) {
	t.Helper()
	for _, f := range mustGlob(t, stateDir, pattern) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		at := len(b) / 4
		for i := at; i < at+64 && i < len(b); i++ {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// mustGlob returns the files matching pattern in dir and fails when there
// are none: a corruption test that damages nothing proves nothing.
func mustGlob(t testing.TB, dir, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("no %s in %s to corrupt; it holds %v", pattern, dir, names)
	}
	return files
}

// A corrupt local store is noticed at start, wiped and rebuilt from the
// changelogs, and the worker reports the same tables as before.
func TestCorruptLocalStoreIsRebuilt(t *testing.T) {
	const views, pages = 200, 20
	b := startBroker(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	stateDir := filepath.Join(dataDir, "state")
	w := startWorker(t, "worker-0", workerEnv(dataDir, dayWindows, b.env()))
	w.WaitReady(t, 60*time.Second)

	windows := windowsAt(time.Now(), daySize)
	w.SendViews(t, viewsOver(views, pages), 8)
	before := w.WaitReport(t, 60*time.Second, fmt.Sprintf("%d views", views), func(r pageview.Report) bool {
		return r.Count == views && !r.Stale
	})
	requireEvenReport(t, before, views, pages, sameWindows(t, windows, daySize))

	for i, c := range []corruption{
		{"every *.sst and MANIFEST-* garbled, *.sst truncated", func(t testing.TB, dir string) {
			garble(t, dir, "*.sst")
			truncateHalf(t, dir, "*.sst")
			garble(t, dir, "MANIFEST-*")
		}},
		{"every *.sst truncated, MANIFEST-* intact", func(t testing.TB, dir string) {
			truncateHalf(t, dir, "*.sst")
		}},
		{"bytes inside every *.sst flipped, sizes and MANIFEST-* intact", func(t testing.TB, dir string) {
			flipMiddle(t, dir, "*.sst")
		}},
	} {
		w.Stop(t)
		c.apply(t, stateDir)
		t.Logf("corrupted the store: %s", c.name)

		w = w.Restart(t, fmt.Sprintf("worker-%d", i+1))
		wiped := w.WaitEntry(t, 60*time.Second, "local store is corrupt; wiping it and rebuilding every partition from the changelogs")
		if wiped.Str("level") != "WARN" || wiped.Str("error") == "" {
			t.Errorf("%s: corrupt store logged at level %q with error %q, want WARN and the cause", c.name, wiped.Str("level"), wiped.Str("error"))
		}
		w.WaitEntry(t, 60*time.Second, "local store was rebuilt empty; every partition recovers from offset 0")
		w.WaitReady(t, 60*time.Second)
		for k, l := range recoveringLines(w) {
			if l.Stored {
				t.Errorf("%s: %s recovered from a stored checkpoint (offset %d) of a store that was wiped", c.name, k, l.FromOffset)
			}
		}
		compareReports(t, before, w.Report(t), sameWindows(t, windows, daySize))
	}
}
