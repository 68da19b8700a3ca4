package pageview

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/table"
)

// PageReport is one page's line of the report. In JSON, Now is named
// after the window (WindowField).
type PageReport struct {
	Now    int64
	Count  int64
	Report string
}

// Report is what /report/ shows.
type Report struct {
	Now   int64
	Count int64
	Pages map[string]PageReport
	Stale bool
	// MissingPartitions lists the partitions the report could not read
	// (owner unknown, recovering or unreachable); the numbers leave them out.
	MissingPartitions []int32
	// Window is the size of the windows, which names Now in JSON; zero is
	// taken as a minute.
	Window time.Duration
}

// WindowPrefix starts the JSON name of the count in the window of now.
const WindowPrefix = "page_views_within_"

// WindowField is the JSON name of the count in the window of now. It
// follows the window's size, so it never lies: page_views_within_1_minute
// (the seed's name), page_views_within_30_seconds, ..._2_hours.
func WindowField(size time.Duration) string {
	if size <= 0 {
		size = time.Minute
	}
	for _, u := range []struct {
		d         time.Duration
		one, many string
	}{{time.Hour, "hour", "hours"}, {time.Minute, "minute", "minutes"}, {time.Second, "second", "seconds"}} {
		if size%u.d == 0 {
			if n := int64(size / u.d); n != 1 {
				return WindowPrefix + strconv.FormatInt(n, 10) + "_" + u.many
			}
			return WindowPrefix + "1_" + u.one
		}
	}
	return WindowPrefix + strconv.FormatInt(size.Milliseconds(), 10) + "_milliseconds"
}

// MarshalJSON writes the report in the order of the HTTP contract, with
// the window's name for Now.
func (r Report) MarshalJSON() ([]byte, error) {
	field := strconv.Quote(WindowField(r.Window))
	pages := make([]string, 0, len(r.Pages))
	for _, k := range slices.Sorted(maps.Keys(r.Pages)) {
		pg := r.Pages[k]
		pages = append(pages, fmt.Sprintf(`%s:{%s:%d,"count":%d,"report":%s}`, quoteJSON(k), field, pg.Now, pg.Count, quoteJSON(pg.Report)))
	}
	b := fmt.Appendf(nil, `{%s:%d,"count":%d,"pages":{%s},"stale":%t`, field, r.Now, r.Count, strings.Join(pages, ","), r.Stale)
	if len(r.MissingPartitions) > 0 {
		missing, err := json.Marshal(r.MissingPartitions)
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"missing_partitions":`...), missing...)
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads a report whatever its window is called.
func (r *Report) UnmarshalJSON(b []byte) error {
	var raw struct {
		Count             int64                      `json:"count"`
		Pages             map[string]json.RawMessage `json:"pages"`
		Stale             bool                       `json:"stale"`
		MissingPartitions []int32                    `json:"missing_partitions"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	now, err := windowCount(b)
	if err != nil {
		return err
	}
	*r = Report{Now: now, Count: raw.Count, Stale: raw.Stale, MissingPartitions: raw.MissingPartitions, Pages: map[string]PageReport{}}
	for k, line := range raw.Pages {
		var pg struct {
			Count  int64  `json:"count"`
			Report string `json:"report"`
		}
		if err := json.Unmarshal(line, &pg); err != nil {
			return err
		}
		n, err := windowCount(line)
		if err != nil {
			return err
		}
		r.Pages[k] = PageReport{Now: n, Count: pg.Count, Report: pg.Report}
	}
	return nil
}

// windowCount reads the count in the window of now from a JSON object.
func windowCount(b []byte) (int64, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return 0, err
	}
	for k, v := range fields {
		if strings.HasPrefix(k, WindowPrefix) {
			var n int64
			err := json.Unmarshal(v, &n)
			return n, err
		}
	}
	return 0, nil
}

// quoteJSON is s as a JSON string.
func quoteJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Counts are one page's raw numbers in some partitions: the window of now,
// the window two minutes back, and the total. Reports from several
// partitions add up; the report text is derived only after that.
type Counts struct {
	Now   int64 `json:"now"`
	Back  int64 `json:"back"`
	Count int64 `json:"count"`
}

// Partial is the part of a report that some partitions contribute, summed
// over them. It is also what a worker answers a peer that asks for some of
// its partitions without ?by_partition=1 (the answer of earlier versions).
type Partial struct {
	Partitions []int32           `json:"partitions"`
	Pages      map[string]Counts `json:"pages"`
}

// PartitionCounts are the counts of the pages of one partition.
type PartitionCounts struct {
	Partition int32             `json:"partition"`
	Pages     map[string]Counts `json:"pages"`
}

