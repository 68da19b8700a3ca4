// Package web serves the worker's HTTP pages: the seed's /, /ready/, /count/
// and /report/, and the Kubernetes probes /live and /ready.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/heptiolabs/healthcheck"

	"github.com/gofaust/pageviews/internal/pageview"
)

// Publisher sends a page view and returns this process's counter.
type Publisher interface {
	Publish(ctx context.Context, page string) (int64, error)
}

// Reporter builds the cluster-wide report, and the partial report of this
// worker's partitions that peers ask for.
type Reporter interface {
	Report(ctx context.Context, page string) (*pageview.Report, error)
	LocalPartial(page string, partitions []int32, reserved bool) (*pageview.Partial, error)
}

// PartitionReporter is a Reporter that can also answer a peer with each
// partition's counts apart (?local=1&by_partition=1), so that the peer
// keeps exactly the partitions it asked for. Without it, or without
// by_partition, a peer gets the counts summed, as earlier versions answer.
type PartitionReporter interface {
	LocalByPartition(page string, partitions []int32, reserved bool) (*pageview.PeerAnswer, error)
}

// Readiness tells whether the worker has joined and recovered.
type Readiness interface {
	Ready() (bool, string)
}

// Server holds what the pages need.
type Server struct {
	Publisher Publisher
	Reporter  Reporter
	Readiness Readiness
	Health    healthcheck.Handler
	// Livecheck returns the last livecheck's failure, or nil.
	Livecheck func() error
	Log       *slog.Logger
	// PublishTimeout bounds how long /count/ waits for the broker.
	PublishTimeout time.Duration
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /ready/{$}", s.ready)
	mux.HandleFunc("GET /count/{$}", s.count)
	mux.HandleFunc("GET /report/{$}", s.report)
	// Without the slash too, served rather than redirected (the mux's
	// redirect would answer HTML).
	mux.HandleFunc("GET /count", s.count)
	mux.HandleFunc("GET /report", s.report)
	mux.HandleFunc("GET /livecheck", s.livecheck)
	// The healthcheck handlers accept GET only; a HEAD probe gets the same
	// answer without the body.
	mux.HandleFunc("GET /live", asGet(s.Health.LiveEndpoint))
	mux.HandleFunc("GET /ready", asGet(s.Health.ReadyEndpoint))
	for _, path := range []string{"/{$}", "/ready/{$}", "/count/{$}", "/report/{$}", "/count", "/report", "/live", "/ready", "/livecheck"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed; use GET")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such page: "+r.URL.Path)
	})
	return frontDoor(mux)
}

// frontDoor answers what the mux would answer in plain text or HTML: a
// CONNECT, and paths that are not clean (the mux redirects those).
func frontDoor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "CONNECT is not allowed; use GET")
			return
		}
		p := r.URL.Path
		if p == "" || p[0] != '/' || cleanPath(p) != p {
			writeError(w, http.StatusNotFound, "no such page: "+p)
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
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

// livecheck answers 200 while the last livecheck passed (or this worker,
// not being the leader, runs none) and 503 with the failure otherwise.
func (s *Server) livecheck(w http.ResponseWriter, _ *http.Request) {
	var err error
	if s.Livecheck != nil {
		err = s.Livecheck()
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ok": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// Route maps a request to one of the worker's routes, a bounded label for
// metrics.
func Route(r *http.Request) string {
	switch p := r.URL.Path; p {
	case "/", "/ready/", "/count/", "/report/", "/live", "/ready", "/livecheck":
		return p
	case "/count", "/report":
		return p + "/"
	}
	return "other"
}

func (s *Server) count(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "/")
	if !ok {
		return
	}
	if strings.HasPrefix(page, pageview.ReservedPrefix) {
		// The worker's synthetic views (the livecheck) use these pages; a
		// user's view of one would be counted but never shown, and could
		// pass for a synthetic one.
		writeError(w, http.StatusBadRequest, "pages under "+pageview.ReservedPrefix+" are reserved for the worker's synthetic views")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.PublishTimeout)
	defer cancel()
	n, err := s.Publisher.Publish(ctx, page)
	if err != nil {
		s.Log.WarnContext(r.Context(), "count: publish failed", "page", page, "error", err)
		writeError(w, http.StatusServiceUnavailable, "page view not published: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"count": n})
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "")
	if !ok {
		return
	}
	if r.URL.Query().Get("local") == "1" {
		s.localReport(w, r, page)
		return
	}
	rep, err := s.Reporter.Report(r.Context(), page)
	if err != nil {
		s.Log.Error("report failed", "error", err)
		writeError(w, http.StatusInternalServerError, "report failed: "+err.Error())
		return
	}
	if ready, _ := s.Readiness.Ready(); !ready {
		rep.Stale = true
	}
	writeJSON(w, http.StatusOK, rep)
}

// localReport answers a peer's request for the partitions this worker
// holds: ?local=1&partitions=0,3 (all of them when partitions is absent),
// by partition with &by_partition=1.
func (s *Server) localReport(w http.ResponseWriter, r *http.Request, page string) {
	var parts []int32
	if raw := r.URL.Query().Get("partitions"); raw != "" {
		for _, f := range strings.Split(raw, ",") {
			p, err := strconv.ParseInt(f, 10, 32)
			if err != nil || p < 0 {
				writeError(w, http.StatusBadRequest, "partitions must be a comma-separated list of partition numbers")
				return
			}
			parts = append(parts, int32(p))
		}
	}
	reserved := r.URL.Query().Get("reserved") == "1"
	var part any
	var err error
	if pr, ok := s.Reporter.(PartitionReporter); ok && r.URL.Query().Get("by_partition") == "1" {
		part, err = pr.LocalByPartition(page, parts, reserved)
	} else {
		part, err = s.Reporter.LocalPartial(page, parts, reserved)
	}
	if err != nil {
		s.Log.Error("local report failed", "error", err)
		writeError(w, http.StatusInternalServerError, "report failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, part)
}

// pageParam reads the page query parameter and rejects unusable values.
func pageParam(w http.ResponseWriter, r *http.Request, def string) (string, bool) {
	page := r.URL.Query().Get("page")
	if page == "" {
		page = def
	}
	if len(page) > pageview.MaxPageLen {
		writeError(w, http.StatusBadRequest, "page is longer than the limit of 1024 bytes")
		return "", false
	}
	return page, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
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
