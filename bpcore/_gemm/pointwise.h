/* pointwise.h -- elementwise loops that gcc keeps scalar when written plainly
 * (included by _kernels.pyx).
 *
 * leaky_relu's `z > 0 ? z : z * c`, in Cython or in C, stayed a branch: under
 * GCC's default -ftrapping-math a floating-point compare feeding a select is
 * "control flow" the vectoriser does not if-convert.  On random signs that
 * branch mispredicted every other element (1.4 ms for 2^18 floats, 28x relu's
 * forward).  Here the compare becomes an integer mask that selects the bits of
 * 1 or of the slope, and the loop vectorises; the same floats as before (z * 1
 * is z, NaN * c is NaN), and no option that changes results is needed.
 */
#ifndef BP_POINTWISE_H
#define BP_POINTWISE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* out[i] := z[i] * (z[i] > 0 ? 1 : c): PyTorch's leaky_relu; out may be z. */
static inline void bp_leaky_relu_f32(const float *z, float *out, ptrdiff_t n, float c)
{
    const float one_f = 1.0f;
    uint32_t one, slope;
    memcpy(&one, &one_f, sizeof one);
    memcpy(&slope, &c, sizeof slope);
    for (ptrdiff_t i = 0; i < n; ++i) {
        const float v = z[i];
        const uint32_t m = -(uint32_t)(v > 0.0f), bits = (m & one) | (~m & slope);
        float s;
        memcpy(&s, &bits, sizeof s);
        out[i] = v * s;
    }
}

static inline void bp_leaky_relu_f64(const double *z, double *out, ptrdiff_t n, double c)
{
    const double one_d = 1.0;
    uint64_t one, slope;
    memcpy(&one, &one_d, sizeof one);
    memcpy(&slope, &c, sizeof slope);
    for (ptrdiff_t i = 0; i < n; ++i) {
        const double v = z[i];
        const uint64_t m = -(uint64_t)(v > 0.0), bits = (m & one) | (~m & slope);
        double s;
        memcpy(&s, &bits, sizeof s);
        out[i] = v * s;
    }
}

/* out[i] := key[i] * scale CMP thr ? x[i] : a[i], a select on the bits (the
 * same mask trick): softplus's linear region (>) above its threshold, elu's
 * z <= 0 (<=; a NaN key takes a[i], as PyTorch's compare does).  key[i], x[i]
 * and a[i] are read before out[i] is written: out may be any of them. */
#define BP_SELECT(NAME, T, UT, CMP)                                                        \
    static inline void NAME(const T *key, const T *x, const T *a, T *out, ptrdiff_t n,    \
                            T scale, T thr)                                                \
    {                                                                                      \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                \
            const UT m = -(UT)(key[i] * scale CMP thr);                                    \
            UT xb, ab;                                                                     \
            memcpy(&xb, x + i, sizeof xb);                                                 \
            memcpy(&ab, a + i, sizeof ab);                                                 \
            const UT bits = (m & xb) | (~m & ab);                                          \
            memcpy(out + i, &bits, sizeof bits);                                           \
        }                                                                                  \
    }
BP_SELECT(bp_select_above_f32, float, uint32_t, >)
BP_SELECT(bp_select_above_f64, double, uint64_t, >)
BP_SELECT(bp_select_at_most_f32, float, uint32_t, <=)
BP_SELECT(bp_select_at_most_f64, double, uint64_t, <=)

#endif
