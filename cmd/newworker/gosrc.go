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

	"golang.org/x/mod/modfile"
)

// An edit replaces src[start:end] of a Go file with text, which the
// renamer does not touch again.
type edit struct {
	start, end int
	text       string
}

// settingSites says where a setting's default lives in Go, found in the
// non-test files: the directories, the struct fields it is assigned to and
// the type of the struct literal (config.Load: Partitions: int32(r.integer(
// "PARTITIONS", 8, ...)) inside &Config{...}). The tests in the same
// directories check those defaults, so they are changed with them.
type settingSites struct {
	dirs, fields, types map[string]bool
	found               []string // file:line of each default found
}

// goRewriter rewrites Go sources and go.mod files of the template.
type goRewriter struct {
	oldMod, newMod string
	r              *renamer
	settings       []Variable        // kind setting, with their new values in answers
	answers        map[string]string // by variable name
	sites          map[string]*settingSites
	// tableDirs are the directories whose non-test code names a table
	// with a quoted literal of the template ("views"): the worker's
	// wiring. Quoted table names are renamed in their Go files only.
	tableDirs map[string]bool
	warn      func(format string, args ...any)
}

// scan finds, in one non-test Go file, the defaults of the settings and
// whether it names a table.
func (g *goRewriter) scan(rel string, src []byte) error {
	if _, err := g.settingEdits(rel, src, true); err != nil {
		return err
	}
	if g.r.Rename(string(src)) != g.r.renameRange(string(src), 0, len(src), false) {
		if g.tableDirs == nil {
			g.tableDirs = map[string]bool{}
		}
		g.tableDirs[path.Dir(rel)] = true
	}
	return nil
}

// settingEdits finds in a non-test file the defaults of the settings: in
// calls that take a setting's name and then its default
// (r.duration("PARTITIONS", 8, ...)) and in window declarations
// (app.Window{Var: "WINDOW", Size: time.Minute, ...}); it records where
// they are and returns the edits to the new defaults.
func (g *goRewriter) settingEdits(rel string, src []byte, record bool) ([]edit, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var edits []edit
	var stack []ast.Node
	ast.Inspect(f, func(n ast.Node) bool {
		if n == nil {
			stack = stack[:len(stack)-1]
			return true
		}
		stack = append(stack, n)
		for _, d := range declaredDefaults(n) {
			edits = append(edits, g.defaultEdit(rel, fset, src, d.name, d.value, nil, record)...)
		}
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) < 2 {
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		name, _ := strconv.Unquote(lit.Value)
		edits = append(edits, g.defaultEdit(rel, fset, src, name, call.Args[1], stack, record)...)
		return true
	})
	return edits, nil
}

// declared is a setting's default written in a declaration rather than
// passed to a reader.
type declared struct {
	name  string
	value ast.Expr
}

// declaredDefaults finds the defaults of a window declaration
// (app.Window{Var: "WINDOW", Size: time.Minute, Expires: ...}): the
// settings <Var>_SIZE and <Var>_EXPIRES.
func declaredDefaults(n ast.Node) []declared {
	cl, ok := n.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	fields := map[string]ast.Expr{}
	for _, e := range cl.Elts {
		if kv, ok := e.(*ast.KeyValueExpr); ok {
			if id, ok := kv.Key.(*ast.Ident); ok {
				fields[id.Name] = kv.Value
			}
		}
	}
	lit, ok := fields["Var"].(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return nil
	}
	prefix, _ := strconv.Unquote(lit.Value)
	var out []declared
	for _, f := range []string{"Size", "Expires"} {
		if v, ok := fields[f]; ok {
			out = append(out, declared{prefix + "_" + strings.ToUpper(f), v})
		}
	}
	return out
}

