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
