#include "textflag.h"

// The kernels keep one YMM accumulator (eight float32 lanes) per weight
// row and input pair, each step one VFMADD231PS (rounded once, as fma32 in
// lanes.go); FOLD then reduces the lanes in lanes.go's order:
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), leaving the sum in X's low lane.
#define FOLD(Y, X) \
	VEXTRACTF128 $1, Y, X8; \
	VADDPS X8, X, X; \
	VMOVHLPS X, X, X9; \
	VADDPS X9, X, X; \
	VMOVSHDUP X, X9; \
	VADDSS X9, X, X

// func gemv4x1FMA(w, x *float32, n, n8, blocks int, out *float32)
//
// For each block b < blocks, rows 4b..4b+3 of w (row stride n floats)
// times x over columns [0, n8) go to out[4b..4b+3]; n8 is a positive
// multiple of 8.
TEXT ·gemv4x1FMA(SB), NOSPLIT, $0-48
	MOVQ w+0(FP), SI
	MOVQ x+8(FP), DI
	MOVQ n+16(FP), BX
	MOVQ n8+24(FP), CX
	MOVQ out+40(FP), DX
	SHLQ $2, BX              // row stride in bytes
	SHLQ $2, CX              // columns in bytes
	LEAQ (SI)(BX*1), R8      // row 1
	LEAQ (R8)(BX*1), R9      // row 2
	LEAQ (R9)(BX*1), R10     // row 3
	LEAQ (BX*4), R11         // one block of rows
block4x1:
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ AX, AX
loop4x1:
	// Fetch the next block's rows while this one computes.
	LEAQ (SI)(AX*1), BX
	PREFETCHT0 (BX)(R11*1)
	LEAQ (R8)(AX*1), BX
	PREFETCHT0 (BX)(R11*1)
	LEAQ (R9)(AX*1), BX
	PREFETCHT0 (BX)(R11*1)
	LEAQ (R10)(AX*1), BX
	PREFETCHT0 (BX)(R11*1)
	VMOVUPS (DI)(AX*1), Y4
	VFMADD231PS (SI)(AX*1), Y4, Y0
	VFMADD231PS (R8)(AX*1), Y4, Y1
	VFMADD231PS (R9)(AX*1), Y4, Y2
	VFMADD231PS (R10)(AX*1), Y4, Y3
	ADDQ $32, AX
	CMPQ AX, CX
	JLT loop4x1
	FOLD(Y0, X0)
	FOLD(Y1, X1)
	FOLD(Y2, X2)
	FOLD(Y3, X3)
	VMOVSS X0, 0(DX)
	VMOVSS X1, 4(DX)
	VMOVSS X2, 8(DX)
	VMOVSS X3, 12(DX)
	ADDQ $16, DX
	ADDQ R11, SI
	ADDQ R11, R8
	ADDQ R11, R9
	ADDQ R11, R10
	DECQ blocks+32(FP)
	JNZ block4x1
	VZEROUPPER
	RET

// CHUNK2x4 multiplies eight columns at byte offset AX+off of weight rows
// SI, R8 and inputs DI, R9, R10, R11 into accumulators Y0..Y7.
#define CHUNK2x4(off) \
	VMOVUPS off(SI)(AX*1), Y8; \
	VMOVUPS off(R8)(AX*1), Y9; \
	VMOVUPS off(DI)(AX*1), Y10; \
	VFMADD231PS Y8, Y10, Y0; \
	VFMADD231PS Y9, Y10, Y4; \
	VMOVUPS off(R9)(AX*1), Y11; \
	VFMADD231PS Y8, Y11, Y1; \
	VFMADD231PS Y9, Y11, Y5; \
	VMOVUPS off(R10)(AX*1), Y10; \
	VFMADD231PS Y8, Y10, Y2; \
	VFMADD231PS Y9, Y10, Y6; \
	VMOVUPS off(R11)(AX*1), Y11; \
	VFMADD231PS Y8, Y11, Y3; \
	VFMADD231PS Y9, Y11, Y7

