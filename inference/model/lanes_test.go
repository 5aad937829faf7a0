package model

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// randSlice fills n floats with values of mixed sign and magnitude, some
// of them exact zeros and negative zeros, so rounding and signed-zero
// differences between kernels would show.
func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		switch r.IntN(16) {
		case 0:
			s[i] = 0
		case 1:
			s[i] = float32(math.Copysign(0, -1))
		default:
			s[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(7)-3)))
		}
	}
	return s
}

// sameBits reports whether a and b are the same float32, bit for bit.
func sameBits(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }

// TestLaneKernelsMatchPortableGo checks the vector kernels (where this CPU
// has them) against the portable Go bit for bit, for lengths around the
// 8-lane edges and several block counts.
func TestLaneKernelsMatchPortableGo(t *testing.T) {
	if !hasFMA {
		t.Skip("no AVX2/FMA on this CPU: the portable kernels are the ones in use, checked by TestMatmulElementsAreLaneDots")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{8, 9, 15, 16, 17, 24, 31, 64, 288, 290, 768} {
		n8 := n &^ 7
		for trial := range 20 {
			blocks := 1 + trial%5
			w := randSlice(r, 4*blocks*n)
			x := randSlice(r, 4*n)
			vec, port := make([]float32, 4*blocks), make([]float32, 4*blocks)
			gemv4x1(w, x, n, n8, blocks, vec)
			withoutFMA(t, func() { gemv4x1(w, x, n, n8, blocks, port) })
			for i := range vec {
				if !sameBits(vec[i], port[i]) {
					t.Fatalf("4x1 n=%d blocks %d: out[%d] = %g, portable %g", n, blocks, i, vec[i], port[i])
				}
			}
			pairs, ostride := 2*blocks, 4*blocks+trial%3
			vec, port = make([]float32, 4*ostride), make([]float32, 4*ostride)
			gemv2x4(w, x, n, n8, pairs, vec, ostride)
			withoutFMA(t, func() { gemv2x4(w, x, n, n8, pairs, port, ostride) })
			for i := range vec {
				if !sameBits(vec[i], port[i]) {
					t.Fatalf("2x4 n=%d pairs %d: out[%d] = %g, portable %g", n, pairs, i, vec[i], port[i])
				}
			}
		}
	}
}

// TestMatmulElementsAreLaneDots checks that matmul and matmulBatch give,
// for every shape and batch size, each element exactly as laneDot defines
// it, whichever block kernel or goroutine computed it, and that laneDot
// agrees with a float64 dot product to float32 accuracy.
func TestMatmulElementsAreLaneDots(t *testing.T) {
	t.Run("best", func(t *testing.T) { testMatmulElementsAreLaneDots(t) })
	if hasAVX512 {
		t.Run("avx2", func(t *testing.T) { withoutAVX512(t, func() { testMatmulElementsAreLaneDots(t) }) })
	}
	if hasFMA {
		t.Run("portable", func(t *testing.T) { withoutFMA(t, func() { testMatmulElementsAreLaneDots(t) }) })
	}
}

func testMatmulElementsAreLaneDots(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, sh := range [][2]int{{1, 1}, {3, 7}, {4, 8}, {5, 9}, {8, 16}, {13, 33}, {64, 288}, {130, 17}, {70, 64}} {
		rows, n := sh[0], sh[1]
		w := randSlice(r, rows*n)
		for _, B := range []int{1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17} {
			x := randSlice(r, B*n)
			out := make([]float32, B*rows)
			matmulBatch(out, w, x, B)
			for b := range B {
				xb := x[b*n : (b+1)*n]
				for i := range rows {
					wr := w[i*n : (i+1)*n]
					want := laneDot(wr, xb)
					if got := out[b*rows+i]; !sameBits(got, want) {
						t.Fatalf("rows %d n %d B %d: out[%d][%d] = %g, laneDot %g", rows, n, B, b, i, got, want)
					}
					var ref, mag float64
					for j := range wr {
						ref += float64(wr[j]) * float64(xb[j])
						mag += math.Abs(float64(wr[j]) * float64(xb[j]))
					}
					if d := math.Abs(float64(want) - ref); d > 1e-6*mag*float64(n) {
						t.Fatalf("rows %d n %d: laneDot %g, float64 %g (|Σ| %g)", rows, n, want, ref, mag)
					}
				}
			}
		}
	}
}

// TestPortableLanesUsedWithoutFMA runs matmulBatch with the vector kernels
// switched off and checks the results do not change.
func TestPortableLanesUsedWithoutFMA(t *testing.T) {
	if !hasFMA {
		t.Skip("portable kernels are already the ones in use")
	}
	r := rand.New(rand.NewPCG(5, 6))
	rows, n := 37, 290
	w := randSlice(r, rows*n)
	for _, B := range []int{6, 8, 11, 13} {
		x := randSlice(r, B*n)
		vec := make([]float32, B*rows)
		matmulBatch(vec, w, x, B)
		avx2 := make([]float32, B*rows)
		withoutAVX512(t, func() { matmulBatch(avx2, w, x, B) })
		port := make([]float32, B*rows)
		withoutFMA(t, func() { matmulBatch(port, w, x, B) })
		for i := range vec {
			if !sameBits(vec[i], port[i]) || !sameBits(avx2[i], port[i]) {
				t.Fatalf("B %d element %d: vector %g, AVX2 %g, portable %g", B, i, vec[i], avx2[i], port[i])
			}
		}
	}
}

// TestFMA32RoundsOnce checks the portable fused multiply-add against exact
// arithmetic (math/big) and, where the CPU has FMA, against the hardware,
// on random operands and on sums built to land exactly halfway between two
// float32s after the float64 rounding, where rounding twice goes wrong.
func TestFMA32RoundsOnce(t *testing.T) {
	exact := func(a, b, c float32) float32 {
		x := new(big.Float).SetPrec(400).SetFloat64(float64(a))
		x.Mul(x, new(big.Float).SetPrec(400).SetFloat64(float64(b)))
		x.Add(x, new(big.Float).SetPrec(400).SetFloat64(float64(c)))
		f, _ := x.Float32()
		return f
	}
	hardware := func(a, b, c float32) float32 {
		// Lane 0 takes c·1 then a·b; the other lanes stay zero, so the
		// fold returns lane 0 unchanged.
		w := []float32{c, 0, 0, 0, 0, 0, 0, 0, a, 0, 0, 0, 0, 0, 0, 0}
		x := []float32{1, 0, 0, 0, 0, 0, 0, 0, b, 0, 0, 0, 0, 0, 0, 0}
		return lanePart(w, x, 16)
	}
	check := func(a, b, c float32) {
		t.Helper()
		want := exact(a, b, c)
		if got := fma32(a, b, c); !sameBits(got, want) && !(want == 0 && got == 0) {
			t.Fatalf("fma32(%g, %g, %g) = %g, exact %g", a, b, c, got, want)
		}
		if hasFMA {
			if hw := hardware(a, b, c); !sameBits(hw, fma32(a, b, c)) {
				t.Fatalf("fma32(%g, %g, %g) = %g, hardware %g", a, b, c, fma32(a, b, c), hw)
			}
		}
	}
	// (1-2^-15)·2^-24 · (1+2^-15) = 2^-24 - 2^-54: added to 1+2^-23 the sum
	// rounds in float64 to the midpoint 1+3·2^-24, which ties up to
	// 1+2^-22, while the exact sum is below it: 1+2^-23.
	a := float32((1 - math.Ldexp(1, -15)) * math.Ldexp(1, -24))
	b := float32(1 + math.Ldexp(1, -15))
	c := float32(1 + math.Ldexp(1, -23))
	if naive := float32(float64(float64(a)*float64(b)) + float64(c)); naive == c {
		t.Fatalf("the double-rounding case does not double-round (%v)", naive)
	}
	if got, want := fma32(a, b, c), c; got != want {
		t.Fatalf("double-rounding case: fma32 = %v, want %v", got, want)
	}
	check(a, b, c)
	check(-a, -b, -c)
	check(a, -b, -c)
	r := rand.New(rand.NewPCG(11, 12))
	for range 200000 {
		a := float32(math.Ldexp(r.Float64()*2-1, r.IntN(60)-30))
		b := float32(math.Ldexp(r.Float64()*2-1, r.IntN(60)-30))
		c := float32(math.Ldexp(r.Float64()*2-1, r.IntN(80)-40))
		check(a, b, c)
		// Near-cancellations and near-halfway sums.
		check(a, b, -float32(float64(a)*float64(b)))
		k := r.IntN(20) + 15
		check(float32(1+math.Ldexp(float64(r.IntN(1<<10)), -k)), float32(math.Ldexp(1+math.Ldexp(float64(r.IntN(1<<10)), -k), -24)), float32(1+math.Ldexp(float64(r.IntN(1<<23)), -23)))
	}
}

// TestDotRowsIsLaneDots checks the strided form attention uses: every score
// is laneDot of its row, whatever block it fell in.
func TestDotRowsIsLaneDots(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{1, 7, 8, 48, 50, 64} {
		for _, rows := range []int{1, 3, 4, 5, 9, 66} {
			stride := n + r.IntN(3)*n
			w := randSlice(r, rows*stride)
			x := randSlice(r, n)
			out := make([]float32, rows)
			dotRows(out, w, stride, x)
			for i := range out {
				if want := laneDot(w[i*stride:i*stride+n], x); !sameBits(out[i], want) {
					t.Fatalf("n %d rows %d stride %d: out[%d] = %g, laneDot %g", n, rows, stride, i, out[i], want)
				}
			}
		}
	}
}

// TestZKernelsMatchPortableGo checks the AVX-512 batch kernels (where this
// CPU has them) against the portable lane sum bit for bit: lengths around
// the 8- and 16-column edges, 1 to 5 row blocks, both pair counts, output
// strides wider than the rows, and inputs that are infinite, NaN,
// subnormal or overflow mid-row, so any lane or fold that differed from
// lanes.go's order, or a half that picked up its neighbour's input, shows.
func TestZKernelsMatchPortableGo(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 on this CPU: the AVX2 and portable kernels are the ones in use")
	}
	r := rand.New(rand.NewPCG(15, 16))
	special := []float32{
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32 * 3, 1e-39,
		math.MaxFloat32, -math.MaxFloat32, 1e20, -1e20,
	}
	for _, n := range []int{8, 9, 15, 16, 17, 24, 31, 32, 40, 64, 288, 290, 768} {
		n8 := n &^ 7
		for trial := range 24 {
			blocks := 1 + trial%5
			pairs := 2 + 2*(trial%2)
			w := randSlice(r, 4*blocks*n)
			x := randSlice(r, 2*pairs*n)
			if trial%3 == 2 {
				// A few special values: most products stay finite,
				// some rows and inputs overflow or go NaN.
				for range 1 + r.IntN(3) {
					w[r.IntN(len(w))] = special[r.IntN(len(special))]
					x[r.IntN(len(x))] = special[r.IntN(len(special))]
				}
			}
			ostride := 4*blocks + trial%3
			xi := make([]float32, 2*pairs*n8)
			interleave(xi, x, n, n8, pairs)
			got := make([]float32, 2*pairs*ostride)
			for i := range got {
				got[i] = -7 // must survive outside the written elements
			}
			gemvZ(w, xi, n, n8, blocks, pairs, got, ostride)
			for k := range 2 * pairs {
				for i := range ostride {
					want := float32(-7)
					if i < 4*blocks {
						want = lanePartGo(w[i*n:i*n+n], x[k*n:k*n+n], n8)
					}
					if g := got[k*ostride+i]; !sameBits(g, want) && !(math.IsNaN(float64(g)) && math.IsNaN(float64(want))) {
						t.Fatalf("n=%d blocks %d pairs %d: input %d row %d = %g (%#x), portable %g (%#x)",
							n, blocks, pairs, k, i, g, math.Float32bits(g), want, math.Float32bits(want))
					}
				}
			}
		}
	}
}

