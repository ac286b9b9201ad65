"""Print the polynomial coefficients of bpcore/_gemm/vmath.h (needs mpmath).

Chebyshev fits (mpmath.chebyfit: near-minimax, absolute error) of

* exp:  Q(r) = (e^r - 1 - r) / r^2 on the reduced range |r| <= ln2/2, so
  e^r = 1 + r + r^2 Q(r) keeps the two leading terms exact;
* tanh: G(s) = (tanh(x) - x) / x^3, s = x^2, on |x| <= T, so
  tanh(x) = x + x s G(s) has no cancellation near 0;
* expm1 reuses exp's Q (float32: one degree more, see vmath.h).

Usage: python bpcore/_gemm/vmath_coeffs.py
"""
import mpmath as mp

mp.mp.dps = 50
H = mp.log(2) / 2


def q_exp(r):
    if abs(r) < mp.mpf("1e-12"):
        return mp.mpf(1) / 2 + r / 6 + r * r / 24
    return (mp.exp(r) - 1 - r) / (r * r)


def g_tanh(s):
    if s < mp.mpf("1e-20"):
        return -mp.mpf(1) / 3 + 2 * s / 15
    x = mp.sqrt(s)
    return (mp.tanh(x) - x) / (s * x)


def show(name, f, interval, degree, scale):
    coeffs, err = mp.chebyfit(f, interval, degree + 1, error=True)
    # chebyfit returns the highest power first.
    print(f"{name}: degree {degree}, max abs error {mp.nstr(err, 3)} "
          f"(x{mp.nstr(scale, 3)} at the edge of the range)")
    for k, c in enumerate(reversed(coeffs)):
        print(f"    c{k} = {mp.nstr(c, 20)}  ({float(c).hex()})")


# ---------------------------------------------------------------------------
# erf (bp_verf_d / bp_verf_f), printed as C Horner coefficients:
#
# * |x| < 1:   erf(x) = x + x P(s), s = x^2, P(s) = erf(x) / x - 1 fitted on [0, 1]
#   (x exact, the polynomial's rounding only on a term <= 0.16 x);
# * |x| >= 1:  erf(x) = 1 - exp(-x^2) C(x), C = erfcx = exp(x^2) erfc(x) fitted
#   per interval [a, b) in u = x - (a + b) / 2 (centred: no cancellation
#   between large power-basis terms).  The error of C counts only times
#   erfc(x) <= 0.16, which is why modest degrees give ~1 ulp of erf.
#
# Usage: python bpcore/_gemm/vmath_coeffs.py erf
# ---------------------------------------------------------------------------

def p_erf(s):
    if s < mp.mpf("1e-30"):
        return 2 / mp.sqrt(mp.pi) - 1
    x = mp.sqrt(s)
    return mp.erf(x) / x - 1


def erfcx(x):
    return mp.erfc(x) * mp.exp(x * x)


def show_erf():
    for label, degree, intervals in (("f64", 11, [(1, 2), (2, 3.5), (3.5, 6)]),
                                     ("f32", 6, [(1, 4)])):
        coeffs, err = mp.chebyfit(p_erf, [0, 1], degree + 1, error=True)
        print(f"erf {label} P(s) on [0, 1], degree {degree}: max abs error {mp.nstr(err, 3)}")
        print("    " + ", ".join(float(c).hex() for c in coeffs))  # highest power first
        for a, b in intervals:
            a, b = mp.mpf(a), mp.mpf(b)
            mid, half = (a + b) / 2, (b - a) / 2
            deg = 14 if label == "f64" else 11
            coeffs, err = mp.chebyfit(lambda u: erfcx(u + mid), [-half, half], deg + 1,
                                      error=True)
            print(f"erf {label} C(x) on [{a}, {b}), u = x - {mid}, degree {deg}: abs error "
                  f"{mp.nstr(err, 3)}, x erfc(a): {mp.nstr(err * mp.erfc(a), 3)}")
            print("    " + ", ".join(float(c).hex() for c in coeffs))


# ---------------------------------------------------------------------------
# log1p (bp_vlog1p_d / bp_vlog1p_f): log(1 + f) = 2 atanh(s), s = f / (2 + f),
# |s| <= (sqrt2 - 1) / (sqrt2 + 1); R = 2 atanh(s) - 2s = s^2 P(s^2), P fitted
# in z = s^2, printed highest power first.
#
# Usage: python bpcore/_gemm/vmath_coeffs.py log1p
# ---------------------------------------------------------------------------

def p_log1p(z):
    if z < mp.mpf("1e-30"):
        return mp.mpf(2) / 3
    s = mp.sqrt(z)
    return (2 * mp.atanh(s) - 2 * s) / (s * z)


def show_log1p():
    smax = (mp.sqrt(2) - 1) / (mp.sqrt(2) + 1)
    for label, degree in (("f64", 6), ("f32", 2)):
        coeffs, err = mp.chebyfit(p_log1p, [0, smax ** 2], degree + 1, error=True)
        print(f"log1p {label} P(z) on [0, {mp.nstr(smax ** 2, 4)}], degree {degree}: "
              f"max abs error {mp.nstr(err, 3)}")
        print("    " + ", ".join(float(c).hex() for c in coeffs))


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["erf"]:
        show_erf()
        sys.exit()
    if sys.argv[1:] == ["log1p"]:
        show_log1p()
        sys.exit()
    T64 = mp.mpf(sys.argv[1]) if len(sys.argv) > 1 else mp.mpf("0.625")
    T32 = mp.mpf(sys.argv[2]) if len(sys.argv) > 2 else mp.mpf("0.625")
    show("exp f64 Q", q_exp, [-H, H], 9, H * H)
    show("exp f32 Q", q_exp, [-H, H], 4, H * H)
    show("expm1 f32 Q", q_exp, [-H, H], 5, H * H)  # (float64 expm1 uses exp's Q)
    show("tanh f64 G", g_tanh, [0, T64 ** 2], int(sys.argv[3]) if len(sys.argv) > 3 else 9, T64 ** 2)
    show("tanh f32 G", g_tanh, [0, T32 ** 2], int(sys.argv[4]) if len(sys.argv) > 4 else 4, T32 ** 2)
