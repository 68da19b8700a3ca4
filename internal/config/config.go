// Package config reads the worker's settings from the environment into one
// typed struct. Every variable is read once, at start, and validated; a bad
// value is reported as an *Error naming the variable, the value and what is
// allowed, so that main can exit with status 2 and one clear line.
package config

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	neturl "net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/window"
)

// Guarantee is the processing guarantee of the worker.
type Guarantee string

// The processing guarantees a worker can run with.
const (
	AtLeastOnce Guarantee = "at_least_once"
	ExactlyOnce Guarantee = "exactly_once"
)

// Config is the worker's whole configuration.
type Config struct {
	Service     string // DD_SERVICE: metric namespace, tracer service name
	Env         string // DD_ENV
	Version     string // DD_VERSION
	Group       string // KAFKA_GROUP: consumer group, prefix of changelog topics (app.Changelog)
	Topic       string // the source topic, from the variable the app declares (Spec.TopicVar)
	Partitions  int32  // PARTITIONS: used when topics are created
	Replication int16  // TOPIC_REPLICATION_FACTOR: -1 means the broker's default

	// Windows are the windows of the app's windowed tables, by table, from
	// the variables they declare (Spec.Windows).
	Windows map[string]window.Hopping
	// App are the app's own settings as read (Spec.Settings), for the
	// start-up log line; secrets masked.
	App []slog.Attr

	Brokers      []string // KAFKA_BROKERS; empty starts the embedded dev broker
	EmbeddedAddr string   // EMBEDDED_KAFKA_ADDR
	InstanceID   string   // KAFKA_INSTANCE_ID: static membership

	// The schema registry. The password is never logged.
	RegistryURL      string // SCHEMA_REGISTRY_URL; empty: the embedded dev registry with the embedded broker, else none
	RegistryUser     string // SCHEMA_REGISTRY_USERNAME
	RegistryPassword string // SCHEMA_REGISTRY_PASSWORD
	RegistryCAFile   string // SCHEMA_REGISTRY_CA_FILE
	EmbeddedRegistry string // EMBEDDED_REGISTRY_ADDR
	Guarantee        Guarantee
	// Rebalance is the group protocol: cooperative (incremental) or eager.
	Rebalance      string        // KAFKA_REBALANCE_PROTOCOL
	SessionTimeout time.Duration // KAFKA_SESSION_TIMEOUT
	// AdvertisedURL is where other workers reach this one's HTTP pages for
	// cluster-wide reads; empty derives it from the hostname and WEB_ADDR.
	AdvertisedURL string // ADVERTISED_URL
	// StandbyReplicas is how many warm copies of each table partition other
	// workers keep by tailing its changelog.
	StandbyReplicas int // TABLE_STANDBY_REPLICAS

	// Kafka security. The password is never logged.
	TLS           bool   // KAFKA_TLS_ENABLED
	TLSCAFile     string // KAFKA_TLS_CA_FILE: PEM CA bundle; empty uses the system roots
	TLSCertFile   string // KAFKA_TLS_CERT_FILE: client certificate (mutual TLS)
	TLSKeyFile    string // KAFKA_TLS_KEY_FILE
	TLSServerName string // KAFKA_TLS_SERVER_NAME: overrides the name checked in the broker's certificate
	SASLMechanism string // KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or empty
	SASLUser      string // KAFKA_SASL_USERNAME
	SASLPassword  string // KAFKA_SASL_PASSWORD

	WebAddr         string        // WEB_ADDR
	PprofAddr       string        // PPROF_ADDR: serve net/http/pprof there (keep it private); empty turns it off
	DataDir         string        // DATA_DIR
	CommitInterval  time.Duration // COMMIT_INTERVAL
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT

	// Observability.
	StatsdAddr        string        // DD_DOGSTATSD_URL, or DD_AGENT_HOST[:DD_DOGSTATSD_PORT]; empty turns metrics off
	LivecheckInterval time.Duration // LIVECHECK_INTERVAL; 0 turns the livecheck off
	LivecheckSLO      time.Duration // LIVECHECK_SLO
	StallTimeout      time.Duration // STALL_TIMEOUT: a lagging partition whose loop is stuck this long makes the worker not live
	MetricsInterval   time.Duration // METRICS_INTERVAL: how often sampled gauges are sent
	// Traces, from the standard OpenTelemetry variables.
	TracesExporter     string // OTEL_TRACES_EXPORTER: otlp, console, none; empty decides from the endpoint
	OTLPEndpoint       string // OTEL_EXPORTER_OTLP_ENDPOINT (base URL)
	OTLPTracesEndpoint string // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (full URL, wins)
	OTLPProtocol       string // OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
	TraceServiceName   string // OTEL_SERVICE_NAME

	LogFormat string     // LOG_FORMAT: json or text
	LogLevel  slog.Level // LOG_LEVEL
}

