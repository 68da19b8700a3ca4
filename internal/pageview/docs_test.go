package pageview

import (
	"os"
	"testing"

	"github.com/gofaust/pageviews/internal/app"
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
