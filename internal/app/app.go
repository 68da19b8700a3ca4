// Package app runs a declared worker. An app states its tables and, once
// the runtime has started, its agent, pages, livecheck and timers; the
// runtime does the rest: settings, the store, Kafka clients, topics,
// recovery, commits, standbys, probes, metrics, traces, signals and the
// shutdown order.
//
// A worker's main is one line:
//
//	func main() { app.Main(orders.App(), version) }
package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/web"
	"github.com/gofaust/pageviews/internal/window"
)

// App declares a worker.
type App struct {
	// Name is the default service name (DD_SERVICE: metric namespace,
	// traces) and consumer group (KAFKA_GROUP).
	Name string
	// Source is the topic the agent reads. Its dead-letter topic is
	// <topic>-dlq.
	Source Topic
	// Tables are the app's tables, from NewPlain and NewWindowed. Their
	// changelogs are named after the group and the table (Changelog).
	Tables []TableDecl
	// Settings, if set, reads the app's own settings; see config.Reader.
	// What it reads is validated and logged like the runtime's settings.
	Settings func(r *config.Reader)
	// Start returns the app's parts once the runtime has made the tables
	// and started its clients. It runs once per process start.
	Start func(s *Services) (Parts, error)
}

// Topic declares a topic whose name is a setting: the variable Var, with
// the default Name. Codec, if set, is its records' codec (schema.NewCodec):
// with a schema registry, the runtime binds it at start under the subject
// <topic>-value, and it writes registry-framed Avro.
type Topic struct {
	Var, Name string
	Codec     Codec
}

// Codec is a topic's codec as the runtime sees it (a *schema.Codec).
type Codec interface {
	Bind(ctx context.Context, reg *schema.Registry, subject string) (schema.Binding, error)
	// Name is its record's name, for logs.
	Name() string
}

// ValueCodec is a Codec that also encodes values given as any.
type ValueCodec interface {
	Codec
	EncodeValue(v any) ([]byte, error)
}

// Subject is the registry subject of topic's values (TopicNameStrategy).
func Subject(topic string) string { return topic + "-value" }

// Spec is what the configuration needs to know of a: its name, its
// topic's variable, its tables' windows and its own settings.
func (a *App) Spec() config.Spec {
	spec := config.Spec{Name: a.Name, TopicVar: a.Source.Var, Topic: a.Source.Name, Settings: a.Settings}
	for _, t := range a.Tables {
		if w, ok := t.(interface{ windowSpec() config.WindowSpec }); ok {
			spec.Windows = append(spec.Windows, w.windowSpec())
		}
	}
	return spec
}

// Services are what the runtime offers an app's parts.
type Services struct {
	Config *config.Config
	Log    *slog.Logger
	// Clock is the event clock (tests inject one).
	Clock func() time.Time
	// Producer sends records and waits for the broker's ack: the
	// worker's producer, or the test driver.
	Producer Sender
	// Self is this worker's advertised URL.
	Self string
	// Owners maps each assigned partition of the source topic to the
	// advertised URL of the member that owns it.
	Owners func() (map[int32]string, error)
	// Partitions is the number of partitions of the source topic.
	Partitions func() (int32, error)
	// PartitionOf is the source topic's partition of a record keyed key
	// (the producer's partitioner).
	PartitionOf func(key string) (int32, error)
	// Owned lists the partitions this worker holds and has recovered.
	Owned func() []int32
	// Ready tells whether the worker has joined and recovered, and if not,
	// why.
	Ready func() (bool, string)
	// Late records an event that came after one of its windows of table
	// had closed: the late_events metric, and an event on its trace.
	Late func(table string) func(ev *stream.Event)

	// peers answer peers' reads (?local=1) on the app's pages, by path:
	// NewReads adds them, and the runtime serves them before the page.
	peers map[string]http.HandlerFunc
}

// withPeers are the app's pages, where a page that Reads answers peers on
// serves their requests (IsPeer) through it first.
func (s *Services) withPeers(pages []web.Page) []web.Page {
	out := slices.Clone(pages)
	for i, pg := range out {
		page := pg.Serve(s.Log)
		out[i].Handler = page
		if serve, ok := s.peers[pg.Path]; ok {
			out[i].Handler = func(w http.ResponseWriter, r *http.Request) {
				if IsPeer(r) {
					serve(w, r)
					return
				}
				page(w, r)
			}
		}
	}
	return out
}

