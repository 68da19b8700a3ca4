package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// otlpReceiver is a real OTLP/gRPC trace collector on loopback.
type otlpReceiver struct {
	coltrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *otlpReceiver) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			r.spans = append(r.spans, ss.Spans...)
		}
	}
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) byTrace() map[string][]*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string][]*tracepb.Span{}
	for _, s := range r.spans {
		id := hex.EncodeToString(s.TraceId)
		out[id] = append(out[id], s)
	}
	return out
}

// TestTraceThroughKafka: one /count/ call gives one trace holding the HTTP
// server span, the produce span, and the span that processed the event in
// the agent, exported over OTLP/gRPC to a real receiver; the processing
// span is a child of the produce span through the record's traceparent.
func TestTraceThroughKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &otlpReceiver{}
	srv := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(srv, recv)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	brokers := startDevBroker(t)
	now := time.Now()
	w := startWorker(t, map[string]string{
		"KAFKA_BROKERS":               brokers,
		"WEB_ADDR":                    "127.0.0.1:0",
		"DATA_DIR":                    t.TempDir(),
		"COMMIT_INTERVAL":             "100ms",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + ln.Addr().String(),
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		"LIVECHECK_INTERVAL":          "0",
	}, func() time.Time { return now })
	getJSON(t, w.base+"/count/?page=/traced", nil)
	// Stopping the worker flushes the exporter.
	eventually(t, 10*time.Second, "view counted", func() (bool, string) {
		var rep struct{ Count int64 }
		getJSON(t, w.base+"/report/", &rep)
		return rep.Count == 1, ""
	})
	w.stop(t)

	var found []*tracepb.Span
	for _, spans := range recv.byTrace() {
		var server, send, process *tracepb.Span
		for _, s := range spans {
			switch {
			case s.Name == "GET /count/" && s.Kind == tracepb.Span_SPAN_KIND_SERVER:
				server = s
			case s.Name == "send page_views" && s.Kind == tracepb.Span_SPAN_KIND_PRODUCER:
				send = s
			case s.Name == "process page_views" && s.Kind == tracepb.Span_SPAN_KIND_CONSUMER:
				process = s
			}
		}
		if server != nil && send != nil && process != nil {
			if string(send.ParentSpanId) != string(server.SpanId) || string(process.ParentSpanId) != string(send.SpanId) {
				t.Errorf("span parents: send's parent %x (server %x), process's parent %x (send %x)",
					send.ParentSpanId, server.SpanId, process.ParentSpanId, send.SpanId)
			}
			found = spans
		}
	}
	if found == nil {
		var names []string
		for id, spans := range recv.byTrace() {
			for _, s := range spans {
				names = append(names, fmt.Sprintf("%s:%s(%s)", id[:8], s.Name, s.Kind))
			}
		}
		t.Fatalf("no trace holds the server, produce and process spans; got %s", strings.Join(names, ", "))
	}
}
