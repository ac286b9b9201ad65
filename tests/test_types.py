"""The type stubs of bpcore's top level and of ``MLP`` (``__init__.pyi``, ``nn.pyi``).

Two checks: mypy, run on a small user script, reveals the promised types
(never ``Any`` where a type is promised) and catches typos and wrong
arguments; and every signature in the two stubs matches the runtime object's
``inspect.signature`` (names, kinds, defaults), every re-export names the module
the runtime object really comes from, and every public name is declared.
(The compiled modules' own stubs are checked by ``mypy.stubtest`` in CI.)
"""
import ast
import importlib
import inspect
import os
import re
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import bpcore
from bpcore import MLP

PACKAGE = Path(bpcore.__file__).resolve().parent

# mypy in a subprocess: in CI (CI=true) and with --runslow; not in a plain local
# `pytest`, nor in the sanitizer rerun (.ci/sanitize).
pytestmark = pytest.mark.slow

# Changes the stub already describes and the runtime does not have yet:
# (qualified name, parameter), or (name, None) for a whole method.  The test
# fails when an entry is no longer a difference: then delete it.
PENDING = set()

# ---------------------------------------------------------------------------
# mypy on a user script
# ---------------------------------------------------------------------------

ARRAY = r"numpy\.ndarray\[.*, numpy\.dtype\[numpy\.floating\[Any\]\]\]"
MLP_T = r"bpcore\.nn\.MLP"

SETUP = """\
import numpy as np
import bpcore

x = np.ones((4, 3), np.float32)
y = np.ones((4, 2), np.float32)
w = np.ones((3, 2), np.float32)
b = np.zeros(2, np.float32)
labels = np.zeros(4, np.int64)
z = np.array([0.3, -1.2])
net = bpcore.MLP([3, 2], activation="tanh", loss="mse", dtype=np.float32, seed=0)
"""

# (expression, the regular expression its revealed type must match in full)
REVEALS = [
    ("bpcore.matmul(x, w, trans_a=False, alpha=2.0)", ARRAY),
    ("bpcore.relu_forward(x)", ARRAY),
    ("bpcore.sigmoid_backward(x, x, out=x)", ARRAY),
    ("bpcore.linear_forward(x, w, b)", ARRAY),
    ("bpcore.linear_backward(x, w, y)", rf"tuple\[{ARRAY} \| None, {ARRAY}, {ARRAY}\]"),
    ("bpcore.mse_loss(x, x)", "float"),
    ("bpcore.softmax_cross_entropy_and_grad(x, labels)", rf"tuple\[float, {ARRAY}\]"),
    ("bpcore.sgd_update(w, w, lr=0.1)", ARRAY),
    ("bpcore.gradcheck(lambda v: bpcore.sigmoid_forward(v).sum(), [z], [z])", "bool"),
    ("bpcore.numerical_gradient(lambda v: float(v.sum()), [z])",
     r"list\[numpy\.ndarray\[.*, numpy\.dtype\[numpy\.float64\]\]\]"),
    ("bpcore.backend_of('matmul')", r"Literal\['compiled'\] \| Literal\['reference'\]"),
    ("bpcore.get_include()", r"list\[str\]"),
    ("bpcore.get_num_threads()", "int"),
    ("bpcore.__version__", "str"),
    ("net", MLP_T),
    ("net.fit(x, y, epochs=2, batch_size=2, lr=0.1, momentum=0.9, seed=1)",
     r"dict\[str, list\[float\]\]"),
    ("net.fit(x, y)", r"dict\[str, list\[float\]\]"),
    ("net.train_step(x, y, lr=0.1)", "float"),
    ("net.predict(x)", ARRAY),
    ("net.forward(x)", ARRAY),
    ("net.score(x, y)", "float"),
    ("net.evaluate(x, y)", "float"),
    ("net.loss_and_grads(x, y, sample_weight=[1, 1, 1, 1])",
     rf"tuple\[float, tuple\[list\[{ARRAY}\], list\[{ARRAY}\]\]\]"),
    ("net.weights", rf"list\[{ARRAY}\]"),
    ("net.biases[0]", ARRAY),
    ("net.parameters", ARRAY),
    ("net.n_params", "int"),
    ("net.layer_sizes", r"list\[int\]"),
    ("net.dtype", r"numpy\.dtype\[Any\]"),
    ("net.save('m.npz')", "None"),
    ("bpcore.MLP.load('m.npz')", MLP_T),
    ("bpcore.MLP.from_arrays([w], [b], loss='mse')", MLP_T),
]

# (a line that must be an error, its mypy error code)
ERRORS = [
    ("bpcore.relu_fowrard(x)", "attr-defined"),
    ("net.fit(x, y, epochs='3')", "arg-type"),
    ("net.predict()", "call-arg"),
    ("bpcore.MLP([3, 2], loss='mse2')", "arg-type"),
    ("total: int = net.score(x, y)", "assignment"),
]


