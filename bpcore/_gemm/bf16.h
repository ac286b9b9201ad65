/* bf16.h -- float32 -> bfloat16 rounding for compute_dtype="bfloat16", and the
 * packers of the bfloat16 tile's pairs (included by kernels.h and _gemm.pyx).
 *
 * bfloat16 is the top half of a float32 (sign, 8-bit exponent, 7 fraction
 * bits), so rounding to nearest, ties to even, is integer arithmetic on the bit
 * pattern: add 0x7FFF plus the lowest kept bit, clear the low 16 bits.  A carry
 * runs into the exponent (and past the largest bfloat16 to infinity), as it
 * must.  NaN is kept NaN (quiet bit set; the add could carry it to infinity).
 * The same rule as bpcore.reference.round_bfloat16.
 *
 * Two paths use it (cpu_features()["bf16"]):
 *   "emulated"     rounded float32 copies of both operands (the low 16 bits zero)
 *                  through the float32 GEMM -- each product of two bfloat16 values
 *                  is exact in float32, so it gives vdpbf16ps's values to float32
 *                  rounding (vdpbf16ps also flushes subnormal inputs and results
 *                  to zero; this path does not);
 *   "avx512_bf16"  the GEMM's loops over the bfloat16 tile (microkernel_avx512.h),
 *                  which packs A~ and B~ as pairs of bfloat16 values in 32 bits:
 *                  half the bytes of float32 panels and one vdpbf16ps per pair.
 */
#ifndef BP_BF16_H
#define BP_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "microkernel.h"
#include "pack.h"

