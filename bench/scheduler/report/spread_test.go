package main

import (
	"strings"
	"testing"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

func TestRepeatedRuns(t *testing.T) {
	run := func(tess, def float64) []*sb.Record {
		return []*sb.Record{
			{Case: "SchedulingBasic_Tessera", Workload: "quick", PodsPerSec: tess},
			{Case: "SchedulingBasic_Default", Workload: "quick", PodsPerSec: def},
			{Case: ceilingCase, Workload: "quick", PodsPerSec: 1000},
		}
	}
	runs := [][]*sb.Record{run(200, 100), run(300, 200), run(100, 200)}

	med := medianRun(runs)
	got := map[string]float64{}
	for _, r := range med {
		got[r.Case] = r.PodsPerSec
	}
	if got["SchedulingBasic_Tessera"] != 200 || got["SchedulingBasic_Default"] != 200 || len(med) != 3 {
		t.Errorf("median rows = %v (%d rows), want Tessera 200 and default 200, one row per workload", got, len(med))
	}

	sec := spreadSection(runs)
	for _, want := range []string{
		"## Spread over 3 runs",
		"| SchedulingBasic/quick | Tessera | 200 | 100–300 |  |  |  |",
		// Within-run ratios 2.00, 1.50, 0.50: median 1.50.
		"| SchedulingBasic/quick | default kube-scheduler 1.37 | 200 | 100–200 | **1.50×** | 0.50–2.00× | 2.00, 1.50, 0.50 |",
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("missing %q in\n%s", want, sec)
		}
	}
	if strings.Contains(sec, ceilingCase) {
		t.Errorf("the ceiling has its own section:\n%s", sec)
	}
	if spreadSection(runs[:1]) != "" || len(medianRun(runs[:1])) != 3 {
		t.Error("a single run must render as before")
	}
}
