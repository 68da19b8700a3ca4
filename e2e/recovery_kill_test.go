package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/pageview"
)

// killPages is how many pages the changelogs of the killed recovery hold:
// one window and one total each, so each table partition replays that many
// records, several of recovery's batches.
const killPages = 100_000

// A worker rebuilding an empty DATA_DIR writes long replays as table files
// its store ingests, each followed by its synced checkpoint. One killed
// (SIGKILL) as soon as three files are in the store (so one table has
// checkpointed its first file before writing its second), restarted on the
// same DATA_DIR, must resume after a checkpoint, and end with every page's
// counts exactly as the changelogs hold them: a file in without its
// checkpoint is replayed again, and a checkpoint never gets ahead of its
// file.
func TestRecoveryKilledWhileLoadingResumes(t *testing.T) {
	b := startBroker(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	// Without standby copies: the restart would otherwise fill its store
	// from a copy while the killed member's session runs out, and recover
	// nothing.
	env := workerEnv(dataDir, dayWindows, b.env(), map[string]string{"PARTITIONS": "1", "TABLE_STANDBY_REPLICAS": "0"})
	// The first start creates the topics; the changelogs are then filled
	// as a worker writes them.
	seed := startWorker(t, "seed", env)
	seed.WaitReady(t, 60*time.Second)
	seed.Stop(t)
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}
	windows := windowsAt(time.Now(), daySize)
	want := fillChangelogs(t, b, windows.now)

	killed := seed.Restart(t, "killed")
	eventuallyFiles(t, killed.Done(), filepath.Join(dataDir, "state"), 60*time.Second)
	killed.Kill(t)
	if n := len(killed.Entries("recovered")); n == 2 {
		t.Fatalf("both tables were recovered before the kill; the changelogs are too short to kill a load")
	}

	resumed := killed.Restart(t, "resumed")
	resumed.WaitReady(t, 120*time.Second)
	resumedAt := 0
	for k, l := range recoveringLines(resumed) {
		t.Logf("%s: the restart replayed from offset %d (stored %v) to %d", k, l.FromOffset, l.Stored, l.EndOffset)
		if l.Stored && l.FromOffset > 0 {
			resumedAt++
		}
	}
	if resumedAt == 0 {
		t.Error("no table resumed from a stored checkpoint: the checkpoints of the files loaded before the kill were lost")
	}
	local, err := resumed.TryLocal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stable := sameWindows(t, windows, daySize)
	if len(local.Pages) != len(want) {
		t.Errorf("%d pages after the restart, want %d", len(local.Pages), len(want))
	}
	bad := 0
	for page, w := range want {
		got := local.Pages[page]
		if !stable {
			got.Now, got.Back, w.Now, w.Back = 0, 0, 0, 0
		}
		if got != w && bad < 10 {
			bad++
			t.Errorf("%s: %+v after the restart, want %+v", page, got, w)
		}
	}
}

// fillChangelogs writes killPages pages into both changelogs in the
// worker's format (views: "page|window start ms" in the window starting at
// windowStart; totals: the page; values decimal) and returns what each
// page's counts then are.
func fillChangelogs(t *testing.T, b *broker, windowStart int64) map[string]pageview.Counts {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.Producer.Return.Successes = true
	cfg.Producer.Partitioner = sarama.NewManualPartitioner
	p, err := sarama.NewAsyncProducer([]string{b.addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string]pageview.Counts, killPages)
	acked := make(chan error, 1)
	go func() {
		var err error
		for range 2 * killPages {
			select {
			case <-p.Successes():
			case e := <-p.Errors():
				err = e
			}
		}
		acked <- err
	}()
	now := time.Now()
	start := strconv.FormatInt(windowStart, 10)
	for i := range killPages {
		page := "/load/" + strconv.Itoa(i)
		inWindow, total := 1+i%7, 10+i%1000
		p.Input() <- &sarama.ProducerMessage{Topic: b.group + "-views-changelog", Timestamp: now,
			Key: sarama.StringEncoder(page + "|" + start), Value: sarama.StringEncoder(strconv.Itoa(inWindow))}
		p.Input() <- &sarama.ProducerMessage{Topic: b.group + "-totals-changelog", Timestamp: now,
			Key: sarama.StringEncoder(page), Value: sarama.StringEncoder(strconv.Itoa(total))}
		want[page] = pageview.Counts{Now: int64(inWindow), Back: int64(inWindow), Count: int64(total)}
	}
	if err := <-acked; err != nil {
		t.Fatalf("filling the changelogs: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// eventuallyFiles waits until the store in dir holds three table files, and
// fails when the worker exits first or timeout passes.
func eventuallyFiles(t *testing.T, exited <-chan struct{}, dir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		entries, _ := os.ReadDir(dir)
		files := 0
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".sst") {
				files++
			}
		}
		if files >= 3 {
			return
		}
		select {
		case <-exited:
			t.Fatal("the worker exited before its store held three table files")
		case <-time.After(time.Millisecond):
		}
	}
	t.Fatalf("not three table files in %s within %s", dir, timeout)
}
