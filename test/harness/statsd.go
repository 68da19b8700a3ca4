package harness

import (
	"net"
	"strconv"
	"testing"
	"time"
)

// ListenStatsd receives DogStatsD datagrams on a loopback UDP port until
// the test ends, and hands each to got with the time it arrived. It
// returns the port, for the worker's DD_DOGSTATSD_PORT.
func ListenStatsd(t testing.TB, got func(at time.Time, datagram string)) string {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("DogStatsD listener: %v", err)
	}
	// A burst of datagrams while the test is busy must not be dropped: a
	// lost count would read as a wrong one.
	_ = conn.SetReadBuffer(8 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got(time.Now(), string(buf[:n]))
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return strconv.Itoa(conn.LocalAddr().(*net.UDPAddr).Port)
}
