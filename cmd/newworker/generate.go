package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
	"unicode/utf8"
)

// generator copies a template into a new project, renaming as it goes.
type generator struct {
	src, out string // absolute directories
	t        *Template
	answers  map[string]string
	version  string // the template's version, for the README
	warn     func(format string, args ...any)
	// written holds the sha256 of every file generate wrote, by
	// slash-separated path: the record of the bake (.newworker.json).
	written map[string]string

	r  *renamer
	gr *goRewriter
}

// srcFile is one file of the template.
type srcFile struct {
	rel  string // slash-separated, relative to the template's root
	mode fs.FileMode
	link string // the target of a symbolic link
}

func newGenerator(src, out string, t *Template, answers map[string]string, version string, warn func(string, ...any)) *generator {
	g := &generator{src: src, out: out, t: t, answers: answers, version: version, warn: warn, written: map[string]string{}}
	g.r = newRenamer(t, answers)
	g.gr = newGoRewriter(t, g.r, answers)
	return g
}

// files lists the template's files: everything but what template.json
// skips and what its .gitignore files ignore.
func (g *generator) files() ([]srcFile, error) {
	var skip, ig ignorer
	skip.add("", g.t.Skip)
	ig.addFile("", filepath.Join(g.src, ".gitignore"))
	var files []srcFile
	err := filepath.WalkDir(g.src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(g.src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if skip.ignored(rel, d.IsDir()) || ig.ignored(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			ig.addFile(rel, filepath.Join(p, ".gitignore"))
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files = append(files, srcFile{rel: rel, link: target})
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			files = append(files, srcFile{rel: rel, mode: info.Mode()})
		}
		return nil
	})
	return files, err
}

// generate writes the new project.
func (g *generator) generate() error {
	files, err := g.files()
	if err != nil {
		return err
	}
	// The non-test Go files first: the tests beside them follow them.
	sort.SliceStable(files, func(i, j int) bool { return isGoCode(files[i]) && !isGoCode(files[j]) })
	dests := map[string]string{}
	for _, f := range files {
		if f.rel == recordFile {
			continue // a template made from a worker: the new project gets its own record
		}
		to := g.r.RenamePath(f.rel)
		if other, ok := dests[to]; ok {
			return fmt.Errorf("%s and %s would both become %s", other, f.rel, to)
		}
		dests[to] = f.rel
		if err := g.copyFile(f, to); err != nil {
			return fmt.Errorf("%s: %w", f.rel, err)
		}
	}
	for _, v := range g.t.Variables {
		if v.Kind == kindSetting && !g.gr.found[v.Env] {
			g.warn("no Go code takes %s with the default %s (as in %s): set its default by hand", v.Env, v.Default, templateFile)
		}
	}
	if err := g.render(); err != nil {
		return err
	}
	g.checkLeftovers()
	return nil
}

// isGoSource reports whether f is Go to parse: not a link, not testdata.
func isGoSource(f srcFile) bool {
	return f.link == "" && strings.HasSuffix(f.rel, ".go") && !inTestdata(f.rel)
}

// isGoCode reports whether f is Go to parse and not a test.
func isGoCode(f srcFile) bool { return isGoSource(f) && !strings.HasSuffix(f.rel, "_test.go") }

func inTestdata(rel string) bool {
	return strings.HasPrefix(rel, "testdata/") || strings.Contains(rel, "/testdata/")
}

// copyFile writes one file of the template to to, transformed by its kind.
func (g *generator) copyFile(f srcFile, to string) error {
	dst := filepath.Join(g.out, filepath.FromSlash(to))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if f.link != "" {
		target := filepath.ToSlash(f.link)
		inside := path.Join(path.Dir(f.rel), target)
		if path.IsAbs(target) || inside == ".." || strings.HasPrefix(inside, "../") {
			return fmt.Errorf("symbolic link to %s leaves the template", f.link)
		}
		renamed := g.r.RenamePath(target)
		g.written[to] = linkHash(renamed)
		return os.Symlink(filepath.FromSlash(renamed), dst)
	}
	data, err := os.ReadFile(filepath.Join(g.src, filepath.FromSlash(f.rel)))
	if err != nil {
		return err
	}
	base := path.Base(f.rel)
	switch {
	case matchBase(g.t.Verbatim, f.rel) || isBinary(data):
	case isGoSource(f):
		if data, err = g.gr.rewriteGo(f.rel, data); err != nil {
			return err
		}
	default:
		// A test fixture (alerts_test.yml) keeps its table labels: they
		// are data, repeated in the messages it expects.
		fixture := strings.Contains(base, "_test.")
		s := g.r.RenameText(string(data), !fixture)
		if path.Ext(base) == ".avsc" {
			s = g.renameRecords(s)
		}
		if strings.HasPrefix(f.rel, ".github/workflows/") && (strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".yaml")) {
			s = g.dropJobs(to, s)
		}
		data = []byte(s)
	}
	mode := fs.FileMode(0o644)
	// Module zips keep no file modes: a script is known by its #!.
	if f.mode&0o111 != 0 || bytes.HasPrefix(data, []byte("#!")) {
		mode = 0o755
	}
	g.written[to] = fileHash(data)
	return os.WriteFile(dst, data, mode)
}

