# Design:
#
# The compiled twins of bpcore.reference.  Two layers, one job each:
#
# * ``cdef ... noexcept nogil`` kernels compute on raw pointers and lengths of
#   C-contiguous buffers, for ``floating`` = float or double.  They never
#   allocate, never raise and never touch a Python object, so the fused
#   training step can call them back to back without the GIL.  They are
#   declared in _kernels.pxd.
# * ``def`` wrappers with the reference's exact names and signatures validate
#   and allocate through bpcore._validate (the one place the dtype / shape /
#   out policy lives), take the pointers, release the GIL for the kernel and
#   return NumPy arrays.
#
# Elementwise ops see their arrays as flat vectors: validation made them
# C-contiguous, so any shape is one run of memory.  Kernels read every element
# before writing it, which is what allows ``out`` to be an input (in place).
#
# NOTE: strides.  PyArray_IS_C_CONTIGUOUS is also true for arrays whose size-1
# dimensions have any stride (a huge one, 0, negative): the elements are still
# one run from the data pointer.  So nothing here reads ``strides``: every
# offset comes from the shape (row i at i * n_cols), which is right for those
# arrays too; the general path hands over views with canonical strides
# (_validate.canonical), so a stride read further down would be right as well.
from libc.math cimport INFINITY, exp, fabs, log, log1p, pow, sqrt

import os

import numpy as np
cimport numpy as cnp
from bpcore._policy cimport final_array, plain_array as _plain

cnp.import_array()

from bpcore import _env
from bpcore import _validate as V
from bpcore._gemm cimport (gemm, BP_OK, BP_ENOMEM, BP_EPI_NONE, BP_EPI_BIAS)


cdef extern from "reduce.h" nogil:
    double bp_mse_f32(const float* p, const float* t, float* grad, Py_ssize_t n, double scale)
    double bp_mse_f64(const double* p, const double* t, double* grad, Py_ssize_t n,
                      double scale)

# optim.h's update kernels are declared in _kernels.pxd (shared with _step.pyx).


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

cdef extern from "pointwise.h" nogil:
    void bp_leaky_relu_f32(const float* z, float* out, Py_ssize_t n, float c)
    void bp_leaky_relu_f64(const double* z, double* out, Py_ssize_t n, double c)
    void bp_select_above_f32(const float* key, const float* x, const float* a, float* out,
                             Py_ssize_t n, float scale, float thr)
    void bp_select_above_f64(const double* key, const double* x, const double* a, double* out,
                             Py_ssize_t n, double scale, double thr)
    void bp_select_at_most_f32(const float* key, const float* x, const float* a, float* out,
                               Py_ssize_t n, float scale, float thr)
    void bp_select_at_most_f64(const double* key, const double* x, const double* a,
                               double* out, Py_ssize_t n, double scale, double thr)

cdef extern from "vmath.h" nogil:
    # Vectorised exp / sigmoid / tanh over arrays (out may equal x); the
    # AVX2+FMA or portable build is picked once, see _set_vmath_kernel.
    void bp_exp_f32(const float* x, float* out, Py_ssize_t n)
    void bp_exp_f64(const double* x, double* out, Py_ssize_t n)
    void bp_sigmoid_f32(const float* x, float* out, Py_ssize_t n)
    void bp_sigmoid_f64(const double* x, double* out, Py_ssize_t n)
    void bp_tanh_f32(const float* x, float* out, Py_ssize_t n)
    void bp_tanh_f64(const double* x, double* out, Py_ssize_t n)
    void bp_erf_f32(const float* x, float* out, Py_ssize_t n)
    void bp_erf_f64(const double* x, double* out, Py_ssize_t n)
    void bp_expm1_f32(const float* x, float* out, Py_ssize_t n)
    void bp_expm1_f64(const double* x, double* out, Py_ssize_t n)
    void bp_log1p_f32(const float* x, float* out, Py_ssize_t n)
    void bp_log1p_f64(const double* x, double* out, Py_ssize_t n)
    void bp_gelu_grad_f32(const float* x, float* out, Py_ssize_t n)
    void bp_gelu_grad_f64(const double* x, double* out, Py_ssize_t n)
    int bp_vmath_select(int want_avx2)
    int bp_vmath_kernel()
    int BP_VMATH_AVX2_FMA


