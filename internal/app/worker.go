package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/heptiolabs/healthcheck"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/devbroker"
	"github.com/gofaust/pageviews/internal/devregistry"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/table"
	"github.com/gofaust/pageviews/internal/tracing"
	"github.com/gofaust/pageviews/internal/web"
)

// Hooks are what tests replace: the clock, and a callback with the HTTP
// address once the server listens.
type Hooks struct {
	Clock     func() time.Time
	Listening func(addr string)
	Console   io.Writer // where OTEL_TRACES_EXPORTER=console writes
	Runtime   func(*stream.Runtime)
	// Handler wraps the agent (tests inject stalls with it).
	Handler func(stream.Handler) stream.Handler
	// Recovering is how many partitions replay their changelogs at once,
	// and how many standby copies catch up at once; 0 is
	// stream.DefaultRecovering.
	Recovering int
}

// RunWorker wires the worker of a and runs it until ctx ends. Shutdown
// follows a fixed order: stop fetching, flush and commit every partition,
// leave the group, stop HTTP (after a grace period), then the actors'
// stops: the producer, the Kafka clients, the port, the metrics, the dev
// broker, the store, the traces.
func RunWorker(ctx context.Context, a *App, cfg *config.Config, log *slog.Logger, hooks Hooks) (err error) {
	log.Info("starting", "config", cfg)
	w := &worker{a: a, cfg: cfg, log: log, hooks: hooks, clock: hooks.Clock}
	if w.clock == nil {
		w.clock = time.Now
	}
	g := &runGroup{}
	defer func() { err = w.stop(ctx, g, err) }()
	if err := g.startAll(ctx, w.actors()); err != nil {
		return err
	}
	return w.run(ctx)
}

// actors are the worker's components, each start beside its stop, in the
// order of start-up; shutdown runs the stops in the reverse order.
func (w *worker) actors() []actor {
	return []actor{
		{"traces", w.startTraces, w.stopTraces}, // flushed last
		// Its lock guards DATA_DIR, the dev broker's data too.
		{"store", w.openStore, func() error { return w.db.Close() }},
		{"dev broker", w.startBroker, w.stopBroker},       // when KAFKA_BROKERS is empty
		{"dev registry", w.startRegistry, w.stopRegistry}, // with the dev broker, when SCHEMA_REGISTRY_URL is empty
		{"metrics", w.startMetrics, func() error { return w.mc.Close() }},
		{"tables", w.makeTables, nil},
		// Before joining: the group learns the advertised URL.
		{"http", w.listen, w.closeHTTP},
		{"schemas", w.bindSchemas, nil}, // before any record is written or read
		{"kafka clients", w.connect, func() error { return w.clients.close() }},
		{"topics", w.createTopics, nil},
		{"producer", w.startProducer, func() error { return w.producer.Close() }},
		// The group, the recoveries' changelog reader, the standbys.
		{"group", w.startGroup, func() error { return errors.Join(w.copies.Close(), w.tails.Close()) }},
		{"app", w.startApp, nil}, // the app's parts and the stream runtime
		{"timers", w.schedule, nil},
		{"pages", w.serve, nil},
		{"pprof", w.startPprof, w.stopPprof},
	}
}

// worker is one run of an app: what its actors start.
type worker struct {
	a     *App
	cfg   *config.Config
	log   *slog.Logger
	hooks Hooks
	clock func() time.Time

	// deadline is when SHUTDOWN_TIMEOUT, counted from the signal, ends
	// (zero: the worker failed, not stopped).
	deadline time.Time

	traces      func(context.Context) error
	broker      *devbroker.Broker
	devRegistry *devregistry.Registry
	registry    *schema.Registry // nil: no registry, plain JSON
	ln          net.Listener
	pprof       *http.Server
	db          *store.DB
	brokers     []string
	mc          *metrics.Client
	streamHooks *metrics.StreamHooks
	tenv        *tableEnv
	tables      []stream.Table
	changelogs  []kafka.Topic
	front       *web.Front
	srv         *http.Server
	served      chan error
	self        string
	clients     *clients
	admin       sarama.ClusterAdmin
	sched       *stream.Scheduler
	producer    *kafka.Producer
	group       sarama.ConsumerGroup
	restore     kafka.RangeReader // the recoveries' changelog reads
	copies      sarama.Consumer   // the standby copies' changelog consumer past their backlogs
	sources     *kafka.Follower   // reads the claimed source partitions
	tails       sarama.Consumer   // the sources' consumer past their backlogs
	state       *stream.State
	directory   *stream.Directory
	standby     *stream.Standby
	parts       Parts
	livecheck   *livecheck
	monitor     *monitor
	rt          *stream.Runtime
}

