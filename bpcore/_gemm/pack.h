/* pack.h -- packing a B~ sliver from a B stored column by column (included by
 * _gemm.pyx only; the other layouts are packed by plain loops in _gemm.pyx).
 *
 * When op(B) = X.T with X row-major (the dY @ W.T of a backward pass), each
 * column of op(B) is contiguous and a B~ row (NR values across columns) is a
 * gather.  Packing is then a transpose: element by element it costs a store
 * per value, a fifth of the whole product for 64x1000x100.  The AVX2 versions
 * transpose 8x8 (float) / 4x4 (double) blocks in registers instead.
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

#if BP_HAVE_AVX2_KERNELS

static BP_AVX2 void bp_pack_bt_f32_avx2(ptrdiff_t kc, int nr, const float *b, ptrdiff_t csb,
                                        float *dst)
{
    if (nr < BP_NR_F32) {                  /* the one narrow sliver of a panel */
        bp_pack_bt_f32_portable(kc, nr, b, csb, dst);
        return;
    }
    ptrdiff_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        for (int j0 = 0; j0 < BP_NR_F32; j0 += 8) {
            const float *s = b + j0 * csb + p;
            const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + csb),
                         r2 = _mm256_loadu_ps(s + 2 * csb), r3 = _mm256_loadu_ps(s + 3 * csb),
                         r4 = _mm256_loadu_ps(s + 4 * csb), r5 = _mm256_loadu_ps(s + 5 * csb),
                         r6 = _mm256_loadu_ps(s + 6 * csb), r7 = _mm256_loadu_ps(s + 7 * csb);
            /* interleave pairs of rows, then pairs of pairs, then the 128-bit halves */
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                         t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                         t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *d = dst + p * BP_NR_F32 + j0;
            _mm256_store_ps(d + 0 * BP_NR_F32, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_store_ps(d + 1 * BP_NR_F32, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_store_ps(d + 2 * BP_NR_F32, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_store_ps(d + 3 * BP_NR_F32, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_store_ps(d + 4 * BP_NR_F32, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_store_ps(d + 5 * BP_NR_F32, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_store_ps(d + 6 * BP_NR_F32, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_store_ps(d + 7 * BP_NR_F32, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    for (; p < kc; ++p)
        for (int j = 0; j < BP_NR_F32; ++j)
            dst[p * BP_NR_F32 + j] = b[j * csb + p];
}

static BP_AVX2 void bp_pack_bt_f64_avx2(ptrdiff_t kc, int nr, const double *b, ptrdiff_t csb,
                                        double *dst)
{
    if (nr < BP_NR_F64) {
        bp_pack_bt_f64_portable(kc, nr, b, csb, dst);
        return;
    }
    ptrdiff_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        for (int j0 = 0; j0 < BP_NR_F64; j0 += 4) {
            const double *s = b + j0 * csb + p;
            const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + csb),
                          r2 = _mm256_loadu_pd(s + 2 * csb), r3 = _mm256_loadu_pd(s + 3 * csb);
            const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1),
                          t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
            double *d = dst + p * BP_NR_F64 + j0;
            _mm256_store_pd(d + 0 * BP_NR_F64, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_store_pd(d + 1 * BP_NR_F64, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_store_pd(d + 2 * BP_NR_F64, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_store_pd(d + 3 * BP_NR_F64, _mm256_permute2f128_pd(t1, t3, 0x31));
        }
    }
    for (; p < kc; ++p)
        for (int j = 0; j < BP_NR_F64; ++j)
            dst[p * BP_NR_F64 + j] = b[j * csb + p];
}

#else
#define bp_pack_bt_f32_avx2 bp_pack_bt_f32_portable
#define bp_pack_bt_f64_avx2 bp_pack_bt_f64_portable
#endif

#endif
