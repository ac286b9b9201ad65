"""The bad-input matrix: every public function and ``MLP`` method against every kind of bad input.

Each case is one call with a stated outcome: an exception of a given type
whose message names the offending argument, or a result equal to the
reference's on clean inputs.  Around every call the runner also checks that

* no input changed (a digest of every array before and after), except the
  documented written ones (``out``, ``grad_x/w/b``, ``param``, the optimizer
  state ``velocity``, ``m``, ``v``, the model) -- and a call that raises
  wrote nothing at all, model included;
* the compiled backend emitted no warning (and neither backend on the
  huge-value cases).

Crash isolation: the whole matrix runs in ONE child interpreter (fast), with
``faulthandler`` on, which logs each case before and after it runs.  If the
child dies (segfault, abort), the case it was running fails with the crash
trace and a new child resumes after it, so a crash fails a test instead of
killing the run.  Each pytest item below only reports its case's outcome.
"""
import faulthandler
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import warnings
from typing import NamedTuple

import numpy as np
import pytest
from conftest import TOL, layout as _layout, run_python

import bpcore
import bpcore.reference as R
from bpcore import MLP

BACKENDS = {"compiled": bpcore, "reference": R}
DIMS = dict(n=5, m=3, c=4, k=6, p=2, i=4, o=3)


class Spec(NamedTuple):
    inputs: dict            # read-only array arguments -> symbolic shape
    outputs: dict           # written array arguments -> symbolic shape
    inplace: tuple = ()     # inputs that `out` may be (an in-place call)
    extra: dict = {}        # fixed keyword arguments
    any_ndim: bool = False  # elementwise: inputs of any shape


_FWD = Spec({"z": "nm"}, {"out": "nm"}, ("z",), any_ndim=True)
_BWD = Spec({"a": "nm", "grad": "nm"}, {"out": "nm"}, ("a", "grad"), any_ndim=True)
# the backward of the activations whose derivative needs the pre-activation z
_BWD_Z = Spec({"z": "nm", "grad": "nm"}, {"out": "nm"}, ("z", "grad"), any_ndim=True)
FROM_OUTPUT = ("sigmoid", "relu", "tanh", "identity", "leaky_relu", "elu")
FROM_Z = ("gelu", "gelu_tanh", "silu", "softplus")
# The activations' parameters: a valid value, and the bad values beyond the bound.
ACT_PARAMS = {"leaky_relu": {"negative_slope": (0.2, (("negative", -0.1),))},
              "elu": {"alpha": (0.5, (("negative", -0.1),))},
              "softplus": {"beta": (2.0, (("zero", 0.0), ("negative", -1.0))),
                           "threshold": (-3.0, ())}}
_CE = ("softmax_cross_entropy", "softmax_cross_entropy_backward", "softmax_cross_entropy_and_grad")
_BCE = ("sigmoid_binary_cross_entropy", "sigmoid_binary_cross_entropy_backward")
# Every function's scalar parameters (as ACT_PARAMS), by function name.
PARAMS = {
    **{f"{act}_{way}": params for act, params in ACT_PARAMS.items()
       for way in ("forward", "backward")},
    **{f"huber_loss{s}": {"delta": (2.0, (("zero", 0.0), ("negative", -1.0)))}
       for s in ("", "_backward")},
    **{f"smooth_l1_loss{s}": {"beta": (0.5, (("negative", -1.0),))} for s in ("", "_backward")},
    **{name: {"label_smoothing": (0.1, (("negative", -0.1), ("above_one", 1.5)))}
       for name in _CE},
}
# The per-class / per-output weight vectors: (argument, the dimension they run over).
WEIGHTS = {**{name: ("class_weight", "c") for name in _CE},
           **{name: ("pos_weight", "m") for name in _BCE}}
REGRESSION = ("l1_loss", "huber_loss", "smooth_l1_loss")
SPECS = {
    **{f"{act}_forward": _FWD for act in FROM_OUTPUT + FROM_Z},
    **{f"{act}_backward": _BWD for act in FROM_OUTPUT},
    **{f"{act}_backward": _BWD_Z for act in FROM_Z},
    "softmax_forward": Spec({"z": "nc"}, {"out": "nc"}, ("z",)),
    "matmul": Spec({"a": "mk", "b": "kp"}, {"out": "mp"}),
    "linear_forward": Spec({"x": "ni", "w": "io", "b": "o"}, {"out": "no"}),
    "linear_backward": Spec({"x": "ni", "w": "io", "grad": "no"},
                            {"grad_x": "ni", "grad_w": "io", "grad_b": "o"}),
    "mse_loss": Spec({"pred": "nm", "target": "nm"}, {}, any_ndim=True),
    "mse_loss_backward": Spec({"pred": "nm", "target": "nm"}, {"out": "nm"},
                              ("pred", "target"), any_ndim=True),
    "mse_loss_and_grad": Spec({"pred": "nm", "target": "nm"}, {"out": "nm"},
                              ("pred", "target"), any_ndim=True),
    **{name: Spec({"pred": "nm", "target": "nm"}, {}, any_ndim=True) for name in REGRESSION},
    **{f"{name}_backward": Spec({"pred": "nm", "target": "nm"}, {"out": "nm"},
                                ("pred", "target"), any_ndim=True) for name in REGRESSION},
    "softmax_cross_entropy": Spec({"logits": "nc", "labels": "n"}, {}),
    "softmax_cross_entropy_backward": Spec({"logits": "nc", "labels": "n"}, {"out": "nc"},
                                           ("logits",)),
    "softmax_cross_entropy_and_grad": Spec({"logits": "nc", "labels": "n"}, {"out": "nc"},
                                           ("logits",)),
    "sgd_update": Spec({"grad": "nm"}, {"param": "nm"}, extra={"lr": 0.1}, any_ndim=True),
    "sigmoid_binary_cross_entropy": Spec({"logits": "nm", "targets": "nm"}, {}, any_ndim=True),
    "sigmoid_binary_cross_entropy_backward": Spec({"logits": "nm", "targets": "nm"},
                                                  {"out": "nm"}, ("logits", "targets"),
                                                  any_ndim=True),
    "adam_update": Spec({"grad": "nm"}, {"param": "nm", "m": "nm", "v": "nm"},
                        extra={"lr": 0.01, "step": 3}, any_ndim=True),
    "adamw_update": Spec({"grad": "nm"}, {"param": "nm", "m": "nm", "v": "nm"},
                         extra={"lr": 0.01, "step": 3}, any_ndim=True),
    "rmsprop_update": Spec({"grad": "nm"}, {"param": "nm", "square_avg": "nm"},
                           extra={"lr": 0.01}, any_ndim=True),
    "sklearn_sgd_update": Spec({"grad": "nm"}, {"param": "nm", "velocity": "nm"},
                               extra={"lr": 0.1, "momentum": 0.9}, any_ndim=True),
    "sklearn_adam_update": Spec({"grad": "nm"}, {"param": "nm", "m": "nm", "v": "nm"},
                                extra={"lr": 0.01, "step": 3}, any_ndim=True),
}
assert sorted(SPECS) == sorted(R.__all__), "every public function is in the matrix"
WRITTEN = {"out", "grad_x", "grad_w", "grad_b", "param", "velocity", "m", "v", "square_avg",
           "momentum_buffer", "grad_avg"}
# optimizer state: written, so made fresh for every case
STATE = ("m", "v", "velocity", "square_avg", "momentum_buffer", "grad_avg")
OPTIMIZERS = ("sgd_update", "adam_update", "adamw_update", "rmsprop_update",
              "sklearn_sgd_update", "sklearn_adam_update")
# Each optimizer's real hyper-parameters (sgd_update's are tested on their own below) and
# the outcome of values beyond their bounds.
HYPER_BOUNDS = {
    "adam_update": {"lr": (), "eps": (("zero", 0.0),), "weight_decay": (),
                    "beta1": (("one", 1.0),), "beta2": (("one", 1.0),)},
    "adamw_update": {"lr": (), "eps": (("zero", 0.0),), "weight_decay": (),
                     "beta1": (("one", 1.0),), "beta2": (("one", 1.0),)},
    "rmsprop_update": {"lr": (), "eps": (("zero", 0.0),), "weight_decay": (),
                       "alpha": (("above_one", 1.5),), "momentum": ()},
    "sklearn_sgd_update": {"lr": (), "momentum": (("above_one", 1.5),)},
    "sklearn_adam_update": {"lr": (), "eps": (("zero", 0.0),), "beta1": (("one", 1.0),),
                            "beta2": (("one", 1.0),)},
}


# ---------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------

class Raises(NamedTuple):
    exc: type
    words: tuple  # each a str, or a tuple of alternatives; all must be in the message


class Same(NamedTuple):
    expected: object   # a callable giving the expected result (clean inputs)
    exact: bool = False
    dtype: object = None  # the tolerance's dtype (the inputs'); default: the result's


class Check(NamedTuple):
    check: object  # callable(result) raising AssertionError


def raises(exc, *words):
    return Raises(exc, words)


def named(*args):
    """The message names one of ``args`` (as the policy writes them: in backticks)."""
    return tuple(f"`{a}`" for a in args)


