// Package web serves the worker's HTTP pages: the runtime's /, /ready/ and
// /livecheck, the Kubernetes probes /live and /ready, and the pages an app
// declares (Page), such as the example's /count/ and /report/.
package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/heptiolabs/healthcheck"

	"github.com/gofaust/pageviews/internal/window"
)

// Readiness tells whether the worker has joined and recovered.
type Readiness interface {
	Ready() (bool, string)
}

// Page is one of the app's HTTP pages: GET on Path, with and without a
// trailing slash (served, not redirected). Path is also its bounded label
// for metrics. Handler answers it; or, when Handler is nil, JSON does: its
// value is the body of a 200, its error the {"error": ...} body with the
// status of a StatusError (Errorf), or 500 for any other error.
type Page struct {
	Path    string // "/count/"
	Handler http.HandlerFunc
	JSON    func(r *http.Request) (any, error)
}

// StatusError is a JSON page's error with the status it answers.
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string { return e.Msg }

// Errorf returns a StatusError.
func Errorf(status int, format string, args ...any) error {
	return &StatusError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// Serve is p's handler: Handler, or JSON's answer; log records the
// answers of 500 and above.
func (p Page) Serve(log *slog.Logger) http.HandlerFunc {
	if p.Handler != nil {
		return p.Handler
	}
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := p.JSON(r)
		if err == nil {
			JSON(w, http.StatusOK, v)
			return
		}
		status := http.StatusInternalServerError
		if se := (*StatusError)(nil); errors.As(err, &se) {
			status = se.Status
		}
		if status >= 500 {
			log.WarnContext(r.Context(), "page failed", "path", p.Path, "status", status, "error", err)
		}
		Error(w, status, err.Error())
	}
}

// Server serves the worker's generic pages (health, readiness, probes,
// livecheck) and the app's own.
type Server struct {
	Pages     []Page
	Readiness Readiness
	Health    healthcheck.Handler
	// Livecheck returns the last livecheck's failure, or nil.
	Livecheck func() error
	Log       *slog.Logger
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		JSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /ready/{$}", s.ready)
	mux.HandleFunc("GET /livecheck", s.livecheck)
	// The healthcheck handlers accept GET only; a HEAD probe gets the same
	// answer without the body.
	mux.HandleFunc("GET /live", asGet(s.Health.LiveEndpoint))
	mux.HandleFunc("GET /ready", asGet(s.Health.ReadyEndpoint))
	paths := []string{"/{$}", "/ready/{$}", "/live", "/ready", "/livecheck"}
	for _, pg := range s.Pages {
		dir := strings.TrimSuffix(pg.Path, "/")
		h := pg.Serve(s.Log)
		mux.HandleFunc("GET "+dir+"/{$}", h)
		// Without the slash too, served rather than redirected (the mux's
		// redirect would answer HTML).
		mux.HandleFunc("GET "+dir, h)
		paths = append(paths, dir+"/{$}", dir)
	}
	for _, path := range paths {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, HEAD")
			Error(w, http.StatusMethodNotAllowed, r.Method+" is not allowed; use GET")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		Error(w, http.StatusNotFound, "no such page: "+r.URL.Path)
	})
	return frontDoor(mux)
}

// frontDoor answers what the mux would answer in plain text or HTML: a
// CONNECT, and paths that are not clean (the mux redirects those).
func frontDoor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			w.Header().Set("Allow", "GET, HEAD")
			Error(w, http.StatusMethodNotAllowed, "CONNECT is not allowed; use GET")
			return
		}
		p := r.URL.Path
		if p == "" || p[0] != '/' || cleanPath(p) != p {
			Error(w, http.StatusNotFound, "no such page: "+p)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cleanPath is path.Clean keeping a trailing slash.
func cleanPath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func asGet(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		h(w, r)
	}
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	ok, reason := s.Readiness.Ready()
	if !ok {
		JSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
		return
	}
	JSON(w, http.StatusOK, map[string]any{"ready": true})
}

