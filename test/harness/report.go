package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/pageview"
)

// TryReport reads /report/, the whole cluster's report as this worker
// answers it.
func (w *Worker) TryReport(ctx context.Context) (pageview.Report, error) {
	var r pageview.Report
	status, body, err := w.Get(ctx, "/report/")
	if err != nil {
		return r, err
	}
	if status != http.StatusOK {
		return r, fmt.Errorf("/report/ answered %d %s", status, body)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("/report/ is not a report: %v: %s", err, body)
	}
	return r, nil
}

// Report reads /report/ and checks that its top-level numbers are the sums
// over its pages, as the HTTP contract says.
func (w *Worker) Report(t testing.TB) pageview.Report {
	t.Helper()
	var r pageview.Report
	w.GetJSON(t, "/report/", http.StatusOK, &r)
	var now, count int64
	for _, p := range r.Pages {
		now += p.Now
		count += p.Count
	}
	if now != r.Now || count != r.Count {
		t.Fatalf("%s: /report/ top level says %d now, %d total; the pages sum to %d and %d", w.Name, r.Now, r.Count, now, count)
	}
	return r
}

// WaitReport polls /report/ until done accepts it and returns that report.
func (w *Worker) WaitReport(t testing.TB, timeout time.Duration, what string, done func(pageview.Report) bool) pageview.Report {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := w.Report(t)
		if done(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /report/ did not show %s within %s; last report: %s", w.Name, what, timeout, Summarize(r))
		}
		time.Sleep(PollInterval)
	}
}

// Summarize renders a report briefly, for failure messages.
func Summarize(r pageview.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "now=%d count=%d stale=%v pages=%d", r.Now, r.Count, r.Stale, len(r.Pages))
	if len(r.MissingPartitions) > 0 {
		fmt.Fprintf(&b, " missing=%v", r.MissingPartitions)
	}
	for i, k := range slices.Sorted(maps.Keys(r.Pages)) {
		if i == 10 {
			b.WriteString(" ...")
			break
		}
		p := r.Pages[k]
		fmt.Fprintf(&b, " %s:{now=%d count=%d %q}", k, p.Now, p.Count, p.Report)
	}
	return b.String()
}

// Local is what /report/?local=1 answers: the partitions the worker serves
// itself, and their pages.
type Local struct {
	Partitions []int32                    `json:"partitions"`
	Pages      map[string]pageview.Counts `json:"pages"`
}

// TryLocal reads /report/?local=1, of the given partitions only when there
// are some.
func (w *Worker) TryLocal(ctx context.Context, partitions ...int32) (Local, error) {
	path := "/report/?local=1"
	if len(partitions) > 0 {
		ps := make([]string, len(partitions))
		for i, p := range partitions {
			ps[i] = strconv.Itoa(int(p))
		}
		path += "&partitions=" + strings.Join(ps, ",")
	}
	var l Local
	status, body, err := w.Get(ctx, path)
	if err != nil {
		return l, err
	}
	if status != http.StatusOK {
		return l, fmt.Errorf("%s answered %d %s", path, status, body)
	}
	if err := json.Unmarshal(body, &l); err != nil {
		return l, fmt.Errorf("%s: %v: %s", path, err, body)
	}
	return l, nil
}
