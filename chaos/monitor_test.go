package chaos_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gofaust/pageviews/test/harness"
)

const (
	// monitorPage and monitorState are the monitor's page and the state it
	// polls, on every worker.
	monitorPage  = "/monitor/"
	monitorState = "/monitor/state"
	// monitorPollPause is the pause between two rounds of one worker's
	// poller: short enough to catch a worker between its start and its
	// first assignment, light enough to leave the two cores to the load.
	monitorPollPause = 50 * time.Millisecond
	// keepMonitorErrors bounds the errors quoted in a failure.
	keepMonitorErrors = 40
)

// monitorView is the part of GET /monitor/state this suite reads: the
// marks that say a worker's view is not current, and what must hold
// together in every answer.
type monitorView struct {
	Self  string
	Group struct {
		Name         string
		Generation   int32
		Joined       bool
		Rebalancing  bool
		Ready        bool
		Reason       string
		MembersError string `json:"members_error"`
		MembersStale bool   `json:"members_stale"`
		Members      []struct {
			URL        string
			Partitions []int32
			Self       bool
		}
	}
	Partitions []monitorPartition
	Rebalances []json.RawMessage
	Tables     []json.RawMessage
	Charts     []json.RawMessage
}

// monitorPartition is a row of the state's partitions.
type monitorPartition struct {
	Partition int32
	State     string // "processing", "recovering" or "standby"
	Recovery  *struct{ Done float64 }
	Lag       *struct{ Stale bool }
}

// held is the partitions the worker holds (processing or recovering), in
// order.
func (v *monitorView) held() []int32 {
	var out []int32
	for _, p := range v.Partitions {
		if p.State == "processing" || p.State == "recovering" {
			out = append(out, p.Partition)
		}
	}
	slices.Sort(out)
	return out
}

// marks are the view's stale marks, each a word the suite counts: a view
// without any is the page's "current" view of the worker.
func (v *monitorView) marks() []string {
	var out []string
	add := func(on bool, mark string) {
		if on {
			out = append(out, mark)
		}
	}
	add(!v.Group.Joined, "joining")
	add(v.Group.Rebalancing, "rebalancing")
	add(v.Group.MembersStale, "members-stale")
	add(v.Group.MembersError != "", "members-error")
	add(slices.ContainsFunc(v.Partitions, func(p monitorPartition) bool { return p.State == "recovering" }), "recovering")
	add(slices.ContainsFunc(v.Partitions, func(p monitorPartition) bool { return p.Lag != nil && p.Lag.Stale }), "lag-stale")
	return out
}

// TestMonitorRollingRestart is the acceptance of the monitor page (issue
// 19): /monitor/ works from any worker during a rolling restart of three
// workers under load; the page never errors, and stale data is marked as
// stale. Every worker's page and state are polled throughout; each worker
// in turn is stopped with TERM, left out until the others hold its
// partitions, and started again. Every answer must be right, each
// restarted worker's states must be marked stale until it is current, and
// once the group is stable every worker's state must be unmarked and agree
// with the others', and its page must render live in Chromium.
func TestMonitorRollingRestart(t *testing.T) {
	requireChaos(t)
	for _, protocol := range []string{"cooperative", "eager"} {
		t.Run(protocol, func(t *testing.T) { monitorRollingRestart(t, protocol) })
	}
}

func monitorRollingRestart(t *testing.T, protocol string) {
	began := time.Now()
	c := newCluster(t, 3, protocol, false)
	startWorkers(c, scenario{initial: 3})
	polls := startMonitorPolls(c)
	ld := c.startLoad()
	time.Sleep(3 * time.Second) // let the load build some state, as every scenario does
	for i, s := range c.slots {
		polls.enter(s.name + " stopped")
		c.signal(syscall.SIGTERM, i)
		c.waitSettled(s.name+" stopped", 90*time.Second)
		polls.enter(s.name + " back")
		c.start(i)
		c.waitSettled(s.name+" back", 90*time.Second)
		polls.enter("")
		time.Sleep(2 * time.Second) // load on the restarted worker before the next
	}
	ld.Stop()
	polls.Stop()
	c.checkCrashes()
	polls.check(t)

	views := waitMonitorsCurrent(c, 60*time.Second)
	t.Run("page", func(t *testing.T) { checkMonitorPages(t, c, views) })
	t.Logf("SUMMARY monitor protocol=%s duration=%s %s", protocol, time.Since(began).Round(time.Second), polls.summary())
}

