package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

// claimProbePod is the probe (it prints its environment) with the claims
// of the given templates instead of slice limits.
func claimProbePod(ns, name string, templates ...string) *corev1.Pod {
	p := scenario.SlicePod(ns, name, 0, scenario.PodOptions{})
	c := &p.Spec.Containers[0]
	c.Resources = corev1.ResourceRequirements{}
	for i, tmpl := range templates {
		n := fmt.Sprintf("c%d", i)
		p.Spec.ResourceClaims = append(p.Spec.ResourceClaims, corev1.PodResourceClaim{Name: n, ResourceClaimTemplateName: ptr.To(tmpl)})
		c.Resources.Claims = append(c.Resources.Claims, corev1.ResourceClaim{Name: n})
	}
	return p
}

// podClaim returns the allocated claim the pod's first claim became.
func podClaim(ctx context.Context, t *testing.T, e *scenario.Env, pod *corev1.Pod) *resourceapi.ResourceClaim {
	t.Helper()
	if len(pod.Status.ResourceClaimStatuses) == 0 || pod.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		t.Fatalf("pod %s has no generated claim (%+v)", pod.Name, pod.Status.ResourceClaimStatuses)
	}
	c, err := e.Client.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, *pod.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Allocation == nil {
		t.Fatalf("claim %s of running pod %s is not allocated", c.Name, pod.Name)
	}
	return c
}

