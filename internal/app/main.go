package app

// The process: settings, signals, the exit status.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/tracing"
)

// Main runs the worker of a as the process: it reads the settings from the
// environment, handles signals, and exits with 0 after a clean stop, 2 for
// a bad setting or a schema its registry's latest version is incompatible
// with (one line naming it), 3 after a cold shutdown, 1 otherwise.
// version (set by the build) is the default of DD_VERSION.
func Main(a *App, version string) {
	if os.Getenv("GOGC") == "" {
		// The worker's heap is mostly short-lived records; its live set is
		// small. Collecting at 200% growth instead of 100% cut its CPU per
		// event by about a tenth in the benchmark, for about 20 MiB more
		// peak RSS. GOGC and GOMEMLIMIT still override.
		debug.SetGCPercent(200)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// In a container, collect harder before reaching its memory limit
		// than be killed at it: the heap may grow to 3x its live set at
		// GOGC 200, and Pebble's memtables live on the heap too.
		if limit, ok := cgroupMemoryLimit(); ok {
			debug.SetMemoryLimit(limit / 10 * 8)
		}
	}
	err := run(context.Background(), a, process{version: version, saramaLogger: true}, os.Args[1:], os.Getenv, os.Stdout)
	var cerr *config.Error
	var incompatible *schema.IncompatibleError
	name := filepath.Base(os.Args[0])
	switch {
	case err == nil:
	case errors.As(err, &cerr), errors.As(err, &incompatible):
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Run is Main without the exit: it runs the worker of a until TERM or INT
// (warm shutdown), a fatal error, or the end of ctx. Tests run workers in
// one process with it.
func Run(ctx context.Context, a *App, args []string, getenv func(string) string, stdout io.Writer) error {
	return run(ctx, a, process{version: "dev"}, args, getenv, stdout)
}

// process is what only the real process sets.
type process struct {
	version string
	// saramaLogger: sarama logs through a package-level logger, which
	// only the process sets (tests run several workers in one process).
	saramaLogger bool
}

func run(ctx context.Context, a *App, proc process, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting comes from the environment (see README)", args)
	}
	cfg, err := config.Load(getenv, a.Spec())
	if err != nil {
		return err
	}
	if getenv("DD_VERSION") == "" {
		cfg.Version = proc.version
	}
	log := newLogger(cfg, stdout)
	if proc.saramaLogger {
		// Its lines are connection and group chatter: debug.
		sarama.Logger = saramaLogger{log.With("component", "sarama")}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	stopped := make(chan struct{})
	defer close(stopped)
	go handleSignals(sigs, stopped, cancel, coldExit, log)

	return bounded(ctx, cfg.ShutdownTimeout, func(ctx context.Context) error {
		return RunWorker(ctx, a, cfg, log, Hooks{Clock: time.Now, Console: stdout})
	})
}

// coldExitStatus is the exit status of a cold shutdown (QUIT, or a second
// TERM or INT).
const coldExitStatus = 3

func coldExit(status int) { os.Exit(status) }

// handleSignals serves the signals until stopped is closed:
//   - TERM or INT: the first starts the warm shutdown (cancel); another one
//     during it turns it cold, as Ctrl-C twice does in most servers.
//   - QUIT: cold shutdown at any time, during start-up and during a warm
//     shutdown too: exit at once without flushing; the changelogs hold the
//     state.
//   - USR1: dump every goroutine's stack to the log and keep running.
//
// It keeps reading after the warm shutdown began: a signal nobody reads
// would be lost exactly when an operator needs it.
func handleSignals(sigs <-chan os.Signal, stopped <-chan struct{}, cancel func(), exit func(int), log *slog.Logger) {
	warm := false
	for {
		var s os.Signal
		select {
		case <-stopped:
			return
		case s = <-sigs:
		}
		switch s {
		case syscall.SIGTERM, syscall.SIGINT:
			if warm {
				log.Warn(signalName(s) + " during the warm shutdown: shutdown turned cold, exiting without flushing; the changelogs hold the state")
				exit(coldExitStatus)
				return
			}
			warm = true
			log.Info(signalName(s) + ": warm shutdown; TERM or INT again, or QUIT, makes it cold")
			cancel()
		case syscall.SIGQUIT:
			log.Warn("QUIT: cold shutdown, exiting without flushing; the changelogs hold the state")
			exit(coldExitStatus)
			return
		case syscall.SIGUSR1:
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
			log.Info("USR1: goroutine dump", "goroutines", pprof.Lookup("goroutine").Count(), "stacks", b.String())
		}
	}
}

func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGINT:
		return "INT"
	}
	return s.String()
}

// bounded runs the worker and returns at most timeout after ctx ends, even
// when the worker is stuck in a step that does not observe ctx (a broker
// that accepts connections but never answers holds sarama's start-up for
// minutes). The worker bounds its own warm shutdown by the same timeout and
// normally returns first; this bound is for everything that it does not
// cover. What is still running when it gives up dies with the process; the
// changelogs hold the state, as after QUIT.
func bounded(ctx context.Context, timeout time.Duration, run func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	// A little longer than the worker's own bound, so that its more
	// precise error wins when both expire.
	t := time.NewTimer(timeout + 250*time.Millisecond)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("shutdown did not finish within SHUTDOWN_TIMEOUT=%s; exiting without it (the changelogs hold the state)", timeout)
	}
}

// saramaLogger adapts slog to sarama's StdLogger.
type saramaLogger struct{ log *slog.Logger }

func (l saramaLogger) Print(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprint(v...))) }
func (l saramaLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (l saramaLogger) Println(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(tracing.LogHandler{Handler: h}).With("service", cfg.Service)
}

// cgroupMemoryLimit returns the memory limit of the worker's cgroup (v2,
// then v1), if it has one.
func cgroupMemoryLimit() (int64, bool) {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// "max" (v2) or a huge number (v1) means no limit.
		if err != nil || n <= 0 || n >= 1<<50 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}
