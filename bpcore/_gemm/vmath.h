/* vmath.h -- exp, sigmoid, tanh, erf, expm1, log1p (and gelu's derivative) over arrays, vectorised, float32 and float64.
 *
 * gcc does not vectorise calls to libm's exp/tanh (not without -ffast-math,
 * which bpcore never uses: it turns flush-to-zero on for the whole process),
 * so these are written here once, with GCC vector extensions on 32-byte
 * vectors (4 doubles, 8 floats):
 *
 *   exp:  x = n ln2 + r, |r| <= ln2/2 (Cody-Waite: ln2 split in a high part
 *         whose products n*LN2_HI are exact and a low part), then
 *         e^r = 1 + r (1 + r Q(r)) with Q a Chebyshev fit (bpcore/_gemm/vmath_coeffs.py),
 *         then times 2^n built in the exponent bits.  2^n is applied as
 *         2^n1 * 2^n2 (n1 = round(n/2)) so that results near overflow and the
 *         gradual-underflow range (subnormal outputs) come out right with
 *         plain IEEE arithmetic: the argument is clamped to a range a little
 *         wider than the finite one, and the last multiply overflows to +inf
 *         or underflows to 0 by itself.  NaN propagates (every clamp is a
 *         NaN-preserving compare-and-select).
 *   sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e),  e = exp(-|z|), never overflows.
 *   tanh(x) = sign(x) * (|x| < T ? |x| + |x| x^2 G(x^2) : 1 - 2 / (exp(2|x|) + 1)),
 *         an odd polynomial near 0 (no cancellation), saturating to +-1.
 *
 * Each function is compiled twice from the same source: for AVX2+FMA (gcc
 * contracts a*b + c to one fma there) and portable (the same 32-byte vectors
 * lowered to SSE2 pairs, separate multiply and add).  One is picked at load
 * time from __builtin_cpu_supports; bp_vmath_select() overrides it.
 * A tail shorter than a vector goes through the same vector code on a padded
 * copy, so every element of an array gets the same formula.
 * Every function reads x[i] before writing out[i]: out may equal x.
 */
#ifndef BPCORE_VMATH_H
#define BPCORE_VMATH_H

#include <Python.h> /* Py_ssize_t */
#include <math.h> /* INFINITY, NAN */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define BP_VMATH_X86 1
#else
#define BP_VMATH_X86 0
#endif

enum { BP_VMATH_PORTABLE = 0, BP_VMATH_AVX2_FMA = 1 };

/* ------------------------------------------------------------------------ */
/* Vector types and helpers                                                  */
/* ------------------------------------------------------------------------ */

typedef double bp_vd __attribute__((vector_size(32)));
typedef int64_t bp_vl __attribute__((vector_size(32)));
typedef float bp_vf __attribute__((vector_size(32)));
typedef int32_t bp_vi __attribute__((vector_size(32)));
typedef uint64_t bp_vul __attribute__((vector_size(32)));
typedef uint32_t bp_vui __attribute__((vector_size(32)));
#define BP_WD 4 /* doubles per vector */
#define BP_WF 8 /* floats per vector */

/* The kernels below are always inlined into a target-specific loop and take
 * their vector by pointer, so no 32-byte vector crosses a real call and the
 * vector calling convention (which differs with and without AVX) never
 * matters. */
#define BP_VINLINE static inline __attribute__((always_inline))

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros). */
#define bp_sel_d(mask, a, b) ((bp_vd)(((bp_vl)(mask) & (bp_vl)(a)) | (~(bp_vl)(mask) & (bp_vl)(b))))
#define bp_sel_f(mask, a, b) ((bp_vf)(((bp_vi)(mask) & (bp_vi)(a)) | (~(bp_vi)(mask) & (bp_vi)(b))))

#define BP_SPLAT_D(c) ((bp_vd){0} + (c))
#define BP_SPLAT_F(c) ((bp_vf){0} + (c))
#define BP_SIGN_D ((bp_vl){0} + INT64_MIN)
#define BP_SIGN_F ((bp_vi){0} + INT32_MIN)

/* ------------------------------------------------------------------------ */
/* exp                                                                       */
/* ------------------------------------------------------------------------ */

/* float64: ln2 = LN2_HI + LN2_LO, LN2_HI with 32 significant bits so that
 * n * LN2_HI is exact for |n| < 2^21 (fdlibm's split). */
#define BP_LOG2E_D 0x1.71547652b82fep+0
#define BP_LN2_HI_D 0x1.62e42fee00000p-1
#define BP_LN2_LO_D 0x1.a39ef35793c76p-33
#define BP_SHIFT_D 0x1.8p52 /* x + SHIFT rounds x to an integer, kept in the low bits */

/* Q(r) = (e^r - 1 - r) / r^2, degree 9, |r| <= ln2/2 (exp and expm1) */
BP_VINLINE void bp_vexp_q_d(const bp_vd *rp, bp_vd *qp)
{
    const bp_vd r = *rp;
    bp_vd q = 0x1.af389ecfc4b9cp-26 * r + 0x1.28917c89a43a7p-22;
    q = q * r + 0x1.71de0db2f6b19p-19;
    q = q * r + 0x1.a019b9149a41cp-16;
    q = q * r + 0x1.a01a01a7c2efep-13;
    q = q * r + 0x1.6c16c17889ef1p-10;
    q = q * r + 0x1.11111111109b5p-7;
    q = q * r + 0x1.5555555553d68p-5;
    q = q * r + 0x1.5555555555556p-3;
    *qp = q * r + 0x1.0000000000001p-1;
}

