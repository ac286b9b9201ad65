"""The training core itself (bpcore._step and its NumPy twin bpcore.reference_core).

Through the core's public interface only: ``Trainer.forward``, ``evaluate``,
``loss_and_grad``, ``update``, ``epoch`` (and the layer-cut step), with the
``UpdateRule`` descriptions; every test runs on both twins where the twin has
the rule.
"""
import ast
import inspect
import re

import numpy as np
import pytest
from conftest import import_oracle

from bpcore import _gemm, _step, reference_core
from bpcore.nn import _aligned_zeros

CORES = {"compiled": _step, "reference": reference_core}

# scikit-learn's loss rules (and their L2 ``alpha``) exist only in the compiled core.
COMPILED_ONLY = {"alpha"}


def _public(cls):
    return {name for name in dir(cls) if not name.startswith("_")}


def _methods(cls):
    return {name for name, value in vars(cls).items()
            if callable(value) and (not name.startswith("_") or name == "__init__")}


def _init_parameters(cls):
    """[(name, default)] of the constructor; a cdef class's from its embedded signature."""
    if inspect.isfunction(cls.__init__):
        return [(p.name, None if p.default is p.empty else repr(p.default))
                for p in list(inspect.signature(cls.__init__).parameters.values())[1:]]
    line = cls.__doc__.splitlines()[0]
    inner = line[line.index("(") + 1:line.rindex(")")]
    params = []
    for part in re.split(r",\s*(?![^()]*\))", inner):
        if part.strip() == "*":
            continue
        name, _, default = part.partition("=")
        default = default.strip() or None
        if default is not None:  # normalise a C literal such as 1e-8 to Python's repr
            default = repr(ast.literal_eval(default))
        params.append((name.split()[-1], default))
    return params


@pytest.mark.parametrize("cls", ["Trainer", "UpdateRule"])
def test_twins_have_the_same_methods_and_signatures(cls):
    compiled, twin = getattr(_step, cls), getattr(reference_core, cls)
    assert _methods(compiled) - COMPILED_ONLY == _methods(twin)
    for name in sorted(_methods(twin) - {"__init__"}):
        assert (inspect.signature(getattr(compiled, name))
                == inspect.signature(getattr(twin, name))), name
    assert _init_parameters(compiled) == _init_parameters(twin)
    rule = (compiled("sgd", lr=0.1), twin("sgd", lr=0.1)) if cls == "UpdateRule" else None
    if rule:  # the attributes the faces read
        for attr in ("kind", "lr", "step", "stateful"):
            assert getattr(rule[0], attr) == getattr(rule[1], attr), attr


def _problem(loss, dtype, n=23, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, 3, n).astype(np.int64)
    elif loss == "binary_cross_entropy":
        y = (rng.uniform(size=(n, 3)) > 0.5).astype(dtype)
    else:
        y = rng.normal(size=(n, 3)).astype(dtype)
    return x, y


def _trainer(core, loss, dtype):
    act_out = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}.get(loss,
                                                                               "identity")
    return core.Trainer([5, 7, 4, 3], ["tanh", "relu", act_out], loss, "mean", dtype)


def _params(trainer, dtype, seed=1):
    p = _aligned_zeros(trainer.n_params, dtype)
    p[...] = np.random.default_rng(seed).normal(scale=0.5, size=trainer.n_params)
    return p


RULES = [("sgd", dict(lr=0.05)), ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
         ("sgd", dict(lr=0.05, momentum=0.5, weight_decay=0.01, weights_only=True)),
         ("adam", dict(lr=1e-2, weight_decay=0.01)),
         ("adam", dict(lr=1e-2, betas=(0.8, 0.99), weights_only=True, weight_decay=0.1)),
         ("adamw", dict(lr=1e-2, weight_decay=0.05, clip_grad_norm=0.3)),
         ("rmsprop", dict(lr=1e-2, weight_decay=0.01)),
         ("rmsprop", dict(lr=1e-2, momentum=0.5, centered=True, alpha=0.9, weights_only=True,
                          weight_decay=0.1, clip_grad_value=0.02)),
         ("rmsprop", dict(lr=1e-2, centered=True)),
         ("sgd", dict(lr=0.05, momentum=0.9, clip_grad_norm=0.1, clip_grad_value=0.05))]


def _state(rule, n, dtype):
    return tuple(_aligned_zeros(n, dtype) if i < rule.stateful else None for i in range(3))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind, settings", RULES)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("core_name", sorted(CORES))
