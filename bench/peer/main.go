// Command peer is the benchmark's goka peer: a goka v1.1.17 processor that
// counts the same page views as the worker (per page and tumbling window,
// and per page in total) in its group table, with goka's defaults and its
// LevelDB storage. It lives in its own module so the template never
// depends on goka.
//
// The one change to goka's defaults: new groups start from the oldest
// offset, as the worker does, since the records are preloaded (goka's
// default is the newest offset).
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/storage"
)

// pageView is the worker's PageView record.
type pageView struct {
	Page      string    `json:"page"`
	Count     int64     `json:"count"`
	Timestamp time.Time `json:"timestamp"`
}

type viewCodec struct{}

func (viewCodec) Encode(v any) ([]byte, error) { return json.Marshal(v) }
func (viewCodec) Decode(b []byte) (any, error) {
	var pv pageView
	err := json.Unmarshal(b, &pv)
	return &pv, err
}

// counts is the table value of one page: its total and its windows.
type counts struct {
	Total   int64
	Windows map[int64]int64 // window start (Unix ms) -> views
}

// countsCodec stores counts as varints: total, number of windows, then
// start and count of each.
type countsCodec struct{}

func (countsCodec) Encode(v any) ([]byte, error) {
	c := v.(*counts)
	b := binary.AppendVarint(nil, c.Total)
	b = binary.AppendUvarint(b, uint64(len(c.Windows)))
	for start, n := range c.Windows {
		b = binary.AppendVarint(b, start)
		b = binary.AppendVarint(b, n)
	}
	return b, nil
}

func (countsCodec) Decode(b []byte) (any, error) {
	c := &counts{Windows: map[int64]int64{}}
	var n int
	c.Total, n = binary.Varint(b)
	b = b[n:]
	k, n := binary.Uvarint(b)
	b = b[n:]
	for range k {
		start, n1 := binary.Varint(b)
		v, n2 := binary.Varint(b[n1:])
		if n1 <= 0 || n2 <= 0 {
			return nil, errors.New("bad counts value")
		}
		c.Windows[start] = v
		b = b[n1+n2:]
	}
	return c, nil
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated brokers")
	group := flag.String("group", "goka-pageviews", "consumer group")
	topic := flag.String("topic", "page_views", "source topic")
	window := flag.Duration("window", time.Hour, "tumbling window size")
	dir := flag.String("data-dir", "", "LevelDB directory (goka's default path when empty)")
	flag.Parse()

	cfg := goka.DefaultConfig()
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	goka.ReplaceGlobalConfig(cfg)

	size := window.Milliseconds()
	count := func(ctx goka.Context, msg any) {
		pv := msg.(*pageView)
		c, _ := ctx.Value().(*counts)
		if c == nil {
			c = &counts{Windows: map[int64]int64{}}
		}
		ts := pv.Timestamp
		if ts.IsZero() {
			ts = ctx.Timestamp()
		}
		ms := ts.UnixMilli()
		c.Windows[ms-ms%size]++
		c.Total++
		ctx.SetValue(c)
	}
	gg := goka.DefineGroup(goka.Group(*group),
		goka.Input(goka.Stream(*topic), viewCodec{}, count),
		goka.Persist(countsCodec{}),
	)
	tmc := goka.NewTopicManagerConfig()
	tmc.Table.Replication = 1 // a single dev broker
	tmc.Stream.Replication = 1
	opts := []goka.ProcessorOption{goka.WithTopicManagerBuilder(goka.TopicManagerBuilderWithTopicManagerConfig(tmc))}
	if *dir != "" {
		opts = append(opts, goka.WithStorageBuilder(storage.DefaultBuilder(filepath.Clean(*dir))))
	}
	p, err := goka.NewProcessor(strings.Split(*brokers, ","), gg, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Println("peer running")
	if err := p.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}
