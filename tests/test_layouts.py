"""Array layouts at every boundary: odd strides, broadcasts, subclasses, byte order, aliasing.

Every public function (both twins) and every ``MLP`` / estimator / distributed
entry gets the same values in every layout of ``conftest.odd_layouts``: one row
or one column with a huge, zero or negative stride (NumPy calls these
C-contiguous), stride-0 broadcasts, negative strides, Fortran order, the other
byte order, ``np.matrix``, a masked array (refused: ``TypeError`` naming the
argument), a memmap, read-only and misaligned copies -- and views of one buffer
passed as two arguments.  Each result is compared with the reference computed
on plain C-contiguous copies of the same values (a tolerance: products may be
summed in another order); a fit on an odd layout gives the same parameters as a
fit on the contiguous copy (bitwise for the compiled backend, which copies each
batch into the same buffers whatever the input's layout).
"""
import itertools
import os

import numpy as np
import pytest
from conftest import LAYOUT_RAISES, TOL, import_oracle, odd_layouts, shared_buffer

import bpcore
import bpcore.reference as R
from bpcore import MLP

BACKENDS = {"compiled": bpcore, "reference": R}
pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
WRITTEN = ("out", "grad_x", "grad_w", "grad_b", "param", "velocity", "m", "v", "square_avg",
           "momentum_buffer", "grad_avg")
# written in place and returned / kept
STATE = ("param", "velocity", "m", "v", "square_avg", "momentum_buffer", "grad_avg")

# name -> (array arguments and their shapes in symbols, fixed keyword arguments)
SPECS = {
    **{f"{a}_forward": ({"z": "nm", "out": "nm"}, {})
       for a in ("sigmoid", "relu", "tanh", "identity")},
    **{f"{a}_backward": ({"a": "nm", "grad": "nm", "out": "nm"}, {})
       for a in ("sigmoid", "relu", "tanh", "identity")},
    **{f"{a}_forward": ({"z": "nm", "out": "nm"}, p)
       for a, p in (("leaky_relu", {"negative_slope": 0.2}), ("elu", {"alpha": 0.7}),
                    ("gelu", {}), ("gelu_tanh", {}), ("silu", {}),
                    ("softplus", {"beta": 2.0}))},
    **{f"{a}_backward": ({"a": "nm", "grad": "nm", "out": "nm"}, p)
       for a, p in (("leaky_relu", {"negative_slope": 0.2}), ("elu", {"alpha": 0.7}))},
    **{f"{a}_backward": ({"z": "nm", "grad": "nm", "out": "nm"}, p)
       for a, p in (("gelu", {}), ("gelu_tanh", {}), ("silu", {}), ("softplus", {"beta": 2.0}))},
    **{f"{loss}{s}": ({"pred": "nm", "target": "nm", **({"out": "nm"} if s else {})}, p)
       for loss, p in (("l1_loss", {}), ("huber_loss", {"delta": 0.5}),
                       ("smooth_l1_loss", {"beta": 0.5})) for s in ("", "_backward")},
    "softmax_forward": ({"z": "nm", "out": "nm"}, {}),
    "matmul": ({"a": "nk", "b": "km", "out": "nm"}, {}),
    "linear_forward": ({"x": "nk", "w": "km", "b": "m", "out": "nm"}, {}),
    "linear_backward": ({"x": "nk", "w": "km", "grad": "nm", "grad_x": "nk", "grad_w": "km",
                         "grad_b": "m"}, {}),
    "mse_loss": ({"pred": "nm", "target": "nm"}, {}),
    "mse_loss_backward": ({"pred": "nm", "target": "nm", "out": "nm"}, {}),
    "mse_loss_and_grad": ({"pred": "nm", "target": "nm", "out": "nm"}, {}),
    "softmax_cross_entropy": ({"logits": "nm", "labels": "n"}, {}),
    "softmax_cross_entropy_backward": ({"logits": "nm", "labels": "n", "out": "nm"}, {}),
    "softmax_cross_entropy_and_grad": ({"logits": "nm", "labels": "n", "out": "nm"}, {}),
    "sigmoid_binary_cross_entropy": ({"logits": "nm", "targets": "nm"}, {}),
    "sigmoid_binary_cross_entropy_backward": ({"logits": "nm", "targets": "nm",
                                               "out": "nm"}, {}),
    "sgd_update": ({"param": "nm", "grad": "nm", "velocity": "nm"},
                   dict(lr=0.1, momentum=0.9)),
    "adam_update": ({"param": "nm", "grad": "nm", "m": "nm", "v": "nm"},
                    dict(lr=0.01, step=3)),
    "adamw_update": ({"param": "nm", "grad": "nm", "m": "nm", "v": "nm"},
                     dict(lr=0.01, step=3)),
    "rmsprop_update": ({"param": "nm", "grad": "nm", "square_avg": "nm", "momentum_buffer": "nm",
                        "grad_avg": "nm"}, dict(lr=0.01, momentum=0.9, centered=True)),
    "sklearn_sgd_update": ({"param": "nm", "grad": "nm", "velocity": "nm"},
                           dict(lr=0.1, momentum=0.9)),
    "sklearn_adam_update": ({"param": "nm", "grad": "nm", "m": "nm", "v": "nm"},
                            dict(lr=0.01, step=3)),
}
PRODUCTS = ("matmul", "linear_forward", "linear_backward")
# The shapes each function sees: one row, one column (and k = 1 for the products),
# and 3 x 2 inputs whose rows (or columns) repeat, so a broadcast has the same values.
SHAPES = {"one_row": dict(n=1, m=3, k=2), "one_col": dict(n=3, m=1, k=2),
          "k_one": dict(n=3, m=2, k=1), "rows_repeat": dict(n=3, m=2, k=2),
          "cols_repeat": dict(n=3, m=2, k=2)}


