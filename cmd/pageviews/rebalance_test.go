package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/gofaust/pageviews/internal/config"
	"github.com/gofaust/pageviews/internal/kafka"
	"github.com/gofaust/pageviews/internal/pageview"
)

// TestReportWhileJoinGroupParked: in a rebalance the coordinator holds each
// member's JoinGroup until every member has rejoined, up to the rebalance
// timeout, and a broker answers the requests of one connection in order.
// While the worker's JoinGroup is held, /report/ still answers within 2 s
// (stale is fine): owner lookups neither go through the connection that
// JoinGroup holds nor make one caller wait for another's lookup.
func TestReportWhileJoinGroupParked(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	addr := cluster.ListenAddrs()[0]
	vars := map[string]string{
		"KAFKA_BROKERS":   addr,
		"WEB_ADDR":        "127.0.0.1:0",
		"DATA_DIR":        t.TempDir(),
		"COMMIT_INTERVAL": "100ms",
	}
	cfg, err := loadConfig(env(vars))
	if err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, vars, time.Now)
	eventually(t, 30*time.Second, "a complete report", func() (bool, string) {
		var rep pageview.Report
		getJSON(t, w.base+"/report/", &rep)
		return !rep.Stale, fmt.Sprintf("missing %v", rep.MissingPartitions)
	})

	release, parked := parkWorkerJoin(cluster)
	joined := joinSecondMember(t, addr, cfg, release)
	select {
	case <-parked:
	case <-time.After(60 * time.Second):
		t.Fatalf("the worker did not rejoin after the second member joined\n%s", w.logs)
	}
	// Ask for longer than the directory's cache time (1 s), so that
	// reports need fresh lookups while the JoinGroup is held.
	lookups := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.DescribeGroups}, Observe: true, Count: -1})
	n, stale, slowest := reportsWhileHeld(t, w)
	// The rebalance was pending all along: the second member's JoinGroup
	// waits for the worker's.
	if len(joined) > 0 {
		t.Fatal("the rebalance completed while the worker's JoinGroup was held")
	}
	if lookups.Hits() == 0 {
		t.Error("no owner lookup reached the broker while the JoinGroup was held")
	}
	t.Logf("%d reports (%d stale) and %d owner lookups while the JoinGroup was held; slowest report %s", n, stale, lookups.Hits(), slowest)
}

// parkWorkerJoin holds the next JoinGroup of a member that advertises a
// URL (the worker) until release is closed; every other request goes on
// as usual. parked is closed once that JoinGroup is held.
func parkWorkerJoin(cluster *kfake.Cluster) (release, parked chan struct{}) {
	release = make(chan struct{})
	parked = make(chan struct{})
	var parking atomic.Bool
	cluster.ControlKey(int16(kmsg.JoinGroup), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if advertises(req) && parking.CompareAndSwap(false, true) {
			close(parked)
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	return release, parked
}

// joinSecondMember joins a second member to cfg's group through the
// broker at addr: the group rebalances, and the worker is told so by its
// next heartbeat and rejoins. The second member's JoinGroup completes once
// the worker's does; its error arrives on the returned channel.
//
// At cleanup release is closed, the rebalance completes and the second
// member leaves: the worker is alone in the group again and stops cleanly.
// A worker started before this call is stopped after that cleanup
// (cleanups run last added first).
func joinSecondMember(t *testing.T, addr string, cfg *config.Config, release chan struct{}) <-chan error {
	t.Helper()
	conf := sarama.NewConfig()
	conf.Version = sarama.V3_9_0_0
	joiner := sarama.NewBroker(addr)
	if err := joiner.Open(conf); err != nil {
		t.Fatal(err)
	}
	if _, err := joiner.Connected(); err != nil {
		t.Fatal(err)
	}
	first, err := joinGroup(joiner, cfg, "")
	if err != nil || first.Err != sarama.ErrMemberIdRequired {
		t.Fatalf("first JoinGroup of the second member: %v, %v", first, err)
	}
	joined := make(chan error, 1)
	go func() {
		_, err := joinGroup(joiner, cfg, first.MemberId)
		joined <- err
	}()
	t.Cleanup(func() {
		close(release)
		if err := <-joined; err != nil {
			t.Errorf("second member's JoinGroup: %v", err)
		}
		_, err := joiner.LeaveGroup(&sarama.LeaveGroupRequest{
			Version: 3, GroupId: cfg.Group, Members: []sarama.MemberIdentity{{MemberId: first.MemberId}},
		})
		if err != nil {
			t.Errorf("second member's LeaveGroup: %v", err)
		}
		_ = joiner.Close()
	})
	return joined
}

// joinGroup sends the JoinGroup of a consumer of cfg's topic in cfg's
// group, as member, through b.
func joinGroup(b *sarama.Broker, cfg *config.Config, member string) (*sarama.JoinGroupResponse, error) {
	req := &sarama.JoinGroupRequest{
		Version: 5, GroupId: cfg.Group, MemberId: member, ProtocolType: "consumer",
		SessionTimeout: 30_000, RebalanceTimeout: 60_000,
	}
	if err := req.AddGroupProtocolMetadata(sarama.CooperativeStickyBalanceStrategyName,
		&sarama.ConsumerGroupMemberMetadata{Topics: []string{cfg.Topic}}); err != nil {
		return nil, err
	}
	return b.JoinGroup(req)
}

// reportsWhileHeld asks w for /report/ for at least 3 s and fails unless
// every request is answered with a report within 2 s. It returns how many
// reports it got, how many of them were stale, and the slowest one's time.
func reportsWhileHeld(t *testing.T, w *worker) (n, stale int, slowest time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	heldAt := time.Now()
	for n == 0 || time.Since(heldAt) < 3*time.Second {
		start := time.Now()
		resp, err := client.Get(w.base + "/report/")
		if err != nil {
			t.Fatalf("/report/ while the worker's JoinGroup is held: %v (after %s)", err, time.Since(start))
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		var rep pageview.Report
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(body, &rep) != nil {
			t.Fatalf("/report/ while the worker's JoinGroup is held: status %d, body %q, error %v", resp.StatusCode, body, err)
		}
		slowest = max(slowest, took)
		n++
		if rep.Stale {
			stale++
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n, stale, slowest
}

// advertises tells whether req is a JoinGroup of a member that advertises
// a URL in its subscription, as workers do.
func advertises(req kmsg.Request) bool {
	join, ok := req.(*kmsg.JoinGroupRequest)
	if !ok {
		return false
	}
	for _, p := range join.Protocols {
		var meta kmsg.ConsumerMemberMetadata
		if meta.ReadFrom(p.Metadata) == nil && len(kafka.Advertised(meta.UserData)) > 0 {
			return true
		}
	}
	return false
}
