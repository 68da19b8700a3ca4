package faults

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/pageview"
	"github.com/gofaust/pageviews/internal/web"
)

// handler is the worker's HTTP handler, the app's pages and the runtime's,
// served by the test driver (internal/app): a real agent and real tables
// behind a producer that never fails.
func handler(tb app.TB) http.Handler {
	return app.NewDriver(tb, pageview.App(), nil, time.Now())
}

// FuzzHTTPHandler sends arbitrary requests (method, target with path and
// query, one extra header) through the worker's HTTP handler: it never
// panics, every response is JSON, and no status is 5xx.
func FuzzHTTPHandler(f *testing.F) {
	// More seeds are in testdata/fuzz/FuzzHTTPHandler.
	f.Add("GET", "/count/?page=/home", "Accept", "application/json")
	f.Add("GET", "/report/?page=/home", "", "")
	h := handler(f)
	f.Fuzz(func(t *testing.T, method, target, name, value string) {
		var raw strings.Builder
		fmt.Fprintf(&raw, "%s %s HTTP/1.1\r\nHost: worker\r\n", method, target)
		if name != "" {
			fmt.Fprintf(&raw, "%s: %s\r\n", name, value)
		}
		raw.WriteString("\r\n")
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw.String())))
		if err != nil {
			return // the server answers such a request itself, before any handler
		}
		if req.Method == http.MethodOptions && req.RequestURI == "*" {
			return // so does it "OPTIONS *"
		}
		req.RemoteAddr = "127.0.0.1:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		what := fmt.Sprintf("%s %q", req.Method, req.RequestURI)
		if rec.Code >= 500 {
			t.Errorf("%s: status %d %q", what, rec.Code, rec.Body.String())
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: status %d with Content-Type %q, body %q; want JSON", what, rec.Code, ct, rec.Body.String())
			return
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Errorf("%s: status %d, body is not JSON: %q", what, rec.Code, rec.Body.String())
		}
		if rec.Code >= 400 && !isJSONError(rec.Body.Bytes()) {
			t.Errorf("%s: status %d, body %q; want {\"error\":\"...\"}", what, rec.Code, rec.Body.String())
		}
	})
}

// TestHTTPLimits checks the limits of the pages through a real server
// (web.NewHTTPServer, as the worker runs it), since the header limit is the
// server's.
func TestHTTPLimits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := web.NewHTTPServer(handler(t))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "http://" + ln.Addr().String()
	client := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	for _, tc := range []struct {
		name     string
		method   string
		path     string
		header   string // an extra header's value (X-Big)
		want     int
		wantJSON bool
		check    func(*http.Response) error
	}{
		{name: "page of 1025 bytes", method: "GET", path: "/count/?page=/" + strings.Repeat("a", 1024), want: 400, wantJSON: true},
		{name: "page of exactly 1024 bytes", method: "GET", path: "/count/?page=/" + strings.Repeat("a", 1023), want: 200, wantJSON: true},
		{name: "reserved page", method: "GET", path: "/count/?page=/_pageviews/livecheck", want: 400, wantJSON: true},
		{name: "reserved prefix, escaped", method: "GET", path: "/count/?page=%2F_pageviews%2Fx", want: 400, wantJSON: true},
		{name: "a page that only looks reserved", method: "GET", path: "/count/?page=/_pageviews", want: 200, wantJSON: true},
		{name: "report of a page over the limit", method: "GET", path: "/report/?page=/" + strings.Repeat("a", 1024), want: 400, wantJSON: true},
		{name: "POST /count/", method: "POST", path: "/count/", want: 405, wantJSON: true, check: func(r *http.Response) error {
			if !strings.Contains(r.Header.Get("Allow"), "GET") {
				return fmt.Errorf("Allow is %q", r.Header.Get("Allow"))
			}
			return nil
		}},
		{name: "DELETE /report/", method: "DELETE", path: "/report/", want: 405, wantJSON: true},
		{name: "unknown path", method: "GET", path: "/no/such/page", want: 404, wantJSON: true},
		{name: "oversize header", method: "GET", path: "/", header: strings.Repeat("x", 64<<10), want: 431},
		{name: "header just under the limit", method: "GET", path: "/", header: strings.Repeat("x", 8<<10), want: 200, wantJSON: true},
		// The 405 page says HEAD is allowed on every route (Allow: GET, HEAD).
		{name: "HEAD /live", method: "HEAD", path: "/live", want: 200, wantJSON: true},
		{name: "HEAD /ready", method: "HEAD", path: "/ready", want: 200, wantJSON: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.header != "" {
				req.Header.Set("X-Big", tc.header)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s: status %d %q, want %d", tc.method, trim(tc.path), resp.StatusCode, trim(string(body)), tc.want)
			}
			if tc.wantJSON {
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("Content-Type %q, want JSON", ct)
				}
				if tc.method != "HEAD" && !json.Valid(body) {
					t.Errorf("body %q is not JSON", body)
				}
				if tc.method != "HEAD" && resp.StatusCode >= 400 && !isJSONError(body) {
					t.Errorf("body %q is not {\"error\":\"...\"}", body)
				}
			}
			if tc.check != nil {
				if err := tc.check(resp); err != nil {
					t.Error(err)
				}
			}
		})
	}
}
