package metrics_test

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/metrics"
)

func TestNamesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range metrics.All() {
		if seen[d.Name] {
			t.Errorf("metric %s declared twice", d.Name)
		}
		seen[d.Name] = true
		if d.Help == "" {
			t.Errorf("metric %s has no meaning", d.Name)
		}
	}
}

// TestUnixSocket sends over a Unix datagram socket (DD_DOGSTATSD_URL=
// unix://...), the way a DaemonSet agent's socket is mounted into a pod.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsd.socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := metrics.New(metrics.Options{Addr: "unix://" + path, Namespace: "pageviews", Tags: []string{"env:test", "version:1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Count(metrics.Rebalances, 1)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("nothing arrived on the socket: %v", err)
	}
	if got := string(buf[:n]); !strings.HasPrefix(got, "pageviews.rebalances:1|c|#env:test,version:1") {
		t.Errorf("datagram %q", got)
	}
}

// TestUDP sends to a UDP listener (DD_AGENT_HOST, DD_DOGSTATSD_PORT).
func TestUDP(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := metrics.New(metrics.Options{Addr: conn.LocalAddr().String(), Namespace: "clicks", Tags: []string{"env:test"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Gauge(metrics.ConsumerLag, 7, metrics.Tag("topic", "t"), metrics.Partition(3))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); !strings.HasPrefix(got, "clicks.consumer_lag:7|g|#env:test,topic:t,partition:3") {
		t.Errorf("datagram %q", got)
	}
}