def test_every_public_function_is_covered():
    assert sorted(SPECS) == sorted(R.__all__)


def _clean(name, dtype, shape_kind, seed=0):
    """Contiguous valid arguments of ``name`` for one SHAPES entry (written ones included)."""
    arrays, _ = SPECS[name]
    dims = SHAPES[shape_kind]
    rng = np.random.default_rng(seed)
    args = {}
    for arg, sym in arrays.items():
        shape = tuple(dims[s] for s in sym)
        if arg == "labels":
            value = rng.integers(0, dims["m"], size=shape)
        elif arg == "targets":
            value = rng.uniform(size=shape)
        elif arg in ("v", "square_avg"):
            value = rng.uniform(1.0, 2.0, size=shape)  # above grad_avg**2: a real sqrt
        elif arg == "grad_avg":
            value = rng.uniform(-0.5, 0.5, size=shape)
        elif arg in ("a",) and "backward" in name and name != "linear_backward":
            value = rng.uniform(0.05, 0.95, size=shape)  # a saved activation output
        else:
            value = rng.normal(size=shape)
        if value.ndim == 2 and shape_kind == "rows_repeat":
            value = np.repeat(value[:1], shape[0], axis=0)
        elif value.ndim == 2 and shape_kind == "cols_repeat":
            value = np.repeat(value[:, :1], shape[1], axis=1)
        elif value.ndim == 1 and shape_kind.endswith("repeat"):
            value = np.repeat(value[:1], shape[0])
        args[arg] = value if arg == "labels" else value.astype(dtype)
    return args


def _plain(value):
    """A C-contiguous, native, plain copy of ``value``'s values."""
    if isinstance(value, np.ndarray):
        arr = np.array(np.asarray(value), order="C", copy=True)
        return arr.astype(arr.dtype.newbyteorder("=")) if not arr.dtype.isnative else arr
    return value


def _run(fn, name, kwargs):
    """Call ``fn``; return (result, the written state buffers) as plain arrays."""
    _, extra = SPECS[name]
    result = fn(**extra, **kwargs)
    state = [np.array(kwargs[s]) for s in STATE if s in kwargs]
    return result, state


