package main

import (
	"fmt"
	"testing"
	"time"
)

// TestEveryRecoveryLogsItsEnd: each table partition's "recovering" line is
// answered by a "recovered" line with the records it announced, also when
// there is nothing to replay (a new topic, or a restart whose store holds
// the whole changelog), so an operator waiting for "recovered" is not left
// waiting. The worker starts on an empty broker, counts views, and restarts
// on its DATA_DIR.
func TestEveryRecoveryLogsItsEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	c := startFaultBroker(t)
	vars := faultVars(t, c)

	first := startWorker(t, vars, time.Now)
	checkRecoveriesEnd(t, first, false)
	countViews(t, first.base, 10, 3)
	first.stop(t)

	restart := startWorker(t, vars, time.Now)
	checkRecoveriesEnd(t, restart, true)
	restart.stop(t)
}

// checkRecoveriesEnd holds w's log, once w is ready, to a "recovered" line
// after each "recovering" line of the same partition and table, with the
// records announced, and to every recovery of both tables of its
// partitions having started from the store when stored is set.
func checkRecoveriesEnd(t *testing.T, w *worker, stored bool) {
	t.Helper()
	type tablePart struct {
		table     string
		partition float64
	}
	announced := map[tablePart]float64{}
	ended := map[tablePart]bool{}
	for _, l := range w.logs.all("recovering", "recovered") {
		k := tablePart{fmt.Sprint(l["table"]), l["partition"].(float64)}
		n, _ := l["records"].(float64)
		switch l["msg"] {
		case "recovering":
			if _, twice := announced[k]; twice && !ended[k] {
				t.Errorf("%v recovering again before it logged recovered\n%s", k, w.logs)
			}
			announced[k], ended[k] = n, false
			if l["stored"] != stored {
				t.Errorf("%v recovering with stored=%v, want %v", k, l["stored"], stored)
			}
		case "recovered":
			want, ok := announced[k]
			switch {
			case !ok || ended[k]:
				t.Errorf("%v recovered without a recovering line before it\n%s", k, w.logs)
			case n != want:
				t.Errorf("%v recovered %v records, want the %v its recovering line announced", k, n, want)
			}
			ended[k] = true
		}
	}
	// Two partitions (faultVars), each with both tables.
	if len(announced) != 4 {
		t.Errorf("%d table partitions logged recovering, want 4\n%s", len(announced), w.logs)
	}
	for k, done := range ended {
		if !done {
			t.Errorf("%v logged recovering and never recovered, though the worker is ready\n%s", k, w.logs)
		}
	}
}
