"""bpcore.reference (the specification) and its compiled twins: against PyTorch and
against finite differences.  Every test runs on both backends (fixture ``R``).

Forwards are compared with the matching ``torch`` function, backwards with
``torch.autograd`` and with :func:`bpcore.gradcheck` (float64), and
``sgd_update`` with ``torch.optim.SGD`` over many steps.  Then the promises
every function makes: numerical stability at extreme inputs, ``out=``
semantics, inputs left untouched; and the checker ``bpcore.gradcheck`` itself.
"""
import warnings

import numpy as np
import pytest
from conftest import assert_close, import_oracle

import bpcore

UNARY = ["sigmoid", "relu", "tanh", "identity"]
# name -> (non-default parameters, torch's forward with them, backward takes z)
NEW_ACTS = {
    "leaky_relu": ({"negative_slope": 0.2},
                   lambda F, t, p: F.leaky_relu(t, **p), False),
    # NOTE: from the output, as torch's in-place elu_ (is_result=True): its autograd
    # formula is the one bpcore computes, grad * (a + alpha).
    "elu": ({"alpha": 0.7}, lambda F, t, p: F.elu(t * 1, **p, inplace=True), False),
    "gelu": ({}, lambda F, t, p: F.gelu(t), True),
    "gelu_tanh": ({}, lambda F, t, p: F.gelu(t, approximate="tanh"), True),
    "silu": ({}, lambda F, t, p: F.silu(t), True),
    "softplus": ({"beta": 1.5, "threshold": 8.0}, lambda F, t, p: F.softplus(t, **p), True),
}
MSE_REDUCTIONS = ["mean", "sum", "half_sum", "half_mean"]
CE_REDUCTIONS = ["mean", "sum"]

# Agreement with PyTorch: both round correctly but not identically (exp/tanh
# implementations, summation order), so looser than conftest.TOL, which is for
# twins of one algorithm.  Sums over k terms scale atol by k.
TORCH_TOL = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
}

SHAPES_2D = [(0, 3), (1, 1), (5, 7), (13, 4), (3, 1000)]
SHAPES_ANY = [(0,), (0, 3), (1,), (6,), (5, 7), (2, 3, 4)]


@pytest.fixture(params=["reference", "compiled"])
def R(request):
    """The backend under test: the NumPy specification or its compiled twins."""
    return bpcore.reference if request.param == "reference" else bpcore


@pytest.fixture(scope="module")
def torch():
    return import_oracle("torch")


def _np(tensor):
    return tensor.detach().numpy()


def assert_torch(actual, expected, dtype, scale=1.0):
    """``actual`` (NumPy) against ``expected`` (a torch tensor or a number)."""
    if hasattr(expected, "detach"):
        expected = _np(expected)
    tol = TORCH_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale)
    if isinstance(actual, np.ndarray):
        assert actual.dtype == np.dtype(dtype)
        assert actual.shape == np.shape(expected)


def _normal(shape, dtype, seed, scale=1.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(dtype)


def _away_from_kink(shape, dtype, seed, margin=1e-3):
    """Normal values with |z| > margin, so ReLU is differentiable everywhere."""
    z = _normal(shape, dtype, seed)
    return (np.sign(z) * (np.abs(z) + 2 * margin)).astype(dtype)


def _labels(n, n_classes, seed):
    return np.random.default_rng(seed).integers(0, n_classes, size=n)


def _torch_act(torch, name):
    return {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
            "identity": lambda t: t * 1}[name]


def _torch_mse(torch, pred, target, reduction):
    F = torch.nn.functional
    if reduction in ("mean", "sum"):
        return F.mse_loss(pred, target, reduction=reduction)
    return 0.5 * F.mse_loss(pred, target, reduction=reduction.split("_")[1])


# ---------------------------------------------------------------------------
# Forwards against PyTorch
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k", [(0, 3, 4), (4, 0, 3), (5, 7, 0), (6, 5, 4), (17, 9, 23)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-2.0, 0.75)])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
def test_matmul_vs_torch(R, torch, trans_a, trans_b, alpha, beta, m, n, k, dtype):
    a = _normal((k, m) if trans_a else (m, k), dtype, 1)
    b = _normal((n, k) if trans_b else (k, n), dtype, 2)
    c = _normal((m, n), dtype, 3)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    expected = torch.addmm(torch.from_numpy(c), ta.T if trans_a else ta,
                           tb.T if trans_b else tb, beta=beta, alpha=alpha)
    out = c.copy()
    if beta == 0.0:
        out[...] = np.nan  # as in BLAS (and torch.addmm), ignored when beta == 0
        fresh = R.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha)
        assert_torch(fresh, expected, dtype, scale=max(k, 1))
    got = R.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out)
    assert got is out
    assert_torch(got, expected, dtype, scale=max(k, 1))


@pytest.mark.parametrize("n,n_in,n_out", [(0, 3, 2), (1, 1, 1), (8, 5, 3), (33, 17, 9)])
def test_linear_forward_vs_torch(R, torch, n, n_in, n_out, dtype):
    x, w = _normal((n, n_in), dtype, 4), _normal((n_in, n_out), dtype, 5)
    b = _normal(n_out, dtype, 6)
    expected = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()),
                                          torch.from_numpy(b))
    assert_torch(R.linear_forward(x, w, b), expected, dtype, scale=n_in)


@pytest.mark.parametrize("shape", SHAPES_ANY)
@pytest.mark.parametrize("name", UNARY)
def test_activation_forward_vs_torch(R, torch, name, shape, dtype):
    z = _normal(shape, dtype, 7, scale=4.0)
    expected = _torch_act(torch, name)(torch.from_numpy(z))
    assert_torch(getattr(R, f"{name}_forward")(z), expected, dtype)


@pytest.mark.parametrize("shape", SHAPES_2D)
def test_softmax_forward_vs_torch(R, torch, shape, dtype):
    z = _normal(shape, dtype, 8, scale=10.0)
    expected = torch.softmax(torch.from_numpy(z), dim=1)
    got = R.softmax_forward(z)
    assert_torch(got, expected, dtype)
    if z.size:
        assert_torch(got.sum(axis=1), np.ones(shape[0], dtype), dtype, scale=10)


