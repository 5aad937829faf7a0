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