// Embedded reports whether the worker runs its own development broker.
func (c *Config) Embedded() bool { return len(c.Brokers) == 0 }

// Registry is the schema registry's URL and whether the worker serves it
// itself (the embedded dev registry); an empty URL means none.
func (c *Config) Registry() (url string, embedded bool) {
	switch {
	case c.RegistryURL != "":
		return c.RegistryURL, false
	case c.Embedded():
		return "http://" + c.EmbeddedRegistry, true
	}
	return "", false
}

// WindowsTopic receives the results of closed windows.
func (c *Config) WindowsTopic() string { return c.Topic + "-windows" }

// DeadLetterTopic receives records that cannot be processed.
func (c *Config) DeadLetterTopic() string { return c.Topic + "-dlq" }

// Error is a validation failure of one variable.
type Error struct {
	Var     string
	Value   string
	Allowed string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config: %s=%q is invalid: want %s", e.Var, e.Value, e.Allowed)
}

// Spec is what an app declares about its settings: the runtime's are the
// same for every app.
type Spec struct {
	// Name is the default of DD_SERVICE and KAFKA_GROUP.
	Name string
	// TopicVar names the variable of the source topic; Topic is its
	// default.
	TopicVar, Topic string
	// Windows are the windowed tables' windows: each is read from
	// <Var>_SIZE, <Var>_STEP, <Var>_GRACE and <Var>_EXPIRES.
	Windows []WindowSpec
	// Settings reads the app's own settings, with the same checks and
	// errors as the runtime's; what it reads is logged at start.
	Settings func(r *Reader)
}

// WindowSpec declares the window of table: its variables' prefix and
// defaults.
type WindowSpec struct {
	Table string
	Var   string // WINDOW: WINDOW_SIZE, WINDOW_STEP, WINDOW_GRACE, WINDOW_EXPIRES
	// Size and Expires are the defaults; a zero Step means Size
	// (tumbling windows).
	Size, Step, Grace, Expires time.Duration
}

// Load reads and validates the configuration of the app that spec
// declares. getenv is os.Getenv in production and a map lookup in tests.
func Load(getenv func(string) string, spec Spec) (*Config, error) {
	return load(&Reader{getenv: getenv}, spec)
}

// Setting is one variable a worker reads: its default, as documented, and
// what it means.
type Setting struct {
	Var, Default, Doc string
}

// Settings lists the variables a worker of spec reads, in the order it
// reads them (docs/settings.md is made from it).
func Settings(spec Spec) []Setting {
	r := &Reader{getenv: func(string) string { return "" }}
	_, _ = load(r, spec)
	return r.declared
}

// Markdown is the table of settings for the docs.
func Markdown(ss []Setting) string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n|---|---|---|\n")
	for _, s := range ss {
		def := "empty"
		if s.Default != "" {
			def = "`" + s.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", s.Var, def, s.Doc)
	}
	return b.String()
}

