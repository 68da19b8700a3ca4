package app_test

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/sums"
)

// The runtime's guarantees held by real worker processes: the test binary
// runs the sums app as its worker (TestSumsWorkerProcess), configured by
// the environment like any worker, and the tests end it with SIGKILL, the
// way the OOM killer or a lost node ends one: nothing is flushed, nothing
// committed, the group is not left.

// workerProcessVar set to 1 makes the test binary the worker process.
const workerProcessVar = "SUMS_WORKER_PROCESS"

const (
	processPartitions = 4
	// processDeadline bounds every wait: generous, for a loaded machine; a
	// test that needs it is failing anyway.
	processDeadline = 60 * time.Second
)

var processGuarantees = []string{"at_least_once", "exactly_once"}

// TestSumsWorkerProcess is the worker process that the tests below start:
// the test binary run with SUMS_WORKER_PROCESS=1 and
// -test.run '^TestSumsWorkerProcess$'. It runs the sums app as its own
// main would, and exits as that main does.
func TestSumsWorkerProcess(t *testing.T) {
	if os.Getenv(workerProcessVar) != "1" {
		t.Skip("the worker process of the process tests, started by them")
	}
	// The test flags are not the worker's: every setting comes from the
	// environment, and the worker refuses arguments.
	os.Args = os.Args[:1]
	app.Main(sums.App(), "test")
	os.Exit(0)
}

// TestSumsKillNineLosesNothing: a worker process killed with SIGKILL
// while amounts flow (processed records whose changes and offsets it has
// not committed yet, more on their way) loses none of them. Its successor,
// on the same DATA_DIR or on an empty one (the changelogs only), serves
// totals of at least every amount sent under at_least_once and of exactly
// every amount sent under exactly_once, and goes on counting.
func TestSumsKillNineLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes against a broker")
	}
	brokers := startProcessBroker(t)
	for _, guarantee := range processGuarantees {
		t.Run(guarantee, func(t *testing.T) {
			t.Parallel()
			for _, restart := range []string{"same_data_dir", "empty_data_dir"} {
				t.Run(restart, func(t *testing.T) {
					t.Parallel()
					vars := processVars(brokers, "kill-"+guarantee+"-"+restart, guarantee)
					amounts := newAmounts(t, brokers, vars["AMOUNTS_TOPIC"])
					dir := t.TempDir()
					first := startWorkerProcess(t, "first", with(vars, "DATA_DIR", dir))
					first.waitReady(t)
					amounts.send(t, 300)
					waitComplete(t, first, guarantee, amounts.total())
					// Committed once: the store in dir holds every partition.
					waitCommitted(t, brokers, vars["KAFKA_GROUP"], vars["AMOUNTS_TOPIC"])

					killWhileFlowing(t, first, amounts, vars["KAFKA_GROUP"])
					if restart == "empty_data_dir" {
						dir = t.TempDir()
					}
					second := startWorkerProcess(t, "second", with(vars, "DATA_DIR", dir))
					second.waitReady(t)
					waitComplete(t, second, guarantee, amounts.total())

					amounts.send(t, 100)
					waitComplete(t, second, guarantee, amounts.total())

					// It started from what restart names: the store the
					// killed worker left, or nothing but the changelogs.
					recovered := map[tablePartition]bool{}
					for _, e := range second.stdout.entries(0, "recovering") {
						p, _ := e.num("partition")
						tbl, _ := e["table"].(string)
						recovered[tablePartition{tbl, int32(p)}] = true
						from, _ := e.num("from_offset")
						if stored := e["stored"] == true; stored != (restart == "same_data_dir") || !stored && from != 0 {
							t.Errorf("second worker on the %s recovered %s/%d from offset %d with a stored copy %v", restart, tbl, p, from, stored)
						}
					}
					if len(recovered) != 2*processPartitions {
						t.Errorf("second worker recovered %d table partitions, want %d: %v", len(recovered), 2*processPartitions, recovered)
					}
				})
			}
		})
	}
}