// func gemv2x4FMA(w, x *float32, n, n8, pairs int, out *float32, ostride int)
//
// For each pair p < pairs, rows 2p and 2p+1 of w times inputs 0..3 of x
// (both with stride n floats) over columns [0, n8) go to
// out[k*ostride + 2p + i] for row 2p+i and input k; n8 is a positive
// multiple of 8.
TEXT ·gemv2x4FMA(SB), NOSPLIT, $0-56
	MOVQ w+0(FP), SI
	MOVQ x+8(FP), DI
	MOVQ n+16(FP), BX
	MOVQ n8+24(FP), CX
	MOVQ out+40(FP), DX
	MOVQ ostride+48(FP), R12
	SHLQ $2, BX              // row stride in bytes
	SHLQ $2, CX              // columns in bytes
	SHLQ $2, R12             // output stride in bytes
	MOVQ CX, R13
	ANDQ $~63, R13
	MOVQ R13, n8+24(FP)      // bytes in whole 64-byte cache lines
	LEAQ (SI)(BX*1), R8      // weight row 1
	LEAQ (DI)(BX*1), R9      // input 1
	LEAQ (R9)(BX*1), R10     // input 2
	LEAQ (R10)(BX*1), R11    // input 3
	SHLQ $1, BX              // one pair of rows
pair2x4:
	VXORPS Y0, Y0, Y0        // row 0 by inputs 0..3: Y0..Y3
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4        // row 1 by inputs 0..3: Y4..Y7
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ AX, AX
	CMPQ AX, n8+24(FP)
	JGE last2x4
loop2x4:
	// A cache line (16 columns, in column order) per pass. Fetch the
	// rows two pairs on while this pair computes: the weights stream
	// from memory once per step, and the loads would stall on them.
	LEAQ (SI)(AX*1), R13
	PREFETCHT0 (R13)(BX*2)
	LEAQ (R8)(AX*1), R13
	PREFETCHT0 (R13)(BX*2)
	CHUNK2x4(0)
	CHUNK2x4(32)
	ADDQ $64, AX
	CMPQ AX, n8+24(FP)
	JLT loop2x4
last2x4:
	CMPQ AX, CX
	JGE fold2x4
	CHUNK2x4(0)
fold2x4:
	FOLD(Y0, X0)
	FOLD(Y1, X1)
	FOLD(Y2, X2)
	FOLD(Y3, X3)
	FOLD(Y4, X4)
	FOLD(Y5, X5)
	FOLD(Y6, X6)
	FOLD(Y7, X7)
	VMOVSS X0, (DX)
	VMOVSS X1, (DX)(R12*1)
	VMOVSS X2, (DX)(R12*2)
	VMOVSS X4, 4(DX)
	VMOVSS X5, 4(DX)(R12*1)
	VMOVSS X6, 4(DX)(R12*2)
	LEAQ (DX)(R12*2), AX
	VMOVSS X3, (AX)(R12*1)
	VMOVSS X7, 4(AX)(R12*1)
	ADDQ $8, DX
	ADDQ BX, SI
	ADDQ BX, R8
	DECQ pairs+32(FP)
	JNZ pair2x4
	VZEROUPPER
	RET

// func dot1FMA(w, x *float32, n8 int) float32
TEXT ·dot1FMA(SB), NOSPLIT, $0-28
	MOVQ w+0(FP), SI
	MOVQ x+8(FP), DI
	MOVQ n8+16(FP), CX
	SHLQ $2, CX
	VXORPS Y0, Y0, Y0
	XORQ AX, AX