class Case(NamedTuple):
    fn: object
    kwargs: dict
    expect: object
    written: frozenset = frozenset()
    model: object = None          # an MLP whose parameters the call may change ...
    writes_model: bool = False    # ... only when this is True and it succeeds
    quiet: bool = False           # no warnings allowed (compiled: always)
    writes_on_error: bool = False  # fit: batches before a failing one are applied


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def _shape(dims, **override):
    return tuple(override.get(d, DIMS[d]) for d in dims)


def clean_inputs(name, dtype=np.float64, seed=0, **override):
    """Valid array arguments of ``name``, C-contiguous, in ``dtype``."""
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    args = {}
    for arg, dims in {**spec.inputs, **spec.outputs}.items():
        shape = _shape(dims, **override)
        if arg in STATE:  # a new buffer per call, never shared between cases
            state = rng.normal(size=shape)
            args[arg] = (state ** 2 if arg in ("v", "square_avg") else 0.1 * state).astype(dtype)
            continue
        if arg in WRITTEN and arg != "param":
            continue
        if arg == "labels":
            args[arg] = rng.integers(0, override.get("c", DIMS["c"]) or 1, size=shape)
        elif arg == "targets":  # the binary cross-entropy's: in [0, 1]
            args[arg] = rng.uniform(size=shape).astype(dtype)
        else:
            args[arg] = rng.normal(size=shape).astype(dtype)
    return args


def _copy(kwargs):
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
            for k, v in kwargs.items()}


def _with_state(name, fn):
    """``fn``, returning also the optimizer state it wrote (compared like the result)."""
    state = [s for s in SPECS[name].outputs if s in STATE]
    if not state:
        return fn
    return lambda **kw: (fn(**kw), *[kw[s] for s in state])


def _reference_of(name, kwargs):
    """Expected result: the reference on contiguous copies (nothing shared with the call)."""
    spec = SPECS[name]
    clean = {k: (np.array(v, order="C") if isinstance(v, np.ndarray) else v)
             for k, v in _copy(kwargs).items() if k not in ("out", "grad_x", "grad_w", "grad_b")}
    fn = _with_state(name, getattr(R, name))
    return lambda: fn(**{**spec.extra, **clean})


def _call(backend, name):
    fn = _with_state(name, getattr(BACKENDS[backend], name))
    extra = SPECS[name].extra
    return (lambda **kw: fn(**{**extra, **kw})) if extra else fn


_TMP = []


def _tmpdir():
    if not _TMP:
        _TMP.append(tempfile.TemporaryDirectory())
    return _TMP[0].name


def layout(arr, kind):
    """``arr``'s values in another memory layout (conftest.layout); memory maps read-only."""
    view = _layout(arr, kind, _tmpdir())
    if kind == "memmap":
        view.flags.writeable = False
    return view


LAYOUTS_ND = ["strided", "negative", "read_only", "memmap", "misaligned"]
LAYOUTS_2D = ["fortran", "transposed"]


# ---------------------------------------------------------------------------
# The cases of one function
# ---------------------------------------------------------------------------

BAD_DTYPES = {
    "float16": lambda a: a.astype(np.float16),
    "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
}