@pytest.mark.parametrize("shape", [(0, 3), (5,), (1, 1), (4, 6), (2, 3, 4)])
@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_vs_torch(R, torch, reduction, shape, dtype):
    pred, target = _normal(shape, dtype, 9), _normal(shape, dtype, 10)
    expected = _torch_mse(torch, torch.from_numpy(pred), torch.from_numpy(target), reduction)
    got = R.mse_loss(pred, target, reduction=reduction)
    assert isinstance(got, float)
    if pred.size == 0 and reduction.endswith("mean"):
        assert np.isnan(got) and np.isnan(expected.item())  # torch's mean of nothing
    else:
        assert_torch(got, expected.item(), dtype, scale=10)


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (7, 5), (40, 12)])
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_softmax_cross_entropy_vs_torch(R, torch, reduction, shape, dtype):
    logits = _normal(shape, dtype, 11, scale=5.0)
    labels = _labels(shape[0], shape[1], 12)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), reduction=reduction)
    got = R.softmax_cross_entropy(logits, labels, reduction=reduction)
    assert isinstance(got, float)
    if shape[0] == 0 and reduction == "mean":
        assert np.isnan(got) and np.isnan(expected.item())
    else:
        assert_torch(got, expected.item(), dtype, scale=10)


# ---------------------------------------------------------------------------
# Backwards against torch.autograd
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("need_grad_x", [True, False])
@pytest.mark.parametrize("n,n_in,n_out", [(0, 3, 2), (1, 1, 1), (8, 5, 3), (33, 17, 9)])
def test_linear_backward_vs_autograd(R, torch, n, n_in, n_out, need_grad_x, dtype):
    x, w = _normal((n, n_in), dtype, 13), _normal((n_in, n_out), dtype, 14)
    b = _normal(n_out, dtype, 15)
    grad = _normal((n, n_out), dtype, 16)
    tx, tw, tb = (torch.from_numpy(v.copy()).requires_grad_() for v in (x, w, b))
    (tx @ tw + tb).backward(torch.from_numpy(grad))
    grad_x, grad_w, grad_b = R.linear_backward(x, w, grad, need_grad_x=need_grad_x)
    if need_grad_x:
        assert_torch(grad_x, tx.grad, dtype, scale=n_out)
    else:
        assert grad_x is None
    assert_torch(grad_w, tw.grad, dtype, scale=max(n, 1))
    assert_torch(grad_b, tb.grad, dtype, scale=max(n, 1))


@pytest.mark.parametrize("shape", SHAPES_ANY)
@pytest.mark.parametrize("name", UNARY)
def test_activation_backward_vs_autograd(R, torch, name, shape, dtype):
    z = _away_from_kink(shape, dtype, 17) * 3
    grad = _normal(shape, dtype, 18)
    tz = torch.from_numpy(z.copy()).requires_grad_()
    _torch_act(torch, name)(tz).backward(torch.from_numpy(grad))
    a = getattr(R, f"{name}_forward")(z)  # the saved output
    assert_torch(getattr(R, f"{name}_backward")(a, grad), tz.grad, dtype)


@pytest.mark.parametrize("shape", [(0, 3), (5,), (4, 6), (2, 3, 4)])
@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_backward_vs_autograd(R, torch, reduction, shape, dtype):
    pred, target = _normal(shape, dtype, 19), _normal(shape, dtype, 20)
    tp = torch.from_numpy(pred.copy()).requires_grad_()
    _torch_mse(torch, tp, torch.from_numpy(target), reduction).backward()
    assert_torch(R.mse_loss_backward(pred, target, reduction=reduction), tp.grad, dtype)


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (7, 5), (40, 12)])
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_softmax_cross_entropy_backward_vs_autograd(R, torch, reduction, shape, dtype):
    logits = _normal(shape, dtype, 21, scale=5.0)
    labels = _labels(shape[0], shape[1], 22)
    tl = torch.from_numpy(logits.copy()).requires_grad_()
    torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels),
                                      reduction=reduction).backward()
    got = R.softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    assert_torch(got, tl.grad, dtype)


# ---------------------------------------------------------------------------
# Backwards against finite differences (float64)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,n_in,n_out", [(1, 1, 1), (6, 4, 3)])
def test_linear_backward_gradcheck(R, n, n_in, n_out):
    x, w = _normal((n, n_in), np.float64, 23), _normal((n_in, n_out), np.float64, 24)
    b = _normal(n_out, np.float64, 25)
    weights = _normal((n, n_out), np.float64, 26)  # f = sum(weights * layer output)
    grad_x, grad_w, grad_b = R.linear_backward(x, w, weights)
    assert bpcore.gradcheck(lambda x, w, b: np.sum(weights * R.linear_forward(x, w, b)),
                            [x, w, b], [grad_x, grad_w, grad_b])


@pytest.mark.parametrize("name", UNARY)
def test_activation_backward_gradcheck(R, name):
    z = _away_from_kink((4, 5), np.float64, 27) * 2
    weights = _normal((4, 5), np.float64, 28)
    forward = getattr(R, f"{name}_forward")
    analytic = getattr(R, f"{name}_backward")(forward(z), weights)
    assert bpcore.gradcheck(lambda z: np.sum(weights * forward(z)), [z], [analytic])


