package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tessera-gpu/tessera/inference/model"
)

// randomNet is a net with weights large enough that every path carries a
// visible gradient, and norm weights away from 1.
func randomNet(t *testing.T, c model.Config, B, T int, seed uint64) *net {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	m := newNet(c, B, T)
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := range m.p.flat {
		m.p.flat[i] = rng.NormFloat64() * 0.4
	}
	for _, s := range append([][]float64{m.p.rmsFinal}, norms(m.p)...) {
		for i := range s {
			s[i] = 0.5 + rng.Float64()
		}
	}
	for i := range m.in {
		m.in[i] = rng.IntN(c.Vocab)
		m.target[i] = rng.IntN(c.Vocab)
	}
	return m
}

func norms(p *params) [][]float64 {
	var out [][]float64
	for _, L := range p.layers {
		out = append(out, L.rmsAtt, L.rmsFFN)
	}
	return out
}

// TestGradientMatchesFiniteDifferences checks every parameter of a tiny
// model (two layers, grouped-query attention, shared classifier) against
// central differences of the loss.
func TestGradientMatchesFiniteDifferences(t *testing.T) {
	c := model.Config{Dim: 8, HiddenDim: 12, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 11, SeqLen: 6, SharedClassifier: true}
	m := randomNet(t, c, 2, 5, 1)
	m.forward()
	m.backward()
	grad := append([]float64(nil), m.g.flat...)
	const h = 1e-5
	worst, nonzero := 0.0, 0
	for i := range m.p.flat {
		orig := m.p.flat[i]
		m.p.flat[i] = orig + h
		lp := m.forward()
		m.p.flat[i] = orig - h
		lm := m.forward()
		m.p.flat[i] = orig
		num := (lp - lm) / (2 * h)
		diff := math.Abs(num - grad[i])
		if scale := math.Abs(num) + math.Abs(grad[i]); scale > 1e-6 {
			worst = max(worst, diff/scale)
			nonzero++
		}
		if diff > 1e-6 && diff > 1e-4*(math.Abs(num)+math.Abs(grad[i])) {
			t.Errorf("param %d: analytic %.9g, numeric %.9g", i, grad[i], num)
		}
	}
	t.Logf("%d parameters (%d with a gradient above 1e-6), worst relative error %.2g", len(m.p.flat), nonzero, worst)
	if nonzero < len(m.p.flat)*9/10 {
		t.Errorf("only %d of %d parameters have a gradient", nonzero, len(m.p.flat))
	}
}

// TestForwardMatchesInference runs the same weights through the trainer's
// batched float64 forward pass and inference/model's float32 token-by-token
// one (via a checkpoint file and LoadShard), and compares the next-token
// log-probabilities at every position.
func TestForwardMatchesInference(t *testing.T) {
	c := model.Config{Dim: 48, HiddenDim: 80, Layers: 3, Heads: 6, KVHeads: 2, Vocab: 300, SeqLen: 24, SharedClassifier: true}
	m := randomNet(t, c, 1, 24, 3)
	for i := range m.p.flat { // realistic scale: logits of a few units
		m.p.flat[i] *= 0.5
	}
	m.forward()
	w, err := m.p.weights(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.bin")
	var buf bytes.Buffer
	if err := model.WriteCheckpoint(&buf, w); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	shard, err := loadShard(path)
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for pos, tok := range m.in {
		logits, err := shard.Forward(tok, pos, true)
		if err != nil {
			t.Fatal(err)
		}
		mx := math.Inf(-1)
		for _, l := range logits {
			mx = max(mx, float64(l))
		}
		var sum float64
		for _, l := range logits {
			sum += math.Exp(float64(l) - mx)
		}
		for v, l := range logits {
			want := math.Log(m.probs[pos*c.Vocab+v])
			got := float64(l) - mx - math.Log(sum)
			worst = max(worst, math.Abs(got-want))
		}
	}
	t.Logf("worst log-probability difference over %d positions x %d tokens: %.2g", len(m.in), c.Vocab, worst)
	if worst > 1e-3 {
		t.Fatalf("inference differs from the trainer by %.3g in log-probability", worst)
	}
}

// TestCheckpointRoundTrip: WriteCheckpoint then LoadShard returns the
// weights bit for bit, and a world of 2 reads a consistent shard.
func TestCheckpointRoundTrip(t *testing.T) {
	c := model.Config{Dim: 16, HiddenDim: 24, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 40, SeqLen: 8, SharedClassifier: true}
	m := randomNet(t, c, 1, 8, 5)
	w, _ := m.p.weights(c)
	path := filepath.Join(t.TempDir(), "model.bin")
	var buf bytes.Buffer
	if err := model.WriteCheckpoint(&buf, w); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, buf.Bytes(), 0o644)
	got, err := model.LoadShard(path, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	eq := func(name string, a, b []float32) {
		if len(a) != len(b) {
			t.Fatalf("%s: %d values, want %d", name, len(a), len(b))
		}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s[%d] = %v, want %v", name, i, a[i], b[i])
			}
		}
	}
	eq("emb", got.Emb, w.Emb)
	eq("rms_final", got.RMSFinal, w.RMSFinal)
	for l := range w.Layers {
		a, b := got.Layers[l], w.Layers[l]
		for _, p := range [][3]any{{"wq", a.WQ, b.WQ}, {"wk", a.WK, b.WK}, {"wv", a.WV, b.WV}, {"wo", a.WO, b.WO},
			{"w1", a.W1, b.W1}, {"w2", a.W2, b.W2}, {"w3", a.W3, b.W3}, {"rms_att", a.RMSAtt, b.RMSAtt}, {"rms_ffn", a.RMSFFN, b.RMSFFN}} {
			eq(p[0].(string), p[1].([]float32), p[2].([]float32))
		}
	}
	half, err := model.LoadShard(path, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	eq("rank 1 of 2 wk", half.Layers[0].WK, w.Layers[0].WK[c.HeadSize()*c.Dim:])
}

