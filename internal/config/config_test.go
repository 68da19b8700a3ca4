package config_test

import (
	"bytes"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/window"
)

// env is a map-backed getenv.
type env map[string]string

func (e env) getenv(name string) string { return e[name] }

// spec declares an app like the example: a source topic with its own
// variable and a windowed table.
func spec() config.Spec {
	return config.Spec{
		Name: "pageviews", TopicVar: "PAGE_VIEWS_TOPIC", Topic: "page_views",
		Windows: []config.WindowSpec{{Table: "views", Var: "WINDOW", Size: time.Minute, Grace: 10 * time.Second, Expires: 5 * time.Minute}},
	}
}

func load(t testing.TB, e env) *config.Config {
	t.Helper()
	c, err := config.Load(e.getenv, spec())
	if err != nil {
		t.Fatalf("Load(%v): %v", e, err)
	}
	return c
}

// loadErr loads e, expects a *config.Error naming variable and holding
// value, and returns it.
func loadErr(t testing.TB, e env, variable, value string) *config.Error {
	t.Helper()
	c, err := config.Load(e.getenv, spec())
	if err == nil {
		t.Fatalf("Load(%v) = %+v, want an error for %s", e, c, variable)
	}
	if c != nil {
		t.Errorf("Load(%v) returned a config with its error %v", e, err)
	}
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load(%v) error %v (%T) is not a *config.Error", e, err, err)
	}
	if cerr.Var != variable || cerr.Value != value {
		t.Errorf("Load(%v) error names %s=%q, want %s=%q", e, cerr.Var, cerr.Value, variable, value)
	}
	if cerr.Allowed == "" {
		t.Errorf("Load(%v) error %v does not say what is allowed", e, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, variable) || !strings.Contains(msg, value) || !strings.Contains(msg, cerr.Allowed) {
		t.Errorf("error message %q must name %s, its value %q and what is allowed (%q)", msg, variable, value, cerr.Allowed)
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error message %q is not one line", msg)
	}
	return cerr
}

func TestLoadDefaults(t *testing.T) {
	c := load(t, env{})
	want := config.Config{
		Service:          "pageviews",
		Env:              "dev",
		Version:          "dev",
		Group:            "pageviews",
		Topic:            "page_views",
		Partitions:       8,
		Replication:      -1,
		Windows:          map[string]window.Hopping{"views": {Size: time.Minute, Step: time.Minute, Grace: 10 * time.Second, Expires: 5 * time.Minute}},
		Brokers:          nil,
		EmbeddedAddr:     "127.0.0.1:9092",
		EmbeddedRegistry: "127.0.0.1:8081",
		InstanceID:       "",
		Guarantee:        config.AtLeastOnce,
		Rebalance:        "cooperative",
		SessionTimeout:   10 * time.Second,
		StandbyReplicas:  1,
		WebAddr:          ":8088",
		DataDir:          "./data",
		CommitInterval:   time.Second,
		ShutdownTimeout:  30 * time.Second,
		LogFormat:        "json",
		LogLevel:         slog.LevelInfo,

		LivecheckInterval: 30 * time.Second,
		LivecheckSLO:      10 * time.Second,
		StallTimeout:      2 * time.Minute,
		MetricsInterval:   10 * time.Second,
		OTLPProtocol:      "http/protobuf",
		TraceServiceName:  "pageviews",
	}
	if !equalConfig(*c, want) {
		t.Errorf("Load(empty) =\n%+v\nwant\n%+v", *c, want)
	}
	if !c.Embedded() {
		t.Error("no KAFKA_BROKERS: Embedded() = false, want true")
	}
}

// equalConfig compares every field, treating nil and empty broker lists as
// equal.
func equalConfig(a, b config.Config) bool {
	if !slices.Equal(a.Brokers, b.Brokers) {
		return false
	}
	a.Brokers, b.Brokers = nil, nil
	return reflect.DeepEqual(a, b)
}

func TestLoadBlankValuesMeanDefault(t *testing.T) {
	e := env{}
	for _, name := range []string{
		"DD_SERVICE", "DD_ENV", "DD_VERSION", "KAFKA_GROUP", "PAGE_VIEWS_TOPIC", "PARTITIONS",
		"TOPIC_REPLICATION_FACTOR", "WINDOW_SIZE", "WINDOW_EXPIRES", "KAFKA_BROKERS",
		"EMBEDDED_KAFKA_ADDR", "KAFKA_INSTANCE_ID", "PROCESSING_GUARANTEE", "WEB_ADDR", "DATA_DIR",
		"COMMIT_INTERVAL", "SHUTDOWN_TIMEOUT", "LOG_FORMAT", "LOG_LEVEL",
	} {
		e[name] = " \t "
	}
	if got, want := load(t, e), load(t, env{}); !equalConfig(*got, *want) {
		t.Errorf("blank variables: Load =\n%+v\nwant the defaults\n%+v", *got, *want)
	}
}

