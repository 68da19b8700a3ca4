# The page-view worker. `make help` lists the targets.

GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)

.DEFAULT_GOAL := help

include deploy/deploy.mk
# The dashboards are a module of their own; a copy made with plain gonew
# from the module proxy does not have it.
-include dashboards/dashboards.mk

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The worker is built without cgo, as in the image: Pebble then keeps its
# memtables on the Go heap, and the benchmark measures what ships.
.PHONY: build
build: ## build the worker and the dev broker into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/pageviews ./cmd/pageviews
	$(GO) build -trimpath -o $(BIN)/devbroker ./cmd/devbroker

.PHONY: run
run: build ## run the worker on the embedded dev broker (nothing else to install)
	LOG_FORMAT=$${LOG_FORMAT:-text} $(BIN)/pageviews

.PHONY: run-dev
run-dev: ## docker compose: Kafka (KRaft), the schema registry, two workers, statsd_exporter, Prometheus, Grafana, Jaeger (traces on)
	PAGEVIEWS_TRACES=otlp docker compose --profile observability up --build

.PHONY: run-dev-tilt
run-dev-tilt: ## Tilt on a local Kubernetes cluster: Kafka, the Helm chart, live updates
	tilt up

.PHONY: native-run
native-run: build ## run the worker against the Kafka you give it: make native-run KAFKA_BROKERS=host:9092
	@test -n "$(KAFKA_BROKERS)" || { echo "native-run: set KAFKA_BROKERS=host:port[,host:port]"; exit 2; }
	KAFKA_BROKERS=$(KAFKA_BROKERS) LOG_FORMAT=$${LOG_FORMAT:-text} $(BIN)/pageviews

.PHONY: broker
broker: build ## run the dev broker alone on 127.0.0.1:9092 and the dev schema registry on 127.0.0.1:8081, for several workers (KAFKA_BROKERS=127.0.0.1:9092 SCHEMA_REGISTRY_URL=http://127.0.0.1:8081); it creates page_views, so kcat can write first
	$(BIN)/devbroker -addr 127.0.0.1:9092 -data-dir data/devbroker -topics page_views -partitions 8 \
	  -registry-addr 127.0.0.1:8081 -registry-data-dir data/devregistry

# What make test runs after the race detector's pass, side by side: they
# mostly wait on brokers and processes, and each builds in a mode of its
# own. A copy made with plain gonew has neither nested module.
TEST_AFTER_RACE := test-membership \
  $(if $(wildcard dashboards/dashboards.mk),test-dashboards) \
  $(if $(wildcard faults/go.mod),test-faults-short)

.PHONY: test
# The race pass runs four test binaries at a time (-p 4; go's default is the
# core count): most of its tests wait on brokers, workers and timers, and on
# 2 cores four at a time finish in 117 s against 190 s for two.
test: ## run the tests (race detector on): the worker, the dashboards, faults and bad input, the fuzzers' seeds; slow suites have their own targets (make fuzz, chaos, bake, ...)
	$(GO) test -race -p 4 -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory -j3 --output-sync=target $(TEST_AFTER_RACE)

.PHONY: test-membership
test-membership: ## the membership fence tests, without the race detector (see the top of cmd/pageviews/membership_test.go)
	$(GO) test -count=1 -timeout 10m -run '^(TestExpelled|TestRecoverySkipsAbortedTransactions)' ./cmd/pageviews

.PHONY: test-faults-short
test-faults-short: ## faults/ on real processes, race detector on: bad input, lifecycle, network faults, the short exactly-once tests
	cd faults && $(GO) test -race -count=1 -timeout 15m ./...

# A count of inputs, not a duration: a fuzz run cut by its deadline can fail
# with "context deadline exceeded" while a worker is busy. Their seeds run in
# make test; this builds everything again with the fuzzer's instrumentation
# (about 3 minutes on a cold 2-core machine), so it has a target of its own.
.PHONY: fuzz
fuzz: ## run the fuzzers, 50,000 inputs each: the page-view decoders, the JSON scanner, the store's sorted load
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 50000x ./internal/pageview
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFastAgrees$$' -fuzztime 50000x ./internal/pageview
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEncodedAgrees$$' -fuzztime 50000x ./internal/pageview
	$(GO) test -run '^$$' -fuzz '^FuzzObjectAgrees$$' -fuzztime 50000x ./internal/jsonscan
	$(GO) test -run '^$$' -fuzz '^FuzzMillisUTC$$' -fuzztime 50000x ./internal/jsonscan
	$(GO) test -run '^$$' -fuzz '^FuzzLoadSorted$$' -fuzztime 50000x ./internal/store

.PHONY: test-faults
test-faults: ## the fault matrix: each Kafka request the worker makes under a retriable error, a move and a fatal error, in each phase (minutes; FAULT_MATRIX_ONLY=<regexp> for some cells)
	FAULT_MATRIX=1 $(GO) test -count=1 -v -timeout 45m -run '^TestFaultMatrix$$' ./cmd/pageviews

.PHONY: test-short
test-short: ## run the unit tests only
	$(GO) test -short -count=1 ./...

