//go:build !amd64

package model

// hasFMA is false: other architectures run the portable kernels.
const hasFMA = false

// hasAVX512 is false for the same reason.
const hasAVX512 = false

func gemv4x1FMA(w, x *float32, n, n8, blocks int, out *float32) {
	panic("model: no vector kernels on this architecture")
}

func gemv2x4FMA(w, x *float32, n, n8, pairs int, out *float32, ostride int) {
	panic("model: no vector kernels on this architecture")
}

func dot1FMA(w, x *float32, n8 int) float32 {
	panic("model: no vector kernels on this architecture")
}

func gemv4x8Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int) {
	panic("model: no vector kernels on this architecture")
}

func gemv4x4Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int) {
	panic("model: no vector kernels on this architecture")
}

func weighSumAVX(o *float32, n8 int, v *float32, stride int, a *float32, T int) {
	panic("model: no vector kernels on this architecture")
}
