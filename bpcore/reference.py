"""The specification of bpcore, in NumPy.

Every operation of bpcore is defined here first, as plain NumPy a reader can
follow; the compiled twins (``bpcore._kernels``, ``bpcore._gemm``) carry the
same names and signatures and are tested against these functions.

Layout: samples are rows.  ``x`` is (n_samples, n_in), weights ``w`` are
(n_in, n_out), a bias ``b`` is (n_out,) broadcast over the rows; a layer is
``a = act(x @ w + b)``.

Functions that produce an array take ``out=None``: when None a new array is
returned, otherwise the result is written into ``out`` (which must be a
writeable C-contiguous array of the exact shape and dtype) and ``out`` is
returned.  Backward functions of activations take the *saved output* ``a`` of
the forward pass, not its input, as scikit-learn's ``_base.py`` does, where the
derivative can be written from the output (sigmoid, tanh, relu, identity,
leaky_relu and elu); the others (gelu, gelu_tanh, silu, softplus) take the
*pre-activation* ``z``.  The first argument's name says which: ``a`` or ``z``.
Activation parameters are keyword arguments with PyTorch's defaults, passed
to backward as to forward.  The dtype / shape policy is in ``bpcore._validate``.
"""
import math

import numpy as np

from . import _validate as V

__all__ = [
    "matmul", "linear_forward", "linear_backward",
    "sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
    "tanh_forward", "tanh_backward", "identity_forward", "identity_backward",
    "leaky_relu_forward", "leaky_relu_backward", "elu_forward", "elu_backward",
    "gelu_forward", "gelu_backward", "gelu_tanh_forward", "gelu_tanh_backward",
    "silu_forward", "silu_backward", "softplus_forward", "softplus_backward",
    "softmax_forward",
    "mse_loss", "mse_loss_backward", "mse_loss_and_grad",
    "l1_loss", "l1_loss_backward", "huber_loss", "huber_loss_backward",
    "smooth_l1_loss", "smooth_l1_loss_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward", "softmax_cross_entropy_and_grad",
    "sigmoid_binary_cross_entropy", "sigmoid_binary_cross_entropy_backward",
    "sgd_update", "adam_update", "adamw_update", "rmsprop_update",
    "sklearn_sgd_update", "sklearn_adam_update",
]


# ---------------------------------------------------------------------------
# Dense products
# ---------------------------------------------------------------------------

def round_bfloat16(x):
    """``x`` (float32) rounded to the nearest bfloat16, ties to even, as float32 values.

    bfloat16 keeps float32's sign, exponent and top 7 fraction bits, so the
    rounding is integer arithmetic on the bit pattern: add half of the dropped
    16 bits (minus one unless the kept last bit is odd, for ties to even) and
    clear them.  A carry rounds up into the exponent, and past the largest
    bfloat16 to infinity, as round-to-nearest must.  NaN stays NaN (quiet).

    Parameters
    ----------
    x : ndarray of float32, any shape

    Returns
    -------
    ndarray of float32, the shape of ``x``
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    bits = np.where(nan, u | np.uint32(0x00400000), rounded) & np.uint32(0xFFFF0000)
    return bits.view(np.float32).reshape(np.shape(x))


def matmul(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None,
           compute_dtype=None):
    """General matrix product ``out := alpha * op(a) @ op(b) + beta * out``.

    Parameters
    ----------
    a : array_like, shape (m, k), or (k, m) when ``trans_a``
    b : array_like, shape (k, n), or (n, k) when ``trans_b``
    trans_a, trans_b : bool
        Use the transpose of ``a`` / ``b``.
    alpha, beta : float
        Scale factors.  With ``beta == 0`` the previous content of ``out`` is
        ignored (NaN there does not propagate), as in BLAS.
    out : ndarray, shape (m, n), optional
        Required when ``beta != 0``.
    compute_dtype : None or "bfloat16"
        "bfloat16" (float32 operands only): the product of ``round_bfloat16(op(a))``
        and ``round_bfloat16(op(b))``, accumulated in float32 (each product of two
        bfloat16 values is exact in float32); alpha, beta and ``out`` stay float32.

    Returns
    -------
    out : ndarray, shape (m, n)
    """
    a, b, alpha, beta, buf, _ = V.matmul_args(a, b, trans_a, trans_b, alpha, beta, out)
    dtype = buf.dtype
    if V.check_compute_dtype(compute_dtype, dtype) == "bfloat16":
        a, b = round_bfloat16(a), round_bfloat16(b)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    product = op_a @ op_b
    if alpha != 1.0:
        product *= dtype.type(alpha)
    if beta == 0.0:
        buf[...] = product
    else:
        buf *= dtype.type(beta)
        buf += product
    return buf if out is None else out


def linear_forward(x, w, b, *, out=None):
    """Affine layer ``out = x @ w + b``.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_in)
    w : array_like, shape (n_in, n_out)
    b : array_like, shape (n_out,)
    out : ndarray, shape (n_samples, n_out), optional

    Returns
    -------
    out : ndarray, shape (n_samples, n_out)
    """
    x, w, b, buf = V.linear_forward_args(x, w, b, out)
    np.matmul(x, w, out=buf)
    buf += b
    return buf if out is None else out


def linear_backward(x, w, grad, *, need_grad_x=True, grad_x=None, grad_w=None, grad_b=None):
    """Gradients of an affine layer from the gradient of its output.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_in)
        The layer's input saved by the forward pass.
    w : array_like, shape (n_in, n_out)
    grad : array_like, shape (n_samples, n_out)
        Gradient of the loss with respect to the layer's output ``x @ w + b``.
    need_grad_x : bool
        Compute ``grad_x``; the first layer does not need it.
    grad_x : ndarray, shape (n_samples, n_in), optional
    grad_w : ndarray, shape (n_in, n_out), optional
    grad_b : ndarray, shape (n_out,), optional
        Buffers to write; allocated when None.

    Returns
    -------
    grad_x : ndarray, shape (n_samples, n_in), or None
        ``grad @ w.T``; None when ``need_grad_x`` is False.
    grad_w : ndarray, shape (n_in, n_out)
        ``x.T @ grad``.
    grad_b : ndarray, shape (n_out,)
        ``grad`` summed over the rows.
    """
    x, w, grad, gx, gw, gb = V.linear_backward_args(
        x, w, grad, need_grad_x, grad_x, grad_w, grad_b)
    if gx is not None:
        np.matmul(grad, w.T, out=gx)
    np.matmul(x.T, grad, out=gw)
    np.sum(grad, axis=0, out=gb)
    # The caller's buffers where given (a subclass was written through a plain view).
    return (gx if gx is None or grad_x is None else grad_x,
            gw if grad_w is None else grad_w, gb if grad_b is None else grad_b)


# ---------------------------------------------------------------------------
# Activations: <op>_forward(z) -> a, <op>_backward(a, grad) -> grad of z
# ---------------------------------------------------------------------------

def sigmoid_forward(z, *, out=None):
    """Logistic function ``1 / (1 + exp(-z))``, elementwise.

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    # NOTE: exp(-|z|) never overflows, so both branches are finite for every
    # finite z: 1/(1+e) for z >= 0 and e/(1+e) = exp(z)/(1+exp(z)) for z < 0.
    with np.errstate(under="ignore"):  # exp(-|z|) underflowing to 0 is the right answer
        e = np.exp(-np.abs(z))
    np.divide(np.where(z >= 0, 1.0, e).astype(z.dtype, copy=False), 1.0 + e, out=buf)
    return buf if out is None else out


