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
from libc.math cimport exp, expf, fabs, fabsf, tanh, tanhf

import numpy as np

from bpcore import _validate as V


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

cdef extern from "vmath.h" nogil:
    # Vectorised exp / sigmoid / tanh over arrays (out may equal x); the
    # AVX2+FMA or portable build is picked once, see _set_vmath_kernel.
    void bp_exp_f32(const float* x, float* out, Py_ssize_t n)
    void bp_exp_f64(const double* x, double* out, Py_ssize_t n)
    void bp_sigmoid_f32(const float* x, float* out, Py_ssize_t n)
    void bp_sigmoid_f64(const double* x, double* out, Py_ssize_t n)
    void bp_tanh_f32(const float* x, float* out, Py_ssize_t n)
    void bp_tanh_f64(const double* x, double* out, Py_ssize_t n)
    int bp_vmath_select(int want_avx2)
    int bp_vmath_kernel()
    int BP_VMATH_AVX2_FMA


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline void _vexp(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        bp_exp_f32(x, out, n)
    else:
        bp_exp_f64(x, out, n)


cdef void activation_forward(int op, const floating* z, floating* out,
                             Py_ssize_t n) noexcept nogil:
    """out[i] := act(z[i]) for the activation ``op``; ``out`` may be ``z``."""
    cdef Py_ssize_t i
    cdef floating v
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
            # NaN propagates (v != v), as np.maximum and torch.relu do.
            out[i] = v if (v > 0 or v != v) else 0
    elif op == ACT_TANH:
        if floating is float:
            bp_tanh_f32(z, out, n)
        else:
            bp_tanh_f64(z, out, n)
    else:
        for i in range(n):
            out[i] = z[i]


cdef void activation_backward(int op, const floating* a, const floating* grad,
                              floating* out, Py_ssize_t n) noexcept nogil:
    """out[i] := grad[i] * act'(.) written with the saved output a[i]; ``out`` may alias."""
    cdef Py_ssize_t i
    cdef floating v
    if op == ACT_SIGMOID:
        for i in range(n):
            v = a[i]
            out[i] = grad[i] * (v * (1 - v))
    elif op == ACT_RELU:
        # NOTE: a > 0 after a ReLU is z > 0 before it; at the kink the
        # gradient is 0 (PyTorch's choice), and a masked NaN gradient is 0 too.
        for i in range(n):
            out[i] = grad[i] if a[i] > 0 else 0
    elif op == ACT_TANH:
        for i in range(n):
            v = a[i]
            out[i] = grad[i] * (1 - v * v)
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
    x, out = V.unary_args("x", x, out, contiguous=True)
    cdef Py_ssize_t n = out.size
    if n == 0:
        return out
    cdef const float[::1] x32
    cdef float[::1] o32
    cdef const double[::1] x64
    cdef double[::1] o64
    if out.dtype.itemsize == 4:
        x32 = x.reshape(-1)
        o32 = out.reshape(-1)
        with nogil:
            bp_exp_f32(&x32[0], &o32[0], n)
    else:
        x64 = x.reshape(-1)
        o64 = out.reshape(-1)
        with nogil:
            bp_exp_f64(&x64[0], &o64[0], n)
    return out


cdef _init_vmath():
    # BPCORE_FORCE_PORTABLE=1 (read once, at import) forces the portable kernels.
    from os import environ
    _set_vmath_kernel("portable" if environ.get("BPCORE_FORCE_PORTABLE", "0") not in ("", "0")
                      else "avx2_fma")


_init_vmath()


# ---------------------------------------------------------------------------
# Python wrappers: validate, allocate, release the GIL for the kernel.
# ---------------------------------------------------------------------------

cdef object _forward(int op, str name, z, out):
    z, out = V.unary_args(name, z, out, contiguous=True)
    cdef Py_ssize_t n = out.size
    if n == 0:
        return out
    cdef const float[::1] z32
    cdef float[::1] o32
    cdef const double[::1] z64
    cdef double[::1] o64
    if out.dtype.itemsize == 4:
        z32 = z.reshape(-1)
        o32 = out.reshape(-1)
        with nogil:
            activation_forward(op, &z32[0], &o32[0], n)
    else:
        z64 = z.reshape(-1)
        o64 = out.reshape(-1)
        with nogil:
            activation_forward(op, &z64[0], &o64[0], n)
    return out


cdef object _backward(int op, a, grad, out):
    a, grad, out = V.binary_args(a, grad, out, contiguous=True)
    cdef Py_ssize_t n = out.size
    if n == 0:
        return out
    cdef const float[::1] a32, g32
    cdef float[::1] o32
    cdef const double[::1] a64, g64
    cdef double[::1] o64
    if out.dtype.itemsize == 4:
        a32 = a.reshape(-1)
        g32 = grad.reshape(-1)
        o32 = out.reshape(-1)
        with nogil:
            activation_backward(op, &a32[0], &g32[0], &o32[0], n)
    else:
        a64 = a.reshape(-1)
        g64 = grad.reshape(-1)
        o64 = out.reshape(-1)
        with nogil:
            activation_backward(op, &a64[0], &g64[0], &o64[0], n)
    return out


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


def softmax_forward(z, *, out=None):
    """Row-wise, max-subtracted softmax of a 2-D array (compiled).

    See :func:`bpcore.reference.softmax_forward`.
    """
    z, out = V.unary_args("z", z, out, ndim=2, contiguous=True)
    cdef Py_ssize_t n_rows = out.shape[0], n_cols = out.shape[1]
    if out.size == 0:
        return out
    cdef const float[:, ::1] z32
    cdef float[:, ::1] o32
    cdef const double[:, ::1] z64
    cdef double[:, ::1] o64
    if out.dtype.itemsize == 4:
        z32 = z
        o32 = out
        with nogil:
            softmax_rows(&z32[0, 0], &o32[0, 0], n_rows, n_cols)
    else:
        z64 = z
        o64 = out
        with nogil:
            softmax_rows(&z64[0, 0], &o64[0, 0], n_rows, n_cols)
    return out
