package pageview

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/config"
)

// TestDocs keeps docs/settings.md and docs/metrics.md equal to the
// declarations: the app's and the runtime's settings, and the runtime's
// metrics under the app's name. UPDATE_DOCS=1 writes them.
func TestDocs(t *testing.T) {
	for file, want := range map[string]string{
		"../../docs/settings.md": app.SettingsDoc(App()),
		"../../docs/metrics.md":  app.MetricsDoc(App()),
	} {
		if os.Getenv("UPDATE_DOCS") == "1" {
			if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s differs from the declarations; run UPDATE_DOCS=1 go test ./internal/pageview -run TestDocs\nwant:\n%s", file, want)
		}
	}
}

// TestDeployFilesCreateTheDeclaredTopics: docker-compose's one-shot topics
// service and deploy/kafka create exactly the topics the worker declares,
// with the default settings, their partitions and their configs; the chart
// and the alert tests name the declared source topic and group.
func TestDeployFilesCreateTheDeclaredTopics(t *testing.T) {
	cfg, err := config.Load(func(string) string { return "" }, App().Spec())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, topic := range app.Topics(App(), cfg) {
		args := fmt.Sprintf("--partitions %d --replication-factor 1", cfg.Partitions)
		for _, k := range slices.Sorted(maps.Keys(topic.Configs)) {
			args += " --config " + k + "=" + topic.Configs[k]
		}
		want[topic.Name] = args
	}
	create := regexp.MustCompile(`--create --if-not-exists --topic (\S+) ((?:\\\n|[^\n])*)`)
	for _, file := range []string{"../../docker-compose.yml", "../../deploy/kafka/kafka.yaml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, m := range create.FindAllStringSubmatch(string(b), -1) {
			got[m[1]] = strings.Join(strings.Fields(strings.ReplaceAll(m[2], "\\\n", " ")), " ")
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s creates\n%v\nthe declarations ask for\n%v", file, got, want)
		}
	}
	for file, line := range map[string]string{
		"../../deploy/helm/pageviews/values.yaml":   "pageViewsTopic: " + cfg.Topic + " ",
		"../../deploy/prometheus/alerts_test.yml":   `topic="` + cfg.Topic + `"`,
		"../../deploy/helm/pageviews/values.yaml#2": "group: " + cfg.Group + " ",
	} {
		file, _, _ = strings.Cut(file, "#")
		if b, err := os.ReadFile(file); err != nil || !strings.Contains(string(b), line) {
			t.Errorf("%s does not name the declared %q (%v)", file, line, err)
		}
	}
}