def sigmoid_backward(a, grad, *, out=None):
    """Gradient through a sigmoid from its saved output: ``grad * a * (1 - a)``.

    Parameters
    ----------
    a : array_like, any shape
        The sigmoid's output from the forward pass.
    grad : array_like, same shape as ``a``
        Gradient of the loss with respect to ``a``.
    out : ndarray, same shape, optional (may be ``grad`` or ``a``)

    Returns
    -------
    out : ndarray, same shape as ``a``
        Gradient of the loss with respect to the sigmoid's input.
    """
    a, grad, buf = V.binary_args(a, grad, out)
    np.multiply(grad, a * (1 - a), out=buf)
    return buf if out is None else out


def relu_forward(z, *, out=None):
    """Rectified linear unit ``max(z, 0)``, elementwise; NaN stays NaN.

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    np.maximum(z, 0, out=buf)
    return buf if out is None else out


def relu_backward(a, grad, *, out=None):
    """Gradient through a ReLU from its saved output: ``grad`` where ``a > 0``, else 0.

    NOTE: the mask is ``a > 0``, which equals ``z > 0`` on the pre-activation.
    Seed 000 masks with ``a < 0``, which never fires after a ReLU; at the kink
    z == 0 the gradient is taken as 0 (PyTorch's choice).

    Parameters
    ----------
    a : array_like, any shape
        The ReLU's output from the forward pass.
    grad : array_like, same shape as ``a``
    out : ndarray, same shape, optional (may be ``grad`` or ``a``)

    Returns
    -------
    out : ndarray, same shape as ``a``
    """
    a, grad, buf = V.binary_args(a, grad, out)
    mask = a > 0  # taken before writing: `out` may be `a` itself
    np.multiply(grad, mask, out=buf)
    # NaN * False would be NaN; a masked-out gradient is exactly 0 as in PyTorch.
    buf[~mask] = 0
    return buf if out is None else out


def tanh_forward(z, *, out=None):
    """Hyperbolic tangent, elementwise.

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    np.tanh(z, out=buf)
    return buf if out is None else out


def tanh_backward(a, grad, *, out=None):
    """Gradient through tanh from its saved output: ``grad * (1 - a**2)``.

    Parameters
    ----------
    a : array_like, any shape
        The tanh's output from the forward pass.
    grad : array_like, same shape as ``a``
    out : ndarray, same shape, optional (may be ``grad`` or ``a``)

    Returns
    -------
    out : ndarray, same shape as ``a``
    """
    a, grad, buf = V.binary_args(a, grad, out)
    np.multiply(grad, 1 - a * a, out=buf)
    return buf if out is None else out


def identity_forward(z, *, out=None):
    """Identity: a copy of ``z`` (or ``z`` written into ``out``).

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    buf[...] = z
    return buf if out is None else out


def identity_backward(a, grad, *, out=None):
    """Gradient through the identity: ``grad`` itself (copied into ``out``).

    Parameters
    ----------
    a : array_like, any shape
        The identity's output (unused; kept so every activation has one signature).
    grad : array_like, same shape as ``a``
    out : ndarray, same shape, optional

    Returns
    -------
    out : ndarray, same shape as ``a``
    """
    a, grad, buf = V.binary_args(a, grad, out)
    buf[...] = grad
    return buf if out is None else out


# The formulas below are PyTorch's (ATen's CPU kernels), in its order of
# operations, so that float64 results agree to a few ulps.

def leaky_relu_forward(z, *, negative_slope=0.01, out=None):
    """Leaky ReLU: ``z`` where ``z > 0``, else ``negative_slope * z`` (NaN stays NaN).

    Parameters
    ----------
    z : array_like, any shape
    negative_slope : float
        >= 0 (the backward is written from the output, which needs it).
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    slope = V.activation_param("negative_slope", negative_slope)
    z, buf = V.unary_args("z", z, out)
    np.copyto(buf, np.where(z > 0, z, z * z.dtype.type(slope)))
    return buf if out is None else out


def leaky_relu_backward(a, grad, *, negative_slope=0.01, out=None):
    """Gradient through a leaky ReLU from its saved output: ``grad`` where ``a > 0``, else
    ``negative_slope * grad``.

    NOTE: with a slope >= 0, ``a > 0`` exactly where ``z > 0``; at the kink the
    slope is used, as PyTorch's ``leaky_relu_backward`` does.

    Parameters
    ----------
    a : array_like, any shape
        The leaky ReLU's output from the forward pass.
    grad : array_like, same shape as ``a``
    negative_slope : float
        As in the forward.
    out : ndarray, same shape, optional (may be ``grad`` or ``a``)

    Returns
    -------
    out : ndarray, same shape as ``a``
    """
    slope = V.activation_param("negative_slope", negative_slope)
    a, grad, buf = V.binary_args(a, grad, out)
    np.copyto(buf, np.where(a > 0, grad, grad * a.dtype.type(slope)))
    return buf if out is None else out


def elu_forward(z, *, alpha=1.0, out=None):
    """ELU: ``z`` where ``z > 0``, else ``alpha * expm1(z)``.

    Parameters
    ----------
    z : array_like, any shape
    alpha : float
        >= 0 (the backward is written from the output, which needs it).
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    alpha = V.activation_param("alpha", alpha)
    z, buf = V.unary_args("z", z, out)
    with np.errstate(over="ignore"):  # expm1 of the positive z is not used
        neg = np.expm1(z) * z.dtype.type(alpha)
    np.copyto(buf, np.where(z <= 0, neg, z))
    return buf if out is None else out


def elu_backward(a, grad, *, alpha=1.0, out=None):
    """Gradient through ELU from its saved output: ``grad`` where ``a > 0``, else
    ``grad * (a + alpha)`` (which is ``grad * alpha * exp(z)``).

    NOTE: PyTorch's ``elu_backward`` with ``is_result=True`` (its in-place
    ``elu_``) computes this; ``a + alpha`` loses relative accuracy where
    ``a`` is close to ``-alpha`` (z below about -20), where the derivative is
    below 1e-9 * alpha.

    Parameters
    ----------
    a : array_like, any shape
        ELU's output from the forward pass.
    grad : array_like, same shape as ``a``
    alpha : float
        As in the forward.
    out : ndarray, same shape, optional (may be ``grad`` or ``a``)

    Returns
    -------
    out : ndarray, same shape as ``a``
    """
    alpha = V.activation_param("alpha", alpha)
    a, grad, buf = V.binary_args(a, grad, out)
    np.copyto(buf, np.where(a <= 0, grad * (a + a.dtype.type(alpha)), grad))
    return buf if out is None else out


def _erf(x):
    """erf elementwise, in float64 (math.erf), as an array of x's dtype."""
    flat = np.asarray(x, np.float64).ravel()
    return np.array([math.erf(v) for v in flat], np.float64).reshape(np.shape(x)).astype(
        x.dtype, copy=False)


