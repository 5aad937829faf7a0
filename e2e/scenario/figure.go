package scenario

import (
	"fmt"
	"os"
	"testing"
)

// RecordFigure records a measured number from a reliability test: in the
// test log as "FIGURE name = value unit", and as a line "name value unit" in
// $TESSERA_RELIABILITY_OUT when set (make reliability collects those lines
// into docs' summary table).
func RecordFigure(t testing.TB, name string, value float64, unit string) {
	t.Helper()
	t.Logf("FIGURE %s = %.2f %s", name, value, unit)
	out := os.Getenv("TESSERA_RELIABILITY_OUT")
	if out == "" {
		return
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("recording figure: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %.3f %s\n", name, value, unit)
}
