"""The dtype / shape / ``out`` policy (bpcore._validate), through both backends.

Every test takes the ``backend`` fixture, so the compiled wrappers -- which
recognise the common call with C-API checks and hand everything else to
``_validate`` -- are held to the same policy as the reference.  Errors must
name the offending argument; shape errors must show both shapes.
"""
import contextlib
import re

import numpy as np
import pytest
from conftest import LAYOUT_KINDS, assert_close, layout, layout as _layout

import bpcore

# name -> (array arguments in positional order, extra keyword arguments)
SPECS = {
    "sigmoid_forward": (["z"], {}),
    "relu_forward": (["z"], {}),
    "relu_backward": (["a", "grad"], {}),
    "tanh_backward": (["a", "grad"], {}),
    "softmax_forward": (["z"], {}),
    "linear_forward": (["x", "w", "b"], {}),
    "linear_backward": (["x", "w", "grad"], {}),
    "matmul": (["a", "b"], {}),
    "mse_loss": (["pred", "target"], {}),
    "mse_loss_backward": (["pred", "target"], {}),
    "mse_loss_and_grad": (["pred", "target"], {}),
    "softmax_cross_entropy": (["logits", "labels"], {}),
    "softmax_cross_entropy_backward": (["logits", "labels"], {}),
    "softmax_cross_entropy_and_grad": (["logits", "labels"], {}),
    "sgd_update": (["param", "grad"], {"lr": 0.1}),
}
WITH_OUT = ["sigmoid_forward", "relu_forward", "relu_backward", "tanh_backward",
            "softmax_forward", "linear_forward", "matmul", "mse_loss_backward",
            "mse_loss_and_grad", "softmax_cross_entropy_backward",
            "softmax_cross_entropy_and_grad"]
MSE_FUNCS = ["mse_loss", "mse_loss_backward", "mse_loss_and_grad"]
CE_FUNCS = ["softmax_cross_entropy", "softmax_cross_entropy_backward",
            "softmax_cross_entropy_and_grad"]
LABELS = np.array([0, 2, 1, 2, 0])


def _arrays(name, dtype=np.float64, seed=0):
    """Valid array arguments of ``name`` (5 samples, 4 inputs, 3 outputs/classes)."""
    rng = np.random.default_rng(seed)

    def n(*shape):
        return rng.normal(size=shape).astype(dtype)

    return {
        "sigmoid_forward": lambda: dict(z=n(5, 3)),
        "relu_forward": lambda: dict(z=n(5, 3)),
        "relu_backward": lambda: dict(a=np.maximum(n(5, 3), 0), grad=n(5, 3)),
        "tanh_backward": lambda: dict(a=np.tanh(n(5, 3)), grad=n(5, 3)),
        "softmax_forward": lambda: dict(z=n(5, 3)),
        "linear_forward": lambda: dict(x=n(5, 4), w=n(4, 3), b=n(3)),
        "linear_backward": lambda: dict(x=n(5, 4), w=n(4, 3), grad=n(5, 3)),
        "matmul": lambda: dict(a=n(5, 4), b=n(4, 3)),
        "mse_loss": lambda: dict(pred=n(5, 3), target=n(5, 3)),
        "mse_loss_backward": lambda: dict(pred=n(5, 3), target=n(5, 3)),
        "mse_loss_and_grad": lambda: dict(pred=n(5, 3), target=n(5, 3)),
        "softmax_cross_entropy": lambda: dict(logits=n(5, 3), labels=LABELS.copy()),
        "softmax_cross_entropy_backward": lambda: dict(logits=n(5, 3), labels=LABELS.copy()),
        "softmax_cross_entropy_and_grad": lambda: dict(logits=n(5, 3), labels=LABELS.copy()),
        "sgd_update": lambda: dict(param=n(5, 3), grad=n(5, 3)),
    }[name]()


def _call(backend, name, args, **kwargs):
    names, extra = SPECS[name]
    return getattr(backend, name)(*(args[k] for k in names), **{**extra, **kwargs})


OUT_SHAPE = (5, 3)  # every function of WITH_OUT writes a (5, 3) result


