package model

import (
	"fmt"
	"math"
)

// Collective is what a shard needs from its group. Every rank must call the
// same sequence of operations; only rank 0 receives gathered results.
type Collective interface {
	// AllReduceSum replaces buf with the element-wise sum over ranks, added
	// in rank order so every rank ends with bit-identical values.
	AllReduceSum(buf []float32) error
	// Gather concatenates each rank's local slice in rank order into out on
	// rank 0; out is ignored elsewhere.
	Gather(local, out []float32) error
}

// Shard runs one rank's part of the forward pass and owns its KV cache.
// It is not safe for concurrent use: one sequence at a time.
type Shard struct {
	W    *Weights
	cfg  Config
	plan Plan
	comm Collective

	keys, vals []float32 // [layer][pos][localKV*hs]

	x, xb, q, k, v, attOut, part, h1, h3, scores []float32
	localLogits, logits                          []float32
	cand, cands                                  []float32 // argmax candidates: this rank's, all (rank 0)
	cos, sin                                     []float32

	// LayerHook, when set, sees the residual stream after every layer
	// (and after the embedding as layer -1); tests use it to compare ranks.
	LayerHook func(layer int, x []float32)
}

// NewShard prepares w for inference; comm may be nil for a world of one.
func NewShard(w *Weights, comm Collective) (*Shard, error) {
	c, p := w.Config, w.Plan
	if p.World > 1 && comm == nil {
		return nil, fmt.Errorf("world size %d needs a collective", p.World)
	}
	hs := c.HeadSize()
	localQ, localKV, localHid := (p.HeadHi-p.HeadLo)*hs, (p.KVHi-p.KVLo)*hs, p.HidHi-p.HidLo
	s := &Shard{
		W: w, cfg: c, plan: p, comm: comm,
		keys:        make([]float32, c.Layers*c.SeqLen*localKV),
		vals:        make([]float32, c.Layers*c.SeqLen*localKV),
		x:           make([]float32, c.Dim),
		xb:          make([]float32, c.Dim),
		q:           make([]float32, localQ),
		k:           make([]float32, localKV),
		v:           make([]float32, localKV),
		attOut:      make([]float32, localQ),
		part:        make([]float32, c.Dim),
		h1:          make([]float32, localHid),
		h3:          make([]float32, localHid),
		scores:      make([]float32, c.SeqLen),
		localLogits: make([]float32, p.VocabHi-p.VocabLo),
		cos:         make([]float32, hs/2),
		sin:         make([]float32, hs/2),
	}
	s.cand = make([]float32, s.candidateLen())
	if p.Rank == 0 {
		s.logits = make([]float32, c.Vocab)
		s.cands = make([]float32, p.World*s.candidateLen())
	}
	return s, nil
}

// Config returns the model configuration.
func (s *Shard) Config() Config { return s.cfg }

// Plan returns this rank's slice of the model.
func (s *Shard) Plan() Plan { return s.plan }

func (s *Shard) allReduce(buf []float32) error {
	if s.plan.World == 1 {
		return nil
	}
	return s.comm.AllReduceSum(buf)
}

// Head says what a step computes after the last layer.
type Head uint8

const (
	// HeadNone skips the classifier, the largest matrix: prompt tokens
	// before the last need no prediction.
	HeadNone Head = iota
	// HeadLogits gathers the full vocabulary's logits to rank 0 (what
	// sampling with top-p needs).
	HeadLogits
	// HeadArgmax finds the highest logit across the vocab-parallel shards:
	// every rank sends rank 0 only its best candidate and that token's
	// embedding row, so rank 0 can hand the row to the next step instead of
	// all ranks all-reducing it.
	HeadArgmax
	// HeadSample draws the next token from softmax(logits / temperature)
	// with the Gumbel-max trick: the token with the highest
	// logit/temperature + Gumbel noise is an exact sample, and the noise of
	// each token depends only on (seed, draw, token id), so the draw is an
	// argmax like HeadArgmax and the same for every world size.
	HeadSample
)

// SampleParams drive a HeadSample step.
type SampleParams struct {
	Temperature float32
	Seed        uint64
	// Draw numbers the draws of one generation, so every step gets fresh
	// noise from the same seed.
	Draw uint64
}

// StepInput is one token to feed through the model.
type StepInput struct {
	Token, Pos int
	// Row is Token's embedding row (Dim values) when the caller has it, as
	// rank 0 does after a HeadArgmax step; every rank must then pass the same
	// row. Nil makes the ranks build the row with an all-reduce.
	Row []float32
	// Sample is used by HeadSample.
	Sample SampleParams
}