// monitorPolls asks every worker for /monitor/ and /monitor/state over and
// over, and sorts what happens: answers, which must be right; refused
// connections and the start-up answer, from a worker that is not up yet;
// connections cut by a worker told to stop; and errors, anything else.
type monitorPolls struct {
	c      *cluster
	client *http.Client
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	mu       sync.Mutex
	phase    string                 // the step of the restart under way; "" between steps
	phases   []string               // every step, in order
	counts   map[string]*pollCounts // by worker
	marked   map[string]*pollCounts // states by step of the restart
	served   map[*proc]bool         // the runs that answered the monitor
	markedBy map[*proc]int          // states marked stale, by the run that answered them
	errs     []string
	errKinds map[string]int // errors by path and what went wrong
	nerrs    int
}

// pollCounts counts the outcomes of one worker's polls, or the states of
// one step of the restart.
type pollCounts struct {
	page, state, refused, starting, cut int
	marked                              int            // states with a stale mark
	marks                               map[string]int // by mark, and by worker for a step
}

func startMonitorPolls(c *cluster) *monitorPolls {
	m := &monitorPolls{
		c: c,
		// A connection per request: a refusal or a cut then always
		// belongs to the run that was up when it was asked.
		client:   &http.Client{Timeout: askTimeout, Transport: &http.Transport{DisableKeepAlives: true}},
		stop:     make(chan struct{}),
		counts:   map[string]*pollCounts{},
		marked:   map[string]*pollCounts{},
		served:   map[*proc]bool{},
		markedBy: map[*proc]int{},
		errKinds: map[string]int{},
	}
	for _, s := range c.slots {
		m.counts[s.name] = &pollCounts{marks: map[string]int{}}
		m.wg.Go(func() {
			for {
				select {
				case <-m.stop:
					return
				case <-time.After(monitorPollPause):
				}
				m.ask(s, monitorPage)
				m.ask(s, monitorState)
			}
		})
	}
	c.t.Cleanup(m.Stop)
	return m
}

// enter starts the step of the restart named phase ("" between steps).
func (m *monitorPolls) enter(phase string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.phase = phase
	if phase != "" {
		m.phases = append(m.phases, phase)
		m.marked[phase] = &pollCounts{marks: map[string]int{}}
	}
}

// Stop stops polling and waits for the requests in flight.
func (m *monitorPolls) Stop() {
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
	})
}

// ask sends one request to s and sorts its outcome. The run that was up
// before and after it tells whether a failure was to be expected.
func (m *monitorPolls) ask(s *slot, path string) {
	m.mu.Lock()
	phase := m.phase
	m.mu.Unlock()
	before := s.current()
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		m.errorf(s, path, "request", err.Error())
		return
	}
	resp, err := m.client.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	steady := before != nil && before == s.current() && before.Running() && untold(before)
	if err != nil {
		m.failed(s, path, steady, err)
		return
	}
	m.answered(s, before, steady, phase, path, resp, body)
}

// untold is whether the test has not sent p a signal.
func untold(p *proc) bool {
	p.slot.mu.Lock()
	defer p.slot.mu.Unlock()
	return p.signaled == ""
}

// failed sorts a request that got no answer. From a run that was up and
// not told to stop throughout, any failure is an error; otherwise a refusal
// means the worker is down, and any other failure a connection its
// shutdown cut.
func (m *monitorPolls) failed(s *slot, path string, steady bool, err error) {
	if steady {
		m.errorf(s, path, "no answer from a running worker", err.Error())
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if errors.Is(err, syscall.ECONNREFUSED) {
		m.counts[s.name].refused++
		return
	}
	m.counts[s.name].cut++
}

// answered checks an answer. The start-up answer (503 {"error":
// "starting: ..."}: the worker's port opens before its pages are wired)
// counts as a worker not up yet, like a refusal, while the run asked has
// not served the monitor; every other answer must be 200 and right.
func (m *monitorPolls) answered(s *slot, before *proc, steady bool, phase, path string, resp *http.Response, body []byte) {
	m.mu.Lock()
	served := before != nil && before.Running() && m.served[before]
	if resp.StatusCode == http.StatusOK && steady {
		m.served[before] = true
	}
	m.mu.Unlock()
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable && startingAnswer(body) && !served:
		m.mu.Lock()
		m.counts[s.name].starting++
		m.mu.Unlock()
		return
	case resp.StatusCode != http.StatusOK:
		m.errorf(s, path, fmt.Sprintf("status %d", resp.StatusCode), string(body))
		return
	case path == monitorPage:
		if problem := pageProblem(resp, body); problem != "" {
			m.errorf(s, path, problem, string(body))
			return
		}
		m.mu.Lock()
		m.counts[s.name].page++
		m.mu.Unlock()
		return
	}
	var v monitorView
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		m.errorf(s, path, "content type "+resp.Header.Get("Content-Type"), string(body))
		return
	}
	if err := json.Unmarshal(body, &v); err != nil {
		m.errorf(s, path, "not the state's JSON: "+err.Error(), string(body))
		return
	}
	if problems := v.problems(m.c, s); len(problems) > 0 {
		m.errorf(s, path, strings.Join(problems, "; "), string(body))
		return
	}
	marks := v.marks()
	m.record(s, phase, marks)
	if steady && len(marks) > 0 {
		m.mu.Lock()
		m.markedBy[before]++
		m.mu.Unlock()
	}
}

