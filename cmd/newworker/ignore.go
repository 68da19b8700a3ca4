package main

import (
	"os"
	"path"
	"regexp"
	"strings"
)

// ignorer decides which paths are not part of the template, with the rules
// of .gitignore files: the template.json skip list, then the .gitignore of
// every directory walked (so bin/, data/ and .cache/ of a checkout stay
// behind). The syntax is git's: # comments, ! negation, a leading or inner
// / anchors to the directory of the rule, a trailing / matches only
// directories, *, ?, [...] and **. The last matching rule wins.
type ignorer struct {
	rules []ignoreRule
}

type ignoreRule struct {
	re      *regexp.Regexp
	negate  bool
	dirOnly bool
}

// add adds the rules in lines, relative to dir (slash-separated, "" for the
// root).
func (ig *ignorer) add(dir string, lines []string) {
	for _, line := range lines {
		line = strings.TrimRight(line, " \t\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var r ignoreRule
		if strings.HasPrefix(line, "!") {
			r.negate = true
			line = line[1:]
		}
		line = strings.TrimPrefix(line, `\`)
		if strings.HasSuffix(line, "/") {
			r.dirOnly = true
			line = strings.TrimSuffix(line, "/")
		}
		anchored := strings.Contains(line, "/")
		line = strings.TrimPrefix(line, "/")
		prefix := ""
		if dir != "" {
			prefix = regexp.QuoteMeta(dir) + "/"
		}
		if anchored {
			r.re = regexp.MustCompile("^" + prefix + globRegexp(line) + "$")
		} else {
			r.re = regexp.MustCompile("^" + prefix + "(?:.*/)?" + globRegexp(line) + "$")
		}
		ig.rules = append(ig.rules, r)
	}
}

// addFile adds the rules of the .gitignore file at file, if there is one.
func (ig *ignorer) addFile(dir, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		return
	}
	ig.add(dir, strings.Split(string(data), "\n"))
}

// ignored reports whether the slash-separated path rel is ignored.
func (ig *ignorer) ignored(rel string, isDir bool) bool {
	out := false
	for _, r := range ig.rules {
		if r.dirOnly && !isDir {
			continue
		}
		if r.re.MatchString(rel) {
			out = !r.negate
		}
	}
	return out
}

// globRegexp translates one gitignore glob into a regular expression.
func globRegexp(glob string) string {
	var b strings.Builder
	for i := 0; i < len(glob); i++ {
		c := glob[i]
		switch {
		case strings.HasPrefix(glob[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case strings.HasPrefix(glob[i:], "/**") && i+3 == len(glob):
			b.WriteString("(?:/.*)?")
			i += 2
		case strings.HasPrefix(glob[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '[':
			if j := strings.IndexByte(glob[i+1:], ']'); j >= 0 {
				class := glob[i+1 : i+1+j]
				if strings.HasPrefix(class, "!") {
					class = "^" + class[1:]
				}
				b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
				i += j + 1
			} else {
				b.WriteString(`\[`)
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	return b.String()
}

// matchBase reports whether the base name of rel matches one of globs (the
// verbatim list).
func matchBase(globs []string, rel string) bool {
	base := path.Base(rel)
	for _, g := range globs {
		if ok, _ := path.Match(g, base); ok {
			return true
		}
	}
	return false
}
