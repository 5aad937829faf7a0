package api

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDRADeviceSlices(t *testing.T) {
	inv := &Inventory{SlicesPerGPU: 4, GPUs: []GPU{{UUID: "GPU-a", Index: 0, Slices: 4}, {UUID: "GPU-b", Index: 3, Slices: 2}}}
	all := func(uuid string, n int) []SliceID {
		var out []SliceID
		for k := range n {
			out = append(out, SliceID{GPU: uuid, Index: k})
		}
		return out
	}
	cases := map[string]struct {
		want []SliceID
		ok   bool
	}{
		"gpu-0-slice-2":  {want: []SliceID{{GPU: "GPU-a", Index: 2}}, ok: true},
		"gpu-3-slice-1":  {want: []SliceID{{GPU: "GPU-b", Index: 1}}, ok: true},
		"gpu-3-slice-2":  {}, // GPU 3 has 2 slices
		"gpu-0":          {want: all("GPU-a", 4), ok: true},
		"gpu-3-shared":   {want: all("GPU-b", 2), ok: true},
		"gpu-1":          {}, // no GPU with index 1
		"gpu-01":         {},
		"gpu-0-slice-":   {},
		"gpu-0-slice-x":  {},
		"gpu-0-sliced-1": {},
		"nic-0":          {},
	}
	for dev, tc := range cases {
		got, ok := inv.DRADeviceSlices(dev)
		if ok != tc.ok {
			t.Errorf("%s: ok %t, want %t", dev, ok, tc.ok)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: slices (-want +got):\n%s", dev, diff)
		}
	}
	for _, name := range []string{DRASliceDevice(7, 3), DRAGPUDevice(7), DRASharedDevice(7)} {
		if _, i, _, err := ParseDRADevice(name); err != nil || i != 7 {
			t.Errorf("%s does not parse back: index %d, %v", name, i, err)
		}
	}
}
