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
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
)

// TestDRASwitchingNodeWaits: right after a node agent switches from the
// device plugin to DRA, the kubelet still reports allocatable
// tessera.dev/gpu-slice until its next node status update, and
// kube-scheduler would send a pod asking for that resource down the
// device-plugin path, where the kubelet rejects it (seen in CI on a real
// kubelet). Here simulated DRA nodes are given that stale allocatable:
// a single slice pod and a 2-rank gang stay pending, the single pod with
// Tessera's reason, and nothing binds; once the allocatable goes, all of
// them bind and every claim holds exactly the planned slices (the DRA path).
func TestDRASwitchingNodeWaits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const nodes, gpus = 2, 2
	ns := "dra-switch"
	startDRASim(t, ctx, ns, nodes, gpus, nodes)
	onDRA := func(p *v1.Pod) *v1.Pod {
		p.Spec.NodeSelector = map[string]string{draSimLabel: "true"}
		return p
	}

	// The stale allocatable, with a probe resource in the same node
	// update: once a pod asking for the probe is bound on a node, the
	// scheduler's snapshot holds that update, stale slices included.
	const probe = v1.ResourceName("tessera.dev/test-probe")
	var probes []string
	for i := range nodes {
		node := fmt.Sprintf("dra-sim-%d", i)
		patch := fmt.Sprintf(`{"status":{"allocatable":{%q:"%d",%q:"1"},"capacity":{%q:"%d",%q:"1"}}}`,
			api.ResourceName, gpus*slicesPerGPU, probe, api.ResourceName, gpus*slicesPerGPU, probe)
		patchNodeStatus(t, ctx, node, patch)
		p := gpuPod(ns, "probe-"+node, 0, nil)
		p.Spec.Containers[0].Resources = v1.ResourceRequirements{Limits: v1.ResourceList{probe: resource.MustParse("1")}}
		p.Spec.NodeSelector = map[string]string{v1.LabelHostname: node}
		createPods(t, ctx, p)
		probes = append(probes, p.Name)
	}
	waitBound(t, ctx, ns, probes, time.Minute)

	createPods(t, ctx, onDRA(gpuPod(ns, "single", 1, nil)))
	_, gang := createCliqueGangs(t, ctx, ns, "tp", 1, 2, func(name string, labels map[string]string) *v1.Pod {
		return onDRA(gpuPod(ns, name, 2, labels))
	})
	all := append([]string{"single"}, gang...)
	for _, name := range all {
		if err := waitUnschedulable(ctx, ns, name); err != nil {
			t.Fatalf("pod %s not reported unschedulable on nodes whose kubelet still reports device-plugin slices: %v", name, err)
		}
	}
	p, err := env.client.CoreV1().Pods(ns).Get(ctx, "single", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var msg string
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodScheduled {
			msg = c.Message
		}
	}
	if want := "its kubelet still reports allocatable " + string(api.ResourceName); !strings.Contains(msg, want) {
		t.Errorf("pod single's PodScheduled message %q does not say %q", msg, want)
	}
	for _, name := range all {
		if p, err := env.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && p.Spec.NodeName != "" {
			t.Errorf("pod %s bound to %s while its kubelet still reports device-plugin slices", name, p.Spec.NodeName)
		}
	}

	// The kubelet's next status update: no device-plugin slices.
	t0 := time.Now()
	for i := range nodes {
		patch := fmt.Sprintf(`{"status":{"allocatable":{%q:null},"capacity":{%q:null}}}`, api.ResourceName, api.ResourceName)
		patchNodeStatus(t, ctx, fmt.Sprintf("dra-sim-%d", i), patch)
	}
	waitBound(t, ctx, ns, all, 2*time.Minute)
	t.Logf("single pod and 2-rank gang bound %s after the nodes stopped reporting device-plugin slices", time.Since(t0).Round(10*time.Millisecond))
	checkClaimsAsPlanned(t, ctx, ns, all)
}

// patchNodeStatus merges patch (JSON) into the node's status, as a kubelet's
// status update would: the simulated nodes' allocatable in the DRA tests.
func patchNodeStatus(t *testing.T, ctx context.Context, node, patch string) {
	t.Helper()
	if _, err := env.client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("patching node %s status: %v", node, err)
	}
}
