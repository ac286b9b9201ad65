"""The network: ``MLP``, a multi-layer perceptron trained by back-propagation.

The parameters live in one contiguous, 64-byte aligned block, layer by layer
``W_0, b_0, W_1, b_1, ...`` with ``W_l`` of shape (n_in, n_out) as in
scikit-learn's ``coefs_``; ``net.weights`` and ``net.biases`` are views into
it.  Gradients and the momentum buffer are blocks of the same layout, so one
optimizer pass (or one MPI Allreduce) covers the whole model.

Every training call is one call into compiled code (``bpcore._step``) that
runs without the GIL and allocates nothing per step; ``backend="reference"``
runs the same model with :mod:`bpcore.reference`, for checking.
"""
import contextlib
import math
import numbers
import sys
import threading
import time

import numpy as np

from . import _modelfile
from . import _validate as V
from . import reference as R
from . import schedules as S

__all__ = ["MLP"]

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu", "gelu_tanh",
               "silu", "softplus")
OUTPUT_ACTIVATIONS = ACTIVATIONS + ("softmax",)
LOSSES = ("mse", "cross_entropy", "binary_cross_entropy", "l1", "huber", "smooth_l1")
# The regression losses (float targets, R^2 score); the others classify.
REGRESSION_LOSSES = ("mse", "l1", "huber", "smooth_l1")
# Each loss's options (MLP's loss_options) and PyTorch's defaults.
LOSS_OPTIONS = {"huber": {"delta": 1.0}, "smooth_l1": {"beta": 1.0},
                "cross_entropy": {"class_weight": None, "label_smoothing": 0.0},
                "binary_cross_entropy": {"pos_weight": None}}
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DECAYS = ("all", "weights")
SCHEDULES = ("constant", "invscaling", "adaptive") + S.SCHEDULES
INITS = ("auto", "normal", "glorot", "he")
BACKENDS = ("compiled", "reference")
# The core's status for a non-finite loss or gradient (bpcore._step's and its twin's).
NONFINITE = 100


