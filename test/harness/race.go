//go:build race

package harness

// raceEnabled is true when the tests run with the race detector: the
// binaries they start are then built with it too.
const raceEnabled = true
