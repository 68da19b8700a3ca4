package truth

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/gofaust/pageviews/internal/metrics"
)

// checked returns the metrics the scenarios hold to a truth or a bound,
// and the tests that do.
func checked() map[string]string {
	return map[string]string{
		"messages_received":             "TestCatchUp TestStall TestBadRecords TestRecovery",
		"messages_active":               "TestCatchUp",
		"messages_sent":                 "TestCatchUp TestBadRecords",
		"events":                        "TestCatchUp TestBadRecords",
		"event_runtime":                 "TestCatchUp",
		"event_latency":                 "TestCatchUp",
		"commit_latency":                "TestCatchUp",
		"send_latency":                  "TestCatchUp",
		"send_errors":                   "TestBadRecords",
		"read_offset":                   "TestCatchUp",
		"committed_offset":              "TestCatchUp",
		"end_offset":                    "TestCatchUp TestStall",
		"consumer_lag":                  "TestCatchUp TestStall",
		"consumer_lag_seconds":          "TestCatchUp TestStall",
		"dead_letters":                  "TestCatchUp TestBadRecords",
		"late_events":                   "TestBadRecords TestWindows",
		"schema_registry_lookups":       "TestRegistry",
		"schema_registry_errors":        "TestRegistry",
		"schema_cache_hits":             "TestRegistry",
		"schema_records":                "TestRegistry",
		"flush_failures":                "TestBadRecords",
		"table_keys_updated":            "TestCatchUp",
		"table_keys_deleted":            "TestRecovery",
		"table_keys":                    "TestCatchUp",
		"windows_closed":                "TestWindows",
		"window_close_lag":              "TestWindows",
		"rebalances":                    "TestCatchUp TestJoin",
		"rebalance_state":               "TestCatchUp TestJoin",
		"generation":                    "TestCatchUp TestJoin",
		"rebalance_return_latency":      "TestJoin",
		"rebalance_end_latency":         "TestCatchUp TestJoin",
		"partitions_assigned":           "TestCatchUp TestRecovery TestJoin",
		"assignments_complete":          "TestRecovery TestJoin",
		"assignments_error":             "TestRecovery",
		"assignment_latency":            "TestRecovery",
		"partition_unprocessed_seconds": "TestJoin",
		"recovery_remaining":            "TestRecovery",
		"recovery_eta_seconds":          "TestRecovery",
		"recovery_records":              "TestRecovery",
		"standby_partitions":            "TestCatchUp",
		"http_requests":                 "TestCatchUp",
		"http_latency":                  "TestCatchUp",
		"go_goroutines":                 "TestCatchUp",
		"go_heap_bytes":                 "TestCatchUp",
		"go_gc_pause_seconds":           "TestCatchUp",
	}
}

// TestEveryMetricAccounted: each declared metric is checked by a scenario
// or listed in README.md's table of those that are not, and nothing else
// is named. It starts no process.
func TestEveryMetricAccounted(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Not checked here")
	if !ok {
		t.Fatal(`README.md has no "## Not checked here" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `pageviews\\.([a-z_]+)` \\|").FindAllStringSubmatch(section, -1) {
		listed[m[1]] = true
	}
	tests := checked()
	declared := map[string]bool{}
	for _, d := range metrics.All() {
		declared[d.Name] = true
		_, c := tests[d.Name]
		switch {
		case c && listed[d.Name]:
			t.Errorf("%s is checked by %s and listed as not checked in README.md", d.Name, tests[d.Name])
		case !c && !listed[d.Name]:
			t.Errorf("%s is neither checked by a scenario nor listed in README.md's table of metrics not checked here", d.Name)
		}
	}
	for name := range tests {
		if !declared[name] {
			t.Errorf("checked names %s, which the metric list does not declare", name)
		}
	}
	for name := range listed {
		if !declared[name] {
			t.Errorf("README.md lists %s, which the metric list does not declare", name)
		}
	}
}