def test_epoch_is_loss_and_grad_then_update_per_batch(core_name, loss, kind, settings,
                                                      weighted):
    """``epoch`` = the same batches through ``loss_and_grad`` + ``update``, bitwise."""
    core, dtype = CORES[core_name], np.float64
    x, y = _problem(loss, dtype)
    sw = np.random.default_rng(2).uniform(0, 2, len(x)) if weighted else None
    order = np.random.default_rng(3).permutation(len(x)).astype(np.int64)
    tr = _trainer(core, loss, dtype)
    p_epoch, p_steps = _params(tr, dtype), _params(tr, dtype)
    g = _aligned_zeros(tr.n_params, dtype)
    rule_e, rule_s = core.UpdateRule(kind, **settings), core.UpdateRule(kind, **settings)
    st_e, st_s = _state(rule_e, tr.n_params, dtype), _state(rule_s, tr.n_params, dtype)
    status, loss_sum, done = tr.epoch(p_epoch, g, st_e, x, y, sw, order, 5, rule_e)
    assert (status, done, tr.batches_done) == (0, 5, 5)
    expected_sum = 0.0
    for start in range(0, len(x), 5):
        rows = order[start:start + 5]
        swb = None if sw is None else np.ascontiguousarray(sw[rows])
        status, batch_loss = tr.loss_and_grad(p_steps, np.ascontiguousarray(x[rows]),
                                              np.ascontiguousarray(y[rows]), g, swb)
        assert status == 0
        tr.update(p_steps, g, st_s, rule_s)
        expected_sum += batch_loss * (len(rows) if swb is None else swb.sum())
    np.testing.assert_array_equal(p_epoch, p_steps)
    assert rule_e.step == rule_s.step == (5 if kind.startswith("adam") else 0)
    assert loss_sum == pytest.approx(expected_sum, rel=1e-14)


@pytest.mark.parametrize("kind, settings", RULES)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_compiled_core_matches_its_twin(loss, kind, settings):
    dtype = np.float64
    x, y = _problem(loss, dtype, n=40)
    results = []
    for core in (_step, reference_core):
        tr = _trainer(core, loss, dtype)
        p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
        rule = core.UpdateRule(kind, **settings)
        state = _state(rule, tr.n_params, dtype)
        for epoch in range(3):
            order = np.random.default_rng(epoch).permutation(len(x)).astype(np.int64)
            tr.epoch(p, g, state, x, y, None, order, 8, rule)
        out = np.empty((len(x), 3), dtype)
        results.append((p.copy(), tr.forward(p, x, out).copy(), tr.evaluate(p, x, y)))
    (p_c, out_c, loss_c), (p_r, out_r, loss_r) = results
    np.testing.assert_allclose(p_c, p_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out_c, out_r, rtol=1e-10, atol=1e-12)
    assert loss_c == pytest.approx(loss_r, rel=1e-10)


