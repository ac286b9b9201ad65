"""A small finite-difference gradient checker, for bpcore's kernels, models and your own code.

The idea is PyTorch's ``torch.autograd.gradcheck`` without autograd: you give
a scalar function of some float64 arrays and the gradients you claim for it;
each entry of each array is nudged by +-eps (in place, then restored) and
the central difference ``(f(x+eps) - f(x-eps)) / (2 eps)`` is compared with
your gradient.  Arrays that are views into a model's parameters (for
example ``net.weights``) are perturbed in the model itself, which is what
lets the checker test a whole network.
"""
import numpy as np

__all__ = ["numerical_gradient", "gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree; the message says where."""


def _float64_arrays(inputs):
    arrays = list(inputs)
    for i, arr in enumerate(arrays):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64:
            raise TypeError(f"`inputs[{i}]` must be a float64 ndarray (finite differences "
                            f"need double precision); got "
                            f"{getattr(arr, 'dtype', type(arr).__name__)}")
        if not arr.flags.writeable:
            raise ValueError(f"`inputs[{i}]` is read-only; gradcheck perturbs it in place "
                             f"(and restores it)")
    return arrays


def numerical_gradient(f, inputs, *, eps=1e-6):
    """Central-difference gradient of a scalar function of arrays.

    Parameters
    ----------
    f : callable
        ``f(*inputs) -> float``.  It is called 2 * (total size) times with the
        same arrays, one entry of one of them nudged by +-``eps``.
    inputs : sequence of ndarray (float64, writeable)
        Perturbed in place and restored bit for bit.
    eps : float
        Step of the central difference.

    Returns
    -------
    list of ndarray
        One gradient per input, shaped like it.
    """
    arrays = _float64_arrays(inputs)
    grads = []
    for arr in arrays:
        grad = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            saved = arr[idx]
            try:
                arr[idx] = saved + eps
                up = float(f(*arrays))
                arr[idx] = saved - eps
                down = float(f(*arrays))
            finally:  # an exception from f must not leave a parameter shifted
                arr[idx] = saved
            grad[idx] = (up - down) / (2 * eps)
        grads.append(grad)
    return grads


def gradcheck(f, inputs, analytic, *, eps=1e-6, rtol=1e-5, atol=1e-7, raise_exception=True):
    """Compare claimed gradients of ``f`` with central differences.

    Parameters
    ----------
    f : callable
        ``f(*inputs) -> float``, the scalar whose gradient is checked.
    inputs : sequence of ndarray (float64, writeable)
        The point; perturbed in place during the check and restored.
    analytic : sequence of array_like
        The claimed gradients of ``f`` with respect to each input, same shapes.
    eps : float
        Finite-difference step.
    rtol, atol : float
        Passing means ``|analytic - numerical| <= atol + rtol * |numerical|``
        for every entry.
    raise_exception : bool
        Raise :class:`GradcheckError` on failure (default) instead of
        returning False.

    Returns
    -------
    bool
        True when every entry agrees.

    Examples
    --------
    >>> import numpy as np, bpcore
    >>> z = np.array([0.3, -1.2])
    >>> a = bpcore.sigmoid_forward(z)
    >>> g = bpcore.sigmoid_backward(a, np.ones(2))
    >>> bpcore.gradcheck(lambda z: bpcore.sigmoid_forward(z).sum(), [z], [g])
    True
    """
    arrays = _float64_arrays(inputs)
    if len(analytic) != len(arrays):
        raise ValueError(f"`analytic` must hold one gradient per input ({len(arrays)}); "
                         f"got {len(analytic)}")
    numerical = numerical_gradient(f, arrays, eps=eps)
    for i, (claimed, numer) in enumerate(zip(analytic, numerical)):
        claimed = np.asarray(claimed, dtype=np.float64)
        if claimed.shape != numer.shape:
            raise ValueError(f"`analytic[{i}]` must have shape {numer.shape} like "
                             f"`inputs[{i}]`; got {claimed.shape}")
        err = np.abs(claimed - numer)
        bad = ~(err <= atol + rtol * np.abs(numer))
        if bad.any():
            if not raise_exception:
                return False
            worst = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
            raise GradcheckError(
                f"gradient of input {i} disagrees with finite differences at {len(np.flatnonzero(bad))}"
                f" of {err.size} entries; worst at index {tuple(int(j) for j in worst)}: "
                f"analytic {claimed[worst]!r}, numerical {numer[worst]!r}")
    return True
