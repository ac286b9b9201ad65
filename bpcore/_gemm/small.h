/* small.h -- the GEMM's path for products with few rows of C: A and B read
 * in place, nothing packed (included by kernels.h only).
 *
 * Design:
 *
 * * What it is for.  An MLP's prediction on one row (or a few) is a chain of
 *   products 1 x k times k x n with the weights W stored (k, n) row-major:
 *   every row of B is contiguous.  The blocked path (_gemm.pyx) packs all of
 *   B into B~ before it multiplies, so such a product moves B twice (and
 *   writes it once) for only m uses of each element; at m = 1 the packing
 *   is most of the call.  Here the tiles read B's rows where they are
 *   (unaligned loads, the last vector of a row masked), and A through its
 *   strides, as the micro-kernels already do.
 * * The same numbers as the blocked path, bit for bit.  Every element of C
 *   is computed by exactly the operations the chosen kernel's micro-kernel
 *   applies to it: a fresh accumulator per K block of the kernel's KC, the
 *   terms added in k order (one fused multiply-add each for the AVX2 and
 *   AVX-512 kernels -- and their emulated twin, whose fmadd is fma() --;
 *   a multiply then an add for the portable one, written as the portable
 *   tile writes it), then c := alpha*acc (+ beta*c: one FMA, or the portable
 *   tile's expression), beta replaced by 1 after the first K block, and the
 *   epilogue on each tile after its last K block.  Nothing else depends on
 *   how M and N are split, so the tiles here may have their own shapes:
 *   a wide one row (8 vectors, 8 independent FMA chains to hide the FMA
 *   latency where a 6 x 16 tile would compute 6 rows to store 1) and
 *   narrower, taller ones for 2-6 rows.  So each kernel row of kernels.h
 *   names the small-path function of its arithmetic (FMA or multiply-add),
 *   and _gemm.pyx passes that kernel's KC.
 * * When.  _gemm.pyx takes this path when B and C have unit column strides
 *   and C has few rows (SMALL_M_MAX and the thresholds after it, measured):
 *   each block of up to BP_SMALL_RMAX rows streams B once, so up to 8 rows
 *   B is read about as often as packing it would read it, and more rows pay
 *   while B stays in L2.  A transposed B (columns contiguous) would need a
 *   gather per B row: the blocked path packs it by register transposes.
 * * Threads: _gemm.pyx gives each thread of the pool a slice of C's columns
 *   (whole 256-bit vectors, so only the last slice has a masked edge, as the
 *   whole product would), each slice a call here with B, C, bias and aux
 *   offset to its first column.  An element's operations depend on its row
 *   and column alone, so the slices give the whole product's bits.
 *
 * Tiles: r rows (1..BP_SMALL_RMAX) x nv vectors; a block of rows takes a column block
 * as wide as its row count allows (BP_SMALL_NV), the last block of a row of
 * tiles as few vectors as its width needs (no wasted FMAs at the edge).  The
 * epilogue runs once per block of rows, over all n columns: per 6 x 8 tile its
 * row loops were too short to vectorise (call and set-up cost per 8 elements).
 */
#ifndef BP_SMALL_H
#define BP_SMALL_H

#include <math.h>
#include <stddef.h>
#include <string.h>
#include "bp_gemm.h"
#include "epilogue.h"
#include "microkernel.h"

#define BP_SMALL_RMAX 6

/* Rows of B the tiles of at most two vectors a row (the 4-6-row tiles, and
 * narrow ones at the right edge) prefetch ahead, into L1.  Such a tile walks
 * down a column panel of B of up to 16 floats, one 64-byte line per k step at B's row stride
 * (1 KiB for a 256-wide layer), so a 4 KiB page holds only 4 of its lines and
 * the hardware prefetchers, which stop at page boundaries, fall behind; the
 * first block of rows reads B from L3 (~100 cycles), 12 k steps of 12 FMAs
 * ahead.  Measured on Zen 1, 784-256-256-10 predict on 32 rows: ~3% faster
 * (interleaved medians).  A prefetch never faults, past B's end included. */
#define BP_SMALL_PF_ROWS 12

typedef void (*bp_small_f32_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t kcb,
                                float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                                const float *b, ptrdiff_t rsb, float beta, float *c,
                                ptrdiff_t rsc, int epi, const float *bias, const float *aux,
                                ptrdiff_t ldaux);