loop1:
	VMOVUPS (DI)(AX*1), Y4
	VFMADD231PS (SI)(AX*1), Y4, Y0
	ADDQ $32, AX
	CMPQ AX, CX
	JLT loop1
	FOLD(Y0, X0)
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// The AVX-512 kernels below keep the same eight lanes per dot product but
// pack two inputs into each ZMM register: the input vector xi is laid out
// by pairs of inputs, each 64 bytes holding eight columns of input 2q in
// the low half and the same eight columns of input 2q+1 in the high half,
// and VBROADCASTF64X4 puts a row's eight weights into both halves. So one
// VFMADD231PS is the AVX2 step for two inputs at once, each half rounding
// exactly as the YMM lane would, and the lane sums are the ones lanes.go
// defines. Only AVX512F instructions are used (no VL: the results leave
// through VEXTRACTF32X4, not through X16-X31).
//
// FOLDZ reduces the accumulators of four rows (r0..r3) by two input pairs
// (a: inputs k, k+1; b: inputs k+2, k+3) into F, whose 128-bit block i is
// rows r0..r3 of input k+i, so each input's four sums store as one XMM.
// Every addition is lanes.go's, first operand the lower lanes:
//   1. VSHUFF32X4 gathers the low and high 128-bit halves of each input's
//      eight lanes: (l0+l4, l1+l5, l2+l6, l3+l7), the four inputs of one
//      row in one register;
//   2. VSHUFPS 0x44/0xEE pairs rows r0,r1 (and r2,r3):
//      e = (l0+l4)+(l2+l6) and o = (l1+l5)+(l3+l7) per row and input;
//   3. VSHUFPS 0x88/0xDD takes e and o of all four rows: e + o.
// Z24-Z31 are scratch.
#define FOLDZ(a0, b0, a1, b1, a2, b2, a3, b3, F) \
	VSHUFF32X4 $0x88, b0, a0, Z24; \
	VSHUFF32X4 $0xDD, b0, a0, Z25; \
	VADDPS Z25, Z24, Z24; \
	VSHUFF32X4 $0x88, b1, a1, Z26; \
	VSHUFF32X4 $0xDD, b1, a1, Z27; \
	VADDPS Z27, Z26, Z26; \
	VSHUFF32X4 $0x88, b2, a2, Z28; \
	VSHUFF32X4 $0xDD, b2, a2, Z29; \
	VADDPS Z29, Z28, Z28; \
	VSHUFF32X4 $0x88, b3, a3, Z30; \
	VSHUFF32X4 $0xDD, b3, a3, Z31; \
	VADDPS Z31, Z30, Z30; \
	VSHUFPS $0x44, Z26, Z24, Z25; \
	VSHUFPS $0xEE, Z26, Z24, Z27; \
	VADDPS Z27, Z25, Z24; \
	VSHUFPS $0x44, Z30, Z28, Z29; \
	VSHUFPS $0xEE, Z30, Z28, Z31; \
	VADDPS Z31, Z29, Z28; \
	VSHUFPS $0x88, Z28, Z24, Z25; \
	VSHUFPS $0xDD, Z28, Z24, Z27; \
	VADDPS Z27, Z25, F

// STORE4Z writes F's four blocks to (P), (P)(AX*1), (P)(AX*2) and
// (P)(AX*3), AX the output stride in bytes; it moves CX.
#define STORE4Z(F, P) \
	VEXTRACTF32X4 $0, F, (P); \
	VEXTRACTF32X4 $1, F, (P)(AX*1); \
	VEXTRACTF32X4 $2, F, (P)(AX*2); \
	LEAQ (P)(AX*2), CX; \
	VEXTRACTF32X4 $3, F, (CX)(AX*1)

// PREFETCH4Z fetches the cache line at column offset AX of the four rows
// one block (four rows, BX the row stride) past SI, R8, R9, R10.
#define PREFETCH4Z \
	LEAQ (SI)(AX*1), R14; \
	PREFETCHT0 (R14)(BX*4); \
	LEAQ (R8)(AX*1), R14; \
	PREFETCHT0 (R14)(BX*4); \
	LEAQ (R9)(AX*1), R14; \
	PREFETCHT0 (R14)(BX*4); \
	LEAQ (R10)(AX*1), R14; \
	PREFETCHT0 (R14)(BX*4)

// CHUNK4x8Z multiplies eight columns (weight byte offset AX+woff, input
// byte offset 2·AX+xoff) of rows SI, R8, R9, R10 by input pairs DI, R11,
// R12, R13 into Z0..Z15 (row r, pair q in Z(4r+q)).
#define CHUNK4x8Z(woff, xoff) \
	VMOVUPS xoff(DI)(AX*2), Z16; \
	VMOVUPS xoff(R11)(AX*2), Z17; \
	VMOVUPS xoff(R12)(AX*2), Z18; \
	VMOVUPS xoff(R13)(AX*2), Z19; \
	VBROADCASTF64X4 woff(SI)(AX*1), Z20; \
	VFMADD231PS Z16, Z20, Z0; \
	VFMADD231PS Z17, Z20, Z1; \
	VFMADD231PS Z18, Z20, Z2; \
	VFMADD231PS Z19, Z20, Z3; \
	VBROADCASTF64X4 woff(R8)(AX*1), Z21; \
	VFMADD231PS Z16, Z21, Z4; \
	VFMADD231PS Z17, Z21, Z5; \
	VFMADD231PS Z18, Z21, Z6; \
	VFMADD231PS Z19, Z21, Z7; \
	VBROADCASTF64X4 woff(R9)(AX*1), Z22; \
	VFMADD231PS Z16, Z22, Z8; \
	VFMADD231PS Z17, Z22, Z9; \
	VFMADD231PS Z18, Z22, Z10; \
	VFMADD231PS Z19, Z22, Z11; \
	VBROADCASTF64X4 woff(R10)(AX*1), Z23; \
	VFMADD231PS Z16, Z23, Z12; \
	VFMADD231PS Z17, Z23, Z13; \
	VFMADD231PS Z18, Z23, Z14; \
	VFMADD231PS Z19, Z23, Z15