@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_backward_numerical_gradient(R, reduction):
    pred, target = _normal((5, 3), np.float64, 29), _normal((5, 3), np.float64, 30)
    (numerical,) = bpcore.numerical_gradient(
        lambda p: R.mse_loss(p, target, reduction=reduction), [pred])
    analytic = R.mse_loss_backward(pred, target, reduction=reduction)
    # A quadratic: the central difference is exact up to rounding.
    np.testing.assert_allclose(analytic, numerical, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_softmax_cross_entropy_backward_gradcheck(R, reduction):
    logits = _normal((6, 4), np.float64, 31, scale=3.0)
    labels = _labels(6, 4, 32)
    analytic = R.softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    assert bpcore.gradcheck(
        lambda z: R.softmax_cross_entropy(z, labels, reduction=reduction), [logits], [analytic])


# ---------------------------------------------------------------------------
# sgd_update against torch.optim.SGD
# ---------------------------------------------------------------------------

SGD_CONFIGS = [dict(momentum=m, nesterov=nest, weight_decay=wd)
               for m in (0.0, 0.9) for nest in (False, True) for wd in (0.0, 1e-2)
               if not (nest and m == 0.0)]

# Float64 is NOT bitwise: torch's update ``param.add_(g, alpha=-lr)`` (and the
# weight-decay ``grad.add(param, alpha=wd)``) are fused multiply-adds on CPU,
# rounded once; the reference's ``param -= lr * g`` rounds twice, so step 0
# already differs in the last bit.  Over 100 steps the gap stays below
# ~7e-16 * max|param| (measured: 4.2e-16 here, 6.6e-16 worst over 20 seeds),
# so 1e-15 * max|param| is the tightest round bound that holds (elementwise
# relative error is meaningless where a parameter crosses zero).  The momentum
# buffer, which never meets a fused product without weight decay, is bitwise.
SGD_BOUND = {np.dtype(np.float64): 1e-15, np.dtype(np.float32): 1e-6}


@pytest.mark.parametrize("config", SGD_CONFIGS,
                         ids=lambda c: "m{momentum}-nest{nesterov}-wd{weight_decay}".format(**c))
def test_sgd_update_vs_torch_optim(R, torch, config, dtype):
    rng = np.random.default_rng(33)
    param = rng.normal(size=(7, 5)).astype(dtype)
    grads = rng.normal(size=(100, 7, 5)).astype(dtype)
    tparam = torch.from_numpy(param.copy()).requires_grad_()
    opt = torch.optim.SGD([tparam], lr=0.05, **config)
    velocity = np.zeros_like(param) if config["momentum"] else None
    for g in grads:
        tparam.grad = torch.from_numpy(g.copy())
        opt.step()
        assert R.sgd_update(param, g, lr=0.05, velocity=velocity, **config) is param
        expected = _np(tparam)
        bound = SGD_BOUND[np.dtype(dtype)] * np.abs(expected).max()
        np.testing.assert_allclose(param, expected, rtol=0, atol=bound)
    if velocity is not None:
        buf = _np(opt.state[tparam]["momentum_buffer"])
        if config["weight_decay"] == 0.0:
            # velocity = m * velocity + grad is computed unfused on both sides.
            np.testing.assert_array_equal(velocity, buf)
        else:
            np.testing.assert_allclose(velocity, buf, rtol=0,
                                       atol=SGD_BOUND[np.dtype(dtype)] * np.abs(buf).max())


def test_sgd_update_one_step_closed_form(R):
    param = np.array([1.0, -2.0, 0.5])
    grad = np.array([0.5, 0.25, -1.0])
    velocity = np.array([0.1, 0.0, -0.2])
    R.sgd_update(param, grad, lr=0.1, momentum=0.5, velocity=velocity,
                 weight_decay=0.2, nesterov=True)
    g = np.array([0.5, 0.25, -1.0]) + 0.2 * np.array([1.0, -2.0, 0.5])
    v = 0.5 * np.array([0.1, 0.0, -0.2]) + g
    np.testing.assert_allclose(velocity, v, rtol=1e-15)
    np.testing.assert_allclose(param, np.array([1.0, -2.0, 0.5]) - 0.1 * (g + 0.5 * v),
                               rtol=1e-15)


# ---------------------------------------------------------------------------
# Stability at extreme inputs
# ---------------------------------------------------------------------------

EXTREMES = [-1e30, -1000.0, 0.0, 1000.0, 1e30]
BIG_LOGITS = [[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30], [0.0, 0.0, -1e30]]


def test_sigmoid_saturates_without_warnings(R, dtype):
    z = np.array(EXTREMES, dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise",
                                                invalid="raise"):
        warnings.simplefilter("error")
        s = R.sigmoid_forward(z)
        d = R.sigmoid_backward(s, np.ones_like(s))
    np.testing.assert_array_equal(s, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(d, [0.0, 0.0, 0.25, 0.0, 0.0])


def test_softmax_and_cross_entropy_at_1e30_without_warnings(R, dtype):
    logits = np.array(BIG_LOGITS, dtype)
    labels = np.array([0, 2, 2])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise",
                                                invalid="raise"):
        warnings.simplefilter("error")
        p = R.softmax_forward(logits)
        loss = R.softmax_cross_entropy(logits, labels, reduction="sum")
        grad = R.softmax_cross_entropy_backward(logits, labels, reduction="sum")
    np.testing.assert_array_equal(p, [[1, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0]])
    # Row losses: 0, log 2, 1e30 + log 2 (the last is 1e30 to any precision).
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, 1e30, rtol=1e-6)
    np.testing.assert_array_equal(grad, [[0, 0, 0], [0, 0.5, -0.5], [0.5, 0.5, -1]])
    loss_0 = R.softmax_cross_entropy(logits[:2], labels[:2], reduction="sum")
    np.testing.assert_allclose(loss_0, np.log(2), rtol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid_forward", "softmax_forward",
                                  "softmax_cross_entropy", "softmax_cross_entropy_backward"])
def test_extreme_inputs_under_errstate_all_raise(R, name, dtype):
    logits = np.array(BIG_LOGITS, dtype)
    calls = {
        "sigmoid_forward": lambda: R.sigmoid_forward(np.array(EXTREMES, dtype)),
        "softmax_forward": lambda: R.softmax_forward(logits),
        "softmax_cross_entropy": lambda: R.softmax_cross_entropy(logits, [0, 2, 2]),
        "softmax_cross_entropy_backward":
            lambda: R.softmax_cross_entropy_backward(logits, [0, 2, 2]),
    }
    with np.errstate(all="raise"):
        result = calls[name]()
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("name", UNARY)
def test_nan_propagates_elementwise(R, name, dtype):
    z = np.array([[np.nan, 1.0, -2.0], [0.5, np.nan, 3.0]], dtype)
    got = getattr(R, f"{name}_forward")(z)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(z))


def test_nan_propagates_through_softmax_row(R, dtype):
    z = np.array([[1.0, np.nan, 2.0], [0.0, 1.0, 2.0]], dtype)
    got = R.softmax_forward(z)
    assert np.isnan(got[0]).all()
    assert np.isfinite(got[1]).all()


