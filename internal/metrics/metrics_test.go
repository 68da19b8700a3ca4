package metrics_test

import (
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/metrics"
	"github.com/gofaust/pageviews/internal/store"
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

// storeStats is a store whose figures the test sets.
type storeStats struct{ st store.Stats }

func (s *storeStats) Stats() store.Stats { return s.st }

// TestSamplerGroupAndStore checks what a sample sends of the group and the
// store: the members seen, Pebble's memory as gauges, its background errors
// counted since the previous sample, the commits the stream hooks count,
// and the total GC pause time as a gauge that only grows.
func TestSamplerGroupAndStore(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := metrics.New(metrics.Options{Addr: conn.LocalAddr().String(), Namespace: "pageviews"})
	if err != nil {
		t.Fatal(err)
	}
	db := &storeStats{store.Stats{BackgroundErrors: 2, MemTableBytes: 1 << 20, BlockCacheBytes: 3 << 20}}
	s := &metrics.Sampler{C: c, Store: db, Members: func() (int, bool) { return 3, true }}
	s.Sample()
	db.st.BackgroundErrors = 5
	runtime.GC()
	s.Sample()
	hooks := &metrics.StreamHooks{C: c, Topic: "t"}
	hooks.Committed(4, time.Millisecond)
	hooks.Committed(4, time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readLines(t, conn,
		"pageviews.group_members:3|g",
		"pageviews.pebble_memtable_bytes:1048576|g",
		"pageviews.pebble_block_cache_bytes:3145728|g",
		"pageviews.pebble_background_errors:5|c", // 2, then 3 more: summed in one send
		"pageviews.commits:2|c|#topic:t,partition:4",
		"pageviews.go_gc_pause_seconds:",
	)
	for _, l := range got {
		if v, ok := strings.CutPrefix(l, "pageviews.go_gc_pause_seconds:"); ok {
			if secs, err := strconv.ParseFloat(strings.Split(v, "|")[0], 64); err != nil || secs <= 0 {
				t.Errorf("go_gc_pause_seconds %q after a GC: want the total pause time, above 0", l)
			}
		}
	}
}

// readLines reads datagrams until, for each of want, a line starts with
// it, and returns their lines; it fails the test when one never comes.
func readLines(t *testing.T, conn *net.UDPConn, want ...string) []string {
	t.Helper()
	var lines []string
	missing := func() []string {
		var out []string
		for _, w := range want {
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, w) }) {
				out = append(out, w)
			}
		}
		return out
	}
	buf := make([]byte, 65536)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(missing()) > 0 {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no %q in %q: %v", missing(), lines, err)
		}
		lines = append(lines, strings.Split(strings.TrimSpace(string(buf[:n])), "\n")...)
	}
	return lines
}
