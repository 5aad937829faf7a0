package model

import (
	"fmt"
	"math"
	"math/bits"
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
//
// The cache is a pool of slots, one sequence each (a whole context of keys
// and values per layer), so StepBatch can advance many sequences in one
// forward pass: every weight matrix is read once for the whole batch and
// each layer needs one all-reduce for all of it. A Shard is not safe for
// concurrent use; the engine drives it from one goroutine.
type Shard struct {
	W    *Weights
	cfg  Config
	plan Plan
	comm Collective

	maxSlots int
	kv       []slotKV // allocated on first use, up to maxSlots

	// Per-batch activations, grown to the largest batch seen: B rows of
	// the width in the comment.
	x, xb, part  []float32 // Dim
	q, attOut    []float32 // local query width
	k, v         []float32 // local KV width
	h1, h3       []float32 // local hidden units
	cos, sin     []float32 // head size / 2
	headX        []float32 // Dim, the items that want a head
	localLogits  []float32 // local vocab rows
	logitsOut    []float32 // local vocab rows, the HeadLogits items only
	gathered     []float32 // rank 0: every rank's logits, rank-major
	logits       []float32 // rank 0: whole-vocab logits per HeadLogits item
	cand, cands  []float32 // argmax candidates: this rank's, all (rank 0)
	scores       []float32 // SeqLen, one item's attention weights
	outs         []StepOutput
	rowsOwnedBuf []float32 // Dim per item, the embedding rows built here

	// LayerHook, when set, sees each item's residual stream after every
	// layer (and after the embedding as layer -1); tests use it to compare
	// ranks.
	LayerHook func(layer int, x []float32)
}

// slotKV is one sequence's cache: [layer][pos][local KV width].
type slotKV struct{ keys, vals []float32 }

// NewShard prepares w for inference with a KV cache of one slot; comm may
// be nil for a world of one. SetKVSlots makes room for more sequences.
func NewShard(w *Weights, comm Collective) (*Shard, error) {
	c, p := w.Config, w.Plan
	if p.World > 1 && comm == nil {
		return nil, fmt.Errorf("world size %d needs a collective", p.World)
	}
	s := &Shard{W: w, cfg: c, plan: p, comm: comm, maxSlots: 1, scores: make([]float32, c.SeqLen)}
	s.grow(1)
	return s, nil
}

// KVSlotBytes is the memory one KV-cache slot (one sequence at full
// context) takes on one rank of plan.
func KVSlotBytes(c Config, p Plan) int64 {
	localKV := int64(p.KVHi-p.KVLo) * int64(c.HeadSize())
	return 2 * 4 * int64(c.Layers) * int64(c.SeqLen) * localKV
}

// SetKVSlots sets how many sequences the KV cache holds (the slot numbers a
// batch may use are 0..n-1). Slots are allocated when first used, so the
// bound costs nothing until sequences fill it.
func (s *Shard) SetKVSlots(n int) error {
	if n < 1 {
		return fmt.Errorf("KV cache slots must be >= 1, got %d", n)
	}
	s.maxSlots = n
	if len(s.kv) > n {
		s.kv = s.kv[:n]
	}
	return nil
}

// KVSlots is the number of sequences the KV cache holds.
func (s *Shard) KVSlots() int { return s.maxSlots }

func (s *Shard) slot(i int) slotKV {
	for len(s.kv) <= i {
		s.kv = append(s.kv, slotKV{})
	}
	if s.kv[i].keys == nil {
		n := KVSlotBytes(s.cfg, s.plan) / 8
		s.kv[i] = slotKV{keys: make([]float32, n), vals: make([]float32, n)}
	}
	return s.kv[i]
}

// grow sizes the per-batch buffers for b items.
func (s *Shard) grow(b int) {
	c, p := s.cfg, s.plan
	if len(s.outs) >= b {
		return
	}
	hs := c.HeadSize()
	localQ, localKV, localHid := (p.HeadHi-p.HeadLo)*hs, (p.KVHi-p.KVLo)*hs, p.HidHi-p.HidLo
	s.x, s.xb, s.part = make([]float32, b*c.Dim), make([]float32, b*c.Dim), make([]float32, b*c.Dim)
	s.headX, s.rowsOwnedBuf = make([]float32, b*c.Dim), make([]float32, b*c.Dim)
	s.q, s.attOut = make([]float32, b*localQ), make([]float32, b*localQ)
	s.k, s.v = make([]float32, b*localKV), make([]float32, b*localKV)
	s.h1, s.h3 = make([]float32, b*localHid), make([]float32, b*localHid)
	s.cos, s.sin = make([]float32, b*hs/2), make([]float32, b*hs/2)
	s.localLogits, s.logitsOut = make([]float32, b*(p.VocabHi-p.VocabLo)), make([]float32, b*(p.VocabHi-p.VocabLo))
	s.cand = make([]float32, b*s.candidateLen())
	if p.Rank == 0 {
		s.gathered, s.logits = make([]float32, b*c.Vocab), make([]float32, b*c.Vocab)
		s.cands = make([]float32, b*p.World*s.candidateLen())
	}
	s.outs = make([]StepOutput, b)
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

// BatchItem is one token of one sequence in a batched step.
type BatchItem struct {
	// Slot is the sequence's KV-cache slot; Pos indexes its context.
	Slot int
	StepInput
	// Head is what this item computes after the last layer.
	Head Head
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

// Step runs one forward pass of one token in KV slot 0; all ranks must
// call it with the same input and head. It is StepBatch with one item.
func (s *Shard) Step(in StepInput, head Head) (StepOutput, error) {
	outs, err := s.StepBatch([]BatchItem{{StepInput: in, Head: head}})
	if err != nil {
		return StepOutput{}, err
	}
	return outs[0], nil
}

// validate rejects a batch before any rank state changes, so a bad item
// never leaves a half-written cache or a collective half-issued.
func (s *Shard) validate(items []BatchItem) error {
	c := s.cfg
	if len(items) == 0 {
		return fmt.Errorf("empty batch")
	}
	type key struct{ slot, pos int }
	seen := make(map[key]struct{}, len(items))
	for i, it := range items {
		switch {
		case it.Token < 0 || it.Token >= c.Vocab:
			return fmt.Errorf("item %d: token %d outside vocab of %d", i, it.Token, c.Vocab)
		case it.Pos < 0 || it.Pos >= c.SeqLen:
			return fmt.Errorf("item %d: position %d outside context of %d", i, it.Pos, c.SeqLen)
		case it.Slot < 0 || it.Slot >= s.maxSlots:
			return fmt.Errorf("item %d: KV slot %d outside the cache's %d slots", i, it.Slot, s.maxSlots)
		case it.Row != nil && len(it.Row) != c.Dim:
			return fmt.Errorf("item %d: embedding row of %d values, want %d", i, len(it.Row), c.Dim)
		case it.Head > HeadSample:
			return fmt.Errorf("item %d: unknown head %d", i, it.Head)
		case it.Head == HeadSample && !(it.Sample.Temperature > 0):
			return fmt.Errorf("item %d: sampling temperature must be positive, got %v", i, it.Sample.Temperature)
		}
		k := key{it.Slot, it.Pos}
		if _, dup := seen[k]; dup {
			return fmt.Errorf("item %d: slot %d position %d appears twice in one batch", i, it.Slot, it.Pos)
		}
		seen[k] = struct{}{}
	}
	return nil
}

// StepBatch runs one forward pass over items on this rank; all ranks must
// call it with the same items. Items of one slot may be consecutive
// positions of a prompt: every item's keys and values are written before
// any item attends, so position p sees p-1 from the same batch.
//
// Each item's arithmetic is the same whatever else is in the batch (every
// output element is one dot product in a fixed order, and the all-reduce
// adds element-wise in rank order), so a sequence decoded in a batch gets
// bit-identical logits to the same sequence decoded alone.
//
// The outputs (one per item, zero for HeadNone) are valid until the next
// step; other ranks than 0 get zero values.
func (s *Shard) StepBatch(items []BatchItem) ([]StepOutput, error) {
	if err := s.validate(items); err != nil {
		return nil, err
	}
	c, p := s.cfg, s.plan
	B, dim, hs := len(items), c.Dim, c.HeadSize()
	s.grow(B)
	x := s.x[:B*dim]

	// Embedding rows: given, local (world of one), or built with one
	// all-reduce for every item that lacks its row: the owner of a token
	// contributes the row, the others zeros, so the sum is exact.
	var build []int
	for b, it := range items {
		xr := x[b*dim : (b+1)*dim]
		switch {
		case it.Row != nil:
			copy(xr, it.Row)
		case p.World == 1:
			copy(xr, s.W.Emb[it.Token*dim:(it.Token+1)*dim])
		default:
			build = append(build, b)
		}
	}
	if len(build) > 0 {
		rows := s.rowsOwnedBuf[:len(build)*dim]
		clear(rows)
		for i, b := range build {
			if t := items[b].Token; t >= p.VocabLo && t < p.VocabHi {
				copy(rows[i*dim:(i+1)*dim], s.W.Emb[(t-p.VocabLo)*dim:])
			}
		}
		if err := s.allReduce(rows); err != nil {
			return nil, fmt.Errorf("embedding all-reduce: %w", err)
		}
		for i, b := range build {
			copy(x[b*dim:(b+1)*dim], rows[i*dim:(i+1)*dim])
		}
	}
	s.hook(-1, B)

	half := hs / 2
	for b, it := range items {
		for i := 0; i < half; i++ {
			freq := 1 / math.Pow(10000, float64(2*i)/float64(hs))
			sn, cs := math.Sincos(float64(it.Pos) * freq)
			s.cos[b*half+i], s.sin[b*half+i] = float32(cs), float32(sn)
		}
	}

	localQ, localKV, localHid := (p.HeadHi-p.HeadLo)*hs, (p.KVHi-p.KVLo)*hs, p.HidHi-p.HidLo
	xb, part := s.xb[:B*dim], s.part[:B*dim]
	q, k, v, att := s.q[:B*localQ], s.k[:B*localKV], s.v[:B*localKV], s.attOut[:B*localQ]
	h1, h3 := s.h1[:B*localHid], s.h3[:B*localHid]
	for l := range s.W.Layers {
		L := &s.W.Layers[l]
		for b := range B {
			rmsnorm(xb[b*dim:(b+1)*dim], x[b*dim:(b+1)*dim], L.RMSAtt)
		}
		matmulBatch(q, L.WQ, xb, B)
		matmulBatch(k, L.WK, xb, B)
		matmulBatch(v, L.WV, xb, B)
		for b, it := range items {
			s.rope(q[b*localQ:(b+1)*localQ], b)
			s.rope(k[b*localKV:(b+1)*localKV], b)
			kv := s.slot(it.Slot)
			off := (l*c.SeqLen + it.Pos) * localKV
			copy(kv.keys[off:off+localKV], k[b*localKV:(b+1)*localKV])
			copy(kv.vals[off:off+localKV], v[b*localKV:(b+1)*localKV])
		}
		for b, it := range items {
			s.attend(att[b*localQ:(b+1)*localQ], q[b*localQ:(b+1)*localQ], s.slot(it.Slot), l, it.Pos)
		}
		// Row-parallel output projection: each rank holds a partial sum.
		matmulBatch(part, L.WO, att, B)
		if err := s.allReduce(part); err != nil {
			return nil, fmt.Errorf("layer %d attention all-reduce: %w", l, err)
		}
		for i := range x {
			x[i] += part[i]
		}

		for b := range B {
			rmsnorm(xb[b*dim:(b+1)*dim], x[b*dim:(b+1)*dim], L.RMSFFN)
		}
		matmulBatch(h1, L.W1, xb, B)
		matmulBatch(h3, L.W3, xb, B)
		for i, hv := range h1 {
			h1[i] = silu(hv) * h3[i]
		}
		matmulBatch(part, L.W2, h1, B)
		if err := s.allReduce(part); err != nil {
			return nil, fmt.Errorf("layer %d ffn all-reduce: %w", l, err)
		}
		for i := range x {
			x[i] += part[i]
		}
		s.hook(l, B)
	}
	return s.heads(items)
}

func (s *Shard) hook(layer, b int) {
	if s.LayerHook == nil {
		return
	}
	dim := s.cfg.Dim
	for i := range b {
		s.LayerHook(layer, s.x[i*dim:(i+1)*dim])
	}
}

// attend writes one item's attention output for layer l at position pos,
// over its slot's keys and values at positions 0..pos.
func (s *Shard) attend(out, q []float32, kv slotKV, l, pos int) {
	c := s.cfg
	hs := c.HeadSize()
	localKV := (s.plan.KVHi - s.plan.KVLo) * hs
	group := c.Heads / c.KVHeads
	scale := float32(1 / math.Sqrt(float64(hs)))
	cache := l * c.SeqLen * localKV
	for h := 0; h < len(q)/hs; h++ {
		qh := q[h*hs : (h+1)*hs]
		kvOff := (h / group) * hs
		att := s.scores[:pos+1]
		dotRows(att, kv.keys[cache+kvOff:], localKV, qh)
		for t := range att {
			att[t] *= scale
		}
		softmax(att)
		o := out[h*hs : (h+1)*hs]
		clear(o)
		weighSum(o, kv.vals[cache+kvOff:], localKV, att)
	}
}

// heads runs the classifier for the items that want a head: one gather of
// logits for every HeadLogits item and one gather of candidates for every
// argmax or sampling item, in that order on every rank.
func (s *Shard) heads(items []BatchItem) ([]StepOutput, error) {
	c, p := s.cfg, s.plan
	dim, lv := c.Dim, p.VocabHi-p.VocabLo
	outs := s.outs[:len(items)]
	clear(outs)
	var want []int
	for b, it := range items {
		if it.Head != HeadNone {
			want = append(want, b)
		}
	}
	if len(want) == 0 {
		return outs, nil
	}
	hx := s.headX[:len(want)*dim]
	for i, b := range want {
		rmsnorm(hx[i*dim:(i+1)*dim], s.x[b*dim:(b+1)*dim], s.W.RMSFinal)
	}
	logits := s.localLogits[:len(want)*lv]
	matmulBatch(logits, s.W.Cls, hx, len(want))

	var full, picks []int // indices into want
	for i, b := range want {
		if items[b].Head == HeadLogits {
			full = append(full, i)
		} else {
			picks = append(picks, i)
		}
	}
	if len(full) > 0 {
		if err := s.gatherLogits(want, full, logits, outs); err != nil {
			return nil, err
		}
	}
	if len(picks) > 0 {
		if err := s.pickAcrossRanks(items, want, picks, logits, outs); err != nil {
			return nil, err
		}
	}
	return outs, nil
}

// gatherLogits hands rank 0 the whole vocabulary's logits of each
// HeadLogits item. The gather is rank-major (each rank's rows for all
// items), so rank 0 reassembles item by item.
func (s *Shard) gatherLogits(want, full []int, logits []float32, outs []StepOutput) error {
	c, p := s.cfg, s.plan
	lv, n := p.VocabHi-p.VocabLo, len(full)
	if p.World == 1 {
		for _, i := range full {
			outs[want[i]].Logits = logits[i*lv : (i+1)*lv]
		}
		return nil
	}
	local := s.logitsOut[:n*lv]
	for j, i := range full {
		copy(local[j*lv:(j+1)*lv], logits[i*lv:(i+1)*lv])
	}
	g := s.gathered[:0]
	if p.Rank == 0 {
		g = s.gathered[:n*c.Vocab]
	}
	if err := s.comm.Gather(local, g); err != nil {
		return fmt.Errorf("logits gather: %w", err)
	}
	if p.Rank != 0 {
		return nil
	}
	for r := 0; r < p.World; r++ {
		lo, hi := Span(c.Vocab, p.World, r)
		seg := g[n*lo : n*hi]
		for j := range n {
			copy(s.logits[j*c.Vocab+lo:j*c.Vocab+hi], seg[j*(hi-lo):(j+1)*(hi-lo)])
		}
	}
	for j, i := range full {
		outs[want[i]].Logits = s.logits[j*c.Vocab : (j+1)*c.Vocab]
	}
	return nil
}

// pickAcrossRanks finds, for each argmax or sampling item, every rank's
// best local candidate (its score and token) with that token's embedding
// row, gathers them to rank 0, which keeps the first highest in rank order.
// Ranks own ascending vocab ranges and each keeps its lowest token id on
// ties, so the result is exactly the argmax over the whole vocabulary, for
// a few hundred bytes per rank and item instead of a whole vocab shard.
func (s *Shard) pickAcrossRanks(items []BatchItem, want, picks []int, logits []float32, outs []StepOutput) error {
	p, dim := s.plan, s.cfg.Dim
	lv, n, cl := p.VocabHi-p.VocabLo, len(picks), s.candidateLen()
	cand := s.cand[:n*cl]
	for j, i := range picks {
		it := items[want[i]]
		row := logits[i*lv : (i+1)*lv]
		var best int
		var bestScore float64
		if it.Head == HeadArgmax {
			best = Argmax(row)
			bestScore = float64(row[best])
		} else {
			best, bestScore = gumbelMax(row, 1/float64(it.Sample.Temperature), it.Sample.Seed, it.Sample.Draw, p.VocabLo)
		}
		cj := cand[j*cl : (j+1)*cl]
		bits := math.Float64bits(bestScore)
		cj[0], cj[1] = math.Float32frombits(uint32(bits>>32)), math.Float32frombits(uint32(bits))
		cj[2] = math.Float32frombits(uint32(p.VocabLo + best))
		copy(cj[3:], s.W.Emb[best*dim:(best+1)*dim])
	}
	if p.World == 1 {
		for j, i := range picks {
			cj := cand[j*cl : (j+1)*cl]
			outs[want[i]] = StepOutput{Token: int(math.Float32bits(cj[2])), Row: cj[3:]}
		}
		return nil
	}
	all := s.cands[:0]
	if p.Rank == 0 {
		all = s.cands[:p.World*n*cl]
	}
	if err := s.comm.Gather(cand, all); err != nil {
		return fmt.Errorf("argmax gather: %w", err)
	}
	if p.Rank != 0 {
		return nil
	}
	scoreOf := func(c []float32) float64 {
		return math.Float64frombits(uint64(math.Float32bits(c[0]))<<32 | uint64(math.Float32bits(c[1])))
	}
	for j, i := range picks {
		at := func(r int) []float32 { return all[(r*n+j)*cl : (r*n+j+1)*cl] }
		win := at(0)
		for r := 1; r < p.World; r++ {
			if c := at(r); scoreOf(c) > scoreOf(win) {
				win = c
			}
		}
		outs[want[i]] = StepOutput{Token: int(math.Float32bits(win[2])), Row: win[3:]}
	}
	return nil
}

// gumbel is standard Gumbel noise for one token of one draw, a pure
// function of its arguments so every rank (and every world size) adds the
// same noise to the same token.
func gumbel(seed, draw uint64, token int) float64 {
	return gumbelOf(gumbelHash(drawKey(seed, draw), token))
}

// drawKey mixes a request's seed and draw number once per draw; each
// token's hash then costs one more mix.
func drawKey(seed, draw uint64) uint64 {
	return mix64(seed ^ mix64(draw+0x9e3779b97f4a7c15))
}

func gumbelHash(key uint64, token int) uint64 {
	return mix64(key ^ (uint64(token)+1)*0xd1b54a32d192ed03)
}

func gumbelOf(h uint64) float64 {
	u := (float64(h>>11) + 0.5) / (1 << 53) // (0, 1]: 1 only when h>>11 is 2^53-1
	return -math.Log(-math.Log(u))
}

// gumbelBound[b] is at least gumbelOf(h) for every h whose m = 2^53 - h>>11
// has bit length b. With e = 1-u ≥ (m-1)/2^53 ≥ 2^(b-55) for m ≥ 2 (u's
// rounding moves it by half a step at most) and -log(u) ≥ e, the noise is at
// most -log(e) ≤ (55-b)·ln 2; a small margin covers math.Log's rounding.
// m = 1 can round u to 1 (infinite noise), so it has no bound.
var gumbelBound = func() (t [55]float64) {
	t[0], t[1] = math.Inf(1), math.Inf(1)
	for b := 2; b < len(t); b++ {
		t[b] = float64(55-b)*math.Ln2 + 1e-9
	}
	return t
}()

// gumbelMax returns the token of row (its index, tokens numbered from lo)
// with the highest logit·inv + gumbel noise, the lowest index on equal
// scores, and that score: an exact sample from softmax(logits·inv). It
// takes the two logarithms only for tokens whose cheap upper bound on the
// noise could still beat the best score so far, which in a vocabulary of
// tens of thousands is a handful; skipping the rest cannot change the
// result because rounding is monotonic: logit·inv + bound < best implies
// logit·inv + noise < best.
func gumbelMax(row []float32, inv float64, seed, draw uint64, lo int) (best int, bestScore float64) {
	// Start from the highest logit, whose score is usually near the winner's
	// and so prunes the most from the first token on.
	best = Argmax(row)
	bestScore = float64(row[best])*inv + gumbel(seed, draw, lo+best)
	key := drawKey(seed, draw)
	for t := 0; t < len(row); t++ {
		if hasSkipZ && len(row)-t >= 8 {
			// The same bound, eight tokens per AVX-512 step, with a
			// margin that makes it never lower than gumbelBound's:
			// every token it passes over would be skipped below too,
			// so the result is the one this loop alone finds.
			if t = gumbelSkipZ(&row[0], len(row), t, inv, key, lo, bestScore); t == len(row) {
				break
			}
		}
		l := row[t]
		a := float64(l) * inv
		h := gumbelHash(key, lo+t)
		if a+gumbelBound[bits.Len64((1<<53)-h>>11)] < bestScore {
			continue
		}
		if v := a + gumbelOf(h); v > bestScore || (v == bestScore && t < best) {
			best, bestScore = t, v
		}
	}
	return best, bestScore
}

// mix64 is the splitmix64 finaliser: a bijection that spreads every input
// bit over the output.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// rope rotates consecutive pairs within each head, as llama2.c does, with
// the angles of batch item b.
func (s *Shard) rope(v []float32, b int) {
	hs := s.cfg.HeadSize()
	half := hs / 2
	cos, sin := s.cos[b*half:(b+1)*half], s.sin[b*half:(b+1)*half]
	for h := 0; h+hs <= len(v); h += hs {
		for i := 0; i < hs; i += 2 {
			c, sn := cos[i/2], sin[i/2]
			v0, v1 := v[h+i], v[h+i+1]
			v[h+i] = v0*c - v1*sn
			v[h+i+1] = v0*sn + v1*c
		}
	}
}
