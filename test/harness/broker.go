package harness

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// Broker is a dev broker process (cmd/devbroker).
type Broker struct {
	*Proc
	Addr string // host:port, as it advertises itself
	// Registry is the URL of its schema registry, when started with
	// -registry-addr.
	Registry string
}

// StartBroker starts the dev broker on a free loopback port, its output in
// dir, and waits for the line that names its address. args go to the
// broker after -addr 127.0.0.1:0 and win over it: -addr, -advertise,
// -data-dir (without one it keeps everything in memory).
func StartBroker(t testing.TB, dir string, args ...string) *Broker {
	t.Helper()
	args = append([]string{"-addr", "127.0.0.1:0"}, args...)
	p := Start(t, dir, "devbroker", Build(t, "devbroker"), args, nil)
	const prefix = "devbroker listening on "
	l := p.WaitLine(t, 30*time.Second, "its address", func(l string) bool { return strings.HasPrefix(l, prefix) })
	addr := strings.TrimSpace(strings.TrimPrefix(l, prefix))
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("devbroker address %q: %v", addr, err)
	}
	b := &Broker{Proc: p, Addr: addr}
	if slices.Contains(args, "-registry-addr") {
		const prefix = "devregistry listening on "
		l := p.WaitLine(t, 30*time.Second, "its registry's URL", func(l string) bool { return strings.HasPrefix(l, prefix) })
		b.Registry = strings.TrimSpace(strings.TrimPrefix(l, prefix))
	}
	return b
}
