/* epilogue.h -- what the GEMM store applies to a finished tile of C
 * (included by _gemm.pyx only; the kinds are in bp_gemm.h).
 *
 * Runs once per tile, right after the micro-kernel stored the tile's last K
 * block, while the tile is still in L1:
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
#include "vmath.h"

/* Columns of one row that sigmoid/tanh gather at a time when csc != 1. */
#define BP_EPI_CHUNK 64

/* NOTE: one compiled body, without contraction.  The blocked path calls the
 * epilogue from baseline x86-64 code, the small path (small.h) from AVX2+FMA
 * functions; inlined there, GCC's default -ffp-contract=fast turned dtanh's
 * 1 - x*x into one fused multiply-add and the two paths' floats differed
 * (tests/test_gemm.py's bitwise small/blocked tests caught it).  So the
 * entry is never inlined, and nothing in it contracts on any target. */
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
#define BP_DEFINE_EPILOGUE(NAME, T, U, ONE_BITS, VSIGMOID, VTANH)                \
BP_EPI_HELPER void NAME##_relu_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,          \
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
BP_EPI_HELPER void NAME##_drelu_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,         \
                                    const T *xi)                                \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) {                                        \
        const U bits = (U)ONE_BITS & (U)(-(U)(xi[j] > 0));                      \
        T s;                                                                    \
        memcpy(&s, &bits, sizeof s);                                            \
        ci[j * csc] *= s;                                                       \
    }                                                                           \
}                                                                               \
BP_EPI_HELPER void NAME##_dsigmoid_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,      \
                                       const T *xi)                             \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] *= xi[j] * (1 - xi[j]);      \
}                                                                               \
BP_EPI_HELPER void NAME##_dtanh_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,         \
                                    const T *xi)                                \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] *= 1 - xi[j] * xi[j];        \
}                                                                               \
BP_EPI_HELPER void NAME##_bias_row(ptrdiff_t nr, T *ci, ptrdiff_t csc,          \
                                   const T *bias)                               \
{                                                                               \
    for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] += bias[j];                  \
}                                                                               \
/* ci[j] := f(ci[j] + bias[j]) through the vector kernel f (vmath.h) */         \
BP_EPI_HELPER void NAME##_vector_row(void (*f)(const T *, T *, Py_ssize_t),     \
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
BP_EPI_ENTRY void NAME(int kind, ptrdiff_t mr, ptrdiff_t nr, T *c, ptrdiff_t rsc,     \
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

BP_DEFINE_EPILOGUE(bp_epilogue_f32, float, uint32_t, 0x3f800000u, bp_sigmoid_f32, bp_tanh_f32)
BP_DEFINE_EPILOGUE(bp_epilogue_f64, double, uint64_t, 0x3ff0000000000000ull,
                   bp_sigmoid_f64, bp_tanh_f64)

#endif