def _aligned_zeros(n, dtype, align=64):
    """A zeroed 1-D array of n elements whose data starts on an ``align``-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n + align // itemsize, dtype)
    offset = (-raw.ctypes.data % align) // itemsize
    return raw[offset:offset + n]


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------

class MLP:
    """A multi-layer perceptron with a fused, allocation-free training step.

    Parameters
    ----------
    layer_sizes : sequence of int
        Widths, input first: ``(n_in, hidden_1, ..., n_out)``; at least two.
    activation : str or sequence of str
        Hidden-layer activation(s): "relu", "sigmoid", "tanh", "identity",
        "leaky_relu", "elu", "gelu" (exact, erf-based), "gelu_tanh" (PyTorch's
        ``approximate="tanh"``), "silu", "softplus" (one name for all, or one
        per hidden layer); see :func:`bpcore.reference.gelu_forward` and its
        neighbours for the formulas.
    output_activation : str, optional
        One of the hidden activations, or "softmax".  Default:
        "identity" for ``loss="mse"``, "softmax" for ``loss="cross_entropy"``
        (which requires it).
    loss : {"mse", "cross_entropy", "binary_cross_entropy", "l1", "huber", "smooth_l1"}
        Squared error against float targets (n, n_out); softmax cross-entropy
        against integer class labels (n,); or sigmoid binary cross-entropy
        (computed from the logits) against targets (n, n_out) in [0, 1], for
        binary and multi-label outputs; or PyTorch's absolute-error, Huber and
        smooth L1 losses against float targets.
    reduction : str
        "mean", "sum", "half_sum", "half_mean" for MSE; "mean", "sum" for
        the others (see :func:`bpcore.reference.mse_loss`).
    dtype : {"float32", "float64"}
    seed : int or numpy.random.Generator, optional
        Seeds the initial weights (identical for both backends).
    init : {"auto", "normal", "glorot", "he"}
        "normal": standard-normal weights (seed 000's scheme); "glorot":
        U(+-sqrt(6 / (fan_in + fan_out))); "he": U(+-sqrt(6 / fan_in));
        "auto": "he" for ReLU layers, "glorot" otherwise.  Biases start at 0.
    backend : {"compiled", "reference"}
    dropout : float or sequence of float, optional
        Inverted dropout on the hidden layers' outputs while training (``fit``,
        ``train_step``, ``loss_and_grads``), none in ``predict``/``evaluate``,
        as ``torch.nn.Dropout`` in train / eval mode: one probability in [0, 1)
        for every hidden layer, or one per hidden layer.  The masks come from
        a counter-based hash of (seed, step, layer, element) (see
        :func:`bpcore.reference_core.dropout_keep`): the same seed trains
        bitwise alike on either backend and any thread count.  The seed is
        drawn from ``seed`` here and from ``fit``'s ``seed`` at each fit.
    activation_options : dict, optional
        The activations' parameters by name, PyTorch's defaults otherwise:
        ``negative_slope`` (leaky_relu, 0.01, >= 0), ``alpha`` (elu, 1.0, >= 0),
        ``beta`` (softplus, 1.0, > 0), ``threshold`` (softplus, 20.0).  Each
        applies to every layer (hidden or output) whose activation takes it;
        a name no layer's activation takes is a ``ValueError``.
    loss_options : dict, optional
        The loss's options, as the functional forms take them (PyTorch's
        defaults otherwise): ``delta`` (huber, > 0), ``beta`` (smooth_l1,
        >= 0), ``class_weight`` (cross_entropy, n_out values >= 0; the mean
        then divides by the summed weights of the targets) and
        ``label_smoothing`` (cross_entropy, in [0, 1]), ``pos_weight``
        (binary_cross_entropy, n_out values >= 0).
    compute_dtype : {None, "bfloat16"}
        Mixed precision, as ``torch.autocast("cpu", dtype=torch.bfloat16)``
        runs ``nn.Linear`` layers: "bfloat16" (``dtype="float32"`` only)
        computes every product of the forward and backward passes (``predict``
        included) from bfloat16-rounded operands with float32 accumulation,
        while the parameters, gradients, optimizer state, activations and
        loss stay float32.  Unlike autocast, a product's result is kept in
        float32 (not rounded to bfloat16).  None: everything in ``dtype``.

    Notes
    -----
    Training methods of one model serialize on a lock, so two threads
    training the same model run one after the other; ``predict`` takes no
    lock and uses buffers of its own, so many threads may predict at once.
    """

    def __init__(self, layer_sizes, *, activation="relu", output_activation=None, loss="mse",
                 reduction="mean", dtype="float32", seed=None, init="auto",
                 backend="compiled", dropout=None, activation_options=None, loss_options=None,
                 compute_dtype=None):
        sizes = self._check_sizes(layer_sizes)
        n_layers = len(sizes) - 1
        loss = V.check_choice("loss", loss, LOSSES)
        required = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}.get(loss)
        if output_activation is None:
            output_activation = required or "identity"
        output_activation = V.check_choice("output_activation", output_activation,
                                           OUTPUT_ACTIVATIONS)
        if required is not None and output_activation != required:
            raise ValueError(f"`output_activation` must be {required!r} with "
                             f"loss={loss!r}; got {output_activation!r}")
        reduction = V.check_choice("reduction", reduction,
                                   V.REDUCTIONS_MSE if loss == "mse" else V.REDUCTIONS_CE)
        if not isinstance(activation, (str, list, tuple)):
            raise TypeError(f"`activation` must be a name or a sequence of names (one of "
                            f"{', '.join(map(repr, ACTIVATIONS))}); got {activation!r}")
        if isinstance(activation, str):
            V.check_choice("activation", activation, ACTIVATIONS)
        hidden = [activation] * (n_layers - 1) if isinstance(activation, str) else list(activation)
        if len(hidden) != n_layers - 1:
            raise ValueError(f"`activation` must be one name or {n_layers - 1} names (one per "
                             f"hidden layer); got {len(hidden)}")
        # NOTE: a single name is checked even without hidden layers, where it is unused
        for name in hidden if hidden or not isinstance(activation, str) else [activation]:
            V.check_choice("activation", name, ACTIVATIONS)
        hidden = [str(name) for name in hidden]
        init = V.check_choice("init", init, INITS)
        backend = V.check_choice("backend", backend, BACKENDS)
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"`dtype` must be 'float32' or 'float64'; got {dtype!r}") from None
        if dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"`dtype` must be 'float32' or 'float64'; got {dtype}")
        self.compute_dtype = V.check_compute_dtype(compute_dtype, dtype)
        self.layer_sizes = sizes
        self.activations = hidden + [output_activation]
        self.activation_options = _activation_options(activation_options, self.activations)
        per_layer = [{k: v for k, v in self.activation_options.items()
                      if k in V.ACTIVATION_PARAMS.get(act, {})} for act in self.activations]
        self.loss = loss
        self.reduction = reduction
        self.dtype = dtype
        self.backend = backend
        self._compiled = backend == "compiled"   # predict's fast path (read per call)
        if backend == "compiled":
            from . import _step as core
        else:
            from . import reference_core as core
        self.dropout = _check_dropout(dropout, n_layers - 1)
        self.loss_options = _loss_options(loss_options, loss, sizes[-1])
        self._core = core.Trainer(sizes, self.activations, loss, reduction, dtype,
                                  dropout=self.dropout, activation_params=per_layer,
                                  loss_params=self._loss_params(),
                                  compute_dtype=self.compute_dtype)
        self._rule = core.UpdateRule
        self._params = _aligned_zeros(self._core.n_params, dtype)
        self._grads = _aligned_zeros(self._core.n_params, dtype)
        self._velocity = None
        self._adam = None  # (m, v, steps taken) once Adam or AdamW has run
        self._rmsprop = None  # (square_avg, momentum_buffer, grad_avg) once RMSprop has run
        self._lock = threading.RLock()
        self._views()
        rng = _rng(seed)
        self._initialize(init, rng)
        if any(self.dropout):
            self._core.dropout_seed = int(rng.integers(2 ** 63))

    # -- construction -------------------------------------------------------

    @staticmethod
    def _check_sizes(layer_sizes):
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError(f"`layer_sizes` must be a sequence of ints; got "
                            f"{type(layer_sizes).__name__}")
        sizes = [V.check_int("layer_sizes", s) for s in layer_sizes]
        if len(sizes) < 2:
            raise ValueError(f"`layer_sizes` needs at least 2 sizes (input and output); "
                             f"got {sizes}")
        bad = [s for s in sizes if s < 1]
        if bad:
            raise ValueError(f"`layer_sizes` must all be >= 1; got {sizes}")
        return sizes

    def _loss_params(self):
        """loss_options as the core takes them: floats, and float64 arrays."""
        return {k: (np.array(v, np.float64) if isinstance(v, tuple) else v)
                for k, v in self.loss_options.items()}

    def _views(self):
        w_off, b_off = self._core.offsets()
        pairs = list(zip(self.layer_sizes[:-1], self.layer_sizes[1:]))
        self.weights = [self._params[w:w + a * b].reshape(a, b)
                        for (a, b), w in zip(pairs, w_off)]
        self.biases = [self._params[o:o + b] for (_, b), o in zip(pairs, b_off)]
        self._grad_weights = [self._grads[w:w + a * b].reshape(a, b)
                              for (a, b), w in zip(pairs, w_off)]
        self._grad_biases = [self._grads[o:o + b] for (_, b), o in zip(pairs, b_off)]

    def _initialize(self, init, rng):
        for w, act in zip(self.weights, self.activations):
            fan_in, fan_out = w.shape
            scheme = ("he" if act in ("relu", "leaky_relu") else "glorot") if init == "auto" else init
            if scheme == "normal":
                w[...] = rng.standard_normal((fan_in, fan_out))
            else:
                bound = math.sqrt(6.0 / (fan_in if scheme == "he" else fan_in + fan_out))
                w[...] = rng.uniform(-bound, bound, (fan_in, fan_out))
        for b in self.biases:
            b[...] = 0

    @classmethod
    def from_arrays(cls, weights, biases, *, activation="relu", output_activation=None,
                    loss="mse", reduction="mean", dtype=None, backend="compiled",
                    activation_options=None, loss_options=None, compute_dtype=None):
        """Build an MLP holding the given parameters.

        Parameters
        ----------
        weights : sequence of array_like
            ``weights[l]`` of shape (n_l, n_{l+1}).
        biases : sequence of array_like
            ``biases[l]`` of shape (n_{l+1},).
        activation, output_activation, loss, reduction
            As for :class:`MLP`.
        dtype : {"float32", "float64"}, optional
            Default: the weights' float dtype, else float64.
        backend : {"compiled", "reference"}
            As for :class:`MLP`.
        activation_options, loss_options, compute_dtype
            As for :class:`MLP`.

        Returns
        -------
        MLP
            A new model; its parameters are copies of ``weights`` and ``biases``.
        """
        weights, biases = list(weights), list(biases)
        if not weights or len(weights) != len(biases):
            raise ValueError(f"`weights` and `biases` must be non-empty lists of equal length; "
                             f"got {len(weights)} and {len(biases)}")
        arrays = [(f"weights[{i}]", w, 2) for i, w in enumerate(weights)]
        arrays += [(f"biases[{i}]", b, 1) for i, b in enumerate(biases)]
        found, converted = V.float_arrays(*arrays)
        ws, bs = converted[:len(weights)], converted[len(weights):]
        sizes = [ws[0].shape[0]]
        for i, (w, b) in enumerate(zip(ws, bs)):
            V.check_shape(f"weights[{i}]", w, (sizes[-1], "n_out"),
                          "to follow the previous layer")
            V.check_shape(f"biases[{i}]", b, (w.shape[1],), f"to match weights[{i}]")
            sizes.append(w.shape[1])
        net = cls(sizes, activation=activation, output_activation=output_activation, loss=loss,
                  reduction=reduction, dtype=dtype if dtype is not None else found,
                  backend=backend, activation_options=activation_options,
                  loss_options=loss_options, compute_dtype=compute_dtype)
        for dst, src in zip(net.weights + net.biases, ws + bs):
            dst[...] = src
        return net

    # -- the flat blocks ----------------------------------------------------

    @property
    def n_params(self):
        """Number of parameters (weights and biases)."""
        return self._core.n_params

    @property
    def parameters(self):
        """The flat parameter block (a view; writing it changes the model)."""
        return self._params

    @property
    def core(self):
        """The model's training core: a ``bpcore._step.Trainer``, or its NumPy twin
        (``bpcore.reference_core.Trainer``) for ``backend="reference"``; its interface is
        forward / evaluate / loss_and_grad / update / epoch on flat blocks laid out as
        :attr:`parameters`."""
        return self._core

    @property
    def lock(self):
        """The re-entrant lock training calls hold; hold it to train the model from outside."""
        return self._lock

    @property
    def velocity(self):
        """SGD's momentum buffer (a block like :attr:`parameters`), or None before any
        momentum step; set it to an array to restore one, or to None to drop it."""
        return self._velocity

    @velocity.setter
    def velocity(self, values):
        if values is None:
            self._velocity = None
            return
        block = self._velocity_block(1.0)
        block[...] = values

    def _velocity_block(self, momentum):
        if momentum != 0 and self._velocity is None:
            self._velocity = _aligned_zeros(self.n_params, self.dtype)
        return self._velocity

    def _adam_state(self):
        if self._adam is None:
            self._adam = [_aligned_zeros(self.n_params, self.dtype),
                          _aligned_zeros(self.n_params, self.dtype), 0]
        return self._adam

    def _rmsprop_state(self):
        if self._rmsprop is None:
            self._rmsprop = tuple(_aligned_zeros(self.n_params, self.dtype) for _ in range(3))
        return self._rmsprop

    def reset_optimizer(self):
        """Forget the optimizer state (momentum buffer, Adam's moments and step count,
        RMSprop's averages)."""
        with self._lock:
            self._velocity = None
            self._adam = None
            self._rmsprop = None

    # -- input checks ---------------------------------------------------------

    def prepare_inputs(self, x, y=None, *, min_rows=1, need_y=True):
        """``x`` (and ``y``) as the core takes them: C-contiguous, the model's dtype, checked.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,), optional
        min_rows : int
            Fewer rows than this is a ``ValueError`` naming ``x``.
        need_y : bool
            ``y=None`` is a ``TypeError`` unless False.

        Returns
        -------
        x : ndarray, shape (n_samples, n_in)
        y : ndarray, shape (n_samples, n_out) or (n_samples,), or None
            Float targets (n_samples, n_out) or int64 labels (n_samples,).
        """
        if y is None and need_y:
            raise TypeError("`y` is required: targets of shape (n_samples, n_out), or integer "
                            "class labels (n_samples,) for loss='cross_entropy'; got None")
        specs = [("x", x, 2)]
        labels = self.loss == "cross_entropy"
        if y is not None and not labels:
            y_arr = y if isinstance(y, np.ndarray) else np.asarray(y)
            if y_arr.ndim == 1 and self.layer_sizes[-1] == 1:
                y = y_arr.reshape(-1, 1)  # one output: (n,) targets are accepted
            specs.append(("y", y, 2))
        # NOTE: data comes as it comes (float64 from NumPy, ints, lists): each array
        # is converted once to the model's dtype.  An array already of that dtype
        # and layout is used as is, so float32 data for a float32 model is never copied.
        arrays = [V.float_arrays(spec)[1][0] for spec in specs]
        arrays = V.as_contiguous(*[a.astype(self.dtype, copy=False) for a in arrays])
        x = arrays[0]
        V.check_shape("x", x, ("n", self.layer_sizes[0]),
                      f"for a model with {self.layer_sizes[0]} inputs")
        if x.shape[0] < min_rows:
            raise ValueError(f"`x` must have at least {min_rows} row(s); got shape {x.shape}")
        if y is None:
            return x, None
        if labels:
            y = V.class_labels(y, x.shape[0], self.layer_sizes[-1], name="y")
        else:
            y = arrays[1]
            V.check_shape("y", y, (x.shape[0], self.layer_sizes[-1]),
                          f"to match x's {x.shape[0]} rows and the model's "
                          f"{self.layer_sizes[-1]} outputs")
            if self.loss == "binary_cross_entropy" and y.size and not (
                    (y >= 0) & (y <= 1)).all():
                raise ValueError(f"`y` must lie in [0, 1] for loss='binary_cross_entropy'; "
                                 f"got values in [{y.min()}, {y.max()}]")
        return x, y

    def _sample_weight(self, sample_weight, n):
        """``sample_weight`` as a C-contiguous array of the model's dtype, or None."""
        if sample_weight is None:
            return None
        _, (w,) = V.float_arrays(("sample_weight", sample_weight, 1))
        V.check_shape("sample_weight", w, (n,), f"to match x's {n} rows")
        w = np.ascontiguousarray(w, dtype=self.dtype)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("`sample_weight` must be finite and >= 0")
        with np.errstate(over="ignore"):  # an overflowing sum is handled below
            total = float(np.sum(w, dtype=np.float64))
        if n and not total > 0:
            raise ValueError("`sample_weight` must not sum to 0")
        if not math.isfinite(total):
            # NOTE: the sum overflows float64 (weights near 1e308).  The mean
            # reductions do not depend on the weights' scale, so rescale them
            # rather than let w_i / sum silently become 0; a sum reduction
            # would overflow the loss itself.
            if not self.reduction.endswith("mean"):
                raise ValueError(f"`sample_weight` sums to more than the float64 range with "
                                 f"reduction={self.reduction!r}: the weighted loss overflows; "
                                 f"scale the weights down")
            w = w / w.max()
        return w

    @staticmethod
    def _optimizer_options(optimizer, betas, eps, decay, alpha=0.99, centered=False,
                           clip_grad_norm=None, clip_grad_value=None):
        """The optimizer's settings beyond SGD's, checked: a dict of update_rule's keywords
        (and "optimizer")."""
        optimizer = V.check_choice("optimizer", optimizer, OPTIMIZERS)
        decay = V.check_choice("decay", decay, DECAYS)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"`betas` must be a pair (beta1, beta2); got {betas!r}")
        beta1 = V.check_real("betas[0]", betas[0], minimum=0.0, maximum=1.0)
        beta2 = V.check_real("betas[1]", betas[1], minimum=0.0, maximum=1.0)
        if beta1 >= 1 or beta2 >= 1:
            raise ValueError(f"`betas` must lie in [0, 1); got {tuple(betas)}")
        eps = V.check_real("eps", eps, minimum=0.0, strict_min=True)
        alpha = V.check_real("alpha", alpha, minimum=0.0, maximum=1.0)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"`centered` must be a bool; got {type(centered).__name__}")
        clips = {}
        for name, value in (("clip_grad_norm", clip_grad_norm),
                            ("clip_grad_value", clip_grad_value)):
            clips[name] = None if value is None else V.check_real(name, value, minimum=0.0)
        return dict(optimizer=optimizer, beta1=beta1, beta2=beta2, eps=eps,
                    weights_only=decay == "weights", alpha=alpha, centered=bool(centered),
                    **clips)

    @staticmethod
    def check_sgd(lr, momentum, weight_decay, nesterov):
        """(lr, momentum, weight_decay, nesterov) checked (``ValueError``/``TypeError``
        naming the argument) and as floats and a bool.

        Parameters
        ----------
        lr, momentum, weight_decay : float
            >= 0 each.
        nesterov : bool
            True requires ``momentum`` > 0.

        Returns
        -------
        tuple of (float, float, float, bool)
            The four settings, checked.
        """
        lr = V.check_real("lr", lr, minimum=0.0)
        momentum = V.check_real("momentum", momentum, minimum=0.0)
        weight_decay = V.check_real("weight_decay", weight_decay, minimum=0.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"`nesterov` must be a bool; got {type(nesterov).__name__}")
        if nesterov and momentum == 0:
            raise ValueError("`nesterov`=True requires `momentum` > 0")
        return lr, momentum, weight_decay, bool(nesterov)

    # -- inference ------------------------------------------------------------

    def predict(self, x, out=None):
        """The network's output.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        out : ndarray, shape (n_samples, n_out), optional
            A buffer to write the result to and return (the model's dtype,
            C-contiguous, writeable, not overlapping ``x``), so that serving
            row after row allocates nothing; anything else is a ``ValueError``
            naming ``out``.

        Returns
        -------
        ndarray, shape (n_samples, n_out)
            Class probabilities for ``loss="cross_entropy"`` (sigmoid
            probabilities for ``"binary_cross_entropy"``); ``out`` when given.
        """
        # NOTE: the fast path, for a service predicting row after row: an exact
        # ndarray x (and out) goes straight to the core, whose C-level checks take
        # what is already in final form (the model's dtype, C-contiguous, aligned,
        # the right shape; out writeable and not overlapping x) and refuse the rest
        # with a ValueError -- then the general path below converts, or explains
        # naming the argument.  No Python object is made on the way (``.flags``
        # would make one), and no attribute is read that C reads faster (``.base``
        # checks here were a sixth of a 64-64-10 one-row predict).  (The NumPy
        # twin checks nothing: it takes the general path.)
        if self._compiled and type(x) is np.ndarray:
            if out is None:
                if x.ndim == 2 and x.dtype == self.dtype:
                    try:
                        return self._core.forward(
                            self._params, x,
                            np.empty((x.shape[0], self.layer_sizes[-1]), self.dtype))
                    except ValueError:
                        pass
            elif type(out) is np.ndarray:
                try:
                    return self._core.forward(self._params, x, out)
                except ValueError:
                    pass
        n_out = self.layer_sizes[-1]
        x, _ = self.prepare_inputs(x, min_rows=0, need_y=False)
        if out is None:
            return self._output(x)
        buf = V.check_out(out, "out", (x.shape[0], n_out), self.dtype, inputs=[("x", x)])
        self._core.forward(self._params, x, buf)
        return out

    def _output(self, x):
        """The network's output for converted ``x`` (n, n_in), in a new (n, n_out) array."""
        out = np.empty((x.shape[0], self.layer_sizes[-1]), self.dtype)
        return self._core.forward(self._params, x, out)

    forward = predict

    def evaluate(self, x, y):
        """The loss on (x, y), without gradients or any update.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,)

        Returns
        -------
        float
        """
        x, y = self.prepare_inputs(x, y)
        return float(self._core.evaluate(self._params, x, y))

    # -- training -----------------------------------------------------------

    def loss_and_grads(self, x, y, sample_weight=None):
        """Loss and gradients on one batch, without an update.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,)
        sample_weight : array_like, shape (n_samples,), optional
            Non-negative row weights: the loss is sum_i w_i * loss_i, divided
            by sum_i w_i for the "mean" reductions -- so integer weights equal
            repeated rows and a zero weight equals a dropped row.

        Returns
        -------
        loss : float
        (grad_weights, grad_biases) : tuple of lists of ndarray
            Shaped like ``weights`` and ``biases``; new arrays owned by the caller.
        """
        x, y = self.prepare_inputs(x, y)
        sample_weight = self._sample_weight(sample_weight, x.shape[0])
        with self._lock:
            status, loss = self._core.loss_and_grad(self._params, x, y, self._grads,
                                                    sample_weight)
            grads = self._grads.copy()
        if status == NONFINITE:
            raise FloatingPointError(f"the loss or a gradient is not finite (loss = {loss})")
        w_off, b_off = self._core.offsets()
        pairs = list(zip(self.layer_sizes[:-1], self.layer_sizes[1:]))
        return float(loss), ([grads[w:w + a * b].reshape(a, b) for (a, b), w in zip(pairs, w_off)],
                             [grads[o:o + b] for (_, b), o in zip(pairs, b_off)])

    def apply_update(self, grads, *, lr, momentum=0.0, weight_decay=None, nesterov=False,
                     optimizer="sgd", betas=(0.9, 0.999), eps=1e-8, decay="all", alpha=0.99,
                     centered=False, clip_grad_norm=None, clip_grad_value=None):
        """Apply one optimizer step to the parameter block, given its gradient block.

        The single place updates happen outside the compiled epoch (the
        data-parallel path computes and allreduces ``grads``, then calls this).

        Parameters
        ----------
        grads : ndarray, shape (n_params,) or larger
            A C-contiguous block in the parameter layout, the model's dtype
            (clipped in place when clipping is asked for, as PyTorch's clip_grad_*_).
        lr, momentum, weight_decay, nesterov
            As :meth:`train_step`; ``momentum`` applies to SGD and RMSprop,
            ``nesterov`` to SGD.
        optimizer : {"sgd", "adam", "adamw", "rmsprop"}
            ``torch.optim.SGD``, ``Adam`` (L2 decay in the gradient), ``AdamW``
            (decoupled decay) or ``RMSprop``.
        betas, eps
            Adam's and AdamW's (``eps`` also RMSprop's).
        decay : {"all", "weights"}
            ``weight_decay`` on every parameter (PyTorch) or on the weights
            only, not the biases (scikit-learn's ``alpha``).
        alpha, centered
            RMSprop's smoothing constant and centering (:func:`bpcore.rmsprop_update`).
        clip_grad_norm, clip_grad_value : float, optional
            Clip the gradient first, as ``torch.nn.utils.clip_grad_value_`` and
            then ``clip_grad_norm_`` (the L2 norm over all parameters).
        """
        weight_decay = _default_decay(optimizer, weight_decay)
        lr, momentum, weight_decay, nesterov = self.check_sgd(lr, momentum, weight_decay,
                                                           nesterov)
        opts = self._optimizer_options(optimizer, betas, eps, decay, alpha, centered,
                                       clip_grad_norm, clip_grad_value)
        if (not isinstance(grads, np.ndarray) or grads.dtype != self.dtype
                or grads.ndim != 1 or grads.size < self.n_params
                or not grads.flags.c_contiguous):
            raise ValueError(f"`grads` must be a C-contiguous {self.dtype} block of at least "
                             f"{self.n_params} values")
        with self._lock:
            self._update_locked(grads, lr, momentum, weight_decay, nesterov, opts)

    def update_rule(self, optimizer="sgd", *, lr, momentum=0.0, weight_decay=0.0,
                    nesterov=False, beta1=0.9, beta2=0.999, eps=1e-8, weights_only=False,
                    alpha=0.99, centered=False, clip_grad_norm=None, clip_grad_value=None):
        """The core's ``UpdateRule`` for these settings and the model's state blocks for it.

        The settings are taken as checked (see :meth:`check_sgd`); the momentum
        buffer, Adam's moments or RMSprop's averages are created on first use
        and persist in the model.  Returns ``(rule, state)`` for :attr:`core`'s
        ``update`` and ``epoch``; after Adam / AdamW steps, the step count is
        ``rule.step`` (``apply_update`` and ``fit`` record it in the model
        themselves).

        Parameters
        ----------
        optimizer : {"sgd", "adam", "adamw", "rmsprop"}
        lr, momentum, weight_decay : float
            As :meth:`train_step`, checked already.
        nesterov : bool
        beta1, beta2, eps : float
            Adam's and AdamW's (``eps`` also RMSprop's).
        weights_only : bool
            Weight decay on the weights only, not the biases.
        alpha, centered : float, bool
            RMSprop's.
        clip_grad_norm, clip_grad_value : float or None
            Gradient clipping before each update (see :meth:`apply_update`).

        Returns
        -------
        rule : UpdateRule
            The core's update rule.
        state : tuple of ndarray or None
            The state blocks (shape (n_params,), like :attr:`parameters`):
            ``(velocity or None, None)`` for SGD, ``(m, v)`` for Adam and AdamW,
            ``(square_avg, momentum_buffer, grad_avg)`` for RMSprop.
        """
        common = dict(lr=lr, weight_decay=weight_decay, eps=eps, weights_only=weights_only,
                      clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value)
        if optimizer in ("adam", "adamw"):
            m, v, step = self._adam_state()
            return self._rule(optimizer, betas=(beta1, beta2), step=step, **common), (m, v)
        if optimizer == "rmsprop":
            return (self._rule("rmsprop", momentum=momentum, alpha=alpha, centered=centered,
                               **common), self._rmsprop_state())
        rule = self._rule("sgd", momentum=momentum, nesterov=nesterov, **common)
        return rule, (self._velocity_block(momentum) if momentum != 0 else None, None)

    def _update_locked(self, grads, lr, momentum, weight_decay, nesterov, opts):
        optimizer = opts["optimizer"]
        rule, state = self.update_rule(optimizer, lr=lr, momentum=momentum,
                                       weight_decay=weight_decay, nesterov=nesterov,
                                       **{k: v for k, v in opts.items() if k != "optimizer"})
        self._core.update(self._params, grads, state, rule)
        if optimizer in ("adam", "adamw"):
            self._adam[2] = rule.step

    def train_step(self, x, y, *, lr=None, momentum=0.0, weight_decay=None, nesterov=False,
                   optimizer="sgd", betas=(0.9, 0.999), eps=1e-8, decay="all",
                   sample_weight=None, alpha=0.99, centered=False, clip_grad_norm=None,
                   clip_grad_value=None):
        """One optimizer step on the batch (x, y): forward, loss, backward, update.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,)
        lr : float, optional
            The learning rate; None: 0.01 for SGD, 0.001 for the others (Keras's defaults).
        momentum, weight_decay, nesterov
            As :func:`bpcore.sgd_update` (``torch.optim.SGD``); ``weight_decay``
            None: 0.01 for AdamW (PyTorch's default), else 0.  The optimizer
            state persists across calls (see :meth:`reset_optimizer`).
        optimizer, betas, eps, decay
            As :meth:`apply_update` ("adam": :func:`bpcore.adam_update`,
            "adamw": :func:`bpcore.adamw_update`, "rmsprop": :func:`bpcore.rmsprop_update`).
        sample_weight : array_like, shape (n_samples,), optional
            As :meth:`loss_and_grads`.
        alpha, centered, clip_grad_norm, clip_grad_value
            As :meth:`apply_update` (RMSprop's settings, gradient clipping).

        Returns
        -------
        float
            The batch loss before the update.

        Raises
        ------
        FloatingPointError
            The loss or a gradient is not finite; the parameters are unchanged.
        """
        if lr is None:
            lr = _default_lr(optimizer)
        weight_decay = _default_decay(optimizer, weight_decay)
        if (optimizer != "sgd" or decay != "all" or sample_weight is not None
                or clip_grad_norm is not None or clip_grad_value is not None):
            x, y = self.prepare_inputs(x, y)
            sample_weight = self._sample_weight(sample_weight, x.shape[0])
            lr, momentum, weight_decay, nesterov = self.check_sgd(lr, momentum, weight_decay,
                                                               nesterov)
            opts = self._optimizer_options(optimizer, betas, eps, decay, alpha, centered,
                                           clip_grad_norm, clip_grad_value)
            with self._lock:
                status, loss = self._core.loss_and_grad(self._params, x, y, self._grads,
                                                        sample_weight)
                if status == 0:
                    self._update_locked(self._grads, lr, momentum, weight_decay, nesterov, opts)
            result = status, loss
        else:
            result = self._train_step_sgd(x, y, lr, momentum, weight_decay, nesterov)
        status, loss = result
        if status == NONFINITE:
            raise FloatingPointError(f"non-finite loss or gradient (loss = {loss}); the "
                                     f"parameters were not updated -- try a smaller `lr`")
        return float(loss)

    def _train_step_sgd(self, x, y, lr, momentum, weight_decay, nesterov):
        with self._lock:
            result = self._core.train_step_fast(self._params, self._grads, self._velocity, x, y,
                                                lr, momentum, weight_decay, nesterov)
            if result is None:  # not already in final form: the general path
                x, y = self.prepare_inputs(x, y)
                lr, momentum, weight_decay, nesterov = self.check_sgd(lr, momentum, weight_decay,
                                                                   nesterov)
                result = self._core.loss_and_grad(self._params, x, y, self._grads)
                if result[0] == 0:
                    self._update_locked(self._grads, lr, momentum, weight_decay, nesterov,
                                        self._optimizer_options("sgd", (0.9, 0.999), 1e-8,
                                                                "all"))
        return result

    def fit(self, x, y, *, epochs=10, batch_size=32, lr=None, momentum=0.0, weight_decay=None,
            nesterov=False, shuffle=True, seed=None, validation_data=None, progress=False,
            callback=None, optimizer="sgd", betas=(0.9, 0.999), eps=1e-8, decay="all",
            sample_weight=None, schedule="constant", power_t=0.5, early_stopping=False,
            patience=10, tol=1e-4, metrics=(), verbose=0, alpha=0.99, centered=False,
            clip_grad_norm=None, clip_grad_value=None, schedule_options=None):
        """Mini-batch training over whole epochs, each epoch one call into compiled code.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,)
        epochs : int, default 10
            >= 0 (the most epochs run; early stopping may run fewer).
        batch_size : int, default 32
            >= 1; the last batch of an epoch keeps the remaining rows.
        lr : float, optional
            The (initial) learning rate; None: 0.01 for SGD, 0.001 for the others.
        momentum, weight_decay, nesterov
            As :meth:`train_step`.
        shuffle : bool
            Visit rows in a new random order each epoch.
        seed : int or numpy.random.Generator, optional
            Seeds the shuffles; the same seed gives bitwise the same weights.
        validation_data : (x_val, y_val), optional
            Its loss is recorded after every epoch as ``history["val_loss"]``.
        progress : bool
            Show a progress bar (tqdm when installed, else a plain line).
        callback : callable, optional
            ``callback(epoch, logs)`` after every epoch; returning False stops.
        optimizer, betas, eps, decay
            As :meth:`apply_update`: SGD, Adam, AdamW, RMSprop.
        sample_weight : array_like, shape (n_samples,), optional
            As :meth:`loss_and_grads`; the epoch loss is then weight-averaged.
        schedule : str or callable
            The learning rate per epoch.  PyTorch's schedulers, stepped as
            PyTorch steps them (:mod:`bpcore.schedules`, the same floats):
            "step" (StepLR), "exponential" (ExponentialLR), "cosine"
            (CosineAnnealingLR, T_max = the epochs, optionally after a linear
            warm-up), "onecycle" (OneCycleLR, per batch, with its momentum /
            beta1 cycling; the table reaches the compiled epoch, no Python per
            batch) with their arguments in ``schedule_options``; a callable
            ``schedule(epoch) -> lr``; or scikit-learn's "constant",
            "invscaling" ``lr / (t + 1) ** power_t`` with ``t`` the samples seen
            before the epoch; "adaptive" divides the rate by 5 whenever the
            monitored loss (``val_loss`` with validation data, else ``loss``)
            has not improved by ``tol`` for more than ``patience`` epochs, and
            stops once the rate would fall below 1e-6.
        power_t : float
            >= 0.
        early_stopping : bool
            Stop once ``val_loss`` has not improved by ``tol`` for more than
            ``patience`` consecutive epochs, and restore the parameters of the
            best epoch (requires ``validation_data``).
        patience : int
            >= 1.
        tol : float
            >= 0.
        metrics : sequence of str
            ``("accuracy",)`` adds ``accuracy`` (and ``val_accuracy`` with
            validation data) to the history: the fraction of rows whose
            predicted class (all labels, for multi-label BCE) is right, on the
            whole training set after each epoch (as :meth:`score`).  Needs a
            classification loss.
        verbose : int
            0: silent; 1: one line per epoch on stdout (epoch, loss, metrics,
            seconds), as Keras's ``verbose=2``.
        alpha, centered, clip_grad_norm, clip_grad_value
            As :meth:`apply_update`; the clipping runs in the compiled step
            before each update.
        schedule_options : dict, optional
            The PyTorch schedule's arguments: "step" ``step_size`` (required),
            ``gamma=0.1``; "exponential" ``gamma`` (required); "cosine"
            ``T_max``, ``eta_min=0``, ``warmup_epochs=0``,
            ``warmup_start_factor=1/3`` (LinearLR's); "onecycle" ``max_lr``
            (default: ``lr``), ``pct_start=0.3``, ``anneal_strategy="cos"``,
            ``cycle_momentum=True``, ``base_momentum=0.85``,
            ``max_momentum=0.95``, ``div_factor=25``, ``final_div_factor=1e4``,
            ``three_phase=False``.

        Returns
        -------
        dict
            ``{"loss": [...], "val_loss": [...], "lr": [...], ...}``: per epoch,
            the batch losses averaged with batch-size (batch-weight) weights,
            the rate used (per-batch schedules: the epoch's first batch's) and
            the metrics asked for.

        Raises
        ------
        FloatingPointError
            A batch gave a non-finite loss or gradient; the parameters are
            those from before that batch.
        KeyboardInterrupt
            Ctrl-C: training stops between batches, the weights kept.
        """
        x, y = self.prepare_inputs(x, y)
        sample_weight = self._sample_weight(sample_weight, x.shape[0])
        epochs = V.check_int("epochs", epochs, minimum=0)
        batch_size = V.check_int("batch_size", batch_size, minimum=1)
        if lr is None:
            lr = _default_lr(optimizer)
        weight_decay = _default_decay(optimizer, weight_decay)
        lr, momentum, weight_decay, nesterov = self.check_sgd(lr, momentum, weight_decay, nesterov)
        opts = self._optimizer_options(optimizer, betas, eps, decay, alpha, centered,
                                       clip_grad_norm, clip_grad_value)
        optimizer = opts.pop("optimizer")
        if not callable(schedule):
            schedule = V.check_choice("schedule", schedule, SCHEDULES)
        rates, momenta, per_batch = self._schedule_table(schedule, schedule_options, lr, epochs,
                                                         -(-x.shape[0] // batch_size))
        power_t = V.check_real("power_t", power_t, minimum=0.0)
        patience = V.check_int("patience", patience, minimum=1)
        tol = V.check_real("tol", tol, minimum=0.0)
        for name, flag in (("early_stopping", early_stopping), ("shuffle", shuffle)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"`{name}` must be a bool; got {flag!r}")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("`validation_data` must be a pair (x_val, y_val)")
            try:
                x_val, y_val = self.prepare_inputs(*validation_data)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"`validation_data`: {exc}") from None
        elif early_stopping:
            raise ValueError("`early_stopping`=True needs `validation_data`")
        if callback is not None and not callable(callback):
            raise TypeError("`callback` must be callable(epoch, logs)")
        metrics = self._metrics(metrics)
        verbose = V.check_int("verbose", verbose, minimum=0)
        rng = _rng(seed)
        if any(self.dropout):  # the masks of this fit: keyed by its seed, counted from 0
            self._core.dropout_seed = int(rng.integers(2 ** 63))
            self._core.dropout_step = 0
        history = {"loss": [], "lr": []}
        if validation_data is not None:
            history["val_loss"] = []
        n = x.shape[0]
        total_weight = (n if sample_weight is None
                        else float(np.sum(sample_weight, dtype=np.float64)))
        rate, seen = lr, 0
        best, stale = math.inf, 0            # the monitored loss, for "adaptive"
        best_val, val_stale, best_params = math.inf, 0, None
        bar = Progress(epochs, progress)
        where = _Interruption(self._core)
        started = time.perf_counter()
        try:
            for epoch in range(epochs):
                where.epoch, where.batches = epoch, None
                if schedule == "invscaling":
                    rate = lr / (seen + 1) ** power_t
                elif callable(schedule):
                    rate = S.check_rate(schedule(epoch), epoch)
                epoch_opts, table = dict(opts), None
                if per_batch:
                    table = slice(epoch * per_batch, (epoch + 1) * per_batch)
                    rate = float(rates[table.start])
                    if momenta is not None:  # OneCycleLR's momentum / beta1 cycling
                        # NOTE: the rule's own value is overwritten by the table before
                        # each update; the largest one makes the velocity exist if any
                        # batch has momentum (PyTorch creates its buffer lazily, = g).
                        momentum = float(momenta[table].max())
                        epoch_opts["beta1"] = float(momenta[table.start])
                elif rates is not None:
                    rate = float(rates[epoch])
                order = rng.permutation(n).astype(np.int64) if shuffle else None
                with self._lock, where.inside_epoch():
                    rule, state = self.update_rule(optimizer, lr=rate, momentum=momentum,
                                                   weight_decay=weight_decay, nesterov=nesterov,
                                                   **epoch_opts)
                    if table is not None:
                        rule.set_schedule(rates[table], None if momenta is None
                                          else momenta[table])
                    try:
                        status, loss_sum, done = self._core.epoch(
                            self._params, self._grads, state, x, y, sample_weight, order,
                            batch_size, rule)
                    finally:  # Adam's steps also count when a signal handler raised
                        if optimizer in ("adam", "adamw"):
                            self._adam[2] = rule.step
                if status == NONFINITE:
                    kept = ("the parameters of the best epoch so far are restored"
                            if early_stopping and best_params is not None else
                            "the parameters are those from before that batch")
                    raise FloatingPointError(
                        f"non-finite loss or gradient at epoch {epoch}, batch {done}; "
                        f"{kept} -- try a smaller `lr`")
                seen += n
                logs = {"loss": loss_sum / total_weight}
                if validation_data is not None:
                    logs["val_loss"] = float(self._core.evaluate(self._params, x_val, y_val))
                if "accuracy" in metrics:
                    logs["accuracy"] = self._accuracy(x, y)
                    if validation_data is not None:
                        logs["val_accuracy"] = self._accuracy(x_val, y_val)
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                history["lr"].append(rate)
                bar.update(logs)
                if verbose:
                    print(f"epoch {epoch + 1}/{epochs} "
                          + " ".join(f"{k}={v:.6g}" for k, v in logs.items())
                          + f" time={time.perf_counter() - started:.3g}s", flush=True)
                    started = time.perf_counter()
                if callback is not None and callback(epoch, dict(logs)) is False:
                    break
                if early_stopping:
                    if logs["val_loss"] < best_val:
                        best_params = self._params.copy()
                    val_stale = val_stale + 1 if logs["val_loss"] > best_val - tol else 0
                    best_val = min(best_val, logs["val_loss"])
                    if val_stale > patience:
                        break
                if schedule == "adaptive":
                    watched = logs.get("val_loss", logs["loss"])
                    stale = stale + 1 if watched > best - tol else 0
                    best = min(best, watched)
                    if stale > patience:
                        if rate <= 1e-6:
                            break
                        rate, stale = rate / 5.0, 0
        except KeyboardInterrupt as exc:
            documented = where.documented(exc)
            if documented is None:
                raise
            raise documented from exc
        finally:
            bar.close()
            if early_stopping and best_params is not None:
                with self._lock:
                    self._params[...] = best_params
        return history

    @staticmethod
    def _schedule_table(schedule, options, lr, epochs, batches):
        """(rates, momenta, per_batch) of a PyTorch schedule: per-epoch rates, or per-batch
        rates (and momenta) with per_batch = batches per epoch; (None, None, 0) otherwise."""
        if callable(schedule) or schedule not in S.SCHEDULES:
            if options is not None:
                raise ValueError(f"`schedule_options` is for the schedules "
                                 f"{', '.join(map(repr, S.SCHEDULES))}; got schedule="
                                 f"{schedule!r}")
            return None, None, 0
        per_batch = batches if schedule in S.PER_BATCH else 0
        rates, momenta = S.learning_rates(schedule, lr, epochs=epochs,
                                          steps_per_epoch=max(per_batch, 1), options=options)
        return (np.array(rates, np.float64),
                None if momenta is None else np.array(momenta, np.float64), per_batch)

    # -- metrics ------------------------------------------------------------

    def _metrics(self, metrics):
        if isinstance(metrics, str) or not isinstance(metrics, (tuple, list)):
            raise TypeError(f"`metrics` must be a sequence of names such as ('accuracy',); "
                            f"got {metrics!r}")
        for name in metrics:
            V.check_choice("metrics", name, ("accuracy",))
            if self.loss in REGRESSION_LOSSES:
                raise ValueError(f"`metrics`=('accuracy',) needs a classification loss "
                                 f"('cross_entropy' or 'binary_cross_entropy'); got "
                                 f"loss={self.loss!r}")
        return tuple(metrics)

    def _accuracy(self, x, y, sample_weight=None):
        """Fraction of rows classified right (converted inputs; see :meth:`score`)."""
        out = self._output(x)
        if self.loss == "cross_entropy":
            right = out.argmax(axis=1) == y
        else:  # all labels right (scikit-learn's subset accuracy); p = 0.5 counts as 0
            right = ((out > 0.5) == (y > 0.5)).all(axis=1)
        if sample_weight is None:
            return float(right.mean()) if right.size else math.nan
        return float(np.average(right, weights=sample_weight))

    def score(self, x, y, *, sample_weight=None):
        """Accuracy for the classification losses, R^2 for MSE (scikit-learn's ``score``).

        Parameters
        ----------
        x : array_like, shape (n_samples, n_in)
        y : array_like, shape (n_samples, n_out), or int labels (n_samples,)
        sample_weight : array_like, shape (n_samples,), optional

        Returns
        -------
        float
            ``loss="cross_entropy"``: the fraction of rows whose arg-max output
            is the label; ``"binary_cross_entropy"``: the fraction of rows with
            every output on the right side of 0.5; the regression losses: the coefficient
            of determination 1 - SS_res / SS_tot, averaged over the outputs
            (``sklearn.metrics.r2_score``'s "uniform_average"; an output with
            constant targets scores 1 if predicted exactly, else 0).
        """
        x, y = self.prepare_inputs(x, y)
        sample_weight = self._sample_weight(sample_weight, x.shape[0])
        if self.loss not in REGRESSION_LOSSES:
            return self._accuracy(x, y, sample_weight)
        pred = self._output(x).astype(np.float64)
        target = y.astype(np.float64)
        w = np.ones(len(target)) if sample_weight is None else sample_weight.astype(np.float64)
        mean = np.average(target, axis=0, weights=w)
        ss_res = (w[:, None] * (target - pred) ** 2).sum(axis=0)
        ss_tot = (w[:, None] * (target - mean) ** 2).sum(axis=0)
        scores = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                          np.where(ss_res == 0, 1.0, 0.0))
        return float(scores.mean())

    # -- files --------------------------------------------------------------

    def save(self, path):
        """Write the model to ``path`` (``.npz``) atomically; see :mod:`bpcore._modelfile`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced atomically if it exists; a symbolic link
            is followed).
        """
        with self._lock:
            # The activation options ride as extra entries (only when given), so
            # files without them stay as they were.
            names = sorted(self.activation_options)
            extra = ({"activation_option_names": np.array(names, dtype=str),
                      "activation_option_values": np.array(
                          [self.activation_options[k] for k in names], np.float64)}
                     if names else {})
            extra.update({f"loss_option_{k}": np.asarray(v, np.float64)
                          for k, v in self.loss_options.items()})
            if any(self.dropout):
                extra["dropout"] = np.array(self.dropout, np.float64)
            if self.compute_dtype is not None:
                extra["compute_dtype"] = np.array(self.compute_dtype)
            _modelfile.save(path, layer_sizes=self.layer_sizes, activations=self.activations,
                            loss=self.loss, reduction=self.reduction, dtype=self.dtype,
                            params=self._params, extra=extra)

    @classmethod
    def load(cls, path, *, backend="compiled"):
        """Read a model written by :meth:`save`; a bad file raises ``ValueError``.

        Parameters
        ----------
        path : str or os.PathLike
        backend : {"compiled", "reference"}

        Returns
        -------
        MLP
        """
        entries = _modelfile.load(path)
        acts = entries["activations"]
        extra = entries["extra"]
        try:
            options = None
            if "activation_option_names" in extra:
                names = extra["activation_option_names"]
                values = extra.get("activation_option_values")
                if (names.ndim != 1 or names.dtype.kind != "U" or values is None
                        or values.shape != names.shape or values.dtype.kind != "f"):
                    raise ValueError("bad activation option entries")
                options = {str(k): float(v) for k, v in zip(names, values)}
            loss_options = {k[len("loss_option_"):]: (v.tolist() if v.ndim else float(v))
                            for k, v in extra.items() if k.startswith("loss_option_")}
            # NOTE: files before dropout / compute_dtype were saved have neither
            # entry (and a model without them writes none): no dropout, float32 products.
            dropout = extra.get("dropout")
            if dropout is not None:
                if dropout.ndim != 1 or dropout.dtype.kind != "f":
                    raise ValueError("bad dropout entry")
                dropout = dropout.tolist()
            compute_dtype = extra.get("compute_dtype")
            if compute_dtype is not None:
                if compute_dtype.ndim != 0 or compute_dtype.dtype.kind != "U":
                    raise ValueError("bad compute_dtype entry")
                compute_dtype = str(compute_dtype)
            net = cls(entries["layer_sizes"], activation=acts[:-1], output_activation=acts[-1],
                      loss=entries["loss"], reduction=entries["reduction"],
                      dtype=entries["dtype"], backend=backend, activation_options=options,
                      loss_options=loss_options or None, dropout=dropout,
                      compute_dtype=compute_dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path!r} describes an invalid model: {exc}") from None
        net._params[...] = entries["params"]
        return net

    # -- deployment: thin faces of bpcore.export -------------------------------

    def to_onnx(self, path=None, *, opset=None):
        """The model as an ``onnx.ModelProto`` computing :meth:`predict` (needs onnx).

        A ``compute_dtype="bfloat16"`` model is exported as float32: the graph
        computes its products in float32 from the float32 parameters, so its
        outputs differ from :meth:`predict`'s by the bfloat16 rounding.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Also write it there.
        opset : int, optional
            See :func:`bpcore.export.to_onnx`.

        Returns
        -------
        onnx.ModelProto
            Input ``"x"`` (batch, n_in), output ``"y"`` (batch, n_out).
        """
        from . import export
        return export.to_onnx(self, path, opset=opset)

    def to_torch(self):
        """The model as a ``torch.nn.Sequential`` with the same weights (needs torch).

        A ``compute_dtype="bfloat16"`` model becomes a float32 module (run it
        under ``torch.autocast("cpu", dtype=torch.bfloat16)`` for mixed
        precision; autocast also rounds each Linear's output to bfloat16).

        Returns
        -------
        torch.nn.Sequential
            See :func:`bpcore.export.to_torch`.
        """
        from . import export
        return export.to_torch(self)

    @classmethod
    def from_torch(cls, module, *, loss=None, backend="compiled"):
        """A model with the layers and weights of a ``torch.nn.Sequential`` (needs torch).

        Parameters
        ----------
        module : torch.nn.Sequential
            ``nn.Linear`` layers and activation modules; see
            :func:`bpcore.export.from_torch`.
        loss : str, optional
            Default: "cross_entropy" after a softmax, else "mse".
        backend : {"compiled", "reference"}

        Returns
        -------
        MLP
        """
        from . import export
        return export.from_torch(module, loss=loss, backend=backend, cls=cls)

    def __repr__(self):
        return (f"MLP({self.layer_sizes}, activations={self.activations}, loss={self.loss!r}, "
                f"reduction={self.reduction!r}, dtype={self.dtype.name!r}, "
                + (f"compute_dtype={self.compute_dtype!r}, " if self.compute_dtype else "")
                + f"backend={self.backend!r})")