func TestBPERoundTrip(t *testing.T) {
	texts := []string{
		"The only way to have a friend is to be one.\n\t\t-- Ralph Waldo Emerson",
		"Don't let your mouth write checks your body can't cash.",
		"Q: How many programmers does it take to change a light bulb?\nA: None, that's a hardware problem.",
		"1 + 1 = 2, and the the the the thing is  double  spaced.",
	}
	for i := 0; i < 3; i++ {
		texts = append(texts, texts...)
	}
	pieces, scores, err := trainBPE(texts, 600)
	if err != nil {
		t.Fatal(err)
	}
	if len(pieces) != 600 || len(scores) != 600 {
		t.Fatalf("%d pieces, %d scores, want 600", len(pieces), len(scores))
	}
	for _, p := range pieces[3+256:] {
		if strings.Contains(strings.TrimPrefix(p, " "), " ") && p != " " {
			t.Errorf("piece %q holds an inner space", p)
		}
	}
	b, err := tokenizerBytes(pieces, scores)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := loadTokenizer(b, 600)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(texts[:4], "Unseen words, naïve café: ünïcödé falls back to bytes.") {
		ids := tok.Encode(s, true)
		if got := decode(tok, ids[1:]); got != s {
			t.Errorf("round trip of %q gave %q", s, got)
		}
	}
	ids := tok.Encode("the thing", true)
	if len(ids) > 4 { // BOS, " the", " thing" (or " th"+"ing")
		t.Errorf("frequent words not merged: %d tokens for %q", len(ids), "the thing")
	}
}

func TestSplitWords(t *testing.T) {
	got := strings.Join(splitWords(" Hello, world!\n\tIt's  42."), "|")
	want := " Hello|,| world|!|\n|\t|It's| | 42|."
	if got != want {
		t.Fatalf("splitWords = %q, want %q", got, want)
	}
}

func TestScheduleAndClip(t *testing.T) {
	o := options{lr: 1e-3, minLR: 1e-4, warmup: 10, steps: 110}
	if got := schedule(5, o); math.Abs(got-5e-4) > 1e-12 {
		t.Errorf("warm-up lr %v", got)
	}
	if got := schedule(110, o); math.Abs(got-1e-4) > 1e-12 {
		t.Errorf("final lr %v", got)
	}
	g := []float64{3, 4}
	if n := clipGrad(g, 1); n != 5 || math.Abs(g[0]-0.6) > 1e-12 {
		t.Errorf("clip: norm %v, g %v", n, g)
	}
}

func TestTransposeAndGemm(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, sz := range [][3]int{{1, 1, 1}, {5, 7, 3}, {33, 65, 40}, {70, 3, 9}} {
		m, n, k := sz[0], sz[1], sz[2]
		a, b := make([]float64, m*k), make([]float64, n*k)
		for i := range a {
			a[i] = rng.NormFloat64()
		}
		for i := range b {
			b[i] = rng.NormFloat64()
		}
		at := make([]float64, m*k)
		transpose(at, a, m, k)
		for i := 0; i < m; i++ {
			for j := 0; j < k; j++ {
				if at[j*m+i] != a[i*k+j] {
					t.Fatalf("transpose %dx%d wrong at %d,%d", m, k, i, j)
				}
			}
		}
		c := make([]float64, m*n)
		for i := range c {
			c[i] = 1
		}
		gemmT(c, a, b, m, n, k, true)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				want := 1.0
				for p := 0; p < k; p++ {
					want += a[i*k+p] * b[j*k+p]
				}
				if math.Abs(c[i*n+j]-want) > 1e-9 {
					t.Fatalf("gemmT %v: c[%d,%d] = %v, want %v", sz, i, j, c[i*n+j], want)
				}
			}
		}
	}
}
