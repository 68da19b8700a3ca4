package main

import (
	"os"
	"strings"
	"testing"

	"github.com/gofaust/pageviews/internal/pageview"
)

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