func TestLoadValid(t *testing.T) {
	tests := []struct {
		name  string
		env   env
		check func(c *config.Config) bool
	}{
		{"service", env{"DD_SERVICE": "clicks-2_x"}, func(c *config.Config) bool { return c.Service == "clicks-2_x" }},
		{"service starting with a digit", env{"DD_SERVICE": "9lives"}, func(c *config.Config) bool { return c.Service == "9lives" }},
		{"service of 100 characters", env{"DD_SERVICE": strings.Repeat("s", 100)}, func(c *config.Config) bool { return len(c.Service) == 100 }},
		{"env", env{"DD_ENV": "prod"}, func(c *config.Config) bool { return c.Env == "prod" }},
		{"version is trimmed", env{"DD_VERSION": "  v1.2.3\n"}, func(c *config.Config) bool { return c.Version == "v1.2.3" }},
		{"group", env{"KAFKA_GROUP": "clicks"}, func(c *config.Config) bool { return c.Group == "clicks" }},
		{"topic with dots and capitals", env{"PAGE_VIEWS_TOPIC": "Site.page-views_v2"}, func(c *config.Config) bool { return c.Topic == "Site.page-views_v2" }},
		{"topic of 200 characters", env{"PAGE_VIEWS_TOPIC": strings.Repeat("t", 200)}, func(c *config.Config) bool { return len(c.Topic) == 200 }},
		{"partitions minimum", env{"PARTITIONS": "1"}, func(c *config.Config) bool { return c.Partitions == 1 }},
		{"partitions maximum", env{"PARTITIONS": "10000"}, func(c *config.Config) bool { return c.Partitions == 10000 }},
		{"replication broker default", env{"TOPIC_REPLICATION_FACTOR": "-1"}, func(c *config.Config) bool { return c.Replication == -1 }},
		{"replication", env{"TOPIC_REPLICATION_FACTOR": "3"}, func(c *config.Config) bool { return c.Replication == 3 }},
		{"replication maximum", env{"TOPIC_REPLICATION_FACTOR": "32"}, func(c *config.Config) bool { return c.Replication == 32 }},
		{"window size", env{"WINDOW_SIZE": "10s"}, func(c *config.Config) bool { return c.Windows["views"].Size == 10*time.Second }},
		{"window size minimum", env{"WINDOW_SIZE": "1s"}, func(c *config.Config) bool { return c.Windows["views"].Size == time.Second }},
		{"window size with milliseconds", env{"WINDOW_SIZE": "1500ms"}, func(c *config.Config) bool { return c.Windows["views"].Size == 1500*time.Millisecond }},
		{"window expires", env{"WINDOW_EXPIRES": "1h"}, func(c *config.Config) bool { return c.Windows["views"].Expires == time.Hour }},
		{"window expires equal to size", env{"WINDOW_SIZE": "2m", "WINDOW_EXPIRES": "2m"}, func(c *config.Config) bool {
			return c.Windows["views"].Size == 2*time.Minute && c.Windows["views"].Expires == 2*time.Minute
		}},
		{"window step follows the size", env{"WINDOW_SIZE": "30s"}, func(c *config.Config) bool { return c.Windows["views"].Step == 30*time.Second }},
		{"hopping windows", env{"WINDOW_SIZE": "6s", "WINDOW_STEP": "3s"}, func(c *config.Config) bool {
			return c.Windows["views"].Size == 6*time.Second && c.Windows["views"].Step == 3*time.Second
		}},
		{"window step of a millisecond", env{"WINDOW_STEP": "1ms"}, func(c *config.Config) bool { return c.Windows["views"].Step == time.Millisecond }},
		{"window grace", env{"WINDOW_GRACE": "1s"}, func(c *config.Config) bool { return c.Windows["views"].Grace == time.Second }},
		{"no window grace", env{"WINDOW_GRACE": "0s"}, func(c *config.Config) bool { return c.Windows["views"].Grace == 0 }},
		{"window grace equal to expires", env{"WINDOW_GRACE": "5m"}, func(c *config.Config) bool { return c.Windows["views"].Grace == 5*time.Minute }},
		{"default grace of windows that expire sooner", env{"WINDOW_SIZE": "1s", "WINDOW_EXPIRES": "2s"}, func(c *config.Config) bool {
			return c.Windows["views"].Grace == 2*time.Second
		}},
		{"instance id", env{"KAFKA_INSTANCE_ID": "pageviews-0"}, func(c *config.Config) bool { return c.InstanceID == "pageviews-0" }},
		{"embedded addr", env{"EMBEDDED_KAFKA_ADDR": ":19092"}, func(c *config.Config) bool { return c.EmbeddedAddr == ":19092" }},
		{"at least once", env{"PROCESSING_GUARANTEE": "at_least_once"}, func(c *config.Config) bool { return c.Guarantee == config.AtLeastOnce }},
		{"exactly once", env{"PROCESSING_GUARANTEE": "exactly_once"}, func(c *config.Config) bool { return c.Guarantee == config.ExactlyOnce }},
		{"web addr with host", env{"WEB_ADDR": "0.0.0.0:80"}, func(c *config.Config) bool { return c.WebAddr == "0.0.0.0:80" }},
		{"web addr ipv6", env{"WEB_ADDR": "[::1]:0"}, func(c *config.Config) bool { return c.WebAddr == "[::1]:0" }},
		{"data dir", env{"DATA_DIR": "/var/lib/pageviews"}, func(c *config.Config) bool { return c.DataDir == "/var/lib/pageviews" }},
		{"commit interval minimum", env{"COMMIT_INTERVAL": "10ms"}, func(c *config.Config) bool { return c.CommitInterval == 10*time.Millisecond }},
		{"shutdown timeout", env{"SHUTDOWN_TIMEOUT": "2m"}, func(c *config.Config) bool { return c.ShutdownTimeout == 2*time.Minute }},
		{"log format text", env{"LOG_FORMAT": "text"}, func(c *config.Config) bool { return c.LogFormat == "text" }},
		{"log level debug", env{"LOG_LEVEL": "debug"}, func(c *config.Config) bool { return c.LogLevel == slog.LevelDebug }},
		{"log level any case", env{"LOG_LEVEL": "WARN"}, func(c *config.Config) bool { return c.LogLevel == slog.LevelWarn }},
		{"log level error", env{"LOG_LEVEL": "error"}, func(c *config.Config) bool { return c.LogLevel == slog.LevelError }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c := load(t, tt.env); !tt.check(c) {
				t.Errorf("Load(%v) = %+v", tt.env, *c)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	tests := []struct {
		name     string
		variable string
		value    string
	}{
		{"service uppercase", "DD_SERVICE", "PageViews"},
		{"service starting with a dash", "DD_SERVICE", "-pageviews"},
		{"service starting with an underscore", "DD_SERVICE", "_pageviews"},
		{"service with a dot", "DD_SERVICE", "page.views"},
		{"service too long", "DD_SERVICE", long("s", 101)},
		{"group with a space", "KAFKA_GROUP", "page views"},
		{"group with a slash", "KAFKA_GROUP", "page/views"},
		{"topic with a space", "PAGE_VIEWS_TOPIC", "page views"},
		{"topic dot", "PAGE_VIEWS_TOPIC", "."},
		{"topic dot dot", "PAGE_VIEWS_TOPIC", ".."},
		{"topic too long", "PAGE_VIEWS_TOPIC", long("t", 201)},
		{"topic non-ASCII", "PAGE_VIEWS_TOPIC", "pagé"},
		{"partitions not a number", "PARTITIONS", "eight"},
		{"partitions zero", "PARTITIONS", "0"},
		{"partitions negative", "PARTITIONS", "-8"},
		{"partitions too many", "PARTITIONS", "10001"},
		{"partitions fraction", "PARTITIONS", "1.5"},
		{"replication below -1", "TOPIC_REPLICATION_FACTOR", "-2"},
		{"replication too high", "TOPIC_REPLICATION_FACTOR", "33"},
		{"replication not a number", "TOPIC_REPLICATION_FACTOR", "three"},
		{"window size banana", "WINDOW_SIZE", "banana"},
		{"window size without unit", "WINDOW_SIZE", "60"},
		{"window size below a second", "WINDOW_SIZE", "999ms"},
		{"window size negative", "WINDOW_SIZE", "-1m"},
		{"window expires banana", "WINDOW_EXPIRES", "banana"},
		{"window expires below a second", "WINDOW_EXPIRES", "500ms"},
		{"window step that does not divide the size", "WINDOW_STEP", "7s"},
		{"window step above the size", "WINDOW_STEP", "2m"},
		{"window step of microseconds", "WINDOW_STEP", "1500us"},
		{"window step zero", "WINDOW_STEP", "0s"},
		{"window grace negative", "WINDOW_GRACE", "-1s"},
		{"window grace above expires", "WINDOW_GRACE", "6m"},
		{"brokers without a port", "KAFKA_BROKERS", "kafka-0"},
		{"brokers one without a port", "KAFKA_BROKERS", "kafka-0:9092,kafka-1"},
		{"brokers with too many colons", "KAFKA_BROKERS", "a:b:9092"},
		{"embedded addr without a port", "EMBEDDED_KAFKA_ADDR", "localhost"},
		{"embedded addr with an empty port", "EMBEDDED_KAFKA_ADDR", "localhost:"},
		{"guarantee", "PROCESSING_GUARANTEE", "at_most_once"},
		{"guarantee is case sensitive", "PROCESSING_GUARANTEE", "EXACTLY_ONCE"},
		{"web addr without a port", "WEB_ADDR", "8088"},
		{"web addr with an empty port", "WEB_ADDR", ":"},
		{"commit interval too short", "COMMIT_INTERVAL", "9ms"},
		{"commit interval banana", "COMMIT_INTERVAL", "banana"},
		{"shutdown timeout too short", "SHUTDOWN_TIMEOUT", "999ms"},
		{"shutdown timeout no unit", "SHUTDOWN_TIMEOUT", "30"},
		{"log format", "LOG_FORMAT", "logfmt"},
		{"log level", "LOG_LEVEL", "verbose"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loadErr(t, env{tt.variable: tt.value}, tt.variable, tt.value)
		})
	}
}

func TestLoadErrorMessage(t *testing.T) {
	err := loadErr(t, env{"WINDOW_SIZE": "banana"}, "WINDOW_SIZE", "banana")
	const want = `config: WINDOW_SIZE="banana" is invalid: want a Go duration such as 30s, 1m or 1h, at least 1s`
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestLoadWindowSizeWholeMilliseconds(t *testing.T) {
	// The error names the parsed duration, as Go prints it.
	loadErr(t, env{"WINDOW_SIZE": "1s500us"}, "WINDOW_SIZE", "1.0005s")
}

// TestLoadValueIsTrimmed checks that the value an error names is the one the
// variable holds without surrounding blanks, as it was validated.
func TestLoadValueIsTrimmed(t *testing.T) {
	loadErr(t, env{"PARTITIONS": "  zero  "}, "PARTITIONS", "zero")
}

func TestLoadFirstErrorWins(t *testing.T) {
	// PARTITIONS is read before WINDOW_SIZE and LOG_LEVEL.
	loadErr(t, env{"LOG_LEVEL": "loud", "WINDOW_SIZE": "banana", "PARTITIONS": "many"}, "PARTITIONS", "many")
}

func TestLoadWindowExpiresBelowSize(t *testing.T) {
	tests := []struct {
		size, expires string
		value         string // WINDOW_EXPIRES as the error prints it
	}{
		{"1m", "59s", "59s"},
		{"10m", "", "5m0s"}, // the default expiry is below a 10m window
		{"1h", "30m", "30m0s"},
		{"2s", "1s", "1s"},
	}
	for _, tt := range tests {
		t.Run(tt.size+"/"+tt.expires, func(t *testing.T) {
			e := env{"WINDOW_SIZE": tt.size, "WINDOW_EXPIRES": tt.expires}
			err := loadErr(t, e, "WINDOW_EXPIRES", tt.value)
			if !strings.Contains(err.Allowed, "WINDOW_SIZE") {
				t.Errorf("Allowed %q does not refer to WINDOW_SIZE", err.Allowed)
			}
		})
	}
}

func TestLoadBrokers(t *testing.T) {
	tests := []struct {
		raw  string
		want []string
	}{
		{"", nil},
		{"   ", nil},
		{",", nil},
		{"kafka:9092", []string{"kafka:9092"}},
		{"a:9092,b:9093", []string{"a:9092", "b:9093"}},
		{" a:9092 , b:9093 ", []string{"a:9092", "b:9093"}},
		{"a:9092,,b:9093,", []string{"a:9092", "b:9093"}},
		{"[::1]:9092,10.0.0.1:9092", []string{"[::1]:9092", "10.0.0.1:9092"}},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			c := load(t, env{"KAFKA_BROKERS": tt.raw})
			if !slices.Equal(c.Brokers, tt.want) {
				t.Errorf("KAFKA_BROKERS=%q: Brokers = %q, want %q", tt.raw, c.Brokers, tt.want)
			}
			if got, want := c.Embedded(), len(tt.want) == 0; got != want {
				t.Errorf("KAFKA_BROKERS=%q: Embedded() = %v, want %v", tt.raw, got, want)
			}
		})
	}
}

func TestDerivedTopics(t *testing.T) {
	tests := []struct {
		name              string
		env               env
		group, deadLetter string
	}{
		{"defaults", env{}, "pageviews", "page_views-dlq"},
		{"group and topic", env{"KAFKA_GROUP": "clicks", "PAGE_VIEWS_TOPIC": "site.clicks"}, "clicks", "site.clicks-dlq"},
		{"service does not name topics", env{"DD_SERVICE": "other"}, "pageviews", "page_views-dlq"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := load(t, tt.env)
			if c.Group != tt.group {
				t.Errorf("Group = %q, want %q (it prefixes the changelogs)", c.Group, tt.group)
			}
			if got := c.DeadLetterTopic(); got != tt.deadLetter {
				t.Errorf("DeadLetterTopic() = %q, want %q", got, tt.deadLetter)
			}
		})
	}
}

