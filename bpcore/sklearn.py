"""Drop-in replacements for scikit-learn's MLP: change one import, train many times faster.

    from bpcore.sklearn import MLPClassifier   # was: from sklearn.neural_network import ...

Design
------
``MLPClassifier`` and ``MLPRegressor`` subclass scikit-learn's own estimators
and replace only the numerical work:

* the stochastic solvers (``_fit_stochastic``): each epoch is one nogil call
  into :mod:`bpcore._step` (``Trainer.epoch`` with a scikit-learn update rule) that gathers the
  shuffled batches, runs forward, loss, backward and scikit-learn's SGD or
  Adam update over one flat parameter block;
* L-BFGS (``_fit_lbfgs``): ``scipy.optimize.minimize`` as scikit-learn calls it,
  with loss and gradient from ``Trainer.loss_and_grad`` (scikit-learn's loss rule);
* prediction (``_forward_pass_fast``): one compiled forward pass.

Everything else -- parameter validation, label handling, the initial weights
drawn from ``random_state``, shuffles, the validation split, scoring, the
stopping rules, warnings and ``verbose`` output, ``partial_fit`` -- is
scikit-learn's code or follows it line for line, so the estimators take the
same parameters, expose the same fitted attributes and, in float64, train the
same model (see the equivalence tests in ``tests/test_sklearn.py``).

Why subclass rather than re-implement: the contract is "the same model as
scikit-learn's for the same ``random_state``"; inheriting the validation,
initialisation and bookkeeping makes every one of those identical by
construction, and leaves bpcore only the arithmetic to prove.  The price is
a dependence on three private methods of scikit-learn's
``BaseMultilayerPerceptron``; ``tests/test_sklearn.py`` pins their behaviour.

Differences (documented and tested):

* the matrix products sum in a different order (bpcore's GEMM), so results
  agree to rounding, not bit for bit (float64: ``coefs_`` within ~1e-12
  relative after 5 epochs);
* float32 ``sgd``/``adam`` training runs entirely in float32 (scikit-learn
  promotes some intermediate results to float64 in the regressor and in
  Adam's update); ``lbfgs`` returns float64 ``coefs_``, as scikit-learn's;
* from a batch with a non-finite loss on, a fit runs scikit-learn's own
  ``_backprop`` (the compiled epoch stops there, scikit-learn trains on);
* sparse ``X`` trains and predicts through scikit-learn's own code.

A signal handler's exception comes out of the compiled epoch unchanged; a
``KeyboardInterrupt`` then ends the fit with scikit-learn's warning, anything
else propagates.

scikit-learn (and scipy, one of its dependencies) is imported here only.
"""
import contextlib
import sys
import warnings
from numbers import Integral

import numpy as np

try:
    import scipy.optimize
    import scipy.sparse
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
    from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
    from sklearn.utils import gen_batches
    from sklearn.utils._param_validation import Interval
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
    from sklearn.utils.optimize import _check_optimize_result
    from sklearn.utils.validation import validate_data
except ImportError as exc:
    # NOTE: ``from None``: the one line below is the whole message (scipy or
    # a private scikit-learn name missing means the same fix).
    raise ImportError(f"bpcore.sklearn needs scikit-learn 1.9: pip install 'bpcore[sklearn]' "
                      f"({exc})") from None

from . import _gemm
from ._kernels import sklearn_adam_update, sklearn_sgd_update
from . import _validate as V
from ._step import NONFINITE as _NONFINITE, Trainer, UpdateRule

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> bpcore's.
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "softmax": "softmax", "exp": "exp"}
# Output activation -> the matching scikit-learn loss in bpcore._step.
_LOSSES = {"identity": "sk_squared_error", "exp": "sk_poisson", "softmax": "sk_log_loss",
           "logistic": "sk_binary_log_loss"}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _c_array(a, dtype):
    """``a`` as the core takes it: ``dtype``, C-contiguous with canonical strides, aligned.

    NOTE: scikit-learn's validation may hand over a misaligned view (a buffer
    at an odd offset); the kernels read with aligned loads, so it is copied.
    """
    return V.as_contiguous(np.asarray(a, dtype=dtype))[0]


