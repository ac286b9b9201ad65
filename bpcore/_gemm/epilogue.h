/* epilogue.h -- what the GEMM store applies to a finished tile of C
 * (included by _gemm.pyx only; the kinds are in bp_gemm.h).
 *
 * Runs right after the micro-kernels stored the last K block of a tile or of
 * a block of tiles (at most EPI_WHOLE_BYTES of C, _gemm.pyx; a block of rows
 * in small.h), while it is still in L1:
 *
 *     C[0:mr, 0:nr] := epi(C[0:mr, 0:nr])
 *
 *   c     the tile, row stride rsc, column stride csc
 *   bias  bias[j0:j0+nr] of the tile's columns (BIAS* kinds)
 *   aux   aux[i0, j0] of the tile, row stride ldaux, unit column stride
 *         (MUL_D* kinds: the activation saved by the forward pass)
 *
 * Design: the epilogue costs O(m*n) against the product's O(m*n*k), but only
 * while it runs at vector speed.  Written plainly it did not: under GCC's
 * default -ftrapping-math a floating-point compare feeding a select stays a
 * branch, and on the random signs of a ReLU layer's pre-activations that
 * branch mispredicted every other element -- the ReLU derivative of a
 * 256x256 delta took ~475 us of a 256-784-256-10 step's ~6.8 ms, as long as
 * the product it finished.  So:
 *   - the ReLU kinds turn the compare into an integer mask (as pointwise.h
 *     does for leaky_relu) and select bits, which vectorises; the floats are
 *     the ones the plain code gave (z or +0.0; v * 1.0 or v * 0.0);
 *   - sigmoid and tanh run through vmath.h's vector kernels on one row at a
 *     time (gathered into a small buffer when the tile's columns are
 *     strided), so the fused step computes the same values as the
 *     standalone sigmoid_forward / tanh_forward kernels;
 *   - every kind is a row function called through BP_EPI_ROW: a unit column
 *     stride (every tile the training core stores) gets loops the compiler
 *     can vectorise; other strides the same arithmetic, scalar.
 */
#ifndef BP_EPILOGUE_H
#define BP_EPILOGUE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "bp_gemm.h"
#include "microkernel.h"
#include "vmath.h"

/* Columns of one row that sigmoid/tanh gather at a time when csc != 1. */
#define BP_EPI_CHUNK 64

/* NOTE: compiled bodies, without contraction.  The blocked path calls the
 * epilogue from baseline x86-64 code, the small path (small.h) from AVX2+FMA
 * functions; inlined there, GCC's default -ffp-contract=fast turned dtanh's
 * 1 - x*x into one fused multiply-add and the two paths' floats differed
 * (tests/test_gemm.py's bitwise small/blocked tests caught it).  So an entry
 * is never inlined, and nothing in it contracts on any target (the two
 * builds below rely on that too). */
#define BP_EPI_HELPER static inline __attribute__((optimize("fp-contract=off")))
#define BP_EPI_ENTRY static __attribute__((noinline, optimize("fp-contract=off")))

/* Row function F(nr, ci, csc, p) on row ci: called with a literal unit stride
 * when the tile has one, so that the inlined loop vectorises, else with csc;
 * the same operations on each element either way. */
#define BP_EPI_ROW(F, nr, ci, csc, p)                                           \
    do {                                                                        \
        if ((csc) == 1)                                                         \
            F(nr, ci, 1, p);                                                    \
        else                                                                    \
            F(nr, ci, csc, p);                                                  \
    } while (0)

/* NOTE: relu as "z < 0 ? 0 : z" keeps NaN (as np.maximum(z, 0) does): the
 * mask keeps z's bits unless z < 0, where they become +0.0's (all zero).  The
 * derivative at the kink z = 0 is taken as 0 ("aux > 0"), as in the
 * reference: v is multiplied by 1.0 or by 0.0 (so NaN and inf in v behave as
 * under the plain multiply). */