cdef inline void _vexp(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_exp_f32(x, out, n)
    else:
        bp_exp_f64(x, out, n)


# PyTorch's constants (ATen's GeluKernel), rounded once to double (the exact gelu's
# derivative has its own copy in vmath.h, BP_SQRT1_2 and BP_GELU_BETA).
cdef double SQRT1_2 = 0.70710678118654752440       # M_SQRT1_2
cdef double GELU_TANH_BETA = 1.41421356237309504880 * 1.12837916709551257390 * 0.5
cdef double GELU_TANH_KAPPA = 0.044715

cdef enum:
    # The activations built on a vector-math call work through stack chunks of
    # this many elements: the call's result for z[j0:j0+CHUNK] is formed first,
    # then combined with z element by element, so ``out`` may be ``z``.
    CHUNK = 256


cdef inline void _verf(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_erf_f32(x, out, n)
    else:
        bp_erf_f64(x, out, n)


cdef inline void _vexpm1(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_expm1_f32(x, out, n)
    else:
        bp_expm1_f64(x, out, n)


cdef inline void _vlog1p(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_log1p_f32(x, out, n)
    else:
        bp_log1p_f64(x, out, n)


cdef inline void _select_above(const floating* key, const floating* x, const floating* a,
                               floating* out, Py_ssize_t n, floating scale,
                               floating thr) noexcept nogil:
    """out[i] := x[i] if key[i] * scale > thr else a[i], branch-free (pointwise.h)."""
    if floating is float:
        bp_select_above_f32(key, x, a, out, n, scale, thr)
    else:
        bp_select_above_f64(key, x, a, out, n, scale, thr)


cdef inline void _select_at_most(const floating* key, const floating* x, const floating* a,
                                 floating* out, Py_ssize_t n, floating scale,
                                 floating thr) noexcept nogil:
    """out[i] := x[i] if key[i] * scale <= thr else a[i], branch-free (pointwise.h)."""
    if floating is float:
        bp_select_at_most_f32(key, x, a, out, n, scale, thr)
    else:
        bp_select_at_most_f64(key, x, a, out, n, scale, thr)


cdef inline void _vtanh(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_tanh_f32(x, out, n)
    else:
        bp_tanh_f64(x, out, n)


cdef inline void _vsigmoid(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_sigmoid_f32(x, out, n)
    else:
        bp_sigmoid_f64(x, out, n)


cdef void _chunked_forward(int op, const floating* z, floating* out, Py_ssize_t n,
                           const double* param) noexcept nogil:
    """out := act(z) for the activations built on one vector-math call per chunk.

    Each formula is PyTorch's (ATen's CPU kernels), in the same order of
    operations, with bpcore's vectorised erf / tanh / sigmoid / exp.
    """
    cdef floating t[CHUNK]
    cdef Py_ssize_t j0, j, w
    cdef floating x, half = <floating>0.5, one = 1
    cdef floating k_alpha = <floating>SQRT1_2, k_beta = <floating>GELU_TANH_BETA
    cdef floating kappa = <floating>GELU_TANH_KAPPA
    cdef floating beta = <floating>_param(param, 0, 1.0)
    cdef floating threshold = <floating>_param(param, 1, 20.0)
    cdef floating alpha = <floating>_param(param, 0, 1.0), zero = 0
    for j0 in range(0, n, 256):  # CHUNK (range's step must be a literal)
        w = min(<Py_ssize_t>CHUNK, n - j0)
        if op == ACT_GELU:
            # gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2)))
            for j in range(w):
                t[j] = z[j0 + j] * k_alpha
            _verf(t, t, w)
            for j in range(w):
                out[j0 + j] = z[j0 + j] * half * (one + t[j])
        elif op == ACT_GELU_TANH:
            # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
            for j in range(w):
                x = z[j0 + j]
                t[j] = k_beta * (x + kappa * (x * x * x))
            _vtanh(t, t, w)
            for j in range(w):
                out[j0 + j] = half * z[j0 + j] * (one + t[j])
        elif op == ACT_SILU:
            # x * sigmoid(x): PyTorch writes x / (1 + exp(-x)), whose exp
            # overflows below -88.7 (float32); the sigmoid of vmath.h does not.
            _vsigmoid(z + j0, t, w)
            for j in range(w):
                out[j0 + j] = z[j0 + j] * t[j]
        elif op == ACT_ELU:
            # PyTorch's: z <= 0 ? expm1(z) * alpha : z.  NOTE: expm1, not exp - 1,
            # keeps full relative accuracy near 0-.
            _vexpm1(z + j0, t, w)
            for j in range(w):
                t[j] = t[j] * alpha
            _select_at_most(z + j0, t, z + j0, out + j0, w, one, zero)
        else:
            # softplus: x where beta x > threshold (where log1p(exp(beta x)) / beta
            # equals x to the dtype's precision), else log1p(exp(beta x)) / beta
            # (inf above ~88 / beta in float32, never selected)
            for j in range(w):
                t[j] = z[j0 + j] * beta
            _vexp(t, t, w)
            _vlog1p(t, t, w)
            for j in range(w):
                t[j] = t[j] / beta
            _select_above(z + j0, z + j0, t, out + j0, w, beta, threshold)


cdef void _chunked_backward(int op, const floating* z, const floating* grad, floating* out,
                            Py_ssize_t n, const double* param) noexcept nogil:
    """out := grad * act'(z) for the activations whose derivative needs z (PyTorch's
    formulas, as _chunked_forward)."""
    cdef floating t[CHUNK]
    cdef Py_ssize_t j0, j, w
    cdef floating x, x_sq, left, right, half = <floating>0.5, one = 1
    cdef floating kt_beta = <floating>GELU_TANH_BETA, kappa = <floating>GELU_TANH_KAPPA
    cdef floating three = 3
    cdef floating beta = <floating>_param(param, 0, 1.0)
    cdef floating threshold = <floating>_param(param, 1, 20.0)
    for j0 in range(0, n, 256):  # CHUNK (range's step must be a literal)
        w = min(<Py_ssize_t>CHUNK, n - j0)
        if op == ACT_GELU:
            # cdf + x * pdf: 0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi),
            # in vmath.h, whose erf computes the exp once for both
            if floating is float:
                bp_gelu_grad_f32(z + j0, t, w)
            else:
                bp_gelu_grad_f64(z + j0, t, w)
            for j in range(w):
                out[j0 + j] = grad[j0 + j] * t[j]
        elif op == ACT_GELU_TANH:
            for j in range(w):
                x = z[j0 + j]
                t[j] = kt_beta * (x + kappa * (x * x * x))
            _vtanh(t, t, w)
            for j in range(w):
                x = z[j0 + j]
                x_sq = x * x
                left = half * x
                right = one + t[j]
                out[j0 + j] = grad[j0 + j] * (
                    half * right
                    + left * (one - t[j] * t[j]) * (kt_beta * (one + three * kappa * x_sq)))
        elif op == ACT_SILU:
            # sigmoid(x) (1 + x (1 - sigmoid(x)))
            _vsigmoid(z + j0, t, w)
            for j in range(w):
                out[j0 + j] = grad[j0 + j] * t[j] * (one + z[j0 + j] * (one - t[j]))
        else:
            # softplus: e / (e + 1), e = exp(beta x); 1 where beta x > threshold
            for j in range(w):
                t[j] = z[j0 + j] * beta
            _vexp(t, t, w)
            for j in range(w):
                t[j] = grad[j0 + j] * t[j] / (t[j] + one)
            _select_above(z + j0, grad + j0, t, out + j0, w, beta, threshold)


cdef void activation_forward(int op, const floating* z, floating* out,
                             Py_ssize_t n) noexcept nogil:
    """out[i] := act(z[i]) for the activation ``op`` (default parameters); ``out`` may be ``z``."""
    activation_forward_params(op, z, out, n, NULL)


cdef void activation_backward(int op, const floating* a, const floating* grad,
                              floating* out, Py_ssize_t n) noexcept nogil:
    """activation_backward_params with the default parameters."""
    activation_backward_params(op, a, grad, out, n, NULL)


cdef inline double _param(const double* param, int k, double default) noexcept nogil:
    """param[k], or PyTorch's default where the caller passed no parameters."""
    return param[k] if param != NULL else default


cdef void activation_forward_params(int op, const floating* z, floating* out, Py_ssize_t n,
                                    const double* param) noexcept nogil:
    """out[i] := act(z[i]) for the activation ``op``; ``out`` may be ``z``."""
    cdef Py_ssize_t i
    cdef floating v, c
    if op == ACT_SIGMOID:
        # NOTE: vmath.h computes e = exp(-|z|) <= 1, which never overflows, then
        # 1/(1+e) for z >= 0 and e/(1+e) below: finite for every finite z and
        # exact at the saturated ends.
        if floating is float:
            bp_sigmoid_f32(z, out, n)
        else:
            bp_sigmoid_f64(z, out, n)
    elif op == ACT_RELU:
        for i in range(n):
            v = z[i]
            # NaN propagates (v != v), as np.maximum and torch.relu do.  The
            # non-short-circuit `|` keeps the loop branch-free (vectorised).
            out[i] = v if ((v > 0) | (v != v)) else 0
    elif op == ACT_TANH:
        if floating is float:
            bp_tanh_f32(z, out, n)
        else:
            bp_tanh_f64(z, out, n)
    elif op == ACT_LEAKY_RELU:
        # PyTorch's: z > 0 ? z : z * slope (the slope in the dtype; NaN stays NaN)
        # NOTE: in C (pointwise.h), where gcc vectorises the select; Cython's
        # loop kept a branch that mispredicted on every other sign.
        c = <floating>_param(param, 0, 0.01)
        if floating is float:
            bp_leaky_relu_f32(z, out, n, c)
        else:
            bp_leaky_relu_f64(z, out, n, c)
    elif activation_needs_z(op) or op == ACT_ELU:
        _chunked_forward(op, z, out, n, param)
    else:
        for i in range(n):
            out[i] = z[i]


cdef void activation_backward_params(int op, const floating* saved, const floating* grad,
                                     floating* out, Py_ssize_t n,
                                     const double* param) noexcept nogil:
    """out[i] := grad[i] * act'(.) from what the forward saved; ``out`` may alias.

    ``saved`` is the output a = act(z), or the input z for the activations
    whose derivative needs it (activation_needs_z).
    """
    cdef Py_ssize_t i, i0, w
    cdef floating v, c
    cdef floating t[CHUNK]
    cdef const floating* a = saved
    if op == ACT_SIGMOID:
        for i in range(n):
            v = a[i]
            out[i] = grad[i] * (v * (1 - v))
    elif op == ACT_RELU:
        # NOTE: a > 0 after a ReLU is z > 0 before it; at the kink the
        # gradient is 0 (PyTorch's choice), and a masked NaN gradient is 0 too.
        for i in range(n):
            v = grad[i]
            out[i] = v if a[i] > 0 else 0
    elif op == ACT_TANH:
        for i in range(n):
            v = a[i]
            out[i] = grad[i] * (1 - v * v)
    elif op == ACT_LEAKY_RELU:
        # NOTE: with slope >= 0, a > 0 exactly where z > 0 (the kink gets the slope,
        # as PyTorch's leaky_relu_backward).
        c = <floating>_param(param, 0, 0.01)
        for i in range(n):
            out[i] = grad[i] * (<floating>1 if a[i] > <floating>0 else c)  # as forward
    elif op == ACT_ELU:
        # NOTE: from the output, as PyTorch's elu_backward with is_result (its
        # in-place elu_): z <= 0 <=> a <= 0 for alpha >= 0, and
        # alpha * exp(z) = a + alpha there.
        # (In chunks with a branch-free select: the branch mispredicted on
        # every other sign.)
        c = <floating>_param(param, 0, 1.0)
        for i0 in range(0, n, 256):  # CHUNK
            w = min(<Py_ssize_t>CHUNK, n - i0)
            for i in range(w):
                t[i] = grad[i0 + i] * (a[i0 + i] + c)
            _select_at_most(a + i0, t, grad + i0, out + i0, w, <floating>1, <floating>0)
    elif activation_needs_z(op):
        _chunked_backward(op, saved, grad, out, n, param)
    else:
        for i in range(n):
            out[i] = grad[i]


# NOTE: one running max or sum is a chain of dependent operations, one per
# element; eight interleaved partials let them overlap (gcc vectorises them),
# which matters once exp is vectorised.  The sum's order differs from NumPy's
# pairwise sum only by rounding.

cdef inline floating _row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max(x[0:n]), n >= 1; NaN elements are skipped unless x[0] is NaN."""
    cdef floating acc[8]
    cdef floating m
    cdef Py_ssize_t j, k, n8 = n - n % 8
    for k in range(8):
        acc[k] = x[0]
    for j in range(0, n8, 8):
        for k in range(8):
            acc[k] = x[j + k] if x[j + k] > acc[k] else acc[k]
    m = acc[0]
    for k in range(1, 8):
        m = acc[k] if acc[k] > m else m
    for j in range(n8, n):
        m = x[j] if x[j] > m else m
    return m


cdef inline floating _row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum(x[0:n]) in eight interleaved partial sums."""
    cdef floating acc[8]
    cdef Py_ssize_t j, k, n8 = n - n % 8
    for k in range(8):
        acc[k] = 0
    for j in range(0, n8, 8):
        for k in range(8):
            acc[k] = acc[k] + x[j + k]
    for j in range(n8, n):
        acc[0] = acc[0] + x[j]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef void softmax_rows(const floating* z, floating* out, Py_ssize_t n_rows,
                       Py_ssize_t n_cols) noexcept nogil:
    """Row-wise softmax of an (n_rows, n_cols) C-contiguous matrix; ``out`` may be ``z``."""
    cdef Py_ssize_t i, j
    cdef floating m, total
    cdef const floating* zi
    cdef floating* oi
    if n_cols == 0:
        return
    for i in range(n_rows):
        zi = z + i * n_cols
        oi = out + i * n_cols
        # NOTE: subtracting the row maximum keeps exp() <= 1.  NaN needs no
        # special case: one NaN (or +inf - +inf) makes the sum NaN, hence
        # the whole row NaN, as in NumPy and PyTorch.
        m = _row_max(zi, n_cols)
        for j in range(n_cols):
            oi[j] = zi[j] - m
        _vexp(oi, oi, n_cols)
        total = 1 / _row_sum(oi, n_cols)
        for j in range(n_cols):
            oi[j] = oi[j] * total


# ---------------------------------------------------------------------------
# Vector math kernels (vmath.h): which build runs, for tests and benchmarks.
# ---------------------------------------------------------------------------

_VMATH_NAMES = ("portable", "avx2_fma")


def _set_vmath_kernel(name):
    """Select the exp/sigmoid/tanh kernels: ``"avx2_fma"`` (when the CPU has it) or ``"portable"``.

    Returns the name of the kernels now in use.  For tests and benchmarks.
    """
    V.check_choice("name", name, _VMATH_NAMES)
    return _VMATH_NAMES[bp_vmath_select(name == "avx2_fma") == BP_VMATH_AVX2_FMA]


def _vmath_kernel():
    """The name of the exp/sigmoid/tanh kernels in use: ``"avx2_fma"`` or ``"portable"``."""
    return _VMATH_NAMES[bp_vmath_kernel() == BP_VMATH_AVX2_FMA]


def _vmath_exp(x, *, out=None):
    """``exp(x)`` elementwise with the vmath kernel (compiled); for tests.

    Same argument policy as :func:`sigmoid_forward`.
    """
    x, buf = V.unary_args("x", x, out, contiguous=True)
    cdef Py_ssize_t n = buf.size
    if n == 0:
        return buf if out is None else out
    cdef const float[::1] x32
    cdef float[::1] o32
    cdef const double[::1] x64
    cdef double[::1] o64
    if buf.dtype.itemsize == 4:
        x32 = x.reshape(-1)
        o32 = buf.reshape(-1)
        with nogil:
            bp_exp_f32(&x32[0], &o32[0], n)
    else:
        x64 = x.reshape(-1)
        o64 = buf.reshape(-1)
        with nogil:
            bp_exp_f64(&x64[0], &o64[0], n)
    return buf if out is None else out


cdef enum:
    # The vmath functions _vmath_unary can run (for the tests' wrappers below)
    VM_ERF = 0
    VM_EXPM1 = 1
    VM_LOG1P = 2


cdef _vmath_unary(int fn, x, out):
    """``fn(x)`` elementwise with the vmath kernel (argument policy of :func:`sigmoid_forward`)."""
    x, buf = V.unary_args("x", x, out, contiguous=True)
    cdef Py_ssize_t n = buf.size
    if n == 0:
        return buf if out is None else out
    cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef bint f32 = buf.dtype.itemsize == 4
    with nogil:
        if fn == VM_ERF and f32:
            bp_erf_f32(<const float*>xp, <float*>op, n)
        elif fn == VM_ERF:
            bp_erf_f64(<const double*>xp, <double*>op, n)
        elif fn == VM_EXPM1 and f32:
            bp_expm1_f32(<const float*>xp, <float*>op, n)
        elif fn == VM_EXPM1:
            bp_expm1_f64(<const double*>xp, <double*>op, n)
        elif f32:
            bp_log1p_f32(<const float*>xp, <float*>op, n)
        else:
            bp_log1p_f64(<const double*>xp, <double*>op, n)
    return buf if out is None else out


def _vmath_erf(x, *, out=None):
    """``erf(x)`` elementwise with the vmath kernel (compiled); for tests.

    Same argument policy as :func:`sigmoid_forward`.
    """
    return _vmath_unary(VM_ERF, x, out)


def _vmath_expm1(x, *, out=None):
    """``exp(x) - 1`` elementwise with the vmath kernel (compiled); for tests."""
    return _vmath_unary(VM_EXPM1, x, out)


def _vmath_log1p(x, *, out=None):
    """``log(1 + x)`` elementwise with the vmath kernel (compiled); for tests."""
    return _vmath_unary(VM_LOG1P, x, out)


cdef _init_vmath():
    # BPCORE_FORCE_PORTABLE (read once, at import) forces the portable kernels.
    _set_vmath_kernel("portable" if _env.force_portable() else "avx2_fma")


_init_vmath()


# ---------------------------------------------------------------------------
# Python wrappers: validate, allocate, release the GIL for the kernel.
#
# The common call -- float32/float64 ndarrays that are already C-contiguous,
# ``out`` absent or right -- is recognised with a few C-API macros and skips
# the general validation in bpcore._validate, which costs microseconds: on
# small arrays that overhead is the whole call.  Anything else takes the
# general path, which converts or raises with the policy's messages.
# ---------------------------------------------------------------------------

def _is_plain(arr, contiguous=True):
    """Whether ``arr`` is in final form (bpcore/_policy.pxd), which the fast paths take as is."""
    return final_array(arr, contiguous) >= 0


cdef inline bint _disjoint(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    return pa + cnp.PyArray_NBYTES(a) <= pb or pb + cnp.PyArray_NBYTES(b) <= pa


cdef inline bint _out_fits(object out, cnp.ndarray like, int t, object in1, object in2) noexcept:
    """``out`` is a writeable C-contiguous ndarray shaped like ``like`` with type ``t``,
    identical to or disjoint from each input (in1/in2 may be None)."""
    if _plain(out) != t:
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out
    if not cnp.PyArray_ISWRITEABLE(o) or not cnp.PyArray_SAMESHAPE(o, like):
        return False
    for arr in (in1, in2):
        if arr is not None and not (cnp.PyArray_DATA(<cnp.ndarray>arr) == cnp.PyArray_DATA(o)
                                    or _disjoint(<cnp.ndarray>arr, o)):
            return False
    return True


cdef inline bint _out_fits_2d(object out, int t, Py_ssize_t n0, Py_ssize_t n1,
                              object in1, object in2, object in3) noexcept:
    """``out`` is a writeable C-contiguous (n0, n1) ndarray of type ``t`` overlapping no input."""
    if _plain(out) != t:
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out
    if (not cnp.PyArray_ISWRITEABLE(o) or cnp.PyArray_NDIM(o) != 2
            or cnp.PyArray_DIM(o, 0) != n0 or cnp.PyArray_DIM(o, 1) != n1):
        return False
    return (_disjoint(<cnp.ndarray>in1, o) and _disjoint(<cnp.ndarray>in2, o)
            and _disjoint(<cnp.ndarray>in3, o))


cdef inline cnp.ndarray _empty_like(cnp.ndarray like, int t):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), cnp.PyArray_DIMS(like), t, 0)


cdef object _forward(int op, str name, z, out, double p0=0.0, double p1=0.0):
    cdef double param[2]
    param[0] = p0
    param[1] = p1
    cdef int t = _plain(z)
    cdef object buf = out
    if not (t >= 0 and (out is None or _out_fits(out, <cnp.ndarray>z, t, z, None))):
        z, buf = V.unary_args(name, z, out, contiguous=True)
        t = _plain(z)
    if buf is None:
        buf = _empty_like(<cnp.ndarray>z, t)
    cdef void* zp = cnp.PyArray_DATA(<cnp.ndarray>z)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>z)
    with nogil:
        if t == cnp.NPY_FLOAT:
            activation_forward_params(op, <const float*>zp, <float*>outp, n, param)
        else:
            activation_forward_params(op, <const double*>zp, <double*>outp, n, param)
    return buf if out is None else out


cdef object _backward(int op, a, grad, out, double p0=0.0, double p1=0.0, str saved="a"):
    cdef double param[2]
    param[0] = p0
    param[1] = p1
    cdef int t = _plain(a)
    cdef object buf = out
    if not (t >= 0 and _plain(grad) == t
            and cnp.PyArray_SAMESHAPE(<cnp.ndarray>a, <cnp.ndarray>grad)
            and (out is None or _out_fits(out, <cnp.ndarray>a, t, a, grad))):
        a, grad, buf = V.binary_args(a, grad, out, contiguous=True, saved=saved)
        t = _plain(a)
    if buf is None:
        buf = _empty_like(<cnp.ndarray>a, t)
    cdef void* ap = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>a)
    with nogil:
        if t == cnp.NPY_FLOAT:
            activation_backward_params(op, <const float*>ap, <const float*>gp, <float*>outp, n,
                                       param)
        else:
            activation_backward_params(op, <const double*>ap, <const double*>gp,
                                       <double*>outp, n, param)
    return buf if out is None else out


def sigmoid_forward(z, *, out=None):
    """Logistic function ``1 / (1 + exp(-z))``, elementwise (compiled).

    See :func:`bpcore.reference.sigmoid_forward`.
    """
    return _forward(ACT_SIGMOID, "z", z, out)


def sigmoid_backward(a, grad, *, out=None):
    """``grad * a * (1 - a)`` from the saved sigmoid output ``a`` (compiled).

    See :func:`bpcore.reference.sigmoid_backward`.
    """
    return _backward(ACT_SIGMOID, a, grad, out)


def relu_forward(z, *, out=None):
    """``max(z, 0)`` elementwise, NaN propagating (compiled).

    See :func:`bpcore.reference.relu_forward`.
    """
    return _forward(ACT_RELU, "z", z, out)


def relu_backward(a, grad, *, out=None):
    """``grad`` where the saved ReLU output ``a > 0``, else 0 (compiled).

    See :func:`bpcore.reference.relu_backward`.
    """
    return _backward(ACT_RELU, a, grad, out)


def tanh_forward(z, *, out=None):
    """Hyperbolic tangent, elementwise (compiled).

    See :func:`bpcore.reference.tanh_forward`.
    """
    return _forward(ACT_TANH, "z", z, out)


def tanh_backward(a, grad, *, out=None):
    """``grad * (1 - a**2)`` from the saved tanh output ``a`` (compiled).

    See :func:`bpcore.reference.tanh_backward`.
    """
    return _backward(ACT_TANH, a, grad, out)


def identity_forward(z, *, out=None):
    """A copy of ``z`` (compiled).

    See :func:`bpcore.reference.identity_forward`.
    """
    return _forward(ACT_IDENTITY, "z", z, out)


def identity_backward(a, grad, *, out=None):
    """A copy of ``grad`` (compiled).

    See :func:`bpcore.reference.identity_backward`.
    """
    return _backward(ACT_IDENTITY, a, grad, out)


def leaky_relu_forward(z, *, negative_slope=0.01, out=None):
    """``z`` where ``z > 0``, else ``negative_slope * z`` (compiled).

    See :func:`bpcore.reference.leaky_relu_forward`.
    """
    return _forward(ACT_LEAKY_RELU, "z", z, out, V.activation_param("negative_slope",
                                                                   negative_slope))


def leaky_relu_backward(a, grad, *, negative_slope=0.01, out=None):
    """``grad`` where the saved output ``a > 0``, else ``negative_slope * grad`` (compiled).

    See :func:`bpcore.reference.leaky_relu_backward`.
    """
    return _backward(ACT_LEAKY_RELU, a, grad, out,
                     V.activation_param("negative_slope", negative_slope))


def elu_forward(z, *, alpha=1.0, out=None):
    """``z`` where ``z > 0``, else ``alpha * expm1(z)`` (compiled).

    See :func:`bpcore.reference.elu_forward`.
    """
    return _forward(ACT_ELU, "z", z, out, V.activation_param("alpha", alpha))


def elu_backward(a, grad, *, alpha=1.0, out=None):
    """``grad`` where the saved output ``a > 0``, else ``grad * (a + alpha)`` (compiled).

    See :func:`bpcore.reference.elu_backward`.
    """
    return _backward(ACT_ELU, a, grad, out, V.activation_param("alpha", alpha))


def gelu_forward(z, *, out=None):
    """Exact GELU ``z * 0.5 * (1 + erf(z / sqrt(2)))`` (compiled).

    See :func:`bpcore.reference.gelu_forward`.
    """
    return _forward(ACT_GELU, "z", z, out)


def gelu_backward(z, grad, *, out=None):
    """Gradient through the exact GELU from its input ``z`` (compiled).

    See :func:`bpcore.reference.gelu_backward`.
    """
    return _backward(ACT_GELU, z, grad, out, 0.0, 0.0, "z")


def gelu_tanh_forward(z, *, out=None):
    """GELU's tanh approximation (PyTorch's ``approximate="tanh"``) (compiled).

    See :func:`bpcore.reference.gelu_tanh_forward`.
    """
    return _forward(ACT_GELU_TANH, "z", z, out)


def gelu_tanh_backward(z, grad, *, out=None):
    """Gradient through GELU's tanh approximation from its input ``z`` (compiled).

    See :func:`bpcore.reference.gelu_tanh_backward`.
    """
    return _backward(ACT_GELU_TANH, z, grad, out, 0.0, 0.0, "z")


def silu_forward(z, *, out=None):
    """SiLU (swish) ``z * sigmoid(z)`` (compiled).

    See :func:`bpcore.reference.silu_forward`.
    """
    return _forward(ACT_SILU, "z", z, out)


def silu_backward(z, grad, *, out=None):
    """Gradient through SiLU from its input ``z`` (compiled).

    See :func:`bpcore.reference.silu_backward`.
    """
    return _backward(ACT_SILU, z, grad, out, 0.0, 0.0, "z")


def softplus_forward(z, *, beta=1.0, threshold=20.0, out=None):
    """``log1p(exp(beta * z)) / beta``, ``z`` itself where ``beta * z > threshold`` (compiled).

    See :func:`bpcore.reference.softplus_forward`.
    """
    return _forward(ACT_SOFTPLUS, "z", z, out, V.activation_param("beta", beta),
                    V.activation_param("threshold", threshold))


def softplus_backward(z, grad, *, beta=1.0, threshold=20.0, out=None):
    """Gradient through softplus from its input ``z`` (compiled).

    See :func:`bpcore.reference.softplus_backward`.
    """
    return _backward(ACT_SOFTPLUS, z, grad, out, V.activation_param("beta", beta),
                     V.activation_param("threshold", threshold), "z")


def softmax_forward(z, *, out=None):
    """Row-wise, max-subtracted softmax of a 2-D array (compiled).

    See :func:`bpcore.reference.softmax_forward`.
    """
    cdef int t = _plain(z)
    cdef object buf = out
    if not (t >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>z) == 2
            and (out is None or _out_fits(out, <cnp.ndarray>z, t, z, None))):
        z, buf = V.unary_args("z", z, out, ndim=2, contiguous=True)
        t = _plain(z)
    if buf is None:
        buf = _empty_like(<cnp.ndarray>z, t)
    cdef void* zp = cnp.PyArray_DATA(<cnp.ndarray>z)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef Py_ssize_t n_rows = cnp.PyArray_DIM(<cnp.ndarray>z, 0)
    cdef Py_ssize_t n_cols = cnp.PyArray_DIM(<cnp.ndarray>z, 1)
    with nogil:
        if t == cnp.NPY_FLOAT:
            softmax_rows(<const float*>zp, <float*>outp, n_rows, n_cols)
        else:
            softmax_rows(<const double*>zp, <double*>outp, n_rows, n_cols)
    return buf if out is None else out


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

cdef double mse_forward_backward(const floating* pred, const floating* target,
                                 floating* grad_out, Py_ssize_t n,
                                 double scale) noexcept nogil:
    """loss := scale * sum((pred - target)**2); grad_out := 2 * scale * (pred - target).

    ``grad_out`` may be NULL (loss only) or alias ``pred``.  One pass; the sum
    runs in double for both dtypes, in vector partial sums (reduce.h).
    """
    if floating is float:
        return bp_mse_f32(pred, target, grad_out, n, scale)
    else:
        return bp_mse_f64(pred, target, grad_out, n, scale)


# softmax_cross_entropy_rows: rows per exp call (and their elements, kept in L1).
cdef enum:
    _SOFTMAX_BLOCK_ROWS = 64
cdef Py_ssize_t _SOFTMAX_BLOCK_ELEMS = 2048


cdef inline double _shifted_exp_sum(const floating* zi, floating m, floating* gi,
                                    Py_ssize_t n_cols) noexcept nogil:
    """sum_j exp(zi[j] - m); the terms into gi[0:n_cols] (gi NULL: in stack-sized chunks,
    nothing written)."""
    cdef floating chunk[256]
    cdef Py_ssize_t j, j0, width
    cdef double s = 0
    if gi != NULL:
        for j in range(n_cols):
            gi[j] = zi[j] - m
        _vexp(gi, gi, n_cols)
        return _row_sum(gi, n_cols)
    for j0 in range(0, n_cols, 256):
        width = min(256, n_cols - j0)
        for j in range(width):
            chunk[j] = zi[j0 + j] - m
        _vexp(chunk, chunk, width)
        s += _row_sum(chunk, width)
    return s


cdef double softmax_cross_entropy_rows(const floating* logits, const long long* labels,
                                       floating* grad_out, Py_ssize_t n_rows,
                                       Py_ssize_t n_cols, double grad_scale) noexcept nogil:
    """Sum over rows of logsumexp(z_i) - z_i[label_i]; grad_out := (softmax - onehot) * grad_scale.

    ``grad_out`` may be NULL (loss only) or alias ``logits``.  Labels were
    checked in Python to lie in [0, n_cols).
    """
    cdef Py_ssize_t i, j, i0, rows, block
    cdef const floating* zi
    cdef floating* gi = NULL
    cdef floating m, zl
    cdef floating ms[_SOFTMAX_BLOCK_ROWS]
    cdef floating zls[_SOFTMAX_BLOCK_ROWS]
    cdef double total = 0, s, inv
    if grad_out != NULL:
        # NOTE: a block of rows shifted first, then one exp call over the whole
        # block (contiguous in grad_out): per row of 10 classes the call and its
        # padded tail cost more than the exps (digits: ~2 us a step).  The exp is
        # the same formula at every position (vmath.h), so the same floats.
        block = max(1, min(<Py_ssize_t>_SOFTMAX_BLOCK_ROWS, _SOFTMAX_BLOCK_ELEMS // n_cols))
        i0 = 0
        while i0 < n_rows:
            rows = min(block, n_rows - i0)
            for i in range(i0, i0 + rows):
                zi = logits + i * n_cols
                gi = grad_out + i * n_cols
                m = _row_max(zi, n_cols)      # before gi overwrites zi (aliasing)
                ms[i - i0], zls[i - i0] = m, zi[labels[i]]
                for j in range(n_cols):
                    gi[j] = zi[j] - m
            _vexp(grad_out + i0 * n_cols, grad_out + i0 * n_cols, rows * n_cols)
            for i in range(i0, i0 + rows):
                gi = grad_out + i * n_cols
                s = _row_sum(gi, n_cols)
                inv = grad_scale / s
                for j in range(n_cols):
                    gi[j] = <floating>(gi[j] * inv)
                gi[labels[i]] -= <floating>grad_scale
                total += (<double>ms[i - i0] - zls[i - i0]) + log(s)
            i0 += rows
        return total
    for i in range(n_rows):
        zi = logits + i * n_cols
        # NOTE: shifting by the row maximum keeps every exp() <= 1 and the
        # loss (m - z_label) + log(sum) finite for logits up to +-1e30.
        m = _row_max(zi, n_cols)
        zl = zi[labels[i]]
        s = _shifted_exp_sum(zi, m, gi, n_cols)
        total += (<double>m - zl) + log(s)
    return total


cdef double softmax_cross_entropy_weighted_rows(
        const floating* logits, const long long* labels, const double* class_weight,
        double smoothing, floating* grad_out, Py_ssize_t n_rows, Py_ssize_t n_cols,
        double grad_scale) noexcept nogil:
    """PyTorch's cross-entropy with class weights w (NULL: 1) and label smoothing eps:
    sum over rows of (1 - eps) w[y_i] (lse_i - z_i[y_i]) + (eps / C) sum_c w_c (lse_i - z_ic);
    grad_out := its gradient times grad_scale,
    (p_ic ((1 - eps) w[y_i] + (eps / C) sum_c w_c) - (1 - eps) w[y_i] [c = y_i] - (eps / C) w_c).

    (torch.nn.functional.cross_entropy's label_smoothing term with weights: the
    smoothing part is weighted by w_c, and its "mean" divides both parts by
    sum_i w[y_i], which the caller does.)  ``grad_out`` may be NULL.
    """
    cdef Py_ssize_t i, j
    cdef const floating* zi
    cdef floating* gi = NULL
    cdef floating m
    cdef double total = 0, s, log_s, wy, wsum = 0, wz, keep = 1 - smoothing
    cdef double share = smoothing / n_cols, coef
    for j in range(n_cols):
        wsum += class_weight[j] if class_weight != NULL else 1.0
    for i in range(n_rows):
        zi = logits + i * n_cols
        m = _row_max(zi, n_cols)
        wy = class_weight[labels[i]] if class_weight != NULL else 1.0
        # sum_c w_c (m - z_ic), the smoothing term's part that needs no exp
        wz = 0
        for j in range(n_cols):
            wz += (class_weight[j] if class_weight != NULL else 1.0) * (<double>m - zi[j])
        if grad_out != NULL:
            gi = grad_out + i * n_cols
        s = _shifted_exp_sum(zi, m, gi, n_cols)
        if grad_out != NULL:
            coef = (keep * wy + share * wsum) * grad_scale / s
            for j in range(n_cols):
                gi[j] = <floating>(gi[j] * coef - share * grad_scale
                                   * (class_weight[j] if class_weight != NULL else 1.0))
            gi[labels[i]] -= <floating>(keep * wy * grad_scale)
        log_s = log(s)
        total += keep * wy * ((<double>m - zi[labels[i]]) + log_s) + share * (wz + wsum * log_s)
    return total


cdef object _pointwise(int kind, pred, target, reduction, double param, out,
                       bint want_grad):
    """(loss, gradient buffer) of a pointwise loss: MSE (REG_MSE) or regression_loss's."""
    scales = _MSE_SCALE if kind == REG_MSE else _REGRESSION_SCALE
    cdef int t = _plain(pred)
    cdef object buf = out
    if not (t >= 0 and _plain(target) == t and type(reduction) is str
            and reduction in scales
            and cnp.PyArray_SAMESHAPE(<cnp.ndarray>pred, <cnp.ndarray>target)
            and (not want_grad or out is None
                 or _out_fits(out, <cnp.ndarray>pred, t, pred, target))):
        pred, target, buf = V.mse_args(
            pred, target, reduction, out, want_out=want_grad, contiguous=True,
            reductions=V.REDUCTIONS_MSE if kind == REG_MSE else V.REDUCTIONS_CE)
        t = _plain(pred)
    if want_grad and buf is None:
        buf = _empty_like(<cnp.ndarray>pred, t)
    result = buf if out is None else out
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>pred)
    cdef double scale = scales[reduction]
    if reduction == "mean" or reduction == "half_mean":
        if n == 0:
            return float("nan"), result
        scale = scale / n
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>pred)
    cdef void* tp = cnp.PyArray_DATA(<cnp.ndarray>target)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf) if want_grad else NULL
    cdef double loss
    with nogil:
        if t == cnp.NPY_FLOAT:
            loss = regression_loss(kind, <const float*>pp, <const float*>tp, <float*>outp, n,
                                   param, scale)
        else:
            loss = regression_loss(kind, <const double*>pp, <const double*>tp, <double*>outp,
                                   n, param, scale)
    return loss, result


cdef object _mse(pred, target, reduction, out, bint want_grad):
    return _pointwise(REG_MSE, pred, target, reduction, 0.0, out, want_grad)


_MSE_SCALE = {"mean": 1.0, "sum": 1.0, "half_sum": 0.5, "half_mean": 0.5}
_REGRESSION_SCALE = {"mean": 1.0, "sum": 1.0}


def mse_loss(pred, target, *, reduction="mean"):
    """Squared-error loss (compiled).

    See :func:`bpcore.reference.mse_loss`.
    """
    return _mse(pred, target, reduction, None, False)[0]


def mse_loss_backward(pred, target, *, reduction="mean", out=None):
    """Gradient of :func:`mse_loss` with respect to ``pred`` (compiled).

    See :func:`bpcore.reference.mse_loss_backward`.
    """
    return _mse(pred, target, reduction, out, True)[1]


def mse_loss_and_grad(pred, target, *, reduction="mean", out=None):
    """Squared-error loss and its gradient in one pass (compiled).

    See :func:`bpcore.reference.mse_loss_and_grad`.
    """
    return _mse(pred, target, reduction, out, True)


cdef double regression_loss(int kind, const floating* pred, const floating* target,
                            floating* grad_out, Py_ssize_t n, double param,
                            double scale) noexcept nogil:
    """scale * sum_i loss(d_i), d = pred - target; grad_out[i] := scale * loss'(d_i).

    REG_MSE is mse_forward_backward (d^2; its gradient 2 d).  PyTorch's formulas and branch points: L1 |d| (gradient sign(d), 0 at 0);
    Huber z < delta ? z^2 / 2 : delta (z - delta / 2), z = |d|; smooth L1
    z < beta ? z^2 / (2 beta) : z - beta / 2.  ``grad_out`` may be NULL or alias
    ``pred`` / ``target``.  The sum runs in double.
    """
    cdef Py_ssize_t i
    cdef floating d
    cdef double total = 0, z, g
    if kind == REG_MSE:
        return mse_forward_backward(pred, target, grad_out, n, scale)
    for i in range(n):
        d = pred[i] - target[i]
        z = fabs(<double>d)
        if kind == REG_L1:
            total += z
            g = (d > 0) - (d < 0) if d == d else d
        elif kind == REG_HUBER:
            total += 0.5 * z * z if z < param else param * (z - 0.5 * param)
            g = -param if d <= -param else (param if d >= param else d)
        else:
            total += 0.5 * z * z / param if z < param else z - 0.5 * param
            g = -1.0 if d <= -param else (1.0 if d >= param else d / param)
        if grad_out != NULL:
            grad_out[i] = <floating>(scale * g)
    return scale * total


_REGRESSION = {"l1": REG_L1, "huber": REG_HUBER, "smooth_l1": REG_SMOOTH_L1}


cdef object _regression(str name, pred, target, reduction, double param, out, bint want_grad):
    cdef int kind = _REGRESSION[name]
    if kind == REG_SMOOTH_L1 and param == 0:
        kind = REG_L1  # PyTorch: smooth_l1_loss with beta = 0 is l1_loss
    return _pointwise(kind, pred, target, reduction, param, out, want_grad)


def l1_loss(pred, target, *, reduction="mean"):
    """Mean (or sum) absolute error (compiled).

    See :func:`bpcore.reference.l1_loss`.
    """
    return _regression("l1", pred, target, reduction, 0.0, None, False)[0]


def l1_loss_backward(pred, target, *, reduction="mean", out=None):
    """Gradient of :func:`l1_loss` with respect to ``pred`` (compiled).

    See :func:`bpcore.reference.l1_loss_backward`.
    """
    return _regression("l1", pred, target, reduction, 0.0, out, True)[1]


def huber_loss(pred, target, *, reduction="mean", delta=1.0):
    """Huber loss (compiled).

    See :func:`bpcore.reference.huber_loss`.
    """
    return _regression("huber", pred, target, reduction, V.regression_param("huber", delta),
                       None, False)[0]


def huber_loss_backward(pred, target, *, reduction="mean", delta=1.0, out=None):
    """Gradient of :func:`huber_loss` with respect to ``pred`` (compiled).

    See :func:`bpcore.reference.huber_loss_backward`.
    """
    return _regression("huber", pred, target, reduction, V.regression_param("huber", delta),
                       out, True)[1]


def smooth_l1_loss(pred, target, *, reduction="mean", beta=1.0):
    """Smooth L1 loss (compiled).

    See :func:`bpcore.reference.smooth_l1_loss`.
    """
    return _regression("smooth_l1", pred, target, reduction,
                       V.regression_param("smooth_l1", beta), None, False)[0]


def smooth_l1_loss_backward(pred, target, *, reduction="mean", beta=1.0, out=None):
    """Gradient of :func:`smooth_l1_loss` with respect to ``pred`` (compiled).

    See :func:`bpcore.reference.smooth_l1_loss_backward`.
    """
    return _regression("smooth_l1", pred, target, reduction,
                       V.regression_param("smooth_l1", beta), out, True)[1]


cdef inline bint _labels_fit(object labels, Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept:
    """``labels`` is a C-contiguous int64 vector of n_rows entries, all in [0, n_cols)."""
    if not cnp.PyArray_CheckExact(labels):
        return False
    cdef cnp.ndarray lab = <cnp.ndarray>labels
    if (cnp.PyArray_TYPE(lab) != cnp.NPY_INT64 or cnp.PyArray_NDIM(lab) != 1
            or cnp.PyArray_DIM(lab, 0) != n_rows or not cnp.PyArray_IS_C_CONTIGUOUS(lab)
            or not cnp.PyArray_ISBEHAVED_RO(lab)):
        return False
    cdef const long long* lp = <const long long*>cnp.PyArray_DATA(lab)
    cdef Py_ssize_t i
    for i in range(n_rows):
        if lp[i] < 0 or lp[i] >= n_cols:
            return False
    return True


cdef object _weighted_cross_entropy(logits, labels, reduction, out, bint want_grad,
                                    class_weight, double smoothing):
    """The cross-entropy with class weights and / or label smoothing (general path)."""
    logits, labels, buf = V.cross_entropy_args(logits, labels, reduction, out,
                                               want_out=want_grad, contiguous=True)
    cdef Py_ssize_t n_rows = logits.shape[0], n_cols = logits.shape[1]
    weights = V.loss_weights("class_weight", class_weight, n_cols)
    if want_grad and buf is None:
        buf = np.empty_like(logits)
    result = buf if out is None else out
    if n_rows == 0:
        return (float("nan") if reduction == "mean" else 0.0), result
    cdef double norm = 1.0
    if reduction == "mean":
        # PyTorch's weighted mean: divided by the summed weights of the targets
        norm = float(weights[labels].sum()) if weights is not None else float(n_rows)
    cdef double scale = 1.0 / norm if norm != 0 else float("nan")  # 0 / 0, as torch
    cdef const double* wp = <const double*>cnp.PyArray_DATA(weights) if weights is not None \
        else NULL
    cdef void* zp = cnp.PyArray_DATA(<cnp.ndarray>logits)
    cdef const long long* lp = <const long long*>cnp.PyArray_DATA(<cnp.ndarray>labels)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf) if want_grad else NULL
    cdef double total
    cdef bint f32 = logits.dtype == np.float32
    with nogil:
        if f32:
            total = softmax_cross_entropy_weighted_rows(<const float*>zp, lp, wp, smoothing,
                                                        <float*>outp, n_rows, n_cols, scale)
        else:
            total = softmax_cross_entropy_weighted_rows(<const double*>zp, lp, wp, smoothing,
                                                        <double*>outp, n_rows, n_cols, scale)
    return total * scale, result


cdef object _cross_entropy(logits, labels, reduction, out, bint want_grad,
                           class_weight=None, label_smoothing=0.0):
    # NOTE: the plain call (no weights, no smoothing) keeps its fast path and kernel.
    if class_weight is not None or not (type(label_smoothing) is float
                                        and label_smoothing == 0.0):
        smoothing = V.label_smoothing_arg(label_smoothing)
        if class_weight is not None or smoothing != 0:
            return _weighted_cross_entropy(logits, labels, reduction, out, want_grad,
                                           class_weight, smoothing)
    cdef int t = _plain(logits)
    cdef object buf = out
    if not (t >= 0 and type(reduction) is str and (reduction == "mean" or reduction == "sum")
            and cnp.PyArray_NDIM(<cnp.ndarray>logits) == 2
            and _labels_fit(labels, cnp.PyArray_DIM(<cnp.ndarray>logits, 0),
                            cnp.PyArray_DIM(<cnp.ndarray>logits, 1))
            and (not want_grad or out is None
                 or _out_fits(out, <cnp.ndarray>logits, t, logits, None))):
        logits, labels, buf = V.cross_entropy_args(logits, labels, reduction, out,
                                                   want_out=want_grad, contiguous=True)
        t = _plain(logits)
    if want_grad and buf is None:
        buf = _empty_like(<cnp.ndarray>logits, t)
    result = buf if out is None else out
    cdef Py_ssize_t n_rows = cnp.PyArray_DIM(<cnp.ndarray>logits, 0)
    cdef Py_ssize_t n_cols = cnp.PyArray_DIM(<cnp.ndarray>logits, 1)
    if n_rows == 0:
        return (float("nan") if reduction == "mean" else 0.0), result
    cdef double grad_scale = 1.0 / n_rows if reduction == "mean" else 1.0
    cdef void* zp = cnp.PyArray_DATA(<cnp.ndarray>logits)
    cdef const long long* lp = <const long long*>cnp.PyArray_DATA(<cnp.ndarray>labels)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf) if want_grad else NULL
    cdef double total
    with nogil:
        if t == cnp.NPY_FLOAT:
            total = softmax_cross_entropy_rows(<const float*>zp, lp, <float*>outp,
                                               n_rows, n_cols, grad_scale)
        else:
            total = softmax_cross_entropy_rows(<const double*>zp, lp, <double*>outp,
                                               n_rows, n_cols, grad_scale)
    return (total * grad_scale), result