// defaultEdit returns the edit of the default value of the setting name,
// if the template declares it; stack (the nodes above a reader's call)
// tells which config fields hold it.
func (g *goRewriter) defaultEdit(rel string, fset *token.FileSet, src []byte, name string, value ast.Expr, stack []ast.Node, record bool) []edit {
	var edits []edit
	for _, v := range g.settings {
		if v.Env != name {
			continue
		}
		pos := fset.Position(value.Pos())
		where := fmt.Sprintf("%s:%d", rel, pos.Line)
		if !sameValue(v, value, v.Default) {
			if !record {
				continue
			}
			g.warn("%s: the default of %s is %s, but %s says %s: left as it is", where, v.Env, exprText(fset, src, value), templateFile, v.Default)
			continue
		}
		if record {
			s := g.site(v.Env)
			s.found = append(s.found, where)
			s.dirs[path.Dir(rel)] = true
			for i := len(stack) - 1; i >= 0; i-- {
				if kv, ok := stack[i].(*ast.KeyValueExpr); ok {
					if id, ok := kv.Key.(*ast.Ident); ok {
						s.fields[id.Name] = true
					}
					for j := i - 1; j >= 0; j-- {
						if cl, ok := stack[j].(*ast.CompositeLit); ok {
							s.types[typeName(cl.Type)] = true
							break
						}
					}
					break
				}
			}
		}
		if to := g.answers[v.Name]; to != v.Default {
			edits = append(edits, edit{offset(fset, value.Pos()), offset(fset, value.End()), goValue(v, to)})
		}
	}
	return edits
}

func (g *goRewriter) site(env string) *settingSites {
	if g.sites == nil {
		g.sites = map[string]*settingSites{}
	}
	s := g.sites[env]
	if s == nil {
		s = &settingSites{dirs: map[string]bool{}, fields: map[string]bool{}, types: map[string]bool{}}
		g.sites[env] = s
	}
	return s
}

// testSettingEdits changes, in a test file next to the defaults, what
// checks them: a struct literal of the config's type naming the field with
// the old default (Partitions: 8), and the default as the config logs it
// ("config.window_size=1m0s").
func (g *goRewriter) testSettingEdits(rel string, fset *token.FileSet, f *ast.File) []edit {
	var edits []edit
	for _, v := range g.settings {
		to := g.answers[v.Name]
		s := g.sites[v.Env]
		if to == v.Default || s == nil || !s.dirs[path.Dir(rel)] {
			continue
		}
		logged := strings.ToLower(v.Env) + "=" + loggedValue(v, v.Default)
		newLogged := strings.ToLower(v.Env) + "=" + loggedValue(v, to)
		// A duration printed as time.Duration prints it (5m0s) is the
		// default where it stands alone in those tests; a bare 5m or 8
		// could be any input.
		alone := ""
		if v.Type == "duration" {
			alone = strconv.Quote(loggedValue(v, v.Default))
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if !s.types[typeName(n.Type)] {
					return true
				}
				for _, elt := range n.Elts {
					kv, ok := elt.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					if id, ok := kv.Key.(*ast.Ident); ok && s.fields[id.Name] && sameValue(v, kv.Value, v.Default) {
						edits = append(edits, edit{offset(fset, kv.Value.Pos()), offset(fset, kv.Value.End()), goValue(v, to)})
					}
				}
			case *ast.BasicLit:
				if n.Kind != token.STRING {
					return true
				}
				if alone != "" && n.Value == alone {
					edits = append(edits, edit{offset(fset, n.Pos()), offset(fset, n.End()), strconv.Quote(loggedValue(v, to))})
					return true
				}
				if i := strings.Index(n.Value, logged); i >= 0 {
					if j := i + len(logged); j < len(n.Value) && isAlnum(n.Value[j]) {
						return true
					}
					text := n.Value[:i] + newLogged + n.Value[i+len(logged):]
					edits = append(edits, edit{offset(fset, n.Pos()), offset(fset, n.End()), text})
				}
			}
			return true
		})
	}
	return edits
}

