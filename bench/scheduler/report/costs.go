package main

import (
	"fmt"
	"slices"
	"strings"

	sb "github.com/tessera-gpu/tessera/bench/scheduler"
)

// writeClasses sorts apiserver_request_total's write keys ("VERB
// resource[/subresource]", Record.APIWrites) into the columns of the
// costs table, in column order. Node and namespace creation is the
// cluster's setup, before any pod exists, and is left out.
var writeClasses = []struct {
	label string
	keys  []string
}{
	{"creates (pods, PodGroups)", []string{"POST pods", "POST podgroups"}},
	{"Bindings", []string{"POST pods/binding"}},
	{"pod status patches", []string{"PATCH pods/status", "PUT pods/status", "APPLY pods/status"}},
	{"pod patches", []string{"PATCH pods", "PUT pods", "APPLY pods"}},
	{"events", []string{"POST events", "PATCH events"}},
	{"PodGroup status", []string{"PATCH podgroups/status", "PUT podgroups/status", "APPLY podgroups/status"}},
}

var setupWrites = []string{"POST nodes", "POST namespaces"}

// writesPerPod is the workload's API writes per bound pod, in total and
// per writeClasses column, the last column everything else (leases,
// claims, ...); ok is false for a record without write counts (the
// baseline modules) or without bound pods.
func writesPerPod(r *sb.Record) (total float64, cols []float64, ok bool) {
	if len(r.APIWrites) == 0 || r.BoundPods == 0 {
		return 0, nil, false
	}
	cols = make([]float64, len(writeClasses)+1)
	for k, n := range r.APIWrites {
		if slices.Contains(setupWrites, k) {
			continue
		}
		col := len(writeClasses)
		for i, c := range writeClasses {
			if slices.Contains(c.keys, k) {
				col = i
			}
		}
		cols[col] += float64(n)
		total += float64(n)
	}
	for i := range cols {
		cols[i] /= float64(r.BoundPods)
	}
	return total / float64(r.BoundPods), cols, true
}

// costSection says where a run's time went on the API server and in the
// 1.37 core's pod-group cycle: every workload's API writes per bound pod
// (what the throughput rows are made of on a machine whose API server is
// the bottleneck), and for gang workloads the pod-group algorithm (the
// plugins' work for one group) beside the whole attempt (the algorithm
// plus the core's synchronous PodGroup status patch). Medians over runs.
func costSection(runs [][]*sb.Record) string {
	type fig struct {
		total, alg, alg99, att []float64
		cols                   [][]float64
	}
	figs := map[string]*fig{}
	var order []string
	for _, run := range runs {
		for _, r := range run {
			total, cols, ok := writesPerPod(r)
			if !ok {
				continue
			}
			k := recordKey(r)
			f := figs[k]
			if f == nil {
				f = &fig{cols: make([][]float64, len(cols))}
				figs[k] = f
				order = append(order, k)
			}
			f.total = append(f.total, total)
			for i, c := range cols {
				f.cols[i] = append(f.cols[i], c)
			}
			f.alg = append(f.alg, r.GroupAlgorithmP50Ms)
			f.alg99 = append(f.alg99, r.GroupAlgorithmP99Ms)
			f.att = append(f.att, r.GroupAttemptP50Ms)
		}
	}
	if len(order) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n## Where the time goes: API writes and the pod-group cycle\n\n")
	b.WriteString("On 2 cores the API server and etcd share the machine with the scheduler and the workload's pod creation, so the throughput rows above are set largely by how many API writes each bound pod costs. Writes are counted by the API server itself (`apiserver_request_total` of the benchmark process, from the cluster being up to the end of the workload; node and namespace creation left out), per bound pod. ")
	b.WriteString("With GenericWorkload on, the 1.37 core schedules a gang in one pod-group cycle and, before it pops the next group, patches the PodGroup's status synchronously (`PodGroupInitiallyScheduled`): the **attempt** is the algorithm plus that patch, the **algorithm** is the plugins' own work for the group (scheduler_perf's `scheduler_podgroup_scheduling_algorithm_duration_seconds` and `…_attempt_duration_seconds`, result scheduled). Where the attempt is many times the algorithm, gangs wait on the API server, not on the plugins.")
	if len(runs) > 1 {
		fmt.Fprintf(&b, " Medians (min–max) over the %d runs.", len(runs))
	}
	b.WriteString("\n\n| workload | scheduler | API writes per bound pod |")
	for _, c := range writeClasses {
		b.WriteString(" " + c.label + " |")
	}
	b.WriteString(" other | pod-group algorithm ms p50; p99 | pod-group attempt ms p50 |\n|---|---|---|")
	b.WriteString(strings.Repeat("---|", len(writeClasses)+3))
	b.WriteString("\n")
	for _, k := range order {
		f := figs[k]
		parts := strings.SplitN(k, "/", 2)
		fam, v := family(parts[0])
		name := schedulerName(fam, v)
		if isCeiling(parts[0]) {
			name = "none: " + ceilingLabel(parts[0]) + " ceiling"
			fam = "SchedulingBasic"
		}
		fmt.Fprintf(&b, "| %s/%s | %s | %s |", fam, parts[1], name, spreadFixed(f.total, 2, "0"))
		for _, c := range f.cols {
			fmt.Fprintf(&b, " %s |", spreadFixed(c, 2, "0"))
		}
		alg := spreadFixed(f.alg, 1, "–")
		if a99 := nonZero(f.alg99); alg != "–" && len(a99) > 0 {
			alg += fmt.Sprintf("; p99 %.1f", spreadOf(a99).med)
		}
		fmt.Fprintf(&b, " %s | %s |\n", alg, spreadFixed(f.att, 1, "–"))
	}
	return b.String()
}

// spreadFixed is spreadText with a fixed number of decimals: the median,
// and min-max where they differ at that precision; none when no run
// measured it. Per-pod write counts take two (0.25 PodGroup patches per pod
// is one per 4-pod gang), milliseconds one.
func spreadFixed(vs []float64, decimals int, none string) string {
	vs = nonZero(vs)
	if len(vs) == 0 {
		return none
	}
	sp := spreadOf(vs)
	med, lo, hi := fmt.Sprintf("%.*f", decimals, sp.med), fmt.Sprintf("%.*f", decimals, sp.lo), fmt.Sprintf("%.*f", decimals, sp.hi)
	if lo == hi {
		return med
	}
	return med + " (" + lo + "–" + hi + ")"
}

func nonZero(vs []float64) []float64 {
	return slices.DeleteFunc(slices.Clone(vs), func(v float64) bool { return v == 0 })
}