static inline float bp_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? u | 0x00400000u
                                                       : u + 0x7FFFu + ((u >> 16) & 1u);
    const uint32_t bits = r & 0xFFFF0000u;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* dst[o*inner + i] = round(src[o*s_outer + i*s_inner]): a rounded, contiguous copy
 * (the caller puts the source's unit stride, if any, on the inner axis). */
static void bp_round_bf16_copy(ptrdiff_t outer, ptrdiff_t inner, const float *src,
                               ptrdiff_t s_outer, ptrdiff_t s_inner, float *dst)
{
    for (ptrdiff_t o = 0; o < outer; ++o, dst += inner) {
        const float *s = src + o * s_outer;
        if (s_inner == 1)
            for (ptrdiff_t i = 0; i < inner; ++i) dst[i] = bp_round_bf16(s[i]);
        else
            for (ptrdiff_t i = 0; i < inner; ++i) dst[i] = bp_round_bf16(s[i * s_inner]);
    }
}

/* Two rounded values in the 32 bits vdpbf16ps reads: `lo` (element 2j of the
 * inner dimension) in the low half, `hi` (2j+1) in the high half. */
static inline uint32_t bp_bf16_pair(float lo, float hi)
{
    uint32_t l, h;
    lo = bp_round_bf16(lo);
    hi = bp_round_bf16(hi);
    memcpy(&l, &lo, sizeof l);
    memcpy(&h, &hi, sizeof h);
    return (l >> 16) | h;
}

/* A~ of the bfloat16 tile: MR-tall slivers at the float32 packer's offsets
 * (sliver s at s*MR*kc elements, so the loops index both alike); in each, pair q
 * of row i at [q*MR + i], the rows of a short last sliver not padded.  An odd kc's
 * last pair has a zero high half (adding +0*0 to a sum leaves it). */
static void bp_pack_a_bf16_c(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                             ptrdiff_t csa, int MR, float *dst_)
{
    uint32_t *dst = (uint32_t *)(void *)dst_;
    const ptrdiff_t pairs = kc / 2;
    for (ptrdiff_t s = 0; s < mc; s += MR, dst += (ptrdiff_t)MR * kc) {
        const float *src = a + s * rsa;
        const ptrdiff_t mr = mc - s < MR ? mc - s : MR;
        for (ptrdiff_t q = 0; q < pairs; ++q)
            for (ptrdiff_t i = 0; i < mr; ++i)
                dst[q * MR + i] = bp_bf16_pair(src[i * rsa + 2 * q * csa],
                                               src[i * rsa + (2 * q + 1) * csa]);
        if (kc & 1)
            for (ptrdiff_t i = 0; i < mr; ++i)
                dst[pairs * MR + i] = bp_bf16_pair(src[i * rsa + (kc - 1) * csa], 0.0f);
    }
}

/* A B~ sliver of the bfloat16 tile: pair q of column j at [q*NR + j] (rows 2q and
 * 2q+1 of B), columns nr..NR zero, an odd kc's last high halves zero. */
static void bp_pack_b_bf16_c(ptrdiff_t kc, int nr, const float *b, ptrdiff_t rsb,
                             ptrdiff_t csb, int NR, float *dst_)
{
    uint32_t *dst = (uint32_t *)(void *)dst_;
    const ptrdiff_t steps = (kc + 1) / 2;
    for (ptrdiff_t q = 0; q < steps; ++q, dst += NR) {
        const float *r0 = b + 2 * q * rsb;
        const int odd = 2 * q + 1 == kc;    /* the last of an odd kc: no row 2q+1 */
        for (int j = 0; j < nr; ++j)
            dst[j] = bp_bf16_pair(r0[j * csb], odd ? 0.0f : r0[rsb + j * csb]);
        for (int j = nr; j < NR; ++j) dst[j] = 0;
    }
}

/* A~ of the AMX tile (microkernel_amx.h): MR-tall slivers (MR = BP_MR_AMX = 32) at
 * the same offsets, each in the tile's own blocks: with kp = (kc+1)/2 pairs and
 * full = kp/16, pair q < 16*full of row i at [((q/16)*32 + i)*16 + q%16] -- every
 * A tile (16 rows x 16 pairs) 1 KiB contiguous, loaded at a 64-byte stride --
 * and the last rest = kp - 16*full pairs after them, row by row, at
 * [512*full + i*rest + q - 16*full] (the tile copies those to the stack).  A short
 * last sliver's rows up to the next multiple of 16 are zero (a tile loads 16
 * rows).  An odd kc's last high half is 0. */
static inline ptrdiff_t bp_amx_a_at(ptrdiff_t i, ptrdiff_t q, ptrdiff_t kp)
{
    const ptrdiff_t full = kp / 16;
    return q < 16 * full ? ((q / 16) * 32 + i) * 16 + q % 16
                         : 512 * full + i * (kp - 16 * full) + q - 16 * full;
}

/* One sliver's pairs not yet written -- rows [0, i0) from pair q0 on, rows [i0, mr)
 * whole -- then its zero rows up to the next multiple of 16. */
static void bp_pack_a_amx_rest(ptrdiff_t mr, ptrdiff_t kc, const float *src, ptrdiff_t rsa,
                               ptrdiff_t csa, ptrdiff_t i0, ptrdiff_t q0, uint32_t *dst)
{
    const ptrdiff_t kp = (kc + 1) / 2, r16 = (mr + 15) / 16 * 16;
    for (ptrdiff_t i = 0; i < mr; ++i)
        for (ptrdiff_t q = i < i0 ? q0 : 0; q < kp; ++q)
            dst[bp_amx_a_at(i, q, kp)] = bp_bf16_pair(
                src[i * rsa + 2 * q * csa],
                2 * q + 1 < kc ? src[i * rsa + (2 * q + 1) * csa] : 0.0f);
    for (ptrdiff_t i = mr; i < r16; ++i)
        for (ptrdiff_t q = 0; q < kp; ++q)
            dst[bp_amx_a_at(i, q, kp)] = 0;
}

static void bp_pack_a_amx_c(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                            ptrdiff_t csa, int MR, float *dst_)
{
    for (ptrdiff_t s = 0; s < mc; s += MR)
        bp_pack_a_amx_rest(mc - s < MR ? mc - s : MR, kc, a + s * rsa, rsa, csa, 0, 0,
                           (uint32_t *)(void *)(dst_ + s * kc));
}

/* ------------------------------------------------------------------------ */
/* AVX2 pair packers (the same bits as the loops above; tests compare them):  */
/* the rounding eight lanes at a time, and for the layouts whose pairs are    */
/* adjacent in memory (a row-major A, a B stored column by column) 8 x 8      */
/* register transposes, as pack.h's.  Element by element those two cost       */
/* 2-4 ns a value here, against ~2 ns of vdpbf16ps work per value of B~ for   */
/* a 256-row product: the packing would have been half the product.           */
/* ------------------------------------------------------------------------ */
#if BP_HAVE_AVX2_KERNELS

/* bp_round_bf16 lane by lane (the low 16 bits not yet cleared) */
BP_INLINE_AVX2 __m256i bp_round_bf16_v8(__m256i u)
{
    const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7F800000));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
    return _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), nan);
}