_SQRT1_2 = 0.70710678118654752440        # M_SQRT1_2
_GELU_BETA = 1.12837916709551257390 * 0.70710678118654752440 * 0.5   # 1 / sqrt(2 pi)
_GELU_TANH_BETA = 1.41421356237309504880 * 1.12837916709551257390 * 0.5  # sqrt(2 / pi)
_GELU_TANH_KAPPA = 0.044715


def gelu_forward(z, *, out=None):
    """Exact GELU ``z * 0.5 * (1 + erf(z / sqrt(2)))`` (``torch.nn.functional.gelu``).

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    t = z.dtype.type
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as in torch
        np.copyto(buf, z * t(0.5) * (t(1) + _erf(z * t(_SQRT1_2))))
    return buf if out is None else out


def gelu_backward(z, grad, *, out=None):
    """Gradient through the exact GELU from its input:
    ``grad * (Phi(z) + z * exp(-z**2 / 2) / sqrt(2 pi))``.

    Parameters
    ----------
    z : array_like, any shape
        GELU's input (the pre-activation) from the forward pass.
    grad : array_like, same shape as ``z``
    out : ndarray, same shape, optional (may be ``grad`` or ``z``)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, grad, buf = V.binary_args(z, grad, out, saved="z")
    t = z.dtype.type
    cdf = t(0.5) * (t(1) + _erf(z * t(_SQRT1_2)))
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):  # inf * 0: NaN
        pdf = t(_GELU_BETA) * np.exp(z * z * t(-0.5))
        np.copyto(buf, grad * (cdf + z * pdf))
    return buf if out is None else out


def _gelu_tanh_inner(z):
    t = z.dtype.type
    return np.tanh(t(_GELU_TANH_BETA) * (z + t(_GELU_TANH_KAPPA) * (z * z * z)))


def gelu_tanh_forward(z, *, out=None):
    """GELU's tanh approximation ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z**3)))``
    (``torch.nn.functional.gelu(z, approximate="tanh")``).

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    t = z.dtype.type
    # z**3 overflowing saturates the tanh, as in torch; -inf * 0 is NaN
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(buf, t(0.5) * z * (t(1) + _gelu_tanh_inner(z)))
    return buf if out is None else out


def gelu_tanh_backward(z, grad, *, out=None):
    """Gradient through GELU's tanh approximation from its input ``z``.

    Parameters
    ----------
    z : array_like, any shape
        The input (pre-activation) from the forward pass.
    grad : array_like, same shape as ``z``
    out : ndarray, same shape, optional (may be ``grad`` or ``z``)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, grad, buf = V.binary_args(z, grad, out, saved="z")
    t = z.dtype.type
    with np.errstate(over="ignore", invalid="ignore"):
        th = _gelu_tanh_inner(z)
        left_derivative = t(0.5) * (t(1) + th)
        inner_derivative = t(_GELU_TANH_BETA) * (t(1) + t(3) * t(_GELU_TANH_KAPPA) * (z * z))
        right_derivative = t(0.5) * z * (t(1) - th * th) * inner_derivative
        np.copyto(buf, grad * (left_derivative + right_derivative))
    return buf if out is None else out