// TestDRAClaimsOnRealNode switches the real node's agent to DRA mode (the
// DRA component on the local overlay, as an operator would) and runs the
// example ResourceClaimTemplates, applied unchanged, through the real
// kubelet and containerd v2 (CDI): a 10 GiB memory share, a whole GPU and
// a TP rank's 2 slices of one GPU. Each container's environment shows
// exactly the allocated device; deleting the pods unprepares the claims
// (their CDI specs go) and the devices are allocatable again; a claim for
// more memory than any GPU has stays pending with a clear event and
// reserves nothing. The node agent goes back to device-plugin mode after.
func TestDRAClaimsOnRealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e := env(t)
	const overlay = "../manifests/overlays/local"
	inv := realNodeInventory(ctx, t, e)
	t0 := time.Now()
	if err := testCluster.InstallTesseraDRA(ctx, overlay); err != nil {
		t.Fatal(err)
	}
	figure(t, "dra_switch_to_slices_published_seconds", time.Since(t0).Seconds(), "s")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		for _, c := range []string{"gpu.tessera.dev", "gpu-slice.tessera.dev", "gpu-memory.tessera.dev"} {
			_ = e.Client.ResourceV1().DeviceClasses().Delete(ctx, c, metav1.DeleteOptions{})
		}
		if err := testCluster.InstallTessera(ctx, overlay); err != nil {
			t.Errorf("back to device-plugin mode: %v", err)
		}
		_ = e.Client.ResourceV1().ResourceSlices().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
	})

	// The published devices: each of the real node's GPUs, in its clique.
	slices, err := e.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName + ",spec.nodeName=" + testCluster.RealNodeName})
	if err != nil {
		t.Fatal(err)
	}
	devices := map[string]resourceapi.Device{}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			devices[d.Name] = d
		}
	}
	if want := len(inv.GPUs) * (inv.SlicesPerGPU + 2); len(devices) != want {
		t.Errorf("%d devices published, want %d (%d GPUs × %d slices + whole + shared)", len(devices), want, len(inv.GPUs), inv.SlicesPerGPU)
	}
	uuidOf := func(device string) string {
		d, ok := devices[device]
		if !ok {
			t.Fatalf("allocated device %s is not published", device)
		}
		return *d.Attributes[dra.AttrUUID].StringValue
	}
	for _, d := range devices {
		if c := d.Attributes[dra.AttrClique].StringValue; c == nil || *c != "real-node" {
			t.Errorf("device %s has clique %v, want real-node", d.Name, c)
			break
		}
	}

	ns := createNamespace(ctx, t, "dra")
	defer freeRealNode(t, e, ns)
	pin := []byte(`{"metadata":{"annotations":{"scheduler.alpha.kubernetes.io/node-selector":"` + scenario.RealNodeLabel + `=true"}}}`)
	if _, err := e.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, pin, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var examplePod *corev1.Pod
	for _, obj := range readExample(t, "../manifests/examples/dra-claims.yaml") {
		switch obj.GetKind() {
		case "ResourceClaimTemplate":
			var tmpl resourceapi.ResourceClaimTemplate
			if err := fromUnstructured(obj, &tmpl); err != nil {
				t.Fatal(err)
			}
			if _, err := e.Client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, &tmpl, metav1.CreateOptions{}); err != nil {
				t.Fatalf("example template %s: %v", tmpl.Name, err)
			}
		case "Pod":
			examplePod = &corev1.Pod{}
			if err := fromUnstructured(obj, examplePod); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("example has unexpected kind %s", obj.GetKind())
		}
	}
	for _, p := range []*corev1.Pod{
		claimProbePod(ns, "ten", "gpu-memory-10gib"),
		claimProbePod(ns, "whole", "whole-gpu"),
		claimProbePod(ns, "rank", "tp-rank-2-slices"),
	} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 3, 2*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatalf("%v\n%s", err, describePods(ctx, e, ns))
	}
	specs := map[string]bool{}
	for _, p := range pods {
		c := podClaim(ctx, t, e, &p)
		specs[filepath.Join(testCluster.CDISpecDir(), dra.DriverName+"-claim_"+string(c.UID)+".json")] = true
		res := c.Status.Allocation.Devices.Results
		envs := probeEnv(ctx, t, e, ns, p.Name)
		gpu := uuidOf(res[0].Device)
		var got []string
		for _, r := range res {
			got = append(got, r.Device)
		}
		t.Logf("pod %s: claim %s allocated %v; %s=%s %s=%s %s=%s", p.Name, c.Name, got,
			api.EnvVisibleDevices, envs[api.EnvVisibleDevices], api.EnvSlices, envs[api.EnvSlices], api.EnvMemoryLimitMiB, envs[api.EnvMemoryLimitMiB])
		if envs[api.EnvVisibleDevices] != gpu {
			t.Errorf("%s: %s = %q, want the allocated %s's GPU %s", p.Name, api.EnvVisibleDevices, envs[api.EnvVisibleDevices], res[0].Device, gpu)
		}
		switch p.Name {
		case "ten":
			if len(res) != 1 || !strings.HasSuffix(res[0].Device, "-shared") || envs[api.EnvMemoryLimitMiB] != "10240" || envs[api.EnvSlices] != "" {
				t.Errorf("10 GiB claim: devices %v, env %v; want one shared device and a 10240 MiB limit", res, envs)
			}
		case "whole":
			var all []api.SliceID
			for k := 0; k < inv.SlicesPerGPU; k++ {
				all = append(all, api.SliceID{GPU: gpu, Index: k})
			}
			if len(res) != 1 || envs[api.EnvSlices] != api.FormatSliceList(all) || envs[api.EnvMemoryLimitMiB] != "81920" {
				t.Errorf("whole-GPU claim: devices %v, env %v; want all of GPU %s", res, envs, gpu)
			}
		case "rank":
			var want []api.SliceID
			for _, r := range res {
				id, err := api.ParseSliceID(*devices[r.Device].Attributes[dra.AttrSliceID].StringValue)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, id)
			}
			if len(res) != 2 || len(api.GPUsOf(want)) != 1 || envs[api.EnvSlices] != api.FormatSliceList(want) {
				t.Errorf("TP rank claim: devices %v, env %v; want 2 slices of one GPU, %s", res, envs, api.FormatSliceList(want))
			}
		}
	}
	for s := range specs {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("prepared claim's CDI spec: %v", err)
		}
	}

	// A pod that asks for tessera.dev/gpu-slice: 2, unchanged from the
	// device-plugin path: the extended-resource DeviceClass serves it
	// through DRA, and the slices it gets are exactly the ones Tessera
	// planned (tessera.dev/slice-assignment), on a GPU the three claims
	// above leave room on (Tessera read their allocations).
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, scenario.SlicePod(ns, "slices", 2, scenario.PodOptions{}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 4, 2*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatalf("gpu-slice pod through DRA: %v\n%s", err, describePods(ctx, e, ns))
	}
	taken := map[string]string{} // GPU -> pod, for GPUs the claims hold whole
	for _, p := range pods {
		if p.Name != "rank" {
			taken[uuidOf(podClaim(ctx, t, e, &p).Status.Allocation.Devices.Results[0].Device)] = p.Name
		}
	}
	for _, p := range running {
		if p.Name != "slices" {
			continue
		}
		planned, err := api.ParseSliceList(p.Annotations[api.AnnotationSliceAssignment])
		if err != nil || len(planned) != 2 {
			t.Fatalf("pod slices: assignment %q (%v)", p.Annotations[api.AnnotationSliceAssignment], err)
		}
		if p.Status.ExtendedResourceClaimStatus == nil {
			t.Fatalf("pod slices did not go through DRA (no extended-resource claim)")
		}
		envs := probeEnv(ctx, t, e, ns, p.Name)
		t.Logf("pod slices: planned %s; claim %s; %s=%s %s=%s", api.FormatSliceList(planned), p.Status.ExtendedResourceClaimStatus.ResourceClaimName,
			api.EnvVisibleDevices, envs[api.EnvVisibleDevices], api.EnvSlices, envs[api.EnvSlices])
		if envs[api.EnvSlices] != api.FormatSliceList(planned) || envs[api.EnvVisibleDevices] != planned[0].GPU {
			t.Errorf("pod slices: env %s=%q %s=%q, want exactly the planned %s", api.EnvSlices, envs[api.EnvSlices], api.EnvVisibleDevices, envs[api.EnvVisibleDevices], api.FormatSliceList(planned))
		}
		if other, ok := taken[planned[0].GPU]; ok {
			t.Errorf("pod slices planned on GPU %s, which %s's claim holds", planned[0].GPU, other)
		}
		pods = append(pods, p)
	}

	// Restart the kubelet and kill the node agent with the claims
	// prepared: the running containers stay as they are, the driver reads
	// what is prepared back from its CDI specs, and a new claim gets only
	// free slices.
	if err := testCluster.RestartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	figure(t, "dra_node_agent_kill_to_ready_seconds", killNodeAgent(ctx, t, e, testCluster.WaitForTesseraDRA).Seconds(), "s")
	held := map[api.SliceID]string{}
	for _, p := range pods {
		switch p.Name {
		case "rank":
			for _, r := range podClaim(ctx, t, e, &p).Status.Allocation.Devices.Results {
				id, _ := api.ParseSliceID(*devices[r.Device].Attributes[dra.AttrSliceID].StringValue)
				held[id] = p.Name
			}
		case "slices":
			ids, _ := api.ParseSliceList(p.Annotations[api.AnnotationSliceAssignment])
			for _, id := range ids {
				held[id] = p.Name
			}
		}
	}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, claimProbePod(ns, "rank-after-restart", "tp-rank-2-slices"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	after, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 5, 2*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatalf("after the restarts: %v\n%s", err, describePods(ctx, e, ns))
	}
	for _, p := range after {
		if p.Name != "rank-after-restart" {
			if rc := p.Status.ContainerStatuses[0].RestartCount; rc != 0 {
				t.Errorf("pod %s restarted %d times across the kubelet and node agent restarts", p.Name, rc)
			}
			continue
		}
		envs := probeEnv(ctx, t, e, ns, p.Name)
		ids, err := api.ParseSliceList(envs[api.EnvSlices])
		if err != nil || len(ids) != 2 {
			t.Fatalf("%s: %s=%q (%v)", p.Name, api.EnvSlices, envs[api.EnvSlices], err)
		}
		for _, id := range ids {
			if other, ok := held[id]; ok {
				t.Errorf("slice %s prepared for %s after the restarts is still %s's", id, p.Name, other)
			}
		}
		t.Logf("after the kubelet and node agent restarts: %s got %s", p.Name, envs[api.EnvSlices])
	}
	for s := range specs {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("a prepared claim's CDI spec is gone after the restarts: %v", err)
		}
	}

	// The example pod, unchanged: a real shard server sizing its KV cache
	// from the 10 GiB share.
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, examplePod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, "", 6, 2*time.Minute, "ready", func(p *corev1.Pod) bool {
		return p.Name != examplePod.Name && scenario.Running(p) || scenario.Ready(p)
	}); err != nil {
		t.Fatalf("example pod: %v\n%s", err, describePods(ctx, e, ns))
	}
	logs, err := e.Client.CoreV1().Pods(ns).GetLogs(examplePod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || !strings.Contains(string(logs), "TESSERA_MEMORY_LIMIT_MIB=10240") {
		t.Errorf("example pod's KV cache not sized from its 10 GiB claim (%v):\n%s", err, logs)
	}

	// More memory than any GPU has, or a selector on an attribute
	// Tessera's devices do not have: pending, the event says why, nothing
	// allocated.
	refusedClaim(ctx, t, e, ns, "huge", resourceapi.ExactDeviceRequest{DeviceClassName: "gpu-memory.tessera.dev",
		Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{dra.CapMemory: resource.MustParse("200Gi")}}},
		"cannot allocate all claims")
	refusedClaim(ctx, t, e, ns, "unknown-attr", resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.tessera.dev",
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.attributes["gpu.tessera.dev"].vendorSecret == "x"`}}}},
		"vendorSecret")
	// A malformed DeviceClass never gets in: the API server says why.
	bad := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "broken.tessera.dev"}, Spec: resourceapi.DeviceClassSpec{
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.driver == `}}}}}
	if _, err := e.Client.ResourceV1().DeviceClasses().Create(ctx, bad, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "compilation failed") {
		t.Errorf("malformed DeviceClass: %v, want a CEL compilation error", err)
	} else {
		t.Logf("malformed DeviceClass refused: %v", err)
	}

	// Deleted pods: claims unprepared (CDI specs gone) and deallocated, and
	// every GPU can be claimed whole again.
	if err := e.DeleteAndWait(ctx, ns, "", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the claims' CDI specs removed", 200*time.Millisecond, time.Minute, func(context.Context) (bool, string) {
		for s := range specs {
			if _, err := os.Stat(s); err == nil {
				return false, s + " still there"
			}
		}
		return true, ""
	})
	// The demo's DRA step (make demo, step 6) on the same node: a pod with
	// a claim from the shipped tp-rank-2-slices template, whose plan,
	// allocation and environment must agree.
	var demo bytes.Buffer
	t.Cleanup(func() {
		_ = e.Client.CoreV1().Namespaces().Delete(context.Background(), scenario.DRADemoNamespace, metav1.DeleteOptions{})
	})
	if err := scenario.RunDRADemo(ctx, e, &demo, "../manifests/examples/dra-claims.yaml"); err != nil {
		t.Fatalf("the demo's DRA step: %v\n%s\n%s", err, demo.String(), describePods(ctx, e, scenario.DRADemoNamespace))
	}
	t.Logf("the demo's DRA step:\n%s", demo.String())
	if err := e.DeleteAndWait(ctx, scenario.DRADemoNamespace, "", 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	var again []*corev1.Pod
	for i := range inv.GPUs {
		again = append(again, claimProbePod(ns, fmt.Sprintf("again-%d", i), "whole-gpu"))
	}
	for _, p := range again {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", len(again), 2*time.Minute, "running", scenario.Running); err != nil {
		t.Fatalf("every GPU whole again after the claims were released: %v\n%s", err, describePods(ctx, e, ns))
	}
}

