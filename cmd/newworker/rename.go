package main

import (
	"regexp"
	"sort"
	"strings"
)

// A pair is one literal rename.
type pair struct {
	from, to string
	// exact pairs match anywhere; the others only at a word boundary
	// (see atBoundary).
	exact bool
	// literal pairs rename a quoted table name ("views"). They apply
	// only where the text means the worker's table: in Go, the package
	// that declares it (see goRewriter), not the store's tests that use
	// "views" as any name; in other files, not in test fixtures
	// (alerts_test.yml), whose expected messages repeat a label in prose.
	literal bool
}

// renamer renames every variable in one pass over a text: at each position
// it tries the longest pair that matches there, and it never looks at what
// it wrote. So the order of the rules does not matter, a new value that
// contains an old one is not renamed twice, and page_views is never
// half-renamed by the rule for pageviews.
type renamer struct {
	pairs []pair // longest first
	first [256]bool
	// settings rewrite the defaults of environment variables in files
	// other than Go (compose, Helm values, docs/settings.md).
	settings []settingRule
}

type settingRule struct {
	re *regexp.Regexp
	to string // replacement for the value, after the captured prefix
}

// newRenamer builds the rules from the template and the answers.
func newRenamer(t *Template, answers map[string]string) *renamer {
	r := &renamer{}
	add := func(p pair) {
		if p.from == "" || p.from == p.to {
			return
		}
		for _, q := range r.pairs {
			if q.from == p.from {
				return
			}
		}
		r.pairs = append(r.pairs, p)
	}
	for _, v := range t.Variables {
		to, ok := answers[v.Name]
		if !ok {
			continue
		}
		switch v.Kind {
		case kindModule:
			add(pair{from: v.Default, to: to})
		case kindWord:
			for _, p := range spellings(v.Default, to) {
				add(p)
			}
			// A Markdown anchor of a heading that starts with the
			// name: #pageviewsconsumerlaggrowing for the alert
			// PageviewsConsumerLagGrowing.
			if len(words(v.Default)) == 1 {
				add(pair{from: "#" + v.Default, to: "#" + strings.ToLower(pascal(words(to))), exact: true})
			}
		case kindTable:
			// Only where the text names the table: quoted, and in its
			// changelog topic.
			add(pair{from: `"` + v.Default + `"`, to: `"` + to + `"`, exact: true, literal: true})
			add(pair{from: "-" + v.Default + "-changelog", to: "-" + to + "-changelog"})
		case kindText:
			add(pair{from: v.Default, to: to, exact: true})
		case kindSetting:
			if to == v.Default {
				continue
			}
			r.settings = append(r.settings, settingRules(v, to)...)
		}
	}
	sort.SliceStable(r.pairs, func(i, j int) bool { return len(r.pairs[i].from) > len(r.pairs[j].from) })
	for _, p := range r.pairs {
		r.first[p.from[0]] = true
	}
	return r
}

// spellings returns the renames of a word in each spelling a codebase uses:
// as written (page_views), camelCase (pageViews, a Helm value), PascalCase
// (PageViews, a Go identifier), UPPER_CASE (PAGE_VIEWS_TOPIC, an
// environment variable) and, for a one-word name, Capitalised (Pageviews).
func spellings(from, to string) []pair {
	fw, tw := words(from), words(to)
	return []pair{
		{from: from, to: to},
		{from: camel(fw), to: camel(tw)},
		{from: pascal(fw), to: pascal(tw)},
		{from: strings.ToUpper(strings.Join(fw, "_")), to: strings.ToUpper(strings.Join(tw, "_"))},
	}
}

func words(s string) []string {
	return strings.FieldsFunc(s, func(c rune) bool { return c == '_' || c == '-' || c == '.' })
}

func camel(ws []string) string {
	if len(ws) == 0 {
		return ""
	}
	return ws[0] + pascal(ws[1:])
}

