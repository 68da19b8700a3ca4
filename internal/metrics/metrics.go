// Package metrics sends the worker's metrics to a DogStatsD agent with
// datadog-go: namespace "<service>.", global tags env and version, and
// client-side aggregation. Every metric is declared in list.go with its
// kind, tags and meaning; docs/metrics.md is generated from that list.
//
// The address comes from DD_DOGSTATSD_URL (unix:///path for UDS, or
// udp://host:port), else DD_AGENT_HOST and DD_DOGSTATSD_PORT. With none of
// them set, metrics are off.
package metrics

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/DataDog/datadog-go/v5/statsd"
)

// Kind is how a metric aggregates.
type Kind string

// The kinds of metric.
const (
	Count  Kind = "count"
	Gauge  Kind = "gauge"
	Timing Kind = "timing"
)

// Def declares one metric.
type Def struct {
	Name string
	Kind Kind
	Help string
	Tags []string // tag keys besides env and version
}

// all is the list the definitions in list.go add themselves to, in order,
// as the package initialises; nothing changes it after that. The metric
// definitions are variables only because Go has no constant structs.
var all []*Def

func def(name string, kind Kind, help string, tags ...string) *Def {
	d := &Def{Name: name, Kind: kind, Help: help}
	for _, t := range tags {
		if t != "" {
			d.Tags = append(d.Tags, t)
		}
	}
	all = append(all, d)
	return d
}

// All returns every declared metric, in declaration order.
func All() []*Def { return all }

// GlobalTags are the tags on every metric.
func GlobalTags() []string { return []string{"env", "version"} }

// Client sends metrics. A nil or disabled Client drops everything.
type Client struct {
	sd statsd.ClientInterface
}

// Options configure a Client.
type Options struct {
	Addr      string // host:port, unix:///path or udp://host:port; empty turns metrics off
	Namespace string // without the trailing dot
	Tags      []string
	// Interval is the sampling interval. Aggregated metrics are sent at it
	// when it is shorter than the client's 2s, so that every sample
	// arrives; a longer one keeps counts and timings fresh every 2s.
	Interval time.Duration
}

// defaultAggregation is how often the DogStatsD client sends what it
// aggregated, unless Options.Interval is shorter.
const defaultAggregation = 2 * time.Second

// statsdBuffers is how many payload buffers the DogStatsD client keeps.
const statsdBuffers = 64

// New returns a client sending to o.Addr, or a disabled client when o.Addr
// is empty.
func New(o Options) (*Client, error) {
	if o.Addr == "" {
		return &Client{sd: &statsd.NoOpClient{}}, nil
	}
	opts := []statsd.Option{
		statsd.WithNamespace(o.Namespace + "."),
		statsd.WithTags(o.Tags),
		statsd.WithExtendedClientSideAggregation(),
		statsd.WithBufferFlushInterval(time.Second),
		statsd.WithoutTelemetry(),
		// The client's default pool over UDP is 2,048 payload buffers made
		// up front, 4 MiB kept live for good. With client-side aggregation
		// a worker of 8 partitions sends 1 to 25 datagrams an interval; a
		// buffer beyond the pool is made when needed and dropped after.
		statsd.WithBufferPoolSize(statsdBuffers),
	}
	if o.Interval > 0 && o.Interval < defaultAggregation {
		opts = append(opts, statsd.WithAggregationInterval(o.Interval))
	}
	sd, err := statsd.New(o.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dogstatsd client for %s: %w", o.Addr, err)
	}
	return &Client{sd: sd}, nil
}

// Enabled reports whether metrics are sent anywhere.
func (c *Client) Enabled() bool {
	if c == nil {
		return false
	}
	_, noop := c.sd.(*statsd.NoOpClient)
	return !noop
}

// Count adds v to a count metric.
func (c *Client) Count(d *Def, v int64, tags ...string) {
	if c != nil {
		_ = c.sd.Count(d.Name, v, tags, 1)
	}
}

// Gauge sets a gauge metric.
func (c *Client) Gauge(d *Def, v float64, tags ...string) {
	if c != nil {
		_ = c.sd.Gauge(d.Name, v, tags, 1)
	}
}

// Timing records a duration.
func (c *Client) Timing(d *Def, v time.Duration, tags ...string) {
	if c != nil {
		_ = c.sd.Timing(d.Name, v, tags, 1)
	}
}

// Flush sends what is buffered.
func (c *Client) Flush() error {
	if c == nil {
		return nil
	}
	return c.sd.Flush()
}

// Close flushes and closes the client.
func (c *Client) Close() error {
	if c == nil {
		return nil
	}
	return c.sd.Close()
}

// Tag renders one tag.
func Tag(key, value string) string { return key + ":" + value }

// Partition renders a partition tag.
func Partition(p int32) string { return "partition:" + strconv.Itoa(int(p)) }

// Markdown renders the metric list as the table of docs/metrics.md.
func Markdown(namespace string) string {
	var b strings.Builder
	b.WriteString("# Metrics\n\n")
	b.WriteString("Generated from the runtime's metric list (`internal/metrics/list.go`) under the app's name; a\n")
	b.WriteString("test of the app fails when this file and the list differ (`UPDATE_DOCS=1 go test` in the app's\n")
	b.WriteString("package writes it). Every metric carries the tags `env` and `version`; the\n")
	b.WriteString("tags column lists the others. Dashboards and alerts use only these names.\n\n")
	b.WriteString("The sampled gauges are read every `METRICS_INTERVAL`. The client aggregates and sends every\n")
	b.WriteString("`METRICS_INTERVAL` or every 2 s, whichever is shorter: a gauge set twice in one send arrives\n")
	b.WriteString("with its last value, a count summed.\n\n")
	b.WriteString("| metric | kind | tags | meaning |\n|---|---|---|---|\n")
	for _, d := range all {
		tags := strings.Join(d.Tags, ", ")
		fmt.Fprintf(&b, "| `%s.%s` | %s | %s | %s |\n", namespace, d.Name, d.Kind, tags, d.Help)
	}
	return b.String()
}
