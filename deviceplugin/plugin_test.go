package deviceplugin

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

type harness struct {
	p       *Plugin
	fake    *nvml.Fake
	clock   *clocktesting.FakeClock
	node    *fakeNode
	pods    *fakePods
	pending *staticPending
	pr      *fakePodResources
	uuids   []string
}

func newHarness(t testing.TB, spec string, cfg string, opts Options) *harness {
	t.Helper()
	fs, err := nvml.ParseFakeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		fake:    nvml.NewFake(fs, "node-1"),
		clock:   clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		node:    &fakeNode{labels: map[string]string{"kubernetes.io/hostname": "node-1"}},
		pods:    &fakePods{},
		pending: &staticPending{},
		pr:      &fakePodResources{},
	}
	h.uuids = h.fake.UUIDs()
	if cfg != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		opts.ConfigPath = path
	}
	opts.NodeName = "node-1"
	if opts.PluginDir == "" {
		opts.PluginDir = t.TempDir()
	}
	h.p, err = New(context.Background(), opts, Deps{NVML: h.fake, Clock: h.clock, Nodes: h.node, Pods: h.pods, Pending: h.pending, PodResources: h.pr})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// id names slice k of GPU i.
func (h *harness) id(i, k int) string { return api.SliceID{GPU: h.uuids[i], Index: k}.String() }

func (h *harness) ids(pairs ...int) []string {
	var out []string
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, h.id(pairs[i], pairs[i+1]))
	}
	return out
}

func (h *harness) available() []string {
	var out []string
	for _, d := range h.p.Devices() {
		out = append(out, d.ID)
	}
	return out
}

func slicePod(name string, created time.Time, assignment []string, sizes ...int) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(created), Annotations: map[string]string{}}}
	if assignment != nil {
		p.Annotations[api.AnnotationSliceAssignment] = strings.Join(assignment, ",")
	}
	for i, n := range sizes {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{
			Name:      "c" + string(rune('0'+i)),
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(n), resource.DecimalSI)}},
		})
	}
	return p
}

func TestPreferredAndAllocate(t *testing.T) {
	h := newHarness(t, "4xH100-80GB,nvlink=pairs,numa=2", "", Options{})
	ctx := context.Background()
	t0 := h.clock.Now()
	h.pending.set(
		slicePod("b", t0.Add(2*time.Second), h.ids(1, 0, 1, 1), 2),
		slicePod("a", t0.Add(time.Second), h.ids(2, 2, 2, 3), 2),
		slicePod("no-assignment", t0, nil, 2),
	)
	gpa := func(size int, avail []string) []string {
		t.Helper()
		resp, err := h.p.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail, AllocationSize: int32(size)}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.ContainerResponses[0].DeviceIDs
	}
	if got := gpa(2, h.available()); !cmp.Equal(got, h.ids(2, 2, 2, 3)) {
		t.Errorf("earliest pending pod's assignment: got %v", got)
	}
	// With a's slices gone, b's assignment.
	var rest []string
	for _, id := range h.available() {
		if id != h.id(2, 2) && id != h.id(2, 3) {
			rest = append(rest, id)
		}
	}
	if got := gpa(2, rest); !cmp.Equal(got, h.ids(1, 0, 1, 1)) {
		t.Errorf("next pod: got %v", got)
	}
	if got := gpa(3, rest); !cmp.Equal(got, h.ids(2, 0, 2, 1, 0, 0)) && len(got) != 3 {
		t.Errorf("best fit for size 3: got %v", got)
	}

	resp, err := h.p.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: h.ids(2, 3, 2, 2)}}})
	if err != nil {
		t.Fatal(err)
	}
	env := resp.ContainerResponses[0].Envs
	want := map[string]string{api.EnvVisibleDevices: h.uuids[2], api.EnvSlices: strings.Join(h.ids(2, 2, 2, 3), ","), api.EnvMemoryLimitMiB: "40960"}
	if diff := cmp.Diff(want, env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	// Slices of b's assignment given to someone else: a handoff mismatch.
	if _, err := h.p.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: h.ids(1, 1, 0, 0)}}}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(h.p.Metrics().Mismatches.WithLabelValues("allocate-not-assigned")); n != 1 {
		t.Errorf("mismatch metric = %v, want 1", n)
	}
	_, err = h.p.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"GPU-nope::0"}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown device: err %v, want InvalidArgument", err)
	}
	if testutil.CollectAndCount(h.p.Metrics().Allocate) != 1 || testutil.CollectAndCount(h.p.Metrics().Preferred) != 1 {
		t.Errorf("latency histograms not registered")
	}
}

