package koordinator

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestMixCycle: a cycle of mixPod is mix-pod.yaml's: 27 pods, 134 slices,
// gangs of 8, 4, 2, 4 and 2 ranks whose members agree on gang and size,
// each pod's gpu-memory its slices x 10Gi.
func TestMixCycle(t *testing.T) {
	slices, gangs := 0, map[string]int{}
	for i := range 27 {
		p := mixPod(27 + i) // the second cycle: gang names gang-5..gang-9
		k, s, size := mixShape(i)
		slices += s
		mem := p.Spec.Containers[0].Resources.Limits["koordinator.sh/gpu-memory"]
		if mem.Value() != int64(s)*sliceMemory.Value() {
			t.Errorf("pod %d: gpu-memory %s for %d slices", i, mem.String(), s)
		}
		if got := p.Spec.Containers[0].Resources.Limits["koordinator.sh/gpu.shared"]; got.Value() != 1 {
			t.Errorf("pod %d: gpu.shared %s, want 1", i, got.String())
		}
		if k < 0 {
			if len(p.Annotations) != 0 {
				t.Errorf("single pod %d has gang annotations %v", i, p.Annotations)
			}
			continue
		}
		name := p.Annotations["gang.scheduling.koordinator.sh/name"]
		if name != p.Labels["bench.tessera.dev/gang"] || p.Annotations["gang.scheduling.koordinator.sh/min-available"] != p.Labels["bench.tessera.dev/size"] {
			t.Errorf("pod %d: gang annotations %v disagree with labels %v", i, p.Annotations, p.Labels)
		}
		if !strings.Contains(p.Annotations["gang.scheduling.koordinator.sh/network-topology-spec"], "CliqueLayer") {
			t.Errorf("pod %d: no clique MustGather", i)
		}
		gangs[name]++
		if gangs[name] > size {
			t.Errorf("gang %s has more than its %d ranks", name, size)
		}
	}
	want := map[string]int{"gang-5": 8, "gang-6": 4, "gang-7": 2, "gang-8": 4, "gang-9": 2}
	if slices != 134 || len(gangs) != 5 {
		t.Errorf("cycle: %d slices, gangs %v; want 134 slices, %v", slices, gangs, want)
	}
	for g, n := range want {
		if gangs[g] != n {
			t.Errorf("gang %s has %d ranks, want %d", g, gangs[g], n)
		}
	}
}

func TestAllocatedSlices(t *testing.T) {
	pod := func(ann string) *v1.Pod {
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: v1.PodSpec{NodeName: "node-3"}}
		if ann != "" {
			p.Annotations = map[string]string{"scheduling.koordinator.sh/device-allocated": ann}
		}
		return p
	}
	got, err := allocatedSlices(pod(`{"gpu":[{"minor":2,"resources":{"koordinator.sh/gpu-core":"0","koordinator.sh/gpu-memory":"20Gi"}}]}`))
	if err != nil || strings.Join(got, ",") != "GPU-node-3-2,GPU-node-3-2" {
		t.Errorf("20Gi on GPU 2 = %v, %v; want two slices of GPU-node-3-2", got, err)
	}
	for name, ann := range map[string]string{
		"no allocation": "",
		"bad JSON":      "{",
		"partial slice": `{"gpu":[{"minor":0,"resources":{"koordinator.sh/gpu-memory":"15Gi"}}]}`,
	} {
		if _, err := allocatedSlices(pod(ann)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
