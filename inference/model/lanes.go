package model

import "math"

// The matrix kernels define every W·x element the same way, whichever code
// computes it: the columns below n8 = n &^ 7 are summed in eight float32
// lanes (lane l takes columns j ≡ l mod 8, in column order, each step one
// fused multiply-add, rounded once), the lanes are folded as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), and the columns from n8 on are
// then fused-multiply-added one at a time. That is exactly what eight-wide
// VFMADD231PS computes, and fma32 below computes the same single rounding
// in portable Go, so the AVX2/FMA kernels and the portable code give
// bit-identical results: a sequence's logits do not depend on the machine,
// on GOMAXPROCS, on how many sequences share a batched step, or on which
// kernel its row landed in. (Separate multiply and add instructions were
// measured too: a quarter slower in batched steps, where the vector ports,
// not memory, bound the loop.)

const lanes = 8

// fold reduces eight lane sums in the fixed order above.
func fold(a *[lanes]float32) float32 {
	return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

// tail adds the columns from n8 on to s, one at a time.
func tail(s float32, w, x []float32, n8 int) float32 {
	x = x[:len(w)]
	for j := n8; j < len(w); j++ {
		s = fma32(w[j], x[j], s)
	}
	return s
}

// fma32 is a·b + c rounded once to float32 (round to nearest, ties to
// even), as a float32 FMA instruction computes it. The product is exact in
// float64; rounding the float64 sum to float32 again is wrong only where
// that sum lies exactly halfway between two float32s and was itself
// rounded, and then the sign of the sum's rounding error (TwoSum) picks the
// side. Conversions are explicit so no compiler fuses or skips a rounding.
func fma32(a, b, c float32) float32 {
	p := float64(float64(a) * float64(b))
	q := float64(c)
	s := float64(p + q)
	f := float32(s)
	if float64(f) == s || math.IsInf(float64(f), 0) || math.IsNaN(s) {
		return f
	}
	g := math.Nextafter32(f, float32(math.Copysign(math.Inf(1), s-float64(f))))
	if float64(f)+float64(g) != 2*s {
		return f // s is not halfway: no double rounding
	}
	// Exact p + q = s + e (Knuth's TwoSum).
	bb := float64(s - p)
	e := float64(p-float64(s-bb)) + float64(q-bb)
	if e == 0 {
		return f // a true tie: ties to even, as float32(s) did
	}
	if (e > 0) == (float64(g) > s) {
		return g
	}
	return f
}

// laneDot is one W·x element: w and x have the same length.
func laneDot(w, x []float32) float32 {
	n8 := len(w) &^ (lanes - 1)
	return tail(lanePart(w, x, n8), w, x, n8)
}

// lanePart is the folded lane sum of columns [0, n8), n8 a multiple of 8.
func lanePart(w, x []float32, n8 int) float32 {
	if hasFMA && n8 > 0 {
		return dot1FMA(&w[:n8][0], &x[:n8][0], n8)
	}
	return lanePartGo(w, x, n8)
}

func lanePartGo(w, x []float32, n8 int) float32 {
	var acc [lanes]float32
	w, x = w[:n8], x[:n8]
	for j := 0; j+lanes <= n8; j += lanes {
		acc[0] = fma32(w[j], x[j], acc[0])
		acc[1] = fma32(w[j+1], x[j+1], acc[1])
		acc[2] = fma32(w[j+2], x[j+2], acc[2])
		acc[3] = fma32(w[j+3], x[j+3], acc[3])
		acc[4] = fma32(w[j+4], x[j+4], acc[4])
		acc[5] = fma32(w[j+5], x[j+5], acc[5])
		acc[6] = fma32(w[j+6], x[j+6], acc[6])
		acc[7] = fma32(w[j+7], x[j+7], acc[7])
	}
	return fold(&acc)
}

// gemv4x1 sets out[r] to the lane part (columns [0, n8)) of row r of w
// (rows start stride floats apart) times x, for r < 4·blocks.
func gemv4x1(w, x []float32, stride, n8, blocks int, out []float32) {
	rows := 4 * blocks
	if rows == 0 {
		return
	}
	w, x, out = w[:(rows-1)*stride+n8], x[:n8], out[:rows]
	if hasFMA && n8 > 0 {
		gemv4x1FMA(&w[0], &x[0], stride, n8, blocks, &out[0])
		return
	}
	for r := range rows {
		out[r] = lanePartGo(w[r*stride:r*stride+n8], x, n8)
	}
}

// dotRows sets out[t] to laneDot(row t of w, x) for t < len(out), where the
// rows have len(x) columns and start stride floats apart (attention scores
// over a KV cache whose positions interleave several heads).
func dotRows(out, w []float32, stride int, x []float32) {
	n := len(x)
	n8 := n &^ (lanes - 1)
	blocks := len(out) / 4
	if n8 == 0 {
		blocks = 0
	}
	gemv4x1(w, x, stride, n8, blocks, out)
	for t := range out {
		row := w[t*stride : t*stride+n]
		if t < 4*blocks {
			out[t] = tail(out[t], row, x, n8)
		} else {
			out[t] = laneDot(row, x)
		}
	}
}

// gemv2x4 sets out[k*ostride + r] to the lane part (columns [0, n8)) of
// row r of w times input k of x (rows of n floats), for r < 2·pairs and
// k < 4.
func gemv2x4(w, x []float32, n, n8, pairs int, out []float32, ostride int) {
	rows := 2 * pairs
	w, x, out = w[:rows*n], x[:4*n], out[:3*ostride+rows]
	if hasFMA && n8 > 0 && pairs > 0 {
		gemv2x4FMA(&w[0], &x[0], n, n8, pairs, &out[0], ostride)
		return
	}
	for k := range 4 {
		for r := range rows {
			out[k*ostride+r] = lanePartGo(w[r*n:r*n+n], x[k*n:k*n+n], n8)
		}
	}
}

// interleave lays inputs 0..2·pairs-1 of x (rows of n floats) out in xi
// the way gemvZ's AVX-512 kernels read them, two inputs to a 16-float
// register: pair q takes xi[2q·n8 : 2(q+1)·n8], in which column block c
// (columns 8c..8c+7) is those columns of input 2q followed by the same
// columns of input 2q+1. Only the lane columns [0, n8) are copied.
func interleave(xi, x []float32, n, n8, pairs int) {
	xi = xi[:2*pairs*n8]
	for q := range pairs {
		a := x[2*q*n : 2*q*n+n8]
		b := x[(2*q+1)*n : (2*q+1)*n+n8]
		d := xi[2*q*n8 : 2*(q+1)*n8]
		for c := 0; c < n8; c += lanes {
			copy(d[2*c:2*c+lanes], a[c:c+lanes])
			copy(d[2*c+lanes:2*c+2*lanes], b[c:c+lanes])
		}
	}
}

// gemvZ sets out[k*ostride + r] to the lane part (columns [0, n8)) of row
// r of w (rows n floats apart) times input k, for r < 4·blocks and k <
// 2·pairs, the inputs given as interleave laid them out in xi; pairs is 2
// or 4. Only the AVX-512 kernels take this form: callers check hasAVX512.
func gemvZ(w, xi []float32, n, n8, blocks, pairs int, out []float32, ostride int) {
	rows := 4 * blocks
	if rows == 0 || n8 == 0 {
		return
	}
	w, xi, out = w[:(rows-1)*n+n8], xi[:2*pairs*n8], out[:(2*pairs-1)*ostride+rows]
	switch pairs {
	case 4:
		gemv4x8Z(&w[0], &xi[0], n, n8, blocks, &out[0], ostride)
	case 2:
		gemv4x4Z(&w[0], &xi[0], n, n8, blocks, &out[0], ostride)
	default:
		panic("model: gemvZ takes 2 or 4 input pairs")
	}
}

// weighSum adds a[t]·(row t of v) to o for t < len(a), in t order, where
// the rows have len(o) columns and start stride floats apart (attention's
// weighted sum of values). Each product is rounded to float32 before its
// sum (the explicit conversion keeps compilers from fusing them), so the
// vector form, which does the same per column, matches it bit for bit.
func weighSum(o, v []float32, stride int, a []float32) {
	n := len(o)
	if len(a) == 0 || n == 0 {
		return
	}
	v = v[:(len(a)-1)*stride+n]
	n8 := 0
	if hasFMA {
		n8 = n &^ (lanes - 1)
	}
	if n8 > 0 {
		weighSumAVX(&o[0], n8, &v[0], stride, &a[0], len(a))
	}
	if n8 == n {
		return
	}
	for t, at := range a {
		vt := v[t*stride : t*stride+n]
		for i := n8; i < n; i++ {
			o[i] += float32(at * vt[i])
		}
	}
}
