"""bpcore._kernels: every compiled twin against bpcore.reference.

The matrix: both dtypes x shapes (0 rows, 1x1, odd, larger) x input layouts
(contiguous, strided, Fortran, negative stride, read-only) x ``out`` given or
not.  Signatures must equal the reference's exactly (Thinc's
``test_ops_consistency`` idea), so a reader can study one and run the other.
"""
import inspect

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import bpcore
from bpcore import _kernels, reference

COMPILED = [name for name in reference.__all__ if hasattr(_kernels, name)]
UNARY = ["sigmoid_forward", "relu_forward", "tanh_forward", "identity_forward"]
BINARY = ["sigmoid_backward", "relu_backward", "tanh_backward", "identity_backward"]
SHAPES = [(0, 3), (1, 1), (3, 5), (17, 33), (64, 100)]
LAYOUTS = ["contiguous", "strided", "fortran", "negative", "readonly"]


def _layout(arr, layout):
    """The same values as ``arr`` in another memory layout."""
    if layout == "strided":
        big = np.empty((arr.shape[0], 2 * arr.shape[1]), arr.dtype)
        big[:, ::2] = arr
        return big[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(arr)
    if layout == "negative":
        return arr[::-1].copy()[::-1]
    if layout == "readonly":
        arr = arr.copy()
        arr.flags.writeable = False
        return arr
    return arr


def _values(shape, dtype, seed, kind="any"):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=shape).astype(dtype)
    if kind == "unit":  # saved outputs of sigmoid/tanh live in (-1, 1)
        z = np.tanh(z)
    return z


def test_activation_kernels_are_compiled():
    for name in UNARY + BINARY + ["softmax_forward"]:
        assert bpcore.backend_of(name) == "compiled"
        assert getattr(bpcore, name) is getattr(_kernels, name)


def test_backend_of_rejects_unknown_name():
    with pytest.raises(ValueError, match="name"):
        bpcore.backend_of("no_such_op")


@pytest.mark.parametrize("name", COMPILED)
def test_signature_matches_reference(name):
    assert (inspect.signature(getattr(_kernels, name))
            == inspect.signature(getattr(reference, name)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", UNARY + ["softmax_forward"])
def test_forward_matches_reference(name, shape, layout, dtype):
    z = _values(shape, dtype, seed=1)
    expected = getattr(reference, name)(z)
    got = getattr(_kernels, name)(_layout(z, layout))
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    assert_close(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", BINARY)
def test_backward_matches_reference(name, shape, layout, dtype):
    a = _values(shape, dtype, seed=2, kind="unit")
    if name == "relu_backward":
        a = np.maximum(a, 0)
    grad = _values(shape, dtype, seed=3)
    expected = getattr(reference, name)(a, grad)
    got = getattr(_kernels, name)(_layout(a, layout), _layout(grad, layout))
    assert got.dtype == np.dtype(dtype)
    assert_close(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY + ["softmax_forward"])
def test_forward_out_and_in_place(name, dtype):
    z = _values((7, 9), dtype, seed=4)
    expected = getattr(reference, name)(z)
    out = np.full_like(z, np.nan)
    assert getattr(_kernels, name)(z, out=out) is out
    assert_close(out, expected)
    assert getattr(_kernels, name)(z, out=z) is z
    assert_close(z, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_backward_out_and_in_place(name, dtype):
    a = _values((7, 9), dtype, seed=5, kind="unit")
    grad = _values((7, 9), dtype, seed=6)
    expected = getattr(reference, name)(a, grad)
    out = np.full_like(grad, np.nan)
    assert getattr(_kernels, name)(a, grad, out=out) is out
    assert_close(out, expected)
    assert getattr(_kernels, name)(a, grad, out=grad) is grad
    assert_close(grad, expected)


@pytest.mark.parametrize("name", UNARY)
def test_elementwise_any_ndim(name):
    z = _values((2, 3, 4), np.float64, seed=7)
    assert_close(getattr(_kernels, name)(z), getattr(reference, name)(z))
    assert_close(getattr(_kernels, name)(1.5), getattr(reference, name)(1.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_pattern_matches_reference(dtype):
    specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, 1e-40],
                        dtype=dtype)
    for name in UNARY:
        np.testing.assert_array_equal(getattr(_kernels, name)(specials),
                                      getattr(reference, name)(specials), err_msg=name)
    rows = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 1.0], [1e30, -1e30, 0.0],
                     [-np.inf, -np.inf, -np.inf]], dtype=dtype)
    with np.errstate(all="raise"):
        got = _kernels.softmax_forward(rows)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(reference.softmax_forward(rows)))
    assert_close(got[2], [1.0, 0.0, 0.0])


def test_sigmoid_saturates_without_overflow():
    z = np.array([-1e30, -1000.0, -88.8, 0.0, 88.8, 1000.0, 1e30])
    with np.errstate(all="raise"):
        for dtype in DTYPES:
            s = _kernels.sigmoid_forward(z.astype(dtype))
            assert np.all(np.isfinite(s))
            assert s[0] == 0 and s[-1] == 1 and s[3] == 0.5


def test_inputs_left_untouched():
    z = _values((5, 6), np.float32, seed=8)
    grad = _values((5, 6), np.float32, seed=9)
    z0, grad0 = z.copy(), grad.copy()
    for name in UNARY + ["softmax_forward"]:
        getattr(_kernels, name)(z)
    for name in BINARY:
        getattr(_kernels, name)(z, grad)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(grad, grad0)
