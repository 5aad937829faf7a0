package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

func TestWritesPerPod(t *testing.T) {
	cases := map[string]struct {
		rec       sb.Record
		wantOK    bool
		wantTotal float64
		wantCols  []float64
	}{
		"gang workload": {
			// 8 pods in 2 gangs; node and namespace creation are setup.
			rec: sb.Record{BoundPods: 8, APIWrites: map[string]int{
				"POST nodes": 10, "POST namespaces": 1,
				"POST pods": 8, "POST podgroups": 2, "POST pods/binding": 8, "PATCH pods/status": 6,
				"PATCH pods": 1, "POST events": 10, "PATCH podgroups/status": 2, "PUT leases": 1,
			}},
			wantOK:    true,
			wantTotal: 38.0 / 8,
			wantCols:  []float64{10.0 / 8, 1, 6.0 / 8, 1.0 / 8, 10.0 / 8, 2.0 / 8, 1.0 / 8},
		},
		"no counts (another module)": {rec: sb.Record{BoundPods: 8}},
		"nothing bound":              {rec: sb.Record{APIWrites: map[string]int{"POST pods": 8}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			total, cols, ok := writesPerPod(&tc.rec)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if total != tc.wantTotal {
				t.Errorf("total = %v, want %v", total, tc.wantTotal)
			}
			if diff := cmp.Diff(tc.wantCols, cols); diff != "" {
				t.Errorf("columns (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCostSection(t *testing.T) {
	rec := func(c string, pods int, writes map[string]int, alg, att float64) *sb.Record {
		return &sb.Record{Case: c, Workload: "quick", BoundPods: pods, APIWrites: writes, GroupAlgorithmP50Ms: alg, GroupAlgorithmP99Ms: 2 * alg, GroupAttemptP50Ms: att}
	}
	gang := map[string]int{"POST pods": 4, "POST podgroups": 1, "POST pods/binding": 4, "PATCH podgroups/status": 1}
	run := func(alg float64) []*sb.Record {
		return []*sb.Record{
			rec("TAS_Tessera", 4, gang, alg, 20),
			rec("TAS_Native", 4, gang, 5, 27),
			rec("CreateBindCeiling", 4, map[string]int{"POST pods": 4, "POST pods/binding": 4}, 0, 0),
			// The coscheduling module counts no writes: no row.
			{Case: "TAS_Coscheduling", Workload: "quick", BoundPods: 4},
		}
	}
	sec := costSection([][]*sb.Record{run(1), run(2), run(3)})
	for _, want := range []string{
		"Medians (min–max) over the 3 runs.",
		"| TAS/quick | Tessera | 2.50 | 1.25 | 1.00 | 0 | 0 | 0 | 0.25 | 0 | 2.0 (1.0–3.0); p99 4.0 | 20.0 |",
		"| TAS/quick | native GangScheduling + TAS 1.37 | 2.50 | 1.25 | 1.00 | 0 | 0 | 0 | 0.25 | 0 | 5.0; p99 10.0 | 27.0 |",
		"| SchedulingBasic/quick | none: create-and-bind ceiling | 2.00 | 1.00 | 1.00 | 0 | 0 | 0 | 0 | 0 | – | – |",
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("missing %q in\n%s", want, sec)
		}
	}
	if strings.Contains(sec, "coscheduling") {
		t.Errorf("a row for a record without write counts:\n%s", sec)
	}
	if got := costSection([][]*sb.Record{{{Case: "TAS_Coscheduling", Workload: "quick", BoundPods: 4}}}); got != "" {
		t.Errorf("costSection without any counts = %q, want no section", got)
	}
}