// TestSumsReadyOnlyAfterRecovery: a worker process killed with SIGKILL
// once everything it processed is committed (its changelogs hold every
// total), and a successor on an empty DATA_DIR, watched from its start by
// concurrent readers of /ready/ and /sums/. Every answer of /sums/ asked
// for after /ready/ first said ready is a total, and complete: exactly the
// sum sent under exactly_once, at least it under at_least_once; never a
// total still being restored, nor a refusal. Before ready the page may
// refuse, but every total it gives is complete too.
func TestSumsReadyOnlyAfterRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes against a broker")
	}
	brokers := startProcessBroker(t)
	for _, guarantee := range processGuarantees {
		t.Run(guarantee, func(t *testing.T) {
			t.Parallel()
			vars := processVars(brokers, "ready-"+guarantee, guarantee)
			amounts := newAmounts(t, brokers, vars["AMOUNTS_TOPIC"])
			first := startWorkerProcess(t, "first", with(vars, "DATA_DIR", t.TempDir()))
			first.waitReady(t)
			amounts.send(t, 400)
			want := amounts.total()
			waitComplete(t, first, guarantee, want)
			// Records the killed worker processed but never committed are
			// processed again after its successor is ready, by design:
			// ready means restored, not caught up with the topic. Killing
			// it once all is committed makes the restored totals the full
			// sums, so that any lower answer after ready is a wrong one.
			waitCommitted(t, brokers, vars["KAFKA_GROUP"], vars["AMOUNTS_TOPIC"])
			first.killNine(t)

			second := startWorkerProcess(t, "second", with(vars, "DATA_DIR", t.TempDir()))
			ready, readyErr := second.pollReady()

			keys := slices.Sorted(maps.Keys(want))
			var before, after int
			beforeCodes := map[int]int{}
			var wrong []string
			deadline := time.Now().Add(processDeadline)
			for i := 0; after < 3*len(keys); i++ {
				if time.Now().After(deadline) || second.hasExited() {
					t.Fatalf("%d answers of /sums/ after ready within %s (%d before); /ready/ said ready: %v", after, processDeadline, before, ready.Load())
				}
				key := keys[i%len(keys)]
				asked := ready.Load() // /ready/ said ready before this question
				code, total := second.sum(key)
				when := "after ready"
				if asked {
					after++
				} else {
					when = "before ready"
					before++
					beforeCodes[code]++
					time.Sleep(2 * time.Millisecond)
				}
				// Before ready, the page refuses the keys of partitions
				// still restoring; what it answers, it answers complete.
				switch {
				case code != http.StatusOK && asked:
					wrong = append(wrong, fmt.Sprintf("%s: %s answered %d", when, key, code))
				case code != http.StatusOK:
				case total < want[key]:
					wrong = append(wrong, fmt.Sprintf("%s: %s = %d, below the %d sent", when, key, total, want[key]))
				case guarantee == "exactly_once" && total != want[key]:
					wrong = append(wrong, fmt.Sprintf("%s: %s = %d, not the %d sent", when, key, total, want[key]))
				}
			}
			if err := <-readyErr; err != nil {
				t.Fatal(err)
			}
			t.Logf("%d answers of /sums/ before ready (by status, 0 for no answer: %v), %d after", before, beforeCodes, after)
			if len(wrong) > 0 {
				t.Errorf("%d wrong answers of /sums/:\n%s", len(wrong), strings.Join(wrong, "\n"))
			}
		})
	}
}