@pytest.mark.parametrize("core_name", sorted(CORES))
def test_layer_cut_step_equals_loss_and_grad(core_name):
    core, dtype = CORES[core_name], np.float64
    x, y = _problem("mse", dtype)
    tr = _trainer(core, "mse", dtype)
    p = _params(tr, dtype)
    g_whole, g_cut = _aligned_zeros(tr.n_params, dtype), _aligned_zeros(tr.n_params, dtype)
    status, loss = tr.loss_and_grad(p, x, y, g_whole)
    status_b, loss_b = tr.loss_and_grad_begin(p, x, y)
    assert (status, status_b) == (0, 0) and loss == loss_b
    for layer in (2, 1, 0):
        assert tr.backward_layer(p, x, g_cut, layer) == 0
    np.testing.assert_allclose(g_cut, g_whole, rtol=0, atol=0 if core is _step else 1e-15)
    with pytest.raises(ValueError, match="backward_layer must follow"):
        tr.backward_layer(p, x, g_cut, 0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("core_name", sorted(CORES))
def test_a_failing_batch_stops_the_epoch_before_its_update(core_name, dtype, bad):
    core = CORES[core_name]
    x, y = _problem("mse", dtype)
    x[12, 0] = bad  # batch 2 of 5-row batches in order
    tr = _trainer(core, "mse", dtype)
    p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
    rule = core.UpdateRule("sgd", lr=0.01)
    first_two = p.copy()
    tr.epoch(first_two, g, None, x[:10].copy(), y[:10].copy(), None, None, 5,
             core.UpdateRule("sgd", lr=0.01))
    status, _, done = tr.epoch(p, g, None, x, y, None, None, 5, rule)
    assert (status, done) == (core.NONFINITE, 2)
    np.testing.assert_array_equal(p, first_two)


def test_sklearn_rule_epoch_is_loss_and_grad_then_update():
    """scikit-learn's loss and update rules run through the same epoch loop."""
    dtype = np.float64
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    tr = _step.Trainer([5, 6, 3], ["relu", "identity"], "sk_squared_error", "mean", dtype,
                       alpha=1e-3)
    for kind, settings in (("sklearn_sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
                           ("sklearn_adam", dict(lr=1e-3))):
        p_e, p_s = _params(tr, dtype), _params(tr, dtype)
        g = _aligned_zeros(tr.n_params, dtype)
        r_e, r_s = _step.UpdateRule(kind, **settings), _step.UpdateRule(kind, **settings)
        st_e, st_s = _state(r_e, tr.n_params, dtype), _state(r_s, tr.n_params, dtype)
        tr.epoch(p_e, g, st_e, x, y, None, None, 10, r_e)
        for start in range(0, 30, 10):
            tr.loss_and_grad(p_s, x[start:start + 10], y[start:start + 10], g)
            tr.update(p_s, g, st_s, r_s)
        np.testing.assert_array_equal(p_e, p_s)


def test_state_blocks_are_checked():
    tr = _trainer(_step, "mse", np.float64)
    p, g = _params(tr, np.float64), _aligned_zeros(tr.n_params, np.float64)
    with pytest.raises(ValueError, match=r"`state\[1\]`"):
        tr.update(p, g, (g.copy(), None), _step.UpdateRule("adam", lr=0.1))
    with pytest.raises(ValueError, match=r"`state\[0\]`"):
        tr.update(p, g, None, _step.UpdateRule("sgd", lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="`kind`"):
        _step.UpdateRule("adagrad", lr=0.1)


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("core_name", sorted(CORES))
def test_a_scheduled_rule_takes_each_updates_rate_and_momentum_from_its_table(core_name, kind):
    """set_schedule's table = setting lr (and momentum / beta1) by hand before each update."""
    core, dtype = CORES[core_name], np.float64
    x, y = _problem("mse", dtype)
    tr = _trainer(core, "mse", dtype)
    lrs, moms = np.linspace(0.05, 0.01, 5), np.linspace(0.95, 0.85, 5)
    p_table, p_hand = _params(tr, dtype), _params(tr, dtype)
    g = _aligned_zeros(tr.n_params, dtype)
    settings = dict(momentum=0.9) if kind != "adam" else {}
    r_table = core.UpdateRule(kind, lr=1.0, **settings)
    r_table.set_schedule(lrs, moms)
    st_t = _state(r_table, tr.n_params, dtype)
    tr.epoch(p_table, g, st_t, x, y, None, None, 5, r_table)
    st_h = _state(r_table, tr.n_params, dtype)
    for k, start in enumerate(range(0, len(x), 5)):
        rule = core.UpdateRule(kind, lr=lrs[k], betas=(moms[k], 0.999), step=k,
                               **dict(settings, momentum=moms[k]) if settings else {})
        tr.loss_and_grad(p_hand, x[start:start + 5], y[start:start + 5], g)
        tr.update(p_hand, g, st_h, rule)
    np.testing.assert_array_equal(p_table, p_hand)
    assert r_table.lr == lrs[-1]
    tr.update(p_table, g, st_t, r_table)  # past the table: the last settings stay
    assert r_table.lr == lrs[-1]


@pytest.mark.parametrize("core_name", sorted(CORES))
def test_clipping_is_torchs_clip_grad_value_then_clip_grad_norm(core_name):
    core, dtype = CORES[core_name], np.float64
    tr = _trainer(core, "mse", dtype)
    p = _params(tr, dtype)
    g0 = np.random.default_rng(7).normal(size=tr.n_params)
    for value, norm in ((None, 0.5), (0.1, None), (0.1, 0.2), (None, 1e6), (0.0, None)):
        g = _aligned_zeros(tr.n_params, dtype)
        g[...] = g0
        q = p.copy()
        tr.update(q, g, None, core.UpdateRule("sgd", lr=1.0, clip_grad_norm=norm,
                                              clip_grad_value=value))
        expected = g0.copy()
        if value is not None:
            expected = np.clip(expected, -value, value)
        if norm is not None:
            expected *= min(1.0, norm / (np.linalg.norm(expected) + 1e-6))
        np.testing.assert_allclose(g, expected, rtol=1e-14, atol=0)  # clipped in place
        np.testing.assert_allclose(q, p - expected, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------
# Dropout: the same counter-based masks in both twins, PyTorch's gradients
# ---------------------------------------------------------------------------

DROP_SIZES, DROP_ACTS, DROP_P = [5, 9, 8, 3], ["relu", "tanh", "identity"], (0.3, 0.5)


def _torch_layers(torch, tr, p):
    """(pairs, w_off, b_off, weights, biases): the flat block's layers as torch leaves."""
    w_off, b_off = tr.offsets()
    pairs = list(zip(DROP_SIZES[:-1], DROP_SIZES[1:]))
    ws = [torch.tensor(p[o:o + a * b].reshape(a, b).copy(), requires_grad=True)
          for (a, b), o in zip(pairs, w_off)]
    bs = [torch.tensor(p[o:o + b].copy(), requires_grad=True) for (_, b), o in zip(pairs, b_off)]
    return pairs, w_off, b_off, ws, bs


def _drop_trainer(core, dtype, dropout=DROP_P, seed=1234, step=7):
    tr = core.Trainer(DROP_SIZES, DROP_ACTS, "mse", "mean", dtype, dropout=dropout)
    tr.dropout_seed, tr.dropout_step = seed, step
    return tr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_gradients_equal_torch_with_the_same_mask(dtype):
    torch = import_oracle("torch")
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(13, 5)).astype(dtype), rng.normal(size=(13, 3)).astype(dtype)
    tr = _drop_trainer(_step, dtype)
    p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
    status, loss = tr.loss_and_grad(p, x, y, g)
    assert status == 0 and tr.dropout_step == 8
    pairs, w_off, b_off, ws, bs = _torch_layers(torch, tr, p)
    h = torch.tensor(x)
    for l, act in enumerate((torch.relu, torch.tanh, lambda t: t)):
        h = act(h @ ws[l] + bs[l])
        if l < 2:  # torch.nn.functional.dropout's result for this mask: x * mask / (1 - p)
            mask = reference_core.dropout_keep(1234, 7, l, tuple(h.shape), DROP_P[l])
            h = h * torch.tensor(mask.astype(dtype)) / (1 - DROP_P[l])
    expected = torch.nn.functional.mse_loss(h, torch.tensor(y))
    expected.backward()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    assert loss == pytest.approx(expected.item(), rel=tol["rtol"])
    for (a, b), wo, bo, tw, tb in zip(pairs, w_off, b_off, ws, bs):
        np.testing.assert_allclose(g[wo:wo + a * b].reshape(a, b), tw.grad.numpy(), **tol)
        np.testing.assert_allclose(g[bo:bo + b], tb.grad.numpy(), **tol)


# The activations whose backward reads z (and two that read the output) under dropout:
# the derivative is taken at z, or at the output before its mask, then the mask.
_TORCH_ACTS = {"gelu": lambda F, t: F.gelu(t), "silu": lambda F, t: F.silu(t),
               "gelu_tanh": lambda F, t: F.gelu(t, approximate="tanh"),
               "softplus": lambda F, t: F.softplus(t), "elu": lambda F, t: F.elu(t),
               "leaky_relu": lambda F, t: F.leaky_relu(t)}


@pytest.mark.parametrize("act", sorted(_TORCH_ACTS))
def test_dropout_with_every_new_activation_in_both_twins_equals_torch(act):
    torch = import_oracle("torch")
    dtype = np.float64
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(11, 5)), rng.normal(size=(11, 3))
    acts = [act, act, "identity"]
    grads = {}
    for core in (_step, reference_core):
        tr = core.Trainer(DROP_SIZES, acts, "mse", "mean", dtype, dropout=DROP_P)
        tr.dropout_seed, tr.dropout_step = 99, 3
        p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
        status, loss = tr.loss_and_grad(p, x, y, g)
        assert status == 0
        grads[core.__name__] = (loss, g.copy())
    pairs, w_off, b_off, ws, bs = _torch_layers(torch, tr, p)
    h = torch.tensor(x)
    for l in range(3):
        h = h @ ws[l] + bs[l]
        if l < 2:
            h = _TORCH_ACTS[act](torch.nn.functional, h)
            mask = reference_core.dropout_keep(99, 3, l, tuple(h.shape), DROP_P[l])
            h = h * torch.tensor(mask.astype(dtype)) / (1 - DROP_P[l])
    expected = torch.nn.functional.mse_loss(h, torch.tensor(y))
    expected.backward()
    want = np.concatenate([t.grad.numpy().ravel() for pair in zip(ws, bs) for t in pair])
    for name, (loss, g) in grads.items():
        assert loss == pytest.approx(expected.item(), rel=1e-12), name
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_twins_draw_the_same_masks_and_advance_alike(dtype):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 5)).astype(dtype), rng.normal(size=(40, 3)).astype(dtype)
    results = []
    for core in (_step, reference_core):
        tr = _drop_trainer(core, dtype)
        p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
        _, loss = tr.loss_and_grad(p, x, y, g)
        grads = g.copy()
        rule = core.UpdateRule("adam", lr=1e-2)
        tr.epoch(p, g, _state(rule, tr.n_params, dtype), x, y, None, None, 8, rule)
        results.append((loss, grads, p.copy(), tr.dropout_step))
    (loss_c, g_c, p_c, step_c), (loss_r, g_r, p_r, step_r) = results
    assert step_c == step_r == 7 + 1 + 5
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    assert loss_c == pytest.approx(loss_r, rel=tol["rtol"])
    # one mask element drawn differently would move these by O(1)
    np.testing.assert_allclose(g_c, g_r, **tol)
    np.testing.assert_allclose(p_c, p_r, **tol)


