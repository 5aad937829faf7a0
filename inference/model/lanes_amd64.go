package model

import "golang.org/x/sys/cpu"

// hasFMA selects the vector kernels: AVX2-era CPUs (2013 on) have FMA, and
// x/sys/cpu reports AVX and FMA only where the OS saves the YMM registers.
var hasFMA = cpu.X86.HasAVX && cpu.X86.HasFMA

// hasAVX512 selects the two-inputs-per-register batch kernels (gemv4x8Z,
// gemv4x4Z), which use AVX512F instructions only; x/sys/cpu reports it
// only where the OS saves the ZMM registers.
var hasAVX512 = hasFMA && cpu.X86.HasAVX512F

// gemv4x1FMA is gemv4x1's vector form: for each block b < blocks, rows
// 4b..4b+3 of w (row stride n floats) times x over columns [0, n8) go to
// out[4b..4b+3]. blocks > 0 and n8 is a positive multiple of 8.
//
//go:noescape
func gemv4x1FMA(w, x *float32, n, n8, blocks int, out *float32)

// gemv2x4FMA is gemv2x4's vector form: rows 2p, 2p+1 of w times inputs
// 0..3 of x (both with stride n floats) over columns [0, n8) go to
// out[k*ostride + 2p + i]. pairs > 0 and n8 is a positive multiple of 8.
//
//go:noescape
func gemv2x4FMA(w, x *float32, n, n8, pairs int, out *float32, ostride int)

// dot1FMA is lanePart's vector form for one row: n8 is a positive
// multiple of 8.
//
//go:noescape
func dot1FMA(w, x *float32, n8 int) float32

// gemv4x8Z is gemvZ's kernel for four input pairs (inputs 0..7): for each
// block b < blocks, rows 4b..4b+3 of w (row stride n floats) times the
// inputs interleaved in xi over columns [0, n8) go to out[k*ostride + 4b
// + i]. blocks > 0 and n8 is a positive multiple of 8.
//
//go:noescape
func gemv4x8Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int)

// gemv4x4Z is gemv4x8Z for two input pairs (inputs 0..3).
//
//go:noescape
func gemv4x4Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int)

// weighSumAVX is weighSum's vector form for columns [0, n8), n8 a
// positive multiple of 8.
//
//go:noescape
func weighSumAVX(o *float32, n8 int, v *float32, stride int, a *float32, T int)
