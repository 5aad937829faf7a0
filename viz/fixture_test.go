package viz

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run go test ./viz -run %s -update to create it): %v", t.Name(), err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test ./viz -update rewrites it):\n%s", path, diff)
	}
}

// t0 is the fixtures' "now".
var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func gpuUUID(node string, i int) string { return fmt.Sprintf("GPU-%s-%d", node, i) }

// inventory is the annotation of a node with n GPUs of spg slices, NVLink
// between all of them; the listed GPUs are unhealthy.
func inventory(node string, n, spg int, strategy api.SharingStrategy, unhealthy ...int) string {
	inv := &api.Inventory{Strategy: strategy, SlicesPerGPU: spg}
	bad := map[int]bool{}
	for _, i := range unhealthy {
		bad[i] = true
	}
	for i := range n {
		var peers []string
		for j := range n {
			if j != i {
				peers = append(peers, gpuUUID(node, j))
			}
		}
		inv.GPUs = append(inv.GPUs, api.GPU{UUID: gpuUUID(node, i), Index: i, Product: "NVIDIA H100 80GB HBM3",
			MemoryMiB: 81559, Slices: spg, Healthy: !bad[i], NUMA: i / 4, NVLinkPeers: peers})
	}
	s, err := inv.Marshal()
	if err != nil {
		panic(err)
	}
	return s
}

func mkNode(name string, labels map[string]string, inv string, ready bool) corev1.Node {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionUnknown
	}
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: map[string]string{}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
	if inv != "" {
		n.Annotations[api.AnnotationInventory] = inv
	}
	return n
}

type podOpt func(*corev1.Pod)

// on binds the pod to node and assigns it the slices (gpu, k) pairs.
func on(node string, slices ...[2]int) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.NodeName = node
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.NewTime(p.CreationTimestamp.Add(2 * time.Second))})
		if len(slices) > 0 {
			p.Annotations[api.AnnotationSliceAssignment] = sliceList(node, slices...)
		}
	}
}

// wholeGPUs is the slices of GPUs first..first+n-1 of spg slices each.
func wholeGPUs(first, n, spg int) [][2]int {
	var out [][2]int
	for g := first; g < first+n; g++ {
		for k := range spg {
			out = append(out, [2]int{g, k})
		}
	}
	return out
}

func sliceList(node string, slices ...[2]int) string {
	ids := make([]string, len(slices))
	for i, s := range slices {
		ids[i] = api.SliceID{GPU: gpuUUID(node, s[0]), Index: s[1]}.String()
	}
	return strings.Join(ids, ",")
}

func allocated(node string, slices ...[2]int) podOpt {
	return func(p *corev1.Pod) { p.Annotations[api.AnnotationSlicesAllocated] = sliceList(node, slices...) }
}

func podGroup(name string) podOpt {
	return func(p *corev1.Pod) { p.Labels[api.LabelPodGroup] = name }
}

func lws(key string, size int, exclusive string) podOpt {
	return func(p *corev1.Pod) {
		p.Labels[api.LabelLWSGroupKey] = key
		p.Annotations[api.AnnotationLWSSize] = fmt.Sprint(size)
		if exclusive != "" {
			p.Annotations[api.AnnotationLWSExclTopo] = exclusive
		}
	}
}

func native(name string) podOpt {
	return func(p *corev1.Pod) { p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &name} }
}

func created(ago time.Duration) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t0.Add(-ago)) }
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

func unschedulable(msg string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodPending
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: msg})
	}
}

func mkPod(ns, name string, slices int, opts ...podOpt) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name),
			Labels: map[string]string{}, Annotations: map[string]string{}, CreationTimestamp: metav1.NewTime(t0.Add(-10 * time.Minute))},
		Spec: corev1.PodSpec{SchedulerName: api.SchedulerName, Containers: []corev1.Container{{Name: "main"}}},
	}
	if slices > 0 {
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(slices), resource.DecimalSI)}
	}
	for _, o := range opts {
		o(&p)
	}
	// Options may have moved the creation time; keep PodScheduled after it.
	for i := range p.Status.Conditions {
		if c := &p.Status.Conditions[i]; c.Status == corev1.ConditionTrue {
			c.LastTransitionTime = metav1.NewTime(p.CreationTimestamp.Add(2 * time.Second))
		}
	}
	return p
}

func event(ns, kind, name, reason, typ, msg string, ago time.Duration) corev1.Event {
	return corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: name + "." + strings.ToLower(reason), UID: types.UID("ev-" + ns + name + reason)},
		InvolvedObject: corev1.ObjectReference{Kind: kind, Namespace: ns, Name: name},
		Reason:         reason, Type: typ, Message: msg,
		EventTime:           metav1.NewMicroTime(t0.Add(-ago)),
		ReportingController: api.SchedulerName,
	}
}

