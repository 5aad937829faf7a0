package model

import "testing"

// withoutFMA runs f with the vector kernels switched off, the AVX-512 ones
// included: the portable Go computes everything.
func withoutFMA(t *testing.T, f func()) {
	t.Helper()
	oldFMA, old512, oldSkip := hasFMA, hasAVX512, hasSkipZ
	hasFMA, hasAVX512, hasSkipZ = false, false, false
	defer func() { hasFMA, hasAVX512, hasSkipZ = oldFMA, old512, oldSkip }()
	f()
}

// withoutAVX512 runs f on the AVX2 kernels, as on a CPU without AVX-512.
func withoutAVX512(t *testing.T, f func()) {
	t.Helper()
	old512, oldSkip := hasAVX512, hasSkipZ
	hasAVX512, hasSkipZ = false, false
	defer func() { hasAVX512, hasSkipZ = old512, oldSkip }()
	f()
}
