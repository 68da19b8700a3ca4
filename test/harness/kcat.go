package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// RequireProgram returns the path of the first of names on PATH, outside
// programs a test needs. With none, the test is skipped with a warning on
// stderr (shown without -v), except in CI (CI=true), where it fails: CI
// must install the Debian package debianPackage.
func RequireProgram(t testing.TB, debianPackage string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("%s is not installed (Debian package %s: apt-get install -y --no-install-recommends %s)", names[0], debianPackage, debianPackage)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s, and CI=true: CI must install it", msg)
	}
	fmt.Fprintf(os.Stderr, "\n*** WARNING: %s SKIPPED, THIS TEST DID NOT RUN: %s ***\n\n", t.Name(), msg)
	t.Skip(msg)
	return ""
}

// RequireKcat returns the path of kcat (or of kafkacat, its old name), the
// outside Kafka client; see RequireProgram.
func RequireKcat(t testing.TB) string {
	t.Helper()
	return RequireProgram(t, "kcat", "kcat", "kafkacat")
}

// Kcat runs kcat (bin) with args and stdin and returns its stdout.
func Kcat(t testing.TB, bin, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\nstderr: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// Record is one record as `kcat -C -J` prints it.
type Record struct {
	Topic     string   `json:"topic"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Headers   []string `json:"headers"`
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
}

// Header returns the value of header k.
func (r Record) Header(k string) (string, bool) {
	for i := 0; i+1 < len(r.Headers); i += 2 {
		if r.Headers[i] == k {
			return r.Headers[i+1], true
		}
	}
	return "", false
}

// ConsumeAll reads every record of topic with kcat (bin).
func ConsumeAll(t testing.TB, bin, brokerAddr, topic string) []Record {
	t.Helper()
	out := Kcat(t, bin, "", "-C", "-b", brokerAddr, "-t", topic, "-o", "beginning", "-e", "-q", "-J")
	var recs []Record
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var r Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("kcat -J printed a line that is not JSON: %v: %s", err, l)
		}
		recs = append(recs, r)
	}
	return recs
}
