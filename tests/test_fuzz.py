"""Property-based fuzzing (hypothesis): every compiled kernel against the reference, and MLP configs.

Each kernel test draws the dtype, the shapes (empty ones included), the
memory layout of every input (C, Fortran, strided, negative strides,
read-only) and the values (with NaN and +-inf for the elementwise ops),
and checks the compiled result against ``bpcore.reference`` on the same
values with the tolerances of ``conftest.TOL`` (scaled by the length of a
sum where there is one), and that no input was written.  The MLP tests draw
random valid configurations (compiled vs reference backend, forward,
gradients and one step) and random invalid ones (one field spoiled: a
``TypeError``/``ValueError`` naming it).

``FUZZ_EXAMPLES`` (default 300 per test; 16 tests, about 10 s) sets the budget.
"""
import math
import os

import numpy as np
import pytest
from conftest import TOL, layout as _layout
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bpcore
import bpcore.reference as R
from bpcore import MLP

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
# Derandomized, so CI runs the same examples every time; FUZZ_RANDOM=1 explores.
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])
LAYOUTS = st.sampled_from(["c", "fortran", "strided", "negative", "readonly"])


@st.composite
def arrays(draw, dtype, shape, special=False, bound=1e3, huge=True):
    """An array of ``shape`` in a random layout; ``special`` adds NaN/+-inf (and +-1e30)."""
    elements = st.floats(-bound, bound, width=8 * dtype.itemsize, allow_subnormal=False)
    if special:
        values = [math.nan, math.inf, -math.inf, 0.0, -0.0] + ([1e30, -1e30] if huge else [])
        elements = st.one_of(elements, st.sampled_from(values))
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    return _layout(arr, draw(LAYOUTS))


def dims(min_value=0, max_value=9):
    return st.integers(min_value, max_value)


def _close(got, expected, dtype, scale=1.0):
    tol = TOL[np.dtype(dtype)]
    if isinstance(expected, float):
        assert isinstance(got, float), type(got)
        if math.isnan(expected):
            assert math.isnan(got), got
            return
        # a loss is a sum: compiled sums in double, the reference in the dtype
        np.testing.assert_allclose(got, expected, rtol=max(tol["rtol"], 1e-6) * 10 * scale,
                                   atol=tol["atol"] * 10 * scale)
        return
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, equal_nan=True)


def _compare(name, kwargs, dtype, scale=1.0, written=()):
    """Call the compiled and the reference twin; same results, inputs untouched."""
    snapshot = {k: np.array(v, copy=True) for k, v in kwargs.items()
                if isinstance(v, np.ndarray)}
    ref_kwargs = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                  for k, v in kwargs.items()}
    with np.errstate(all="ignore"):
        expected = getattr(R, name)(**ref_kwargs)
    got = getattr(bpcore, name)(**kwargs)
    for g, e in zip(got if isinstance(got, tuple) else (got,),
                    expected if isinstance(expected, tuple) else (expected,)):
        if e is None:
            assert g is None
        else:
            _close(g, e, dtype, scale)
    for k, before in snapshot.items():
        if k not in written:
            np.testing.assert_array_equal(kwargs[k], before, err_msg=f"{name} wrote `{k}`")
    return got, ref_kwargs


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["sigmoid", "relu", "tanh", "identity"])
@FUZZ
@given(data=st.data(), dtype=DTYPES, shape=st.lists(dims(), min_size=0, max_size=3))
def test_activation_forward(op, data, dtype, shape):
    z = data.draw(arrays(dtype, tuple(shape), special=True))
    # NOTE: 2 ulp of exp/tanh (vmath) -- the conftest tolerance, at any magnitude
    _compare(f"{op}_forward", {"z": z}, dtype, scale=2)


@pytest.mark.parametrize("op", ["sigmoid", "relu", "tanh", "identity"])
@FUZZ
@given(data=st.data(), dtype=DTYPES, shape=st.tuples(dims(), dims()), in_place=st.booleans())
def test_activation_backward(op, data, dtype, shape, in_place):
    # NOTE: no 1e30 here: a saved output of 1e30 is outside every activation's
    # range, and a * (1 - a) overflows in float32 in the reference (0 * -inf =
    # NaN) where the compiled loop gives the exact 0.
    a = data.draw(arrays(dtype, shape, special=True, huge=False))
    grad = data.draw(arrays(dtype, shape, special=True, huge=False))
    kwargs = {"a": a, "grad": grad}
    if in_place and grad.flags.c_contiguous and grad.flags.writeable:
        kwargs["out"] = grad  # the documented in-place case
    _compare(f"{op}_backward", kwargs, dtype, written=("out", "grad") if "out" in kwargs else ())


