package model

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// TestGumbelSkipZIsSafe checks that the AVX-512 scan only passes over
// tokens gumbelMax's own bound rules out (so pruning with it cannot change
// a sample), that it stops at the first token the bound keeps once best is
// above every finite bound, and that gumbelMax gives the same token and
// score with it and without it, on rows with NaN, infinite, huge and tied
// logits, at token numbers near the ends of the vocabulary.
func TestGumbelSkipZIsSafe(t *testing.T) {
	if !hasSkipZ {
		t.Skip("no AVX512DQ/CD on this CPU: gumbelMax scans in Go")
	}
	r := rand.New(rand.NewPCG(17, 18))
	keeps := func(row []float32, t int, inv float64, key uint64, lo int, best float64) bool {
		h := gumbelHash(key, lo+t)
		return !(float64(row[t])*inv+gumbelBound[bits.Len64((1<<53)-h>>11)] < best)
	}
	special := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32, -math.MaxFloat32, 0}
	for trial := range 4000 {
		n := 8 + r.IntN(600)
		row := make([]float32, n)
		spread := []float64{0, 1e-3, 1, 10, 40, 1e4}[trial%6]
		for i := range row {
			row[i] = float32(r.NormFloat64() * spread)
		}
		if trial%5 == 4 {
			for range 1 + r.IntN(4) {
				row[r.IntN(n)] = special[r.IntN(len(special))]
			}
		}
		inv := 1 / []float64{0.05, 0.5, 0.8, 1, 2}[trial%5]
		key, lo := r.Uint64(), []int{0, r.IntN(50000), math.MaxInt32 - n}[trial%3]
		best := float64(row[Argmax(row)])*inv + []float64{-5, 0, 5, 30, 40}[r.IntN(5)]
		for start := 0; n-start >= 8; {
			got := gumbelSkipZ(&row[0], n, start, inv, key, lo, best)
			if got < start || got > n {
				t.Fatalf("trial %d: scan from %d of %d returned %d", trial, start, n, got)
			}
			for i := start; i < got; i++ {
				if keeps(row, i, inv, key, lo, best) {
					t.Fatalf("trial %d: scan from %d passed over token %d (logit %g), which the bound keeps", trial, start, i, row[i])
				}
			}
			if got < n && n-got >= 8 && !keeps(row, got, inv, key, lo, best) {
				// Stopping early is safe, but it should only happen on
				// the bound's margin or an unbounded hash.
				h := gumbelHash(key, lo+got)
				a := float64(row[got]) * inv
				if b := bits.Len64((1 << 53) - h>>11); b >= 2 && a+gumbelBound[b]+1e-8 < best {
					t.Fatalf("trial %d: scan stopped at token %d, far inside the bound", trial, got)
				}
			}
			start = got + 1
		}
		seed, draw := r.Uint64(), uint64(r.IntN(100))
		vb, vs := gumbelMax(row, inv, seed, draw, lo)
		hasSkipZ = false
		gb, gs := gumbelMax(row, inv, seed, draw, lo)
		hasSkipZ = true
		if vb != gb || math.Float64bits(vs) != math.Float64bits(gs) {
			t.Fatalf("trial %d: with the AVX-512 scan %d (%v), without %d (%v)", trial, vb, vs, gb, gs)
		}
	}
}

// TestArgmaxVectorMatchesLoop checks the AVX-512 Argmax against the plain
// loop on rows around the 16- and 64-float edges with ties, signed zeros,
// infinities and NaNs (first or elsewhere).
func TestArgmaxVectorMatchesLoop(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 on this CPU: Argmax is the plain loop")
	}
	loop := func(x []float32) int {
		best := 0
		for i, v := range x {
			if v > x[best] {
				best = i
			}
		}
		return best
	}
	r := rand.New(rand.NewPCG(19, 20))
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	special := []float32{nan, inf, -inf, 0, float32(math.Copysign(0, -1)), 3, 3, -math.MaxFloat32}
	for trial := range 20000 {
		n := []int{1, 15, 16, 63, 64, 65, 127, 128, 130, 200, 32000}[trial%11]
		if trial%11 == 10 && trial%7 != 0 {
			continue // a few full vocabularies are enough
		}
		x := make([]float32, n)
		for i := range x {
			switch trial % 4 {
			case 0:
				x[i] = float32(r.NormFloat64())
			case 1:
				x[i] = float32(r.IntN(3)) // many ties
			case 2:
				x[i] = float32(math.Inf(-1))
			default:
				x[i] = special[r.IntN(len(special))]
			}
		}
		for range r.IntN(3) {
			x[r.IntN(n)] = special[r.IntN(len(special))]
		}
		if got, want := Argmax(x), loop(x); got != want {
			t.Fatalf("trial %d (n %d): Argmax %d (%v), loop %d (%v)", trial, n, got, x[got], want, x[want])
		}
	}
}