func TestHealth(t *testing.T) {
	h := newHarness(t, "2xH100-80GB", "", Options{})
	ctx := context.Background()
	unhealthy := func() int {
		n := 0
		for _, d := range h.p.Devices() {
			if d.Health == pluginapi.Unhealthy {
				n++
			}
		}
		return n
	}
	h.p.HandleXid(ctx, nvml.XidEvent{UUID: h.uuids[0], Xid: 13, Time: h.clock.Now()})
	if unhealthy() != 0 {
		t.Fatalf("application Xid 13 marked slices unhealthy")
	}
	h.p.HandleXid(ctx, nvml.XidEvent{UUID: h.uuids[0], Xid: 79, Time: h.clock.Now()})
	if unhealthy() != 4 || h.p.Inventory().GPUs[0].Healthy {
		t.Fatalf("Xid 79: %d unhealthy slices, want 4", unhealthy())
	}
	h.clock.Step(time.Minute)
	h.p.Recheck(ctx)
	if unhealthy() != 4 {
		t.Fatalf("recovered before the quiet period")
	}
	h.clock.Step(2 * time.Minute)
	h.p.Recheck(ctx)
	if unhealthy() != 0 {
		t.Fatalf("not recovered after the quiet period")
	}
	h.fake.SetLost(h.uuids[1], true)
	h.p.Recheck(ctx)
	if unhealthy() != 4 || h.p.Inventory().GPUs[1].Healthy {
		t.Fatalf("lost GPU not marked unhealthy")
	}
	h.fake.SetLost(h.uuids[1], false)
	h.clock.Step(3 * time.Minute)
	h.p.Recheck(ctx)
	if unhealthy() != 0 {
		t.Fatalf("found GPU not recovered")
	}
	h.p.HandleXid(ctx, nvml.XidEvent{Xid: 48})
	if unhealthy() != 8 {
		t.Fatalf("Xid without a device must mark all GPUs")
	}
	if n := testutil.ToFloat64(h.p.Metrics().Xid.WithLabelValues(h.uuids[0], "13", "true")); n != 1 {
		t.Errorf("xid metric %v", n)
	}
}

