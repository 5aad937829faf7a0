package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

// The DRA row is Tessera beside Tessera: no Tessera ÷ baseline ratio, the
// baselines still compared with the device-plugin row, and its own
// acceptance rows.
func TestDRARow(t *testing.T) {
	recs := []*sb.Record{
		{Case: "GPUMix_Native", Workload: "quick", PodsPerSec: 40, Pods: 100, BoundPods: 60, TotalSlices: 100, UsedSlices: 62, Gangs: 10, GangsPlaced: 6, AlignedClique: 6},
		{Case: "GPUMix_TesseraDRA", Workload: "quick", PodsPerSec: 30, Pods: 100, BoundPods: 90, TotalSlices: 100, UsedSlices: 99, Gangs: 10, GangsPlaced: 9, AlignedClique: 9},
		{Case: "GPUMix_Tessera", Workload: "quick", PodsPerSec: 50, Pods: 100, BoundPods: 90, TotalSlices: 100, UsedSlices: 100, Gangs: 10, GangsPlaced: 9, AlignedClique: 9},
	}
	table, acc := tables(recs, nil)
	rows := strings.Split(strings.TrimSpace(table), "\n")[2:]
	if len(rows) != 3 || !strings.Contains(rows[0], "| Tessera |") || !strings.Contains(rows[1], "| Tessera, GPUs through DRA |") || !strings.Contains(rows[2], "whole nvidia.com/gpu") {
		t.Fatalf("rows not Tessera, Tessera through DRA, baseline:\n%s", table)
	}
	if strings.Contains(rows[1], "×") {
		t.Errorf("the DRA row has a Tessera ÷ baseline ratio: %s", rows[1])
	}
	if !strings.Contains(rows[2], "**1.25×**") {
		t.Errorf("the baseline is not compared with the device-plugin row (50 ÷ 40): %s", rows[2])
	}
	for _, want := range []string{
		"| GPU mix through DRA loses no utilisation against the device-plugin path (quick) | 99.0% vs 100.0%; 30 vs 50 pods/s | yes |",
		"| GPU mix utilisation ≥ baseline + 10 points vs default 1.37 + native gang/TAS, whole nvidia.com/gpu (quick) | 100.0% vs 62.0% (+38.0 points) | yes |",
		"| GPU utilisation at saturation ≥ 95% (quick, Tessera, GPUs through DRA) | 99.0% | yes |",
		"| 0 partial gangs (GPUMix/quick, Tessera, GPUs through DRA) |",
	} {
		if !strings.Contains(acc, want) {
			t.Errorf("missing %q in\n%s", want, acc)
		}
	}
}

func TestFreeName(t *testing.T) {
	dir := t.TempDir()
	if got := freeName(dir, "2026-12-03"); got != "2026-12-03" {
		t.Errorf("freeName in an empty dir = %s", got)
	}
	for _, f := range []string{"2026-12-03.md", "2026-12-03-2.md"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := freeName(dir, "2026-12-03"); got != "2026-12-03-3" {
		t.Errorf("freeName with two runs of the day = %s, want 2026-12-03-3", got)
	}
}
