// Package dashboards defines the worker's dashboards once, as panels that
// each carry a PromQL query (for Grafana, over statsd_exporter and
// Prometheus) and a Datadog query (over DogStatsD), and renders them:
// dashboards/grafana/pageviews.json through the Grafana Foundation SDK and
// dashboards/datadog/dashboard.json for the Datadog dashboards API. The
// panel table of README.md is rendered from the same definitions.
//
// Every metric name comes from the worker's metric list
// (internal/metrics.All), so a dashboard cannot name a metric the worker
// does not emit. `go run ./gen` writes the files; the tests fail when the
// committed files differ from what the definitions render, when a query
// names a metric outside the list, and (end to end, against real worker,
// statsd_exporter and Prometheus processes) when a panel query returns no
// data.
package dashboards
