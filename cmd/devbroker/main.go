// Command devbroker runs the development Kafka-protocol broker as its own
// process, so several workers on one laptop (or in tests) can share it. It
// is the same broker the worker embeds when KAFKA_BROKERS is empty, with
// the same schema registry (-registry-addr), and it is for development and
// tests only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gofaust/pageviews/internal/devbroker"
	"github.com/gofaust/pageviews/internal/devregistry"
)

func main() {
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "address to listen on (port 0 picks a free port)")
	dataDir := fs.String("data-dir", "", "directory for the broker's data; empty keeps everything in memory")
	partitions := fs.Int("partitions", 8, "partitions of the topics it creates (the worker's PARTITIONS)")
	topics := fs.String("topics", "", "comma-separated topics to create on an empty data directory, such as the worker's source topic, so a producer can write before a worker started")
	advertise := fs.String("advertise", "", "address to advertise to clients instead of -addr (a proxy in front of the broker)")
	registry := fs.String("registry-addr", "", "also serve the dev schema registry there (workers: SCHEMA_REGISTRY_URL=http://<addr>); empty: no registry")
	registryDir := fs.String("registry-data-dir", "", "directory for the registry's registrations; empty keeps them in memory")
	verbose := fs.Bool("v", false, "log every request")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	var seed []string
	if *topics != "" {
		seed = strings.Split(*topics, ",")
	}
	b, err := devbroker.Start(devbroker.Options{Addr: *addr, DataDir: *dataDir, Partitions: int32(*partitions), Topics: seed, Advertise: *advertise, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "devbroker:", err)
		os.Exit(1)
	}
	// Tests read this line to learn the address when -addr has port 0 (with
	// -advertise it is the advertised address).
	fmt.Printf("devbroker listening on %s\n", b.Addrs()[0])

	log.Info("dev broker started; for development and tests only", "addr", b.Addrs()[0], "data_dir", *dataDir)
	if *registry != "" {
		r, err := devregistry.Start(devregistry.Options{Addr: *registry, DataDir: *registryDir})
		if err != nil {
			b.Close()
			fmt.Fprintln(os.Stderr, "devbroker:", err)
			os.Exit(1)
		}
		defer func() { _ = r.Close() }()
		fmt.Printf("devregistry listening on %s\n", r.URL())
		log.Info("dev schema registry started; for development and tests only", "url", r.URL(), "data_dir", *registryDir)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	b.Close()
	log.Info("dev broker stopped")
}