// Sender sends one record and waits for the broker's acknowledgement.
type Sender interface {
	SendAndWait(ctx context.Context, m *sarama.ProducerMessage) (partition int32, offset int64, err error)
}

// Parts are the app's pieces the runtime runs.
type Parts struct {
	// Agent processes the source topic's records, partition by partition.
	Agent stream.Handler
	// Pages are served on the HTTP port next to the runtime's own.
	Pages []web.Page
	// Livecheck, if set, is the probe the runtime's livecheck runs (see
	// Probe).
	Livecheck Probe
	// Timers run periodically, on every worker or only on the leader.
	Timers []Timer
}

// Timer is a periodic task: every Every, or at the times of the crontab
// spec Cron (five fields, UTC).
type Timer struct {
	Name  string
	Every time.Duration
	Cron  string
	// Leader runs it on one worker of the group only.
	Leader bool
	Run    func(ctx context.Context) error
}

// Changelog is the changelog topic of table name in group: every name is
// declared once and derived.
func Changelog(group, name string) string { return group + "-" + name + "-changelog" }

// TableDecl is a declared table; the runtime makes its copies.
type TableDecl interface {
	Name() string
	// make returns a new copy of the table on the store: the active one
	// (the agent's) or a standby one.
	make(e *tableEnv, active bool) stream.Table
	// changelog is its changelog topic, with the topic configs it needs.
	changelog(e *tableEnv) kafka.Topic
}

// tableEnv is what making a table takes.
type tableEnv struct {
	group   string
	db      *store.DB
	windows map[string]window.Hopping // by table (config.Config.Windows)
	clock   func() time.Time
	// closedTopic is where closed windows' results go (<source>-windows);
	// closed, if set, observes each closed window (metrics).
	closedTopic string
	closed      func(table string, p int32, lag time.Duration)
}

// Plain is a declared table of V per key.
type Plain[V any] struct {
	name   string
	codec  table.Codec[V]
	active *table.Table[V]
}

// NewPlain declares a table of V per key.
func NewPlain[V any](name string, codec table.Codec[V]) *Plain[V] {
	return &Plain[V]{name: name, codec: codec}
}

// Name is the table's name.
func (t *Plain[V]) Name() string { return t.name }

// Table is the active copy, the agent's; nil before the runtime made it
// (it has by the time Start runs).
func (t *Plain[V]) Table() *table.Table[V] { return t.active }

func (t *Plain[V]) make(e *tableEnv, active bool) stream.Table {
	tb := table.New(t.name, Changelog(e.group, t.name), t.codec, e.db)
	if active {
		t.active = tb
	}
	return tb
}

func (t *Plain[V]) changelog(e *tableEnv) kafka.Topic {
	return kafka.Topic{Name: Changelog(e.group, t.name), Configs: kafka.ChangelogConfigs()}
}

// Windowed is a declared table of V per key and window.
type Windowed[V any] struct {
	name    string
	codec   table.Codec[V]
	win     Window
	onClose func(key string, start, end time.Time, v V) any
	emits   ValueCodec
	active  *table.Windowed[V]
}

// Window declares a windowed table's window: its size, step, grace period
// and expiry are the settings <Var>_SIZE, <Var>_STEP, <Var>_GRACE and
// <Var>_EXPIRES, with these defaults. A zero Step means Size: tumbling
// windows.
type Window struct {
	Var                        string
	Size, Step, Grace, Expires time.Duration
}

// NewWindowed declares a windowed table of V per key and window.
func NewWindowed[V any](name string, codec table.Codec[V], win Window) *Windowed[V] {
	return &Windowed[V]{name: name, codec: codec, win: win}
}

// OnClose declares what a window of the table emits when it closes: for
// each key with a value in it, emit returns the value of the record sent to
// the closed-window topic <source topic>-windows, keyed by the key and
// timestamped with the window's end: bytes as they are, nil for nothing,
// anything else in JSON. A window closes
// once stream time, or the wall clock on a caught-up partition, passes its
// end plus grace, and each window's results go out once under exactly_once
// (in the commit's transaction), at least once otherwise.
func (t *Windowed[V]) OnClose(emit func(key string, start, end time.Time, v V) any) *Windowed[V] {
	t.onClose = emit
	return t
}

// Emits declares the codec of the closed-window topic: what OnClose's emit
// returns (nil, or a value of the codec's type) is encoded with it, as
// registry-framed Avro under <topic>-windows-value when a registry is
// configured, else as the codec's JSON.
func (t *Windowed[V]) Emits(c ValueCodec) *Windowed[V] {
	t.emits = c
	return t
}