def softmax_cross_entropy(logits, labels, *, reduction="mean", class_weight=None,
                          label_smoothing=0.0):
    """Cross-entropy of the row-wise softmax of ``logits`` against class indices (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy`.
    """
    return _cross_entropy(logits, labels, reduction, None, False, class_weight,
                          label_smoothing)[0]


def softmax_cross_entropy_backward(logits, labels, *, reduction="mean", class_weight=None,
                                   label_smoothing=0.0, out=None):
    """Gradient of :func:`softmax_cross_entropy` with respect to ``logits`` (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy_backward`.
    """
    return _cross_entropy(logits, labels, reduction, out, True, class_weight,
                          label_smoothing)[1]


def softmax_cross_entropy_and_grad(logits, labels, *, reduction="mean", class_weight=None,
                                   label_smoothing=0.0, out=None):
    """Softmax cross-entropy and its gradient in one pass (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy_and_grad`.
    """
    return _cross_entropy(logits, labels, reduction, out, True, class_weight, label_smoothing)


# ---------------------------------------------------------------------------
# Linear layers: products through the GEMM's nogil entry, transposes as strides
# ---------------------------------------------------------------------------

cdef void column_sums(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                      floating* out) noexcept nogil:
    """out[j] := sum_i x[i, j] for a C-contiguous (n_rows, n_cols) matrix, row by row."""
    cdef Py_ssize_t i, j
    cdef const floating* xi
    for j in range(n_cols):
        out[j] = 0
    for i in range(n_rows):
        xi = x + i * n_cols
        for j in range(n_cols):
            out[j] = out[j] + xi[j]


