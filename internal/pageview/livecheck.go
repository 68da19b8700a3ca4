package pageview

import "context"

// ReservedPrefix starts the pages of synthetic views (the livecheck's):
// counted like any other page, never reported. /count/ refuses them, and
// the agent counts a view of one only when its record carries
// SyntheticHeader, so no user's view passes for a synthetic one.
const ReservedPrefix = "/_pageviews/"

// SyntheticHeader is the record header that marks the worker's synthetic
// views; its value names what sent them.
const SyntheticHeader = "pageviews-synthetic"

// LivecheckPage is the reserved page of the synthetic views.
const LivecheckPage = ReservedPrefix + "livecheck"

// livecheck is the page-view app's probe (app.Probe): a synthetic view of
// LivecheckPage goes through the same path as /count/, and the runtime
// checks it reaches the totals table within the SLO. Synthetic views are
// counted like any other but never reported.
type livecheck struct {
	publish func(ctx context.Context, page string) (int64, error)
	count   func(ctx context.Context, page string) (Counts, bool, error)
}

func (l livecheck) Read(ctx context.Context) (int64, bool, error) {
	c, complete, err := l.count(ctx, LivecheckPage)
	return c.Count, complete, err
}

func (l livecheck) Send(ctx context.Context) error {
	_, err := l.publish(ctx, LivecheckPage)
	return err
}
