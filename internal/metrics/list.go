package metrics

// The metrics the worker emits. Every metric lives here, with its kind, its
// tags (besides the global env and version) and a one-line meaning;
// docs/metrics.md is generated from this list (app.MetricsDoc; a test of
// the app keeps it equal) and dashboards and alerts may use only these
// names.

// Consuming and processing (the set of Faust's StatsdMonitor).
var (
	MessagesReceived = def("messages_received", Count, "source records received from Kafka", "topic", "partition")
	MessagesActive   = def("messages_active", Gauge, "source records processed but not yet committed (by a group with no commit yet: since the partition's first record), at the sample", "topic", "partition")
	MessagesSent     = def("messages_sent", Count, "records the broker acknowledged (source records, changelogs, dead letters, closed-window results)", "topic")
	Events           = def("events", Count, "events the agent processed", "topic", "partition")
	EventRuntime     = def("event_runtime", Timing, "time the agent took for one event (1 in 64 events measured)", "topic", "partition")
	EventLatency     = def("event_latency", Timing, "time from a source record's timestamp to the agent's table update (1 in 64 events measured)", "topic", "partition")
	CommitLatency    = def("commit_latency", Timing, "time of one commit: changelog acks, store batch and offset commit", "topic", "partition")
	Commits          = def("commits", Count, "source offset commits done (each after its changelog records and store batch)", "topic", "partition")
	SendLatency      = def("send_latency", Timing, "time from producing records to their acknowledgement: one sample per burst of acknowledgements of a topic, the mean of its records", "topic")
	SendErrors       = def("send_errors", Count, "records the broker did not acknowledge", "topic")
	ReadOffset       = def("read_offset", Gauge, "offset of the last source record processed", "topic", "partition")
	CommittedOffset  = def("committed_offset", Gauge, "last committed source offset", "topic", "partition")
	EndOffset        = def("end_offset", Gauge, "high watermark of the source partition, asked of the broker at each sample", "topic", "partition")
	ConsumerLag      = def("consumer_lag", Gauge, "records between the last processed offset and the broker's high watermark", "topic", "partition")
	ConsumerLagSecs  = def("consumer_lag_seconds", Gauge, "age of the last processed record while the partition lags, else 0", "topic", "partition")
	DeadLetters      = def("dead_letters", Count, "records sent to the dead-letter topic", "topic", "partition")
	LateEvents       = def("late_events", Count, "events that came after one of their windows had closed: not added to it (still counted in totals)", "table", "partition")
	Stalls           = def("flush_failures", Count, "commits that failed and are being retried", "topic", "partition")
)

// Tables and state.
var (
	KeysRetrieved  = def("table_keys_retrieved", Count, "table keys read from the store (cache misses)", "table")
	LookupsSkipped = def("table_lookups_skipped", Count, "cache misses that skipped the store lookup: the partition's key filter had never seen the key (a key's first update)", "table")
	KeysUpdated    = def("table_keys_updated", Count, "table keys written to the changelog and store", "table")
	KeysDeleted    = def("table_keys_deleted", Count, "table keys deleted (changelog tombstones replayed)", "table")
	WindowExpiries = def("window_expiries", Count, "windows removed because they expired", "table")
	WindowsClosed  = def("windows_closed", Count, "windows closed with their results emitted (each window that held a value, once per partition)", "table", "partition")
	WindowCloseLag = def("window_close_lag", Timing, "time from a window's end plus grace to the flush that closed it", "table")
	TableKeys      = def("table_keys", Gauge, "keys cached in memory for a table", "table")
	StoreSize      = def("pebble_size_bytes", Gauge, "size of the local Pebble store on disk", "")
	Compactions    = def("pebble_compactions", Count, "Pebble compactions completed", "")
	WriteStalls    = def("pebble_write_stalls", Count, "Pebble write stalls", "")
	StoreBgErrors  = def("pebble_background_errors", Count, "Pebble background errors: flushes and compactions that failed and are retried", "")
	MemTableBytes  = def("pebble_memtable_bytes", Gauge, "bytes Pebble's memtables and flushable batches take, at the sample", "")
	BlockCacheSize = def("pebble_block_cache_bytes", Gauge, "bytes of data blocks in Pebble's block cache, at the sample", "")
)