def _mypy_env():
    """MYPYPATH pointing at the bpcore under test, unless mypy finds it installed anyway."""
    env = dict(os.environ)
    root = str(PACKAGE.parent)
    installed = set(site.getsitepackages()) | {sysconfig.get_paths()[k] for k in
                                               ("purelib", "platlib")}
    # mypy refuses a site-packages directory in MYPYPATH; it searches it itself.
    if not any(os.path.exists(p) and os.path.samefile(root, p) for p in installed):
        env["MYPYPATH"] = root
    else:
        env.pop("MYPYPATH", None)
    return env


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory):
    """{line number: [(kind, message)]} of mypy on the user script, and the script's lines."""
    work = tmp_path_factory.mktemp("types")
    lines = SETUP.splitlines()
    lines += [f"reveal_type({expr})" for expr, _ in REVEALS]
    lines += [f"reveal_type(bpcore.{name})" for name in bpcore.__all__]
    lines += [code for code, _ in ERRORS]
    (work / "user.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(work / "cache"),
         "--follow-imports=silent", "--no-error-summary", "--show-error-codes",
         "--hide-error-context", "--no-pretty", "user.py"],
        cwd=work, env=_mypy_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stdout + res.stderr   # 1: the expected errors
    found = {}
    for line in res.stdout.splitlines():
        m = re.match(r"user\.py:(\d+): (error|note): (.*)$", line)
        assert m, f"unexpected mypy output: {line!r}\n{res.stdout}"
        found.setdefault(int(m.group(1)), []).append((m.group(2), m.group(3)))
    return found, lines


def _revealed(found, lineno):
    notes = [m.group(1) for kind, msg in found.get(lineno, [])
             if kind == "note" and (m := re.fullmatch(r'Revealed type is "(.*)"', msg))]
    assert len(notes) == 1, f"no reveal_type note for line {lineno}: {found.get(lineno)}"
    return notes[0].replace("builtins.", "")


def test_mypy_reveals_the_promised_types(mypy_output):
    found, lines = mypy_output
    start = len(SETUP.splitlines()) + 1
    wrong = []
    for lineno, (expr, pattern) in enumerate(REVEALS, start):
        assert lines[lineno - 1] == f"reveal_type({expr})"
        errors = [msg for kind, msg in found.get(lineno, []) if kind == "error"]
        revealed = _revealed(found, lineno)
        if errors or revealed == "Any" or not re.fullmatch(pattern, revealed):
            wrong.append(f"{expr}: {revealed} {errors or ''} (promised: {pattern})")
    assert not wrong, "\n".join(wrong)


def test_mypy_sees_every_public_name(mypy_output):
    found, lines = mypy_output
    start = len(SETUP.splitlines()) + len(REVEALS) + 1
    wrong = []
    for lineno, name in enumerate(bpcore.__all__, start):
        assert lines[lineno - 1] == f"reveal_type(bpcore.{name})"
        errors = [msg for kind, msg in found.get(lineno, []) if kind == "error"]
        revealed = _revealed(found, lineno)
        # A function must come with its parameters' and return's types.
        if errors or "Any" == revealed or re.search(r"\) -> Any$|: Any[,)=]", revealed):
            wrong.append(f"bpcore.{name}: {revealed} {errors or ''}")
    assert not wrong, "\n".join(wrong)


def test_mypy_catches_mistakes_and_nothing_else(mypy_output):
    found, lines = mypy_output
    start = len(lines) - len(ERRORS) + 1
    for lineno, (code, error_code) in enumerate(ERRORS, start):
        errors = [msg for kind, msg in found.get(lineno, []) if kind == "error"]
        assert any(msg.endswith(f"[{error_code}]") for msg in errors), (code, errors)
    stray = {n: msgs for n, msgs in found.items() if n < start
             and any(kind == "error" for kind, _ in msgs)}
    assert not stray, {lines[n - 1]: msgs for n, msgs in stray.items()}


# ---------------------------------------------------------------------------
# The stubs against the runtime
# ---------------------------------------------------------------------------

def _stub(name):
    path = PACKAGE / name
    assert path.is_file(), f"{path} is missing (package-data ships *.pyi)"
    return ast.parse(path.read_text(encoding="utf-8"))


def _default(node):
    if node is None:
        return inspect.Parameter.empty
    value = ast.literal_eval(node)
    return value


def _stub_params(fn, drop_first):
    """[(name, kind, default)] of a stub FunctionDef, like inspect.Parameter's."""
    a = fn.args
    P = inspect.Parameter
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params = [(arg.arg, P.POSITIONAL_ONLY if i < len(a.posonlyargs) else
               P.POSITIONAL_OR_KEYWORD, _default(d))
              for i, (arg, d) in enumerate(zip(positional, defaults))]
    if a.vararg:
        params.append((a.vararg.arg, P.VAR_POSITIONAL, P.empty))
    params += [(arg.arg, P.KEYWORD_ONLY, _default(d)) for arg, d in zip(a.kwonlyargs,
                                                                        a.kw_defaults)]
    if a.kwarg:
        params.append((a.kwarg.arg, P.VAR_KEYWORD, P.empty))
    return params[1:] if drop_first else params


