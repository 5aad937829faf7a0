package main

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/tessera-gpu/tessera/inference/model"
)

// rmsEps is llama2.c's RMSNorm epsilon, the one inference/model uses.
const rmsEps = 1e-5

// layerParams views one decoder layer's tensors in llama2.c layout: every
// matrix row-major [out][in], as inference/model reads them.
type layerParams struct {
	rmsAtt, wq, wk, wv, wo, rmsFFN, w1, w2, w3 []float64
}

// params views a whole model (or its gradient) inside one flat slice, so the
// optimizer walks a single array. The classifier is the embedding (shared).
type params struct {
	flat     []float64
	emb      []float64 // [vocab][dim]
	layers   []layerParams
	rmsFinal []float64
	// matrix marks the flat ranges that get weight decay (not the norms).
	matrix [][2]int
}

func newParams(c model.Config) *params {
	kv, hs := c.KVDim(), c.HeadSize()
	q := c.Heads * hs
	n := c.Vocab*c.Dim + c.Dim + c.Layers*(2*c.Dim+q*c.Dim+2*kv*c.Dim+c.Dim*q+3*c.HiddenDim*c.Dim)
	p := &params{flat: make([]float64, n), layers: make([]layerParams, c.Layers)}
	off := 0
	take := func(size int, matrix bool) []float64 {
		s := p.flat[off : off+size : off+size]
		if matrix {
			p.matrix = append(p.matrix, [2]int{off, off + size})
		}
		off += size
		return s
	}
	p.emb = take(c.Vocab*c.Dim, true)
	for l := range p.layers {
		L := &p.layers[l]
		L.rmsAtt = take(c.Dim, false)
		L.wq = take(q*c.Dim, true)
		L.wk = take(kv*c.Dim, true)
		L.wv = take(kv*c.Dim, true)
		L.wo = take(c.Dim*q, true)
		L.rmsFFN = take(c.Dim, false)
		L.w1 = take(c.HiddenDim*c.Dim, true)
		L.w2 = take(c.Dim*c.HiddenDim, true)
		L.w3 = take(c.HiddenDim*c.Dim, true)
	}
	p.rmsFinal = take(c.Dim, false)
	if off != n {
		panic(fmt.Sprintf("params: laid out %d of %d", off, n))
	}
	return p
}

// initParams draws GPT-2 style weights: N(0, 0.02²), the projections that
// write into the residual stream scaled down by 1/sqrt(2·layers); norms 1.
func initParams(p *params, c model.Config, rng *rand.Rand) {
	fill := func(s []float64, std float64) {
		for i := range s {
			s[i] = rng.NormFloat64() * std
		}
	}
	ones := func(s []float64) {
		for i := range s {
			s[i] = 1
		}
	}
	const std = 0.02
	resid := std / math.Sqrt(2*float64(c.Layers))
	fill(p.emb, std)
	for l := range p.layers {
		L := &p.layers[l]
		ones(L.rmsAtt)
		ones(L.rmsFFN)
		fill(L.wq, std)
		fill(L.wk, std)
		fill(L.wv, std)
		fill(L.wo, resid)
		fill(L.w1, std)
		fill(L.w3, std)
		fill(L.w2, resid)
	}
	ones(p.rmsFinal)
}

// weights converts p to the float32 model inference/model serves (world of
// one, so every "shard" is the whole tensor in checkpoint layout).
func (p *params) weights(c model.Config) (*model.Weights, error) {
	plan, err := model.NewPlan(c, 0, 1)
	if err != nil {
		return nil, err
	}
	f32 := func(s []float64) []float32 {
		out := make([]float32, len(s))
		for i, v := range s {
			out[i] = float32(v)
		}
		return out
	}
	w := &model.Weights{Config: c, Plan: plan, Emb: f32(p.emb), RMSFinal: f32(p.rmsFinal), Layers: make([]model.Layer, c.Layers)}
	for l, L := range p.layers {
		w.Layers[l] = model.Layer{
			RMSAtt: f32(L.rmsAtt), WQ: f32(L.wq), WK: f32(L.wk), WV: f32(L.wv), WO: f32(L.wo),
			RMSFFN: f32(L.rmsFFN), W1: f32(L.w1), W2: f32(L.w2), W3: f32(L.w3),
		}
	}
	w.Cls = w.Emb
	return w, nil
}

// layerActs are what one layer's backward pass needs from its forward pass.
type layerActs struct {
	xin, xn1, q, k, v, ao, x2, xn2, h1, h3, hs []float64
	r1, r2                                     []float64 // inverse RMS per row
	p                                          []float64 // attention probabilities [batch][head][t][u]
}