/* e^x, lane by lane: 1-ulp class for every x; inf -> inf, -inf -> 0, NaN -> NaN. */
BP_VINLINE void bp_vexp_d(bp_vd *v, const int has_fma)
{
    (void)has_fma;
    bp_vd x = *v;
    /* exp(x) overflows above 709.78 and rounds to 0 below -745.14: clamping
     * to [-746, 710] changes no result and bounds n to [-1077, 1025]. */
    x = bp_sel_d(x < -746.0, BP_SPLAT_D(-746.0), x);
    x = bp_sel_d(x > 710.0, BP_SPLAT_D(710.0), x);
    const bp_vd kd = x * BP_LOG2E_D + BP_SHIFT_D; /* n + SHIFT */
    const bp_vd nd = kd - BP_SHIFT_D;
    bp_vd r = x - nd * BP_LN2_HI_D; /* exact */
    r = r - nd * BP_LN2_LO_D;
    bp_vd q;
    bp_vexp_q_d(&r, &q);
    const bp_vd p = r * (r * q + 1.0) + 1.0;
    /* 2^n = 2^n1 * 2^n2 with n1 = round(n / 2): each factor is a normal
     * number even when 2^n is not (or overflows). */
    const bp_vd k1 = nd * 0.5 + BP_SHIFT_D; /* n1 + SHIFT */
    const bp_vul s1 = ((bp_vul)k1 + 1023) << 52;
    const bp_vul s2 = ((bp_vul)kd - (bp_vul)k1 + 1023) << 52;
    *v = (p * (bp_vd)s1) * (bp_vd)s2;
}

/* float32: LN2_HI = 0.693359375 (12 bits, cephes' split), n * LN2_HI exact. */
#define BP_LOG2E_F 0x1.715476p+0f
#define BP_LN2_HI_F 0x1.63p-1f
#define BP_LN2_LO_F -0x1.bd0106p-13f
#define BP_SHIFT_F 0x1.8p23f

/* Q(r), degree 4 */
BP_VINLINE void bp_vexp_q_f(const bp_vf *rp, bp_vf *qp)
{
    const bp_vf r = *rp;
    bp_vf q = 0x1.6d10fc65baf1cp-10f * r + 0x1.120b616c43f75p-7f;
    q = q * r + 0x1.55551933893e6p-5f;
    q = q * r + 0x1.5554dd04e58bep-3f;
    *qp = q * r + 0x1.0p-1f;
}

BP_VINLINE void bp_vexp_f(bp_vf *v, const int has_fma)
{
    (void)has_fma;
    bp_vf x = *v;
    /* Overflow above 88.72, 0 below -103.98; n in [-150, 129]. */
    x = bp_sel_f(x < -104.0f, BP_SPLAT_F(-104.0f), x);
    x = bp_sel_f(x > 89.0f, BP_SPLAT_F(89.0f), x);
    const bp_vf kd = x * BP_LOG2E_F + BP_SHIFT_F;
    const bp_vf nd = kd - BP_SHIFT_F;
    bp_vf r = x - nd * BP_LN2_HI_F;
    r = r - nd * BP_LN2_LO_F;
    bp_vf q;
    bp_vexp_q_f(&r, &q);
    const bp_vf p = r * (r * q + 1.0f) + 1.0f;
    const bp_vf k1 = nd * 0.5f + BP_SHIFT_F;
    const bp_vui s1 = ((bp_vui)k1 + 127) << 23;
    const bp_vui s2 = ((bp_vui)kd - (bp_vui)k1 + 127) << 23;
    *v = (p * (bp_vf)s1) * (bp_vf)s2;
}

/* ------------------------------------------------------------------------ */
/* sigmoid and tanh                                                          */
/* ------------------------------------------------------------------------ */

/* 1 / (1 + e^-z): e = exp(-|z|) <= 1 never overflows, and e / (1 + e) keeps
 * full relative accuracy for z < 0 where 1 - 1/(1 + e^-z) would cancel. */
BP_VINLINE void bp_vsigmoid_d(bp_vd *v, const int has_fma)
{
    const bp_vd z = *v;
    bp_vd e = (bp_vd)((bp_vl)z | BP_SIGN_D); /* -|z| */
    bp_vexp_d(&e, has_fma);
    /* float64 wants <= 2 ulp, which two roundings (1 + e, then the quotient)
     * on top of exp's can exceed: carry 1 + e as d + dl (Fast2Sum, 1 >= e)
     * and refine the quotient with one Newton step on num - q (d + dl). */
    const bp_vd num = bp_sel_d(z >= 0.0, BP_SPLAT_D(1.0), e);
    const bp_vd d = 1.0 + e;
    const bp_vd dl = (1.0 - d) + e;
    const bp_vd inv = 1.0 / d;
    const bp_vd q = num * inv;
    bp_vd rem;
    if (has_fma) {
        rem = num - q * d; /* one fma: exact */
    } else {
        /* Dekker's exact product q d = p + err, Veltkamp-split halves. */
        const bp_vd cq = 134217729.0 * q, cd = 134217729.0 * d;
        const bp_vd qh = cq - (cq - q), ql = q - qh;
        const bp_vd dh = cd - (cd - d), dlo = d - dh;
        const bp_vd p = q * d;
        const bp_vd err = ((qh * dh - p) + qh * dlo + ql * dh) + ql * dlo;
        rem = (num - p) - err;
    }
    *v = q + (rem - q * dl) * inv;
}

