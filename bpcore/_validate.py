"""The dtype / shape / ``out`` policy, shared by the NumPy reference and the compiled twins.

Policy (the README states the same):

* float32 and float64 are preserved.  The float NumPy arrays of one call must
  share one dtype; mixing them is a ``TypeError`` naming both arguments.
* Arguments that carry no float dtype of their own -- integer or bool arrays,
  Python lists and scalars -- take the dtype of the call's float arrays, or
  float64 when there is none (NumPy's "weak scalar" idea, applied per call).
* float16, complex, object and string data are a ``TypeError``.
* Wrong ndim or mismatched shapes are a ``ValueError`` naming the argument,
  the expected and the received shape.
* ``out`` must be a writeable, C-contiguous ndarray of the exact shape and
  dtype; anything else is a ``ValueError``.  ``out`` may be the very same
  array as an elementwise op's input (in place); any other overlap with an
  input is a ``ValueError``.
* Subclasses: a masked array is a ``TypeError`` naming the argument (its mask
  would be dropped silently); any other ndarray subclass (``np.matrix``,
  ``np.memmap``, ...) is used through a base-class view of its memory, as
  ``np.asarray`` gives it, so ``*`` is never a matrix product.  A given
  ``out`` / ``param`` of a subclass is written through such a view and is
  itself what the function returns.
* Byte order: non-native inputs (``>f8`` on a little-endian machine) are
  converted; an array written in place must be native.
* Strides: NumPy calls an array C-contiguous whatever the strides of its
  size-1 dimensions (and of any empty array), so ``strides`` may not be the
  canonical C strides even then.  Every array handed to compiled code has
  canonical strides (:func:`canonical`: a view, never a copy, when the array
  is contiguous), and the compiled fast paths compute offsets from the shape,
  never from ``strides``.

Every function here raises; none computes.  Kernels run only after these
checks, so they can be compiled without bounds checks.
"""
import math
import numbers
import operator
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_final(arr, contiguous=True):
    """``arr`` is in final form: what compiled code takes as is, with no conversion.

    An exact ndarray (no subclass), float32 or float64 in native byte order,
    C-contiguous (``contiguous=False``: any strides, as matmul's operands)
    and aligned.  The compiled fast paths test exactly this in C
    (``bpcore/_policy.pxd``; tests/test_validate.py checks that the two agree);
    everything else goes through this module's checks and conversions.
    """
    return (type(arr) is np.ndarray and arr.dtype in FLOAT_DTYPES and arr.dtype.isnative
            and (arr.flags.c_contiguous or not contiguous) and arr.flags.aligned)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype}"
    return f"{type(value).__name__}"


def _reject_masked(name, value):
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"`{name}` is a masked array; bpcore has no notion of a mask and "
                        f"will not drop it silently: pass `{name}`.filled(...) or "
                        f"np.asarray(`{name}`) (the data under the mask)")


def base_view(name, arr):
    """``arr`` (an ndarray) as a plain ndarray: a masked array is a ``TypeError``,
    another subclass a base-class view of the same memory (``np.asarray``)."""
    if type(arr) is np.ndarray:
        return arr
    _reject_masked(name, arr)
    return np.asarray(arr)


def _as_array(name, value):
    """``value`` as a plain, native-byte-order ndarray, with a ``TypeError`` for data
    that is not numbers (or is masked)."""
    if isinstance(value, np.ndarray):
        arr = base_view(name, value)
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(value)}"
                            f" that NumPy cannot convert ({exc})") from None
    kind = arr.dtype.kind
    if kind in "fiub" and not arr.dtype.isnative:  # the same numbers, in native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    elif kind in "fiub" and not arr.flags.aligned:
        # NOTE: an input is only read, so an aligned copy is always allowed; made
        # here, no compiled reader (the kernels, the training core) ever meets a
        # misaligned input (UBSan: misaligned load), whatever layout it checks.
        arr = arr.copy()
    if kind == "f" and arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"`{name}` has dtype {arr.dtype}; bpcore computes in float32 or "
                        f"float64 -- convert it with .astype(np.float32) or .astype(np.float64)")
    if kind not in "fiub":
        raise TypeError(f"`{name}` must hold real numbers (float32, float64, int or bool); "
                        f"got dtype {arr.dtype}")
    return arr


