// Command gen writes docs/metrics.md from the metric list.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/gofaust/pageviews/internal/metrics"
)

func main() {
	out := flag.String("o", "docs/metrics.md", "output file")
	ns := flag.String("namespace", "pageviews", "metric namespace")
	flag.Parse()
	if err := os.WriteFile(*out, []byte(metrics.Markdown(*ns)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
