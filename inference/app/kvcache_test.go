package app

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/inference/model"
)

func TestPlanKVCache(t *testing.T) {
	c := model.Shapes["stories15m"]
	w := &model.Weights{Config: c}
	var err error
	if w.Plan, err = model.NewPlan(c, 0, 2); err != nil {
		t.Fatal(err)
	}
	// 6 layers x 256 positions x 3 KV heads x 48 x 2 (K, V) x 4 bytes =
	// 1.6875 MiB.
	slot := int64(6 * 256 * 3 * 48 * 2 * 4)
	w.Emb = make([]float32, (32000/2)*288) // 17.6 MiB: the weights this test counts
	for name, tc := range map[string]struct {
		maxBatch, kvMiB int
		env             string
		want            kvPlan
		wantErr         string
	}{
		"no memory given": {maxBatch: 16, want: kvPlan{Slots: 16, SlotBytes: slot, Source: "--max-batch (no memory limit given)"}},
		"flag bounds it":  {maxBatch: 16, kvMiB: 5, want: kvPlan{Slots: 2, SlotBytes: slot, BudgetMiB: 5, Source: "--kv-cache-mib"}},
		"flag wins over the slice": {maxBatch: 16, kvMiB: 5, env: "40960",
			want: kvPlan{Slots: 2, SlotBytes: slot, BudgetMiB: 5, Source: "--kv-cache-mib"}},
		"slice less weights": {maxBatch: 16, env: "24",
			want: kvPlan{Slots: 3, SlotBytes: slot, BudgetMiB: 6, Source: "TESSERA_MEMORY_LIMIT_MIB=24 less 18 MiB of weights"}},
		"max batch bounds a big slice": {maxBatch: 4, env: "40960",
			want: kvPlan{Slots: 4, SlotBytes: slot, BudgetMiB: 40942, Source: "TESSERA_MEMORY_LIMIT_MIB=40960 less 18 MiB of weights"}},
		"weights fill the slice": {maxBatch: 16, env: "18", wantErr: "nothing is left for the KV cache"},
		"too little for one":     {maxBatch: 16, kvMiB: 1, wantErr: "more than the 1 MiB budget"},
		"bad env":                {maxBatch: 16, env: "lots", wantErr: `TESSERA_MEMORY_LIMIT_MIB="lots" is not a comma-separated list of positive MiB figures`},
		"bad second device":      {maxBatch: 16, env: "12,0", wantErr: `TESSERA_MEMORY_LIMIT_MIB="12,0" is not`},
		"two devices add up": {maxBatch: 16, env: "12, 12",
			want: kvPlan{Slots: 3, SlotBytes: slot, BudgetMiB: 6, Source: "TESSERA_MEMORY_LIMIT_MIB=24 less 18 MiB of weights"}},
	} {
		t.Run(name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == EnvMemoryLimitMiB {
					return tc.env
				}
				return ""
			}
			got, err := planKVCache(Options{MaxBatch: tc.maxBatch, KVCacheMiB: tc.kvMiB}, w, getenv)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}
