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