def silu_forward(z, *, out=None):
    """SiLU (swish) ``z * sigmoid(z)``.

    NOTE: PyTorch writes ``z / (1 + exp(-z))``, whose exp overflows for z
    below -88.7 (float32) / -709.8 (float64) and gives -0 there; the sigmoid
    here does not overflow, so those (subnormal) values are kept.

    Parameters
    ----------
    z : array_like, any shape
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, buf = V.unary_args("z", z, out)
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as in torch
        np.copyto(buf, z * sigmoid_forward(z))
    return buf if out is None else out


def silu_backward(z, grad, *, out=None):
    """Gradient through SiLU from its input: ``grad * s * (1 + z * (1 - s))``, s = sigmoid(z).

    Parameters
    ----------
    z : array_like, any shape
        SiLU's input (the pre-activation) from the forward pass.
    grad : array_like, same shape as ``z``
    out : ndarray, same shape, optional (may be ``grad`` or ``z``)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    z, grad, buf = V.binary_args(z, grad, out, saved="z")
    t = z.dtype.type
    s = sigmoid_forward(z)
    with np.errstate(invalid="ignore", over="ignore"):
        np.copyto(buf, grad * s * (t(1) + z * (t(1) - s)))
    return buf if out is None else out


def softplus_forward(z, *, beta=1.0, threshold=20.0, out=None):
    """Softplus ``log1p(exp(beta * z)) / beta``, and ``z`` itself where ``beta * z > threshold``.

    Parameters
    ----------
    z : array_like, any shape
    beta : float
        > 0.
    threshold : float
        Above it (in ``beta * z``) the function is taken as linear (PyTorch's rule).
    out : ndarray, same shape as ``z``, optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    beta = V.activation_param("beta", beta)
    threshold = V.activation_param("threshold", threshold)
    z, buf = V.unary_args("z", z, out)
    t = z.dtype.type
    bz = z * t(beta)
    with np.errstate(over="ignore", under="ignore"):  # exp overflows only where not used
        soft = (np.log1p(np.exp(bz).astype(np.float64)) / beta).astype(z.dtype)
    np.copyto(buf, np.where(bz > t(threshold), z, soft))
    return buf if out is None else out


def softplus_backward(z, grad, *, beta=1.0, threshold=20.0, out=None):
    """Gradient through softplus from its input: ``grad * e / (e + 1)``, e = exp(beta * z),
    and ``grad`` where ``beta * z > threshold``.

    Parameters
    ----------
    z : array_like, any shape
        Softplus's input (the pre-activation) from the forward pass.
    grad : array_like, same shape as ``z``
    beta, threshold : float
        As in the forward.
    out : ndarray, same shape, optional (may be ``grad`` or ``z``)

    Returns
    -------
    out : ndarray, same shape as ``z``
    """
    beta = V.activation_param("beta", beta)
    threshold = V.activation_param("threshold", threshold)
    z, grad, buf = V.binary_args(z, grad, out, saved="z")
    t = z.dtype.type
    bz = z * t(beta)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        e = np.exp(bz)
        np.copyto(buf, np.where(bz > t(threshold), grad, grad * e / (e + t(1))))
    return buf if out is None else out


def softmax_forward(z, *, out=None):
    """Row-wise softmax ``exp(z - max) / sum(exp(z - max))``.

    Parameters
    ----------
    z : array_like, shape (n_samples, n_classes)
    out : ndarray, shape (n_samples, n_classes), optional (may be ``z`` itself)

    Returns
    -------
    out : ndarray, shape (n_samples, n_classes)
        Each row sums to 1 (rows holding NaN or +inf give NaN, as in PyTorch).
    """
    z, buf = V.unary_args("z", z, out, ndim=2)
    if z.size == 0:
        return buf if out is None else out
    # NOTE: subtracting the row maximum keeps exp() <= 1, so nothing overflows.
    with np.errstate(invalid="ignore", under="ignore"):  # -inf rows give NaN, as in torch
        np.subtract(z, z.max(axis=1, keepdims=True), out=buf)
        np.exp(buf, out=buf)
    buf /= buf.sum(axis=1, keepdims=True)
    return buf if out is None else out


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

def _mse_scale(reduction, size):
    """The factor c in loss = c * sum(r**2) for each reduction."""
    if reduction in ("mean", "half_mean") and size == 0:
        return float("nan")  # PyTorch's mean of nothing
    return {"mean": 1.0 / max(size, 1), "sum": 1.0, "half_sum": 0.5,
            "half_mean": 0.5 / max(size, 1)}[reduction]


def mse_loss(pred, target, *, reduction="mean"):
    """Squared-error loss.

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum", "half_sum", "half_mean"}
        ``mean``: mean over all elements (PyTorch's ``MSELoss``); ``sum``:
        sum of squares; ``half_sum``: half the sum (the quadratic cost of
        back-propagation texts); ``half_mean``: half the mean (scikit-learn's
        ``squared_error``).

    Returns
    -------
    loss : float
    """
    pred, target, _ = V.mse_args(pred, target, reduction)
    # NOTE: the sum of squares is accumulated in float64 for both dtypes (as the
    # compiled kernel does), so a float32 loss beyond 3.4e38 is still a number.
    r = (pred - target).ravel().astype(np.float64, copy=False)
    return float(_mse_scale(reduction, r.size) * np.dot(r, r))


def mse_loss_backward(pred, target, *, reduction="mean", out=None):
    """Gradient of :func:`mse_loss` with respect to ``pred``: ``2 c (pred - target)``.

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum", "half_sum", "half_mean"}
    out : ndarray, same shape as ``pred``, optional (may be ``pred`` itself)

    Returns
    -------
    out : ndarray, same shape as ``pred``
    """
    pred, target, buf = V.mse_args(pred, target, reduction, out, want_out=True)
    np.subtract(pred, target, out=buf)
    buf *= pred.dtype.type(2.0 * _mse_scale(reduction, pred.size))
    return buf if out is None else out


def mse_loss_and_grad(pred, target, *, reduction="mean", out=None):
    """:func:`mse_loss` and :func:`mse_loss_backward` together.

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum", "half_sum", "half_mean"}
    out : ndarray, same shape as ``pred``, optional (may be ``pred`` itself)

    Returns
    -------
    loss : float
    grad : ndarray, same shape as ``pred``
        ``out``, holding the gradient with respect to ``pred``.
    """
    loss = mse_loss(pred, target, reduction=reduction)
    return loss, mse_loss_backward(pred, target, reduction=reduction, out=out)


def _regression_terms(name, d, param):
    """(elementwise loss in float64, d loss / d pred in d's dtype) of PyTorch's pointwise
    losses on d = pred - target; smooth_l1 with beta = 0 is l1 (as in torch)."""
    z = np.abs(d).astype(np.float64)
    t = d.dtype.type
    if name == "l1" or param == 0:
        return z, np.sign(d)
    if name == "huber":
        loss = np.where(z < param, 0.5 * z * z, param * (z - 0.5 * param))
        return loss, np.where(d <= -param, t(-param), np.where(d >= param, t(param), d))
    loss = np.where(z < param, 0.5 * z * z / param, z - 0.5 * param)
    with np.errstate(invalid="ignore"):
        return loss, np.where(d <= -param, t(-1), np.where(d >= param, t(1), d / t(param)))


def _regression_loss(name, pred, target, reduction, param, out=None, want_grad=False):
    pred, target, buf = V.mse_args(pred, target, reduction, out, want_out=want_grad,
                                   reductions=V.REDUCTIONS_CE)
    d = pred - target
    loss, grad = _regression_terms(name, d, param)
    if d.size == 0:
        return (math.nan if reduction == "mean" else 0.0) if not want_grad else (
            buf if out is None else out)
    scale = 1.0 / d.size if reduction == "mean" else 1.0
    if not want_grad:
        return float(loss.sum()) * scale
    np.copyto(buf, grad * pred.dtype.type(scale))
    return buf if out is None else out


def l1_loss(pred, target, *, reduction="mean"):
    """Absolute-error loss (``torch.nn.functional.l1_loss``).

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum"}
        "mean" divides by the number of elements (NaN when there are none).

    Returns
    -------
    loss : float
    """
    return _regression_loss("l1", pred, target, reduction, 0.0)


def l1_loss_backward(pred, target, *, reduction="mean", out=None):
    """Gradient of :func:`l1_loss`: ``sign(pred - target) * c`` (0 where they are equal).

    Parameters
    ----------
    pred, target, reduction
        As for :func:`l1_loss`; ``c`` is ``1 / pred.size`` for "mean", 1 for "sum".
    out : ndarray, same shape as ``pred``, optional (may be ``pred`` or ``target``)

    Returns
    -------
    out : ndarray, same shape as ``pred``
    """
    return _regression_loss("l1", pred, target, reduction, 0.0, out, True)


def huber_loss(pred, target, *, reduction="mean", delta=1.0):
    """Huber loss (``torch.nn.functional.huber_loss``): with ``z = |pred - target|``,
    ``z**2 / 2`` where ``z < delta``, else ``delta * (z - delta / 2)``.

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum"}
    delta : float
        > 0.

    Returns
    -------
    loss : float
    """
    return _regression_loss("huber", pred, target, reduction, V.regression_param("huber", delta))


def huber_loss_backward(pred, target, *, reduction="mean", delta=1.0, out=None):
    """Gradient of :func:`huber_loss`: ``clip(pred - target, -delta, delta) * c``.

    Parameters
    ----------
    pred, target, reduction, delta
        As for :func:`huber_loss`; ``c`` is ``1 / pred.size`` for "mean", 1 for "sum".
    out : ndarray, same shape as ``pred``, optional (may be ``pred`` or ``target``)

    Returns
    -------
    out : ndarray, same shape as ``pred``
    """
    return _regression_loss("huber", pred, target, reduction,
                            V.regression_param("huber", delta), out, True)


def smooth_l1_loss(pred, target, *, reduction="mean", beta=1.0):
    """Smooth L1 loss (``torch.nn.functional.smooth_l1_loss``): with ``z = |pred - target|``,
    ``z**2 / (2 beta)`` where ``z < beta``, else ``z - beta / 2``; ``beta = 0`` is the L1 loss.

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, same shape as ``pred``
    reduction : {"mean", "sum"}
    beta : float
        >= 0.

    Returns
    -------
    loss : float
    """
    return _regression_loss("smooth_l1", pred, target, reduction,
                            V.regression_param("smooth_l1", beta))


def smooth_l1_loss_backward(pred, target, *, reduction="mean", beta=1.0, out=None):
    """Gradient of :func:`smooth_l1_loss`: ``clip((pred - target) / beta, -1, 1) * c``.

    Parameters
    ----------
    pred, target, reduction, beta
        As for :func:`smooth_l1_loss`; ``c`` is ``1 / pred.size`` for "mean", 1 for "sum".
    out : ndarray, same shape as ``pred``, optional (may be ``pred`` or ``target``)

    Returns
    -------
    out : ndarray, same shape as ``pred``
    """
    return _regression_loss("smooth_l1", pred, target, reduction,
                            V.regression_param("smooth_l1", beta), out, True)


def _log_softmax(logits):
    """Rows of ``logits - logsumexp(logits)``, stable for any finite logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    with np.errstate(under="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _ce_weighting(logits, labels, reduction, class_weight, label_smoothing):
    """(target distributions q (n, C) in float64 or None, the mean's divisor): PyTorch's
    rule -- q = (1 - eps) w[y] onehot + (eps / C) w, divided for "mean" by sum_i w[y_i]
    (the number of rows without weights)."""
    n, n_classes = logits.shape
    eps = V.label_smoothing_arg(label_smoothing)
    w = V.loss_weights("class_weight", class_weight, n_classes)
    if w is None and eps == 0:
        return None, float(n)
    weights = np.ones(n_classes) if w is None else w
    q = np.zeros((n, n_classes))
    q[np.arange(n), labels] = (1 - eps) * weights[labels]
    q += (eps / n_classes) * weights
    return q, float(weights[labels].sum())


def softmax_cross_entropy(logits, labels, *, reduction="mean", class_weight=None,
                          label_smoothing=0.0):
    """Cross-entropy of the row-wise softmax of ``logits`` against class indices.

    ``loss_i = logsumexp(logits_i) - logits_i[labels_i]``, computed after
    subtracting the row maximum so it is finite for logits up to +-1e30.  With
    ``class_weight`` w and ``label_smoothing`` eps, as
    ``torch.nn.functional.cross_entropy``:
    ``loss_i = (1 - eps) w[y_i] (-log p_i[y_i]) + (eps / C) sum_c w_c (-log p_ic)``,
    and "mean" divides the sum by ``sum_i w[y_i]`` (the summed weights of the
    targets), not by the number of rows.

    Parameters
    ----------
    logits : array_like, shape (n_samples, n_classes)
    labels : array_like of int, shape (n_samples,)
        Class indices in [0, n_classes).
    reduction : {"mean", "sum"}
    class_weight : array_like, shape (n_classes,), optional
        Finite, >= 0.
    label_smoothing : float
        In [0, 1].

    Returns
    -------
    loss : float
        NaN for "mean" over zero samples (as PyTorch).
    """
    logits, labels, _ = V.cross_entropy_args(logits, labels, reduction)
    n = logits.shape[0]
    q, norm = _ce_weighting(logits, labels, reduction, class_weight, label_smoothing)
    if n == 0:
        return float("nan") if reduction == "mean" else 0.0
    log_p = _log_softmax(logits)
    if q is None:
        total = float(-log_p[np.arange(n), labels].sum())
    else:
        total = float(-(q * log_p).sum())
    if reduction != "mean":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):  # all weights 0: 0 / 0, as torch
        return float(np.float64(total) / norm)


def softmax_cross_entropy_backward(logits, labels, *, reduction="mean", class_weight=None,
                                   label_smoothing=0.0, out=None):
    """Gradient of :func:`softmax_cross_entropy`: ``(softmax(logits) - onehot) * c``;
    with class weights or smoothing, ``(softmax(logits) * sum(q) - q) * c`` for the
    target distributions q.

    Parameters
    ----------
    logits : array_like, shape (n_samples, n_classes)
    labels : array_like of int, shape (n_samples,)
    reduction : {"mean", "sum"}
        ``c`` is ``1 / n_samples`` (``1 / sum_i w[y_i]`` with class weights) for
        "mean", 1 for "sum".
    class_weight, label_smoothing
        As for :func:`softmax_cross_entropy`.
    out : ndarray, shape (n_samples, n_classes), optional (may be ``logits`` itself)

    Returns
    -------
    out : ndarray, shape (n_samples, n_classes)
    """
    logits, labels, buf = V.cross_entropy_args(logits, labels, reduction, out, want_out=True)
    n = logits.shape[0]
    q, norm = _ce_weighting(logits, labels, reduction, class_weight, label_smoothing)
    if n == 0:
        return buf if out is None else out
    if q is None:
        softmax_forward(logits, out=buf)
        buf[np.arange(n), labels] -= 1
        if reduction == "mean":
            buf *= logits.dtype.type(1.0 / n)
        return buf if out is None else out
    p = softmax_forward(logits).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = 1.0 / norm if reduction == "mean" else 1.0
        np.copyto(buf, (p * q.sum(axis=1, keepdims=True) - q) * scale)
    return buf if out is None else out


def softmax_cross_entropy_and_grad(logits, labels, *, reduction="mean", class_weight=None,
                                   label_smoothing=0.0, out=None):
    """:func:`softmax_cross_entropy` and its backward together.

    Parameters
    ----------
    logits : array_like, shape (n_samples, n_classes)
    labels : array_like of int, shape (n_samples,)
    reduction : {"mean", "sum"}
    class_weight, label_smoothing
        As for :func:`softmax_cross_entropy`.
    out : ndarray, shape (n_samples, n_classes), optional (may be ``logits`` itself)

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_samples, n_classes)
    """
    options = dict(reduction=reduction, class_weight=class_weight,
                   label_smoothing=label_smoothing)
    loss = softmax_cross_entropy(logits, labels, **options)
    return loss, softmax_cross_entropy_backward(logits, labels, **options, out=out)


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------

def _bce_scale(reduction, size):
    return 1.0 / size if reduction == "mean" else 1.0


def sigmoid_binary_cross_entropy(logits, targets, *, reduction="mean", pos_weight=None):
    """Binary cross-entropy of ``sigmoid(logits)`` against ``targets``, from the logits.

    ``loss_i = max(z_i, 0) - z_i * t_i + log1p(exp(-abs(z_i)))`` (PyTorch's
    ``binary_cross_entropy_with_logits``): no sigmoid is formed, so it is
    finite for ``abs(z)`` up to 1e30 and exact where the sigmoid would saturate.
    With ``pos_weight`` p (one per output, the last axis), PyTorch's
    ``(1 - t) z - (1 + (p - 1) t) log sigmoid(z)``; "mean" still divides by
    the number of elements (as PyTorch).

    Parameters
    ----------
    logits : array_like, any shape
    targets : array_like, same shape, values in [0, 1]
        0/1 for binary and multi-label classification; soft targets allowed.
    reduction : {"mean", "sum"}
        "mean" divides by the number of elements (NaN when there are none).
    pos_weight : array_like, shape (n_outputs,), optional
        The weight of the positive targets of each output (``logits.shape[-1]``
        of them); finite, >= 0.

    Returns
    -------
    loss : float
    """
    logits, targets, _ = V.bce_args(logits, targets, reduction)
    pw = V.loss_weights("pos_weight", pos_weight, logits.shape[-1] if logits.ndim else 1)
    if logits.size == 0:
        return float("nan") if reduction == "mean" else 0.0
    with np.errstate(under="ignore"):
        if pw is None:
            per = (np.maximum(logits, 0) - logits * targets) + np.log1p(np.exp(-np.abs(logits)))
        else:
            z, t = logits.astype(np.float64), targets.astype(np.float64)
            log_sig = np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))
            per = (1 - t) * z - (1 + (pw - 1) * t) * log_sig
    return float(per.sum()) * _bce_scale(reduction, logits.size)