def _results(value):
    """The arrays (and floats) a call returned, as a flat list."""
    if isinstance(value, tuple):
        return [v for v in value if v is not None]
    return [value]


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPECS))
def test_float_dtype_preserved(backend, name, dtype):
    args = _arrays(name, dtype)
    result = _call(backend, name, args)
    arrays = [r for r in _results(result) if isinstance(r, np.ndarray)]
    assert arrays or isinstance(result, float)
    for r in arrays:
        assert r.dtype == dtype
    if name == "sgd_update":
        assert result is args["param"]


@pytest.mark.parametrize("kind", ["int", "bool", "list", "scalar"])
def test_non_float_input_alone_becomes_float64(backend, kind):
    base = np.array([[-2, 0, 1], [3, 1, 0]])
    z = {"int": base, "bool": base > 0, "list": base.tolist(), "scalar": 2}[kind]
    got = backend.sigmoid_forward(z)
    assert got.dtype == np.float64
    assert_close(got, backend.sigmoid_forward(np.asarray(z, dtype=np.float64)))
    assert backend.mse_loss_backward(z, z).dtype == np.float64


def test_non_float_arguments_take_the_calls_float_dtype(backend, dtype):
    rng = np.random.default_rng(1)
    ints = rng.integers(-3, 4, size=(5, 3))
    floats = rng.normal(size=(5, 3)).astype(dtype)
    checks = [
        (backend.sigmoid_backward(floats, ints),
         backend.sigmoid_backward(floats, ints.astype(dtype))),
        (backend.relu_backward(ints.tolist(), floats),
         backend.relu_backward(ints.astype(dtype), floats)),
        (backend.linear_forward(ints[:, :2], floats[:2], [1, 2, 3]),
         backend.linear_forward(ints[:, :2].astype(dtype), floats[:2],
                                np.arange(1, 4, dtype=dtype))),
        (backend.mse_loss_backward(floats, ints > 0),
         backend.mse_loss_backward(floats, (ints > 0).astype(dtype))),
        (backend.matmul(ints.T.tolist(), floats), backend.matmul(ints.T.astype(dtype), floats)),
    ]
    for got, expected in checks:
        assert got.dtype == dtype
        assert_close(got, expected)
    param = floats.copy()
    backend.sgd_update(param, ints.tolist(), lr=0.5)
    assert param.dtype == dtype
    assert_close(param, floats - dtype.type(0.5) * ints.astype(dtype))


BAD_DTYPES = {
    "float16": lambda a: a.astype(np.float16),
    "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
    "longdouble": lambda a: a.astype(np.longdouble),
}
POSITIONS = [(name, arg) for name in ["sigmoid_forward", "relu_backward", "softmax_forward",
                                      "linear_forward", "linear_backward", "matmul",
                                      "mse_loss", "softmax_cross_entropy", "sgd_update"]
             for arg in SPECS[name][0]]


@pytest.mark.parametrize("bad", sorted(BAD_DTYPES))
@pytest.mark.parametrize("name,arg", POSITIONS)
def test_unsupported_dtype_is_type_error_naming_argument(backend, name, arg, bad):
    if bad == "longdouble" and np.dtype(np.longdouble) == np.float64:
        pytest.skip("long double is double on this platform")
    args = _arrays(name)
    args[arg] = BAD_DTYPES[bad](args[arg])
    with pytest.raises(TypeError, match=f"`{arg}`"):
        _call(backend, name, args)


@pytest.mark.parametrize("value", ["abc", [[1.0, 2.0], [3.0]], None],
                         ids=["str", "ragged", "none"])
def test_non_numeric_python_value_is_type_error(backend, value):
    with pytest.raises(TypeError, match="`z`"):
        backend.sigmoid_forward(value)
    with pytest.raises(TypeError, match="`grad`"):
        backend.relu_backward(np.ones(2), value)


MIXED = [name for name in SPECS
         if sum(arg not in ("labels",) for arg in SPECS[name][0]) >= 2]


@pytest.mark.parametrize("name", MIXED)
def test_mixed_float_dtypes_name_both_arguments(backend, name):
    names = [a for a in SPECS[name][0] if a != "labels"]
    for second in names[1:]:
        args = _arrays(name)
        args[second] = args[second].astype(np.float32)
        with pytest.raises(TypeError,
                           match=f"`{names[0]}` is float64 but `{second}` is float32"):
            _call(backend, name, args)


