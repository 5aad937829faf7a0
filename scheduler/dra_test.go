package scheduler

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

// The steering hold leaves the allocator exactly the picked slices' devices
// and never draws a counter set below zero (the allocator would then refuse
// the whole node): a free GPU is held by its whole-GPU device alone, a GPU
// with picks or allocations by the devices that still fit, a memory share
// in use by its shared device. Other drivers and unpicked nodes are left
// alone.
func TestDevicesToHold(t *testing.T) {
	inv := &api.Inventory{SlicesPerGPU: 2, DeviceAPI: api.DeviceAPIDRA, GPUs: []api.GPU{
		{UUID: "GPU-a", Index: 0, Slices: 2}, {UUID: "GPU-b", Index: 1, Slices: 2}}}
	consumes := func(gpu, n int) []resourceapi.DeviceCounterConsumption {
		return []resourceapi.DeviceCounterConsumption{{CounterSet: fmt.Sprintf("gpu-%d", gpu),
			Counters: map[string]resourceapi.Counter{"slices": {Value: *resource.NewQuantity(int64(n), resource.DecimalSI)}}}}
	}
	var devs []resourceapi.Device
	var sets []resourceapi.CounterSet
	for i := range 2 {
		for k := range 2 {
			devs = append(devs, resourceapi.Device{Name: api.DRASliceDevice(i, k), ConsumesCounters: consumes(i, 1)})
		}
		devs = append(devs, resourceapi.Device{Name: api.DRAGPUDevice(i), ConsumesCounters: consumes(i, 2)},
			resourceapi.Device{Name: api.DRASharedDevice(i), ConsumesCounters: consumes(i, 2), AllowMultipleAllocations: ptr.To(true)})
		sets = append(sets, resourceapi.CounterSet{Name: fmt.Sprintf("gpu-%d", i),
			Counters: map[string]resourceapi.Counter{"slices": {Value: *resource.NewQuantity(2, resource.DecimalSI)}}})
	}
	devs = append(devs, resourceapi.Device{Name: "gpu-9"}) // not in the inventory
	slice := func(node, driver string) *resourceapi.ResourceSlice {
		return &resourceapi.ResourceSlice{Spec: resourceapi.ResourceSliceSpec{Driver: driver, NodeName: ptr.To(node),
			Pool: resourceapi.ResourcePool{Name: node}, Devices: devs, SharedCounters: sets}}
	}
	slices := []*resourceapi.ResourceSlice{slice("n1", api.DRADriverName), slice("n2", api.DRADriverName), slice("n1", "nic.example.com")}
	invs := func(node string) *api.Inventory {
		if node == "n1" || node == "n2" {
			return inv
		}
		return nil
	}
	cases := map[string]struct {
		picks     draPicks
		allocated []string
		want      []string
	}{
		"one slice on n1": {
			picks: draPicks{"n1": {{GPU: "GPU-a", Index: 1}}},
			want:  []string{"n1/gpu-1", "n1/gpu-9", "n1/gpu-0-slice-0"},
		},
		"a whole GPU on n2": {
			picks: draPicks{"n2": {{GPU: "GPU-b", Index: 0}, {GPU: "GPU-b", Index: 1}}},
			want:  []string{"n2/gpu-0", "n2/gpu-9"},
		},
		"a memory share in use, a slice taken": {
			picks:     draPicks{"n1": {{GPU: "GPU-a", Index: 0}}},
			allocated: []string{"n1/gpu-1-shared"},
			want:      []string{"n1/gpu-9", "n1/gpu-0-slice-1", "n1/gpu-1-shared"},
		},
		"nothing picked": {},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			allocated := func(id structured.DeviceID) bool {
				for _, a := range tc.allocated {
					if a == id.Pool.String()+"/"+id.Device.String() {
						return true
					}
				}
				return false
			}
			var got []string
			for _, r := range devicesToHold(slices, tc.picks, invs, allocated) {
				if r.Driver != api.DRADriverName {
					t.Errorf("held a device of driver %s", r.Driver)
				}
				got = append(got, r.Pool+"/"+r.Device)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("held devices (-want +got):\n%s", diff)
			}
		})
	}
}