// Merge adds o's partitions and counts to p.
func (p *Partial) Merge(o *Partial) {
	p.Partitions = append(p.Partitions, o.Partitions...)
	if p.Pages == nil {
		p.Pages = map[string]Counts{}
	}
	for k, c := range o.Pages {
		cur := p.Pages[k]
		cur.Now += c.Now
		cur.Back += c.Back
		cur.Count += c.Count
		p.Pages[k] = cur
	}
}

// Report turns the counts into the page lines of the seed's report.
func (p *Partial) Report() *Report {
	rep := &Report{Pages: make(map[string]PageReport, len(p.Pages))}
	for k, c := range p.Pages {
		if c.Now == 0 && c.Count == 0 {
			continue // only the window two minutes back: not a page of the report
		}
		rep.Pages[k] = PageReport{Now: c.Now, Count: c.Count, Report: Trend(c.Now, c.Back)}
		rep.Now += c.Now
		rep.Count += c.Count
	}
	return rep
}

// ReservedPrefix starts the pages used by synthetic traffic (the livecheck);
// they are counted like any other page but never reported. /count/ refuses
// them, and the agent counts a view of one only when the record carries
// SyntheticHeader, so no user's view can pass for a synthetic one.
const ReservedPrefix = "/_pageviews/"

// SyntheticHeader is the record header that marks the worker's own
// synthetic views; its value names what sent them.
const SyntheticHeader = "pageviews-synthetic"

// Reporter reads the tables of the partitions this worker holds.
type Reporter struct {
	Tables
	Clock func() time.Time
	// Owned returns the partitions this worker holds and has recovered;
	// nil means every partition the tables hold.
	Owned func() []int32
}

// Report returns the report of this worker's own partitions, for every page
// or only for page when it is not empty. A partition revoked while the
// report is built is left out and the report marked stale.
func (r *Reporter) Report(page string) (*Report, error) {
	part, err := r.Local(page, nil, false)
	if err != nil {
		return nil, err
	}
	rep := part.Report()
	rep.Window = r.Views.Window().Size
	owned := r.partitions()
	if len(part.Partitions) < len(owned) {
		rep.Stale = true
		for _, p := range owned {
			if !slices.Contains(part.Partitions, p) {
				rep.MissingPartitions = append(rep.MissingPartitions, p)
			}
		}
	}
	return rep, nil
}

func (r *Reporter) partitions() []int32 {
	var parts []int32
	if r.Owned != nil {
		parts = r.Owned()
	} else {
		parts = r.Totals.Partitions()
	}
	slices.Sort(parts)
	return parts
}

// Local returns the counts of the partitions in want that this worker holds
// (every partition it holds when want is nil), summed. Partitions lists
// exactly the partitions that were read, so a caller can tell what is
// missing. Pages under ReservedPrefix are left out unless reserved is true.
func (r *Reporter) Local(page string, want []int32, reserved bool) (*Partial, error) {
	parts, err := r.ByPartition(page, want, reserved)
	if err != nil {
		return nil, err
	}
	out := &Partial{Partitions: []int32{}, Pages: map[string]Counts{}}
	for _, pc := range parts {
		out.Merge(&Partial{Partitions: []int32{pc.Partition}, Pages: pc.Pages})
	}
	return out, nil
}

// ByPartition is Local with each partition's counts kept apart. It never
// returns a nil slice: a worker that holds none of want answers an empty
// list, which a peer tells from an answer of an earlier version.
func (r *Reporter) ByPartition(page string, want []int32, reserved bool) ([]PartitionCounts, error) {
	now := r.Clock()
	win := r.Views.Window()
	nowStart := win.Start(now)
	backStart := win.Start(now.Add(-2 * time.Minute))
	out := []PartitionCounts{}
	keep := func(k string) bool {
		return (page == "" || k == page) && (reserved || !strings.HasPrefix(k, ReservedPrefix))
	}
	for _, p := range r.partitions() {
		if want != nil && !slices.Contains(want, p) {
			continue
		}
		// Read the partition whole before keeping it, so a partition
		// revoked half-way adds nothing.
		one := map[string]Counts{}
		err := r.Totals.Scan(p, func(k string, v int64) {
			if keep(k) {
				c := one[k]
				c.Count += v
				one[k] = c
			}
		})
		if err == nil {
			err = r.Views.ScanWindow(p, nowStart, func(k string, v int64) {
				if keep(k) {
					c := one[k]
					c.Now += v
					one[k] = c
				}
			})
		}
		if err == nil {
			err = r.Views.ScanWindow(p, backStart, func(k string, v int64) {
				if keep(k) {
					c := one[k]
					c.Back += v
					one[k] = c
				}
			})
		}
		if errors.Is(err, table.ErrNotAssigned) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("report partition %d: %w", p, err)
		}
		out = append(out, PartitionCounts{Partition: p, Pages: one})
	}
	return out, nil
}
