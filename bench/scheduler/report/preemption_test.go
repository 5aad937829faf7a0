package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPreemptionSection renders a BenchmarkPreemptionAtSaturation line as
// go test prints it (metrics in unit order) and a failed run.
func TestPreemptionSection(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok.txt")
	if err := os.WriteFile(ok, []byte("goos: linux\nBenchmarkPreemptionAtSaturation-2   \t       3\t7174595137 ns/op\t         0.5240 max-s-to-place\t         0.2627 min-s-to-place\t         0.3024 p50-s-to-place\t         8.000 victims/preemption\nPASS\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := preemption(ok), "| 3 | 0.3024 s | 0.2627 s | 0.5240 s | 8.000 |"; !strings.Contains(got, want) {
		t.Errorf("section lacks %q:\n%s", want, got)
	}
	// A log line the process wrote while go test printed the name.
	split := filepath.Join(dir, "split.txt")
	if err := os.WriteFile(split, []byte("BenchmarkPreemptionAtSaturation-2   \tE1203 21:00:22.592062   20061 schedule_one.go:1261] \"Error updating pod\" err=\"pods \\\"low-5-4\\\" not found\"\nI1203 21:00:23.000000   20061 x.go:1] more\n       5\t3262611511 ns/op\t         0.5176 max-s-to-place\t         0.2634 min-s-to-place\t         0.2934 p50-s-to-place\t         8.000 victims/preemption\nPASS\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := preemption(split), "| 5 | 0.2934 s | 0.2634 s | 0.5176 s | 8.000 |"; !strings.Contains(got, want) {
		t.Errorf("a result split by a log line: section lacks %q:\n%s", want, got)
	}
	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("--- FAIL: BenchmarkPreemptionAtSaturation-2\nFAIL\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := preemption(bad); !strings.Contains(got, "failed: see the run's log") {
		t.Errorf("a failed run is not said to have failed:\n%s", got)
	}
}