// pollReady asks /ready/ until it says ready, which the flag then tells;
// the channel says when, or that it did not within processDeadline.
func (p *workerProcess) pollReady() (*atomic.Bool, <-chan error) {
	ready, done := &atomic.Bool{}, make(chan error, 1)
	go func() {
		deadline := time.Now().Add(processDeadline)
		for time.Now().Before(deadline) {
			if code, _ := p.get("/ready/"); code == http.StatusOK {
				ready.Store(true)
				done <- nil
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		done <- fmt.Errorf("not ready within %s", processDeadline)
	}()
	return ready, done
}

// TestSumsStandbyFailover: two worker processes of one group, each keeping
// a standby copy of the other's partitions (TABLE_STANDBY_REPLICAS=1). One
// is killed with SIGKILL while amounts flow; the survivor takes over its
// partitions and serves every total complete (exactly the sums sent under
// exactly_once, at least them under at_least_once), and it restored each
// partition it took over from its standby copy, replaying only the tail of
// the changelogs that the copy had not applied yet, not the whole of them.
func TestSumsStandbyFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes against a broker")
	}
	brokers := startProcessBroker(t)
	for _, guarantee := range processGuarantees {
		t.Run(guarantee, func(t *testing.T) {
			t.Parallel()
			vars := with(processVars(brokers, "standby-"+guarantee, guarantee),
				"TABLE_STANDBY_REPLICAS", "1", "LOG_LEVEL", "debug") // debug: "standby copy committed"
			amounts := newAmounts(t, brokers, vars["AMOUNTS_TOPIC"])
			a := startWorkerProcess(t, "a", with(vars, "DATA_DIR", t.TempDir()))
			b := startWorkerProcess(t, "b", with(vars, "DATA_DIR", t.TempDir()))
			a.peers, b.peers = []*workerProcess{b}, []*workerProcess{a}
			a.waitReady(t)
			b.waitReady(t)

			eventually(t, "a and b share the partitions", func() (bool, string) {
				ha, hb := a.held(), b.held()
				all := append(slices.Clone(ha), hb...)
				slices.Sort(all)
				return len(ha) > 0 && len(hb) > 0 && slices.Equal(slices.Compact(all), allPartitions()) && len(all) == processPartitions,
					fmt.Sprintf("a holds %v, b holds %v", ha, hb)
			}, a, b)
			// In rounds, each committed: the changelogs grow by a change of
			// every key per round, so their tail is a small part of them.
			for range 6 {
				amounts.send(t, 60)
				waitCommitted(t, brokers, vars["KAFKA_GROUP"], vars["AMOUNTS_TOPIC"])
			}
			waitComplete(t, a, guarantee, amounts.total())
			waitComplete(t, b, guarantee, amounts.total())

			// b's copies of a's partitions hold records: a copy that started
			// on an empty changelog says nothing yet.
			tables := []string{"sums", "totals"}
			eventually(t, "b's standby copies of a's partitions hold records", func() (bool, string) {
				copied := b.standbyCopied()
				var lacking []string
				for _, p := range a.held() {
					for _, tbl := range tables {
						if _, ok := copied[tablePartition{tbl, p}]; !ok {
							lacking = append(lacking, fmt.Sprintf("%s/%d", tbl, p))
						}
					}
				}
				return len(lacking) == 0, fmt.Sprintf("no copy committed of %v", lacking)
			}, a, b)

			mark := b.stdout.mark()
			killWhileFlowing(t, a, amounts, vars["KAFKA_GROUP"])
			// a logged nothing after the kill: what it held is final.
			taken := a.held()
			copied := b.standbyCopied() // at least what b's copies held at the kill

			eventually(t, "b holds every partition", func() (bool, string) {
				return slices.Equal(b.held(), allPartitions()), fmt.Sprintf("b holds %v", b.held())
			}, b)
			waitComplete(t, b, guarantee, amounts.total())
			checkTailReplayed(t, b, mark, taken, copied, tables)
		})
	}
}

