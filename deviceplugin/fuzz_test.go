package deviceplugin

import (
	"context"
	"strings"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/tessera-gpu/tessera/api"
)

// FuzzAssignmentAnnotation feeds arbitrary tessera.dev/slice-assignment
// values through the pod cache's parser, GetPreferredAllocation, Allocate
// and reconciliation: nothing may panic, and answers keep the kubelet's
// contract (exactly size ids from available when it holds that many).
func FuzzAssignmentAnnotation(f *testing.F) {
	h := newHarness(f, "2xH100-80GB,nvlink=pairs", "", Options{})
	f.Add(h.id(0, 1)+","+h.id(0, 2), uint8(2))
	f.Add(h.id(1, 3), uint8(1))
	f.Add("GPU-x::0,,", uint8(3))
	f.Add(h.id(0, 0)+","+h.id(0, 0), uint8(2))
	f.Add(h.uuids[0]+"::99", uint8(1))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, assignment string, size uint8) {
		// The kubelet never asks for more devices than it offers: the size
		// ranges over 1..len(available) (2 GPUs × 4 slices here).
		avail := h.available()
		n := int(size)%len(avail) + 1
		pod := slicePod("fuzz", time.Unix(1, 0), strings.Split(assignment, ","), n)
		h.pending.set(pod)
		resp, err := h.p.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail, AllocationSize: int32(n)}}})
		if err != nil {
			t.Fatal(err)
		}
		ids := resp.ContainerResponses[0].DeviceIDs
		if len(ids) != n {
			t.Fatalf("answer %v has %d ids, want %d", ids, len(ids), n)
		}
		in := map[string]bool{}
		for _, id := range avail {
			in[id] = true
		}
		for _, id := range ids {
			if !in[id] {
				t.Fatalf("answer %v has unavailable id %q", ids, id)
			}
		}
		if _, err := h.p.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}}); err != nil {
			t.Fatalf("Allocate of a preferred answer: %v", err)
		}
		// The kubelet may also hand back ids the plugin never advertised.
		_, _ = h.p.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: strings.Split(assignment, ",")}}})
		h.pr.mu.Lock()
		h.pr.resp = &podresourcesapi.ListPodResourcesResponse{PodResources: []*podresourcesapi.PodResources{{Namespace: "ns", Name: "fuzz", Containers: []*podresourcesapi.ContainerResources{{Name: "c0", Devices: []*podresourcesapi.ContainerDevices{{ResourceName: api.ResourceName, DeviceIds: append(ids, strings.Split(assignment, ",")...)}}}}}}}
		h.pr.mu.Unlock()
		_ = h.p.Reconcile(ctx)
	})
}