# ---------------------------------------------------------------------------
# out= semantics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [f"{n}_forward" for n in UNARY] + ["softmax_forward"])
def test_forward_out_returned_and_in_place(R, name, dtype):
    fn = getattr(R, name)
    z = _normal((4, 6), dtype, 34, scale=3.0)
    expected = fn(z)
    out = np.full_like(z, np.nan)
    assert fn(z, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert fn(z, out=z) is z
    np.testing.assert_array_equal(z, expected)


@pytest.mark.parametrize("target", ["grad", "a"])
@pytest.mark.parametrize("name", UNARY)
def test_backward_out_returned_and_in_place(R, name, target, dtype):
    # out=a for relu is a regression test: the mask must be taken before a is overwritten.
    forward, backward = getattr(R, f"{name}_forward"), getattr(R, f"{name}_backward")
    a = forward(_normal((4, 6), dtype, 35, scale=3.0))
    grad = _normal((4, 6), dtype, 36)
    expected = backward(a, grad)
    out = np.full_like(a, np.nan)
    assert backward(a, grad, out=out) is out
    np.testing.assert_array_equal(out, expected)
    buf = {"a": a, "grad": grad}[target]
    assert backward(a, grad, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)


@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_backward_out_and_in_place(R, reduction, dtype):
    pred, target = _normal((3, 4), dtype, 37), _normal((3, 4), dtype, 38)
    expected = R.mse_loss_backward(pred, target, reduction=reduction)
    out = np.full_like(pred, np.nan)
    assert R.mse_loss_backward(pred, target, reduction=reduction, out=out) is out
    np.testing.assert_array_equal(out, expected)
    in_pred, in_target = pred.copy(), target.copy()
    assert R.mse_loss_backward(in_pred, target, reduction=reduction, out=in_pred) is in_pred
    np.testing.assert_array_equal(in_pred, expected)
    assert R.mse_loss_backward(pred, in_target, reduction=reduction,
                               out=in_target) is in_target
    np.testing.assert_array_equal(in_target, expected)


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_cross_entropy_backward_out_and_in_place(R, reduction, dtype):
    logits = _normal((5, 4), dtype, 39, scale=3.0)
    labels = _labels(5, 4, 40)
    expected = R.softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    out = np.full_like(logits, np.nan)
    assert R.softmax_cross_entropy_backward(logits, labels, reduction=reduction,
                                            out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert R.softmax_cross_entropy_backward(logits, labels, reduction=reduction,
                                            out=logits) is logits
    np.testing.assert_array_equal(logits, expected)


@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_and_grad_is_loss_plus_backward(R, reduction, dtype):
    pred, target = _normal((3, 4), dtype, 46), _normal((3, 4), dtype, 47)
    loss = R.mse_loss(pred, target, reduction=reduction)
    grad = R.mse_loss_backward(pred, target, reduction=reduction)
    got_loss, got_grad = R.mse_loss_and_grad(pred, target, reduction=reduction)
    assert got_loss == loss
    np.testing.assert_array_equal(got_grad, grad)
    out = np.full_like(pred, np.nan)
    assert R.mse_loss_and_grad(pred, target, reduction=reduction, out=out)[1] is out
    np.testing.assert_array_equal(out, grad)
    # In place over pred: the loss must be taken before pred is overwritten.
    got_loss, got_grad = R.mse_loss_and_grad(pred, target, reduction=reduction, out=pred)
    assert got_loss == loss and got_grad is pred
    np.testing.assert_array_equal(pred, grad)


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_cross_entropy_and_grad_is_loss_plus_backward(R, reduction, dtype):
    logits = _normal((5, 4), dtype, 48, scale=3.0)
    labels = _labels(5, 4, 49)
    loss = R.softmax_cross_entropy(logits, labels, reduction=reduction)
    grad = R.softmax_cross_entropy_backward(logits, labels, reduction=reduction)
    got_loss, got_grad = R.softmax_cross_entropy_and_grad(logits, labels, reduction=reduction)
    assert got_loss == loss
    np.testing.assert_array_equal(got_grad, grad)
    got_loss, got_grad = R.softmax_cross_entropy_and_grad(logits, labels, reduction=reduction,
                                                          out=logits)
    assert got_loss == loss and got_grad is logits
    np.testing.assert_array_equal(logits, grad)


def test_linear_out_buffers_returned(R, dtype):
    x, w, b = _normal((5, 4), dtype, 41), _normal((4, 3), dtype, 42), _normal(3, dtype, 43)
    grad = _normal((5, 3), dtype, 44)
    out = np.full((5, 3), np.nan, dtype)
    assert R.linear_forward(x, w, b, out=out) is out
    np.testing.assert_array_equal(out, R.linear_forward(x, w, b))
    bufs = [np.full(s, np.nan, dtype) for s in ((5, 4), (4, 3), (3,))]
    got = R.linear_backward(x, w, grad, grad_x=bufs[0], grad_w=bufs[1], grad_b=bufs[2])
    for g, buf, e in zip(got, bufs, R.linear_backward(x, w, grad)):
        assert g is buf
        np.testing.assert_array_equal(g, e)
    mm = np.full((5, 3), np.nan, dtype)
    assert R.matmul(x, w, out=mm) is mm
    np.testing.assert_allclose(mm, x @ w, rtol=1e-6 if dtype == np.float32 else 1e-14)


# ---------------------------------------------------------------------------
# Inputs are never written
# ---------------------------------------------------------------------------

def _calls(R, dtype):
    rng = np.random.default_rng(45)

    def arr(*shape):
        return rng.normal(size=shape).astype(dtype)

    x, w, b, g, z, c = arr(5, 4), arr(4, 3), arr(3), arr(5, 3), arr(5, 3), arr(5, 3)
    a_sig = R.sigmoid_forward(z)
    labels = np.array([0, 2, 1, 1, 0])
    calls = {
        "matmul": (R.matmul, (x, w), {}),
        "matmul_beta": (R.matmul, (x, w), dict(beta=0.5, out=c)),  # out is meant to change
        "linear_forward": (R.linear_forward, (x, w, b), {}),
        "linear_backward": (R.linear_backward, (x, w, g), {}),
        "softmax_forward": (R.softmax_forward, (z,), {}),
        "mse_loss": (R.mse_loss, (z, g), {}),
        "mse_loss_backward": (R.mse_loss_backward, (z, g), {}),
        "mse_loss_and_grad": (R.mse_loss_and_grad, (z, g), {}),
        "softmax_cross_entropy": (R.softmax_cross_entropy, (z, labels), {}),
        "softmax_cross_entropy_backward": (R.softmax_cross_entropy_backward, (z, labels), {}),
        "softmax_cross_entropy_and_grad": (R.softmax_cross_entropy_and_grad, (z, labels), {}),
        "sgd_update": (R.sgd_update, (arr(5, 3), g), dict(lr=0.1, momentum=0.9,
                                                          velocity=arr(5, 3),
                                                          weight_decay=0.1, nesterov=True)),
        "sigmoid_binary_cross_entropy": (R.sigmoid_binary_cross_entropy, (z, a_sig), {}),
        "sigmoid_binary_cross_entropy_backward": (R.sigmoid_binary_cross_entropy_backward,
                                                  (z, a_sig), {}),
        "adam_update": (R.adam_update, (arr(5, 3), g),
                        dict(lr=0.1, m=arr(5, 3), v=arr(5, 3) ** 2, step=3, weight_decay=0.1)),
        "adamw_update": (R.adamw_update, (arr(5, 3), g),
                         dict(lr=0.1, m=arr(5, 3), v=arr(5, 3) ** 2, step=3)),
        "rmsprop_update": (R.rmsprop_update, (arr(5, 3), g),
                           dict(lr=0.1, square_avg=arr(5, 3) ** 2 + 1, momentum=0.9,
                                momentum_buffer=arr(5, 3), centered=True,
                                grad_avg=0.1 * arr(5, 3))),
        "sklearn_sgd_update": (R.sklearn_sgd_update, (arr(5, 3), g),
                               dict(lr=0.1, momentum=0.9, velocity=arr(5, 3))),
        "sklearn_adam_update": (R.sklearn_adam_update, (arr(5, 3), g),
                                dict(lr=0.1, m=arr(5, 3), v=arr(5, 3) ** 2, step=2)),
    }
    for name in UNARY:
        calls[f"{name}_forward"] = (getattr(R, f"{name}_forward"), (z,), {})
        calls[f"{name}_backward"] = (getattr(R, f"{name}_backward"), (a_sig, g), {})
    for loss, params in (("l1_loss", {}), ("huber_loss", {"delta": 0.5}),
                         ("smooth_l1_loss", {"beta": 0.5})):
        calls[loss] = (getattr(R, loss), (z, g), params)
        calls[f"{loss}_backward"] = (getattr(R, f"{loss}_backward"), (z, g), params)
    for name, (params, _, _) in NEW_ACTS.items():
        calls[f"{name}_forward"] = (getattr(R, f"{name}_forward"), (z,), params)
        calls[f"{name}_backward"] = (getattr(R, f"{name}_backward"), (z, g), params)
    return calls


@pytest.mark.parametrize("name", sorted(_calls(bpcore.reference, np.float64)))
def test_inputs_not_modified(R, name, dtype):
    fn, args, kwargs = _calls(R, dtype)[name]
    # sgd_update writes param (args[0]) and velocity by contract; matmul with beta, out.
    written = {"sgd_update": {0}, "adam_update": {0}, "adamw_update": {0},
               "rmsprop_update": {0}, "sklearn_sgd_update": {0},
               "sklearn_adam_update": {0}}.get(name, set())
    saved = [a.copy() for a in args]
    fn(*args, **kwargs)
    for i, (arg, before) in enumerate(zip(args, saved)):
        if i in written:
            assert not np.array_equal(arg, before)
        else:
            np.testing.assert_array_equal(arg, before, err_msg=f"{name} wrote argument {i}")


def test_every_reference_function_is_covered():
    names = {n.removesuffix("_beta") for n in _calls(bpcore.reference, np.float64)}
    assert names == set(bpcore.reference.__all__)


# ---------------------------------------------------------------------------
# bpcore.gradcheck itself
# ---------------------------------------------------------------------------

def test_gradcheck_passes_on_right_gradient(R):
    x = np.array([0.3, -1.2, 2.0])
    y = np.array([[1.0, 2.0], [-0.5, 0.25]])
    f = lambda x, y: np.sum(np.sin(x)) * np.sum(y ** 2)  # noqa: E731
    analytic = [np.cos(x) * np.sum(y ** 2), 2 * y * np.sum(np.sin(x))]
    assert bpcore.gradcheck(f, [x, y], analytic) is True
    numerical = bpcore.numerical_gradient(f, [x, y])
    for n, a in zip(numerical, analytic):
        np.testing.assert_allclose(n, a, rtol=1e-8, atol=1e-10)


def test_gradcheck_raises_on_wrong_gradient(R):
    x = np.array([0.3, -1.2, 2.0])
    wrong = np.cos(x)
    wrong[1] += 1e-3
    with pytest.raises(bpcore.GradcheckError, match=r"1 of 3 entries; worst at index \(1,\)"):
        bpcore.gradcheck(lambda x: np.sum(np.sin(x)), [x], [wrong])
    assert bpcore.gradcheck(lambda x: np.sum(np.sin(x)), [x], [wrong],
                            raise_exception=False) is False
    assert issubclass(bpcore.GradcheckError, AssertionError)


def test_gradcheck_flags_nan_gradient(R):
    x = np.array([0.3, -1.2])
    assert bpcore.gradcheck(lambda x: np.sum(x ** 2), [x], [np.array([0.6, np.nan])],
                            raise_exception=False) is False


@pytest.mark.parametrize("bad,exc,match", [
    (np.ones(3, np.float32), TypeError, r"inputs\[1\].*float64"),
    ([1.0, 2.0, 3.0], TypeError, r"inputs\[1\]"),
    (np.ones(3, np.int64), TypeError, r"inputs\[1\]"),
])
def test_gradcheck_rejects_non_float64(R, bad, exc, match):
    with pytest.raises(exc, match=match):
        bpcore.gradcheck(lambda a, b: 0.0, [np.ones(3), bad], [np.zeros(3), np.zeros(3)])
    with pytest.raises(exc, match=match):
        bpcore.numerical_gradient(lambda a, b: 0.0, [np.ones(3), bad])


def test_gradcheck_rejects_read_only(R):
    x = np.ones(3)
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"inputs\[0\].*read-only"):
        bpcore.gradcheck(lambda x: float(x.sum()), [x], [np.ones(3)])


def test_gradcheck_rejects_mismatched_analytic(R):
    x = np.ones(3)
    with pytest.raises(ValueError, match="analytic"):
        bpcore.gradcheck(lambda x: float(x.sum()), [x], [np.ones(3), np.ones(3)])
    with pytest.raises(ValueError, match=r"analytic\[0\]"):
        bpcore.gradcheck(lambda x: float(x.sum()), [x], [np.ones(4)])


def test_gradcheck_restores_inputs_bitwise(R):
    # Values whose +-eps round trip would not restore them: -0.0, a subnormal,
    # a huge number (x + eps == x), and digits eps would blur.
    x = np.array([-0.0, 5e-324, 1e300, 0.1 + 0.2, -3.7])
    bits = x.view(np.uint64).copy()
    seen = []

    def f(x):
        seen.append(x.copy())
        return float(np.sum(x * 0.0))

    bpcore.gradcheck(f, [x], [np.zeros(5)])
    np.testing.assert_array_equal(x.view(np.uint64), bits)
    # It did perturb the very array it was given (not a copy).
    assert any(not np.array_equal(s.view(np.uint64), bits) for s in seen)


def test_gradcheck_checks_a_view_into_a_larger_array(R):
    params = np.arange(6.0)
    view = params[2:5]
    bpcore.gradcheck(lambda v: float(np.sum(params ** 2)), [view], [2 * params[2:5]])
    np.testing.assert_array_equal(params, np.arange(6.0))


def test_gradcheck_restores_inputs_when_f_raises(R):
    # An exception from f must not leave an input (a model's parameter) shifted by eps.
    x = np.array([1.0, 2.0, 3.0])
    saved = x.copy()
    calls = []

    def f(x):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return float(x.sum())

    with pytest.raises(RuntimeError, match="boom"):
        bpcore.gradcheck(f, [x], [np.ones(3)])
    np.testing.assert_array_equal(x, saved)


# ---------------------------------------------------------------------------
# Sigmoid binary cross-entropy, Adam, scikit-learn's optimizers
# ---------------------------------------------------------------------------

BCE_SHAPES = [(0,), (1,), (7, 3), (2, 3, 4), (50, 1)]


@pytest.mark.parametrize("shape", BCE_SHAPES)
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_sigmoid_bce_vs_torch(R, torch, reduction, shape, dtype):
    z = _normal(shape, dtype, 40, scale=4.0)
    t = np.random.default_rng(41).uniform(size=shape).astype(dtype)  # soft targets too
    tz = torch.tensor(z, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        tz, torch.tensor(t), reduction=reduction)
    loss = R.sigmoid_binary_cross_entropy(z, t, reduction=reduction)
    tol = TORCH_TOL[np.dtype(dtype)]
    if z.size == 0:
        assert np.isnan(loss) == (reduction == "mean")
        return
    np.testing.assert_allclose(loss, expected.item(), rtol=tol["rtol"] * 10)
    expected.backward()
    grad = R.sigmoid_binary_cross_entropy_backward(z, t, reduction=reduction)
    np.testing.assert_allclose(grad, _np(tz.grad), **tol)


def test_sigmoid_bce_stable_for_huge_logits(R, torch):
    z = np.array([-1e30, -800.0, -40.0, 0.0, 40.0, 800.0, 1e30])
    t = np.array([0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.25])
    loss = R.sigmoid_binary_cross_entropy(z, t, reduction="sum")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(t), reduction="sum").item()
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, expected, rtol=1e-15)
    grad = R.sigmoid_binary_cross_entropy_backward(z, t, reduction="sum")
    np.testing.assert_array_equal(grad[[0, 1, 5, 6]], [0.0, -1.0, 0.0, 0.75])


