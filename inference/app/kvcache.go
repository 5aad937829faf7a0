package app

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tessera-gpu/tessera/inference/model"
)

// EnvMemoryLimitMiB is what the Tessera device plugin sets in a container:
// the GPU memory its slices grant, in MiB (api.EnvMemoryLimitMiB; spelled
// here so the shard server does not import the cluster API).
const EnvMemoryLimitMiB = "TESSERA_MEMORY_LIMIT_MIB"

// DefaultMaxBatch is how many sequences decode together when memory does
// not bound it first.
const DefaultMaxBatch = 16

// kvPlan is how many sequences this rank's KV cache holds, and why.
type kvPlan struct {
	Slots     int
	SlotBytes int64
	// BudgetMiB is the memory for the cache (0: not bounded by memory).
	BudgetMiB int64
	Source    string
}

// planKVCache sizes the KV-cache pool: --max-batch sequences, fewer if the
// memory budget holds fewer at full context. The budget is --kv-cache-mib,
// or else what the slice grants (TESSERA_MEMORY_LIMIT_MIB) less this rank's
// share of the weights; with neither, memory does not bound the pool. Too
// little memory for one sequence is a configuration error that names the
// figures, so a pod on a too-small slice fails at start, not under load.
func planKVCache(o Options, w *model.Weights, getenv func(string) string) (kvPlan, error) {
	p := kvPlan{SlotBytes: model.KVSlotBytes(w.Config, w.Plan), Slots: o.MaxBatch}
	weights := weightBytes(w)
	switch {
	case o.KVCacheMiB > 0:
		p.BudgetMiB, p.Source = int64(o.KVCacheMiB), "--kv-cache-mib"
	case getenv != nil && strings.TrimSpace(getenv(EnvMemoryLimitMiB)) != "":
		v := strings.TrimSpace(getenv(EnvMemoryLimitMiB))
		// One figure per visible device, comma-separated in
		// NVIDIA_VISIBLE_DEVICES order: a rank holding slices of two GPUs
		// has both memories.
		var limit int64
		for _, f := range strings.Split(v, ",") {
			m, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil || m <= 0 {
				return p, configErr("%s=%q is not a comma-separated list of positive MiB figures", EnvMemoryLimitMiB, v)
			}
			limit += m
		}
		p.BudgetMiB = limit - (weights+(1<<20)-1)>>20
		p.Source = fmt.Sprintf("%s=%d less %d MiB of weights", EnvMemoryLimitMiB, limit, (weights+(1<<20)-1)>>20)
		if p.BudgetMiB <= 0 {
			return p, configErr("the slice grants %d MiB (%s) and this rank's share of the weights takes %d MiB: nothing is left for the KV cache; ask for more slices or run more ranks",
				limit, EnvMemoryLimitMiB, (weights+(1<<20)-1)>>20)
		}
	default:
		p.Source = "--max-batch (no memory limit given)"
		return p, nil
	}
	fit := p.BudgetMiB << 20 / p.SlotBytes
	if fit < 1 {
		return p, configErr("one sequence's KV cache takes %.1f MiB on this rank at the full %d-token context, more than the %d MiB budget (%s)",
			float64(p.SlotBytes)/(1<<20), w.Config.SeqLen, p.BudgetMiB, p.Source)
	}
	p.Slots = int(min(int64(o.MaxBatch), fit))
	return p, nil
}

// weightBytes is the memory of one rank's share of the weights.
func weightBytes(w *model.Weights) int64 {
	n := len(w.Emb) + len(w.RMSFinal)
	if len(w.Cls) > 0 && &w.Cls[0] != &w.Emb[0] {
		n += len(w.Cls)
	}
	for _, l := range w.Layers {
		n += len(l.RMSAtt) + len(l.WQ) + len(l.WK) + len(l.WV) + len(l.WO) + len(l.RMSFFN) + len(l.W1) + len(l.W2) + len(l.W3)
	}
	return int64(n) * 4
}
