package config_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/config"
)

// TestEverySettingDocumented: every variable a worker reads is listed once,
// with what it means, and its default as the worker applies it.
func TestEverySettingDocumented(t *testing.T) {
	ss := config.Settings(spec())
	seen := map[string]bool{}
	for _, s := range ss {
		if seen[s.Var] {
			t.Errorf("%s listed twice", s.Var)
		}
		seen[s.Var] = true
		if s.Doc == "" {
			t.Errorf("%s has no meaning: add it to runtimeDocs, or Reader.Doc for an app's own", s.Var)
		}
	}
	for _, v := range []string{"KAFKA_BROKERS", "PAGE_VIEWS_TOPIC", "WINDOW_SIZE", "WINDOW_EXPIRES", "KAFKA_SASL_PASSWORD", "OTEL_SERVICE_NAME", "LOG_LEVEL"} {
		if !seen[v] {
			t.Errorf("%s is read but not listed", v)
		}
	}
	// The documented defaults are what Load applies with nothing set.
	c := load(t, env{})
	applied := map[string]string{
		"PARTITIONS": strconv.Itoa(int(c.Partitions)), "DD_SERVICE": c.Service, "PAGE_VIEWS_TOPIC": c.Topic,
		"WINDOW_SIZE": c.Windows["views"].Size.String(), "WINDOW_EXPIRES": c.Windows["views"].Expires.String(),
		"COMMIT_INTERVAL": c.CommitInterval.String(), "LOG_LEVEL": strings.ToLower(c.LogLevel.String()),
	}
	md := config.Markdown(ss)
	for _, s := range ss {
		if w, ok := applied[s.Var]; ok {
			got := s.Default
			if d, err := time.ParseDuration(got); err == nil {
				got = d.String()
			}
			if got != w {
				t.Errorf("%s documented default %q, Load applies %q", s.Var, s.Default, w)
			}
		}
		if !strings.Contains(md, "| `"+s.Var+"` |") {
			t.Errorf("the table lacks %s", s.Var)
		}
	}
}
