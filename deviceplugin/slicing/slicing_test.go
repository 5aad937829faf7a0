package slicing

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

func layoutOf(t testing.TB, spec string, s config.Sharing) *Layout {
	t.Helper()
	fs, err := nvml.ParseFakeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	l, err := FakeLayout(context.Background(), fs, "test", s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ts(n int) config.Sharing {
	return config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: n}
}

func allHealthy(string) bool { return true }

// sl names slice k of GPU i of l.
func sl(l *Layout, i, k int) string { return api.SliceID{GPU: l.GPUs[i].UUID, Index: k}.String() }

// ids expands "g:k,k;g:k" style shorthand into slice ids.
func ids(l *Layout, spec string) []string {
	var out []string
	if spec == "" {
		return nil
	}
	for _, part := range strings.Split(spec, ";") {
		g, ks, _ := strings.Cut(part, ":")
		var gi int
		fmt.Sscan(g, &gi)
		if ks == "*" {
			for k := 0; k < l.GPUs[gi].Slices; k++ {
				out = append(out, sl(l, gi, k))
			}
			continue
		}
		for _, k := range strings.Split(ks, ",") {
			var ki int
			fmt.Sscan(k, &ki)
			out = append(out, sl(l, gi, ki))
		}
	}
	return out
}

func TestNewLayout(t *testing.T) {
	tests := map[string]struct {
		spec       string
		sharing    config.Sharing
		wantPer    int
		wantSlices []int
		wantMem    int64
	}{
		"slicesPerGPU":   {spec: "2xH100-80GB", sharing: ts(4), wantPer: 4, wantSlices: []int{4, 4}, wantMem: 20480},
		"by memory":      {spec: "2xH100-80GB", sharing: config.Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 30000}, wantPer: 2, wantSlices: []int{2, 2}, wantMem: 30000},
		"memory too big": {spec: "1xA30-24GB", sharing: config.Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 40000}, wantPer: 1, wantSlices: []int{0}},
		"mig":            {spec: "2xA100-80GB,mig=3", sharing: config.Sharing{Strategy: api.StrategyMIG}, wantPer: 3, wantSlices: []int{3, 3}, wantMem: 27306},
		"mig but off":    {spec: "2xA100-80GB", sharing: config.Sharing{Strategy: api.StrategyMIG}, wantPer: 1, wantSlices: []int{0, 0}},
		"capped":         {spec: "1xH200-141GB", sharing: config.Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 256}, wantPer: 64, wantSlices: []int{64}, wantMem: 256},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := layoutOf(t, tc.spec, tc.sharing)
			if l.SlicesPerGPU != tc.wantPer {
				t.Errorf("SlicesPerGPU %d, want %d", l.SlicesPerGPU, tc.wantPer)
			}
			var got []int
			for _, g := range l.GPUs {
				got = append(got, g.Slices)
				if g.Slices > 0 && g.SliceMemoryMiB != tc.wantMem {
					t.Errorf("GPU %d slice memory %d, want %d", g.Index, g.SliceMemoryMiB, tc.wantMem)
				}
			}
			if diff := cmp.Diff(tc.wantSlices, got); diff != "" {
				t.Errorf("slices (-want +got):\n%s", diff)
			}
			inv := l.Inventory(allHealthy)
			s, err := inv.Marshal()
			if err != nil {
				t.Fatalf("inventory does not marshal: %v", err)
			}
			if _, err := api.ParseInventory(s); err != nil {
				t.Fatalf("inventory does not parse back: %v", err)
			}
			if n := len(l.Devices(allHealthy)); n != l.TotalSlices() {
				t.Errorf("%d devices for %d slices", n, l.TotalSlices())
			}
		})
	}
}

