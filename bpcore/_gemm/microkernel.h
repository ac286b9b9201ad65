/* microkernel.h -- the register tiles of bpcore's GEMM (included by _gemm.pyx only).
 *
 * One micro-kernel computes one MR x NR tile of C from a K-long sliver of A
 * and a packed K-long sliver of B, keeping the whole tile in registers:
 *
 *     C[0:mr, 0:nr] := alpha * A[0:mr, 0:k] @ B[0:k, 0:nr] + beta * C[0:mr, 0:nr]
 *
 *   A  element (i, p) at a[i*rsa + p*csa]: a packed sliver (rsa = 1, csa = MR)
 *      or the caller's matrix read in place.  Rows i >= mr are never read.
 *   B  packed: row p is the NR contiguous values b[p*NR : p*NR + NR], 32-byte
 *      aligned, zero beyond column nr.
 *   alpha, beta  by pointer (as in BLIS): as scalar arguments they would sit in
 *      registers through the K loop and push an accumulator out to the stack.
 *   C  row stride rsc, unit column stride.  beta == 0: C is never read (so
 *      NaN there does not propagate), as in BLAS.
 *   1 <= mr <= MR, 1 <= nr <= NR, k >= 0.
 *
 * Every element of C is produced by the same operations wherever it sits in
 * a tile (edge or not), so a result does not depend on how M and N are split.
 *
 * Three implementations with one contract, chosen at import by _gemm.pyx
 * (kernels.h holds each one's tile and block sizes):
 *   *_avx512  AVX-512F intrinsics, 8 x 48 / 8 x 24 (microkernel_avx512.h);
 *   *_avx2   AVX2 + FMA intrinsics, 6 x 16 / 6 x 8, compiled for that ISA per
 *            function (target attribute) so the module itself stays portable;
 *   *_portable  GCC vector extensions of 16 bytes (SSE2 on x86-64, NEON on
 *            arm64, scalar code elsewhere), 6 x 16 / 6 x 8.
 */
#ifndef BP_MICROKERNEL_H
#define BP_MICROKERNEL_H

#include <stddef.h>
#include <string.h>

#define BP_MR 6       /* rows of the register tile                         */
#define BP_NR_F32 16  /* columns: two 8-float ymm registers per row        */
#define BP_NR_F64 8   /* columns: two 4-double ymm registers per row       */

typedef void (*bp_ukr_f32_fn)(ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                              const float *b, const float *alpha, const float *beta,
                              float *c, ptrdiff_t rsc, int mr, int nr);
typedef void (*bp_ukr_f64_fn)(ptrdiff_t k, const double *a, ptrdiff_t rsa, ptrdiff_t csa,
                              const double *b, const double *alpha, const double *beta,
                              double *c, ptrdiff_t rsc, int mr, int nr);

/* Offset of tile row i in A; rows past mr alias row mr-1 (computed, never stored). */
#define BP_ROW(i) (((i) < mr ? (i) : mr - 1) * rsa)

/* ------------------------------------------------------------------------ */
/* Portable: each 2*W-column half of the tile is 6 x 2 vector accumulators.  */
/* ------------------------------------------------------------------------ */

typedef float bp_v4f __attribute__((vector_size(16)));
typedef double bp_v2d __attribute__((vector_size(16)));

#define BP_DEFINE_PORTABLE_UKR(NAME, T, V, NR)                                    \
static void NAME(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa,          \
                 const T *b, const T *alpha, const T *beta, T *c,     \
                 ptrdiff_t rsc, int mr, int nr)                                   \
{                                                                                 \
    enum { W = sizeof(V) / sizeof(T) };                                           \
    ptrdiff_t off[BP_MR];                                                         \
    T tile[BP_MR][NR];                                                            \
    for (int i = 0; i < BP_MR; ++i) off[i] = BP_ROW(i);                          \
    for (int h = 0; h < nr; h += 2 * W) {                                         \
        V acc[BP_MR][2];                                                          \
        memset(acc, 0, sizeof acc);                                               \
        const T *ap = a, *bp = b + h;                                             \
        for (ptrdiff_t p = 0; p < k; ++p, ap += csa, bp += NR) {                  \
            V b0, b1;                                                             \
            memcpy(&b0, bp, sizeof b0);                                           \
            memcpy(&b1, bp + W, sizeof b1);                                       \
            for (int i = 0; i < BP_MR; ++i) {                                     \
                const T x = ap[off[i]];                                           \
                acc[i][0] += x * b0;                                              \
                acc[i][1] += x * b1;                                              \
            }                                                                     \
        }                                                                         \
        for (int i = 0; i < BP_MR; ++i)                                           \
            memcpy(&tile[i][h], acc[i], sizeof acc[i]);                           \
    }                                                                             \
    for (int i = 0; i < mr; ++i)                                                  \
        for (int j = 0; j < nr; ++j)                                              \
            c[i * rsc + j] = *beta == 0 ? *alpha * tile[i][j]                     \
                                        : *alpha * tile[i][j] + *beta * c[i * rsc + j]; \
}