// stop stops the actors that started, within the shutdown budget, and
// returns the worker's error: err, or the first stop's. After an abandoned
// warm shutdown it stops nothing: the stops could block on the parts
// still running.
func (w *worker) stop(ctx context.Context, g *runGroup, err error) error {
	if errors.Is(err, errAbandoned) {
		return err
	}
	if errors.Is(err, errStartInterrupted) && ctx.Err() != nil {
		// TERM during start-up is a requested stop, not a failure.
		w.log.Info("stopped during start-up", "step", err.Error())
		err = nil
	}
	serr := g.stopAll(budget(w.deadline, w.cfg.ShutdownTimeout))
	if errors.Is(serr, errStopsTimedOut) {
		serr = fmt.Errorf("shutdown did not finish within SHUTDOWN_TIMEOUT=%s (%w)", w.cfg.ShutdownTimeout, serr)
	}
	if err == nil {
		err = serr
	}
	if err == nil {
		w.log.Info("stopped cleanly")
	}
	return err
}

func (w *worker) startTraces(ctx context.Context) error {
	cfg := w.cfg
	shutdownTraces, err := tracing.Setup(ctx, tracing.Options{
		Exporter: cfg.TracesExporter, Endpoint: cfg.OTLPEndpoint, TracesEndpoint: cfg.OTLPTracesEndpoint,
		Protocol: cfg.OTLPProtocol, ServiceName: cfg.TraceServiceName, Version: cfg.Version, Console: w.hooks.Console,
	}, w.log)
	if err != nil {
		return err
	}
	w.traces = shutdownTraces
	return nil
}

func (w *worker) stopTraces() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return w.traces(ctx)
}

func (w *worker) openStore(ctx context.Context) error {
	if err := os.MkdirAll(w.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create DATA_DIR: %w", err)
	}
	db, wiped, err := openStore(ctx, w.storeDir(), w.log.With("component", "store"))
	if err != nil {
		return err
	}
	if wiped {
		w.log.Warn("local store was rebuilt empty; every partition recovers from offset 0")
	}
	w.db = db
	return nil
}

func (w *worker) storeDir() string { return filepath.Join(w.cfg.DataDir, "state") }

func (w *worker) startBroker(context.Context) error {
	w.brokers = w.cfg.Brokers
	if !w.cfg.Embedded() {
		return nil
	}
	dir := filepath.Join(w.cfg.DataDir, "kafka")
	b, err := devbroker.Start(devbroker.Options{
		Addr: w.cfg.EmbeddedAddr, DataDir: dir, Partitions: w.cfg.Partitions, Log: w.log.With("component", "devbroker"),
	})
	if err != nil {
		return err
	}
	w.broker, w.brokers = b, b.Addrs()
	w.log.Warn("KAFKA_BROKERS is empty: started the embedded dev broker; it is for development only, set KAFKA_BROKERS in production",
		"addr", w.brokers[0], "data_dir", dir)
	return nil
}

func (w *worker) stopBroker() error {
	if w.broker != nil {
		w.broker.Close()
	}
	return nil
}

func (w *worker) startRegistry(context.Context) error {
	if _, embedded := w.cfg.Registry(); !embedded || len(codecs(w.a, w.cfg)) == 0 {
		return nil
	}
	dir := filepath.Join(w.cfg.DataDir, "registry")
	r, err := devregistry.Start(devregistry.Options{Addr: w.cfg.EmbeddedRegistry, DataDir: dir})
	if err != nil {
		return err
	}
	w.devRegistry = r
	w.log.Warn("SCHEMA_REGISTRY_URL is empty: started the embedded dev schema registry; it is for development only",
		"url", r.URL(), "data_dir", dir)
	return nil
}

func (w *worker) stopRegistry() error {
	if w.devRegistry != nil {
		return w.devRegistry.Close()
	}
	return nil
}

