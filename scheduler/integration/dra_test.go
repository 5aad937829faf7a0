package integration

import (
	"context"
	"fmt"
	"os"
	"sort"
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
	const nodes, gpus = 6, 8
	ns := "dra-sim"
	devices := startDRASim(t, ctx, ns, nodes, gpus, 3)

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
		p := templateClaimPod(ns, name, tmpl, map[string]string{"kind": tmpl})
		p.Spec.NodeSelector = map[string]string{draSimLabel: "true"}
		return p
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
	if err := waitUnschedulable(ctx, ns, "whole-extra"); err != nil {
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

const draSimLabel = "tessera.dev/dra-sim"

// startDRASim makes sure the package's scheduler runs (one at a time: two
// would allocate the same devices; it outlives the test, so the namespace
// cleanup's leak check reads a running scheduler), creates namespace ns, n
// kwok nodes dra-sim-<i> labelled draSimLabel and the shipped
// DeviceClasses, and runs the simulator with DRA on the nodes (gpus GPUs of
// slicesPerGPU slices each, cliques of cliqueSize nodes) until the test
// ends; it returns once every device is published. Everything is removed
// after, the nodes before the namespace (cleanups run last first), so its
// leak check counts the cluster without them. devices lists the published
// devices (node/device) and the highest pool generation.
func startDRASim(t *testing.T, ctx context.Context, ns string, n, gpus, cliqueSize int) (devices func() (map[string]resourceapi.Device, int64)) {
	t.Helper()
	ensureScheduler(t)
	createNamespace(t, ctx, ns)
	t.Cleanup(func() {
		ctx := context.Background()
		cleanupNamespace(t, ctx, ns)
		// Claims and templates too, so the test can run again (-count).
		_ = env.client.ResourceV1().ResourceClaimTemplates(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = env.client.ResourceV1().ResourceClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})
	var names []string
	for i := range n {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        fmt.Sprintf("dra-sim-%d", i),
			Labels:      map[string]string{draSimLabel: "true", v1.LabelHostname: fmt.Sprintf("dra-sim-%d", i)},
			Annotations: map[string]string{cluster.KwokAnnotation: "fake"},
		}}
		if _, err := env.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		names = append(names, node.Name)
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
	spec, err := nvml.ParseFakeSpec(fmt.Sprintf("%dxH100-80GB,nvlink=all", gpus))
	if err != nil {
		t.Fatal(err)
	}
	simCtx, stopSim := context.WithCancel(context.Background())
	simDone := make(chan error, 1)
	go func() {
		simDone <- simulate.NewSimulator(env.client, simulate.SimOptions{
			Spec: spec, Config: &config.Config{Sharing: config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: slicesPerGPU}},
			NodeSelector: draSimLabel + "=true", CliqueSize: cliqueSize, LabelClique: true, DRA: true, Workers: 4,
		}).Run(simCtx)
	}()
	t.Cleanup(func() {
		stopSim()
		if err := <-simDone; err != nil {
			t.Errorf("simulator: %v", err)
		}
		ctx := context.Background()
		for _, c := range classes {
			_ = env.client.ResourceV1().DeviceClasses().Delete(ctx, c, metav1.DeleteOptions{})
		}
		for _, n := range names {
			_ = env.client.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{})
		}
		_ = env.client.ResourceV1().ResourceSlices().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
	})
	devices = func() (map[string]resourceapi.Device, int64) {
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
	want := n * gpus * (slicesPerGPU + 2)
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		d, _ := devices()
		return len(d) == want, nil
	}); err != nil {
		d, _ := devices()
		t.Fatalf("%d devices published, want %d", len(d), want)
	}
	return devices
}

