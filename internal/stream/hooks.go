package stream

import "time"

// Hooks observe the runtime: the metrics package implements them, so
// instrumentation stays out of the processing code. Every method must be
// cheap and must not block. Per-record figures are summed by the runtime
// and reported once per commit interval.
type Hooks interface {
	// AllProcessing: every partition the worker holds processes again,
	// after stalled without full processing.
	AllProcessing(stalled time.Duration, partitions int)
	// Resumed: partition p processes, after recovery took; unprocessed is
	// how long it went without processing (negative when unknown). The
	// group's generation and state are sampled (State.Sample).
	Resumed(p int32, recovery, unprocessed time.Duration)
	AssignFailed(p int32)
	// Released: partition p was flushed and handed back, took after the
	// revocation.
	Released(p int32, took time.Duration)
	RecoveryProgress(table string, p int32, remaining int64, eta time.Duration, replayed int64)
	// Replayed: recovery of partition p replayed records changelog records
	// (all tables), starting from copy: "standby" (a running standby
	// copy), "local" (a checkpoint in the store) or "none".
	Replayed(p int32, records int64, copy string)
	// Processed: n records processed and dead dead-lettered since the last
	// report.
	Processed(p int32, n, dead int64)
	EventRuntime(p int32, d time.Duration)
	// EventLatency: from a record's timestamp (its producer's clock, or
	// the broker's with LogAppendTime) to the agent's table update.
	EventLatency(p int32, d time.Duration)
	Committed(p int32, took time.Duration)
	FlushFailed(p int32)
}

// NopHooks observes nothing.
type NopHooks struct{}

func (NopHooks) AllProcessing(time.Duration, int)                            {}
func (NopHooks) Resumed(int32, time.Duration, time.Duration)                 {}
func (NopHooks) AssignFailed(int32)                                          {}
func (NopHooks) Released(int32, time.Duration)                               {}
func (NopHooks) RecoveryProgress(string, int32, int64, time.Duration, int64) {}
func (NopHooks) Replayed(int32, int64, string)                               {}
func (NopHooks) Processed(int32, int64, int64)                               {}
func (NopHooks) EventRuntime(int32, time.Duration)                           {}
func (NopHooks) EventLatency(int32, time.Duration)                           {}
func (NopHooks) Committed(int32, time.Duration)                              {}
func (NopHooks) FlushFailed(int32)                                           {}
