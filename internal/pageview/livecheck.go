package pageview

// ReservedPrefix starts the pages of synthetic views (the livecheck's):
// counted like any other page, never reported. /count/ refuses them, and
// the agent counts a view of one only when its record carries
// SyntheticHeader, so no user's view passes for a synthetic one.
const ReservedPrefix = "/_pageviews/"

// SyntheticHeader is the record header that marks the worker's synthetic
// views; its value names what sent them.
const SyntheticHeader = "pageviews-synthetic"

// LivecheckPage is the page of the livecheck's synthetic views: one goes
// through the path of /count/, and the runtime checks that it reaches the
// totals table within the SLO.
const LivecheckPage = ReservedPrefix + "livecheck"
