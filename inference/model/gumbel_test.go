package model

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// TestGumbelBoundHolds checks the noise bound gumbelMax prunes with on
// random hashes and on every bit length's extreme hashes.
func TestGumbelBoundHolds(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	check := func(h uint64) {
		b := bits.Len64((1 << 53) - h>>11)
		if g := gumbelOf(h); !(g <= gumbelBound[b]) {
			t.Fatalf("hash %#x: noise %v above its bound %v (bit length %d)", h, g, gumbelBound[b], b)
		}
	}
	for range 200000 {
		check(r.Uint64())
	}
	for b := 1; b <= 54; b++ {
		// m = 2^53 - h>>11 at both ends of bit length b.
		for _, m := range []uint64{1 << (b - 1), 1<<b - 1} {
			if m > 1<<53 {
				continue
			}
			hi := (1<<53 - m) << 11
			check(hi)
			check(hi | (1<<11 - 1))
		}
	}
}

// TestGumbelMaxMatchesFullScan checks the pruned search against scoring
// every token, on flat, peaked and tied logits at several temperatures.
func TestGumbelMaxMatchesFullScan(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	full := func(row []float32, inv float64, seed, draw uint64, lo int) (int, float64) {
		best, bestScore := -1, math.Inf(-1)
		for t, l := range row {
			if v := float64(l)*inv + gumbel(seed, draw, lo+t); v > bestScore {
				best, bestScore = t, v
			}
		}
		return best, bestScore
	}
	for trial := range 3000 {
		n := 1 + r.IntN(3000)
		row := make([]float32, n)
		spread := []float64{0, 1e-6, 0.1, 1, 10, 50}[trial%6]
		for i := range row {
			row[i] = float32(r.NormFloat64() * spread)
		}
		inv := 1 / []float64{0.05, 0.5, 0.8, 1, 2}[trial%5]
		seed, draw, lo := r.Uint64(), uint64(r.IntN(100)), r.IntN(50000)
		wb, ws := full(row, inv, seed, draw, lo)
		gb, gs := gumbelMax(row, inv, seed, draw, lo)
		if gb != wb || gs != ws {
			t.Fatalf("trial %d (n %d, spread %g, 1/T %g): pruned search picked %d (%v), full scan %d (%v)", trial, n, spread, inv, gb, gs, wb, ws)
		}
	}
}

// BenchmarkGumbelMax is one sampled token over a 32000-token vocabulary.
func BenchmarkGumbelMax(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	row := make([]float32, 32000)
	for i := range row {
		row[i] = float32(r.NormFloat64() * 3)
	}
	var draw uint64
	for b.Loop() {
		draw++
		gumbelMax(row, 1.25, 42, draw, 0)
	}
}
