package dra

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

func layoutOf(t testing.TB, spec string, s config.Sharing) *slicing.Layout {
	t.Helper()
	fs, err := nvml.ParseFakeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	l, err := slicing.FakeLayout(context.Background(), fs, "test", s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var timeslice4 = config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}

func allHealthy(string) bool { return true }

func deviceNames(r resourceapiPool) []string {
	var out []string
	for _, s := range r.slices {
		for _, d := range s.Devices {
			out = append(out, d.Name)
		}
	}
	sort.Strings(out)
	return out
}

// resourceapiPool flattens the one pool Resources returns.
type resourceapiPool struct {
	slices []struct {
		Devices  []resourceapi.Device
		Counters []resourceapi.CounterSet
	}
}

func poolOf(t *testing.T, node string, l *slicing.Layout, healthy slicing.Health) resourceapiPool {
	t.Helper()
	res := Resources(node, l, healthy)
	if len(res.Pools) != 1 {
		t.Fatalf("%d pools, want 1", len(res.Pools))
	}
	pool, ok := res.Pools[node]
	if !ok {
		t.Fatalf("no pool named after node %s", node)
	}
	var out resourceapiPool
	for _, s := range pool.Slices {
		if len(s.Devices) > 0 && len(s.SharedCounters) > 0 {
			t.Errorf("a slice has both devices and counters; the API allows one or the other")
		}
		out.slices = append(out.slices, struct {
			Devices  []resourceapi.Device
			Counters []resourceapi.CounterSet
		}{s.Devices, s.SharedCounters})
	}
	return out
}

func TestResourcesDevicesAndCounters(t *testing.T) {
	l := layoutOf(t, "2xH100-80GB,nvlink=pairs,numa=1,clique=c0", timeslice4)
	p := poolOf(t, "n1", l, allHealthy)
	want := []string{"gpu-0", "gpu-0-shared", "gpu-0-slice-0", "gpu-0-slice-1", "gpu-0-slice-2", "gpu-0-slice-3",
		"gpu-1", "gpu-1-shared", "gpu-1-slice-0", "gpu-1-slice-1", "gpu-1-slice-2", "gpu-1-slice-3"}
	if diff := cmp.Diff(want, deviceNames(p)); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}
	byName := map[string]resourceapi.Device{}
	for _, s := range p.slices {
		for _, d := range s.Devices {
			byName[d.Name] = d
		}
	}
	s := byName["gpu-1-slice-2"]
	if got := *s.Attributes[AttrSliceID].StringValue; got != (api.SliceID{GPU: l.GPUs[1].UUID, Index: 2}).String() {
		t.Errorf("sliceID attribute %q", got)
	}
	if got := *s.Attributes[AttrClique].StringValue; got != "c0" {
		t.Errorf("clique attribute %q", got)
	}
	if got := *s.Attributes[AttrNVLinkPeers].StringValue; got != "0" {
		t.Errorf("nvlinkPeers attribute %q, want GPU 1's peer 0", got)
	}
	if got := s.ConsumesCounters[0].Counters[CapMemory].Value; got.Cmp(resource.MustParse("20Gi")) != 0 {
		t.Errorf("a slice consumes %s memory, want 20Gi (80 GiB / 4)", got.String())
	}
	whole := byName["gpu-0"]
	if got := whole.ConsumesCounters[0].Counters[CapSlices].Value; got.Value() != 4 {
		t.Errorf("the whole GPU consumes %s slices, want 4", got.String())
	}
	shared := byName["gpu-0-shared"]
	if shared.AllowMultipleAllocations == nil || !*shared.AllowMultipleAllocations || shared.Capacity[CapMemory].RequestPolicy == nil {
		t.Errorf("shared device %+v: want multiple allocations and a memory request policy", shared)
	}
	var counters []resourceapi.CounterSet
	for _, s := range p.slices {
		counters = append(counters, s.Counters...)
	}
	if len(counters) != 2 {
		t.Fatalf("counter sets %+v, want gpu-0 and gpu-1", counters)
	}
	if n := counters[0].Counters[CapSlices].Value; counters[0].Name != "gpu-0" || n.String() != "4" {
		t.Errorf("counter set %+v, want gpu-0 with 4 slices", counters[0])
	}
}

func TestResourcesLeaveOutUnhealthyGPUs(t *testing.T) {
	l := layoutOf(t, "2xH100-80GB", timeslice4)
	bad := l.GPUs[0].UUID
	p := poolOf(t, "n1", l, func(u string) bool { return u != bad })
	for _, n := range deviceNames(p) {
		if n == "gpu-0" || strings.HasPrefix(n, "gpu-0-") {
			t.Errorf("device %s of the unhealthy GPU published", n)
		}
	}
	if len(deviceNames(p)) != 6 {
		t.Errorf("devices %v, want GPU 1's 6", deviceNames(p))
	}
}

