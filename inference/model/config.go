// Package model holds the llama-architecture decoder used by the bundled
// sharded inference server: checkpoint I/O in the llama2.c format, a
// deterministic weight generator, tokenizers, a sampler and a forward pass
// that runs one Megatron-style tensor-parallel shard.
package model

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Config is the llama2.c checkpoint header. Field order mirrors the on-disk
// header so that reading and writing stay obviously symmetric.
type Config struct {
	Dim       int
	HiddenDim int
	Layers    int
	Heads     int
	KVHeads   int
	Vocab     int
	SeqLen    int
	// SharedClassifier is true when the output projection reuses the token
	// embedding table; llama2.c encodes "not shared" as a negative vocab size.
	SharedClassifier bool
}

// HeadSize is the width of one attention head.
func (c Config) HeadSize() int { return c.Dim / c.Heads }

// KVDim is the width of the key (and value) projection.
func (c Config) KVDim() int { return c.KVHeads * c.HeadSize() }

// Validate rejects headers that would make the forward pass index out of
// range; a corrupt or foreign file must fail here rather than panic later.
func (c Config) Validate() error {
	var errs []error
	for name, v := range map[string]int{
		"dim": c.Dim, "hidden_dim": c.HiddenDim, "n_layers": c.Layers, "n_heads": c.Heads,
		"n_kv_heads": c.KVHeads, "vocab_size": c.Vocab, "seq_len": c.SeqLen,
	} {
		if v <= 0 || v > 1<<20 {
			errs = append(errs, fmt.Errorf("%s=%d out of range", name, v))
		}
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return fmt.Errorf("invalid model config: %w", errors.Join(errs...))
	}
	// Bound the parameter count so size arithmetic cannot overflow and a
	// corrupt header cannot ask for absurd allocations (2^36 floats = 256 GiB).
	params := float64(c.Vocab)*float64(c.Dim)*2 +
		float64(c.Layers)*float64(c.Dim)*(4*float64(c.Dim)+3*float64(c.HiddenDim)) +
		float64(c.SeqLen)*float64(c.Dim)
	if params > 1<<36 {
		return fmt.Errorf("invalid model config: %.3g parameters is beyond what this server loads", params)
	}
	if c.Dim%c.Heads != 0 {
		return fmt.Errorf("invalid model config: dim %d not divisible by n_heads %d", c.Dim, c.Heads)
	}
	if c.HeadSize()%2 != 0 {
		return fmt.Errorf("invalid model config: head size %d must be even for RoPE", c.HeadSize())
	}
	if c.KVHeads > c.Heads || c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("invalid model config: n_heads %d not a multiple of n_kv_heads %d", c.Heads, c.KVHeads)
	}
	return nil
}

// ValidateWorld checks that the model can be split over world ranks. Heads
// are never split across ranks, and every rank must own whole KV groups so
// that attention needs no communication.
func (c Config) ValidateWorld(world int) error {
	if world < 1 {
		return fmt.Errorf("world size must be >= 1, got %d", world)
	}
	if c.KVHeads%world != 0 {
		return fmt.Errorf("world size %d must divide the model's %d KV heads (valid sizes: %s)",
			world, c.KVHeads, strings.Join(divisors(c.KVHeads), ", "))
	}
	if c.HiddenDim < world || c.Vocab < world {
		return fmt.Errorf("world size %d larger than hidden_dim %d or vocab %d", world, c.HiddenDim, c.Vocab)
	}
	return nil
}

func divisors(n int) []string {
	var out []string
	for d := 1; d <= n; d++ {
		if n%d == 0 {
			out = append(out, fmt.Sprint(d))
		}
	}
	return out
}

// Shapes are the generated model shapes. "tiny" keeps tests fast and
// exercises grouped-query attention and an uneven vocab split; "stories15m"
// matches the llama2.c stories15M checkpoint so benchmarks have realistic
// proportions (the 32000-entry classifier dominates the per-token work).
// "stories42m" and "stories110m" match llama2.c's larger checkpoints: their
// weights (166 MB and 438 MB read per token) exceed the last-level cache of
// common server CPUs, so decoding them is bound by memory bandwidth, the
// regime real LLM decoding is in; stories15M's 60 MB fit in the large
// shared caches of some hosts and not others, which moves its figures.
// Generated models use a separate classifier: with random weights a shared
// one mostly predicts the input token again, which makes dull tests.
var Shapes = map[string]Config{
	"tiny":        {Dim: 64, HiddenDim: 160, Layers: 2, Heads: 8, KVHeads: 4, Vocab: 259, SeqLen: 128},
	"stories15m":  {Dim: 288, HiddenDim: 768, Layers: 6, Heads: 6, KVHeads: 6, Vocab: 32000, SeqLen: 256},
	"stories42m":  {Dim: 512, HiddenDim: 1376, Layers: 8, Heads: 8, KVHeads: 8, Vocab: 32000, SeqLen: 1024},
	"stories110m": {Dim: 768, HiddenDim: 2048, Layers: 12, Heads: 12, KVHeads: 12, Vocab: 32000, SeqLen: 1024},
}

// ShapeNames lists Shapes in a stable order for flag help and errors.
func ShapeNames() []string {
	names := make([]string, 0, len(Shapes))
	for n := range Shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Span returns the half-open range [lo, hi) of total items owned by rank r of
// n. Ranges are balanced (sizes differ by at most one) and ordered by rank,
// so concatenating every rank's slice in rank order rebuilds the whole.
func Span(total, n, r int) (lo, hi int) {
	return total * r / n, total * (r + 1) / n
}

// Plan is the slice of the model one rank owns.
type Plan struct {
	Rank, World int
	// Query heads [HeadLo, HeadHi) and KV heads [KVLo, KVHi). Query heads
	// follow the KV split so every local query head finds its KV head locally.
	HeadLo, HeadHi int
	KVLo, KVHi     int
	// FFN hidden units [HidLo, HidHi) and vocab rows [VocabLo, VocabHi).
	HidLo, HidHi     int
	VocabLo, VocabHi int
}

// NewPlan computes rank's shard of c over world ranks.
func NewPlan(c Config, rank, world int) (Plan, error) {
	if err := c.ValidateWorld(world); err != nil {
		return Plan{}, err
	}
	if rank < 0 || rank >= world {
		return Plan{}, fmt.Errorf("rank %d out of range for world size %d", rank, world)
	}
	p := Plan{Rank: rank, World: world}
	p.KVLo, p.KVHi = Span(c.KVHeads, world, rank)
	group := c.Heads / c.KVHeads
	p.HeadLo, p.HeadHi = p.KVLo*group, p.KVHi*group
	p.HidLo, p.HidHi = Span(c.HiddenDim, world, rank)
	p.VocabLo, p.VocabHi = Span(c.Vocab, world, rank)
	return p, nil
}