// net trains a model on batches of B sequences of T tokens each. All
// buffers are allocated once; a net is not safe for concurrent use.
type net struct {
	cfg   model.Config
	B, T  int
	p, g  *params
	acts  []layerActs
	xL    []float64 // residual after the last layer
	rf    []float64
	xf    []float64 // final-normed
	probs []float64 // [N][vocab], softmax of the logits
	cos   []float64 // [T][hs/2]
	sin   []float64

	// scratch
	dx, dx2, dxn, dq, dk, dv, dao, dh1, dh3, dhs []float64
	tA, tB, tW                                   []float64
	dp                                           []float64
	in, target                                   []int
}

func newNet(c model.Config, B, T int) *net {
	if T > c.SeqLen {
		panic("sequence longer than the model's context")
	}
	N, d, kv, hid, hs := B*T, c.Dim, c.KVDim(), c.HiddenDim, c.HeadSize()
	q := c.Heads * hs
	m := &net{cfg: c, B: B, T: T, p: newParams(c), g: newParams(c), acts: make([]layerActs, c.Layers)}
	for l := range m.acts {
		m.acts[l] = layerActs{
			xin: make([]float64, N*d), xn1: make([]float64, N*d), q: make([]float64, N*q),
			k: make([]float64, N*kv), v: make([]float64, N*kv), ao: make([]float64, N*q),
			x2: make([]float64, N*d), xn2: make([]float64, N*d), h1: make([]float64, N*hid),
			h3: make([]float64, N*hid), hs: make([]float64, N*hid), r1: make([]float64, N), r2: make([]float64, N),
			p: make([]float64, B*c.Heads*T*T),
		}
	}
	m.xL, m.rf, m.xf = make([]float64, N*d), make([]float64, N), make([]float64, N*d)
	m.probs = make([]float64, N*c.Vocab)
	m.cos, m.sin = make([]float64, T*hs/2), make([]float64, T*hs/2)
	for t := 0; t < T; t++ {
		for i := 0; i < hs/2; i++ {
			// The same frequencies as inference/model's rope.
			freq := 1 / math.Pow(10000, float64(2*i)/float64(hs))
			m.sin[t*hs/2+i], m.cos[t*hs/2+i] = math.Sincos(float64(t) * freq)
		}
	}
	big := max(d, q, kv, hid, c.Vocab)
	m.dx, m.dx2, m.dxn = make([]float64, N*d), make([]float64, N*d), make([]float64, N*d)
	m.dq, m.dk, m.dv, m.dao = make([]float64, N*q), make([]float64, N*kv), make([]float64, N*kv), make([]float64, N*q)
	m.dh1, m.dh3, m.dhs = make([]float64, N*hid), make([]float64, N*hid), make([]float64, N*hid)
	m.tA, m.tB, m.tW = make([]float64, N*big), make([]float64, N*big), make([]float64, max(c.Vocab, q, kv, hid)*d)
	m.dp = make([]float64, T)
	m.in, m.target = make([]int, N), make([]int, N)
	return m
}

// rmsnorm writes g ⊙ x·r to out per row of width d and r per row.
func rmsnorm(out, r, x, g []float64, d int) {
	for n := range r {
		row := x[n*d : n*d+d]
		var ss float64
		for _, v := range row {
			ss += v * v
		}
		inv := 1 / math.Sqrt(ss/float64(d)+rmsEps)
		r[n] = inv
		o := out[n*d : n*d+d]
		for i, v := range row {
			o[i] = g[i] * v * inv
		}
	}
}

// rmsnormBack adds to dx (and dg) the gradient through rmsnorm given dy.
func rmsnormBack(dx, dg, dy, x, r, g []float64, d int) {
	for n, inv := range r {
		row, dyr, dxr := x[n*d:n*d+d], dy[n*d:n*d+d], dx[n*d:n*d+d]
		var s float64
		for i, v := range row {
			s += g[i] * dyr[i] * v
			dg[i] += dyr[i] * v * inv
		}
		c := s * inv * inv * inv / float64(d)
		for i, v := range row {
			dxr[i] += g[i]*dyr[i]*inv - v*c
		}
	}
}

