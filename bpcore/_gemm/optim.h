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

/* scikit-learn's optimizers (sklearn.neural_network._stochastic_optimizers),
 * in place, with NumPy's rounding: every product and sum rounded on its own
 * (no fma, fp-contract=off), coefficients rounded to T first as NumPy casts a
 * Python float to the array's dtype.  One formula each:
 *
 *   SGD    v = mu*v - lr*g;  p = p + (nesterov ? mu*v - lr*g : v)
 *   Adam   m = b1*m + (1-b1)*g;  s = b2*s + (1-b2)*(g*g);  p = p + (-lr_t*m) / (sqrt(s) + eps)
 *
 * with lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t) computed by the caller. */
#define BP_SK_SGD_DEFINE(NAME, T)                                                  \
    BP_NO_CONTRACT __attribute__((unused)) static void NAME(T *param, const T *grad, T *velocity,          \
                                    ptrdiff_t n, T lr, T momentum, int nesterov)   \
    {                                                                              \
        for (ptrdiff_t i = 0; i < n; i++) {                                        \
            const T g = grad[i];                                                   \
            const T v = momentum * velocity[i] - lr * g;                           \
            velocity[i] = v;                                                       \
            param[i] = param[i] + (nesterov ? momentum * v - lr * g : v);          \
        }                                                                          \
    }

#define BP_SK_ADAM_DEFINE(NAME, T, SQRT)                                           \
    BP_NO_CONTRACT __attribute__((unused)) static void NAME(T *param, const T *grad, T *m, T *s,           \
                                    ptrdiff_t n, T neg_lr_t, T b1, T one_minus_b1, \
                                    T b2, T one_minus_b2, T eps)                   \
    {                                                                              \
        for (ptrdiff_t i = 0; i < n; i++) {                                        \
            const T g = grad[i];                                                   \
            const T mi = b1 * m[i] + one_minus_b1 * g;                             \
            const T si = b2 * s[i] + one_minus_b2 * (g * g);                       \
            m[i] = mi;                                                             \
            s[i] = si;                                                             \
            param[i] = param[i] + (neg_lr_t * mi) / (SQRT(si) + eps);              \
        }                                                                          \
    }

BP_SK_SGD_DEFINE(bp_sk_sgd_f32, float)
BP_SK_SGD_DEFINE(bp_sk_sgd_f64, double)
BP_SK_ADAM_DEFINE(bp_sk_adam_f32, float, sqrtf)
BP_SK_ADAM_DEFINE(bp_sk_adam_f64, double, sqrt)

/* torch.optim.Adam and torch.optim.AdamW (single-tensor path), in place, step t >= 1:
 *   Adam:   g = g + wd*p                 AdamW:  p = p * (1 - lr*wd)   (decoupled decay)
 *   m = m + (1-b1)*(g - m);  s = b2*s + (1-b2)*g*g;
 *   p = p - (lr / (1 - b1^t)) * m / (sqrt(s) / sqrt(1 - b2^t) + eps).
 * Agrees with PyTorch to rounding (its lerp and addcmul are not reproduced
 * bit for bit). */
#define BP_ADAM_DEFINE(NAME, T, SQRT, DECOUPLED)                                   \
    BP_NO_CONTRACT __attribute__((unused)) static void NAME(T *param, const T *grad, T *m, T *s,           \
                                    ptrdiff_t n, double lr, double b1, double b2,  \
                                    double eps, double weight_decay, long long t)  \
    {                                                                              \
        const double bc1 = 1.0 - pow(b1, (double)t);                               \
        const double bc2_sqrt = sqrt(1.0 - pow(b2, (double)t));                    \
        const T step_size = (T)(lr / bc1), c1 = (T)(1.0 - b1), tb2 = (T)b2;        \
        const T c2 = (T)(1.0 - b2), tbc2 = (T)bc2_sqrt, teps = (T)eps;             \
        const T wd = (T)weight_decay, shrink = (T)(1.0 - lr * weight_decay);       \
        for (ptrdiff_t i = 0; i < n; i++) {                                        \
            T g = grad[i], p = param[i];                                           \
            if (wd != 0) {                                                         \
                if (DECOUPLED) p = p * shrink;                                     \
                else g = g + wd * p;                                               \
            }                                                                      \
            const T mi = m[i] + c1 * (g - m[i]);                                   \
            const T si = tb2 * s[i] + c2 * g * g;                                  \
            m[i] = mi;                                                             \
            s[i] = si;                                                             \
            param[i] = p - step_size * (mi / (SQRT(si) / tbc2 + teps));            \
        }                                                                          \
    }

BP_ADAM_DEFINE(bp_adam_f32, float, sqrtf, 0)
BP_ADAM_DEFINE(bp_adam_f64, double, sqrt, 0)
BP_ADAM_DEFINE(bp_adamw_f32, float, sqrtf, 1)
BP_ADAM_DEFINE(bp_adamw_f64, double, sqrt, 1)

/* torch.optim.RMSprop (single-tensor path), in place:
 *   g = g + wd*p;  s = alpha*s + (1-alpha)*g*g;
 *   centered: ga = ga + (1-alpha)*(g - ga) (torch's lerp), avg = sqrt(s - ga*ga) + eps
 *   else:     avg = sqrt(s) + eps
 *   momentum: buf = mu*buf + g/avg, p = p - lr*buf;  else p = p - lr*(g/avg).
 * ``grad_avg`` is read only when centered, ``buf`` only when momentum != 0.
 * Agrees with PyTorch to rounding (its fused add / addcmul are not
 * reproduced bit for bit). */
#define BP_RMSPROP_DEFINE(NAME, T, SQRT)                                           \
    BP_NO_CONTRACT __attribute__((unused)) static void NAME(T *param, const T *grad, T *square_avg,        \
                                    T *buf, T *grad_avg, ptrdiff_t n, double lr,   \
                                    double alpha, double eps, double weight_decay, \
                                    double momentum, int centered)                 \
    {                                                                              \
        const T tl = (T)lr, ta = (T)alpha, c = (T)(1.0 - alpha), teps = (T)eps;    \
        const T wd = (T)weight_decay, mu = (T)momentum;                            \
        for (ptrdiff_t i = 0; i < n; i++) {                                        \
            T g = grad[i];                                                         \
            if (wd != 0) g = g + wd * param[i];                                    \
            const T si = square_avg[i] * ta + c * g * g;                           \
            square_avg[i] = si;                                                    \
            T avg;                                                                 \
            if (centered) {                                                        \
                const T gi = grad_avg[i] + c * (g - grad_avg[i]);                  \
                grad_avg[i] = gi;                                                  \
                avg = SQRT(si - gi * gi) + teps;                                   \
            } else {                                                               \
                avg = SQRT(si) + teps;                                             \
            }                                                                      \
            if (mu != 0) {                                                         \
                const T b = buf[i] * mu + g / avg;                                 \
                buf[i] = b;                                                        \
                param[i] = param[i] - tl * b;                                      \
            } else {                                                               \
                param[i] = param[i] - tl * (g / avg);                              \
            }                                                                      \
        }                                                                          \
    }

BP_RMSPROP_DEFINE(bp_rmsprop_f32, float, sqrtf)
BP_RMSPROP_DEFINE(bp_rmsprop_f64, double, sqrt)

#endif