// StepOutput is what rank 0 gets from a step; other ranks get zero values.
// Slices are valid until the next step.
type StepOutput struct {
	Logits []float32 // HeadLogits
	Token  int       // HeadArgmax, HeadSample: the chosen token
	Row    []float32 // HeadArgmax, HeadSample: Token's embedding row
}

// candidateLen is one rank's argmax candidate on the wire: its best score as
// a float64 split into two float32 bit patterns (so ranks compare exactly
// what one rank would), the token id (as float bits, exact), and that
// token's embedding row.
func (s *Shard) candidateLen() int { return 3 + s.cfg.Dim }

// Forward feeds token at position pos through the model, appending to the KV
// cache. With wantLogits, rank 0 gets the full vocabulary's logits (valid
// until the next call); other ranks get nil.
func (s *Shard) Forward(token, pos int, wantLogits bool) ([]float32, error) {
	head := HeadNone
	if wantLogits {
		head = HeadLogits
	}
	out, err := s.Step(StepInput{Token: token, Pos: pos}, head)
	return out.Logits, err
}

// Step runs one forward pass on this rank; all ranks must call it with the
// same input and head.
func (s *Shard) Step(in StepInput, head Head) (StepOutput, error) {
	c, p := s.cfg, s.plan
	token, pos := in.Token, in.Pos
	if token < 0 || token >= c.Vocab {
		return StepOutput{}, fmt.Errorf("token %d outside vocab of %d", token, c.Vocab)
	}
	if pos < 0 || pos >= c.SeqLen {
		return StepOutput{}, fmt.Errorf("position %d outside context of %d", pos, c.SeqLen)
	}
	if in.Row != nil && len(in.Row) != c.Dim {
		return StepOutput{}, fmt.Errorf("embedding row of %d values, want %d", len(in.Row), c.Dim)
	}
	dim, hs := c.Dim, c.HeadSize()
	x := s.x

	switch {
	case in.Row != nil:
		copy(x, in.Row)
	case p.World == 1:
		copy(x, s.W.Emb[token*dim:(token+1)*dim])
	default:
		// Vocab-parallel embedding: the owner contributes the row, the
		// others zeros, so the all-reduce reproduces the row exactly.
		clear(x)
		if token >= p.VocabLo && token < p.VocabHi {
			copy(x, s.W.Emb[(token-p.VocabLo)*dim:])
		}
		if err := s.allReduce(x); err != nil {
			return StepOutput{}, fmt.Errorf("embedding all-reduce: %w", err)
		}
	}
	if s.LayerHook != nil {
		s.LayerHook(-1, x)
	}

	for i := range s.cos {
		freq := 1 / math.Pow(10000, float64(2*i)/float64(hs))
		sn, cs := math.Sincos(float64(pos) * freq)
		s.cos[i], s.sin[i] = float32(cs), float32(sn)
	}

	localKV := len(s.k)
	group := c.Heads / c.KVHeads
	scale := float32(1 / math.Sqrt(float64(hs)))
	for l := range s.W.Layers {
		L := &s.W.Layers[l]
		rmsnorm(s.xb, x, L.RMSAtt)
		matmul(s.q, L.WQ, s.xb)
		matmul(s.k, L.WK, s.xb)
		matmul(s.v, L.WV, s.xb)
		s.rope(s.q)
		s.rope(s.k)
		cache := l * c.SeqLen * localKV
		copy(s.keys[cache+pos*localKV:], s.k)
		copy(s.vals[cache+pos*localKV:], s.v)

		for h := 0; h < len(s.q)/hs; h++ {
			q := s.q[h*hs : (h+1)*hs]
			kvOff := (h / group) * hs
			att := s.scores[:pos+1]
			for t := range att {
				base := cache + t*localKV + kvOff
				att[t] = dot(q, s.keys[base:base+hs]) * scale
			}
			softmax(att)
			out := s.attOut[h*hs : (h+1)*hs]
			clear(out)
			for t, a := range att {
				base := cache + t*localKV + kvOff
				vt := s.vals[base : base+hs]
				for i := range out {
					out[i] += a * vt[i]
				}
			}
		}
		// Row-parallel output projection: each rank holds a partial sum.
		matmul(s.part, L.WO, s.attOut)
		if err := s.allReduce(s.part); err != nil {
			return StepOutput{}, fmt.Errorf("layer %d attention all-reduce: %w", l, err)
		}
		for i := range x {
			x[i] += s.part[i]
		}

		rmsnorm(s.xb, x, L.RMSFFN)
		matmul(s.h1, L.W1, s.xb)
		matmul(s.h3, L.W3, s.xb)
		for i, v := range s.h1 {
			s.h1[i] = silu(v) * s.h3[i]
		}
		matmul(s.part, L.W2, s.h1)
		if err := s.allReduce(s.part); err != nil {
			return StepOutput{}, fmt.Errorf("layer %d ffn all-reduce: %w", l, err)
		}
		for i := range x {
			x[i] += s.part[i]
		}
		if s.LayerHook != nil {
			s.LayerHook(l, x)
		}
	}
	if head == HeadNone {
		return StepOutput{}, nil
	}
	rmsnorm(s.xb, x, s.W.RMSFinal)
	matmul(s.localLogits, s.W.Cls, s.xb)
	switch head {
	case HeadLogits:
		if p.World == 1 {
			return StepOutput{Logits: s.localLogits}, nil
		}
		if err := s.comm.Gather(s.localLogits, s.logits); err != nil {
			return StepOutput{}, fmt.Errorf("logits gather: %w", err)
		}
		if p.Rank != 0 {
			return StepOutput{}, nil
		}
		return StepOutput{Logits: s.logits}, nil
	case HeadArgmax:
		best := Argmax(s.localLogits)
		return s.pickAcrossRanks(best, float64(s.localLogits[best]))
	case HeadSample:
		sp := in.Sample
		if !(sp.Temperature > 0) {
			return StepOutput{}, fmt.Errorf("sampling temperature must be positive, got %v", sp.Temperature)
		}
		inv := 1 / float64(sp.Temperature)
		best, bestScore := 0, math.Inf(-1)
		for i, l := range s.localLogits {
			if v := float64(l)*inv + gumbel(sp.Seed, sp.Draw, p.VocabLo+i); v > bestScore {
				best, bestScore = i, v
			}
		}
		return s.pickAcrossRanks(best, bestScore)
	default:
		return StepOutput{}, fmt.Errorf("unknown head %d", head)
	}
}

