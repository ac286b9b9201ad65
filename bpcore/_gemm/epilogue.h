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
 * Plain C: the epilogue costs O(m*n) against the product's O(m*n*k).
 */
#ifndef BP_EPILOGUE_H
#define BP_EPILOGUE_H

#include <math.h>
#include <stddef.h>
#include "bp_gemm.h"

/* NOTE: sigmoid as 1/(1+exp(-z)) overflows exp for z < -88 (float).  With
 * e = exp(-|z|) <= 1 both branches are safe: s = 1/(1+e) is sigmoid(|z|), and
 * sigmoid(-|z|) = 1 - s = e*s.  (The usual log-sum-exp style trick.) */
static inline float bp_sigmoid_f32(float z)
{
    const float e = expf(-fabsf(z)), s = 1.0f / (1.0f + e);
    return z >= 0 ? s : e * s;
}
static inline double bp_sigmoid_f64(double z)
{
    const double e = exp(-fabs(z)), s = 1.0 / (1.0 + e);
    return z >= 0 ? s : e * s;
}

/* NOTE: relu as "z < 0 ? 0 : z" keeps NaN (as np.maximum(z, 0) does); the
 * derivative at the kink z = 0 is taken as 0 ("aux > 0"), as in the reference. */
#define BP_DEFINE_EPILOGUE(NAME, T, SIGMOID, TANH)                               \
static void NAME(int kind, ptrdiff_t mr, ptrdiff_t nr, T *c, ptrdiff_t rsc,     \
                 ptrdiff_t csc, const T *bias, const T *aux, ptrdiff_t ldaux)   \
{                                                                               \
    for (ptrdiff_t i = 0; i < mr; ++i) {                                        \
        T *ci = c + i * rsc;                                                    \
        const T *xi = aux + i * ldaux;                                          \
        switch (kind) {                                                         \
        case BP_EPI_BIAS:                                                       \
        case BP_EPI_BIAS_IDENTITY:                                              \
            for (ptrdiff_t j = 0; j < nr; ++j) ci[j * csc] += bias[j];          \
            break;                                                              \
        case BP_EPI_BIAS_RELU:                                                  \
            for (ptrdiff_t j = 0; j < nr; ++j) {                                \
                const T z = ci[j * csc] + bias[j];                              \
                ci[j * csc] = z < 0 ? (T)0 : z;                                 \
            }                                                                   \
            break;                                                              \
        case BP_EPI_BIAS_SIGMOID:                                               \
            for (ptrdiff_t j = 0; j < nr; ++j)                                  \
                ci[j * csc] = SIGMOID(ci[j * csc] + bias[j]);                   \
            break;                                                              \
        case BP_EPI_BIAS_TANH:                                                  \
            for (ptrdiff_t j = 0; j < nr; ++j)                                  \
                ci[j * csc] = TANH(ci[j * csc] + bias[j]);                      \
            break;                                                              \
        case BP_EPI_MUL_DRELU:                                                  \
            for (ptrdiff_t j = 0; j < nr; ++j)                                  \
                ci[j * csc] *= (T)(xi[j] > 0);                                  \
            break;                                                              \
        case BP_EPI_MUL_DSIGMOID:                                               \
            for (ptrdiff_t j = 0; j < nr; ++j)                                  \
                ci[j * csc] *= xi[j] * (1 - xi[j]);                             \
            break;                                                              \
        case BP_EPI_MUL_DTANH:                                                  \
            for (ptrdiff_t j = 0; j < nr; ++j)                                  \
                ci[j * csc] *= 1 - xi[j] * xi[j];                               \
            break;                                                              \
        default:                                                                \
            return;                                                             \
        }                                                                       \
    }                                                                           \
}

BP_DEFINE_EPILOGUE(bp_epilogue_f32, float, bp_sigmoid_f32, tanhf)
BP_DEFINE_EPILOGUE(bp_epilogue_f64, double, bp_sigmoid_f64, tanh)

#endif
