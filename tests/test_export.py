"""bpcore.export: ONNX export (against onnxruntime), PyTorch import/export (bitwise),
skl2onnx registration of bpcore.sklearn's estimators, and MLP.predict's ``out=``."""
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import import_oracle, layout, odd_layouts, run_python

from bpcore import MLP
from bpcore import export
from bpcore.nn import ACTIVATIONS, OUTPUT_ACTIVATIONS

DTYPES = ["float32", "float64"]
# The agreement promised with onnxruntime and PyTorch (issue 16): relative to the
# output's scale, so that an output near 0 is judged against its neighbours.
RTOL = {"float32": 1e-6, "float64": 1e-12}
# The output activations with the loss that goes with them.
OUTPUTS = [(act, {"softmax": "cross_entropy"}.get(act, "mse")) for act in OUTPUT_ACTIVATIONS]
OUTPUTS.append(("sigmoid", "binary_cross_entropy"))
# onnxruntime's CPU provider has no float64 Erf, which exact GELU needs: there the
# graph is run by onnx's own reference evaluator instead, with an Erf in float64
# (onnx.reference's own rounds erf to float32).
ORT_GAPS = {("gelu", "float64")}


def assert_rel(got, want, dtype):
    want = np.asarray(want)
    scale = max(float(np.abs(want).max()), np.finfo(want.dtype).tiny) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def run_onnx(model, x, gap=False):
    """The model's output for x: onnxruntime, or onnx.reference where ORT has no kernel."""
    if gap:
        import math

        reference = import_oracle("onnx.reference")
        from onnx.reference.ops._op import OpRunUnaryNum

        erf = np.vectorize(math.erf, otypes=[np.float64])

        class Erf(OpRunUnaryNum):
            def _run(self, z):
                return (erf(z).astype(z.dtype),)

        class Gelu(OpRunUnaryNum):  # the operator's definition (opset 20)
            def _run(self, z, approximate="none"):
                if approximate == "tanh":
                    s = np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))
                else:
                    s = erf(z / math.sqrt(2))
                return ((0.5 * z * (1 + s)).astype(z.dtype),)

        evaluator = reference.ReferenceEvaluator(model, new_ops=[Erf, Gelu])
        return evaluator.run(None, {export.INPUT_NAME: x})[0]
    ort = import_oracle("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {export.INPUT_NAME: x})[0]


def inputs(net, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, net.layer_sizes[0])).astype(net.dtype)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.itemsize])


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------

def test_every_activation_the_mlp_accepts_is_exportable():
    missing = [a for a in OUTPUT_ACTIVATIONS if a not in export._ONNX_ACTIVATIONS
               or a not in export._TORCH_ACTIVATIONS]
    assert not missing, f"add rows for {missing} to bpcore/export.py's tables"