@pytest.mark.parametrize("core_name", sorted(CORES))
def test_dropout_epoch_is_its_steps_and_inference_drops_nothing(core_name):
    core, dtype = CORES[core_name], np.float64
    x, y = _problem("mse", dtype)
    tr, plain = _drop_trainer(core, dtype), _drop_trainer(core, dtype, dropout=None)
    p_epoch, p_steps = _params(tr, dtype), _params(tr, dtype)
    g = _aligned_zeros(tr.n_params, dtype)
    tr.epoch(p_epoch, g, None, x, y, None, None, 5, core.UpdateRule("sgd", lr=0.05))
    tr.dropout_step = 7
    for start in range(0, len(x), 5):
        tr.loss_and_grad(p_steps, x[start:start + 5], y[start:start + 5], g)
        tr.update(p_steps, g, None, core.UpdateRule("sgd", lr=0.05))
    np.testing.assert_array_equal(p_epoch, p_steps)
    out, out_plain = np.empty((len(x), 3)), np.empty((len(x), 3))
    np.testing.assert_array_equal(tr.forward(p_epoch, x, out), plain.forward(p_epoch, x,
                                                                             out_plain))
    assert tr.evaluate(p_epoch, x, y) == plain.evaluate(p_epoch, x, y)
    assert tr.dropout_step == 7 + 5  # inference draws no masks


