package nvml

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/google/go-cmp/cmp"
)

func TestDiscoverDGXH100(t *testing.T) {
	f := NewDGXH100("node-a")
	gpus, err := f.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) != 8 {
		t.Fatalf("got %d GPUs, want 8", len(gpus))
	}
	for i, g := range gpus {
		if g.Index != i || !strings.HasPrefix(g.UUID, "GPU-") || g.Product != "NVIDIA H100 80GB HBM3" || g.MemoryMiB != 81920 {
			t.Errorf("GPU %d = %+v", i, g)
		}
		if wantNUMA := i / 4; g.NUMA != wantNUMA {
			t.Errorf("GPU %d NUMA = %d, want %d", i, g.NUMA, wantNUMA)
		}
		if g.PCIBusID != NormalizeBusID("00000000:"+g.PCIBusID[5:]) || len(g.PCIBusID) != len("0000:18:00.0") {
			t.Errorf("GPU %d bus id %q not normalised", i, g.PCIBusID)
		}
		if len(g.NVLinkPeers) != 7 || len(g.NVLinks) != 18 {
			t.Errorf("GPU %d: %d peers over %d links, want 7 over 18 (NVSwitch)", i, len(g.NVLinkPeers), len(g.NVLinks))
		}
		if g.MIGEnabled || g.Clique != "" {
			t.Errorf("GPU %d: MIG %v clique %q, want off and none", i, g.MIGEnabled, g.Clique)
		}
	}
	if gpus[0].PCIBusID != "0000:18:00.0" {
		t.Errorf("GPU 0 bus = %q, want 0000:18:00.0", gpus[0].PCIBusID)
	}
	again, _ := NewDGXH100("node-a").Discover(context.Background())
	if again[3].UUID != gpus[3].UUID {
		t.Errorf("UUIDs not deterministic for one seed")
	}
	other, _ := NewDGXH100("node-b").Discover(context.Background())
	if other[3].UUID == gpus[3].UUID {
		t.Errorf("UUIDs equal across seeds")
	}
}