def function_cases(name, backend):
    spec = SPECS[name]
    call = _call(backend, name)
    cases = {}
    float_inputs = [a for a in spec.inputs if a != "labels"]
    if name in OPTIMIZERS:
        float_inputs = ["param", "grad"]
    read_args = [a for a in {**spec.inputs, **spec.outputs} if a not in WRITTEN or a == "param"]
    written = frozenset(spec.outputs)

    def add(label, build):
        cases[f"{name}-{backend}-{label}"] = build

    def same(kwargs, exact=False, written=written, **kw):
        dtypes = [v.dtype for v in kwargs.values()
                  if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
        return Case(call, kwargs, Same(_reference_of(name, kwargs), exact,
                                       dtypes[0] if dtypes else None), written, **kw)

    # valid calls, float32 and float64 (the baseline of "no input modified")
    for dt in (np.float32, np.float64):
        add(f"valid-{np.dtype(dt).name}",
            lambda dt=dt: same(clean_inputs(name, dt)))

    # wrong ndim
    for arg, dims in spec.inputs.items():
        if spec.any_ndim:
            for nd in (0, 1, 3):
                def build(arg=arg, nd=nd):
                    shape = (2, 3, 2)[:nd]
                    kw = {a: np.asarray(np.random.default_rng(1).normal(size=shape))
                          for a in read_args}
                    if "targets" in kw:
                        kw["targets"] = np.asarray(np.random.default_rng(1).uniform(size=shape))
                    kw.update({a: np.zeros(shape) for a in spec.outputs if a in STATE})
                    return same(kw)
                add(f"ndim{nd}-all-works", build)
            break
        for label, reshape in (("ndim+1", lambda v: v[None]),
                               ("ndim-1", lambda v: v[0] if v.ndim > 1 else v[0, ...])):
            def build(arg=arg, reshape=reshape):
                kw = clean_inputs(name)
                kw[arg] = reshape(kw[arg])
                return Case(call, kw, raises(ValueError, named(arg)))
            add(f"{label}-{arg}", build)

    # mismatched shapes between every pair of arguments sharing a dimension
    shaped = {a: d for a, d in {**spec.inputs, **spec.outputs}.items()
              if a in read_args}
    for (a1, d1), (a2, d2) in itertools.combinations(shaped.items(), 2):
        for sym in sorted(set(d1) & set(d2)):
            for victim in (a1, a2):
                def build(victim=victim, sym=sym, a1=a1, a2=a2):
                    kw = clean_inputs(name)
                    dims = shaped[victim]
                    grown = clean_inputs(name, **{sym: DIMS[sym] + 1})[victim]
                    kw[victim] = grown
                    assert kw[victim].shape != _shape(dims)
                    return Case(call, kw, raises(ValueError, named(a1, a2)))
                add(f"mismatch-{a1}-{a2}-{sym}-grow-{victim}", build)

    # empty arrays: 0 rows (and 0 columns) have a defined result
    zero_dims = ["n"] + (["c"] if "c" in "".join(spec.inputs.values()) else [])
    zero_dims += ["k"] if name == "matmul" else []
    zero_dims += ["i", "o"] if name.startswith("linear") else []
    for sym in zero_dims:
        if name.startswith("softmax_cross") and sym == "c":
            add("empty-c", lambda: Case(call, clean_inputs(name, c=0),
                                        raises(ValueError, named("labels"))))
            continue
        add(f"empty-{sym}", lambda sym=sym: same(clean_inputs(name, **{sym: 0})))
    for red, value in ({"mse_loss": [("mean", math.nan), ("sum", 0.0), ("half_mean", math.nan),
                                     ("half_sum", 0.0)],
                        **{loss: [("mean", math.nan), ("sum", 0.0)] for loss in REGRESSION},
                        "softmax_cross_entropy": [("mean", math.nan), ("sum", 0.0)],
                        "sigmoid_binary_cross_entropy": [("mean", math.nan), ("sum", 0.0)]}
                       .get(name, [])):
        def build(red=red, value=value):
            def check(result):
                assert (math.isnan(result) if math.isnan(value) else result == value), result
            return Case(call, dict(clean_inputs(name, n=0), reduction=red), Check(check))
        add(f"empty-value-{red}", build)

    # layouts: strided, Fortran, transposed, negative strides, read-only, memory-mapped
    for arg in read_args:
        if arg == "param":
            continue
        kinds = LAYOUTS_ND + (LAYOUTS_2D if len(shaped[arg]) == 2 else [])
        for kind in kinds:
            for dt in (np.float32, np.float64):
                def build(arg=arg, kind=kind, dt=dt):
                    kw = clean_inputs(name, dt, seed=3)
                    kw[arg] = layout(kw[arg], kind)
                    return same(kw)
                add(f"layout-{kind}-{arg}-{np.dtype(dt).name}", build)

    # dtypes: ints and bools are converted; float16/complex/object/str are TypeErrors
    for arg in read_args:
        if arg == "labels":
            for kind, conv in (("float16", np.float16), ("complex", np.complex128),
                               ("object", object), ("str", str)):
                def build(conv=conv):
                    kw = clean_inputs(name)
                    kw["labels"] = kw["labels"].astype(conv)
                    return Case(call, kw, raises(TypeError, named("labels")))
                add(f"dtype-{kind}-labels", build)
            add("dtype-float-integral-labels", lambda: same(
                dict(clean_inputs(name), labels=clean_inputs(name)["labels"].astype(float))))
            continue
        if arg == "param":
            for kind, conv in (("int", np.int64), ("float16", np.float16)):
                def build(conv=conv):
                    kw = clean_inputs(name)
                    kw["param"] = kw["param"].astype(conv)
                    return Case(call, kw, raises(TypeError, named("param")))
                add(f"dtype-{kind}-param", build)
            continue
        for kind in ("int", "bool"):
            def build(arg=arg, kind=kind):
                kw = clean_inputs(name)
                scale = 1 if arg == "targets" else 3  # targets stay in [0, 1]
                kw[arg] = (np.round(kw[arg] * scale).astype(np.int64) if kind == "int"
                           else kw[arg] > 0)
                return same(kw)
            add(f"dtype-{kind}-{arg}-converted", build)
        for kind, conv in BAD_DTYPES.items():
            def build(arg=arg, conv=conv):
                kw = clean_inputs(name)
                kw[arg] = conv(kw[arg])
                return Case(call, kw, raises(TypeError, named(arg)))
            add(f"dtype-{kind}-{arg}", build)

    # mixed float32 / float64: a TypeError naming both
    for a1, a2 in itertools.combinations(float_inputs, 2):
        def build(a1=a1, a2=a2):
            kw = clean_inputs(name)
            kw[a2] = kw[a2].astype(np.float32)
            # The message names the float32 one and the float64 one it met first.
            others = [a for a in float_inputs if a != a2]
            return Case(call, kw, raises(TypeError, f"`{a2}`", named(*others)))
        add(f"mixed-{a1}-{a2}", build)

    # lists and scalars where arrays are expected
    for arg in read_args:
        if arg == "param":
            add("list-param", lambda: Case(call, dict(clean_inputs(name), param=[[1.0]]),
                                           raises(TypeError, named("param"))))
            continue
        def build(arg=arg):
            kw = clean_inputs(name)
            kw[arg] = kw[arg].tolist()
            return same(kw)
        add(f"list-{arg}", build)
        if not spec.any_ndim:
            add(f"scalar-{arg}", lambda arg=arg: Case(call, dict(clean_inputs(name), **{arg: 1.5}),
                                                      raises(ValueError, named(arg))))

    # out= : wrong shape, dtype, order, read-only, not an array; overlaps
    for out_arg, dims in spec.outputs.items():
        if out_arg == "param" or out_arg in STATE:  # in-place buffers: tested below
            continue
        shape = _shape(dims)
        bad = {
            "shape": lambda: np.zeros(shape + (1,)),
            "dtype32": lambda: np.zeros(shape, np.float32),
            "dtype_int": lambda: np.zeros(shape, np.int64),
            "readonly": lambda: _readonly(np.zeros(shape)),
            "list": lambda: np.zeros(shape).tolist(),
            "misaligned": lambda: np.zeros(math.prod(shape) * 8 + 1, np.uint8)[1:].view(
                np.float64).reshape(shape),
        }
        if len(shape) == 2:
            bad["fortran"] = lambda: np.asfortranarray(np.zeros(shape))
        for kind, make in bad.items():
            add(f"out-{kind}-{out_arg}",
                lambda make=make, out_arg=out_arg: Case(
                    call, dict(clean_inputs(name), **{out_arg: make()}),
                    raises(ValueError, named(out_arg))))
        for in_arg in spec.inputs:
            if in_arg == "labels":
                continue

            def build(out_arg=out_arg, in_arg=in_arg):
                kw = clean_inputs(name)
                src = kw[in_arg]
                buf = np.zeros(src.size + math.prod(shape) + 1)
                kw[in_arg] = buf[1:1 + src.size].reshape(src.shape)
                kw[in_arg][...] = src
                kw[out_arg] = buf[:math.prod(shape)].reshape(shape)  # overlaps, not identical
                return Case(call, kw, raises(ValueError, named(out_arg)))
            add(f"out-overlap-{out_arg}-{in_arg}", build)
            if in_arg in spec.inplace:
                def build(out_arg=out_arg, in_arg=in_arg):
                    kw = clean_inputs(name)
                    expected = _reference_of(name, kw)
                    kw[out_arg] = kw[in_arg]
                    return Case(call, kw, Same(expected), written | {in_arg})
                add(f"out-inplace-{out_arg}-is-{in_arg}", build)
            elif _shape(spec.inputs[in_arg]) == shape:
                def build(out_arg=out_arg, in_arg=in_arg):
                    kw = clean_inputs(name)
                    kw[out_arg] = kw[in_arg]
                    return Case(call, kw, raises(ValueError, named(out_arg)))
                add(f"out-identical-{out_arg}-is-{in_arg}", build)
    if name == "linear_backward":
        for o1, o2 in (("grad_w", "grad_x"), ("grad_b", "grad_w")):
            def build(o1=o1, o2=o2):
                kw = clean_inputs(name)
                s1, s2 = _shape(spec.outputs[o1]), _shape(spec.outputs[o2])
                buf = np.zeros(math.prod(s1) + math.prod(s2))
                kw[o1] = buf[:math.prod(s1)].reshape(s1)
                kw[o2] = buf[1:1 + math.prod(s2)].reshape(s2)
                return Case(call, kw, raises(ValueError, named(o1, o2)))
            add(f"out-overlap-{o1}-{o2}", build)

    # NaN and +-inf propagate like the reference
    for arg in float_inputs:
        if arg == "param":
            continue
        for dt in (np.float32, np.float64):
            def build(arg=arg, dt=dt):
                kw = clean_inputs(name, dt)
                flat = kw[arg].reshape(-1)
                flat[0], flat[1 % flat.size], flat[-1] = np.nan, np.inf, -np.inf
                if arg == "targets":  # not in [0, 1]
                    return Case(call, kw, raises(ValueError, named("targets"), "[0, 1]"))
                return same(kw)
            add(f"nonfinite-{arg}-{np.dtype(dt).name}", build)

    # huge values: finite results and no warnings where the math is bounded
    if name in ("sigmoid_forward", "tanh_forward", "softmax_forward", "softmax_cross_entropy",
                "softmax_cross_entropy_backward", "softmax_cross_entropy_and_grad",
                "sigmoid_binary_cross_entropy", "sigmoid_binary_cross_entropy_backward"):
        arg = next(iter(spec.inputs))
        for dt in (np.float32, np.float64):
            def build(arg=arg, dt=dt):
                kw = clean_inputs(name, dt)
                kw[arg] = (np.sign(kw[arg]) * 1e30).astype(dt)

                def check(result, expected=_reference_of(name, kw)):
                    for r in _flat(result):
                        assert np.all(np.isfinite(r)), r
                    _assert_same(result, expected(), False, dt)
                return Case(call, kw, Check(check), written, quiet=True)
            add(f"huge-1e30-{np.dtype(dt).name}", build)

    # class labels
    if "labels" in spec.inputs:
        c = DIMS["c"]
        for kind, value in (("too_big", c), ("negative", -1), ("fraction", 1.5),
                            ("nan", np.nan), ("inf", np.inf)):
            def build(value=value):
                kw = clean_inputs(name)
                labels = kw["labels"].astype(float if isinstance(value, float) else np.int64)
                labels[2] = value
                kw["labels"] = labels
                return Case(call, kw, raises(ValueError, named("labels"), "[2]"))
            add(f"labels-{kind}", build)
    if "reduction" in getattr(BACKENDS[backend], name).__doc__ or name.startswith(
            ("mse", "softmax_cross", "sigmoid_binary", "l1", "huber", "smooth_l1")):
        for bad_red in ("median", None, "MEAN"):
            add(f"reduction-{bad_red}",
                lambda bad_red=bad_red: Case(call, dict(clean_inputs(name), reduction=bad_red),
                                             raises(ValueError, named("reduction"), "'mean'")))

    # binary targets: [0, 1] inclusive; outside is a ValueError
    if "targets" in spec.inputs:
        for kind, value in (("negative", -0.25), ("above_one", 1.5)):
            def build(value=value):
                kw = clean_inputs(name)
                kw["targets"][1, 2] = value
                return Case(call, kw, raises(ValueError, named("targets"), "[0, 1]"))
            add(f"targets-{kind}", build)
        for kind, dt in (("bounds-float64", np.float64), ("bounds-float32", np.float32)):
            def build(dt=dt):
                kw = clean_inputs(name, dt)
                kw["targets"][0], kw["targets"][1] = 0.0, 1.0
                return same(kw)
            add(f"targets-{kind}", build)

    # optimizer hyper-parameters and buffers
    if name == "sgd_update":
        for arg in ("lr", "momentum", "weight_decay"):
            for label, value, exc in (("negative", -0.1, ValueError), ("nan", math.nan, ValueError),
                                      ("inf", math.inf, ValueError), ("str", "0.1", TypeError),
                                      ("none", None, TypeError), ("bool", True, TypeError),
                                      ("list", [0.1], TypeError)):
                def build(arg=arg, value=value, exc=exc):
                    kw = dict(clean_inputs(name), velocity=np.zeros(_shape("nm")), momentum=0.9)
                    kw[arg] = value
                    return Case(call, kw, raises(exc, named(arg)))
                add(f"hyper-{arg}-{label}", build)
        for label, value in (("numpy_float32", np.float32(0.5)), ("int", 1)):
            add(f"hyper-lr-{label}-accepted",
                lambda value=value: same(dict(clean_inputs(name), lr=value)))
        add("nesterov-str", lambda: Case(call, dict(clean_inputs(name), nesterov="yes"),
                                         raises(TypeError, named("nesterov"))))
        add("nesterov-no-momentum", lambda: Case(call, dict(clean_inputs(name), nesterov=True),
                                                 raises(ValueError, named("nesterov"))))
        add("velocity-missing", lambda: Case(call, dict(clean_inputs(name), momentum=0.9),
                                             raises(ValueError, named("velocity"))))
        vel_bad = {
            "shape": (lambda p: np.zeros(p.shape + (1,)), ValueError),
            "dtype": (lambda p: np.zeros(p.shape, np.float32), TypeError),
            "readonly": (lambda p: _readonly(np.zeros(p.shape)), ValueError),
            "fortran": (lambda p: np.asfortranarray(np.zeros(p.shape)), ValueError),
            "list": (lambda p: np.zeros(p.shape).tolist(), TypeError),
            "is_param": (lambda p: p, ValueError),
            "misaligned": (lambda p: layout(np.zeros(p.shape), "misaligned"), ValueError),
        }
        for label, (make, exc) in vel_bad.items():
            def build(make=make, exc=exc):
                kw = clean_inputs(name)
                kw.update(momentum=0.9, velocity=make(kw["param"]))
                return Case(call, kw, raises(exc, named("velocity")))
            add(f"velocity-{label}", build)

        def build():
            kw = clean_inputs(name)
            kw.update(momentum=0.9, velocity=kw["grad"])
            return Case(call, kw, raises(ValueError, named("velocity"), "`grad`"))
        add("velocity-is-grad", build)

    for arg, (good, beyond) in PARAMS.get(name, {}).items():
        for label, value, exc in (("nan", math.nan, ValueError), ("inf", math.inf, ValueError),
                                  ("str", "0.1", TypeError), ("none", None, TypeError),
                                  ("bool", True, TypeError), ("list", [0.1], TypeError),
                                  *((lab, val, ValueError) for lab, val in beyond)):
            add(f"param-{arg}-{label}", lambda arg=arg, value=value, exc=exc: Case(
                call, dict(clean_inputs(name), **{arg: value}), raises(exc, named(arg))))
        for label, value in (("given", good), ("int", 1), ("numpy_float32", np.float32(good))):
            add(f"param-{arg}-{label}-accepted",
                lambda arg=arg, value=value: same(dict(clean_inputs(name), **{arg: value})))

    if name in WEIGHTS:
        arg, dim = WEIGHTS[name]
        size = DIMS[dim]
        for label, make, exc in (
                ("length", lambda: np.ones(size + 1), ValueError),
                ("ndim2", lambda: np.ones((1, size)), ValueError),
                ("negative", lambda: -np.ones(size), ValueError),
                ("nan", lambda: np.full(size, np.nan), ValueError),
                ("inf", lambda: np.full(size, np.inf), ValueError),
                ("str", lambda: np.array(["1"] * size), TypeError),
                ("scalar", lambda: 2.0, ValueError)):
            add(f"weights-{arg}-{label}", lambda make=make, exc=exc, arg=arg: Case(
                call, dict(clean_inputs(name), **{arg: make()}), raises(exc, named(arg))))
        for label, make in (("float32", lambda: np.linspace(0.5, 2, size, dtype=np.float32)),
                            ("list", lambda: [1.5] * size), ("zeros_and_ints", lambda: np.arange(
                                size)), ("strided", lambda: np.linspace(0.5, 2, 2 * size)[::2])):
            add(f"weights-{arg}-{label}-accepted", lambda make=make, arg=arg: same(
                dict(clean_inputs(name), **{arg: make()})))

    if name in OPTIMIZERS and name != "sgd_update":
        for arg, beyond in HYPER_BOUNDS[name].items():
            for label, value, exc in (("negative", -0.1, ValueError),
                                      ("nan", math.nan, ValueError),
                                      ("inf", math.inf, ValueError), ("str", "0.1", TypeError),
                                      ("none", None, TypeError), ("bool", True, TypeError),
                                      ("list", [0.1], TypeError),
                                      *((lab, val, ValueError) for lab, val in beyond)):
                add(f"hyper-{arg}-{label}", lambda arg=arg, value=value, exc=exc: Case(
                    call, dict(clean_inputs(name), **{arg: value}), raises(exc, named(arg))))
        accepted = [("lr-numpy_float32", "lr", np.float32(0.5)), ("lr-int", "lr", 1),
                    ("lr-zero", "lr", 0.0)]
        if "step" in SPECS[name].extra:
            accepted += [("step-first", "step", 1), ("step-numpy", "step", np.int64(7)),
                         ("step-huge", "step", 10 ** 6), ("beta1-zero", "beta1", 0.0),
                         ("eps-tiny", "eps", 1e-30)]
            for label, value, exc in (("zero", 0, ValueError), ("negative", -1, ValueError),
                                      ("float", 1.5, TypeError),
                                      ("float_integral", 2.0, TypeError),
                                      ("str", "3", TypeError), ("none", None, TypeError),
                                      ("bool", True, TypeError), ("list", [3], TypeError)):
                add(f"step-{label}", lambda value=value, exc=exc: Case(
                    call, dict(clean_inputs(name), step=value), raises(exc, named("step"))))
        elif name == "rmsprop_update":
            accepted += [("alpha-one", "alpha", 1.0), ("alpha-zero", "alpha", 0.0),
                         ("eps-tiny", "eps", 1e-30), ("centered-numpy_bool", "centered",
                                                      np.bool_(False))]
            for label, extra in (("momentum", dict(momentum=0.9, momentum_buffer="zeros")),
                                 ("centered", dict(centered=True, grad_avg="zeros")),
                                 ("both", dict(momentum=0.5, momentum_buffer="zeros",
                                               centered=True, grad_avg="zeros"))):
                def build(extra=extra):
                    kw = clean_inputs(name)
                    kw.update({k: np.zeros(kw["param"].shape) if v == "zeros" else v
                               for k, v in extra.items()})
                    return same(kw, written=written | {"momentum_buffer", "grad_avg"})
                add(f"{label}-accepted", build)
            for label, extra, exc, arg in (
                    ("centered-str", dict(centered="yes"), TypeError, "centered"),
                    ("centered-int", dict(centered=1), TypeError, "centered"),
                    ("momentum_buffer-missing", dict(momentum=0.9), ValueError,
                     "momentum_buffer"),
                    ("grad_avg-missing", dict(centered=True), ValueError, "grad_avg"),
                    ("grad_avg-is-square_avg", dict(centered=True, grad_avg="square_avg"),
                     ValueError, "grad_avg"),
                    ("momentum_buffer-readonly", dict(momentum=0.9, momentum_buffer="ro"),
                     ValueError, "momentum_buffer"),
                    ("momentum_buffer-dtype", dict(momentum=0.9, momentum_buffer="f32"),
                     TypeError, "momentum_buffer")):
                def build(extra=extra, exc=exc, arg=arg):
                    kw = clean_inputs(name)
                    shape = kw["param"].shape
                    made = {"square_avg": kw["square_avg"],
                            "ro": _readonly(np.zeros(shape)),
                            "f32": np.zeros(shape, np.float32)}
                    kw.update({k: made.get(v, v) if isinstance(v, str) and k != "centered"
                               else v for k, v in extra.items()})
                    return Case(call, kw, raises(exc, named(arg)))
                add(label, build)
        else:
            accepted += [("momentum-one", "momentum", 1.0), ("momentum-zero", "momentum", 0.0),
                         ("nesterov-false", "nesterov", False),
                         ("nesterov-numpy_bool", "nesterov", np.bool_(True))]
            add("nesterov-str", lambda: Case(call, dict(clean_inputs(name), nesterov="yes"),
                                             raises(TypeError, named("nesterov"))))
        for label, arg, value in accepted:
            add(f"hyper-{label}-accepted",
                lambda arg=arg, value=value: same(dict(clean_inputs(name), **{arg: value})))
        state = [s for s in spec.outputs if s in STATE]
        state_bad = {
            "missing": (lambda kw: None, ValueError),
            "shape": (lambda kw: np.zeros(kw["param"].shape + (1,)), ValueError),
            "dtype": (lambda kw: np.zeros(kw["param"].shape, np.float32), TypeError),
            "dtype_int": (lambda kw: np.zeros(kw["param"].shape, np.int64), TypeError),
            "readonly": (lambda kw: _readonly(np.zeros(kw["param"].shape)), ValueError),
            "fortran": (lambda kw: np.asfortranarray(np.zeros(kw["param"].shape)), ValueError),
            "strided": (lambda kw: layout(np.zeros(kw["param"].shape), "strided"), ValueError),
            "list": (lambda kw: np.zeros(kw["param"].shape).tolist(), TypeError),
            "is_param": (lambda kw: kw["param"], ValueError),
            "is_grad": (lambda kw: kw["grad"], ValueError),
            "misaligned": (lambda kw: layout(np.zeros(kw["param"].shape), "misaligned"),
                           ValueError),
        }
        for buf in state:
            for label, (make, exc) in state_bad.items():
                def build(buf=buf, make=make, exc=exc):
                    kw = clean_inputs(name)
                    kw[buf] = make(kw)
                    return Case(call, kw, raises(exc, named(buf)))
                add(f"{buf}-{label}", build)
        if len(state) == 2:
            def build():
                kw = clean_inputs(name)
                kw["v"] = kw["m"]
                return Case(call, kw, raises(ValueError, named("v"), "`m`"))
            add("v-is-m", build)

            def build():
                kw = clean_inputs(name)
                buf = np.zeros(2 * kw["param"].size)
                kw["m"] = buf[:kw["param"].size].reshape(kw["param"].shape)
                kw["v"] = buf[1:1 + kw["param"].size].reshape(kw["param"].shape)
                return Case(call, kw, raises(ValueError, named("v"), "`m`"))
            add("v-overlaps-m", build)

    if name in OPTIMIZERS:
        for label, make in (("readonly", lambda p: _readonly(p)),
                            ("strided", lambda p: layout(p, "strided")),
                            ("fortran", lambda p: np.asfortranarray(p)),
                            ("misaligned", lambda p: layout(p, "misaligned"))):
            add(f"param-{label}", lambda make=make: Case(
                call, dict(clean_inputs(name), param=make(clean_inputs(name)["param"])),
                raises(ValueError, named("param"))))

        def build():
            kw = clean_inputs(name)
            buf = np.zeros(2 * kw["param"].size)
            kw["param"] = buf[:kw["param"].size].reshape(kw["param"].shape)
            kw["grad"] = buf[1:1 + kw["param"].size].reshape(kw["param"].shape)
            return Case(call, kw, raises(ValueError, named("grad")))
        add("grad-overlaps-param", build)

        def build():
            kw = clean_inputs(name)
            expected = _reference_of(name, dict(kw, grad=kw["param"].copy()))
            kw["grad"] = kw["param"]
            return Case(call, kw, Same(expected), written | {"grad"})
        add("grad-is-param", build)
    return cases


def _readonly(arr):
    arr.flags.writeable = False
    return arr


# ---------------------------------------------------------------------------
# The cases of MLP
# ---------------------------------------------------------------------------

SIZES = [4, 5, 3]


def _net(backend, loss="mse", dtype="float64", seed=0, **kw):
    return MLP(SIZES, loss=loss, dtype=dtype, seed=seed, backend=backend,
               activation="tanh", **kw)


def _data(loss, dtype="float64", n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, SIZES[-1], size=n)
    elif loss == "binary_cross_entropy":  # multi-label 0/1 targets
        y = rng.integers(0, 2, size=(n, SIZES[-1])).astype(dtype)
    else:
        y = rng.normal(size=(n, SIZES[-1])).astype(dtype)
    return x, y


METHODS = ("predict", "evaluate", "loss_and_grads", "train_step", "fit")
HYPER = {"train_step": dict(lr=0.05), "fit": dict(lr=0.05, epochs=2, batch_size=2, seed=0)}


def _twin_result(backend, loss, dtype, method, kwargs):
    """What ``method`` gives on a fresh identical model with clean contiguous inputs."""
    def run():
        twin = _net(backend, loss, dtype)
        clean = {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v)
                 for k, v in _copy(kwargs).items()}
        result = getattr(twin, method)(**clean)
        return result, twin.parameters.copy()
    return run