def test_dropout_masks_are_a_function_of_seed_step_layer_and_element_only():
    keep = reference_core.dropout_keep
    a = keep(1, 2, 0, (200, 50), 0.3)
    np.testing.assert_array_equal(a, keep(1, 2, 0, (200, 50), 0.3))
    for other in (keep(2, 2, 0, (200, 50), 0.3), keep(1, 3, 0, (200, 50), 0.3),
                  keep(1, 2, 1, (200, 50), 0.3)):
        assert 0.3 < np.mean(a != other) < 0.5  # independent masks: 2 p (1 - p) = 0.42
    np.testing.assert_array_equal(keep(1, 2, 0, (10_000,), 0.3)[:50], a[0])  # by index only
    assert abs(a.mean() - 0.7) < 0.01
    assert keep(1, 2, 0, (100,), 0.0).all()
    assert keep(2 ** 64 - 1, 2 ** 62, 7, (3, 3), 0.5).shape == (3, 3)  # wraps, no warning


def test_dropout_does_not_depend_on_the_thread_count():
    """Rows and widths above the GEMM's threading threshold: 1 and 2 threads, one result."""
    import bpcore

    dtype = np.float64
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(256, 64)), rng.normal(size=(256, 8))
    results = []
    for threads in (1, 2):
        tr = _step.Trainer([64, 96, 80, 8], ["relu", "tanh", "identity"], "mse", "mean", dtype,
                           dropout=(0.5, 0.2))
        tr.dropout_seed = 99
        p, g = _aligned_zeros(tr.n_params, dtype), _aligned_zeros(tr.n_params, dtype)
        p[...] = np.random.default_rng(9).normal(scale=0.1, size=tr.n_params)
        before = bpcore.get_num_threads()
        bpcore.set_num_threads(threads)
        try:
            tr.loss_and_grad(p, x, y, g)
        finally:
            bpcore.set_num_threads(before)
        results.append(g.copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["sgd", "rmsprop"])
@pytest.mark.parametrize("core_name", sorted(CORES))
def test_a_momentum_table_that_turns_momentum_on_needs_the_velocity(core_name, kind):
    """A rule at momentum 0 whose table sets momentum later reads and writes a velocity:
    its state is required (it would otherwise be written through a NULL pointer)."""
    core, dtype = CORES[core_name], np.float64
    tr = _trainer(core, "mse", dtype)
    p, g = _params(tr, dtype), _aligned_zeros(tr.n_params, dtype)
    rule = core.UpdateRule(kind, lr=0.1)
    before = rule.stateful
    rule.set_schedule([0.1, 0.1], [0.0, 0.9])
    assert rule.stateful == before + 1
    if core is _step:
        with pytest.raises(ValueError, match=r"`state\[%d\]`" % before):
            tr.update(p, g, None if kind == "sgd" else (g.copy(), None), rule)
    state = _state(rule, tr.n_params, dtype)
    g[...] = 1.0
    tr.update(p, g, state, rule)
    assert not state[rule.stateful - 1].any()  # momentum 0: the velocity is not touched
    tr.update(p, g, state, rule)
    assert state[rule.stateful - 1].all()


# ---------------------------------------------------------------------------
# Mixed precision: compute_dtype="bfloat16" (every product from bf16 operands)
# ---------------------------------------------------------------------------
#
# How close the twins must be.  Each product rounds both operands to bfloat16
# (8 significant bits), so every term a_i * b_i is exact in float32 (16 bits);
# the two cores then differ only in the ORDER of the float32 sums, which bounds
# one product's difference by 2 (k - 1) u sum_i |a_i b_i| (u = 2^-24; checked
# elementwise on a single product below).  Downstream, such a difference of a
# few float32 ulps can move an activation across a bfloat16 rounding boundary:
# the next product then sees a neighbouring bfloat16 (2^-8 relative) for that
# element -- rarely (the chance is about k 2^-16 per element), but not never,
# and whether it happens depends on NumPy's BLAS.  So a whole network's results
# are compared as: every element within LOOSE of the array's largest value, and
# at least 90% within TIGHT (2^-16: 256 float32 ulps at that scale, far above
# the summation-order differences of these small products, far below the
# ~2^-9 by which bfloat16 products differ from float32 ones -- the last test of
# this section checks that float32 products fail it).
BF16_TIGHT = 2.0 ** -16
BF16_LOOSE = 2.0 ** -7
U32 = 2.0 ** -24
# Every hidden activation of the core (relu..tanh fused in the GEMM's store, the others
# after the product; gelu, gelu_tanh, silu, softplus keep z for backward).
CORE_ACTS = ["identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu", "gelu_tanh",
             "silu", "softplus"]


