// Package stream is the runtime of a stream-processing worker on sarama: it
// joins the consumer group, recovers the tables of each assigned partition
// from their changelogs, hands every record to the agent, and at each commit
// interval makes the table state durable before it commits source offsets.
//
// The order of the commit step is the worker's durability contract:
//
//  1. the dirty table keys are produced to the changelogs (and dead letters
//     to the dead-letter topic) and the runtime waits for the acks;
//  2. one store batch writes the values and each changelog offset;
//  3. the source offsets are committed.
//
// A crash anywhere in between loses nothing: the changelog holds the state,
// and events after the last commit are processed again (at least once).
//
// # Recovery
//
// A partition's recovery replays each changelog partition from the stored
// checkpoint to the end offset measured when it starts: the high
// watermark, or under exactly-once the last stable offset (records of a
// transaction still open then are not the partition's state). It ends when
// every record below that offset was applied, never because the fetches
// went quiet: when nothing arrives for a moment it asks the partition's
// leader for the next record a consumer would be given, which tells a gap
// (compaction, transaction markers: done) from records not delivered yet
// (a leader move, a broker restarting: wait, say why in the log and in
// /ready/, ask again). Fetch errors are retried by sarama; a consumer that
// sarama closes (offset out of range) is started again, from the log start
// when records were deleted meanwhile. The checkpoint written never passes
// what was applied or shown to be a gap.
//
// # The membership fence
//
// Under at-least-once nothing stops a member that was removed from its
// group (its session expired, its rejoin was parked past the rebalance
// timeout) from writing the changelog of a partition that a new owner
// already recovered: the older values would then win the next recovery.
// sarama does not always say that a member was removed (a rejoin answered
// UNKNOWN_MEMBER_ID ends the session with no cause), so the runtime keeps
// its own proof of membership, a lease: the time of the last join and sync,
// or of a heartbeat of its own (Committer.Heartbeat) that the coordinator
// answered with no error. Answers given while a rebalance is pending
// (REBALANCE_IN_PROGRESS, an accepted offset commit) do not count: the
// coordinator removes a member that has not rejoined by the rebalance
// timeout however recently it answered. A changelog write starts only
// while the lease is younger than a third of the session timeout;
// otherwise the coordinator is asked first, and a member it no longer
// knows, or that nothing confirmed for a whole session timeout, writes
// nothing more: it drops its unflushed updates, commits nothing, and joins
// the group again; whoever gets the partition recovers it from the
// changelog and processes the events since the last commit again. A
// release always asks first and, when membership is not confirmed, drops
// the partition's unflushed updates rather than write them. The lease is
// sound while the rebalance timeout is at least a third of the session
// timeout (the defaults: 60 s and 30 s).
//
// A flush waits for all of its records to be acknowledged or failed, even
// when its session ends meanwhile, so a member never lets a partition go
// with its records in flight. What the fence cannot stop is a write that
// started within the lease and reaches the broker only after the member was
// removed and a new owner wrote (a network that holds a request for most of
// a session timeout): only the broker can refuse it, by a producer epoch
// the new owner bumps, which is what exactly-once does (the new owner's
// InitProducerID fences the old transactional producer).
package stream

import (
	"context"
	"errors"
	"time"

	"github.com/IBM/sarama"

	"github.com/gofaust/pageviews/internal/store"
	"github.com/gofaust/pageviews/internal/table"
)

// Event is one source record handed to the agent.
type Event struct {
	Ctx       context.Context
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Timestamp time.Time // the record timestamp
	Headers   []*sarama.RecordHeader
	// Now is the worker's clock when the runtime took the batch holding
	// this record (batches are taken within milliseconds). Handlers use it
	// rather than read the clock for every record.
	Now time.Time
}

// Handler is the agent: it processes one event, updating tables of the
// event's partition. The Event is only valid during the call.
// An error wrapping ErrInvalid sends the record to the
// dead-letter topic and processing goes on; any other error stops the
// partition.
type Handler interface {
	Handle(ev *Event) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ev *Event) error

// Handle implements Handler.
func (f HandlerFunc) Handle(ev *Event) error { return f(ev) }

// ErrInvalid marks a record that can never be processed (poison): it is
// dead-lettered instead of retried.
var ErrInvalid = errors.New("invalid record")

// Table is what the runtime needs of a table to recover, flush and release
// its partitions. table.Table and table.Windowed implement it.
type Table interface {
	Name() string
	Changelog() string
	Assign(p int32) (store.Checkpoint, bool, error)
	Revoke(p int32)
	Wipe(p int32) error
	Flush(p int32, now time.Time) ([]table.Record, error)
	Write(p int32, b *store.Batch, offset int64) error
	Flushed(p int32)
	Restore(p int32, b *store.Batch, key, value []byte, ts time.Time) error
	Recovered(p int32, b *store.Batch, offset int64) error
}
