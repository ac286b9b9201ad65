/* reduce.h -- one-pass loss kernels whose sums the compiler may vectorise.
 *
 * Without -ffast-math a floating-point sum cannot be reordered, so a plain
 * loop runs one add per element in sequence.  `#pragma omp simd reduction`
 * (honoured with -fopenmp or -fopenmp-simd) allows exactly that reordering
 * for the one loop, into vector partial sums -- the numbers then differ from
 * a sequential sum only by rounding.
 */
#ifndef BP_REDUCE_H
#define BP_REDUCE_H

#include <stddef.h>

/* loss := scale * sum((p - t)^2), accumulated in double;
 * grad (may be NULL, may alias p) := 2 * scale * (p - t). */
#define BP_DEFINE_MSE(NAME, T)                                                   \
static double NAME(const T *p, const T *t, T *grad, ptrdiff_t n, double scale)   \
{                                                                                \
    double sum = 0.0;                                                            \
    const T two_scale = (T)(2.0 * scale);                                        \
    if (grad) {                                                                  \
        _Pragma("omp simd reduction(+:sum)")                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                      \
            const T r = p[i] - t[i];                                             \
            sum += (double)r * (double)r;                                        \
            grad[i] = r * two_scale;                                             \
        }                                                                        \
    } else {                                                                     \
        _Pragma("omp simd reduction(+:sum)")                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                      \
            const T r = p[i] - t[i];                                             \
            sum += (double)r * (double)r;                                        \
        }                                                                        \
    }                                                                            \
    return scale * sum;                                                          \
}

BP_DEFINE_MSE(bp_mse_f32, float)
BP_DEFINE_MSE(bp_mse_f64, double)

#endif
