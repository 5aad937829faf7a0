package model

import "testing"

// withoutFMA runs f with the vector kernels switched off.
func withoutFMA(t *testing.T, f func()) {
	t.Helper()
	old := hasFMA
	hasFMA = false
	defer func() { hasFMA = old }()
	f()
}
