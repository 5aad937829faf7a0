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
	for _, sh := range [][2]int{{768, 288}, {288, 768}, {16000, 288}} {
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

// BenchmarkMatmulBatchCold is BenchmarkMatmulBatch with classifier-sized
// weights (32000 × 288, 37 MB) that no private cache holds, as in a decode
// step: "llc" reads one matrix over and over (a shared last-level cache of
// a few hundred MB may keep it), "dram" eight in turn (295 MB). One
// stream's step is bound by this read; a batch's step must hide its
// arithmetic under it.
func BenchmarkMatmulBatchCold(b *testing.B) {
	const rows, cols, mats = 32000, 288, 8
	w := make([][]float32, mats)
	for m := range w {
		w[m] = make([]float32, rows*cols)
		for i := range w[m] {
			w[m][i] = float32((i+m)%7) * 0.01
		}
	}
	for _, src := range []struct {
		name string
		mats int
	}{{"llc", 1}, {"dram", mats}} {
		for _, B := range []int{1, 8} {
			x := make([]float32, B*cols)
			out := make([]float32, B*rows)
			for i := range x {
				x[i] = float32(i%5) * 0.1
			}
			b.Run(fmt.Sprintf("%s/%dx%d/B=%d", src.name, rows, cols, B), func(b *testing.B) {
				m := 0
				for b.Loop() {
					matmulBatchRows(out, w[m], x, B, 0, rows)
					m = (m + 1) % src.mats
				}
				b.ReportMetric(float64(B*rows*cols)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GMAC/s")
				b.ReportMetric(float64(rows*cols*4)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
			})
		}
	}
}

// BenchmarkStepMatmuls is every mat-vec of one stories15M decode step (six
// layers of 288×288 ×4, 768×288 ×2 and 288×768, then the 32000×288
// classifier: 60 MB) for B inputs, from one copy of the weights ("llc")
// or four in turn ("dram").
func BenchmarkStepMatmuls(b *testing.B) {
	type mat struct{ rows, cols int }
	var shapes []mat
	for range 6 {
		shapes = append(shapes, mat{288, 288}, mat{288, 288}, mat{288, 288}, mat{288, 288}, mat{768, 288}, mat{768, 288}, mat{288, 768})
	}
	shapes = append(shapes, mat{32000, 288})
	const copies = 4
	ws := make([][][]float32, copies)
	for c := range ws {
		for i, s := range shapes {
			w := make([]float32, s.rows*s.cols)
			for j := range w {
				w[j] = float32((j+i+c)%7) * 0.01
			}
			ws[c] = append(ws[c], w)
		}
	}
	for _, src := range []struct {
		name   string
		copies int
	}{{"llc", 1}, {"dram", copies}} {
		for _, B := range []int{1, 8} {
			x := make([]float32, B*768)
			out := make([]float32, B*32000)
			for i := range x {
				x[i] = float32(i%5) * 0.1
			}
			b.Run(fmt.Sprintf("%s/B=%d", src.name, B), func(b *testing.B) {
				c := 0
				for b.Loop() {
					for i, s := range shapes {
						matmulBatch(out[:B*s.rows], ws[c][i], x[:B*s.cols], B)
					}
					c = (c + 1) % src.copies
				}
			})
		}
	}
}
