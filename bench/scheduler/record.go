// Package scheduler_bench is Tessera's kube-scheduler benchmark: upstream
// k8s.io/kubernetes/test/integration/scheduler_perf with Tessera in its
// out-of-tree registry, our own workloads (performance-config.yaml) and a
// collector that adds the figures scheduler_perf does not measure (gang
// latency, partial gangs, alignment, slice utilisation, fragmentation).
//
//	PATH=$PWD/.tools:$PATH go test ./bench/scheduler -run '^$' -bench . \
//	    -perf-scheduling-label-filter=quick -tessera-records /tmp/records.jsonl
//
// bench/run.sh runs it (and the baseline module, bench/baseline) and renders
// bench/results/<date>.md with the report command (./report).
package scheduler_bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// Record is one workload's figures, one JSON line in the records file.
type Record struct {
	Name     string `json:"name"`
	Case     string `json:"case"`
	Workload string `json:"workload"`
	Nodes    int    `json:"nodes"`

	Pods      int `json:"pods"`
	BoundPods int `json:"boundPods"`
	// PodsPerSec is bound pods over the time from the first to the last
	// bind (this collector's own view; scheduler_perf's SchedulingThroughput
	// is merged in by the report). SampleP50/P99 are per-second samples
	// over the same window.
	PodsPerSec float64 `json:"podsPerSec"`
	SampleP50  float64 `json:"sampleP50"`
	SampleP99  float64 `json:"sampleP99"`
	// CreatedPerSec is pods over the time from the first to the last pod
	// the collector saw created: the rate work arrived at. No scheduler
	// binds faster than its pods arrive, so a PodsPerSec close to it says
	// the workload, not the scheduler, set the pace.
	CreatedPerSec float64 `json:"createdPerSec,omitempty"`

	Gangs        int `json:"gangs"`
	GangsPlaced  int `json:"gangsPlaced"`
	PartialGangs int `json:"partialGangs"`
	// AlignedRack/AlignedClique count placed gangs whose members all share
	// one rack / one NVLink clique.
	AlignedRack   int     `json:"alignedRack"`
	AlignedClique int     `json:"alignedClique"`
	GangP50Ms     float64 `json:"gangP50Ms"`
	GangP99Ms     float64 `json:"gangP99Ms"`

	TotalSlices int `json:"totalSlices"`
	UsedSlices  int `json:"usedSlices"`
	FreeSlices  int `json:"freeSlices"`
	// FragFree1 are free slices on GPUs that are partly taken (they cannot
	// host a whole-GPU rank); FragFree2 are free slices not on a node with at
	// least two wholly free GPUs (they cannot host a 2-GPU rank).
	FragFree1 int `json:"fragFree1"`
	FragFree2 int `json:"fragFree2"`
	// Stranded are slices held by a pod that did not ask for them (a
	// fractional pod holding a whole nvidia.com/gpu).
	Stranded int `json:"stranded"`

	PeakHeapMiB float64 `json:"peakHeapMiB"`

	// FeatureGates is the state of each of WorkloadGates in the benchmark
	// process (API server and scheduler share it) while the workload ran.
	// A gate the process's Kubernetes version does not know is absent.
	FeatureGates map[string]bool `json:"featureGates,omitempty"`

	// APIWrites are the write requests the API server served while the
	// workload ran (its node creation included), by "VERB
	// resource[/subresource]" (apiserver_request_total of the benchmark's
	// own process; absent where the harness cannot count them).
	APIWrites map[string]int `json:"apiWrites,omitempty"`

	// Filled in by the report from scheduler_perf's data items.
	ThroughputAvg float64 `json:"throughputAvg,omitempty"`
	ThroughputP50 float64 `json:"throughputP50,omitempty"`
	ThroughputP99 float64 `json:"throughputP99,omitempty"`
	// GroupAlgorithmP50Ms/P99Ms and GroupAttemptP50Ms are the 1.37 core's
	// pod-group cycle, one per gang attempt (GenericWorkload on):
	// scheduler_podgroup_scheduling_algorithm_duration_seconds (the plugins'
	// work for the whole group) and
	// scheduler_podgroup_scheduling_attempt_duration_seconds with result
	// scheduled (the algorithm plus the core's submission, which patches
	// the PodGroup's status synchronously before the next group is popped).
	GroupAlgorithmP50Ms float64 `json:"groupAlgorithmP50Ms,omitempty"`
	GroupAlgorithmP99Ms float64 `json:"groupAlgorithmP99Ms,omitempty"`
	GroupAttemptP50Ms   float64 `json:"groupAttemptP50Ms,omitempty"`

	// SettleMs is how long the GPU mix waited, after every pod had been
	// tried once, before it was measured (SettleUntilFull): until no slice
	// was free, or the size's whole settle.
	SettleMs float64 `json:"settleMs,omitempty"`
}

