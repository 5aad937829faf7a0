package main

import (
	"strings"
	"testing"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

func TestSaturationSection(t *testing.T) {
	full := func(c string) *sb.Record {
		return &sb.Record{Case: c, Workload: "quick", TotalSlices: 4096, UsedSlices: 4096, Pods: 918, BoundPods: 830, SettleMs: 1500}
	}
	open := &sb.Record{Case: "GPUMix_Native", Workload: "quick", TotalSlices: 4096, UsedSlices: 2400, Stranded: 1600, FreeSlices: 96, FragFree1: 0, Pods: 918, BoundPods: 500, SettleMs: 10020}
	cases := map[string]struct {
		runs    [][]*sb.Record
		want    []string
		notWant []string
	}{
		"every row full": {
			runs: [][]*sb.Record{
				{full("GPUMix_Tessera"), full("GPUMix_Native"), {Case: "TAS_Tessera", Workload: "quick"}},
				{full("GPUMix_Tessera"), full("GPUMix_Native")},
			},
			want:    []string{"All 4 GPU mix rows (2 runs) ended with 0 free slices", "Settle: 1.5 s median (1.5–1.5 s)."},
			notWant: []string{"lower bound"},
		},
		"one row with free slices": {
			runs: [][]*sb.Record{
				{full("GPUMix_Tessera"), full("GPUMix_Native")},
				{full("GPUMix_Tessera"), open},
			},
			want: []string{
				"3 of 4 GPU mix rows ended with 0 free slices",
				"| 2 | GPUMix/quick | default 1.37 + native gang/TAS, whole nvidia.com/gpu | 96 | 0 | 500 / 918 | 10.0 s |",
				"Settle of the rows that filled: 1.5 s median (1.5–1.5 s).",
			},
			notWant: []string{"All 4"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := saturationSection(tc.runs)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in:\n%s", w, got)
				}
			}
		})
	}
	untimed := full("GPUMix_Tessera")
	untimed.SettleMs = 0
	if got := saturationSection([][]*sb.Record{{untimed}}); !strings.Contains(got, "Settle: not timed") {
		t.Errorf("records without settle times: got\n%s\nwant it to say the settle was not timed", got)
	}
	if got := saturationSection([][]*sb.Record{{{Case: "SchedulingBasic_Tessera", Workload: "quick"}}}); got != "" {
		t.Errorf("no GPU mix rows: got %q, want nothing", got)
	}
}
