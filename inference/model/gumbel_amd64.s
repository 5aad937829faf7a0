#include "textflag.h"

// Lane i: i, for the first chunk's token numbers.
DATA iota8<>+0(SB)/8, $0
DATA iota8<>+8(SB)/8, $1
DATA iota8<>+16(SB)/8, $2
DATA iota8<>+24(SB)/8, $3
DATA iota8<>+32(SB)/8, $4
DATA iota8<>+40(SB)/8, $5
DATA iota8<>+48(SB)/8, $6
DATA iota8<>+56(SB)/8, $7
GLOBL iota8<>(SB), RODATA|NOPTR, $64

// func gumbelSkipZ(row *float32, n, start int, inv float64, key uint64, lo int, best float64) int
//
// Eight tokens per step from start, it computes gumbelHash(key, lo+t)
// (mix64 of key ^ (lo+t+1)·0xd1b54a32d192ed03, the multiplicand advanced
// by 8·that constant per step), the bit length b of m = 2^53 - h>>11 by
// VPLZCNTQ (64-b = lzcnt, so 55-b = lzcnt-9), a bound no lower than
// gumbelBound[b] — fl((55-b)·Ln2) + 2e-9, against the table's
// fl(fl((55-b)·Ln2) + 1e-9) — and keeps a token unless
// float64(row[t])·inv + bound < best (ordered: NaN keeps it) and b ≥ 2.
// It returns the first token kept, or where fewer than eight remain.
TEXT ·gumbelSkipZ(SB), NOSPLIT, $0-64
	MOVQ row+0(FP), SI
	MOVQ n+8(FP), CX
	MOVQ start+16(FP), AX
	SUBQ $8, CX              // last start of a whole chunk
	MOVQ lo+40(FP), DX
	LEAQ 1(DX)(AX*1), DX     // lo + start + 1
	VPBROADCASTQ DX, Z1
	VPADDQ iota8<>(SB), Z1, Z1
	MOVQ $0xd1b54a32d192ed03, DX
	VPBROADCASTQ DX, Z10
	VPMULLQ Z10, Z1, Z1      // (lo+t+1)·C per lane
	SHLQ $3, DX
	VPBROADCASTQ DX, Z11     // 8·C: the next chunk
	MOVQ key+32(FP), DX
	VPBROADCASTQ DX, Z12
	MOVQ $0xbf58476d1ce4e5b9, DX
	VPBROADCASTQ DX, Z13
	MOVQ $0x94d049bb133111eb, DX
	VPBROADCASTQ DX, Z14
	MOVQ $0x20000000000000, DX // 2^53
	VPBROADCASTQ DX, Z15
	MOVQ $63, DX
	VPBROADCASTQ DX, Z16
	MOVQ $9, DX
	VPBROADCASTQ DX, Z17
	MOVQ $0x3fe62e42fefa39ef, DX // math.Ln2 as a float64
	VPBROADCASTQ DX, Z18
	MOVQ $0x3e212e0be826d695, DX // 2e-9
	VPBROADCASTQ DX, Z19
	VPBROADCASTQ inv+24(FP), Z20
	VPBROADCASTQ best+48(FP), Z21
	CMPQ AX, CX
	JGT done
loop:
	VPXORQ Z12, Z1, Z2       // mix64(key ^ (t+1)·C)
	VPSRLQ $30, Z2, Z3
	VPXORQ Z3, Z2, Z2
	VPMULLQ Z13, Z2, Z2
	VPSRLQ $27, Z2, Z3
	VPXORQ Z3, Z2, Z2
	VPMULLQ Z14, Z2, Z2
	VPSRLQ $31, Z2, Z3
	VPXORQ Z3, Z2, Z2
	VPSRLQ $11, Z2, Z2
	VPSUBQ Z2, Z15, Z2       // m = 2^53 - h>>11, 1 ≤ m ≤ 2^53
	VPLZCNTQ Z2, Z2
	VPCMPUQ $1, Z16, Z2, K2  // lzcnt < 63: b ≥ 2, a finite bound
	VPSUBQ Z17, Z2, Z2
	VCVTQQ2PD Z2, Z2
	VMULPD Z18, Z2, Z2
	VADDPD Z19, Z2, Z2       // the bound
	VCVTPS2PD (SI)(AX*4), Z3
	VMULPD Z20, Z3, Z3       // logit·inv, rounded as gumbelMax rounds it
	VADDPD Z2, Z3, Z3
	VCMPPD $0x11, Z21, Z3, K1 // < best, ordered
	KANDB K2, K1, K1
	KMOVB K1, DX
	XORL $0xff, DX           // the tokens kept
	JNZ found
	VPADDQ Z11, Z1, Z1
	ADDQ $8, AX
	CMPQ AX, CX
	JLE loop
done:
	MOVQ AX, ret+56(FP)
	VZEROUPPER
	RET
found:
	BSFL DX, DX
	ADDQ DX, AX
	MOVQ AX, ret+56(FP)
	VZEROUPPER
	RET

// func maxZ(x *float32, n int) float32
//
// The largest non-NaN float of x[:n] (-Inf if there is none); n is a
// positive multiple of 64. VMAXPS returns its second operand when either
// is NaN, so the accumulators (second operands, never NaN) pass NaNs over.
TEXT ·maxZ(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	SHLQ $2, CX
	MOVL $0xff800000, DX     // -Inf
	VPBROADCASTD DX, Z0
	VMOVAPS Z0, Z1
	VMOVAPS Z0, Z2
	VMOVAPS Z0, Z3
	XORQ AX, AX
maxloop:
	VMOVUPS (SI)(AX*1), Z4
	VMOVUPS 64(SI)(AX*1), Z5
	VMOVUPS 128(SI)(AX*1), Z6
	VMOVUPS 192(SI)(AX*1), Z7
	VMAXPS Z0, Z4, Z0
	VMAXPS Z1, Z5, Z1
	VMAXPS Z2, Z6, Z2
	VMAXPS Z3, Z7, Z3
	ADDQ $256, AX
	CMPQ AX, CX
	JLT maxloop
	VMAXPS Z1, Z0, Z0
	VMAXPS Z3, Z2, Z2
	VMAXPS Z2, Z0, Z0
	VEXTRACTF64X4 $1, Z0, Y1
	VMAXPS Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VMAXPS X1, X0, X0
	VMOVHLPS X0, X0, X1
	VMAXPS X1, X0, X0
	VMOVSHDUP X0, X1
	VMAXSS X1, X0, X0
	VMOVSS X0, ret+16(FP)
	VZEROUPPER
	RET

// func firstEqZ(x *float32, n int, v float32) int
//
// The first i < n with x[i] == v, or n; n is a positive multiple of 16.
TEXT ·firstEqZ(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS v+16(FP), Z0
	XORQ AX, AX
eqloop:
	VCMPPS $0, (SI)(AX*4), Z0, K1 // equal, ordered
	KMOVW K1, DX
	TESTL DX, DX
	JNZ eqfound
	ADDQ $16, AX
	CMPQ AX, CX
	JLT eqloop
	MOVQ CX, ret+24(FP)
	VZEROUPPER
	RET
eqfound:
	BSFL DX, DX
	ADDQ DX, AX
	MOVQ AX, ret+24(FP)
	VZEROUPPER
	RET
