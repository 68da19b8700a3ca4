package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/heptiolabs/healthcheck"
	"golang.org/x/sync/errgroup"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/devbroker"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/metrics"
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
}

// RunWorker wires the worker of a and runs it until ctx ends. Shutdown
// follows a fixed order: stop fetching, flush and commit every partition,
// leave the group, close the producer and the store, stop HTTP, stop the
// dev broker.
func RunWorker(ctx context.Context, a *App, cfg *config.Config, log *slog.Logger, hooks Hooks) (err error) {
	log.Info("starting", "config", cfg)
	clock := hooks.Clock
	if clock == nil {
		clock = time.Now
	}

	// Everything below registers its cleanup; after ctx ends, the cleanups
	// run in reverse order, and SHUTDOWN_TIMEOUT bounds them.
	var cleanups []func() error
	abandon := false
	// One budget for the whole shutdown: it starts when ctx ends.
	var deadline time.Time
	defer func() {
		if abandon {
			return
		}
		done := make(chan error, 1)
		go func() {
			var errs []error
			for i := len(cleanups) - 1; i >= 0; i-- {
				errs = append(errs, cleanups[i]())
			}
			done <- errors.Join(errs...)
		}()
		if errors.Is(err, errStartInterrupted) && ctx.Err() != nil {
			// TERM during start-up is a requested stop, not a failure.
			log.Info("stopped during start-up", "step", err.Error())
			err = nil
		}
		select {
		case cerr := <-done:
			if err == nil {
				err = cerr
			}
		case <-time.After(budget(deadline, cfg.ShutdownTimeout)):
			if err == nil {
				err = fmt.Errorf("shutdown did not finish within SHUTDOWN_TIMEOUT=%s", cfg.ShutdownTimeout)
			}
		}
		if err == nil {
			log.Info("stopped cleanly")
		}
	}()

	// Traces are flushed last: this cleanup is registered first.
	shutdownTraces, err := tracing.Setup(ctx, tracing.Options{
		Exporter: cfg.TracesExporter, Endpoint: cfg.OTLPEndpoint, TracesEndpoint: cfg.OTLPTracesEndpoint,
		Protocol: cfg.OTLPProtocol, ServiceName: cfg.TraceServiceName, Version: cfg.Version, Console: hooks.Console,
	}, log)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return shutdownTraces(ctx)
	})

	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create DATA_DIR: %w", err)
	}
	// The store first: its lock keeps a second worker started on this
	// DATA_DIR from touching anything in it, the embedded broker's data too.
	db, wiped, err := openStore(ctx, filepath.Join(cfg.DataDir, "state"), log.With("component", "store"))
	if err != nil {
		return err
	}
	if wiped {
		log.Warn("local store was rebuilt empty; every partition recovers from offset 0")
	}
	cleanups = append(cleanups, db.Close)

	brokers := cfg.Brokers
	if cfg.Embedded() {
		b, err := devbroker.Start(devbroker.Options{
			Addr: cfg.EmbeddedAddr, DataDir: filepath.Join(cfg.DataDir, "kafka"),
			Partitions: cfg.Partitions, Log: log.With("component", "devbroker"),
		})
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() error { b.Close(); return nil })
		brokers = b.Addrs()
		log.Warn("KAFKA_BROKERS is empty: started the embedded dev broker; it is for development only, set KAFKA_BROKERS in production",
			"addr", brokers[0], "data_dir", filepath.Join(cfg.DataDir, "kafka"))
	}

	mc, err := metrics.New(metrics.Options{Addr: cfg.StatsdAddr, Namespace: cfg.Service, Tags: globalTags(cfg)})
	if err != nil {
		return err
	}
	if mc.Enabled() {
		log.Info("sending metrics to DogStatsD", "addr", cfg.StatsdAddr, "namespace", cfg.Service+".")
	} else {
		log.Info("metrics off: set DD_AGENT_HOST or DD_DOGSTATSD_URL to send them to DogStatsD")
	}
	cleanups = append(cleanups, mc.Close)
	streamHooks := &metrics.StreamHooks{C: mc, Topic: cfg.Topic}

	tenv := &tableEnv{group: cfg.Group, db: db, windows: cfg.Windows, clock: clock}
	tables := make([]stream.Table, len(a.Tables))
	for i, d := range a.Tables {
		tables[i] = d.make(tenv, true)
		if err := checkWindows(a, tables[i], filepath.Join(cfg.DataDir, "state")); err != nil {
			return err
		}
	}

	// Listen before joining the group: the group learns this worker's
	// advertised URL, which depends on the port.
	ln, err := net.Listen("tcp", cfg.WebAddr)
	if err != nil {
		return fmt.Errorf("listen on WEB_ADDR=%s: %w", cfg.WebAddr, err)
	}
	cleanups = append(cleanups, func() error { _ = ln.Close(); return nil })
	self := advertisedURL(cfg, ln.Addr())
	// The port answers from now on: while start-up waits for the brokers,
	// probes see a live process that is not ready, and why.
	front := &web.Front{}
	front.Starting("connecting to Kafka")
	srv := web.NewHTTPServer(front)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	cleanups = append(cleanups, func() error { _ = srv.Close(); return nil })
	log.Info("http listening", "addr", ln.Addr().String(), "advertised_url", self)
	if hooks.Listening != nil {
		hooks.Listening(ln.Addr().String())
	}

	changelogs := make([]kafka.Topic, len(a.Tables))
	for i, d := range a.Tables {
		changelogs[i] = d.changelog(tenv)
	}
	clients, err := interruptible(ctx, "connect to kafka", func() (*clients, error) { return connect(cfg, brokers, self, changelogs) },
		func(c *clients) { _ = c.close() })
	if err != nil {
		return err
	}
	cleanups = append(cleanups, clients.close)

	admin, err := sarama.NewClusterAdminFromClient(clients.admin)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	sched := &stream.Scheduler{Now: time.Now, After: time.After, Log: log.With("component", "scheduler")}
	// A task: the topics must exist, co-partitioned, before processing.
	sched.Task("topics", func(context.Context) error {
		partitions, err := kafka.EnsureTopics(admin,
			kafka.Topic{Name: cfg.Topic},
			changelogs,
			[]kafka.Topic{{Name: cfg.DeadLetterTopic()}},
			cfg.Partitions, cfg.Replication, log)
		if err == nil {
			log.Info("topics ready", "partitions", partitions)
		}
		return err
	})
	front.Starting("creating topics")
	if _, err := interruptible(ctx, "create topics", func() (any, error) { return nil, sched.RunTasks(ctx) }, nil); err != nil {
		return err
	}

	front.Starting("starting the producer")
	producer, err := interruptible(ctx, "start the producer", func() (*kafka.Producer, error) { return kafka.NewProducer(clients.producer) },
		func(p *kafka.Producer) { _ = p.Close() })
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	producer.OnAck = mc.OnAck
	cleanups = append(cleanups, producer.Close)

	group, err := sarama.NewConsumerGroupFromClient(cfg.Group, clients.group)
	if err != nil {
		return fmt.Errorf("kafka consumer group: %w", err)
	}
	restore, err := sarama.NewConsumerFromClient(clients.restore)
	if err != nil {
		return fmt.Errorf("kafka changelog consumer: %w", err)
	}
	cleanups = append(cleanups, restore.Close)

	state := stream.NewState()
	// Owner lookups on a client of their own: on the group's, they would
	// queue behind a JoinGroup the coordinator holds during a rebalance.
	dirAdmin, err := sarama.NewClusterAdminFromClient(clients.directory)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	directory := &stream.Directory{Admin: dirAdmin, Group: cfg.Group, Topic: cfg.Topic, TTL: time.Second}
	// Separate table instances for the standbys: a partition is held by
	// the active tables or by the standby ones, never both.
	standbyTables := make([]stream.Table, len(a.Tables))
	for i, d := range a.Tables {
		standbyTables[i] = d.make(tenv, false)
	}
	standby := &stream.Standby{
		Replicas:      cfg.StandbyReplicas,
		Self:          self,
		Owners:        directory.Owners,
		Tables:        standbyTables,
		Client:        clients.restore,
		Restore:       restore,
		DB:            db,
		ReadCommitted: cfg.Guarantee == config.ExactlyOnce,
		Log:           log.With("component", "standby"),
		Every:         2 * time.Second,
	}
	partitions := func() (int32, error) {
		ps, err := clients.group.Partitions(cfg.Topic)
		return int32(len(ps)), err
	}
	// The producer's partitioner; sarama's hashes with state of its own,
	// so one call at a time.
	partitioner := clients.base.Producer.Partitioner(cfg.Topic)
	var partitionerMu sync.Mutex
	partitionOf := func(key string) (int32, error) {
		n, err := partitions()
		if err != nil {
			return 0, err
		}
		partitionerMu.Lock()
		defer partitionerMu.Unlock()
		return partitioner.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, n)
	}
	parts, err := a.Start(&Services{
		Config:      cfg,
		Log:         log,
		Clock:       clock,
		Producer:    producer,
		Self:        self,
		Owners:      directory.Owners,
		Partitions:  partitions,
		PartitionOf: partitionOf,
		Owned:       state.Recovered,
		Ready:       state.Ready,
		Late: func(tbl string) func(int32) {
			return func(p int32) { streamHooks.Late(tbl, p) }
		},
		ObserveLivecheck: func(ok bool, took time.Duration, err error) {
			if ok {
				mc.Count(metrics.LivecheckSuccess, 1)
				mc.Timing(metrics.LivecheckLatency, took)
				return
			}
			mc.Count(metrics.LivecheckFailure, 1)
			log.Warn("livecheck failed", "error", err)
		},
	})
	if err != nil {
		return err
	}
	handler := parts.Agent
	if hooks.Handler != nil {
		handler = hooks.Handler(handler)
	}
	rt := stream.New(stream.Options{
		Topic:           cfg.Topic,
		DeadLetterTopic: cfg.DeadLetterTopic(),
		CommitInterval:  cfg.CommitInterval,
		Tables:          tables,
		Handler:         handler,
		Group:           group,
		// Not the group's client: its connection may be held by a
		// JoinGroup for as long as a rebalance lasts.
		Client:       clients.restore,
		Restore:      restore,
		Producer:     producer,
		DB:           db,
		State:        state,
		Standby:      standby,
		GroupID:      cfg.Group,
		Transactions: transactions(cfg, clients, brokers),
		// The admin client's connection is mostly idle; the group's is
		// busy with fetches that a commit would queue behind.
		Committer:      &kafka.OffsetCommitter{Client: clients.admin, Group: cfg.Group, InstanceID: cfg.InstanceID},
		CommittedAt:    committedAt(admin, cfg.Group, cfg.Topic),
		SessionTimeout: cfg.SessionTimeout,
		Hooks:          streamHooks,
		Log:            log.With("component", "stream"),
		Clock:          clock,
	})

	if hooks.Runtime != nil {
		hooks.Runtime(rt)
	}

	health := healthcheck.NewHandler()
	health.AddLivenessCheck("goroutines", healthcheck.GoroutineCountCheck(10000))
	health.AddLivenessCheck("processing", func() error { return state.Live(cfg.StallTimeout) })
	health.AddReadinessCheck("group", func() error {
		if ok, reason := state.Ready(); !ok {
			return errors.New(reason)
		}
		return nil
	})
	// Timers: the livecheck once per group (on the leader), the sampled
	// gauges on every worker, and the app's own.
	sched.Leader = func() bool { return slices.Contains(state.Recovered(), 0) }
	if parts.Livecheck != nil && cfg.LivecheckInterval > 0 {
		sched.Timer("livecheck", cfg.LivecheckInterval, true, parts.Livecheck.Run)
	}
	stats := make(map[string]interface{ Stats() table.Stats }, len(tables))
	topics := []string{cfg.Topic, cfg.DeadLetterTopic()}
	var windowed []string
	for _, t := range tables {
		if st, ok := t.(interface{ Stats() table.Stats }); ok {
			stats[t.Name()] = st
		}
		topics = append(topics, t.Changelog())
		if _, ok := t.(interface{ CheckDefinition() error }); ok {
			windowed = append(windowed, t.Name())
		}
	}
	sampler := &metrics.Sampler{
		C:          mc,
		Tables:     stats,
		Store:      db,
		Partitions: func() int { all, _ := state.Assigned(); return len(all) },
		Standby:    func() int { return len(standby.Partitions()) },
	}
	sched.Timer("gauges", cfg.MetricsInterval, false, func(context.Context) error {
		sampler.Sample()
		all, _ := state.Assigned()
		streamHooks.Zero(all, topics, windowed...)
		return nil
	})
	for _, t := range parts.Timers {
		if t.Cron != "" {
			if err := sched.Crontab(t.Name, t.Cron, t.Leader, t.Run); err != nil {
				return err
			}
			continue
		}
		sched.Timer(t.Name, t.Every, t.Leader, t.Run)
	}

	var livecheck func() error
	if parts.Livecheck != nil {
		livecheck = parts.Livecheck.Check
	}
	route := web.Route(parts.Pages)
	front.Serve(tracing.HTTP(mc.HTTP((&web.Server{
		Pages:     parts.Pages,
		Readiness: state,
		Health:    health,
		Livecheck: livecheck,
		Log:       log.With("component", "web"),
	}).Handler(), route), route))

	if cfg.PprofAddr != "" {
		// Profiles on their own listener, never on the public port.
		pln, err := net.Listen("tcp", cfg.PprofAddr)
		if err != nil {
			return fmt.Errorf("listen on PPROF_ADDR=%s: %w", cfg.PprofAddr, err)
		}
		psrv := &http.Server{Handler: pprofMux(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = psrv.Serve(pln) }()
		cleanups = append(cleanups, psrv.Close)
		log.Info("pprof listening", "addr", pln.Addr().String())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := <-served; err != nil && !web.IsClosed(err) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return standby.Run(gctx) })
	g.Go(func() error { return sched.Run(gctx) })
	g.Go(func() error {
		err := rt.Run(gctx)
		// The runtime has flushed, committed and left the group. The web
		// server keeps answering until here, then gets a grace period.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := srv.Shutdown(sctx); serr != nil {
			// Connections still open after the grace period (idle ones a
			// load balancer opened, or slow clients) are cut: the worker's
			// state is already safe, so this is not a failed shutdown.
			log.Warn("http: closing connections still open after the grace period", "error", serr)
			_ = srv.Close()
		}
		return err
	})
	// SHUTDOWN_TIMEOUT bounds the whole warm shutdown: if flushing,
	// committing and leaving take longer, the worker gives up like a cold
	// shutdown (the changelogs hold the state) and skips the cleanups,
	// which could block on the parts still running.
	waited := make(chan error, 1)
	go func() { waited <- g.Wait() }()
	select {
	case err := <-waited:
		return windowsChanged(a, err, filepath.Join(cfg.DataDir, "state"))
	case <-ctx.Done():
	}
	deadline = time.Now().Add(cfg.ShutdownTimeout)
	select {
	case err := <-waited:
		return err
	case <-time.After(cfg.ShutdownTimeout):
		abandon = true
		return fmt.Errorf("warm shutdown did not finish within SHUTDOWN_TIMEOUT=%s; exiting without it (the changelogs hold the state)", cfg.ShutdownTimeout)
	}
}