typedef void (*bp_small_f64_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t kcb,
                                double alpha, const double *a, ptrdiff_t rsa, ptrdiff_t csa,
                                const double *b, ptrdiff_t rsb, double beta, double *c,
                                ptrdiff_t rsc, int epi, const double *bias, const double *aux,
                                ptrdiff_t ldaux);

/* The loops around a tile function TILE(r, w, kc, a, rsa, csa, b, rsb, alpha, beta, c, rsc)
 * that computes C[0:r, 0:w] (w <= COLS(r)): K blocks of kcb (the kernel's KC), rows
 * in blocks of up to BP_SMALL_RMAX, columns in blocks of COLS(r). */
#define BP_DEFINE_SMALL_LOOPS(NAME, T, ATTR, TILE, COLS, EPI)                             \
static ATTR void NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t kcb, T alpha,     \
                      const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b, ptrdiff_t rsb, \
                      T beta, T *c, ptrdiff_t rsc, int epi, const T *bias, const T *aux, \
                      ptrdiff_t ldaux)                                                    \
{                                                                                         \
    for (ptrdiff_t pc = 0; pc < k; pc += kcb) {                                           \
        const ptrdiff_t kc = k - pc < kcb ? k - pc : kcb;                                 \
        const T bt = pc == 0 ? beta : (T)1;                                               \
        const int last = pc + kc == k && epi != BP_EPI_NONE;                              \
        for (ptrdiff_t i = 0; i < m; i += BP_SMALL_RMAX) {                                \
            const int r = (int)(m - i < BP_SMALL_RMAX ? m - i : BP_SMALL_RMAX);           \
            const ptrdiff_t nb = COLS(r);                                                 \
            for (ptrdiff_t j = 0; j < n; j += nb) {                                       \
                const int w = (int)(n - j < nb ? n - j : nb);                             \
                T *cp = c + i * rsc + j;                                                  \
                TILE(r, w, kc, a + i * rsa + pc * csa, rsa, csa, b + pc * rsb + j, rsb,   \
                     alpha, bt, cp, rsc);                                                 \
            }                                                                             \
            /* the block's rows whole (still in L1): one epilogue call per row,        */ \
            /* not per tile, so its loops run long (elementwise: the same floats)     */ \
            if (last)                                                                     \
                EPI(epi, r, n, c + i * rsc, rsc, 1, bias,                                 \
                    aux != NULL ? aux + i * ldaux : NULL, ldaux);                         \
        }                                                                                 \
    }                                                                                     \
}

/* ------------------------------------------------------------------------ */
/* Plain C twins, any width up to 16 floats / 8 doubles.                      */
/* ------------------------------------------------------------------------ */

