//go:build !race

package backends

// raceDetector says whether the test binary was built with -race.
const raceDetector = false
