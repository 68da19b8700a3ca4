// Command k8sschema writes the JSON schemas kubeconform validates Kubernetes
// manifests against, offline: it reads the OpenAPI (Swagger 2.0) spec that
// the k8s.io/kubernetes module ships in api/openapi-spec/swagger.json, taken
// from the Go module cache (`go mod download` fetches it through the module
// proxy once), and writes one standalone schema per kind.
//
// The layout is the one kubeconform's default -schema-location template
// expects under a local directory:
//
//	<out>/v<version>-standalone-strict/<kind>-<group>-<version>.json   (-strict)
//	<out>/v<version>-standalone/<kind>-<group>-<version>.json
//
// where <group> is the first label of the API group ("apps", "policy",
// "networking") and is left out for the core group ("service-v1.json").
// "Standalone" means that every $ref points inside the file itself: the
// definitions a kind needs are copied under "definitions", which also keeps
// recursive types (JSONSchemaProps) finite. The strict variant forbids
// properties the API does not define, which is what catches a misspelt or
// misplaced field in a chart.
//
// Usage (kubeconform -kubernetes-version takes the version without the "v"):
//
//	go run ./k8sschema -version v1.37.2 -out ../.cache/k8s-schemas
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

func main() {
	version := flag.String("version", "", "k8s.io/kubernetes module version whose OpenAPI spec to use, such as v1.37.2")
	spec := flag.String("spec", "", "path of a swagger.json to read instead of the module's (for tests)")
	out := flag.String("out", ".cache/k8s-schemas", "directory to write the schema directories into")
	flag.Parse()
	if err := run(*version, *spec, *out); err != nil {
		fmt.Fprintln(os.Stderr, "k8sschema:", err)
		os.Exit(1)
	}
}

func run(version, spec, out string) error {
	if !regexp.MustCompile(`^v1\.[0-9]+\.[0-9]+$`).MatchString(version) {
		return fmt.Errorf("-version=%q: want a k8s.io/kubernetes release such as v1.37.2", version)
	}
	if spec == "" {
		dir, err := moduleDir("k8s.io/kubernetes@" + version)
		if err != nil {
			return err
		}
		spec = filepath.Join(dir, "api", "openapi-spec", "swagger.json")
	}
	raw, err := os.ReadFile(spec)
	if err != nil {
		return err
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep integers (minimums, defaults) exactly as written
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("decode %s: %w", spec, err)
	}
	if len(doc.Definitions) == 0 {
		return fmt.Errorf("%s has no definitions", spec)
	}

	n := 0
	for _, strict := range []bool{true, false} {
		dir := filepath.Join(out, version+"-standalone")
		if strict {
			dir += "-strict"
		}
		// Write into a fresh directory and rename it into place, so that an
		// interrupted run never leaves a half-written schema set behind.
		tmp := dir + ".tmp"
		if err := os.RemoveAll(tmp); err != nil {
			return err
		}
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			return err
		}
		c := converter{defs: doc.Definitions, strict: strict}
		written := map[string]string{}
		for _, name := range sortedKeys(doc.Definitions) {
			for _, gvk := range groupVersionKinds(doc.Definitions[name]) {
				file := gvk.fileName()
				if prev, ok := written[file]; ok && prev != name {
					// Two definitions for one kind and version: keep the
					// first in name order, so the result is reproducible.
					continue
				}
				schema, err := c.standalone(name, gvk)
				if err != nil {
					return err
				}
				b, err := json.Marshal(schema)
				if err != nil {
					return fmt.Errorf("encode %s: %w", file, err)
				}
				if err := os.WriteFile(filepath.Join(tmp, file), append(b, '\n'), 0o644); err != nil {
					return err
				}
				written[file] = name
			}
		}
		if len(written) == 0 {
			return errors.New("no definition carries x-kubernetes-group-version-kind")
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		n = len(written)
	}
	fmt.Printf("k8sschema: %d kinds from k8s.io/kubernetes@%s into %s\n", n, version, out)
	return nil
}

// moduleDir downloads a module into the module cache (a no-op when it is
// there) and returns its directory. It runs in an empty directory so that no
// go.mod is consulted or changed.
func moduleDir(modVersion string) (string, error) {
	tmp, err := os.MkdirTemp("", "k8sschema")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "mod", "download", "-json", modVersion)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(outb, &info); jerr == nil && info.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", modVersion, info.Error)
	}
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w: %s", modVersion, err, stderr.String())
	}
	if info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory in %q", modVersion, outb)
	}
	return info.Dir, nil
}

type gvk struct{ Group, Version, Kind string }

// fileName follows kubeconform's template: lower-case kind, the first label
// of the group (none for the core group), the version.
func (g gvk) fileName() string {
	name := strings.ToLower(g.Kind)
	if g.Group != "" {
		name += "-" + strings.ToLower(strings.Split(g.Group, ".")[0])
	}
	return name + "-" + strings.ToLower(g.Version) + ".json"
}