BP_VINLINE void bp_vsigmoid_f(bp_vf *v, const int has_fma)
{
    (void)has_fma;
    const bp_vf z = *v;
    bp_vf e = (bp_vf)((bp_vi)z | BP_SIGN_F);
    bp_vexp_f(&e, has_fma);
    *v = bp_sel_f(z >= 0.0f, BP_SPLAT_F(1.0f), e) / (1.0f + e);
}

/* Below T the odd polynomial |x| + |x| s G(s), s = x^2 (G fitted on [0, T^2]);
 * above it 1 - 2/(e^{2|x|} + 1), where the subtraction loses at most
 * 2/(e^{2T} + 1) / (1 - that) = 0.8 of the quotient's relative error. */
#define BP_TANH_T_D 0.625
#define BP_TANH_T_F 0.625f

BP_VINLINE void bp_vtanh_d(bp_vd *v, const int has_fma)
{
    (void)has_fma;
    const bp_vd x = *v;
    const bp_vl sign = (bp_vl)x & BP_SIGN_D;
    const bp_vd ax = (bp_vd)((bp_vl)x & ~BP_SIGN_D);
    const bp_vd s = ax * ax;
    /* G(s) = (tanh(x) - x) / x^3, degree 11 */
    bp_vd g = 0x1.b33642a122cddp-18 * s - 0x1.05bbdae896297p-15;
    g = g * s + 0x1.8445870f6fe41p-14;
    g = g * s - 0x1.f243823c8c981p-13;
    g = g * s + 0x1.3526e9ed54da1p-11;
    g = g * s - 0x1.7d9f6f23e8682p-10;
    g = g * s + 0x1.d6d39ae3905e2p-9;
    g = g * s - 0x1.226e3473dce5cp-7;
    g = g * s + 0x1.664f487e0a749p-6;
    g = g * s - 0x1.ba1ba1ba0f126p-5;
    g = g * s + 0x1.11111111110a8p-3;
    g = g * s - 0x1.5555555555555p-2;
    const bp_vd small = (ax * s) * g + ax;
    /* exp(2|x|) = inf saturates to 1; NaN stays NaN through this branch. */
    bp_vd e = ax + ax;
    bp_vexp_d(&e, has_fma);
    const bp_vd large = 1.0 - 2.0 / (e + 1.0);
    *v = (bp_vd)((bp_vl)bp_sel_d(ax < BP_TANH_T_D, small, large) | sign);
}

BP_VINLINE void bp_vtanh_f(bp_vf *v, const int has_fma)
{
    (void)has_fma;
    const bp_vf x = *v;
    const bp_vi sign = (bp_vi)x & BP_SIGN_F;
    const bp_vf ax = (bp_vf)((bp_vi)x & ~BP_SIGN_F);
    const bp_vf s = ax * ax;
    /* G(s), degree 5 */
    bp_vf g = 0x1.2c83c001d2709p-9f * s - 0x1.116a168e18e77p-7f;
    g = g * s + 0x1.64a9766b3a952p-6f;
    g = g * s - 0x1.ba08c4e66a3c8p-5f;
    g = g * s + 0x1.1110e919f7ad3p-3f;
    g = g * s - 0x1.55555539a3fddp-2f;
    const bp_vf small = (ax * s) * g + ax;
    bp_vf e = ax + ax;
    bp_vexp_f(&e, has_fma);
    const bp_vf large = 1.0f - 2.0f / (e + 1.0f);
    *v = (bp_vf)((bp_vi)bp_sel_f(ax < BP_TANH_T_F, small, large) | sign);
}

/* ------------------------------------------------------------------------ */
/* erf                                                                       */
/* ------------------------------------------------------------------------ */

/* PyTorch's (ATen's GeluKernel) constants, rounded once to double (as _kernels.pyx) */
#define BP_SQRT1_2_D 0.70710678118654752440
#define BP_SQRT1_2_F ((float)BP_SQRT1_2_D)
#define BP_GELU_BETA_D (1.12837916709551257390 * 0.70710678118654752440 * 0.5)
#define BP_GELU_BETA_F ((float)BP_GELU_BETA_D)

/* erf(x) = sign(x) * (|x| < 1 ? |x| + |x| P(x^2) : 1 - exp(-x^2) C(|x|)), where
 * C = erfcx = exp(x^2) erfc(x) is a polynomial per interval in u = |x| - mid
 * (coefficients picked lane by lane by compare-and-select, so one Horner
 * pass serves every lane).  The error of C and of exp(-x^2) (including the
 * rounding of x^2) counts only times erfc(x) <= 0.16, so the large branch is
 * within ~1 ulp; past 6 (float64) / 4 (float32) erf rounds to +-1, and |x|
 * is clamped there (inf -> +-1; NaN propagates: every clamp keeps it).
 * Coefficients: python bpcore/_gemm/vmath_coeffs.py erf.  The ulp bounds are
 * measured against math.erf in tests/test_vmath.py. */
/* erf(x) / x - 1 on |x| < 1, in s = x^2: degree 11, highest power first */
static const double BP_ERF_P_D[12] = {
    -0x1.ac9585a44fe29p-31, 0x1.d76af6ca49787p-27, -0x1.5c131500d3f88p-23,
    0x1.b981d78881a5dp-20, -0x1.f4ca838adb73bp-17, 0x1.f9a2be4f731a1p-14,
    -0x1.c02db0665e53dp-11, 0x1.565bccfa44156p-8, -0x1.b82ce31203772p-6, 0x1.ce2f21a040f66p-4,
    -0x1.812746b0379c1p-2, 0x1.06eba8214db68p-3};