def _decorators(fn):
    return {d.id for d in fn.decorator_list if isinstance(d, ast.Name)}


def _differences(qualname, fn, runtime, static):
    """The (qualname, parameter) pairs where the stub ``fn`` and ``runtime`` disagree."""
    decorators = _decorators(fn)
    if "property" in decorators:
        return set() if isinstance(static, property) else {(qualname, "<property>")}
    if isinstance(static, (classmethod, staticmethod)) != bool(
            decorators & {"classmethod", "staticmethod"}):
        return {(qualname, "<method kind>")}
    stub = _stub_params(fn, drop_first="classmethod" in decorators)
    real = [(p.name, p.kind, p.default) for p in inspect.signature(runtime).parameters.values()]
    stub_by, real_by = {p[0]: p for p in stub}, {p[0]: p for p in real}
    diff = {(qualname, n) for n in stub_by.keys() ^ real_by.keys()}
    diff |= {(qualname, n) for n in stub_by.keys() & real_by.keys() if stub_by[n] != real_by[n]}
    order_stub = [p[0] for p in stub if p[0] in real_by]
    order_real = [p[0] for p in real if p[0] in stub_by]
    if order_stub != order_real:
        diff.add((qualname, "<order>"))
    return diff


def _check_namespace(body, runtime_ns, prefix, instance=None):
    """Differences between the stub statements ``body`` and the object ``runtime_ns``."""
    diff = set()
    for node in body:
        if isinstance(node, ast.FunctionDef):
            qual = prefix + node.name
            if node.name == "__getattr__":     # a stub device for a loosely typed twin
                continue
            static = inspect.getattr_static(runtime_ns, node.name, None)
            if static is None:
                diff.add((qual, None))
                continue
            diff |= _differences(qual, node, getattr(runtime_ns, node.name), static)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            holder = instance if instance is not None else runtime_ns
            if not hasattr(holder, node.target.id):
                diff.add((prefix + node.target.id, None))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(runtime_ns, node.name, None)
            if cls is None:
                diff.add((prefix + node.name, None))
                continue
            diff |= _check_namespace(node.body, cls, prefix + node.name + ".",
                                     _instances.get(cls))
    return diff


def _make_instances():
    return {MLP: MLP([3, 4, 2], seed=0)}


_instances = _make_instances()


def _assert_no_new_differences(diff):
    unexpected = sorted(diff - PENDING, key=str)
    stale = sorted(PENDING - diff, key=str)
    assert not unexpected, f"stub and runtime differ at: {unexpected}"
    assert not stale, (f"nn.py now matches the stub at {stale}: delete these entries "
                       f"from PENDING in tests/test_types.py")


def test_nn_stub_matches_the_runtime():
    import bpcore.nn as nn

    tree = _stub("nn.pyi")
    _assert_no_new_differences(_check_namespace(tree.body, nn, ""))
    # ... and declares every public method and attribute of MLP.
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MLP"]
    declared = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    public = {n for n in dir(MLP) if not n.startswith("_")}
    public |= {n for n in vars(_instances[MLP]) if not n.startswith("_")}
    assert public <= declared, f"MLP's {sorted(public - declared)} are not in nn.pyi"


def test_init_stub_matches_the_runtime():
    tree = _stub("__init__.pyi")
    diff = _check_namespace([n for n in tree.body if not isinstance(n, ast.ImportFrom)],
                            bpcore, "bpcore.")
    assert not diff, f"stub and runtime differ at: {sorted(diff, key=str)}"
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    wrong = []
    for node in tree.body:
        if not (isinstance(node, ast.ImportFrom) and node.level == 1):
            continue
        module = importlib.import_module("bpcore" + (f".{node.module}" if node.module else ""))
        for alias in node.names:
            assert alias.asname == alias.name, f"`{alias.name}` is not re-exported (X as X)"
            declared.add(alias.name)
            source = (getattr(module, alias.name, None) if node.module else
                      importlib.import_module(f"bpcore.{alias.name}"))
            if source is None or getattr(bpcore, alias.name) is not source:
                wrong.append(f"bpcore.{alias.name} does not come from bpcore.{node.module}")
    assert not wrong, wrong
    assert set(bpcore.__all__) <= declared, sorted(set(bpcore.__all__) - declared)


def test_the_signature_check_sees_differences():
    # The checker itself: a default, a kind and a missing parameter are each seen.
    fn = ast.parse(textwrap.dedent("""
        def f(self, x, *, lr: float = 0.1, extra: int = 0) -> None: ...
    """)).body[0]

    def f(self, x, lr=0.1):
        pass

    assert _differences("f", fn, f, f) == {("f", "lr"), ("f", "extra")}