def test_sigmoid_bce_backward_gradcheck(R):
    z = _normal((4, 3), np.float64, 42, scale=2.0)
    t = np.random.default_rng(43).uniform(size=(4, 3))
    analytic = R.sigmoid_binary_cross_entropy_backward(z, t)
    assert bpcore.gradcheck(lambda z: R.sigmoid_binary_cross_entropy(z, t), [z], [analytic])


def test_sigmoid_bce_rejects_targets_outside_unit_interval(R):
    with pytest.raises(ValueError, match="`targets` must lie in"):
        R.sigmoid_binary_cross_entropy(np.zeros(3), np.array([0.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match="`targets`"):
        R.sigmoid_binary_cross_entropy(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_matches_torch_over_100_steps(R, torch, weight_decay):
    rng = np.random.default_rng(44)
    p0 = rng.normal(size=(6, 5))
    grads = rng.normal(size=(100, 6, 5))
    param, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.Adam([tp], lr=0.01, betas=(0.8, 0.99), eps=1e-7,
                           weight_decay=weight_decay, foreach=False)
    for step, g in enumerate(grads, start=1):
        R.adam_update(param, g, lr=0.01, m=m, v=v, step=step, beta1=0.8, beta2=0.99,
                      eps=1e-7, weight_decay=weight_decay)
        tp.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param, _np(tp), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weight_decay", [None, 0.0, 0.05])
def test_adamw_matches_torch_over_150_steps(R, torch, weight_decay):
    rng = np.random.default_rng(47)
    p0 = rng.normal(size=(6, 5))
    grads = rng.normal(size=(150, 6, 5))
    param, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    decay = {} if weight_decay is None else dict(weight_decay=weight_decay)  # default 0.01
    opt = torch.optim.AdamW([tp], lr=0.01, betas=(0.8, 0.99), eps=1e-7, foreach=False,
                            **decay)
    for step, g in enumerate(grads, start=1):
        R.adamw_update(param, g, lr=0.01, m=m, v=v, step=step, beta1=0.8, beta2=0.99,
                       eps=1e-7, **decay)
        tp.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param, _np(tp), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum, centered, weight_decay, alpha",
                         [(0.0, False, 0.0, 0.99), (0.9, False, 0.01, 0.99),
                          (0.0, True, 0.0, 0.9), (0.5, True, 0.1, 0.95)])
def test_rmsprop_matches_torch_over_150_steps(R, torch, momentum, centered, weight_decay,
                                              alpha):
    rng = np.random.default_rng(48)
    p0 = rng.normal(size=(6, 5))
    grads = rng.normal(size=(150, 6, 5))
    param, sq, buf, ga = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.RMSprop([tp], lr=0.01, alpha=alpha, momentum=momentum, centered=centered,
                              weight_decay=weight_decay, foreach=False)
    for g in grads:
        R.rmsprop_update(param, g, lr=0.01, square_avg=sq, alpha=alpha, momentum=momentum,
                         momentum_buffer=buf, centered=centered, grad_avg=ga,
                         weight_decay=weight_decay)
        tp.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param, _np(tp), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sq, _np(opt.state[tp]["square_avg"]), rtol=1e-12)


def _sk_optimizers():
    return pytest.importorskip("sklearn.neural_network._stochastic_optimizers")


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype_", [np.float64, np.float32])
def test_sklearn_sgd_matches_scikit_learn_step_by_step(R, nesterov, dtype_):
    import_oracle("sklearn")
    sk = _sk_optimizers()
    rng = np.random.default_rng(45)
    shapes = [(4, 3), (3,)]
    params = [rng.normal(size=s).astype(dtype_) for s in shapes]
    ours = [p.copy() for p in params]
    vel = [np.zeros_like(p) for p in params]
    opt = sk.SGDOptimizer(params, learning_rate_init=0.1, lr_schedule="constant",
                          momentum=0.9, nesterov=nesterov)
    for _ in range(20):
        grads = [rng.normal(size=s).astype(dtype_) for s in shapes]
        opt.update_params(params, grads)
        for p, g, v in zip(ours, grads, vel):
            R.sklearn_sgd_update(p, g, lr=0.1, momentum=0.9, velocity=v, nesterov=nesterov)
        for p, q in zip(params, ours):
            np.testing.assert_array_equal(q, p)  # the same formula, the same rounding


@pytest.mark.parametrize("dtype_", [np.float64, np.float32])
def test_sklearn_adam_matches_scikit_learn_step_by_step(R, dtype_):
    import_oracle("sklearn")
    sk = _sk_optimizers()
    rng = np.random.default_rng(46)
    shapes = [(4, 3), (3,)]
    params = [rng.normal(size=s).astype(dtype_) for s in shapes]
    ours = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    opt = sk.AdamOptimizer(params, learning_rate_init=0.01, beta_1=0.9, beta_2=0.999,
                           epsilon=1e-8)
    for step in range(1, 21):
        grads = [rng.normal(size=s).astype(dtype_) for s in shapes]
        opt.update_params(params, grads)
        for p, g, m, v in zip(ours, grads, ms, vs):
            R.sklearn_adam_update(p, g, lr=0.01, m=m, v=v, step=step)
        for p, q in zip(params, ours):
            if dtype_ == np.float64:
                np.testing.assert_array_equal(q, p)
            else:  # scikit-learn promotes the float32 update to float64 (np.float64 rate)
                np.testing.assert_allclose(q, p, rtol=1e-5, atol=1e-6)


def test_optimizers_validate_their_state(R):
    p, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="`m` is required"):
        R.adam_update(p, g, lr=0.1, m=None, v=np.zeros(3), step=1)
    with pytest.raises(ValueError, match="`step` must be >= 1"):
        R.adam_update(p, g, lr=0.1, m=np.zeros(3), v=np.zeros(3), step=0)
    with pytest.raises(ValueError, match="`beta1` must be in"):
        R.sklearn_adam_update(p, g, lr=0.1, m=np.zeros(3), v=np.zeros(3), step=1, beta1=1.0)
    with pytest.raises(ValueError, match="`velocity` overlaps `param`"):
        R.sklearn_sgd_update(p, g, lr=0.1, momentum=0.9, velocity=p)
    with pytest.raises(ValueError, match="`momentum` must be <= 1"):
        R.sklearn_sgd_update(p, g, lr=0.1, momentum=1.5, velocity=np.zeros(3))
    with pytest.raises(ValueError, match="`momentum_buffer` is required"):
        R.rmsprop_update(p, g, lr=0.1, square_avg=np.zeros(3), momentum=0.9)
    with pytest.raises(ValueError, match="`grad_avg` is required"):
        R.rmsprop_update(p, g, lr=0.1, square_avg=np.zeros(3), centered=True)
    with pytest.raises(TypeError, match="`centered` must be a bool"):
        R.rmsprop_update(p, g, lr=0.1, square_avg=np.zeros(3), centered="yes")
    with pytest.raises(ValueError, match="`alpha` must be <= 1"):
        R.rmsprop_update(p, g, lr=0.1, square_avg=np.zeros(3), alpha=1.5)
    with pytest.raises(ValueError, match="`grad_avg` overlaps `square_avg`"):
        sq = np.zeros(3)
        R.rmsprop_update(p, g, lr=0.1, square_avg=sq, centered=True, grad_avg=sq)


