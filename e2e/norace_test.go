//go:build !race

package e2e_test

// raceEnabled tells TestMain to build the binaries with -race as well.
const raceEnabled = false
