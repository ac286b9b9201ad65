/* optim.h -- parameter updates with PyTorch's rounding.
 *
 * torch.optim.SGD updates with `add_(x, alpha=a)`, which PyTorch's CPU
 * kernels compute as one fused multiply-add, fma(x, a, y); its momentum
 * buffer is `mul_(momentum)` then `add_(g)`, two roundings.  Reproducing
 * that order bit for bit needs fma() exactly where PyTorch fuses and no
 * contraction anywhere else, hence fp-contract=off on these functions.
 *
 * Each update is compiled twice: for AVX2+FMA (fma() becomes one vector
 * instruction) and portable (fma() from libm, still exact, slower); the
 * choice is made once by bp_optim_select().
 */
#ifndef BPCORE_OPTIM_H
#define BPCORE_OPTIM_H

#include <math.h>
#include <stddef.h>

/* SGD, in place:  g = fma(p, wd, grad);  v = v*mu + g;  g = nesterov ? fma(v, mu, g) : v;
 * p = fma(g, -lr, p).  Terms with wd == 0 or mu == 0 are skipped, as PyTorch skips them. */
#define BP_SGD_DEFINE(NAME, T, FMA, ATTR)                                          \
    ATTR static void NAME(T *param, const T *grad, T *velocity, ptrdiff_t n,       \
                          T lr, T momentum, T weight_decay, int nesterov)          \
    {                                                                              \
        const T neg_lr = -lr;                                                      \
        for (ptrdiff_t i = 0; i < n; i++) {                                        \
            T g = grad[i];                                                         \
            if (weight_decay != 0) g = FMA(param[i], weight_decay, g);             \
            if (momentum != 0) {                                                   \
                T v = velocity[i] * momentum;                                      \
                v = v + g;                                                         \
                velocity[i] = v;                                                   \
                g = nesterov ? FMA(v, momentum, g) : v;                            \
            }                                                                      \
            param[i] = FMA(g, neg_lr, param[i]);                                   \
        }                                                                          \
    }

#define BP_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#define BP_AVX2_FMA __attribute__((target("avx2,fma"), optimize("fp-contract=off")))

BP_SGD_DEFINE(bp_sgd_f32_portable, float, fmaf, BP_NO_CONTRACT)
BP_SGD_DEFINE(bp_sgd_f64_portable, double, fma, BP_NO_CONTRACT)
#if defined(__x86_64__) || defined(__i386__)
BP_SGD_DEFINE(bp_sgd_f32_avx2, float, fmaf, BP_AVX2_FMA)
BP_SGD_DEFINE(bp_sgd_f64_avx2, double, fma, BP_AVX2_FMA)
#endif

typedef void (*bp_sgd_f32_fn)(float *, const float *, float *, ptrdiff_t, float, float,
                              float, int);
typedef void (*bp_sgd_f64_fn)(double *, const double *, double *, ptrdiff_t, double, double,
                              double, int);
static bp_sgd_f32_fn bp_sgd_f32 = bp_sgd_f32_portable;
static bp_sgd_f64_fn bp_sgd_f64 = bp_sgd_f64_portable;

/* Pick the kernels: 1 = AVX2+FMA when the CPU has it, 0 = portable.
 * Returns 1 when the AVX2+FMA kernels are in use. */
static int bp_optim_select(int want_avx2)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (want_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        bp_sgd_f32 = bp_sgd_f32_avx2;
        bp_sgd_f64 = bp_sgd_f64_avx2;
        return 1;
    }
#endif
    (void)want_avx2;
    bp_sgd_f32 = bp_sgd_f32_portable;
    bp_sgd_f64 = bp_sgd_f64_portable;
    return 0;
}

#endif