@FUZZ
@given(data=st.data(), dtype=DTYPES, shape=st.tuples(dims(), dims()))
def test_softmax_forward(data, dtype, shape):
    z = data.draw(arrays(dtype, shape, special=True))
    _compare("softmax_forward", {"z": z}, dtype, scale=2 + shape[1])


@FUZZ
@given(data=st.data(), dtype=DTYPES, m=dims(), k=dims(), n=dims(), trans_a=st.booleans(),
       trans_b=st.booleans(), alpha=st.floats(-4, 4), beta=st.sampled_from([0.0, 1.0, -0.5]))
def test_matmul(data, dtype, m, k, n, trans_a, trans_b, alpha, beta):
    a = data.draw(arrays(dtype, (k, m) if trans_a else (m, k)))
    b = data.draw(arrays(dtype, (n, k) if trans_b else (k, n)))
    out = np.array(data.draw(arrays(dtype, (m, n))), order="C", copy=True)
    kwargs = dict(a=a, b=b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out)
    # products of values up to 1e3 summed over k: absolute scale 1e6 * k
    _compare("matmul", kwargs, dtype, scale=1e6 * (k + 1) * (1 + abs(alpha)), written=("out",))


@FUZZ
@given(data=st.data(), dtype=DTYPES, n=dims(), n_in=dims(), n_out=dims())
def test_linear_forward_and_backward(data, dtype, n, n_in, n_out):
    x = data.draw(arrays(dtype, (n, n_in)))
    w = data.draw(arrays(dtype, (n_in, n_out)))
    b = data.draw(arrays(dtype, (n_out,)))
    grad = data.draw(arrays(dtype, (n, n_out)))
    _compare("linear_forward", dict(x=x, w=w, b=b), dtype, scale=1e6 * (n_in + 1))
    _compare("linear_backward", dict(x=x, w=w, grad=grad, need_grad_x=data.draw(st.booleans())),
             dtype, scale=1e6 * (max(n, n_out) + 1))


@FUZZ
@given(data=st.data(), dtype=DTYPES, shape=st.lists(dims(), min_size=0, max_size=3),
       reduction=st.sampled_from(["mean", "sum", "half_sum", "half_mean"]))
def test_mse(data, dtype, shape, reduction):
    pred = data.draw(arrays(dtype, tuple(shape)))
    target = data.draw(arrays(dtype, tuple(shape)))
    size = max(1, math.prod(shape))
    _compare("mse_loss", dict(pred=pred, target=target, reduction=reduction), dtype,
             scale=size)
    _compare("mse_loss_and_grad", dict(pred=pred, target=target, reduction=reduction), dtype,
             scale=1e3 * size)


@FUZZ
@given(data=st.data(), dtype=DTYPES, n=dims(), c=dims(1), reduction=st.sampled_from(["mean", "sum"]))
def test_cross_entropy(data, dtype, n, c, reduction):
    logits = data.draw(arrays(dtype, (n, c), bound=float(dtype.type(1e30)) if data.draw(st.booleans()) else 30.0))
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)),
                      dtype=data.draw(st.sampled_from([np.int64, np.int32, np.uint8])))
    kwargs = dict(logits=logits, labels=labels, reduction=reduction)
    _compare("softmax_cross_entropy", kwargs, dtype, scale=10 * (n + 1) * c)
    _compare("softmax_cross_entropy_and_grad", kwargs, dtype, scale=10 * (n + 1) * c)


@FUZZ
@given(data=st.data(), dtype=DTYPES, shape=st.lists(dims(), min_size=0, max_size=3),
       lr=st.floats(0, 10), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.1]), nesterov=st.booleans())
def test_sgd_update(data, dtype, shape, lr, momentum, weight_decay, nesterov):
    assume(not nesterov or momentum > 0)
    shape = tuple(shape)
    param = np.array(data.draw(arrays(dtype, shape)), order="C", copy=True)
    grad = data.draw(arrays(dtype, shape))
    velocity = (np.array(data.draw(arrays(dtype, shape)), order="C", copy=True)
                if momentum else None)
    kwargs = dict(param=param, grad=grad, lr=lr, momentum=momentum, velocity=velocity,
                  weight_decay=weight_decay, nesterov=nesterov)
    _, ref = _compare("sgd_update", kwargs, dtype, scale=1e4 * (1 + lr),
                      written=("param", "velocity"))
    if momentum:
        _close(velocity, ref["velocity"], dtype, scale=1e4)