def float_arrays(*specs, contiguous=False):
    """Convert the float arguments of one call to a common dtype.

    Parameters
    ----------
    *specs : tuple of (name, value, ndim)
        ``ndim`` is the required number of dimensions, or None for any.
    contiguous : bool
        Return C-contiguous arrays (copying only when needed), as the
        compiled kernels' ``const floating[:, ::1]`` memoryviews require.

    Returns
    -------
    dtype : numpy.dtype
        float32 or float64.
    arrays : list of ndarray
        In the order of ``specs``; an input already of the right dtype and
        layout is returned as is (never copied, never written).
    """
    arrays = [_as_array(name, value) for name, value, _ in specs]
    dtype = None
    dtype_from = None
    for (name, value, _), arr in zip(specs, arrays):
        if isinstance(value, np.ndarray) and arr.dtype.kind == "f":
            if dtype is None:
                dtype, dtype_from = arr.dtype, name
            elif arr.dtype != dtype:
                raise TypeError(f"`{dtype_from}` is {dtype} but `{name}` is {arr.dtype}; "
                                f"the arrays of one call must share one float dtype")
    if dtype is None:
        dtype = np.dtype(np.float64)
    out = []
    for (name, _, ndim), arr in zip(specs, arrays):
        if ndim is not None and arr.ndim != ndim:
            raise ValueError(f"`{name}` must be {ndim}-D; got {arr.ndim}-D with shape {arr.shape}")
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
        out.append(arr)
    return dtype, (as_contiguous(*out) if contiguous else out)


def c_strides(shape, itemsize):
    """The strides NumPy gives a new C-ordered array of ``shape``."""
    strides = []
    step = itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def canonical(arr):
    """``arr`` (C-contiguous) with the canonical C strides of its shape: itself, or a view.

    NOTE: NumPy's C-contiguous flag ignores the strides of size-1 dimensions
    and of empty arrays -- ``np.ones((10**5, 2))[::10**5]`` is "contiguous"
    with a row stride of 1.6 MB, a broadcast row has stride 0 -- so code
    that steps by ``strides`` must see these views, whose strides agree
    with the shape.  Same memory, so no copy and ``out`` stays ``out``.
    """
    want = c_strides(arr.shape, arr.itemsize)
    if arr.strides == want:
        return arr
    view = arr.reshape(-1).reshape(arr.shape)  # a view: arr is C-contiguous
    if view.strides != want:  # pragma: no cover -- NumPy always gives them
        view = np.lib.stride_tricks.as_strided(arr, strides=want)
    return view


def as_contiguous(*arrays):
    """C-contiguous, aligned, canonically strided plain versions of ``arrays``.

    Copies only where the memory layout needs it (strided, misaligned,
    non-native); a contiguous array with odd strides on size-1 dimensions
    becomes a view (:func:`canonical`).  Argument checks call this after
    checking ``out`` against the caller's own arrays, so an overlap with a
    strided input is still seen.
    """
    result = []
    for arr in arrays:
        if arr is not None:
            # order="C" keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d);
            # a misaligned buffer is copied, as the kernels read it with plain loads.
            arr = np.asarray(arr, order="C")
            if not arr.flags.aligned:
                arr = arr.copy()
            arr = canonical(arr)
        result.append(arr)
    return result