// The bare go-nvml mocks leave most topology queries unimplemented (their
// methods panic); discovery must degrade, never crash.
func TestDiscoverBareMocks(t *testing.T) {
	for name, b := range map[string]*Backend{"dgxh100": NewBackend(dgxh100.New()), "dgxa100": NewBackend(dgxa100.New())} {
		t.Run(name, func(t *testing.T) {
			gpus, err := b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(gpus) != 8 {
				t.Fatalf("got %d GPUs", len(gpus))
			}
			for _, g := range gpus {
				if g.NUMA != -1 || len(g.NVLinkPeers) != 0 || g.MemoryMiB == 0 {
					t.Errorf("%+v", g)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := b.WatchXid(ctx, func(XidEvent) {}); err == nil {
				t.Errorf("WatchXid on a mock without event sets: want error")
			}
		})
	}
}

func TestFakeTopologies(t *testing.T) {
	ctx := context.Background()
	tests := map[string]struct {
		spec      string
		wantPeers map[int][]int
		wantNUMA  []int
		wantMIG   int
		clique    string
	}{
		"pairs": {
			spec:      "4xH100-80GB,nvlink=pairs,numa=2,clique=c0",
			wantPeers: map[int][]int{0: {1}, 1: {0}, 2: {3}, 3: {2}},
			wantNUMA:  []int{0, 0, 1, 1},
			clique:    "c0",
		},
		"none": {spec: "2xA100-40GB", wantPeers: map[int][]int{0: nil, 1: nil}, wantNUMA: []int{0, 0}},
		"odd pairs": {
			spec:      "3xH200-141GB,nvlink=pairs",
			wantPeers: map[int][]int{0: {1}, 1: {0}, 2: nil},
			wantNUMA:  []int{0, 0, 0},
		},
		"mig": {spec: "2xA100-80GB,mig=3", wantPeers: map[int][]int{0: nil, 1: nil}, wantNUMA: []int{0, 0}, wantMIG: 3},
		"fabric clique": {
			spec:      "2xB200-180GB,nvlink=all,clique=0a1b2c3d-0000-4000-8000-00000000000f.7",
			wantPeers: map[int][]int{0: {1}, 1: {0}},
			wantNUMA:  []int{0, 0},
			clique:    "0a1b2c3d-0000-4000-8000-00000000000f.7",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			spec, err := ParseFakeSpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			f := NewFake(spec, "n1")
			gpus, err := f.Discover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			uuids := f.UUIDs()
			for i, g := range gpus {
				var want []string
				for _, p := range tc.wantPeers[i] {
					want = append(want, uuids[p])
				}
				if diff := cmp.Diff(want, g.NVLinkPeers); diff != "" {
					t.Errorf("GPU %d peers (-want +got):\n%s", i, diff)
				}
				if g.NUMA != tc.wantNUMA[i] {
					t.Errorf("GPU %d NUMA %d, want %d", i, g.NUMA, tc.wantNUMA[i])
				}
				if len(g.MIGDevices) != tc.wantMIG || g.MIGEnabled != (tc.wantMIG > 0) {
					t.Errorf("GPU %d MIG %v with %d devices, want %d", i, g.MIGEnabled, len(g.MIGDevices), tc.wantMIG)
				}
				for _, m := range g.MIGDevices {
					if !strings.HasPrefix(m.UUID, "MIG-") || m.MemoryMiB <= 0 {
						t.Errorf("MIG device %+v", m)
					}
				}
				if g.Clique != tc.clique {
					t.Errorf("GPU %d clique %q, want %q", i, g.Clique, tc.clique)
				}
			}
		})
	}
}

func TestXidAndCheck(t *testing.T) {
	f := NewFake(FakeSpec{Count: 2, Model: "H100-80GB", NUMANodes: 1}, "x")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan XidEvent, 4)
	done := make(chan error, 1)
	go func() { done <- f.WatchXid(ctx, func(e XidEvent) { got <- e }) }()
	u := f.UUIDs()[1]
	f.InjectXid(u, 48)
	select {
	case e := <-got:
		if e.UUID != u || e.Xid != 48 || e.Err != nil {
			t.Errorf("event %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Xid event")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("WatchXid returned %v after cancel", err)
	}

	if err := f.Check(ctx, u); err != nil {
		t.Errorf("Check healthy GPU: %v", err)
	}
	f.SetLost(u, true)
	if err := f.Check(ctx, u); err == nil {
		t.Errorf("Check lost GPU: want error")
	}
	if err := f.Check(ctx, "GPU-nope"); err == nil {
		t.Errorf("Check unknown GPU: want error")
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
}

func TestNewRealWithoutLibrary(t *testing.T) {
	_, err := NewReal("/nonexistent/libnvidia-ml.so.1")
	if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "--fake-gpus") {
		t.Fatalf("err = %v, want ErrLibraryNotFound naming --fake-gpus", err)
	}
}

func TestParseFakeSpec(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    FakeSpec
		wantErr string
	}{
		"minimal":    {in: "8xH100-80GB", want: FakeSpec{Count: 8, Model: "H100-80GB", NVLink: "none", NUMANodes: 1}},
		"full":       {in: "8xH100-80GB,nvlink=pairs,numa=2,clique=c0,mig=0", want: FakeSpec{Count: 8, Model: "H100-80GB", NVLink: "pairs", NUMANodes: 2, Clique: "c0"}},
		"preset":     {in: "dgxh100,clique=c1", want: FakeSpec{Count: 8, Model: "H100-80GB", NVLink: "all", NUMANodes: 2, Clique: "c1", Preset: "dgxh100"}},
		"empty":      {in: "", wantErr: "empty"},
		"no x":       {in: "H100", wantErr: "<count>x<model>"},
		"zero":       {in: "0xH100-80GB", wantErr: "count"},
		"too many":   {in: "65xH100-80GB", wantErr: "count"},
		"model":      {in: "8xH900", wantErr: "model \"H900\" unknown"},
		"bad link":   {in: "2xH100-80GB,nvlink=ring", wantErr: "nvlink"},
		"numa":       {in: "2xH100-80GB,numa=3", wantErr: "numa"},
		"mig":        {in: "2xH100-80GB,mig=8", wantErr: "mig"},
		"unknown":    {in: "2xH100-80GB,color=red", wantErr: "unknown option"},
		"twice":      {in: "2xH100-80GB,numa=1,numa=2", wantErr: "twice"},
		"no value":   {in: "2xH100-80GB,numa", wantErr: "key=value"},
		"bad clique": {in: "2xH100-80GB,clique=a b", wantErr: "clique"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseFakeSpec(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			again, err := ParseFakeSpec(got.String())
			if err != nil || !cmp.Equal(again, got) {
				t.Errorf("round trip of %q: %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestNormalizeBusID(t *testing.T) {
	for in, want := range map[string]string{
		"00000000:18:00.0":  "0000:18:00.0",
		"0000:AB:00.0":      "0000:ab:00.0",
		" 00000001:1A:00.0": "0001:1a:00.0",
		"":                  "",
		"garbage":           "garbage",
	} {
		if got := NormalizeBusID(in); got != want {
			t.Errorf("NormalizeBusID(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseFakeSpec(f *testing.F) {
	for _, s := range []string{"8xH100-80GB,nvlink=pairs,clique=c0", "dgxh100", "2xA30-24GB,mig=7,numa=2", "x", ",,", "1xH100-80GB,nvlink="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseFakeSpec(s)
		if err != nil {
			return
		}
		again, err := ParseFakeSpec(spec.String())
		if err != nil {
			t.Fatalf("String() %q of parsed %q does not parse: %v", spec.String(), s, err)
		}
		if !cmp.Equal(spec, again) {
			t.Fatalf("round trip changed %+v to %+v", spec, again)
		}
	})
}

func TestNumaOfCPUs(t *testing.T) {
	root := t.TempDir()
	for node, list := range map[string]string{"node0": "0-15,32-47", "node1": "16-31,48-63"} {
		dir := filepath.Join(root, "devices/system/node", node)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpulist"), []byte(list+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := map[string]struct {
		mask []uint
		want int
	}{
		"node 0":    {mask: []uint{0xffff}, want: 0},
		"node 1":    {mask: []uint{0xffff0000}, want: 1},
		"node 1 hi": {mask: []uint{1 << 50}, want: 1},
		"both":      {mask: []uint{0x10001}, want: -1},
		"none":      {mask: []uint{0}, want: -1},
		"empty":     {want: -1},
	}
	for name, tc := range tests {
		if got := numaOfCPUs(root, tc.mask); got != tc.want {
			t.Errorf("%s: got %d, want %d", name, got, tc.want)
		}
	}
	if got := numaOfCPUs(filepath.Join(root, "missing"), []uint{1}); got != -1 {
		t.Errorf("missing sysfs: %d", got)
	}
}