// TestSumsFailoverGoesToTheStandbyCopy: three worker processes with one
// standby copy of each partition (TABLE_STANDBY_REPLICAS=1), placed by the
// group's standby-aware strategy. The owner of the most partitions is
// killed with SIGKILL while amounts flow: each partition it owned goes to
// the worker that kept its copy, which replays under 1% of the changelogs,
// and every total is exact.
func TestSumsFailoverGoesToTheStandbyCopy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes against a broker")
	}
	brokers := startProcessBroker(t)
	guarantee := "exactly_once"
	vars := with(processVars(brokers, "failover", guarantee), "TABLE_STANDBY_REPLICAS", "1", "LOG_LEVEL", "debug")
	amounts := newAmounts(t, brokers, vars["AMOUNTS_TOPIC"])
	workers := []*workerProcess{
		startWorkerProcess(t, "a", with(vars, "DATA_DIR", t.TempDir())),
		startWorkerProcess(t, "b", with(vars, "DATA_DIR", t.TempDir())),
		startWorkerProcess(t, "c", with(vars, "DATA_DIR", t.TempDir())),
	}
	for _, w := range workers {
		w.peers = slices.DeleteFunc(slices.Clone(workers), func(o *workerProcess) bool { return o == w })
		w.waitReady(t)
	}
	eventually(t, "the three share the partitions", func() (bool, string) {
		var all []int32
		var held []string
		for _, w := range workers {
			all = append(all, w.held()...)
			held = append(held, fmt.Sprintf("%s: %v", w.name, w.held()))
		}
		slices.Sort(all)
		return slices.Equal(all, allPartitions()) && !slices.ContainsFunc(workers, func(w *workerProcess) bool { return len(w.held()) == 0 }),
			strings.Join(held, ", ")
	}, workers...)
	// Many keys, so the changelogs are long next to the tail a copy lags by.
	amounts.bulk(t, 20_000)
	amounts.send(t, 60)
	waitCommitted(t, brokers, vars["KAFKA_GROUP"], vars["AMOUNTS_TOPIC"])
	victim := slices.MaxFunc(workers, func(x, y *workerProcess) int { return cmp.Compare(len(x.held()), len(y.held())) })
	taken := victim.held()
	holders := map[int32]*workerProcess{}
	eventually(t, "every partition of "+victim.name+" has a caught-up copy", func() (bool, string) {
		for _, p := range taken {
			for _, w := range workers {
				if w != victim && w.copyCaughtUp(p) {
					holders[p] = w
				}
			}
		}
		return len(holders) == len(taken), fmt.Sprintf("copies of %v caught up: %d", taken, len(holders))
	}, workers...)
	marks := map[*workerProcess]int{}
	for _, w := range workers {
		marks[w] = w.stdout.mark()
	}
	killWhileFlowing(t, victim, amounts, vars["KAFKA_GROUP"])
	survivors := slices.DeleteFunc(slices.Clone(workers), func(w *workerProcess) bool { return w == victim })
	for _, p := range taken {
		holder := holders[p]
		eventually(t, fmt.Sprintf("%s, which kept the copy of partition %d, holds it", holder.name, p), func() (bool, string) {
			return slices.Contains(holder.held(), p), fmt.Sprintf("%s holds %v", holder.name, holder.held())
		}, survivors...)
		checkReplayedFromCopy(t, holder, marks[holder], p)
	}
	for _, w := range survivors {
		waitComplete(t, w, guarantee, amounts.total())
	}
}

// copyCaughtUp tells whether w runs a standby copy of partition p whose
// tables have both caught up with their changelogs.
func (p *workerProcess) copyCaughtUp(partition int32) bool {
	running := false
	for _, e := range p.stdout.entries(0, "standby copy started", "standby copy stopped") {
		if n, ok := e.num("partition"); ok && int32(n) == partition {
			running = e["msg"] == "standby copy started"
		}
	}
	tables := map[string]bool{}
	for _, e := range p.stdout.entries(0, "standby copy caught up") {
		if n, ok := e.num("partition"); ok && int32(n) == partition {
			tables[fmt.Sprint(e["table"])] = true
		}
	}
	return running && len(tables) == 2
}

// checkReplayedFromCopy holds w's recovery of partition p, logged after
// mark: from its standby copy, replaying under 1% of the changelogs.
func checkReplayedFromCopy(t *testing.T, w *workerProcess, mark int, p int32) {
	t.Helper()
	var resumed logEntry
	eventually(t, fmt.Sprintf("%s resumes partition %d", w.name, p), func() (bool, string) {
		for _, e := range w.stdout.entries(mark, "partition resumed") {
			if n, ok := e.num("partition"); ok && int32(n) == p {
				resumed = e
			}
		}
		return resumed != nil, "not yet"
	}, w)
	var end int64
	for _, e := range w.stdout.entries(mark, "recovering") {
		if n, ok := e.num("partition"); ok && int32(n) == p {
			off, _ := e.num("end_offset")
			end += off
		}
	}
	replayed, _ := resumed.num("replayed")
	t.Logf("%s took partition %d over from %v, replaying %d of the changelogs' %d records", w.name, p, resumed["copy"], replayed, end)
	if resumed["copy"] != "standby" || replayed*100 >= end {
		t.Errorf("%s recovered partition %d from %v replaying %d of %d changelog records; want from its standby copy, under 1%%", w.name, p, resumed["copy"], replayed, end)
	}
}