# ---------------------------------------------------------------------------
# MLP configurations
# ---------------------------------------------------------------------------

ACTS = ["identity", "relu", "sigmoid", "tanh"]


@st.composite
def configs(draw):
    sizes = draw(st.lists(st.integers(1, 7), min_size=2, max_size=4))
    loss = draw(st.sampled_from(["mse", "cross_entropy"]))
    hidden = draw(st.lists(st.sampled_from(ACTS), min_size=len(sizes) - 2,
                           max_size=len(sizes) - 2))
    config = dict(layer_sizes=sizes, activation=hidden, loss=loss,
                  dtype=draw(st.sampled_from(["float32", "float64"])),
                  init=draw(st.sampled_from(["auto", "normal", "glorot", "he"])),
                  seed=draw(st.integers(0, 2**32 - 1)))
    if loss == "cross_entropy":
        config["reduction"] = draw(st.sampled_from(["mean", "sum"]))
    else:
        config["reduction"] = draw(st.sampled_from(["mean", "sum", "half_sum", "half_mean"]))
        config["output_activation"] = draw(st.sampled_from(ACTS + ["softmax"]))
    return config


@FUZZ
@given(config=configs(), n=st.integers(1, 9), data=st.data())
def test_mlp_compiled_matches_reference(config, n, data):
    dtype = np.dtype(config["dtype"])
    nets = {b: MLP(**config, backend=b) for b in ("compiled", "reference")}
    np.testing.assert_array_equal(nets["compiled"].parameters, nets["reference"].parameters)
    x = data.draw(hnp.arrays(dtype, (n, config["layer_sizes"][0]),
                             elements=st.floats(-3, 3, width=8 * dtype.itemsize)))
    n_out = config["layer_sizes"][-1]
    if config["loss"] == "cross_entropy":
        y = np.array(data.draw(st.lists(st.integers(0, n_out - 1), min_size=n, max_size=n)))
    else:
        y = data.draw(hnp.arrays(dtype, (n, n_out),
                                 elements=st.floats(-3, 3, width=8 * dtype.itemsize)))
    width = max(config["layer_sizes"])
    scale = 50 * width * len(config["layer_sizes"])
    _close(nets["compiled"].predict(x), nets["reference"].predict(x), dtype, scale)
    results = {b: net.loss_and_grads(x, y) for b, net in nets.items()}
    _close(results["compiled"][0], results["reference"][0], dtype, scale)
    for g, e in zip(results["compiled"][1][0] + results["compiled"][1][1],
                    results["reference"][1][0] + results["reference"][1][1]):
        _close(g, e, dtype, scale * n)
    for net in nets.values():
        net.train_step(x, y, lr=0.01, momentum=0.5)
    _close(nets["compiled"].parameters, nets["reference"].parameters, dtype, scale * n)


BAD_FIELDS = {
    "layer_sizes": st.sampled_from([[], [3], [3, 0], [3, -1, 2], [3, 2.5], "32", None, 4]),
    "activation": st.sampled_from(["swish", "", None, ["relu"] * 5, 3]),
    "output_activation": st.sampled_from(["swish", "", 3]),
    "loss": st.sampled_from(["hinge", "", None, 3]),
    "reduction": st.sampled_from(["median", "", None, 3]),
    "dtype": st.sampled_from(["float16", "int32", "complex128", "nonsense"]),
    "init": st.sampled_from(["xavier", "", None]),
    "seed": st.sampled_from(["abc", -1, 1.5]),
    "backend": st.sampled_from(["gpu", "", None]),
}


@FUZZ
@given(config=configs(), field=st.sampled_from(sorted(BAD_FIELDS)), data=st.data())
def test_mlp_invalid_config_names_the_field(config, field, data):
    config = dict(config, **{field: data.draw(BAD_FIELDS[field])})
    if field == "output_activation" and config["loss"] == "cross_entropy":
        config["loss"] = "mse"
        config["reduction"] = "mean"
    with pytest.raises((TypeError, ValueError)) as info:
        MLP(**config)
    assert f"`{field}`" in str(info.value), (field, str(info.value))
