// Package devregistry runs an in-process schema registry (franz-go's
// srfake, which speaks the Confluent registry API) for development and
// tests, as devbroker runs a broker. It keeps what is registered in a file,
// so that after a restart the schema ids in the dev broker's records still
// resolve. It does not enforce compatibility; the worker checks its own.
// Never for production.
package devregistry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// Options configure a dev registry.
type Options struct {
	Addr string // host:port to listen on; port 0 picks one
	// DataDir keeps the registrations; empty keeps them in memory.
	DataDir string
}

// Registry is a running dev registry.
type Registry struct {
	reg *srfake.Registry
	srv *http.Server
	ln  net.Listener
	log string // the registrations file, "" when in memory

	mu sync.Mutex // serializes registrations with their logging
}

// registration is a line of the registrations file: the schemas are
// registered again in the same order on start, which gives them the same
// ids and versions.
type registration struct {
	Subject string    `json:"subject"`
	Schema  sr.Schema `json:"schema"`
}

// Start replays the registrations in DataDir and serves the registry.
func Start(o Options) (*Registry, error) {
	r := &Registry{reg: srfake.NewRegistry()}
	if o.DataDir != "" {
		if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
			return nil, err
		}
		r.log = filepath.Join(o.DataDir, "registrations.jsonl")
		if err := r.replay(); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("start dev schema registry on %s: %w", o.Addr, err)
	}
	r.ln = ln
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return "http://" + r.ln.Addr().String() }

// Addr is where it listens.
func (r *Registry) Addr() string { return r.ln.Addr().String() }

// Close stops serving at once: a registration is written to its file
// before it is answered, so nothing an answer promised is lost. (A graceful
// shutdown would wait for connections a client dialled and never used.)
func (r *Registry) Close() error { return r.srv.Close() }

// serve answers with srfake, and logs each registration it accepted.
func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	rest, underSubjects := strings.CutPrefix(req.URL.Path, "/subjects/")
	subject, versions := strings.CutSuffix(rest, "/versions")
	if !underSubjects || !versions || strings.Contains(subject, "/") || req.Method != http.MethodPost || r.log == "" {
		r.reg.Handler().ServeHTTP(w, req)
		return
	}
	body, err := readBody(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec := &recorder{ResponseWriter: w}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reg.Handler().ServeHTTP(rec, req)
	if rec.status != 0 && rec.status != http.StatusOK {
		return
	}
	var s sr.Schema
	if json.Unmarshal(body, &s) == nil {
		if err := r.append(registration{Subject: subject, Schema: s}); err != nil {
			// The registration stands for this run; say it will not survive one.
			fmt.Fprintf(os.Stderr, "devregistry: could not keep a registration of %s: %v\n", subject, err)
		}
	}
}

// readBody reads the request's body and puts it back for the handler.
func readBody(req *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(nil, req.Body, 8<<20)); err != nil {
		return nil, err
	}
	req.Body = readCloser{bytes.NewReader(buf.Bytes())}
	return buf.Bytes(), nil
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// recorder notes the status the handler answered with.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (r *Registry) append(reg registration) error {
	line, err := json.Marshal(reg)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(r.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// replay registers the logged schemas again, in order.
func (r *Registry) replay() error {
	f, err := os.Open(r.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for n := 1; sc.Scan(); n++ {
		var reg registration
		if err := json.Unmarshal(sc.Bytes(), &reg); err != nil {
			return fmt.Errorf("dev schema registry: %s line %d: %w", r.log, n, err)
		}
		if _, _, err := r.reg.RegisterSchema(reg.Subject, reg.Schema); err != nil {
			return fmt.Errorf("dev schema registry: %s line %d: %w", r.log, n, err)
		}
	}
	return sc.Err()
}