.PHONY: lint
lint: ## go vet and staticcheck (pinned in tools/go.mod)
	$(GO) vet ./...
	$(TOOL) staticcheck ./...
	@test -z "$$(gofmt -l cmd internal)" || { echo "gofmt needed:"; gofmt -l cmd internal; exit 1; }

# One list for CI and for a laptop: the script holds the programs and their
# Debian packages, and deploy/check/workflow_test.go holds the script to the
# programs the tests look up and to the workflow jobs that run them.
.PHONY: ci-deps
ci-deps: ## install the system packages the tests need, when missing (.ci/deps: kcat, prometheus, shellcheck; with apt-get), as CI does
	bash .ci/deps

.PHONY: clean
clean: ## remove build output and the local data directory
	rm -rf $(BIN) data

.PHONY: bench
bench: build ## benchmark against a dev broker process: throughput (vs bare sarama and a goka peer), latency, recovery, rebalances (BENCH_EVENTS=N for a shorter run, BENCH_RUNS=N throughput and recovery runs beside the bare consumer, 3 by default)
	cd bench/peer && $(GO) build -o ../../$(BIN)/goka-peer .
	$(GO) run ./bench -worker $(BIN)/pageviews -broker $(BIN)/devbroker -peer $(BIN)/goka-peer

.PHONY: bench-failover
bench-failover: build ## benchmark failover: kill -9 of the owner of a partition holding 1M changelog records among three workers, cold and with standby copies, three runs (FAILOVER_RUNS=N; about 50 s a run)
	$(GO) run ./bench -failover -partitions 3 -worker $(BIN)/pageviews -broker $(BIN)/devbroker

.PHONY: bench-warmup
bench-warmup: build ## benchmark a worker joining one that holds 64 partitions with 1M changelog records: how long until it has recovered its half and caught up standby copies of the other (about 15 s)
	$(GO) run ./bench -warmup -partitions 64 -worker $(BIN)/pageviews -broker $(BIN)/devbroker

.PHONY: bench-scale
bench-scale: build ## benchmark the worker at scale: pages 10k/100k/1M, partitions 8/32/64, events 1M/10M, one varied at a time (about 3 minutes); writes docs/bench-scale.svg and the Scale section of docs/benchmarks.md (SCALE_FLAGS='-scale-events 1000000' for fewer settings)
	$(GO) run ./bench -scale -worker $(BIN)/pageviews -broker $(BIN)/devbroker \
	  -scale-svg docs/bench-scale.svg -scale-docs docs/benchmarks.md $(SCALE_FLAGS)

SOAK_MINUTES ?= 30
SOAK_DOCS    ?= docs/benchmarks.md

.PHONY: soak
soak: build ## soak: one worker with its default windows under 20,000 views/s for SOAK_MINUTES (30) minutes, its RSS sampled every 10 s; rewrites the Soak figures of docs/benchmarks.md (SOAK_DOCS= to leave them)
	$(GO) run ./bench -soak -soak-minutes $(SOAK_MINUTES) -worker $(BIN)/pageviews -broker $(BIN)/devbroker -soak-docs "$(SOAK_DOCS)"

.PHONY: bench-micro
bench-micro: ## Go micro-benchmarks of the hot path: decode, window lookup, write-back cache, store commits, restore
	$(GO) test -run '^$$' -bench . -benchmem ./internal/...

.PHONY: test-external
test-external: build ## the e2e tests against a broker in its own process through KAFKA_BROKERS, as CI's integration job runs them on Kafka
	@$(BIN)/devbroker -addr 127.0.0.1:19092 > /dev/null 2>&1 & pid=$$!; trap 'kill $$pid' EXIT; \
	for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.1; done; \
	KAFKA_BROKERS=127.0.0.1:19092 $(GO) test -count=1 ./e2e/

.PHONY: bake
bake: ## generate a worker from the template (newworker and gonew), then build, test and lint it offline; update one baked from an older commit (minutes: not in make test)
	@# The template's alone: a generated worker has no generator.
	@if [ -d cmd/newworker ]; then \
	  set -x; BAKE=1 $(GO) test -count=1 -v -timeout 30m -run 'TestBake|TestGonew|TestDefaultsReproduceTheTemplate|TestNestedModulesListed|TestUpdate' ./cmd/newworker/; \
	else echo "bake: nothing to bake here (cmd/newworker, the generator, is the template's)"; fi

.PHONY: chaos
chaos: ## the chaos suites: restarts, scaling, kill -9 and closed windows over rolling restarts (chaos/), and the crash tests of totals and closed windows (faults/) (about 8 minutes)
	CHAOS=1 $(GO) test -count=1 -v -timeout 30m ./chaos/
	cd faults && CHAOS=1 $(GO) test -count=1 -v -timeout 30m -run 'EOS|Long|ClosedWindows' ./...

.PHONY: test-truth
test-truth: ## the metric truth suite: real worker and broker processes, each metric held to the broker, the logs and what was sent (truth/)
	TRUTH=1 $(GO) test -count=1 -v -timeout 20m ./truth/
