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
// checkpoint to the end offset measured when it starts: the last stable
// offset (records of a transaction still open then are not the
// partition's state). It ends when
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
// A member that was removed from its group (its session expired, its
// rejoin was parked past the rebalance timeout) may not know it yet, and
// may still write the changelog of a partition that a new owner already
// recovered: its older values would then win the next recovery. A write
// may even have left before the member was removed and reach the broker
// only after the new owner's (a network that holds a request for most of
// a session timeout). Only the broker can refuse such a write, so each
// partition writes its changelogs through a transactional producer whose
// id is the partition's (Options.Transactions), under both guarantees:
//
//   - a new owner starts the partition's producer before it recovers: its
//     InitProducerID fences the old owner's producer and aborts whatever
//     transaction it left open, so the end of the changelog is final;
//   - a write of the old producer that arrives later is refused for its
//     epoch, or belongs to the aborted transaction, which recovery and
//     standbys skip (they read read_committed);
//   - the old owner learns that it was fenced at its next commit or begin:
//     it drops the partition's unflushed updates, commits nothing and joins
//     the group again (a *lostError), and never starts a new producer in
//     its place, which would fence the owner in turn.
//
// Under exactly-once the transaction also holds the source offset; under
// at-least-once (Options.OffsetsAfter) the offset is committed once the
// transaction committed and the store holds the state, so a crash in
// between processes the events since the last commit again. A flush waits
// for all of its records to be acknowledged or failed, even when its
// session ends meanwhile, so a member never lets a partition go with its
// records in flight.
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

// Header returns the value of the record's header key, and whether it has
// one.
func (ev *Event) Header(key string) ([]byte, bool) {
	for _, h := range ev.Headers {
		if h != nil && string(h.Key) == key {
			return h.Value, true
		}
	}
	return nil, false
}

// Handler is the agent: it processes one event, updating tables of the
// event's partition. The Event is only valid during the call.
// An error wrapping ErrInvalid sends the record to the
// dead-letter topic and processing goes on; one wrapping ErrUnavailable
// makes the partition wait and try the record again; any other error stops
// the partition.
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

// ErrUnavailable marks a record that cannot be processed yet because a
// service it needs does not answer (a schema registry): the partition stops
// fetching and tries the record again with backoff until it goes through,
// and the worker is not ready meanwhile, the error as the reason. The
// handler must return it before it changed any table.
var ErrUnavailable = errors.New("a service the record needs is unavailable")

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
	// Dirty is how many keys of partition p changed since its last Flush.
	Dirty(p int32) int
	Restore(p int32, b *store.Batch, key, value []byte, ts time.Time) error
	Recovered(p int32, b *store.Batch, offset int64) error
}