// pickAcrossRanks gathers every rank's best local candidate (its index in
// this shard and its score) and that token's embedding row to rank 0, which
// keeps the first highest in rank order. Ranks own ascending vocab ranges
// and each keeps its lowest token id on ties, so the result is exactly the
// argmax over the whole vocabulary, for a few hundred bytes per rank instead
// of a whole vocab shard.
func (s *Shard) pickAcrossRanks(best int, bestScore float64) (StepOutput, error) {
	p, dim := s.plan, s.cfg.Dim
	cand := s.cand[:s.candidateLen()]
	bits := math.Float64bits(bestScore)
	cand[0], cand[1] = math.Float32frombits(uint32(bits>>32)), math.Float32frombits(uint32(bits))
	cand[2] = math.Float32frombits(uint32(p.VocabLo + best))
	copy(cand[3:], s.W.Emb[best*dim:(best+1)*dim])
	if p.World == 1 {
		return StepOutput{Token: p.VocabLo + best, Row: cand[3:]}, nil
	}
	if err := s.comm.Gather(cand, s.cands); err != nil {
		return StepOutput{}, fmt.Errorf("argmax gather: %w", err)
	}
	if p.Rank != 0 {
		return StepOutput{}, nil
	}
	n := s.candidateLen()
	scoreOf := func(r int) float64 {
		c := s.cands[r*n:]
		return math.Float64frombits(uint64(math.Float32bits(c[0]))<<32 | uint64(math.Float32bits(c[1])))
	}
	win := 0
	for r := 1; r < p.World; r++ {
		if scoreOf(r) > scoreOf(win) {
			win = r
		}
	}
	c := s.cands[win*n : (win+1)*n]
	return StepOutput{Token: int(math.Float32bits(c[2])), Row: c[3:]}, nil
}

// gumbel is standard Gumbel noise for one token of one draw, a pure
// function of its arguments so every rank (and every world size) adds the
// same noise to the same token.
func gumbel(seed, draw uint64, token int) float64 {
	h := mix64(seed ^ mix64(draw^mix64(uint64(token)+0x9e3779b97f4a7c15)))
	u := (float64(h>>11) + 0.5) / (1 << 53) // (0, 1): both logs finite
	return -math.Log(-math.Log(u))
}

// mix64 is the splitmix64 finaliser: a bijection that spreads every input
// bit over the output.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// rope rotates consecutive pairs within each head, as llama2.c does.
func (s *Shard) rope(v []float32) {
	hs := s.cfg.HeadSize()
	for h := 0; h+hs <= len(v); h += hs {
		for i := 0; i < hs; i += 2 {
			c, sn := s.cos[i/2], s.sin[i/2]
			v0, v1 := v[h+i], v[h+i+1]
			v[h+i] = v0*c - v1*sn
			v[h+i+1] = v0*sn + v1*c
		}
	}
}