#define BP_DEFINE_EPILOGUE(NAME, T, U, ONE_BITS, VSIGMOID, VTANH, ATTR)          \
BP_EPI_HELPER ATTR void NAME##_relu_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,          \
                                   const T *bias)                               \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) {                                        \
        const T z = ci[j * csc] + bias[j];                                      \
        U bits;                                                                 \
        memcpy(&bits, &z, sizeof bits);                                         \
        bits &= ~(U)(-(U)(z < 0));                                              \
        memcpy(ci + j * csc, &bits, sizeof bits);                               \
    }                                                                           \
}                                                                               \
BP_EPI_HELPER ATTR void NAME##_drelu_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,         \
                                    const T *xi)                                \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) {                                        \
        const U bits = (U)ONE_BITS & (U)(-(U)(xi[j] > 0));                      \
        T s;                                                                    \
        memcpy(&s, &bits, sizeof s);                                            \
        ci[j * csc] *= s;                                                       \
    }                                                                           \
}                                                                               \
BP_EPI_HELPER ATTR void NAME##_dsigmoid_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,      \
                                       const T *xi)                             \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] *= xi[j] * (1 - xi[j]);      \
}                                                                               \
BP_EPI_HELPER ATTR void NAME##_dtanh_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,         \
                                    const T *xi)                                \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] *= 1 - xi[j] * xi[j];        \
}                                                                               \
BP_EPI_HELPER ATTR void NAME##_bias_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,          \
                                   const T *bias)                               \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] += bias[j];                  \
}                                                                               \
/* ci[j] := f(ci[j] + bias[j]) through the vector kernel f (vmath.h) */         \
BP_EPI_HELPER ATTR void NAME##_vector_row(void (*f)(const T *, T *, Py_ssize_t),     \
                                     ptrdiff_t nr, T *ci, ptrdiff_t csc,        \
                                     const T *bias)                             \
{                                                                               \
    T buf[BP_EPI_CHUNK];                                                        \
    for (ptrdiff_t j0 = 0; j0 < nr; j0 += BP_EPI_CHUNK) {                       \
        const ptrdiff_t w = nr - j0 < BP_EPI_CHUNK ? nr - j0 : BP_EPI_CHUNK;    \
        for (ptrdiff_t j = 0; j < w; ++j)                                       \
            buf[j] = ci[(j0 + j) * csc] + bias[j0 + j];                         \
        f(buf, buf, w);                                                         \
        for (ptrdiff_t j = 0; j < w; ++j)                                       \
            ci[(j0 + j) * csc] = buf[j];                                        \
    }                                                                           \
}                                                                               \
BP_EPI_ENTRY ATTR void NAME(int kind, ptrdiff_t mr, ptrdiff_t nr, T *c, ptrdiff_t rsc,     \
                 ptrdiff_t csc, const T *bias, const T *aux, ptrdiff_t ldaux)   \
{                                                                               \
    for (ptrdiff_t i = 0; i < mr; ++i) {                                        \
        T *ci = c + i * rsc;                                                    \
        const T *xi = aux + i * ldaux;                                          \
        switch (kind) {                                                         \
        case BP_EPI_BIAS:                                                       \
        case BP_EPI_BIAS_IDENTITY:                                              \
            BP_EPI_ROW(NAME##_bias_row, nr, ci, csc, bias);                     \
            break;                                                              \
        case BP_EPI_BIAS_RELU:                                                  \
            BP_EPI_ROW(NAME##_relu_row, nr, ci, csc, bias);                     \
            break;                                                              \
        case BP_EPI_BIAS_SIGMOID:                                               \
            NAME##_vector_row(VSIGMOID, nr, ci, csc, bias);                     \
            break;                                                              \
        case BP_EPI_BIAS_TANH:                                                  \
            NAME##_vector_row(VTANH, nr, ci, csc, bias);                        \
            break;                                                              \
        case BP_EPI_MUL_DRELU:                                                  \
            BP_EPI_ROW(NAME##_drelu_row, nr, ci, csc, xi);                      \
            break;                                                              \
        case BP_EPI_MUL_DSIGMOID:                                               \
            BP_EPI_ROW(NAME##_dsigmoid_row, nr, ci, csc, xi);                   \
            break;                                                              \
        case BP_EPI_MUL_DTANH:                                                  \
            BP_EPI_ROW(NAME##_dtanh_row, nr, ci, csc, xi);                      \
            break;                                                              \
        default:                                                                \
            return;                                                             \
        }                                                                       \
    }                                                                           \
}

/* NOTE: two builds of the same source.  The baseline (SSE2) one does not
 * vectorise the ReLU masks' loops for float64 (GCC 12: "no vectype"; ~11
 * instructions an element, ~6 us of a digits step); an AVX2 one does.  AVX2
 * only, not FMA: with FMA enabled GCC could contract "1 - x * x" (DTANH)
 * into one rounding (fp-contract=off above forbids it too), and the two builds must give the same floats (every
 * operation here is one IEEE operation in source order: the same bits on any
 * x86 instruction set without contraction).  Chosen once, from the CPU. */
#define BP_EPILOGUE_PLAIN
BP_DEFINE_EPILOGUE(bp_epilogue_f32_plain, float, uint32_t, 0x3f800000u, bp_sigmoid_f32,
                   bp_tanh_f32, BP_EPILOGUE_PLAIN)
BP_DEFINE_EPILOGUE(bp_epilogue_f64_plain, double, uint64_t, 0x3ff0000000000000ull,
                   bp_sigmoid_f64, bp_tanh_f64, BP_EPILOGUE_PLAIN)

#if defined(__x86_64__) || defined(__i386__)
#define BP_EPILOGUE_AVX2 __attribute__((target("avx2")))
BP_DEFINE_EPILOGUE(bp_epilogue_f32_avx2, float, uint32_t, 0x3f800000u, bp_sigmoid_f32,
                   bp_tanh_f32, BP_EPILOGUE_AVX2)
BP_DEFINE_EPILOGUE(bp_epilogue_f64_avx2, double, uint64_t, 0x3ff0000000000000ull,
                   bp_sigmoid_f64, bp_tanh_f64, BP_EPILOGUE_AVX2)
/* 1 AVX2, 0 baseline, -1 not asked yet (microkernel.h's bp_cpu_choose_avx2). */
static int bp_epilogue_isa = -1;
static inline int bp_epilogue_use_avx2(void) { return bp_cpu_choose_avx2(&bp_epilogue_isa); }
#else
#define bp_epilogue_f32_avx2 bp_epilogue_f32_plain
#define bp_epilogue_f64_avx2 bp_epilogue_f64_plain
static inline int bp_epilogue_use_avx2(void) { return 0; }
#endif

#define BP_DEFINE_EPILOGUE_DISPATCH(NAME, T)                                    \
static void NAME(int kind, ptrdiff_t mr, ptrdiff_t nr, T *c, ptrdiff_t rsc,     \
                 ptrdiff_t csc, const T *bias, const T *aux, ptrdiff_t ldaux)   \
{                                                                               \
    if (bp_epilogue_use_avx2())                                                 \
        NAME##_avx2(kind, mr, nr, c, rsc, csc, bias, aux, ldaux);               \
    else                                                                        \
        NAME##_plain(kind, mr, nr, c, rsc, csc, bias, aux, ldaux);              \
}
BP_DEFINE_EPILOGUE_DISPATCH(bp_epilogue_f32, float)
BP_DEFINE_EPILOGUE_DISPATCH(bp_epilogue_f64, double)

#endif