class _Interruption:
    """Where ``fit`` is, so that Ctrl-C anywhere in it says where training stopped.

    NOTE: the compiled epoch re-raises a signal handler's exception as it was
    (SystemExit, TimeoutError, a KeyboardInterrupt with a message, ...), and
    those propagate unchanged; only the bare ``KeyboardInterrupt()`` of
    Python's default SIGINT handler is replaced, by one that says where
    training stopped -- whether it arrived inside the compiled epoch or in the
    Python between epochs.
    """

    def __init__(self, core):
        self.core, self.epoch, self.batches = core, 0, None

    def documented(self, exc):
        """Python's bare Ctrl-C as bpcore's KeyboardInterrupt; None for any other exception."""
        if type(exc) is not KeyboardInterrupt or exc.args:
            return None
        done = f" after {self.batches} batches" if self.batches is not None else ""
        return KeyboardInterrupt(f"training interrupted at epoch {self.epoch}{done}; the "
                                 f"weights are kept")

    @contextlib.contextmanager
    def inside_epoch(self):
        try:
            yield
        except KeyboardInterrupt:
            self.batches = self.core.batches_done
            raise


def _check_dropout(dropout, n_hidden):
    """``dropout`` as one probability in [0, 1) per hidden layer (a tuple)."""
    if dropout is None:
        return (0.0,) * n_hidden
    if isinstance(dropout, (str, bytes)) or not isinstance(dropout, (numbers.Real, list, tuple,
                                                                     np.ndarray)):
        raise TypeError(f"`dropout` must be a probability or a sequence of them (one per hidden "
                        f"layer); got {type(dropout).__name__}")
    if isinstance(dropout, numbers.Real):
        dropout = [dropout] * n_hidden
    elif len(dropout) != n_hidden:
        raise ValueError(f"`dropout` must be one probability or {n_hidden} (one per hidden "
                         f"layer); got {len(dropout)}")
    probabilities = tuple(V.check_real("dropout", p, minimum=0.0, maximum=1.0)
                          for p in dropout)
    if any(p >= 1 for p in probabilities):
        raise ValueError(f"`dropout` must be < 1 (1 would drop every unit); got "
                         f"{list(probabilities)}")
    return probabilities