// rope rotates the consecutive pairs of every head of rows [N][width] by
// their position's angle (sign -1 undoes it: the backward pass).
func (m *net) rope(x []float64, width int, sign float64) {
	hs := m.cfg.HeadSize()
	half := hs / 2
	for n := 0; n < m.B*m.T; n++ {
		t := n % m.T
		cs, sn := m.cos[t*half:t*half+half], m.sin[t*half:t*half+half]
		row := x[n*width : n*width+width]
		for h := 0; h < width; h += hs {
			for i := 0; i < half; i++ {
				c, s := cs[i], sign*sn[i]
				a, b := row[h+2*i], row[h+2*i+1]
				row[h+2*i] = a*c - b*s
				row[h+2*i+1] = a*s + b*c
			}
		}
	}
}

// linear: y[N×out] = x[N×in]·Wᵀ.
func linear(y, x, w []float64, N, out, in int) { gemmT(y, x, w, N, out, in, false) }

// linearBack adds xᵀ-weighted dy to dw and writes (or adds, with acc) dy·W
// to dx. tA, tB and tW are scratch of at least N·max(in,out) and in·out.
func (m *net) linearBack(dx, dw, dy, x, w []float64, N, out, in int, acc bool) {
	transpose(m.tA, dy, N, out) // [out][N]
	transpose(m.tB, x, N, in)   // [in][N]
	gemmT(dw, m.tA, m.tB, out, in, N, true)
	transpose(m.tW, w, out, in) // [in][out]
	gemmT(dx, dy, m.tW, N, in, out, acc)
}

// forward runs the batch in m.in and returns the mean cross-entropy against
// m.target, leaving every activation for backward.
func (m *net) forward() float64 {
	c, p := m.cfg, m.p
	N, d, kv, hid, hs := m.B*m.T, c.Dim, c.KVDim(), c.HiddenDim, c.HeadSize()
	q := c.Heads * hs
	x := m.acts[0].xin
	for n, tok := range m.in {
		copy(x[n*d:n*d+d], p.emb[tok*d:tok*d+d])
	}
	group := c.Heads / c.KVHeads
	scale := 1 / math.Sqrt(float64(hs))
	T := m.T
	for l := range p.layers {
		L, A := &p.layers[l], &m.acts[l]
		rmsnorm(A.xn1, A.r1, A.xin, L.rmsAtt, d)
		linear(A.q, A.xn1, L.wq, N, q, d)
		linear(A.k, A.xn1, L.wk, N, kv, d)
		linear(A.v, A.xn1, L.wv, N, kv, d)
		m.rope(A.q, q, 1)
		m.rope(A.k, kv, 1)
		for b := 0; b < m.B; b++ {
			for h := 0; h < c.Heads; h++ {
				kvOff := (h / group) * hs
				P := A.p[(b*c.Heads+h)*T*T:]
				for t := 0; t < T; t++ {
					qt := A.q[(b*T+t)*q+h*hs:][:hs]
					att := P[t*T : t*T+t+1]
					mx := math.Inf(-1)
					for u := range att {
						att[u] = dot(qt, A.k[(b*T+u)*kv+kvOff:][:hs]) * scale
						mx = max(mx, att[u])
					}
					var sum float64
					for u, s := range att {
						att[u] = math.Exp(s - mx)
						sum += att[u]
					}
					out := A.ao[(b*T+t)*q+h*hs:][:hs]
					clear(out)
					for u := range att {
						att[u] /= sum
						vu := A.v[(b*T+u)*kv+kvOff:][:hs]
						for i := range out {
							out[i] += att[u] * vu[i]
						}
					}
				}
			}
		}
		linear(m.dx, A.ao, L.wo, N, d, q) // dx as scratch for the projection
		for i := range A.x2 {
			A.x2[i] = A.xin[i] + m.dx[i]
		}
		rmsnorm(A.xn2, A.r2, A.x2, L.rmsFFN, d)
		linear(A.h1, A.xn2, L.w1, N, hid, d)
		linear(A.h3, A.xn2, L.w3, N, hid, d)
		for i, a := range A.h1 {
			A.hs[i] = a / (1 + math.Exp(-a)) * A.h3[i]
		}
		linear(m.dx, A.hs, L.w2, N, d, hid)
		x = m.xL
		if l+1 < c.Layers {
			x = m.acts[l+1].xin
		}
		for i := range x {
			x[i] = A.x2[i] + m.dx[i]
		}
	}
	rmsnorm(m.xf, m.rf, m.xL, p.rmsFinal, d)
	V := c.Vocab
	gemmT(m.probs, m.xf, p.emb, N, V, d, false)
	var loss float64
	for n := 0; n < N; n++ {
		row := m.probs[n*V : n*V+V]
		mx := row[0]
		for _, v := range row {
			mx = max(mx, v)
		}
		var sum float64
		for i, v := range row {
			row[i] = math.Exp(v - mx)
			sum += row[i]
		}
		for i := range row {
			row[i] /= sum
		}
		loss -= math.Log(row[m.target[n]])
	}
	return loss / float64(N)
}