def _expected(name, clean):
    """The reference on contiguous copies (nothing shared with the call)."""
    kw = {k: _plain(v) for k, v in clean.items() if k not in WRITTEN or k in STATE}
    return _run(getattr(R, name), name, kw)


def _flat(value):
    if isinstance(value, tuple):
        return [v for item in value for v in _flat(item)]
    if isinstance(value, list):
        return [v for item in value for v in _flat(item)]
    return [value]


def _assert_matches(got, want, name, dtype):
    scale = 16.0 if name in PRODUCTS else 4.0
    tol = TOL[np.dtype(dtype)]
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol["rtol"] * scale,
                                   atol=tol["atol"] * scale)


def _written_outcome(arg, arr):
    """The documented outcome of passing ``arr`` as the written argument ``arg``."""
    if isinstance(arr, np.ma.MaskedArray):
        return TypeError
    if not arr.dtype.isnative:
        return TypeError if arg in STATE else ValueError
    if not (arr.flags.c_contiguous and arr.flags.writeable and arr.flags.aligned):
        return ValueError
    return None


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_function_layouts(name, backend, tmp_path):
    """Every array argument of ``name`` in every layout, one at a time, both dtypes."""
    fn = getattr(BACKENDS[backend], name)
    failures = []
    for dtype, shape_kind in itertools.product((np.float32, np.float64), SHAPES):
        clean = _clean(name, dtype, shape_kind)
        want = _expected(name, clean)
        for arg in clean:
            for label, odd in odd_layouts(clean[arg], tmp_path):
                kw = {k: (v.copy() if k in STATE else v) for k, v in clean.items()
                      if k not in WRITTEN or k in STATE}
                before = np.array(odd) if not isinstance(odd, np.ma.MaskedArray) else None
                kw[arg] = odd
                if arg in WRITTEN:
                    expect = _written_outcome(arg, odd)
                else:
                    expect = LAYOUT_RAISES.get(label)
                where = f"{np.dtype(dtype).name} {shape_kind} {arg}={label}"
                try:
                    got = _run(fn, name, kw)
                except Exception as exc:  # noqa: BLE001 -- the outcome under test
                    if expect is None or not isinstance(exc, expect) or f"`{arg}`" not in str(
                            exc):
                        failures.append(f"{where}: {exc!r}")
                    continue
                if expect is not None:
                    failures.append(f"{where}: returned, expected {expect.__name__}")
                    continue
                try:
                    _assert_matches(got, want, name, dtype)
                    if arg in WRITTEN and arg not in STATE:
                        # The caller's buffer comes back, holding the result.
                        returned = [r for r in _flat(got[0]) if r is odd]
                        assert returned, "the given buffer is not what came back"
                    if arg in STATE:
                        assert got[0] is kw["param"], "the given param is not what came back"
                    if arg not in WRITTEN:
                        np.testing.assert_array_equal(np.array(odd), before,
                                                      err_msg="an input was written")
                except AssertionError as exc:
                    failures.append(f"{where}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


def _first_two_inputs(name):
    arrays, _ = SPECS[name]
    return [a for a in arrays if a not in WRITTEN and a != "labels"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(n for n in SPECS if len(_first_two_inputs(n)) >= 2))
def test_inputs_from_one_buffer(name, backend):
    """Two inputs cut from one buffer (``x`` and ``y`` of one matrix) read as two copies."""
    fn = getattr(BACKENDS[backend], name)
    for dtype, shape_kind in itertools.product((np.float32, np.float64), SHAPES):
        clean = _clean(name, dtype, shape_kind)
        want = _expected(name, clean)
        first, second = _first_two_inputs(name)[:2]
        kw = {k: (v.copy() if k in STATE else v) for k, v in clean.items()
              if k not in WRITTEN or k in STATE}
        kw[first], kw[second] = shared_buffer(clean[first], clean[second])
        _assert_matches(_run(fn, name, kw), want, name, dtype)


INPLACE = {"sigmoid_forward": "z", "relu_forward": "z", "tanh_forward": "z",
           "identity_forward": "z", "softmax_forward": "z", "sigmoid_backward": "grad",
           "relu_backward": "a", "tanh_backward": "grad", "identity_backward": "grad",
           "mse_loss_backward": "pred", "softmax_cross_entropy_backward": "logits",
           "sigmoid_binary_cross_entropy_backward": "targets"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(INPLACE))
def test_out_is_another_view_of_the_input(name, backend):
    """In place through a second view of the input's memory -- also one whose size-1
    dimension has another stride (the same elements: both twins must accept it)."""
    fn = getattr(BACKENDS[backend], name)
    arg = INPLACE[name]
    for dtype, shape_kind in itertools.product((np.float32, np.float64),
                                               ("one_row", "one_col", "rows_repeat")):
        clean = _clean(name, dtype, shape_kind)
        want = _expected(name, clean)
        for label, source in [("view", None)] + [
                (lab, v) for lab, v in odd_layouts(clean[arg])
                if lab.startswith("huge_stride") or lab == "one_row_of_big"]:
            kw = {k: v for k, v in clean.items() if k not in WRITTEN}
            inp = clean[arg].copy() if source is None else np.array(source, copy=True)
            if source is not None and label != "one_row_of_big":
                inp = np.lib.stride_tricks.as_strided(inp, strides=source.strides)
            elif label == "one_row_of_big":
                big = np.zeros((2000, inp.shape[1]), inp.dtype)
                big[0] = inp[0]
                inp = big[::2000]
            out = np.lib.stride_tricks.as_strided(inp, strides=np.empty_like(inp).strides)
            kw[arg], kw["out"] = inp, out
            got = _run(fn, name, kw)
            assert _flat(got[0])[-1] is out
            _assert_matches(got, want, name, dtype)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_legal_out_whose_overlap_numpy_finds_hard(backend):
    """A 4-D strided input and an ``out`` in the same buffer but apart: with a small
    budget ``np.shares_memory`` raises ``TooHardError`` here, which escaped before."""
    base = np.zeros(10 ** 6)
    rng = np.random.default_rng(5)
    z = np.lib.stride_tricks.as_strided(base, shape=(7, 3, 2, 5),
                                        strides=tuple(8 * s for s in (2737, 405, 2297, 2775)))
    z[...] = rng.normal(size=z.shape)
    out = base[7356:7356 + 210].reshape(7, 3, 2, 5)
    with pytest.raises(np.exceptions.TooHardError):
        np.shares_memory(out, z, max_work=1000)
    assert not np.shares_memory(out, z)
    expected = R.relu_forward(np.array(z))
    assert BACKENDS[backend].relu_forward(z, out=out) is out
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------
# MLP entries, the estimators and distributed.fit
# ---------------------------------------------------------------------------

def _mlp(backend, loss="mse", n_out=1, dtype=np.float64):
    kw = dict(output_activation="sigmoid") if loss == "binary_cross_entropy" else {}
    return MLP([2, 3, n_out], activation="tanh", loss=loss, dtype=dtype, seed=3,
               backend=backend, **kw)


def _data(n, loss, dtype=np.float64, n_out=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(n, n_out)).astype(dtype)
    else:
        y = rng.normal(size=(n, n_out)).astype(dtype)
    return x, y


ENTRIES = ["fit_shuffle", "fit_ordered", "fit_weighted", "train_step", "train_step_adam",
           "evaluate", "loss_and_grads", "predict"]


def _entry(net, entry, x, y, w):
    """Run one MLP entry; return what it computed (and the parameters after it)."""
    if entry.startswith("fit"):
        net.fit(x, y, epochs=2, batch_size=2, lr=0.05, momentum=0.5,
                shuffle=entry == "fit_shuffle", seed=1,
                sample_weight=w if entry == "fit_weighted" else None)
        return [net.parameters.copy()]
    if entry.startswith("train_step"):
        adam = entry == "train_step_adam"
        loss = net.train_step(x, y, lr=0.05, optimizer="adam" if adam else "sgd",
                              sample_weight=w if adam else None)
        return [np.float64(loss), net.parameters.copy()]
    if entry == "evaluate":
        return [np.float64(net.evaluate(x, y))]
    if entry == "loss_and_grads":
        loss, grads = net.loss_and_grads(x, y, sample_weight=w)
        return [np.float64(loss), *[np.array(g) for g in _flat(grads)]]
    return [net.predict(x)]


def _mlp_failures(backend, loss, n_out, n, dtype, tmp_path):
    failures = []
    x, y = _data(n, loss, dtype, n_out=n_out)
    w = np.random.default_rng(7).uniform(0.5, 1.5, size=n).astype(dtype)
    args = {"x": x, "y": y, "sample_weight": w}
    for entry in ENTRIES:
        want = _entry(_mlp(backend, loss, n_out, dtype), entry, x, y, w)
        used = ["x"] + ([] if entry == "predict" else ["y"])
        used += ["sample_weight"] if entry in ("fit_weighted", "train_step_adam",
                                               "loss_and_grads") else []
        for arg in used:
            for label, odd in odd_layouts(args[arg], tmp_path):
                kw = dict(args, **{arg: odd})
                where = f"{loss} n={n} {entry} {arg}={label}"
                try:
                    got = _entry(_mlp(backend, loss, n_out, dtype), entry, kw["x"], kw["y"],
                                 kw["sample_weight"])
                except Exception as exc:  # noqa: BLE001 -- the outcome under test
                    expect = LAYOUT_RAISES.get(label)
                    if expect is None or not isinstance(exc, expect) or f"`{arg}`" not in str(
                            exc):
                        failures.append(f"{where}: {exc!r}")
                    continue
                if LAYOUT_RAISES.get(label):
                    failures.append(f"{where}: returned, expected a TypeError")
                    continue
                for g, e in zip(got, want):
                    if backend == "compiled":  # bitwise: the same batches, the same code
                        if not np.array_equal(g, e):
                            failures.append(f"{where}: differs by {np.max(np.abs(g - e))}")
                            break
                    elif not np.allclose(g, e, **TOL[np.dtype(dtype)]):
                        failures.append(f"{where}: differs by {np.max(np.abs(g - e))}")
                        break
        if entry.startswith("fit") or entry == "loss_and_grads":
            # x and y cut from one buffer.
            if loss != "cross_entropy":
                xs, ys = shared_buffer(x, y)
                got = _entry(_mlp(backend, loss, n_out, dtype), entry, xs, ys, w)
                if not all(np.array_equal(g, e) if backend == "compiled"
                           else np.allclose(g, e, **TOL[np.dtype(dtype)])
                           for g, e in zip(got, want)):
                    failures.append(f"{loss} n={n} {entry}: x, y from one buffer differ")
    return failures


# (loss, outputs, rows, dtype); float32 with 2 outputs and 1 row is the reported
# np.ones((100000, 2), np.float32)[::100000] target.
MLP_CASES = [("mse", 1, 1, np.float64), ("mse", 1, 5, np.float64), ("mse", 2, 1, np.float32),
             ("cross_entropy", 3, 1, np.float64), ("cross_entropy", 3, 5, np.float32),
             ("binary_cross_entropy", 1, 5, np.float64)]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("loss,n_out,n,dtype", MLP_CASES, ids=[
    f"{a}-out{b}-n{c}-{np.dtype(d).name}" for a, b, c, d in MLP_CASES])
def test_mlp_layouts(backend, loss, n_out, n, dtype, tmp_path):
    """Every MLP entry with x, y and sample_weight in every layout (one row: n = 1;
    one column: y of a one-output model), against the same call on contiguous copies."""
    failures = _mlp_failures(backend, loss, n_out, n, dtype, tmp_path)
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} failures)"


