package main

import (
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// An edit replaces src[start:end] of a Go file with text, which the
// renamer does not touch again.
type edit struct {
	start, end int
	text       string
}

// goRewriter renames Go files: as text, but for the settings' defaults,
// which the parser finds where they are declared. A directory's non-test
// files must come before its tests, which follow what those name.
type goRewriter struct {
	r        *renamer
	settings map[string]Variable // kind setting, by environment variable
	answers  map[string]string
	found    map[string]bool // the settings whose default was found
	// fields are, by directory, the struct fields that a reader of a
	// setting fills (Partitions: int32(r.integer("PARTITIONS", 8, ...))):
	// the tests there expect the default in them.
	fields map[string]map[string]Variable
	// tableDirs are the directories whose non-test code names a table
	// ("views"): the worker's declaration. Tests elsewhere use "views" as
	// any name, so only the tests there rename it.
	tableDirs map[string]bool
}

// newGoRewriter prepares the Go rewrites of the template's settings.
func newGoRewriter(t *Template, r *renamer, answers map[string]string) *goRewriter {
	g := &goRewriter{r: r, answers: answers, settings: map[string]Variable{}, found: map[string]bool{},
		fields: map[string]map[string]Variable{}, tableDirs: map[string]bool{}}
	for _, v := range t.Variables {
		if v.Kind == kindSetting {
			g.settings[v.Env] = v
		}
	}
	return g
}

// rewriteGo renames one Go file, gives the settings their new defaults
// and formats the result.
func (g *goRewriter) rewriteGo(rel string, src []byte) ([]byte, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	dir, text := path.Dir(rel), string(src)
	var edits []edit
	literals := true
	if strings.HasSuffix(rel, "_test.go") {
		edits = g.testEdits(fset, src, f, g.fields[dir])
		literals = g.tableDirs[dir]
	} else {
		edits = g.defaultEdits(fset, src, f, dir)
		if g.r.Rename(text) != g.r.renameRange(text, 0, len(text), false) {
			g.tableDirs[dir] = true
		}
	}
	formatted, err := format.Source([]byte(applyEdits(text, edits, g.r, literals)))
	if err != nil {
		return nil, fmt.Errorf("the renamed file does not parse: %w", err)
	}
	return formatted, nil
}

// defaultEdits finds the settings' defaults in a non-test file: the
// argument after a setting's name in a reader's call
// (r.integer("PARTITIONS", 8, 1, 10000)), and Size and Expires of a window
// declaration (app.Window{Var: "WINDOW", ...}: WINDOW_SIZE and
// WINDOW_EXPIRES). It notes what it found, and returns the edits.
func (g *goRewriter) defaultEdits(fset *token.FileSet, src []byte, f *ast.File, dir string) []edit {
	var edits []edit
	ast.PreorderStack(f, nil, func(n ast.Node, stack []ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if len(n.Args) < 2 {
				break
			}
			v, ok := g.settings[stringLit(n.Args[0])]
			if ok && g.change(fset, src, v, n.Args[1], &edits) {
				g.found[v.Env] = true
				if field := enclosingField(stack); field != "" {
					if g.fields[dir] == nil {
						g.fields[dir] = map[string]Variable{}
					}
					g.fields[dir][field] = v
				}
			}
		case *ast.CompositeLit:
			elts := map[string]ast.Expr{}
			for _, e := range n.Elts {
				if key, value := keyed(e); value != nil {
					elts[key] = value
				}
			}
			prefix := stringLit(elts["Var"])
			for _, field := range []string{"Size", "Expires"} {
				v, ok := g.settings[prefix+"_"+strings.ToUpper(field)]
				if ok && elts[field] != nil && g.change(fset, src, v, elts[field], &edits) {
					g.found[v.Env] = true
				}
			}
		}
		return true
	})
	return edits
}

// testEdits changes, in a test, the struct fields that hold a setting's
// default (Partitions: 8 in the Config a test expects).
func (g *goRewriter) testEdits(fset *token.FileSet, src []byte, f *ast.File, fields map[string]Variable) []edit {
	var edits []edit
	ast.Inspect(f, func(n ast.Node) bool {
		if key, value := keyed(n); value != nil {
			if v, ok := fields[key]; ok {
				g.change(fset, src, v, value, &edits)
			}
		}
		return true
	})
	return edits
}

// change reports whether value is the default of v, as the generator
// writes it, and adds the edit to the new default when there is one.
func (g *goRewriter) change(fset *token.FileSet, src []byte, v Variable, value ast.Expr, edits *[]edit) bool {
	start, end := fset.Position(value.Pos()).Offset, fset.Position(value.End()).Offset
	if strings.ReplaceAll(string(src[start:end]), " ", "") != strings.ReplaceAll(goValue(v, v.Default), " ", "") {
		return false
	}
	if to := g.answers[v.Name]; to != v.Default {
		*edits = append(*edits, edit{start, end, goValue(v, to)})
	}
	return true
}

// enclosingField is the field whose value holds the innermost node of
// stack, if any.
func enclosingField(stack []ast.Node) string {
	for i := len(stack) - 1; i >= 0; i-- {
		if _, ok := stack[i].(*ast.KeyValueExpr); ok {
			key, _ := keyed(stack[i])
			return key
		}
	}
	return ""
}

// keyed returns the field and the value of a keyed element (Size: d), or
// a nil value.
func keyed(n ast.Node) (string, ast.Expr) {
	if kv, ok := n.(*ast.KeyValueExpr); ok {
		if id, ok := kv.Key.(*ast.Ident); ok {
			return id.Name, kv.Value
		}
	}
	return "", nil
}

// stringLit is the value of a string literal, or "".
func stringLit(e ast.Expr) string {
	if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
		s, _ := strconv.Unquote(lit.Value)
		return s
	}
	return ""
}

// applyEdits applies edits and renames the text between them.
func applyEdits(src string, edits []edit, r *renamer, literals bool) string {
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	var b strings.Builder
	at := 0
	for _, e := range edits {
		if e.start < at {
			continue // overlapping: the first one wins
		}
		b.WriteString(r.renameRange(src, at, e.start, literals))
		b.WriteString(e.text)
		at = e.end
	}
	b.WriteString(r.renameRange(src, at, len(src), literals))
	return b.String()
}

// goValue is a setting value as a Go expression: 8, 30 * time.Second.
func goValue(v Variable, s string) string {
	d, err := time.ParseDuration(s)
	if v.Type != "duration" || err != nil {
		return s
	}
	units := []struct {
		d    time.Duration
		name string
	}{{time.Hour, "time.Hour"}, {time.Minute, "time.Minute"}, {time.Second, "time.Second"}, {time.Millisecond, "time.Millisecond"}}
	for _, u := range units {
		if d%u.d == 0 {
			if n := d / u.d; n != 1 {
				return fmt.Sprintf("%d * %s", n, u.name)
			}
			return u.name
		}
	}
	return strconv.FormatInt(int64(d), 10)
}