func TestDevicesAndInventory(t *testing.T) {
	l := layoutOf(t, "4xH100-80GB,nvlink=pairs,numa=2,clique=c0", ts(2))
	sick := l.GPUs[3].UUID
	health := func(u string) bool { return u != sick }
	devs := l.Devices(health)
	if len(devs) != 8 {
		t.Fatalf("%d devices", len(devs))
	}
	for _, d := range devs {
		s, _ := api.ParseSliceID(d.ID)
		g, _ := l.GPU(s.GPU)
		wantHealth := pluginapi.Healthy
		if s.GPU == sick {
			wantHealth = pluginapi.Unhealthy
		}
		if d.Health != wantHealth || d.Topology == nil || d.Topology.Nodes[0].ID != int64(g.NUMA) {
			t.Errorf("device %s: health %s topology %v", d.ID, d.Health, d.Topology)
		}
	}
	inv := l.Inventory(health)
	if inv.GPUs[3].Healthy || !inv.GPUs[0].Healthy || inv.GPUs[0].Clique != "c0" || !cmp.Equal(inv.GPUs[0].NVLinkPeers, []string{l.GPUs[1].UUID}) || inv.GPUs[2].NUMA != 1 {
		t.Errorf("inventory %+v", inv.GPUs)
	}
}

