// Command pageviews is the page-view worker: it publishes page views from
// /count/, counts them per page and tumbling window in Kafka-backed tables,
// and reports them on /report/. See the README for the settings.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/tracing"
)

// version is set at build time (-ldflags "-X main.version=...") and is the
// default of DD_VERSION.
var version = "dev"

// setSaramaLogger is true in the real process only.
var setSaramaLogger bool

func main() {
	setSaramaLogger = true
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
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout)
	var cerr *config.Error
	switch {
	case err == nil:
	case errors.As(err, &cerr):
		fmt.Fprintln(os.Stderr, "pageviews:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "pageviews:", err)
		os.Exit(1)
	}
}

// run reads the configuration, handles signals and runs the worker until
// TERM or INT (warm shutdown) or a fatal error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting comes from the environment (see README)", args)
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	if getenv("DD_VERSION") == "" {
		cfg.Version = version
	}
	log := newLogger(cfg, stdout)
	if setSaramaLogger {
		// sarama logs through a package-level logger; this is the one
		// place it is set (main only: tests run several workers in one
		// process). Its lines are connection and group chatter: debug.
		sarama.Logger = saramaLogger{log.With("component", "sarama")}
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	go handleSignals(ctx, sigs, log)

	return runWorker(ctx, cfg, log, workerHooks{clock: time.Now, console: stdout})
}

// handleSignals serves USR1 (dump goroutines, keep running) and QUIT (cold
// shutdown: exit at once; the changelogs make that safe).
func handleSignals(ctx context.Context, sigs <-chan os.Signal, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sigs:
			if s == syscall.SIGQUIT {
				log.Warn("QUIT: cold shutdown, exiting without flushing; the changelogs hold the state")
				os.Exit(3)
			}
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
			log.Info("USR1: goroutine dump", "goroutines", pprof.Lookup("goroutine").Count(), "stacks", b.String())
		}
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