/* lane l: the pair (lo[l], hi[l]) */
BP_INLINE_AVX2 __m256i bp_bf16_pairs_v8(const float *lo, const float *hi)
{
    const __m256i l = bp_round_bf16_v8(_mm256_loadu_si256((const __m256i *)(const void *)lo));
    const __m256i h = hi ? bp_round_bf16_v8(_mm256_loadu_si256((const __m256i *)(const void *)hi))
                         : _mm256_setzero_si256();
    return _mm256_or_si256(_mm256_srli_epi32(l, 16),
                           _mm256_and_si256(h, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* lane q: the pair (x[2q], x[2q+1]) of 16 consecutive values */
BP_INLINE_AVX2 __m256i bp_bf16_adjacent_v8(const float *x)
{
    const __m256i r0 = _mm256_srli_epi32(
        bp_round_bf16_v8(_mm256_loadu_si256((const __m256i *)(const void *)x)), 16);
    const __m256i r1 = _mm256_srli_epi32(
        bp_round_bf16_v8(_mm256_loadu_si256((const __m256i *)(const void *)(x + 8))), 16);
    /* packus per 128-bit half: [r0 lo, r1 lo | r0 hi, r1 hi] as 64-bit blocks -> reorder */
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xD8);
}

/* r[0..7] := its 8 x 8 transpose (32-bit lanes: pack.h's, on the bit patterns) */
BP_INLINE_AVX2 void bp_transpose8_epi32(__m256i r[8])
{
    __m256 f[8];
    for (int i = 0; i < 8; ++i) f[i] = _mm256_castsi256_ps(r[i]);
    bp_transpose8_ps(f);
    for (int i = 0; i < 8; ++i) r[i] = _mm256_castps_si256(f[i]);
}

static BP_AVX2 void bp_pack_a_bf16_avx2(ptrdiff_t mc, ptrdiff_t kc, const float *a,
                                        ptrdiff_t rsa, ptrdiff_t csa, int MR, float *dst_)
{
    const ptrdiff_t full = MR == 8 ? mc / 8 * 8 : 0;     /* whole 8-row slivers */
    if (full == 0 || (rsa != 1 && csa != 1)) {
        bp_pack_a_bf16_c(mc, kc, a, rsa, csa, MR, dst_);
        return;
    }
    for (ptrdiff_t s = 0; s < full; s += 8) {
        uint32_t *dst = (uint32_t *)(void *)(dst_ + s * kc);
        const float *src = a + s * rsa;
        ptrdiff_t q = 0;
        if (rsa == 1) {         /* A transposed: the 8 rows of each k contiguous */
            for (; 2 * q + 1 < kc; ++q)
                _mm256_storeu_si256((__m256i *)(void *)(dst + q * 8),
                                    bp_bf16_pairs_v8(src + 2 * q * csa, src + (2 * q + 1) * csa));
            if (kc & 1)
                _mm256_storeu_si256((__m256i *)(void *)(dst + q * 8),
                                    bp_bf16_pairs_v8(src + 2 * q * csa, NULL));
            continue;
        }
        for (; 2 * q + 16 <= kc; q += 8) {  /* row-major: 8 pairs of each row, transposed */
            __m256i r[8];
            for (int i = 0; i < 8; ++i) r[i] = bp_bf16_adjacent_v8(src + i * rsa + 2 * q);
            bp_transpose8_epi32(r);
            for (int i = 0; i < 8; ++i)
                _mm256_storeu_si256((__m256i *)(void *)(dst + (q + i) * 8), r[i]);
        }
        for (; 2 * q < kc; ++q)
            for (int i = 0; i < 8; ++i)
                dst[q * 8 + i] = bp_bf16_pair(src[i * rsa + 2 * q],
                                              2 * q + 1 < kc ? src[i * rsa + 2 * q + 1] : 0.0f);
    }
    if (full < mc)
        bp_pack_a_bf16_c(mc - full, kc, a + full * rsa, rsa, csa, MR, dst_ + full * kc);
}

static BP_AVX2 void bp_pack_b_bf16_avx2(ptrdiff_t kc, int nr, const float *b, ptrdiff_t rsb,
                                        ptrdiff_t csb, int NR, float *dst_)
{
    uint32_t *dst = (uint32_t *)(void *)dst_;
    const ptrdiff_t steps = (kc + 1) / 2;
    const int nv = nr / 8 * 8;      /* columns in whole vectors */
    if (csb == 1) {                 /* rows contiguous: two rows, lane by lane */
        for (ptrdiff_t q = 0; q < steps; ++q) {
            const float *r0 = b + 2 * q * rsb;
            const float *r1 = 2 * q + 1 < kc ? r0 + rsb : NULL;
            for (int j = 0; j < nv; j += 8)
                _mm256_storeu_si256((__m256i *)(void *)(dst + q * NR + j),
                                    bp_bf16_pairs_v8(r0 + j, r1 ? r1 + j : NULL));
            for (int j = nv; j < nr; ++j)
                dst[q * NR + j] = bp_bf16_pair(r0[j], r1 ? r1[j] : 0.0f);
            for (int j = nr; j < NR; ++j) dst[q * NR + j] = 0;
        }
        return;
    }
    if (rsb != 1 || nv == 0) {
        bp_pack_b_bf16_c(kc, nr, b, rsb, csb, NR, dst_);
        return;
    }
    /* columns contiguous (B transposed): 8 pairs of 8 columns, transposed */
    ptrdiff_t q = 0;
    for (; 2 * q + 16 <= kc; q += 8)
        for (int j0 = 0; j0 < nv; j0 += 8) {
            __m256i r[8];
            for (int c = 0; c < 8; ++c) r[c] = bp_bf16_adjacent_v8(b + (j0 + c) * csb + 2 * q);
            bp_transpose8_epi32(r);
            for (int i = 0; i < 8; ++i)
                _mm256_storeu_si256((__m256i *)(void *)(dst + (q + i) * NR + j0), r[i]);
        }
    for (ptrdiff_t t = q; t < steps; ++t)
        for (int j = 0; j < nv; ++j)
            dst[t * NR + j] = bp_bf16_pair(b[j * csb + 2 * t],
                                           2 * t + 1 < kc ? b[j * csb + 2 * t + 1] : 0.0f);
    for (ptrdiff_t t = 0; t < steps; ++t) {
        for (int j = nv; j < nr; ++j)
            dst[t * NR + j] = bp_bf16_pair(b[j * csb + 2 * t],
                                           2 * t + 1 < kc ? b[j * csb + 2 * t + 1] : 0.0f);
        for (int j = nr; j < NR; ++j) dst[t * NR + j] = 0;
    }
}

/* Which build packs (tests force one: _gemm._set_bf16_pack_isa); -1: ask the CPU. */
static int bp_bf16_pack_isa = -1;
static inline int bp_bf16_pack_use_avx2(void) { return bp_cpu_choose_avx2(&bp_bf16_pack_isa); }
#else
#define bp_pack_a_bf16_avx2 bp_pack_a_bf16_c
#define bp_pack_b_bf16_avx2 bp_pack_b_bf16_c
static int bp_bf16_pack_isa = 0;
static inline int bp_bf16_pack_use_avx2(void) { return 0; }
#endif

/* ------------------------------------------------------------------------ */
/* The AMX tile's A~ packer with AVX-512F (every CPU with AMX has it): the    */
/* rounding 16 lanes at a time; a row-major A is each row's values in order   */
/* (the pairs are adjacent bfloat16s), an A stored column by column 16 rows x */
/* 16 pairs at a time through a 16 x 16 register transpose.  Measured in the  */
/* 1024-784-512-10 bf16 step: the AVX2 8 x 8 version was a quarter of it.     */
/* ------------------------------------------------------------------------ */
#if BP_HAVE_AMX_KERNELS
/* bp_round_bf16 lane by lane, the bfloat16 in the low 16 bits */
static inline BP_AMX __attribute__((always_inline)) __m512i bp_bf16_bits_v16(const float *p)
{
    const __m512i u = _mm512_loadu_si512((const void *)p);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
        _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
    return _mm512_srli_epi32(r, 16);
}

/* t[c] := column c of the 16 x 16 matrix of 32-bit lanes whose row r is t[r] */
static inline BP_AMX __attribute__((always_inline)) void bp_transpose16_epi32(__m512i *t)
{
    __m512i a[16], b[16];
    for (int j = 0; j < 8; ++j) {
        a[2 * j] = _mm512_unpacklo_epi32(t[2 * j], t[2 * j + 1]);
        a[2 * j + 1] = _mm512_unpackhi_epi32(t[2 * j], t[2 * j + 1]);
    }
    for (int j = 0; j < 4; ++j) {   /* b[4j+r], 128-bit block L: rows 4j..4j+3, column 4L+r */
        b[4 * j] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
        b[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
    }
    for (int r = 0; r < 4; ++r) {
        const __m512i c0 = _mm512_shuffle_i32x4(b[r], b[4 + r], 0x88);
        const __m512i c1 = _mm512_shuffle_i32x4(b[r], b[4 + r], 0xdd);
        const __m512i c2 = _mm512_shuffle_i32x4(b[8 + r], b[12 + r], 0x88);
        const __m512i c3 = _mm512_shuffle_i32x4(b[8 + r], b[12 + r], 0xdd);
        t[r] = _mm512_shuffle_i32x4(c0, c2, 0x88);
        t[8 + r] = _mm512_shuffle_i32x4(c0, c2, 0xdd);
        t[4 + r] = _mm512_shuffle_i32x4(c1, c3, 0x88);
        t[12 + r] = _mm512_shuffle_i32x4(c1, c3, 0xdd);
    }
}

static BP_AMX void bp_pack_a_amx_avx512(ptrdiff_t mc, ptrdiff_t kc, const float *a,
                                        ptrdiff_t rsa, ptrdiff_t csa, int MR, float *dst_)
{
    if (rsa != 1 && csa != 1) {
        bp_pack_a_amx_c(mc, kc, a, rsa, csa, MR, dst_);
        return;
    }
    const ptrdiff_t kp = (kc + 1) / 2, kp16 = kc / 32 * 16;  /* pairs in whole 16-pair runs */
    const ptrdiff_t m16 = mc / 16 * 16;     /* rows in whole 16-row groups */
    if (csa != 1) {
        /* rsa == 1, the rows of each k contiguous: 16 x 16 blocks, k outermost, so the
         * source is read along its rows (down its columns it was a new page every
         * row: twice the packing time of the 1024-784-512-10 bf16 step in perf) */
        for (ptrdiff_t q = 0; q < kp16; q += 16)
            for (ptrdiff_t r = 0; r < m16; r += 16) {
                __m512i t[16];
                for (int p = 0; p < 16; ++p) {      /* lane i: the pair (r+i, q+p) */
                    const float *x = a + 2 * (q + p) * csa + r;
                    t[p] = _mm512_or_si512(bp_bf16_bits_v16(x),
                                           _mm512_slli_epi32(bp_bf16_bits_v16(x + csa), 16));
                }
                bp_transpose16_epi32(t);
                const ptrdiff_t s = r / MR * MR;    /* MR is a multiple of 16 */
                uint32_t *d = (uint32_t *)(void *)(dst_ + s * kc) + bp_amx_a_at(r - s, q, kp);
                for (int i = 0; i < 16; ++i)
                    _mm512_storeu_si512((void *)(d + 16 * i), t[i]);
            }
    }
    for (ptrdiff_t s = 0; s < mc; s += MR) {
        uint32_t *dst = (uint32_t *)(void *)(dst_ + s * kc);
        const float *src = a + s * rsa;
        const ptrdiff_t mr = mc - s < MR ? mc - s : MR;
        /* rows [0, i0) done up to pair kp16: the blocks above, or each row here */
        ptrdiff_t i0 = m16 - s < 0 ? 0 : m16 - s < mr ? m16 - s : mr;
        if (csa == 1) {
            i0 = mr;
            for (ptrdiff_t i = 0; i < mr; ++i)
                for (ptrdiff_t q = 0; q < kp16; q += 16) {
                    const float *x = src + i * rsa + 2 * q;
                    uint32_t *d = dst + bp_amx_a_at(i, q, kp);
                    _mm256_storeu_si256((__m256i *)(void *)d,
                                        _mm512_cvtepi32_epi16(bp_bf16_bits_v16(x)));
                    _mm256_storeu_si256((__m256i *)(void *)(d + 8),
                                        _mm512_cvtepi32_epi16(bp_bf16_bits_v16(x + 16)));
                }
        }
        bp_pack_a_amx_rest(mr, kc, src, rsa, csa, i0, kp16, dst);
    }
}
#else
#define bp_pack_a_amx_avx512 bp_pack_a_amx_c
#endif

static void bp_pack_a_bf16(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                           ptrdiff_t csa, int MR, float *dst)
{
    if (bp_bf16_pack_use_avx2()) bp_pack_a_bf16_avx2(mc, kc, a, rsa, csa, MR, dst);
    else                         bp_pack_a_bf16_c(mc, kc, a, rsa, csa, MR, dst);
}

static void bp_pack_a_amx(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                          ptrdiff_t csa, int MR, float *dst)
{
    /* the vector build (bp_bf16_pack_isa) is AVX-512F here: AMX CPUs all have it */
    if (bp_bf16_pack_use_avx2() && bp_cpu_avx512f())
        bp_pack_a_amx_avx512(mc, kc, a, rsa, csa, MR, dst);
    else
        bp_pack_a_amx_c(mc, kc, a, rsa, csa, MR, dst);
}

static void bp_pack_b_bf16(ptrdiff_t kc, int nr, const float *b, ptrdiff_t rsb,
                           ptrdiff_t csb, int NR, float *dst)
{
    if (bp_bf16_pack_use_avx2()) bp_pack_b_bf16_avx2(kc, nr, b, rsb, csb, NR, dst);
    else                         bp_pack_b_bf16_c(kc, nr, b, rsb, csb, NR, dst);
}

#endif
