package schema

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hamba/avro/v2"

	"github.com/gofaust/pageviews/internal/jsonscan"
	"github.com/gofaust/pageviews/internal/stream"
)

// Codec reads and writes records of T. Its Avro schema is T's contract:
// the schema it writes with once bound, and the reader schema it resolves
// every writer schema to. T maps to it by hamba/avro's `avro` field tags.
type Codec[T any] struct {
	text       string
	reader     avro.Schema
	encodeJSON func(T) ([]byte, error)
	decodeJSON func([]byte) (T, error)

	bound    atomic.Pointer[binding]
	resolved sync.Map // schema id -> *resolution
	compat   *avro.SchemaCompatibility
}

// binding is a codec bound to a registry.
type binding struct {
	reg    *Registry
	header [5]byte // magic byte 0, then the id of the codec's schema
}

// resolution reads records of one writer schema with the codec's.
type resolution struct {
	schema avro.Schema
	seen   *atomic.Int64
}

// NewCodec declares a codec of T: avroSchema is its Avro schema (JSON
// text; it panics when that does not parse, a declaration bug), and the
// JSON functions are its unbound form, which it also reads when bound; nil
// ones are encoding/json's (and a strict reader's: jsonscan.Unmarshal).
func NewCodec[T any](avroSchema string, encodeJSON func(T) ([]byte, error), decodeJSON func([]byte) (T, error)) *Codec[T] {
	s, err := avro.Parse(avroSchema)
	if err != nil {
		panic(fmt.Sprintf("schema: the declared Avro schema does not parse: %v", err))
	}
	if encodeJSON == nil {
		encodeJSON = func(v T) ([]byte, error) { return json.Marshal(v) }
	}
	if decodeJSON == nil {
		decodeJSON = func(b []byte) (v T, err error) { return v, jsonscan.Unmarshal(b, &v) }
	}
	return &Codec[T]{text: avroSchema, reader: s, encodeJSON: encodeJSON, decodeJSON: decodeJSON, compat: avro.NewSchemaCompatibility()}
}

// Schema is the codec's Avro schema as declared.
func (c *Codec[T]) Schema() string { return c.text }

// Name is the full name of the codec's Avro record (namespace.name).
func (c *Codec[T]) Name() string {
	if n, ok := c.reader.(avro.NamedSchema); ok {
		return n.FullName()
	}
	return string(c.reader.Type())
}

// Encode renders v: registry-framed Avro when the codec is bound, JSON
// otherwise.
func (c *Codec[T]) Encode(v T) ([]byte, error) {
	b := c.bound.Load()
	if b == nil {
		return c.encodeJSON(v)
	}
	body, err := avro.Marshal(c.reader, v)
	if err != nil {
		return nil, fmt.Errorf("encode %s as Avro: %w", c.Name(), err)
	}
	return append(b.header[:], body...), nil
}

// EncodeValue is Encode of a value that must be a T (the runtime's, for
// values an app returns as any).
func (c *Codec[T]) EncodeValue(v any) ([]byte, error) {
	t, ok := v.(T)
	if !ok {
		var want T
		return nil, fmt.Errorf("encode %s: got a %T, want a %T", c.Name(), v, want)
	}
	return c.Encode(t)
}

// Decode reads a record: framed Avro (its first byte 0) by its writer
// schema, anything else as JSON. Errors wrap stream.ErrInvalid, or
// stream.ErrUnavailable while the registry does not answer.
func (c *Codec[T]) Decode(b []byte) (T, error) {
	if len(b) == 0 || b[0] != 0 {
		v, err := c.decodeJSON(b)
		if err != nil && !errors.Is(err, stream.ErrInvalid) {
			err = fmt.Errorf("%w: %w", stream.ErrInvalid, err)
		}
		return v, err
	}
	var v T
	bd := c.bound.Load()
	switch {
	case bd == nil:
		return v, fmt.Errorf("%w: a registry-framed record, and no schema registry is configured (SCHEMA_REGISTRY_URL)", stream.ErrInvalid)
	case len(b) < 5:
		return v, fmt.Errorf("%w: a registry-framed record of %d bytes, shorter than its header", stream.ErrInvalid, len(b))
	}
	id := int(binary.BigEndian.Uint32(b[1:5]))
	res, err := c.resolution(bd.reg, id)
	if err != nil {
		return v, err
	}
	if len(b) == 5 {
		return v, fmt.Errorf("%w: a registry-framed record of schema id %d with no body", stream.ErrInvalid, id)
	}
	if err := avro.Unmarshal(res.schema, b[5:], &v); err != nil {
		return v, fmt.Errorf("%w: the Avro body does not match schema id %d: %w", stream.ErrInvalid, id, err)
	}
	res.seen.Add(1)
	return v, nil
}

