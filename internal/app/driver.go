package app

// The test driver: an app's agent, tables and pages in-process, without a
// broker, on a real store, with a clock the test moves.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/heptiolabs/healthcheck"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/stream"
	"github.com/gofaust/pageviews/internal/web"
)

// TB is the part of testing.TB the driver uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// Driver runs an app the way the runtime does, in the test's goroutine:
// records of the source topic go to the agent of their partition (keys
// are partitioned as the producer does), records the app sends elsewhere
// are kept per topic, and Flush writes the tables' changes to their
// changelogs and the store as a commit would. Its clock moves only with
// Advance. One worker holds every partition, recovered.
//
// Faust's test_context, goka's tester and Kafka Streams'
// TopologyTestDriver are the models.
type Driver struct {
	tb        TB
	cfg       *config.Config
	tables    []stream.Table
	parts     Parts
	livecheck *livecheck
	db        *store.DB
	pages     http.Handler

	mu          sync.Mutex
	now         time.Time
	partitioner sarama.Partitioner
	offsets     map[string]int64 // next offset per topic and partition ("topic/p")
	output      map[string][]*sarama.ProducerMessage
	late        map[string]int
}

// NewDriver starts a's parts with the settings env (unset variables take
// their defaults; DATA_DIR is a temporary directory) and the clock at
// start.
func NewDriver(tb TB, a *App, env map[string]string, start time.Time) *Driver {
	tb.Helper()
	getenv := func(k string) string {
		if k == "DATA_DIR" && env[k] == "" {
			return tb.TempDir()
		}
		return env[k]
	}
	cfg, err := config.Load(getenv, a.Spec())
	if err != nil {
		tb.Fatalf("driver: %v", err)
	}
	db, _, err := store.Open(tb.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("driver: open store: %v", err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	d := &Driver{
		tb: tb, cfg: cfg, db: db, now: start,
		offsets: map[string]int64{},
		output:  map[string][]*sarama.ProducerMessage{},
		late:    map[string]int{},
	}
	// The producer's partitioner: the driver puts keys where the worker
	// does.
	kc, err := kafka.NewConfig(kafka.Options{ClientID: "driver"})
	if err != nil {
		tb.Fatalf("driver: %v", err)
	}
	d.partitioner = kc.Producer.Partitioner(cfg.Topic)
	tenv := &tableEnv{group: cfg.Group, db: db, windows: cfg.Windows, clock: d.Now, closedTopic: cfg.WindowsTopic()}
	all := d.partitions()
	for _, decl := range a.Tables {
		t := decl.make(tenv, true)
		for _, p := range all {
			if _, _, err := t.Assign(p); err != nil {
				tb.Fatalf("driver: assign %s/%d: %v", t.Name(), p, err)
			}
		}
		d.tables = append(d.tables, t)
	}
	s := &Services{
		Config:     cfg,
		Log:        slog.New(slog.DiscardHandler),
		Clock:      d.Now,
		Producer:   d,
		Self:       "driver",
		Owners:     func() (map[int32]string, error) { return nil, nil }, // unknown owners: this worker
		Partitions: func() (int32, error) { return cfg.Partitions, nil },
		PartitionOf: func(key string) (int32, error) {
			return d.partitionOf(&sarama.ProducerMessage{Topic: cfg.Topic, Key: sarama.StringEncoder(key)})
		},
		Owned: d.partitions,
		Ready: recovered{}.Ready,
		Late: func(table string) func(*stream.Event) {
			return func(*stream.Event) { d.mu.Lock(); d.late[table]++; d.mu.Unlock() }
		},
	}
	d.parts, err = a.Start(s)
	if err != nil {
		tb.Fatalf("driver: start: %v", err)
	}
	d.parts.Pages = s.withPeers(d.parts.Pages)
	var livecheck func() error
	if d.parts.Livecheck != nil {
		d.livecheck = newLivecheck(d.parts.Livecheck, cfg.LivecheckSLO, func(bool, time.Duration, error) {})
		livecheck = d.livecheck.Check
	}
	// The worker's HTTP server, as it serves the app's pages.
	d.pages = (&web.Server{Pages: d.parts.Pages, Readiness: recovered{}, Health: healthcheck.NewHandler(),
		Livecheck: livecheck, Log: slog.New(slog.DiscardHandler)}).Handler()
	return d
}

// recovered is the readiness of a driver: every partition is recovered.
type recovered struct{}

func (recovered) Ready() (bool, string) { return true, "" }

// Config is the settings the app runs with.
func (d *Driver) Config() *config.Config { return d.cfg }

// Now is the driver's clock.
func (d *Driver) Now() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.now
}

// Advance moves the clock.
func (d *Driver) Advance(by time.Duration) {
	d.mu.Lock()
	d.now = d.now.Add(by)
	d.mu.Unlock()
}

// Send gives the agent one record of the source topic, stamped with the
// clock, and returns the agent's error: one that wraps stream.ErrInvalid
// is a record the runtime would dead-letter.
func (d *Driver) Send(key string, value []byte, headers ...sarama.RecordHeader) error {
	_, _, err := d.SendAndWait(context.Background(), &sarama.ProducerMessage{
		Topic: d.cfg.Topic, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(value), Headers: headers,
	})
	return err
}

// SendAndWait is the app's producer: a record of the source topic is
// processed before it returns, others are kept (Output).
func (d *Driver) SendAndWait(ctx context.Context, m *sarama.ProducerMessage) (int32, int64, error) {
	p, err := d.partitionOf(m)
	if err != nil {
		return 0, 0, err
	}
	now := d.Now()
	if m.Timestamp.IsZero() {
		m.Timestamp = now
	}
	off := d.nextOffset(m.Topic, p)
	if m.Topic != d.cfg.Topic {
		d.mu.Lock()
		d.output[m.Topic] = append(d.output[m.Topic], m)
		d.mu.Unlock()
		return p, off, nil
	}
	key, err := encoded(m.Key)
	if err != nil {
		return 0, 0, err
	}
	value, err := encoded(m.Value)
	if err != nil {
		return 0, 0, err
	}
	hs := make([]*sarama.RecordHeader, len(m.Headers))
	for i := range m.Headers {
		hs[i] = &m.Headers[i]
	}
	ev := &stream.Event{Ctx: ctx, Partition: p, Offset: off, Key: key, Value: value, Timestamp: m.Timestamp, Headers: hs, Now: now}
	if err := d.parts.Agent.Handle(ev); err != nil {
		return p, off, fmt.Errorf("partition %d offset %d: %w", p, off, err)
	}
	return p, off, nil
}

// Flush does what a commit of caught-up partitions does to the tables:
// their changes go to their changelogs (kept, see Output) and to the store,
// the windows whose end plus grace the clock has passed close (their
// results go to the closed-window topic), and expired windows go.
func (d *Driver) Flush() {
	d.tb.Helper()
	now := d.Now()
	for _, p := range d.partitions() {
		b := d.db.NewBatch()
		for _, t := range d.tables {
			if c, ok := t.(interface{ CloseAt(int32, time.Time) bool }); ok {
				c.CloseAt(p, now)
			}
			recs, err := t.Flush(p, now)
			if err != nil {
				d.tb.Fatalf("driver: flush %s/%d: %v", t.Name(), p, err)
			}
			last := int64(-1)
			for _, r := range recs {
				topic := cmp.Or(r.Topic, t.Changelog())
				off := d.nextOffset(topic, p)
				if r.Topic == "" {
					last = off
				}
				d.mu.Lock()
				d.output[topic] = append(d.output[topic], &sarama.ProducerMessage{
					Topic: topic, Partition: p, Key: sarama.ByteEncoder(r.Key), Value: sarama.ByteEncoder(r.Value), Timestamp: r.Timestamp,
				})
				d.mu.Unlock()
			}
			if err := t.Write(p, b, last); err != nil {
				d.tb.Fatalf("driver: write %s/%d: %v", t.Name(), p, err)
			}
		}
		if err := b.Commit(); err != nil {
			d.tb.Fatalf("driver: commit store batch: %v", err)
		}
		for _, t := range d.tables {
			t.Flushed(p)
		}
	}
}

// Output returns the records sent to topic so far: by the app, or, for a
// changelog, by Flush.
func (d *Driver) Output(topic string) []*sarama.ProducerMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*sarama.ProducerMessage(nil), d.output[topic]...)
}