// bindSchemas binds the app's codecs to the schema registry, if there is
// one: each checks its schema against its subject's latest version, and
// registers it when the subject lacks it. An incompatible schema stops the
// worker (exit 2); a registry that does not answer is tried again.
func (w *worker) bindSchemas(ctx context.Context) error {
	cs := codecs(w.a, w.cfg)
	url, _ := w.cfg.Registry()
	if w.devRegistry != nil {
		url = w.devRegistry.URL() // the port it got
	}
	if url == "" || len(cs) == 0 {
		if len(cs) > 0 {
			w.log.Info("no schema registry: records are written as JSON, and registry-framed ones are dead-lettered")
		}
		return nil
	}
	reg, err := schema.Connect(schema.Options{URL: url, Username: w.cfg.RegistryUser, Password: w.cfg.RegistryPassword,
		CAFile: w.cfg.RegistryCAFile, UserAgent: w.cfg.Service})
	if err != nil {
		return err
	}
	for _, topic := range slices.Sorted(maps.Keys(cs)) {
		subject := Subject(topic)
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
			b, err := cs[topic].Bind(ctx, reg, subject)
			var incompatible *schema.IncompatibleError
			if err == nil {
				w.log.Info("schema bound", "subject", subject, "record", cs[topic].Name(), "id", b.ID, "version", b.Version,
					"registered", b.Registered, "latest_before", b.Latest)
				break
			}
			if errors.As(err, &incompatible) {
				return err
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%w while waiting for the schema registry", errStartInterrupted)
			}
			w.front.Starting("waiting for the schema registry: " + err.Error())
			w.log.Warn("schema registry unavailable; trying again", "subject", subject, "error", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return fmt.Errorf("%w while waiting for the schema registry", errStartInterrupted)
			}
		}
	}
	w.front.Starting("connecting to Kafka")
	w.registry = reg
	return nil
}

func (w *worker) startMetrics(context.Context) error {
	cfg := w.cfg
	mc, err := metrics.New(metrics.Options{Addr: cfg.StatsdAddr, Namespace: cfg.Service, Tags: globalTags(cfg), Interval: cfg.MetricsInterval})
	if err != nil {
		return err
	}
	if mc.Enabled() {
		w.log.Info("sending metrics to DogStatsD", "addr", cfg.StatsdAddr, "namespace", cfg.Service+".")
	} else {
		w.log.Info("metrics off: set DD_AGENT_HOST or DD_DOGSTATSD_URL to send them to DogStatsD")
	}
	w.mc = mc
	w.streamHooks = &metrics.StreamHooks{C: mc, Topic: cfg.Topic}
	return nil
}

// makeTables makes the active copies of the app's tables, after checking
// that the store holds the windows the settings ask for.
func (w *worker) makeTables(context.Context) error {
	w.tenv = &tableEnv{group: w.cfg.Group, db: w.db, windows: w.cfg.Windows, clock: w.clock,
		closedTopic: w.cfg.WindowsTopic(), closed: w.streamHooks.Closed}
	for _, d := range w.a.Tables {
		t := d.make(w.tenv, true)
		if err := checkWindows(w.a, t, w.storeDir()); err != nil {
			return err
		}
		w.tables = append(w.tables, t)
		w.changelogs = append(w.changelogs, d.changelog(w.tenv))
	}
	return nil
}

// listen opens the HTTP port. It answers from now on: while start-up
// waits for the brokers, probes see a live process that is not ready, and
// why.
func (w *worker) listen(context.Context) error {
	ln, err := net.Listen("tcp", w.cfg.WebAddr)
	if err != nil {
		return fmt.Errorf("listen on WEB_ADDR=%s: %w", w.cfg.WebAddr, err)
	}
	w.ln, w.self = ln, advertisedURL(w.cfg, ln.Addr())
	w.front = &web.Front{}
	w.front.Starting("connecting to Kafka")
	w.srv = web.NewHTTPServer(w.front)
	w.served = make(chan error, 1)
	go func() { w.served <- w.srv.Serve(ln) }()
	w.log.Info("http listening", "addr", ln.Addr().String(), "advertised_url", w.self)
	if w.hooks.Listening != nil {
		w.hooks.Listening(ln.Addr().String())
	}
	return nil
}

// closeHTTP closes the server, if run has not shut it down, and the port.
func (w *worker) closeHTTP() error {
	_ = w.srv.Close()
	_ = w.ln.Close()
	return nil
}

func (w *worker) connect(ctx context.Context) error {
	cs, err := interruptible(ctx, "connect to kafka", func() (*clients, error) { return connect(w.cfg, w.brokers, w.self, w.changelogs, standbys{w}) },
		func(c *clients) { _ = c.close() })
	if err != nil {
		return err
	}
	w.clients = cs
	if w.admin, err = sarama.NewClusterAdminFromClient(cs.admin); err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	return nil
}

