package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

// TestKoordinatorRecordsJoinTheirRun: a run directory's koordinator/
// records (bench/koordinator, the fractional peer) are read with the run's
// other records, named in the table, and judged against issue 20's
// utilisation target; a run directory without them still loads.
func TestKoordinatorRecordsJoinTheirRun(t *testing.T) {
	dir := t.TempDir()
	write := func(sub string, recs ...sb.Record) {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, r := range recs {
			line, _ := json.Marshal(r)
			b.Write(append(line, '\n'))
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "records.jsonl"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tessera", sb.Record{Case: "GPUMix_Tessera", Workload: "quick", PodsPerSec: 220, TotalSlices: 100, UsedSlices: 100})
	write("baseline", sb.Record{Case: "GPUMix_Coscheduling", Workload: "quick", PodsPerSec: 60, TotalSlices: 100, UsedSlices: 70})
	write("koordinator", sb.Record{Case: "GPUMix_Koordinator", Workload: "quick", PodsPerSec: 88, TotalSlices: 100, UsedSlices: 95})

	run := loadRun([]string{filepath.Join(dir, "tessera", "records.jsonl"), filepath.Join(dir, "baseline", "records.jsonl"), filepath.Join(dir, "koordinator", "records.jsonl")},
		[]string{filepath.Join(dir, "tessera"), filepath.Join(dir, "baseline")})
	if len(run) != 3 {
		t.Fatalf("loaded %d records, want 3", len(run))
	}
	table, acc := tables(run, nil)
	for _, want := range []string{
		"| GPUMix/quick | Koordinator v1.7.0 koord-scheduler, GPU share + gang (k8s 1.28.7) |",
		"| 220 (own: 0 / 0) |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("missing %q in\n%s", want, table)
		}
	}
	if want := "| GPU mix utilisation ≥ fractional peer + 10 points vs Koordinator v1.7.0 koord-scheduler, GPU share + gang (k8s 1.28.7) (quick) | 100.0% vs 95.0% (+5.0 points) | **no** |"; !strings.Contains(acc, want) {
		t.Errorf("missing %q in\n%s", want, acc)
	}
	if want := "| GPU mix utilisation ≥ baseline + 10 points vs scheduler-plugins coscheduling v0.34.7 (k8s 1.34.4) (quick) | 100.0% vs 70.0% (+30.0 points) | yes |"; !strings.Contains(acc, want) {
		t.Errorf("missing %q in\n%s", want, acc)
	}
	if fileExists(filepath.Join(dir, "none", "records.jsonl")) || !fileExists(filepath.Join(dir, "koordinator", "records.jsonl")) {
		t.Error("fileExists is wrong")
	}
}
