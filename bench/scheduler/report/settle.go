package main

import (
	"fmt"
	"slices"
	"strings"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

// saturationSection says, for every GPU mix row of every run, whether the
// cluster was full when the row was measured. The GPU mix is measured once
// every pod has been tried and then either no slice is free or the size's
// settle has passed (sb.SettleUntilFull); a pod that did not fit waits up to
// 10 s of backoff before its next try. Where no slice is free no retry can
// place a pod, so a longer wait could not change a figure; a row with free
// slices is listed, its utilisation a lower bound for that run.
func saturationSection(runs [][]*sb.Record) string {
	type notFull struct {
		run int
		rec *sb.Record
	}
	var rows, full int
	var filled []float64
	var open []notFull
	for i, run := range runs {
		for _, r := range run {
			if !strings.HasPrefix(r.Case, "GPUMix") || r.TotalSlices == 0 {
				continue
			}
			rows++
			if r.FreeSlices == 0 {
				full++
				filled = append(filled, r.SettleMs/1000)
				continue
			}
			open = append(open, notFull{i + 1, r})
		}
	}
	if rows == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n## Saturation check (GPU mix)\n\n")
	b.WriteString("The GPU mix is measured once every pod has been tried (scheduler_perf's `barrier` Attempted; Koordinator's harness waits the same way) and then, polling every 0.5 s, as soon as no slice is free, or when the size's settle has passed (5 / 10 / 30 s smoke / quick / full; a pod that did not fit is retried after at most 10 s of backoff): `SettleUntilFull` in bench/scheduler/record.go. With no slice free no retry can place another pod, so a longer wait cannot change the row's figures.\n\n")
	if len(open) == 0 {
		runsText := fmt.Sprintf("%d runs", len(runs))
		if len(runs) == 1 {
			runsText = "1 run"
		}
		fmt.Fprintf(&b, "All %d GPU mix rows (%s) ended with 0 free slices: the cluster was full when measured. Settle: %s.\n", rows, runsText, settleSpread(filled))
		return b.String()
	}
	fmt.Fprintf(&b, "%d of %d GPU mix rows ended with 0 free slices. These did not: a retry after the settle might have placed more, so their utilisation is a lower bound for that run.\n\n", full, rows)
	b.WriteString("| run | workload | scheduler | free slices | of which on partly used GPUs | pods bound / created | settle |\n|---|---|---|---|---|---|---|\n")
	for _, o := range open {
		f, v := family(o.rec.Case)
		fmt.Fprintf(&b, "| %d | %s/%s | %s | %d | %d | %d / %d | %.1f s |\n", o.run, f, o.rec.Workload, schedulerName(f, v), o.rec.FreeSlices, o.rec.FragFree1, o.rec.BoundPods, o.rec.Pods, o.rec.SettleMs/1000)
	}
	if len(filled) > 0 {
		fmt.Fprintf(&b, "\nSettle of the rows that filled: %s.\n", settleSpread(filled))
	}
	return b.String()
}

// settleSpread is the median and min–max of settle times in seconds;
// records written before the settle was timed (a fixed sleep op until
// 2026-12-06) have none.
func settleSpread(vs []float64) string {
	if slices.Max(vs) == 0 {
		return "not timed (a fixed sleep before 2026-12-06)"
	}
	sp := spreadOf(vs)
	return fmt.Sprintf("%.1f s median (%.1f–%.1f s)", sp.med, sp.lo, sp.hi)
}
