package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestDRANarrowedThenWide: with more DRA nodes than a single slice pod is
// first tried on (16, scheduler/dra_narrow.go), pods still go best fit with
// every claim holding exactly the planned slices, and a pod that only a
// worse-fitting node can take (the 16 best-fit nodes lack the CPU it asks
// for) is bound there by the wide retry right after, not left pending.
func TestDRANarrowedThenWide(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const nodes, gpus = 20, 1
	ns := "dra-narrow"
	startDRASim(t, ctx, ns, nodes, gpus, 4)
	pinned := func(p *v1.Pod, node string) *v1.Pod {
		p.Spec.NodeSelector = map[string]string{v1.LabelHostname: node}
		return p
	}

	// 17 nodes get a 1-slice pod each (pinned), so they fit a 1-slice pod
	// better than the 3 empty ones.
	var fillers []string
	for i := range 17 {
		name := fmt.Sprintf("filler-%d", i)
		createPods(t, ctx, pinned(gpuPod(ns, name, 1, nil), fmt.Sprintf("dra-sim-%d", i)))
		fillers = append(fillers, name)
	}
	waitBound(t, ctx, ns, fillers, 2*time.Minute)

	// Only dra-sim-19, an empty node, has the CPU the next pod asks for.
	// (kwok gives its nodes 1k CPUs.)
	big := resource.MustParse("10k")
	patch := fmt.Sprintf(`{"status":{"allocatable":{"cpu":%q},"capacity":{"cpu":%q}}}`, big.String(), big.String())
	patchNodeStatus(t, ctx, "dra-sim-19", patch)
	cpuPod := gpuPod(ns, "needs-cpu", 1, nil)
	cpuPod.Spec.NodeSelector = map[string]string{draSimLabel: "true"}
	cpuPod.Spec.Containers[0].Resources.Requests = v1.ResourceList{v1.ResourceCPU: resource.MustParse("5k")}
	cpuPod.Spec.Containers[0].Resources.Limits[v1.ResourceCPU] = resource.MustParse("5k")
	t0 := time.Now()
	createPods(t, ctx, cpuPod)
	got := waitBound(t, ctx, ns, []string{"needs-cpu"}, time.Minute)["needs-cpu"]
	if got.Spec.NodeName != "dra-sim-19" {
		t.Errorf("pod needs-cpu bound to %s, want dra-sim-19, the only node with its CPU", got.Spec.NodeName)
	}
	t.Logf("pod needs-cpu bound to %s %s after creation", got.Spec.NodeName, time.Since(t0).Round(10*time.Millisecond))
	// The narrowed attempt ran first and said so.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := env.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=needs-cpu"})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedScheduling" && strings.Contains(e.Message, "DRA nodes the pod fits best") {
				t.Logf("narrowed attempt: %s", e.Message)
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Errorf("no FailedScheduling event for the narrowed attempt of pod needs-cpu: the test did not exercise narrowing")
	}

	// Best fit through the narrowed path: 1-slice pods fill the partly
	// used GPUs (3 free slices each) before the empty ones.
	var small []string
	for i := range 6 {
		name := fmt.Sprintf("small-%d", i)
		p := gpuPod(ns, name, 1, nil)
		p.Spec.NodeSelector = map[string]string{draSimLabel: "true"}
		createPods(t, ctx, p)
		small = append(small, name)
	}
	bound := waitBound(t, ctx, ns, small, time.Minute)
	for _, name := range small {
		if n := bound[name].Spec.NodeName; n == "dra-sim-17" || n == "dra-sim-18" {
			t.Errorf("pod %s went to the empty node %s while partly used GPUs had room (not best fit)", name, n)
		}
	}
	checkClaimsAsPlanned(t, ctx, ns, append(append(fillers, "needs-cpu"), small...))
}