func (t *Windowed[V]) closes() bool { return t.onClose != nil }

func (t *Windowed[V]) windowSpec() config.WindowSpec {
	return config.WindowSpec{Table: t.name, Var: t.win.Var, Size: t.win.Size, Step: t.win.Step, Grace: t.win.Grace, Expires: t.win.Expires}
}

// Name is the table's name.
func (t *Windowed[V]) Name() string { return t.name }

// Table is the active copy, the agent's; nil before the runtime made it.
func (t *Windowed[V]) Table() *table.Windowed[V] { return t.active }

func (t *Windowed[V]) make(e *tableEnv, active bool) stream.Table {
	tb := table.NewWindowed(t.name, Changelog(e.group, t.name), t.codec, e.db, e.windows[t.name], e.clock)
	if t.onClose != nil {
		c := table.Close[V]{Topic: e.closedTopic, Emit: func(key string, start, end time.Time, v V) ([]byte, error) {
			switch out := t.onClose(key, start, end, v).(type) {
			case nil:
				return nil, nil
			case []byte:
				return out, nil
			default:
				if t.emits != nil {
					return t.emits.EncodeValue(out)
				}
				return json.Marshal(out)
			}
		}}
		if e.closed != nil {
			c.Closed = func(p int32, lag time.Duration) { e.closed(t.name, p, lag) }
		}
		tb.OnClose(c)
	}
	if active {
		t.active = tb
	}
	return tb
}

func (t *Windowed[V]) changelog(e *tableEnv) kafka.Topic {
	w := e.windows[t.name]
	return kafka.Topic{Name: Changelog(e.group, t.name), Configs: kafka.WindowedChangelogConfigs(w.Size, w.Expires)}
}

// Topics are the topics the worker of a creates with the settings cfg: the
// source topic, then the tables' changelogs with their configs, then the
// dead-letter topic and, when a table declares OnClose, the closed-window
// topic. Every name is derived from the declarations; deploy files that
// create topics are checked against this list.
func Topics(a *App, cfg *config.Config) []kafka.Topic {
	e := &tableEnv{group: cfg.Group, windows: cfg.Windows}
	topics := []kafka.Topic{{Name: cfg.Topic}}
	for _, d := range a.Tables {
		topics = append(topics, d.changelog(e))
	}
	return append(topics, outputs(a, cfg)...)
}

// outputs are the topics the worker writes besides its changelogs: the
// dead-letter topic, and the closed-window topic when a table closes
// windows.
func outputs(a *App, cfg *config.Config) []kafka.Topic {
	out := []kafka.Topic{{Name: cfg.DeadLetterTopic()}}
	if closes(a) {
		out = append(out, kafka.Topic{Name: cfg.WindowsTopic()})
	}
	return out
}

// codecs are a's declared codecs by topic: the source's, and the
// closed-window topic's.
func codecs(a *App, cfg *config.Config) map[string]Codec {
	out := map[string]Codec{}
	if a.Source.Codec != nil {
		out[cfg.Topic] = a.Source.Codec
	}
	for _, t := range a.Tables {
		if e, ok := t.(interface{ emitsCodec() ValueCodec }); ok && e.emitsCodec() != nil {
			out[cfg.WindowsTopic()] = e.emitsCodec()
		}
	}
	return out
}

func (t *Windowed[V]) emitsCodec() ValueCodec { return t.emits }

// closes reports whether a table of a declares OnClose.
func closes(a *App) bool {
	for _, t := range a.Tables {
		if c, ok := t.(interface{ closes() bool }); ok && c.closes() {
			return true
		}
	}
	return false
}

// MetricsDoc is docs/metrics.md for the worker of a: the runtime's metrics
// under the app's name, their default namespace.
func MetricsDoc(a *App) string { return metrics.Markdown(a.Name) }

// SettingsDoc is docs/settings.md for the worker of a: every variable it
// reads, its default and its meaning.
func SettingsDoc(a *App) string {
	return "# Settings\n\n" +
		"Generated from the declarations (the runtime's in `internal/config`, the app's in its `App()`);\n" +
		"a test fails when this file and they differ. Every setting comes from the environment, is read\n" +
		"once and validated at start; a bad value stops the worker with exit status 2 and one line naming\n" +
		"the variable, the value and what is allowed.\n\n" +
		config.Markdown(config.Settings(a.Spec()))
}