// livecheck answers 200 while the last livecheck passed (or this worker,
// not being the leader, runs none) and 503 with the failure otherwise.
func (s *Server) livecheck(w http.ResponseWriter, _ *http.Request) {
	var err error
	if s.Livecheck != nil {
		err = s.Livecheck()
	}
	if err != nil {
		JSON(w, http.StatusServiceUnavailable, map[string]any{"ok": false, "error": err.Error()})
		return
	}
	JSON(w, http.StatusOK, map[string]any{"ok": true})
}

// Route returns a function that maps a request to one of the worker's
// routes, its own and the app's pages: a bounded label for metrics.
func Route(pages []Page) func(r *http.Request) string {
	known := map[string]string{"/": "/", "/ready/": "/ready/", "/live": "/live", "/ready": "/ready", "/livecheck": "/livecheck"}
	for _, pg := range pages {
		dir := strings.TrimSuffix(pg.Path, "/")
		known[dir+"/"], known[dir] = dir+"/", dir+"/"
	}
	return func(r *http.Request) string {
		if name, ok := known[r.URL.Path]; ok {
			return name
		}
		return "other"
	}
}

// JSON writes v as the JSON body of a response with status.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Param is the query parameter name of r, or def when it is empty; a value
// longer than limit bytes is a 400 (StatusError).
func Param(r *http.Request, name, def string, limit int) (string, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		v = def
	}
	if len(v) > limit {
		return "", Errorf(http.StatusBadRequest, "%s is longer than the limit of %d bytes", name, limit)
	}
	return v, nil
}

// Ordered is a JSON object whose fields keep the order they are given in:
// key, value, key, value, ... The keys are strings.
type Ordered []any

// MarshalJSON writes the object with its fields in order.
func (o Ordered) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i := 0; i+1 < len(o); i += 2 {
		k, err := json.Marshal(o[i])
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(o[i+1])
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

// WindowField is the JSON name of a count over the last window of size:
// prefix_within_1_minute, prefix_within_30_seconds (window.Words).
func WindowField(prefix string, size time.Duration) string {
	return prefix + "_within_" + window.Words(size)
}

// UnmarshalWindowed decodes the object b into v, and the count it names
// after its window (a WindowField, whatever the window) into n.
func UnmarshalWindowed(b []byte, v any, n *int64) error {
	var fields map[string]json.RawMessage
	err := json.Unmarshal(b, &fields)
	for k, f := range fields {
		if strings.Contains(k, "_within_") {
			err = errors.Join(err, json.Unmarshal(f, n))
		}
	}
	return errors.Join(err, json.Unmarshal(b, v))
}

// Error writes the JSON error body every page answers with: {"error": msg}.
func Error(w http.ResponseWriter, status int, msg string) {
	JSON(w, status, map[string]string{"error": msg})
}

// NewHTTPServer returns an http.Server with the timeouts a public endpoint
// needs.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// IsClosed reports whether err is the normal end of Serve.
func IsClosed(err error) bool { return errors.Is(err, http.ErrServerClosed) }

// Front is the worker's handler from the moment its port is open. Until
// Serve hands it the real handler, start-up is waiting (for the brokers,
// the store): / and /live answer that the process is up, /ready/ and
// /ready answer 503 with what start-up waits for, and every other path
// 503 with the same reason. A probe or a person can then tell a worker
// that is starting from one that is not there.
type Front struct {
	h      atomic.Pointer[http.Handler]
	reason atomic.Pointer[string]
}

// Starting records what start-up is doing now.
func (f *Front) Starting(what string) { f.reason.Store(&what) }

// Serve hands every request from now on to h.
func (f *Front) Serve(h http.Handler) { f.h.Store(&h) }

// ServeHTTP implements http.Handler.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := f.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	reason := "starting"
	if s := f.reason.Load(); s != nil {
		reason = "starting: " + *s
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/", "/live":
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
	case "/ready/", "/ready":
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "reason": reason})
	default:
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": reason})
	}
}