// rewriteGo rewrites one Go file: the module path in its imports (through
// the parser, as gonew does), the setting defaults, then every other
// rename on the rest of the text; and formats the result.
func (g *goRewriter) rewriteGo(rel string, src []byte) ([]byte, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, src, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var edits []edit
	for _, spec := range f.Imports {
		p, err := strconv.Unquote(spec.Path.Value)
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(p, g.oldMod); ok && (rest == "" || rest[0] == '/') {
			edits = append(edits, edit{offset(fset, spec.Path.Pos()), offset(fset, spec.Path.End()), strconv.Quote(g.newMod + rest)})
		}
	}
	if strings.HasSuffix(rel, "_test.go") {
		edits = append(edits, g.testSettingEdits(rel, fset, f)...)
	} else {
		more, err := g.settingEdits(rel, src, false)
		if err != nil {
			return nil, err
		}
		edits = append(edits, more...)
	}
	out := applyEdits(string(src), edits, g.r, g.tableDirs[path.Dir(rel)])
	formatted, err := format.Source([]byte(out))
	if err != nil {
		return nil, fmt.Errorf("the renamed file does not parse: %w", err)
	}
	return formatted, nil
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

// rewriteGoMod rewrites a go.mod file through its parser: every module
// path of the template (the module line, and require and replace lines of
// nested modules that point at it) becomes the new one; comments are
// renamed like any text.
func (g *goRewriter) rewriteGoMod(rel string, src []byte) ([]byte, error) {
	f, err := modfile.Parse(rel, src, nil)
	if err != nil {
		return nil, err
	}
	fix := func(tok string) string {
		p, err := strconv.Unquote(tok)
		if err != nil {
			p = tok
		}
		if rest, ok := strings.CutPrefix(p, g.oldMod); ok && (rest == "" || rest[0] == '/') {
			return modfile.AutoQuote(g.newMod + rest)
		}
		return tok
	}
	comments := func(c *modfile.Comments) {
		for _, list := range [][]modfile.Comment{c.Before, c.Suffix, c.After} {
			for i := range list {
				list[i].Token = g.r.Rename(list[i].Token)
			}
		}
	}
	for _, stmt := range f.Syntax.Stmt {
		comments(stmt.Comment())
		switch x := stmt.(type) {
		case *modfile.Line:
			for i := range x.Token {
				x.Token[i] = fix(x.Token[i])
			}
		case *modfile.LineBlock:
			for i := range x.Token {
				x.Token[i] = fix(x.Token[i])
			}
			for _, l := range x.Line {
				comments(l.Comment())
				for i := range l.Token {
					l.Token[i] = fix(l.Token[i])
				}
			}
		}
	}
	out := modfile.Format(f.Syntax)
	if _, err := modfile.Parse(rel, out, nil); err != nil {
		return nil, fmt.Errorf("the rewritten go.mod does not parse: %w", err)
	}
	return out, nil
}

func offset(fset *token.FileSet, p token.Pos) int { return fset.Position(p).Offset }

func exprText(fset *token.FileSet, src []byte, e ast.Expr) string {
	return string(src[offset(fset, e.Pos()):offset(fset, e.End())])
}

// typeName is the name of a struct literal's type: Config for Config{},
// &config.Config{} and config.Config{}.
func typeName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.Ident:
		return t.Name
	case *ast.SelectorExpr:
		return t.Sel.Name
	}
	return ""
}

// sameValue reports whether the Go expression e is the setting value s.
func sameValue(v Variable, e ast.Expr, s string) bool {
	switch v.Type {
	case "duration":
		want, err := time.ParseDuration(s)
		got, ok := evalDuration(e)
		return err == nil && ok && got == want
	case "int":
		want, err := strconv.ParseInt(s, 10, 64)
		lit, ok := e.(*ast.BasicLit)
		if !ok || lit.Kind != token.INT || err != nil {
			return false
		}
		got, err := strconv.ParseInt(lit.Value, 0, 64)
		return err == nil && got == want
	}
	return false
}

// evalDuration evaluates the constant duration expressions a config uses:
// time.Minute, 5 * time.Minute, 5*time.Minute, (time.Minute).
func evalDuration(e ast.Expr) (time.Duration, bool) {
	switch x := e.(type) {
	case *ast.ParenExpr:
		return evalDuration(x.X)
	case *ast.BasicLit:
		if x.Kind != token.INT {
			return 0, false
		}
		n, err := strconv.ParseInt(x.Value, 0, 64)
		return time.Duration(n), err == nil
	case *ast.SelectorExpr:
		if pkg, ok := x.X.(*ast.Ident); !ok || pkg.Name != "time" {
			return 0, false
		}
		units := map[string]time.Duration{"Nanosecond": time.Nanosecond, "Microsecond": time.Microsecond,
			"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute, "Hour": time.Hour}
		d, ok := units[x.Sel.Name]
		return d, ok
	case *ast.BinaryExpr:
		if x.Op != token.MUL {
			return 0, false
		}
		a, ok1 := evalDuration(x.X)
		b, ok2 := evalDuration(x.Y)
		return a * b, ok1 && ok2
	}
	return 0, false
}

// goValue is a setting value as a Go expression.
func goValue(v Variable, s string) string {
	if v.Type == "duration" {
		d, _ := time.ParseDuration(s)
		return goDuration(d)
	}
	return s
}

// loggedValue is a setting value as slog prints it: 1m0s, 8.
func loggedValue(v Variable, s string) string {
	if v.Type == "duration" {
		d, _ := time.ParseDuration(s)
		return d.String()
	}
	return s
}
