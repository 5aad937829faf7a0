package main

// gemmT computes c[m×n] = a[m×k]·b[n×k]ᵀ, or adds it to c when acc is set.
// Both operands are read along contiguous rows, four output columns at a
// time, which is what keeps a scalar Go loop near its best on one core.
// Every training matrix product is written in this one form (the backward
// pass transposes its operands first).
func gemmT(c, a, b []float64, m, n, k int, acc bool) {
	c, a, b = c[:m*n], a[:m*k], b[:n*k]
	for i := 0; i < m; i++ {
		ai := a[i*k : i*k+k]
		ci := c[i*n : i*n+n]
		j := 0
		for ; j+4 <= n; j += 4 {
			b0 := b[j*k : j*k+k]
			b1 := b[(j+1)*k : (j+1)*k+k]
			b2 := b[(j+2)*k : (j+2)*k+k]
			b3 := b[(j+3)*k : (j+3)*k+k]
			var s0, s1, s2, s3 float64
			for p, x := range ai {
				s0 += x * b0[p]
				s1 += x * b1[p]
				s2 += x * b2[p]
				s3 += x * b3[p]
			}
			if acc {
				ci[j] += s0
				ci[j+1] += s1
				ci[j+2] += s2
				ci[j+3] += s3
			} else {
				ci[j], ci[j+1], ci[j+2], ci[j+3] = s0, s1, s2, s3
			}
		}
		for ; j < n; j++ {
			s := dot(ai, b[j*k:j*k+k])
			if acc {
				ci[j] += s
			} else {
				ci[j] = s
			}
		}
	}
}

// transpose writes the cols×rows transpose of the rows×cols matrix src, in
// 32×32 tiles so both sides stay in cache.
func transpose(dst, src []float64, rows, cols int) {
	dst, src = dst[:rows*cols], src[:rows*cols]
	const tile = 32
	for r0 := 0; r0 < rows; r0 += tile {
		r1 := min(r0+tile, rows)
		for c0 := 0; c0 < cols; c0 += tile {
			c1 := min(c0+tile, cols)
			for r := r0; r < r1; r++ {
				row := src[r*cols+c0 : r*cols+c1]
				for c, v := range row {
					dst[(c0+c)*rows+r] = v
				}
			}
		}
	}
}

func dot(a, b []float64) float64 {
	b = b[:len(a)]
	var s float64
	for i, v := range a {
		s += v * b[i]
	}
	return s
}