cdef int linear_forward_ptr(const floating* x, const floating* w, const floating* b,
                            floating* out, Py_ssize_t n, Py_ssize_t n_in,
                            Py_ssize_t n_out) noexcept nogil:
    """out := x @ w + b, the bias added by the GEMM's store.  Returns a BP_* status."""
    return gemm(n, n_out, n_in, <floating>1, x, n_in, 1, w, n_out, 1, <floating>0,
                out, n_out, 1, BP_EPI_BIAS, b, NULL, 0, 0)


cdef int linear_backward_ptr(const floating* x, const floating* w, const floating* grad,
                             floating* grad_x, floating* grad_w, floating* grad_b,
                             Py_ssize_t n, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """grad_x := grad @ w.T (skipped when NULL), grad_w := x.T @ grad, grad_b := column sums.

    The transposes are strides: w.T is read with row stride 1 and column
    stride n_out, x.T with row stride 1 and column stride n_in.
    """
    cdef int status = BP_OK
    if grad_x != NULL:
        status = gemm(n, n_in, n_out, <floating>1, grad, n_out, 1, w, 1, n_out,
                      <floating>0, grad_x, n_in, 1, BP_EPI_NONE, NULL, NULL, 0, 0)
        if status != BP_OK:
            return status
    status = gemm(n_in, n_out, n, <floating>1, x, 1, n_in, grad, n_out, 1,
                  <floating>0, grad_w, n_out, 1, BP_EPI_NONE, NULL, NULL, 0, 0)
    column_sums(grad, n, n_out, grad_b)
    return status


cdef inline object _raise_status(int status):
    if status == BP_ENOMEM:
        raise MemoryError("bpcore could not allocate the GEMM's packing buffers")
    if status != BP_OK:
        raise RuntimeError(f"bpcore internal error: GEMM status {status}")
    return None


def linear_forward(x, w, b, *, out=None):
    """Affine layer ``x @ w + b``, the bias fused into the product's store (compiled).

    See :func:`bpcore.reference.linear_forward`.
    """
    cdef int t = _plain(x)
    cdef object buf = out
    if not (t >= 0 and _plain(w) == t and _plain(b) == t
            and cnp.PyArray_NDIM(<cnp.ndarray>x) == 2 and cnp.PyArray_NDIM(<cnp.ndarray>w) == 2
            and cnp.PyArray_NDIM(<cnp.ndarray>b) == 1
            and cnp.PyArray_DIM(<cnp.ndarray>w, 0) == cnp.PyArray_DIM(<cnp.ndarray>x, 1)
            and cnp.PyArray_DIM(<cnp.ndarray>b, 0) == cnp.PyArray_DIM(<cnp.ndarray>w, 1)
            and (out is None or _out_fits_2d(out, t, cnp.PyArray_DIM(<cnp.ndarray>x, 0),
                                             cnp.PyArray_DIM(<cnp.ndarray>w, 1), x, w, b))):
        x, w, b, buf = V.linear_forward_args(x, w, b, out, contiguous=True)
        t = _plain(x)
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    cdef Py_ssize_t n_in = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef Py_ssize_t n_out = cnp.PyArray_DIM(<cnp.ndarray>w, 1)
    cdef cnp.npy_intp dims[2]
    if buf is None:
        dims[0] = n
        dims[1] = n_out
        buf = cnp.PyArray_EMPTY(2, dims, t, 0)
    cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef void* wp = cnp.PyArray_DATA(<cnp.ndarray>w)
    cdef void* bp = cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef void* outp = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef int status
    with nogil:
        if t == cnp.NPY_FLOAT:
            status = linear_forward_ptr(<const float*>xp, <const float*>wp, <const float*>bp,
                                        <float*>outp, n, n_in, n_out)
        else:
            status = linear_forward_ptr(<const double*>xp, <const double*>wp,
                                        <const double*>bp, <double*>outp, n, n_in, n_out)
    _raise_status(status)
    return buf if out is None else out


cdef bint _linear_outs_fit(x, w, grad, bint need_grad_x, grad_x, grad_w, grad_b,
                          int t) noexcept:
    """Each given buffer is plain, writeable, exactly shaped, and overlaps no other array."""
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    cdef Py_ssize_t n_in = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef Py_ssize_t n_out = cnp.PyArray_DIM(<cnp.ndarray>w, 1)
    given = []
    if need_grad_x and grad_x is not None:
        if not _out_fits_2d(grad_x, t, n, n_in, x, w, grad):
            return False
        given.append(grad_x)
    if grad_w is not None:
        if not _out_fits_2d(grad_w, t, n_in, n_out, x, w, grad):
            return False
        given.append(grad_w)
    if grad_b is not None:
        if (_plain(grad_b) != t or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>grad_b)
                or cnp.PyArray_NDIM(<cnp.ndarray>grad_b) != 1
                or cnp.PyArray_DIM(<cnp.ndarray>grad_b, 0) != n_out
                or not (_disjoint(<cnp.ndarray>grad_b, <cnp.ndarray>x)
                        and _disjoint(<cnp.ndarray>grad_b, <cnp.ndarray>w)
                        and _disjoint(<cnp.ndarray>grad_b, <cnp.ndarray>grad))):
            return False
        given.append(grad_b)
    for i in range(len(given)):
        for j in range(i + 1, len(given)):
            if not _disjoint(<cnp.ndarray>given[i], <cnp.ndarray>given[j]):
                return False
    return True


