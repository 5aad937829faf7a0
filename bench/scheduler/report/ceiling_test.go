package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

// TestCeilingSection: each scheduler's rate is divided by both ceilings of
// its own run, and the targets are judged by the median of those
// within-run shares, not by the median rows (from different runs).
func TestCeilingSection(t *testing.T) {
	run := func(bindOnly, createBind, tess float64) []*sb.Record {
		return []*sb.Record{
			{Case: "BindCeiling", Workload: "quick", PodsPerSec: bindOnly},
			{Case: "CreateBindCeiling", Workload: "quick", PodsPerSec: createBind},
			{Case: "SchedulingBasic_Tessera", Workload: "quick", PodsPerSec: tess, CreatedPerSec: 2 * tess},
			{Case: "SchedulingBasic_Default", Workload: "quick", PodsPerSec: tess / 2},
			{Case: "TAS_Tessera", Workload: "quick", PodsPerSec: 300},
			{Case: "TAS_Coscheduling", Workload: "quick", PodsPerSec: 90},      // another API server: left out
			{Case: "GPUMix_Tessera", Workload: "quick", PodsPerSec: 50},        // saturation: left out
			{Case: "SchedulingBasic_Tessera", Workload: "full", PodsPerSec: 1}, // no full ceiling
		}
	}
	// Shares of the create-and-bind ceiling: 80%, 50%, 75%; the median rows
	// (ceiling 500, Tessera 300) would say 60%.
	runs := [][]*sb.Record{run(1000, 500, 400), run(1000, 600, 300), run(1000, 400, 300)}
	got := ceilingSection(runs)
	for _, want := range []string{
		"| SchedulingBasic/quick | bind-only | 1000 (1000–1000) | Tessera | 300 (300–400) | 600 (600–800) | 30% (30–40%) |",
		"| SchedulingBasic/quick | create-and-bind | 500 (400–600) | default kube-scheduler 1.37 | 150 (150–200) | – | 38% (25–40%) |",
		"| Tessera's bind rate ≥ 70% of the bind-only ceiling (SchedulingBasic/quick) | 30%, median of 3 within-run shares (30–40%) | **no** |",
		"| Tessera's bind rate ≥ 70% of the create-and-bind ceiling (SchedulingBasic/quick) | 75%, median of 3 within-run shares (50–80%) | yes |",
		"| Tessera's bind rate ≥ 70% of the create-and-bind ceiling (TAS/quick) | 60%, median of 3 within-run shares (50–75%) | **no** |",
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
	// The bind-only rows come before the create-and-bind rows.
	if i, j := strings.Index(got, "| bind-only |"), strings.Index(got, "| create-and-bind |"); i < 0 || j < i {
		t.Errorf("bind-only rows should come first:\n%s", got)
	}

	one := ceilingSection(runs[:1])
	if diff := cmp.Diff(true, strings.Contains(one, "| Tessera's bind rate ≥ 70% of the create-and-bind ceiling (SchedulingBasic/quick) | 80% (400 of 500 binds/s) | yes |")); diff != "" {
		t.Errorf("one run (-want +got):\n%s\n%s", diff, one)
	}
	if ceilingSection([][]*sb.Record{run(1000, 500, 400)[2:]}) != "" {
		t.Error("a run without a ceiling workload must add no section")
	}
	missing := ceilingSection([][]*sb.Record{{{Case: "BindCeiling", Workload: "quick", Pods: 1000, BoundPods: 10}}})
	if !strings.Contains(missing, "BindCeiling/quick not measured in run 1 (10 of 1000 pods bound)") {
		t.Errorf("a ceiling that bound too few pods must say so:\n%s", missing)
	}
}