// backward fills m.g with the gradient of forward's loss.
func (m *net) backward() {
	c, p, g := m.cfg, m.p, m.g
	clear(g.flat)
	N, d, kv, hid, hs, V, T := m.B*m.T, c.Dim, c.KVDim(), c.HiddenDim, c.HeadSize(), c.Vocab, m.T
	q := c.Heads * hs
	// dlogits = (softmax - onehot)/N, in place over probs.
	dl := m.probs
	inv := 1 / float64(N)
	for n := 0; n < N; n++ {
		row := dl[n*V : n*V+V]
		row[m.target[n]] -= 1
		for i := range row {
			row[i] *= inv
		}
	}
	// Classifier (shared with the embedding).
	m.linearBack(m.dxn, g.emb, dl, m.xf, p.emb, N, V, d, false)
	dx := m.dx
	clear(dx)
	rmsnormBack(dx, g.rmsFinal, m.dxn, m.xL, m.rf, p.rmsFinal, d)

	group := c.Heads / c.KVHeads
	scale := 1 / math.Sqrt(float64(hs))
	for l := c.Layers - 1; l >= 0; l-- {
		L, G, A := &p.layers[l], &g.layers[l], &m.acts[l]
		// FFN: x_out = x2 + W2·(silu(W1 xn2) ⊙ W3 xn2).
		m.linearBack(m.dhs, G.w2, dx, A.hs, L.w2, N, d, hid, false)
		for i, a := range A.h1 {
			sig := 1 / (1 + math.Exp(-a))
			silu := a * sig
			m.dh3[i] = m.dhs[i] * silu
			m.dh1[i] = m.dhs[i] * A.h3[i] * sig * (1 + a*(1-sig))
		}
		m.linearBack(m.dxn, G.w1, m.dh1, A.xn2, L.w1, N, hid, d, false)
		m.linearBack(m.dxn, G.w3, m.dh3, A.xn2, L.w3, N, hid, d, true)
		copy(m.dx2, dx)
		rmsnormBack(m.dx2, G.rmsFFN, m.dxn, A.x2, A.r2, L.rmsFFN, d)

		// Attention: x2 = xin + Wo·attn.
		m.linearBack(m.dao, G.wo, m.dx2, A.ao, L.wo, N, d, q, false)
		clear(m.dq)
		clear(m.dk)
		clear(m.dv)
		for b := 0; b < m.B; b++ {
			for h := 0; h < c.Heads; h++ {
				kvOff := (h / group) * hs
				P := A.p[(b*c.Heads+h)*T*T:]
				for t := 0; t < T; t++ {
					att := P[t*T : t*T+t+1]
					do := m.dao[(b*T+t)*q+h*hs:][:hs]
					dp := m.dp[:t+1]
					var sum float64
					for u, a := range att {
						vu := A.v[(b*T+u)*kv+kvOff:][:hs]
						dp[u] = dot(do, vu)
						sum += a * dp[u]
						dvu := m.dv[(b*T+u)*kv+kvOff:][:hs]
						for i, o := range do {
							dvu[i] += a * o
						}
					}
					qt := A.q[(b*T+t)*q+h*hs:][:hs]
					dqt := m.dq[(b*T+t)*q+h*hs:][:hs]
					for u, a := range att {
						ds := a * (dp[u] - sum) * scale
						if ds == 0 {
							continue
						}
						ku := A.k[(b*T+u)*kv+kvOff:][:hs]
						dku := m.dk[(b*T+u)*kv+kvOff:][:hs]
						for i := range dqt {
							dqt[i] += ds * ku[i]
							dku[i] += ds * qt[i]
						}
					}
				}
			}
		}
		m.rope(m.dq, q, -1)
		m.rope(m.dk, kv, -1)
		m.linearBack(m.dxn, G.wq, m.dq, A.xn1, L.wq, N, q, d, false)
		m.linearBack(m.dxn, G.wk, m.dk, A.xn1, L.wk, N, kv, d, true)
		m.linearBack(m.dxn, G.wv, m.dv, A.xn1, L.wv, N, kv, d, true)
		copy(dx, m.dx2)
		rmsnormBack(dx, G.rmsAtt, m.dxn, A.xin, A.r1, L.rmsAtt, d)
	}
	for n, tok := range m.in {
		ge := g.emb[tok*d : tok*d+d]
		for i, v := range dx[n*d : n*d+d] {
			ge[i] += v
		}
	}
}
