package main

import (
	"strings"
	"testing"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

func TestCeilingSection(t *testing.T) {
	recs := []*sb.Record{
		{Case: "SchedulingBasic_Tessera", Workload: "quick", PodsPerSec: 700},
		{Case: "SchedulingBasic_Default", Workload: "quick", PodsPerSec: 500},
		{Case: "TAS_Tessera", Workload: "quick", PodsPerSec: 600},
		{Case: "TAS_Coscheduling", Workload: "quick", PodsPerSec: 90},      // another API server: left out
		{Case: "GPUMix_Tessera", Workload: "quick", PodsPerSec: 50},        // saturation: left out
		{Case: "SchedulingBasic_Tessera", Workload: "full", PodsPerSec: 1}, // no full ceiling
	}
	got := ceilingSection(recs, []*sb.Record{{Case: ceilingCase, Workload: "quick", PodsPerSec: 1000}})
	for _, want := range []string{
		"| SchedulingBasic/quick | 1000 | Tessera | 700 | 70% |",
		"| SchedulingBasic/quick | 1000 | default kube-scheduler 1.37 | 500 | 50% |",
		"| TAS/quick | 1000 | Tessera | 600 | 60% |",
		"| Tessera's bind rate ≥ 70% of the ceiling (SchedulingBasic/quick) | 70% (700 of 1000 binds/s) | yes |",
		"| Tessera's bind rate ≥ 70% of the ceiling (TAS/quick) | 60% (600 of 1000 binds/s) | **no** |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, absent := range []string{"coscheduling", "GPUMix", "/full"} {
		if strings.Contains(got, absent) {
			t.Errorf("%q should not be in\n%s", absent, got)
		}
	}
	if ceilingSection(recs, nil) != "" {
		t.Error("a run without the ceiling workload must add no section")
	}
}