/* erfcx(x) = exp(x^2) erfc(x) on [1, 2), [2, ...) ..., in u = x - mid: degree 14 */
static const double BP_ERF_C_D[3][15] = {
    /* [1, 2) */
    {0x1.819707b18baa5p-23, -0x1.5818fa3c2a0d8p-21, 0x1.14cff905c6c52p-19,
     -0x1.d2f0c117c2611p-18, 0x1.7f9d3bddcd27cp-16, -0x1.30c470595520dp-14,
     0x1.d45090b3f934fp-13, -0x1.5b0ab45af7dfbp-11, 0x1.ee705e882dd0ep-10,
     -0x1.513ed7737c5d3p-8, 0x1.b65944f34010bp-7, -0x1.0dc51d29337d3p-5, 0x1.37ea271bc54f2p-4,
     -0x1.4f1988444cb5ap-3, 0x1.494daffa2ad68p-2},
    /* [2, 3.5) */
    {0x1.f0b0f255c1e44p-30, -0x1.1348a04ecf887p-27, 0x1.0ac74c6b40472p-25,
     -0x1.1b4fac0d6715ep-23, 0x1.28600c98247f5p-21, -0x1.2dad92022ae33p-19,
     0x1.2bfb397e8c391p-17, -0x1.23128bd4c335ap-15, 0x1.131bb1a0c51aap-13,
     -0x1.f99e427ebce1ep-12, 0x1.c2c72fd6bd2c2p-10, -0x1.84e9ab306cc06p-8,
     0x1.43b98bac839bdp-6, -0x1.030578133026fp-4, 0x1.8c9eb68ff27d7p-3},
    /* [3.5, 6) */
    {0x1.ae8149cb260fdp-38, -0x1.436c766a789f0p-35, 0x1.9196726ff38a0p-33,
     -0x1.2564f2d3e8f68p-30, 0x1.ad288ad21ac90p-28, -0x1.31e78ebcfb6d6p-25,
     0x1.ae1ebd351c650p-23, -0x1.2a61a22d3974bp-20, 0x1.9818c319aa2fbp-18,
     -0x1.12f17620fc690p-15, 0x1.6cc10c134810fp-13, -0x1.dc1af87f3d056p-11,
     0x1.317c144f8c376p-8, -0x1.81149bc4a27e3p-6, 0x1.dc603a3e77e9bp-4},
};
static const double BP_ERF_MID_D[3] = {1.5, 2.75, 4.75};
/* erf(x) / x - 1 on |x| < 1, in s = x^2: degree 6, highest power first */
static const float BP_ERF_P_F[7] = {
    0x1.4a5690869d13fp-14f, -0x1.a45087f1a200ap-11f, 0x1.541270c79ca2cp-8f,
    -0x1.b7faba961c85ap-6f, 0x1.ce2d10ed44e09p-4f, -0x1.81273e7a02443p-2f,
    0x1.06eba7f673903p-3f};
/* erfcx(x) = exp(x^2) erfc(x) on [1, 4), in u = x - 2.5: degree 11 -- one
 * interval (no per-lane coefficient selects: those cost more than the four
 * extra terms); abs error 9.6e-9, times exp(-x^2) <= 0.37 */
static const float BP_ERF_C_F[12] = {
    -0x1.bab8163ba729bp-22f, 0x1.c03e4eef141b0p-20f, -0x1.01567aad5305bp-18f,
    0x1.e1ffae98fbeb5p-17f, -0x1.f1ac69f8fce85p-15f, 0x1.be96e99ffac35p-13f,
    -0x1.807be20b101bbp-11f, 0x1.4339378ff5e8ep-9f, -0x1.06326e32bafe7p-7f,
    0x1.989663307dba0p-6f, -0x1.3086d78924485p-4f, 0x1.afbb3e625d7c4p-3f};

/* erf(x) into *v, and exp(-x^2) (unclamped, for gelu's derivative) into *ex */
BP_VINLINE void bp_verf_ex_d(bp_vd *v, bp_vd *ex, const int has_fma)
{
    const bp_vd x = *v;
    const bp_vl sign = (bp_vl)x & BP_SIGN_D;
    const bp_vd ax = (bp_vd)((bp_vl)x & ~BP_SIGN_D);
    const bp_vd s = ax * ax;
    bp_vd p = BP_SPLAT_D(BP_ERF_P_D[0]);
    for (int k = 1; k < 12; ++k)
        p = p * s + BP_ERF_P_D[k];
    const bp_vd small = ax * p + ax;
    const bp_vd cx = bp_sel_d(ax > 6.0, BP_SPLAT_D(6.0), ax);
    const bp_vl in1 = (bp_vl)(cx >= 2.0), in2 = (bp_vl)(cx >= 3.5);
/* lane by lane: a on [1, 2), b on [2, 3.5), c from 3.5 */
#define BP_ERF_PICK_D(a, b, c) \
    bp_sel_d(in2, BP_SPLAT_D(c), bp_sel_d(in1, BP_SPLAT_D(b), BP_SPLAT_D(a)))
    const bp_vd u = cx - BP_ERF_PICK_D(BP_ERF_MID_D[0], BP_ERF_MID_D[1], BP_ERF_MID_D[2]);
    bp_vd c = BP_ERF_PICK_D(BP_ERF_C_D[0][0], BP_ERF_C_D[1][0], BP_ERF_C_D[2][0]);
    for (int k = 1; k < 15; ++k)
        c = c * u + BP_ERF_PICK_D(BP_ERF_C_D[0][k], BP_ERF_C_D[1][k], BP_ERF_C_D[2][k]);
#undef BP_ERF_PICK_D
    /* exp(-x^2) of the unclamped |x|: past the clamp e c is below half an
     * ulp of 1 either way, so erf is the same +-1 */
    bp_vd e = -(ax * ax);
    bp_vexp_d(&e, has_fma);
    *ex = e;
    const bp_vd large = 1.0 - e * c;
    *v = (bp_vd)((bp_vl)bp_sel_d(ax < 1.0, small, large) | sign);
}

