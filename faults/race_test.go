//go:build race

package faults

// raceEnabled builds the worker with the race detector too when the tests
// run under it, so a race the faults provoke in the worker fails the test.
const raceEnabled = true
