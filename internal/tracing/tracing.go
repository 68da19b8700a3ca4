// Package tracing sets up OpenTelemetry tracing from the standard OTEL_*
// variables and carries W3C trace context through Kafka record headers.
//
// OTEL_TRACES_EXPORTER chooses the exporter: otlp, console or none. When it
// is unset, traces go over OTLP if an OTLP endpoint is configured and
// nowhere otherwise: no exporter configured means no export, never an
// error. OTEL_EXPORTER_OTLP_PROTOCOL (or ..._TRACES_PROTOCOL) is grpc or
// http/protobuf (the default). Sampling follows OTEL_TRACES_SAMPLER, read
// by the SDK.
//
// The tracer provider and the propagator are process-wide (otel globals):
// instrumented libraries find them there, so they are set in one place,
// Setup.
package tracing

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strings"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// scope is the instrumentation scope of the worker's spans: this
// package's import path, as OpenTelemetry names instrumentation.
type scope struct{}

// Options come from the configuration.
type Options struct {
	Exporter string // otlp, console, none or empty (decide from the endpoint)
	Endpoint string // OTLP base endpoint URL
	// TracesEndpoint is the full URL of the traces endpoint; it wins.
	TracesEndpoint string
	Protocol       string // grpc or http/protobuf
	ServiceName    string
	Version        string
	Console        io.Writer
}

// Setup installs the tracer provider and the W3C propagator. The returned
// function flushes and stops the exporter.
func Setup(ctx context.Context, o Options, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	exporter := o.Exporter
	if exporter == "" {
		exporter = "none"
		if o.Endpoint != "" || o.TracesEndpoint != "" {
			exporter = "otlp"
		}
	}
	var exp sdktrace.SpanExporter
	switch exporter {
	case "none":
		otel.SetTracerProvider(noop.NewTracerProvider())
		log.Info("traces off: set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER to export them")
		return func(context.Context) error { return nil }, nil
	case "console":
		w := o.Console
		if w == nil {
			w = os.Stdout
		}
		exp, err = stdouttrace.New(stdouttrace.WithWriter(w))
	case "otlp":
		if o.Protocol == "grpc" {
			var opts []otlptracegrpc.Option
			if u := firstOf(o.TracesEndpoint, o.Endpoint); u != "" {
				opts = append(opts, otlptracegrpc.WithEndpointURL(u))
			}
			exp, err = otlptracegrpc.New(ctx, opts...)
		} else {
			var opts []otlptracehttp.Option
			switch {
			case o.TracesEndpoint != "":
				opts = append(opts, otlptracehttp.WithEndpointURL(o.TracesEndpoint))
			case o.Endpoint != "":
				opts = append(opts, otlptracehttp.WithEndpointURL(strings.TrimSuffix(o.Endpoint, "/")+"/v1/traces"))
			}
			exp, err = otlptracehttp.New(ctx, opts...)
		}
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: want otlp, console or none", exporter)
	}
	if err != nil {
		return nil, fmt.Errorf("trace exporter %s: %w", exporter, err)
	}
	// OTEL_RESOURCE_ATTRIBUTES (pod, namespace, ...) add to what the
	// worker knows; the service name and version are the worker's.
	res, err := resource.Merge(resource.Environment(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName(o.ServiceName), semconv.ServiceVersion(o.Version)))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	log.Info("exporting traces", "exporter", exporter, "endpoint", firstOf(o.TracesEndpoint, o.Endpoint), "protocol", o.Protocol)
	return tp.Shutdown, nil
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Tracer returns the worker's tracer from the global provider.
func Tracer() trace.Tracer { return otel.Tracer(reflect.TypeFor[scope]().PkgPath()) }

// ProducerHeaders carries trace context into the headers of a record
// being produced.
type ProducerHeaders struct{ M *sarama.ProducerMessage }

// Get implements propagation.TextMapCarrier.
func (c ProducerHeaders) Get(key string) string {
	for _, h := range c.M.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// Set implements propagation.TextMapCarrier.
func (c ProducerHeaders) Set(key, value string) {
	for i, h := range c.M.Headers {
		if string(h.Key) == key {
			c.M.Headers[i].Value = []byte(value)
			return
		}
	}
	c.M.Headers = append(c.M.Headers, sarama.RecordHeader{Key: []byte(key), Value: []byte(value)})
}

// Keys implements propagation.TextMapCarrier.
func (c ProducerHeaders) Keys() []string {
	keys := make([]string, len(c.M.Headers))
	for i, h := range c.M.Headers {
		keys[i] = string(h.Key)
	}
	return keys
}

// ConsumerHeaders reads trace context from the headers of a consumed record.
type ConsumerHeaders []*sarama.RecordHeader

// Get implements propagation.TextMapCarrier.
func (c ConsumerHeaders) Get(key string) string {
	for _, h := range c {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// Set implements propagation.TextMapCarrier; consumed records are read-only.
func (c ConsumerHeaders) Set(string, string) {}

// Keys implements propagation.TextMapCarrier.
func (c ConsumerHeaders) Keys() []string {
	keys := make([]string, len(c))
	for i, h := range c {
		keys[i] = string(h.Key)
	}
	return keys
}

// HasContext reports whether a consumed record carries trace context, so
// the hot path skips extraction for records that carry none.
func HasContext(hs []*sarama.RecordHeader) bool {
	for _, h := range hs {
		if string(h.Key) == "traceparent" {
			return true
		}
	}
	return false
}

// LogHandler adds trace_id and span_id to every record logged with a
// context that holds a span.
type LogHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return LogHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h LogHandler) WithGroup(name string) slog.Handler { return LogHandler{h.Handler.WithGroup(name)} }

// HTTP wraps a handler with a server span per request, continuing a trace
// from the request's traceparent header. route names the span.
func HTTP(next http.Handler, route func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := Tracer().Start(ctx, r.Method+" "+route(r), trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(semconv.HTTPRequestMethodKey.String(r.Method), semconv.HTTPRoute(route(r))))
		defer span.End()
		sw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(ctx))
		span.SetAttributes(semconv.HTTPResponseStatusCode(sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