/* FMA arithmetic (the AVX-512 tile's, emulated: fmadd is fma(), mul a product). */
#define BP_DEFINE_SMALL_FMA_SCALAR(NAME, T, FMA, NB, COLS, EPI)                         \
static void NAME##_tile(int r, int w, ptrdiff_t kc, const T *a, ptrdiff_t rsa, ptrdiff_t csa,  \
                 const T *b, ptrdiff_t rsb, T alpha, T beta, T *c, ptrdiff_t rsc)        \
{                                                                                       \
    T acc[BP_SMALL_RMAX][NB];                                                           \
    memset(acc, 0, sizeof acc);                                                         \
    for (ptrdiff_t p = 0; p < kc; ++p, a += csa, b += rsb)                              \
        for (int i = 0; i < r; ++i) {                                                   \
            const T x = a[i * rsa];                                                     \
            for (int j = 0; j < w; ++j) acc[i][j] = FMA(x, b[j], acc[i][j]);            \
        }                                                                               \
    for (int i = 0; i < r; ++i)                                                         \
        for (int j = 0; j < w; ++j) {                                                   \
            T x = alpha * acc[i][j];                                                    \
            if (beta != 0) x = FMA(beta, c[i * rsc + j], x);                            \
            c[i * rsc + j] = x;                                                         \
        }                                                                               \
}                                                                                       \
BP_DEFINE_SMALL_LOOPS(NAME, T, , NAME##_tile, COLS, EPI)

/* Multiply-add arithmetic: the portable tile's vectors and its store expression. */
#define BP_DEFINE_SMALL_PORTABLE(NAME, T, V, NB, COLS, EPI)                             \
static void NAME##_tile(int r, int w, ptrdiff_t kc, const T *a, ptrdiff_t rsa, ptrdiff_t csa,  \
                 const T *b, ptrdiff_t rsb, T alpha, T beta, T *c, ptrdiff_t rsc)        \
{                                                                                       \
    enum { W = sizeof(V) / sizeof(T), NV = NB / W };                                    \
    V acc[BP_SMALL_RMAX][NV];                                                           \
    T tile[BP_SMALL_RMAX][NB];                                                          \
    const int nv = (w + W - 1) / W;                                                     \
    memset(acc, 0, sizeof acc);                                                         \
    for (ptrdiff_t p = 0; p < kc; ++p, a += csa, b += rsb) {                            \
        V bv[NV];                                                                       \
        memset(bv, 0, sizeof bv);                                                       \
        memcpy(bv, b, (size_t)w * sizeof(T));   /* zero beyond w, as B~ is */           \
        for (int i = 0; i < r; ++i) {                                                   \
            const T x = a[i * rsa];                                                     \
            for (int v = 0; v < nv; ++v) acc[i][v] += x * bv[v];                        \
        }                                                                               \
    }                                                                                   \
    memcpy(tile, acc, sizeof tile);                                                     \
    for (int i = 0; i < r; ++i)                                                         \
        for (int j = 0; j < w; ++j)                                                     \
            c[i * rsc + j] = beta == 0 ? alpha * tile[i][j]                             \
                                       : alpha * tile[i][j] + beta * c[i * rsc + j];    \
}                                                                                       \
BP_DEFINE_SMALL_LOOPS(NAME, T, , NAME##_tile, COLS, EPI)

#define BP_SMALL_COLS_16(r) 16
#define BP_SMALL_COLS_8(r) 8

BP_DEFINE_SMALL_FMA_SCALAR(bp_small_f32_fma_c, float, fmaf, 16, BP_SMALL_COLS_16, bp_epilogue_f32)
BP_DEFINE_SMALL_FMA_SCALAR(bp_small_f64_fma_c, double, fma, 8, BP_SMALL_COLS_8, bp_epilogue_f64)
BP_DEFINE_SMALL_PORTABLE(bp_small_f32_portable, float, bp_v4f, 16, BP_SMALL_COLS_16,
                         bp_epilogue_f32)
BP_DEFINE_SMALL_PORTABLE(bp_small_f64_portable, double, bp_v2d, 8, BP_SMALL_COLS_8,
                         bp_epilogue_f64)

/* ------------------------------------------------------------------------ */
/* AVX2 + FMA: the path of the avx2_fma and avx512 kernels (an FMA is an FMA */
/* at any vector width).                                                     */
/* ------------------------------------------------------------------------ */
#if BP_HAVE_AVX2_KERNELS

/* Vectors per row of a tile of r rows: r * nv accumulators, nv B vectors, a
 * broadcast and a mask within the 16 ymm registers (6 x 2 is the micro-kernel's
 * tile); one row gets 8 independent chains, 4 cycles of FMA latency hidden. */
#define BP_SMALL_NV(r) ((r) == 1 ? 8 : (r) == 2 ? 4 : (r) == 3 ? 3 : 2)

/* The operations of one element type: OP(fmadd) is _mm256_fmadd_ps or _pd, etc. */
#define BP_SMALL_OPS_F32(op) _mm256_##op##_ps
#define BP_SMALL_OPS_F64(op) _mm256_##op##_pd

/* Named accumulators (an array of them is kept on the stack by GCC, a store per FMA);
 * those past R rows or NV vectors are never used and vanish. */
#define BP_SMALL_ROW_DECL(VT, i)                                                        \
    VT c##i##0 = z, c##i##1 = z, c##i##2 = z, c##i##3 = z,                              \
       c##i##4 = z, c##i##5 = z, c##i##6 = z, c##i##7 = z;
#define BP_SMALL_FMA(OP, i, v) if (v < NV) c##i##v = OP(fmadd)(x, b##v, c##i##v);
#define BP_SMALL_ROW_FMA(OP, BCAST, i)                                                  \
    if (i < R) {                                                                        \
        x = BCAST(a + i * rsa);                                                         \
        BP_SMALL_FMA(OP, i, 0) BP_SMALL_FMA(OP, i, 1) BP_SMALL_FMA(OP, i, 2)            \
        BP_SMALL_FMA(OP, i, 3) BP_SMALL_FMA(OP, i, 4) BP_SMALL_FMA(OP, i, 5)            \
        BP_SMALL_FMA(OP, i, 6) BP_SMALL_FMA(OP, i, 7)                                   \
    }
/* B row vector v: loaded whole, or masked when it is the last one and not full. */
#define BP_SMALL_LOAD_B(OP, v)                                                          \
    b##v = v < NV - 1 || (v == NV - 1 && full) ? OP(loadu)(b + W * v)                   \
         : v == NV - 1 ? OP(maskload)(b + W * v, mk) : z;
/* c := alpha*acc (+ beta*c by one FMA), the bp_row_* store of microkernel.h. */
#define BP_SMALL_STORE(OP, i, v)                                                        \
    if (i < R && v < NV) {                                                              \
        __typeof__(c) cv = c + i * rsc + W * v;                                         \
        x = OP(mul)(va, c##i##v);                                                       \
        if (v < NV - 1 || full) {                                                       \
            if (!beta0) x = OP(fmadd)(vb, OP(loadu)(cv), x);                            \
            OP(storeu)(cv, x);                                                          \
        } else {                                                                        \
            if (!beta0) x = OP(fmadd)(vb, OP(maskload)(cv, mk), x);                     \
            OP(maskstore)(cv, mk, x);                                                   \
        }                                                                               \
    }
#define BP_SMALL_ROW_STORE(OP, i)                                                       \
    BP_SMALL_STORE(OP, i, 0) BP_SMALL_STORE(OP, i, 1) BP_SMALL_STORE(OP, i, 2)          \
    BP_SMALL_STORE(OP, i, 3) BP_SMALL_STORE(OP, i, 4) BP_SMALL_STORE(OP, i, 5)          \
    BP_SMALL_STORE(OP, i, 6) BP_SMALL_STORE(OP, i, 7)

/* C[0:R, 0:w] with NV vectors per row (R <= 6, NV <= 8, constants where it is
 * inlined), the last vector masked unless `full`. */
#define BP_DEFINE_SMALL_AVX2_TILE(NAME, T, VT, LANES, OP, BCAST, MASK)                      \
BP_INLINE_AVX2 void NAME(const int R, const int NV, const int full, ptrdiff_t kc,       \
                         const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,          \
                         ptrdiff_t rsb, T alpha, T beta, T *c, ptrdiff_t rsc, int w)    \
{                                                                                       \
    enum { W = LANES };                                                                 \
    const __m256i mk = MASK(w - W * (NV - 1));                                          \
    const VT z = OP(setzero)();                                                         \
    BP_SMALL_ROW_DECL(VT, 0) BP_SMALL_ROW_DECL(VT, 1)                                   \
    BP_SMALL_ROW_DECL(VT, 2) BP_SMALL_ROW_DECL(VT, 3)                                   \
    BP_SMALL_ROW_DECL(VT, 4) BP_SMALL_ROW_DECL(VT, 5)                                   \
    VT x, b0, b1, b2, b3, b4, b5, b6, b7;                                               \
    for (ptrdiff_t p = 0; p < kc; ++p, a += csa, b += rsb) {                            \
        if (NV <= 2) _mm_prefetch((const char *)(b + BP_SMALL_PF_ROWS * rsb), _MM_HINT_T0); \
        BP_SMALL_LOAD_B(OP, 0) BP_SMALL_LOAD_B(OP, 1) BP_SMALL_LOAD_B(OP, 2)            \
        BP_SMALL_LOAD_B(OP, 3) BP_SMALL_LOAD_B(OP, 4) BP_SMALL_LOAD_B(OP, 5)            \
        BP_SMALL_LOAD_B(OP, 6) BP_SMALL_LOAD_B(OP, 7)                                   \
        BP_SMALL_ROW_FMA(OP, BCAST, 0) BP_SMALL_ROW_FMA(OP, BCAST, 1)                   \
        BP_SMALL_ROW_FMA(OP, BCAST, 2) BP_SMALL_ROW_FMA(OP, BCAST, 3)                   \
        BP_SMALL_ROW_FMA(OP, BCAST, 4) BP_SMALL_ROW_FMA(OP, BCAST, 5)                   \
    }                                                                                   \
    const VT va = OP(set1)(alpha), vb = OP(set1)(beta);                                 \
    const int beta0 = beta == 0;                                                        \
    BP_SMALL_ROW_STORE(OP, 0) BP_SMALL_ROW_STORE(OP, 1)                                 \
    BP_SMALL_ROW_STORE(OP, 2) BP_SMALL_ROW_STORE(OP, 3)                                 \
    BP_SMALL_ROW_STORE(OP, 4) BP_SMALL_ROW_STORE(OP, 5)                                 \
}

BP_DEFINE_SMALL_AVX2_TILE(bp_small_tile_f32_avx2_rn, float, __m256, 8, BP_SMALL_OPS_F32,
                          _mm256_broadcast_ss, bp_mask8)
BP_DEFINE_SMALL_AVX2_TILE(bp_small_tile_f64_avx2_rn, double, __m256d, 4, BP_SMALL_OPS_F64,
                          _mm256_broadcast_sd, bp_mask4)

#define BP_SMALL_CASE(FN, R, NV)                                                        \
    case NV: FN(R, NV, full, kc, a, rsa, csa, b, rsb, alpha, beta, c, rsc, w); break;

/* The tile of r rows and w columns (w <= W * BP_SMALL_NV(r)) with compile-time shapes. */
#define BP_DEFINE_SMALL_AVX2_DISPATCH(NAME, T, W, FN)                                   \
static BP_AVX2 void NAME(int r, int w, ptrdiff_t kc, const T *a, ptrdiff_t rsa,         \
                         ptrdiff_t csa, const T *b, ptrdiff_t rsb, T alpha, T beta,     \
                         T *c, ptrdiff_t rsc)                                           \
{                                                                                       \
    const int nv = (w + W - 1) / W, full = w == W * nv;                                 \
    switch (r) {                                                                        \
    case 1:                                                                             \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 1, 1) BP_SMALL_CASE(FN, 1, 2) BP_SMALL_CASE(FN, 1, 3)         \
        BP_SMALL_CASE(FN, 1, 4) BP_SMALL_CASE(FN, 1, 5) BP_SMALL_CASE(FN, 1, 6)         \
        BP_SMALL_CASE(FN, 1, 7) BP_SMALL_CASE(FN, 1, 8)                                 \
        }                                                                               \
        break;                                                                          \
    case 2:                                                                             \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 2, 1) BP_SMALL_CASE(FN, 2, 2) BP_SMALL_CASE(FN, 2, 3)         \
        BP_SMALL_CASE(FN, 2, 4)                                                         \
        }                                                                               \
        break;                                                                          \
    case 3:                                                                             \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 3, 1) BP_SMALL_CASE(FN, 3, 2) BP_SMALL_CASE(FN, 3, 3)         \
        }                                                                               \
        break;                                                                          \
    case 4:                                                                             \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 4, 1) BP_SMALL_CASE(FN, 4, 2)                                 \
        }                                                                               \
        break;                                                                          \
    case 5:                                                                             \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 5, 1) BP_SMALL_CASE(FN, 5, 2)                                 \
        }                                                                               \
        break;                                                                          \
    default:                                                                            \
        switch (nv) {                                                                   \
        BP_SMALL_CASE(FN, 6, 1) BP_SMALL_CASE(FN, 6, 2)                                 \
        }                                                                               \
        break;                                                                          \
    }                                                                                   \
}