// createTopics runs the scheduler's task that makes sure the topics exist,
// co-partitioned, before processing.
func (w *worker) createTopics(ctx context.Context) error {
	cfg := w.cfg
	w.sched = &stream.Scheduler{Now: time.Now, After: time.After, Log: w.log.With("component", "scheduler")}
	w.sched.Task("topics", func(context.Context) error {
		partitions, err := kafka.EnsureTopics(w.admin, kafka.Topic{Name: cfg.Topic}, w.changelogs,
			outputs(w.a, cfg), cfg.Partitions, cfg.Replication, w.log)
		if err == nil {
			w.log.Info("topics ready", "partitions", partitions)
		}
		return err
	})
	w.front.Starting("creating topics")
	_, err := interruptible(ctx, "create topics", func() (any, error) { return nil, w.sched.RunTasks(ctx) }, nil)
	return err
}

func (w *worker) startProducer(ctx context.Context) error {
	w.front.Starting("starting the producer")
	p, err := interruptible(ctx, "start the producer", func() (*kafka.Producer, error) { return kafka.NewProducer(w.clients.producer) },
		func(p *kafka.Producer) { _ = p.Close() })
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	p.OnAck = w.mc.OnAck
	w.producer = p
	return nil
}

// startGroup makes the consumer group, the changelog consumer, the owner
// directory and the standby copies.
func (w *worker) startGroup(context.Context) error {
	cfg, cs := w.cfg, w.clients
	var err error
	if w.group, err = sarama.NewConsumerGroupFromClient(cfg.Group, cs.group); err != nil {
		return fmt.Errorf("kafka consumer group: %w", err)
	}
	// Owner lookups on a client of their own: on the group's, they would
	// queue behind a JoinGroup the coordinator holds during a rebalance.
	dirAdmin, err := sarama.NewClusterAdminFromClient(cs.directory)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	// Recoveries read their changelog ranges with fetches of their own (a
	// sarama consumer waits 100 ms before its first fetch of a partition).
	w.restore = kafka.RangeReader{Client: cs.restore}
	// Last: nothing fails after them, so the stop closes them.
	if w.tails, err = sarama.NewConsumerFromClient(cs.group); err != nil {
		return fmt.Errorf("kafka source consumer: %w", err)
	}
	// A claimed partition's backlog is read with fetches of its own (on
	// the restore client's connection, not behind a JoinGroup on the
	// group's), as the group's consumer would read it; what follows, with
	// the group client's consumer, as the claim's own would.
	w.sources = kafka.NewFollower(kafka.RangeReader{Client: cs.restore,
		Uncommitted: cs.group.Config().Consumer.IsolationLevel == sarama.ReadUncommitted}, w.tails)
	if w.copies, err = sarama.NewConsumerFromClient(cs.copies); err != nil {
		_ = w.tails.Close()
		return fmt.Errorf("kafka standby consumer: %w", err)
	}
	w.state = stream.NewState()
	w.directory = &stream.Directory{Admin: dirAdmin, Group: cfg.Group, Topic: cfg.Topic, TTL: time.Second}
	// Separate table instances for the standbys: a partition is held by
	// the active tables or by the standby ones, never both.
	standbyTables := make([]stream.Table, len(w.a.Tables))
	for i, d := range w.a.Tables {
		standbyTables[i] = d.make(w.tenv, false)
	}
	w.standby = &stream.Standby{
		Replicas: cfg.StandbyReplicas, Self: w.self, Owners: w.directory.Owners, Tables: standbyTables,
		// Not the recoveries' consumer: caught-up copies long-poll (up to
		// MaxWaitTime a fetch), and sarama holds a connection for the whole
		// of a request, so a recovery's offset lookups and first fetch
		// queued behind them; and a copy's consumer, still closing when
		// its partition is assigned here, held the recovery of it back.
		Client: cs.admin, Reader: kafka.RangeReader{Client: cs.copies}, Restore: w.copies, DB: w.db,
		Log: w.log.With("component", "standby"), Every: 2 * time.Second, SweepEvery: sweepEvery(w.cfg),
		CatchingUp: w.hooks.Recovering,
	}
	return nil
}

