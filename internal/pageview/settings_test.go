package pageview

import (
	"os"
	"testing"

	"github.com/gofaust/pageviews/internal/app"
)

// TestSettingsDoc keeps docs/settings.md equal to the declarations.
// UPDATE_SETTINGS_DOC=1 writes it.
func TestSettingsDoc(t *testing.T) {
	const file = "../../docs/settings.md"
	want := app.SettingsDoc(App())
	if os.Getenv("UPDATE_SETTINGS_DOC") == "1" {
		if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s differs from the declarations; run UPDATE_SETTINGS_DOC=1 go test ./internal/pageview -run TestSettingsDoc\nwant:\n%s", file, want)
	}
}
