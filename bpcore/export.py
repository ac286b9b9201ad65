"""Deploying a model: ONNX export, PyTorch import and export, skl2onnx registration.

    onnx_model = net.to_onnx("model.onnx")      # onnxruntime, browsers, phones
    module = net.to_torch()                      # a torch.nn.Sequential, same weights
    net = bpcore.MLP.from_torch(module)          # and back, bitwise
    bpcore.export.register_skl2onnx()            # skl2onnx.to_onnx(bpcore estimator, X)

Design
------
Everything here reads a model through :class:`bpcore.MLP`'s public attributes
(``layer_sizes``, ``activations``, ``weights``, ``biases``, ``dtype``, ``loss``)
and builds one through :meth:`MLP.from_arrays`, so the model file format and the
training core know nothing of it.  An activation is one row of each table below
(``_ONNX_ACTIVATIONS``, ``_TORCH_ACTIVATIONS``): a new activation of the MLP is
exportable once it has its two rows, and ``tests/test_export.py`` fails for an
activation the MLP accepts without them.  Rows for activations the MLP does not
accept (yet) are harmless: nothing reaches them.

onnx, torch and skl2onnx are optional and imported inside the functions only;
a missing one is a one-line ``ImportError`` naming the command that installs it.
"""
import importlib
import math
import os
import sys

import numpy as np

from . import _validate as V
from .nn import ACTIVATIONS, MLP, OUTPUT_ACTIVATIONS

__all__ = ["to_onnx", "from_torch", "to_torch", "register_skl2onnx", "DEFAULT_OPSET",
           "INPUT_NAME", "OUTPUT_NAME"]

# Opset 17 runs on every onnxruntime since 1.12; Gelu is an operator from 20 on
# (below it the graph spells it with Erf or Tanh).  Softmax has its per-axis
# meaning from 13 on.
DEFAULT_OPSET = 17
MIN_OPSET = 13
INPUT_NAME = "x"
OUTPUT_NAME = "y"
BATCH_DIM = "batch"

# Constants of the parametrised activations: PyTorch's defaults (a model's
# activation_options override them; see _options).
LEAKY_SLOPE = V.ACTIVATION_PARAMS["leaky_relu"]["negative_slope"]
ELU_ALPHA = V.ACTIVATION_PARAMS["elu"]["alpha"]


def _options(net, act):
    """Layer activation ``act``'s parameters in ``net``: its activation_options over
    PyTorch's defaults (an empty dict for the activations without parameters)."""
    defaults = V.ACTIVATION_PARAMS.get(act, {})
    return {k: float(net.activation_options.get(k, v)) for k, v in defaults.items()}


def _require(module, install):
    """Import an optional dependency, or one ``ImportError`` line saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"bpcore.export needs {module.split('.')[0]}: pip install "
                          f"{install} ({exc})") from None


def _check_net(net):
    if not isinstance(net, MLP):
        raise TypeError(f"`net` must be a bpcore.MLP; got {type(net).__name__}")


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------

class _Graph:
    """The nodes and initializers of one ONNX graph under construction."""

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.dtype, self.opset = onnx, np.dtype(dtype), opset
        self.float64 = self.dtype == np.float64
        self.nodes, self.initializers, self._scalars = [], [], {}

    def tensor(self, name, value):
        """An initializer holding ``value`` exactly, in the model's dtype."""
        arr = np.ascontiguousarray(value, dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value):
        """A 0-d constant of the model's dtype (one initializer per value)."""
        if value not in self._scalars:
            self._scalars[value] = self.tensor(f"const_{len(self._scalars)}", value)
        return self._scalars[value]

    def op(self, op_type, *inputs, **attrs):
        """Append one node; return the name of its output."""
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     name=f"{op_type}_{len(self.nodes)}",
                                                     **attrs))
        return out