func fromUnstructured(u *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into)
}

// refusedClaim creates claim name with one request and a probe pod using
// it, waits for the scheduler's event to contain want, and checks the
// claim stays unallocated.
func refusedClaim(ctx context.Context, t *testing.T, e *scenario.Env, ns, name string, req resourceapi.ExactDeviceRequest, want string) {
	t.Helper()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &req}}}},
	}
	if _, err := e.Client.ResourceV1().ResourceClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := claimProbePod(ns, name, "")
	pod.Labels = map[string]string{"app": name}
	pod.Spec.ResourceClaims[0] = corev1.PodResourceClaim{Name: "c0", ResourceClaimName: ptr.To(name)}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var msg string
	waitFor(ctx, t, fmt.Sprintf("an event on pod %s saying %q", name, want), 500*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		evs, err := e.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name + ",reason=FailedScheduling"})
		if err != nil || len(evs.Items) == 0 {
			return false, fmt.Sprint(err)
		}
		msg = evs.Items[0].Message
		return strings.Contains(msg, want), msg
	})
	t.Logf("claim %s refused: %s", name, msg)
	if c, err := e.Client.ResourceV1().ResourceClaims(ns).Get(ctx, name, metav1.GetOptions{}); err != nil || c.Status.Allocation != nil {
		t.Errorf("claim %s: %v, allocation %+v; want none", name, err, c.Status.Allocation)
	}
}