// startApp starts the app's parts and the stream runtime that feeds its
// agent.
func (w *worker) startApp(context.Context) error {
	cfg := w.cfg
	var err error
	s := w.services()
	if w.parts, err = w.a.Start(s); err != nil {
		return err
	}
	w.parts.Pages = s.withPeers(w.parts.Pages)
	w.monitor = w.newMonitor(w.parts.Livecheck != nil)
	handler := w.parts.Agent
	if w.hooks.Handler != nil {
		handler = w.hooks.Handler(handler)
	}
	w.rt = stream.New(stream.Options{
		Topic: cfg.Topic, DeadLetterTopic: cfg.DeadLetterTopic(), CommitInterval: cfg.CommitInterval,
		Tables: w.tables, Handler: handler, Group: w.group,
		// Not the group's client: its connection may be held by a
		// JoinGroup for as long as a rebalance lasts; nor the restore
		// consumer's, where a lookup would queue behind its long-polling
		// fetches (up to MaxWaitTime each).
		Client: w.clients.admin, Restore: w.restore, Sources: w.sources, Cooperative: cfg.Rebalance == "cooperative", DB: w.db,
		State: w.state, Standby: w.standby, GroupID: cfg.Group,
		Transactions: transactions(cfg, w.clients, w.brokers, w.mc.OnAck),
		OffsetsAfter: cfg.Guarantee != config.ExactlyOnce,
		// The admin client's connection is mostly idle; the group's is
		// busy with fetches that a commit would queue behind.
		Committer:  &kafka.OffsetCommitter{Client: w.clients.admin, Group: cfg.Group, InstanceID: cfg.InstanceID},
		Metadata:   commitMetadata(w.admin, cfg.Group, cfg.Topic),
		Hooks:      monitorHooks{w.streamHooks, w.monitor}, // the metrics, and the monitor page's rebalances
		Log:        w.log.With("component", "stream"),
		Clock:      w.clock,
		Recovering: w.hooks.Recovering,
	})
	if w.hooks.Runtime != nil {
		w.hooks.Runtime(w.rt)
	}
	return nil
}

// services are what the runtime offers the app's parts.
func (w *worker) services() *Services {
	cfg := w.cfg
	partitions := func() (int32, error) {
		ps, err := w.clients.group.Partitions(cfg.Topic)
		return int32(len(ps)), err
	}
	// The producer's partitioner; sarama's hashes with state of its own,
	// so one call at a time.
	partitioner := w.clients.base.Producer.Partitioner(cfg.Topic)
	var mu sync.Mutex
	partitionOf := func(key string) (int32, error) {
		n, err := partitions()
		if err != nil {
			return 0, err
		}
		mu.Lock()
		defer mu.Unlock()
		return partitioner.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, n)
	}
	return &Services{
		Config: cfg, Log: w.log, Clock: w.clock, Producer: w.producer, Self: w.self,
		Owners: w.directory.Owners, Partitions: partitions, PartitionOf: partitionOf,
		Owned: w.state.Recovered, Ready: w.state.Ready,
		Late: func(tbl string) func(*stream.Event) {
			return func(ev *stream.Event) {
				w.streamHooks.Late(tbl, ev.Partition)
				if ev.Ctx != nil {
					trace.SpanFromContext(ev.Ctx).AddEvent("late event", trace.WithAttributes(
						attribute.String("table", tbl), attribute.String("reason", "a window of its event time had closed")))
				}
			}
		},
	}
}

// observeLivecheck counts one livecheck's outcome, and logs a failure.
func (w *worker) observeLivecheck(ok bool, took time.Duration, err error) {
	w.monitor.livechecked(ok, took, err)
	if ok {
		w.mc.Count(metrics.LivecheckSuccess, 1)
		w.mc.Timing(metrics.LivecheckLatency, took)
		return
	}
	w.mc.Count(metrics.LivecheckFailure, 1)
	w.log.Warn("livecheck failed", "error", err)
}

