package scheduler_bench

import (
	"context"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// TestDRAResourceSliceTemplate: GPUMix_TesseraDRA's nodes are what the node
// agent publishes with --dra. The node template with dra=1 is a DRA node
// (inventory deviceAPI "dra", no tessera.dev/gpu-slice capacity), and the
// three ResourceSlice parts hold the devices and counter sets
// deviceplugin/dra.Resources makes for the same 8-GPU NVSwitch node: the
// same names, attributes (values but the simulated UUIDs and clique), the
// same counters drawn, memory within each GPU's counter.
func TestDRAResourceSliceTemplate(t *testing.T) {
	const slicesPerGPU = 8
	env := func(extra map[string]any) map[string]any {
		m := map[string]any{"Index": 3, "nodesPerRack": 64, "nodesPerClique": 8, "slicesPerGPU": slicesPerGPU}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	var node v1.Node
	render(t, "templates/node-gpu.yaml", env(map[string]any{"dra": 1}), &node)
	inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatal(err)
	}
	if inv.DeviceAPI != api.DeviceAPIDRA {
		t.Errorf("DRA node inventory deviceAPI %q, want %q", inv.DeviceAPI, api.DeviceAPIDRA)
	}
	if _, ok := node.Status.Allocatable[api.ResourceName]; ok {
		t.Errorf("DRA node has %s allocatable: the scheduler would take the device-plugin path", api.ResourceName)
	}

	got := map[string]resourceapi.Device{}
	var counters []resourceapi.CounterSet
	for part := range 3 {
		var s resourceapi.ResourceSlice
		render(t, "templates/dra-resourceslice.yaml", env(map[string]any{"part": part}), &s)
		if s.Spec.Driver != dra.DriverName || *s.Spec.NodeName != node.Name || s.Spec.Pool.Name != node.Name || s.Spec.Pool.ResourceSliceCount != 3 {
			t.Errorf("part %d: driver %s, node %v, pool %+v", part, s.Spec.Driver, s.Spec.NodeName, s.Spec.Pool)
		}
		if len(s.Spec.Devices) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			t.Errorf("part %d has %d devices, the API allows %d", part, len(s.Spec.Devices), resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures)
		}
		counters = append(counters, s.Spec.SharedCounters...)
		for _, d := range s.Spec.Devices {
			got[d.Name] = d
		}
	}

	spec, err := nvml.ParseFakeSpec("8xH100-80GB,nvlink=all,numa=2,clique=c0")
	if err != nil {
		t.Fatal(err)
	}
	layout, err := slicing.FakeLayout(context.Background(), spec, node.Name, config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: slicesPerGPU})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]resourceapi.Device{}
	var wantCounters []resourceapi.CounterSet
	for _, s := range dra.Resources(node.Name, layout, func(string) bool { return true }).Pools[node.Name].Slices {
		wantCounters = append(wantCounters, s.SharedCounters...)
		for _, d := range s.Devices {
			want[d.Name] = d
		}
	}
	names := func(m map[string]resourceapi.Device) []string {
		var out []string
		for n := range m {
			out = append(out, n)
		}
		sort.Strings(out)
		return out
	}
	if diff := cmp.Diff(names(want), names(got)); diff != "" {
		t.Fatalf("device names (-agent +template):\n%s", diff)
	}
	if len(counters) != len(wantCounters) {
		t.Errorf("%d counter sets, the agent publishes %d", len(counters), len(wantCounters))
	}
	total := map[string]resourceapi.CounterSet{}
	for _, c := range counters {
		total[c.Name] = c
	}
	for _, c := range wantCounters {
		got, want := total[c.Name].Counters[dra.CapSlices].Value, c.Counters[dra.CapSlices].Value
		if got.Cmp(want) != 0 {
			t.Errorf("counter set %s: %s slices, the agent %s", c.Name, got.String(), want.String())
		}
	}
	for name, w := range want {
		g := got[name]
		if diff := cmp.Diff(attrNames(w), attrNames(g)); diff != "" {
			t.Errorf("device %s attributes (-agent +template):\n%s", name, diff)
		}
		for _, a := range []resourceapi.QualifiedName{dra.AttrType, dra.AttrIndex, dra.AttrNUMA, dra.AttrSlice, dra.AttrNVLinkPeers} {
			if diff := cmp.Diff(w.Attributes[a], g.Attributes[a]); diff != "" {
				t.Errorf("device %s attribute %s (-agent +template):\n%s", name, a, diff)
			}
		}
		if (w.AllowMultipleAllocations != nil) != (g.AllowMultipleAllocations != nil) {
			t.Errorf("device %s: allowMultipleAllocations %v, the agent %v", name, g.AllowMultipleAllocations, w.AllowMultipleAllocations)
		}
		if len(g.ConsumesCounters) != 1 || len(w.ConsumesCounters) != 1 {
			t.Fatalf("device %s draws on %d counter sets, the agent on %d", name, len(g.ConsumesCounters), len(w.ConsumesCounters))
		}
		gc, wc := g.ConsumesCounters[0], w.ConsumesCounters[0]
		gs, ws := gc.Counters[dra.CapSlices].Value, wc.Counters[dra.CapSlices].Value
		if gc.CounterSet != wc.CounterSet || gs.Cmp(ws) != 0 {
			t.Errorf("device %s draws %s slices of %s, the agent %s of %s", name, gs.String(), gc.CounterSet, ws.String(), wc.CounterSet)
		}
		mem := gc.Counters[dra.CapMemory].Value
		if mem.Cmp(total[gc.CounterSet].Counters[dra.CapMemory].Value) > 0 || mem.Cmp(g.Capacity[dra.CapMemory].Value) != 0 {
			t.Errorf("device %s draws %s memory: more than its GPU's counter or other than its capacity", name, mem.String())
		}
	}
}

func attrNames(d resourceapi.Device) []string {
	var out []string
	for n := range d.Attributes {
		out = append(out, string(n))
	}
	sort.Strings(out)
	return out
}