def sigmoid_binary_cross_entropy_backward(logits, targets, *, reduction="mean", pos_weight=None,
                                          out=None):
    """Gradient of :func:`sigmoid_binary_cross_entropy`: ``(sigmoid(logits) - targets) * c``;
    with ``pos_weight`` p, ``((1 - t) - (1 + (p - 1) t) sigmoid(-z)) * c``.

    Parameters
    ----------
    logits : array_like, any shape
    targets : array_like, same shape, values in [0, 1]
    reduction : {"mean", "sum"}
        ``c`` is ``1 / logits.size`` for "mean", 1 for "sum".
    pos_weight : array_like, shape (n_outputs,), optional
        As for :func:`sigmoid_binary_cross_entropy`.
    out : ndarray, same shape, optional (may be ``logits`` or ``targets``)

    Returns
    -------
    out : ndarray, same shape as ``logits``
    """
    logits, targets, buf = V.bce_args(logits, targets, reduction, out, want_out=True)
    pw = V.loss_weights("pos_weight", pos_weight, logits.shape[-1] if logits.ndim else 1)
    if logits.size == 0:
        return buf if out is None else out
    if pw is not None:
        z, t = logits.astype(np.float64), targets.astype(np.float64)
        with np.errstate(under="ignore"):
            e = np.exp(-np.abs(z))
        s_neg = np.where(z >= 0, e / (1 + e), 1 / (1 + e))
        np.copyto(buf, ((1 - t) - (1 + (pw - 1) * t) * s_neg) * _bce_scale(reduction,
                                                                            logits.size))
        return buf if out is None else out
    t = targets.copy() if np.shares_memory(buf, targets) else targets
    sigmoid_forward(logits, out=buf)
    buf -= t
    if reduction == "mean":
        buf *= logits.dtype.type(1.0 / logits.size)
    return buf if out is None else out