func load(r *Reader, spec Spec) (*Config, error) {
	r.Doc(spec.TopicVar, "the source topic; records that cannot be processed go to `<topic>-dlq`")
	c := &Config{
		Service:            r.name("DD_SERVICE", spec.Name),
		Env:                r.str("DD_ENV", "dev"),
		Version:            r.str("DD_VERSION", "dev"),
		Group:              r.name("KAFKA_GROUP", spec.Name),
		Topic:              r.topic(spec.TopicVar, spec.Topic),
		Partitions:         int32(r.integer("PARTITIONS", 8, 1, 10000)),
		Replication:        int16(r.integer("TOPIC_REPLICATION_FACTOR", -1, -1, 32)),
		Windows:            map[string]window.Hopping{},
		Brokers:            r.list("KAFKA_BROKERS"),
		EmbeddedAddr:       r.addr("EMBEDDED_KAFKA_ADDR", "127.0.0.1:9092"),
		RegistryURL:        r.serviceURL("SCHEMA_REGISTRY_URL"),
		RegistryUser:       r.str("SCHEMA_REGISTRY_USERNAME", ""),
		RegistryPassword:   r.secret("SCHEMA_REGISTRY_PASSWORD"),
		RegistryCAFile:     r.file("SCHEMA_REGISTRY_CA_FILE"),
		EmbeddedRegistry:   r.addr("EMBEDDED_REGISTRY_ADDR", "127.0.0.1:8081"),
		InstanceID:         r.str("KAFKA_INSTANCE_ID", ""),
		Guarantee:          Guarantee(r.oneOf("PROCESSING_GUARANTEE", string(AtLeastOnce), string(AtLeastOnce), string(ExactlyOnce))),
		Rebalance:          r.oneOf("KAFKA_REBALANCE_PROTOCOL", "cooperative", "cooperative", "eager"),
		SessionTimeout:     r.duration("KAFKA_SESSION_TIMEOUT", 10*time.Second, 6*time.Second),
		AdvertisedURL:      r.url("ADVERTISED_URL"),
		StandbyReplicas:    r.integer("TABLE_STANDBY_REPLICAS", 1, 0, 3),
		TLS:                r.boolean("KAFKA_TLS_ENABLED"),
		TLSCAFile:          r.file("KAFKA_TLS_CA_FILE"),
		TLSCertFile:        r.file("KAFKA_TLS_CERT_FILE"),
		TLSKeyFile:         r.file("KAFKA_TLS_KEY_FILE"),
		TLSServerName:      r.str("KAFKA_TLS_SERVER_NAME", ""),
		SASLMechanism:      r.oneOf("KAFKA_SASL_MECHANISM", "", "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
		SASLUser:           r.str("KAFKA_SASL_USERNAME", ""),
		SASLPassword:       r.secret("KAFKA_SASL_PASSWORD"),
		WebAddr:            r.addr("WEB_ADDR", ":8088"),
		PprofAddr:          r.optionalAddr("PPROF_ADDR"),
		DataDir:            r.str("DATA_DIR", "./data"),
		CommitInterval:     r.duration("COMMIT_INTERVAL", time.Second, 10*time.Millisecond),
		ShutdownTimeout:    r.duration("SHUTDOWN_TIMEOUT", 30*time.Second, time.Second),
		StatsdAddr:         r.statsdAddr(),
		LivecheckInterval:  r.durationOrZero("LIVECHECK_INTERVAL", 30*time.Second, time.Second),
		LivecheckSLO:       r.duration("LIVECHECK_SLO", 10*time.Second, 100*time.Millisecond),
		StallTimeout:       r.duration("STALL_TIMEOUT", 2*time.Minute, time.Second),
		MetricsInterval:    r.duration("METRICS_INTERVAL", 10*time.Second, 100*time.Millisecond),
		TracesExporter:     r.oneOf("OTEL_TRACES_EXPORTER", "", "", "otlp", "console", "none"),
		OTLPEndpoint:       r.str("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
		OTLPTracesEndpoint: r.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
		OTLPProtocol:       r.oneOf("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", r.oneOf("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "grpc", "http/protobuf"), "grpc", "http/protobuf"),
		LogFormat:          r.oneOf("LOG_FORMAT", "json", "json", "text"),
		LogLevel:           r.level("LOG_LEVEL", slog.LevelInfo),
	}
	for _, w := range spec.Windows {
		c.Windows[w.Table] = r.window(w, c.Group)
	}
	if spec.Settings != nil {
		r.app = true
		spec.Settings(r)
		c.App = r.logged
	}
	if r.err != nil {
		return nil, r.err
	}
	c.TraceServiceName = r.str("OTEL_SERVICE_NAME", c.Service)
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, &Error{Var: "KAFKA_TLS_KEY_FILE", Value: c.TLSKeyFile, Allowed: "set together with KAFKA_TLS_CERT_FILE, or neither"}
	}
	if c.SASLMechanism != "" && (c.SASLUser == "" || c.SASLPassword == "") {
		return nil, &Error{Var: "KAFKA_SASL_USERNAME", Value: c.SASLUser, Allowed: "a user name and KAFKA_SASL_PASSWORD when KAFKA_SASL_MECHANISM is set"}
	}
	return c, nil
}

// window reads a windowed table's window.
func (r *Reader) window(w WindowSpec, group string) window.Hopping {
	// The table by its changelog, the name it has everywhere.
	table := "the table with the changelog `" + group + "-" + w.Table + "-changelog`"
	r.Doc(w.Var+"_SIZE", "size of the windows (a Go duration) of "+table)
	r.Doc(w.Var+"_STEP", "how often a window of "+table+" starts: "+w.Var+"_SIZE gives tumbling windows, a divisor of it hopping ones (an event counts in size/step windows)")
	r.Doc(w.Var+"_GRACE", "how long after its end a window of "+table+" still takes late events before it closes and its result is emitted (at most "+w.Var+"_EXPIRES, to which the default shrinks)")
	r.Doc(w.Var+"_EXPIRES", "how long after its end a window of "+table+" is kept (relative to the newest event time)")
	size := r.duration(w.Var+"_SIZE", w.Size, time.Second)
	step := w.Step
	if step == 0 {
		// Tumbling by default, whatever the size.
		r.declare(w.Var+"_STEP", w.Var+"_SIZE")
		step = size
	}
	step = r.duration(w.Var+"_STEP", step, time.Millisecond)
	grace := r.duration(w.Var+"_GRACE", w.Grace, 0)
	expires := r.duration(w.Var+"_EXPIRES", w.Expires, time.Second)
	if size%time.Millisecond != 0 {
		r.fail(w.Var+"_SIZE", size.String(), "a whole number of milliseconds")
	}
	if step > size || size%step != 0 || step%time.Millisecond != 0 {
		r.fail(w.Var+"_STEP", r.raw(w.Var+"_STEP", step), "a whole number of milliseconds that divides "+w.Var+"_SIZE ("+size.String()+")")
	}
	if expires < size {
		r.fail(w.Var+"_EXPIRES", expires.String(), "a duration at least "+w.Var+"_SIZE ("+size.String()+")")
	}
	if grace > expires && strings.TrimSpace(r.getenv(w.Var+"_GRACE")) == "" {
		grace = expires // the default, for windows that expire sooner
	}
	if grace > expires {
		r.fail(w.Var+"_GRACE", r.raw(w.Var+"_GRACE", grace), "a duration at most "+w.Var+"_EXPIRES ("+expires.String()+")")
	}
	return window.Hopping{Size: size, Step: step, Grace: grace, Expires: expires}
}

// raw is the value of name as set, or d when it is not set.
func (r *Reader) raw(name string, d time.Duration) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return d.String()
}

// LogValue renders the effective configuration for the start-up log line,
// with the SASL and schema registry passwords masked.
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("service", c.Service),
		slog.String("env", c.Env),
		slog.String("version", c.Version),
		slog.String("group", c.Group),
		slog.String("topic", c.Topic),
		slog.Int("partitions", int(c.Partitions)),
		slog.Any("windows", windowsValue(c.Windows)),
		slog.Any("app", slog.GroupValue(c.App...)),
		slog.String("brokers", strings.Join(c.Brokers, ",")),
		slog.Bool("embedded_broker", c.Embedded()),
		slog.String("schema_registry_url", c.RegistryURL),
		slog.String("schema_registry_username", c.RegistryUser),
		slog.String("schema_registry_password", mask(c.RegistryPassword)),
		slog.String("schema_registry_ca_file", c.RegistryCAFile),
		slog.String("instance_id", c.InstanceID),
		slog.String("guarantee", string(c.Guarantee)),
		slog.String("rebalance", c.Rebalance),
		slog.Duration("session_timeout", c.SessionTimeout),
		slog.String("advertised_url", c.AdvertisedURL),
		slog.Int("standby_replicas", c.StandbyReplicas),
		slog.Bool("tls", c.TLS),
		slog.String("tls_ca_file", c.TLSCAFile),
		slog.String("tls_cert_file", c.TLSCertFile),
		slog.String("sasl_mechanism", c.SASLMechanism),
		slog.String("sasl_username", c.SASLUser),
		slog.String("sasl_password", mask(c.SASLPassword)),
		slog.String("web_addr", c.WebAddr),
		slog.String("statsd_addr", c.StatsdAddr),
		slog.Duration("livecheck_interval", c.LivecheckInterval),
		slog.Duration("livecheck_slo", c.LivecheckSLO),
		slog.Duration("stall_timeout", c.StallTimeout),
		slog.String("traces_exporter", c.TracesExporter),
		slog.String("otlp_endpoint", c.OTLPEndpoint+c.OTLPTracesEndpoint),
		slog.String("otlp_protocol", c.OTLPProtocol),
		slog.String("data_dir", c.DataDir),
		slog.Duration("commit_interval", c.CommitInterval),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout),
	)
}

