package load

import (
	"os"
	"testing"
)

// TestMain runs the test binary as a load worker when TestLoad starts it as
// one, and as the tests otherwise.
func TestMain(m *testing.M) {
	if IsWorker() {
		os.Exit(RunWorker())
	}
	os.Exit(m.Run())
}
