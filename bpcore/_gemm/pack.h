/* pack.h -- packing a B~ sliver from a B stored column by column, and A~
 * (included by _gemm.pyx only; the other B layouts are packed by plain loops
 * in _gemm.pyx).
 *
 * When op(B) = X.T with X row-major (the dY @ W.T of a backward pass), each
 * column of op(B) is contiguous and a B~ row (NR values across columns) is a
 * gather.  Packing is then a transpose: element by element it costs a store
 * per value, a fifth of the whole product for 64x1000x100.  The AVX2 versions
 * transpose 8x8 (float) / 4x4 (double) blocks in registers instead, for the
 * 16/8-wide slivers of the 256-bit tiles and the 48/24-wide ones of the 512-bit tiles.
 *
 *     dst[p*NR + j] = b[j*csb + p]   for 0 <= p < kc, 0 <= j < nr;  0 for nr <= j < NR
 */
#ifndef BP_PACK_H
#define BP_PACK_H

#include <stddef.h>
#include <string.h>
#include "microkernel.h"

typedef void (*bp_pack_bt_f32_fn)(ptrdiff_t kc, int nr, const float *b, ptrdiff_t csb, float *dst);
typedef void (*bp_pack_bt_f64_fn)(ptrdiff_t kc, int nr, const double *b, ptrdiff_t csb, double *dst);

#define BP_DEFINE_PACK_BT_PORTABLE(NAME, T, NR)                                     \
static void NAME(ptrdiff_t kc, int nr, const T *b, ptrdiff_t csb, T *dst)           \
{                                                                                   \
    if (nr < NR)                                                                    \
        memset(dst, 0, (size_t)kc * NR * sizeof(T));                                \
    for (int j = 0; j < nr; ++j)                                                    \
        for (ptrdiff_t p = 0; p < kc; ++p)                                          \
            dst[p * NR + j] = b[j * csb + p];                                       \
}

BP_DEFINE_PACK_BT_PORTABLE(bp_pack_bt_f32_portable, float, BP_NR_F32)
BP_DEFINE_PACK_BT_PORTABLE(bp_pack_bt_f64_portable, double, BP_NR_F64)
BP_DEFINE_PACK_BT_PORTABLE(bp_pack_bt_f32_portable48, float, BP_NR_Z_F32)
BP_DEFINE_PACK_BT_PORTABLE(bp_pack_bt_f64_portable24, double, BP_NR_Z_F64)

#if BP_HAVE_AVX2_KERNELS

/* r[0..7] := its 8 x 8 transpose (also bf16.h's, on bfloat16 pairs as 32-bit lanes):
 * interleave pairs of rows, then pairs of pairs, then the 128-bit halves. */
BP_INLINE_AVX2 void bp_transpose8_ps(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

/* A full sliver of NR columns (a multiple of 8), by 8 x 8 register transposes. */
BP_INLINE_AVX2 void bp_pack_bt_f32_avx2_full(ptrdiff_t kc, const float *b, ptrdiff_t csb,
                                             float *dst, const int NR)
{
    ptrdiff_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        for (int j0 = 0; j0 < NR; j0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(b + (j0 + i) * csb + p);
            bp_transpose8_ps(r);
            for (int i = 0; i < 8; ++i) _mm256_store_ps(dst + (p + i) * NR + j0, r[i]);
        }
    }
    for (; p < kc; ++p)
        for (int j = 0; j < NR; ++j)
            dst[p * NR + j] = b[j * csb + p];
}

/* A full sliver of NR columns (a multiple of 4), by 4 x 4 register transposes. */
BP_INLINE_AVX2 void bp_pack_bt_f64_avx2_full(ptrdiff_t kc, const double *b, ptrdiff_t csb,
                                             double *dst, const int NR)
{
    ptrdiff_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        for (int j0 = 0; j0 < NR; j0 += 4) {
            const double *s = b + j0 * csb + p;
            const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + csb),
                          r2 = _mm256_loadu_pd(s + 2 * csb), r3 = _mm256_loadu_pd(s + 3 * csb);
            const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1),
                          t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
            double *d = dst + p * NR + j0;
            _mm256_store_pd(d + 0 * NR, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_store_pd(d + 1 * NR, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_store_pd(d + 2 * NR, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_store_pd(d + 3 * NR, _mm256_permute2f128_pd(t1, t3, 0x31));
        }
    }
    for (; p < kc; ++p)
        for (int j = 0; j < NR; ++j)
            dst[p * NR + j] = b[j * csb + p];
}

/* Whole slivers by register transposes; the one narrow sliver of a panel, element
 * by element.  The 512-bit kernel's 48/24-wide slivers use AVX2 too (every
 * AVX-512F CPU has it). */
#define BP_DEFINE_PACK_BT_AVX2(NAME, T, NR, NARROW, FULL)                             \
static BP_AVX2 void NAME(ptrdiff_t kc, int nr, const T *b, ptrdiff_t csb, T *dst)     \
{                                                                                     \
    if (nr < NR) NARROW(kc, nr, b, csb, dst);                                         \
    else         FULL(kc, b, csb, dst, NR);                                           \
}