// fixture16 is a 16-node cluster in 4 NVLink cliques with every situation
// the views must show: gangs from all three sources, placed and pending,
// single pods sharing a GPU, a hand-off mismatch, a slice claimed twice,
// an unhealthy GPU, an MPS node, a NotReady node and an unreadable
// inventory.
func fixture16() *Input {
	in := &Input{Now: t0}
	for i := range 16 {
		name := fmt.Sprintf("gpu-node-%d", i)
		labels := map[string]string{api.LabelClique: fmt.Sprintf("c%d", i/4), api.LabelRack: fmt.Sprintf("rack-%d", i/8)}
		strategy := api.StrategyTimeSlice
		if i == 9 {
			strategy = api.StrategyMPS
		}
		var unhealthy []int
		if i == 5 {
			unhealthy = []int{7}
		}
		inv := inventory(name, 8, 4, strategy, unhealthy...)
		if i == 15 {
			inv = `{"version":"tessera.dev/v2","gpus":[]}`
		}
		in.Nodes = append(in.Nodes, mkNode(name, labels, inv, i != 14))
	}
	in.Nodes = append(in.Nodes, mkNode("cpu-node-0", nil, "", true))

	// A: PodGroup gang of 4 whole-GPU ranks in clique c0.
	for r, place := range [][2]int{{0, 0}, {0, 1}, {1, 0}, {1, 1}} {
		node := fmt.Sprintf("gpu-node-%d", place[0])
		in.Pods = append(in.Pods, mkPod("ml", fmt.Sprintf("llama-70b-%d", r), 4, podGroup("llama-70b"), created(5*time.Minute),
			on(node, wholeGPUs(place[1], 1, 4)...), allocated(node, wholeGPUs(place[1], 1, 4)...)))
	}
	in.Groups = append(in.Groups, Group{Namespace: "ml", Name: "llama-70b", Source: gang.SourcePodGroup, MinMember: 4, Created: t0.Add(-5 * time.Minute), Phase: "Running"})
	in.Events = append(in.Events, event("ml", "PodGroup", "llama-70b", "GangPlaced", "Normal", "all 4 members bound in nvidia.com/gpu.clique=c0", 5*time.Minute-2*time.Second))

	// B: LeaderWorkerSet group of 2 ranks of two whole GPUs in clique c1.
	for r, node := range []string{"gpu-node-4", "gpu-node-5"} {
		in.Pods = append(in.Pods, mkPod("ml", fmt.Sprintf("mixtral-0-%d", r), 8, lws("mixtral-0", 2, api.LabelClique), created(3*time.Minute),
			on(node, wholeGPUs(0, 2, 4)...)))
	}
	// C: native PodGroup of 4 ranks of 2 slices, distinct GPUs.
	for r := range 4 {
		in.Pods = append(in.Pods, mkPod("research", fmt.Sprintf("tp4-%d", r), 2, native("tp4"), created(90*time.Second),
			on("gpu-node-8", [2]int{r, 0}, [2]int{r, 1})))
	}
	in.Groups = append(in.Groups, Group{Namespace: "research", Name: "tp4", Source: gang.SourceNative, MinMember: 4, Required: api.LabelRack, Created: t0.Add(-90 * time.Second)},
		Group{Namespace: "research", Name: "one-by-one", Source: gang.SourceNative, NotGang: true})

	// D: a gang too big for any clique.
	for r := range 8 {
		in.Pods = append(in.Pods, mkPod("ml", fmt.Sprintf("pending-big-%d", r), 16, podGroup("pending-big"), created(2*time.Minute),
			unschedulable("0/17 nodes are available: gang ml/pending-big cannot be placed.")))
	}
	in.Groups = append(in.Groups, Group{Namespace: "ml", Name: "pending-big", Source: gang.SourcePodGroup, MinMember: 8, Created: t0.Add(-2 * time.Minute), Phase: "Pending"})
	in.Events = append(in.Events,
		event("ml", "PodGroup", "pending-big", "GangNotReady", "Warning", "gang ml/pending-big is not declared yet", 119*time.Second),
		event("ml", "PodGroup", "pending-big", "GangUnschedulable", "Warning", "no nvidia.com/gpu.clique domain has room for 8 members of 16 slices (best: c2 with 3)", 30*time.Second))
	// E: waits for a member that does not exist.
	for r := range 2 {
		in.Pods = append(in.Pods, mkPod("ml", fmt.Sprintf("waiting-%d", r), 1, podGroup("waiting"), created(40*time.Second)))
	}
	in.Groups = append(in.Groups, Group{Namespace: "ml", Name: "waiting", Source: gang.SourcePodGroup, MinMember: 3, Created: t0.Add(-41 * time.Second)})
	// F: rejected after its timeout.
	for r := range 2 {
		in.Pods = append(in.Pods, mkPod("ml", fmt.Sprintf("rejected-%d", r), 4, podGroup("rejected"), created(3*time.Minute)))
	}
	in.Groups = append(in.Groups, Group{Namespace: "ml", Name: "rejected", Source: gang.SourcePodGroup, MinMember: 2, Created: t0.Add(-3 * time.Minute)})
	in.Events = append(in.Events, event("ml", "PodGroup", "rejected", "GangRejected", "Warning", "gang timed out after 60s with 1/2 members reserved", 70*time.Second))

	// Single pods.
	in.Pods = append(in.Pods,
		mkPod("default", "notebook-1", 1, on("gpu-node-0", [2]int{2, 0})),
		mkPod("default", "notebook-2", 1, on("gpu-node-0", [2]int{2, 1}), allocated("gpu-node-0", [2]int{2, 1})),
		// The kubelet handed other slices than assigned: the map shows
		// the allocation.
		mkPod("default", "notebook-3", 2, on("gpu-node-2", [2]int{3, 0}, [2]int{3, 1}), allocated("gpu-node-2", [2]int{3, 2}, [2]int{3, 3})),
		mkPod("default", "zz-conflict", 1, on("gpu-node-2", [2]int{3, 2})),
		mkPod("research", "basic-0", 1, native("one-by-one"), on("gpu-node-10", [2]int{5, 3})),
		mkPod("default", "infer-4", 1, on("gpu-node-9", [2]int{0, 0}), allocated("gpu-node-9", [2]int{0, 0})),
		mkPod("default", "pending-1", 4, created(20*time.Second), unschedulable("0/17 nodes are available: 16 no GPU has 4 free slices.")),
		mkPod("default", "done-1", 4, on("gpu-node-3", wholeGPUs(0, 1, 4)...), phase(corev1.PodSucceeded)),
		mkPod("default", "cpu-only", 0, on("cpu-node-0")),
	)
	in.Events = append(in.Events,
		event("default", "Pod", "pending-1", "FailedScheduling", "Warning", "0/17 nodes are available: 16 no GPU has 4 free slices.", 10*time.Second),
		event("default", "Pod", "notebook-3", "AllocatedDiffersFromAssignment", "Warning", "kubelet allocated GPU-gpu-node-2-3::2,GPU-gpu-node-2-3::3, scheduler assigned GPU-gpu-node-2-3::0,GPU-gpu-node-2-3::1", 4*time.Minute))
	return in
}

