"""bpcore._kernels: every compiled twin against bpcore.reference.

The matrix: both dtypes x shapes (0 rows, 1x1, odd, larger) x input layouts
(contiguous, strided, Fortran, negative stride, read-only) x ``out`` given or
not.  Signatures must equal the reference's exactly (Thinc's
``test_ops_consistency`` idea), so a reader can study one and run the other.
"""
import inspect

import numpy as np
import pytest
from conftest import DTYPES, assert_close, layout as _layout

import bpcore
from bpcore import _kernels, reference

# the activations with PyTorch's parameters (defaults; other values in test_reference.py)
NEW_ACTS = ["leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "softplus"]
UNARY = (["sigmoid_forward", "relu_forward", "tanh_forward", "identity_forward"]
         + [f"{a}_forward" for a in NEW_ACTS])
BINARY = (["sigmoid_backward", "relu_backward", "tanh_backward", "identity_backward"]
          + [f"{a}_backward" for a in NEW_ACTS])
SHAPES = [(0, 3), (1, 1), (3, 5), (17, 33), (64, 100)]
LAYOUTS = ["contiguous", "strided", "fortran", "negative", "readonly"]


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


def test_every_operation_is_compiled():
    assert [n for n in reference.__all__ if bpcore.backend_of(n) != "compiled"] == []


@pytest.mark.parametrize("name", reference.__all__)
def test_signature_matches_reference(name):
    assert (inspect.signature(getattr(bpcore, name))
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


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

MSE_REDUCTIONS = ["mean", "sum", "half_sum", "half_mean"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_matches_reference(reduction, shape, dtype):
    pred = _values(shape, dtype, seed=10)
    target = _values(shape, dtype, seed=11)
    expected_loss = reference.mse_loss(pred, target, reduction=reduction)
    expected_grad = reference.mse_loss_backward(pred, target, reduction=reduction)
    loss = _kernels.mse_loss(_layout(pred, "fortran"), target, reduction=reduction)
    grad = _kernels.mse_loss_backward(pred, _layout(target, "strided"), reduction=reduction)
    loss2, grad2 = _kernels.mse_loss_and_grad(pred, target, reduction=reduction)
    if np.isnan(expected_loss):
        assert np.isnan(loss) and np.isnan(loss2)
    else:
        assert loss == pytest.approx(expected_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
        assert loss2 == loss
    assert_close(grad, expected_grad)
    np.testing.assert_array_equal(grad2, grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (3, 5), (17, 33), (64, 10)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_reference(reduction, shape, dtype):
    logits = _values(shape, dtype, seed=12) * 4
    labels = np.random.default_rng(13).integers(0, shape[1], shape[0])
    expected_loss = reference.softmax_cross_entropy(logits, labels, reduction=reduction)
    expected_grad = reference.softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    loss = _kernels.softmax_cross_entropy(_layout(logits, "negative"), labels, reduction=reduction)
    grad = _kernels.softmax_cross_entropy_backward(logits, labels.astype(np.int32),
                                                   reduction=reduction)
    loss2, grad2 = _kernels.softmax_cross_entropy_and_grad(logits, labels, reduction=reduction)
    if np.isnan(expected_loss):
        assert np.isnan(loss) and np.isnan(loss2)
    else:
        assert loss == pytest.approx(expected_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
        assert loss2 == loss
    assert_close(grad, expected_grad)
    np.testing.assert_array_equal(grad2, grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows,n_cols", [(200, 10), (70, 3), (5, 1000), (3, 2049)])
def test_cross_entropy_blocks_of_rows_equal_row_by_row(dtype, n_rows, n_cols):
    """The gradient's exps run over blocks of rows at once (_kernels.pyx); each row's
    loss and gradient are bitwise those of the row alone, in place or not."""
    rng = np.random.default_rng(41)
    logits = (rng.standard_normal((n_rows, n_cols)) * 4).astype(dtype)
    labels = rng.integers(0, n_cols, n_rows)
    loss, grad = _kernels.softmax_cross_entropy_and_grad(logits, labels, reduction="sum")
    rows = [_kernels.softmax_cross_entropy_and_grad(logits[i:i + 1], labels[i:i + 1],
                                                    reduction="sum") for i in range(n_rows)]
    np.testing.assert_array_equal(grad, np.concatenate([g for _, g in rows]))
    assert loss == pytest.approx(sum(l for l, _ in rows), rel=1e-12)
    assert_close(grad, reference.softmax_cross_entropy_backward(logits, labels, reduction="sum"))
    inplace = logits.copy()
    _kernels.softmax_cross_entropy_backward(inplace, labels, reduction="sum", out=inplace)
    np.testing.assert_array_equal(inplace, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_huge_logits_finite(dtype):
    logits = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30]], dtype=dtype)
    labels = np.array([1, 0])
    with np.errstate(all="raise"):
        loss, grad = _kernels.softmax_cross_entropy_and_grad(logits, labels, reduction="sum")
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(2e30 + 2e30, rel=1e-6)
    assert_close(grad, [[1.0, -1.0, 0.0], [-1.0, 0.5, 0.5]], dtype=dtype)


def test_loss_in_place_gradient():
    pred = _values((5, 3), np.float64, seed=14)
    target = _values((5, 3), np.float64, seed=15)
    expected = reference.mse_loss_backward(pred, target)
    assert _kernels.mse_loss_backward(pred, target, out=pred) is pred
    assert_close(pred, expected)
    logits = _values((5, 3), np.float64, seed=16)
    labels = np.array([0, 1, 2, 1, 0])
    expected = reference.softmax_cross_entropy_backward(logits, labels)
    assert _kernels.softmax_cross_entropy_backward(logits, labels, out=logits) is logits
    assert_close(logits, expected)


# ---------------------------------------------------------------------------
# SGD: PyTorch's rounding, bit for bit, on both kernel paths
# ---------------------------------------------------------------------------

SGD_CASES = [dict(momentum=0.0, nesterov=False, weight_decay=0.0),
             dict(momentum=0.9, nesterov=False, weight_decay=0.0),
             dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
             dict(momentum=0.0, nesterov=False, weight_decay=1e-2)]


@pytest.fixture(params=["avx2_fma", "portable"])
def optim_kernel(request):
    used = _kernels._set_optim_kernel(request.param)
    if used != request.param:
        pytest.skip("this CPU has no AVX2+FMA")
    yield used
    _kernels._set_optim_kernel("avx2_fma")


@pytest.mark.parametrize("case", SGD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_sgd_bitwise_equals_torch(case, dtype, n, optim_kernel):
    from conftest import import_oracle
    torch = import_oracle("torch")
    rng = np.random.default_rng(17)
    param = rng.standard_normal(n).astype(dtype)
    velocity = np.zeros_like(param)
    t_param = torch.tensor(param.copy(), requires_grad=True)
    opt = torch.optim.SGD([t_param], lr=0.05, **case)
    for _ in range(100):
        grad = rng.standard_normal(n).astype(dtype)
        _kernels.sgd_update(param, grad, lr=0.05, velocity=velocity, **case)
        t_param.grad = torch.tensor(grad)
        opt.step()
    np.testing.assert_array_equal(param, t_param.detach().numpy())


@pytest.mark.parametrize("case", SGD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_matches_reference(case, dtype):
    rng = np.random.default_rng(18)
    p_ref = rng.standard_normal((13, 5)).astype(dtype)
    p_cmp = p_ref.copy()
    v_ref, v_cmp = np.zeros_like(p_ref), np.zeros_like(p_ref)
    for _ in range(20):
        grad = rng.standard_normal((13, 5)).astype(dtype)
        reference.sgd_update(p_ref, grad, lr=0.1, velocity=v_ref, **case)
        assert _kernels.sgd_update(p_cmp, _layout(grad, "fortran"), lr=0.1, velocity=v_cmp,
                                   **case) is p_cmp
    # The compiled step fuses multiply-adds where PyTorch does; NumPy cannot.
    assert_close(p_cmp, p_ref, scale=10)
    assert_close(v_cmp, v_ref, scale=10)


def test_sgd_empty_param_is_a_no_op():
    param = np.zeros((0, 3))
    assert _kernels.sgd_update(param, np.zeros((0, 3)), lr=0.1) is param


# ---------------------------------------------------------------------------
# Linear layers
# ---------------------------------------------------------------------------

LINEAR_SHAPES = [(0, 3, 2), (1, 1, 1), (5, 7, 3), (64, 100, 10), (33, 65, 17)]


def _linear_inputs(n, n_in, n_out, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n_in)).astype(dtype),
            rng.standard_normal((n_in, n_out)).astype(dtype),
            rng.standard_normal(n_out).astype(dtype),
            rng.standard_normal((n, n_out)).astype(dtype))


def _product_scale(k):
    return max(1.0, float(k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", LINEAR_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_forward_matches_reference(sizes, layout, dtype):
    x, w, b, _ = _linear_inputs(*sizes, dtype, seed=20)
    expected = reference.linear_forward(x, w, b)
    got = _kernels.linear_forward(_layout(x, layout), _layout(w, layout), b)
    assert got.dtype == np.dtype(dtype)
    assert_close(got, expected, scale=_product_scale(sizes[1]))
    out = np.full_like(expected, np.nan)
    assert _kernels.linear_forward(x, w, b, out=out) is out
    assert_close(out, expected, scale=_product_scale(sizes[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", LINEAR_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_backward_matches_reference(sizes, layout, dtype):
    x, w, _, grad = _linear_inputs(*sizes, dtype, seed=21)
    expected = reference.linear_backward(x, w, grad)
    got = _kernels.linear_backward(_layout(x, layout), _layout(w, layout), _layout(grad, layout))
    n, n_in, n_out = sizes
    for g, e, k in zip(got, expected, (n_out, n, n)):
        assert g.dtype == np.dtype(dtype)
        assert_close(g, e, scale=_product_scale(k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward_buffers_and_skip(dtype):
    x, w, _, grad = _linear_inputs(9, 6, 4, dtype, seed=22)
    expected = reference.linear_backward(x, w, grad)
    grad_w, grad_b = np.full((6, 4), np.nan, dtype), np.full(4, np.nan, dtype)
    gx, gw, gb = _kernels.linear_backward(x, w, grad, need_grad_x=False, grad_w=grad_w,
                                          grad_b=grad_b)
    assert gx is None and gw is grad_w and gb is grad_b
    assert_close(gw, expected[1], scale=9)
    assert_close(gb, expected[2], scale=9)
    grad_x = np.full((9, 6), np.nan, dtype)
    assert _kernels.linear_backward(x, w, grad, grad_x=grad_x)[0] is grad_x
    assert_close(grad_x, expected[0], scale=4)


def test_linear_rejects_bad_shapes_and_out():
    x, w, b, grad = _linear_inputs(5, 4, 3, np.float64, seed=23)
    with pytest.raises(ValueError, match="`w`"):
        _kernels.linear_forward(x, w.T, b)
    with pytest.raises(ValueError, match="`b`"):
        _kernels.linear_forward(x, w, b[:2])
    with pytest.raises(ValueError, match="`out`"):
        _kernels.linear_forward(x, w, b, out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="`out`"):
        _kernels.linear_forward(x, w, b, out=np.empty((5, 3), np.float32))
    with pytest.raises(TypeError, match="`x`.*`w`"):
        _kernels.linear_forward(x, w.astype(np.float32), b)
    with pytest.raises(ValueError, match="`grad`"):
        _kernels.linear_backward(x, w, grad[:, :2])
    with pytest.raises(ValueError, match="`grad_w`"):
        _kernels.linear_backward(x, w, grad, grad_w=np.empty((3, 4)))
    shared = np.empty(3 * 4 + 3)
    with pytest.raises(ValueError, match="overlaps"):
        _kernels.linear_backward(x, w, grad, grad_w=shared[:12].reshape(4, 3),
                                 grad_b=shared[10:13])


# ---------------------------------------------------------------------------
# Sigmoid binary cross-entropy, Adam, scikit-learn's optimizers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (2, 3, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sigmoid_bce_matches_reference(reduction, shape, dtype):
    rng = np.random.default_rng(50)
    z = (rng.normal(size=shape) * 5).astype(dtype)
    t = rng.uniform(size=shape).astype(dtype)
    loss = _kernels.sigmoid_binary_cross_entropy(z, t, reduction=reduction)
    expected = reference.sigmoid_binary_cross_entropy(z, t, reduction=reduction)
    if z.size == 0:
        assert np.isnan(loss) == np.isnan(expected)
        return
    assert_close(loss, expected, dtype)
    expected_grad = reference.sigmoid_binary_cross_entropy_backward(z, t, reduction=reduction)
    got = _kernels.sigmoid_binary_cross_entropy_backward(z, t, reduction=reduction)
    assert_close(got, expected_grad, dtype)
    zz, tt = z.copy(), t.copy()  # in place over either input
    _kernels.sigmoid_binary_cross_entropy_backward(zz, t, reduction=reduction, out=zz)
    _kernels.sigmoid_binary_cross_entropy_backward(z, tt, reduction=reduction, out=tt)
    assert_close(zz, expected_grad, dtype)
    assert_close(tt, expected_grad, dtype)


def test_sigmoid_bce_huge_logits_finite(dtype):
    z = np.array([-1e30, -100.0, 0.0, 100.0, 1e30], dtype)
    t = np.array([1.0, 0.0, 0.5, 1.0, 0.0], dtype)
    loss = _kernels.sigmoid_binary_cross_entropy(z, t, reduction="sum")
    assert np.isfinite(loss)
    assert_close(loss, reference.sigmoid_binary_cross_entropy(z, t, reduction="sum"), dtype)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_reference(weight_decay, dtype):
    rng = np.random.default_rng(51)
    p = rng.normal(size=(5, 4)).astype(dtype)
    state = {k: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for k in ("ref", "bp")}
    for step in range(1, 31):
        g = rng.normal(size=p.shape).astype(dtype)
        for k, fn in (("ref", reference.adam_update), ("bp", _kernels.adam_update)):
            q, m, v = state[k]
            fn(q, g, lr=0.01, m=m, v=v, step=step, weight_decay=weight_decay)
    assert_close(state["bp"][0], state["ref"][0], dtype, scale=10)


def test_adamw_bitwise_equals_reference(dtype):
    rng = np.random.default_rng(54)
    p = rng.normal(size=(5, 4)).astype(dtype)
    state = {k: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for k in ("ref", "bp")}
    for step in range(1, 31):
        g = rng.normal(size=p.shape).astype(dtype)
        for k, fn in (("ref", reference.adamw_update), ("bp", _kernels.adamw_update)):
            q, m, v = state[k]
            fn(q, g, lr=0.01, m=m, v=v, step=step, weight_decay=0.1)
    for a, b in zip(state["bp"], state["ref"]):
        np.testing.assert_array_equal(a, b)  # the same formula, rounded alike


@pytest.mark.parametrize("momentum, centered", [(0.0, False), (0.9, False), (0.0, True),
                                                (0.5, True)])
def test_rmsprop_bitwise_equals_reference(momentum, centered, dtype):
    rng = np.random.default_rng(55)
    p = rng.normal(size=(5, 4)).astype(dtype)
    state = {k: [p.copy()] + [np.zeros_like(p) for _ in range(3)] for k in ("ref", "bp")}
    for _ in range(30):
        g = rng.normal(size=p.shape).astype(dtype)
        for k, fn in (("ref", reference.rmsprop_update), ("bp", _kernels.rmsprop_update)):
            q, sq, buf, ga = state[k]
            fn(q, g, lr=0.01, square_avg=sq, momentum=momentum, momentum_buffer=buf,
               centered=centered, grad_avg=ga, weight_decay=0.01)
    for a, b in zip(state["bp"], state["ref"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sklearn_sgd_bitwise_equals_reference(nesterov, dtype):
    rng = np.random.default_rng(52)
    p = rng.normal(size=(5, 4)).astype(dtype)
    a, b = p.copy(), p.copy()
    va, vb = np.zeros_like(p), np.zeros_like(p)
    for _ in range(10):
        g = rng.normal(size=p.shape).astype(dtype)
        reference.sklearn_sgd_update(a, g, lr=0.1, momentum=0.9, velocity=va, nesterov=nesterov)
        _kernels.sklearn_sgd_update(b, g, lr=0.1, momentum=0.9, velocity=vb, nesterov=nesterov)
    np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(vb, va)


def test_sklearn_adam_bitwise_equals_reference(dtype):
    rng = np.random.default_rng(53)
    p = rng.normal(size=(5, 4)).astype(dtype)
    a, b = p.copy(), p.copy()
    sa = [np.zeros_like(p), np.zeros_like(p)]
    sb = [np.zeros_like(p), np.zeros_like(p)]
    for step in range(1, 11):
        g = rng.normal(size=p.shape).astype(dtype)
        reference.sklearn_adam_update(a, g, lr=0.01, m=sa[0], v=sa[1], step=step)
        _kernels.sklearn_adam_update(b, g, lr=0.01, m=sb[0], v=sb[1], step=step)
    np.testing.assert_array_equal(b, a)
