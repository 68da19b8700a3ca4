package main

import (
	"os"
	"strings"
	"testing"

	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// TestMakeBrokerCreatesTheDeclaredTopic: `make broker` creates the app's
// declared source topic, so kcat can write to it on a fresh broker.
func TestMakeBrokerCreatesTheDeclaredTopic(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	_, recipe, ok := strings.Cut(string(b), "\nbroker:")
	recipe, _, _ = strings.Cut(recipe, "\n\n")
	if !ok || !strings.Contains(recipe, "-topics "+pageview.Topic+" ") {
		t.Errorf("the broker target does not create %s (-topics %s):%s", pageview.Topic, pageview.Topic, recipe)
	}
}

// TestKcatWritesToAFreshBroker: the broker process started as `make broker`
// starts it, on an empty data directory, takes kcat's records for the
// source topic before any worker ran.
func TestKcatWritesToAFreshBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the broker process")
	}
	kcat := harness.RequireKcat(t)
	b := harness.StartBroker(t, t.TempDir(), "-data-dir", t.TempDir(), "-topics", pageview.Topic, "-partitions", "8")
	harness.Kcat(t, kcat, "{\"page\":\"/home\",\"count\":1}\n", "-P", "-b", b.Addr, "-t", pageview.Topic, "-k", "/home")
	if got := harness.ConsumeAll(t, kcat, b.Addr, pageview.Topic); len(got) != 1 {
		t.Errorf("%s holds %d records after kcat wrote one: %+v", pageview.Topic, len(got), got)
	}
}
