// Command newworker stamps out a new Kafka stream-processing worker from
// this template, like cookiecutter: it asks for the names in
// templates/template.json (or takes them from flags), copies the template,
// renames the module path and every name the worker declares (binary,
// chart, metric namespace, group, topics, tables, window and partitions
// defaults), and writes the files only a new project gets
// (templates/*.tmpl: README, Backstage catalog entry, CODEOWNERS).
//
//	go run github.com/gofaust/pageviews/cmd/newworker@latest
//	go run ./cmd/newworker -module example.com/acme/clicks -name clicks \
//	    -topic click_events -window 30s -expires 2m -out ../clicks -no-input
//
// The template is this module's source: the checkout it runs in (or
// -from DIR), else the module version it was built from, fetched with
// `go mod download -json` as gonew does.
//
// The new project keeps a record of its bake in .newworker.json: the
// answers, the template's version and a hash of each file written. With
// it, `newworker update` brings a later version of the template into the
// project, keeping the project's own changes (a three-way merge):
//
//	newworker update -from ../pageviews            # a checkout
//	newworker update -from github.com/gofaust/pageviews@v1.4.0
//	go run github.com/gofaust/pageviews/cmd/newworker@latest update
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	var ierr *inputError
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &ierr), isUsage(err):
		fmt.Fprintln(os.Stderr, "newworker:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "newworker:", err)
		os.Exit(1)
	}
}

// usageError is a mistake in how the command was called: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

func isUsage(err error) bool {
	var u *usageError
	return errors.As(err, &u)
}

// varFlags are the template variables that have a flag of their own.
func varFlags() []string {
	return []string{"module", "name", "org", "topic", "table", "window", "expires", "partitions", "owner", "description"}
}

// options are the command line.
type options struct {
	vals    map[string]string // the variables given as flags
	out     string
	from    string
	noInput bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("newworker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vals := map[string]*string{}
	for _, name := range varFlags() {
		vals[name] = fs.String(name, "", "template variable "+name+" (see templates/template.json)")
	}
	o := &options{vals: map[string]string{}}
	fs.StringVar(&o.out, "out", "", "directory of the new project, which must not exist or be empty (default ./<name>)")
	fs.StringVar(&o.from, "from", "", "template directory (default: the checkout this runs in, else the module version it was built from)")
	fs.BoolVar(&o.noInput, "no-input", false, "ask nothing: flags or the template's suggestions for every variable (needs -module)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: newworker update [-from dir|module@version] [-dir worker] [-dry-run]")
		fmt.Fprintln(stderr, "       newworker [-module path] [-name name] [-topic topic] [-table table] [-window d] [-expires d] [-partitions n] [-org org] [-owner team] [-description text] [-out dir] [-from dir] [-no-input]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected arguments %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) {
		if p, ok := vals[f.Name]; ok {
			o.vals[f.Name] = *p
		}
	})
	if _, ok := o.vals["module"]; o.noInput && !ok {
		return nil, usagef("-no-input needs -module (the new worker's Go module path)")
	}
	return o, nil
}

// run generates one project. stdin answers the questions unless -no-input.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "update" {
		return runUpdate(args[1:], stdout, stderr)
	}
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	// A malformed module path fails at once, before the template is
	// fetched.
	if mod, ok := o.vals["module"]; ok {
		if err := checkModuleFlag(mod); err != nil {
			return err
		}
	}
	found, err := findTemplate(o.from)
	if err != nil {
		return err
	}
	t, err := loadTemplate(found.dir)
	if err != nil {
		return err
	}
	warn := func(format string, args ...any) {
		fmt.Fprintf(stderr, "newworker: warning: "+format+"\n", args...)
	}
	src, version := found.dir, found.version
	if found.module != "" {
		// A module zip: add the nested modules, fetched one by one.
		staging, err := assemble(found, t, warn)
		if err != nil {
			return err
		}
		defer os.RemoveAll(staging)
		src = staging
	}
	in := bufio.NewReader(stdin)
	answers, err := collectAnswers(t, o, in, stdout, commands(src))
	if err != nil {
		return err
	}
	dir, dst, err := chooseOut(o, src, answers["name"], in, stdout)
	if err != nil {
		return err
	}

	_, statErr := os.Stat(dst)
	g := newGenerator(src, dst, t, answers, version, warn)
	err = g.generate()
	if err == nil {
		err = writeRecord(dst, newRecord(found, t.Module, answers, g.written))
	}
	if err != nil {
		// Leave nothing half-made behind.
		if errors.Is(statErr, os.ErrNotExist) {
			os.RemoveAll(dst)
		} else if entries, _ := os.ReadDir(dst); entries != nil {
			for _, e := range entries {
				os.RemoveAll(filepath.Join(dst, e.Name()))
			}
		}
		return fmt.Errorf("generate %s: %w", dst, err)
	}

	fmt.Fprintf(stdout, "\nCreated %s (%s) in %s from %s %s.\n\nNext:\n", answers["module"], answers["name"], dir, t.Module, version)
	fmt.Fprintf(stdout, "  cd %s\n", dir)
	fmt.Fprintf(stdout, "  go mod tidy   # drops golang.org/x/mod, which only the template's generator used\n")
	fmt.Fprintf(stdout, "  make test\n")
	fmt.Fprintf(stdout, "  make run      # then: curl 'localhost:8088/count/?page=/home'\n")
	fmt.Fprintf(stdout, "Then make it yours: the record, the agent and the tables are in internal/pageview.\n")
	fmt.Fprintf(stdout, "Commit %s with the rest: `newworker update` reads it to bring in later versions of the template.\n", recordFile)
	return nil
}

