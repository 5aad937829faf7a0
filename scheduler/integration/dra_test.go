package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/simulate"
	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// TestDRASimulatedNodes runs the DRA device model at scale against the real
// API server and the tessera-scheduler's in-tree DRA allocator: simulated
// nodes get the node agent's ResourceSlices (tessera-device-plugin simulate
// --dra), the shipped DeviceClasses are installed, and claim pods fill
// them. Every whole-GPU claim gets a GPU of its own and one more stays
// pending; TP-rank claims (2 slices of one GPU) and whole-GPU claims never
// share a GPU beyond its 4 slices (the counter sets hold). The simulator
// writes each node's slices once.
func TestDRASimulatedNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := startScheduler(t, "")
	defer rs.stop()
	const nodes, gpus = 6, 8
	const sel = "tessera.dev/dra-sim"
	var names []string
	for i := range nodes {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        fmt.Sprintf("dra-sim-%d", i),
			Labels:      map[string]string{sel: "true"},
			Annotations: map[string]string{cluster.KwokAnnotation: "fake"},
		}}
		if _, err := env.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		names = append(names, n.Name)
	}
	raw, err := os.ReadFile("../../manifests/components/dra/deviceclasses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var classes []string
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var dc resourceapi.DeviceClass
		if err := yaml.Unmarshal([]byte(doc), &dc); err != nil {
			t.Fatal(err)
		}
		if _, err := env.client.ResourceV1().DeviceClasses().Create(ctx, &dc, metav1.CreateOptions{}); err != nil {
			t.Fatalf("DeviceClass %s: %v", dc.Name, err)
		}
		classes = append(classes, dc.Name)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, c := range classes {
			_ = env.client.ResourceV1().DeviceClasses().Delete(ctx, c, metav1.DeleteOptions{})
		}
		for _, n := range names {
			_ = env.client.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{})
		}
		_ = env.client.ResourceV1().ResourceSlices().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
	})

	spec, err := nvml.ParseFakeSpec(fmt.Sprintf("%dxH100-80GB,nvlink=all", gpus))
	if err != nil {
		t.Fatal(err)
	}
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan error, 1)
	go func() {
		simDone <- simulate.NewSimulator(env.client, simulate.SimOptions{
			Spec: spec, Config: &config.Config{Sharing: config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: slicesPerGPU}},
			NodeSelector: sel + "=true", CliqueSize: 3, LabelClique: true, DRA: true, Workers: 4,
		}).Run(simCtx)
	}()
	defer func() {
		stopSim()
		if err := <-simDone; err != nil {
			t.Errorf("simulator: %v", err)
		}
	}()
	devices := func() (map[string]resourceapi.Device, int64) {
		list, err := env.client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]resourceapi.Device{}
		var maxGen int64
		for _, s := range list.Items {
			maxGen = max(maxGen, s.Spec.Pool.Generation)
			for _, d := range s.Spec.Devices {
				out[*s.Spec.NodeName+"/"+d.Name] = d
			}
		}
		return out, maxGen
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		d, _ := devices()
		return len(d) == nodes*gpus*(slicesPerGPU+2), nil
	}); err != nil {
		d, _ := devices()
		t.Fatalf("%d devices published, want %d", len(d), nodes*gpus*(slicesPerGPU+2))
	}

	ns := "dra-sim"
	createNamespace(t, ctx, ns)
	t.Cleanup(func() { cleanupNamespace(t, context.Background(), ns) })
	for _, tmpl := range []struct{ name, class string }{{"whole", "gpu.tessera.dev"}, {"rank", "gpu-slice.tessera.dev"}} {
		req := resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: tmpl.class}}
		var cons []resourceapi.DeviceConstraint
		if tmpl.name == "rank" {
			req.Exactly.AllocationMode, req.Exactly.Count = resourceapi.DeviceAllocationModeExactCount, 2
			cons = []resourceapi.DeviceConstraint{{Requests: []string{"gpu"}, MatchAttribute: ptr.To(resourceapi.FullyQualifiedName(dra.DriverName + "/" + dra.AttrUUID))}}
		}
		rct := &resourceapi.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: tmpl.name, Namespace: ns},
			Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{req}, Constraints: cons}}}}
		if _, err := env.client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, rct, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	claimPod := func(name, tmpl string) *v1.Pod {
		return &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"kind": tmpl}},
			Spec: v1.PodSpec{
				SchedulerName:  api.SchedulerName,
				NodeSelector:   map[string]string{sel: "true"},
				ResourceClaims: []v1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(tmpl)}},
				Containers: []v1.Container{{Name: "main", Image: "tessera/fake:dev",
					Resources: v1.ResourceRequirements{Claims: []v1.ResourceClaim{{Name: "gpu"}}}}},
			},
		}
	}

	// 1) Whole GPUs: one per claim, each GPU once; the next one waits.
	var whole []string
	t0 := time.Now()
	for i := range nodes * gpus {
		whole = append(whole, fmt.Sprintf("whole-%d", i))
		createPods(t, ctx, claimPod(whole[i], "whole"))
	}
	waitBound(t, ctx, ns, whole, 2*time.Minute)
	t.Logf("%d whole-GPU claim pods created and bound in %s", len(whole), time.Since(t0).Round(10*time.Millisecond))
	used := allocatedGPUs(t, ctx, ns)
	if len(used) != nodes*gpus {
		t.Errorf("%d GPUs hold whole-GPU claims, want all %d, each once (%v)", len(used), nodes*gpus, used)
	}
	createPods(t, ctx, claimPod("whole-extra", "whole"))
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := env.client.CoreV1().Pods(ns).Get(ctx, "whole-extra", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Errorf("a 49th whole-GPU claim on 48 GPUs was not reported unschedulable: %v", err)
	}

	// 2) Free them; then TP ranks (2 slices of one GPU) and whole GPUs
	// together: no GPU ever gives more than its 4 slices, a whole GPU
	// never shares.
	for _, p := range append(whole, "whole-extra") {
		_ = env.client.CoreV1().Pods(ns).Delete(ctx, p, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		claims, err := env.client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(claims.Items) == 0, nil
	}); err != nil {
		t.Fatalf("claims of deleted pods not removed: %v", err)
	}
	var mixed []string
	t0 = time.Now()
	for i := range nodes * gpus {
		name, tmpl := fmt.Sprintf("rank-%d", i), "rank"
		if i%4 == 3 {
			name, tmpl = fmt.Sprintf("gpu-%d", i), "whole"
		}
		mixed = append(mixed, name)
		createPods(t, ctx, claimPod(name, tmpl))
	}
	waitBound(t, ctx, ns, mixed, 2*time.Minute)
	t.Logf("%d TP-rank and whole-GPU claim pods created and bound in %s", len(mixed), time.Since(t0).Round(10*time.Millisecond))
	perGPU := allocatedGPUs(t, ctx, ns)
	for gpu, devs := range perGPU {
		slices, wholeGPU := 0, false
		for _, d := range devs {
			if strings.Contains(d, "-slice-") {
				slices++
			} else {
				wholeGPU = true
			}
		}
		if slices > slicesPerGPU || wholeGPU && len(devs) > 1 {
			t.Errorf("GPU %s holds %v: more than its %d slices, or a whole GPU shared", gpu, devs, slicesPerGPU)
		}
	}
	if _, gen := devices(); gen != 1 {
		t.Errorf("the simulator rewrote unchanged ResourceSlices (pool generation %d, want 1)", gen)
	}
}

// allocatedGPUs maps node/GPU index to the devices the namespace's claims
// hold on it.
func allocatedGPUs(t *testing.T, ctx context.Context, ns string) map[string][]string {
	t.Helper()
	claims, err := env.client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, c := range claims.Items {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			_, index, _, err := dra.ParseDeviceName(r.Device)
			if err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprintf("%s/%d", r.Pool, index)
			out[k] = append(out[k], r.Device)
		}
	}
	return out
}