def _gelu(g, z, approximate):
    """GELU: the operator from opset 20, else ``0.5 z (1 + erf(z / sqrt 2))`` or its tanh form.

    NOTE: float64 always takes the second form: onnxruntime evaluates a float64
    Gelu node's tanh form to ~5e-7 only, and has no float64 Erf at all.
    """
    if g.opset >= 20 and not g.float64:
        return g.op("Gelu", z, approximate=approximate)
    if approximate == "tanh":
        cube = g.op("Mul", g.op("Mul", z, z), z)
        inner = g.op("Add", z, g.op("Mul", cube, g.scalar(0.044715)))
        s = g.op("Tanh", g.op("Mul", inner, g.scalar(math.sqrt(2.0 / math.pi))))
    else:
        s = g.op("Erf", g.op("Mul", z, g.scalar(1.0 / math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", z, g.scalar(0.5)), g.op("Add", s, g.scalar(1.0)))


def _softplus(g, z, o):
    # NOTE: onnxruntime's CPU provider has no float64 Softplus (nor LeakyRelu, Elu,
    # Erf); float64 graphs spell those rows with elementary operators.  This form,
    # max(z, 0) + log(1 + exp(-|z|)), never overflows.  ONNX's Softplus has neither
    # beta nor PyTorch's threshold: other values than the defaults are spelled
    # out too, z itself where beta * z > threshold as torch does.
    beta, threshold = o.get("beta", 1.0), o.get("threshold", 20.0)
    if not g.float64 and beta == 1.0 and threshold == 20.0:
        return g.op("Softplus", z)
    bz = z if beta == 1.0 else g.op("Mul", z, g.scalar(beta))
    tail = g.op("Log", g.op("Add", g.scalar(1.0), g.op("Exp", g.op("Neg", g.op("Abs", bz)))))
    soft = g.op("Add", g.op("Relu", bz), tail)
    if beta != 1.0:
        soft = g.op("Div", soft, g.scalar(beta))
    if beta == 1.0 and threshold == 20.0:
        return soft
    return g.op("Where", g.op("Greater", bz, g.scalar(threshold)), z, soft)


def _elu(g, z, o):
    alpha = o.get("alpha", ELU_ALPHA)
    if not g.float64:
        return g.op("Elu", z, alpha=alpha)
    negative = g.op("Mul", g.op("Sub", g.op("Exp", g.op("Min", z, g.scalar(0.0))),
                                g.scalar(1.0)), g.scalar(alpha))
    return g.op("Where", g.op("Greater", z, g.scalar(0.0)), z, negative)


def _leaky_relu(g, z, o):
    slope = o.get("negative_slope", LEAKY_SLOPE)
    if not g.float64:
        return g.op("LeakyRelu", z, alpha=slope)
    return g.op("Where", g.op("Greater", z, g.scalar(0.0)), z, g.op("Mul", z, g.scalar(slope)))


# The activation -> ONNX table: builder(graph, z, options) -> the name of the
# activation's output; options: the layer's parameters (_options), {} for defaults.
_ONNX_ACTIVATIONS = {
    "identity": lambda g, z, o: z,
    "relu": lambda g, z, o: g.op("Relu", z),
    "sigmoid": lambda g, z, o: g.op("Sigmoid", z),
    "tanh": lambda g, z, o: g.op("Tanh", z),
    "softmax": lambda g, z, o: g.op("Softmax", z, axis=-1),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "gelu": lambda g, z, o: _gelu(g, z, "none"),
    "gelu_tanh": lambda g, z, o: _gelu(g, z, "tanh"),
    "silu": lambda g, z, o: g.op("Mul", z, g.op("Sigmoid", z)),
    "softplus": _softplus,
}


def _check_opset(opset, onnx):
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    return V.check_int("opset", opset, minimum=MIN_OPSET, maximum=newest)


def to_onnx(net, path=None, *, opset=None):
    """The model as an ONNX graph computing exactly what ``net.predict`` returns.

    One ``Gemm`` (``z = h @ W_l + b_l``) and the activation's nodes per layer;
    the output activation included, so a softmax (``loss="cross_entropy"``) or
    sigmoid (``"binary_cross_entropy"``) model outputs probabilities, as
    ``predict`` does.  Weights are copied exactly, in the model's dtype.

    Parameters
    ----------
    net : bpcore.MLP
    path : str or os.PathLike, optional
        Also write the model there (``onnx.save_model``).
    opset : int, optional
        The ``ai.onnx`` opset, from 13 to the newest the installed onnx knows;
        default :data:`DEFAULT_OPSET` (17).

    Returns
    -------
    onnx.ModelProto
        Input ``"x"`` of shape (batch, n_in), output ``"y"`` of shape
        (batch, n_out), both of the model's dtype (float32 or float64); the
        batch dimension is dynamic.  The graph passes
        ``onnx.checker.check_model``.
    """
    _check_net(net)
    onnx = _require("onnx", "'bpcore[onnx]'")
    opset = _check_opset(opset, onnx)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}")
    missing = [a for a in net.activations if a not in _ONNX_ACTIVATIONS]
    if missing:
        raise ValueError(f"activation {missing[0]!r} has no ONNX form in bpcore.export")
    g = _Graph(onnx, net.dtype, opset)
    h = INPUT_NAME
    for l, (w, b, act) in enumerate(zip(net.weights, net.biases, net.activations)):
        z = g.op("Gemm", h, g.tensor(f"W_{l}", w), g.tensor(f"b_{l}", b))
        h = _ONNX_ACTIVATIONS[act](g, z, _options(net, act))
    g.op("Identity", h)
    g.nodes[-1].output[0] = OUTPUT_NAME
    helper = onnx.helper
    elem = helper.np_dtype_to_tensor_dtype(net.dtype)
    graph = helper.make_graph(
        g.nodes, "bpcore_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, elem, [BATCH_DIM, net.layer_sizes[0]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, elem, [BATCH_DIM, net.layer_sizes[-1]])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    from . import __version__
    # NOTE: the oldest IR version that carries this opset, not the installed onnx's
    # newest: an older runtime then loads the file.
    model = helper.make_model(graph, opset_imports=opsets, producer_name="bpcore",
                              producer_version=__version__, doc_string=repr(net),
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save_model(model, os.fspath(path))
    return model


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

# The activation -> torch.nn table: (module class, {attribute: accepted values}); the
# first accepted value is what to_torch builds.  The parameters of
# V.ACTIVATION_PARAMS (negative_slope, alpha, beta, threshold) are attributes of the
# same name on the module, and the model's activation_options on the bpcore side.
_TORCH_ACTIVATIONS = {
    "identity": ("Identity", {}),
    "relu": ("ReLU", {}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "softmax": ("Softmax", {"dim": (-1, 1)}),
    "leaky_relu": ("LeakyReLU", {}),
    "elu": ("ELU", {}),
    "gelu": ("GELU", {"approximate": ("none",)}),
    "gelu_tanh": ("GELU", {"approximate": ("tanh",)}),
    "silu": ("SiLU", {}),
    "softplus": ("Softplus", {}),
}


def _torch_activation(module, nn):
    """(bpcore name, its parameters read off the module) of an activation module, or None."""
    for name, (cls, attrs) in _TORCH_ACTIVATIONS.items():
        if type(module) is getattr(nn, cls) and all(
                getattr(module, k) in v for k, v in attrs.items()):
            return name, {k: float(getattr(module, k))
                          for k in V.ACTIVATION_PARAMS.get(name, {})}
    return None


def _describe_module(i, module):
    return f"`module`[{i}] ({type(module).__module__}.{type(module).__name__})"


def from_torch(module, *, loss=None, backend="compiled", cls=None):
    """An MLP with the layers and weights of a ``torch.nn.Sequential``.

    Parameters
    ----------
    module : torch.nn.Sequential
        ``nn.Linear`` layers, each followed by at most one activation module:
        ``nn.Identity``, ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``, and the
        others of the table ``_TORCH_ACTIVATIONS`` that :class:`MLP` accepts;
        ``nn.Softmax(dim=-1)`` (or ``dim=1``) after the last layer only.  A
        Linear without bias gets zero biases.  The weights' dtype (float32 or
        float64) is the model's.
    loss : str, optional
        Default: ``"cross_entropy"`` after a softmax, else ``"mse"``.
    backend : {"compiled", "reference"}
    cls : type, optional
        The class to build (a subclass of :class:`MLP`); default MLP.

    Returns
    -------
    MLP
        ``weights[l]`` is ``module``'s ``weight.T`` and ``biases[l]`` its bias,
        bit for bit.

    Raises
    ------
    ValueError
        Naming the first module that is not supported (its index and type) or
        does not fit (a width that does not follow, an activation without a
        Linear before it).
    """
    torch = _require("torch", "torch")
    nn = torch.nn
    if type(module) is not nn.Sequential:
        raise TypeError(f"`module` must be a torch.nn.Sequential of nn.Linear and activation "
                        f"modules; got {type(module).__name__}")
    modules = list(module)
    if not modules:
        raise ValueError("`module` is an empty nn.Sequential")
    weights, biases, acts, dtype, options = [], [], [], None, {}
    for i, m in enumerate(modules):
        if type(m) is nn.Linear:
            w = m.weight.detach().cpu()
            if w.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"{_describe_module(i, m)} has dtype {w.dtype}; bpcore takes "
                                 f"float32 or float64")
            if dtype is not None and w.dtype != dtype:
                raise ValueError(f"{_describe_module(i, m)} has dtype {w.dtype} but the first "
                                 f"layer has {dtype}; one dtype for all layers")
            dtype = w.dtype
            if weights and m.in_features != weights[-1].shape[1]:
                raise ValueError(f"{_describe_module(i, m)} has in_features={m.in_features} "
                                 f"but the layer before gives {weights[-1].shape[1]}")
            weights.append(w.numpy().T)
            biases.append(m.bias.detach().cpu().numpy() if m.bias is not None
                          else np.zeros(m.out_features, w.numpy().dtype))
            acts.append("identity")
            continue
        found = _torch_activation(m, nn)
        name, params = found if found is not None else (None, {})
        last = i == len(modules) - 1
        allowed = OUTPUT_ACTIVATIONS if last else ACTIVATIONS
        if name is None or name not in allowed:
            where = "" if name is None else (" as a hidden activation" if not last else
                                             " as the output activation")
            raise ValueError(f"{_describe_module(i, m)} is not supported{where}: from_torch "
                             f"takes nn.Linear layers, each followed by at most one of "
                             f"{_supported_modules(nn, allowed)}")
        if i == 0 or type(modules[i - 1]) is not nn.Linear:
            raise ValueError(f"{_describe_module(i, m)} must follow an nn.Linear (one "
                             f"activation per layer)")
        for key, value in params.items():
            # NOTE: MLP's activation_options hold one value per parameter name for
            # the whole model, so two modules must agree on it.
            if options.setdefault(key, value) != value:
                raise ValueError(f"{_describe_module(i, m)} has {key}={value}, but an earlier "
                                 f"module has {key}={options[key]}; a bpcore model takes one "
                                 f"{key} for all its layers")
        acts[-1] = name
    if loss is None:
        loss = "cross_entropy" if acts[-1] == "softmax" else "mse"
    build = MLP if cls is None else cls
    if not (isinstance(build, type) and issubclass(build, MLP)):
        raise TypeError(f"`cls` must be bpcore.MLP or a subclass; got {build!r}")
    return build.from_arrays(weights, biases, activation=acts[:-1], output_activation=acts[-1],
                             loss=loss, dtype=str(dtype).replace("torch.", ""),
                             backend=backend, activation_options=options or None)


def _supported_modules(nn, names):
    found = {_TORCH_ACTIVATIONS[n][0] for n in names if n in _TORCH_ACTIVATIONS}
    return ", ".join(f"nn.{c}" for c in sorted(found) if hasattr(nn, c))


def to_torch(net):
    """The model as a ``torch.nn.Sequential`` of ``nn.Linear`` and activation modules.

    Parameters
    ----------
    net : bpcore.MLP

    Returns
    -------
    torch.nn.Sequential
        ``Linear(n_l, n_{l+1})`` with ``weight = weights[l].T`` and ``bias =
        biases[l]`` copied bit for bit, in the model's dtype, each followed by
        its activation module (none for "identity"); the output activation
        included (``nn.Softmax(dim=-1)`` for a cross-entropy model), so the
        module computes what ``net.predict`` returns.  Its parameters are new
        tensors: training one model does not change the other.
    """
    _check_net(net)
    torch = _require("torch", "torch")
    nn = torch.nn
    dtype = getattr(torch, net.dtype.name)
    layers = []
    for w, b, act in zip(net.weights, net.biases, net.activations):
        if act not in _TORCH_ACTIVATIONS:
            raise ValueError(f"activation {act!r} has no torch.nn module in bpcore.export")
        # NOTE: skip_init builds the layer without drawing initial weights, so the
        # caller's torch random state is left as it was.
        linear = nn.utils.skip_init(nn.Linear, w.shape[0], w.shape[1], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(linear)
        if act != "identity":
            cls, attrs = _TORCH_ACTIVATIONS[act]
            layers.append(getattr(nn, cls)(**{k: v[0] for k, v in attrs.items()},
                                           **_options(net, act)))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# skl2onnx
# ---------------------------------------------------------------------------

_registered = False


def register_skl2onnx():
    """Register :mod:`bpcore.sklearn`'s estimators with skl2onnx (idempotent).

    After this, ``skl2onnx.to_onnx(est, X[:1])`` converts a fitted
    ``bpcore.sklearn.MLPClassifier`` / ``MLPRegressor``, alone or inside a
    ``Pipeline``, with skl2onnx's own shape calculators and converters for
    scikit-learn's MLP (the fitted attributes ``coefs_``, ``intercepts_``,
    ``classes_``, ``out_activation_``, ... are the same), and with the same
    options (``zipmap``, ``nocl``, ``output_class_labels`` for the classifier).

    bpcore calls it itself when skl2onnx is already imported at the moment
    ``bpcore.sklearn`` is imported or one of its estimators is fitted or
    unpickled; call it yourself when skl2onnx is imported later than that.
    """
    global _registered
    if _registered:
        return
    skl2onnx = _require("skl2onnx", "skl2onnx")
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)
    from skl2onnx.operator_converters.multilayer_perceptron import (
        convert_sklearn_mlp_classifier, convert_sklearn_mlp_regressor)

    from .sklearn import MLPClassifier, MLPRegressor

    # The options skl2onnx declares for scikit-learn's MLPClassifier.
    options = {"zipmap": [True, False, "columns"], "output_class_labels": [False, True],
               "nocl": [True, False]}
    skl2onnx.update_registered_converter(
        MLPClassifier, "BpcoreMLPClassifier", calculate_linear_classifier_output_shapes,
        convert_sklearn_mlp_classifier, options=options)
    skl2onnx.update_registered_converter(
        MLPRegressor, "BpcoreMLPRegressor", calculate_linear_regressor_output_shapes,
        convert_sklearn_mlp_regressor)
    _registered = True


def register_if_skl2onnx_imported():
    """:func:`register_skl2onnx` when skl2onnx is imported already (else nothing, cheaply)."""
    if not _registered and "skl2onnx" in sys.modules:
        register_skl2onnx()
