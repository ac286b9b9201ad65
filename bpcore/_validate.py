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

Every function here raises; none computes.  Kernels run only after these
checks, so they can be compiled without bounds checks.
"""
import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype}"
    return f"{type(value).__name__}"


def _as_array(name, value):
    """``value`` as an ndarray, with a ``TypeError`` for data that is not numbers."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(value)}"
                            f" that NumPy cannot convert ({exc})") from None
    kind = arr.dtype.kind
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
        if contiguous:
            arr = np.ascontiguousarray(arr, dtype=dtype)
        elif arr.dtype != dtype:
            arr = arr.astype(dtype)
        out.append(arr)
    return dtype, out


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
    """
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"`{name}` must be a NumPy array or None; got {_describe(out)}")
    if out.dtype != dtype:
        raise ValueError(f"`{name}` must have dtype {dtype}; got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"`{name}` must have shape {_fmt_shape(shape)}; got {_fmt_shape(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"`{name}` must be C-contiguous; got a strided view "
                         f"(pass np.ascontiguousarray(...) or let bpcore allocate it)")
    if not out.flags.writeable:
        raise ValueError(f"`{name}` is read-only; bpcore writes its result there")
    for in_name, arr in inputs:
        if arr is None or not np.shares_memory(out, arr, max_work=1000):
            continue
        same = (arr.__array_interface__["data"][0] == out.__array_interface__["data"][0]
                and arr.strides == out.strides and arr.shape == out.shape)
        if not (inplace_ok and same):
            allowed = (" (only the very same array is allowed, for an in-place update)"
                       if inplace_ok else "")
            raise ValueError(f"`{name}` overlaps the input `{in_name}`{allowed}")
    return out


def check_real(name, value, *, minimum=None, maximum=None, strict_min=False):
    """A finite real scalar (not bool) within bounds, returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value}")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        bound = ">" if strict_min else ">="
        raise ValueError(f"`{name}` must be {bound} {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {value}")
    return value


def check_int(name, value, *, minimum=None):
    """An integer (not bool) >= ``minimum``, returned as int."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer; got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}")
    return value


def check_choice(name, value, choices):
    """``value`` must be one of ``choices``; the message lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; "
                         f"got {value!r}")
    return value


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
    labels64 = arr.astype(np.int64)
    bad = np.flatnonzero((labels64 < 0) | (labels64 >= n_classes))
    if bad.size:
        raise ValueError(f"`{name}`[{bad[0]}] = {labels64[bad[0]]} is out of range "
                         f"for {n_classes} classes (expected 0 <= label < {n_classes})")
    return np.ascontiguousarray(labels64)


REDUCTIONS_MSE = ("mean", "sum", "half_sum", "half_mean")
REDUCTIONS_CE = ("mean", "sum")
