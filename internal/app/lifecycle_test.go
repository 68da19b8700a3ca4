package app

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRunGroupStopsWhatStartedInReverse(t *testing.T) {
	var log []string
	note := func(s string) func() error { return func() error { log = append(log, s); return nil } }
	start := func(s string) func(context.Context) error {
		return func(context.Context) error { log = append(log, s); return nil }
	}
	fail := errors.New("no broker")
	g := &runGroup{}
	err := g.startAll(context.Background(), []actor{
		{"a", start("start a"), note("stop a")},
		{"b", start("start b"), nil},
		{"c", start("start c"), note("stop c")},
		{"d", func(context.Context) error { return fail }, note("stop d")},
		{"e", start("start e"), note("stop e")},
	})
	if !errors.Is(err, fail) {
		t.Fatalf("startAll = %v, want the failing start's error", err)
	}
	if err := g.stopAll(time.Minute); err != nil {
		t.Fatal(err)
	}
	want := []string{"start a", "start b", "start c", "stop c", "stop a"}
	if !slices.Equal(log, want) {
		t.Errorf("ran %q, want %q", log, want)
	}
}

func TestRunGroupNamesFailedAndHungStops(t *testing.T) {
	ok := func(context.Context) error { return nil }
	g := &runGroup{}
	hang := make(chan struct{})
	defer close(hang)
	_ = g.startAll(context.Background(), []actor{
		{"store", ok, func() error { <-hang; return nil }},
		{"producer", ok, func() error { return errors.New("flush failed") }},
	})
	err := g.stopAll(50 * time.Millisecond)
	if !errors.Is(err, errStopsTimedOut) || !strings.Contains(err.Error(), "stopping store") {
		t.Errorf("stopAll = %v, want errStopsTimedOut naming the store", err)
	}

	g = &runGroup{}
	_ = g.startAll(context.Background(), []actor{{"producer", ok, func() error { return errors.New("flush failed") }}})
	if err := g.stopAll(time.Minute); err == nil || err.Error() != "stop producer: flush failed" {
		t.Errorf("stopAll = %v, want the producer's failure, named", err)
	}
}
