package model

import (
	"math"
	"runtime"
	"sync"
)

// parallelMinWork is the multiply-add count below which a matmul stays on one
// goroutine: spawning costs about a microsecond, so tiny layers lose from it.
const parallelMinWork = 1 << 15

// matmul computes out = W·x for a row-major W of len(out) rows by len(x)
// columns. Each element is the lane sum defined in lanes.go, fixed per row and
// independent of the goroutine split, so results do not depend on GOMAXPROCS.
func matmul(out, w, x []float32) {
	rows, cols := len(out), len(x)
	procs := runtime.GOMAXPROCS(0)
	if procs == 1 || rows*cols < parallelMinWork || rows < 8 {
		matmulRows(out, w, x, 0, rows)
		return
	}
	procs = min(procs, rows/4)
	var wg sync.WaitGroup
	for p := 0; p < procs; p++ {
		// Chunk edges on multiples of 4 keep the 4-row kernel busy.
		lo, hi := (rows*p/procs)&^3, (rows*(p+1)/procs)&^3
		if p == procs-1 {
			hi = rows
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			matmulRows(out, w, x, lo, hi)
		}()
	}
	wg.Wait()
}

// matmulRows handles rows [lo, hi), four rows per kernel block so each
// load of x feeds four rows; every element is the lane sum of lanes.go.
func matmulRows(out, w, x []float32, lo, hi int) {
	n := len(x)
	n8 := n &^ (lanes - 1)
	hi4 := lo + (hi-lo)&^3
	if n8 == 0 {
		hi4 = lo
	}
	gemv4x1(w[lo*n:], x, n, n8, (hi4-lo)/4, out[lo:])
	if n8 < n {
		for r := lo; r < hi4; r++ {
			out[r] = tail(out[r], w[r*n:r*n+n], x, n8)
		}
	}
	for r := hi4; r < hi; r++ {
		out[r] = laneDot(w[r*n:r*n+n], x)
	}
}

// rmsnorm writes w ⊙ x / rms(x) to out, with llama2.c's epsilon.
func rmsnorm(out, x, w []float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss = ss/float32(len(x)) + 1e-5
	inv := float32(1 / math.Sqrt(float64(ss)))
	w = w[:len(x)]
	out = out[:len(x)]
	for i, v := range x {
		out[i] = w[i] * (inv * v)
	}
}

func softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - m)))
		x[i] = e
		sum += e
	}
	for i := range x {
		x[i] /= sum
	}
}

func silu(x float32) float32 { return x / (1 + float32(math.Exp(float64(-x)))) }

// matmulBatch computes out[b] = W·x[b] for the b rows of x (out is B rows of
// len(out)/B, x is B rows of len(x)/B columns). Each output element is the
// same lane sum matmul forms (lanes.go), whatever B is or where the row
// sits in the batch, so batching never changes a result; what it changes is
// that each weight row is read from memory once for the whole batch.
func matmulBatch(out, w, x []float32, B int) {
	if B == 1 {
		matmul(out, w, x)
		return
	}
	rows, cols := len(out)/B, len(x)/B
	procs := runtime.GOMAXPROCS(0)
	if procs == 1 || rows*cols*B < parallelMinWork || rows < 8 {
		matmulBatchRows(out, w, x, B, 0, rows)
		return
	}
	procs = min(procs, rows/4)
	var wg sync.WaitGroup
	for p := 0; p < procs; p++ {
		lo, hi := (rows*p/procs)&^3, (rows*(p+1)/procs)&^3
		if p == procs-1 {
			hi = rows
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			matmulBatchRows(out, w, x, B, lo, hi)
		}()
	}
	wg.Wait()
}

// batchRowBlock is how many weight rows matmulBatchRows keeps hot in
// cache while every input of the batch passes over them: 16 rows of a few
// thousand columns fit in a core's L1 or L2.
const batchRowBlock = 16

// interleaved holds matmulBatchRows' buffers for the inputs laid out two
// to a register: a few tens of kilobytes per call, reused rather than
// allocated on every layer of every step.
var interleaved = sync.Pool{New: func() any { return new([]float32) }}

// matmulBatchRows handles weight rows [lo, hi) for every batch row, a
// block of rows at a time. Where the CPU has AVX-512, inputs go two to a
// register (lanes.go's interleave), four rows by eight inputs, then by
// four, per kernel step; otherwise, or for the inputs left over, two
// weight rows by four inputs (AVX2), then four rows by one. Every element
// is the lane sum of lanes.go, so which kernel computes it does not change
// it.
func matmulBatchRows(out, w, x []float32, B, lo, hi int) {
	rows, n := len(out)/B, len(x)/B
	n8 := n &^ (lanes - 1)
	hi4 := lo + (hi-lo)&^3
	if n8 == 0 {
		hi4 = lo
	}
	var xi []float32
	Bz := 0 // inputs [0, Bz) go through the AVX-512 kernels
	if hasAVX512 && hi4 > lo {
		Bz = B &^ 3
	}
	if Bz > 0 {
		buf := interleaved.Get().(*[]float32)
		defer interleaved.Put(buf)
		if cap(*buf) < Bz*n8 {
			*buf = make([]float32, Bz*n8)
		}
		xi = (*buf)[:Bz*n8]
		interleave(xi, x, n, n8, Bz/2)
	}
	for rb := lo; rb < hi4; rb += batchRowBlock {
		nr := min(batchRowBlock, hi4-rb)
		b := 0
		for ; b+8 <= Bz; b += 8 {
			gemvZ(w[rb*n:], xi[b*n8:], n, n8, nr/4, 4, out[b*rows+rb:], rows)
		}
		if b < Bz {
			gemvZ(w[rb*n:], xi[b*n8:], n, n8, nr/4, 2, out[b*rows+rb:], rows)
			b += 4
		}
		for ; b+4 <= B; b += 4 {
			gemv2x4(w[rb*n:], x[b*n:], n, n8, nr/2, out[b*rows+rb:], rows)
		}
		for ; b < B; b++ {
			gemv4x1(w[rb*n:], x[b*n:], n, n8, nr/4, out[b*rows+rb:])
		}
	}
	if n8 < n {
		for b := range B {
			xb := x[b*n : b*n+n]
			for r := lo; r < hi4; r++ {
				out[b*rows+r] = tail(out[b*rows+r], w[r*n:r*n+n], xb, n8)
			}
		}
	}
	for r := hi4; r < hi; r++ {
		wr := w[r*n : r*n+n]
		for b := range B {
			out[b*rows+r] = laneDot(wr, x[b*n:b*n+n])
		}
	}
}
