package dashboards

import (
	"fmt"

	m "github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/internal/store"
)

// Viz is how a panel draws its queries.
type Viz int

// The kinds of panel.
const (
	Lines  Viz = iota // a time series
	Bars              // a time series of counts per interval (rare events)
	Stat              // one number
	States            // a state timeline (0/1 gauges)
	Table             // one row per series, at the end of the range
)

// Panel is one panel of the dashboards, in both backends.
type Panel struct {
	Title string
	// Tells is what the panel tells an operator, and Do what to do about
	// it; both show in the panel's description and in README.md.
	Tells, Do string
	Viz       Viz
	Unit      string // a Grafana unit id
	Width     uint32 // of 24 columns
	Prom      []Query
	Datadog   []DDQuery
	// Link makes each row of a table panel a link (Grafana's data links,
	// which may name the row's fields: ${__data.fields.<label>}).
	Link *Link
}

// Link is a data link of a table panel.
type Link struct {
	Title, URL string
}

// Query is one PromQL query of a Grafana panel.
type Query struct {
	Expr   string
	Legend string
	// Column names a table panel's column.
	Column string
}

// DDQuery is one Datadog metric query of a widget.
type DDQuery struct {
	Query string
	Alias string
	// Formula wraps the query (named q), such as per_second(q); empty
	// means the query itself.
	Formula string
	// Bars draws the query as bars (counts of rare events) in a time
	// series.
	Bars bool
	// Aggregator reduces the query to one value in query_value and
	// query_table widgets: avg, sum, last, max.
	Aggregator string
}

// Row is a titled group of panels.
type Row struct {
	Title string
	// Collapsed rows start folded in Grafana.
	Collapsed bool
	Panels    []Panel
}

const (
	byWorker    = "instance"
	byTopic     = "topic"
	byPartition = "topic, partition"
	ddByWorker  = DatadogWorkerTag
	// workerRow groups a table panel by worker, keeping the monitor label
	// that links the row to the worker's /monitor/ page.
	workerRow         = "instance, monitor"
	ddByPartition     = "topic,partition"
	percentile99      = 0.99
	rebalancesOverlay = "rebalances"
)

// replayStarts are the values of assignment_replayed_records' copy tag
// (docs/metrics.md): what a worker started from when it took a partition
// over.
var replayStarts = []string{"standby", "local", "none"}

// rebalanceBars overlays the rebalances on a Datadog widget, where Grafana
// shows them as annotations: the worker sends no DogStatsD events.
func rebalanceBars() DDQuery {
	return DDQuery{Query: ddq("sum", m.Rebalances, "", "", ".as_count()"), Alias: rebalancesOverlay, Bars: true}
}

// latency renders the usual pair of a timing: the exact mean and the 99th
// percentile estimated from the histogram buckets (Grafana), or the Agent's
// avg and 95th percentile aggregates (Datadog).
func latency(d *m.Def, by, legend, ddBy string) ([]Query, []DDQuery) {
	return []Query{
			{Expr: mean(d, by), Legend: legend + " mean"},
			{Expr: quantile(percentile99, d, by), Legend: legend + " p99"},
		}, []DDQuery{
			{Query: ddq("avg", d, ".avg", ddBy, ""), Alias: "mean"},
			{Query: ddq("max", d, ".95percentile", ddBy, ""), Alias: "p95"},
		}
}

// sparseLatency is latency for a rare per-partition timing (see
// sparseIncrease).
func sparseLatency(d *m.Def, by, legend, ddBy string) ([]Query, []DDQuery) {
	q, dq := latency(d, by, legend, ddBy)
	q[0].Expr = sparseMean(d, by)
	q[1].Expr = sparseQuantile(percentile99, d, by)
	return q, dq
}

