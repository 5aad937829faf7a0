//go:build !amd64

package model

// hasSkipZ is false: other architectures scan every token in Go.
const hasSkipZ = false

func gumbelSkipZ(row *float32, n, start int, inv float64, key uint64, lo int, best float64) int {
	panic("model: no vector kernels on this architecture")
}

func maxZ(x *float32, n int) float32 {
	panic("model: no vector kernels on this architecture")
}

func firstEqZ(x *float32, n int, v float32) int {
	panic("model: no vector kernels on this architecture")
}