// Late is how many events came for the windowed table after one of their
// windows had closed.
func (d *Driver) Late(table string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.late[table]
}

// Get serves a GET of path (with its query) on the app's pages and
// returns the status and the body.
func (d *Driver) Get(path string) (int, []byte) {
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.Bytes()
}

// ServeHTTP serves r as the worker's HTTP port would: the app's pages and
// the runtime's own (/, /ready/, /live, /ready, /livecheck/).
func (d *Driver) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.pages.ServeHTTP(w, r) }

// Livecheck runs the app's livecheck once.
func (d *Driver) Livecheck(ctx context.Context) error {
	if d.livecheck == nil {
		return errors.New("the app declares no livecheck")
	}
	return d.livecheck.Run(ctx)
}

func (d *Driver) partitions() []int32 {
	ps := make([]int32, d.cfg.Partitions)
	for i := range ps {
		ps[i] = int32(i)
	}
	return ps
}

// partitionOf is the producer's choice: the explicit partition of a
// changelog record, else the hash of the key.
func (d *Driver) partitionOf(m *sarama.ProducerMessage) (int32, error) {
	if m.Topic != d.cfg.Topic && m.Key == nil {
		return m.Partition, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.partitioner.Partition(m, d.cfg.Partitions)
}

func (d *Driver) nextOffset(topic string, p int32) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := fmt.Sprintf("%s/%d", topic, p)
	off := d.offsets[k]
	d.offsets[k] = off + 1
	return off
}

func encoded(e sarama.Encoder) ([]byte, error) {
	if e == nil {
		return nil, nil
	}
	return e.Encode()
}
