"""The NumPy twin of the training core (``bpcore._step``): the same classes and methods.

``Trainer`` and ``UpdateRule`` here have exactly the signatures of their
compiled twins in ``bpcore/_step.pyx`` (a test compares them with
``inspect.signature``), and compute the same thing with the functions of
:mod:`bpcore.reference`, one readable step at a time:

* ``loss_and_grad``: forward (``linear_forward`` and the activations), the
  loss and its gradient (PyTorch's reductions, optional row weights), then
  BP1-BP4 layer by layer with ``linear_backward`` and the activation
  backwards;
* ``update``: one optimizer step over the flat parameter block;
* ``epoch``: mini-batches in order or by a permutation, each a
  ``loss_and_grad`` and an ``update``.

``compute_dtype="bfloat16"`` rounds both operands of every product (forward
``a @ W``, backward ``delta @ W.T`` and ``a.T @ delta``) with
:func:`bpcore.reference.round_bfloat16` first, the products in float32, as the
compiled core's ``gemm_bf16``; everything else stays float32.

``bpcore.MLP(..., backend="reference")`` runs a model on this twin.
scikit-learn's loss rules ("sk_*") exist only in the compiled core.
"""
import functools
import math

import numpy as np

from . import _validate as V
from . import reference as R

__all__ = ["Trainer", "UpdateRule", "dropout_keep", "NONFINITE", "INTERRUPTED"]

# The core's statuses (bpcore._step's).
NONFINITE = 100
INTERRUPTED = 101

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    """splitmix64's finalizer on uint64 arrays (NumPy's integer products wrap mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z):
    """_mix64 on one Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def dropout_keep(seed, step, layer, shape, p):
    """The dropout mask of one (seed, step, layer): True where an element is kept.

    The twin of ``_step.dropout_rows``: element i (row-major) is kept when
    u_i >= p, u_i = (mix(stream + (i+1) G) >> 11) * 2**-53 with stream =
    mix(mix(mix(seed + G) + step) + layer), mix = splitmix64's finalizer and
    G = 0x9E3779B97F4A7C15, all mod 2**64: bit for bit the compiled core's masks.
    """
    stream = _mix64_int((_mix64_int((_mix64_int((seed + _GOLDEN) & _MASK64) + step) & _MASK64)
                         + layer) & _MASK64)
    count = int(np.prod(shape))
    counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    bits = _mix64(np.uint64(stream) + counters)
    return ((bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 >= p).reshape(shape)


UPDATE_KINDS = ("sgd", "adam", "adamw", "rmsprop", "sklearn_sgd", "sklearn_adam")
# The activations whose backward takes the pre-activation z (the others: the output a).
NEEDS_Z = ("gelu", "gelu_tanh", "silu", "softplus")


class UpdateRule:
    """An optimizer and its settings (the twin of ``bpcore._step.UpdateRule``).

    Parameters
    ----------
    kind : {"sgd", "adam", "adamw", "rmsprop"}
        ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop`` ("sklearn_*"
        exist only in the compiled core).
    lr, momentum, weight_decay, nesterov, betas, eps, step, weights_only, alpha, centered,
    clip_grad_norm, clip_grad_value
        As the compiled twin's.
    """

    def __init__(self, kind, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=1e-8, step=0, weights_only=False, alpha=0.99,
                 centered=False, clip_grad_norm=None, clip_grad_value=None):
        if kind not in UPDATE_KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(map(repr, UPDATE_KINDS))}; "
                             f"got {kind!r}")
        if kind.startswith("sklearn"):
            raise ValueError(f"the reference core has no {kind!r} rule")
        self.kind = kind
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.step = int(step)
        self.weights_only = bool(weights_only)
        self.alpha = float(alpha)
        self.centered = bool(centered)
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        self.clip_grad_value = None if clip_grad_value is None else float(clip_grad_value)
        self._table, self._table_pos = None, 0

    def set_schedule(self, lrs, momenta=None):
        """The next ``len(lrs)`` updates take their rate (and momentum / beta1) from the table."""
        lrs, momenta = V.schedule_tables(lrs, momenta)
        self._table, self._table_pos = (lrs, momenta), 0

    @property
    def stateful(self):
        """How many state blocks the rule reads and writes (the leading entries of ``state``)."""
        momenta = None if self._table is None else self._table[1]
        momentum = self.momentum != 0 or (momenta is not None and bool((momenta != 0).any()))
        if self.kind in ("adam", "adamw"):
            return 2
        if self.kind == "rmsprop":
            return 3 if self.centered else (2 if momentum else 1)
        return 1 if momentum else 0

    def _next_settings(self):
        """Take this update's rate (and momentum) from the table, as _step.apply_update."""
        if self._table is None or self._table_pos >= len(self._table[0]):
            return
        lrs, momenta = self._table
        self.lr = float(lrs[self._table_pos])
        if momenta is not None:
            if self.kind in ("adam", "adamw"):
                self.beta1 = float(momenta[self._table_pos])
            else:
                self.momentum = float(momenta[self._table_pos])
        self._table_pos += 1

    def _clip(self, grads):
        """Clip ``grads`` in place (clip_grad_value_, then clip_grad_norm_), as _step."""
        dt = grads.dtype.type
        if self.clip_grad_value is not None:
            np.clip(grads, dt(-self.clip_grad_value), dt(self.clip_grad_value), out=grads)
        if self.clip_grad_norm is not None:
            total = math.sqrt(float(np.dot(grads.astype(np.float64), grads.astype(np.float64))))
            if self.clip_grad_norm / (total + 1e-6) < 1.0:
                grads *= dt(self.clip_grad_norm / (total + 1e-6))

    def __repr__(self):
        return (f"UpdateRule({self.kind!r}, lr={self.lr!r}, momentum={self.momentum!r}, "
                f"weight_decay={self.weight_decay!r}, step={self.step})")