def _shuffled(idx, random_state):
    """``sklearn.utils.shuffle(idx, random_state=random_state)``: the same draw.

    NOTE: scikit-learn's shuffle (through ``resample``) permutes
    ``np.arange(n)`` with ``random_state.shuffle`` and indexes with it; its
    input checks cost ~0.7 ms a call here (a tenth of a digits fit), so the
    draw is made directly.  tests/test_sklearn.py's bitwise comparisons with
    scikit-learn's own fit check that the streams stay the same.
    """
    perm = np.arange(idx.shape[0])
    random_state.shuffle(perm)
    return idx[perm]


def _zeros_block(n, dtype, align=64):
    """A zeroed 1-D array of n elements starting on an ``align``-byte boundary.

    (The compiled code accepts any C-contiguous block; the alignment only
    spares the vector kernels a split first load.)
    """
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n + align // itemsize, dtype)
    offset = (-raw.ctypes.data % align) // itemsize
    return raw[offset:offset + n]


def _skl2onnx_hook():
    """Register the estimators with skl2onnx if it is imported (see bpcore.export).

    NOTE: Python has no hook that runs when another module is imported, so the
    registration happens at the points a model comes into being -- this module's
    import, the end of a fit, unpickling -- whenever skl2onnx is imported by
    then; ``bpcore.export.register_skl2onnx()`` covers any other order.
    """
    if "skl2onnx" in sys.modules:
        from .export import register_if_skl2onnx_imported
        register_if_skl2onnx_imported()


@contextlib.contextmanager
def _threads(n_threads):
    """Run the block with bpcore's GEMM at ``n_threads`` (None: leave the setting alone).

    NOTE: the setting is process-wide; two estimators fitting at once in
    threads of one process with different ``n_threads`` race on it (the
    results stay correct, only the thread count is affected).
    """
    if n_threads is None:
        yield
        return
    before = _gemm.get_num_threads()
    _gemm.set_num_threads(n_threads)
    try:
        yield
    finally:
        _gemm.set_num_threads(before)