def _activation_options(options, activations):
    """``activation_options`` checked against the model's activations, as a dict of floats."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`activation_options` must be a dict such as "
                        f"{{'negative_slope': 0.2}}; got {type(options).__name__}")
    takes = {key for act in activations for key in V.ACTIVATION_PARAMS.get(act, {})}
    checked = {}
    for key, value in options.items():
        if key not in takes:
            raise ValueError(f"`activation_options` has {key!r}, which none of the "
                             f"activations {activations} takes"
                             + (f" (they take {', '.join(map(repr, sorted(takes)))})"
                                if takes else ""))
        try:
            checked[str(key)] = V.activation_param(key, value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"`activation_options`: {exc}") from None
    return checked


def _loss_options(options, loss, n_out):
    """``loss_options`` checked against ``loss``: floats, and tuples of n_out floats."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`loss_options` must be a dict such as {{'delta': 2.0}}; got "
                        f"{type(options).__name__}")
    takes = LOSS_OPTIONS.get(loss, {})
    checked = {}
    for key, value in options.items():
        if key not in takes:
            raise ValueError(f"`loss_options` has {key!r}, which loss={loss!r} does not take"
                             + (f" (it takes {', '.join(map(repr, takes))})" if takes else ""))
        try:
            if key in ("delta", "beta"):
                checked[key] = V.regression_param(loss, value)
            elif key == "label_smoothing":
                checked[key] = V.label_smoothing_arg(value)
            elif value is not None:
                checked[key] = tuple(float(v) for v in V.loss_weights(key, value, n_out))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"`loss_options`: {exc}") from None
    return checked