def _fmt_shape(shape):
    parts = [str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_shape(name, arr, shape, why=""):
    """``ValueError`` unless ``arr.shape`` matches ``shape`` (entries None or a str match any)."""
    ok = arr.ndim == len(shape) and all(
        not isinstance(want, int) or want == got for want, got in zip(shape, arr.shape))
    if not ok:
        reason = f" {why}" if why else ""
        raise ValueError(f"`{name}` must have shape {_fmt_shape(shape)}"
                         f"{reason}; got {_fmt_shape(arr.shape)}")


def _byte_order_note(arr, dtype):
    """A note for messages when ``arr`` differs from ``dtype`` only by byte order."""
    swapped = arr.dtype.newbyteorder("=") == dtype and not arr.dtype.isnative
    return " in native byte order" if swapped else ""


def _same_memory(a, b):
    """``a`` and ``b`` are the same elements in the same order (one array, maybe two views)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.__array_interface__["data"][0] != b.__array_interface__["data"][0]:
        return False
    # Strides of size-1 dimensions address nothing, so they may differ.
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides))


def overlaps(a, b):
    """Whether ``a`` and ``b`` share memory; "maybe" when NumPy cannot decide cheaply.

    ``np.shares_memory`` with a bounded effort raises ``TooHardError`` for some
    legal strided views (several dimensions, co-prime strides); a second,
    larger budget settles practically every case in well under a millisecond.
    Past that the answer is "maybe", which callers treat as sharing.
    """
    if a is None or b is None or a.size == 0 or b.size == 0:
        return False
    for work in (1000, 200_000):
        try:
            return bool(np.shares_memory(a, b, max_work=work))
        except np.exceptions.TooHardError:
            continue
    return "maybe"


def check_out(out, name, shape, dtype, inputs=(), inplace_ok=False):
    """Return a buffer to write: ``out`` checked, or a new array when it is None.

    Parameters
    ----------
    out : ndarray or None
    name : str
        The argument's name, for messages.
    shape : tuple of int
    dtype : numpy.dtype
    inputs : sequence of (name, ndarray)
        Arrays the call reads; ``out`` must not overlap them.
    inplace_ok : bool
        Allow ``out`` to be exactly one of ``inputs`` (same memory, same
        strides), as elementwise kernels read each element before writing it.

    Returns
    -------
    ndarray
        A plain ndarray with canonical C strides: ``out`` itself, or (for a
        subclass or odd strides of size-1 dimensions) a view of its memory.
        Callers return the caller's ``out`` object, not this view.
    """
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"`{name}` must be a NumPy array or None; got {_describe(out)}")
    out = base_view(name, out)
    if out.dtype != dtype:
        raise ValueError(f"`{name}` must have dtype {dtype}{_byte_order_note(out, dtype)}; "
                         f"got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"`{name}` must have shape {_fmt_shape(shape)}; got {_fmt_shape(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"`{name}` must be C-contiguous; got a strided view "
                         f"(pass np.ascontiguousarray(...) or let bpcore allocate it)")
    if not out.flags.writeable:
        raise ValueError(f"`{name}` is read-only; bpcore writes its result there")
    if not out.flags.aligned:  # the kernels store whole elements through typed pointers
        raise ValueError(f"`{name}` is not aligned to its dtype's size (a view at an odd "
                         f"byte offset?); let bpcore allocate it")
    for in_name, arr in inputs:
        shared = overlaps(out, arr)
        if not shared:
            continue
        if not (inplace_ok and _same_memory(arr, out)):
            allowed = (" (only the very same array is allowed, for an in-place update)"
                       if inplace_ok else "")
            maybe = (" (or may: NumPy could not decide, so bpcore refuses)"
                     if shared == "maybe" else "")
            raise ValueError(f"`{name}` overlaps the input `{in_name}`{maybe}{allowed}")
    return canonical(out)


def check_real(name, value, *, minimum=None, maximum=None, strict_min=False):
    """A finite real scalar (not bool) within bounds, returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # a Python int (or Fraction) beyond the float range
        raise ValueError(f"`{name}` must be finite; got {_fmt_number(value)}, "
                         f"beyond the float range") from None
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value}")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        bound = ">" if strict_min else ">="
        raise ValueError(f"`{name}` must be {bound} {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {value}")
    return value


# Integers reach compiled code as C ``Py_ssize_t`` / ``long long``: past this
# bound a ``ValueError`` naming the argument, not an ``OverflowError`` naming nothing.
INT_MAX = sys.maxsize


def _fmt_number(value):
    """``value`` for a message; a huge int as its leading digits and its length."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:6]}... ({len(text)} digits)"


def check_int(name, value, *, minimum=None, maximum=INT_MAX):
    """An integer (not bool) in [``minimum``, ``maximum``], returned as int.

    ``maximum`` defaults to ``sys.maxsize`` (what compiled code can hold);
    pass None where the value never reaches C.
    """
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer; got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {_fmt_number(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {_fmt_number(value)}")
    return value


COMPUTE_DTYPES = ("bfloat16",)


def check_compute_dtype(compute_dtype, dtype):
    """``compute_dtype`` of a product: None (the operands' own dtype) or "bfloat16"
    (operands rounded to bfloat16, float32 accumulation: float32 operands only).
    Returns it as a plain str or None."""
    if compute_dtype is None:
        return None
    compute_dtype = check_choice("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"`compute_dtype`={compute_dtype!r} needs float32 operands (the "
                         f"products accumulate in float32); got {np.dtype(dtype).name}")
    return compute_dtype


def check_choice(name, value, choices):
    """``value`` must be one of ``choices`` (a str, ``np.str_`` included); the message
    lists them.  Returns it as a plain str."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; "
                         f"got {value!r}")
    return str(value)


