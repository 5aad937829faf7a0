package api

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSliceList(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    []SliceID
		wantErr string
	}{
		"single":         {in: "GPU-a::0", want: []SliceID{{"GPU-a", 0}}},
		"several":        {in: "GPU-a::0, GPU-b::3", want: []SliceID{{"GPU-a", 0}, {"GPU-b", 3}}},
		"empty":          {in: " ", wantErr: "empty"},
		"no separator":   {in: "GPU-a", wantErr: "want <gpu-uuid>::<index>"},
		"negative":       {in: "GPU-a::-1", wantErr: "non-negative"},
		"leading zero":   {in: "GPU-a::01", wantErr: "non-negative"},
		"missing uuid":   {in: "::1", wantErr: "invalid GPU UUID"},
		"duplicate":      {in: "GPU-a::1,GPU-a::1", wantErr: "listed twice"},
		"trailing comma": {in: "GPU-a::1,", wantErr: "want <gpu-uuid>"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseSliceList(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseSliceList (-want +got):\n%s", diff)
			}
			if again, _ := ParseSliceList(FormatSliceList(got)); !cmp.Equal(again, got) {
				t.Errorf("round trip changed %v to %v", got, again)
			}
		})
	}
}

func validInventory() *Inventory {
	return &Inventory{
		Strategy:     StrategyTimeSlice,
		SlicesPerGPU: 4,
		GPUs: []GPU{
			{UUID: "GPU-0", Index: 0, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Slices: 4, Healthy: true, NUMA: 0, NVLinkPeers: []string{"GPU-1"}},
			{UUID: "GPU-1", Index: 1, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, Slices: 4, Healthy: true, NUMA: 0, NVLinkPeers: []string{"GPU-0"}},
		},
	}
}

func TestInventoryRoundTrip(t *testing.T) {
	inv := validInventory()
	s, err := inv.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseInventory(s)
	if err != nil {
		t.Fatal(err)
	}
	inv.Version = InventoryVersion
	if diff := cmp.Diff(inv, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if got.TotalSlices() != 8 {
		t.Errorf("TotalSlices = %d, want 8", got.TotalSlices())
	}
}

func TestParseInventoryErrors(t *testing.T) {
	tests := map[string]struct {
		mutate  func(*Inventory)
		raw     string
		wantErr string
	}{
		"not json":        {raw: "{", wantErr: "not valid JSON"},
		"newer version":   {raw: `{"version":"tessera.dev/v2","gpus":[]}`, wantErr: `version "tessera.dev/v2" is not supported`},
		"unknown field":   {raw: `{"version":"tessera.dev/v1alpha1","strategy":"mps","slicesPerGPU":1,"bogus":1}`, wantErr: "unknown field"},
		"bad strategy":    {mutate: func(i *Inventory) { i.Strategy = "share" }, wantErr: "inventory.strategy"},
		"zero slices":     {mutate: func(i *Inventory) { i.SlicesPerGPU = 0 }, wantErr: "inventory.slicesPerGPU"},
		"dup uuid":        {mutate: func(i *Inventory) { i.GPUs[1].UUID = "GPU-0" }, wantErr: "gpus[1].uuid"},
		"uuid with sep":   {mutate: func(i *Inventory) { i.GPUs[0].UUID = "GPU::0" }, wantErr: "gpus[0].uuid"},
		"too many slices": {mutate: func(i *Inventory) { i.GPUs[0].Slices = 5 }, wantErr: "gpus[0].slices"},
		"unknown peer":    {mutate: func(i *Inventory) { i.GPUs[0].NVLinkPeers = []string{"GPU-9"} }, wantErr: "gpus[0].nvlinkPeers"},
		"dup index":       {mutate: func(i *Inventory) { i.GPUs[1].Index = 0 }, wantErr: "gpus[1].index"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			raw := tc.raw
			if tc.mutate != nil {
				inv := validInventory()
				inv.Version = InventoryVersion
				tc.mutate(inv)
				if err := inv.Validate(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if _, err := ParseInventory(raw); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseInventory error = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParseSliceList(f *testing.F) {
	for _, s := range []string{"GPU-a::0", "GPU-a::0,GPU-b::1", "", "::", "a::1::2", "GPU-a::99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids, err := ParseSliceList(s)
		if err != nil {
			return
		}
		again, err := ParseSliceList(FormatSliceList(ids))
		if err != nil {
			t.Fatalf("formatted list %q does not parse: %v", FormatSliceList(ids), err)
		}
		if !cmp.Equal(ids, again) {
			t.Fatalf("round trip changed %v to %v", ids, again)
		}
	})
}

func FuzzParseInventory(f *testing.F) {
	s, _ := validInventory().Marshal()
	f.Add(s)
	f.Add(`{"version":"tessera.dev/v1alpha1"}`)
	f.Fuzz(func(t *testing.T, s string) {
		inv, err := ParseInventory(s)
		if err != nil {
			return
		}
		out, err := inv.Marshal()
		if err != nil {
			t.Fatalf("parsed inventory does not marshal: %v", err)
		}
		if _, err := ParseInventory(out); err != nil {
			t.Fatalf("marshalled inventory does not parse: %v", err)
		}
	})
}