def test_mixed_velocity_dtype_names_velocity(backend):
    param = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="`velocity` is float64 but `param` is float32"):
        backend.sgd_update(param, np.ones(3, np.float32), lr=0.1, momentum=0.9,
                           velocity=np.zeros(3))


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _raises_showing(exc, name, *fragments):
    """``pytest.raises(exc)`` naming ``name`` whose message also shows each fragment."""
    with pytest.raises(exc, match=f"`{name}`") as info:
        yield info
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_wrong_ndim_names_argument(backend):
    with _raises_showing(ValueError, "z", "2-D", "(4,)"):
        backend.softmax_forward(np.ones(4))
    with _raises_showing(ValueError, "z", "2-D", "(2, 2, 2)"):
        backend.softmax_forward(np.ones((2, 2, 2)))
    with _raises_showing(ValueError, "x", "2-D", "(4,)"):
        backend.linear_forward(np.ones(4), np.ones((4, 3)), np.ones(3))
    with _raises_showing(ValueError, "b", "1-D", "(1, 3)"):
        backend.linear_forward(np.ones((5, 4)), np.ones((4, 3)), np.ones((1, 3)))
    with _raises_showing(ValueError, "logits", "2-D", "(3,)"):
        backend.softmax_cross_entropy(np.ones(3), [0, 1, 2])
    with _raises_showing(ValueError, "a", "2-D", "(4,)"):
        backend.matmul(np.ones(4), np.ones((4, 3)))


def test_mismatched_shapes_show_both(backend):
    x, w, b = np.ones((5, 4)), np.ones((4, 3)), np.ones(3)
    with _raises_showing(ValueError, "w", "(4, n_out)", "(5, 4)", "(6, 3)"):
        backend.linear_forward(x, np.ones((6, 3)), b)
    with _raises_showing(ValueError, "b", "(3,)", "(4, 3)", "(2,)"):
        backend.linear_forward(x, w, np.ones(2))
    with _raises_showing(ValueError, "grad", "(5, 3)", "(3, 5)"):
        backend.linear_backward(x, w, np.ones((3, 5)))
    with _raises_showing(ValueError, "grad", "(5, 3)", "(3, 5)"):
        backend.relu_backward(np.ones((5, 3)), np.ones((3, 5)))
    with _raises_showing(ValueError, "grad", "(15,)", "(5, 3)"):
        backend.sigmoid_backward(np.ones(15), np.ones((5, 3)))
    with _raises_showing(ValueError, "target", "(5, 3)", "(5, 4)"):
        backend.mse_loss(np.ones((5, 3)), np.ones((5, 4)))
    with _raises_showing(ValueError, "target", "(5, 3)", "(15,)"):
        backend.mse_loss_backward(np.ones((5, 3)), np.ones(15))
    with _raises_showing(ValueError, "b", "(4, n)", "(5, 4)", "(3, 3)"):
        backend.matmul(x, np.ones((3, 3)))
    with _raises_showing(ValueError, "b", "(n, 5)", "(4, 5)", "(3, 4)"):
        backend.matmul(x, np.ones((3, 4)), trans_a=True, trans_b=True)
    with _raises_showing(ValueError, "grad", "(5, 3)", "(3, 5)"):
        backend.sgd_update(np.ones((5, 3)), np.ones((3, 5)), lr=0.1)


# ---------------------------------------------------------------------------
# out
# ---------------------------------------------------------------------------

def _bad_outs(dtype):
    shape = OUT_SHAPE
    f_order = np.asfortranarray(np.zeros(shape, dtype))
    read_only = np.zeros(shape, dtype)
    read_only.flags.writeable = False
    other = np.float32 if dtype == np.float64 else np.float64
    return {
        "wrong_shape": np.zeros(shape[::-1], dtype),
        "flat": np.zeros(int(np.prod(shape)), dtype),
        "wrong_dtype": np.zeros(shape, other),
        "int": np.zeros(shape, np.int64),
        "strided": np.zeros((shape[0], 2 * shape[1]), dtype)[:, ::2],
        "fortran": f_order,
        "negative_stride": np.zeros(shape, dtype)[::-1],
        "read_only": read_only,
        "list": np.zeros(shape).tolist(),
    }


