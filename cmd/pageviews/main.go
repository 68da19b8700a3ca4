// Command pageviews is the page-view worker: it publishes page views from
// /count/, counts them per page and window in Kafka-backed tables,
// and reports them on /report/. See the README for the settings.
package main

import (
	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/pageview"
)

// version is set by the build (-ldflags "-X main.version=..."); the linker
// sets only package-level strings, hence the variable.
var version = "dev"

func main() { app.Main(pageview.App(), version) }