# The drop-ins validate as scikit-learn does (check_array): np.matrix is its TypeError,
# and a masked array is converted by it (mask dropped) before bpcore sees it.
SKLEARN_RAISES = {"matrix": TypeError}
_UNDER_SANITIZER = "asan" in os.environ.get("LD_PRELOAD", "")


def test_estimators_layouts(tmp_path):
    """scikit-learn drop-ins: fit and predict on odd layouts = on contiguous copies."""
    import_oracle("sklearn")
    from bpcore.sklearn import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2))
    targets = {"regressor": rng.normal(size=(6, 1)), "classifier": np.array([0, 1, 2] * 2)}
    failures = []
    for kind, est_cls in (("regressor", MLPRegressor), ("classifier", MLPClassifier)):
        y = targets[kind]

        def fit_predict(xx, yy, x_pred):
            est = est_cls(hidden_layer_sizes=(3,), max_iter=3, batch_size=2, random_state=0,
                          solver="sgd", learning_rate_init=0.05)
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(xx, yy)
            return [*est.coefs_, *est.intercepts_, est.predict(x_pred)]

        want = fit_predict(x, y, x[:1])
        for arg, value in (("x", x), ("y", y), ("x_pred", x[:1])):
            for label, odd in odd_layouts(value, tmp_path):
                if label == "misaligned" and _UNDER_SANITIZER:
                    # NOTE: bpcore.sklearn hands scikit-learn's (still misaligned) array
                    # to the training core, whose row checks do not look at alignment:
                    # a misaligned load UBSan aborts on (x86 computes it right, so the
                    # plain run keeps the case).  Reported; drop this once _step checks.
                    continue
                kw = dict(xx=x, yy=y, x_pred=x[:1])
                kw[{"x": "xx", "y": "yy", "x_pred": "x_pred"}[arg]] = odd
                try:
                    got = fit_predict(**kw)
                except Exception as exc:  # noqa: BLE001
                    if not (label in SKLEARN_RAISES and isinstance(exc, SKLEARN_RAISES[label])):
                        failures.append(f"{kind} {arg}={label}: {exc!r}")
                    continue
                if label in SKLEARN_RAISES:
                    failures.append(f"{kind} {arg}={label}: returned")
                elif not all(np.array_equal(np.asarray(g), np.asarray(e))
                           for g, e in zip(got, want)):
                    failures.append(f"{kind} {arg}={label}: differs")
    assert not failures, "\n".join(failures)