// func gemv4x8Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int)
//
// For each block b < blocks, rows 4b..4b+3 of w (row stride n floats)
// times inputs 0..7 of xi (four interleaved pairs, 2·n8 floats each) over
// columns [0, n8) go to out[k*ostride + 4b + i] for row 4b+i and input k;
// n8 is a positive multiple of 8.
TEXT ·gemv4x8Z(SB), NOSPLIT, $0-56
	MOVQ w+0(FP), SI
	MOVQ xi+8(FP), DI
	MOVQ n+16(FP), BX
	MOVQ n8+24(FP), CX
	MOVQ out+40(FP), DX
	SHLQ $2, BX              // row stride in bytes
	SHLQ $2, CX              // weight columns in bytes
	LEAQ (SI)(BX*1), R8      // weight rows 1..3
	LEAQ (R8)(BX*1), R9
	LEAQ (R9)(BX*1), R10
	LEAQ (DI)(CX*2), R11     // input pairs 1..3
	LEAQ (R11)(CX*2), R12
	LEAQ (R12)(CX*2), R13
	MOVQ CX, n8+24(FP)       // weight bytes
	ANDQ $~63, CX
	MOVQ CX, n+16(FP)        // weight bytes in whole 64-byte cache lines
block4x8Z:
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15
	XORQ AX, AX
	CMPQ AX, n+16(FP)
	JGE last4x8Z
loop4x8Z:
	// A weight cache line (16 columns, in column order) per pass; the
	// next block's rows are fetched meanwhile, as in gemv2x4FMA.
	PREFETCH4Z
	CHUNK4x8Z(0, 0)
	CHUNK4x8Z(32, 64)
	ADDQ $64, AX
	CMPQ AX, n+16(FP)
	JLT loop4x8Z
last4x8Z:
	CMPQ AX, n8+24(FP)
	JGE fold4x8Z
	CHUNK4x8Z(0, 0)
fold4x8Z:
	MOVQ ostride+48(FP), AX
	SHLQ $2, AX
	FOLDZ(Z0, Z1, Z4, Z5, Z8, Z9, Z12, Z13, Z16)
	STORE4Z(Z16, DX)
	FOLDZ(Z2, Z3, Z6, Z7, Z10, Z11, Z14, Z15, Z17)
	LEAQ (DX)(AX*4), R14     // inputs 4..7
	STORE4Z(Z17, R14)
	ADDQ $16, DX
	LEAQ (SI)(BX*4), SI
	LEAQ (R8)(BX*4), R8
	LEAQ (R9)(BX*4), R9
	LEAQ (R10)(BX*4), R10
	DECQ blocks+32(FP)
	JNZ block4x8Z
	VZEROUPPER
	RET

// CHUNK4x4Z is CHUNK4x8Z for two input pairs (DI, R11): row r, pair q in
// Z(2r+q).
#define CHUNK4x4Z(woff, xoff) \
	VMOVUPS xoff(DI)(AX*2), Z16; \
	VMOVUPS xoff(R11)(AX*2), Z17; \
	VBROADCASTF64X4 woff(SI)(AX*1), Z20; \
	VFMADD231PS Z16, Z20, Z0; \
	VFMADD231PS Z17, Z20, Z1; \
	VBROADCASTF64X4 woff(R8)(AX*1), Z21; \
	VFMADD231PS Z16, Z21, Z2; \
	VFMADD231PS Z17, Z21, Z3; \
	VBROADCASTF64X4 woff(R9)(AX*1), Z22; \
	VFMADD231PS Z16, Z22, Z4; \
	VFMADD231PS Z17, Z22, Z5; \
	VBROADCASTF64X4 woff(R10)(AX*1), Z23; \
	VFMADD231PS Z16, Z23, Z6; \
	VFMADD231PS Z17, Z23, Z7

