package dashboards

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/gofaust/pageviews/test/harness"
)

// TestPrometheusAlertRules checks deploy/prometheus/alerts.yml with promtool
// (syntax, PromQL, templates) and runs its unit tests, alerts_test.yml.
func TestPrometheusAlertRules(t *testing.T) {
	promtool := harness.RequireProgram(t, "prometheus", "promtool")
	dir := filepath.Join(harness.Root(t), "deploy", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v (in deploy/prometheus): %v\n%s", args, err, out)
			continue
		}
		t.Logf("promtool %v:\n%s", args, out)
	}
}