// GPUMixSettle is, per size, the longest the GPU mix waits after every pod
// has been tried once (scheduler_perf's barrier Attempted) for retries to
// place what they can: kube-scheduler retries a pod it turned away within
// its backoff of at most 10 s of the event that may let it fit, and full
// mode adds time for its 14,202 pods. Every harness (bench/scheduler,
// bench/baseline, bench/koordinator) uses it through SettleUntilFull.
var GPUMixSettle = map[string]time.Duration{"smoke": 5 * time.Second, "quick": 10 * time.Second, "full": 30 * time.Second}

// GPUMixSettleFor is the settle of a GPU mix workload named
// "<benchmark>/GPUMix_<variant>/<size>" (a benchmark's name); ok is false
// for every other workload.
func GPUMixSettleFor(name string) (settle time.Duration, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) < 3 || !strings.HasPrefix(parts[len(parts)-2], "GPUMix") {
		return 0, false
	}
	settle, ok = GPUMixSettle[parts[len(parts)-1]]
	return settle, ok
}

// Measure is a workload's record once it is done: a GPU mix's once it has
// settled (SettleUntilFull with the size's GPUMixSettle), any other
// workload's at once. name is the benchmark's name; measure lists the
// cluster and computes the record.
func Measure(ctx context.Context, name string, measure func() (*Record, error)) (*Record, error) {
	if settle, ok := GPUMixSettleFor(name); ok {
		return SettleUntilFull(ctx, settle, SettlePoll, measure)
	}
	return measure()
}

// SettlePoll is how often SettleUntilFull measures: a list of every node
// and pod, cheap beside the workload at every size.
const SettlePoll = 500 * time.Millisecond