def test_distributed_fit_layouts(tmp_path):
    """distributed.fit on one rank (a singleton, no mpiexec) with odd x and y layouts."""
    import_oracle("mpi4py")
    from bpcore import distributed

    x, y = _data(5, "mse")
    x1, y1 = _data(1, "mse")

    def run(xx, yy):
        net = _mlp("compiled")
        distributed.fit(net, xx, yy, epochs=2, batch_size=2, lr=0.05, seed=1)
        return net.parameters.copy()

    failures = []
    for xs, ys in ((x, y), (x1, y1)):
        want = run(xs, ys)
        for arg in ("x", "y"):
            for label, odd in odd_layouts(xs if arg == "x" else ys, tmp_path):
                try:
                    got = run(odd if arg == "x" else xs, odd if arg == "y" else ys)
                except Exception as exc:  # noqa: BLE001
                    if not (label in LAYOUT_RAISES and isinstance(exc, LAYOUT_RAISES[label])
                            and f"`{arg}`" in str(exc)):
                        failures.append(f"n={xs.shape[0]} {arg}={label}: {exc!r}")
                    continue
                if label in LAYOUT_RAISES:
                    failures.append(f"n={xs.shape[0]} {arg}={label}: returned")
                elif not np.array_equal(got, want):
                    failures.append(f"n={xs.shape[0]} {arg}={label}: differs")
    assert not failures, "\n".join(failures)