def class_labels(labels, n_samples, n_classes, name="labels"):
    """Integer class indices, shape (n_samples,), each in [0, n_classes), as int64.

    Float labels are accepted when integral (as scikit-learn accepts them);
    anything else is a ``TypeError`` / ``ValueError`` naming the first bad row.
    """
    arr = _as_array(name, labels)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D class indices of shape ({n_samples},); "
                         f"got shape {_fmt_shape(arr.shape)}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"`{name}` must have shape ({n_samples},) to match the logits' "
                         f"{n_samples} rows; got {_fmt_shape(arr.shape)}")
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise ValueError(f"`{name}` must hold integer class indices; "
                             f"{name}[{bad[0]}] = {arr[bad[0]]!r}")
    # NOTE: the range is checked on the values as given, before the cast to
    # int64, which would wrap uint64 2**64-1 to -1 and turn 1e20 into -2**63.
    bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
    if bad.size:
        raise ValueError(f"`{name}`[{bad[0]}] = {arr[bad[0]].item()!r} is out of range "
                         f"for {n_classes} classes (expected 0 <= label < {n_classes})")
    return canonical(np.ascontiguousarray(arr.astype(np.int64)))


REDUCTIONS_MSE = ("mean", "sum", "half_sum", "half_mean")
REDUCTIONS_CE = ("mean", "sum")


# ---------------------------------------------------------------------------
# Per-operation argument checks, shared by bpcore.reference and the compiled
# twins.  ``contiguous=True`` (the compiled side) also makes inputs
# C-contiguous, copying only arrays that are not -- after ``out`` was checked
# against the caller's arrays.
# ---------------------------------------------------------------------------

def matmul_args(a, b, trans_a, trans_b, alpha, beta, out, contiguous=False):
    """Checked (a, b, alpha, beta, out, (m, n, k)) for ``matmul``."""
    dtype, (a, b) = float_arrays(("a", a, 2), ("b", b, 2))
    alpha = check_real("alpha", alpha)
    beta = check_real("beta", beta)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    if (b.shape[1] if trans_b else b.shape[0]) != k:
        expected = ("n", k) if trans_b else (k, "n")
        check_shape("b", b, expected, f"to match op(a) of shape ({m}, {k})")
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None and beta != 0.0:
        raise ValueError("`beta` != 0 needs `out` (the matrix it scales); got out=None")
    out = check_out(out, "out", (m, n), dtype, inputs=(("a", a), ("b", b)))
    if contiguous:
        a, b = as_contiguous(a, b)
    return a, b, alpha, beta, out, (m, n, k)


def linear_forward_args(x, w, b, out, contiguous=False):
    """Checked (x, w, b, out) for ``linear_forward``."""
    dtype, (x, w, b) = float_arrays(("x", x, 2), ("w", w, 2), ("b", b, 1))
    check_shape("w", w, (x.shape[1], "n_out"), f"to match x of shape {_fmt_shape(x.shape)}")
    check_shape("b", b, (w.shape[1],), f"to match w of shape {_fmt_shape(w.shape)}")
    out = check_out(out, "out", (x.shape[0], w.shape[1]), dtype,
                    inputs=(("x", x), ("w", w), ("b", b)))
    if contiguous:
        x, w, b = as_contiguous(x, w, b)
    return x, w, b, out


def linear_backward_args(x, w, grad, need_grad_x, grad_x, grad_w, grad_b, contiguous=False):
    """Checked (x, w, grad, grad_x or None, grad_w, grad_b) for ``linear_backward``."""
    dtype, (x, w, grad) = float_arrays(("x", x, 2), ("w", w, 2), ("grad", grad, 2))
    n_samples, n_in = x.shape
    check_shape("w", w, (n_in, "n_out"), f"to match x of shape {_fmt_shape(x.shape)}")
    n_out = w.shape[1]
    check_shape("grad", grad, (n_samples, n_out),
                f"to match x {_fmt_shape(x.shape)} and w {_fmt_shape(w.shape)}")
    inputs = (("x", x), ("w", w), ("grad", grad))
    grad_x = (check_out(grad_x, "grad_x", (n_samples, n_in), dtype, inputs=inputs)
              if need_grad_x else None)
    grad_w = check_out(grad_w, "grad_w", (n_in, n_out), dtype, inputs=inputs)
    grad_b = check_out(grad_b, "grad_b", (n_out,), dtype, inputs=inputs)
    outs = [("grad_w", grad_w), ("grad_b", grad_b)] + ([("grad_x", grad_x)] if need_grad_x else [])
    for i, (name1, arr1) in enumerate(outs):
        for name2, arr2 in outs[i + 1:]:
            if np.shares_memory(arr1, arr2):
                raise ValueError(f"`{name1}` overlaps `{name2}`")
    if contiguous:
        x, w, grad = as_contiguous(x, w, grad)
    return x, w, grad, grad_x, grad_w, grad_b