// checkTailReplayed holds b's recoveries, logged after mark, of the table
// partitions it took over to its standby copies: from the copy, past what
// the copy had applied (copied), and not the whole changelog.
func checkTailReplayed(t *testing.T, b *workerProcess, mark int, taken []int32, copied map[tablePartition]int64, tables []string) {
	t.Helper()
	recovering := map[tablePartition]logEntry{}
	for _, e := range b.stdout.entries(mark, "recovering") {
		p, _ := e.num("partition")
		tbl, _ := e["table"].(string)
		recovering[tablePartition{tbl, int32(p)}] = e
	}
	for _, p := range taken {
		for _, tbl := range tables {
			tp := tablePartition{tbl, p}
			e, ok := recovering[tp]
			if !ok {
				t.Errorf("b took over %s/%d without recovering it", tbl, p)
				continue
			}
			from, _ := e.num("from_offset")
			end, _ := e.num("end_offset")
			records, _ := e.num("records")
			switch {
			case e["stored"] != true:
				t.Errorf("%s/%d recovered without its standby copy: %v", tbl, p, e)
			case from <= copied[tp]:
				t.Errorf("%s/%d replayed from offset %d, which its standby copy had applied (up to %d): %v", tbl, p, from, copied[tp], e)
			case from <= 0 || records >= end:
				t.Errorf("%s/%d replayed the whole changelog: %v", tbl, p, e)
			default:
				t.Logf("%s/%d: replayed %d of the changelog's %d offsets, from %d", tbl, p, records, end, from)
			}
		}
	}
}

// startProcessBroker starts a broker in the test process; the workers
// reach it over TCP.
func startProcessBroker(t *testing.T) []string {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

// processVars are the settings of a worker process of the group and topic
// named after name, but DATA_DIR.
func processVars(brokers []string, name, guarantee string) map[string]string {
	return map[string]string{
		"KAFKA_BROKERS":         strings.Join(brokers, ","),
		"KAFKA_GROUP":           "sums-" + name,
		"AMOUNTS_TOPIC":         "amounts-" + name,
		"PARTITIONS":            fmt.Sprint(processPartitions),
		"PROCESSING_GUARANTEE":  guarantee,
		"WEB_ADDR":              "127.0.0.1:0",
		"COMMIT_INTERVAL":       "500ms",
		"KAFKA_SESSION_TIMEOUT": "6s", // the broker's least: a killed worker leaves the group after it
		"LIVECHECK_INTERVAL":    "0",
		"LOG_FORMAT":            "json",
		"LOG_LEVEL":             "info",
		// No standby copies unless a test asks: a successor must then
		// rebuild from the changelogs or the store it is given, as the
		// tests hold it to (the standby tests set 1).
		"TABLE_STANDBY_REPLICAS": "0",
		// Nothing of the machine's own settings reaches the worker.
		"KAFKA_INSTANCE_ID": "", "ADVERTISED_URL": "",
		"DD_AGENT_HOST": "", "DD_DOGSTATSD_URL": "", "OTEL_TRACES_EXPORTER": "",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
	}
}

// with is a copy of vars with the pairs kv (name, value, ...) set.
func with(vars map[string]string, kv ...string) map[string]string {
	out := maps.Clone(vars)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func allPartitions() []int32 {
	ps := make([]int32, processPartitions)
	for i := range ps {
		ps[i] = int32(i)
	}
	return ps
}

// workerProcess is a running worker process: the test binary as the sums
// worker. Its HTTP pages are read through the embedded sumsWorker.
type workerProcess struct {
	*sumsWorker
	name           string
	peers          []*workerProcess // of the same group, whose pages sum follows redirects to
	cmd            *exec.Cmd
	stdout, stderr *output
	exited         chan struct{} // closed once the process is reaped
}

// startWorkerProcess starts a worker process with the settings vars and
// returns once it listens. It is killed, if still running, when the test
// ends; a race the race detector found in it fails the test.
func startWorkerProcess(t *testing.T, name string, vars map[string]string) *workerProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// -test.timeout: a process the test failed to end ends itself.
	cmd := exec.Command(exe, "-test.run=^TestSumsWorkerProcess$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), workerProcessVar+"=1")
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v) // the last of a name wins
	}
	p := &workerProcess{sumsWorker: &sumsWorker{}, name: name, cmd: cmd, stdout: &output{}, stderr: &output{}, exited: make(chan struct{})}
	// exec copies both streams as they come, so the process never blocks
	// on a full pipe.
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if strings.Contains(p.stderr.text(), "WARNING: DATA RACE") {
			t.Errorf("worker %s: the race detector found a race:\n%s", name, p.stderr.text())
		}
		if t.Failed() {
			t.Logf("worker %s (%s), the end of its log:\n%s\nstderr:\n%s", name, cmd.ProcessState, p.stdout.tail(60), p.stderr.text())
		}
	})
	// WEB_ADDR has port 0: the worker logs the port it got.
	deadline := time.Now().Add(processDeadline)
	for {
		if es := p.stdout.entries(0, "http listening"); len(es) > 0 {
			addr, _ := es[0]["addr"].(string)
			p.base = "http://" + addr
			return p
		}
		if p.hasExited() {
			t.Fatalf("worker %s exited before listening: %s", name, cmd.ProcessState)
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s not listening within %s", name, processDeadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *workerProcess) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// killNine sends SIGKILL and waits for the process to end. It fails the
// test unless the process was running until then.
func (p *workerProcess) killNine(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 worker %s: %v", p.name, err)
	}
	<-p.exited
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("worker %s ended by itself (%s) before the kill", p.name, p.cmd.ProcessState)
	}
}