def sgd_update(param, grad, *, lr, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One step of stochastic gradient descent, in place, as ``torch.optim.SGD`` (dampening 0).

    ::

        g = grad + weight_decay * param
        velocity = momentum * velocity + g          (when momentum != 0)
        g = g + momentum * velocity if nesterov else velocity
        param -= lr * g

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
        Updated in place.
    grad : array_like, same shape as ``param``
    lr : float
        Learning rate, >= 0.
    momentum : float
        >= 0; when non-zero ``velocity`` is required.
    velocity : ndarray, same shape and dtype as ``param``, optional
        The momentum buffer, updated in place; start it at zeros, which is
        what PyTorch's first-step ``buf = g`` amounts to.
    weight_decay : float
        L2 penalty added to the gradient, >= 0.
    nesterov : bool
        Nesterov momentum (requires momentum > 0).

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    p, grad, vel, lr, momentum, weight_decay, nesterov = V.sgd_args(
        param, grad, lr, momentum, velocity, weight_decay, nesterov)
    dt = p.dtype.type
    g = grad
    if weight_decay != 0.0:
        g = g + dt(weight_decay) * p
    if momentum != 0.0:
        vel *= dt(momentum)
        vel += g
        g = g + dt(momentum) * vel if nesterov else vel
    p -= dt(lr) * g
    return param



def _beta(name, value):
    value = V.check_real(name, value, minimum=0.0)
    if value >= 1:
        raise ValueError(f"`{name}` must be in [0, 1); got {value}")
    return value


def adam_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0):
    """One Adam step, in place, as ``torch.optim.Adam`` (amsgrad off, L2 weight decay).

    ::

        g = grad + weight_decay * param
        m = m + (1 - beta1) * (g - m)               (torch's lerp)
        v = beta2 * v + (1 - beta2) * g * g
        param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
        Updated in place.
    grad : array_like, same shape as ``param``
    lr : float
        >= 0.
    m, v : ndarray, same shape and dtype as ``param``
        First and second moments, updated in place; start them at zeros.
    step : int
        The 1-based number of this update (torch's ``state["step"]`` after
        its increment).
    beta1, beta2 : float
        In [0, 1).
    eps : float
        > 0.
    weight_decay : float
        L2 penalty added to the gradient (not AdamW's decoupled decay), >= 0.

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    return _adam_step(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay, False)


def _adam_step(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay, decoupled):
    """Adam (L2 decay in the gradient) or AdamW (``decoupled``: param shrunk first)."""
    p, grad, (m, v), (lr, eps, weight_decay), step = V.optimizer_args(
        param, grad, [("m", m), ("v", v)],
        [("lr", lr, 0.0, None), ("eps", eps, 0.0, None), ("weight_decay", weight_decay, 0.0,
                                                           None)], step)
    beta1, beta2 = _beta("beta1", beta1), _beta("beta2", beta2)
    dt = p.dtype.type
    g = grad + dt(weight_decay) * p if weight_decay != 0 and not decoupled else grad
    m += dt(1 - beta1) * (g - m)
    v *= dt(beta2)
    v += dt(1 - beta2) * g * g
    if weight_decay != 0 and decoupled:
        # NOTE: after the moments, which do not read param: the same result as
        # PyTorch's shrink-first order, and right when ``grad`` is ``param``.
        p *= dt(1 - lr * weight_decay)
    # float(step): the kernel's pow(beta, (double)t), spelled out.
    step_size = dt(lr / (1 - beta1 ** float(step)))
    denom = np.sqrt(v) / dt(math.sqrt(1 - beta2 ** float(step))) + dt(eps)
    p -= step_size * (m / denom)
    return param


def adamw_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.01):
    """One AdamW step, in place, as ``torch.optim.AdamW`` (amsgrad off).

    ::

        param *= 1 - lr * weight_decay              (decoupled decay, before the moments)
        m = m + (1 - beta1) * (grad - m)
        v = beta2 * v + (1 - beta2) * grad * grad
        param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
        Updated in place.
    grad : array_like, same shape as ``param``
    lr : float
        >= 0.
    m, v : ndarray, same shape and dtype as ``param``
        First and second moments, updated in place; start them at zeros.
    step : int
        The 1-based number of this update.
    beta1, beta2 : float
        In [0, 1).
    eps : float
        > 0.
    weight_decay : float
        The decoupled decay, >= 0 (PyTorch's default 0.01).

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    return _adam_step(param, grad, lr, m, v, step, beta1, beta2, eps, weight_decay, True)


def rmsprop_update(param, grad, *, lr, square_avg, alpha=0.99, eps=1e-8, weight_decay=0.0,
                   momentum=0.0, momentum_buffer=None, centered=False, grad_avg=None):
    """One RMSprop step, in place, as ``torch.optim.RMSprop``.

    ::

        g = grad + weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        centered:  grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)     (torch's lerp)
                   avg = sqrt(square_avg - grad_avg**2) + eps
        else:      avg = sqrt(square_avg) + eps
        momentum:  momentum_buffer = momentum * momentum_buffer + g / avg
                   param -= lr * momentum_buffer
        else:      param -= lr * g / avg

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
        Updated in place.
    grad : array_like, same shape as ``param``
    lr : float
        >= 0.
    square_avg : ndarray, same shape and dtype as ``param``
        The running average of g**2, updated in place; start it at zeros.
    alpha : float
        The smoothing constant, in [0, 1] (PyTorch's default 0.99).
    eps : float
        > 0.
    weight_decay : float
        L2 penalty added to the gradient, >= 0.
    momentum : float
        >= 0; when non-zero ``momentum_buffer`` is required.
    momentum_buffer : ndarray, like ``param``, optional
        Updated in place; start it at zeros (PyTorch's first ``buf = g/avg``).
    centered : bool
        Normalise by the estimated variance; requires ``grad_avg``.
    grad_avg : ndarray, like ``param``, optional
        The running average of g, updated in place; start it at zeros.

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    p, grad, bufs, (lr, alpha, eps, weight_decay, momentum), centered = V.rmsprop_args(
        param, grad, lr, square_avg, alpha, eps, weight_decay, momentum, momentum_buffer,
        centered, grad_avg)
    dt = p.dtype.type
    sq = bufs[0]
    g = grad + dt(weight_decay) * p if weight_decay != 0 else grad
    sq *= dt(alpha)
    sq += dt(1 - alpha) * g * g
    if centered:
        ga = bufs[len(bufs) - 1]
        ga += dt(1 - alpha) * (g - ga)
        avg = np.sqrt(sq - ga * ga) + dt(eps)
    else:
        avg = np.sqrt(sq) + dt(eps)
    if momentum != 0:
        buf = bufs[1]
        buf *= dt(momentum)
        buf += g / avg
        p -= dt(lr) * buf
    else:
        p -= dt(lr) * (g / avg)
    return param


def sklearn_sgd_update(param, grad, *, lr, momentum, velocity, nesterov=True):
    """One step of scikit-learn's MLP ``SGDOptimizer``, in place.

    ::

        velocity = momentum * velocity - lr * grad
        param += momentum * velocity - lr * grad  if nesterov else  velocity

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
    grad : array_like, same shape as ``param``
    lr : float
        The current learning rate (scikit-learn's ``learning_rate``), >= 0.
    momentum : float
        In [0, 1].
    velocity : ndarray, same shape and dtype as ``param``
        Updated in place; start it at zeros.
    nesterov : bool

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    p, grad, (vel,), (lr, momentum), _ = V.optimizer_args(
        param, grad, [("velocity", velocity)],
        [("lr", lr, 0.0, None), ("momentum", momentum, 0.0, 1.0)])
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"`nesterov` must be a bool; got {type(nesterov).__name__}")
    dt = p.dtype.type
    vel[...] = dt(momentum) * vel - dt(lr) * grad
    p += dt(momentum) * vel - dt(lr) * grad if nesterov else vel
    return param


def sklearn_adam_update(param, grad, *, lr, m, v, step, beta1=0.9, beta2=0.999, eps=1e-8):
    """One step of scikit-learn's MLP ``AdamOptimizer``, in place.

    ::

        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        lr_t = lr * sqrt(1 - beta2**step) / (1 - beta1**step)
        param += -lr_t * m / (sqrt(v) + eps)

    (The bias correction folded into the step size, unlike ``adam_update``.)

    Parameters
    ----------
    param : ndarray, float32 or float64, C-contiguous, any shape
    grad : array_like, same shape as ``param``
    lr : float
        ``learning_rate_init``, >= 0.
    m, v : ndarray, same shape and dtype as ``param``
        Updated in place; start them at zeros.
    step : int
        The 1-based number of this update (scikit-learn's ``t`` after its increment).
    beta1, beta2 : float
        In [0, 1).
    eps : float
        > 0.

    Returns
    -------
    param : ndarray
        The same array, updated.
    """
    p, grad, (m, v), (lr, eps), step = V.optimizer_args(
        param, grad, [("m", m), ("v", v)], [("lr", lr, 0.0, None), ("eps", eps, 0.0, None)],
        step)
    beta1, beta2 = _beta("beta1", beta1), _beta("beta2", beta2)
    dt = p.dtype.type
    m[...] = dt(beta1) * m + dt(1 - beta1) * grad
    v[...] = dt(beta2) * v + dt(1 - beta2) * (grad * grad)
    lr_t = lr * math.sqrt(1 - beta2 ** float(step)) / (1 - beta1 ** float(step))
    p += (dt(-lr_t) * m) / (np.sqrt(v) + dt(eps))
    return param