def linear_backward(x, w, grad, *, need_grad_x=True, grad_x=None, grad_w=None, grad_b=None):
    """Gradients of an affine layer, transposes read in place (compiled).

    See :func:`bpcore.reference.linear_backward`.
    """
    cdef int t = _plain(x)
    cdef Py_ssize_t n, n_in, n_out
    cdef cnp.npy_intp dims[2]
    given = None
    if (t >= 0 and _plain(w) == t and _plain(grad) == t and type(need_grad_x) is bool
            and cnp.PyArray_NDIM(<cnp.ndarray>x) == 2 and cnp.PyArray_NDIM(<cnp.ndarray>w) == 2
            and cnp.PyArray_NDIM(<cnp.ndarray>grad) == 2
            and cnp.PyArray_DIM(<cnp.ndarray>w, 0) == cnp.PyArray_DIM(<cnp.ndarray>x, 1)
            and cnp.PyArray_DIM(<cnp.ndarray>grad, 0) == cnp.PyArray_DIM(<cnp.ndarray>x, 0)
            and cnp.PyArray_DIM(<cnp.ndarray>grad, 1) == cnp.PyArray_DIM(<cnp.ndarray>w, 1)
            and _linear_outs_fit(x, w, grad, need_grad_x, grad_x, grad_w, grad_b, t)):
        # The common call: buffers absent, or already right and apart from everything.
        n, n_in = cnp.PyArray_DIM(<cnp.ndarray>x, 0), cnp.PyArray_DIM(<cnp.ndarray>x, 1)
        n_out = cnp.PyArray_DIM(<cnp.ndarray>w, 1)
        if not need_grad_x:
            grad_x = None
        elif grad_x is None:
            dims[0], dims[1] = n, n_in
            grad_x = cnp.PyArray_EMPTY(2, dims, t, 0)
        if grad_w is None:
            dims[0], dims[1] = n_in, n_out
            grad_w = cnp.PyArray_EMPTY(2, dims, t, 0)
        if grad_b is None:
            dims[0] = n_out
            grad_b = cnp.PyArray_EMPTY(1, dims, t, 0)
    else:
        # The caller's buffers are returned; a subclass is written through a plain view.
        given = (grad_x if need_grad_x else None, grad_w, grad_b)
        x, w, grad, grad_x, grad_w, grad_b = V.linear_backward_args(
            x, w, grad, need_grad_x, grad_x, grad_w, grad_b, contiguous=True)
        t = _plain(x)
        n, n_in, n_out = x.shape[0], x.shape[1], w.shape[1]
    cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef void* wp = cnp.PyArray_DATA(<cnp.ndarray>w)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* gxp = cnp.PyArray_DATA(<cnp.ndarray>grad_x) if grad_x is not None else NULL
    cdef void* gwp = cnp.PyArray_DATA(<cnp.ndarray>grad_w)
    cdef void* gbp = cnp.PyArray_DATA(<cnp.ndarray>grad_b)
    cdef int status
    with nogil:
        if t == cnp.NPY_FLOAT:
            status = linear_backward_ptr(<const float*>xp, <const float*>wp, <const float*>gp,
                                         <float*>gxp, <float*>gwp, <float*>gbp, n, n_in, n_out)
        else:
            status = linear_backward_ptr(<const double*>xp, <const double*>wp,
                                         <const double*>gp, <double*>gxp, <double*>gwp,
                                         <double*>gbp, n, n_in, n_out)
    _raise_status(status)
    if given is not None:
        return tuple(mine if theirs is None else theirs
                     for mine, theirs in zip((grad_x, grad_w, grad_b), given))
    return grad_x, grad_w, grad_b


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------