// schedule sets the timers: the livecheck once per group (on the leader),
// the sampled gauges on every worker, and the app's own.
func (w *worker) schedule(context.Context) error {
	cfg, state := w.cfg, w.state
	w.sched.Leader = func() bool { return slices.Contains(state.Recovered(), 0) }
	if w.parts.Livecheck != nil {
		w.livecheck = newLivecheck(w.parts.Livecheck, cfg.LivecheckSLO, w.observeLivecheck)
		if cfg.LivecheckInterval > 0 {
			w.sched.Timer("livecheck", cfg.LivecheckInterval, true, w.livecheck.Run)
		}
	}
	stats := make(map[string]interface{ Stats() table.Stats }, len(w.tables))
	topics := []string{cfg.Topic}
	for _, t := range outputs(w.a, cfg) {
		topics = append(topics, t.Name)
	}
	var windowed []string
	for _, t := range w.tables {
		if st, ok := t.(interface{ Stats() table.Stats }); ok {
			stats[t.Name()] = st
		}
		topics = append(topics, t.Changelog())
		if _, ok := t.(interface{ CheckDefinition() error }); ok {
			windowed = append(windowed, t.Name())
		}
	}
	sampler := &metrics.Sampler{
		C: w.mc, Tables: stats, Store: w.db, Registry: w.registry,
		Partitions: func() int { all, _ := state.Assigned(); return len(all) },
		Standby:    func() int { return len(w.standby.Partitions()) },
		StandbyLag: w.standby.Lag,
		// The directory's cached description of the group: the members
		// the coordinator knows, which a worker that died without leaving
		// stays among until its session times out.
		Members: func() (int, bool) { ms, err := w.directory.Members(); return len(ms), err == nil },
	}
	var generation int32
	w.sched.Timer("gauges", cfg.MetricsInterval, false, func(context.Context) error {
		sampler.Sample()
		generation = w.sampleGroup(generation)
		all, _ := state.Assigned()
		w.streamHooks.Zero(all, topics, windowed...)
		return nil
	})
	for _, t := range w.parts.Timers {
		if t.Cron == "" {
			w.sched.Timer(t.Name, t.Every, t.Leader, t.Run)
		} else if err := w.sched.Crontab(t.Name, t.Cron, t.Leader, t.Run); err != nil {
			return err
		}
	}
	return nil
}

// sampleGroup sends the group's gauges and each processing partition's
// offsets, with the high watermark asked of the broker now: a worker that
// stalls fetches nothing, so what its consumer last saw would hide its lag.
// previous is the generation of the previous sample; it returns this one's.
// The monitor page shows the same lag.
func (w *worker) sampleGroup(previous int32) int32 {
	s := w.state.Sample()
	at := time.Now()
	w.streamHooks.Group(s.Generation, previous, s.Rebalancing)
	lags := make(map[int32]lagSample, len(s.Positions))
	for p, pos := range s.Positions {
		hwm, err := w.clients.admin.GetOffset(w.cfg.Topic, p, sarama.OffsetNewest)
		if err != nil {
			hwm = -1
		}
		var lag time.Duration
		if hwm > pos.Next && !pos.LastRecord.IsZero() {
			lag = max(time.Since(pos.LastRecord), 0)
		}
		w.streamHooks.Position(p, pos.Next-1, pos.Committed, pos.Active(), hwm, lag)
		if hwm >= 0 {
			lags[p] = lagSample{records: max(hwm-pos.Next, 0), end: hwm, seconds: lag.Seconds()}
		}
	}
	w.monitor.sampled(lags, at)
	return max(previous, s.Generation)
}

// serve puts the app's pages and the probes behind the open port.
func (w *worker) serve(context.Context) error {
	state := w.state
	health := healthcheck.NewHandler()
	health.AddLivenessCheck("goroutines", healthcheck.GoroutineCountCheck(10000))
	health.AddLivenessCheck("processing", func() error { return state.Live(w.cfg.StallTimeout) })
	health.AddReadinessCheck("group", func() error {
		if ok, reason := state.Ready(); !ok {
			return errors.New(reason)
		}
		return nil
	})
	var livecheck func() error
	if w.livecheck != nil {
		livecheck = w.livecheck.Check
	}
	pages := append(slices.Clone(w.parts.Pages), w.monitor.pages(w.parts.Pages)...)
	route := web.Route(pages)
	w.front.Serve(tracing.HTTP(w.mc.HTTP((&web.Server{
		Pages: pages, Readiness: state, Health: health, Livecheck: livecheck, Log: w.log.With("component", "web"),
	}).Handler(), route), route))
	return nil
}