// Rows are the panels of the dashboards, in order.
func Rows() []Row {
	eventQ, eventDD := latency(m.EventRuntime, byWorker, "{{instance}}", ddByWorker)
	e2eQ, e2eDD := latency(m.EventLatency, byWorker, "{{instance}}", ddByWorker)
	commitQ, commitDD := latency(m.CommitLatency, byWorker, "{{instance}}", ddByWorker)
	sendQ, sendDD := latency(m.SendLatency, byTopic, "{{topic}}", byTopic)
	rebalQ, rebalDD := latency(m.RebalanceEndLatency, byWorker, "{{instance}}", ddByWorker)
	returnQ, returnDD := sparseLatency(m.RebalanceReturnLatency, byWorker, "{{instance}}", ddByWorker)
	assignQ, assignDD := sparseLatency(m.AssignmentLatency, byWorker, "{{instance}}", ddByWorker)
	liveQ, liveDD := latency(m.LivecheckLatency, "", "livecheck", "")
	httpQ, httpDD := latency(m.HTTPLatency, "path", "{{path}}", "path")
	closeQ, closeDD := latency(m.WindowCloseLag, "instance, table", "{{instance}} {{table}}", ddByWorker+",table")

	return []Row{
		{Title: "Overview", Panels: []Panel{
			{
				Title: "Events processed", Viz: Stat, Unit: "recps", Width: 4,
				Tells:   "Page views the agents process per second, over the selected workers.",
				Do:      "Compare with the load you expect; zero while pages are being counted means processing stopped: see lag and rebalance state.",
				Prom:    []Query{{Expr: rateBy(m.Events, "")}},
				Datadog: []DDQuery{{Query: ddq("sum", m.Events, "", "", ".as_rate()"), Aggregator: "avg"}},
			},
			{
				Title: "Consumer lag", Viz: Stat, Unit: "short", Width: 4,
				Tells:   "Records waiting in page_views, summed over partitions (each partition's current owner).",
				Do:      "A few commit intervals' worth is normal; a number that keeps rising means the workers fall behind: see the lag row.",
				Prom:    []Query{{Expr: "sum(" + aggregate("max", byPartition, owned(m.ConsumerLag)) + ")"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.ConsumerLag, "", "", ""), Aggregator: "last"}},
			},
			{
				Title: "Oldest unprocessed record", Viz: Stat, Unit: "s", Width: 4,
				Tells:   "The largest consumer lag in seconds: how old the last processed record was while its partition lagged.",
				Do:      "Above the freshness your readers need, add workers (up to the partition count) or find the slow partition in the lag row.",
				Prom:    []Query{{Expr: "max(" + owned(m.ConsumerLagSecs) + ")"}},
				Datadog: []DDQuery{{Query: ddq("max", m.ConsumerLagSecs, "", "", ""), Aggregator: "last"}},
			},
			{
				Title: "Partitions assigned", Viz: Stat, Unit: "short", Width: 4,
				Tells:   "Source partitions the selected workers hold; with every worker selected it should equal the topic's partition count.",
				Do:      "Fewer than the partition count for more than a rebalance means a worker is missing from the group: check the pods and the rebalance row.",
				Prom:    []Query{{Expr: gaugeBy("sum", m.PartitionsAssigned, "")}},
				Datadog: []DDQuery{{Query: ddq("sum", m.PartitionsAssigned, "", "", ""), Aggregator: "last"}},
			},
			{
				Title: "Dead letters in range", Viz: Stat, Unit: "short", Width: 4,
				Tells:   "Records sent to page_views-dlq in the dashboard's time range: they could not be decoded.",
				Do:      "Read the records' error header in page_views-dlq and fix the producer that sent them; the partitions keep going meanwhile.",
				Prom:    []Query{{Expr: "sum(increase(" + v(m.DeadLetters) + "[$__range]))"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.DeadLetters, "", "", ".as_count()"), Aggregator: "sum"}},
			},
			{
				Title: "Livecheck failures in range", Viz: Stat, Unit: "short", Width: 4,
				Tells:   "Synthetic page views that were not published or not counted within LIVECHECK_SLO, in the time range.",
				Do:      "Any failure means the path from /count/ to the table was broken or slow: look at lag, rebalances and the worker logs at that time.",
				Prom:    []Query{{Expr: "sum(increase(" + v(m.LivecheckFailure) + "[$__range]))"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.LivecheckFailure, "", "", ".as_count()"), Aggregator: "sum"}},
			},
		}},

		{Title: "Throughput", Panels: []Panel{
			{
				Title: "Records in", Unit: "recps", Width: 12,
				Tells: "Source records received from Kafka and events the agent processed, per worker and second; received minus processed is what went to the dead-letter topic.",
				Do:    "A worker at zero while others work holds no partitions or is stuck: see partitions assigned and rebalance state.",
				Prom: []Query{
					{Expr: rateBy(m.MessagesReceived, byWorker), Legend: "{{instance}} received"},
					{Expr: rateBy(m.Events, byWorker), Legend: "{{instance}} processed"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.MessagesReceived, "", ddByWorker, ".as_rate()"), Alias: "received"},
					{Query: ddq("sum", m.Events, "", ddByWorker, ".as_rate()"), Alias: "processed"},
				},
			},
			{
				Title: "Records out", Unit: "recps", Width: 12,
				Tells:   "Records the broker acknowledged, per topic: page views published by /count/, changelog records, closed windows' counts (page_views-windows), dead letters.",
				Do:      "Changelog traffic follows the number of keys changed per commit interval; a drop to zero with load in means flushing stopped: see send errors and flush failures.",
				Prom:    []Query{{Expr: rateBy(m.MessagesSent, byTopic), Legend: "{{topic}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.MessagesSent, "", byTopic, ".as_rate()"), Alias: "sent"}},
			},
			{
				Title: "Arrivals per partition", Unit: "recps", Width: 12,
				Tells:   "How fast each source partition's high watermark grows: the load each partition gets.",
				Do:      "One partition far above the others is a hot key: a bigger worker will not help; spread the key or accept its lag.",
				Prom:    []Query{{Expr: aggregate("max", byPartition, "deriv("+v(m.EndOffset)+"[$__rate_interval])"), Legend: "{{topic}} p{{partition}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.EndOffset, "", ddByPartition, ""), Formula: "per_second(q)", Alias: "arrivals"}},
			},
			{
				Title: "Records in flight", Unit: "short", Width: 12,
				Tells:   "Records processed but not committed yet, per worker: what a crash would make the next owner process again.",
				Do:      "It should stay near one commit interval of traffic; if it only grows, commits fail: see commit time and flush failures.",
				Prom:    []Query{{Expr: gaugeBy("sum", m.MessagesActive, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.MessagesActive, "", ddByWorker, ""), Alias: "in flight"}},
			},
			{
				Title: "Commit rate", Unit: "ops", Width: 24,
				Tells:   "Source offset commits per second, per partition (each commit follows its changelog records and store batch), over the workers that held the partition.",
				Do:      "Good is about one commit per COMMIT_INTERVAL on every partition that receives records; a partition with consumer lag and no commits is stuck (PageviewsConsumerStuck): see flush failures and that worker's log. An idle partition commits nothing, which is fine.",
				Prom:    []Query{{Expr: rateBy(m.Commits, byPartition), Legend: "{{topic}} p{{partition}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.Commits, "", ddByPartition, ".as_rate()"), Alias: "commits"}},
			},
		}},

		{Title: "Consumer lag", Panels: []Panel{
			{
				Title: "Consumer lag per partition (records)", Unit: "short", Width: 12,
				Tells: "Records between each partition's last processed offset and its high watermark, from the worker that owns it now.",
				Do:    "Lag that grows without bound needs more workers (up to the partition count) or a faster agent; lag on one partition only is a hot key or a stuck partition.",
				Prom:  []Query{{Expr: aggregate("max", byPartition, owned(m.ConsumerLag)), Legend: "{{topic}} p{{partition}}"}},
				Datadog: []DDQuery{
					{Query: ddq("max", m.ConsumerLag, "", ddByPartition, ""), Alias: "lag"},
					rebalanceBars(),
				},
			},
			{
				Title: "Consumer lag per partition (seconds)", Unit: "s", Width: 12,
				Tells: "How old the last processed record of each lagging partition was: how stale the tables are; 0 when the partition is caught up.",
				Do:    "Good is 0, or seconds under load; PageviewsLagAboveSLO fires after 5 minutes above 60s (one default window). A partition whose age climbs steadily is not processing: see its commits, rebalance state and the worker's liveness.",
				Prom:  []Query{{Expr: aggregate("max", byPartition, owned(m.ConsumerLagSecs)), Legend: "{{topic}} p{{partition}}"}},
				Datadog: []DDQuery{
					{Query: ddq("max", m.ConsumerLagSecs, "", ddByPartition, ""), Alias: "lag"},
					rebalanceBars(),
				},
			},
			{
				Title: "Partition positions", Viz: Table, Width: 24,
				Tells: "Per partition and owning worker: the last processed offset, the committed offset, the high watermark and the lag.",
				Do:    "Read offset far ahead of committed offset means commits are failing; committed offset not moving with lag above zero means the partition is stuck.",
				Prom: []Query{
					{Expr: aggregate("max", "topic, partition, instance", owned(m.ReadOffset)), Column: "read offset"},
					{Expr: aggregate("max", "topic, partition, instance", owned(m.CommittedOffset)), Column: "committed offset"},
					{Expr: aggregate("max", "topic, partition, instance", owned(m.EndOffset)), Column: "end offset"},
					{Expr: aggregate("max", "topic, partition, instance", owned(m.ConsumerLag)), Column: "lag"},
				},
				Datadog: []DDQuery{
					{Query: ddq("max", m.ReadOffset, "", ddByPartition+","+ddByWorker, ""), Alias: "read offset", Aggregator: "last"},
					{Query: ddq("max", m.CommittedOffset, "", ddByPartition+","+ddByWorker, ""), Alias: "committed offset", Aggregator: "last"},
					{Query: ddq("max", m.EndOffset, "", ddByPartition+","+ddByWorker, ""), Alias: "end offset", Aggregator: "last"},
					{Query: ddq("max", m.ConsumerLag, "", ddByPartition+","+ddByWorker, ""), Alias: "lag", Aggregator: "last"},
				},
			},
		}},

		{Title: "Rebalancing", Panels: []Panel{
			{
				Title: "Partitions assigned per worker", Unit: "short", Width: 8,
				Tells: "Source partitions each worker processes, and the partitions it keeps warm standby copies of (TABLE_STANDBY_REPLICAS).",
				Do:    "An uneven split after a rebalance is normal with sticky assignment; a worker at 0 does nothing: more workers than partitions, or it cannot join.",
				Prom: []Query{
					{Expr: gaugeBy("max", m.PartitionsAssigned, byWorker), Legend: "{{instance}} active"},
					{Expr: gaugeBy("max", m.StandbyPartitions, byWorker), Legend: "{{instance}} standby"},
				},
				Datadog: []DDQuery{
					{Query: ddq("max", m.PartitionsAssigned, "", ddByWorker, ""), Alias: "active"},
					{Query: ddq("max", m.StandbyPartitions, "", ddByWorker, ""), Alias: "standby"},
				},
			},
			{
				Title: "Rebalance state", Viz: States, Width: 8,
				Tells:   "Per worker: rebalancing (joining, revoking or recovering: not processing everything it holds) or processing.",
				Do:      "Short rebalancing bands at deploys are expected; a band that does not end is a stuck recovery or join: see recovery and the worker logs.",
				Prom:    []Query{{Expr: gaugeBy("max", m.RebalanceState, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.RebalanceState, "", ddByWorker, ""), Alias: "rebalancing"}},
			},
			{
				Title: "Group generation", Unit: "none", Width: 8,
				Tells:   "The consumer group generation each worker last joined: it steps up at every rebalance.",
				Do:      "Workers on different generations for long means one has not rejoined; a fast-climbing generation is a rebalance storm (session timeouts, crash loops).",
				Prom:    []Query{{Expr: gaugeBy("max", m.Generation, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.Generation, "", ddByWorker, ""), Alias: "generation"}},
			},
			{
				Title: "Group members", Unit: "short", Width: 8,
				Tells: "Members of the consumer group as each worker last saw them (the coordinator's answer), against the workers whose metrics arrive.",
				Do:    "Good is every worker seeing the same number, equal to the workers reporting. Fewer members than workers reporting is a worker that left the group or died without leaving (PageviewsWorkerMissing); more is a member outside this dashboard's selection.",
				Prom: []Query{
					{Expr: gaugeBy("max", m.GroupMembers, byWorker), Legend: "{{instance}} sees"},
					{Expr: "count(" + gaugeBy("max", m.GroupMembers, byWorker) + ")", Legend: "workers reporting"},
				},
				Datadog: []DDQuery{
					{Query: ddq("max", m.GroupMembers, "", ddByWorker, ""), Alias: "members seen"},
				},
			},
			{
				Title: "Workers in the group", Viz: Table, Width: 16,
				Tells: "One row per worker: the members it sees, its generation, whether it is rebalancing (1) or processing (0), and the partitions it processes and keeps standby copies of. A row links to the worker's /monitor/ page (the monitor label: see dashboards/README.md).",
				Do:    "Good is one generation and one member count on every row, rebalancing 0, and partitions adding up to the topic's count; a row that differs is the worker to open.",
				Prom: []Query{
					{Expr: gaugeBy("max", m.GroupMembers, workerRow), Column: "members"},
					{Expr: gaugeBy("max", m.Generation, workerRow), Column: "generation"},
					{Expr: gaugeBy("max", m.RebalanceState, workerRow), Column: "rebalancing"},
					{Expr: gaugeBy("max", m.PartitionsAssigned, workerRow), Column: "partitions"},
					{Expr: gaugeBy("max", m.StandbyPartitions, workerRow), Column: "standby"},
				},
				Datadog: []DDQuery{
					{Query: ddq("max", m.GroupMembers, "", ddByWorker, ""), Alias: "members", Aggregator: "last"},
					{Query: ddq("max", m.Generation, "", ddByWorker, ""), Alias: "generation", Aggregator: "last"},
					{Query: ddq("max", m.RebalanceState, "", ddByWorker, ""), Alias: "rebalancing", Aggregator: "last"},
					{Query: ddq("max", m.PartitionsAssigned, "", ddByWorker, ""), Alias: "partitions", Aggregator: "last"},
					{Query: ddq("max", m.StandbyPartitions, "", ddByWorker, ""), Alias: "standby", Aggregator: "last"},
				},
				Link: &Link{Title: "Open ${__data.fields.instance}'s /monitor/ page", URL: "${__data.fields.monitor}"},
			},
			{
				Title: "Rebalances", Viz: Bars, Unit: "short", Width: 8,
				Tells:   "Times each worker (re)joined its group per interval; the same events mark every time series as annotations.",
				Do:      "Joins outside deploys and scaling mean members drop out: check KAFKA_SESSION_TIMEOUT, pod restarts and long GC or processing stalls; static membership (KAFKA_INSTANCE_ID) avoids rebalances on restarts.",
				Prom:    []Query{{Expr: increaseBy(m.Rebalances, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.Rebalances, "", ddByWorker, ".as_count()"), Alias: "joins", Bars: true}},
			},
			{
				Title: "Rebalance duration", Unit: "s", Width: 8,
				Tells: "Time from a worker stopping processing to every partition it holds processing again (revocation, join, recovery).",
				Do:    "Long rebalances mean long recoveries: keep standby replicas, keep changelogs compacted, or scale in smaller steps.",
				Prom:  rebalQ, Datadog: rebalDD,
			},
			{
				Title: "Partition hand-over", Unit: "s", Width: 8,
				Tells: "Time from a partition's revocation to its release: the final flush and commit before another worker may take it.",
				Do:    "Seconds here are a slow flush (broker acks, store writes); it delays the whole rebalance for everyone.",
				Prom:  returnQ, Datadog: returnDD,
			},
			{
				Title: "Assignments", Viz: Bars, Unit: "short", Width: 8,
				Tells: "Partitions assigned and recovered, and assignments that failed, per worker.",
				Do:    "A failed assignment stops the worker (its orchestrator restarts it and it rejoins): read its log for the partition's error.",
				Prom: []Query{
					{Expr: sparseIncrease(m.AssignmentsComplete, "", byWorker), Legend: "{{instance}} completed"},
					{Expr: sparseIncrease(m.AssignmentsError, "", byWorker), Legend: "{{instance}} failed"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.AssignmentsComplete, "", ddByWorker, ".as_count()"), Alias: "completed", Bars: true},
					{Query: ddq("sum", m.AssignmentsError, "", ddByWorker, ".as_count()"), Alias: "failed", Bars: true},
				},
			},
			{
				Title: "Assignment latency", Unit: "s", Width: 8,
				Tells: "Time from a partition's assignment to its first processing, recovery included.",
				Do:    "When this is long, so is the gap in processing at every rebalance: see recovery for the reason.",
				Prom:  assignQ, Datadog: assignDD,
			},
			{
				Title: "Partitions unprocessed before resuming", Unit: "s", Width: 8,
				Tells:   "For each partition a worker resumed: how long it had gone unprocessed, from its release by the previous owner to its resumption (the last hand-over's value; nothing after a crash, when no release was recorded).",
				Do:      "This is the freshness cost of a rebalance; long values point at slow hand-overs or recoveries.",
				Prom:    []Query{{Expr: gaugeBy("max", m.UnprocessedTime, "instance, partition"), Legend: "p{{partition}} on {{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.UnprocessedTime, "", "partition,"+ddByWorker, ""), Alias: "unprocessed"}},
			},
		}},

		{Title: "Recovery", Panels: []Panel{
			{
				Title: "Changelog records left to replay", Unit: "short", Width: 8,
				Tells:   "Per worker and table: changelog records still to replay before the recovering partitions process (0 while the worker processes everything it holds).",
				Do:      "It should fall to 0 within seconds to minutes; if it stays flat the recovery is stuck: check the broker and the worker's log.",
				Prom:    []Query{{Expr: whileRebalancing(gaugeBy("sum", m.RecoveryRemaining, "instance, table")), Legend: "{{instance}} {{table}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.RecoveryRemaining, "", ddByWorker+",table", ""), Alias: "left"}},
			},
			{
				Title: "Recovery ETA", Unit: "s", Width: 8,
				Tells:   "Estimated seconds until the slowest recovering partition of each worker and table finishes, at the recent replay rate.",
				Do:      "An ETA longer than your readiness budget means a long outage of those partitions: keep standby replicas to shorten recoveries.",
				Prom:    []Query{{Expr: whileRebalancing(gaugeBy("max", m.RecoveryETA, "instance, table")), Legend: "{{instance}} {{table}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.RecoveryETA, "", ddByWorker+",table", ""), Alias: "eta"}},
			},
			{
				Title: "Changelog replay rate", Unit: "recps", Width: 8,
				Tells:   "Changelog records replayed per second, per worker and table.",
				Do:      "Compare with the broker's fetch capacity; a slow replay of a small changelog points at the local disk.",
				Prom:    []Query{{Expr: sparseRate(m.RecoveryRecords, "instance, table"), Legend: "{{instance}} {{table}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.RecoveryRecords, "", ddByWorker+",table", ".as_rate()"), Alias: "replayed"}},
			},
			{
				Title: "Standby copy lag", Unit: "short", Width: 12,
				Tells: "Changelog records each standby copy is behind the end of its changelog partition, per table and partition (the copy furthest behind, over the workers that keep one): what a failover of that partition to a standby holder would replay first. Only with TABLE_STANDBY_REPLICAS of 1 or more.",
				Do:    "Good is near 0: a few records while changes arrive, and 1 at rest under exactly_once (a transaction's commit marker, which a read_committed copy never reads). A copy that stays far behind or climbs makes its failover slow: see the worker's log (standby copy lines), its CPU and the changelog's broker; PageviewsStandbyBehind fires after 10 minutes above 1000.",
				Prom:  []Query{{Expr: gaugeBy("max", m.StandbyLag, "table, partition"), Legend: "{{table}} p{{partition}}"}},
				Datadog: []DDQuery{
					{Query: ddq("max", m.StandbyLag, "", "table,partition", ""), Alias: "behind"},
					rebalanceBars(),
				},
			},
			{
				Title: "Records replayed to take partitions over", Viz: Bars, Unit: "short", Width: 12,
				Tells: "Changelog records the workers replayed before processing the partitions assigned to them, per interval, by what each started from: standby (a live standby copy), local (a checkpoint an earlier run left on disk) or none (the changelog from its start).",
				Do:    "With standby replicas, a failover should replay few records, under standby; local follows restarts that kept their volumes; none is expected at a worker's first start and after a lost volume. Many records under none or local after a failover mean the partition went to a worker without a live copy: check the standby copy lag and TABLE_STANDBY_REPLICAS.",
				Prom:  []Query{{Expr: sparseIncreaseOver(m.ReplayedRecords, "copy", replayStarts), Legend: "{{copy}}"}},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.ReplayedRecords, "", "copy", ".as_count()"), Alias: "replayed", Bars: true},
				},
			},
		}},

		{Title: "Processing, commit and produce latency", Panels: []Panel{
			{
				Title: "End-to-end latency", Unit: "s", Width: 24,
				Tells: "Time from a page view's record timestamp (when it was produced) to its count in the table, measured on 1 event in 64: what a reader of /report/ waits for.",
				Do:    "When it rises with consumer lag the workers fall behind (add workers, up to the partition count); when it rises alone, look at produce latency and commit time.",
				Prom:  e2eQ, Datadog: e2eDD,
			},
			{
				Title: "Event processing time", Unit: "s", Width: 8,
				Tells: "Time the agent takes for one event, measured on 1 event in 64.",
				Do:    "A rise here with unchanged load is the agent or the store getting slower: profile the worker (PPROF_ADDR).",
				Prom:  eventQ, Datadog: eventDD,
			},
			{
				Title: "Commit time", Unit: "s", Width: 8,
				Tells: "Time of one commit: changelog records acknowledged, the store batch written, the source offset committed.",
				Do:    "Commits near COMMIT_INTERVAL leave no time to process: look at produce latency (broker) and Pebble write stalls (disk).",
				Prom:  commitQ, Datadog: commitDD,
			},
			{
				Title: "Produce latency", Unit: "s", Width: 8,
				Tells: "Time from producing a record to the broker's acknowledgement, per topic.",
				Do:    "High produce latency is the broker or the network: check broker load and replication (acks=all waits for every in-sync replica).",
				Prom:  sendQ, Datadog: sendDD,
			},
		}},

		{Title: "Tables and windows", Panels: []Panel{
			{
				Title: "Table keys cached", Unit: "short", Width: 12,
				Tells:   "Keys each worker holds in memory per table (the write-back cache), not the keys stored on disk.",
				Do:      "Steady growth with a windowed table means windows do not expire: check event timestamps and WINDOW_EXPIRES; memory follows this number.",
				Prom:    []Query{{Expr: gaugeBy("sum", m.TableKeys, "instance, table"), Legend: "{{instance}} {{table}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.TableKeys, "", ddByWorker+",table", ""), Alias: "keys"}},
			},
			{
				Title: "Table key operations", Unit: "ops", Width: 12,
				Tells: "Keys read from the store (cache misses), cache misses the key filter spared a store lookup (keys the store never held), keys written to the changelog and store, and deleted (tombstones replayed), per table.",
				Do:    "Many retrievals per update mean the cache is too small for the key space a partition sees; skipped lookups are new keys, which cost no read.",
				Prom: []Query{
					{Expr: rateBy(m.KeysRetrieved, "table"), Legend: "{{table}} retrieved"},
					{Expr: rateBy(m.LookupsSkipped, "table"), Legend: "{{table}} lookup skipped"},
					{Expr: rateBy(m.KeysUpdated, "table"), Legend: "{{table}} updated"},
					{Expr: rateBy(m.KeysDeleted, "table"), Legend: "{{table}} deleted"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.KeysRetrieved, "", "table", ".as_rate()"), Alias: "retrieved"},
					{Query: ddq("sum", m.LookupsSkipped, "", "table", ".as_rate()"), Alias: "lookup skipped"},
					{Query: ddq("sum", m.KeysUpdated, "", "table", ".as_rate()"), Alias: "updated"},
					{Query: ddq("sum", m.KeysDeleted, "", "table", ".as_rate()"), Alias: "deleted"},
				},
			},
			{
				Title: "Windows closed", Viz: Bars, Unit: "short", Width: 8,
				Tells:   "Windows closed per interval, per table and source partition: each window that held a value, counted once when stream time (or the clock, on a caught-up partition) passes its end plus WINDOW_GRACE and its final counts go to page_views-windows.",
				Do:      "A partition that gets views should close about one window per WINDOW_STEP; one that closes none while views arrive is lagging or stuck (its stream time does not move): see its consumer lag and the close lag.",
				Prom:    []Query{{Expr: increaseBy(m.WindowsClosed, "table, partition"), Legend: "{{table}} p{{partition}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.WindowsClosed, "", "table,partition", ".as_count()"), Alias: "windows closed", Bars: true}},
			},
			{
				Title: "Window close lag", Unit: "s", Width: 8,
				Tells: "Time from a window's end plus WINDOW_GRACE to the flush that closed it and sent its results, per worker and table: how much later than promised the final counts leave.",
				Do:    "Up to one COMMIT_INTERVAL plus the commit time is normal on a caught-up partition; more follows the consumer lag in seconds (a lagging partition closes a window only when its stream time passes it): see the lag row and commit time.",
				Prom:  closeQ, Datadog: closeDD,
			},
			{
				Title: "Window expiries and late views", Unit: "short", Width: 8,
				Tells: "Windows removed per second because they expired (WINDOW_EXPIRES), and views per second that came after one of their windows had closed: not added to that window, still counted in totals.",
				Do:    "Late views mean producers send old timestamps or clocks that run behind, or records that reach the worker later than WINDOW_GRACE after their window's end: fix the producer, or raise WINDOW_GRACE (at most WINDOW_EXPIRES) at the cost of later results.",
				Prom: []Query{
					{Expr: rateBy(m.WindowExpiries, "table"), Legend: "{{table}} windows expired"},
					{Expr: rateBy(m.LateEvents, "table"), Legend: "{{table}} late views"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.WindowExpiries, "", "table", ".as_rate()"), Alias: "windows expired"},
					{Query: ddq("sum", m.LateEvents, "", "table", ".as_rate()"), Alias: "late views"},
				},
			},
		}},

		{Title: "Local store (Pebble)", Panels: []Panel{
			{
				Title: "Pebble store size", Unit: "bytes", Width: 12,
				Tells:   "Size of each worker's local Pebble store on disk.",
				Do:      "Keep it well below the volume's size; it grows with the pages counted and the windows kept (WINDOW_EXPIRES).",
				Prom:    []Query{{Expr: gaugeBy("max", m.StoreSize, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.StoreSize, "", ddByWorker, ""), Alias: "size"}},
			},
			{
				Title: "Pebble memory", Unit: "bytes", Width: 12,
				Tells: "Bytes in each worker's Pebble memtables (written, not yet flushed to disk) and in its block cache (data blocks read from disk).",
				Do: fmt.Sprintf("Good is the memtables cycling up to %d MiB (%d while a full one is flushed) and back after each flush, and the cache at or below %d MiB less the memtables, whose room Pebble reserves in it. Memtables that stay large while writes stall mean flushes cannot keep up with the disk; a full cache with many table key retrievals means reads go to disk.",
					store.MemTableSize>>20, 2*store.MemTableSize>>20, store.CacheSize>>20),
				Prom: []Query{
					{Expr: gaugeBy("max", m.MemTableBytes, byWorker), Legend: "{{instance}} memtables"},
					{Expr: gaugeBy("max", m.BlockCacheSize, byWorker), Legend: "{{instance}} block cache"},
				},
				Datadog: []DDQuery{
					{Query: ddq("max", m.MemTableBytes, "", ddByWorker, ""), Alias: "memtables"},
					{Query: ddq("max", m.BlockCacheSize, "", ddByWorker, ""), Alias: "block cache"},
				},
			},
			{
				Title: "Pebble compactions", Unit: "ops", Width: 12,
				Tells:   "Compactions completed per second, per worker.",
				Do:      "They follow the writes (changelog records per commit interval); a worker compacting far more than the others under the same load has a slower disk or a larger store.",
				Prom:    []Query{{Expr: rateBy(m.Compactions, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.Compactions, "", ddByWorker, ".as_rate()"), Alias: "compactions"}},
			},
			{
				Title: "Pebble write stalls and background errors", Viz: Bars, Unit: "short", Width: 12,
				Tells: "Write stalls (Pebble held writes back until flushes or compactions caught up) and background errors (flushes and compactions that failed and are retried), per worker and interval.",
				Do:    "Good is none. Stalls that keep coming (PageviewsStoreWriteStalls) mean the disk cannot keep up: give the volume more IOPS. Background errors are a disk that is full or failing: see the worker's log (store background error) and the volume.",
				Prom: []Query{
					{Expr: increaseBy(m.WriteStalls, byWorker), Legend: "{{instance}} write stalls"},
					{Expr: increaseBy(m.StoreBgErrors, byWorker), Legend: "{{instance}} background errors"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.WriteStalls, "", ddByWorker, ".as_count()"), Alias: "write stalls", Bars: true},
					{Query: ddq("sum", m.StoreBgErrors, "", ddByWorker, ".as_count()"), Alias: "background errors", Bars: true},
				},
			},
		}},

		{Title: "Data models and the schema registry", Panels: []Panel{
			{
				Title: "Records by schema id", Unit: "ops", Width: 12,
				Tells:   "Registry-framed records read per second, per writer schema id: which versions of the record producers write now (JSON records are not counted).",
				Do:      "A new id appears when a producer deploys a new schema version; an old id going to zero means every producer moved on. An id nobody expects: find its subject with GET /schemas/ids/<id>/versions on the registry.",
				Prom:    []Query{{Expr: rateBy(m.SchemaRecords, "schema_id"), Legend: "schema id {{schema_id}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.SchemaRecords, "", "schema_id", ".as_rate()"), Alias: "records"}},
			},
			{
				Title: "Registry lookups, errors and cache hits", Unit: "ops", Width: 12,
				Tells: "Writer schemas fetched from the registry per second (about one per new id and worker), lookups that got no answer, and framed records read without a lookup.",
				Do:    "Errors mean the registry is unreachable, refuses the credentials or fails: the partitions that need a new schema wait (nothing is dead-lettered) and /ready/ names the registry. Check SCHEMA_REGISTRY_URL, the credentials and the registry's health.",
				Prom: []Query{
					{Expr: rateBy(m.RegistryLookups, "instance"), Legend: "{{instance}} lookups"},
					{Expr: rateBy(m.RegistryErrors, "instance"), Legend: "{{instance}} errors"},
					{Expr: rateBy(m.SchemaCacheHits, "instance"), Legend: "{{instance}} cache hits"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.RegistryLookups, "", ddByWorker, ".as_rate()"), Alias: "lookups"},
					{Query: ddq("sum", m.RegistryErrors, "", ddByWorker, ".as_rate()"), Alias: "errors"},
					{Query: ddq("sum", m.SchemaCacheHits, "", ddByWorker, ".as_rate()"), Alias: "cache hits"},
				},
			},
		}},

		{Title: "Dead letters and errors", Panels: []Panel{
			{
				Title: "Dead-lettered records", Viz: Bars, Unit: "short", Width: 8,
				Tells:   "Records per interval that could not be decoded and went to page_views-dlq, per source partition.",
				Do:      "Find the producer from the records' headers (error, source partition and offset) and fix it; replay the DLQ once fixed if the views matter.",
				Prom:    []Query{{Expr: increaseBy(m.DeadLetters, byPartition), Legend: "{{topic}} p{{partition}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.DeadLetters, "", ddByPartition, ".as_count()"), Alias: "dead letters", Bars: true}},
			},
			{
				Title: "Send errors", Viz: Bars, Unit: "short", Width: 8,
				Tells:   "Records the broker did not acknowledge, per topic and interval.",
				Do:      "The broker refused or timed out: check broker health, ACLs and topic existence; flushes retry, /count/ answers 503.",
				Prom:    []Query{{Expr: increaseBy(m.SendErrors, byTopic), Legend: "{{topic}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.SendErrors, "", byTopic, ".as_count()"), Alias: "send errors", Bars: true}},
			},
			{
				Title: "Flush failures", Viz: Bars, Unit: "short", Width: 8,
				Tells:   "Commits that failed and are being retried, per worker and partition: the partition waits and the worker is not ready meanwhile.",
				Do:      "Usually the brokers cannot take records: see send errors; nothing is lost, processing resumes when a flush succeeds.",
				Prom:    []Query{{Expr: increaseBy(m.Stalls, "instance, partition"), Legend: "p{{partition}} on {{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.Stalls, "", "partition,"+ddByWorker, ".as_count()"), Alias: "flush failures", Bars: true}},
			},
		}},

		{Title: "Livecheck", Panels: []Panel{
			{
				Title: "Livecheck results", Viz: Bars, Unit: "short", Width: 12,
				Tells: "Synthetic page views sent by the group's leader that reached the table within LIVECHECK_SLO, and those that did not.",
				Do:    "Failures with no other symptom point at the publish path (broker, producer); with lag or rebalances, fix those first.",
				Prom: []Query{
					{Expr: increaseBy(m.LivecheckSuccess, ""), Legend: "succeeded"},
					{Expr: increaseBy(m.LivecheckFailure, ""), Legend: "failed"},
				},
				Datadog: []DDQuery{
					{Query: ddq("sum", m.LivecheckSuccess, "", "", ".as_count()"), Alias: "succeeded", Bars: true},
					{Query: ddq("sum", m.LivecheckFailure, "", "", ".as_count()"), Alias: "failed", Bars: true},
				},
			},
			{
				Title: "Livecheck latency", Unit: "s", Width: 12,
				Tells: "Time from publishing a synthetic view to seeing it counted: the end-to-end freshness of the pipeline.",
				Do:    "Creeping towards LIVECHECK_SLO means the pipeline slows down before it fails: look at lag and commit time.",
				Prom:  liveQ, Datadog: liveDD,
			},
		}},

		{Title: "HTTP", Collapsed: true, Panels: []Panel{
			{
				Title: "HTTP requests", Unit: "reqps", Width: 12,
				Tells:   "Requests answered per second, by route and status code.",
				Do:      "503 on /count/ means page views could not be published (broker); 503 on /ready/ is a worker rebalancing or recovering.",
				Prom:    []Query{{Expr: rateBy(m.HTTPRequests, "path, status_code"), Legend: "{{path}} {{status_code}}"}},
				Datadog: []DDQuery{{Query: ddq("sum", m.HTTPRequests, "", "path,status_code", ".as_rate()"), Alias: "requests"}},
			},
			{
				Title: "HTTP latency", Unit: "s", Width: 12,
				Tells: "Request latency by route; /count/ includes the broker's acknowledgement.",
				Do:    "Slow /count/ follows produce latency; slow /report/ follows the routing to other workers.",
				Prom:  httpQ, Datadog: httpDD,
			},
		}},

		{Title: "Go runtime", Collapsed: true, Panels: []Panel{
			{
				Title: "Goroutines", Unit: "short", Width: 8,
				Tells:   "Goroutines per worker.",
				Do:      "A steady climb is a leak: send USR1 to the worker to log every goroutine's stack.",
				Prom:    []Query{{Expr: gaugeBy("max", m.Goroutines, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.Goroutines, "", ddByWorker, ""), Alias: "goroutines"}},
			},
			{
				Title: "Heap", Unit: "bytes", Width: 8,
				Tells:   "Bytes of allocated heap objects per worker.",
				Do:      "Compare with the pod's memory limit; growth follows table keys cached.",
				Prom:    []Query{{Expr: gaugeBy("max", m.HeapBytes, byWorker), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.HeapBytes, "", ddByWorker, ""), Alias: "heap"}},
			},
			{
				Title: "Time in GC pauses", Unit: "percentunit", Width: 8,
				Tells:   "The share of each worker's time spent in GC stop-the-world pauses: the rate of its total GC pause seconds.",
				Do:      "Good is well under 1%; a few percent delays processing and heartbeats: lower the heap (fewer cached keys) or set GOMEMLIMIT.",
				Prom:    []Query{{Expr: aggregate("max", byWorker, "rate("+v(m.GCPause)+"[$__rate_interval])"), Legend: "{{instance}}"}},
				Datadog: []DDQuery{{Query: ddq("max", m.GCPause, "", ddByWorker, ""), Formula: "per_second(q)", Alias: "gc time"}},
			},
		}},
	}
}