# ---------------------------------------------------------------------------
# The activations with parameters, and those whose backward takes z
# ---------------------------------------------------------------------------

def _new_act_inputs(dtype):
    """Normal values, a dense range over every branch (incl. softplus's threshold), zeros."""
    rng = np.random.default_rng(61)
    z = np.concatenate([rng.normal(scale=3, size=2000), np.linspace(-12, 12, 2401),
                        [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8]])
    return z.astype(dtype), rng.normal(size=z.size).astype(dtype)


def _assert_vs_torch(actual, expected, z, dtype, floor):
    """rtol 1e-12 (float64) / 2e-6 (float32), plus ``floor`` * eps * max(|z|, 1) absolute:
    the rounding left where a formula cancels in torch as here (1 + erf(z/sqrt(2)) for
    z << 0, cdf + z pdf at gelu's minimum, a + alpha for elu near -alpha)."""
    eps = np.finfo(dtype).eps
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    bound = rtol * np.abs(expected) + floor * eps * np.maximum(np.abs(z), 1)
    bad = ~(np.abs(actual - expected) <= bound)
    assert not bad.any(), (z[bad][:5], actual[bad][:5], expected[bad][:5])


@pytest.mark.parametrize("name", NEW_ACTS)
def test_new_activations_vs_torch_forward_and_autograd(R, torch, name, dtype):
    params, torch_fn, takes_z = NEW_ACTS[name]
    z, g = _new_act_inputs(dtype)
    # NOTE: torch evaluates the float32 inputs in float64 (exactly upcast) and its values
    # are rounded to float32: torch's own float32 kernels differ by ISA (on AVX-512 its
    # vectorized gelu is 7e-7 off at z = -2.904, beyond the floor; its scalar path is not),
    # and the oracle must not depend on which one the CI machine runs.
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    at = torch_fn(torch.nn.functional, zt, params)
    at.backward(torch.tensor(g.astype(np.float64)))
    a = getattr(R, f"{name}_forward")(z, **params)
    assert a.dtype == np.dtype(dtype)
    _assert_vs_torch(a, _np(at).astype(dtype), z, dtype, floor=2)
    grad = getattr(R, f"{name}_backward")(z if takes_z else a, g, **params)
    _assert_vs_torch(grad, zt.grad.numpy().astype(dtype), z, dtype, floor=4 * np.abs(g) + 1)