func TestLogValue(t *testing.T) {
	c := load(t, env{"KAFKA_BROKERS": "a:9092,b:9092", "PROCESSING_GUARANTEE": "exactly_once"})
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	line := buf.String()
	if n := strings.Count(line, "\n"); n != 1 {
		t.Fatalf("config logged on %d lines, want 1: %q", n, line)
	}
	for _, want := range []string{
		"config.service=pageviews",
		"config.brokers=a:9092,b:9092",
		"config.embedded_broker=false",
		"config.guarantee=exactly_once",
		"config.windows.views.size=1m0s",
		"config.windows.views.expires=5m0s",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("logged config %q lacks %q", line, want)
		}
	}
}

// TestAppSettings: an app's own settings go through the same checks,
// errors and log line as the runtime's; a secret is never logged.
func TestAppSettings(t *testing.T) {
	type orders struct {
		topic  string
		top    int
		hold   time.Duration
		secret string
	}
	withSettings := func(o *orders) config.Spec {
		s := spec()
		s.Settings = func(r *config.Reader) {
			o.topic = r.Topic("ORDERS_OUT_TOPIC", "orders-top")
			o.top = r.Int("ORDERS_TOP_N", 10, 1, 1000)
			o.hold = r.Duration("ORDERS_HOLD", time.Minute, time.Second)
			o.secret = r.Secret("ORDERS_API_KEY")
			if o.top > 100 && o.hold < time.Minute {
				r.Fail("ORDERS_TOP_N", strconv.Itoa(o.top), "at most 100 when ORDERS_HOLD is under a minute")
			}
		}
		return s
	}
	var o orders
	c, err := config.Load(env{"ORDERS_TOP_N": "25", "ORDERS_API_KEY": "k3y"}.getenv, withSettings(&o))
	if err != nil {
		t.Fatal(err)
	}
	if o != (orders{topic: "orders-top", top: 25, hold: time.Minute, secret: "k3y"}) {
		t.Errorf("app settings = %+v", o)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	for _, want := range []string{"config.app.orders_top_n=25", "config.app.orders_out_topic=orders-top", "config.app.orders_api_key=*****"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("logged config %q lacks %q", buf.String(), want)
		}
	}
	if strings.Contains(buf.String(), "k3y") {
		t.Errorf("logged config shows the secret: %q", buf.String())
	}

	for _, tt := range []struct {
		env         env
		name, value string
	}{
		{env{"ORDERS_TOP_N": "0"}, "ORDERS_TOP_N", "0"},
		{env{"ORDERS_OUT_TOPIC": "bad topic"}, "ORDERS_OUT_TOPIC", "bad topic"},
		{env{"ORDERS_TOP_N": "500", "ORDERS_HOLD": "10s"}, "ORDERS_TOP_N", "500"},
	} {
		_, err := config.Load(tt.env.getenv, withSettings(&orders{}))
		var cerr *config.Error
		if !errors.As(err, &cerr) || cerr.Var != tt.name || cerr.Value != tt.value {
			t.Errorf("%v: error %v, want a *config.Error for %s=%q", tt.env, err, tt.name, tt.value)
		}
	}
}
