// Command train trains the shard server's small demo model
// (inference/model/fortunes) from scratch on the fortune cookies of Debian's
// fortunes package: a byte-pair tokenizer, then a llama-architecture decoder (RMSNorm,
// RoPE, grouped-query attention, SwiGLU, shared classifier) with AdamW, all
// in plain Go on one core. It writes model.bin (llama2.c checkpoint) and
// tokenizer.bin (llama2.c tokenizer) that inference/model loads, and prints
// a few greedy completions through inference/model's own forward pass.
//
//	apt-get install fortunes
//	make demo-model   # GOMAXPROCS=1 go run ./hack/train -seed 1 -out inference/model/fortunes
//
// The same flags and seed give the same files on the same architecture and
// Go release (one goroutine, float64 arithmetic, seeded data order).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tessera-gpu/tessera/inference/model"
)

// defaultFiles are the fortune files trained on: the Debian fortunes
// package less ASCII art, code and IRC logs, and the files most likely to
// put an offensive line into a demo.
const defaultFiles = "computers,cookie,definitions,education,food,fortunes,goedel,humorists,kids,law,linux,linuxcookie," +
	"literature,love,magic,medicine,miscellaneous,news,paradoxum,people,pets,platitudes,riddles,science,songs-poems," +
	"sports,startrek,tao,wisdom,work"