def _bf16(a):
    from bpcore.reference import round_bfloat16
    return round_bfloat16(np.asarray(a, np.float32)).astype(np.float64)


def bf16_mismatch(actual, expected):
    """The fraction of elements further than BF16_TIGHT from ``expected`` (relative to
    its largest magnitude), after asserting all are within BF16_LOOSE."""
    actual = np.asarray(actual, np.float64).ravel()
    expected = np.asarray(expected, np.float64).ravel()
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = np.abs(actual - expected) / scale
    assert err.max() <= BF16_LOOSE, f"max relative difference {err.max():.3g}"
    return float(np.mean(err > BF16_TIGHT))


def assert_bf16_close(actual, expected):
    assert bf16_mismatch(actual, expected) <= 0.1


def _bf16_trainer(core, acts=("tanh", "relu", "identity"), loss="mse", dropout=None,
                  sizes=(5, 7, 4, 3)):
    tr = core.Trainer(list(sizes), list(acts), loss, "mean", np.float32, dropout=dropout,
                      compute_dtype="bfloat16")
    tr.dropout_seed, tr.dropout_step = 77, 2
    return tr


def test_bf16_product_is_within_the_summation_order_bound(bf16_path):
    """One layer: out = bf16(x) @ bf16(W) + b; the twins differ by at most
    2 (k-1) u |bf16(x)| @ |bf16(W)| plus the bias add's rounding, elementwise."""
    rng = np.random.default_rng(11)
    n, k, m = 64, 300, 17
    x = rng.normal(size=(n, k)).astype(np.float32)
    outs = []
    for core in (_step, reference_core):
        tr = core.Trainer([k, m], ["identity"], "mse", "mean", np.float32,
                          compute_dtype="bfloat16")
        p = _params(tr, np.float32, seed=12)
        outs.append(tr.forward(p, x, np.empty((n, m), np.float32)).astype(np.float64))
    w, b = p[:k * m].reshape(k, m), p[k * m:]
    bound = (2 * (k - 1) * U32 * (np.abs(_bf16(x)) @ np.abs(_bf16(w)))
             + 2 * U32 * np.abs(outs[1]) + 1e-30)
    assert (np.abs(outs[0] - outs[1]) <= bound).all()
    exact = _bf16(x) @ _bf16(w) + b.astype(np.float64)  # float64: exact products, tiny error
    assert (np.abs(outs[0] - exact) <= bound).all()
    # and no float32 product: those differ from bf16's by far more than the bound
    plain = x.astype(np.float64) @ w.astype(np.float64) + b
    assert np.mean(np.abs(plain - exact) > bound) > 0.5


@pytest.mark.parametrize("act", CORE_ACTS)
def test_bf16_compiled_core_matches_its_twin_for_every_activation(act, bf16_path):
    """forward, loss_and_grad (with dropout on the hidden layers: the derivative at the
    kept z or the output before its mask), the same masks and steps in both."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.normal(size=(40, 3)).astype(
        np.float32)
    results = []
    for core in (_step, reference_core):
        tr = _bf16_trainer(core, (act, act, "identity"), dropout=(0.25, 0.4))
        p, g = _params(tr, np.float32), _aligned_zeros(tr.n_params, np.float32)
        out = tr.forward(p, x, np.empty((40, 3), np.float32)).copy()
        status, loss = tr.loss_and_grad(p, x, y, g)
        assert status == 0 and tr.dropout_step == 3
        results.append((out, loss, g.copy()))
    (out_c, loss_c, g_c), (out_r, loss_r, g_r) = results
    assert_bf16_close(out_c, out_r)
    assert loss_c == pytest.approx(loss_r, rel=2.0 ** -12)
    assert_bf16_close(g_c, g_r)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_bf16_step_epoch_and_evaluate_match_the_twin(loss, bf16_path):
    x, y = _problem(loss, np.float32, n=48)
    act_out = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}.get(loss,
                                                                               "identity")
    results = []
    for core in (_step, reference_core):
        tr = _bf16_trainer(core, ("gelu", "sigmoid", act_out), loss)
        # one step: loss_and_grad then update (the compiled fast path for SGD, too)
        p, g = _params(tr, np.float32), _aligned_zeros(tr.n_params, np.float32)
        velocity = _aligned_zeros(tr.n_params, np.float32)
        if core is _step:
            status, _ = tr.train_step_fast(p, g, velocity, x, y, 0.1, 0.9, 0.0, False)
        else:
            status, _ = tr.loss_and_grad(p, x, y, g)
            tr.update(p, g, (velocity, None), core.UpdateRule("sgd", lr=0.1, momentum=0.9))
        assert status == 0
        stepped = p.copy()
        # two epochs of Adam in shuffled batches
        p = _params(tr, np.float32)
        rule = core.UpdateRule("adam", lr=1e-2)
        state = _state(rule, tr.n_params, np.float32)
        for epoch in range(2):
            order = np.random.default_rng(epoch).permutation(len(x)).astype(np.int64)
            status, loss_sum, done = tr.epoch(p, g, state, x, y, None, order, 8, rule)
            assert status == 0 and done == 6
        results.append((stepped, p.copy(), loss_sum, tr.evaluate(p, x, y)))
    (s_c, p_c, sum_c, ev_c), (s_r, p_r, sum_r, ev_r) = results
    init = _params(tr, np.float32)
    assert_bf16_close(s_c - init, s_r - init)  # the update itself, not the parameters
    assert_bf16_close(p_c - init, p_r - init)
    assert sum_c == pytest.approx(sum_r, rel=2.0 ** -10)
    assert ev_c == pytest.approx(ev_r, rel=2.0 ** -10)


def test_bf16_float32_products_fail_the_tight_check():
    """The tolerance can tell: the float32 core's gradients are not within BF16_TIGHT
    of the bfloat16 twin's on most elements."""
    x, y = _problem("mse", np.float32, n=40)
    grads = []
    for core, compute in ((_step, None), (reference_core, "bfloat16")):
        tr = core.Trainer([5, 7, 4, 3], ["tanh", "relu", "identity"], "mse", "mean",
                          np.float32, compute_dtype=compute)
        p, g = _params(tr, np.float32), _aligned_zeros(tr.n_params, np.float32)
        tr.loss_and_grad(p, x, y, g)
        grads.append(g)
    assert bf16_mismatch(*grads) > 0.5