class _BpcoreMLP:
    """The compiled replacements shared by both estimators (a mixin before scikit-learn's)."""

    # -- the compiled model --------------------------------------------------

    def _bp_trainer(self, layer_units, dtype):
        """A Trainer for these layers / activations / dtype, cached on the estimator."""
        key = (tuple(int(u) for u in layer_units), self.activation, self.out_activation_,
               np.dtype(dtype).str)
        cached = self.__dict__.get("_bp_cache")
        if cached is None or cached[0] != key:
            acts = ([_ACTIVATIONS[self.activation]] * (len(layer_units) - 2)
                    + [_ACTIVATIONS[self.out_activation_]])
            trainer = Trainer(list(key[0]), acts, _LOSSES[self.out_activation_], "mean", dtype)
            self._bp_cache = (key, trainer)
        return self._bp_cache[1]

    def _bp_pack(self, trainer, dtype):
        """A flat block holding coefs_/intercepts_ and the per-layer views into it."""
        block = _zeros_block(trainer.n_params, dtype)
        w_off, b_off = trainer.offsets()
        coefs, intercepts = [], []
        for l, (c, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            w = block[w_off[l]:w_off[l] + c.size].reshape(c.shape)
            w[...] = c
            coefs.append(w)
            v = block[b_off[l]:b_off[l] + b.size]
            v[...] = b
            intercepts.append(v)
        return block, coefs, intercepts

    def _bp_layer_units(self):
        return [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]

    def __getstate__(self):
        # The compiled Trainer is a cache: drop it (rebuilt on first use).
        state = dict(super().__getstate__())
        state.pop("_bp_cache", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        _skl2onnx_hook()

    # -- scikit-learn's hooks, replaced --------------------------------------

    def _fit(self, X, y, sample_weight=None, incremental=False):
        if hasattr(self, "coefs_") and (self.warm_start or incremental):
            # A continued fit trains the fitted layers: their sizes are kept
            # (as scikit-learn's stochastic solvers do) whatever
            # hidden_layer_sizes says now; only their number must agree
            # (scikit-learn fails there with an AttributeError).
            sizes = self.hidden_layer_sizes
            n_hidden = len(sizes) if hasattr(sizes, "__iter__") else 1
            if n_hidden != len(self.coefs_) - 1:
                raise ValueError(
                    f"`hidden_layer_sizes` has {n_hidden} hidden layers but the fitted model "
                    f"has {len(self.coefs_) - 1}: warm_start and partial_fit continue the "
                    "fitted layers; fit with warm_start=False to start a new network")
        with _threads(self.n_threads):
            fitted = super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)
        _skl2onnx_hook()
        return fitted

    def _forward_pass_fast(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        if scipy.sparse.issparse(X):
            return super()._forward_pass_fast(X, check_input=False)
        # The dtype NumPy would compute X @ coefs_ in (integer X promotes).
        dtype = np.result_type(X.dtype, self.coefs_[0].dtype)
        if dtype not in _FLOATS:
            dtype = np.dtype(np.float64)
        trainer = self._bp_trainer(self._bp_layer_units(), dtype)
        block, _, _ = self._bp_pack(trainer, dtype)
        x = _c_array(X, dtype)
        out = np.empty((x.shape[0], self.coefs_[-1].shape[1]), dtype)
        with _threads(self.n_threads):
            return trainer.forward(block, x, out)

    def _bp_arrays(self, X, y, sample_weight, dtype):
        """X, y (float targets) and sample_weight in ``dtype`` as the compiled code wants them."""
        x = _c_array(X, dtype)
        yf = _c_array(y, dtype)
        if yf.ndim == 1:
            yf = yf.reshape(-1, 1)
        sw = None if sample_weight is None else _c_array(sample_weight, dtype)
        return x, yf, sw

    def _fit_lbfgs(self, X, y, sample_weight, activations, deltas, coef_grads,
                   intercept_grads, layer_units):
        if scipy.sparse.issparse(X):
            return super()._fit_lbfgs(X, y, sample_weight, activations, deltas, coef_grads,
                                      intercept_grads, layer_units)
        layer_units = self._bp_layer_units()
        # scikit-learn's packing, kept on the estimator as scikit-learn keeps it
        # (its _unpack and _loss_grad_lbfgs read it).
        self._coef_indptr, self._intercept_indptr, start = [], [], 0
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            self._coef_indptr.append((start, start + fan_in * fan_out, (fan_in, fan_out)))
            start += fan_in * fan_out
        for fan_out in layer_units[1:]:
            self._intercept_indptr.append((start, start + fan_out))
            start += fan_out
        # NOTE: as scikit-learn: scipy gets the start in the model's dtype and
        # evaluates the loss in it (scipy keeps a float32 x0 float32), and
        # the result, scipy's float64 vector, becomes coefs_ (float64).
        dtype = self.coefs_[0].dtype
        trainer = self._bp_trainer(layer_units, dtype)
        block, coefs, intercepts = self._bp_pack(trainer, dtype)
        grads = _zeros_block(trainer.n_params, dtype)
        x, yf, sw = self._bp_arrays(X, y, sample_weight, dtype)
        # scipy sees scikit-learn's packing (all coefs, then all intercepts);
        # ``where[i]`` is the position in bpcore's block of packed element i.
        positions = np.arange(trainer.n_params)
        w_off, b_off = trainer.offsets()
        where = np.concatenate(
            [positions[w_off[l]:w_off[l] + c.size] for l, c in enumerate(coefs)]
            + [positions[b_off[l]:b_off[l] + b.size] for l, b in enumerate(intercepts)])
        alpha = float(self.alpha)

        trainer.alpha = alpha

        def loss_and_grad(packed):
            block[where] = packed
            status, loss = trainer.loss_and_grad(block, x, yf, grads, sw)
            if status == _NONFINITE:
                # The compiled code stops at a non-finite loss; scikit-learn
                # hands scipy that loss and its (possibly finite) gradient.
                return self._loss_grad_lbfgs(packed, X, y, sample_weight, activations, deltas,
                                             coef_grads, intercept_grads)
            return loss, grads[where]

        iprint = 1 if (self.verbose is True or self.verbose >= 1) else -1
        result = scipy.optimize.minimize(
            loss_and_grad, block[where], method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = result.fun
        self._unpack(result.x)

    def _bp_numpy_batches(self, trainer, x, y, sw, order, batch_size, first, block, grads,
                          state):
        """Batches ``first``.. of one epoch with scikit-learn's own _backprop; the loss sum.

        For an epoch that met a non-finite loss: the compiled epoch stops
        there, scikit-learn trains on (NaN losses, possibly finite
        gradients: a Poisson loss on negative targets, a diverging fit that
        early stopping will undo).  The update is bpcore's scikit-learn
        rule on the same flat blocks, so the compiled epochs can follow.
        """
        opt, n_layers = self._optimizer, len(self.coefs_)
        w_off, b_off = trainer.offsets()
        activations, deltas = [None] * (n_layers + 1), [None] * n_layers
        coef_grads, intercept_grads = [None] * n_layers, [None] * n_layers
        loss_sum = 0.0
        for b, rows in enumerate(gen_batches(x.shape[0], batch_size)):
            if b < first:
                continue
            idx = rows if order is None else order[rows]
            activations[0] = x[idx]
            loss, coef_grads, intercept_grads = self._backprop(
                x[idx], y[idx], None if sw is None else sw[idx], activations, deltas,
                coef_grads, intercept_grads)
            for l in range(n_layers):
                grads[w_off[l]:w_off[l] + coef_grads[l].size] = coef_grads[l].ravel()
                grads[b_off[l]:b_off[l] + intercept_grads[l].size] = intercept_grads[l]
            if self.solver == "sgd":
                sklearn_sgd_update(block, grads, lr=opt.learning_rate, momentum=self.momentum,
                                   velocity=state[0], nesterov=bool(self.nesterovs_momentum))
            else:
                opt.t += 1
                sklearn_adam_update(block, grads, lr=opt.learning_rate_init, m=state[0],
                                    v=state[1], step=opt.t, beta1=self.beta_1,
                                    beta2=self.beta_2, eps=self.epsilon)
                self._bp_adam_rate(opt)
            loss_sum += loss * (rows.stop - rows.start)
        return loss_sum

    @staticmethod
    def _bp_adam_rate(opt):
        # AdamOptimizer's learning_rate after step t, as its _get_updates sets it.
        opt.learning_rate = (opt.learning_rate_init * np.sqrt(1 - opt.beta_2 ** opt.t)
                             / (1 - opt.beta_1 ** opt.t))

    def _fit_stochastic(self, X, y, sample_weight, activations, deltas, coef_grads,
                        intercept_grads, layer_units, incremental):
        if scipy.sparse.issparse(X):
            return super()._fit_stochastic(X, y, sample_weight, activations, deltas,
                                           coef_grads, intercept_grads, layer_units,
                                           incremental)
        # The optimizer: scikit-learn's objects keep the learning-rate schedule
        # (iteration_ends, trigger_stopping); the moments live in flat blocks
        # of bpcore's layout, so the objects are built without parameters.
        if not incremental or not hasattr(self, "_optimizer"):
            if self.solver == "sgd":
                self._optimizer = SGDOptimizer([], self.learning_rate_init, self.learning_rate,
                                               self.momentum, self.nesterovs_momentum,
                                               self.power_t)
            else:
                self._optimizer = AdamOptimizer([], self.learning_rate_init, self.beta_1,
                                                self.beta_2, self.epsilon)
            self._bp_state = None
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            # The split scikit-learn makes: same call, same random_state draw.
            stratify = y if (self._is_classifier_bp and self.n_outputs_ == 1) else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = parts[:4]
            sample_weight_train = sample_weight_val = None
            if sample_weight is not None:
                sample_weight_train, sample_weight_val = parts[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if self._is_classifier_bp:
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sample_weight_train = X, y, sample_weight
            X_val = y_val = sample_weight_val = None

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        # NOTE: the model's dtype, not X's: scikit-learn updates coefs_ in
        # place, so a float32 batch for a float64 model (partial_fit, warm
        # start) trains in float64, with the optimizer's state kept; and
        # the layers are the fitted ones (see _fit).
        dtype = self.coefs_[0].dtype
        trainer = self._bp_trainer(self._bp_layer_units(), dtype)
        params, self.coefs_, self.intercepts_ = self._bp_pack(trainer, dtype)
        grads = _zeros_block(trainer.n_params, dtype)
        state = self.__dict__.get("_bp_state")
        if state is None or state[0].dtype != dtype or state[0].size != trainer.n_params:
            state = (_zeros_block(trainer.n_params, dtype),
                     _zeros_block(trainer.n_params, dtype) if self.solver == "adam" else None)
            self._bp_state = state
        x, yf, sw = self._bp_arrays(X_train, y_train, sample_weight_train, dtype)
        sample_idx = np.arange(n_samples, dtype=np.int64)
        opt = self._optimizer
        adam = self.solver == "adam"
        compiled = True  # until a non-finite loss: then scikit-learn's arithmetic (see above)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                order = None
                if self.shuffle:
                    # Shuffle the indices as scikit-learn does (same draws from
                    # its RandomState); the rows are gathered in compiled code.
                    sample_idx = _shuffled(sample_idx, self._random_state)
                    order = sample_idx
                loss_sum, done = 0.0, 0
                if compiled:
                    # A signal handler's exception (KeyboardInterrupt included)
                    # comes out of this call unchanged, the completed batches
                    # applied and counted in rule.step.
                    trainer.alpha = float(self.alpha)
                    rule = UpdateRule(
                        "sklearn_" + self.solver,
                        lr=float(opt.learning_rate_init if adam else opt.learning_rate),
                        momentum=float(self.momentum), nesterov=bool(self.nesterovs_momentum),
                        betas=(float(self.beta_1), float(self.beta_2)),
                        eps=float(self.epsilon), step=opt.t if adam else 0)
                    try:
                        status, loss_sum, done = trainer.epoch(params, grads, state, x, yf, sw,
                                                               order, batch_size, rule)
                    finally:
                        if adam and rule.step > opt.t:
                            opt.t = rule.step
                            self._bp_adam_rate(opt)
                    compiled = status != _NONFINITE
                if not compiled:
                    loss_sum += self._bp_numpy_batches(trainer, x, yf, sw, order, batch_size,
                                                       done, params, grads, state)
                self.n_iter_ += 1
                self.loss_ = np.float64(loss_sum / n_samples)
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val,
                                                  sample_weight_val)
                opt.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if opt.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and "
                                  "the optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            # scikit-learn's behaviour: any KeyboardInterrupt ends the fit
            # with the weights so far; other exceptions propagate unchanged.
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts


_N_THREADS = {"n_threads": [Interval(Integral, 1, None, closed="left"), None]}


class MLPClassifier(_BpcoreMLP, _SkMLPClassifier):
    """scikit-learn's ``MLPClassifier``, trained and evaluated by bpcore's compiled code.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate
        As :class:`sklearn.neural_network.MLPClassifier` (same names, defaults
        and meaning); so are the parameters below up to ``max_fun``.
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose
        As scikit-learn's.
    warm_start, momentum, nesterovs_momentum, early_stopping
        As scikit-learn's.
    validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, max_fun
        As scikit-learn's.
    n_threads : int, optional
        Threads for bpcore's matrix products during ``fit`` and ``predict``
        (default: bpcore's setting, see :func:`bpcore.set_num_threads`).

    Attributes
    ----------
    classes_, loss_, best_loss_, loss_curve_, validation_scores_
        As scikit-learn's.
    best_validation_score_, t_, coefs_, intercepts_, n_features_in_
        As scikit-learn's.
    feature_names_in_, n_iter_, n_layers_, n_outputs_, out_activation_
        As scikit-learn's.
    """

    _parameter_constraints = {**_SkMLPClassifier._parameter_constraints, **_N_THREADS}
    _is_classifier_bp = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 n_threads=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun)
        self.n_threads = n_threads


class MLPRegressor(_BpcoreMLP, _SkMLPRegressor):
    """scikit-learn's ``MLPRegressor``, trained and evaluated by bpcore's compiled code.

    Parameters
    ----------
    loss : {"squared_error", "poisson"}
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate
        As :class:`sklearn.neural_network.MLPRegressor` (same names, defaults
        and meaning); so are the parameters below up to ``max_fun``.
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose
        As scikit-learn's.
    warm_start, momentum, nesterovs_momentum, early_stopping
        As scikit-learn's.
    validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, max_fun
        As scikit-learn's.
    n_threads : int, optional
        Threads for bpcore's matrix products during ``fit`` and ``predict``.

    Attributes
    ----------
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_
        As scikit-learn's.
    t_, coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_
        As scikit-learn's.
    n_layers_, n_outputs_, out_activation_
        As scikit-learn's.
    """

    _parameter_constraints = {**_SkMLPRegressor._parameter_constraints, **_N_THREADS}
    _is_classifier_bp = False

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 n_threads=None):
        super().__init__(
            loss=loss, hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            solver=solver, alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun)
        self.n_threads = n_threads


_skl2onnx_hook()