// record counts a right state of s, with its stale marks, for s and for
// the step of the restart under way.
func (m *monitorPolls) record(s *slot, phase string, marks []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	targets := []*pollCounts{m.counts[s.name]}
	if pc := m.marked[phase]; phase != "" && pc != nil {
		targets = append(targets, pc)
		if len(marks) > 0 {
			pc.marks[s.name]++
		}
	}
	for _, pc := range targets {
		pc.state++
		if len(marks) == 0 {
			continue
		}
		pc.marked++
		for _, mk := range marks {
			pc.marks[mk]++
		}
		if len(marks) == 1 && marks[0] == "members-stale" {
			pc.marks["only-members-stale"]++
		}
	}
}

// startingAnswer is whether body is the worker's answer before its pages
// are wired.
func startingAnswer(body []byte) bool {
	var e struct{ Error string }
	return json.Unmarshal(body, &e) == nil && strings.HasPrefix(e.Error, "starting")
}

// pageProblem says what is wrong with an answer of /monitor/, "" when it is
// the page: HTML that loads the page's script and style and has the
// places the script fills.
func pageProblem(resp *http.Response, body []byte) string {
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		return "content type " + ct
	}
	for _, want := range []string{`<script src="/monitor/monitor.js"`, `href="/monitor/monitor.css"`,
		`id="status"`, `id="group"`, `id="members"`, `id="partitions"`, `id="rebalances"`, `id="charts"`, `</html>`} {
		if !strings.Contains(string(body), want) {
			return "the page lacks " + want
		}
	}
	return ""
}

// errorf records a wrong outcome: what went wrong, counted by kind, and
// the first ones with their detail (the body, shortened).
func (m *monitorPolls) errorf(s *slot, path, what, detail string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nerrs++
	m.errKinds[path+": "+what]++
	if len(m.errs) < keepMonitorErrors {
		m.errs = append(m.errs, fmt.Sprintf("%s %s %s (during %q): %s: %.600s", time.Now().UTC().Format("15:04:05.000"),
			s.name, path, m.phase, what, detail))
	}
}

// problems is what does not hold together in one state of worker s,
// whatever the moment: who it is, its group, its rows, and its members.
// Members it does not mark stale must list it once, with the partitions it
// holds, and no partition twice: otherwise they are stale data shown as
// current. Marked ones may be anything the coordinator last said.
func (v *monitorView) problems(c *cluster, s *slot) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if v.Self != s.base || v.Group.Name != "pageviews" {
		bad("self %q group %q, want %q and pageviews", v.Self, v.Group.Name, s.base)
	}
	if v.Group.Joined && v.Group.Generation < 1 {
		bad("joined in generation %d", v.Group.Generation)
	}
	if v.Group.Members == nil || v.Partitions == nil || v.Rebalances == nil || v.Tables == nil || v.Charts == nil {
		bad("a list is null")
	}
	out = append(out, v.rowProblems()...)
	bases := map[string]bool{}
	for _, o := range c.slots {
		bases[o.base] = true
	}
	current := !v.Group.MembersStale && v.Group.MembersError == ""
	owner := map[int32]string{}
	var selves [][]int32
	for _, mb := range v.Group.Members {
		if mb.Self != (mb.URL == v.Self) {
			bad("member %q marked self %v", mb.URL, mb.Self)
		}
		if !current {
			continue // mid-rebalance the coordinator lists members without URLs or partitions
		}
		if !bases[mb.URL] {
			bad("member %q is none of the workers", mb.URL)
		}
		if mb.Self {
			selves = append(selves, mb.Partitions)
		}
		for _, p := range mb.Partitions {
			if o, dup := owner[p]; p < 0 || p >= partitions || dup {
				bad("partition %d listed for %s and %s", p, o, mb.URL)
			}
			owner[p] = mb.URL
		}
	}
	if current && (len(selves) != 1 || !slices.Equal(selves[0], v.held())) {
		bad("members not marked stale list this worker with %v, but it holds %v", selves, v.held())
	}
	return out
}