@pytest.mark.parametrize("kind", sorted(_bad_outs(np.float64)))
@pytest.mark.parametrize("name", WITH_OUT)
def test_bad_out_is_value_error_naming_out(backend, name, kind):
    args = _arrays(name)
    out = _bad_outs(np.float64)[kind]
    with pytest.raises(ValueError, match="`out`"):
        _call(backend, name, args, out=out)


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_partially_overlapping_an_input(backend, name):
    args = _arrays(name)
    first = SPECS[name][0][0]
    src = args[first]
    size = max(src.size, 15)
    buf = np.zeros(size + 1)
    args[first] = buf[:src.size].reshape(src.shape)
    args[first][...] = src
    out = buf[1:16].reshape(OUT_SHAPE)  # shifted by one element
    before = buf.copy()
    with pytest.raises(ValueError, match=f"`out` overlaps the input `{first}`"):
        _call(backend, name, args, out=out)
    np.testing.assert_array_equal(buf, before)  # nothing written


def test_out_partially_overlapping_a_strided_input(request, backend):
    big = np.random.default_rng(2).normal(size=(5, 6))
    z = big[:, ::2]                   # strided (5, 3) view
    out = big.reshape(-1)[1:16].reshape(5, 3)  # contiguous, interleaved with z
    with pytest.raises(ValueError, match="`out` overlaps the input `z`"):
        backend.sigmoid_forward(z, out=out)


@pytest.mark.parametrize("name", ["linear_forward", "matmul"])
def test_out_identical_to_input_of_non_elementwise_op(backend, name):
    a = np.random.default_rng(3).normal(size=(4, 4))
    if name == "linear_forward":
        args = dict(x=a, w=np.eye(4), b=np.zeros(4))
    else:
        args = dict(a=a, b=np.eye(4))
    with pytest.raises(ValueError, match="`out` overlaps"):
        _call(backend, name, args, out=a)


LINEAR_BUFFERS = {"grad_x": (5, 4), "grad_w": (4, 3), "grad_b": (3,)}


@pytest.mark.parametrize("buf", sorted(LINEAR_BUFFERS))
def test_bad_linear_backward_buffers(backend, buf):
    args = _arrays("linear_backward")
    shape = LINEAR_BUFFERS[buf]
    read_only = np.zeros(shape)
    read_only.flags.writeable = False
    for bad in (np.zeros(shape + (1,)), np.zeros(shape, np.float32), np.zeros(shape)[::-1],
                read_only, np.zeros(shape).tolist()):
        with pytest.raises(ValueError, match=f"`{buf}`"):
            _call(backend, "linear_backward", args, **{buf: bad})
    # Each buffer overlapping an input of its own shape.
    overlapped, source = {"grad_x": ("x", args["x"]), "grad_w": ("w", args["w"]),
                          "grad_b": ("grad", args["grad"][1])}[buf]
    with pytest.raises(ValueError, match=f"`{buf}` overlaps the input `{overlapped}`"):
        _call(backend, "linear_backward", args, **{buf: source})


def test_linear_backward_buffers_must_not_overlap_each_other(backend):
    args = _arrays("linear_backward")
    block = np.zeros(12 + 3)
    grad_w = block[:12].reshape(4, 3)
    with pytest.raises(ValueError, match="`grad_w` overlaps `grad_b`"):
        _call(backend, "linear_backward", args, grad_w=grad_w, grad_b=block[10:13])
    grad_b = block[12:15]
    got = _call(backend, "linear_backward", args, grad_w=grad_w, grad_b=grad_b)
    assert got[1] is grad_w and got[2] is grad_b
    expected = _call(backend, "linear_backward", args)
    assert_close(block, np.concatenate([expected[1].ravel(), expected[2]]), scale=10)


def _in_place_cases():
    cases = [(f"{act}_forward", "z") for act in ("sigmoid", "relu", "tanh", "identity")]
    cases += [("softmax_forward", "z")]
    cases += [(f"{act}_backward", arg) for act in ("sigmoid", "relu", "tanh", "identity")
              for arg in ("a", "grad")]
    cases += [("mse_loss_backward", "pred"), ("mse_loss_backward", "target"),
              ("mse_loss_and_grad", "pred"), ("softmax_cross_entropy_backward", "logits"),
              ("softmax_cross_entropy_and_grad", "logits")]
    return cases


