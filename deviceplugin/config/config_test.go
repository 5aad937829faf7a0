package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/api"
)

const good = `
apiVersion: tessera.dev/v1alpha1
kind: DevicePluginConfig
sharing:
  strategy: timeslice
  slicesPerGPU: 4
health:
  ignoredXids: [13, 48]
  recheckInterval: 10s
overrides:
- name: h200
  nodeSelector: {gpu: h200}
  sharing: {strategy: mps, sliceMemoryMiB: 20480}
- nodeSelector: {gpu: a100, mig: "on"}
  sharing: {strategy: mig}
`

func TestParse(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		labels   map[string]string
		want     Sharing
		override string
	}{
		"default":       {labels: map[string]string{"gpu": "h100"}, want: Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}},
		"named":         {labels: map[string]string{"gpu": "h200"}, want: Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 20480}, override: "h200"},
		"all must hold": {labels: map[string]string{"gpu": "a100"}, want: Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}},
		"unnamed":       {labels: map[string]string{"gpu": "a100", "mig": "on"}, want: Sharing{Strategy: api.StrategyMIG}, override: "(unnamed)"},
		"nil labels":    {want: Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := c.Resolve(tc.labels)
			if diff := cmp.Diff(tc.want, e.Sharing); diff != "" {
				t.Errorf("sharing (-want +got):\n%s", diff)
			}
			if e.Override != tc.override {
				t.Errorf("override %q, want %q", e.Override, tc.override)
			}
			if !e.IgnoredXids[48] || e.IgnoredXids[31] || e.RecheckInterval != 10*time.Second || e.RecoveryQuietPeriod != 2*time.Minute {
				t.Errorf("health %+v", e)
			}
		})
	}
	if e := Default().Resolve(nil); !e.IgnoredXids[43] || e.IgnoredXids[48] {
		t.Errorf("default ignored Xids %v", e.IgnoredXids)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("default config invalid: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	head := "apiVersion: tessera.dev/v1alpha1\nkind: DevicePluginConfig\n"
	tests := map[string]struct{ in, wantErr string }{
		"empty":            {"", "empty"},
		"not yaml":         {"{", "not valid YAML"},
		"old version":      {"apiVersion: tessera.dev/v0\nkind: DevicePluginConfig\n", `apiVersion: "tessera.dev/v0" is not supported`},
		"no version":       {"kind: DevicePluginConfig\n", "apiVersion"},
		"kind":             {"apiVersion: tessera.dev/v1alpha1\nkind: Other\n", "kind"},
		"unknown field":    {head + "sharing: {strategy: mps, slicesPerGPU: 2}\nbogus: 1\n", "unknown field"},
		"unknown nested":   {head + "sharing: {strategy: mps, slicesPerGPU: 2, color: red}\n", "unknown field"},
		"strategy":         {head + "sharing: {strategy: share, slicesPerGPU: 2}\n", "sharing.strategy"},
		"no strategy":      {head + "sharing: {slicesPerGPU: 2}\n", "sharing.strategy"},
		"neither":          {head + "sharing: {strategy: mps}\n", "sharing.slicesPerGPU"},
		"both":             {head + "sharing: {strategy: mps, slicesPerGPU: 2, sliceMemoryMiB: 1024}\n", "sharing.sliceMemoryMiB"},
		"too many":         {head + "sharing: {strategy: mps, slicesPerGPU: 65}\n", "sharing.slicesPerGPU"},
		"negative":         {head + "sharing: {strategy: mps, slicesPerGPU: -1}\n", "sharing.slicesPerGPU"},
		"tiny memory":      {head + "sharing: {strategy: mps, sliceMemoryMiB: 10}\n", "sharing.sliceMemoryMiB"},
		"mig with count":   {head + "sharing: {strategy: mig, slicesPerGPU: 2}\n", "sharing.slicesPerGPU"},
		"wrong type":       {head + "sharing: {strategy: mps, slicesPerGPU: two}\n", "slicesPerGPU"},
		"bad xid":          {head + "sharing: {strategy: mps, slicesPerGPU: 2}\nhealth: {ignoredXids: [0]}\n", "health.ignoredXids[0]"},
		"fast recheck":     {head + "sharing: {strategy: mps, slicesPerGPU: 2}\nhealth: {recheckInterval: 1ms}\n", "health.recheckInterval"},
		"bad duration":     {head + "sharing: {strategy: mps, slicesPerGPU: 2}\nhealth: {recheckInterval: soon}\n", "decoding"},
		"override no sel":  {head + "sharing: {strategy: mps, slicesPerGPU: 2}\noverrides: [{sharing: {strategy: mps, slicesPerGPU: 2}}]\n", "overrides[0].nodeSelector"},
		"override sharing": {head + "sharing: {strategy: mps, slicesPerGPU: 2}\noverrides: [{nodeSelector: {a: b}, sharing: {strategy: mps}}]\n", "overrides[0].sharing.slicesPerGPU"},
		"override dup":     {head + "sharing: {strategy: mps, slicesPerGPU: 2}\noverrides: [{name: x, nodeSelector: {a: b}, sharing: {strategy: mig}}, {name: x, nodeSelector: {a: c}, sharing: {strategy: mig}}]\n", "overrides[1].name"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("apiVersion: tessera.dev/v1alpha1\nkind: DevicePluginConfig\nsharing: {strategy: mig}\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
		e := c.Resolve(map[string]string{"gpu": "h200"})
		if !e.Sharing.Strategy.Valid() || e.RecheckInterval <= 0 {
			t.Fatalf("resolved %+v", e)
		}
	})
}