// collectAnswers takes each variable from its flag, or with -no-input from
// the template's suggestion, or asks for it; it checks every answer, and
// asks again for an invalid one.
func collectAnswers(t *Template, o *options, in *bufio.Reader, stdout io.Writer, cmds []string) (map[string]string, error) {
	for name := range o.vals {
		if t.variable(name) == nil {
			return nil, usagef("-%s: the template has no variable %q", name, name)
		}
	}
	answers := map[string]string{}
	for i := range t.Variables {
		v := &t.Variables[i]
		given, fromFlag := o.vals[v.Name]
		for {
			var value string
			switch {
			case fromFlag:
				value = given
				if err := v.check(value); err != nil {
					return nil, &inputError{v.Name, err.Error()}
				}
			case o.noInput:
				var ok bool
				if value, ok = t.suggestion(v, answers); !ok {
					return nil, &inputError{v.Name, fmt.Sprintf("needed: no valid value follows from the other answers (%s)", v.Suggest)}
				}
			default:
				def, _ := t.suggestion(v, answers)
				var err error
				if value, err = ask(in, stdout, v, def); err != nil {
					return nil, err
				}
			}
			answers[v.Name] = value
			var ierr *inputError
			if err := crossCheck(t, answers, cmds); errors.As(err, &ierr) && ierr.variable == v.Name {
				if fromFlag || o.noInput {
					return nil, err
				}
				fmt.Fprintf(stdout, "  %s\n", ierr.msg)
				continue
			}
			break
		}
	}
	return answers, nil
}

// chooseOut returns the target directory as given and as an absolute path:
// -out, else asked for (default ./<name>, or ../<name> in the template).
func chooseOut(o *options, src, name string, in *bufio.Reader, stdout io.Writer) (dir, dst string, err error) {
	if o.out != "" || o.noInput {
		dir = o.out
		if dir == "" {
			dir = defaultOut(src, name)
		}
		dst, err = checkOut(dir, src)
		return dir, dst, err
	}
	for {
		if dir, err = askLine(in, stdout, "Directory of the new project", defaultOut(src, name)); err != nil {
			return "", "", err
		}
		if dst, err = checkOut(dir, src); err == nil {
			return dir, dst, nil
		}
		fmt.Fprintf(stdout, "  %v\n", err)
	}
}

// checkModuleFlag validates -module before the template is even found.
func checkModuleFlag(mod string) error {
	v := Variable{Name: "module", Kind: kindModule, re: regexp.MustCompile(`.`)}
	if err := v.check(mod); err != nil {
		return &inputError{"module", err.Error()}
	}
	return nil
}

// ask asks for one variable until the answer is valid.
func ask(in *bufio.Reader, out io.Writer, v *Variable, def string) (string, error) {
	for {
		answer, err := askLine(in, out, v.Prompt, def)
		if err != nil {
			return "", fmt.Errorf("%s: %w", v.Name, err)
		}
		if err := v.check(answer); err != nil {
			fmt.Fprintf(out, "  invalid %s: %v\n", v.Name, err)
			continue
		}
		return answer, nil
	}
}

// askLine prints "prompt [default]: " and reads one line; an empty line is
// the default.
func askLine(in *bufio.Reader, out io.Writer, prompt, def string) (string, error) {
	fmt.Fprintf(out, "%s [%s]: ", prompt, def)
	line, err := in.ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		fmt.Fprintln(out)
		return "", fmt.Errorf("%w: input ended (use flags and -no-input to ask nothing)", errNoInput)
	}
	if line = strings.TrimSpace(line); line != "" {
		return line, nil
	}
	return def, nil
}

// checkOut checks the target directory: not inside the template, and
// missing or empty.
func checkOut(dir, src string) (string, error) {
	dst, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if within(src, dst) {
		return "", usagef("target directory %s is inside the template (%s): choose one outside it, such as ../%s", dir, src, filepath.Base(dst))
	}
	info, err := os.Stat(dst)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return dst, nil
	case err != nil:
		return "", err
	case !info.IsDir():
		return "", usagef("target %s exists and is not a directory", dir)
	}
	if entries, err := os.ReadDir(dst); err != nil || len(entries) > 0 {
		return "", usagef("target directory %s exists and is not empty", dir)
	}
	return dst, nil
}

// defaultOut is ./<name>, or <name> beside the template when the command
// runs inside it (go run ./cmd/newworker in a checkout).
func defaultOut(src, name string) string {
	dir := "." + string(filepath.Separator) + name
	wd, err := os.Getwd()
	if err != nil {
		return dir
	}
	if within(src, wd) {
		if r, err := filepath.Rel(wd, filepath.Join(filepath.Dir(src), name)); err == nil {
			return r
		}
	}
	return dir
}

// commands lists the template's cmd/ directories.
func commands(src string) []string {
	entries, _ := os.ReadDir(filepath.Join(src, "cmd"))
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// within reports whether the absolute path p is dir or inside it.
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
