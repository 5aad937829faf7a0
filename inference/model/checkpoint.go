package model

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
)

const headerBytes = 7 * 4

// ReadConfig decodes the 28-byte llama2.c header.
func ReadConfig(r io.Reader) (Config, error) {
	var h [7]int32
	if err := binary.Read(r, binary.LittleEndian, &h); err != nil {
		return Config{}, fmt.Errorf("reading checkpoint header: %w", err)
	}
	c := Config{
		Dim: int(h[0]), HiddenDim: int(h[1]), Layers: int(h[2]), Heads: int(h[3]),
		KVHeads: int(h[4]), Vocab: int(h[5]), SeqLen: int(h[6]), SharedClassifier: h[5] > 0,
	}
	if c.Vocab < 0 {
		c.Vocab = -c.Vocab
	}
	return c, c.Validate()
}

func writeConfig(w io.Writer, c Config) error {
	vocab := int32(c.Vocab)
	if !c.SharedClassifier {
		vocab = -vocab
	}
	h := [7]int32{int32(c.Dim), int32(c.HiddenDim), int32(c.Layers), int32(c.Heads), int32(c.KVHeads), vocab, int32(c.SeqLen)}
	return binary.Write(w, binary.LittleEndian, h)
}

// tensor names the checkpoint's tensors in file order.
type tensor int

const (
	tEmbedding tensor = iota
	tRMSAtt
	tWQ
	tWK
	tWV
	tWO
	tRMSFFN
	tW1
	tW2
	tW3
	tRMSFinal
	tFreqCis // two legacy RoPE tables, ignored on load
	tCls     // only present when the classifier is not shared
	numTensors
)

// tensorShapes returns, per tensor, its layer count and per-layer
// [rows, cols] (rows are outputs, row-major like llama2.c's matmul).
func tensorShapes(c Config) [numTensors][3]int {
	hs, kv := c.HeadSize(), c.KVDim()
	s := [numTensors][3]int{
		tEmbedding: {1, c.Vocab, c.Dim},
		tRMSAtt:    {c.Layers, 1, c.Dim},
		tWQ:        {c.Layers, c.Heads * hs, c.Dim},
		tWK:        {c.Layers, kv, c.Dim},
		tWV:        {c.Layers, kv, c.Dim},
		tWO:        {c.Layers, c.Dim, c.Heads * hs},
		tRMSFFN:    {c.Layers, 1, c.Dim},
		tW1:        {c.Layers, c.HiddenDim, c.Dim},
		tW2:        {c.Layers, c.Dim, c.HiddenDim},
		tW3:        {c.Layers, c.HiddenDim, c.Dim},
		tRMSFinal:  {1, 1, c.Dim},
		tFreqCis:   {1, 1, c.SeqLen * hs},
		tCls:       {1, c.Vocab, c.Dim},
	}
	if c.SharedClassifier {
		s[tCls] = [3]int{0, 0, 0}
	}
	return s
}

// offsets returns each tensor's starting byte offset and the expected file size.
func offsets(c Config) (off [numTensors]int64, size int64) {
	pos := int64(headerBytes)
	for t, s := range tensorShapes(c) {
		off[t] = pos
		pos += int64(s[0]) * int64(s[1]) * int64(s[2]) * 4
	}
	return off, pos
}

// Layer is one decoder layer's shard. Column-parallel matrices keep only
// their local output rows; row-parallel matrices keep only their local input
// columns, stored densely so every matmul streams contiguous memory.
type Layer struct {
	RMSAtt []float32 // [dim], replicated
	WQ     []float32 // [localHeads*hs][dim]
	WK     []float32 // [localKV*hs][dim]
	WV     []float32 // [localKV*hs][dim]
	WO     []float32 // [dim][localHeads*hs]
	RMSFFN []float32 // [dim], replicated
	W1     []float32 // [localHidden][dim]
	W2     []float32 // [dim][localHidden]
	W3     []float32 // [localHidden][dim]
}

// Weights is the part of a checkpoint that one rank holds.
type Weights struct {
	Config   Config
	Plan     Plan
	Emb      []float32 // [localVocab][dim]: vocab-parallel embedding
	Layers   []Layer
	RMSFinal []float32 // [dim]
	Cls      []float32 // [localVocab][dim]; aliases Emb when shared
}

// shardReader reads sub-blocks of tensors with positioned reads so a rank
// never materialises more than its own shard.
type shardReader struct {
	f   *os.File
	off [numTensors]int64
	shp [numTensors][3]int
	buf []byte
}

// rows reads rows [lo, hi) of layer l of tensor t.
func (r *shardReader) rows(t tensor, l, lo, hi int) ([]float32, error) {
	s := r.shp[t]
	base := r.off[t] + (int64(l)*int64(s[1])*int64(s[2])+int64(lo)*int64(s[2]))*4
	return r.read(base, (hi-lo)*s[2])
}

// cols reads columns [lo, hi) of every row of layer l of tensor t.
func (r *shardReader) cols(t tensor, l, lo, hi int) ([]float32, error) {
	s := r.shp[t]
	w := hi - lo
	out := make([]float32, 0, s[1]*w)
	for row := 0; row < s[1]; row++ {
		base := r.off[t] + (int64(l)*int64(s[1])*int64(s[2])+int64(row)*int64(s[2])+int64(lo))*4
		v, err := r.read(base, w)
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
	}
	return out, nil
}

func (r *shardReader) read(off int64, n int) ([]float32, error) {
	if cap(r.buf) < n*4 {
		r.buf = make([]byte, n*4)
	}
	b := r.buf[:n*4]
	if _, err := r.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("reading checkpoint at offset %d: %w", off, err)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[i*4:]))
	}
	return out, nil
}