@pytest.mark.parametrize("name,arg", _in_place_cases())
def test_out_identical_to_input_of_elementwise_op(backend, name, arg, dtype):
    rng = np.random.default_rng(4)
    if name in SPECS:
        names = SPECS[name][0]
        args = _arrays(name, dtype, seed=4)
    else:
        names = ["z"] if name.endswith("_forward") else ["a", "grad"]
        args = {k: rng.normal(size=(5, 3)).astype(dtype) for k in names}
    if name.endswith("_backward") and "a" in args:
        forward = getattr(bpcore.reference, name.replace("_backward", "_forward"))
        args["a"] = forward(args["a"])
    fn = getattr(backend, name)
    positional = [args[k] for k in names]
    extra = SPECS.get(name, ([], {}))[1]
    expected = _results(fn(*[p.copy() for p in positional], **extra))
    target = args[arg]
    got = _results(fn(*positional, **extra, out=target))
    assert got[-1] is target
    for g, e in zip(got, expected):
        assert_close(g, e)


def test_out_may_be_a_fresh_view_of_the_input(backend):
    z = np.random.default_rng(5).normal(size=(4, 3))
    expected = backend.tanh_forward(z)
    view = z[...]
    assert view is not z
    assert backend.tanh_forward(z, out=view) is view
    assert_close(z, expected)


# ---------------------------------------------------------------------------
# class labels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CE_FUNCS)
def test_labels_out_of_range_name_the_row(backend, name):
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"`labels`\[2\] = 3 is out of range for 3 classes"):
        getattr(backend, name)(logits, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"`labels`\[1\] = -1 is out of range"):
        getattr(backend, name)(logits, [0, -1, 2, 7])


@pytest.mark.parametrize("name", CE_FUNCS)
def test_labels_must_be_integral(backend, name):
    logits = np.zeros((4, 3))
    for bad, row in (([0.0, 1.5, 2.0, 0.0], 1), ([0.0, 1.0, np.nan, 0.0], 2),
                     ([np.inf, 1.0, 2.0, 0.0], 0)):
        with pytest.raises(ValueError, match=rf"integer class indices; labels\[{row}\]"):
            getattr(backend, name)(logits, np.array(bad))


@pytest.mark.parametrize("name", CE_FUNCS)
def test_integral_float_and_other_int_labels_accepted(backend, name):
    logits = np.random.default_rng(6).normal(size=(5, 3))
    expected = _results(getattr(backend, name)(logits, LABELS))
    for labels in (LABELS.astype(np.float64), LABELS.astype(np.int32),
                   LABELS.astype(np.uint8), LABELS.tolist(), LABELS[::-1].copy()[::-1]):
        got = _results(getattr(backend, name)(logits, labels))
        for g, e in zip(got, expected):
            assert_close(g, e)


@pytest.mark.parametrize("name", CE_FUNCS)
def test_labels_wrong_length_or_ndim(backend, name):
    logits = np.zeros((4, 3))
    with _raises_showing(ValueError, "labels", "(4,)", "(3,)"):
        getattr(backend, name)(logits, [0, 1, 2])
    with _raises_showing(ValueError, "labels", "(4,)", "(4, 1)"):
        getattr(backend, name)(logits, np.zeros((4, 1), int))


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

BAD_REDUCTIONS = ["avg", "MEAN", "", None, 1, ["mean"]]


@pytest.mark.parametrize("reduction", BAD_REDUCTIONS, ids=repr)
@pytest.mark.parametrize("name", MSE_FUNCS + CE_FUNCS)
def test_unknown_reduction_lists_the_valid_ones(request, backend, name, reduction):
    valid = ("'mean', 'sum', 'half_sum', 'half_mean'" if name in MSE_FUNCS
             else "'mean', 'sum'")
    args = _arrays(name)
    with pytest.raises(ValueError, match=re.escape(f"`reduction` must be one of {valid}")):
        _call(backend, name, args, reduction=reduction)


@pytest.mark.parametrize("name", CE_FUNCS)
def test_mse_only_reductions_rejected_by_cross_entropy(backend, name):
    for reduction in ("half_sum", "half_mean"):
        with pytest.raises(ValueError, match="`reduction` must be one of 'mean', 'sum';"):
            _call(backend, name, _arrays(name), reduction=reduction)