// rowProblems is what is wrong with the partition rows: unknown states,
// a partition twice, recovery figures on the wrong rows.
func (v *monitorView) rowProblems() []string {
	var out []string
	held := map[int32]string{}
	rows := map[string]bool{}
	for _, p := range v.Partitions {
		key := fmt.Sprintf("%s/%d", p.State, p.Partition)
		if p.Partition < 0 || p.Partition >= partitions || rows[key] {
			out = append(out, "row "+key+" out of range or twice")
		}
		rows[key] = true
		switch p.State {
		case "recovering":
			if p.Recovery == nil || p.Recovery.Done < 0 || p.Recovery.Done > 1 {
				out = append(out, fmt.Sprintf("recovering partition %d without its progress", p.Partition))
			}
		case "processing", "standby":
			if p.Recovery != nil || (p.State == "standby" && p.Lag != nil) {
				out = append(out, fmt.Sprintf("%s partition %d with a recovery or a lag", p.State, p.Partition))
			}
		default:
			out = append(out, fmt.Sprintf("partition %d in state %q", p.Partition, p.State))
		}
		if p.State != "standby" {
			if other, dup := held[p.Partition]; dup {
				out = append(out, fmt.Sprintf("partition %d both %s and %s", p.Partition, other, p.State))
			}
			held[p.Partition] = p.State
		}
	}
	return out
}

// check fails the test for every wrong answer, for a worker that never
// answered, and for a step of the restart during which no state was
// marked stale; it logs the counts.
func (m *monitorPolls) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.c.slots {
		pc := m.counts[s.name]
		t.Logf("monitor of %s: %d pages and %d states answered (%d states marked stale: %s), %d refused, %d start-up answers, %d cut by a shutdown",
			s.name, pc.page, pc.state, pc.marked, formatMarks(pc.marks), pc.refused, pc.starting, pc.cut)
		if pc.page == 0 || pc.state == 0 {
			t.Errorf("%s never answered /monitor/ or /monitor/state", s.name)
		}
	}
	// By step, for the log only: a worker builds its state at most once a
	// second, so the rebalance of a worker that keeps running can be over
	// between two builds, and no poll can see it.
	for _, ph := range m.phases {
		pc := m.marked[ph]
		t.Logf("during %q: %d states, %d marked stale (%s)", ph, pc.state, pc.marked, formatMarks(pc.marks))
	}
	// A restarted run cannot be current before it has joined: its own
	// states must say so.
	for _, s := range m.c.slots {
		s.mu.Lock()
		runs := slices.Clone(s.procs)
		s.mu.Unlock()
		for _, p := range runs[min(1, len(runs)):] {
			t.Logf("%s: %d states marked stale", p.describe(), m.markedBy[p])
			if m.markedBy[p] == 0 {
				t.Errorf("%s started again, and none of its states was marked stale (joining, rebalancing, recovering, members)", p.describe())
			}
		}
	}
	if m.nerrs > 0 {
		var kinds []string
		for _, k := range slices.Sorted(maps.Keys(m.errKinds)) {
			kinds = append(kinds, fmt.Sprintf("%d %s", m.errKinds[k], k))
		}
		t.Errorf("%d monitor requests failed or were answered wrong:\n  %s\nthe first:\n  %s",
			m.nerrs, strings.Join(kinds, "\n  "), strings.Join(m.errs, "\n  "))
	}
}

// summary is the counts of every worker on one line.
func (m *monitorPolls) summary() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b []string
	for _, s := range m.c.slots {
		pc := m.counts[s.name]
		b = append(b, fmt.Sprintf("%s: pages=%d states=%d marked=%d refused=%d starting=%d cut=%d",
			s.name, pc.page, pc.state, pc.marked, pc.refused, pc.starting, pc.cut))
	}
	return fmt.Sprintf("%s; errors=%d", strings.Join(b, "; "), m.nerrs)
}

func formatMarks(marks map[string]int) string {
	var b []string
	for _, k := range slices.Sorted(maps.Keys(marks)) {
		b = append(b, fmt.Sprintf("%s=%d", k, marks[k]))
	}
	return strings.Join(b, " ")
}