func pascal(ws []string) string {
	var b strings.Builder
	for _, w := range ws {
		if w != "" {
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return b.String()
}

// settingRules rewrite the default of a setting where a file other than Go
// states it: `WINDOW_SIZE: 1m` (compose), `windowSize: 1m` (Helm values),
// "| `WINDOW_SIZE` | `1m` |" (docs/settings.md), and for PARTITIONS,
// `--partitions 8` (topic creation).
func settingRules(v Variable, to string) []settingRule {
	key := camel(strings.Split(strings.ToLower(v.Env), "_"))
	val := regexp.QuoteMeta(v.Default)
	end := `([^A-Za-z0-9.]|$)`
	rules := []settingRule{{
		re: regexp.MustCompile(`(\b(?:` + regexp.QuoteMeta(v.Env) + `|` + regexp.QuoteMeta(key) + `)\b["'` + "`" + `]?[ \t]*[:|][ \t]*["'` + "`" + `]?)` + val + end),
		to: to,
	}}
	if v.Env == "PARTITIONS" {
		rules = append(rules, settingRule{re: regexp.MustCompile(`(--partitions[ =])` + val + end), to: to})
	}
	return rules
}

// Rename renames everything in s.
func (r *renamer) Rename(s string) string {
	return r.renameRange(s, 0, len(s), true)
}

// renameRange renames s[start:end]; the text around it only decides the
// word boundaries. literals says whether quoted table names are renamed.
func (r *renamer) renameRange(s string, start, end int, literals bool) string {
	var b strings.Builder
	i := start
outer:
	for i < end {
		if !r.first[s[i]] {
			b.WriteByte(s[i])
			i++
			continue
		}
		for _, p := range r.pairs {
			if (literals || !p.literal) && strings.HasPrefix(s[i:end], p.from) && (p.exact || atBoundary(s, i, i+len(p.from))) {
				b.WriteString(p.to)
				i += len(p.from)
				continue outer
			}
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// atBoundary reports whether s[i:j] is a word of its own: it neither
// continues nor is continued by letters or digits of the same word. An
// underscore, a dot, a dash or a slash ends a word (pageviews_events,
// PAGEVIEWS_E2E, /_pageviews/), and so does a change of case that starts a
// new word in camelCase (pageViewsTopic, CountsPageViews).
func atBoundary(s string, i, j int) bool {
	first, last := s[i], s[j-1]
	if i > 0 && isAlnum(first) {
		prev := s[i-1]
		if isAlnum(prev) && !(isUpper(first) && isLower(prev)) {
			return false
		}
	}
	if j < len(s) && isAlnum(last) {
		next := s[j]
		if isLower(last) {
			if isLower(next) || isDigit(next) {
				return false
			}
		} else if isAlnum(next) {
			return false
		}
	}
	return true
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool { return isLower(c) || isUpper(c) || isDigit(c) }

// RenameText renames a file other than Go: the pairs, then the setting
// defaults. literals says whether quoted table names are renamed.
func (r *renamer) RenameText(s string, literals bool) string {
	out := r.renameRange(s, 0, len(s), literals)
	for _, rule := range r.settings {
		out = rule.re.ReplaceAllString(out, "${1}"+strings.ReplaceAll(rule.to, "$", "$$")+"${2}")
	}
	return alignComments(s, out)
}

// alignComments keeps the trailing comments of renamed lines in the column
// they had (YAML values files align them): a rename never adds or removes
// a line, so the lines of before and after correspond.
func alignComments(before, after string) string {
	if before == after {
		return after
	}
	bl, al := strings.Split(before, "\n"), strings.Split(after, "\n")
	if len(bl) != len(al) {
		return after
	}
	// A line with a comment aligned by two or more spaces.
	re := regexp.MustCompile(`^(.*\S)( {2,})(#.*)$`)
	for i := range al {
		if al[i] == bl[i] {
			continue
		}
		b, a := re.FindStringSubmatch(bl[i]), re.FindStringSubmatch(al[i])
		if b == nil || a == nil {
			continue
		}
		col := len(b[1]) + len(b[2])
		al[i] = a[1] + strings.Repeat(" ", max(1, col-len(a[1]))) + a[3]
	}
	return strings.Join(al, "\n")
}

// RenamePath renames each element of a slash-separated path.
func (r *renamer) RenamePath(p string) string {
	elems := strings.Split(p, "/")
	for i, e := range elems {
		elems[i] = r.Rename(e)
	}
	return strings.Join(elems, "/")
}