type options struct {
	dir, files, out                        string
	maxLen                                 int
	vocab, dim, layers, heads, kvHeads     int
	hidden, seqLen, batch, steps, evalEach int
	lr, minLR, wd, clip                    float64
	warmup                                 int
	seed                                   uint64
	valFrac                                float64
	prompts                                string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "fortunes", "/usr/share/games/fortunes", "fortune(6) data directory")
	flag.StringVar(&o.files, "files", defaultFiles, "comma-separated fortune files to train on")
	flag.StringVar(&o.out, "out", "", "directory for model.bin and tokenizer.bin (required)")
	flag.IntVar(&o.maxLen, "max-len", 1000, "skip fortunes longer than this many bytes")
	flag.IntVar(&o.vocab, "vocab", 1024, "tokenizer vocabulary (259 fixed pieces + chars + merges)")
	flag.IntVar(&o.dim, "dim", 96, "model width")
	flag.IntVar(&o.layers, "layers", 3, "decoder layers")
	flag.IntVar(&o.heads, "heads", 8, "query heads")
	flag.IntVar(&o.kvHeads, "kv-heads", 4, "key/value heads (the world size must divide it)")
	flag.IntVar(&o.hidden, "hidden", 256, "FFN hidden units")
	flag.IntVar(&o.seqLen, "seq-len", 128, "context length, trained and served")
	flag.IntVar(&o.batch, "batch", 16, "sequences per step")
	flag.IntVar(&o.steps, "steps", 1400, "optimizer steps")
	flag.IntVar(&o.evalEach, "eval-every", 100, "steps between validation losses")
	flag.Float64Var(&o.lr, "lr", 3e-3, "peak learning rate")
	flag.Float64Var(&o.minLR, "min-lr", 3e-4, "final learning rate (cosine decay)")
	flag.IntVar(&o.warmup, "warmup", 100, "linear warm-up steps")
	flag.Float64Var(&o.wd, "weight-decay", 0.1, "AdamW weight decay on matrices")
	flag.Float64Var(&o.clip, "clip", 1, "gradient norm clip")
	flag.Uint64Var(&o.seed, "seed", 1, "seed for the data order, split and initial weights")
	flag.Float64Var(&o.valFrac, "val", 0.02, "fraction of fortunes held out for the validation loss")
	flag.StringVar(&o.prompts, "prompts", "The|A man|Life is|Q: What", "|-separated prompts to complete greedily at the end")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.out == "" {
		return errors.New("-out is required")
	}
	start := time.Now()
	texts, err := readFortunes(o.dir, strings.Split(o.files, ","), o.maxLen)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(o.seed, 0x7e55e7a))
	rng.Shuffle(len(texts), func(i, j int) { texts[i], texts[j] = texts[j], texts[i] })
	nVal := int(float64(len(texts)) * o.valFrac)
	val, train := texts[:nVal], texts[nVal:]
	chars := 0
	for _, t := range train {
		chars += len(t)
	}
	fmt.Printf("corpus: %d fortunes (%d bytes) for training, %d held out\n", len(train), chars, len(val))

	pieces, scores, err := trainBPE(train, o.vocab)
	if err != nil {
		return err
	}
	tokBytes, err := tokenizerBytes(pieces, scores)
	if err != nil {
		return err
	}
	tok, err := loadTokenizer(tokBytes, o.vocab)
	if err != nil {
		return err
	}
	trainData, valData := encodeAll(tok, train), encodeAll(tok, val)
	fmt.Printf("tokenizer: %d pieces; %d training tokens (%.2f bytes/token), %d validation tokens [%s]\n",
		o.vocab, len(trainData.ids), float64(chars)/float64(len(trainData.ids)), len(valData.ids), since(start))

	cfg := model.Config{Dim: o.dim, HiddenDim: o.hidden, Layers: o.layers, Heads: o.heads, KVHeads: o.kvHeads,
		Vocab: o.vocab, SeqLen: o.seqLen, SharedClassifier: true}
	if err := cfg.Validate(); err != nil {
		return err
	}
	m := newNet(cfg, o.batch, o.seqLen)
	initParams(m.p, cfg, rng)
	fmt.Printf("model: %+v, %d parameters\n", cfg, len(m.p.flat))
	opt := newAdamW(len(m.p.flat))
	evalNet := newNet(cfg, o.batch, o.seqLen)
	evalNet.p = m.p
	valBatches := valData.fixedBatches(o.batch, o.seqLen, 4, rand.New(rand.NewPCG(o.seed, 1)))

	for step := 1; step <= o.steps; step++ {
		trainData.sample(m.in, m.target, o.batch, o.seqLen, rng)
		loss := m.forward()
		m.backward()
		norm := clipGrad(m.g.flat, o.clip)
		lr := schedule(step, o)
		opt.step(m.p, m.g, lr, o.wd)
		if step%o.evalEach == 0 || step == o.steps || step == 1 {
			var vl float64
			for _, b := range valBatches {
				copy(evalNet.in, b[0])
				copy(evalNet.target, b[1])
				vl += evalNet.forward()
			}
			fmt.Printf("step %4d  loss %.3f  val %.3f  grad norm %.2f  lr %.2e  [%s]\n",
				step, loss, vl/float64(len(valBatches)), norm, lr, since(start))
		}
	}

	w, err := m.p.weights(cfg)
	if err != nil {
		return err
	}
	var ckpt bytes.Buffer
	if err := model.WriteCheckpoint(&ckpt, w); err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "model.bin"), ckpt.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "tokenizer.bin"), tokBytes, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s/model.bin (%d bytes) and tokenizer.bin (%d bytes) [%s]\n", o.out, ckpt.Len(), len(tokBytes), since(start))

	// Greedy completions through the server's loader and forward pass.
	shard, err := loadShard(filepath.Join(o.out, "model.bin"))
	if err != nil {
		return err
	}
	for _, p := range strings.Split(o.prompts, "|") {
		text, err := complete(shard, tok, p, 48)
		if err != nil {
			return err
		}
		fmt.Printf("%q -> %q\n", p, text)
	}
	return nil
}

func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }

// schedule is a linear warm-up then a cosine decay from lr to minLR.
func schedule(step int, o options) float64 {
	if step <= o.warmup {
		return o.lr * float64(step) / float64(o.warmup)
	}
	frac := float64(step-o.warmup) / float64(max(1, o.steps-o.warmup))
	return o.minLR + 0.5*(o.lr-o.minLR)*(1+math.Cos(math.Pi*frac))
}