def _model_same(net, expected, exact):
    def check(result):
        want_result, want_params = expected()
        _assert_same(result, want_result, exact)
        _assert_same(net.parameters, want_params, exact)
    return Check(check)


def mlp_cases(backend):
    cases = {}

    def add(label, build):
        cases[f"MLP-{backend}-{label}"] = build

    # construction
    ctor = lambda **kw: MLP(**kw)  # noqa: E731
    base = dict(layer_sizes=SIZES, backend=backend)
    bad_ctor = {
        "sizes-zero": (dict(layer_sizes=[4, 0, 3]), ValueError, "layer_sizes"),
        "sizes-negative": (dict(layer_sizes=[4, -2, 3]), ValueError, "layer_sizes"),
        "sizes-one": (dict(layer_sizes=[4]), ValueError, "layer_sizes"),
        "sizes-empty": (dict(layer_sizes=[]), ValueError, "layer_sizes"),
        "sizes-float": (dict(layer_sizes=[4, 2.5, 3]), TypeError, "layer_sizes"),
        "sizes-bool": (dict(layer_sizes=[4, True, 3]), TypeError, "layer_sizes"),
        "sizes-str": (dict(layer_sizes="453"), TypeError, "layer_sizes"),
        "sizes-int": (dict(layer_sizes=4), TypeError, "layer_sizes"),
        "sizes-none": (dict(layer_sizes=None), TypeError, "layer_sizes"),
        "activation-unknown": (dict(activation="swish"), ValueError, "activation", "'relu'"),
        "activation-options-unused": (dict(activation="tanh", activation_options={"alpha": 1.0}),
                                      ValueError, "activation_options", "'alpha'"),
        "activation-options-unknown": (dict(activation="elu", activation_options={"slope": 1.0}),
                                       ValueError, "activation_options", "'alpha'"),
        "activation-options-not-dict": (dict(activation="elu", activation_options=[1.0]),
                                        TypeError, "activation_options"),
        "activation-options-negative": (dict(activation="leaky_relu",
                                             activation_options={"negative_slope": -0.1}),
                                        ValueError, "activation_options", "`negative_slope`"),
        "activation-options-nan": (dict(activation="softplus", activation_options={"beta": math.nan}),
                                   ValueError, "activation_options", "`beta`"),
        "activation-options-str": (dict(activation="elu", activation_options={"alpha": "1"}),
                                   TypeError, "activation_options", "`alpha`"),
        "activation-options-output": (dict(activation="tanh", output_activation="softplus",
                                           activation_options={"beta": 0.0}),
                                      ValueError, "activation_options", "`beta`"),
        "loss-options-unknown": (dict(loss="huber", loss_options={"beta": 1.0}), ValueError,
                                 "loss_options", "'delta'"),
        "loss-options-none-taken": (dict(loss="mse", loss_options={"delta": 1.0}), ValueError,
                                    "loss_options"),
        "loss-options-not-dict": (dict(loss="huber", loss_options=2.0), TypeError,
                                  "loss_options"),
        "loss-options-delta-zero": (dict(loss="huber", loss_options={"delta": 0.0}), ValueError,
                                    "loss_options", "`delta`"),
        "loss-options-beta-negative": (dict(loss="smooth_l1", loss_options={"beta": -1.0}),
                                       ValueError, "loss_options", "`beta`"),
        "loss-options-beta-str": (dict(loss="smooth_l1", loss_options={"beta": "1"}),
                                  TypeError, "loss_options", "`beta`"),
        "loss-options-smoothing": (dict(loss="cross_entropy", loss_options={
            "label_smoothing": 1.5}), ValueError, "loss_options", "`label_smoothing`"),
        "loss-options-class-weight-length": (dict(loss="cross_entropy", loss_options={
            "class_weight": [1.0, 2.0]}), ValueError, "loss_options", "`class_weight`"),
        "loss-options-class-weight-negative": (dict(loss="cross_entropy", loss_options={
            "class_weight": [1.0, -2.0, 1.0]}), ValueError, "loss_options", "`class_weight`"),
        "loss-options-pos-weight-nan": (dict(loss="binary_cross_entropy", loss_options={
            "pos_weight": [1.0, np.nan, 1.0]}), ValueError, "loss_options", "`pos_weight`"),
        "loss-options-pos-weight-str": (dict(loss="binary_cross_entropy", loss_options={
            "pos_weight": ["a", "b", "c"]}), TypeError, "loss_options", "`pos_weight`"),
        "reduction-l1-half": (dict(loss="l1", reduction="half_mean"), ValueError, "reduction",
                              "'sum'"),
        "activation-count": (dict(activation=["relu", "tanh"]), ValueError, "activation"),
        "activation-none": (dict(activation=None), (TypeError, ValueError), "activation"),
        "output-activation-unknown": (dict(output_activation="swish"), ValueError,
                                      "output_activation", "'softmax'"),
        "loss-unknown": (dict(loss="hinge"), ValueError, "loss", "'cross_entropy'"),
        "loss-none": (dict(loss=None), ValueError, "loss", "'mse'"),
        "reduction-unknown": (dict(reduction="median"), ValueError, "reduction", "'mean'"),
        "reduction-ce-half": (dict(loss="cross_entropy", reduction="half_sum"), ValueError,
                              "reduction"),
        "ce-needs-softmax": (dict(loss="cross_entropy", output_activation="identity"),
                             ValueError, "output_activation"),
        "reduction-bce-half": (dict(loss="binary_cross_entropy", reduction="half_mean"),
                               ValueError, "reduction", "'sum'"),
        "bce-needs-sigmoid": (dict(loss="binary_cross_entropy", output_activation="softmax"),
                              ValueError, "output_activation", "'sigmoid'"),
        "dtype-float16": (dict(dtype="float16"), TypeError, "dtype"),
        "dtype-int": (dict(dtype="int32"), TypeError, "dtype"),
        "dtype-nonsense": (dict(dtype="nonsense"), TypeError, "dtype"),
        "init-unknown": (dict(init="xavier"), ValueError, "init", "'glorot'"),
        "backend-unknown": (dict(backend="gpu"), ValueError, "backend", "'compiled'"),
        "seed-str": (dict(seed="abc"), TypeError, "seed"),
        "seed-negative": (dict(seed=-1), ValueError, "seed"),
        "dropout-one": (dict(dropout=1.0), ValueError, "dropout"),
        "dropout-negative": (dict(dropout=-0.1), ValueError, "dropout"),
        "dropout-nan": (dict(dropout=math.nan), ValueError, "dropout"),
        "dropout-str": (dict(dropout="0.5"), TypeError, "dropout"),
        "dropout-bool": (dict(dropout=True), TypeError, "dropout"),
        "dropout-count": (dict(dropout=[0.1, 0.2]), ValueError, "dropout"),
        "dropout-item-str": (dict(dropout=["0.5"]), TypeError, "dropout"),
        "dropout-dict": (dict(dropout={"p": 0.5}), TypeError, "dropout"),
    }
    for label, (kw, exc, arg, *words) in bad_ctor.items():
        add(f"init-{label}", lambda kw=kw, exc=exc, arg=arg, words=words: Case(
            ctor, {**base, **kw}, raises(exc, named(arg), *words)))
    for label, value, expected in (("float", 0.5, (0.5,)), ("list", [0.25], (0.25,)),
                                   ("ndarray", np.array([0.1]), (0.1,)), ("zero", 0, (0.0,)),
                                   ("none", None, (0.0,))):
        add(f"init-dropout-{label}", lambda value=value, expected=expected: Case(
            ctor, dict(base, dropout=value),
            Check(lambda net, expected=expected: _assert_same(net.dropout, expected, True))))
    add("init-sizes-ndarray", lambda: Case(
        ctor, dict(base, layer_sizes=np.array(SIZES)),
        Check(lambda net: _assert_same(net.layer_sizes, SIZES, True))))

    # from_arrays
    def arrays(dtype=np.float64):
        rng = np.random.default_rng(0)
        return ([rng.normal(size=(4, 5)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype)],
                [np.zeros(5, dtype), np.zeros(3, dtype)])
    fa = lambda **kw: MLP.from_arrays(**kw, backend=backend)  # noqa: E731
    bad_fa = {
        "chain": (lambda w, b: (w[:1] + [np.zeros((6, 3))], b), ValueError, "weights[1]"),
        "bias-shape": (lambda w, b: (w, [np.zeros(4), b[1]]), ValueError, "biases[0]"),
        "bias-ndim": (lambda w, b: (w, [np.zeros((1, 5)), b[1]]), ValueError, "biases[0]"),
        "weight-ndim": (lambda w, b: ([w[0][0]] + w[1:], b), ValueError, "weights[0]"),
        "empty": (lambda w, b: ([], []), ValueError, "weights"),
        "count": (lambda w, b: (w, b[:1]), ValueError, "biases"),
        "float16": (lambda w, b: ([w[0].astype(np.float16), w[1]], b), TypeError, "weights[0]"),
        "complex": (lambda w, b: (w, [b[0], b[1].astype(complex)]), TypeError, "biases[1]"),
        "mixed": (lambda w, b: ([w[0], w[1].astype(np.float32)], b), TypeError, "weights[1]"),
        "weight-zero-width": (lambda w, b: ([np.zeros((4, 0)), np.zeros((0, 3))],
                                            [np.zeros(0), b[1]]), ValueError, "layer_sizes"),
    }
    for label, (mutate, exc, arg) in bad_fa.items():
        def build(mutate=mutate, exc=exc, arg=arg):
            w, b = mutate(*arrays())
            return Case(fa, dict(weights=w, biases=b), raises(exc, named(arg)))
        add(f"from_arrays-{label}", build)

    def build():
        w, b = arrays()
        w = [layout(w[0], "fortran"), layout(w[1], "read_only")]
        ref = MLP.from_arrays(*arrays(), backend=backend)
        return Case(fa, dict(weights=w, biases=b),
                    Check(lambda net: _assert_same(net.parameters, ref.parameters, True)))
    add("from_arrays-layouts", build)

    # methods, for both losses
    for loss in ("mse", "cross_entropy", "binary_cross_entropy"):
        ce = loss == "cross_entropy"
        bce = loss == "binary_cross_entropy"
        for method in METHODS:
            takes_y = method != "predict"
            hyper = HYPER.get(method, {})
            writes = method in ("train_step", "fit")
            tag = f"{method}-{loss}"

            def case(kwargs, expect, dtype="float64", quiet=False, method=method,
                     writes=writes, loss=loss):
                net = _net(backend, loss, dtype)
                return Case(getattr(net, method), kwargs, expect, model=net,
                            writes_model=writes, quiet=quiet)

            def kw(dtype="float64", n=6, method=method, takes_y=takes_y, hyper=hyper, loss=loss):
                x, y = _data(loss, dtype, n)
                return dict(x=x, y=y, **hyper) if takes_y else dict(x=x)

            def ok(kwargs, dtype="float64", exact=None, method=method, loss=loss, writes=writes):
                net = _net(backend, loss, dtype)
                exact = backend == "compiled" if exact is None else exact
                return Case(getattr(net, method), kwargs,
                            _model_same(net, _twin_result(backend, loss, dtype, method, kwargs),
                                        exact), model=net, writes_model=writes)

            for dt in ("float32", "float64"):
                add(f"{tag}-valid-{dt}", lambda dt=dt, kw=kw, ok=ok: ok(kw(dt), dt))
            # x: ndim, width, dtype, layouts, lists, scalars, empty
            for label, make, exc in (("x-1d", lambda x: x[0], ValueError),
                                     ("x-3d", lambda x: x[None], ValueError),
                                     ("x-width", lambda x: x[:, :-1], ValueError),
                                     ("x-scalar", lambda x: 1.0, ValueError),
                                     ("x-float16", lambda x: x.astype(np.float16), TypeError),
                                     ("x-complex", lambda x: x.astype(complex), TypeError),
                                     ("x-object", lambda x: x.astype(object), TypeError),
                                     ("x-str", lambda x: x.astype(str), TypeError)):
                def build(make=make, exc=exc, kw=kw, case=case):
                    args = kw()
                    args["x"] = make(args["x"])
                    return case(args, raises(exc, named("x")))
                add(f"{tag}-{label}", build)
            for kind in LAYOUTS_ND + LAYOUTS_2D:
                def build(kind=kind, kw=kw, ok=ok, takes_y=takes_y, ce=ce):
                    args = kw("float32")
                    args["x"] = layout(args["x"], kind)
                    if takes_y and (not ce or kind in LAYOUTS_ND):
                        args["y"] = layout(args["y"], kind)
                    return ok(args, "float32")
                add(f"{tag}-layout-{kind}", build)
            # data as it comes: ints, lists and the other float dtype are converted
            for label, conv in (("int", lambda x: np.round(x).astype(np.int64)),
                                ("list", lambda x: x.tolist()),
                                ("float32-into-float64", lambda x: x.astype(np.float32))):
                def build(conv=conv, kw=kw, ok=ok):
                    args = kw()
                    args["x"] = conv(args["x"])
                    return ok(args)
                add(f"{tag}-x-{label}", build)
            if method == "predict":
                add(f"{tag}-empty", lambda kw=kw, ok=ok: ok(kw(n=0)))
            else:
                add(f"{tag}-empty", lambda kw=kw, case=case: case(
                    kw(n=0), raises(ValueError, named("x"), "at least 1 row")))
            # NaN / inf in x
            for dt in ("float32", "float64"):
                def build(dt=dt, kw=kw, ok=ok, case=case, method=method):
                    args = kw(dt)
                    args["x"][0, 0], args["x"][1, 1], args["x"][2, 2] = np.nan, np.inf, -np.inf
                    if method in ("predict", "evaluate"):
                        return ok(args, dt, exact=False)
                    failing = case(args, raises(FloatingPointError, "finite"), dt)
                    return failing._replace(writes_on_error=method == "fit")
                add(f"{tag}-nonfinite-x-{dt}", build)
            if ce or bce:
                def build(kw=kw, case=case):
                    args = kw("float32")
                    args["x"] = (np.sign(args["x"]) * 1e30).astype(np.float32)

                    def check(result):
                        for r in _flat(result):
                            assert np.all(np.isfinite(r)), r
                    return case(args, Check(check), "float32", quiet=True)
                if method in ("predict", "evaluate"):
                    add(f"{tag}-huge-1e30", build)
            if not takes_y:
                continue
            # y: shapes, labels, dtypes
            bad_y = {"y-rows": (lambda y: y[:-1], ValueError),
                     "y-2d" if ce else "y-width": ((lambda y: y[:, None]) if ce
                                                   else (lambda y: y[:, :-1]), ValueError),
                     "y-3d": (lambda y: y[None], ValueError),
                     "y-missing": (lambda y: None, (TypeError, ValueError)),
                     "y-complex": (lambda y: y.astype(complex), TypeError),
                     "y-str": (lambda y: y.astype(str), TypeError)}
            if ce:
                bad_y.update({"y-label-too-big": (lambda y: np.full_like(y, SIZES[-1]),
                                                  ValueError),
                              "y-label-negative": (lambda y: np.full_like(y, -1), ValueError),
                              "y-label-fraction": (lambda y: y + 0.5, ValueError),
                              "y-label-nan": (lambda y: np.where(y == y, np.nan, 0.0),
                                              ValueError)})
            if bce:  # targets in [0, 1]
                bad_y.update({"y-above-one": (lambda y: y + 1.5, ValueError),
                              "y-negative": (lambda y: y - 0.25, ValueError),
                              "y-nan": (lambda y: np.where(y > 0, np.nan, y), ValueError)})
            for label, (make, exc) in bad_y.items():
                def build(make=make, exc=exc, kw=kw, case=case, label=label):
                    args = kw()
                    args["y"] = make(args["y"])
                    if label == "y-missing" and args["y"] is None:
                        return case(args, raises(exc, named("y")))
                    return case(args, raises(exc, named("y")))
                add(f"{tag}-{label}", build)
            add(f"{tag}-y-list", lambda kw=kw, ok=ok: ok(
                {**kw(), "y": kw()["y"].tolist()}))
            if not ce:
                add(f"{tag}-y-float32-into-float64", lambda kw=kw, ok=ok: ok(
                    {**kw(), "y": kw()["y"].astype(np.float32)}))
            if bce:
                add(f"{tag}-y-soft", lambda kw=kw, ok=ok: ok(
                    {**kw(), "y": kw()["y"] * 0.5 + 0.25}))
            elif not ce:
                add(f"{tag}-y-nonfinite", lambda kw=kw, ok=ok, case=case, method=method: (
                    ok({**kw(), "y": np.full((6, SIZES[-1]), np.nan)}, exact=False)
                    if method == "evaluate" else
                    case({**kw(), "y": np.full((6, SIZES[-1]), np.nan)},
                         raises(FloatingPointError, "finite"))))
            if method in ("loss_and_grads", "train_step", "fit"):
                for label, make, exc in (
                        ("length", lambda n: np.ones(n - 1), ValueError),
                        ("2d", lambda n: np.ones((n, 1)), ValueError),
                        ("scalar", lambda n: 1.0, ValueError),
                        ("negative", lambda n: np.r_[-1.0, np.ones(n - 1)], ValueError),
                        ("nan", lambda n: np.r_[np.nan, np.ones(n - 1)], ValueError),
                        ("inf", lambda n: np.r_[np.inf, np.ones(n - 1)], ValueError),
                        ("all-zero", lambda n: np.zeros(n), ValueError),
                        ("str", lambda n: np.full(n, "1"), TypeError),
                        ("complex", lambda n: np.ones(n, complex), TypeError),
                        ("float16", lambda n: np.ones(n, np.float16), TypeError)):
                    def build(make=make, exc=exc, kw=kw, case=case):
                        args = kw()
                        args["sample_weight"] = make(args["x"].shape[0])
                        return case(args, raises(exc, named("sample_weight")))
                    add(f"{tag}-sample_weight-{label}", build)
                for label, make in (("int", lambda n: np.arange(n) % 3),
                                    ("list", lambda n: [0.5] * n),
                                    ("strided", lambda n: layout(np.linspace(0.5, 2, n),
                                                                 "strided")),
                                    ("read_only", lambda n: layout(np.ones(n), "read_only"))):
                    def build(make=make, kw=kw, ok=ok):
                        args = kw()
                        args["sample_weight"] = make(args["x"].shape[0])
                        return ok(args)
                    add(f"{tag}-sample_weight-{label}", build)
            if not hyper:
                continue
            # hyper-parameters
            for arg in ("lr", "momentum", "weight_decay"):
                for label, value, exc in (("negative", -0.1, ValueError),
                                          ("nan", math.nan, ValueError),
                                          ("inf", math.inf, ValueError),
                                          ("str", "0.1", TypeError),
                                          ("none", None, TypeError),
                                          ("array", np.array([0.1]), TypeError)):
                    if arg in ("lr", "weight_decay") and value is None:  # the optimizer's default
                        add(f"{tag}-{arg}-default", lambda kw=kw, ok=ok, arg=arg: ok(
                            {**kw(), arg: None}))
                        continue
                    add(f"{tag}-{arg}-{label}",
                        lambda arg=arg, value=value, exc=exc, kw=kw, case=case: case(
                            {**kw(), arg: value}, raises(exc, named(arg))))
            add(f"{tag}-nesterov-str", lambda kw=kw, case=case: case(
                {**kw(), "momentum": 0.9, "nesterov": "yes"},
                raises(TypeError, named("nesterov"))))
            add(f"{tag}-nesterov-no-momentum", lambda kw=kw, case=case: case(
                {**kw(), "nesterov": True}, raises(ValueError, named("nesterov"))))
            add(f"{tag}-lr-numpy-scalar", lambda kw=kw, ok=ok: ok({**kw(), "lr": np.float64(0.05)}))
            # the optimizer options
            for label, value, exc, arg, *words in (
                    ("optimizer-unknown", dict(optimizer="adagrad"), ValueError, "optimizer",
                     "'adam'", "'sgd'"),
                    ("optimizer-none", dict(optimizer=None), ValueError, "optimizer", "'adam'"),
                    ("optimizer-upper", dict(optimizer="Adam"), ValueError, "optimizer"),
                    ("decay-unknown", dict(decay="biases"), ValueError, "decay", "'weights'",
                     "'all'"),
                    ("decay-bool", dict(decay=True), ValueError, "decay", "'weights'"),
                    ("betas-single", dict(optimizer="adam", betas=(0.9,)), TypeError, "betas"),
                    ("betas-float", dict(optimizer="adam", betas=0.9), TypeError, "betas"),
                    ("betas-one", dict(optimizer="adam", betas=(1.0, 0.999)), ValueError,
                     "betas"),
                    ("betas-nan", dict(optimizer="adam", betas=(0.9, math.nan)), ValueError,
                     "betas[1]"),
                    ("betas-str", dict(optimizer="adam", betas=("0.9", 0.999)), TypeError,
                     "betas[0]"),
                    ("eps-zero", dict(optimizer="adam", eps=0.0), ValueError, "eps"),
                    ("eps-negative", dict(optimizer="adam", eps=-1e-8), ValueError, "eps"),
                    ("eps-str", dict(optimizer="adam", eps="1e-8"), TypeError, "eps"),
                    ("alpha-negative", dict(optimizer="rmsprop", alpha=-0.1), ValueError,
                     "alpha"),
                    ("alpha-above-one", dict(optimizer="rmsprop", alpha=1.5), ValueError,
                     "alpha"),
                    ("alpha-nan", dict(optimizer="rmsprop", alpha=math.nan), ValueError,
                     "alpha"),
                    ("alpha-str", dict(optimizer="rmsprop", alpha="0.9"), TypeError, "alpha"),
                    ("centered-str", dict(optimizer="rmsprop", centered="yes"), TypeError,
                     "centered"),
                    ("centered-none", dict(optimizer="rmsprop", centered=None), TypeError,
                     "centered"),
                    *((f"{clip}-{label}", {clip: value}, exc, clip)
                      for clip in ("clip_grad_norm", "clip_grad_value")
                      for label, value, exc in (("negative", -1.0, ValueError),
                                                ("nan", math.nan, ValueError),
                                                ("inf", math.inf, ValueError),
                                                ("str", "1.0", TypeError),
                                                ("bool", True, TypeError),
                                                ("array", np.array([1.0]), TypeError)))):
                add(f"{tag}-{label}", lambda value=value, exc=exc, arg=arg, words=words, kw=kw,
                    case=case: case({**kw(), **value}, raises(exc, named(arg), *words)))
            for label, value in (("adam", dict(optimizer="adam")),
                                 ("adam-decay-weights", dict(optimizer="adam", decay="weights",
                                                             weight_decay=0.01)),
                                 ("sgd-decay-weights", dict(momentum=0.9, decay="weights",
                                                            weight_decay=0.01)),
                                 ("adamw", dict(optimizer="adamw")),
                                 ("adamw-decay-weights", dict(optimizer="adamw",
                                                              decay="weights")),
                                 ("rmsprop", dict(optimizer="rmsprop")),
                                 ("rmsprop-all-options", dict(optimizer="rmsprop", momentum=0.9,
                                                              centered=True, alpha=0.9,
                                                              weight_decay=0.01)),
                                 ("clip-norm", dict(clip_grad_norm=0.5)),
                                 ("clip-norm-zero", dict(clip_grad_norm=0.0)),
                                 ("clip-value", dict(optimizer="adam", clip_grad_value=0.1)),
                                 ("clip-both", dict(clip_grad_norm=0.5, clip_grad_value=0.1,
                                                    momentum=0.9))):
                add(f"{tag}-{label}", lambda value=value, kw=kw, ok=ok: ok({**kw(), **value}))
            if method != "fit":
                continue
            for label, value, exc, arg, *words in (
                    ("epochs-negative", dict(epochs=-1), ValueError, "epochs"),
                    ("epochs-float", dict(epochs=1.5), TypeError, "epochs"),
                    ("epochs-none", dict(epochs=None), TypeError, "epochs"),
                    ("batch-zero", dict(batch_size=0), ValueError, "batch_size"),
                    ("batch-float", dict(batch_size=2.0), TypeError, "batch_size"),
                    ("batch-bool", dict(batch_size=True), TypeError, "batch_size"),
                    ("validation-not-pair", dict(validation_data=np.zeros(3)), ValueError,
                     "validation_data"),
                    ("validation-bad-x", dict(validation_data=(np.zeros((2, 9)), np.zeros(2, np.int64))),
                     ValueError, "validation_data"),
                    ("callback-not-callable", dict(callback=3), TypeError, "callback"),
                    ("seed-str", dict(seed="abc"), TypeError, "seed"),
                    ("schedule-unknown", dict(schedule="cyclic"), ValueError, "schedule",
                     "'constant'", "'invscaling'", "'adaptive'"),
                    ("schedule-none", dict(schedule=None), ValueError, "schedule"),
                    ("power_t-negative", dict(power_t=-0.5), ValueError, "power_t"),
                    ("power_t-nan", dict(power_t=math.nan), ValueError, "power_t"),
                    ("power_t-str", dict(power_t="0.5"), TypeError, "power_t"),
                    ("patience-zero", dict(patience=0), ValueError, "patience"),
                    ("patience-float", dict(patience=2.5), TypeError, "patience"),
                    ("patience-bool", dict(patience=True), TypeError, "patience"),
                    ("patience-none", dict(patience=None), TypeError, "patience"),
                    ("tol-negative", dict(tol=-1e-4), ValueError, "tol"),
                    ("tol-inf", dict(tol=math.inf), ValueError, "tol"),
                    ("tol-str", dict(tol="1e-4"), TypeError, "tol"),
                    ("early_stopping-no-validation", dict(early_stopping=True), ValueError,
                     "early_stopping"),
                    ("early_stopping-str", dict(early_stopping="yes"), TypeError,
                     "early_stopping"),
                    ("schedule_options-not-dict", dict(schedule="step",
                                                       schedule_options=[("step_size", 1)]),
                     TypeError, "schedule_options"),
                    ("schedule_options-unknown", dict(schedule="step", schedule_options=dict(
                        step_size=1, milestones=[1])), ValueError, "schedule_options",
                     "'milestones'"),
                    ("schedule_options-missing", dict(schedule="step"), ValueError,
                     "schedule_options", "'step_size'"),
                    ("schedule_options-for-constant", dict(schedule_options=dict(gamma=0.5)),
                     ValueError, "schedule_options"),
                    ("schedule_options-gamma-negative", dict(
                        schedule="exponential", schedule_options=dict(gamma=-0.5)), ValueError,
                     "schedule_options['gamma']"),
                    ("schedule_options-step_size-float", dict(
                        schedule="step", schedule_options=dict(step_size=1.5)), TypeError,
                     "schedule_options['step_size']"),
                    ("schedule_options-pct_start", dict(
                        schedule="onecycle", schedule_options=dict(pct_start=2.0)), ValueError,
                     "schedule_options['pct_start']"),
                    ("schedule-callable-negative", dict(schedule=lambda epoch: -0.1),
                     ValueError, "schedule"),
                    ("schedule-callable-none", dict(schedule=lambda epoch: None), TypeError,
                     "schedule"),
                    ("schedule-callable-nan", dict(schedule=lambda epoch: math.nan),
                     ValueError, "schedule")):
                add(f"{tag}-{label}", lambda value=value, exc=exc, arg=arg, words=words, kw=kw,
                    case=case: case({**kw(), **value}, raises(exc, named(arg), *words)))
            add(f"{tag}-epochs-zero", lambda kw=kw, ok=ok: ok({**kw(), "epochs": 0}))
            for label, value in (("invscaling", dict(schedule="invscaling", power_t=0.25)),
                                 ("adaptive", dict(schedule="adaptive", patience=1, tol=0.0)),
                                 ("early-stopping", dict(
                                     early_stopping=True, patience=1,
                                     validation_data=_data(loss, n=4, seed=2))),
                                 ("schedule-step", dict(schedule="step",
                                                        schedule_options=dict(step_size=1))),
                                 ("schedule-exponential", dict(
                                     schedule="exponential", schedule_options=dict(gamma=0.5))),
                                 ("schedule-cosine-warmup", dict(
                                     schedule="cosine", schedule_options=dict(warmup_epochs=1))),
                                 ("schedule-onecycle", dict(schedule="onecycle")),
                                 ("schedule-onecycle-adamw", dict(schedule="onecycle",
                                                                  optimizer="adamw")),
                                 ("schedule-callable", dict(schedule=lambda epoch: 0.1 / (
                                     epoch + 1))),
                                 ("adam-sample-weight", dict(optimizer="adam",
                                                             sample_weight=np.arange(6) % 2 + 1))):
                add(f"{tag}-{label}", lambda value=value, kw=kw, ok=ok: ok({**kw(), **value}))
    # the lock: reset_optimizer and save take no bad input but must not corrupt
    return cases