BP_VINLINE void bp_verf_d(bp_vd *v, const int has_fma)
{
    bp_vd ex;
    bp_verf_ex_d(v, &ex, has_fma);
}

/* gelu'(x) = Phi(x) + x phi(x) = (1 + erf(x / sqrt2)) / 2 + x GELU_BETA exp(-x^2 / 2),
 * with PyTorch's constants and the one exp that erf computes anyway. */
BP_VINLINE void bp_vgelu_grad_d(bp_vd *v, const int has_fma)
{
    const bp_vd x = *v;
    bp_vd t = x * BP_SQRT1_2_D, e;
    bp_verf_ex_d(&t, &e, has_fma);
    *v = 0.5 * (1.0 + t) + x * (BP_GELU_BETA_D * e);
}

/* erf(x) into *v, and exp(-x^2) (unclamped, for gelu's derivative) into *ex */
BP_VINLINE void bp_verf_ex_f(bp_vf *v, bp_vf *ex, const int has_fma)
{
    const bp_vf x = *v;
    const bp_vi sign = (bp_vi)x & BP_SIGN_F;
    const bp_vf ax = (bp_vf)((bp_vi)x & ~BP_SIGN_F);
    const bp_vf s = ax * ax;
    bp_vf p = BP_SPLAT_F(BP_ERF_P_F[0]);
    for (int k = 1; k < 7; ++k)
        p = p * s + BP_ERF_P_F[k];
    const bp_vf small = ax * p + ax;
    const bp_vf cx = bp_sel_f(ax > 4.0f, BP_SPLAT_F(4.0f), ax);
    const bp_vf u = cx - 2.5f;
    bp_vf c = BP_SPLAT_F(BP_ERF_C_F[0]);
    for (int k = 1; k < 12; ++k)
        c = c * u + BP_ERF_C_F[k];
    /* exp(-x^2) of the unclamped |x|: past the clamp e c is below half an
     * ulp of 1 either way, so erf is the same +-1 */
    bp_vf e = -(ax * ax);
    bp_vexp_f(&e, has_fma);
    *ex = e;
    const bp_vf large = 1.0f - e * c;
    *v = (bp_vf)((bp_vi)bp_sel_f(ax < 1.0f, small, large) | sign);
}

BP_VINLINE void bp_verf_f(bp_vf *v, const int has_fma)
{
    bp_vf ex;
    bp_verf_ex_f(v, &ex, has_fma);
}

/* gelu'(x) = Phi(x) + x phi(x) = (1 + erf(x / sqrt2)) / 2 + x GELU_BETA exp(-x^2 / 2),
 * with PyTorch's constants and the one exp that erf computes anyway. */
BP_VINLINE void bp_vgelu_grad_f(bp_vf *v, const int has_fma)
{
    const bp_vf x = *v;
    bp_vf t = x * BP_SQRT1_2_F, e;
    bp_verf_ex_f(&t, &e, has_fma);
    *v = 0.5f * (1.0f + t) + x * (BP_GELU_BETA_F * e);
}

/* ------------------------------------------------------------------------ */
/* expm1 and log1p                                                           */
/* ------------------------------------------------------------------------ */

/* e^x - 1 with full relative accuracy near 0 (elu).  The reduction of exp,
 * x = n ln2 + r, and e^r - 1 = r + r^2 Q(r) with exp's Q; then
 *   e^x - 1 = (a + c r + c r^2 Q(r)) * d,
 *   n >= 0:  a = 1 - 2^-n, c = 1,   d = 2^n  (as 2^n1 2^n2: +inf past 88.7 / 709.8),
 *   n < 0:   a = 2^n - 1,  c = 2^n, d = 1,
 * where a and the products by c are exact (n small; for large n, a = 1
 * within 2^-n), a + c r is carried as hi + lo (Fast2Sum: |a| >= 1/2 >
 * |c r| unless a = 0) and r as r + r_lo (the reduction's rounding, worth
 * 0.7 ulp at n = 1 otherwise), so the roundings that count are the small
 * term's and the last sum's.  For |x| < ln2/2, n = 0, a = 0, r = x exactly: no
 * cancellation near 0.  Below -18 (float32) / -40 (float64) e^x - 1 rounds
 * to -1 and x is clamped there; |x| below 2^-25 / 2^-54 returns x (exact:
 * -0, subnormals).  NaN propagates. */
