// Package schema gives records a contract kept in a Confluent-compatible
// schema registry. A Codec of T writes registry-framed Avro (magic byte 0,
// the schema id in 4 bytes big-endian, the Avro body) once it is bound to a
// registry, plain JSON otherwise, and reads both: a framed record by its
// writer schema, fetched by id and cached, resolved to the codec's own
// schema by Avro's rules, so an added optional field or a removed defaulted
// one needs no deploy.
//
// A record the codec can never read (an id the registry does not know, a
// body that does not match its schema) is stream.ErrInvalid, which
// dead-letters it; a registry that does not answer is stream.ErrUnavailable,
// which makes the partition wait.
package schema

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/gofaust/pageviews/internal/stream"
)

// Options say how to reach a registry.
type Options struct {
	URL string
	// Username and Password are basic auth (Confluent Cloud's API key and
	// secret); the password is never logged.
	Username, Password string
	// CAFile is a PEM bundle of the CAs that sign the registry's
	// certificate; empty uses the system roots.
	CAFile string
	// Timeout bounds one request; zero means 10s.
	Timeout time.Duration
	// UserAgent names the client to the registry (the service).
	UserAgent string
}

// Registry is a registry client with a cache of writer schemas by id,
// shared by the codecs bound to it, and the counters the metrics read.
type Registry struct {
	cl  *sr.Client
	url string

	mu      sync.Mutex
	writers map[int]avro.Schema   // writer schemas by id
	pending map[int]*lookup       // lookups under way, by id
	unknown map[int]time.Time     // ids the registry did not know, until when to believe it
	seen    map[int]*atomic.Int64 // records read per schema id

	lookups, failures, hits atomic.Int64
}

// unknownFor is how long an id the registry answered 404 for is taken as
// unknown without asking again: a flood of bad records does not become a
// flood of lookups.
const unknownFor = 30 * time.Second

// Connect makes a registry client; it does not contact the registry.
func Connect(o Options) (*Registry, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("schema registry CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("schema registry CA file %s holds no PEM certificate", o.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	opts := []sr.ClientOpt{
		sr.URLs(o.URL),
		sr.HTTPClient(&http.Client{Timeout: timeout, Transport: transport}),
	}
	if o.UserAgent != "" {
		opts = append(opts, sr.UserAgent(o.UserAgent))
	}
	if o.Username != "" || o.Password != "" {
		opts = append(opts, sr.BasicAuth(o.Username, o.Password))
	}
	cl, err := sr.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("schema registry %s: %w", o.URL, err)
	}
	return &Registry{cl: cl, url: o.URL, writers: map[int]avro.Schema{}, pending: map[int]*lookup{},
		unknown: map[int]time.Time{}, seen: map[int]*atomic.Int64{}}, nil
}

// URL is where the registry is.
func (r *Registry) URL() string { return r.url }

// Stats are the registry's counters since it was made.
type Stats struct {
	// Lookups are requests for a writer schema by id; Failures those that
	// did not get an answer (unreachable, a server error); Hits framed
	// records read without a lookup of their own (cached, or answered by
	// another partition's lookup of the same id).
	Lookups, Failures, Hits int64
	// Records are the framed records read, by schema id.
	Records map[int]int64
}

// Stats reads the counters.
func (r *Registry) Stats() Stats {
	s := Stats{Lookups: r.lookups.Load(), Failures: r.failures.Load(), Hits: r.hits.Load(), Records: map[int]int64{}}
	r.mu.Lock()
	for id, n := range r.seen {
		s.Records[id] = n.Load()
	}
	r.mu.Unlock()
	return s
}

// ErrUnknownSchema is a framed record whose schema id the registry does
// not know.
var ErrUnknownSchema = errors.New("unknown schema id")

// lookup is one request for a writer schema; the partitions that need the
// same id meanwhile wait for it instead of asking again.
type lookup struct {
	done chan struct{}
	err  error
}

