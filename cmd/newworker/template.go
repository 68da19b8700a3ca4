package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"golang.org/x/mod/module"
)

// templateFile is where a template describes itself, relative to its root.
const templateFile = "templates/template.json"

// The kinds of variable, which decide how a value is renamed.
const (
	kindModule  = "module"  // the Go module path, in go.mod files, imports and text
	kindWord    = "word"    // a name, in every spelling, in contents and paths
	kindTable   = "table"   // a table name, only where it names the table
	kindSetting = "setting" // the default of an environment variable
	kindText    = "text"    // exact text
	kindMeta    = "meta"    // only used by templates/*.tmpl
)

// Template is templates/template.json.
type Template struct {
	Comment   string     `json:"$comment"`
	Module    string     `json:"template"`
	Variables []Variable `json:"variables"`
	Skip      []string   `json:"skip"`
	Verbatim  []string   `json:"verbatim"`
	Allow     []struct {
		File string `json:"file"`
		Text string `json:"text"`
		Why  string `json:"why"`
	} `json:"allow"`
	TemplateOnlyJobs []string `json:"template_only_jobs"`
	// Modules are the nested modules (directories with a go.mod of their
	// own) a new project gets. Module zips leave them out, so a template
	// fetched from the module proxy fetches them one by one.
	Modules []string `json:"modules"`
}

// Variable is one question of the template.
type Variable struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Env      string `json:"env"`  // kind setting: the environment variable
	Type     string `json:"type"` // kind setting: duration or int
	Default  string `json:"default"`
	Suggest  string `json:"suggest"`
	Prompt   string `json:"prompt"`
	Validate string `json:"validate"`

	re *regexp.Regexp
}

// loadTemplate reads and checks the template.json of the template at root.
func loadTemplate(root string) (*Template, error) {
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(templateFile)))
	if err != nil {
		return nil, fmt.Errorf("%s is not a template: %w", root, err)
	}
	var t Template
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%s: %w", templateFile, err)
	}
	seen := map[string]bool{}
	for i := range t.Variables {
		v := &t.Variables[i]
		if v.Name == "" || seen[v.Name] {
			return nil, fmt.Errorf("%s: variable %d has no name or a duplicate one (%q)", templateFile, i, v.Name)
		}
		seen[v.Name] = true
		switch v.Kind {
		case kindModule, kindWord, kindTable, kindText, kindMeta:
		case kindSetting:
			if v.Env == "" || (v.Type != "duration" && v.Type != "int") {
				return nil, fmt.Errorf("%s: setting %s needs env and a type of duration or int", templateFile, v.Name)
			}
		default:
			return nil, fmt.Errorf("%s: variable %s has unknown kind %q", templateFile, v.Name, v.Kind)
		}
		if v.re, err = regexp.Compile(v.Validate); err != nil {
			return nil, fmt.Errorf("%s: variable %s: validate: %w", templateFile, v.Name, err)
		}
		// The template's own values must pass its own checks, or a
		// generated project could not be regenerated with the defaults.
		if err := v.check(v.Default); err != nil {
			return nil, fmt.Errorf("%s: the default of %s fails its own check: %w", templateFile, v.Name, err)
		}
	}
	if t.variable("module") == nil || t.variable("module").Kind != kindModule || t.Module != t.variable("module").Default {
		return nil, fmt.Errorf("%s: needs a variable \"module\" of kind module whose default is %q", templateFile, t.Module)
	}
	return &t, nil
}

func (t *Template) variable(name string) *Variable {
	for i := range t.Variables {
		if t.Variables[i].Name == name {
			return &t.Variables[i]
		}
	}
	return nil
}

// check validates one answer: the regexp of template.json, then what a
// regexp cannot say.
func (v *Variable) check(value string) error {
	if !v.re.MatchString(value) {
		return fmt.Errorf("%q does not match %s", value, v.Validate)
	}
	switch {
	case v.Kind == kindModule:
		if err := module.CheckPath(value); err != nil {
			return err
		}
	case v.Kind == kindSetting && v.Type == "duration":
		d, err := time.ParseDuration(value)
		if err != nil {
			return err
		}
		if d < time.Second || d%time.Millisecond != 0 {
			return fmt.Errorf("%q: want at least 1s, in whole milliseconds", value)
		}
	case v.Kind == kindSetting && v.Type == "int":
		if n, err := strconv.Atoi(value); err != nil || n < 1 || n > 10000 {
			return fmt.Errorf("%q: want an integer from 1 to 10000", value)
		}
	case v.Name == "topic" && len(value) > 200:
		return fmt.Errorf("%q is longer than 200 characters (Kafka allows 249, and the dead-letter topic adds 4)", value)
	}
	return nil
}