BP_DEFINE_PACK_BT_AVX2(bp_pack_bt_f32_avx2, float, BP_NR_F32, bp_pack_bt_f32_portable,
                       bp_pack_bt_f32_avx2_full)
BP_DEFINE_PACK_BT_AVX2(bp_pack_bt_f32_avx2_48, float, BP_NR_Z_F32, bp_pack_bt_f32_portable48,
                       bp_pack_bt_f32_avx2_full)
BP_DEFINE_PACK_BT_AVX2(bp_pack_bt_f64_avx2, double, BP_NR_F64, bp_pack_bt_f64_portable,
                       bp_pack_bt_f64_avx2_full)
BP_DEFINE_PACK_BT_AVX2(bp_pack_bt_f64_avx2_24, double, BP_NR_Z_F64, bp_pack_bt_f64_portable24,
                       bp_pack_bt_f64_avx2_full)

#else
#define bp_pack_bt_f32_avx2 bp_pack_bt_f32_portable
#define bp_pack_bt_f64_avx2 bp_pack_bt_f64_portable
#define bp_pack_bt_f32_avx2_48 bp_pack_bt_f32_portable48
#define bp_pack_bt_f64_avx2_24 bp_pack_bt_f64_portable24
#endif

/* ------------------------------------------------------------------------ */
/* A~: MR-tall slivers; sliver s holds rows s*MR.., element (i, p) at        */
/* dst[s*MR*kc + p*MR + i].  A short last sliver is not padded (the micro-   */
/* kernel never reads rows past mr).  MR is a compile-time constant in each  */
/* instantiation, so the row loop unrolls (6 or 8, per kernel).              */
/* ------------------------------------------------------------------------ */
#define BP_DEFINE_PACK_A(NAME, T)                                                     \
static inline __attribute__((always_inline)) void NAME##_mr(                         \
        ptrdiff_t mc, ptrdiff_t kc, const T *a, ptrdiff_t rsa, ptrdiff_t csa, T *dst,  \
        const int MR)                                                                 \
{                                                                                     \
    for (ptrdiff_t s = 0; s < mc; s += MR, dst += MR * kc) {                          \
        const T *src = a + s * rsa;                                                   \
        const ptrdiff_t mr = mc - s < MR ? mc - s : MR;                               \
        if (mr == MR && rsa == 1) {   /* A transposed: MR contiguous values per p */  \
            for (ptrdiff_t p = 0; p < kc; ++p)                                        \
                for (int i = 0; i < MR; ++i) dst[p * MR + i] = src[p * csa + i];      \
        } else if (mr == MR) {                                                        \
            for (ptrdiff_t p = 0; p < kc; ++p)                                        \
                for (int i = 0; i < MR; ++i) dst[p * MR + i] = src[i * rsa + p * csa]; \
        } else {                                                                      \
            for (ptrdiff_t p = 0; p < kc; ++p)                                        \
                for (ptrdiff_t i = 0; i < mr; ++i) dst[p * MR + i] = src[i * rsa + p * csa]; \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
static void NAME(ptrdiff_t mc, ptrdiff_t kc, const T *a, ptrdiff_t rsa, ptrdiff_t csa,   \
                 int mr_tile, T *dst)                                                 \
{                                                                                     \
    if (mr_tile == BP_MR_Z) NAME##_mr(mc, kc, a, rsa, csa, dst, BP_MR_Z);              \
    else                    NAME##_mr(mc, kc, a, rsa, csa, dst, BP_MR);                \
}

BP_DEFINE_PACK_A(bp_pack_a_f32, float)
BP_DEFINE_PACK_A(bp_pack_a_f64, double)

/* A full B~ sliver from a B with contiguous rows: dst[p*NR + j] = b[p*rsb + j].
 * NR is a constant in each case, so each row is a fixed-size vector copy (a
 * memcpy call of a variable size per row would cost more than the copy). */
#define BP_DEFINE_PACK_B_ROWS(NAME, T)                                                \
static inline __attribute__((always_inline)) void NAME##_nr(                         \
        ptrdiff_t kc, const T *b, ptrdiff_t rsb, T *dst, const int NR)                \
{                                                                                     \
    for (ptrdiff_t p = 0; p < kc; ++p)                                                \
        for (int j = 0; j < NR; ++j) dst[p * NR + j] = b[p * rsb + j];                \
}                                                                                     \
static void NAME(ptrdiff_t kc, const T *b, ptrdiff_t rsb, int nr_tile, T *dst)        \
{                                                                                     \
    switch (nr_tile) {                                                                \
    case 8:  NAME##_nr(kc, b, rsb, dst, 8); break;                                    \
    case 16: NAME##_nr(kc, b, rsb, dst, 16); break;                                   \
    case 24: NAME##_nr(kc, b, rsb, dst, 24); break;                                   \
    case 48: NAME##_nr(kc, b, rsb, dst, 48); break;                                   \
    default:                                                                          \
        for (ptrdiff_t p = 0; p < kc; ++p)                                            \
            memcpy(dst + p * nr_tile, b + p * rsb, (size_t)nr_tile * sizeof(T));      \
    }                                                                                 \
}

BP_DEFINE_PACK_B_ROWS(bp_pack_b_rows_f32, float)
BP_DEFINE_PACK_B_ROWS(bp_pack_b_rows_f64, double)

#endif