// TestWeighSumMatchesPortableGo checks attention's weighted sum of values
// with the vector kernel against the Go loop bit for bit, for widths
// around the 8- and 16-column edges, 0 to 70 positions and strides wider
// than a row.
func TestWeighSumMatchesPortableGo(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, n := range []int{1, 7, 8, 9, 16, 24, 40, 48, 50, 64} {
		for _, T := range []int{0, 1, 2, 5, 33, 70} {
			stride := n + r.IntN(3)*n
			v := randSlice(r, max(T, 1)*stride)
			a := randSlice(r, T)
			o0 := randSlice(r, n)
			vec, port := append([]float32(nil), o0...), append([]float32(nil), o0...)
			weighSum(vec, v, stride, a)
			withoutFMA(t, func() { weighSum(port, v, stride, a) })
			for i := range vec {
				want := o0[i]
				for tt := range T {
					want += float32(a[tt] * v[tt*stride+i])
				}
				if !sameBits(vec[i], port[i]) || !sameBits(port[i], want) {
					t.Fatalf("n %d T %d stride %d: o[%d] vector %g, portable %g, by hand %g", n, T, stride, i, vec[i], port[i], want)
				}
			}
		}
	}
}

// TestBatchedStepsSameOnEveryKernelSet runs 8 and then 13 sequences
// through batched steps (logits, argmax and sampled heads) on the
// kernels this CPU has, on the AVX2 ones and on the portable Go, and
// checks every logit, token and row is the same bit for bit.
func TestBatchedStepsSameOnEveryKernelSet(t *testing.T) {
	c := Shapes["tiny"]
	path := genFile(t, c, 23)
	run := func() []uint32 {
		w, err := LoadShard(path, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewShard(w, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetKVSlots(13); err != nil {
			t.Fatal(err)
		}
		var bits []uint32
		tok := func(i, pos int) int { return (i*37 + pos*11) % c.Vocab }
		for pos := range 12 {
			B := 8
			if pos >= 6 {
				B = 13
			}
			items := make([]BatchItem, B)
			for i := range items {
				p := pos
				if i >= 8 {
					p = pos - 6 // joined later
				}
				items[i] = BatchItem{Slot: i, Head: []Head{HeadLogits, HeadArgmax, HeadSample}[i%3],
					StepInput: StepInput{Token: tok(i, p), Pos: p, Sample: SampleParams{Temperature: 0.8, Seed: uint64(i), Draw: uint64(p)}}}
			}
			outs, err := s.StepBatch(items)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range outs {
				bits = append(bits, uint32(o.Token))
				for _, v := range o.Logits {
					bits = append(bits, math.Float32bits(v))
				}
				for _, v := range o.Row {
					bits = append(bits, math.Float32bits(v))
				}
			}
		}
		return bits
	}
	best := run()
	var avx2, port []uint32
	withoutAVX512(t, func() { avx2 = run() })
	withoutFMA(t, func() { port = run() })
	if len(best) != len(avx2) || len(best) != len(port) {
		t.Fatalf("output lengths %d, %d, %d", len(best), len(avx2), len(port))
	}
	for i := range best {
		if best[i] != avx2[i] || best[i] != port[i] {
			t.Fatalf("output word %d: %#x here, %#x on AVX2, %#x portable", i, best[i], avx2[i], port[i])
		}
	}
}