def test_array_reduction_rejected(request, backend):
    with pytest.raises(ValueError, match="`reduction`"):
        backend.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]),
                                      reduction=np.array(["sum"]))


# ---------------------------------------------------------------------------
# sgd_update
# ---------------------------------------------------------------------------

def _sgd_args(dtype=np.float64):
    rng = np.random.default_rng(7)
    return (rng.normal(size=(5, 3)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype),
            np.zeros((5, 3), dtype))


@pytest.mark.parametrize("value,exc,what", [
    (-0.1, ValueError, ">= 0"), (float("nan"), ValueError, "finite"),
    (float("inf"), ValueError, "finite"), (np.float64(-1.0), ValueError, ">= 0"),
    ("0.1", TypeError, "real number"), (None, TypeError, "real number"),
    (True, TypeError, "real number"), (np.array([0.1]), TypeError, "real number"),
    (1 + 0j, TypeError, "real number"),
], ids=["negative", "nan", "inf", "np_negative", "str", "none", "bool", "array", "complex"])
@pytest.mark.parametrize("arg", ["lr", "momentum", "weight_decay"])
def test_sgd_bad_hyperparameter(backend, arg, value, exc, what):
    param, grad, velocity = _sgd_args()
    before = param.copy()
    kwargs = dict(lr=0.1, momentum=0.9, velocity=velocity, weight_decay=0.0)
    kwargs[arg] = value
    with pytest.raises(exc, match=f"`{arg}`.*{re.escape(what)}"):
        backend.sgd_update(param, grad, **kwargs)
    np.testing.assert_array_equal(param, before)
    np.testing.assert_array_equal(velocity, 0)


@pytest.mark.parametrize("value", [0, 1, np.float32(0.5), np.int64(1), 0.0])
def test_sgd_accepts_real_scalars(backend, value):
    param, grad, velocity = _sgd_args()
    expected = param - float(value) * grad
    backend.sgd_update(param, grad, lr=value)
    assert_close(param, expected)


def test_sgd_velocity_required_with_momentum(backend):
    param, grad, _ = _sgd_args()
    with pytest.raises(ValueError, match="`velocity` is required"):
        backend.sgd_update(param, grad, lr=0.1, momentum=0.9)


def test_sgd_bad_velocity(backend, dtype):
    param, grad, _ = _sgd_args(dtype)
    read_only = np.zeros_like(param)
    read_only.flags.writeable = False
    bad = [
        (np.zeros((3, 5), dtype), ValueError),
        (np.zeros_like(param, np.float16), TypeError),
        (np.zeros((5, 6), dtype)[:, ::2], ValueError),
        (read_only, ValueError),
        (np.zeros((5, 3)).tolist(), TypeError),
        (param, ValueError),  # overlaps param
    ]
    for velocity, exc in bad:
        before = param.copy()
        with pytest.raises(exc, match="`velocity`"):
            backend.sgd_update(param, grad, lr=0.1, momentum=0.9, velocity=velocity)
        np.testing.assert_array_equal(param, before)


def test_sgd_bad_param(backend):
    _, grad, _ = _sgd_args()
    read_only = np.zeros((5, 3))
    read_only.flags.writeable = False
    for param, exc in [(read_only, ValueError), (np.zeros((5, 6))[:, ::2], ValueError),
                       (np.zeros((5, 3), order="F"), ValueError),
                       (np.zeros((5, 3))[::-1], ValueError),
                       (np.zeros((5, 3), np.int64), TypeError),
                       (np.zeros((5, 3), np.float16), TypeError),
                       (np.zeros((5, 3)).tolist(), TypeError)]:
        with pytest.raises(exc, match="`param`"):
            backend.sgd_update(param, grad, lr=0.1)


def test_sgd_nesterov_rules(backend):
    param, grad, velocity = _sgd_args()
    with pytest.raises(ValueError, match="`nesterov`.*`momentum`"):
        backend.sgd_update(param, grad, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="`nesterov`"):
        backend.sgd_update(param, grad, lr=0.1, momentum=0.0, velocity=velocity, nesterov=True)
    with pytest.raises(TypeError, match="`nesterov`"):
        backend.sgd_update(param, grad, lr=0.1, momentum=0.9, velocity=velocity, nesterov="yes")
    with pytest.raises(TypeError, match="`nesterov`"):
        backend.sgd_update(param, grad, lr=0.1, momentum=0.9, velocity=velocity, nesterov=1)
    backend.sgd_update(param, grad, lr=0.1, momentum=0.9, velocity=velocity,
                       nesterov=np.bool_(True))


