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
from libc.math cimport exp, expf, fabs, fabsf, log, tanh, tanhf

import os

import numpy as np

from bpcore import _validate as V


cdef extern from "optim.h" nogil:
    void bp_sgd_f32(float* param, const float* grad, float* velocity, Py_ssize_t n,
                    float lr, float momentum, float weight_decay, int nesterov)
    void bp_sgd_f64(double* param, const double* grad, double* velocity, Py_ssize_t n,
                    double lr, double momentum, double weight_decay, int nesterov)
    int bp_optim_select(int want_avx2)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _sigmoid(floating z) noexcept nogil:
    # NOTE: exp(-|z|) <= 1 never overflows, so this is finite for every finite
    # z and exact at the saturated ends: 1/(1+e) for z >= 0, e/(1+e) below.
    cdef floating e
    if floating is float:
        e = expf(-fabsf(z))
    else:
        e = exp(-fabs(z))
    return (1 / (1 + e)) if z >= 0 else (e / (1 + e))


cdef void activation_forward(int op, const floating* z, floating* out,
                             Py_ssize_t n) noexcept nogil:
    """out[i] := act(z[i]) for the activation ``op``; ``out`` may be ``z``."""
    cdef Py_ssize_t i
    cdef floating v
    if op == ACT_SIGMOID:
        for i in range(n):
            out[i] = _sigmoid(z[i])
    elif op == ACT_RELU:
        for i in range(n):
            v = z[i]
            # NaN propagates (v != v), as np.maximum and torch.relu do.
            out[i] = v if (v > 0 or v != v) else 0
    elif op == ACT_TANH:
        for i in range(n):
            if floating is float:
                out[i] = tanhf(z[i])
            else:
                out[i] = tanh(z[i])
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
        m = zi[0]
        for j in range(1, n_cols):
            if zi[j] > m:
                m = zi[j]
        total = 0
        for j in range(n_cols):
            oi[j] = _exp(zi[j] - m)
            total = total + oi[j]
        total = 1 / total
        for j in range(n_cols):
            oi[j] = oi[j] * total


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


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

cdef double mse_forward_backward(const floating* pred, const floating* target,
                                 floating* grad_out, Py_ssize_t n,
                                 double scale) noexcept nogil:
    """loss := scale * sum((pred - target)**2); grad_out := 2 * scale * (pred - target).

    ``grad_out`` may be NULL (loss only) or alias ``pred``.  The sum runs in
    double for both dtypes, in four interleaved partial sums.
    """
    cdef Py_ssize_t i
    cdef floating r
    cdef floating two_scale = <floating>(2.0 * scale)
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t n4 = n - n % 4
    for i in range(0, n4, 4):
        s0 += (<double>pred[i] - target[i]) * (<double>pred[i] - target[i])
        s1 += (<double>pred[i + 1] - target[i + 1]) * (<double>pred[i + 1] - target[i + 1])
        s2 += (<double>pred[i + 2] - target[i + 2]) * (<double>pred[i + 2] - target[i + 2])
        s3 += (<double>pred[i + 3] - target[i + 3]) * (<double>pred[i + 3] - target[i + 3])
    for i in range(n4, n):
        s0 += (<double>pred[i] - target[i]) * (<double>pred[i] - target[i])
    if grad_out != NULL:
        for i in range(n):
            r = pred[i] - target[i]
            grad_out[i] = r * two_scale
    return scale * ((s0 + s1) + (s2 + s3))


cdef double softmax_cross_entropy_rows(const floating* logits, const long long* labels,
                                       floating* grad_out, Py_ssize_t n_rows,
                                       Py_ssize_t n_cols, double grad_scale) noexcept nogil:
    """Sum over rows of logsumexp(z_i) - z_i[label_i]; grad_out := (softmax - onehot) * grad_scale.

    ``grad_out`` may be NULL (loss only) or alias ``logits``.  Labels were
    checked in Python to lie in [0, n_cols).
    """
    cdef Py_ssize_t i, j
    cdef const floating* zi
    cdef floating* gi
    cdef floating m, zl
    cdef double total = 0, s, inv
    for i in range(n_rows):
        zi = logits + i * n_cols
        # NOTE: shifting by the row maximum keeps every exp() <= 1 and the
        # loss (m - z_label) + log(sum) finite for logits up to +-1e30.
        m = zi[0]
        for j in range(1, n_cols):
            if zi[j] > m:
                m = zi[j]
        zl = zi[labels[i]]
        s = 0
        if grad_out != NULL:
            gi = grad_out + i * n_cols
            for j in range(n_cols):
                gi[j] = _exp(zi[j] - m)
                s += gi[j]
            inv = grad_scale / s
            for j in range(n_cols):
                gi[j] = <floating>(gi[j] * inv)
            gi[labels[i]] -= <floating>grad_scale
        else:
            for j in range(n_cols):
                s += _exp(zi[j] - m)
        total += (<double>m - zl) + log(s)
    return total