// waitMonitorsCurrent waits until, the group stable, every worker's state
// carries no stale mark, is ready, has a lag sample for each partition it
// processes, and agrees with the others' (agreement). It returns the
// states by worker.
func waitMonitorsCurrent(c *cluster, timeout time.Duration) map[string]*monitorView {
	c.t.Helper()
	var views map[string]*monitorView
	c.poll("every worker's monitor state current", timeout, func() (bool, string) {
		views = map[string]*monitorView{}
		var problems []string
		for _, s := range c.slots {
			v, err := getMonitorState(s)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", s.name, err))
				continue
			}
			views[s.name] = v
			var own []string
			if marks := v.marks(); len(marks) > 0 {
				own = append(own, fmt.Sprintf("marked %v", marks))
			}
			if !v.Group.Ready {
				own = append(own, "not ready: "+v.Group.Reason)
			}
			for _, p := range v.Partitions {
				if p.State == "processing" && p.Lag == nil {
					own = append(own, fmt.Sprintf("no lag sample of partition %d yet", p.Partition))
				}
			}
			own = append(own, v.problems(c, s)...)
			for _, pr := range own {
				problems = append(problems, s.name+": "+pr)
			}
		}
		problems = append(problems, agreement(c, views)...)
		return len(problems) == 0, strings.Join(problems, "; ")
	})
	return views
}

// agreement is where the states of the workers disagree: one generation,
// the same members everywhere, every worker a member, and every partition
// processed by exactly the worker the members name.
func agreement(c *cluster, views map[string]*monitorView) []string {
	if len(views) != len(c.slots) {
		return []string{"not every worker answered"}
	}
	var out []string
	first := views[c.slots[0].name]
	byURL := map[string][]int32{}
	for _, mb := range first.Group.Members {
		byURL[mb.URL] = mb.Partitions
	}
	processed := map[int32]string{}
	for _, s := range c.slots {
		v := views[s.name]
		if v.Group.Generation != first.Group.Generation {
			out = append(out, fmt.Sprintf("%s in generation %d, %s in %d", s.name, v.Group.Generation, c.slots[0].name, first.Group.Generation))
		}
		got := map[string][]int32{}
		for _, mb := range v.Group.Members {
			got[mb.URL] = mb.Partitions
		}
		if len(got) != len(c.slots) || !maps.EqualFunc(got, byURL, slices.Equal[[]int32]) {
			out = append(out, fmt.Sprintf("%s lists members %v, %s %v", s.name, got, c.slots[0].name, byURL))
		}
		if held := v.held(); !slices.Equal(held, byURL[s.base]) {
			out = append(out, fmt.Sprintf("%s processes %v, the members say %v", s.name, held, byURL[s.base]))
		}
		for _, p := range v.held() {
			if o, dup := processed[p]; dup {
				out = append(out, fmt.Sprintf("partition %d processed by %s and %s", p, o, s.name))
			}
			processed[p] = s.name
		}
	}
	if len(processed) != partitions {
		out = append(out, fmt.Sprintf("partitions processed: %v, want all %d", processed, partitions))
	}
	return out
}

// getMonitorState asks s's current run for its state once.
func getMonitorState(s *slot) (*monitorView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	status, body, err := s.current().Get(ctx, monitorState)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("status %d: %.300s", status, body)
	}
	var v monitorView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("not the state's JSON: %v", err)
	}
	return &v, nil
}

// checkMonitorPages loads every worker's page in headless Chromium, the
// group stable: it must be live, show the partitions the worker processes
// and the three members, and mark nothing stale.
func checkMonitorPages(t *testing.T, c *cluster, views map[string]*monitorView) {
	chromium := harness.RequireProgram(t, "chromium", "chromium")
	for _, s := range c.slots {
		dom := renderMonitor(t, chromium, s.base+monitorPage)
		want := []string{`class="status">live`, `>stable</span>`, `>ready</span>`}
		for _, p := range views[s.name].held() {
			want = append(want, fmt.Sprintf(`<tr class="partition" data-partition="%d" data-state="processing">`, p))
		}
		for _, o := range c.slots {
			want = append(want, ">"+o.base+"</a>")
		}
		var problems []string
		for _, w := range want {
			if !strings.Contains(dom, w) {
				problems = append(problems, "lacks "+w)
			}
		}
		if strings.Contains(dom, "stale") {
			problems = append(problems, "marks something stale")
		}
		if len(problems) > 0 {
			t.Errorf("%s's page, the group stable: %s:\n%s", s.name, strings.Join(problems, "; "), dom)
		}
	}
}

// renderMonitor runs headless Chromium on url and returns the DOM as the
// page's script left it; the virtual time budget lets it poll a few times.
func renderMonitor(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium on %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}