// A node past the API's per-slice caps (8 counter sets, 64 devices that
// consume counters) gets more slices, none over a cap.
func TestResourcesSplitLargeNodes(t *testing.T) {
	l := layoutOf(t, "16xH100-80GB", config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 8})
	p := poolOf(t, "n1", l, allHealthy)
	sets, devs := 0, 0
	for _, s := range p.slices {
		if len(s.Counters) > resourceapi.ResourceSliceMaxCounterSets || len(s.Devices) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			t.Errorf("slice with %d counter sets and %d devices", len(s.Counters), len(s.Devices))
		}
		sets += len(s.Counters)
		devs += len(s.Devices)
	}
	if sets != 16 || devs != 16*10 {
		t.Errorf("%d counter sets and %d devices, want 16 and 160", sets, devs)
	}
}

func TestParseDeviceName(t *testing.T) {
	for name, want := range map[string]struct {
		typ      string
		index, k int
		bad      bool
	}{
		"gpu-3":          {typ: TypeGPU, index: 3},
		"gpu-3-shared":   {typ: TypeShared, index: 3},
		"gpu-12-slice-0": {typ: TypeSlice, index: 12},
		"gpu-1-slice-7":  {typ: TypeSlice, index: 1, k: 7},
		"gpu-01":         {bad: true},
		"gpu--1":         {bad: true},
		"gpu-1-slice-":   {bad: true},
		"gpu-1-mig":      {bad: true},
		"nic-0":          {bad: true},
	} {
		typ, i, k, err := ParseDeviceName(name)
		if (err != nil) != want.bad || !want.bad && (typ != want.typ || i != want.index || k != want.k) {
			t.Errorf("ParseDeviceName(%q) = %s %d %d %v, want %+v", name, typ, i, k, err, want)
		}
	}
	// Every name Resources publishes parses back.
	l := layoutOf(t, "3xH100-80GB", timeslice4)
	for _, n := range deviceNames(poolOf(t, "n", l, allHealthy)) {
		if _, _, _, err := ParseDeviceName(n); err != nil {
			t.Error(err)
		}
	}
}

func claim(uid, name string, results ...resourceapi.DeviceRequestAllocationResult) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}},
	}
}

func result(device string) resourceapi.DeviceRequestAllocationResult {
	return resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: DriverName, Pool: "n1", Device: device}
}

func share(device, q string) resourceapi.DeviceRequestAllocationResult {
	r := result(device)
	r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{CapMemory: resource.MustParse(q)}
	return r
}

func readSpec(t *testing.T, p *Preparer, uid string) cdispec.Spec {
	t.Helper()
	b, err := os.ReadFile(p.specPath(types.UID(uid)))
	if err != nil {
		t.Fatal(err)
	}
	var s cdispec.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func env(s cdispec.Spec) map[string]string {
	out := map[string]string{}
	for _, kv := range s.Devices[0].ContainerEdits.Env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// A claim's CDI spec gives the container exactly what the device plugin's
// Allocate gives for the same slices.
func TestPrepareSlicesMatchesAllocate(t *testing.T) {
	l := layoutOf(t, "2xH100-80GB,nvlink=pairs", timeslice4)
	p := &Preparer{NodeName: "n1", CDIDir: t.TempDir(), Layout: func() *slicing.Layout { return l }, Env: slicing.EnvOptions{CDIKind: "nvidia.com/gpu"}}
	res := p.Prepare(context.Background(), []*resourceapi.ResourceClaim{claim("u1", "c1", result("gpu-1-slice-2"), result("gpu-1-slice-3"))})
	if res["u1"].Err != nil {
		t.Fatal(res["u1"].Err)
	}
	alloc, _, err := l.Response([]string{api.SliceID{GPU: l.GPUs[1].UUID, Index: 2}.String(), api.SliceID{GPU: l.GPUs[1].UUID, Index: 3}.String()}, p.Env)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(alloc.Envs, env(readSpec(t, p, "u1"))); diff != "" {
		t.Errorf("CDI env differs from Allocate's (-allocate +cdi):\n%s", diff)
	}
	wantCDI := []string{CDIKind + "=u1", "nvidia.com/gpu=" + l.GPUs[1].UUID}
	for _, d := range res["u1"].Devices {
		if diff := cmp.Diff(wantCDI, d.CDIDeviceIDs); diff != "" {
			t.Errorf("device %s CDI IDs (-want +got):\n%s", d.DeviceName, diff)
		}
	}
	if len(res["u1"].Devices) != 2 {
		t.Errorf("%d devices in the result, want 2", len(res["u1"].Devices))
	}
}

func TestPrepareWholeGPUAndShares(t *testing.T) {
	l := layoutOf(t, "2xH100-80GB", timeslice4)
	p := &Preparer{NodeName: "n1", CDIDir: t.TempDir(), Layout: func() *slicing.Layout { return l }}
	ctx := context.Background()
	res := p.Prepare(ctx, []*resourceapi.ResourceClaim{
		claim("whole", "w", result("gpu-0")),
		claim("s1", "ten", share("gpu-1-shared", "10Gi")),
		claim("s2", "twenty", share("gpu-1-shared", "20Gi")),
	})
	for uid, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", uid, r.Err)
		}
	}
	w := env(readSpec(t, p, "whole"))
	if w[api.EnvMemoryLimitMiB] != "81920" || w[api.EnvSlices] != api.FormatSliceList([]api.SliceID{{GPU: l.GPUs[0].UUID, Index: 0}, {GPU: l.GPUs[0].UUID, Index: 1}, {GPU: l.GPUs[0].UUID, Index: 2}, {GPU: l.GPUs[0].UUID, Index: 3}}) {
		t.Errorf("whole GPU env %v", w)
	}
	ten := env(readSpec(t, p, "s1"))
	if diff := cmp.Diff(map[string]string{api.EnvVisibleDevices: l.GPUs[1].UUID, api.EnvMemoryLimitMiB: "10240"}, ten); diff != "" {
		t.Errorf("10 GiB share env (-want +got):\n%s", diff)
	}
}

