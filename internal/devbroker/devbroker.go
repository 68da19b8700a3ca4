// Package devbroker runs an in-process Kafka-protocol broker (franz-go's
// kfake) for development and tests. It speaks the real wire protocol, keeps
// its data in a directory so a clean restart keeps topics and offsets, and
// is never meant for production.
package devbroker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Options configure a dev broker.
type Options struct {
	Addr       string // host:port to listen on; port 0 picks one
	DataDir    string // where the broker keeps its log; empty keeps it in memory
	Partitions int32  // partitions of the topics it creates
	// Topics are created when the broker starts on an empty data
	// directory, as a local Kafka with the topics provisioned would have
	// them: a producer (kcat) can write before any worker started.
	Topics []string
	// Advertise, when set, is the address the broker tells clients to use
	// instead of the one it listens on: a proxy in front of it (fault
	// injection tests) or a port forward.
	Advertise string
	Log       *slog.Logger
}

// Broker is a running dev broker.
type Broker struct {
	c *kfake.Cluster
}

// Start starts a single-node broker.
func Start(o Options) (*Broker, error) {
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(int(max(o.Partitions, 1))),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			// kfake listens on 127.0.0.1 with a random port unless told
			// otherwise; listen where the worker was configured to. kfake
			// advertises the listener's address, so an advertised address
			// is a listener that reports it.
			ln, err := net.Listen(network, o.Addr)
			if err != nil || o.Advertise == "" {
				return ln, err
			}
			adv, err := net.ResolveTCPAddr("tcp", o.Advertise)
			if err != nil {
				_ = ln.Close()
				return nil, fmt.Errorf("advertised address %q: %w", o.Advertise, err)
			}
			return advertised{Listener: ln, addr: adv}, nil
		}),
		kfake.GroupMinSessionTimeout(time.Second),
	}
	if len(o.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(max(o.Partitions, 1), o.Topics...))
	}
	if o.Log != nil {
		opts = append(opts, kfake.WithLogger(logger{o.Log}))
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start dev broker on %s: %w", o.Addr, err)
	}
	return &Broker{c: c}, nil
}

type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

// Addrs returns the addresses the broker advertises.
func (b *Broker) Addrs() []string { return b.c.ListenAddrs() }

// Close stops the broker, writing its state to the data directory.
func (b *Broker) Close() { b.c.Close() }

// Compact runs log compaction now on every compacted topic.
func (b *Broker) Compact() { b.c.Compact() }

type logger struct{ log *slog.Logger }

func (l logger) Logf(level kfake.LogLevel, msg string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	case kfake.LogLevelInfo:
		// kfake logs every request at info; that is debug for a worker.
		lvl = slog.LevelDebug
	default:
		lvl = slog.LevelDebug - 4
	}
	l.log.Log(context.Background(), lvl, fmt.Sprintf(msg, args...), "component", "devbroker")
}