func (g gvk) apiVersion() string {
	if g.Group == "" {
		return g.Version
	}
	return g.Group + "/" + g.Version
}

func groupVersionKinds(def map[string]any) []gvk {
	list, _ := def["x-kubernetes-group-version-kind"].([]any)
	var out []gvk
	for _, item := range list {
		m, _ := item.(map[string]any)
		g, _ := m["group"].(string)
		v, _ := m["version"].(string)
		k, _ := m["kind"].(string)
		if v != "" && k != "" {
			out = append(out, gvk{g, v, k})
		}
	}
	return out
}

// converter turns Swagger 2.0 definitions into JSON Schema draft 4, the
// draft kubeconform compiles schemas with.
type converter struct {
	defs   map[string]map[string]any
	strict bool
}

const refPrefix = "#/definitions/"

// Types whose OpenAPI form is a string but which manifests also write as
// numbers: resource quantities (cpu: 1) and int-or-string fields (port: 8088).
const (
	quantityDef = "io.k8s.apimachinery.pkg.api.resource.Quantity"
)

// standalone is the schema of one kind: the definition's own keywords at the
// top, with apiVersion and kind pinned, and every definition it reaches
// under "definitions".
func (c converter) standalone(name string, g gvk) (map[string]any, error) {
	root, err := c.schema(c.defs[name], name)
	if err != nil {
		return nil, err
	}
	rm := root.(map[string]any)
	if props, ok := rm["properties"].(map[string]any); ok {
		props["apiVersion"] = map[string]any{"type": "string", "enum": []any{g.apiVersion()}}
		props["kind"] = map[string]any{"type": "string", "enum": []any{g.Kind}}
	}
	defs := map[string]any{}
	queue := refs(rm, nil)
	for len(queue) > 0 {
		ref := queue[0]
		queue = queue[1:]
		if _, done := defs[ref]; done {
			continue
		}
		def, ok := c.defs[ref]
		if !ok {
			return nil, fmt.Errorf("%s: $ref to missing definition %s", name, ref)
		}
		conv, err := c.schema(def, ref)
		if err != nil {
			return nil, err
		}
		defs[ref] = conv
		queue = append(queue, refs(conv, nil)...)
	}
	if len(defs) > 0 {
		rm["definitions"] = defs
	}
	return rm, nil
}

// schema converts one schema node and everything below it.
func (c converter) schema(node any, where string) (any, error) {
	m, ok := node.(map[string]any)
	if !ok {
		return node, nil // true/false schemas and the like
	}
	if f, _ := m["format"].(string); f == "int-or-string" {
		return map[string]any{"oneOf": []any{
			map[string]any{"type": "string"},
			map[string]any{"type": "integer"},
		}}, nil
	}
	if where == quantityDef {
		return map[string]any{"oneOf": []any{
			map[string]any{"type": "string"},
			map[string]any{"type": "number"},
		}}, nil
	}
	out := map[string]any{}
	for k, v := range m {
		switch {
		case k == "description" || strings.HasPrefix(k, "x-"):
			// Documentation and Kubernetes extensions validate nothing.
		case k == "properties":
			props, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s: properties is %T", where, v)
			}
			cp := make(map[string]any, len(props))
			for p, s := range props {
				conv, err := c.schema(s, where+"."+p)
				if err != nil {
					return nil, err
				}
				cp[p] = conv
			}
			out[k] = cp
		case k == "items" || k == "additionalProperties" || k == "not":
			conv, err := c.schema(v, where+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = conv
		case k == "allOf" || k == "anyOf" || k == "oneOf":
			list, ok := v.([]any)
			if !ok {
				return nil, fmt.Errorf("%s: %s is %T", where, k, v)
			}
			cl := make([]any, len(list))
			for i, s := range list {
				conv, err := c.schema(s, where+"."+k)
				if err != nil {
					return nil, err
				}
				cl[i] = conv
			}
			out[k] = cl
		case k == "$ref":
			ref, _ := v.(string)
			if !strings.HasPrefix(ref, refPrefix) {
				return nil, fmt.Errorf("%s: $ref %q is not a local definition", where, ref)
			}
			out[k] = ref
		default:
			out[k] = v
		}
	}
	if c.strict {
		if _, has := out["properties"]; has {
			if _, set := out["additionalProperties"]; !set {
				out["additionalProperties"] = false
			}
		}
	}
	return out, nil
}

// refs lists the definition names a converted schema refers to.
func refs(node any, acc []string) []string {
	switch n := node.(type) {
	case map[string]any:
		for k, v := range n {
			if k == "$ref" {
				if s, ok := v.(string); ok {
					acc = append(acc, strings.TrimPrefix(s, refPrefix))
				}
				continue
			}
			if k == "definitions" {
				continue
			}
			acc = refs(v, acc)
		}
	case []any:
		for _, v := range n {
			acc = refs(v, acc)
		}
	}
	return acc
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