BP_DEFINE_PORTABLE_UKR(bp_ukr_f32_portable, float, bp_v4f, BP_NR_F32)
BP_DEFINE_PORTABLE_UKR(bp_ukr_f64_portable, double, bp_v2d, BP_NR_F64)

/* ------------------------------------------------------------------------ */
/* AVX2 + FMA: the 6 x 16 float / 6 x 8 double tile is 12 ymm accumulators,  */
/* plus 2 for the B row and 1 for the broadcast A value (15 of 16 ymm).      */
/* ------------------------------------------------------------------------ */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define BP_HAVE_AVX2_KERNELS 1
#define BP_AVX2 __attribute__((target("avx2,fma")))
#define BP_INLINE_AVX2 static inline BP_AVX2 __attribute__((always_inline))

static int bp_cpu_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
static int bp_cpu_fma(void) { __builtin_cpu_init(); return __builtin_cpu_supports("fma"); }

/* A build chosen from the CPU and forcible by tests (the epilogue's, bf16.h's
 * packers'): *flag is 1 (AVX2), 0 (baseline) or -1 (not asked yet: ask the CPU and
 * remember; a race only asks twice). */
static inline int bp_cpu_choose_avx2(int *flag)
{
    int isa = __atomic_load_n(flag, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = bp_cpu_avx2() ? 1 : 0;
        __atomic_store_n(flag, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

/* Lane masks for the first n lanes of one / of the second vector of a row. */
BP_INLINE_AVX2 __m256i bp_mask8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
BP_INLINE_AVX2 __m256i bp_mask4(int n)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* Fetch the tile's rows of C while the K loop runs (they are read and written after it). */
BP_INLINE_AVX2 void bp_prefetch_c(const void *c, ptrdiff_t rsc_bytes, int mr, int row_bytes)
{
    const char *p = (const char *)c;
    for (int i = 0; i < mr; ++i, p += rsc_bytes) {
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p + row_bytes - 1, _MM_HINT_T0);
    }
}

/* One tile row: c[0:nr] := alpha*x + beta*c[0:nr]; masked unless the row is full. */
BP_INLINE_AVX2 void bp_row_f32(float *c, __m256 x0, __m256 x1, __m256 va, __m256 vb,
                               int beta0, int nv, int full, __m256i m0, __m256i m1)
{
    x0 = _mm256_mul_ps(va, x0);
    x1 = _mm256_mul_ps(va, x1);
    if (full) {
        if (!beta0) x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), x0);
        _mm256_storeu_ps(c, x0);
        if (nv == 2) {
            if (!beta0) x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), x1);
            _mm256_storeu_ps(c + 8, x1);
        }
    } else {
        if (!beta0) x0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c, m0), x0);
        _mm256_maskstore_ps(c, m0, x0);
        if (nv == 2) {
            if (!beta0) x1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c + 8, m1), x1);
            _mm256_maskstore_ps(c + 8, m1, x1);
        }
    }
}