// LoadShard reads only rank's shard of the checkpoint at path.
func LoadShard(path string, rank, world int) (*Weights, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := ReadConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	plan, err := NewPlan(c, rank, world)
	if err != nil {
		return nil, err
	}
	off, size := offsets(c)
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != size {
		return nil, fmt.Errorf("%s: size %d bytes, header implies %d (truncated or not a llama2.c checkpoint)", path, st.Size(), size)
	}
	r := &shardReader{f: f, off: off, shp: tensorShapes(c)}
	hs := c.HeadSize()
	w := &Weights{Config: c, Plan: plan, Layers: make([]Layer, c.Layers)}
	type load struct {
		dst *[]float32
		fn  func() ([]float32, error)
	}
	var loads []load
	add := func(dst *[]float32, fn func() ([]float32, error)) { loads = append(loads, load{dst, fn}) }
	add(&w.Emb, func() ([]float32, error) { return r.rows(tEmbedding, 0, plan.VocabLo, plan.VocabHi) })
	add(&w.RMSFinal, func() ([]float32, error) { return r.rows(tRMSFinal, 0, 0, 1) })
	for l := range w.Layers {
		L := &w.Layers[l]
		add(&L.RMSAtt, func() ([]float32, error) { return r.rows(tRMSAtt, l, 0, 1) })
		add(&L.RMSFFN, func() ([]float32, error) { return r.rows(tRMSFFN, l, 0, 1) })
		add(&L.WQ, func() ([]float32, error) { return r.rows(tWQ, l, plan.HeadLo*hs, plan.HeadHi*hs) })
		add(&L.WK, func() ([]float32, error) { return r.rows(tWK, l, plan.KVLo*hs, plan.KVHi*hs) })
		add(&L.WV, func() ([]float32, error) { return r.rows(tWV, l, plan.KVLo*hs, plan.KVHi*hs) })
		add(&L.WO, func() ([]float32, error) { return r.cols(tWO, l, plan.HeadLo*hs, plan.HeadHi*hs) })
		add(&L.W1, func() ([]float32, error) { return r.rows(tW1, l, plan.HidLo, plan.HidHi) })
		add(&L.W3, func() ([]float32, error) { return r.rows(tW3, l, plan.HidLo, plan.HidHi) })
		add(&L.W2, func() ([]float32, error) { return r.cols(tW2, l, plan.HidLo, plan.HidHi) })
	}
	if !c.SharedClassifier {
		add(&w.Cls, func() ([]float32, error) { return r.rows(tCls, 0, plan.VocabLo, plan.VocabHi) })
	}
	for _, ld := range loads {
		v, err := ld.fn()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		*ld.dst = v
	}
	if c.SharedClassifier {
		w.Cls = w.Emb
	}
	return w, nil
}

// GenerateOptions control the deterministic weight generator.
type GenerateOptions struct {
	Seed uint64
	// Std scales the weights: embeddings are N(0, Std²), matrices
	// N(0, Std²/fan_in); norm weights are always 1. Zero means 1.
	Std float64
}

// Generate streams a checkpoint with deterministic pseudo-random weights to
// w in the llama2.c format. The same (config, options) always produce the
// same bytes, so ranks that generate independently agree on the model hash.
func Generate(w io.Writer, c Config, opt GenerateOptions) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if opt.Std == 0 {
		opt.Std = 1
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := writeConfig(bw, c); err != nil {
		return err
	}
	rng := newRNG(opt.Seed)
	var b [4]byte
	for t, s := range tensorShapes(c) {
		n := s[0] * s[1] * s[2]
		// Matrices scale with 1/sqrt(fan-in) so every layer moves the
		// residual stream by a similar amount; with a flat tiny std the
		// embedding would dominate and greedy decoding would only ever
		// repeat its input, which makes for weak equivalence tests.
		std := opt.Std / math.Sqrt(float64(s[2]))
		if tensor(t) == tEmbedding {
			std = opt.Std
		}
		for i := 0; i < n; i++ {
			var v float32
			switch tensor(t) {
			case tRMSAtt, tRMSFFN, tRMSFinal:
				v = 1
			case tFreqCis:
				v = 0
			default:
				v = float32(rng.norm() * std)
			}
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			if _, err := bw.Write(b[:]); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}

// GenerateFile writes a generated checkpoint to a new file in dir and
// returns its path.
func GenerateFile(dir string, c Config, opt GenerateOptions) (string, error) {
	f, err := os.CreateTemp(dir, "tessera-model-*.bin")
	if err != nil {
		return "", err
	}
	if err := Generate(f, c, opt); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// HashFiles returns a sha256 over the given files (empty paths skipped).
// Ranks compare it at HELLO so a group never mixes models.
func HashFiles(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// rng is a splitmix64 generator with a Box-Muller normal; it is spelled out
// here so generated bytes never change with the Go release.
type rng struct {
	s     uint64
	spare float64
	has   bool
}

func newRNG(seed uint64) *rng { return &rng{s: seed} }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// uniform returns a value in (0, 1].
func (r *rng) uniform() float64 { return float64(r.next()>>11+1) / (1 << 53) }

func (r *rng) norm() float64 {
	if r.has {
		r.has = false
		return r.spare
	}
	u1, u2 := r.uniform(), r.uniform()
	m := math.Sqrt(-2 * math.Log(u1))
	r.spare, r.has = m*math.Sin(2*math.Pi*u2), true
	return m * math.Cos(2*math.Pi*u2)
}