// writer returns the writer schema of id: cached, or fetched (a lookup of
// this call's own, counted as a cache miss; any other answer counts as a
// hit). Errors wrap
// stream.ErrInvalid (the registry does not know the id, or it is not a
// usable Avro schema) or stream.ErrUnavailable (no answer).
func (r *Registry) writer(id int) (avro.Schema, *atomic.Int64, error) {
	for {
		r.mu.Lock()
		s, ok := r.writers[id]
		until, unknown := r.unknown[id]
		seen := r.seen[id]
		call := r.pending[id]
		if !ok && call == nil && (!unknown || time.Now().After(until)) {
			call = &lookup{done: make(chan struct{})}
			r.pending[id] = call
			r.mu.Unlock()
			call.err = r.fetch(id)
			r.mu.Lock()
			delete(r.pending, id)
			close(call.done)
			r.mu.Unlock()
			if call.err != nil {
				return nil, nil, call.err
			}
			r.mu.Lock()
			s, seen = r.writers[id], r.seen[id]
			r.mu.Unlock()
			return s, seen, nil
		}
		r.mu.Unlock()
		switch {
		case ok:
			r.hits.Add(1)
			return s, seen, nil
		case call != nil:
			<-call.done
			if call.err != nil && !errors.Is(call.err, stream.ErrInvalid) {
				return nil, nil, call.err
			}
		default:
			return nil, nil, fmt.Errorf("%w: %w %d (registry %s)", stream.ErrInvalid, ErrUnknownSchema, id, r.url)
		}
	}
}

// fetch asks the registry for the writer schema of id and caches the
// answer: the schema, or that the id is unknown.
func (r *Registry) fetch(id int) error {
	r.lookups.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := r.cl.SchemaByID(ctx, id)
	if err != nil {
		if notFound(err) {
			r.mu.Lock()
			r.unknown[id] = time.Now().Add(unknownFor)
			r.mu.Unlock()
			return fmt.Errorf("%w: %w %d: the registry %s answered 404", stream.ErrInvalid, ErrUnknownSchema, id, r.url)
		}
		r.failures.Add(1)
		return fmt.Errorf("%w: schema registry %s: schema id %d: %w", stream.ErrUnavailable, r.url, id, err)
	}
	if got.Type != sr.TypeAvro {
		return fmt.Errorf("%w: schema id %d is %s, not Avro", stream.ErrInvalid, id, got.Type)
	}
	s, err := avro.Parse(got.Schema)
	if err != nil {
		return fmt.Errorf("%w: schema id %d does not parse: %w", stream.ErrInvalid, id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writers[id] = s
	delete(r.unknown, id)
	if r.seen[id] == nil {
		r.seen[id] = new(atomic.Int64)
	}
	return nil
}

// notFound reports whether the registry answered 404: no such subject,
// version or schema.
func notFound(err error) bool {
	var re *sr.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

// latest returns the subject's latest version, or ok false when the
// subject does not exist.
func (r *Registry) latest(ctx context.Context, subject string) (s sr.SubjectSchema, ok bool, err error) {
	s, err = r.cl.SchemaByVersion(ctx, subject, -1)
	switch {
	case notFound(err):
		return s, false, nil
	case err != nil:
		return s, false, fmt.Errorf("schema registry %s: subject %s: %w", r.url, subject, err)
	}
	return s, true, nil
}

// lookup returns the subject's version holding text, or ok false.
func (r *Registry) lookup(ctx context.Context, subject, text string) (s sr.SubjectSchema, ok bool, err error) {
	s, err = r.cl.LookupSchema(ctx, subject, sr.Schema{Schema: text, Type: sr.TypeAvro})
	switch {
	case notFound(err):
		return s, false, nil
	case err != nil:
		return s, false, fmt.Errorf("schema registry %s: subject %s: %w", r.url, subject, err)
	}
	return s, true, nil
}

// register adds text to the subject as its newest version.
func (r *Registry) register(ctx context.Context, subject, text string) (sr.SubjectSchema, error) {
	s, err := r.cl.CreateSchema(ctx, subject, sr.Schema{Schema: text, Type: sr.TypeAvro})
	if err != nil {
		return s, fmt.Errorf("schema registry %s: register subject %s: %w", r.url, subject, err)
	}
	return s, nil
}