// fixture1000 is 1000 nodes in cliques of 18 (NVL72-like), 60 gangs placed
// inside one clique each, 2000 single pods and a few unhealthy GPUs; random
// but seeded, so the goldens are stable.
func fixture1000() *Input {
	const nodes, perClique, gpus, spg = 1000, 18, 8, 4
	rng := rand.New(rand.NewPCG(1, 2))
	in := &Input{Now: t0}
	type gpuFree struct{ free [gpus]int }
	free := make([]gpuFree, nodes)
	unhealthy := map[int][]int{}
	for range 20 {
		n := rng.IntN(nodes)
		unhealthy[n] = append(unhealthy[n], rng.IntN(gpus))
	}
	names := make([]string, nodes)
	for i := range nodes {
		names[i] = fmt.Sprintf("gpu-%04d", i)
		labels := map[string]string{api.LabelClique: fmt.Sprintf("nvl-%02d", i/perClique), api.LabelRack: fmt.Sprintf("rack-%02d", i/(2*perClique))}
		in.Nodes = append(in.Nodes, mkNode(names[i], labels, inventory(names[i], gpus, spg, api.StrategyTimeSlice, unhealthy[i]...), true))
		for g := range gpus {
			free[i].free[g] = spg
		}
		for _, g := range unhealthy[i] {
			free[i].free[g] = 0
		}
	}
	// Single pods take a GPU's slices from index 0 up.
	nextSlice := func(n, g int) int { return spg - free[n].free[g] }
	for gi := range 60 {
		members := 4 + rng.IntN(13)
		req := []int{4, 8}[rng.IntN(2)]
		clique := rng.IntN(nodes / perClique)
		name := fmt.Sprintf("gang-%02d", gi)
		in.Groups = append(in.Groups, Group{Namespace: "team", Name: name, Source: gang.SourcePodGroup, MinMember: members, Created: t0.Add(-time.Hour)})
		r := 0
		for n := clique * perClique; n < min(nodes, (clique+1)*perClique) && r < members; n++ {
			for {
				var whole []int
				for g := range gpus {
					if free[n].free[g] == spg {
						whole = append(whole, g)
					}
				}
				if len(whole) < req/spg || r == members {
					break
				}
				var sl [][2]int
				for _, g := range whole[:req/spg] {
					sl = append(sl, wholeGPUs(g, 1, spg)...)
					free[n].free[g] = 0
				}
				in.Pods = append(in.Pods, mkPod("team", fmt.Sprintf("%s-%d", name, r), req, podGroup(name), created(time.Hour), on(names[n], sl...)))
				r++
			}
		}
		for ; r < members; r++ {
			in.Pods = append(in.Pods, mkPod("team", fmt.Sprintf("%s-%d", name, r), req, podGroup(name), created(time.Hour)))
		}
	}
	for i := range 2000 {
		n, g := rng.IntN(nodes), rng.IntN(gpus)
		req := 1 + rng.IntN(2)
		if free[n].free[g] < req {
			continue
		}
		var sl [][2]int
		for range req {
			sl = append(sl, [2]int{g, nextSlice(n, g)})
			free[n].free[g]--
		}
		in.Pods = append(in.Pods, mkPod("default", fmt.Sprintf("single-%04d", i), req, on(names[n], sl...)))
	}
	return in
}