// windowsValue logs each table's window.
func windowsValue(ws map[string]window.Hopping) slog.Value {
	attrs := make([]slog.Attr, 0, len(ws))
	for _, t := range slices.Sorted(maps.Keys(ws)) {
		w := ws[t]
		attrs = append(attrs, slog.Group(t, slog.Duration("size", w.Size), slog.Duration("step", w.Step),
			slog.Duration("grace", w.Grace), slog.Duration("expires", w.Expires)))
	}
	return slog.GroupValue(attrs...)
}

func mask(secret string) string {
	if secret == "" {
		return ""
	}
	return "*****"
}

// String never shows the SASL password either.
func (c *Config) String() string { return c.LogValue().String() }

// Reader reads settings; it keeps the first error so that a list of
// settings reads flat. An app reads its own with its exported methods.
type Reader struct {
	getenv func(string) string
	err    error
	// declared are the variables read, with their defaults and docs;
	// docs are the app's (Doc).
	declared []Setting
	docs     map[string]string
	// app: the reads are the app's, logged as logged.
	app    bool
	logged []slog.Attr
}

// Str reads a string.
func (r *Reader) Str(name, def string) string { return r.log(name, r.str(name, def)) }

// Topic reads a Kafka topic name.
func (r *Reader) Topic(name, def string) string { return r.log(name, r.topic(name, def)) }