func TestXidStream(t *testing.T) {
	h := newHarness(t, "2xH100-80GB", "", Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); h.p.runXid(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for h.p.Inventory().GPUs[1].Healthy {
		h.fake.InjectXid(h.uuids[1], 94)
		if time.Now().After(deadline) {
			t.Fatal("injected Xid never marked the GPU")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
}

const cfg4 = `apiVersion: tessera.dev/v1alpha1
kind: DevicePluginConfig
sharing: {strategy: timeslice, slicesPerGPU: 4}
overrides:
- name: mps-nodes
  nodeSelector: {sharing: mps}
  sharing: {strategy: mps, slicesPerGPU: 2}
`

func TestConfigLiveReload(t *testing.T) {
	h := newHarness(t, "2xH100-80GB", cfg4, Options{})
	ctx := context.Background()
	if n := len(h.p.Devices()); n != 8 {
		t.Fatalf("%d devices, want 8", n)
	}
	before := h.p.state.Load()
	var errs []error
	report := func(err error) { errs = append(errs, err) }
	if err := os.WriteFile(h.p.opts.ConfigPath, []byte(strings.Replace(cfg4, "slicesPerGPU: 4", "slicesPerGPU: 8", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if !h.p.CheckConfig(ctx, report) {
		t.Fatalf("change not applied: %v", errs)
	}
	if n := len(h.p.Devices()); n != 16 {
		t.Fatalf("%d devices after reload, want 16", n)
	}
	select {
	case <-before.changed:
	default:
		t.Fatal("ListAndWatch streams not woken by the reload")
	}
	// Invalid file: reported, last good config stays.
	if err := os.WriteFile(h.p.opts.ConfigPath, []byte(strings.Replace(cfg4, "slicesPerGPU: 4", "slicesPerGPU: 0", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	h.p.CheckConfig(ctx, report)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "sharing.slicesPerGPU") || len(h.p.Devices()) != 16 {
		t.Fatalf("invalid config: errs %v, %d devices", errs, len(h.p.Devices()))
	}
	// Node label override.
	h.node.setLabels(map[string]string{"sharing": "mps"})
	h.p.CheckConfig(ctx, report)
	if inv := h.p.Inventory(); inv.Strategy != api.StrategyMPS || inv.SlicesPerGPU != 2 {
		t.Fatalf("override not applied: %s x%d", inv.Strategy, inv.SlicesPerGPU)
	}
	if testutil.ToFloat64(h.p.Metrics().ConfigReloads.WithLabelValues("invalid")) != 1 {
		t.Errorf("invalid reload not counted")
	}
}

func TestReconcile(t *testing.T) {
	h := newHarness(t, "2xH100-80GB", "", Options{})
	ctx := context.Background()
	t0 := h.clock.Now()
	good := slicePod("good", t0, h.ids(0, 0, 0, 1), 2)
	swapped := slicePod("swapped", t0, h.ids(1, 0), 1)
	taker := slicePod("taker", t0, h.ids(1, 3), 1)
	plain := slicePod("plain", t0, nil, 1)
	h.pending.set(good, swapped, taker, plain)
	dev := func(ids ...string) []*podresourcesapi.ContainerResources {
		return []*podresourcesapi.ContainerResources{{Name: "c0", Devices: []*podresourcesapi.ContainerDevices{{ResourceName: api.ResourceName, DeviceIds: ids}, {ResourceName: "other/x", DeviceIds: []string{"x"}}}}}
	}
	h.pr.resp = &podresourcesapi.ListPodResourcesResponse{PodResources: []*podresourcesapi.PodResources{
		{Namespace: "ns", Name: "good", Containers: dev(h.id(0, 1), h.id(0, 0))},
		{Namespace: "ns", Name: "swapped", Containers: dev(h.id(1, 3))},
		{Namespace: "ns", Name: "taker", Containers: dev(h.id(1, 0))},
		{Namespace: "ns", Name: "plain", Containers: dev(h.id(0, 2))},
		{Namespace: "ns", Name: "unknown-pod", Containers: dev(h.id(0, 3))},
		{Namespace: "ns", Name: "no-devices"},
	}}
	for range 2 {
		if err := h.p.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{
		"ns/good@" + api.AnnotationSlicesAllocated:    strings.Join(h.ids(0, 0, 0, 1), ","),
		"ns/swapped@" + api.AnnotationSlicesAllocated: h.id(1, 3),
		"ns/taker@" + api.AnnotationSlicesAllocated:   h.id(1, 0),
		"ns/plain@" + api.AnnotationSlicesAllocated:   h.id(0, 2),
	}
	if diff := cmp.Diff(want, h.pods.patches); diff != "" {
		t.Errorf("patches (-want +got):\n%s", diff)
	}
	// Each mismatch event names the pod whose slices were taken.
	wantEvents := map[string]string{"ns/swapped": "(assigned to ns/taker)", "ns/taker": "(assigned to ns/swapped)"}
	if len(h.pods.events) != len(wantEvents) {
		t.Errorf("events %+v, want one mismatch each for %v", h.pods.events, wantEvents)
	}
	for _, ev := range h.pods.events {
		if ev.reason != ReasonAssignmentMismatch || !strings.HasSuffix(ev.msg, wantEvents[ev.pod]) {
			t.Errorf("event %+v: want %s ending %q", ev, ReasonAssignmentMismatch, wantEvents[ev.pod])
		}
	}
	if n := testutil.ToFloat64(h.p.Metrics().Mismatches.WithLabelValues("allocated-differs")); n != 2 {
		t.Errorf("mismatch metric %v, want 2", n)
	}
	if n := testutil.ToFloat64(h.p.Metrics().SlicesAllocated.WithLabelValues("0", h.uuids[0])); n != 4 {
		t.Errorf("allocated gauge GPU 0 = %v, want 4", n)
	}
}

func TestInventoryPublishing(t *testing.T) {
	h := newHarness(t, "4xH100-80GB,nvlink=pairs,clique=c7", "", Options{LabelClique: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); h.p.runInventory(ctx) }()
	waitPatch := func(n int) NodeMetadata {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			md, got := h.node.last()
			if got >= n {
				return md
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d node patches, want %d", got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	md := waitPatch(1)
	inv, err := api.ParseInventory(*md.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatal(err)
	}
	if inv.TotalSlices() != 16 || inv.GPUs[0].Clique != "c7" || len(inv.GPUs[0].NVLinkPeers) != 1 {
		t.Errorf("inventory %+v", inv)
	}
	labels := map[string]string{}
	for k, v := range md.Labels {
		labels[k] = *v
	}
	wantLabels := map[string]string{api.LabelGPUProduct: "NVIDIA-H100-80GB-HBM3", api.LabelGPUCount: "4", api.LabelSlicesPerGPU: "4", api.LabelClique: "c7"}
	if diff := cmp.Diff(wantLabels, labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	h.p.HandleXid(ctx, nvml.XidEvent{UUID: h.uuids[2], Xid: 48})
	md = waitPatch(2)
	inv, _ = api.ParseInventory(*md.Annotations[api.AnnotationInventory])
	if inv.GPUs[2].Healthy {
		t.Errorf("health change not published")
	}
	cancel()
	<-done
}

func TestLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"NVIDIA H100 80GB HBM3":        "NVIDIA-H100-80GB-HBM3",
		"Mock NVIDIA A100-SXM4-40GB":   "Mock-NVIDIA-A100-SXM4-40GB",
		" weird/+name ":                "weird-name",
		strings.Repeat("a", 70) + "-b": strings.Repeat("a", 63),
		"":                             "",
	} {
		if got := LabelValue(in); got != want {
			t.Errorf("LabelValue(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPendingFromPod(t *testing.T) {
	t0 := time.Now()
	a := []string{"GPU-a::0", "GPU-a::1"}
	tests := map[string]struct {
		pod  *corev1.Pod
		want bool
	}{
		"assigned":       {pod: slicePod("p", t0, a, 1, 1), want: true},
		"no assignment":  {pod: slicePod("p", t0, nil, 1)},
		"bad assignment": {pod: func() *corev1.Pod { p := slicePod("p", t0, []string{"nope"}, 1); return p }()},
		"already running": {pod: func() *corev1.Pod {
			p := slicePod("p", t0, a, 2)
			p.Annotations[api.AnnotationSlicesAllocated] = "GPU-a::0"
			return p
		}()},
		"terminal": {pod: func() *corev1.Pod {
			p := slicePod("p", t0, a, 2)
			p.Status.Phase = corev1.PodSucceeded
			return p
		}()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pp, ok := PendingFromPod(tc.pod)
			if ok != tc.want {
				t.Fatalf("ok = %v, want %v", ok, tc.want)
			}
			if ok && (!cmp.Equal(pp.IDs, a) || !cmp.Equal(pp.Containers, []int{1, 1})) {
				t.Errorf("pending %+v", pp)
			}
		})
	}
}

// laggingPending is a cache that has not seen a pod yet while the API
// server has: Refresh returns what the API holds.
type laggingPending struct {
	staticPending
	api       []slicing.Pending
	refreshes int
}

func (l *laggingPending) Refresh(context.Context) ([]slicing.Pending, error) {
	l.refreshes++
	return l.api, nil
}

// TestPreferredReadsAPIWhenCacheLags: the kubelet can ask for a pod's
// devices before the plugin's watch delivered the pod; a miss is checked
// against the API server once before best fit, so the scheduler's
// assignment still wins.
func TestPreferredReadsAPIWhenCacheLags(t *testing.T) {
	h := newHarness(t, "4xH100-80GB", "", Options{})
	lag := &laggingPending{}
	pod := slicePod("late", h.clock.Now(), h.ids(3, 3, 3, 1), 2)
	pp, ok := PendingFromPod(pod)
	if !ok {
		t.Fatal("test pod has no pending assignment")
	}
	lag.api = []slicing.Pending{pp}
	h.p.deps.Pending = lag
	resp, err := h.p.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: h.available(), AllocationSize: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := resp.ContainerResponses[0].DeviceIDs, h.ids(3, 3, 3, 1); !cmp.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Errorf("got %v, want the assignment %v read from the API", got, want)
	}
	if lag.refreshes != 1 {
		t.Errorf("refreshed %d times, want once", lag.refreshes)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// TestInventorySaysItReportsAllocations: the scheduler's handoff gate acts
// only on nodes whose plugin writes slices-allocated, so the inventory says
// so exactly when the plugin has what its reconcile loop needs.
func TestInventorySaysItReportsAllocations(t *testing.T) {
	h := newHarness(t, "2xH100-80GB", "", Options{})
	if !h.p.Inventory().ReportsAllocation {
		t.Error("plugin with PodResources, pod patches and a pod cache: reportsAllocation false")
	}
	h.p.deps.PodResources = nil
	if h.p.Inventory().ReportsAllocation {
		t.Error("plugin without PodResources: reportsAllocation true")
	}
}

// TestPreferredGivesBackRecordedSlicesOnReadmission: a kubelet restarted
// before it saved its allocations admits a pod again whose
// slices-allocated is recorded; when no pending pod fits, the pod gets the
// same slices back instead of a best fit (which could be another pod's
// assignment).
func TestPreferredGivesBackRecordedSlicesOnReadmission(t *testing.T) {
	h := newHarness(t, "4xH100-80GB", "", Options{})
	ctx := context.Background()
	t0 := h.clock.Now()
	running := slicePod("running", t0, h.ids(3, 0, 3, 1), 2)
	running.Annotations[api.AnnotationSlicesAllocated] = strings.Join(h.ids(3, 0, 3, 1), ",")
	h.pending.set(running)
	gpa := func(avail []string) []string {
		t.Helper()
		resp, err := h.p.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail, AllocationSize: 2}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.ContainerResponses[0].DeviceIDs
	}
	if got := gpa(h.available()); !cmp.Equal(got, h.ids(3, 0, 3, 1)) {
		t.Errorf("re-admitted pod: got %v, want its recorded slices %v", got, h.ids(3, 0, 3, 1))
	}
	// While the kubelet still holds them, they are not offered.
	var rest []string
	for _, id := range h.available() {
		if id != h.id(3, 0) && id != h.id(3, 1) {
			rest = append(rest, id)
		}
	}
	if got := gpa(rest); cmp.Equal(got, h.ids(3, 0, 3, 1)) || len(got) != 2 {
		t.Errorf("slices held by the kubelet offered again: %v", got)
	}
}