func TestBestFit(t *testing.T) {
	// 4 GPUs, NVLink pairs (0-1, 2-3), 4 slices each.
	l := layoutOf(t, "4xH100-80GB,nvlink=pairs,numa=2", ts(4))
	tests := map[string]struct {
		avail, must string
		size        int
		want        string
	}{
		"all free, one slice: first GPU": {avail: "0:*;1:*;2:*;3:*", size: 1, want: "0:0"},
		"pack onto the used GPU":         {avail: "0:*;1:*;2:2,3;3:*", size: 2, want: "2:2,3"},
		"tightest fit wins":              {avail: "0:1,2,3;1:*;2:2,3;3:*", size: 1, want: "2:2"},
		"keep free pair": {
			// GPU 0 and 2 both have 3 free; GPU 1 is whole-free (pair 0-1
			// half used), GPU 3 partially used: prefer GPU 2 whose peer
			// (3) is not whole-free? No: GPU 0's peer 1 is whole-free,
			// GPU 2's peer 3 is not. Pick GPU 2.
			avail: "0:1,2,3;1:*;2:1,2,3;3:3", size: 3, want: "2:1,2,3",
		},
		"whole GPU prefers partially used": {avail: "0:*;1:*;2:*;3:0,1,2,3", size: 4, want: "0:*"},
		"two GPUs: an NVLink pair":         {avail: "0:*;1:1,2,3;2:*;3:*", size: 8, want: "2:*;3:*"},
		"two GPUs: pair within NUMA":       {avail: "0:*;1:*;2:*;3:*", size: 8, want: "0:*;1:*"},
		"four GPUs":                        {avail: "0:*;1:*;2:*;3:*", size: 16, want: "0:*;1:*;2:*;3:*"},
		"fragmented: spread":               {avail: "0:0,1;1:0,1;2:0;3:0", size: 4, want: "0:0,1;1:0,1"},
		"must include on one GPU":          {avail: "0:*;1:*;2:*;3:*", must: "3:2", size: 2, want: "3:2,0"},
		"must include across GPUs":         {avail: "0:*;1:*;2:*;3:*", must: "0:3;2:3", size: 2, want: "0:3;2:3"},
		"not enough":                       {avail: "0:0", size: 2, want: "0:0"},
		"zero":                             {avail: "0:*", size: 0, want: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := BestFit(l, ids(l, tc.avail), ids(l, tc.must), tc.size)
			want := ids(l, tc.want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestBestFitNVSwitchAndUnknown(t *testing.T) {
	l := layoutOf(t, "dgxh100", ts(2))
	got := BestFit(l, ids(l, "0:0;1:*;2:*;5:*;6:*"), nil, 4)
	// Whole free GPUs 1,2,5,6, all NVSwitch peers: same NUMA (1,2) first.
	if diff := cmp.Diff(ids(l, "1:*;2:*"), got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	stale := "GPU-gone::0"
	got = BestFit(l, append(ids(l, "0:0"), stale), nil, 2)
	if !cmp.Equal(got, []string{sl(l, 0, 0), stale}) {
		t.Errorf("unknown ids as last resort: %v", got)
	}
}

func TestPrefer(t *testing.T) {
	l := layoutOf(t, "4xH100-80GB,nvlink=pairs", ts(4))
	now := time.Now()
	p := func(name string, age int, assign string, containers ...int) Pending {
		if len(containers) == 0 {
			containers = []int{len(ids(l, assign))}
		}
		return Pending{Key: "ns/" + name, Created: now.Add(time.Duration(-age) * time.Second), IDs: ids(l, assign), Containers: containers}
	}
	pending := []Pending{ // sorted oldest first
		p("old-2", 30, "3:0,1"),
		p("mid-1", 20, "2:3"),
		p("mid-2", 15, "1:0,1"),
		p("multi", 10, "0:0,1,2", 1, 2),
		p("new-2", 5, "1:2,3"),
	}
	tests := map[string]struct {
		avail, must string
		size        int
		want        string
		from        string
		choice      Choice
	}{
		"oldest of the size":       {avail: "0:*;1:*;2:*;3:*", size: 2, want: "3:0,1", from: "ns/old-2", choice: ChoiceAssignment},
		"skip unavailable":         {avail: "0:*;1:*;2:*;3:1,2,3", size: 2, want: "1:0,1", from: "ns/mid-2", choice: ChoiceAssignment},
		"size one":                 {avail: "0:*;1:*;2:*;3:*", size: 1, want: "2:3", from: "ns/mid-1", choice: ChoiceAssignment},
		"multi first container":    {avail: "0:*;1:*;2:0;3:*", size: 1, want: "0:0", from: "ns/multi", choice: ChoicePartialAssignment},
		"must include picks pod":   {avail: "0:*;1:*;2:*;3:*", must: "1:3", size: 2, want: "1:2,3", from: "ns/new-2", choice: ChoiceAssignment},
		"multi second container":   {avail: "0:1,2,3;2:*;3:1,2,3", size: 2, want: "0:1,2", from: "ns/multi", choice: ChoicePartialAssignment},
		"none fits: best fit":      {avail: "0:3;1:*;2:0,1,2;3:*", size: 3, want: "2:0,1,2", choice: ChoiceBestFit},
		"exact size beats partial": {avail: "0:*;1:*;2:*;3:*", size: 3, want: "0:0,1,2", from: "ns/multi", choice: ChoiceAssignment},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, from, choice := Prefer(l, pending, ids(l, tc.avail), ids(l, tc.must), tc.size)
			if diff := cmp.Diff(ids(l, tc.want), got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			fromKey := ""
			if from != nil {
				fromKey = from.Key
			}
			if fromKey != tc.from || choice != tc.choice {
				t.Errorf("from %q (%v), want %q (%v)", fromKey, choice, tc.from, tc.choice)
			}
		})
	}
}

func TestResponse(t *testing.T) {
	ctx := func(spec string, s config.Sharing) *Layout { return layoutOf(t, spec, s) }
	tsL := ctx("2xH100-80GB,nvlink=pairs", ts(4))
	mpsL := ctx("2xH100-80GB", config.Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 10240})
	migL := ctx("1xA100-80GB,mig=2", config.Sharing{Strategy: api.StrategyMIG})
	tests := map[string]struct {
		l       *Layout
		ids     []string
		opts    EnvOptions
		want    map[string]string
		mounts  int
		cdi     []string
		wantErr string
	}{
		"timeslice one slice": {l: tsL, ids: ids(tsL, "1:2"), want: map[string]string{
			"NVIDIA_VISIBLE_DEVICES": tsL.GPUs[1].UUID, "TESSERA_SLICES": sl(tsL, 1, 2), "TESSERA_MEMORY_LIMIT_MIB": "20480",
		}},
		"timeslice two GPUs, sorted, cdi": {l: tsL, ids: ids(tsL, "1:*;0:*"), opts: EnvOptions{CDIKind: "nvidia.com/gpu"}, want: map[string]string{
			"NVIDIA_VISIBLE_DEVICES": tsL.GPUs[0].UUID + "," + tsL.GPUs[1].UUID, "TESSERA_SLICES": strings.Join(ids(tsL, "0:*;1:*"), ","), "TESSERA_MEMORY_LIMIT_MIB": "81920,81920",
		}, cdi: []string{"nvidia.com/gpu=" + tsL.GPUs[0].UUID, "nvidia.com/gpu=" + tsL.GPUs[1].UUID}},
		"mps": {l: mpsL, ids: ids(mpsL, "0:3,1"), opts: EnvOptions{MPSPipeDir: "/run/nvidia/mps"}, mounts: 1, want: map[string]string{
			"NVIDIA_VISIBLE_DEVICES": mpsL.GPUs[0].UUID, "TESSERA_SLICES": strings.Join(ids(mpsL, "0:1,3"), ","), "TESSERA_MEMORY_LIMIT_MIB": "20480",
			"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25", "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
		}},
		"mig": {l: migL, ids: ids(migL, "0:1"), want: map[string]string{
			"NVIDIA_VISIBLE_DEVICES": migL.GPUs[0].MIG[1].UUID, "TESSERA_SLICES": sl(migL, 0, 1), "TESSERA_MEMORY_LIMIT_MIB": "40960",
		}},
		"unknown gpu":  {l: tsL, ids: []string{"GPU-x::0"}, wantErr: "not on this node"},
		"out of range": {l: tsL, ids: []string{sl(tsL, 0, 0)[:len(sl(tsL, 0, 0))-1] + "9"}, wantErr: "has 4 slices"},
		"duplicate":    {l: tsL, ids: []string{sl(tsL, 0, 0), sl(tsL, 0, 0)}, wantErr: "twice"},
		"malformed":    {l: tsL, ids: []string{"nope"}, wantErr: "want <gpu-uuid>::<index>"},
		"empty":        {l: tsL, wantErr: "no device ids"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, _, err := tc.l.Response(tc.ids, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, r.Envs); diff != "" {
				t.Errorf("envs (-want +got):\n%s", diff)
			}
			if len(r.Mounts) != tc.mounts {
				t.Errorf("mounts %v", r.Mounts)
			}
			var cdi []string
			for _, d := range r.CdiDevices {
				cdi = append(cdi, d.Name)
			}
			if diff := cmp.Diff(tc.cdi, cdi); diff != "" {
				t.Errorf("cdi (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzBestFit checks BestFit's contract on arbitrary request shapes: exactly
// size distinct ids from available ∪ mustInclude, mustInclude included.
func FuzzBestFit(f *testing.F) {
	l := layoutOf(f, "8xH100-80GB,nvlink=pairs,numa=2", ts(4))
	f.Add(uint32(0xffffffff), uint32(0), uint8(3))
	f.Add(uint32(0x0f0f0f0f), uint32(0x10), uint8(8))
	f.Add(uint32(0x12345678), uint32(0x80000001), uint8(5))
	f.Fuzz(func(t *testing.T, availMask, mustMask uint32, size uint8) {
		var avail, must []string
		for b := 0; b < 32; b++ {
			id := sl(l, b/4, b%4)
			if availMask&(1<<b) != 0 {
				avail = append(avail, id)
			} else if mustMask&(1<<b) != 0 {
				must = append(must, id)
			}
		}
		n := int(size % 40)
		if len(must) > n {
			must = must[:n]
		}
		got := BestFit(l, avail, must, n)
		pool := map[string]bool{}
		for _, id := range append(append([]string{}, avail...), must...) {
			pool[id] = true
		}
		want := min(n, len(pool))
		if len(got) != want {
			t.Fatalf("got %d ids, want %d", len(got), want)
		}
		seen := map[string]bool{}
		for _, id := range got {
			if !pool[id] || seen[id] {
				t.Fatalf("id %s not available or repeated", id)
			}
			seen[id] = true
		}
		for _, m := range must {
			if !seen[m] {
				t.Fatalf("must-include %s missing from %v", m, got)
			}
		}
		if _, _, err := l.Response(got, EnvOptions{}); n > 0 && err != nil {
			t.Fatalf("answer does not plan: %v", err)
		}
	})
}

func TestSortedDeterminism(t *testing.T) {
	l := layoutOf(t, "8xH100-80GB,nvlink=all", ts(4))
	a := ids(l, "7:*;3:*;5:1,2")
	b := append([]string(nil), a...)
	sort.Strings(b)
	if !cmp.Equal(BestFit(l, a, nil, 3), BestFit(l, b, nil, 3)) {
		t.Errorf("answer depends on the order of available")
	}
}