// sum asks the worker for key's total. A redirect to the owner of the
// key's partition is followed when the owner is a running peer; one to
// anywhere else is the answer (a worker that was killed: its port may be
// another test's worker's by now). The code is 0 when nobody answered.
func (p *workerProcess) sum(key string) (int, int64) {
	code, body, location := fetch(p.base + "/sums/?key=" + key)
	if code == http.StatusTemporaryRedirect {
		for _, peer := range p.peers {
			if !peer.hasExited() && strings.HasPrefix(location, peer.base+"/") {
				code, body, _ = fetch(location)
			}
		}
	}
	var a struct{ Total int64 }
	if code == http.StatusOK && json.Unmarshal(body, &a) != nil {
		return -1, 0
	}
	return code, a.Total
}

var noRedirects = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// fetch GETs url without following redirects: the status (0 when nobody
// answered), the body and the Location.
func fetch(url string) (int, []byte, string) {
	resp, err := noRedirects.Get(url)
	if err != nil {
		return 0, nil, ""
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, ""
	}
	return resp.StatusCode, body, resp.Header.Get("Location")
}

// read asks the worker for every key's total: the totals it answered, and
// the other answers.
func (p *workerProcess) read(keys []string) (map[string]int64, []string) {
	got := map[string]int64{}
	var others []string
	for _, key := range keys {
		code, total := p.sum(key)
		if code != http.StatusOK {
			others = append(others, fmt.Sprintf("%s answered %d", key, code))
			continue
		}
		got[key] = total
	}
	return got, others
}

// held are the partitions the worker's log says it holds.
func (p *workerProcess) held() []int32 {
	held := map[int32]bool{}
	for _, e := range p.stdout.entries(0, "partition assigned", "partition released") {
		if n, ok := e.num("partition"); ok {
			held[int32(n)] = e["msg"] == "partition assigned"
		}
	}
	var ps []int32
	for n, ok := range held {
		if ok {
			ps = append(ps, n)
		}
	}
	slices.Sort(ps)
	return ps
}

type tablePartition struct {
	table     string
	partition int32
}

// standbyCopied is the highest changelog offset each standby copy of the
// worker has committed to its store, by its log.
func (p *workerProcess) standbyCopied() map[tablePartition]int64 {
	copied := map[tablePartition]int64{}
	for _, e := range p.stdout.entries(0, "standby copy committed") {
		n, ok1 := e.num("partition")
		off, ok2 := e.num("offset")
		tbl, _ := e["table"].(string)
		if !ok1 || !ok2 || off < 0 {
			continue
		}
		tp := tablePartition{tbl, int32(n)}
		if last, ok := copied[tp]; !ok || off > last {
			copied[tp] = off
		}
	}
	return copied
}

