package model

import (
	"fmt"
	"testing"
)

func BenchmarkMatmul(b *testing.B) {
	for _, sh := range [][2]int{{288, 288}, {768, 288}, {288, 768}, {16000, 288}} {
		rows, cols := sh[0], sh[1]
		w := make([]float32, rows*cols)
		x := make([]float32, cols)
		out := make([]float32, rows)
		for i := range w {
			w[i] = float32(i%7) * 0.01
		}
		for i := range x {
			x[i] = float32(i%5) * 0.1
		}
		b.Run(fmt.Sprintf("%dx%d", rows, cols), func(b *testing.B) {
			b.SetBytes(int64(rows * cols * 4))
			for b.Loop() {
				matmulRows(out, w, x, 0, rows)
			}
			b.ReportMetric(float64(rows*cols)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GMAC/s")
		})
	}
}

// BenchmarkMatmulBatch reports multiply-adds per second for B inputs
// sharing one pass over the weights, the continuous-batching case.
func BenchmarkMatmulBatch(b *testing.B) {
	for _, sh := range [][2]int{{768, 288}, {16000, 288}} {
		for _, B := range []int{1, 4, 8, 16} {
			rows, cols := sh[0], sh[1]
			w := make([]float32, rows*cols)
			x := make([]float32, B*cols)
			out := make([]float32, B*rows)
			for i := range w {
				w[i] = float32(i%7) * 0.01
			}
			for i := range x {
				x[i] = float32(i%5) * 0.1
			}
			b.Run(fmt.Sprintf("%dx%d/B=%d", rows, cols, B), func(b *testing.B) {
				for b.Loop() {
					matmulBatchRows(out, w, x, B, 0, rows)
				}
				b.ReportMetric(float64(B*rows*cols)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GMAC/s")
			})
		}
	}
}

// BenchmarkMatmulBatchCold is BenchmarkMatmulBatch with the weights coming
// from memory, as in a decode step: a classifier-sized matrix (32000 ×
// 288, 37 MB), one of eight taking turns, so no cache level holds the next
// one. One stream's step is bound by this read; a batch's step must hide
// its arithmetic under it.
func BenchmarkMatmulBatchCold(b *testing.B) {
	const rows, cols, mats = 32000, 288, 8
	w := make([][]float32, mats)
	for m := range w {
		w[m] = make([]float32, rows*cols)
		for i := range w[m] {
			w[m][i] = float32((i+m)%7) * 0.01
		}
	}
	for _, B := range []int{1, 8} {
		x := make([]float32, B*cols)
		out := make([]float32, B*rows)
		for i := range x {
			x[i] = float32(i%5) * 0.1
		}
		b.Run(fmt.Sprintf("%dx%d/B=%d", rows, cols, B), func(b *testing.B) {
			m := 0
			for b.Loop() {
				matmulBatchRows(out, w[m], x, B, 0, rows)
				m = (m + 1) % mats
			}
			b.ReportMetric(float64(B*rows*cols)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GMAC/s")
			b.ReportMetric(float64(rows*cols*4)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}