def test_sgd_grad_overlapping_param(backend):
    buf = np.random.default_rng(8).normal(size=16)
    param = buf[:15].reshape(5, 3)
    with pytest.raises(ValueError, match="`grad` overlaps `param`"):
        backend.sgd_update(param, buf[1:16].reshape(5, 3), lr=0.1)
    # grad *is* param: allowed, param -= lr * param.
    expected = 0.75 * param
    backend.sgd_update(param, param, lr=0.25)
    assert_close(param, expected)


# ---------------------------------------------------------------------------
# input layouts
# ---------------------------------------------------------------------------

LAYOUTS = ["strided", "fortran", "negative", "read_only", "misaligned"]


def _is_laid_out(v, layout):
    """The layout really is the one named (so the test exercises it)."""
    return {"read_only": not v.flags.writeable, "misaligned": not v.flags.aligned,
            "fortran": v.ndim < 2 or not v.flags.c_contiguous}.get(
        layout, not v.flags.c_contiguous)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_any_input_layout_gives_the_contiguous_result(backend, name, layout, dtype):
    args = _arrays(name, dtype, seed=9)
    expected = _call(backend, name, {k: v.copy() for k, v in args.items()})
    laid = {k: (v if (name, k) == ("sgd_update", "param") else _layout(v, layout))
            for k, v in args.items()}
    for k, v in laid.items():
        if (name, k) != ("sgd_update", "param"):
            assert _is_laid_out(v, layout), (k, layout)
    snapshot = {k: v.copy() for k, v in laid.items()}
    got = _call(backend, name, laid)
    for g, e in zip(_results(got), _results(expected)):
        assert_close(g, e, dtype=dtype, scale=10)
    for k, v in laid.items():
        if (name, k) != ("sgd_update", "param"):
            np.testing.assert_array_equal(v, snapshot[k])


# ---------------------------------------------------------------------------
# Messages at the edges: huge Python ints, label values, names as np.str_,
# subclasses and byte order (issue 12)
# ---------------------------------------------------------------------------

def test_huge_ints_and_reals_name_the_argument():
    from bpcore import _validate as V

    with pytest.raises(ValueError, match="`batch_size` must be <= 9223372036854775807"):
        V.check_int("batch_size", 10 ** 30, minimum=1)
    with pytest.raises(ValueError, match=r"`lr` must be finite; got 100000\.\.\. \(401 digits"):
        V.check_real("lr", 10 ** 400)
    assert V.check_int("seed", 10 ** 30, maximum=None) == 10 ** 30
    assert V.check_int("n", 2 ** 63 - 1) == 2 ** 63 - 1
    with pytest.raises(ValueError, match="`n`"):
        bpcore.set_num_threads(10 ** 30)
    with pytest.raises(ValueError, match="`n`"):
        bpcore.set_num_threads(2 ** 31)
    with pytest.raises(ValueError, match="`layer_sizes`"):
        bpcore.MLP([2, 10 ** 30])
    net = bpcore.MLP([2, 1], seed=0, dtype="float64")
    x, y = np.zeros((4, 2)), np.zeros((4, 1))
    with pytest.raises(ValueError, match="`batch_size`"):
        net.fit(x, y, epochs=1, batch_size=10 ** 30, lr=0.1)
    with pytest.raises(ValueError, match="`lr`"):
        net.fit(x, y, epochs=1, batch_size=2, lr=10 ** 400)


def test_adam_step_bounds_are_the_same_in_both_twins(backend):
    rng = np.random.default_rng(0)
    args = dict(grad=rng.normal(size=5), lr=0.01)
    with pytest.raises(ValueError, match="`step` must be <="):
        backend.adam_update(np.zeros(5), m=np.zeros(5), v=np.zeros(5), step=2 ** 63, **args)
    results = []
    for twin in (bpcore.reference, bpcore):  # the largest step: both twins, one answer
        p = np.ones(5)
        twin.adam_update(p, m=np.zeros(5), v=np.zeros(5), step=2 ** 63 - 1, **args)
        results.append(p)
    assert_close(results[0], results[1])


