package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr"

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

// TestMakeBrokerServesTheRegistry: `make broker` starts the dev schema
// registry next to the broker, with its registrations kept on disk.
func TestMakeBrokerServesTheRegistry(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	_, recipe, _ := strings.Cut(string(b), "\nbroker:")
	recipe, _, _ = strings.Cut(recipe, "\n\n")
	for _, want := range []string{"-registry-addr 127.0.0.1:8081", "-registry-data-dir "} {
		if !strings.Contains(recipe, want) {
			t.Errorf("the broker target does not pass %s:%s", want, recipe)
		}
	}
}

// TestRegistryKeepsItsSchemasAcrossRestarts: a schema registered with the
// broker process's registry has the same id after the process restarts on
// the same directory, so framed records in the broker still resolve.
func TestRegistryKeepsItsSchemasAcrossRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the broker process")
	}
	dir := t.TempDir()
	start := func() (*harness.Proc, *sr.Client) {
		args := []string{"-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-registry-data-dir", dir}
		p := harness.Start(t, t.TempDir(), "devbroker", harness.Build(t, "devbroker"), args, nil)
		const prefix = "devregistry listening on "
		l := p.WaitLine(t, 30*time.Second, "the registry's address", func(l string) bool { return strings.HasPrefix(l, prefix) })
		cl, err := sr.NewClient(sr.URLs(strings.TrimSpace(strings.TrimPrefix(l, prefix))))
		if err != nil {
			t.Fatal(err)
		}
		return p, cl
	}
	ctx := context.Background()
	schema := sr.Schema{Schema: pageview.NewCodec().Schema(), Type: sr.TypeAvro}
	p, cl := start()
	if _, err := cl.CreateSchema(ctx, "other-value", sr.Schema{Schema: `{"type":"string"}`, Type: sr.TypeAvro}); err != nil {
		t.Fatal(err)
	}
	first, err := cl.CreateSchema(ctx, pageview.Topic+"-value", schema)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Terminate(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, cl = start()
	got, err := cl.SchemaByVersion(ctx, pageview.Topic+"-value", -1)
	if err != nil || got.ID != first.ID || got.Version != first.Version {
		t.Fatalf("after a restart %s is %+v, %v; want id %d version %d", pageview.Topic+"-value", got, err, first.ID, first.Version)
	}
}