func TestPrepareRefusesWhatAnotherClaimHolds(t *testing.T) {
	l := layoutOf(t, "2xH100-80GB", timeslice4)
	dir := t.TempDir()
	ctx := context.Background()
	p := &Preparer{NodeName: "n1", CDIDir: dir, Layout: func() *slicing.Layout { return l }}
	if r := p.Prepare(ctx, []*resourceapi.ResourceClaim{claim("a", "a", result("gpu-0-slice-1")), claim("m", "m", share("gpu-1-shared", "60Gi"))}); r["a"].Err != nil || r["m"].Err != nil {
		t.Fatal(r)
	}
	// A new process (node agent restart) reads the holdings back from the
	// spec files.
	p2 := &Preparer{NodeName: "n1", CDIDir: dir, Layout: func() *slicing.Layout { return l }}
	for name, tc := range map[string]struct {
		claim *resourceapi.ResourceClaim
		want  string
	}{
		"same slice":           {claim("b", "b", result("gpu-0-slice-1")), "already prepared for claim ns/a"},
		"whole GPU over slice": {claim("c", "c", result("gpu-0")), "already prepared for claim ns/a"},
		"slice on shared GPU":  {claim("d", "d", result("gpu-1-slice-0")), "shared by memory with claim ns/m"},
		"shares over memory":   {claim("e", "e", share("gpu-1-shared", "30Gi")), "would total 92160 MiB of 81920"},
		"share on sliced GPU":  {claim("f", "f", share("gpu-0-shared", "1Gi")), "has slice"},
		"mixed claim":          {claim("g", "g", result("gpu-0-slice-0"), share("gpu-1-shared", "1Gi")), "not both"},
		"unknown GPU":          {claim("h", "h", result("gpu-7-slice-0")), "no GPU 7"},
		"bad device":           {claim("i", "i", result("gpu-x")), "want gpu-<index>"},
		"not allocated":        {&resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "j", UID: "j"}}, "not allocated"},
		"other pool only":      {claim("k", "k", resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: DriverName, Pool: "n2", Device: "gpu-0"}), "no device of driver"},
	} {
		t.Run(name, func(t *testing.T) {
			r := p2.Prepare(ctx, []*resourceapi.ResourceClaim{tc.claim})[tc.claim.UID]
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.want) {
				t.Errorf("err %v, want one containing %q", r.Err, tc.want)
			}
			if _, err := os.Stat(p2.specPath(tc.claim.UID)); !os.IsNotExist(err) {
				t.Errorf("a refused claim left a CDI spec (%v)", err)
			}
		})
	}
	// Preparing a prepared claim again (kubelet restart) succeeds with
	// the same spec.
	before, _ := os.ReadFile(p.specPath("a"))
	if r := p2.Prepare(ctx, []*resourceapi.ResourceClaim{claim("a", "a", result("gpu-0-slice-1"))}); r["a"].Err != nil {
		t.Fatal(r["a"].Err)
	}
	after, _ := os.ReadFile(p.specPath("a"))
	if string(before) != string(after) {
		t.Errorf("re-preparing changed the spec:\n%s\n%s", before, after)
	}
	// Unprepared, the slice is free again; unpreparing twice is fine.
	for i := 0; i < 2; i++ {
		if errs := p2.Unprepare(ctx, []kubeletplugin.NamespacedObject{{UID: "a"}}); errs["a"] != nil {
			t.Fatal(errs["a"])
		}
	}
	if r := p2.Prepare(ctx, []*resourceapi.ResourceClaim{claim("b", "b", result("gpu-0-slice-1"))}); r["b"].Err != nil {
		t.Errorf("slice still held after unprepare: %v", r["b"].Err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(files) > 0 {
		t.Errorf("temporary files left: %v", files)
	}
}
