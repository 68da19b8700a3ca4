package app

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBoundedGivesUpOnAStuckWorker: when the worker ignores the end of its
// context (a start-up step blocked on the network), run still returns once
// SHUTDOWN_TIMEOUT has passed, with an error saying so.
func TestBoundedGivesUpOnAStuckWorker(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	go func() {
		done <- bounded(ctx, 100*time.Millisecond, func(context.Context) error { <-stuck; return nil })
	}()
	select {
	case err := <-done:
		t.Fatalf("bounded returned %v before the context ended", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "SHUTDOWN_TIMEOUT") {
			t.Errorf("bounded = %v, want an error naming SHUTDOWN_TIMEOUT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bounded did not return after the context ended and the timeout passed")
	}
}

// TestHandleSignals feeds signals to the handler: the first TERM or INT
// cancels, a second one exits cold, and QUIT exits cold at any time. Every
// case ends in an exit: the signals are handled in order, so a case that
// must not exit is followed by a QUIT, whose exit proves the signals
// before it were handled without one.
func TestHandleSignals(t *testing.T) {
	type outcome struct {
		canceled bool
		exits    []int
		lines    int // log lines
	}
	for _, tt := range []struct {
		name string
		sigs []os.Signal
		want outcome
	}{
		{"TERM", []os.Signal{syscall.SIGTERM, syscall.SIGQUIT}, outcome{true, []int{coldExitStatus}, 2}},
		{"INT", []os.Signal{syscall.SIGINT, syscall.SIGQUIT}, outcome{true, []int{coldExitStatus}, 2}},
		{"TERM twice", []os.Signal{syscall.SIGTERM, syscall.SIGTERM, syscall.SIGQUIT}, outcome{true, []int{coldExitStatus}, 2}},
		{"TERM then INT", []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT}, outcome{true, []int{coldExitStatus}, 2}},
		{"QUIT", []os.Signal{syscall.SIGQUIT, syscall.SIGQUIT}, outcome{false, []int{coldExitStatus}, 1}},
		{"USR1", []os.Signal{syscall.SIGUSR1, syscall.SIGQUIT}, outcome{false, []int{coldExitStatus}, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ch := make(chan os.Signal, len(tt.sigs))
			for _, s := range tt.sigs {
				ch <- s
			}
			var logs strings.Builder
			var got outcome
			canceled := make(chan struct{})
			stopped := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				handleSignals(ch, stopped, func() { close(canceled) }, func(code int) { got.exits = append(got.exits, code) },
					slog.New(slog.NewTextHandler(&logs, nil)))
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				close(stopped)
				t.Fatalf("the handler did not exit after %v", tt.sigs)
			}
			select {
			case <-canceled:
				got.canceled = true
			default:
			}
			got.lines = strings.Count(logs.String(), "\n")
			if got.canceled != tt.want.canceled || !slices.Equal(got.exits, tt.want.exits) || got.lines != tt.want.lines {
				t.Errorf("after %v: %+v, want %+v; log:\n%s", tt.sigs, got, tt.want, logs.String())
			}
		})
	}
}