def test_bf16_is_float32_only_and_named():
    for core in (_step, reference_core):
        assert _bf16_trainer(core).compute_dtype == "bfloat16"
        assert core.Trainer([2, 1], ["identity"], "mse", "mean", np.float32).compute_dtype \
            is None
        for dtype, bad in ((np.float64, "bfloat16"), (np.float32, "float16"),
                           (np.float32, 16)):
            with pytest.raises(ValueError, match="`compute_dtype`"):
                core.Trainer([2, 1], ["identity"], "mse", "mean", dtype, compute_dtype=bad)


# ---------------------------------------------------------------------------
# PyTorch: an oracle of bpcore's semantics, and how far autocast is
# ---------------------------------------------------------------------------

def _torch_bf16_linear(torch):
    """A Linear whose three products take bf16-rounded float32 operands and compute in
    float32 (torch.matmul), bias and gradients float32: bpcore's documented semantics."""
    r = lambda t: t.to(torch.bfloat16).to(torch.float32)  # noqa: E731 (nearest, ties to even)

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, w, b):
            ctx.save_for_backward(a, w)
            return torch.matmul(r(a), r(w)) + b

        @staticmethod
        def backward(ctx, grad):
            a, w = ctx.saved_tensors
            return (torch.matmul(r(grad), r(w).T), torch.matmul(r(a).T, r(grad)),
                    grad.sum(0))

    return Linear.apply