def unary_args(name, z, out, ndim=None, contiguous=False):
    """Checked (z, out) for an elementwise ``<op>_forward``; ``out`` may be ``z``."""
    dtype, (z,) = float_arrays((name, z, ndim))
    out = check_out(out, "out", z.shape, dtype, inputs=((name, z),), inplace_ok=True)
    if contiguous:
        (z,) = as_contiguous(z)
    return z, out


def binary_args(a, grad, out, contiguous=False, saved="a"):
    """Checked (a, grad, out) for an ``<op>_backward``; ``out`` may be ``a`` or ``grad``.

    ``saved`` names the first argument: "a" (the saved output) or "z" (the
    pre-activation, for the activations whose derivative needs it).
    """
    dtype, (a, grad) = float_arrays((saved, a, None), ("grad", grad, None))
    what = "the saved output" if saved == "a" else "the pre-activation"
    check_shape("grad", grad, a.shape, f"to match {what} `{saved}`")
    out = check_out(out, "out", a.shape, dtype, inputs=((saved, a), ("grad", grad)),
                    inplace_ok=True)
    if contiguous:
        a, grad = as_contiguous(a, grad)
    return a, grad, out


# The activations' keyword parameters and their defaults (PyTorch's), and the
# rule each value must follow.  NOTE: leaky_relu's slope and elu's alpha must
# be >= 0 because their backward is written from the saved output (PyTorch's
# in-place forms have the same rule); softplus's beta must be > 0.
ACTIVATION_PARAMS = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
}
_ACTIVATION_PARAM_RULES = {"negative_slope": {"minimum": 0.0}, "alpha": {"minimum": 0.0},
                           "beta": {"minimum": 0.0, "strict_min": True}, "threshold": {}}


def activation_param(name, value):
    """An activation's parameter ``name`` (see ACTIVATION_PARAMS) checked, as float."""
    return check_real(name, value, **_ACTIVATION_PARAM_RULES[name])


def mse_args(pred, target, reduction, out=None, want_out=False, contiguous=False,
             reductions=REDUCTIONS_MSE):
    """Checked (pred, target, out) for the squared-error loss (and, with ``reductions``
    ("mean", "sum"), the other pointwise regression losses) and its gradient.

    ``out`` is checked (and allocated when None) only when ``want_out``.
    """
    check_choice("reduction", reduction, reductions)
    dtype, (pred, target) = float_arrays(("pred", pred, None), ("target", target, None))
    check_shape("target", target, pred.shape, "to match `pred`")
    if want_out:
        out = check_out(out, "out", pred.shape, dtype,
                        inputs=(("pred", pred), ("target", target)), inplace_ok=True)
    if contiguous:
        pred, target = as_contiguous(pred, target)
    return pred, target, out


def cross_entropy_args(logits, labels, reduction, out=None, want_out=False, contiguous=False):
    """Checked (logits, labels as int64, out) for the softmax cross-entropy and its gradient.

    ``out`` is checked (and allocated when None) only when ``want_out``.
    """
    check_choice("reduction", reduction, REDUCTIONS_CE)
    dtype, (logits,) = float_arrays(("logits", logits, 2))
    labels = class_labels(labels, logits.shape[0], logits.shape[1])
    if want_out:
        out = check_out(out, "out", logits.shape, dtype, inputs=(("logits", logits),),
                        inplace_ok=True)
    if contiguous:
        (logits,) = as_contiguous(logits)
    return logits, labels, out