// SettleUntilFull measures a saturated GPU mix once no slice is free, or
// once max has passed, whichever comes first, polling every poll. With no
// slice free no pod can be placed, whatever the retries, so waiting longer
// cannot change a figure; a cluster that does not fill waits the whole max,
// as a fixed settle would (before 2026-12-06 the harnesses slept the whole
// settle every time). measure lists the cluster and computes the record;
// the returned record carries SettleMs.
func SettleUntilFull(ctx context.Context, maxWait, poll time.Duration, measure func() (*Record, error)) (*Record, error) {
	start := time.Now()
	deadline := start.Add(maxWait)
	for {
		rec, err := measure()
		if err != nil {
			return nil, err
		}
		if (rec.TotalSlices > 0 && rec.FreeSlices == 0) || !time.Now().Before(deadline) {
			rec.SettleMs = float64(time.Since(start).Microseconds()) / 1000
			return rec, nil
		}
		wait := min(poll, time.Until(deadline))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("settling the GPU mix: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
}

// WorkloadGates are the feature gates that change how gangs are scheduled
// (1.37: GenericWorkload serves scheduling.k8s.io PodGroups and runs the
// core's pod-group cycle; TopologyAwareWorkloadScheduling adds the native
// topology placement). Each record says how they were set.
var WorkloadGates = []string{"GenericWorkload", "TopologyAwareWorkloadScheduling"}

// Utilisation is used/total slices in percent (0 without GPUs).
func (r *Record) Utilisation() float64 {
	if r.TotalSlices == 0 {
		return 0
	}
	return 100 * float64(r.UsedSlices) / float64(r.TotalSlices)
}

// Input is the final cluster state plus the collector's timings.
type Input struct {
	Nodes   []NodeInput
	Pods    []PodInput
	Created map[string]time.Time
	Bound   map[string]time.Time
}

type NodeInput struct {
	Name, Rack, Clique string
	GPUs               []GPUInput
}

type GPUInput struct {
	UUID   string
	Slices int
}

type PodInput struct {
	Key, Node, Gang  string
	GangSize, Slices int
	// Assigned has one GPU UUID per slice of tessera.dev/slice-assignment;
	// empty for pods placed by a whole-GPU scheduler.
	Assigned []string
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(i, 0)]
}

func (r *Record) compute(in Input) {
	nodes := map[string]*NodeInput{}
	for i := range in.Nodes {
		nodes[in.Nodes[i].Name] = &in.Nodes[i]
	}
	// Throughput from bind times.
	var binds []time.Time
	for _, p := range in.Pods {
		r.Pods++
		if p.Node == "" {
			continue
		}
		r.BoundPods++
		if t, ok := in.Bound[p.Key]; ok {
			binds = append(binds, t)
		}
	}
	sort.Slice(binds, func(i, j int) bool { return binds[i].Before(binds[j]) })
	var first, last time.Time
	for _, p := range in.Pods {
		if t, ok := in.Created[p.Key]; ok {
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if t.After(last) {
				last = t
			}
		}
	}
	if span := last.Sub(first).Seconds(); span > 0 {
		r.CreatedPerSec = float64(r.Pods) / span
	}
	if len(binds) > 1 {
		span := binds[len(binds)-1].Sub(binds[0]).Seconds()
		if span > 0 {
			r.PodsPerSec = float64(len(binds)) / span
		}
		buckets := make([]float64, int(span)+1)
		for _, t := range binds {
			buckets[int(t.Sub(binds[0]).Seconds())]++
		}
		if len(buckets) > 1 { // the last second is partial
			buckets = buckets[:len(buckets)-1]
		}
		sort.Float64s(buckets)
		r.SampleP50, r.SampleP99 = percentile(buckets, 0.5), percentile(buckets, 0.99)
	}

	// Gangs.
	type gang struct {
		size, bound     int
		racks, cliques  map[string]bool
		first, lastBind time.Time
	}
	gangs := map[string]*gang{}
	for _, p := range in.Pods {
		if p.Gang == "" {
			continue
		}
		g := gangs[p.Gang]
		if g == nil {
			g = &gang{size: p.GangSize, racks: map[string]bool{}, cliques: map[string]bool{}}
			gangs[p.Gang] = g
		}
		if t, ok := in.Created[p.Key]; ok && (g.first.IsZero() || t.Before(g.first)) {
			g.first = t
		}
		if p.Node == "" {
			continue
		}
		g.bound++
		if n := nodes[p.Node]; n != nil {
			g.racks[n.Rack] = true
			g.cliques[n.Clique] = true
		}
		if t, ok := in.Bound[p.Key]; ok && t.After(g.lastBind) {
			g.lastBind = t
		}
	}
	var lat []float64
	for _, g := range gangs {
		r.Gangs++
		switch {
		case g.bound == 0:
		case g.bound < g.size:
			r.PartialGangs++
		default:
			r.GangsPlaced++
			if len(g.racks) == 1 {
				r.AlignedRack++
			}
			if len(g.cliques) == 1 {
				r.AlignedClique++
			}
			if !g.first.IsZero() && !g.lastBind.IsZero() {
				lat = append(lat, float64(g.lastBind.Sub(g.first).Microseconds())/1000)
			}
		}
	}
	sort.Float64s(lat)
	r.GangP50Ms, r.GangP99Ms = percentile(lat, 0.5), percentile(lat, 0.99)

	// Slices.
	used := map[string]int{}      // GPU UUID -> slices taken (Tessera)
	wholeGPUs := map[string]int{} // node -> whole GPUs taken (baseline)
	for _, p := range in.Pods {
		if p.Node == "" || p.Slices == 0 {
			continue
		}
		r.UsedSlices += p.Slices
		if len(p.Assigned) > 0 {
			for _, g := range p.Assigned {
				used[g]++
			}
		} else {
			wholeGPUs[p.Node]++
		}
	}
	for _, n := range in.Nodes {
		if len(n.GPUs) == 0 {
			continue
		}
		freeWhole, free := 0, 0
		// A whole-GPU scheduler's pods take GPUs the device plugin picks;
		// which ones does not matter for counting.
		taken := wholeGPUs[n.Name]
		for _, g := range n.GPUs {
			r.TotalSlices += g.Slices
			if taken > 0 {
				taken--
				continue
			}
			f := g.Slices - used[g.UUID]
			free += f
			if f == g.Slices {
				freeWhole++
			} else {
				r.FragFree1 += f
			}
		}
		r.FreeSlices += free
		if freeWhole >= 2 {
			r.FragFree2 += free - freeWhole*n.GPUs[0].Slices
		} else {
			r.FragFree2 += free
		}
	}
	for _, p := range in.Pods {
		if p.Node != "" && p.Slices > 0 && len(p.Assigned) == 0 {
			if n := nodes[p.Node]; n != nil && len(n.GPUs) > 0 {
				r.Stranded += n.GPUs[0].Slices - p.Slices
			}
		}
	}
}

// append adds the record as one JSON line to path (the -tessera-records
// file every harness writes); no path, no write.
func (r *Record) append(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(b, '\n'))
	return err
}