// resolution returns how to read writer schema id with the codec's.
func (c *Codec[T]) resolution(reg *Registry, id int) (*resolution, error) {
	if r, ok := c.resolved.Load(id); ok {
		reg.hits.Add(1)
		return r.(*resolution), nil
	}
	w, seen, err := reg.writer(id)
	if err != nil {
		return nil, err
	}
	s, err := c.compat.Resolve(c.reader, w)
	if err != nil {
		return nil, fmt.Errorf("%w: schema id %d cannot be read as %s: %w", stream.ErrInvalid, id, c.Name(), err)
	}
	r := &resolution{schema: s, seen: seen}
	c.resolved.Store(id, r)
	return r, nil
}

// Binding says what Bind found.
type Binding struct {
	Subject string
	// ID and Version are the codec's schema's under the subject.
	ID, Version int
	// Registered: Bind registered the schema (it was not in the subject).
	Registered bool
	// Latest is the subject's latest version before Bind.
	Latest int
}

// IncompatibleError is a codec whose schema cannot read the subject's
// latest version.
type IncompatibleError struct {
	Subject string
	Name    string // the codec's record
	// Own is the codec's schema's version in the subject, 0 when it is
	// not registered there.
	Own              int
	Latest, LatestID int
	Cause            error
}

func (e *IncompatibleError) Error() string {
	own := "this worker's schema (not registered)"
	if e.Own > 0 {
		own = "this worker's schema (version " + strconv.Itoa(e.Own) + ")"
	}
	return fmt.Sprintf("schema: subject %s: %s of %s cannot read version %d (id %d), the latest: %v",
		e.Subject, own, e.Name, e.Latest, e.LatestID, e.Cause)
}

// Bind binds the codec to reg under subject, from now on writing framed
// Avro. It first checks, by Avro's rules and not by the registry's (which
// may not enforce any), that the codec's schema reads the subject's latest
// version (an *IncompatibleError when not), then finds its own schema's id
// there, registering it when the subject does not hold it. Other errors
// are the registry's.
func (c *Codec[T]) Bind(ctx context.Context, reg *Registry, subject string) (Binding, error) {
	bd := Binding{Subject: subject}
	latest, exists, err := reg.latest(ctx, subject)
	if err != nil {
		return bd, err
	}
	own, registered, err := reg.lookup(ctx, subject, c.text)
	if err != nil {
		return bd, err
	}
	if exists {
		bd.Latest = latest.Version
		w, err := avro.Parse(latest.Schema.Schema)
		if err == nil {
			err = c.compat.Compatible(c.reader, w)
		}
		if err != nil {
			if w != nil {
				err = c.explain(c.reader, w, "", err)
			}
			return bd, &IncompatibleError{Subject: subject, Name: c.Name(), Own: own.Version, Latest: latest.Version, LatestID: latest.ID, Cause: err}
		}
	}
	if !registered {
		if own, err = reg.register(ctx, subject, c.text); err != nil {
			return bd, err
		}
		bd.Registered = true
	}
	bd.ID, bd.Version = own.ID, own.Version
	b := &binding{reg: reg}
	binary.BigEndian.PutUint32(b.header[1:], uint32(own.ID))
	c.bound.Store(b)
	return bd, nil
}

// explain finds the first field of reader that cannot read writer's, to
// name it in err; path is the fields above it.
func (c *Codec[T]) explain(reader, writer avro.Schema, path string, err error) error {
	r, ok1 := reader.(*avro.RecordSchema)
	w, ok2 := writer.(*avro.RecordSchema)
	if !ok1 || !ok2 {
		return err
	}
	written := map[string]*avro.Field{}
	for _, f := range w.Fields() {
		written[f.Name()] = f
	}
	for _, f := range r.Fields() {
		name := path + f.Name()
		wf, ok := written[f.Name()]
		if !ok {
			if !f.HasDefault() {
				return fmt.Errorf("field %s: the latest version does not have it, and this worker's schema gives it no default", name)
			}
			continue
		}
		if ferr := c.compat.Compatible(f.Type(), wf.Type()); ferr != nil {
			return c.explain(f.Type(), wf.Type(), name+".", fmt.Errorf("field %s: %w", name, ferr))
		}
	}
	return err
}
