package dashboards

import (
	"fmt"

	"github.com/gofaust/pageviews/internal/metrics"
)

// Namespace is the worker's metric prefix (DD_SERVICE, "pageviews" by
// default). statsd_exporter turns pageviews.<name> into pageviews_<name>
// (deploy/statsd/mapping.yml).
const Namespace = "pageviews"

// Selector holds the label matchers of the Grafana template variables that
// every PromQL query carries. The worker variable is Prometheus' instance
// label: one statsd_exporter per worker (the Helm chart's sidecar) makes it
// the worker's identity.
const Selector = `env=~"$env",service=~"$service",instance=~"$worker"`

// DatadogScope is the scope of every Datadog query: the dashboard's tag
// template variables.
const DatadogScope = "{$env,$service,$worker}"

// DatadogWorkerTag identifies one worker in Datadog: the Agent adds pod_name
// to DogStatsD metrics by origin detection at orchestrator cardinality.
const DatadogWorkerTag = "pod_name"

// prom is the Prometheus name of d.
func prom(d *metrics.Def) string { return Namespace + "_" + d.Name }

// series selects d (with an optional suffix such as _bucket) under the
// dashboard's variables.
func series(d *metrics.Def, suffix string) string {
	return prom(d) + suffix + "{" + Selector + "}"
}

// v selects d under the dashboard's variables.
func v(d *metrics.Def) string { return series(d, "") }

// rateBy is the per-second rate of a count, summed by the given labels (or
// over everything when by is empty).
func rateBy(d *metrics.Def, by string) string {
	return aggregate("sum", by, "rate("+v(d)+"[$__rate_interval])")
}

// increaseBy is how much a count grew in each interval: for rare events,
// where a per-second rate reads poorly.
func increaseBy(d *metrics.Def, by string) string {
	return aggregate("sum", by, "increase("+v(d)+"[$__rate_interval])")
}

// gaugeBy aggregates a gauge.
func gaugeBy(agg string, d *metrics.Def, by string) string { return aggregate(agg, by, v(d)) }

// quantile estimates a quantile of a timing (a histogram in seconds) from
// its buckets.
func quantile(q float64, d *metrics.Def, by string) string {
	le := "le"
	if by != "" {
		le += ", " + by
	}
	return fmt.Sprintf("histogram_quantile(%g, sum by (%s) (rate(%s[$__rate_interval])))", q, le, series(d, "_bucket"))
}

// mean is the exact average of a timing over each interval.
func mean(d *metrics.Def, by string) string {
	return fmt.Sprintf("%s / %s",
		aggregate("sum", by, "rate("+series(d, "_sum")+"[$__rate_interval])"),
		aggregate("sum", by, "rate("+series(d, "_count")+"[$__rate_interval])"))
}

// owned keeps, of a per-partition gauge, the series of the worker that has
// read the partition furthest: the partition's current owner. A worker that
// gave a partition away in a rebalance stops updating that partition's
// series, but statsd_exporter keeps serving its last value (until the
// mapping's ttl), so without this the old owner's frozen lag would mix with
// the new owner's. When the two have read equally far, both are kept; the
// newer report has the higher (or equal) high watermark, so max by
// partition picks it.
func owned(d *metrics.Def) string {
	read := v(metrics.ReadOffset)
	return fmt.Sprintf("(%s and on (env, service, instance, topic, partition) (%s == on (env, service, topic, partition) group_left max by (env, service, topic, partition) (%s)))",
		v(d), read, read)
}

// whileRebalancing multiplies a per-worker expression by the worker's
// rebalance state (1 while it does not process everything it holds, else
// 0). Recovery gauges are only sent while a recovery progresses, so a
// recovery cut short by a revocation leaves its last "records left" behind;
// a worker that processes everything it holds has nothing left to replay.
func whileRebalancing(expr string) string {
	return fmt.Sprintf("%s * on (instance) group_left %s", expr, gaugeBy("max", metrics.RebalanceState, "instance"))
}

// Rare per-partition series (assignments, hand-overs, recoveries) need
// their sum taken before the increase. statsd_exporter creates a counter or
// histogram series at its first event, and increase() cannot see the step
// from "no series" to the first value: the first assignment, hand-over or
// recovery of each partition on each worker would never show (a recovery
// smaller than one progress batch is a single event). Summed per worker
// first, a new partition's first event is a step of the sum, which
// increase() over a subquery sees; only a worker's very first event of the
// kind stays invisible.
func sparseIncrease(d *metrics.Def, suffix, by string) string {
	return fmt.Sprintf("increase((%s)[$__rate_interval:])", aggregate("sum", by, series(d, suffix)))
}

// sparseIncreaseOver is sparseIncrease summed by one label whose values are
// known in advance (what a partition was taken over from). Each value gets a
// series of zeros from the metric's first event on, so that the first event
// of a value shows too: without it, the first failover to standby copies
// since the exporters started would create the sum's standby series, and
// increase() would not see that step.
func sparseIncreaseOver(d *metrics.Def, label string, values []string) string {
	sum := aggregate("sum", label, v(d))
	for _, val := range values {
		sum += fmt.Sprintf(` or label_replace(0 * group(%s), %q, %q, "", "")`, v(d), label, val)
	}
	return fmt.Sprintf("increase((%s)[$__rate_interval:])", sum)
}

// sparseRate is sparseIncrease per second.
func sparseRate(d *metrics.Def, by string) string {
	return fmt.Sprintf("rate((%s)[$__rate_interval:])", aggregate("sum", by, v(d)))
}

// sparseMean is mean for a rare per-partition timing.
func sparseMean(d *metrics.Def, by string) string {
	return sparseIncrease(d, "_sum", by) + " / " + sparseIncrease(d, "_count", by)
}

// sparseQuantile is quantile for a rare per-partition timing.
func sparseQuantile(q float64, d *metrics.Def, by string) string {
	le := "le"
	if by != "" {
		le += ", " + by
	}
	return fmt.Sprintf("histogram_quantile(%g, %s)", q, sparseIncrease(d, "_bucket", le))
}

func aggregate(agg, by, expr string) string {
	if by == "" {
		return fmt.Sprintf("%s(%s)", agg, expr)
	}
	return fmt.Sprintf("%s by (%s) (%s)", agg, by, expr)
}

// dd is the Datadog name of d.
func dd(d *metrics.Def) string { return Namespace + "." + d.Name }

// ddq renders a Datadog metric query: space aggregation, metric (with a
// suffix for timing aggregates such as .95percentile), the dashboard scope,
// an optional group-by and an optional function such as .as_count().
func ddq(agg string, d *metrics.Def, suffix, by, fn string) string {
	q := agg + ":" + dd(d) + suffix + DatadogScope
	if by != "" {
		q += " by {" + by + "}"
	}
	return q + fn
}