BP_INLINE_AVX2 void bp_row_f64(double *c, __m256d x0, __m256d x1, __m256d va, __m256d vb,
                               int beta0, int nv, int full, __m256i m0, __m256i m1)
{
    x0 = _mm256_mul_pd(va, x0);
    x1 = _mm256_mul_pd(va, x1);
    if (full) {
        if (!beta0) x0 = _mm256_fmadd_pd(vb, _mm256_loadu_pd(c), x0);
        _mm256_storeu_pd(c, x0);
        if (nv == 2) {
            if (!beta0) x1 = _mm256_fmadd_pd(vb, _mm256_loadu_pd(c + 4), x1);
            _mm256_storeu_pd(c + 4, x1);
        }
    } else {
        if (!beta0) x0 = _mm256_fmadd_pd(vb, _mm256_maskload_pd(c, m0), x0);
        _mm256_maskstore_pd(c, m0, x0);
        if (nv == 2) {
            if (!beta0) x1 = _mm256_fmadd_pd(vb, _mm256_maskload_pd(c + 4, m1), x1);
            _mm256_maskstore_pd(c + 4, m1, x1);
        }
    }
}

/* The tile with nv = 2 vectors per row (nr > NR/2) or 1 (narrow edge tiles); written
 * out per type rather than macro-generated, since the tile is the point. */
BP_INLINE_AVX2 void bp_ukr_f32_avx2_tile(const int nv, ptrdiff_t k, const float *a,
        ptrdiff_t rsa, ptrdiff_t csa, const float *b, const float *alpha, const float *beta,
        float *c, ptrdiff_t rsc, int mr, int nr)
{
    const ptrdiff_t o1 = BP_ROW(1), o2 = BP_ROW(2), o3 = BP_ROW(3), o4 = BP_ROW(4), o5 = BP_ROW(5);
    bp_prefetch_c(c, rsc * (ptrdiff_t)sizeof(float), mr, nr * (int)sizeof(float));
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (ptrdiff_t p = 0; p < k; ++p, a += csa, b += BP_NR_F32) {
        const __m256 b0 = _mm256_load_ps(b);
        const __m256 b1 = nv == 2 ? _mm256_load_ps(b + 8) : b0;
        __m256 x;
        x = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(x, b0, c00); if (nv == 2) c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a + o1);
        c10 = _mm256_fmadd_ps(x, b0, c10); if (nv == 2) c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a + o2);
        c20 = _mm256_fmadd_ps(x, b0, c20); if (nv == 2) c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a + o3);
        c30 = _mm256_fmadd_ps(x, b0, c30); if (nv == 2) c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a + o4);
        c40 = _mm256_fmadd_ps(x, b0, c40); if (nv == 2) c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a + o5);
        c50 = _mm256_fmadd_ps(x, b0, c50); if (nv == 2) c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    const __m256 va = _mm256_set1_ps(*alpha), vb = _mm256_set1_ps(*beta);
    const int beta0 = *beta == 0, full = nr == 8 * nv;
    const __m256i m0 = bp_mask8(nr), m1 = bp_mask8(nr - 8);
    bp_row_f32(c, c00, c01, va, vb, beta0, nv, full, m0, m1);
    if (mr > 1) bp_row_f32(c + rsc, c10, c11, va, vb, beta0, nv, full, m0, m1);
    if (mr > 2) bp_row_f32(c + 2 * rsc, c20, c21, va, vb, beta0, nv, full, m0, m1);
    if (mr > 3) bp_row_f32(c + 3 * rsc, c30, c31, va, vb, beta0, nv, full, m0, m1);
    if (mr > 4) bp_row_f32(c + 4 * rsc, c40, c41, va, vb, beta0, nv, full, m0, m1);
    if (mr > 5) bp_row_f32(c + 5 * rsc, c50, c51, va, vb, beta0, nv, full, m0, m1);
}

