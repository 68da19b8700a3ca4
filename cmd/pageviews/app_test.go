package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/pageview"
)

// The worker under test is the page-view app on the runtime, as main runs
// it.

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return app.Run(ctx, pageview.App(), args, getenv, stdout)
}

func loadConfig(getenv func(string) string) (*config.Config, error) {
	return config.Load(getenv, pageview.App().Spec())
}

func runWorker(ctx context.Context, cfg *config.Config, log *slog.Logger, hooks app.Hooks) error {
	return app.RunWorker(ctx, pageview.App(), cfg, log, hooks)
}