// startPprof serves profiles on their own listener, never on the public
// port, when PPROF_ADDR is set.
func (w *worker) startPprof(context.Context) error {
	if w.cfg.PprofAddr == "" {
		return nil
	}
	pln, err := net.Listen("tcp", w.cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("listen on PPROF_ADDR=%s: %w", w.cfg.PprofAddr, err)
	}
	psrv := &http.Server{Handler: pprofMux(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = psrv.Serve(pln) }()
	w.pprof = psrv
	w.log.Info("pprof listening", "addr", pln.Addr().String())
	return nil
}

func (w *worker) stopPprof() error {
	if w.pprof == nil {
		return nil
	}
	return w.pprof.Close()
}

// run runs the HTTP server, the standbys, the scheduler and the stream
// runtime until ctx ends or one fails. SHUTDOWN_TIMEOUT bounds the warm
// shutdown: if flushing, committing and leaving take longer, the worker
// gives up like a cold shutdown (the changelogs hold the state) and skips
// the stops, which could block on the parts still running.
func (w *worker) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := <-w.served; err != nil && !web.IsClosed(err) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return w.standby.Run(gctx) })
	g.Go(func() error { return w.sched.Run(gctx) })
	g.Go(func() error {
		err := w.rt.Run(gctx)
		// The runtime has flushed, committed and left the group. The web
		// server keeps answering until here, then gets a grace period.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := w.srv.Shutdown(sctx); serr != nil {
			// Connections still open after the grace period (idle ones a
			// load balancer opened, or slow clients) are cut: the worker's
			// state is already safe, so this is not a failed shutdown.
			w.log.Warn("http: closing connections still open after the grace period", "error", serr)
			_ = w.srv.Close()
		}
		return err
	})
	waited := make(chan error, 1)
	go func() { waited <- g.Wait() }()
	select {
	case err := <-waited:
		return windowsChanged(w.a, err, w.storeDir())
	case <-ctx.Done():
	}
	w.deadline = time.Now().Add(w.cfg.ShutdownTimeout)
	select {
	case err := <-waited:
		return err
	case <-time.After(w.cfg.ShutdownTimeout):
		return fmt.Errorf("%w within SHUTDOWN_TIMEOUT=%s; exiting without it (the changelogs hold the state)", errAbandoned, w.cfg.ShutdownTimeout)
	}
}

// sweepEvery is how often the worker deletes the expired windows of the
// partitions it keeps in its store but no longer holds: half the shortest
// WINDOW_EXPIRES, between a second and a minute; never without windows.
func sweepEvery(cfg *config.Config) time.Duration {
	var every time.Duration
	for _, w := range cfg.Windows {
		if d := min(max(w.Expires/2, time.Second), time.Minute); every == 0 || d < every {
			every = d
		}
	}
	return every
}

// errAbandoned ends a warm shutdown that ran out of time.
var errAbandoned = errors.New("warm shutdown did not finish")

// clients are separate sarama clients, so a long-polling fetch never delays
// a produce acknowledgement on a shared connection, and a JoinGroup held
// during a rebalance never delays an owner lookup.
type clients struct {
	admin, producer, group, restore, copies, directory sarama.Client
	base                                               *sarama.Config // of the producer client, for transactional producers
}

func connect(cfg *config.Config, brokers []string, self string, changelogs []kafka.Topic, sb kafka.Standbys) (*clients, error) {
	// Changelog records go to the partition of their table's partition.
	manual := make(map[string]bool, len(changelogs))
	for _, t := range changelogs {
		manual[t.Name] = true
	}
	var cs clients
	mk := func(role string) (sarama.Client, error) {
		sc, err := kafka.NewConfig(kafka.Options{
			ClientID:       cfg.Service + "-" + role,
			Group:          cfg.Group,
			InstanceID:     cfg.InstanceID,
			Cooperative:    cfg.Rebalance == "cooperative",
			ManualTopics:   manual,
			SessionTimeout: cfg.SessionTimeout,
			Advertise:      []byte(self),
			// The group's strategy places the standby copies and sends a
			// failed owner's partitions to the copies least behind.
			StandbyReplicas: cfg.StandbyReplicas,
			Standbys:        sb,
			// Changelogs hold transactions under both guarantees (the
			// fence; see internal/stream): recovery and standbys must not
			// apply the records of aborted ones.
			ReadCommitted: cfg.Guarantee == config.ExactlyOnce || role == "restore" || role == "copies",
			Security: kafka.Security{
				TLS: cfg.TLS, CAFile: cfg.TLSCAFile, CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile,
				ServerName: cfg.TLSServerName, SASLMechanism: cfg.SASLMechanism, User: cfg.SASLUser, Password: cfg.SASLPassword,
			},
		})
		if err != nil {
			return nil, err
		}
		if role == "producer" {
			cs.base = sc
		}
		c, err := sarama.NewClient(brokers, sc)
		if err != nil {
			return nil, fmt.Errorf("connect to kafka %v (%s client): %w%s", brokers, role, err, connectHint(cfg, err))
		}
		return c, nil
	}
	var err error
	for _, x := range []struct {
		c    *sarama.Client
		role string
	}{{&cs.admin, "admin"}, {&cs.producer, "producer"}, {&cs.group, "group"}, {&cs.restore, "restore"}, {&cs.copies, "copies"}, {&cs.directory, "directory"}} {
		if *x.c, err = mk(x.role); err != nil {
			_ = cs.close()
			return nil, err
		}
	}
	return &cs, nil
}

