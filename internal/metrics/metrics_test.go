package metrics_test

import (
	"os"
	"testing"

	"github.com/gofaust/pageviews/internal/metrics"
)

// TestDocsMatchList fails when docs/metrics.md is not what the metric list
// generates; run `go generate ./internal/metrics` after changing the list.
func TestDocsMatchList(t *testing.T) {
	got, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := metrics.Markdown("pageviews"); string(got) != want {
		t.Errorf("docs/metrics.md is out of date: run go generate ./internal/metrics")
	}
}

func TestNamesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range metrics.All() {
		if seen[d.Name] {
			t.Errorf("metric %s declared twice", d.Name)
		}
		seen[d.Name] = true
		if d.Help == "" {
			t.Errorf("metric %s has no meaning", d.Name)
		}
	}
}