@pytest.mark.parametrize("opset", [13, 20])
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_onnx_row_computes_its_torch_module(dtype, opset):
    # Every row of both tables, also those of activations the MLP does not accept yet:
    # the ONNX row on z equals the torch.nn module the torch table builds.
    onnx = import_oracle("onnx")
    torch = import_oracle("torch")
    z = np.linspace(-30, 30, 241).astype(dtype).reshape(1, -1)
    for name, build in export._ONNX_ACTIVATIONS.items():
        g = export._Graph(onnx, dtype, opset)
        out = build(g, export.INPUT_NAME, {})
        g.op("Identity", out)
        g.nodes[-1].output[0] = export.OUTPUT_NAME
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        graph = onnx.helper.make_graph(
            g.nodes, name, [onnx.helper.make_tensor_value_info("x", elem, [1, z.shape[1]])],
            [onnx.helper.make_tensor_value_info("y", elem, [1, z.shape[1]])],
            initializer=g.initializers)
        opsets = [onnx.helper.make_opsetid("", opset)]
        model = onnx.helper.make_model(graph, opset_imports=opsets,
                                       ir_version=onnx.helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(model)
        cls, attrs = export._TORCH_ACTIVATIONS[name]
        module = getattr(torch.nn, cls)(**{k: v[0] for k, v in attrs.items()})
        with torch.no_grad():
            want = module(torch.from_numpy(z)).numpy()
        got = run_onnx(model, z, gap=(name, dtype) in ORT_GAPS)
        # NOTE: Softplus: torch returns z itself past its threshold 20, ONNX log(1 + e^z)
        # (2e-9 apart there); exp(z) - 1 for ELU and log(1 + e) for softplus in float64
        # lose relative accuracy only near 0, within the output-scale tolerance.
        tol = 5e-6 if dtype == "float32" else (1e-8 if name == "softplus" else 1e-12)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


# ---------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------

def every_output_and_dtype(test):
    return pytest.mark.parametrize("dtype", DTYPES)(pytest.mark.parametrize(
        "output,loss", OUTPUTS, ids=[f"{a}-{l}" for a, l in OUTPUTS])(test))


def every_hidden_activation(output, loss, dtype):
    """A 5-7-6-3 model per hidden activation the MLP accepts, with this output."""
    for hidden in ACTIVATIONS:
        yield MLP([5, 7, 6, 3], activation=hidden, output_activation=output, loss=loss,
                  dtype=dtype, seed=1)


@every_output_and_dtype
def test_onnx_equals_predict(output, loss, dtype):
    onnx = import_oracle("onnx")
    for net in every_hidden_activation(output, loss, dtype):
        model = net.to_onnx()
        onnx.checker.check_model(model, full_check=True)
        gap = any((a, dtype) in ORT_GAPS for a in net.activations)
        for n in (1, 7):  # one dynamic batch dimension
            x = inputs(net, n, seed=n)
            got = run_onnx(model, x, gap)
            assert got.dtype == net.dtype and got.shape == (n, 3)
            assert_rel(got, net.predict(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_onnx_graph_interface(dtype):
    onnx = import_oracle("onnx")
    net = MLP([4, 3, 2], activation=["tanh"], loss="cross_entropy", dtype=dtype, seed=0)
    model = export.to_onnx(net)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for value, width in ((model.graph.input[0], 4), (model.graph.output[0], 2)):
        tensor = value.type.tensor_type
        assert tensor.elem_type == elem
        assert [d.dim_param or d.dim_value for d in tensor.shape.dim] == ["batch", width]
    assert [v.name for v in model.graph.input] == ["x"]
    assert [v.name for v in model.graph.output] == ["y"]
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Tanh", "Gemm", "Softmax",
                                                      "Identity"]
    assert model.opset_import[0].version == export.DEFAULT_OPSET
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for l, (w, b) in enumerate(zip(net.weights, net.biases)):  # copied bit for bit
        np.testing.assert_array_equal(bits(weights[f"W_{l}"]), bits(w))
        np.testing.assert_array_equal(bits(weights[f"b_{l}"]), bits(b))


def test_onnx_opsets_and_path(tmp_path):
    onnx = import_oracle("onnx")
    net = MLP([3, 4, 2], activation="relu", seed=0)
    x = inputs(net, 5)
    newest = onnx.defs.onnx_opset_version()
    for opset in (13, 20):
        model = net.to_onnx(opset=opset)
        assert model.opset_import[0].version == opset
        assert_rel(run_onnx(model, x), net.predict(x), "float32")
    onnx.checker.check_model(net.to_onnx(opset=newest))
    for path in (tmp_path / "a.onnx", str(tmp_path / "b.onnx")):
        model = net.to_onnx(path)
        assert onnx.load(path).SerializeToString() == model.SerializeToString()
    with pytest.raises(ValueError, match="`opset` must be >= 13"):
        net.to_onnx(opset=12)
    with pytest.raises(ValueError, match=f"`opset` must be <= {newest}"):
        net.to_onnx(opset=newest + 1)
    with pytest.raises(TypeError, match="`opset` must be an integer"):
        net.to_onnx(opset="17")
    with pytest.raises(TypeError, match="`path` must be a str or os.PathLike"):
        net.to_onnx(3)
    with pytest.raises(TypeError, match="`net` must be a bpcore.MLP"):
        export.to_onnx(object())


def test_missing_optional_dependencies_are_one_line():
    out = run_python("""
        import sys
        for name in ("onnx", "torch", "skl2onnx"):
            sys.modules[name] = None  # as if not installed
        import bpcore, bpcore.export
        net = bpcore.MLP([2, 1])
        for call in (net.to_onnx, net.to_torch, bpcore.export.register_skl2onnx):
            try:
                call()
            except ImportError as exc:
                print(repr(str(exc)), exc.__cause__, exc.__suppress_context__)
    """)
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert "pip install 'bpcore[onnx]'" in lines[0]
    assert "pip install torch" in lines[1] and "pip install skl2onnx" in lines[2]
    assert all(line.endswith("None True") and "\\n" not in line for line in lines)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

@every_output_and_dtype
def test_torch_round_trips_bitwise(output, loss, dtype):
    torch = import_oracle("torch")
    for net in every_hidden_activation(output, loss, dtype):
        module = net.to_torch()
        back = MLP.from_torch(module, loss=loss)
        assert back.activations == net.activations and back.dtype == net.dtype
        np.testing.assert_array_equal(bits(back.parameters), bits(net.parameters))
        again = back.to_torch()
        for (k, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items()):
            assert a.dtype == getattr(torch, dtype)
            assert torch.equal(a.view(torch.int32 if dtype == "float32" else torch.int64),
                               b.view(torch.int32 if dtype == "float32" else torch.int64)), k
        x = inputs(net, 7)
        with torch.inference_mode():
            got = module(torch.from_numpy(x)).numpy()
        assert_rel(got, net.predict(x), dtype)


# Non-default parameters of every parametrised activation (MLP's activation_options).
OPTIONS = {"leaky_relu": {"negative_slope": 0.3}, "elu": {"alpha": 0.5},
           "softplus": {"beta": 2.0, "threshold": 3.0}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(OPTIONS))
def test_activation_options_reach_onnx_and_torch(act, dtype):
    torch = import_oracle("torch")
    net = MLP([5, 7, 6, 3], activation=act, activation_options=OPTIONS[act], dtype=dtype,
              seed=2)
    x = inputs(net, 9) * 3  # past softplus's threshold too
    want = net.predict(x)
    assert_rel(run_onnx(net.to_onnx(), x), want, dtype)
    module = net.to_torch()
    with torch.inference_mode():
        assert_rel(module(torch.from_numpy(x)).numpy(), want, dtype)
    back = MLP.from_torch(module)
    assert back.activation_options == OPTIONS[act]
    np.testing.assert_array_equal(back.predict(x), want)
    default = MLP([5, 7, 6, 3], activation=act, dtype=dtype, seed=2)
    assert not np.allclose(default.predict(x), want)  # the options matter on these inputs


def test_from_torch_reads_a_torch_built_model():
    torch = import_oracle("torch")
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                           nn.Linear(5, 3), nn.Softmax(dim=1))
    net = MLP.from_torch(module)
    assert net.layer_sizes == [4, 6, 5, 3] and net.loss == "cross_entropy"
    assert net.activations == ["tanh", "relu", "softmax"] and net.dtype == np.float32
    np.testing.assert_array_equal(net.weights[0], module[0].weight.detach().numpy().T)
    np.testing.assert_array_equal(net.biases[1], np.zeros(5, np.float32))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with torch.inference_mode():
        assert_rel(net.predict(x), module(torch.from_numpy(x)).numpy(), "float32")
    # The model owns copies: training one side leaves the other alone.
    with torch.no_grad():
        module[0].weight.add_(1.0)
    assert not np.array_equal(net.weights[0], module[0].weight.detach().numpy().T)

    class Sub(MLP):
        pass

    assert type(Sub.from_torch(module)) is Sub
    assert MLP.from_torch(nn.Sequential(nn.Linear(3, 2).double())).dtype == np.float64


def test_to_torch_leaves_the_torch_random_state_alone():
    torch = import_oracle("torch")
    before = torch.random.get_rng_state()
    MLP([30, 20, 10], seed=0).to_torch()
    assert torch.equal(torch.random.get_rng_state(), before)


def test_from_torch_names_the_first_unsupported_module():
    torch = import_oracle("torch")
    nn = torch.nn
    cases = [
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2)),
         r"`module`\[1\] \(torch\.nn\.modules\.activation\.ReLU6\) is not supported"),
        (nn.Sequential(nn.Conv1d(1, 1, 1), nn.Linear(3, 2)), r"`module`\[0\] .*Conv1d"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
         r"`module`\[1\] .*Softmax\) is not supported as a hidden activation"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 4), nn.LeakyReLU(0.3),
                       nn.Linear(4, 2)),
         r"`module`\[3\] .*LeakyReLU\) has negative_slope=0.3.*earlier module has "
         r"negative_slope=0.2"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)), r"`module`\[1\] .*Softmax"),
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.ReLU(), nn.Linear(4, 2)),
         r"`module`\[2\] .*ReLU\) must follow an nn.Linear"),
        (nn.Sequential(nn.Tanh(), nn.Linear(4, 2)), r"`module`\[0\] .*Tanh\) must follow"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)),
         r"`module`\[1\] .*in_features=5 but the layer before gives 4"),
        (nn.Sequential(nn.Linear(3, 4).half()), r"`module`\[0\] .*float16"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2).double()),
         r"`module`\[1\] .*float64 but the first layer has torch.float32"),
        (nn.Sequential(), "empty"),
    ]
    for module, message in cases:
        with pytest.raises(ValueError, match=message):
            MLP.from_torch(module)
    with pytest.raises(TypeError, match="`module` must be a torch.nn.Sequential"):
        MLP.from_torch(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="`net` must be a bpcore.MLP"):
        export.to_torch(nn.Linear(3, 2))


