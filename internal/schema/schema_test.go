package schema_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/gofaust/pageviews/internal/schema"
	"github.com/gofaust/pageviews/internal/stream"
)

// view is a record of the tests' v1 schema.
type view struct {
	Page  string `json:"page" avro:"page"`
	Count int64  `json:"count" avro:"count"`
}

const v1 = `{"type":"record","name":"View","namespace":"test","fields":[
	{"name":"page","type":"string"},
	{"name":"count","type":"long","default":0}]}`

// v2 adds an optional field: v1 readers still read it.
const v2 = `{"type":"record","name":"View","namespace":"test","fields":[
	{"name":"page","type":"string"},
	{"name":"count","type":"long","default":0},
	{"name":"referrer","type":["null","string"],"default":null}]}`

// v3 makes the page a number: v1 readers cannot read it.
const v3 = `{"type":"record","name":"View","namespace":"test","fields":[
	{"name":"page","type":"int"},
	{"name":"count","type":"long","default":0}]}`

type viewV2 struct {
	Page     string  `avro:"page"`
	Count    int64   `avro:"count"`
	Referrer *string `avro:"referrer"`
}

func newCodec() *schema.Codec[view] {
	return schema.NewCodec(v1, func(v view) ([]byte, error) { return json.Marshal(v) },
		func(b []byte) (v view, err error) { err = json.Unmarshal(b, &v); return v, err })
}

// serve runs the registry on a loopback listener of its own; the returned
// function stops serving (the registry keeps its state).
func serve(t *testing.T, fake *srfake.Registry, addr string) (url string, stop func()) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the address may still be closing
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake.Handler(), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	stop = func() { _ = srv.Close() }
	t.Cleanup(stop)
	return "http://" + ln.Addr().String(), stop
}