def test_bf16_gradients_equal_a_torch_oracle_and_autocast_is_near(bf16_path):
    torch = import_oracle("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(21)
    sizes = [64, 48, 32, 10]
    x = rng.normal(size=(96, 64)).astype(np.float32)
    labels = rng.integers(0, 10, 96).astype(np.int64)
    tr = _step.Trainer(sizes, ["relu", "gelu", "softmax"], "cross_entropy", "mean",
                       np.float32, compute_dtype="bfloat16")
    p = _aligned_zeros(tr.n_params, np.float32)
    p[...] = rng.normal(scale=0.15, size=tr.n_params)
    g = _aligned_zeros(tr.n_params, np.float32)
    status, loss = tr.loss_and_grad(p, x, labels, g)
    assert status == 0
    w_off, b_off = tr.offsets()
    pairs = list(zip(sizes[:-1], sizes[1:]))

    def leaves():
        ws = [torch.tensor(p[o:o + a * b].reshape(a, b).copy(), requires_grad=True)
              for (a, b), o in zip(pairs, w_off)]
        bs = [torch.tensor(p[o:o + b].copy(), requires_grad=True)
              for (_, b), o in zip(pairs, b_off)]
        return ws, bs

    def run(linear, autocast):
        ws, bs = leaves()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = torch.tensor(x)
            for l, act in enumerate((F.relu, F.gelu, None)):
                h = linear(h, ws[l], bs[l])
                h = act(h) if act else h
            out = F.cross_entropy(h.float(), torch.tensor(labels))
        out.backward()
        return out.item(), np.concatenate([t.grad.float().numpy().ravel()
                                           for pair in zip(ws, bs) for t in pair])

    oracle_loss, oracle = run(_torch_bf16_linear(torch), False)
    assert loss == pytest.approx(oracle_loss, rel=2.0 ** -12)
    assert_bf16_close(g, oracle)
    # torch.autocast: F.linear on bf16 inputs and weights, but its OUTPUT is bf16 too (and
    # the gradients flowing back are bf16), so it is further from bpcore than the oracle
    # (3e-7 of the largest gradient here): 3% (float32 products: 1.1%; autocast from
    # float32 products: 3%), the loss 2e-5 relative.
    auto_loss, auto = run(lambda a, w, b: F.linear(a, w.T, b), True)
    scale = np.abs(oracle).max()
    assert np.abs(auto - oracle).max() / scale < 2.0 ** -4
    assert auto_loss == pytest.approx(oracle_loss, rel=2.0 ** -7)


# ---------------------------------------------------------------------------
# The row order's checks
# ---------------------------------------------------------------------------

def test_epoch_refuses_a_misaligned_int64_order():
    tr = _trainer(_step, "mse", np.float64)
    x, y = _problem("mse", np.float64, n=8)
    p, g = _params(tr, np.float64), _aligned_zeros(tr.n_params, np.float64)
    raw = np.zeros(8 * 8 + 1, np.uint8)
    start = 1 if raw.ctypes.data % 8 == 0 else 0
    order = raw[start:start + 64].view(np.int64)
    order[...] = np.arange(8)
    assert not order.flags.aligned
    rule = _step.UpdateRule("sgd", lr=0.1)
    before = p.copy()
    for bad in (order, np.arange(8, dtype=np.int32), np.arange(16)[::2], np.arange(7)):
        with pytest.raises(ValueError, match="`order`"):
            tr.epoch(p, g, None, x, y, None, bad, 4, rule)
    np.testing.assert_array_equal(p, before)  # refused before any batch ran
    tr.epoch(p, g, None, x, y, None, order.copy(), 4, rule)  # aligned: taken
    assert not np.array_equal(p, before)



# 400-200-10: 82 210 parameters, past the size (2**16) from which the update's
# elementwise rules run in spans on the GEMM's pool.
BIG = [400, 200, 10]
SKLEARN_RULES = [("sklearn_sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
                 ("sklearn_sgd", dict(lr=0.1, momentum=0.0)), ("sklearn_adam", dict(lr=1e-3))]


def _big_update(core, kind, settings, dtype, threads, steps=3):
    """``steps`` updates of a BIG net's parameters by fixed random gradients."""
    import bpcore

    tr = core.Trainer(BIG, ["relu", "identity"], "mse", "mean", dtype)
    rng = np.random.default_rng(17)
    p = _params(tr, dtype)
    rule = core.UpdateRule(kind, **settings)
    state = _state(rule, tr.n_params, dtype)
    before = bpcore.get_num_threads()
    bpcore.set_num_threads(threads)
    try:
        for _ in range(steps):
            g = _aligned_zeros(tr.n_params, dtype)
            g[...] = rng.normal(size=tr.n_params)
            tr.update(p, g, state, rule)
    finally:
        bpcore.set_num_threads(before)
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, settings", RULES + SKLEARN_RULES)
def test_a_large_update_has_the_same_bits_at_any_thread_count(kind, settings, dtype):
    """Spans of whole cache lines on whichever thread is free: the bits of one thread,
    and (rules the twin has) the twin's values, so no span is lost or done twice."""
    one = _big_update(_step, kind, settings, dtype, 1)
    two = _big_update(_step, kind, settings, dtype, 2)
    assert one.tobytes() == two.tobytes()
    start = _params(_step.Trainer(BIG, ["relu", "identity"], "mse", "mean", dtype), dtype)
    assert (one != start).mean() > 0.99     # every span moved
    if not kind.startswith("sklearn"):
        twin = _big_update(reference_core, kind, settings, dtype, 1)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(one, twin, rtol=tol, atol=tol)
    elif settings.get("momentum") == 0.0:
        # scikit-learn's plain SGD: p -= lr * g, from the same gradient stream
        rng = np.random.default_rng(17)
        want = start.astype(np.float64)
        for _ in range(3):
            want = want - 0.1 * rng.normal(size=start.size).astype(dtype)
        np.testing.assert_allclose(one, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without threads")
def test_a_large_update_goes_through_the_pool():
    """At 2 threads a large update is a pool job: with the workers held (as if they got
    no core) the caller runs every span, the pool notes it as starved, the bits stay."""
    from conftest import run_python
    out = run_python("""
        import numpy as np
        from bpcore import _gemm, _step
        from bpcore.nn import _aligned_zeros
        tr = _step.Trainer([2000, 1000, 10], ["relu", "identity"], "mse", "mean", np.float64)
        def run(hold):
            p = _aligned_zeros(tr.n_params, np.float64); p[...] = 1.0
            g = _aligned_zeros(tr.n_params, np.float64); g[...] = 0.5
            rule = _step.UpdateRule("adam", lr=1e-3)
            st = tuple(_aligned_zeros(tr.n_params, np.float64) for _ in range(2)) + (None,)
            _gemm._hold_workers(hold)
            before = _gemm._starved_products()
            tr.update(p, g, st, rule)
            _gemm._hold_workers(False)
            return p, _gemm._starved_products() - before
        _gemm.set_num_threads(1)
        one, _ = run(False)
        _gemm.set_num_threads(2)
        run(False)                          # the worker exists now
        _gemm.set_num_threads(2)            # forget any back-off from its start-up
        held, starved = run(True)
        print((held == one).all(), starved)
    """, timeout=120)
    same, starved = out.split()
    assert same == "True" and int(starved) == 1