// TestDRAGangPlacedAsPlanned: pods that ask for tessera.dev/gpu-slice go to
// simulated DRA nodes through the extended-resource DeviceClass
// (gpu-slice.tessera.dev). Tessera plans them (gangs whole in one clique,
// one rank per GPU; single pods best fit) and the in-tree DRA allocator
// allocates each pod's claim exactly the slices of its
// tessera.dev/slice-assignment: the steering of scheduler/dra.go.
func TestDRAGangPlacedAsPlanned(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const nodes, gpus, ranks = 6, 4, 4
	ns := "dra-gang"
	startDRASim(t, ctx, ns, nodes, gpus, 3)
	onDRA := func(p *v1.Pod) *v1.Pod {
		p.Spec.NodeSelector = map[string]string{draSimLabel: "true"}
		return p
	}

	// 0) A claim the in-tree allocator places (one slice of GPU 1 on
	// dra-sim-0), then a 1-slice pod pinned there: Tessera counts the
	// claim and picks best fit, a slice of GPU 1; the allocator left to
	// itself would take the first free device, GPU 0's first slice.
	holdReq := resourceapi.ExactDeviceRequest{DeviceClassName: "gpu-slice.tessera.dev",
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.attributes["gpu.tessera.dev"].index == 1`}}}}
	hold := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "hold-gpu1", Namespace: ns},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &holdReq}}}}}
	if _, err := env.client.ResourceV1().ResourceClaims(ns).Create(ctx, hold, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pinned := func(p *v1.Pod) *v1.Pod {
		p.Spec.NodeSelector = map[string]string{v1.LabelHostname: "dra-sim-0"}
		return p
	}
	holder := pinned(gpuPod(ns, "holder", 0, nil))
	holder.Spec.Containers[0].Resources = v1.ResourceRequirements{Claims: []v1.ResourceClaim{{Name: "gpu"}}}
	holder.Spec.ResourceClaims = []v1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("hold-gpu1")}}
	createPods(t, ctx, holder)
	waitBound(t, ctx, ns, []string{"holder"}, time.Minute)
	// The scheduler counts the claim's slice once the allocation reaches it.
	capacity := numNodes*gpusPerNode*slicesPerGPU + nodes*gpus*slicesPerGPU
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		free, _ := gauge(t, "tessera_free_slices")
		return int(free) == capacity-clusterSlicesInUse(t, ctx)-1, nil
	}); err != nil {
		free, _ := gauge(t, "tessera_free_slices")
		t.Fatalf("the scheduler does not count the holder's claim: %v free slices, want %d", free, capacity-clusterSlicesInUse(t, ctx)-1)
	}
	createPods(t, ctx, pinned(gpuPod(ns, "small", 1, nil)))
	small := waitBound(t, ctx, ns, []string{"small"}, time.Minute)["small"]
	node0, err := env.client.CoreV1().Nodes().Get(ctx, "dra-sim-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inv0, err := api.ParseInventory(node0.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatal(err)
	}
	if gs := api.GPUsOf(assignment(t, small)); len(gs) != 1 || gs[0] != inv0.GPUs[1].UUID {
		t.Errorf("pod small planned on GPUs %v, want GPU 1 (%s): the one the holder's claim uses, best fit", gs, inv0.GPUs[1].UUID)
	}
	checkClaimsAsPlanned(t, ctx, ns, []string{"small"})

	// 1) 5 gangs of 4 ranks, a whole GPU's slices each: 20 of the 23
	// whole GPUs left.
	t0 := time.Now()
	gangs, all := createCliqueGangs(t, ctx, ns, "tp", 5, ranks, func(name string, labels map[string]string) *v1.Pod {
		return onDRA(gpuPod(ns, name, slicesPerGPU, labels))
	})
	bound := waitBound(t, ctx, ns, all, 2*time.Minute)
	t.Logf("5 gangs x %d ranks on DRA nodes bound in %s", ranks, time.Since(t0).Round(10*time.Millisecond))
	cliques, gpusUsed := map[string]string{}, map[string]string{}
	for name, members := range gangs {
		inGang := map[string]bool{}
		for _, m := range members {
			p := bound[m]
			inGang[cliqueOf(t, ctx, p.Spec.NodeName, cliques)] = true
			gs := api.GPUsOf(assignment(t, p))
			if len(gs) != 1 {
				t.Errorf("rank %s holds GPUs %v, want one", m, gs)
			}
			for _, g := range gs {
				if other, ok := gpusUsed[g]; ok {
					t.Errorf("GPU %s held by ranks %s and %s", g, other, m)
				}
				gpusUsed[g] = m
			}
		}
		if len(inGang) != 1 || inGang[""] {
			t.Errorf("gang %s spans cliques %v, want one", name, inGang)
		}
	}
	checkClaimsAsPlanned(t, ctx, ns, all)

	// 2) Single pods fill the last 3 whole GPUs best fit (3 + 1 slices per
	// GPU) and the 2 slices left on GPU 1 of dra-sim-0; one more slice has
	// no room.
	var singles []string
	for i := range 7 {
		name, n := fmt.Sprintf("single-%d", i), 3
		switch {
		case i == 6:
			n = 2
		case i%2 == 1:
			n = 1
		}
		singles = append(singles, name)
		createPods(t, ctx, onDRA(gpuPod(ns, name, n, nil)))
		waitBound(t, ctx, ns, []string{name}, time.Minute)
	}
	checkClaimsAsPlanned(t, ctx, ns, singles)
	createPods(t, ctx, onDRA(gpuPod(ns, "no-room", 1, nil)))
	if err := waitUnschedulable(ctx, ns, "no-room"); err != nil {
		t.Errorf("a slice more than the DRA nodes have was not reported unschedulable: %v", err)
	}
	if p, err := env.client.CoreV1().Pods(ns).Get(ctx, "no-room", metav1.GetOptions{}); err == nil && p.Spec.NodeName != "" {
		t.Errorf("pod no-room bound to %s with every slice taken", p.Spec.NodeName)
	}
}

// checkClaimsAsPlanned verifies that each pod's claims (the extended-resource
// claim the scheduler created, the claims made from its templates) are
// allocated exactly the slices of its
// tessera.dev/slice-assignment, on its node, and that no slice is allocated
// twice.
func checkClaimsAsPlanned(t *testing.T, ctx context.Context, ns string, names []string) {
	t.Helper()
	seen := map[api.SliceID]string{}
	for _, name := range names {
		p, err := env.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := assignment(t, p)
		var claimNames []string
		if st := p.Status.ExtendedResourceClaimStatus; st != nil {
			claimNames = append(claimNames, st.ResourceClaimName)
		}
		for _, st := range p.Status.ResourceClaimStatuses {
			if st.ResourceClaimName != nil {
				claimNames = append(claimNames, *st.ResourceClaimName)
			}
		}
		if len(claimNames) == 0 {
			t.Errorf("pod %s on %s has no claim: not placed through DRA", name, p.Spec.NodeName)
			continue
		}
		node, err := env.client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
		if err != nil {
			t.Fatal(err)
		}
		var got []api.SliceID
		for _, cn := range claimNames {
			claim, err := env.client.ResourceV1().ResourceClaims(ns).Get(ctx, cn, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if claim.Status.Allocation == nil {
				continue
			}
			for _, r := range claim.Status.Allocation.Devices.Results {
				ids, ok := inv.DRADeviceSlices(r.Device)
				if r.Pool != p.Spec.NodeName || !ok {
					t.Errorf("pod %s: device %s/%s is not of its node %s", name, r.Pool, r.Device, p.Spec.NodeName)
				}
				got = append(got, ids...)
			}
		}
		if api.FormatSliceList(sorted(got)) != api.FormatSliceList(sorted(want)) {
			t.Errorf("pod %s: claims %v allocated %s, Tessera planned %s", name, claimNames, api.FormatSliceList(got), api.FormatSliceList(want))
		}
		for _, id := range got {
			if other, dup := seen[id]; dup {
				t.Errorf("slice %s allocated to %s and %s", id, other, name)
			}
			seen[id] = name
		}
	}
}

func sorted(ids []api.SliceID) []api.SliceID {
	out := append([]api.SliceID(nil), ids...)
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// waitUnschedulable waits up to a minute for the scheduler to report the
// pod unschedulable.
func waitUnschedulable(ctx context.Context, ns, name string) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := env.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable {
				return true, nil
			}
		}
		return false, nil
	})
}

// TestDRAClaimGangPlaced: gang ranks that ask for their slices only through
// a ResourceClaimTemplate, the shipped example tp-rank-2-slices applied
// unchanged (2 slices of one GPU of gpu-slice.tessera.dev), are planned by
// Tessera like tessera.dev/gpu-slice pods: each gang whole in one clique of
// DRA nodes, one rank per GPU (the allocator left to itself packs a gang's
// first two ranks on one GPU), every claim allocated exactly the rank's
// planned slices. They
// carry no node selector: the simulated device-plugin nodes, emptier, are
// no candidates, as only a DRA node can serve a claim. A single pod with a
// 1-slice template claim goes best fit onto a GPU a rank half uses.
func TestDRAClaimGangPlaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const nodes, gpus, ranks = 6, 4, 4
	ns := "dra-claim-gang"
	startDRASim(t, ctx, ns, nodes, gpus, 3)

	raw, err := os.ReadFile("../../manifests/examples/dra-claims.yaml")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var rct resourceapi.ResourceClaimTemplate
		if err := yaml.Unmarshal([]byte(doc), &rct); err != nil || rct.Kind != "ResourceClaimTemplate" || rct.Name != "tp-rank-2-slices" {
			continue
		}
		rct.Namespace, found = ns, true
		if _, err := env.client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, &rct, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatal("manifests/examples/dra-claims.yaml has no ResourceClaimTemplate tp-rank-2-slices")
	}
	one := &resourceapi.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: "one-slice", Namespace: ns},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{
			{Name: "slice", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu-slice.tessera.dev"}}}}}}}
	if _, err := env.client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, one, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	gangs, all := createCliqueGangs(t, ctx, ns, "claim-tp", 5, ranks, func(name string, labels map[string]string) *v1.Pod {
		return templateClaimPod(ns, name, "tp-rank-2-slices", labels)
	})
	bound := waitBound(t, ctx, ns, all, 2*time.Minute)
	t.Logf("5 gangs x %d ranks with template claims bound in %s", ranks, time.Since(t0).Round(10*time.Millisecond))
	cliques, slicesUsed := map[string]string{}, map[string]int{}
	for name, members := range gangs {
		inGang, gpusUsed := map[string]bool{}, map[string]string{}
		for _, m := range members {
			p := bound[m]
			if !strings.HasPrefix(p.Spec.NodeName, "dra-sim-") {
				t.Errorf("rank %s bound to %s, not a DRA node", m, p.Spec.NodeName)
			}
			inGang[cliqueOf(t, ctx, p.Spec.NodeName, cliques)] = true
			ids := assignment(t, p)
			gs := api.GPUsOf(ids)
			if len(ids) != 2 || len(gs) != 1 {
				t.Errorf("rank %s planned %s, want 2 slices of one GPU", m, api.FormatSliceList(ids))
			}
			for _, g := range gs {
				if other, ok := gpusUsed[g]; ok {
					t.Errorf("gang %s: GPU %s holds its ranks %s and %s, want one rank per GPU", name, g, other, m)
				}
				gpusUsed[g] = m
				slicesUsed[g] += len(ids)
			}
		}
		if len(inGang) != 1 || inGang[""] {
			t.Errorf("gang %s spans cliques %v, want one", name, inGang)
		}
	}
	checkClaimsAsPlanned(t, ctx, ns, all)

	createPods(t, ctx, templateClaimPod(ns, "single", "one-slice", nil))
	single := waitBound(t, ctx, ns, []string{"single"}, time.Minute)["single"]
	if gs := api.GPUsOf(assignment(t, single)); len(gs) != 1 || slicesUsed[gs[0]] != 2 {
		t.Errorf("single 1-slice claim pod planned on GPUs %v, want a GPU a rank half uses (best fit; slices used per GPU: %v)", gs, slicesUsed)
	}
	checkClaimsAsPlanned(t, ctx, ns, append(all, "single"))
}

// templateClaimPod is a pod whose one container uses a claim made from
// template tmpl (and asks for nothing else).
func templateClaimPod(ns, name, tmpl string, labels map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: v1.PodSpec{
			SchedulerName:  api.SchedulerName,
			ResourceClaims: []v1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(tmpl)}},
			Containers: []v1.Container{{Name: "main", Image: "tessera/fake:dev",
				Resources: v1.ResourceRequirements{Claims: []v1.ResourceClaim{{Name: "gpu"}}}}},
		},
	}
}

// createCliqueGangs creates n PodGroups <prefix><g> that must fit in one
// clique, with their members <prefix><g>-<r> made by pod (given the
// membership labels); it returns the members per gang and all of them.
func createCliqueGangs(t *testing.T, ctx context.Context, ns, prefix string, n, ranks int, pod func(name string, labels map[string]string) *v1.Pod) (map[string][]string, []string) {
	t.Helper()
	gangs := map[string][]string{}
	var all []string
	for g := range n {
		name := fmt.Sprintf("%s%d", prefix, g)
		createPodGroup(t, ctx, ns, name, ranks, 120, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
		for r := range ranks {
			member := fmt.Sprintf("%s-%d", name, r)
			gangs[name] = append(gangs[name], member)
			all = append(all, member)
			createPods(t, ctx, pod(member, map[string]string{api.LabelPodGroup: name}))
		}
	}
	return gangs, all
}
