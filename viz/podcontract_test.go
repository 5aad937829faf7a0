package viz

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
)

// TestMalformedAllocationFallsBack: a slices-allocated annotation that does
// not parse is warned about, and the pod is shown on its assignment, as the
// scheduler's ledger counts it (api/podspec.HeldSlices).
func TestMalformedAllocationFallsBack(t *testing.T) {
	bad := mkPod("default", "bad", 2, on("n0", [2]int{0, 0}, [2]int{0, 1}))
	bad.Annotations[api.AnnotationSlicesAllocated] = "not-a-slice"
	s := Build(&Input{Now: t0, Nodes: []corev1.Node{mkNode("n0", nil, inventory("n0", 1, 4, api.StrategyTimeSlice), true)},
		Pods: []corev1.Pod{bad}})
	n, _ := s.NodeByName("n0")
	want := []Slice{{SlicePod, "default/bad", ""}, {SlicePod, "default/bad", ""}, {State: SliceFree}, {State: SliceFree}}
	if diff := cmp.Diff(want, n.GPUs[0].Slices); diff != "" {
		t.Errorf("slices (-want +got):\n%s", diff)
	}
	if w := strings.Join(n.Warnings, "\n"); !strings.Contains(w, "pod default/bad: annotation "+api.AnnotationSlicesAllocated) {
		t.Errorf("warnings %q, want the malformed allocation named", n.Warnings)
	}
	e, err := s.Explain("default", "bad")
	if err != nil {
		t.Fatal(err)
	}
	if e.SlicesFrom != api.AnnotationSliceAssignment || len(e.Slices) != 2 {
		t.Errorf("explain holds %v from %q, want the 2 assigned slices", e.Slices, e.SlicesFrom)
	}
	if r := strings.Join(e.Reasons, "\n"); !strings.Contains(r, "unreadable") || strings.Contains(r, "MISMATCH") {
		t.Errorf("reasons %q: want the unreadable annotation, no mismatch", e.Reasons)
	}
}

// TestCapacityWholeGPUsAreFullSize: a GPU with fewer slices than the node's
// slicesPerGPU (slicing by memory) never serves a whole-GPU rank, as in the
// scheduler (api/podspec.RanksThatFit).
func TestCapacityWholeGPUsAreFullSize(t *testing.T) {
	inv := &api.Inventory{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4, GPUs: []api.GPU{
		{UUID: gpuUUID("n0", 0), Index: 0, Slices: 4, Healthy: true},
		{UUID: gpuUUID("n0", 1), Index: 1, Slices: 2, Healthy: true},
	}}
	raw, err := inv.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := Build(&Input{Now: t0, Nodes: []corev1.Node{mkNode("n0", nil, raw, true)}})
	for req, want := range map[int]int{1: 2, 2: 2, 3: 1, 4: 1, 8: 0} {
		if got := s.capacity(req, nil).MembersThatFit; got != want {
			t.Errorf("capacity(%d) = %d members, want %d", req, got, want)
		}
	}
}