// renameRecords names the records of an Avro schema after the source
// topic, as their namespace already follows the organisation and the name:
// page_views carries PageView (and its closed windows PageViewWindow),
// click_events ClickEvent.
func (g *generator) renameRecords(s string) string {
	from := g.t.variable("topic").Default
	to, ok := g.answers["topic"]
	if !ok || to == from {
		return s
	}
	return strings.ReplaceAll(s, `"name": "`+recordName(from), `"name": "`+recordName(to))
}

// recordName is the Avro record of a topic: its PascalCase spelling,
// singular.
func recordName(topic string) string { return strings.TrimSuffix(pascal(words(topic)), "s") }

// isBinary reports whether data is not text: a NUL byte early, or not UTF-8.
func isBinary(data []byte) bool {
	head := data[:min(len(data), 8000)]
	return bytes.IndexByte(head, 0) >= 0 || !utf8.Valid(data)
}

// dropJobs removes from a workflow the jobs that only the template has
// (template_only_jobs: the bake job runs this generator's tests), with the
// comment above each.
func (g *generator) dropJobs(file, s string) string {
	for _, job := range g.t.TemplateOnlyJobs {
		lines := strings.SplitAfter(s, "\n")
		start := -1
		for i, l := range lines {
			if strings.TrimRight(l, " \r\n") == "  "+job+":" {
				start = i
				break
			}
		}
		if start < 0 {
			continue
		}
		end := start + 1
		for end < len(lines) {
			l := strings.TrimRight(lines[end], "\r\n")
			if l != "" && !strings.HasPrefix(l, "   ") {
				break
			}
			end++
		}
		for start > 0 && strings.HasPrefix(lines[start-1], "  #") {
			start--
		}
		s = strings.Join(lines[:start], "") + strings.Join(lines[end:], "")
		if regexp.MustCompile(`needs:.*\b` + regexp.QuoteMeta(job) + `\b`).MatchString(s) {
			g.warn("%s: another job needs %q, which the template alone has: edit the workflow", file, job)
		}
	}
	return s
}

// render writes templates/**/*.tmpl into the new project, in the same
// place relative to its root: the files only a new project gets.
func (g *generator) render() error {
	root := filepath.Join(g.src, "templates")
	data := map[string]any{
		"template":         g.t.Module,
		"template_version": g.version,
		"github_slug":      githubSlug(g.answers["module"]),
	}
	for k, v := range g.answers {
		data[k] = v
	}
	funcs := template.FuncMap{
		// renamed is a name of the template as the new project spells it.
		"renamed": g.r.Rename,
		// quote writes a YAML (and JSON) string.
		"quote": func(s string) string { b, _ := json.Marshal(s); return string(b) },
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".tmpl") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(strings.TrimSuffix(rel, ".tmpl"))
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tmpl, err := template.New(rel).Funcs(funcs).Option("missingkey=error").Parse(string(text))
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if err := tmpl.Execute(&b, data); err != nil {
			return err
		}
		dst := filepath.Join(g.out, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		g.written[rel] = fileHash(b.Bytes())
		return os.WriteFile(dst, b.Bytes(), 0o644)
	})
}

// githubSlug is owner/repo for a module on github.com, else "".
func githubSlug(mod string) string {
	elems := strings.Split(mod, "/")
	if len(elems) >= 3 && elems[0] == "github.com" {
		return elems[1] + "/" + elems[2]
	}
	return ""
}

// checkLeftovers warns about every old name still in the new project,
// outside what template.json allows: most likely a file added to the
// template with a name in a spelling no rule knows. Like the bake test, it
// looks for the old module path and words in any case.
func (g *generator) checkLeftovers() {
	olds, current := g.names()
	if len(olds) == 0 {
		return
	}
	var found []string
	filepath.WalkDir(g.out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(g.out, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil || isBinary(data) || matchBase(g.t.Verbatim, rel) || g.t.allowedFile(rel) {
			return nil
		}
		for n, line := range strings.Split(g.t.withoutAllowed(rel, string(data)), "\n") {
			if hasOld(line, olds, current) {
				found = append(found, fmt.Sprintf("%s:%d: %s", rel, n+1, strings.TrimSpace(line)))
			}
		}
		if hasOld(rel, olds, nil) {
			found = append(found, rel+": the path")
		}
		return nil
	})
	for i, f := range found {
		if i == 20 {
			g.warn("... and %d more", len(found)-20)
			break
		}
		g.warn("still names the template: %s", f)
	}
}

// names returns the template's names to look for, in lower case, and the
// project's names in every spelling, which are no leftovers even where
// they hold an old one (a topic kept as page_views is spelled pageViews,
// which holds pageviews), longest first.
func (g *generator) names() (olds, current []string) {
	for _, v := range g.t.Variables {
		if v.Kind != kindModule && v.Kind != kindWord {
			continue
		}
		to, old := strings.ToLower(g.answers[v.Name]), strings.ToLower(v.Default)
		if !strings.Contains(to, old) {
			olds = append(olds, old)
		}
		current = append(current, g.answers[v.Name])
		for _, p := range spellings(v.Default, g.answers[v.Name]) {
			current = append(current, p.to)
		}
	}
	sort.Slice(current, func(i, j int) bool { return len(current[i]) > len(current[j]) })
	return olds, current
}

// hasOld reports whether s holds one of olds once the current names are
// taken out.
func hasOld(s string, olds, current []string) bool {
	for _, c := range current {
		s = strings.ReplaceAll(s, c, "")
	}
	s = strings.ToLower(s)
	for _, old := range olds {
		if strings.Contains(s, old) {
			return true
		}
	}
	return false
}