BP_VINLINE void bp_vexpm1_d(bp_vd *v, const int has_fma)
{
    (void)has_fma;
    const bp_vd x0 = *v;
    bp_vd x = bp_sel_d(x0 < -40.0, BP_SPLAT_D(-40.0), x0);
    x = bp_sel_d(x > 710.0, BP_SPLAT_D(710.0), x);
    const bp_vd kd = x * BP_LOG2E_D + BP_SHIFT_D;
    const bp_vd nd = kd - BP_SHIFT_D;
    const bp_vd r1 = x - nd * BP_LN2_HI_D; /* exact */
    const bp_vd r = r1 - nd * BP_LN2_LO_D;
    const bp_vd r_lo = (r1 - r) - nd * BP_LN2_LO_D; /* the rounding error of r */
    bp_vd q;
    bp_vexp_q_d(&r, &q);
    const bp_vl n = (bp_vl)kd - (bp_vl)BP_SPLAT_D(BP_SHIFT_D); /* in [-58, 1025] */
    const bp_vl neg = (bp_vl)(n < 0);
    /* 2^-n for 0 <= n <= 60 (past 60, 1 - 2^-n rounds to 1 anyway); 2^n for n < 0 */
    const bp_vl big = (bp_vl)(n > 60);
    const bp_vl nt = (big & 60) | (~big & n);
    const bp_vd t = (bp_vd)((1023 - nt) << 52);
    const bp_vd s = (bp_vd)((n + 1023) << 52);
    const bp_vd a = bp_sel_d(neg, s - 1.0, 1.0 - t);
    const bp_vd c = bp_sel_d(neg, s, BP_SPLAT_D(1.0));
    const bp_vd b = c * r;
    const bp_vd hi = a + b;
    const bp_vd lo = b - (hi - a);
    const bp_vd sum = hi + ((lo + c * r_lo) + c * (r * (r * q)));
    const bp_vd k1 = nd * 0.5 + BP_SHIFT_D;
    const bp_vul s1 = ((bp_vul)k1 + 1023) << 52;
    const bp_vul s2 = ((bp_vul)kd - (bp_vul)k1 + 1023) << 52;
    const bp_vd res = bp_sel_d(neg, sum, (sum * (bp_vd)s1) * (bp_vd)s2);
    const bp_vd ax = (bp_vd)((bp_vl)x0 & ~BP_SIGN_D);
    *v = bp_sel_d(ax < 0x1p-54, x0, res);
}

BP_VINLINE void bp_vexpm1_f(bp_vf *v, const int has_fma)
{
    (void)has_fma;
    const bp_vf x0 = *v;
    bp_vf x = bp_sel_f(x0 < -18.0f, BP_SPLAT_F(-18.0f), x0);
    x = bp_sel_f(x > 89.0f, BP_SPLAT_F(89.0f), x);
    const bp_vf kd = x * BP_LOG2E_F + BP_SHIFT_F;
    const bp_vf nd = kd - BP_SHIFT_F;
    const bp_vf r1 = x - nd * BP_LN2_HI_F; /* exact */
    const bp_vf r = r1 - nd * BP_LN2_LO_F;
    const bp_vf r_lo = (r1 - r) - nd * BP_LN2_LO_F; /* the rounding error of r */
    /* Q of degree 5, not exp's 4: at n = 1 the result is about e^r - 1/2,
     * 0.2 at r = -ln2/2, where exp's Q would cost 0.8 ulp */
    bp_vf q = 0x1.a124e3f154d32p-13f * r + 0x1.6d431504c53d3p-10f;
    q = q * r + 0x1.1110e0f726534p-7f;
    q = q * r + 0x1.5554e9114ecf9p-5f;
    q = q * r + 0x1.5555555a78232p-3f;
    q = q * r + 0x1.0000000b8f62bp-1f;
    const bp_vi n = (bp_vi)kd - (bp_vi)BP_SPLAT_F(BP_SHIFT_F); /* in [-26, 129] */
    const bp_vi neg = (bp_vi)(n < 0);
    const bp_vi big = (bp_vi)(n > 30);
    const bp_vi nt = (big & 30) | (~big & n);
    const bp_vf t = (bp_vf)((127 - nt) << 23);
    const bp_vf s = (bp_vf)((n + 127) << 23);
    const bp_vf a = bp_sel_f(neg, s - 1.0f, 1.0f - t);
    const bp_vf c = bp_sel_f(neg, s, BP_SPLAT_F(1.0f));
    const bp_vf b = c * r;
    const bp_vf hi = a + b;
    const bp_vf lo = b - (hi - a);
    const bp_vf sum = hi + ((lo + c * r_lo) + c * (r * (r * q)));
    const bp_vf k1 = nd * 0.5f + BP_SHIFT_F;
    const bp_vui s1 = ((bp_vui)k1 + 127) << 23;
    const bp_vui s2 = ((bp_vui)kd - (bp_vui)k1 + 127) << 23;
    const bp_vf res = bp_sel_f(neg, sum, (sum * (bp_vf)s1) * (bp_vf)s2);
    const bp_vf ax = (bp_vf)((bp_vi)x0 & ~BP_SIGN_F);
    *v = bp_sel_f(ax < 0x1p-25f, x0, res);
}

/* log(1 + x) with full relative accuracy near 0 (softplus).  u = 1 + x
 * rounded, and its rounding error e (Fast2Sum, exact: the larger of 1 and x
 * first); u = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1 exact, then
 *   log(1 + x) = k ln2 + log(1 + f) + e / u   (e / u: log(1 + e/u) to first order)
 *   log(1 + f) = f - (f^2/2 - s (f^2/2 + R)),  s = f / (2 + f),
 * R = 2 atanh(s) - 2s = s^2 P(s^2), |s| <= 0.172 (P: vmath_coeffs.py log1p);
 * the leading f is exact and the bracket is below f / 5, so the polynomial's
 * and the quotient's errors count a fifth or less.  Near 0 (k = 0) f + e is x
 * exactly.  Special values by select: |x| below 2^-25 / 2^-54 -> x (exact:
 * -0, subnormals), -1 -> -inf, below -1 -> NaN, +inf -> +inf, NaN -> NaN. */
static const double BP_LOG1P_P_D[7] = {
    0x1.2b584aae78a57p-3, 0x1.39fe606542ddep-3, 0x1.7462b4ab2ef6bp-3, 0x1.c71c62e5800a1p-3,
    0x1.2492492df148dp-2, 0x1.99999999952e2p-2, 0x1.5555555555558p-1};