@pytest.mark.parametrize("name", NEW_ACTS)
def test_new_activations_defaults_are_torchs(R, torch, name):
    _, torch_fn, takes_z = NEW_ACTS[name]
    z, g = _new_act_inputs(np.float64)
    default = {"leaky_relu": lambda F, t: F.leaky_relu(t),
               "elu": lambda F, t: F.elu(t * 1, inplace=True),
               "softplus": lambda F, t: F.softplus(t)}.get(name)
    expected = (default or (lambda F, t: torch_fn(F, t, {})))(torch.nn.functional,
                                                             torch.tensor(z))
    _assert_vs_torch(getattr(R, f"{name}_forward")(z), _np(expected), z, np.float64, 2)


@pytest.mark.parametrize("name", NEW_ACTS)
def test_new_activations_backward_gradcheck(R, name):
    params, _, takes_z = NEW_ACTS[name]
    z = _away_from_kink((4, 6), np.float64, 62) * 2
    z[0, :3] = [7.9, 8.1, -15.0]  # either side of softplus's threshold (beta z = 8)
    z[0, :2] /= params.get("beta", 1.0)
    weights = _normal((4, 6), np.float64, 63)
    forward = lambda z: getattr(R, f"{name}_forward")(z, **params)  # noqa: E731
    analytic = getattr(R, f"{name}_backward")(z if takes_z else forward(z), weights, **params)
    assert bpcore.gradcheck(lambda z: np.sum(weights * forward(z)), [z], [analytic],
                            eps=1e-7)


@pytest.mark.parametrize("name", NEW_ACTS)
def test_new_activations_compiled_equal_reference_with_parameters(name, dtype):
    params, _, takes_z = NEW_ACTS[name]
    z, g = _new_act_inputs(dtype)
    out = [getattr(B, f"{name}_forward")(z, **params) for B in (bpcore, bpcore.reference)]
    assert_close(out[0], out[1])
    saved = z if takes_z else out[1]
    back = [getattr(B, f"{name}_backward")(saved, g, **params) for B in (bpcore, bpcore.reference)]
    assert_close(back[0], back[1], scale=float(np.abs(g).max()))


@pytest.mark.parametrize("name", NEW_ACTS)
def test_new_activations_nan_and_in_place(R, name, dtype):
    params, _, takes_z = NEW_ACTS[name]
    z = np.array([[np.nan, 1.0, -2.0], [0.5, np.nan, 30.0]], dtype)
    fwd = getattr(R, f"{name}_forward")
    np.testing.assert_array_equal(np.isnan(fwd(z, **params)), np.isnan(z))
    expected = fwd(z, **params)
    assert fwd(z, out=z, **params) is z
    np.testing.assert_array_equal(z, expected)