def _default_lr(optimizer):
    """``lr=None``: Keras's defaults, 0.01 for SGD and 0.001 for Adam, AdamW and RMSprop."""
    return 0.01 if optimizer == "sgd" else 1e-3


def _default_decay(optimizer, weight_decay):
    """``weight_decay=None``: PyTorch's defaults, 0.01 for AdamW and 0 for the others."""
    if weight_decay is not None:
        return weight_decay
    return 0.01 if optimizer == "adamw" else 0.0


def _rng(seed):
    """``seed`` as a Generator, with a ``TypeError``/``ValueError`` that names ``seed``."""
    if isinstance(seed, np.random.Generator):
        return seed
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"`seed` must be None, a non-negative int or a "
                        f"numpy.random.Generator; got {seed!r} ({exc})") from None


class Progress:
    """Per-epoch progress: tqdm when installed, else one rewritten line on stderr."""

    def __init__(self, total, enabled):
        self.enabled, self.total, self.count, self.bar = enabled, total, 0, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="epoch")
            except ImportError:
                self.bar = None

    def update(self, logs):
        if not self.enabled:
            return
        self.count += 1
        text = " ".join(f"{k}={v:.6g}" for k, v in logs.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
        else:
            sys.stderr.write(f"\repoch {self.count}/{self.total} {text}")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