static const float BP_LOG1P_P_F[3] = {0x1.2ee610023bfcfp-2f, 0x1.997c305d84f6dp-2f,
                                      0x1.55555b7f8de11p-1f};

BP_VINLINE void bp_vlog1p_d(bp_vd *v, const int has_fma)
{
    (void)has_fma;
    const bp_vd x = *v;
    const bp_vd u = 1.0 + x;
    const bp_vd e = bp_sel_d(x > 1.0, 1.0 - (u - x), x - (u - 1.0));
    const bp_vl iu = (bp_vl)u - 0x3fe6a09e667f3bcdLL; /* bits of sqrt(1/2) */
    const bp_vl k = iu >> 52;
    const bp_vd m = (bp_vd)((iu & 0x000fffffffffffffLL) + 0x3fe6a09e667f3bcdLL);
    const bp_vd kf = (bp_vd)(k + (bp_vl)BP_SPLAT_D(BP_SHIFT_D)) - BP_SHIFT_D; /* (double)k */
    const bp_vd f = m - 1.0;
    const bp_vd hfsq = 0.5 * f * f;
    const bp_vd s = f / (2.0 + f);
    const bp_vd z = s * s;
    bp_vd p = BP_SPLAT_D(BP_LOG1P_P_D[0]);
    for (int j = 1; j < 7; ++j)
        p = p * z + BP_LOG1P_P_D[j];
    const bp_vd big_r = z * p;
    bp_vd res = kf * BP_LN2_HI_D -
                ((hfsq - (s * (hfsq + big_r) + (kf * BP_LN2_LO_D + e / u))) - f);
    const bp_vd ax = (bp_vd)((bp_vl)x & ~BP_SIGN_D);
    res = bp_sel_d(ax < 0x1p-54, x, res);
    res = bp_sel_d(x == -1.0, BP_SPLAT_D(-INFINITY), res);
    res = bp_sel_d(x < -1.0, BP_SPLAT_D(NAN), res);
    res = bp_sel_d(x == INFINITY, x, res);
    *v = bp_sel_d(x != x, x, res);
}

BP_VINLINE void bp_vlog1p_f(bp_vf *v, const int has_fma)
{
    (void)has_fma;
    const bp_vf x = *v;
    const bp_vf u = 1.0f + x;
    const bp_vf e = bp_sel_f(x > 1.0f, 1.0f - (u - x), x - (u - 1.0f));
    const bp_vi iu = (bp_vi)u - 0x3f3504f3;
    const bp_vi k = iu >> 23;
    const bp_vf m = (bp_vf)((iu & 0x007fffff) + 0x3f3504f3);
    const bp_vf kf = (bp_vf)(k + (bp_vi)BP_SPLAT_F(BP_SHIFT_F)) - BP_SHIFT_F;
    const bp_vf f = m - 1.0f;
    const bp_vf hfsq = 0.5f * f * f;
    const bp_vf s = f / (2.0f + f);
    const bp_vf z = s * s;
    const bp_vf big_r = z * ((BP_LOG1P_P_F[0] * z + BP_LOG1P_P_F[1]) * z + BP_LOG1P_P_F[2]);
    bp_vf res = kf * BP_LN2_HI_F -
                ((hfsq - (s * (hfsq + big_r) + (kf * BP_LN2_LO_F + e / u))) - f);
    const bp_vf ax = (bp_vf)((bp_vi)x & ~BP_SIGN_F);
    res = bp_sel_f(ax < 0x1p-25f, x, res);
    res = bp_sel_f(x == -1.0f, BP_SPLAT_F(-INFINITY), res);
    res = bp_sel_f(x < -1.0f, BP_SPLAT_F(NAN), res);
    res = bp_sel_f(x == INFINITY, x, res);
    *v = bp_sel_f(x != x, x, res);
}

/* ------------------------------------------------------------------------ */
/* Array loops, one per function and target                                  */
/* ------------------------------------------------------------------------ */

/* out[i] = VFUNC(x[i]) a vector at a time; the last n % W elements go through
 * the same VFUNC on a zero-padded copy. */
#define BP_VMATH_LOOP(NAME, T, VT, W, VFUNC, HAS_FMA, ATTR)                    \
    ATTR static void NAME(const T *x, T *out, Py_ssize_t n)                     \
    {                                                                           \
        VT v;                                                                   \
        for (Py_ssize_t i = 0; i < n; i += (W)) {                               \
            const Py_ssize_t m = n - i < (W) ? n - i : (W);                     \
            if (m == (W)) {                                                     \
                memcpy(&v, x + i, sizeof v);                                    \
                VFUNC(&v, HAS_FMA);                                             \
                memcpy(out + i, &v, sizeof v);                                  \
            } else {                                                            \
                T buf[W] = {0};                                                 \
                memcpy(buf, x + i, (size_t)m * sizeof(T));                      \
                memcpy(&v, buf, sizeof v);                                      \
                VFUNC(&v, HAS_FMA);                                             \
                memcpy(buf, &v, sizeof v);                                      \
                memcpy(out + i, buf, (size_t)m * sizeof(T));                    \
            }                                                                   \
        }                                                                       \
    }

/* HAS_FMA: whether a * b + c is one fma in this build (gcc contracts it
 * under target("fma")); the kernels that need an exact product use it. */