// Int reads an integer from lo to hi.
func (r *Reader) Int(name string, def, lo, hi int) int {
	n := r.integer(name, def, lo, hi)
	r.log(name, strconv.Itoa(n))
	return n
}

// Duration reads a Go duration of at least lo.
func (r *Reader) Duration(name string, def, lo time.Duration) time.Duration {
	d := r.duration(name, def, lo)
	r.log(name, d.String())
	return d
}

// OneOf reads one of the allowed values.
func (r *Reader) OneOf(name, def string, allowed ...string) string {
	return r.log(name, r.oneOf(name, def, allowed...))
}

// Secret reads a string that is never logged.
func (r *Reader) Secret(name string) string {
	v := r.secret(name)
	r.log(name, mask(v))
	return v
}

func (r *Reader) secret(name string) string {
	r.declare(name, "")
	return r.getenv(name)
}

// Doc says what the variable name means, for docs/settings.md.
func (r *Reader) Doc(name, text string) {
	if r.docs == nil {
		r.docs = map[string]string{}
	}
	r.docs[name] = text
	for i := range r.declared {
		if r.declared[i].Var == name {
			r.declared[i].Doc = text
		}
	}
}

// declare notes that name is read with the default def; the first
// declaration of a variable is the one kept.
func (r *Reader) declare(name, def string) {
	for _, s := range r.declared {
		if s.Var == name {
			return
		}
	}
	doc, ok := r.docs[name]
	if !ok {
		doc = runtimeDocs()[name]
	}
	r.declared = append(r.declared, Setting{Var: name, Default: def, Doc: doc})
}

// shortDuration writes d as a person would: 1m rather than 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Fail reports a value that the checks above cannot see is wrong (one
// that depends on another setting, say); the first failure is the one
// reported.
func (r *Reader) Fail(name, value, allowed string) { r.fail(name, value, allowed) }

func (r *Reader) log(name, v string) string {
	if r.app {
		r.logged = append(r.logged, slog.String(strings.ToLower(name), v))
	}
	return v
}

func (r *Reader) fail(name, value, allowed string) {
	if r.err == nil {
		r.err = &Error{Var: name, Value: value, Allowed: allowed}
	}
}

func (r *Reader) str(name, def string) string {
	r.declare(name, def)
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

// name accepts what is safe as a metric namespace, group id and topic prefix.
func (r *Reader) name(name, def string) string {
	v := r.str(name, def)
	for i, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (i > 0 && (c == '-' || c == '_'))
		if !ok || len(v) > 100 {
			r.fail(name, v, "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 100 characters")
			return def
		}
	}
	return v
}

func (r *Reader) topic(name, def string) string {
	v := r.str(name, def)
	for _, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok || len(v) > 200 || v == "." || v == ".." {
			r.fail(name, v, "a Kafka topic name: letters, digits, '.', '_' and '-', at most 200 characters")
			return def
		}
	}
	return v
}