// func gemv4x4Z(w, xi *float32, n, n8, blocks int, out *float32, ostride int)
//
// gemv4x8Z for inputs 0..3 (two interleaved pairs).
TEXT ·gemv4x4Z(SB), NOSPLIT, $0-56
	MOVQ w+0(FP), SI
	MOVQ xi+8(FP), DI
	MOVQ n+16(FP), BX
	MOVQ n8+24(FP), CX
	MOVQ out+40(FP), DX
	SHLQ $2, BX              // row stride in bytes
	SHLQ $2, CX              // weight columns in bytes
	LEAQ (SI)(BX*1), R8      // weight rows 1..3
	LEAQ (R8)(BX*1), R9
	LEAQ (R9)(BX*1), R10
	LEAQ (DI)(CX*2), R11     // input pair 1
	MOVQ CX, n8+24(FP)       // weight bytes
	ANDQ $~63, CX
	MOVQ CX, n+16(FP)        // weight bytes in whole 64-byte cache lines
block4x4Z:
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	XORQ AX, AX
	CMPQ AX, n+16(FP)
	JGE last4x4Z
loop4x4Z:
	PREFETCH4Z
	CHUNK4x4Z(0, 0)
	CHUNK4x4Z(32, 64)
	ADDQ $64, AX
	CMPQ AX, n+16(FP)
	JLT loop4x4Z
last4x4Z:
	CMPQ AX, n8+24(FP)
	JGE fold4x4Z
	CHUNK4x4Z(0, 0)
fold4x4Z:
	MOVQ ostride+48(FP), AX
	SHLQ $2, AX
	FOLDZ(Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z16)
	STORE4Z(Z16, DX)
	ADDQ $16, DX
	LEAQ (SI)(BX*4), SI
	LEAQ (R8)(BX*4), R8
	LEAQ (R9)(BX*4), R9
	LEAQ (R10)(BX*4), R10
	DECQ blocks+32(FP)
	JNZ block4x4Z
	VZEROUPPER
	RET

// func weighSumAVX(o *float32, n8 int, v *float32, stride int, a *float32, T int)
//
// For i < n8 (a positive multiple of 8): o[i] = o[i] + a[t]·v[t*stride+i]
// for t = 0..T-1 in order, each product and each sum rounded on its own
// (VMULPS then VADDPS, as the Go loop in weighSum), sixteen columns at a
// time in two independent chains, then eight.
TEXT ·weighSumAVX(SB), NOSPLIT, $0-48
	MOVQ o+0(FP), DI
	MOVQ n8+8(FP), CX
	MOVQ v+16(FP), SI
	MOVQ stride+24(FP), BX
	MOVQ a+32(FP), R8
	MOVQ T+40(FP), R9
	SHLQ $2, BX
	SHLQ $2, R9
	SHLQ $2, CX
	LEAQ (DI)(CX*1), R11     // end of o
ws16:
	LEAQ 64(DI), R12
	CMPQ R12, R11
	JGT ws8
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	MOVQ SI, R10
	XORQ AX, AX
	CMPQ AX, R9
	JGE ws16store
ws16t:
	VBROADCASTSS (R8)(AX*1), Y2
	VMULPS (R10), Y2, Y3
	VMULPS 32(R10), Y2, Y4
	VADDPS Y3, Y0, Y0
	VADDPS Y4, Y1, Y1
	ADDQ BX, R10
	ADDQ $4, AX
	CMPQ AX, R9
	JLT ws16t
ws16store:
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	ADDQ $64, DI
	ADDQ $64, SI
	JMP ws16
ws8:
	CMPQ DI, R11
	JGE wsdone
	VMOVUPS (DI), Y0
	MOVQ SI, R10
	XORQ AX, AX
	CMPQ AX, R9
	JGE ws8store
ws8t:
	VBROADCASTSS (R8)(AX*1), Y2
	VMULPS (R10), Y2, Y3
	VADDPS Y3, Y0, Y0
	ADDQ BX, R10
	ADDQ $4, AX
	CMPQ AX, R9
	JLT ws8t
ws8store:
	VMOVUPS Y0, (DI)
wsdone:
	VZEROUPPER
	RET