// suggestion is what a new project is offered for v, given the answers so
// far: the rendered suggest template, or the template's default when v has
// none. While every answer so far is the template's own value, so is the
// suggestion: the defaults reproduce the template. ok is false when the
// suggest template yields no valid value (the default is returned then).
func (t *Template) suggestion(v *Variable, answers map[string]string) (value string, ok bool) {
	pristine := true
	for _, w := range t.Variables {
		if a, ok := answers[w.Name]; ok && a != w.Default {
			pristine = false
		}
	}
	if v.Suggest == "" || pristine {
		return v.Default, true
	}
	tmpl, err := template.New(v.Name).Funcs(suggestFuncs()).Option("missingkey=error").Parse(v.Suggest)
	if err != nil {
		return v.Default, false
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, answers); err != nil || v.check(b.String()) != nil {
		return v.Default, false
	}
	return b.String(), true
}

// suggestFuncs are the functions a suggestion may call.
func suggestFuncs() template.FuncMap {
	return template.FuncMap{
		"base": path.Base,
		// slug makes a service name of anything: lowercase letters and digits,
		// starting with a letter.
		"slug": func(s string) string {
			var b strings.Builder
			for _, c := range strings.ToLower(s) {
				if c >= 'a' && c <= 'z' || (c >= '0' && c <= '9' && b.Len() > 0) {
					b.WriteRune(c)
				}
			}
			return b.String()
		},
		// orgOf is the organisation of a module path: the element before the
		// last one (github.com/acme/clicks -> acme).
		"orgOf": func(mod string) string {
			elems := strings.Split(mod, "/")
			if len(elems) < 2 {
				return ""
			}
			org := strings.ToLower(elems[len(elems)-2])
			org = strings.Map(func(c rune) rune {
				if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
					return c
				}
				return '-'
			}, org)
			return strings.Trim(org, "-")
		},
	}
}

// crossCheck validates what involves several answers, and answers against
// the template's tree (rootCmds: the directories under cmd/).
func crossCheck(t *Template, answers map[string]string, rootCmds []string) error {
	if w, e := answers["window"], answers["expires"]; w != "" && e != "" {
		dw, _ := time.ParseDuration(w)
		de, _ := time.ParseDuration(e)
		if de < dw {
			return &inputError{"expires", fmt.Sprintf("%s is shorter than the window (%s): a window must be kept at least as long as it lasts", e, w)}
		}
	}
	if tb := answers["table"]; tb == "totals" {
		return &inputError{"table", `"totals" is the worker's other table`}
	}
	if name := answers["name"]; name != "" {
		old := t.variable("name")
		for _, c := range rootCmds {
			if old != nil && c != old.Default && c == name {
				return &inputError{"name", fmt.Sprintf("%q is already a command of the template (cmd/%s)", name, c)}
			}
		}
	}
	return nil
}

// inputError is an invalid answer: the generator exits with status 2.
type inputError struct {
	variable string
	msg      string
}

func (e *inputError) Error() string { return fmt.Sprintf("-%s: %s", e.variable, e.msg) }

// allowedFile reports whether template.json allows a whole file to name
// the template (a licence).
func (t *Template) allowedFile(rel string) bool {
	for _, a := range t.Allow {
		if ok, _ := path.Match(a.File, path.Base(rel)); ok && a.Text == "" {
			return true
		}
	}
	return false
}

// withoutAllowed removes from a file's text what template.json allows in
// it.
func (t *Template) withoutAllowed(rel, text string) string {
	for _, a := range t.Allow {
		if ok, _ := path.Match(a.File, rel); ok && a.Text != "" {
			text = strings.ReplaceAll(text, a.Text, "")
		}
	}
	return text
}

// errNoInput is the input ending before every question has its answer.
const errNoInput = constError("no answer")

// constError is an error that can be a constant.
type constError string

func (e constError) Error() string { return string(e) }
