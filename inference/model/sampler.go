package model

import (
	"math"
	"slices"
)

// Sampler picks the next token from logits. Temperature 0 is greedy; top-p
// in (0, 1) restricts sampling to the smallest set of tokens whose
// probability mass reaches top-p.
type Sampler struct {
	Temperature float64
	TopP        float64
	rng         *rng
	probs       []float64
	idx         []int
	key         []float64
	seed, draw  uint64
}

// NewSampler returns a sampler whose draws depend only on seed.
func NewSampler(temperature, topP float64, seed uint64) *Sampler {
	return &Sampler{Temperature: temperature, TopP: topP, rng: newRNG(seed), seed: seed}
}

// Argmax returns the index of the largest logit (lowest index on ties).
// NaNs never win, except that a NaN first logit stays the answer (nothing
// compares greater than it), as in the loop below.
func Argmax(logits []float32) int {
	if n64 := len(logits) &^ 63; hasAVX512 && n64 > 0 && logits[0] == logits[0] {
		// The same index in two vector passes: the largest non-NaN
		// value (exact, whatever the order), then its first position.
		m := maxZ(&logits[0], n64)
		for _, v := range logits[n64:] {
			if v > m { // not max(): a NaN here must not win
				m = v
			}
		}
		n16 := len(logits) &^ 15
		if i := firstEqZ(&logits[0], n16, m); i < n16 {
			return i
		}
		for i := n16; i < len(logits); i++ {
			if logits[i] == m {
				return i
			}
		}
	}
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return best
}

// Sample draws one token.
func (s *Sampler) Sample(logits []float32) int {
	if s.Temperature <= 0 {
		return Argmax(logits)
	}
	n := len(logits)
	if cap(s.probs) < n {
		s.probs, s.idx = make([]float64, n), make([]int, n)
	}
	probs := s.probs[:n]
	m := float64(logits[Argmax(logits)])
	var sum float64
	for i, v := range logits {
		probs[i] = math.Exp((float64(v) - m) / s.Temperature)
		sum += probs[i]
	}
	for i := range probs {
		probs[i] /= sum
	}
	s.draw++
	r := 1 - s.rng.uniform() // [0, 1)
	if s.TopP <= 0 || s.TopP >= 1 {
		var cdf float64
		for i, p := range probs {
			cdf += p
			if r < cdf {
				return i
			}
		}
		return n - 1
	}
	// The draw must not depend on the world size that computed the logits:
	// the all-reduces sum in another order per world size and move logits
	// by ~1e-6. An inverse-CDF walk over thousands of small probabilities
	// turns such moves into a different token about once in a few hundred
	// draws, so the nucleus is sampled with the Gumbel-max trick instead
	// (the member with the highest logit/temperature + Gumbel noise of
	// (seed, draw, token) is an exact sample of the renormalised nucleus):
	// a move changes the winner only when the two best scores are within
	// ~1e-6. Membership ranks candidates by logit on a grid of 1/1024 with
	// ties broken by token ID, a total order tiny moves change only for a
	// logit right at a grid line; a flip at the nucleus edge matters only
	// if that least likely member would have won.
	idx := s.idx[:n]
	keys := s.keys(n)
	for i, v := range logits {
		idx[i] = i
		keys[i] = math.Round(float64(v) * 1024)
	}
	slices.SortFunc(idx, func(a, b int) int {
		if keys[a] != keys[b] {
			if keys[a] > keys[b] {
				return -1
			}
			return 1
		}
		return a - b
	})
	var mass float64
	last := n - 1
	for i, id := range idx {
		mass += probs[id]
		if mass >= s.TopP {
			last = i
			break
		}
	}
	best, bestScore := -1, math.Inf(-1)
	for _, id := range idx[:last+1] {
		v := float64(logits[id])/s.Temperature + gumbel(s.seed, s.draw, id)
		if v > bestScore || (v == bestScore && id < best) {
			best, bestScore = id, v
		}
	}
	return best
}

func (s *Sampler) keys(n int) []float64 {
	if cap(s.key) < n {
		s.key = make([]float64, n)
	}
	return s.key[:n]
}