# The pointwise regression losses' parameter (PyTorch's bounds: huber's delta > 0,
# smooth_l1's beta >= 0, beta = 0 being the L1 loss).
def regression_param(loss, value):
    """``delta`` (huber) or ``beta`` (smooth_l1) checked, as float."""
    if loss == "huber":
        return check_real("delta", value, minimum=0.0, strict_min=True)
    return check_real("beta", value, minimum=0.0)


def loss_weights(name, weights, n):
    """``class_weight`` / ``pos_weight``: None, or n finite values >= 0 as a float64 vector."""
    if weights is None:
        return None
    _, (w,) = float_arrays((name, weights, 1))
    check_shape(name, w, (n,), "(one per class / output)")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"`{name}` must be finite and >= 0")
    return w


def label_smoothing_arg(value):
    """``label_smoothing`` in [0, 1] (PyTorch's bounds), as float."""
    return check_real("label_smoothing", value, minimum=0.0, maximum=1.0)


def param_buffer(name, arr, like=None):
    """A parameter-like array written in place: float32/64, C-contiguous, writeable.

    Returns a plain, canonically strided view of its memory (see :func:`check_out`).
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"`{name}` must be a NumPy array (it is updated in place); "
                        f"got {type(arr).__name__}")
    arr = base_view(name, arr)
    if arr.dtype not in FLOAT_DTYPES:
        native = (" in native byte order" if arr.dtype.kind == "f" and not arr.dtype.isnative
                  else "")
        raise TypeError(f"`{name}` must be float32 or float64{native} (it is updated in "
                        f"place); got {arr.dtype}")
    if like is not None:
        if arr.dtype != like.dtype:
            raise TypeError(f"`{name}` is {arr.dtype} but `param` is {like.dtype}")
        check_shape(name, arr, like.shape, "to match `param`")
    if not arr.flags.c_contiguous:
        raise ValueError(f"`{name}` must be C-contiguous (it is updated in place)")
    if not arr.flags.writeable:
        raise ValueError(f"`{name}` is read-only; it is updated in place")
    if not arr.flags.aligned:
        raise ValueError(f"`{name}` is not aligned to its dtype's size (it is updated in "
                         f"place through typed pointers); pass an aligned copy")
    return canonical(arr)


def sgd_args(param, grad, lr, momentum, velocity, weight_decay, nesterov, contiguous=False):
    """Checked (param, grad, velocity, lr, momentum, weight_decay, nesterov) for ``sgd_update``.

    ``param`` and ``velocity`` come back as plain views of the caller's memory
    (:func:`param_buffer`); the update returns the caller's ``param``.
    """
    param = param_buffer("param", param)
    _, (_, grad) = float_arrays(("param", param, None), ("grad", grad, None))
    check_shape("grad", grad, param.shape, "to match `param`")
    lr = check_real("lr", lr, minimum=0.0)
    momentum = check_real("momentum", momentum, minimum=0.0)
    weight_decay = check_real("weight_decay", weight_decay, minimum=0.0)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"`nesterov` must be a bool; got {type(nesterov).__name__}")
    if nesterov and momentum == 0.0:
        raise ValueError("`nesterov`=True requires `momentum` > 0 (as in torch.optim.SGD)")
    if momentum != 0.0 and velocity is None:
        raise ValueError("`velocity` is required when `momentum` != 0: pass "
                         "np.zeros_like(param) before the first step and keep it")
    if velocity is not None:
        velocity = param_buffer("velocity", velocity, like=param)
        if overlaps(velocity, param):
            raise ValueError("`velocity` overlaps `param`")
        if overlaps(velocity, grad):
            raise ValueError("`velocity` overlaps `grad`")
    if not _same_memory(grad, param) and overlaps(grad, param):
        raise ValueError("`grad` overlaps `param`")
    if contiguous:
        (grad,) = as_contiguous(grad)
    return param, grad, velocity, lr, momentum, weight_decay, bool(nesterov)


REDUCTIONS_BCE = ("mean", "sum")


def bce_args(logits, targets, reduction, out=None, want_out=False, contiguous=False):
    """Checked (logits, targets, out) for the sigmoid binary cross-entropy and its gradient.

    ``targets`` has ``logits``' shape (any) with values in [0, 1]; ``out`` is
    checked (and allocated when None) only when ``want_out``.
    """
    check_choice("reduction", reduction, REDUCTIONS_BCE)
    dtype, (logits, targets) = float_arrays(("logits", logits, None), ("targets", targets, None))
    check_shape("targets", targets, logits.shape, "to match `logits`")
    if targets.size and not ((targets >= 0) & (targets <= 1)).all():
        raise ValueError(f"`targets` must lie in [0, 1]; got values in "
                         f"[{targets.min()}, {targets.max()}]")
    if want_out:
        out = check_out(out, "out", logits.shape, dtype,
                        inputs=(("logits", logits), ("targets", targets)), inplace_ok=True)
    if contiguous:
        logits, targets = as_contiguous(logits, targets)
    return logits, targets, out


_NO_STEP = object()  # optimizer_args: the update takes no `step`


def optimizer_args(param, grad, buffers, reals, step=_NO_STEP, contiguous=False):
    """Checked (param, grad, buffers, reals, step) for the Adam / scikit-learn updates.

    ``buffers``: (name, array) state written in place, each like ``param``
    and disjoint from it and from each other; ``reals``: (name, value,
    minimum, maximum) checked with :func:`check_real` (None: no bound; ``eps``
    must be strictly above its minimum, as it keeps ``sqrt(v) + eps`` off 0);
    ``step``: the 1-based number of this update (an int in [1, 2**63 - 1]),
    when the update takes one (None is then a ``TypeError``, not "no step").
    ``param`` and the buffers come back as plain views of the caller's memory
    (:func:`param_buffer`), the buffers as a list in the order given.
    """
    param = param_buffer("param", param)
    _, (_, grad) = float_arrays(("param", param, None), ("grad", grad, None))
    check_shape("grad", grad, param.shape, "to match `param`")
    if not _same_memory(grad, param) and overlaps(grad, param):
        raise ValueError("`grad` overlaps `param`")
    views = []
    for name, buf in buffers:
        if buf is None:
            raise ValueError(f"`{name}` is required: pass np.zeros_like(param) before the first "
                             f"step and keep it")
        buf = param_buffer(name, buf, like=param)
        # NOTE: grad too -- a state buffer aliasing the gradient is read after
        # it is written, which the reference and the kernels order differently.
        for other_name, other in [("param", param), ("grad", grad)] + views:
            if overlaps(buf, other):
                raise ValueError(f"`{name}` overlaps `{other_name}`")
        views.append((name, buf))
    values = [check_real(name, value, minimum=lo, maximum=hi, strict_min=name == "eps")
              for name, value, lo, hi in reals]
    step = None if step is _NO_STEP else check_int("step", step, minimum=1)
    if contiguous:
        (grad,) = as_contiguous(grad)
    return param, grad, [buf for _, buf in views], values, step


def rmsprop_args(param, grad, lr, square_avg, alpha, eps, weight_decay, momentum,
                 momentum_buffer, centered, grad_avg, contiguous=False):
    """Checked (param, grad, buffers, (lr, alpha, eps, weight_decay, momentum), centered)
    for ``rmsprop_update``.

    ``buffers``: [square_avg, momentum_buffer (when momentum != 0), grad_avg
    (when centered)], checked as :func:`optimizer_args` checks state; a buffer
    the step does not use may be None.
    """
    if not isinstance(centered, (bool, np.bool_)):
        raise TypeError(f"`centered` must be a bool; got {type(centered).__name__}")
    uses_buffer = check_real("momentum", momentum, minimum=0.0) != 0
    buffers = [("square_avg", square_avg)]
    if uses_buffer:
        buffers.append(("momentum_buffer", momentum_buffer))
    if centered:
        buffers.append(("grad_avg", grad_avg))
    p, grad, bufs, reals, _ = optimizer_args(
        param, grad, buffers,
        [("lr", lr, 0.0, None), ("alpha", alpha, 0.0, 1.0), ("eps", eps, 0.0, None),
         ("weight_decay", weight_decay, 0.0, None), ("momentum", momentum, 0.0, None)],
        contiguous=contiguous)
    return p, grad, bufs, reals, bool(centered)


def schedule_tables(lrs, momenta):
    """``UpdateRule.set_schedule``'s tables: float64 C-contiguous (k,) arrays (momenta or None)."""
    lrs = np.ascontiguousarray(lrs, dtype=np.float64)
    if lrs.ndim != 1:
        raise ValueError("`lrs` must be one-dimensional")
    if momenta is not None:
        momenta = np.ascontiguousarray(momenta, dtype=np.float64)
        if momenta.shape != lrs.shape:
            raise ValueError("`momenta` must have the shape of `lrs`")
    return lrs, momenta
