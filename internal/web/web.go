// Package web serves the worker's HTTP pages: the seed's /, /ready/, /count/
// and /report/, and the Kubernetes probes /live and /ready.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/heptiolabs/healthcheck"

	"github.com/gofaust/pageviews/internal/pageview"
)

// Publisher sends a page view and returns this process's counter.
type Publisher interface {
	Publish(ctx context.Context, page string) (int64, error)
}

// Reporter builds the report of the tables.
type Reporter interface {
	Report(page string) (*pageview.Report, error)
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
	mux.HandleFunc("GET /live", s.Health.LiveEndpoint)
	mux.HandleFunc("GET /ready", s.Health.ReadyEndpoint)
	for _, path := range []string{"/{$}", "/ready/{$}", "/count/{$}", "/report/{$}", "/live", "/ready"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed; use GET")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such page: "+r.URL.Path)
	})
	return mux
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	ok, reason := s.Readiness.Ready()
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

func (s *Server) count(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "/")
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.PublishTimeout)
	defer cancel()
	n, err := s.Publisher.Publish(ctx, page)
	if err != nil {
		s.Log.Warn("count: publish failed", "page", page, "error", err)
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
	rep, err := s.Reporter.Report(page)
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