class Trainer:
    """The NumPy twin of ``bpcore._step.Trainer`` (same methods, same flat blocks)."""

    def __init__(self, sizes, activations, loss, reduction, dtype, alpha=0.0, dropout=None, *,
                 activation_params=None, loss_params=None, compute_dtype=None):
        if loss.startswith("sk_"):
            raise ValueError(f"the reference core has no scikit-learn loss rule ({loss!r})")
        # None or "bfloat16": the products' operands (see the module docstring)
        self.compute_dtype = V.check_compute_dtype(compute_dtype, dtype)
        self.sizes = [int(s) for s in sizes]
        self.activations = list(activations)
        # each layer's activation keywords (e.g. {"negative_slope": 0.2}); {} for defaults
        self.activation_params = [dict(p) if p else {} for p in
                                  (activation_params or [None] * len(self.activations))]
        self.loss = loss
        self.reduction = reduction
        self.loss_params = {k: v for k, v in (loss_params or {}).items() if v is not None}
        self.dtype = np.dtype(dtype)
        self.alpha = alpha
        self.w_off, self.b_off = [], []
        offset = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self.w_off.append(offset)
            offset += n_in * n_out
            self.b_off.append(offset)
            offset += n_out
        self.n_params = offset
        self.n_layers = len(self.sizes) - 1
        self.capacity = 0
        self.batches_done = 0  # batches applied by the last epoch call
        self._pending = None   # what backward_layer needs, set by loss_and_grad_begin
        n_hidden = self.n_layers - 1
        self.dropout = tuple(0.0 for _ in range(n_hidden)) if dropout is None else tuple(
            float(p) for p in dropout)
        if len(self.dropout) != n_hidden:
            raise ValueError(f"`dropout` must have one probability per hidden layer "
                             f"({n_hidden}); got {len(self.dropout)}")
        self.dropout_seed = 0  # the masks' key, with the step, the layer and the element
        self.dropout_step = 0  # the step whose masks the next loss_and_grad draws
        self._pre = {}         # layer l -> its output before the mask (the last training forward)

    def offsets(self):
        """(w_off, b_off): where each layer's W and b start in the flat block."""
        return np.array(self.w_off, np.intp), np.array(self.b_off, np.intp)

    def _views(self, block):
        pairs = zip(self.sizes[:-1], self.sizes[1:], self.w_off, self.b_off)
        return ([block[w:w + n_in * n_out].reshape(n_in, n_out) for n_in, n_out, w, _ in pairs],
                [block[b:b + n_out] for n_out, b in zip(self.sizes[1:], self.b_off)])

    def _operand(self, a):
        """``a`` as a product takes it: rounded to bfloat16 under compute_dtype "bfloat16"."""
        return R.round_bfloat16(a) if self.compute_dtype == "bfloat16" else a

    def _takes_logits(self):
        return self.loss in ("cross_entropy", "binary_cross_entropy")

    # -- forward and the loss rule ------------------------------------------

    def _forward(self, params, x, logits, zs=None, training=False):
        """[x, a_1, ..., a_L]; with a list ``zs``, also z_l into zs[l] where the
        activation's backward needs it (None elsewhere), as the compiled step keeps them;
        ``training``: hidden outputs masked by dropout (inverted)."""
        weights, biases = self._views(params)
        acts = [x]
        if zs is not None:
            zs[:] = [None]
        for l, (w, b) in enumerate(zip(weights, biases)):
            z = R.linear_forward(self._operand(acts[-1]), self._operand(w), b)
            act = self.activations[l]
            if zs is not None:
                zs.append(z if act in NEEDS_Z else None)
            if logits and l == len(weights) - 1 and act in ("softmax", "sigmoid"):
                acts.append(z)  # the loss applies softmax / sigmoid itself
            elif act == "softmax":
                acts.append(R.softmax_forward(z))
            else:
                acts.append(getattr(R, f"{act}_forward")(z, **self.activation_params[l]))
            if training and l < len(weights) - 1 and self.dropout[l] > 0:
                self._pre[l + 1] = acts[-1]
                acts[-1] = self._dropped(acts[-1], l)
        return acts

    def _dropped(self, a, l):
        """a with layer l's mask of this step applied: a * 1/(1-p) where kept, else 0."""
        keep = dropout_keep(self.dropout_seed, self.dropout_step, l, a.shape, self.dropout[l])
        return np.where(keep, a * a.dtype.type(1.0 / (1.0 - self.dropout[l])),
                        a.dtype.type(0))

    def _activation_backward(self, l, a, z, grad):
        """grad times layer l's activation derivative (l = 1..L), from its output a or
        its pre-activation z (as the activation's backward takes it)."""
        act = self.activations[l - 1]
        saved = z if act in NEEDS_Z else a
        return getattr(R, f"{act}_backward")(saved, grad, **self.activation_params[l - 1])

    def forward(self, params, x, out):
        """out := the network's output for x (n, n_in) -> (n, n_out)."""
        out[...] = self._forward(params, x, False)[-1]
        return out

    def evaluate(self, params, x, y):
        """The loss on (x, y) without gradients."""
        if x.shape[0] == 0:
            return float("nan") if self.reduction.endswith("mean") else 0.0
        return self._output_loss(self._forward(params, x, self._takes_logits())[-1], y, None,
                                 want_grad=False)[0]

    def _output_loss(self, out, y, sample_weight, want_grad=True):
        """(loss, d loss / d output) on a batch; the twin of _step.output_loss_rows."""
        name = {"cross_entropy": "softmax_cross_entropy", "mse": "mse_loss",
                "binary_cross_entropy": "sigmoid_binary_cross_entropy"}.get(self.loss,
                                                                            f"{self.loss}_loss")
        options = self.loss_params
        loss_fn = functools.partial(getattr(R, name), **options)
        grad_fn = functools.partial(getattr(R, f"{name}_backward"), **options)
        if sample_weight is None and self.loss == "cross_entropy" and options:
            # NOTE: as rows of weight 1, so that targets all of class weight 0 give loss 0
            # (the core's rule for a batch that weighs nothing), not torch's 0/0
            sample_weight = np.ones(out.shape[0])
        if sample_weight is None:
            return (loss_fn(out, y, reduction=self.reduction),
                    grad_fn(out, y, reduction=self.reduction) if want_grad else None)
        mean = self.reduction.endswith("mean")
        total_reduction = "half_sum" if self.reduction.startswith("half") else "sum"
        # a batch of zero-weight rows only gives loss 0 and gradient 0 (as _step)
        weights = sample_weight.astype(np.float64)  # summed in double, as _step
        with np.errstate(over="ignore"):
            norm = (float(weights.sum()) or 1.0) if mean else 1.0
        if not math.isfinite(norm):  # NOTE: huge weights; the mean is scale-free (as _step)
            weights = weights / weights.max()
            norm = float(weights.sum())
        if mean and self.loss == "cross_entropy" and (
                "class_weight" in options or options.get("label_smoothing", 0)):
            # PyTorch's weighted mean: by the summed weights of the targets (as _step)
            target_w = options["class_weight"][y] if "class_weight" in options else 1.0
            norm = float(np.sum(weights * target_w)) or 1.0
        per_element = self.loss != "cross_entropy" and mean  # MSE, BCE average over outputs
        loss, grad = 0.0, np.empty_like(out)
        for i in range(out.shape[0]):
            coef = float(weights[i]) / norm / (out.shape[1] if per_element else 1)
            loss += coef * loss_fn(out[i:i + 1], y[i:i + 1], reduction=total_reduction)
            grad[i:i + 1] = grad_fn(out[i:i + 1], y[i:i + 1],
                                    reduction=total_reduction) * out.dtype.type(coef)
        return loss, grad

    # -- backward ------------------------------------------------------------

    def loss_and_grad(self, params, x, y, grads, sample_weight=None):
        """grads[:n_params] := d loss / d params on the batch (x, y); returns (status, loss)."""
        # Overflow is detected below and reported as a status, like the compiled step.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._loss_and_grad(params, x, y, grads, sample_weight)

    def _output_delta(self, params, x, y, sample_weight):
        """((activations, pre-activations), loss, delta_L): the twin of
        _step.output_delta_rows (BP1)."""
        zs = []
        acts = self._forward(params, x, self._takes_logits(), zs, training=True)
        out, act_out = acts[-1], self.activations[-1]
        loss, delta = self._output_loss(out, y, sample_weight)
        if not self._takes_logits():
            if act_out == "softmax":
                delta = out * (delta - (delta * out).sum(axis=1, keepdims=True))
            else:
                delta = self._activation_backward(self.n_layers, out, zs[-1], delta)
        return (acts, zs), loss, delta

    def _backward_layer(self, params, grads, saved, delta, l):
        """Layer l's gradient into grads; returns delta_{l-1} (the twin of
        _step.backward_layer_rows).  ``saved``: (activations, pre-activations)."""
        acts, zs = saved
        weights, _ = self._views(params)
        grad_w, grad_b = self._views(grads)
        # BP3 / BP4 (grad_b, grad_w) and BP2's product delta_l @ W_l.T
        grad_x, _, _ = R.linear_backward(self._operand(acts[l]), self._operand(weights[l]),
                                         self._operand(delta), need_grad_x=l > 0,
                                         grad_w=grad_w[l], grad_b=grad_b[l])
        if self.compute_dtype is not None:
            np.sum(delta, axis=0, out=grad_b[l])  # BP4 is no product: the float32 delta
        if l == 0:
            self.dropout_step += any(p > 0 for p in self.dropout)  # the step's masks are used
            return None
        # BP2: times the activation's derivative, from the saved output (before its mask,
        # then the mask: PyTorch's order is the mask first, equal to rounding) or z
        dropped = self.dropout[l - 1] > 0
        delta = self._activation_backward(l, self._pre[l] if dropped else acts[l], zs[l],
                                          grad_x)
        return self._dropped(delta, l - 1) if dropped else delta

    def _loss_and_grad(self, params, x, y, grads, sample_weight=None):
        acts, loss, delta = self._output_delta(params, x, y, sample_weight)
        if not math.isfinite(loss):
            return NONFINITE, loss
        for l in range(self.n_layers - 1, -1, -1):
            delta = self._backward_layer(params, grads, acts, delta, l)
        if not np.isfinite(grads[:self.n_params]).all():
            return NONFINITE, loss
        return 0, loss

    # -- the update rule and the epoch -----------------------------------------

    def update(self, params, grads, state, rule):
        """params := one step of ``rule`` over the flat block; ``rule.step`` advances (Adam)."""
        state = (None, None, None) if state is None else tuple(state) + (None,) * (3 - len(state))
        s1, s2, s3 = state
        rule._next_settings()
        if rule.clip_grad_value is not None or rule.clip_grad_norm is not None:
            rule._clip(grads[:self.n_params])
        if rule.kind in ("adam", "adamw"):
            rule.step += 1
        if rule.weights_only and rule.weight_decay != 0:
            ranges = []
            for (n_in, n_out), w, b in zip(zip(self.sizes[:-1], self.sizes[1:]), self.w_off,
                                           self.b_off):
                ranges += [(w, n_in * n_out, rule.weight_decay), (b, n_out, 0.0)]
        else:
            ranges = [(0, self.n_params, rule.weight_decay)]
        for start, size, wd in ranges:
            part = slice(start, start + size)
            if rule.kind in ("adam", "adamw"):
                update = R.adam_update if rule.kind == "adam" else R.adamw_update
                update(params[part], grads[part], lr=rule.lr, m=s1[part], v=s2[part],
                       step=rule.step, beta1=rule.beta1, beta2=rule.beta2, eps=rule.eps,
                       weight_decay=wd)
            elif rule.kind == "rmsprop":
                R.rmsprop_update(params[part], grads[part], lr=rule.lr, square_avg=s1[part],
                                 alpha=rule.alpha, eps=rule.eps, weight_decay=wd,
                                 momentum=rule.momentum,
                                 momentum_buffer=s2[part] if rule.momentum else None,
                                 centered=rule.centered,
                                 grad_avg=s3[part] if rule.centered else None)
            else:
                R.sgd_update(params[part], grads[part], lr=rule.lr, momentum=rule.momentum,
                             velocity=s1[part] if rule.momentum else None, weight_decay=wd,
                             nesterov=rule.nesterov)

    def epoch(self, params, grads, state, x, y, sample_weight, order, batch_size, rule):
        """Mini-batches of ``batch_size`` over x in ``order``; returns (status, loss_sum, batches)."""
        loss_sum, done = 0.0, 0
        self.batches_done = 0
        for start in range(0, x.shape[0], batch_size):
            rows = (slice(start, start + batch_size) if order is None
                    else order[start:start + batch_size])
            sw = None if sample_weight is None else sample_weight[rows]
            status, loss = self.loss_and_grad(params, x[rows], y[rows], grads, sw)
            if status:
                return status, loss_sum, done
            self.update(params, grads, state, rule)
            weight = len(x[rows]) if sw is None else float(sw.sum(dtype=np.float64))
            loss_sum += loss * weight
            done += 1
            self.batches_done = done
        return 0, loss_sum, done

    def train_step_fast(self, params, grads, velocity, x, y, lr, momentum, weight_decay,
                        nesterov):
        """None: the reference always takes the general path."""
        return None

    # -- the step cut at layer boundaries (bpcore.distributed's overlap) --------

    def loss_and_grad_begin(self, params, x, y):
        """Forward and loss on (x, y), keeping what backward_layer needs; returns (status, loss)."""
        self._pending = None
        if x.shape[0] < 1:
            raise ValueError("`x` must have at least 1 row")
        with np.errstate(over="ignore", invalid="ignore"):
            acts, loss, delta = self._output_delta(params, x, y, None)
        if not math.isfinite(loss):
            return NONFINITE, loss
        self._pending = [x.shape[0], acts, delta, self.n_layers - 1]
        return 0, loss

    def backward_layer(self, params, x, grads, layer):
        """grads' W_layer and b_layer := their gradient; returns the status (0 or non-finite)."""
        if self._pending is None or self._pending[0] != x.shape[0]:
            raise ValueError("backward_layer must follow loss_and_grad_begin on the same `x`")
        rows, acts, delta, expected = self._pending
        if layer != expected:
            raise ValueError(f"backward_layer must run layers from the last down; expected "
                             f"layer {expected}, got {layer}")
        with np.errstate(over="ignore", invalid="ignore"):
            delta = self._backward_layer(params, grads, acts, delta, layer)
        self._pending = [rows, acts, delta, layer - 1]
        grad_w, grad_b = self._views(grads)
        finite = np.isfinite(grad_w[layer]).all() and np.isfinite(grad_b[layer]).all()
        if not finite or layer == 0:
            self._pending = None
        return 0 if finite else NONFINITE