# ---------------------------------------------------------------------------
# The regression losses and the weighted cross-entropies, against PyTorch
# ---------------------------------------------------------------------------

# name -> (its parameters, torch's function taking them)
REGRESSION = {
    "l1_loss": ({}, lambda F, p, t, r: F.l1_loss(p, t, reduction=r)),
    "huber_loss": ({"delta": 0.7}, lambda F, p, t, r: F.huber_loss(p, t, reduction=r,
                                                                   delta=0.7)),
    "smooth_l1_loss": ({"beta": 0.4}, lambda F, p, t, r: F.smooth_l1_loss(p, t, reduction=r,
                                                                          beta=0.4)),
    "smooth_l1_loss-beta0": ({"beta": 0.0}, lambda F, p, t, r: F.smooth_l1_loss(
        p, t, reduction=r, beta=0.0)),
}


def _regression_inputs(dtype):
    """Normal values, exact ties (d = 0) and differences on both sides of every kink."""
    rng = np.random.default_rng(71)
    pred = rng.normal(scale=2, size=(40, 5))
    target = rng.normal(size=(40, 5))
    target[0] = pred[0]                       # d = 0: sign 0, the quadratic branch
    target[1] = pred[1] - np.array([0.7, -0.7, 0.4, -0.4, 1e-9])  # at delta / beta
    return pred.astype(dtype), target.astype(dtype)


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
@pytest.mark.parametrize("case", REGRESSION)
def test_regression_losses_vs_torch(R, torch, case, reduction, dtype):
    params, torch_fn = REGRESSION[case]
    name = case.split("-")[0]
    pred, target = _regression_inputs(dtype)
    pt = torch.tensor(pred, requires_grad=True)
    expected = torch_fn(torch.nn.functional, pt, torch.tensor(target), reduction)
    expected.backward()
    assert_torch(getattr(R, name)(pred, target, reduction=reduction, **params),
                 expected.item(), dtype, scale=40)
    assert_torch(getattr(R, f"{name}_backward")(pred, target, reduction=reduction, **params),
                 pt.grad, dtype)


@pytest.mark.parametrize("case", REGRESSION)
def test_regression_losses_gradcheck(R, case):
    params, _ = REGRESSION[case]
    name = case.split("-")[0]
    pred, target = _regression_inputs(np.float64)
    pred, target = pred[2:], target[2:]  # away from the kinks
    analytic = getattr(R, f"{name}_backward")(pred, target, **params)
    assert bpcore.gradcheck(lambda p: getattr(R, name)(p, target, **params), [pred],
                            [analytic])


def test_regression_losses_empty(R):
    for name in ("l1_loss", "huber_loss", "smooth_l1_loss"):
        assert np.isnan(getattr(R, name)(np.zeros((0, 3)), np.zeros((0, 3))))
        assert getattr(R, name)(np.zeros((0, 3)), np.zeros((0, 3)), reduction="sum") == 0.0


CE_OPTIONS = [{"class_weight": [0.5, 2.0, 0.0, 1.5]}, {"label_smoothing": 0.2},
              {"class_weight": [0.5, 2.0, 0.1, 1.5], "label_smoothing": 0.35},
              {"label_smoothing": 1.0}]


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS, ids=["weight", "smoothing", "both", "eps1"])
def test_weighted_cross_entropy_vs_torch(R, torch, options, reduction, dtype):
    logits = _normal((30, 4), dtype, 72, scale=3.0)
    labels = _labels(30, 4, 73)
    kw = dict(options)
    t_kw = {"label_smoothing": kw.get("label_smoothing", 0.0)}
    if "class_weight" in kw:
        t_kw["weight"] = torch.tensor(np.array(kw["class_weight"], dtype))
    zt = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), reduction=reduction,
                                                 **t_kw)
    expected.backward()
    loss = R.softmax_cross_entropy(logits, labels, reduction=reduction, **kw)
    assert_torch(loss, expected.item(), dtype, scale=30)
    grad = R.softmax_cross_entropy_backward(logits, labels, reduction=reduction, **kw)
    # NOTE: p * sum(q) - q cancels where p ~ q: an absolute floor of a few eps
    np.testing.assert_allclose(grad, _np(zt.grad), rtol=TORCH_TOL[np.dtype(dtype)]["rtol"],
                               atol=16 * np.finfo(dtype).eps)
    both = R.softmax_cross_entropy_and_grad(logits, labels, reduction=reduction, **kw)
    assert both[0] == loss
    np.testing.assert_array_equal(both[1], grad)


def test_weighted_cross_entropy_gradcheck_and_zero_weights(R):
    logits, labels = _normal((6, 4), np.float64, 74, scale=2.0), _labels(6, 4, 75)
    kw = {"class_weight": [0.5, 2.0, 0.3, 1.5], "label_smoothing": 0.25}
    analytic = R.softmax_cross_entropy_backward(logits, labels, **kw)
    assert bpcore.gradcheck(lambda z: R.softmax_cross_entropy(z, labels, **kw), [logits],
                            [analytic])
    # every target weighing 0: the mean is 0 / 0, NaN, as in torch
    assert np.isnan(R.softmax_cross_entropy(logits, np.zeros(6, np.int64),
                                            class_weight=[0.0, 1, 1, 1]))


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_pos_weight_bce_vs_torch(R, torch, reduction, dtype):
    logits = _normal((25, 3), dtype, 76, scale=4.0)
    targets = np.random.default_rng(77).uniform(size=(25, 3)).astype(dtype)
    pos_weight = np.array([0.3, 1.0, 4.0], dtype)
    zt = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        zt, torch.tensor(targets), reduction=reduction, pos_weight=torch.tensor(pos_weight))
    expected.backward()
    assert_torch(R.sigmoid_binary_cross_entropy(logits, targets, reduction=reduction,
                                                pos_weight=pos_weight),
                 expected.item(), dtype, scale=25)
    grad = R.sigmoid_binary_cross_entropy_backward(logits, targets, reduction=reduction,
                                                   pos_weight=pos_weight)
    np.testing.assert_allclose(grad, _np(zt.grad), rtol=TORCH_TOL[np.dtype(dtype)]["rtol"],
                               atol=16 * np.finfo(dtype).eps)
    # pos_weight of ones is the plain loss; 1e30 logits stay finite
    plain = R.sigmoid_binary_cross_entropy(logits, targets, reduction=reduction)
    assert R.sigmoid_binary_cross_entropy(logits, targets, reduction=reduction,
                                          pos_weight=np.ones(3)) == pytest.approx(plain,
                                                                                  rel=1e-6)
    huge = (np.sign(logits) * 1e30).astype(dtype)
    assert np.isfinite(R.sigmoid_binary_cross_entropy(huge, targets, pos_weight=pos_weight))