# ---------------------------------------------------------------------------
# Comparing results
# ---------------------------------------------------------------------------

def _flat(result):
    if isinstance(result, dict):
        return [np.asarray(v) for _, v in sorted(result.items())]
    if isinstance(result, (tuple, list)):
        return [r for item in result if item is not None for r in _flat(item)]
    if result is None:
        return []
    return [np.asarray(result)]


def _assert_same(got, expected, exact, dtype=None):
    got, expected = _flat(got), _flat(expected)
    assert len(got) == len(expected), (len(got), len(expected))
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind == "f":
            assert g.dtype == e.dtype, (g.dtype, e.dtype)
            if exact:
                np.testing.assert_array_equal(g, e)
            else:
                tol = TOL[np.dtype(dtype if dtype is not None else e.dtype)]
                np.testing.assert_allclose(g, e, rtol=tol["rtol"] * 20, atol=tol["atol"] * 20,
                                           equal_nan=True)
        else:
            np.testing.assert_array_equal(g, e)


def _digest(value):
    """A digest of every array reachable in ``value`` (None when it holds none)."""
    if isinstance(value, np.ndarray):
        h = hashlib.sha1(f"{value.dtype.str}{value.shape}{value.strides}".encode())
        if value.dtype.hasobject:
            h.update(repr(value.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    return repr(value)


# ---------------------------------------------------------------------------
# Running one case (in the child) and the matrix (from pytest)
# ---------------------------------------------------------------------------

def all_cases():
    cases = {}
    for backend in BACKENDS:
        for name in SPECS:
            cases.update(function_cases(name, backend))
        cases.update(mlp_cases(backend))
    return cases


def run_case(case_id, build):
    """Run one case; raise AssertionError saying what went wrong."""
    case = build()
    compiled = "-compiled-" in case_id
    before = {k: _digest(v) for k, v in case.kwargs.items()}
    model_before = _digest(case.model.parameters) if case.model is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = case.fn(**case.kwargs), None
        except Exception as exc:  # noqa: BLE001 -- the outcome under test
            result, error = None, exc
    after = {k: _digest(v) for k, v in case.kwargs.items()}
    model_after = _digest(case.model.parameters) if case.model is not None else None
    if isinstance(case.expect, Raises):
        if error is None:
            raise AssertionError(f"expected {case.expect.exc} but the call returned")
        if not isinstance(error, case.expect.exc):
            raise AssertionError(f"expected {case.expect.exc}, got {error!r}")
        message = str(error)
        for word in case.expect.words:
            alternatives = word if isinstance(word, tuple) else (word,)
            if not any(w in message for w in alternatives):
                raise AssertionError(f"message {message!r} lacks {' or '.join(alternatives)}")
        changed = [k for k in before if before[k] != after[k]]
        if changed:
            raise AssertionError(f"a failing call modified {changed}")
        if model_before != model_after and not case.writes_on_error:
            raise AssertionError("a failing call modified the model")
        if case.model is not None and not np.isfinite(case.model.parameters).all():
            raise AssertionError("a failing call left non-finite parameters")
    else:
        if error is not None:
            raise AssertionError(f"unexpected {error!r}")
        if isinstance(case.expect, Same):
            _assert_same(result, case.expect.expected(), case.expect.exact, case.expect.dtype)
        else:
            case.expect.check(result)
        changed = [k for k in before if before[k] != after[k] and k not in case.written]
        if changed:
            raise AssertionError(f"the call modified its input(s) {changed}")
        if model_before != model_after and not case.writes_model:
            raise AssertionError("the call modified the model")
    if (compiled or case.quiet) and caught:
        raise AssertionError(f"warnings: {[str(w.message) for w in caught]}")


def _child_main(ids_path, log_path):
    """Run the cases listed in ``ids_path``, logging ``S id`` / ``R id result`` lines."""
    faulthandler.enable()
    cases = all_cases()
    with open(ids_path) as f:
        ids = json.load(f)
    with open(log_path, "a") as log:
        for case_id in ids:
            log.write(f"S\t{case_id}\n")
            log.flush()
            try:
                run_case(case_id, cases[case_id])
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001
                outcome = f"{type(exc).__name__}: {exc}"[:2000]
            log.write(f"R\t{case_id}\t{json.dumps(outcome)}\n")
            log.flush()
    for tmp in _TMP:
        tmp.cleanup()


CASES = all_cases()
CASE_IDS = sorted(CASES)


@pytest.fixture(scope="module")
def matrix():
    """Outcome of every case, from child interpreters (a crash fails only its case)."""
    here = os.path.dirname(os.path.abspath(__file__))
    results = {}
    remaining = list(CASE_IDS)
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(50):
            if not remaining:
                break
            ids_path = os.path.join(tmp, f"ids{attempt}.json")
            log_path = os.path.join(tmp, f"log{attempt}.txt")
            with open(ids_path, "w") as f:
                json.dump(remaining, f)
            proc = run_python(f"""
                import sys
                sys.path.insert(0, {here!r})
                import test_badinput
                test_badinput._child_main({ids_path!r}, {log_path!r})
            """, check=False, timeout=600)
            started = None
            with open(log_path) as f:
                for line in f:
                    kind, case_id, *rest = line.rstrip("\n").split("\t")
                    if kind == "S":
                        started = case_id
                    else:
                        results[case_id] = json.loads(rest[0])
                        started = None
            if started is not None:
                results[started] = (f"CRASH (exit {proc.returncode}) while running this case:\n"
                                    f"{proc.stderr[-3000:]}")
            elif proc.returncode != 0:
                for case_id in remaining:
                    results.setdefault(case_id, f"child failed: {proc.stderr[-3000:]}")
            remaining = [c for c in remaining if c not in results]
    return results


def test_matrix_size():
    # The report counts these; a refactor that drops most cases should not pass quietly.
    assert len(CASE_IDS) > 1500


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input(matrix, case_id):
    outcome = matrix.get(case_id, "not run")
    if outcome != "ok":
        pytest.fail(outcome, pytrace=False)


if __name__ == "__main__":  # python tests/test_badinput.py CASE_ID: run one case in-process
    for cid in sys.argv[1:]:
        run_case(cid, CASES[cid])
        print(cid, "ok")
