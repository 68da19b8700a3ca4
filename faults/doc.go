// Package faults holds the worker's fault-injection, bad-input and
// exactly-once tests. It is its own module so that what only these tests
// need (toxiproxy, used as a library) never enters the template's
// dependency graph.
//
// The tests run the real binaries through the parent module's process
// harness (test/harness), which builds cmd/pageviews and cmd/devbroker once,
// and every test starts its own dev broker and workers on 127.0.0.1 with
// state in t.TempDir().
//
//	cd faults && go test -race -count=1 ./...                          # the short suite
//	cd faults && CHAOS=1 go test -count=1 -v -run EOS -timeout 30m ./... # the exactly-once crash test
//
// Set FAULTS_LOG_DIR to keep every process's output in that directory.
package faults