// Group membership, rebalancing and recovery.
var (
	Rebalances             = def("rebalances", Count, "group generations this worker joined", "")
	RebalanceState         = def("rebalance_state", Gauge, "1 while this worker does not process everything it holds (joining, revoking, recovering), or did not at some point since the previous sample, else 0", "")
	Generation             = def("generation", Gauge, "the consumer group generation this worker is in", "")
	GroupMembers           = def("group_members", Gauge, "members of the consumer group as this worker last saw them (the coordinator's description, cached for a second), at the sample", "")
	RebalanceReturnLatency = def("rebalance_return_latency", Timing, "time from a revocation to the partition being flushed and released", "partition")
	RebalanceEndLatency    = def("rebalance_end_latency", Timing, "time from the worker stopping processing until every held partition processes again", "")
	PartitionsAssigned     = def("partitions_assigned", Gauge, "source partitions this worker holds", "")
	AssignmentsComplete    = def("assignments_complete", Count, "partitions assigned and recovered", "partition")
	AssignmentsError       = def("assignments_error", Count, "partition assignments that failed", "partition")
	AssignmentLatency      = def("assignment_latency", Timing, "time from assignment to processing (recovery included)", "partition")
	UnprocessedTime        = def("partition_unprocessed_seconds", Gauge, "how long a partition went unprocessed, from its release by the previous owner to its resumption here (not sent after a crash, when no release was recorded)", "partition")
	RecoveryRemaining      = def("recovery_remaining", Gauge, "changelog records left to replay", "table", "partition")
	RecoveryETA            = def("recovery_eta_seconds", Gauge, "estimated seconds until recovery ends", "table", "partition")
	RecoveryRecords        = def("recovery_records", Count, "changelog records replayed", "table", "partition")
	StandbyPartitions      = def("standby_partitions", Gauge, "partitions this worker keeps standby copies of", "")
	StandbyLag             = def("standby_lag", Gauge, "changelog records a standby copy is behind the end of its changelog partition, at the sample", "table", "partition")
	ReplayedRecords        = def("assignment_replayed_records", Count, "changelog records replayed to take a partition over, per assignment; copy says what the worker started from: standby (a live standby copy), local (a checkpoint left on disk) or none", "partition", "copy")
)

// Data models and the schema registry.
var (
	RegistryLookups = def("schema_registry_lookups", Count, "writer schemas fetched from the schema registry by id (cache misses)", "")
	RegistryErrors  = def("schema_registry_errors", Count, "schema registry lookups that got no answer (unreachable, a server error): the record waits and is tried again", "")
	SchemaCacheHits = def("schema_cache_hits", Count, "registry-framed records read without a registry lookup of their own (writer schema cached)", "")
	SchemaRecords   = def("schema_records", Count, "registry-framed records read, by writer schema id", "schema_id")
)

// Web, livecheck and runtime.
var (
	HTTPRequests     = def("http_requests", Count, "HTTP requests answered", "path", "status_code")
	HTTPLatency      = def("http_latency", Timing, "HTTP request latency", "path")
	LivecheckSuccess = def("livecheck_success", Count, "livechecks whose synthetic view reached the table within the SLO", "")
	LivecheckFailure = def("livecheck_failure", Count, "livechecks that failed (not published, or not counted within the SLO)", "")
	LivecheckLatency = def("livecheck_latency", Timing, "time from publishing a synthetic view to seeing it in the table", "")
	Goroutines       = def("go_goroutines", Gauge, "goroutines", "")
	HeapBytes        = def("go_heap_bytes", Gauge, "bytes of allocated heap objects", "")
	GCPause          = def("go_gc_pause_seconds", Gauge, "total GC pause time since the worker started: cumulative, so its rate() is the share of time in GC pauses", "")
)
