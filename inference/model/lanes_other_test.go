//go:build !amd64

package model

import "testing"

func withoutFMA(t *testing.T, f func()) { f() }

func withoutAVX512(t *testing.T, f func()) { f() }