func clipGrad(g []float64, limit float64) float64 {
	var ss float64
	for _, v := range g {
		ss += v * v
	}
	norm := math.Sqrt(ss)
	if norm > limit {
		s := limit / norm
		for i := range g {
			g[i] *= s
		}
	}
	return norm
}

// adamW is Adam with decoupled weight decay (on matrices only).
type adamW struct {
	m, v   []float64
	t      int
	b1, b2 float64
}

func newAdamW(n int) *adamW {
	return &adamW{m: make([]float64, n), v: make([]float64, n), b1: 0.9, b2: 0.95}
}

func (a *adamW) step(p, g *params, lr, wd float64) {
	a.t++
	c1 := 1 - math.Pow(a.b1, float64(a.t))
	c2 := 1 - math.Pow(a.b2, float64(a.t))
	for i, gi := range g.flat {
		a.m[i] = a.b1*a.m[i] + (1-a.b1)*gi
		a.v[i] = a.b2*a.v[i] + (1-a.b2)*gi*gi
		p.flat[i] -= lr * (a.m[i] / c1) / (math.Sqrt(a.v[i]/c2) + 1e-8)
	}
	for _, r := range p.matrix {
		s := p.flat[r[0]:r[1]]
		for i := range s {
			s[i] -= lr * wd * s[i]
		}
	}
}

// tokens is an encoded corpus: every fortune as BOS + its tokens, one after
// another, and where each fortune starts.
type tokens struct {
	ids    []int
	starts []int
}

func encodeAll(tok model.Tokenizer, texts []string) tokens {
	var t tokens
	for _, s := range texts {
		t.starts = append(t.starts, len(t.ids))
		t.ids = append(t.ids, tok.Encode(s, true)...)
	}
	return t
}

// sample fills in/target with B windows of T tokens, each starting at the
// BOS of a random fortune (as every prompt does) and running on into the
// fortunes after it.
func (t tokens) sample(in, target []int, B, T int, rng *rand.Rand) {
	last := len(t.starts)
	for last > 0 && t.starts[last-1]+T+1 > len(t.ids) {
		last--
	}
	for b := 0; b < B; b++ {
		s := t.starts[rng.IntN(last)]
		copy(in[b*T:(b+1)*T], t.ids[s:s+T])
		copy(target[b*T:(b+1)*T], t.ids[s+1:s+T+1])
	}
}

// fixedBatches draws n batches once, so every evaluation sees the same data.
func (t tokens) fixedBatches(B, T, n int, rng *rand.Rand) [][2][]int {
	out := make([][2][]int, n)
	for i := range out {
		out[i] = [2][]int{make([]int, B*T), make([]int, B*T)}
		t.sample(out[i][0], out[i][1], B, T, rng)
	}
	return out
}

func loadShard(path string) (*model.Shard, error) {
	w, err := model.LoadShard(path, 0, 1)
	if err != nil {
		return nil, err
	}
	return model.NewShard(w, nil)
}

// complete decodes greedily from prompt, as the demo's request does, and
// stops at BOS or EOS like the server.
func complete(s *model.Shard, tok model.Tokenizer, prompt string, n int) (string, error) {
	ids := tok.Encode(prompt, true)
	var out []int
	var logits []float32
	var err error
	for pos := 0; pos < s.Config().SeqLen; pos++ {
		var id int
		if pos < len(ids) {
			id = ids[pos]
		} else {
			id = model.Argmax(logits)
			if id == model.TokenBOS || id == model.TokenEOS || len(out) == n {
				break
			}
			out = append(out, id)
		}
		if logits, err = s.Forward(id, pos, true); err != nil {
			return "", err
		}
	}
	prev := ids[len(ids)-1]
	var sb strings.Builder
	for _, id := range out {
		sb.Write(tok.Decode(prev, id))
		prev = id
	}
	return sb.String(), nil
}