func connect(t *testing.T, o schema.Options) *schema.Registry {
	t.Helper()
	o.Timeout = 2 * time.Second
	reg, err := schema.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// bound is a codec bound to a registry served for the test, under the
// subject views-value.
type bound struct {
	fake *srfake.Registry
	url  string
	stop func() // stops serving
	reg  *schema.Registry
	c    *schema.Codec[view]
	b    schema.Binding
}

func newBound(t *testing.T) *bound {
	t.Helper()
	x := &bound{fake: srfake.NewRegistry(), c: newCodec()}
	x.url, x.stop = serve(t, x.fake, "127.0.0.1:0")
	x.reg = connect(t, schema.Options{URL: x.url})
	var err error
	if x.b, err = x.c.Bind(context.Background(), x.reg, "views-value"); err != nil {
		t.Fatal(err)
	}
	return x
}

// frame is a registry-framed record of id.
func frame(id int, body []byte) []byte {
	b := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(b[1:], uint32(id))
	return append(b, body...)
}

func TestUnboundIsJSON(t *testing.T) {
	c := newCodec()
	b, err := c.Encode(view{Page: "/a", Count: 3})
	if err != nil || string(b) != `{"page":"/a","count":3}` {
		t.Fatalf("Encode = %s, %v; want the JSON", b, err)
	}
	if v, err := c.Decode(b); err != nil || v != (view{Page: "/a", Count: 3}) {
		t.Fatalf("Decode(JSON) = %+v, %v", v, err)
	}
	if _, err := c.Decode(frame(1, []byte{2, 'x'})); !errors.Is(err, stream.ErrInvalid) {
		t.Fatalf("a framed record without a registry: %v, want ErrInvalid", err)
	}
}

func TestBindRegistersThenFramesAndCaches(t *testing.T) {
	fake := srfake.NewRegistry()
	url, _ := serve(t, fake, "127.0.0.1:0")
	reg := connect(t, schema.Options{URL: url})
	c := newCodec()
	b, err := c.Bind(context.Background(), reg, "views-value")
	if err != nil {
		t.Fatal(err)
	}
	if !b.Registered || b.Version != 1 || b.Latest != 0 {
		t.Fatalf("Bind = %+v, want the schema registered as version 1 of a new subject", b)
	}
	if again, err := newCodec().Bind(context.Background(), reg, "views-value"); err != nil || again.Registered || again.ID != b.ID {
		t.Fatalf("a second Bind = %+v, %v; want the same id, not registered again", again, err)
	}
	rec, err := c.Encode(view{Page: "/b", Count: 7})
	if err != nil {
		t.Fatal(err)
	}
	if rec[0] != 0 || int(binary.BigEndian.Uint32(rec[1:5])) != b.ID {
		t.Fatalf("Encode = % x, want magic byte 0 and id %d", rec[:5], b.ID)
	}
	for range 3 {
		if v, err := c.Decode(rec); err != nil || v != (view{Page: "/b", Count: 7}) {
			t.Fatalf("Decode(framed) = %+v, %v", v, err)
		}
	}
	if v, err := c.Decode([]byte(`{"page":"/json","count":1}`)); err != nil || v.Page != "/json" {
		t.Fatalf("a bound codec reads JSON too: %+v, %v", v, err)
	}
	st := reg.Stats()
	if st.Lookups != 1 || st.Hits != 2 || st.Records[b.ID] != 3 || st.Failures != 0 {
		t.Fatalf("Stats = %+v, want 1 lookup, 2 cache hits, 3 records of id %d", st, b.ID)
	}
}

func TestReadsANewerWriterByResolution(t *testing.T) {
	x := newBound(t)
	c := x.c
	id2, _, err := x.fake.RegisterSchema("views-value", sr.Schema{Schema: v2, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	ref := "/from"
	body, err := avro.Marshal(avro.MustParse(v2), viewV2{Page: "/c", Count: 9, Referrer: &ref})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Decode(frame(id2, body)); err != nil || v != (view{Page: "/c", Count: 9}) {
		t.Fatalf("Decode(v2 record) with the v1 codec = %+v, %v", v, err)
	}
}

func TestRecordsThatCanNeverBeReadAreInvalid(t *testing.T) {
	x := newBound(t)
	c, reg, b, fake := x.c, x.reg, x.b, x.fake
	for range 3 {
		_, err := c.Decode(frame(9999, []byte{2, 'x', 0}))
		if !errors.Is(err, stream.ErrInvalid) || !errors.Is(err, schema.ErrUnknownSchema) {
			t.Fatalf("unknown id: %v, want ErrInvalid and ErrUnknownSchema", err)
		}
	}
	if n := reg.Stats().Lookups; n != 1 {
		t.Errorf("an unknown id was looked up %d times, want once (remembered for a while)", n)
	}
	for _, body := range [][]byte{{}, {8, '/'}} { // empty; a string cut short
		if _, err := c.Decode(frame(b.ID, body)); !errors.Is(err, stream.ErrInvalid) {
			t.Errorf("body % x: %v, want ErrInvalid", body, err)
		}
	}
	if _, err := c.Decode([]byte{0, 0, 1}); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("a header cut short: %v, want ErrInvalid", err)
	}
	id3, _, err := fake.RegisterSchema("other-value", sr.Schema{Schema: v3, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decode(frame(id3, []byte{2})); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("a writer schema the codec cannot read: %v, want ErrInvalid", err)
	}
}

func TestUnreachableRegistryIsUnavailableUntilItReturns(t *testing.T) {
	x := newBound(t)
	c, reg, fake, url, stop := x.c, x.reg, x.fake, x.url, x.stop
	id2, _, err := fake.RegisterSchema("views-value", sr.Schema{Schema: v2, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := avro.Marshal(avro.MustParse(v2), viewV2{Page: "/d"})
	stop()
	_, err = c.Decode(frame(id2, body))
	if !errors.Is(err, stream.ErrUnavailable) || errors.Is(err, stream.ErrInvalid) || !strings.Contains(err.Error(), url) {
		t.Fatalf("registry down: %v, want ErrUnavailable naming %s", err, url)
	}
	serve(t, fake, strings.TrimPrefix(url, "http://"))
	if v, err := c.Decode(frame(id2, body)); err != nil || v.Page != "/d" {
		t.Fatalf("registry back: %+v, %v", v, err)
	}
	if st := reg.Stats(); st.Failures != 1 || st.Lookups != 2 {
		t.Errorf("Stats = %+v, want 2 lookups of which 1 failed", st)
	}
}

func TestBindRefusesAnIncompatibleLatestVersion(t *testing.T) {
	fake := srfake.NewRegistry()
	url, _ := serve(t, fake, "127.0.0.1:0")
	if _, _, err := fake.RegisterSchema("views-value", sr.Schema{Schema: v1, Type: sr.TypeAvro}); err != nil {
		t.Fatal(err)
	}
	id3, _, err := fake.RegisterSchema("views-value", sr.Schema{Schema: v3, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	_, err = newCodec().Bind(context.Background(), connect(t, schema.Options{URL: url}), "views-value")
	var inc *schema.IncompatibleError
	if !errors.As(err, &inc) {
		t.Fatalf("Bind = %v, want an *IncompatibleError", err)
	}
	if inc.Own != 1 || inc.Latest != 2 || inc.LatestID != id3 || inc.Subject != "views-value" {
		t.Errorf("IncompatibleError = %+v, want own version 1, latest 2 (id %d)", inc, id3)
	}
	msg := err.Error()
	for _, want := range []string{"views-value", "version 1", "version 2", "test.View", "page"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the message %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("the message is more than one line: %q", msg)
	}
}

func TestBasicAuthOverTLSWithACAFile(t *testing.T) {
	const user, password = "key", "s3cret-password"
	fake := srfake.NewRegistry(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))))
	srv := httptest.NewTLSServer(fake.Handler())
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := connect(t, schema.Options{URL: srv.URL, Username: user, Password: password, CAFile: ca})
	if _, err := newCodec().Bind(context.Background(), ok, "views-value"); err != nil {
		t.Fatalf("with the credentials and the CA: %v", err)
	}
	_, err := newCodec().Bind(context.Background(), connect(t, schema.Options{URL: srv.URL, Username: user, Password: "wrong", CAFile: ca}), "views-value")
	if err == nil || strings.Contains(err.Error(), "wrong") {
		t.Errorf("a wrong password: %v, want an error that does not show it", err)
	}
	if _, err := newCodec().Bind(context.Background(), connect(t, schema.Options{URL: srv.URL, Username: user, Password: password}), "views-value"); err == nil {
		t.Error("without the CA the registry's certificate was trusted")
	}
}