// clients are separate sarama clients, so a long-polling fetch never delays
// a produce acknowledgement on a shared connection, and a JoinGroup held
// during a rebalance never delays an owner lookup.
type clients struct {
	admin, producer, group, restore, directory sarama.Client
	base                                       *sarama.Config // of the producer client, for transactional producers
}

func connect(cfg *config.Config, brokers []string, self string, changelogs []kafka.Topic) (*clients, error) {
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
			ReadCommitted:  cfg.Guarantee == config.ExactlyOnce,
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
	}{{&cs.admin, "admin"}, {&cs.producer, "producer"}, {&cs.group, "group"}, {&cs.restore, "restore"}, {&cs.directory, "directory"}} {
		if *x.c, err = mk(x.role); err != nil {
			_ = cs.close()
			return nil, err
		}
	}
	return &cs, nil
}

func (c *clients) close() error {
	var errs []error
	for _, cl := range []sarama.Client{c.directory, c.restore, c.group, c.producer, c.admin} {
		if cl != nil && !cl.Closed() {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}

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

// committedAt reads the time a partition's offset was last committed from
// the commit metadata the stream runtime writes.
func committedAt(admin sarama.ClusterAdmin, group, topic string) func(p int32) (time.Time, bool) {
	return func(p int32) (time.Time, bool) {
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {p}})
		if err != nil {
			return time.Time{}, false
		}
		b := resp.GetBlock(topic, p)
		if b == nil || b.Offset < 0 {
			return time.Time{}, false
		}
		ms, err := strconv.ParseInt(b.Metadata, 10, 64)
		if err != nil {
			return time.Time{}, false
		}
		return time.UnixMilli(ms), true
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

// transactions returns the per-partition transactional producer factory for
// exactly-once processing, or nil for at-least-once. The transactional id is
// stable per partition, so whichever worker owns the partition next fences
// the previous owner.
func transactions(cfg *config.Config, cs *clients, brokers []string) func(p int32) (*kafka.Producer, error) {
	if cfg.Guarantee != config.ExactlyOnce {
		return nil
	}
	return func(p int32) (*kafka.Producer, error) {
		return kafka.NewTransactionalProducer(brokers, cs.base, fmt.Sprintf("%s-%s-%d", cfg.Group, cfg.Topic, p), cfg.CommitInterval)
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