func (c *clients) close() error {
	var errs []error
	for _, cl := range []sarama.Client{c.directory, c.copies, c.restore, c.group, c.producer, c.admin} {
		if cl != nil && !cl.Closed() {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}

// standbys are the worker's standby copies as the group's strategy sees
// them (kafka.Standbys): the clients come before the copies (startGroup),
// and a group joins only after both.
type standbys struct{ w *worker }

func (s standbys) Behind() map[int32]int64         { return s.w.standby.Behind() }
func (s standbys) Stored() map[int32]int64         { return s.w.standby.Stored() }
func (s standbys) Place(standby, assigned []int32) { s.w.standby.Place(standby, assigned) }

// advertisedURL is where other workers reach this one: ADVERTISED_URL, or
// the listen address with an unspecified host replaced by the hostname.
func advertisedURL(cfg *config.Config, addr net.Addr) string {
	if cfg.AdvertisedURL != "" {
		return cfg.AdvertisedURL
	}
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// commitMetadata reads the metadata committed with a partition's offset,
// where the stream runtime leaves the release time.
func commitMetadata(admin sarama.ClusterAdmin, group, topic string) func(p int32) (string, bool) {
	return func(p int32) (string, bool) {
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {p}})
		if err != nil {
			return "", false
		}
		b := resp.GetBlock(topic, p)
		if b == nil || b.Offset < 0 {
			return "", false
		}
		return b.Metadata, true
	}
}

// connectHint names the likely cause of a failed connection: brokers often
// just close the connection on bad credentials, which reads as EOF.
func connectHint(cfg *config.Config, err error) string {
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	switch {
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed),
		cfg.SASLMechanism != "" && errors.Is(err, io.EOF):
		return fmt.Sprintf(" (SASL %s authentication as %q failed or was refused: check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)",
			cfg.SASLMechanism, cfg.SASLUser)
	case errors.As(err, &unknownCA):
		return " (TLS: the broker's certificate is not signed by a trusted CA: check KAFKA_TLS_CA_FILE)"
	case errors.As(err, &badHost):
		return " (TLS: the broker's certificate does not name the broker's host: check KAFKA_BROKERS or KAFKA_TLS_SERVER_NAME)"
	case !cfg.TLS && errors.Is(err, io.EOF):
		return " (the broker closed the connection: does it require TLS (KAFKA_TLS_ENABLED) or SASL?)"
	}
	return ""
}

// transactions returns the factory of each partition's transactional
// producer, under both guarantees. The transactional id is stable per
// partition, so whichever worker owns the partition next fences the
// previous owner.
func transactions(cfg *config.Config, cs *clients, brokers []string, onAck func(string, int, time.Duration, error)) func(p int32) (*kafka.Producer, error) {
	return func(p int32) (*kafka.Producer, error) {
		tp, err := kafka.NewTransactionalProducer(brokers, cs.base, fmt.Sprintf("%s-%s-%d", cfg.Group, cfg.Topic, p), cfg.CommitInterval)
		if err != nil {
			return nil, err
		}
		// Its records count in messages_sent and send_errors like the
		// shared producer's.
		tp.OnAck = onAck
		return tp, nil
	}
}

// globalTags are the unified service tags that datadog-go does not already
// add from the process environment.
func globalTags(cfg *config.Config) []string {
	var tags []string
	if os.Getenv("DD_ENV") == "" {
		tags = append(tags, metrics.Tag("env", cfg.Env))
	}
	if os.Getenv("DD_VERSION") == "" {
		tags = append(tags, metrics.Tag("version", cfg.Version))
	}
	return tags
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// budget is the time left before deadline, or all of def when no deadline
// was set (the worker failed before shutting down).
func budget(deadline time.Time, def time.Duration) time.Duration {
	if deadline.IsZero() {
		return def
	}
	return max(time.Until(deadline), 0)
}