cdef object _mse(pred, target, reduction, out, bint want_grad):
    pred, target = V.mse_args(pred, target, reduction, contiguous=True)
    cdef Py_ssize_t n = pred.size
    if want_grad:
        out = V.check_out(out, "out", pred.shape, pred.dtype,
                          inputs=(("pred", pred), ("target", target)), inplace_ok=True)
    cdef double scale = _MSE_SCALE[reduction]
    if reduction in ("mean", "half_mean"):
        scale = scale / n if n else float("nan")
    cdef double loss = 0.0
    cdef const float[::1] p32, t32
    cdef float[::1] o32
    cdef const double[::1] p64, t64
    cdef double[::1] o64
    if n == 0:
        loss = (float("nan") if reduction in ("mean", "half_mean") else 0.0)
    elif pred.dtype.itemsize == 4:
        p32 = pred.reshape(-1)
        t32 = target.reshape(-1)
        if want_grad:
            o32 = out.reshape(-1)
        with nogil:
            loss = mse_forward_backward(&p32[0], &t32[0], &o32[0] if want_grad else NULL,
                                        n, scale)
    else:
        p64 = pred.reshape(-1)
        t64 = target.reshape(-1)
        if want_grad:
            o64 = out.reshape(-1)
        with nogil:
            loss = mse_forward_backward(&p64[0], &t64[0], &o64[0] if want_grad else NULL,
                                        n, scale)
    return loss, out


_MSE_SCALE = {"mean": 1.0, "sum": 1.0, "half_sum": 0.5, "half_mean": 0.5}


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


cdef object _cross_entropy(logits, labels, reduction, out, bint want_grad):
    logits, labels = V.cross_entropy_args(logits, labels, reduction, contiguous=True)
    cdef Py_ssize_t n_rows = logits.shape[0], n_cols = logits.shape[1]
    if want_grad:
        out = V.check_out(out, "out", logits.shape, logits.dtype,
                          inputs=(("logits", logits),), inplace_ok=True)
    cdef double grad_scale = 1.0 / n_rows if (reduction == "mean" and n_rows) else 1.0
    cdef double total = 0.0
    cdef const long long[::1] lab = labels
    cdef const float[:, ::1] z32
    cdef float[:, ::1] o32
    cdef const double[:, ::1] z64
    cdef double[:, ::1] o64
    if n_rows == 0:
        return (float("nan") if reduction == "mean" else 0.0), out
    if logits.dtype.itemsize == 4:
        z32 = logits
        if want_grad:
            o32 = out
        with nogil:
            total = softmax_cross_entropy_rows(&z32[0, 0], &lab[0],
                                               &o32[0, 0] if want_grad else NULL,
                                               n_rows, n_cols, grad_scale)
    else:
        z64 = logits
        if want_grad:
            o64 = out
        with nogil:
            total = softmax_cross_entropy_rows(&z64[0, 0], &lab[0],
                                               &o64[0, 0] if want_grad else NULL,
                                               n_rows, n_cols, grad_scale)
    return (total / n_rows if reduction == "mean" else total), out


def softmax_cross_entropy(logits, labels, *, reduction="mean"):
    """Cross-entropy of the row-wise softmax of ``logits`` against class indices (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy`.
    """
    return _cross_entropy(logits, labels, reduction, None, False)[0]


def softmax_cross_entropy_backward(logits, labels, *, reduction="mean", out=None):
    """Gradient of :func:`softmax_cross_entropy` with respect to ``logits`` (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy_backward`.
    """
    return _cross_entropy(logits, labels, reduction, out, True)[1]


def softmax_cross_entropy_and_grad(logits, labels, *, reduction="mean", out=None):
    """Softmax cross-entropy and its gradient in one pass (compiled).

    See :func:`bpcore.reference.softmax_cross_entropy_and_grad`.
    """
    return _cross_entropy(logits, labels, reduction, out, True)


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------

def sgd_update(param, grad, *, lr, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One in-place SGD step with ``torch.optim.SGD``'s rounding (compiled).

    See :func:`bpcore.reference.sgd_update`.
    """
    checked = V.sgd_args(param, grad, lr, momentum, velocity, weight_decay, nesterov,
                         contiguous=True)
    grad = checked[0]
    cdef double lr_ = checked[1], mu = checked[2], wd = checked[3]
    cdef int nest = checked[4]
    cdef bint use_velocity = mu != 0
    cdef Py_ssize_t n = param.size
    if n == 0:
        return param
    cdef float[::1] p32, v32
    cdef const float[::1] g32
    cdef double[::1] p64, v64
    cdef const double[::1] g64
    if param.dtype.itemsize == 4:
        p32 = param.reshape(-1)
        g32 = grad.reshape(-1)
        if use_velocity:
            v32 = velocity.reshape(-1)
        with nogil:
            bp_sgd_f32(&p32[0], &g32[0], &v32[0] if use_velocity else NULL, n,
                       <float>lr_, <float>mu, <float>wd, nest)
    else:
        p64 = param.reshape(-1)
        g64 = grad.reshape(-1)
        if use_velocity:
            v64 = velocity.reshape(-1)
        with nogil:
            bp_sgd_f64(&p64[0], &g64[0], &v64[0] if use_velocity else NULL, n,
                       lr_, mu, wd, nest)
    return param


def _set_optim_kernel(name):
    """Select the update kernels: ``"avx2_fma"`` (when the CPU has it) or ``"portable"``.

    Returns the name of the kernels now in use.  For tests.
    """
    V.check_choice("name", name, ("avx2_fma", "portable"))
    return "avx2_fma" if bp_optim_select(name == "avx2_fma") else "portable"


_set_optim_kernel("portable" if os.environ.get("BPCORE_FORCE_PORTABLE", "0") not in ("", "0")
                  else "avx2_fma")