BP_INLINE_AVX2 void bp_ukr_f64_avx2_tile(const int nv, ptrdiff_t k, const double *a,
        ptrdiff_t rsa, ptrdiff_t csa, const double *b, const double *alpha, const double *beta,
        double *c, ptrdiff_t rsc, int mr, int nr)
{
    const ptrdiff_t o1 = BP_ROW(1), o2 = BP_ROW(2), o3 = BP_ROW(3), o4 = BP_ROW(4), o5 = BP_ROW(5);
    bp_prefetch_c(c, rsc * (ptrdiff_t)sizeof(double), mr, nr * (int)sizeof(double));
    __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (ptrdiff_t p = 0; p < k; ++p, a += csa, b += BP_NR_F64) {
        const __m256d b0 = _mm256_load_pd(b);
        const __m256d b1 = nv == 2 ? _mm256_load_pd(b + 4) : b0;
        __m256d x;
        x = _mm256_broadcast_sd(a);
        c00 = _mm256_fmadd_pd(x, b0, c00); if (nv == 2) c01 = _mm256_fmadd_pd(x, b1, c01);
        x = _mm256_broadcast_sd(a + o1);
        c10 = _mm256_fmadd_pd(x, b0, c10); if (nv == 2) c11 = _mm256_fmadd_pd(x, b1, c11);
        x = _mm256_broadcast_sd(a + o2);
        c20 = _mm256_fmadd_pd(x, b0, c20); if (nv == 2) c21 = _mm256_fmadd_pd(x, b1, c21);
        x = _mm256_broadcast_sd(a + o3);
        c30 = _mm256_fmadd_pd(x, b0, c30); if (nv == 2) c31 = _mm256_fmadd_pd(x, b1, c31);
        x = _mm256_broadcast_sd(a + o4);
        c40 = _mm256_fmadd_pd(x, b0, c40); if (nv == 2) c41 = _mm256_fmadd_pd(x, b1, c41);
        x = _mm256_broadcast_sd(a + o5);
        c50 = _mm256_fmadd_pd(x, b0, c50); if (nv == 2) c51 = _mm256_fmadd_pd(x, b1, c51);
    }
    const __m256d va = _mm256_set1_pd(*alpha), vb = _mm256_set1_pd(*beta);
    const int beta0 = *beta == 0, full = nr == 4 * nv;
    const __m256i m0 = bp_mask4(nr), m1 = bp_mask4(nr - 4);
    bp_row_f64(c, c00, c01, va, vb, beta0, nv, full, m0, m1);
    if (mr > 1) bp_row_f64(c + rsc, c10, c11, va, vb, beta0, nv, full, m0, m1);
    if (mr > 2) bp_row_f64(c + 2 * rsc, c20, c21, va, vb, beta0, nv, full, m0, m1);
    if (mr > 3) bp_row_f64(c + 3 * rsc, c30, c31, va, vb, beta0, nv, full, m0, m1);
    if (mr > 4) bp_row_f64(c + 4 * rsc, c40, c41, va, vb, beta0, nv, full, m0, m1);
    if (mr > 5) bp_row_f64(c + 5 * rsc, c50, c51, va, vb, beta0, nv, full, m0, m1);
}

/* Edge tiles at most half as wide as NR use one vector per row: no wasted FMAs. */
static BP_AVX2 void bp_ukr_f32_avx2(ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                                    const float *b, const float *alpha, const float *beta,
                                    float *c, ptrdiff_t rsc, int mr, int nr)
{
    if (nr > 8) bp_ukr_f32_avx2_tile(2, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
    else        bp_ukr_f32_avx2_tile(1, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
}

static BP_AVX2 void bp_ukr_f64_avx2(ptrdiff_t k, const double *a, ptrdiff_t rsa, ptrdiff_t csa,
                                    const double *b, const double *alpha, const double *beta,
                                    double *c, ptrdiff_t rsc, int mr, int nr)
{
    if (nr > 4) bp_ukr_f64_avx2_tile(2, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
    else        bp_ukr_f64_avx2_tile(1, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
}

#else  /* not x86: the "avx2" names fall back to the portable tiles */
#define BP_HAVE_AVX2_KERNELS 0
static int bp_cpu_avx2(void) { return 0; }
static int bp_cpu_fma(void) { return 0; }
#define bp_ukr_f32_avx2 bp_ukr_f32_portable
#define bp_ukr_f64_avx2 bp_ukr_f64_portable
#endif

/* The 512-bit tiles (and their emulated twins, on every platform). */
#include "microkernel_avx512.h"
/* The AMX bfloat16 tile (after the 512-bit tiles: its no-AMX build names theirs). */
#include "microkernel_amx.h"

/* The largest tile of any kernel, in elements (a scratch tile of this size
 * serves every kernel: 32 x 32 floats (AMX), 8 x 48, 8 x 24 doubles, 6 x 16, 6 x 8). */
#define BP_TILE_MAX (BP_MR_AMX * BP_NR_AMX)

#undef BP_ROW
#endif