@pytest.mark.parametrize("labels,shown", [
    (np.array([0, 2 ** 64 - 1, 1], np.uint64), "18446744073709551615"),
    (np.array([0.0, 1e20, 1.0]), "1e+20"),
    (np.array([0, -3, 1], np.int8), "-3"),
])
def test_out_of_range_labels_are_shown_as_given(backend, labels, shown):
    with pytest.raises(ValueError, match=rf"`labels`\[1\] = {re.escape(shown)} is out of range"):
        backend.softmax_cross_entropy(np.zeros((3, 4)), labels)


def test_numpy_str_names_are_accepted(backend):
    pred, target = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    assert (backend.mse_loss(pred, target, reduction=np.str_("sum"))
            == backend.mse_loss(pred, target, reduction="sum"))
    net = bpcore.MLP([2, 3, 1], activation=np.str_("relu"), loss=np.str_("mse"), seed=0,
                     dtype="float64")
    assert net.predict(np.ones((1, 2))).shape == (1, 1)


def test_masked_arrays_are_refused_by_name(backend):
    z = np.ma.masked_array(np.ones((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match="`z` is a masked array"):
        backend.relu_forward(z)
    with pytest.raises(TypeError, match="`out` is a masked array"):
        backend.relu_forward(np.ones((2, 3)), out=z)
    with pytest.raises(TypeError, match="`param` is a masked array"):
        backend.sgd_update(z, np.ones((2, 3)), lr=0.1)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_inputs_are_arrays(backend):
    """``*`` on np.matrix is a product: the reference computed BCE with it."""
    logits = np.matrix([[0.5, -1.0], [2.0, 0.25]])
    targets = np.matrix([[1.0, 0.0], [0.0, 1.0]])
    expected = bpcore.reference.sigmoid_binary_cross_entropy(np.asarray(logits),
                                                             np.asarray(targets))
    assert_close(backend.sigmoid_binary_cross_entropy(logits, targets), expected)
    out = np.asmatrix(np.zeros((2, 2)))
    assert backend.relu_forward(logits, out=out) is out  # written through a plain view
    np.testing.assert_array_equal(out, np.maximum(np.asarray(logits), 0))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_float32_matrix_param_is_updated_as_float32(backend):
    """The compiled general path took a float32 np.matrix for float64 (its type number)."""
    param = np.asmatrix(np.ones((2, 3), np.float32))
    grad = np.full((2, 3), 0.5, np.float32)
    assert backend.sgd_update(param, grad, lr=0.5) is param
    np.testing.assert_array_equal(param, np.full((2, 3), 0.75, np.float32))


def test_non_native_byte_order(backend):
    z = np.array([[-1.0, 2.0]], dtype=">f8" if np.little_endian else "<f8")
    np.testing.assert_array_equal(backend.relu_forward(z), [[0.0, 2.0]])
    with pytest.raises(ValueError, match="`out` must have dtype float64 in native byte order"):
        backend.relu_forward(np.ones((1, 2)), out=np.zeros((1, 2), z.dtype))
    with pytest.raises(TypeError, match="`param` must be float32 or float64 in native byte"):
        backend.sgd_update(z.copy(), np.ones((1, 2)), lr=0.1)


@pytest.mark.parametrize("kind", ["contiguous"] + [k for k in LAYOUT_KINDS if k != "contiguous"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
@pytest.mark.parametrize("shape", [(3, 4), (1, 5), (5, 1), (7,), ()])
@pytest.mark.parametrize("contiguous", [True, False])
def test_the_fast_paths_final_form_is_the_policys(kind, dtype, shape, contiguous, tmp_path):
    """bpcore/_policy.pxd (the compiled fast paths' test) and _validate.is_final agree
    (``contiguous=False``: matmul's operands, read through their strides)."""
    from bpcore import _kernels
    from bpcore import _validate as V

    arr = layout(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape), kind, tmp_path)
    assert (_kernels._is_plain(arr, contiguous)
            == V.is_final(arr, contiguous)), (kind, arr.dtype, arr.strides)