// eventually waits until cond holds, failing the test with what cond last
// said after the deadline or once one of the workers exited.
func eventually(t *testing.T, what string, cond func() (bool, string), workers ...*workerProcess) {
	t.Helper()
	deadline := time.Now().Add(processDeadline)
	for {
		ok, state := cond()
		if ok {
			return
		}
		for _, w := range workers {
			if w.hasExited() {
				t.Fatalf("%s: worker %s exited (%s); %s", what, w.name, w.cmd.ProcessState, state)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; %s", what, processDeadline, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitComplete waits until the worker answers every key's total complete:
// at least every amount sent under at_least_once, where a record processed
// again after a kill counts twice, and exactly it under exactly_once. The
// amounts are positive, so under exactly_once a total above what was sent
// is an amount counted twice, and fails at once.
func waitComplete(t *testing.T, w *workerProcess, guarantee string, want map[string]int64) {
	t.Helper()
	keys := slices.Sorted(maps.Keys(want))
	eventually(t, "worker "+w.name+" answers the totals sent", func() (bool, string) {
		got, others := w.read(keys)
		var short []string
		for _, key := range keys {
			v, ok := got[key]
			switch {
			case !ok:
			case guarantee == "exactly_once" && v > want[key]:
				t.Fatalf("worker %s: total of %s = %d, above the %d sent: counted twice under exactly_once", w.name, key, v, want[key])
			case v < want[key]:
				short = append(short, fmt.Sprintf("%s = %d of %d", key, v, want[key]))
			}
		}
		return len(short) == 0 && len(others) == 0, fmt.Sprintf("short: %v; not answered: %v", short, others)
	}, w)
}

// waitCommitted waits until the group has committed the offset of every
// record of topic: the worker has nothing left that only it holds.
func waitCommitted(t *testing.T, brokers []string, group, topic string) {
	t.Helper()
	eventually(t, "every record committed", func() (bool, string) {
		committed, ends, err := committedOffsets(brokers, group, topic)
		if err != nil {
			return false, err.Error()
		}
		var behind []string
		for p, end := range ends {
			if committed[p] < end {
				behind = append(behind, fmt.Sprintf("%d at %d of %d", p, committed[p], end))
			}
		}
		return len(behind) == 0, fmt.Sprintf("partitions behind: %v", behind)
	})
}

// committedOffsets are the group's committed offset (-1: none) and the end
// offset of each partition of topic.
func committedOffsets(brokers []string, group, topic string) (committed, ends map[int32]int64, err error) {
	client, err := sarama.NewClient(brokers, sarama.NewConfig())
	if err != nil {
		return nil, nil, err
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return nil, nil, err
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		return nil, nil, err
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
	if err != nil {
		return nil, nil, err
	}
	committed, ends = map[int32]int64{}, map[int32]int64{}
	for _, p := range partitions {
		if ends[p], err = client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return nil, nil, err
		}
		committed[p] = -1
		if b := resp.GetBlock(topic, p); b != nil {
			committed[p] = b.Offset
		}
	}
	return committed, ends, nil
}

// killWhileFlowing sends amounts without pause and kills the worker with
// SIGKILL as soon as its totals show it processing them: it dies holding
// processed records whose changes and offsets are not committed yet
// (COMMIT_INTERVAL), with more records on their way. More come while no
// worker runs. It logs how much was processed and not committed at the
// kill, as far as the worker's answers and the group's offsets tell.
func killWhileFlowing(t *testing.T, w *workerProcess, amounts *amounts, group string) {
	t.Helper()
	before, _ := w.read(amounts.keys)
	var seen map[string]int64
	stop := amounts.flow()
	defer stop()
	eventually(t, "worker "+w.name+" processes the flowing amounts", func() (bool, string) {
		var others []string
		seen, others = w.read(amounts.keys)
		// Some dozens of records into the flow.
		return sumOf(seen) >= sumOf(before)+200, fmt.Sprintf("sum of totals %d from %d, not answered: %v", sumOf(seen), sumOf(before), others)
	}, w)
	w.killNine(t)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if committed, _, err := committedOffsets(amounts.brokers, group, amounts.topic); err == nil {
		t.Logf("killed %s having processed amounts of at least %d, of which %d committed; %d sent so far",
			w.name, sumOf(seen), amounts.sumBelow(committed), sumOf(amounts.total()))
	}
	amounts.send(t, 50)
}

func sumOf(totals map[string]int64) int64 {
	var s int64
	for _, v := range totals {
		s += v
	}
	return s
}

// amounts produces records of positive amounts to a topic and keeps the
// sum sent per key.
type amounts struct {
	brokers []string
	topic   string
	keys    []string
	p       sarama.SyncProducer

	mu      sync.Mutex
	n       int
	sent    map[string]int64
	records []sentRecord
}

type sentRecord struct {
	partition int32
	offset    int64
	amount    int64
}

func newAmounts(t *testing.T, brokers []string, topic string) *amounts {
	t.Helper()
	pc := sarama.NewConfig()
	pc.Producer.Return.Successes = true
	pc.Producer.Partitioner = sarama.NewHashPartitioner // the worker's
	p, err := sarama.NewSyncProducer(brokers, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	// Keys on every partition, so that every partition has records.
	hash := sarama.NewHashPartitioner(topic)
	on := map[int32]bool{}
	var keys []string
	for i := range 3 * processPartitions {
		key := fmt.Sprintf("acct-%d", i)
		part, err := hash.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, processPartitions)
		if err != nil {
			t.Fatal(err)
		}
		on[part] = true
		keys = append(keys, key)
	}
	if len(on) != processPartitions {
		t.Fatalf("the keys %v fall on %d of the %d partitions", keys, len(on), processPartitions)
	}
	return &amounts{brokers: brokers, topic: topic, keys: keys, p: p, sent: map[string]int64{}}
}

// sendOne sends the next record: the keys in turn, amounts 1 to 9.
func (a *amounts) sendOne() error {
	a.mu.Lock()
	i := a.n
	a.n++
	a.mu.Unlock()
	key, amount := a.keys[i%len(a.keys)], int64(1+i%9)
	partition, offset, err := a.p.SendMessage(&sarama.ProducerMessage{Topic: a.topic, Key: sarama.StringEncoder(key),
		Value: sarama.StringEncoder(fmt.Sprint(amount))})
	if err != nil {
		return fmt.Errorf("send %s=%d: %w", key, amount, err)
	}
	a.mu.Lock()
	a.sent[key] += amount
	a.records = append(a.records, sentRecord{partition, offset, amount})
	a.mu.Unlock()
	return nil
}

// sumBelow is the sum of the amounts sent below the offsets.
func (a *amounts) sumBelow(offsets map[int32]int64) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var s int64
	for _, r := range a.records {
		if r.offset < offsets[r.partition] {
			s += r.amount
		}
	}
	return s
}

// bulk sends n records of amount 1, each of its own key (not one of keys:
// they lengthen the changelogs, and the totals checked leave them out).
func (a *amounts) bulk(t *testing.T, n int) {
	t.Helper()
	const batch = 1000
	for i := 0; i < n; i += batch {
		var ms []*sarama.ProducerMessage
		for j := i; j < min(i+batch, n); j++ {
			ms = append(ms, &sarama.ProducerMessage{Topic: a.topic, Key: sarama.StringEncoder(fmt.Sprintf("bulk-%d", j)), Value: sarama.StringEncoder("1")})
		}
		if err := a.p.SendMessages(ms); err != nil {
			t.Fatal(err)
		}
	}
}

func (a *amounts) send(t *testing.T, n int) {
	t.Helper()
	for range n {
		if err := a.sendOne(); err != nil {
			t.Fatal(err)
		}
	}
}

// flow sends records one after the other until stop, which returns the
// first failed send.
func (a *amounts) flow() (stop func() error) {
	quit := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-quit:
				done <- nil
				return
			default:
			}
			if err := a.sendOne(); err != nil {
				done <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			close(quit)
			err = <-done
		})
		return err
	}
}

// total is the sum sent per key so far.
func (a *amounts) total() map[string]int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.sent)
}

// output keeps what a worker process writes, line by line; the JSON lines
// of its log also as entries.
type output struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	logs    []logEntry
}

type logEntry map[string]any

func (e logEntry) num(k string) (int64, bool) {
	f, ok := e[k].(float64)
	return int64(f), ok
}

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = append(o.partial, b...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		line := string(o.partial[:i])
		o.partial = o.partial[i+1:]
		o.lines = append(o.lines, line)
		var e logEntry
		if json.Unmarshal([]byte(line), &e) == nil {
			o.logs = append(o.logs, e)
		}
	}
	return len(b), nil
}

// mark is where the log ends now, for entries logged after it.
func (o *output) mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.logs)
}

// entries are the log entries from mark on with one of the messages.
func (o *output) entries(from int, msgs ...string) []logEntry {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []logEntry
	for _, e := range o.logs[from:] {
		if m, _ := e["msg"].(string); slices.Contains(msgs, m) {
			out = append(out, e)
		}
	}
	return out
}

func (o *output) text() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n") + string(o.partial)
}

func (o *output) tail(n int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines[max(len(o.lines)-n, 0):], "\n")
}
