package model

import (
	"math"
	"sort"
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
}

// NewSampler returns a sampler whose draws depend only on seed.
func NewSampler(temperature, topP float64, seed uint64) *Sampler {
	return &Sampler{Temperature: temperature, TopP: topP, rng: newRNG(seed)}
}

// Argmax returns the index of the largest logit (lowest index on ties).
func Argmax(logits []float32) int {
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
	idx := s.idx[:n]
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return probs[idx[a]] > probs[idx[b]] })
	var mass float64
	last := n - 1
	for i, id := range idx {
		mass += probs[id]
		if mass >= s.TopP {
			last = i
			break
		}
	}
	r *= mass
	var cdf float64
	for _, id := range idx[:last+1] {
		cdf += probs[id]
		if r < cdf {
			return id
		}
	}
	return idx[last]
}