def sgd_update(param, grad, *, lr, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One in-place SGD step with ``torch.optim.SGD``'s rounding (compiled).

    See :func:`bpcore.reference.sgd_update`.
    """
    cdef int t = _plain(param)
    cdef double lr_, mu, wd
    cdef int nest
    if (t >= 0 and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>param) and _plain(grad) == t
            and cnp.PyArray_SAMESHAPE(<cnp.ndarray>param, <cnp.ndarray>grad)
            and (grad is param or _disjoint(<cnp.ndarray>param, <cnp.ndarray>grad))
            and type(lr) is float and type(momentum) is float and type(weight_decay) is float
            and type(nesterov) is bool):
        lr_, mu, wd, nest = lr, momentum, weight_decay, nesterov
        if not (lr_ >= 0 and mu >= 0 and wd >= 0 and lr_ < INFINITY and mu < INFINITY
                and wd < INFINITY and (mu != 0 or not nest)
                and ((mu == 0 and velocity is None) or (
                    _plain(velocity) == t and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>velocity)
                    and cnp.PyArray_SAMESHAPE(<cnp.ndarray>param, <cnp.ndarray>velocity)
                    and _disjoint(<cnp.ndarray>param, <cnp.ndarray>velocity)
                    and _disjoint(<cnp.ndarray>grad, <cnp.ndarray>velocity)))):
            t = -1
    else:
        t = -1
    p, vel = param, velocity
    if t < 0:
        # NOTE: p, vel: plain views (a subclass's type number is not _plain's).
        p, grad, vel, lr_, mu, wd, nest = V.sgd_args(param, grad, lr, momentum, velocity,
                                                     weight_decay, nesterov, contiguous=True)
        t = cnp.PyArray_TYPE(<cnp.ndarray>p)
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>p)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>vel) if mu != 0 else NULL
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    with nogil:
        if t == cnp.NPY_FLOAT:
            bp_sgd_f32(<float*>pp, <const float*>gp, <float*>vp, n,
                       <float>lr_, <float>mu, <float>wd, nest)
        else:
            bp_sgd_f64(<double*>pp, <const double*>gp, <double*>vp, n, lr_, mu, wd, nest)
    return param


# ---------------------------------------------------------------------------
# Sigmoid binary cross-entropy (binary and multi-label outputs)
# ---------------------------------------------------------------------------

cdef double sigmoid_bce(const floating* z, const floating* t, floating* grad_out,
                        Py_ssize_t n, double grad_scale) noexcept nogil:
    """sum_i max(z, 0) - z*t + log1p(exp(-|z|)); grad_out[i] := (sigmoid(z) - t) * grad_scale.

    ``grad_out`` may be NULL, ``z`` or ``t`` (each element is read before it is written).
    """
    cdef Py_ssize_t i
    cdef double total = 0, zi, ti, e, s
    for i in range(n):
        zi = z[i]
        ti = t[i]
        # NOTE: e = exp(-|z|) <= 1 never overflows, so the loss is finite for
        # |z| up to 1e30 and the sigmoid needs no branch that can overflow
        # (PyTorch's binary_cross_entropy_with_logits, same idea).
        e = exp(-fabs(zi))
        total += (max(zi, 0.0) - zi * ti) + log1p(e)
        if grad_out != NULL:
            s = 1.0 / (1.0 + e)
            s = s if zi >= 0 else e * s
            grad_out[i] = <floating>((s - ti) * grad_scale)
    return total


cdef double sigmoid_bce_pos_weight(const floating* z, const floating* t, const double* pw,
                                   floating* grad_out, Py_ssize_t n_rows, Py_ssize_t n_cols,
                                   double grad_scale) noexcept nogil:
    """PyTorch's BCE with logits and pos_weight p (one per column):
    sum (1 - t) z - (1 + (p - 1) t) log sigmoid(z); grad_out := ((1 - t) - (1 + (p - 1) t)
    sigmoid(-z)) * grad_scale.  ``grad_out`` may be NULL, ``z`` or ``t``.
    """
    cdef Py_ssize_t i, j, k
    cdef double total = 0, zi, ti, e, lw, log_sig, s_neg
    for i in range(n_rows):
        for j in range(n_cols):
            k = i * n_cols + j
            zi = z[k]
            ti = t[k]
            # NOTE: e = exp(-|z|) <= 1 never overflows (as sigmoid_bce);
            # log sigmoid(z) = min(z, 0) - log1p(e), sigmoid(-z) from e without cancellation.
            e = exp(-fabs(zi))
            lw = 1 + (pw[j] - 1) * ti
            log_sig = min(zi, 0.0) - log1p(e)
            total += (1 - ti) * zi - lw * log_sig
            if grad_out != NULL:
                s_neg = e / (1 + e) if zi >= 0 else 1 / (1 + e)
                grad_out[k] = <floating>(((1 - ti) - lw * s_neg) * grad_scale)
    return total


def _bce(logits, targets, reduction, out, bint want_grad, pos_weight=None):
    logits, targets, buf = V.bce_args(logits, targets, reduction, out, want_out=want_grad,
                                      contiguous=True)
    # NOTE: no [-1]: the build turns wraparound off, for Python sequences too
    cdef Py_ssize_t n_cols = logits.shape[logits.ndim - 1] if logits.ndim else 1
    weights = V.loss_weights("pos_weight", pos_weight, n_cols)
    result = buf if out is None else out
    cdef Py_ssize_t n = logits.size
    if n == 0:
        return (float("nan") if reduction == "mean" else 0.0), result
    cdef double scale = 1.0 / n if reduction == "mean" else 1.0
    cdef void* zp = cnp.PyArray_DATA(<cnp.ndarray>logits)
    cdef void* tp = cnp.PyArray_DATA(<cnp.ndarray>targets)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>buf) if want_grad else NULL
    cdef const double* wp = <const double*>cnp.PyArray_DATA(weights) if weights is not None \
        else NULL
    cdef double total
    cdef bint f32 = logits.dtype == np.float32
    with nogil:
        if wp != NULL and f32:
            total = sigmoid_bce_pos_weight(<const float*>zp, <const float*>tp, wp, <float*>op,
                                           n // n_cols, n_cols, scale)
        elif wp != NULL:
            total = sigmoid_bce_pos_weight(<const double*>zp, <const double*>tp, wp,
                                           <double*>op, n // n_cols, n_cols, scale)
        elif f32:
            total = sigmoid_bce(<const float*>zp, <const float*>tp, <float*>op, n, scale)
        else:
            total = sigmoid_bce(<const double*>zp, <const double*>tp, <double*>op, n, scale)
    return total * scale, result


def sigmoid_binary_cross_entropy(logits, targets, *, reduction="mean", pos_weight=None):
    """Binary cross-entropy of ``sigmoid(logits)`` against ``targets``, from the logits (compiled).

    See :func:`bpcore.reference.sigmoid_binary_cross_entropy`.
    """
    return _bce(logits, targets, reduction, None, False, pos_weight)[0]


def sigmoid_binary_cross_entropy_backward(logits, targets, *, reduction="mean", pos_weight=None,
                                          out=None):
    """Gradient of ``sigmoid_binary_cross_entropy`` (compiled).

    See :func:`bpcore.reference.sigmoid_binary_cross_entropy_backward`.
    """
    return _bce(logits, targets, reduction, out, True, pos_weight)[1]


# ---------------------------------------------------------------------------
# Adam (PyTorch) and scikit-learn's optimizers (optim.h)
# ---------------------------------------------------------------------------

def _beta(name, value):
    value = V.check_real(name, value, minimum=0.0)
    if value >= 1:
        raise ValueError(f"`{name}` must be in [0, 1); got {value}")
    return value


def _adam_family(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay,
                 bint decoupled):
    p, grad, (m, v), (lr_, eps_, wd), t = V.optimizer_args(
        param, grad, [("m", m), ("v", v)],
        [("lr", lr, 0.0, None), ("eps", eps, 0.0, None),
         ("weight_decay", weight_decay, 0.0, None)], step, contiguous=True)
    cdef double b1 = _beta("beta1", beta1), b2 = _beta("beta2", beta2)
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>p)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* mp = cnp.PyArray_DATA(<cnp.ndarray>m)
    cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>v)
    cdef Py_ssize_t n = p.size
    cdef double lrd = lr_, epsd = eps_, wdd = wd
    cdef long long tt = t
    cdef bint f32 = p.dtype == np.float32
    with nogil:
        if f32 and decoupled:
            bp_adamw_f32(<float*>pp, <const float*>gp, <float*>mp, <float*>vp, n, lrd, b1, b2,
                         epsd, wdd, tt)
        elif f32:
            bp_adam_f32(<float*>pp, <const float*>gp, <float*>mp, <float*>vp, n, lrd, b1, b2,
                        epsd, wdd, tt)
        elif decoupled:
            bp_adamw_f64(<double*>pp, <const double*>gp, <double*>mp, <double*>vp, n, lrd, b1,
                         b2, epsd, wdd, tt)
        else:
            bp_adam_f64(<double*>pp, <const double*>gp, <double*>mp, <double*>vp, n, lrd, b1,
                        b2, epsd, wdd, tt)
    return param


def adam_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0):
    """One in-place Adam step as ``torch.optim.Adam`` (compiled).

    See :func:`bpcore.reference.adam_update`.
    """
    return _adam_family(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay, False)


def adamw_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.01):
    """One in-place AdamW step as ``torch.optim.AdamW`` (compiled).

    See :func:`bpcore.reference.adamw_update`.
    """
    return _adam_family(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay, True)


def rmsprop_update(param, grad, *, lr, square_avg, alpha=0.99, eps=1e-8, weight_decay=0.0,
                   momentum=0.0, momentum_buffer=None, centered=False, grad_avg=None):
    """One in-place RMSprop step as ``torch.optim.RMSprop`` (compiled).

    See :func:`bpcore.reference.rmsprop_update`.
    """
    p, grad, bufs, (lr_, alpha_, eps_, wd, mu), centered_ = V.rmsprop_args(
        param, grad, lr, square_avg, alpha, eps, weight_decay, momentum, momentum_buffer,
        centered, grad_avg, contiguous=True)
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>p)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* sp = cnp.PyArray_DATA(<cnp.ndarray>bufs[0])
    cdef void* bp = cnp.PyArray_DATA(<cnp.ndarray>bufs[1]) if mu != 0 else NULL
    cdef void* ap = cnp.PyArray_DATA(<cnp.ndarray>bufs[len(bufs) - 1]) if centered_ else NULL
    cdef Py_ssize_t n = p.size
    cdef double lrd = lr_, ad = alpha_, epsd = eps_, wdd = wd, mud = mu
    cdef int cen = centered_
    cdef bint f32 = p.dtype == np.float32
    with nogil:
        if f32:
            bp_rmsprop_f32(<float*>pp, <const float*>gp, <float*>sp, <float*>bp, <float*>ap,
                           n, lrd, ad, epsd, wdd, mud, cen)
        else:
            bp_rmsprop_f64(<double*>pp, <const double*>gp, <double*>sp, <double*>bp,
                           <double*>ap, n, lrd, ad, epsd, wdd, mud, cen)
    return param


def sklearn_sgd_update(param, grad, *, lr, momentum, velocity, nesterov=True):
    """One in-place step of scikit-learn's MLP SGDOptimizer (compiled).

    See :func:`bpcore.reference.sklearn_sgd_update`.
    """
    p, grad, (velocity,), (lr_, mu), _ = V.optimizer_args(
        param, grad, [("velocity", velocity)],
        [("lr", lr, 0.0, None), ("momentum", momentum, 0.0, 1.0)], contiguous=True)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"`nesterov` must be a bool; got {type(nesterov).__name__}")
    cdef int nest = bool(nesterov)
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>p)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>velocity)
    cdef Py_ssize_t n = p.size
    cdef double lrd = lr_, mud = mu
    cdef bint f32 = p.dtype == np.float32
    with nogil:
        if f32:
            bp_sk_sgd_f32(<float*>pp, <const float*>gp, <float*>vp, n, <float>lrd, <float>mud,
                          nest)
        else:
            bp_sk_sgd_f64(<double*>pp, <const double*>gp, <double*>vp, n, lrd, mud, nest)
    return param


def sklearn_adam_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8):
    """One in-place step of scikit-learn's MLP AdamOptimizer (compiled).

    See :func:`bpcore.reference.sklearn_adam_update`.
    """
    p, grad, (m, v), (lr_, eps_), t = V.optimizer_args(
        param, grad, [("m", m), ("v", v)], [("lr", lr, 0.0, None), ("eps", eps, 0.0, None)],
        step, contiguous=True)
    cdef double b1 = _beta("beta1", beta1), b2 = _beta("beta2", beta2)
    # NOTE: the step size in double, as scikit-learn computes learning_rate.
    cdef double lr_t = lr_ * sqrt(1 - pow(b2, <double>t)) / (1 - pow(b1, <double>t))
    cdef double epsd = eps_
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>p)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* mp = cnp.PyArray_DATA(<cnp.ndarray>m)
    cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>v)
    cdef Py_ssize_t n = p.size
    cdef bint f32 = p.dtype == np.float32
    with nogil:
        if f32:
            bp_sk_adam_f32(<float*>pp, <const float*>gp, <float*>mp, <float*>vp, n,
                           <float>(-lr_t), <float>b1, <float>(1 - b1), <float>b2,
                           <float>(1 - b2), <float>epsd)
        else:
            bp_sk_adam_f64(<double*>pp, <const double*>gp, <double*>mp, <double*>vp, n, -lr_t,
                           b1, 1 - b1, b2, 1 - b2, epsd)
    return param


def _set_optim_kernel(name):
    """Select the update kernels: ``"avx2_fma"`` (when the CPU has it) or ``"portable"``.

    Returns the name of the kernels now in use.  For tests.
    """
    global _optim_kernel_name
    V.check_choice("name", name, ("avx2_fma", "portable"))
    _optim_kernel_name = "avx2_fma" if bp_optim_select(name == "avx2_fma") else "portable"
    return _optim_kernel_name


def _optim_kernel():
    """The name of the update kernels in use: ``"avx2_fma"`` or ``"portable"``."""
    return _optim_kernel_name


_optim_kernel_name = _set_optim_kernel("portable" if _env.force_portable() else "avx2_fma")
