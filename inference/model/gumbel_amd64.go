package model

import "golang.org/x/sys/cpu"

// hasSkipZ selects gumbelSkipZ, which needs AVX512DQ (64-bit multiplies
// and conversions) and AVX512CD (leading-zero counts) besides AVX512F.
var hasSkipZ = hasAVX512 && cpu.X86.HasAVX512DQ && cpu.X86.HasAVX512CD

// gumbelSkipZ returns the first token t ≥ start of row[:n] that gumbelMax's
// noise bound cannot rule out against best, or the first t from which
// fewer than eight tokens remain; n - start ≥ 8.
//
//go:noescape
func gumbelSkipZ(row *float32, n, start int, inv float64, key uint64, lo int, best float64) int

// maxZ is the largest non-NaN float of x[:n], -Inf if none; n is a
// positive multiple of 64.
//
//go:noescape
func maxZ(x *float32, n int) float32

// firstEqZ is the first i < n with x[i] == v, or n; n is a positive
// multiple of 16.
//
//go:noescape
func firstEqZ(x *float32, n int, v float32) int