func (r *Reader) integer(name string, def, lo, hi int) int {
	r.declare(name, strconv.Itoa(def))
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < lo || n > hi {
		r.fail(name, raw, fmt.Sprintf("an integer from %d to %d", lo, hi))
		return def
	}
	return n
}

func (r *Reader) duration(name string, def, lo time.Duration) time.Duration {
	r.declare(name, shortDuration(def))
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d < lo {
		r.fail(name, raw, "a Go duration such as 30s, 1m or 1h, at least "+lo.String())
		return def
	}
	return d
}

func (r *Reader) list(name string) []string {
	r.declare(name, "")
	var out []string
	for _, part := range strings.Split(r.getenv(name), ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(part); err != nil {
			r.fail(name, r.getenv(name), "a comma-separated list of host:port")
			return nil
		}
		out = append(out, part)
	}
	return out
}

func (r *Reader) addr(name, def string) string {
	v := r.str(name, def)
	if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
		r.fail(name, v, "host:port or :port")
		return def
	}
	return v
}

// durationOrZero is duration, where "0" turns the feature off.
func (r *Reader) durationOrZero(name string, def, lo time.Duration) time.Duration {
	r.declare(name, shortDuration(def))
	if strings.TrimSpace(r.getenv(name)) == "0" {
		return 0
	}
	return r.duration(name, def, lo)
}

// statsdAddr follows the datadog-go conventions: DD_DOGSTATSD_URL
// (unix:///path or udp://host:port) wins over DD_AGENT_HOST and
// DD_DOGSTATSD_PORT (default 8125).
func (r *Reader) statsdAddr() string {
	r.declare("DD_DOGSTATSD_URL", "")
	r.declare("DD_AGENT_HOST", "")
	r.declare("DD_DOGSTATSD_PORT", "8125")
	if u := r.str("DD_DOGSTATSD_URL", ""); u != "" {
		switch {
		case strings.HasPrefix(u, "unix://"):
			return u
		case strings.HasPrefix(u, "udp://"):
			return strings.TrimPrefix(u, "udp://")
		default:
			r.fail("DD_DOGSTATSD_URL", u, "unix:///path/to/dsd.socket or udp://host:port")
			return ""
		}
	}
	host := r.str("DD_AGENT_HOST", "")
	if host == "" {
		return ""
	}
	port := r.str("DD_DOGSTATSD_PORT", "8125")
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		r.fail("DD_DOGSTATSD_PORT", port, "a port number")
		return ""
	}
	return net.JoinHostPort(host, port)
}

func (r *Reader) boolean(name string) bool {
	r.declare(name, "false")
	switch v := strings.ToLower(r.str(name, "")); v {
	case "", "0", "false", "no":
		return false
	case "1", "true", "yes":
		return true
	default:
		r.fail(name, v, "true or false")
		return false
	}
}

// file accepts a path to a readable file, or nothing.
func (r *Reader) file(name string) string {
	v := r.str(name, "")
	if v == "" {
		return ""
	}
	if f, err := os.Open(v); err != nil {
		r.fail(name, v, "a readable file ("+err.Error()+")")
		return ""
	} else {
		_ = f.Close()
	}
	return v
}

func (r *Reader) url(name string) string {
	v := r.str(name, "")
	if v == "" {
		return ""
	}
	u, err := neturl.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		r.fail(name, v, "an absolute http(s) URL with no path, such as http://worker-0.worker:8088")
		return ""
	}
	return strings.TrimSuffix(v, "/")
}

// serviceURL reads the base URL of a service; credentials have their own
// variables, so that the URL can be logged.
func (r *Reader) serviceURL(name string) string {
	v := r.str(name, "")
	if v == "" {
		return ""
	}
	u, err := neturl.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		r.fail(name, "(not shown)", "an absolute http(s) URL without user info or query, such as https://registry.example.com:8081")
		return ""
	}
	return strings.TrimSuffix(v, "/")
}

func (r *Reader) optionalAddr(name string) string {
	if r.str(name, "") == "" {
		return ""
	}
	return r.addr(name, "")
}

func (r *Reader) oneOf(name, def string, allowed ...string) string {
	v := r.str(name, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(name, v, "one of "+strings.Join(allowed, ", "))
	return def
}

func (r *Reader) level(name string, def slog.Level) slog.Level {
	r.declare(name, strings.ToLower(def.String()))
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(raw)); err != nil {
		r.fail(name, raw, "one of debug, info, warn, error")
		return def
	}
	return l
}