BP_DEFINE_SMALL_AVX2_DISPATCH(bp_small_tile_f32_avx2, float, 8, bp_small_tile_f32_avx2_rn)
BP_DEFINE_SMALL_AVX2_DISPATCH(bp_small_tile_f64_avx2, double, 4, bp_small_tile_f64_avx2_rn)

#define BP_SMALL_COLS_AVX2_F32(r) (8 * BP_SMALL_NV(r))
#define BP_SMALL_COLS_AVX2_F64(r) (4 * BP_SMALL_NV(r))
BP_DEFINE_SMALL_LOOPS(bp_small_f32_avx2, float, BP_AVX2, bp_small_tile_f32_avx2,
                      BP_SMALL_COLS_AVX2_F32, bp_epilogue_f32)
BP_DEFINE_SMALL_LOOPS(bp_small_f64_avx2, double, BP_AVX2, bp_small_tile_f64_avx2,
                      BP_SMALL_COLS_AVX2_F64, bp_epilogue_f64)

#undef BP_SMALL_CASE
#else  /* not x86: those kernels never run; the names stand for the C twins */
#define bp_small_f32_avx2 bp_small_f32_fma_c
#define bp_small_f64_avx2 bp_small_f64_fma_c
#endif

/* How many products took this path (tests check that they forced it). */
static long bp_small_calls_count = 0;
static inline void bp_small_note(void)
{
    __atomic_fetch_add(&bp_small_calls_count, 1, __ATOMIC_RELAXED);
}
static inline long bp_small_calls(void)
{
    return __atomic_load_n(&bp_small_calls_count, __ATOMIC_RELAXED);
}

#endif