#define BP_VMATH_DEFINE_ALL(SUFFIX, HAS_FMA, ATTR)                                              \
    BP_VMATH_LOOP(bp_exp_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vexp_f, HAS_FMA, ATTR)           \
    BP_VMATH_LOOP(bp_exp_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vexp_d, HAS_FMA, ATTR)          \
    BP_VMATH_LOOP(bp_sigmoid_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vsigmoid_f, HAS_FMA, ATTR)   \
    BP_VMATH_LOOP(bp_sigmoid_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vsigmoid_d, HAS_FMA, ATTR)  \
    BP_VMATH_LOOP(bp_tanh_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vtanh_f, HAS_FMA, ATTR)         \
    BP_VMATH_LOOP(bp_tanh_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vtanh_d, HAS_FMA, ATTR)         \
    BP_VMATH_LOOP(bp_erf_f32_##SUFFIX, float, bp_vf, BP_WF, bp_verf_f, HAS_FMA, ATTR)           \
    BP_VMATH_LOOP(bp_erf_f64_##SUFFIX, double, bp_vd, BP_WD, bp_verf_d, HAS_FMA, ATTR)          \
    BP_VMATH_LOOP(bp_expm1_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vexpm1_f, HAS_FMA, ATTR)       \
    BP_VMATH_LOOP(bp_expm1_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vexpm1_d, HAS_FMA, ATTR)      \
    BP_VMATH_LOOP(bp_log1p_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vlog1p_f, HAS_FMA, ATTR)       \
    BP_VMATH_LOOP(bp_log1p_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vlog1p_d, HAS_FMA, ATTR)      \
    BP_VMATH_LOOP(bp_gelu_grad_f32_##SUFFIX, float, bp_vf, BP_WF, bp_vgelu_grad_f, HAS_FMA, ATTR) \
    BP_VMATH_LOOP(bp_gelu_grad_f64_##SUFFIX, double, bp_vd, BP_WD, bp_vgelu_grad_d, HAS_FMA, ATTR)

/* fp-contract=off: the portable build must not fuse even under -march=native,
 * where its exact-product code (Dekker) relies on separate roundings. */
BP_VMATH_DEFINE_ALL(portable, 0, __attribute__((optimize("fp-contract=off"))))
#if BP_VMATH_X86
BP_VMATH_DEFINE_ALL(avx2, 1, __attribute__((target("avx2,fma"))))
#endif

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                  */
/* ------------------------------------------------------------------------ */

/* -1 until the first call picks the best kernels the CPU has. */
static int bp_vmath_kernel_in_use = -1;

/* Use the AVX2+FMA kernels if want_avx2 and the CPU has AVX2 and FMA, else
 * the portable ones.  Returns BP_VMATH_AVX2_FMA or BP_VMATH_PORTABLE, the
 * kernels now in use. */
static int bp_vmath_select(int want_avx2)
{
    int use = BP_VMATH_PORTABLE;
#if BP_VMATH_X86
    __builtin_cpu_init();
    if (want_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        use = BP_VMATH_AVX2_FMA;
#endif
    (void)want_avx2;
    bp_vmath_kernel_in_use = use;
    return use;
}

/* The kernels in use: BP_VMATH_AVX2_FMA or BP_VMATH_PORTABLE. */
static inline int bp_vmath_kernel(void)
{
    if (bp_vmath_kernel_in_use < 0)
        bp_vmath_select(1);
    return bp_vmath_kernel_in_use;
}

#if BP_VMATH_X86
#define BP_VMATH_DISPATCH(NAME, T)                                              \
    static inline void NAME(const T *x, T *out, Py_ssize_t n)                   \
    {                                                                           \
        if (bp_vmath_kernel() == BP_VMATH_AVX2_FMA)                             \
            NAME##_avx2(x, out, n);                                             \
        else                                                                    \
            NAME##_portable(x, out, n);                                         \
    }
#else
#define BP_VMATH_DISPATCH(NAME, T)                                              \
    static inline void NAME(const T *x, T *out, Py_ssize_t n)                   \
    {                                                                           \
        NAME##_portable(x, out, n);                                             \
    }
#endif

/* out[i] := exp(x[i]) */
BP_VMATH_DISPATCH(bp_exp_f32, float)
/* out[i] := exp(x[i]) */
BP_VMATH_DISPATCH(bp_exp_f64, double)
/* out[i] := 1 / (1 + exp(-x[i])) */
BP_VMATH_DISPATCH(bp_sigmoid_f32, float)
/* out[i] := 1 / (1 + exp(-x[i])) */
BP_VMATH_DISPATCH(bp_sigmoid_f64, double)
/* out[i] := tanh(x[i]) */
BP_VMATH_DISPATCH(bp_tanh_f32, float)
/* out[i] := tanh(x[i]) */
BP_VMATH_DISPATCH(bp_tanh_f64, double)
/* out[i] := erf(x[i]) */
BP_VMATH_DISPATCH(bp_erf_f32, float)
/* out[i] := erf(x[i]) */
BP_VMATH_DISPATCH(bp_erf_f64, double)
/* out[i] := exp(x[i]) - 1 */
BP_VMATH_DISPATCH(bp_expm1_f32, float)
/* out[i] := exp(x[i]) - 1 */
BP_VMATH_DISPATCH(bp_expm1_f64, double)
/* out[i] := log(1 + x[i]) */
BP_VMATH_DISPATCH(bp_log1p_f32, float)
/* out[i] := log(1 + x[i]) */
BP_VMATH_DISPATCH(bp_log1p_f64, double)
/* out[i] := gelu'(x[i]) = Phi(x[i]) + x[i] phi(x[i]) */
BP_VMATH_DISPATCH(bp_gelu_grad_f32, float)
/* out[i] := gelu'(x[i]) = Phi(x[i]) + x[i] phi(x[i]) */
BP_VMATH_DISPATCH(bp_gelu_grad_f64, double)

#endif /* BPCORE_VMATH_H */
