package pageview

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/web"
)

// ViewSender sends a page view and returns this process's counter (Publisher).
type ViewSender interface {
	Publish(ctx context.Context, page string) (int64, error)
}

// Reports builds the cluster-wide report, and answers a peer's request for
// this worker's partitions (Reporter).
type Reports interface {
	Report(ctx context.Context, page string) (*Report, error)
	ServePeer(w http.ResponseWriter, r *http.Request)
}

// PageOptions is what the app's pages need.
type PageOptions struct {
	Publisher ViewSender
	Reporter  Reports
	// Ready tells whether the worker has joined and recovered; a report
	// made while it has not is stale.
	Ready func() (bool, string)
	Log   *slog.Logger
	// PublishTimeout bounds how long /count/ waits for the broker.
	PublishTimeout time.Duration
}

// Pages are the example's HTTP pages: /count/ publishes a view, /report/
// shows the tables.
func Pages(o PageOptions) []web.Page {
	return []web.Page{
		{Path: "/count/", Handler: o.count},
		{Path: "/report/", Handler: o.report},
	}
}

func (o PageOptions) count(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "/")
	if !ok {
		return
	}
	if strings.HasPrefix(page, ReservedPrefix) {
		// The worker's synthetic views (the livecheck) use these pages; a
		// user's view of one would be counted but never shown, and could
		// pass for a synthetic one.
		web.Error(w, http.StatusBadRequest, "pages under "+ReservedPrefix+" are reserved for the worker's synthetic views")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), o.PublishTimeout)
	defer cancel()
	n, err := o.Publisher.Publish(ctx, page)
	if err != nil {
		o.Log.WarnContext(r.Context(), "count: publish failed", "page", page, "error", err)
		web.Error(w, http.StatusServiceUnavailable, "page view not published: "+err.Error())
		return
	}
	web.JSON(w, http.StatusOK, map[string]int64{"count": n})
}

func (o PageOptions) report(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "")
	if !ok {
		return
	}
	if app.IsPeer(r) {
		o.Reporter.ServePeer(w, r)
		return
	}
	rep, err := o.Reporter.Report(r.Context(), page)
	if err != nil {
		o.Log.Error("report failed", "error", err)
		web.Error(w, http.StatusInternalServerError, "report failed: "+err.Error())
		return
	}
	if ready, _ := o.Ready(); !ready {
		rep.Stale = true
	}
	web.JSON(w, http.StatusOK, rep)
}

// pageParam reads the page query parameter and rejects unusable values.
func pageParam(w http.ResponseWriter, r *http.Request, def string) (string, bool) {
	page := r.URL.Query().Get("page")
	if page == "" {
		page = def
	}
	if len(page) > MaxPageLen {
		web.Error(w, http.StatusBadRequest, "page is longer than the limit of 1024 bytes")
		return "", false
	}
	return page, true
}
