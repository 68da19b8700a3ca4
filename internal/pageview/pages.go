package pageview

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/web"
)

// ReservedPrefix starts the pages of synthetic views (the livecheck's,
// LivecheckPage): counted like any other page, never reported. /count/
// refuses them, and the agent counts one only from a record with
// SyntheticHeader, so no user's view passes for a synthetic one.
const (
	ReservedPrefix  = "/_pageviews/"
	LivecheckPage   = ReservedPrefix + "livecheck"
	SyntheticHeader = "pageviews-synthetic" // its value names the sender
)

// Publisher sends page views to the page-views topic, keyed by page.
type Publisher struct {
	Sender app.Sender
	Topic  string
	Clock  func() time.Time
	n      atomic.Int64
}

// Publish counts a view of page in this process's counter and sends it. It
// returns the counter once the broker has acknowledged the record.
func (p *Publisher) Publish(ctx context.Context, page string) (int64, error) {
	return p.publish(ctx, page, nil)
}

// Synthetic publishes a synthetic view of page from sender.
func (p *Publisher) Synthetic(ctx context.Context, sender, page string) error {
	_, err := p.publish(ctx, page, []sarama.RecordHeader{{Key: []byte(SyntheticHeader), Value: []byte(sender)}})
	return err
}

func (p *Publisher) publish(ctx context.Context, page string, headers []sarama.RecordHeader) (int64, error) {
	pv := PageView{Page: page, Count: p.n.Add(1), Timestamp: p.Clock()}
	m := &sarama.ProducerMessage{Topic: p.Topic, Key: sarama.StringEncoder(page), Value: sarama.ByteEncoder(Encode(pv)), Headers: headers, Timestamp: pv.Timestamp}
	if _, _, err := p.Sender.SendAndWait(ctx, m); err != nil {
		return 0, fmt.Errorf("publish page view: %w", err)
	}
	return pv.Count, nil
}

// pages are /count/, which publishes a view, and /report/, which shows the
// tables (the runtime answers peers' reads on it).
type pages struct {
	publisher *Publisher
	reporter  *Reporter
	// ready tells whether the worker has joined and recovered; a report
	// made while it has not is stale.
	ready func() (bool, string)
	log   *slog.Logger
}

// publishTimeout bounds how long /count/ waits for the broker.
const publishTimeout = 10 * time.Second

func (o pages) list() []web.Page {
	return []web.Page{{Path: "/count/", Handler: o.count}, {Path: "/report/", Handler: o.report}}
}

func (o pages) count(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "/")
	if !ok {
		return
	}
	if strings.HasPrefix(page, ReservedPrefix) {
		web.Error(w, http.StatusBadRequest, "pages under "+ReservedPrefix+" are reserved for the worker's synthetic views")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), publishTimeout)
	defer cancel()
	n, err := o.publisher.Publish(ctx, page)
	if err != nil {
		o.log.WarnContext(r.Context(), "count: publish failed", "page", page, "error", err)
		web.Error(w, http.StatusServiceUnavailable, "page view not published: "+err.Error())
		return
	}
	web.JSON(w, http.StatusOK, map[string]int64{"count": n})
}

func (o pages) report(w http.ResponseWriter, r *http.Request) {
	page, ok := pageParam(w, r, "")
	if !ok {
		return
	}
	rep, err := o.reporter.Report(r.Context(), page)
	if err != nil {
		o.log.Error("report failed", "error", err)
		web.Error(w, http.StatusInternalServerError, "report failed: "+err.Error())
		return
	}
	if ready, _ := o.ready(); !ready {
		rep.Stale = true
	}
	web.JSON(w, http.StatusOK, rep)
}

// pageParam reads the page query parameter and refuses a page too long.
func pageParam(w http.ResponseWriter, r *http.Request, def string) (string, bool) {
	page := r.URL.Query().Get("page")
	if page == "" {
		page = def
	}
	if len(page) > MaxPageLen {
		web.Error(w, http.StatusBadRequest, fmt.Sprintf("page is longer than the limit of %d bytes", MaxPageLen))
		return "", false
	}
	return page, true
}
