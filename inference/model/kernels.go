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
// columns. The reduction order is fixed per row and independent of the
// goroutine split, so results do not depend on GOMAXPROCS.
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

// matmulRows handles rows [lo, hi), four rows at a time so each load of x
// feeds four multiply-adds.
func matmulRows(out, w, x []float32, lo, hi int) {
	n := len(x)
	r := lo
	for ; r+4 <= hi; r += 4 {
		w0 := w[r*n : r*n+n]
		w1 := w[(r+1)*n : (r+1)*n+n]
		w2 := w[(r+2)*n : (r+2)*n+n]
		w3 := w[(r+3)*n : (r+3)*n+n]
		var s0, s1, s2, s3 float32
		for j, xv := range x {
			s0 += w0[j] * xv
			s1 += w1[j] * xv
			s2 += w2[j] * xv
			s3 += w3[j] * xv
		}
		out[r], out[r+1], out[r+2], out[r+3] = s0, s1, s2, s3
	}
	for ; r < hi; r++ {
		out[r] = dot(w[r*n:r*n+n], x)
	}
}

func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for i, v := range a {
		s += v * b[i]
	}
	return s
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
// same sequential dot product matmul forms, whatever B is or where the row
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

// matmulBatchRows handles weight rows [lo, hi) for every batch row: two
// weight rows by four inputs at a time, so each load feeds several
// multiply-adds, then the leftovers one dot product each.
func matmulBatchRows(out, w, x []float32, B, lo, hi int) {
	rows, n := len(out)/B, len(x)/B
	r := lo
	for ; r+2 <= hi; r += 2 {
		w0 := w[r*n : r*n+n]
		w1 := w[(r+1)*n : (r+1)*n+n]
		b := 0
		for ; b+4 <= B; b += 4 {
			x0 := x[b*n : b*n+n]
			x1 := x[(b+1)*n : (b+1)*n+n]
			x2 := x[(b+2)*n : (b+2)*n+n]
			x3 := x[(b+3)*n : (b+3)*n+n]
			var a0, a1, a2, a3, c0, c1, c2, c3 float32
			for j := range w0 {
				wa, wb := w0[j], w1[j]
				a0 += wa * x0[j]
				a1 += wa * x1[j]
				a2 += wa * x2[j]
				a3 += wa * x3[j]
				c0 += wb * x0[j]
				c1 += wb * x1[j]
				c2 += wb * x2[j]
				c3 += wb * x3[j]
			}
			out[b*rows+r], out[(b+1)*rows+r], out[(b+2)*rows+r], out[(b+3)*rows+r] = a0, a1, a2, a3
			out[b*rows+r+1], out[(b+1)*rows+r+1], out[(b+2)*rows+r+1], out[(b+3)*rows+r+1] = c0, c1, c2, c3
		}
		for ; b < B; b++ {
			xb := x[b*n : b*n+n]
			out[b*rows+r], out[b*rows+r+1] = dot(w0, xb), dot(w1, xb)
		}
	}
	for ; r < hi; r++ {
		wr := w[r*n : r*n+n]
		for b := range B {
			out[b*rows+r] = dot(wr, x[b*n:b*n+n])
		}
	}
}
