/* avx512_emu.h -- the few AVX-512F operations the 512-bit tiles use, in plain C
 * (included by microkernel_avx512.h only).
 *
 * tile_avx512.h is compiled twice: over the real intrinsics (target
 * "avx512f"), and over these functions, so the tile's logic -- edges, masks,
 * aliasing of rows past mr, beta == 0 never reading C -- is tested on every
 * CPU, including the many without AVX-512 (tests/test_gemm.py runs the
 * "avx512_emulated" kernel everywhere).  Each function does lane by lane what
 * the intrinsic of the same suffix does:
 *
 *   fmadd  a*b + c with one rounding (fmaf / fma: what vfmadd231ps/pd computes)
 *   load   an aligned load: traps on a pointer that is not 64-byte aligned, as
 *          vmovaps faults (so a misaligned B~ is caught here too)
 *   maskz_loadu / mask_storeu  touch only the lanes set in the mask (AddressSanitizer
 *          then sees any read or write past the tile, as the hardware would fault)
 *
 * Slow by design (scalar loops); used only to test.
 */
#ifndef BP_AVX512_EMU_H
#define BP_AVX512_EMU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct { float v[16]; } bp_emu_ps;
typedef struct { double v[8]; } bp_emu_pd;

#define BP_EMU_DEFINE(S, T, V, W)                                                   \
static inline V bp_emu_setzero_##S(void) { V r; for (int l = 0; l < W; ++l) r.v[l] = 0; return r; } \
static inline V bp_emu_set1_##S(T x) { V r; for (int l = 0; l < W; ++l) r.v[l] = x; return r; }      \
static inline V bp_emu_load_##S(const T *p)                                         \
{                                                                                   \
    if ((uintptr_t)p % 64 != 0) __builtin_trap();                                   \
    V r; for (int l = 0; l < W; ++l) r.v[l] = p[l]; return r;                       \
}                                                                                   \
static inline V bp_emu_loadu_##S(const T *p) { V r; for (int l = 0; l < W; ++l) r.v[l] = p[l]; return r; } \
static inline V bp_emu_maskz_loadu_##S(unsigned m, const T *p)                      \
{                                                                                   \
    V r; for (int l = 0; l < W; ++l) r.v[l] = (m >> l & 1) ? p[l] : (T)0; return r; \
}                                                                                   \
static inline void bp_emu_storeu_##S(T *p, V x) { for (int l = 0; l < W; ++l) p[l] = x.v[l]; } \
static inline void bp_emu_mask_storeu_##S(T *p, unsigned m, V x)                    \
{                                                                                   \
    for (int l = 0; l < W; ++l) if (m >> l & 1) p[l] = x.v[l];                      \
}                                                                                   \
static inline V bp_emu_mul_##S(V a, V b) { for (int l = 0; l < W; ++l) a.v[l] *= b.v[l]; return a; }

BP_EMU_DEFINE(ps, float, bp_emu_ps, 16)
BP_EMU_DEFINE(pd, double, bp_emu_pd, 8)

static inline bp_emu_ps bp_emu_fmadd_ps(bp_emu_ps a, bp_emu_ps b, bp_emu_ps c)
{
    for (int l = 0; l < 16; ++l) c.v[l] = fmaf(a.v[l], b.v[l], c.v[l]);
    return c;
}
static inline bp_emu_pd bp_emu_fmadd_pd(bp_emu_pd a, bp_emu_pd b, bp_emu_pd c)
{
    for (int l = 0; l < 8; ++l) c.v[l] = fma(a.v[l], b.v[l], c.v[l]);
    return c;
}

/* vdpbf16ps (AVX512_BF16) lane by lane, as Intel documents it: each 32-bit lane of
 * a and b holds two bfloat16 values (element 2j in the low half, 2j+1 in the high
 * half), and acc += a.hi*b.hi, then acc += a.lo*b.lo -- the high pair first, each
 * add rounded to nearest even (a product of two bfloat16 values is exact in
 * float32, so each step is one rounding, as fmaf gives).  The instruction treats
 * subnormal inputs as zero and flushes subnormal results to zero, whatever MXCSR
 * says; so does this.  bp_emu_load_pbh traps off 64-byte alignment, as vmovdqa32. */
typedef struct { uint32_t v[16]; } bp_emu_pbh;

static inline bp_emu_pbh bp_emu_set1_pbh(uint32_t x)
{
    bp_emu_pbh r; for (int l = 0; l < 16; ++l) r.v[l] = x; return r;
}
static inline bp_emu_pbh bp_emu_load_pbh(const uint32_t *p)
{
    if ((uintptr_t)p % 64 != 0) __builtin_trap();
    bp_emu_pbh r; for (int l = 0; l < 16; ++l) r.v[l] = p[l]; return r;
}
/* float32 of a bit pattern, subnormals (exponent 0) as a zero of their sign */
static inline float bp_emu_daz(uint32_t u)
{
    if ((u & 0x7F800000u) == 0) u &= 0x80000000u;
    float x; memcpy(&x, &u, sizeof x); return x;
}
static inline float bp_emu_ftz(float x)
{
    uint32_t u; memcpy(&u, &x, sizeof u); return bp_emu_daz(u);
}
static inline bp_emu_ps bp_emu_dpbf16_ps(bp_emu_ps acc, bp_emu_pbh a, bp_emu_pbh b)
{
    for (int l = 0; l < 16; ++l) {
        float c = bp_emu_ftz(acc.v[l]);
        c = bp_emu_ftz(fmaf(bp_emu_daz(a.v[l] & 0xFFFF0000u), bp_emu_daz(b.v[l] & 0xFFFF0000u), c));
        c = bp_emu_ftz(fmaf(bp_emu_daz(a.v[l] << 16), bp_emu_daz(b.v[l] << 16), c));
        acc.v[l] = c;
    }
    return acc;
}

#undef BP_EMU_DEFINE
#endif