# ---------------------------------------------------------------------------
# skl2onnx
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = import_oracle("sklearn.datasets")
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    return x[:240], y[:240]


def _fit(est, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after the few epochs asked
        return est.fit(x, y)


@pytest.mark.parametrize("in_pipeline", [False, True], ids=["alone", "pipeline"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_skl2onnx_converts_both_estimators(digits, dtype, in_pipeline):
    skl2onnx = import_oracle("skl2onnx")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bpcore.sklearn import MLPClassifier, MLPRegressor

    export.register_skl2onnx()
    x, y = digits
    x = x.astype(dtype)
    wrap = (lambda est: make_pipeline(StandardScaler(), est)) if in_pipeline else (lambda e: e)
    clf = _fit(wrap(MLPClassifier((12,), max_iter=8, random_state=0)), x, y)
    reg = _fit(wrap(MLPRegressor(hidden_layer_sizes=(12,), max_iter=8, random_state=0)), x, y / 10.0)
    rows = x[:17]
    model = skl2onnx.to_onnx(clf, x[:1], options={MLPClassifier: {"zipmap": False}})
    labels, proba = run_onnx_named(model, rows)
    np.testing.assert_array_equal(labels, clf.predict(rows))
    assert_rel(proba, clf.predict_proba(rows), dtype if not in_pipeline else "float32")
    pred = run_onnx_named(skl2onnx.to_onnx(reg, x[:1]), rows)[0]
    assert_rel(pred.ravel(), reg.predict(rows), dtype if not in_pipeline else "float32")
    if dtype == "float32":  # skl2onnx's default output, a ZipMap, takes float32 only
        zipped = run_onnx_named(skl2onnx.to_onnx(clf, x[:1]), rows[:2])[1]
        assert sorted(zipped[0]) == list(range(10))


def run_onnx_named(model, x):
    ort = import_oracle("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_skl2onnx_registration_whatever_the_import_order(digits, monkeypatch):
    # A fresh interpreter: skl2onnx imported after the fit does not know the model
    # (the explicit call is for that order); unpickling it then registers.
    out = run_python("""
        import pickle, warnings
        import numpy as np
        warnings.simplefilter("ignore")
        from bpcore.sklearn import MLPClassifier
        import bpcore.export
        x = np.random.default_rng(0).standard_normal((30, 4)); y = np.arange(30) % 3
        est = MLPClassifier((5,), max_iter=3, random_state=0).fit(x, y)
        import skl2onnx
        try:
            skl2onnx.to_onnx(est, x[:1])
        except Exception as exc:
            print(bpcore.export._registered, type(exc).__name__)
        est = pickle.loads(pickle.dumps(est))
        print(bpcore.export._registered, len(skl2onnx.to_onnx(est, x[:1]).graph.node) > 0)
    """, timeout=240)
    assert out.split() == ["False", "MissingShapeCalculator", "True", "True"]
    # Here skl2onnx is imported: a fit registers.
    import_oracle("skl2onnx")
    from bpcore.sklearn import MLPRegressor

    monkeypatch.setattr(export, "_registered", False)
    x, y = digits
    _fit(MLPRegressor(hidden_layer_sizes=(3,), max_iter=1), x[:20], y[:20])
    assert export._registered
    export.register_skl2onnx()  # idempotent


# ---------------------------------------------------------------------------
# predict(x, out=)
# ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_into_out(dtype, backend):
    net = MLP([6, 8, 4], loss="cross_entropy", dtype=dtype, seed=0, backend=backend)
    for n in (1, 32, 0):
        x = inputs(net, n)
        want = net.predict(layout(x, "strided"))  # the general path, a new array
        out = np.full((n, 4), np.nan, dtype)
        assert net.predict(x, out=out) is out  # the fast path
        np.testing.assert_array_equal(out, want)
        out[...] = np.nan
        assert net.predict(layout(x, "fortran"), out=out) is out  # the general path into out
        np.testing.assert_array_equal(out, want)
        assert net.forward(x, out) is out
    # x in every other layout goes through the general path; out works the same
    x = inputs(net, 1)
    want = net.predict(x)
    for name, view in odd_layouts(x):
        if name == "masked":
            continue
        out = np.empty((1, 4), dtype)
        assert net.predict(view, out) is out, name
        np.testing.assert_array_equal(out, want, err_msg=name)
    # an out of a subclass is written through a view of its memory and returned itself
    out = layout(np.zeros((1, 4), dtype), "matrix")
    assert net.predict(x, out=out) is out
    np.testing.assert_array_equal(np.asarray(out), want)


def test_predict_refuses_a_bad_out_naming_it():
    net = MLP([6, 8, 4], dtype="float32", seed=0)
    x = inputs(net, 3)
    good = np.empty((3, 4), np.float32)
    bad = {
        "wrong shape": (np.empty((3, 5), np.float32), ValueError, "`out` must have shape"),
        "one row short": (np.empty((2, 4), np.float32), ValueError, "`out` must have shape"),
        "wrong dtype": (np.empty((3, 4)), ValueError, "`out` must have dtype float32"),
        "byte-swapped": (layout(good, "byteswapped"), ValueError, "`out` must have dtype"),
        "strided": (layout(good, "strided"), ValueError, "`out` must be C-contiguous"),
        "fortran": (layout(good, "fortran"), ValueError, "`out` must be C-contiguous"),
        "read-only": (layout(good, "read_only"), ValueError, "`out` is read-only"),
        "misaligned": (layout(good, "misaligned"), ValueError, "`out` is not aligned"),
        "masked": (layout(good, "masked"), TypeError, "`out` is a masked array"),
        "a list": ([[0.0] * 4] * 3, ValueError, "`out` must be a NumPy array"),
    }
    for case, (out, exc, message) in bad.items():
        for rows in (x, x.tolist()):  # the fast path's input and the general path's
            with pytest.raises(exc, match=message):
                net.predict(rows, out=out)
    # out overlapping x: refused (the core would write what it still reads)
    block = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match="`out` overlaps the input `x`"):
        net.predict(block, out=block.reshape(-1)[:12].reshape(3, 4))
    square = MLP([4, 4], dtype="float32", seed=0)
    x = inputs(square, 2)
    with pytest.raises(ValueError, match="`out` overlaps the input `x`"):
        square.predict(x, out=x)
    # the core's own C check, which predict's fast path relies on
    with pytest.raises(ValueError, match="`out` must not overlap `x`"):
        square.core.forward(square.parameters, x, x)
    with pytest.raises(ValueError, match="`out` must not overlap `x`"):
        net.core.forward(net.parameters, block, block.reshape(-1)[:12].reshape(3, 4))


def _peak_bytes(call):
    """The fewest bytes a call of ``call()`` holds at its peak beyond what it returns."""
    for _ in range(5):
        call()
    tracemalloc.start()
    try:
        peaks = []
        for _ in range(30):
            current = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            call()
            peaks.append(tracemalloc.get_traced_memory()[1] - current)
    finally:
        tracemalloc.stop()
    return min(peaks)


@pytest.mark.parametrize("sizes", [[64, 64, 10], [64, 10]])
def test_one_row_predict_allocates_nothing_of_its_own(sizes):
    # predict adds no Python-level allocation to the core's forward (which
    # allocates its hidden layers' buffers itself, for thread safety) beyond the
    # result: none with out=, one (1, n_out) array without.
    net = MLP(sizes, loss="cross_entropy", dtype="float32", seed=0)
    x = inputs(net, 1)
    out = np.empty((1, sizes[-1]), np.float32)
    params = net.parameters
    core = net.core.forward(params, x, out) is out and _peak_bytes(
        lambda: net.core.forward(params, x, out))
    assert _peak_bytes(lambda: net.predict(x, out=out)) <= core
    result = np.empty((1, sizes[-1]), np.float32)
    assert _peak_bytes(lambda: net.predict(x)) <= core + result.nbytes + 200
