# Design:
#
# THE training core of bpcore: one forward, one backward, one update and one
# epoch loop, in compiled code, driven by two small descriptions:
#
#   the loss rule    (struct Net, fixed per Trainer): PyTorch's losses and
#                    reductions ("mse", "l1", "huber", "smooth_l1",
#                    "cross_entropy" on logits with class weights and label
#                    smoothing, "binary_cross_entropy" on logits with
#                    pos_weight; optional row weights),
#                    or scikit-learn's ("sk_*": delta = (out - y) * w, the
#                    gradient (a.T @ delta + alpha * W) / sum(w), the L2 term
#                    in the reported loss, scikit-learn's rounding order);
#   the update rule  (struct Update, an UpdateRule per call): PyTorch's SGD
#                    (momentum, Nesterov, decay on all parameters or weights
#                    only) and Adam, or scikit-learn's SGDOptimizer and
#                    AdamOptimizer -- the bitwise kernels of optim.h.
#
# A `Trainer` holds what does not change between calls -- layer sizes,
# activations, the loss rule -- and a workspace sized for the largest batch
# seen (activations, two delta buffers, gather buffers for shuffled batches).
# It holds no parameters: the parameters, their gradients and the optimizer
# state are flat blocks owned by the caller (bpcore.nn.MLP, bpcore.sklearn,
# bpcore.distributed), laid out layer by layer as W_l (n_in x n_out,
# row-major) then b_l (n_out,), and passed in on every call.  The same step
# therefore serves one model, a data-parallel rank (whose gradient block
# carries extra slots for a single Allreduce) and scikit-learn-style
# coefs_/intercepts_ (views of one block).  Its NumPy twin is
# bpcore/reference_core.py (the same methods and signatures).
#
# One call is one nogil stretch that allocates nothing:
#   forward   z_l = a_{l-1} @ W_l + b_l and a_l = act(z_l), bias and activation
#             applied by the GEMM's store (epilogue) for identity / relu /
#             sigmoid / tanh; the activations with parameters (leaky_relu,
#             elu, softplus) and gelu / gelu_tanh / silu run as one pass after
#             the product, and the training workspace keeps z_l only for the
#             layers whose derivative needs it (gelu, gelu_tanh, silu, softplus);
#   loss      value and d loss / d output in one pass (softmax + cross-entropy
#             fused; MSE through the output activation's derivative);
#   backward  delta_{l-1} = (delta_l @ W_l.T) * act'(a_{l-1}), the derivative
#             applied by the GEMM's store (or, for the others, one pass from
#             a_{l-1} or the kept z_{l-1}), W_l.T read through strides; no
#             product for the first layer's input;
#   update    one pass of the update rule over the whole flat block;
#   epoch     batches in order or gathered by a permutation, signal handlers
#             polled between batches (their exception kept and re-raised
#             unchanged after the nogil stretch).
#
# Mixed precision (compute_dtype "bfloat16", float32 Trainers only): the three
# products above -- z_l = a_{l-1} W_l, delta_l W_l^T and a_{l-1}^T delta_l --
# take bfloat16-rounded operands and accumulate in float32 (gemm_bf16, one
# switch in _product), as torch.autocast("cpu", dtype=torch.bfloat16) runs a
# Linear; parameters, gradients, optimizer state, bias, activations, the loss
# and the update stay float32.  Unlike autocast, a product's float32 result is
# not rounded to bfloat16 before its epilogue.
#
# NOTE: non-finite values are caught before the update: a non-finite loss
# stops the step before backward, and each layer's gradient is scanned
# (exponent bits, vectorised) before the optimizer touches the parameters.
# On failure nothing is updated.  Status codes become exceptions in one
# place, _raise_for.
from cython cimport floating
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport INFINITY, exp, isfinite, log, pow, sqrt
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

import numpy as np
cimport numpy as cnp
from bpcore._policy cimport c_array, plain_array

from bpcore._gemm cimport (gemm, gemm_bf16, run_chunks, BP_OK, BP_ENOMEM, BP_EPI_NONE, BP_EPI_BIAS,
                           BP_EPI_BIAS_RELU, BP_EPI_BIAS_SIGMOID, BP_EPI_BIAS_TANH,
                           BP_EPI_MUL_DRELU, BP_EPI_MUL_DSIGMOID, BP_EPI_MUL_DTANH,
                           bp_epilogue)
from bpcore._kernels cimport (ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_TANH,
                              ACT_LEAKY_RELU, ACT_ELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU,
                              ACT_SOFTPLUS, activation_needs_z, activation_forward_params,
                              activation_backward_params, softmax_rows, column_sums,
                              mse_forward_backward, softmax_cross_entropy_rows, sigmoid_bce,
                              REG_MSE, REG_L1, REG_HUBER, REG_SMOOTH_L1, regression_loss,
                              softmax_cross_entropy_weighted_rows, sigmoid_bce_pos_weight)

cnp.import_array()

from bpcore._kernels cimport (
    bp_sgd_f32, bp_sgd_f64, bp_optim_select, bp_adam_f32, bp_adam_f64, bp_adamw_f32,
    bp_adamw_f64, bp_rmsprop_f32, bp_rmsprop_f64,
    bp_sk_sgd_f32, bp_sk_sgd_f64, bp_sk_adam_f32, bp_sk_adam_f64)

cdef extern from "Python.h":
    ctypedef struct PyObject
    int _check_signals "PyErr_CheckSignals" ()
    void _fetch_error "PyErr_Fetch" (PyObject** type, PyObject** value, PyObject** tb)
    void _restore_error "PyErr_Restore" (PyObject* type, PyObject* value, PyObject* tb)


cdef struct Pending:
    # An exception raised by a signal handler during an epoch: taken out of
    # the interpreter where the loop polls (PyErr_Fetch, references owned
    # here) and put back (PyErr_Restore) once the loop has returned.
    PyObject* type
    PyObject* value
    PyObject* tb


cdef int poll_signals(Pending* pending) noexcept nogil:
    """Run pending signal handlers; STATUS_INTERRUPTED, the exception kept, if one raised.

    NOTE: the handler's exception is kept whole, whatever it is (KeyboardInterrupt
    from Ctrl-C, SystemExit from a SIGTERM handler, TimeoutError from SIGALRM)
    and re-raised unchanged by reraise_pending after the nogil stretch.
    """
    with gil:
        if _check_signals() != 0:
            _fetch_error(&pending.type, &pending.value, &pending.tb)
            return STATUS_INTERRUPTED
    return BP_OK


cdef int reraise_pending(Pending* pending) except -1:
    """Raise the exception poll_signals kept (no-op when there is none)."""
    if pending.type == NULL:
        return 0
    _restore_error(pending.type, pending.value, pending.tb)
    pending.type = NULL
    pending.value = NULL
    pending.tb = NULL
    return -1

# Output activations beyond the elementwise ones (exp: scikit-learn's Poisson link).
cdef enum:
    ACT_SOFTMAX = 4
    ACT_EXP = 5

cdef enum:
    LOSS_MSE = 0
    LOSS_CROSS_ENTROPY = 1
    # scikit-learn's MLP losses (float targets (n, n_out), delta = output - y):
    LOSS_SK_SQUARED = 2
    LOSS_SK_LOG = 3
    LOSS_SK_BINARY_LOG = 4
    LOSS_SK_POISSON = 5
    # sigmoid + binary cross-entropy from the logits, float targets (n, n_out) in [0, 1]
    LOSS_BCE = 6
    # PyTorch's pointwise regression losses beside MSE (float targets (n, n_out))
    LOSS_L1 = 7
    LOSS_HUBER = 8
    LOSS_SMOOTH_L1 = 9

cdef enum:
    # update rules: PyTorch's optimizers and scikit-learn's
    UPD_SGD = 0
    UPD_ADAM = 1
    UPD_SK_SGD = 2
    UPD_SK_ADAM = 3
    UPD_ADAMW = 4
    UPD_RMSPROP = 5

# Status codes beyond the GEMM's BP_OK / BP_ENOMEM.
cdef enum:
    STATUS_NONFINITE = 100
    STATUS_INTERRUPTED = 101

ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "sigmoid": ACT_SIGMOID,
               "tanh": ACT_TANH, "softmax": ACT_SOFTMAX, "exp": ACT_EXP,
               # applied after the product (not by the GEMM's store), with parameters
               "leaky_relu": ACT_LEAKY_RELU, "elu": ACT_ELU, "gelu": ACT_GELU,
               "gelu_tanh": ACT_GELU_TANH, "silu": ACT_SILU, "softplus": ACT_SOFTPLUS}
LOSSES = {"mse": LOSS_MSE, "cross_entropy": LOSS_CROSS_ENTROPY,
          "sk_squared_error": LOSS_SK_SQUARED, "sk_log_loss": LOSS_SK_LOG,
          "sk_binary_log_loss": LOSS_SK_BINARY_LOG, "sk_poisson": LOSS_SK_POISSON,
          "binary_cross_entropy": LOSS_BCE, "l1": LOSS_L1, "huber": LOSS_HUBER,
          "smooth_l1": LOSS_SMOOTH_L1}
NONFINITE = STATUS_NONFINITE
INTERRUPTED = STATUS_INTERRUPTED

# How many batches run between two looks at Ctrl-C (each look takes the GIL).
cdef Py_ssize_t SIGNAL_CHECK_EVERY = 16

from bpcore import _env
from bpcore import _validate as V

# NOTE: optim.h's kernel choice is per extension module (a static in the
# header): the step chooses by the same switch as bpcore._kernels.
_OPTIM_KERNEL = "avx2_fma" if bp_optim_select(not _env.force_portable()) else "portable"


def optim_kernel():
    """The update kernels the step uses: ``"avx2_fma"`` or ``"portable"``."""
    return _OPTIM_KERNEL


cdef struct Net:
    int n_layers
    const Py_ssize_t* sizes      # n_layers + 1 widths, input first
    const int* act               # activation of each layer's output
    const double* act_param      # 2 per layer: the activation's parameters (see _act_params)
    const Py_ssize_t* w_off      # offset of W_l in the parameter block
    const Py_ssize_t* b_off      # offset of b_l
    # the loss rule
    int loss                     # LOSS_*
    bint sklearn                 # scikit-learn's conventions (the LOSS_SK_* losses)
    double mse_factor            # 1 ("mean", "sum") or 0.5 ("half_*")
    int pointwise                # the float-target losses' kernel: REG_MSE, REG_L1, ...
    double loss_param            # huber's delta, smooth_l1's beta
    const double* class_weight   # cross-entropy: n_out class weights, or NULL
    double label_smoothing       # cross-entropy: eps in [0, 1]
    const double* pos_weight     # binary cross-entropy: n_out positive weights, or NULL
    bint mean                    # the loss divides by the sample (element) count
    double alpha                 # scikit-learn's L2 penalty (sklearn rule only)
    bint bf16                    # compute_dtype "bfloat16": every product through gemm_bf16
    # the workspace
    char** acts                  # acts[1..n_layers]: capacity x sizes[l] buffers
    char* delta0                 # two capacity x max width buffers, used in turn
    char* delta1
    Dropout* drop                # the training steps' dropout, or NULL (none)
    char** zs                    # zs[l]: capacity x sizes[l] pre-activations of layer l,
                                 # only where activation_needs_z (else NULL)


cdef struct Dropout:
    # Inverted dropout on the hidden layers' outputs during training (see dropout_rows).
    const double* p              # p[l]: the drop probability of layer l's output (l < L-1)
    char** pre                   # pre[l+1]: layer l's output before its mask (p[l] > 0), a
                                 # capacity x sizes[l+1] buffer, for the derivative in backward
    unsigned long long seed
    long long step               # the training step whose masks forward draws; advanced by
                                 # every loss_and_grad_rows (and the layer-cut step's layer 0)


cdef struct Update:
    # The update rule: which optimizer, in whose conventions, with its settings.
    int kind                     # UPD_SGD, UPD_ADAM, UPD_ADAMW, UPD_RMSPROP (PyTorch's),
                                 # UPD_SK_SGD, UPD_SK_ADAM (scikit-learn's)
    double lr                    # the rate (scikit-learn's Adam: learning_rate_init)
    double momentum              # SGD's and RMSprop's
    double weight_decay          # PyTorch's L2 term in the gradient (AdamW: decoupled;
                                 # sklearn: in the loss)
    int nesterov
    double beta1, beta2, eps
    long long step               # Adam's steps taken, advanced before each update
    bint weights_only            # weight decay on the W_l only (not the biases)
    double alpha                 # RMSprop's smoothing constant
    bint centered                # RMSprop's
    # Gradient clipping before the update, as torch.nn.utils.clip_grad_value_
    # then clip_grad_norm_ (each off unless its flag is set).
    bint clip_by_value
    double clip_value
    bint clip_by_norm
    double clip_norm
    # Per-update settings (a schedule stepped per batch): update k of the
    # next table_len takes lr_table[k] and, when momentum_table is set, its
    # momentum (Adam / AdamW: beta1) from momentum_table[k].
    const double* lr_table
    const double* momentum_table
    Py_ssize_t table_len
    Py_ssize_t table_pos


# Products below this many multiply-adds (~20 us on one core) run on one
# thread: forking and joining OpenMP threads costs more than the work saved
# (measured: a 32-row digits batch took 4x longer at 2 threads).
cdef Py_ssize_t SMALL_PRODUCT = 1 << 20


cdef inline int _threads_for(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The GEMM's num_threads argument: 1 for a small product, else 0 (the module's setting)."""
    return 1 if m * n * k < SMALL_PRODUCT else 0


cdef inline int _product(const Net* net, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating* a, Py_ssize_t rsa, Py_ssize_t csa,
                         const floating* b, Py_ssize_t rsb, Py_ssize_t csb,
                         floating* c, Py_ssize_t rsc, bp_epilogue epi, const floating* bias,
                         const floating* aux, Py_ssize_t ldaux) noexcept nogil:
    """c := epi(op(a) @ op(b)): the core's three products (forward, delta @ W.T, a.T @ delta).

    Under compute_dtype "bfloat16" (float32 only: the Trainer refuses it with
    float64) both operands are rounded to bfloat16 and the products accumulate
    in float32 (bpcore._gemm.gemm_bf16), as torch.autocast does for a Linear;
    the epilogue (bias, activation, derivative) and everything outside the
    products stay float32.
    """
    if floating is float:
        if net.bf16:
            return gemm_bf16(m, n, k, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, 1, epi,
                             bias, aux, ldaux, _threads_for(m, n, k))
    return gemm(m, n, k, <floating>1, a, rsa, csa, b, rsb, csb, <floating>0, c, rsc, 1, epi,
                bias, aux, ldaux, _threads_for(m, n, k))


cdef inline bp_epilogue _forward_epilogue(int act) noexcept nogil:
    if act == ACT_RELU:
        return BP_EPI_BIAS_RELU
    if act == ACT_SIGMOID:
        return BP_EPI_BIAS_SIGMOID
    if act == ACT_TANH:
        return BP_EPI_BIAS_TANH
    return BP_EPI_BIAS


cdef inline bint _fused(int act) noexcept nogil:
    """The activation is applied by the GEMM's store (or is softmax / exp, applied after
    the last layer); the others run as one pass of activation_forward_params (and
    activation_backward_params)."""
    return act < ACT_LEAKY_RELU


cdef inline bp_epilogue _backward_epilogue(int act) noexcept nogil:
    if act == ACT_RELU:
        return BP_EPI_MUL_DRELU
    if act == ACT_SIGMOID:
        return BP_EPI_MUL_DSIGMOID
    if act == ACT_TANH:
        return BP_EPI_MUL_DTANH
    return BP_EPI_NONE


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Dropout: masks from a counter-based hash, the same in the NumPy twin
# ---------------------------------------------------------------------------

# splitmix64's increment (2^64 / golden ratio) and 2^-53 (53 random bits to [0, 1))
cdef unsigned long long _GOLDEN = 0x9E3779B97F4A7C15ULL
cdef double _TWO_M53 = 1.1102230246251565e-16


cdef inline unsigned long long _mix64(unsigned long long z) noexcept nogil:
    """splitmix64's finalizer (a bijection of 64-bit words)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline unsigned long long dropout_stream(unsigned long long seed, long long step,
                                              int layer) noexcept nogil:
    """The key of one (seed, step, layer): mix(mix(mix(seed + G) + step) + layer)."""
    return _mix64(_mix64(_mix64(seed + _GOLDEN) + <unsigned long long>step)
                  + <unsigned long long>layer)


cdef void dropout_rows(const Dropout* drop, int layer, const floating* src, floating* dst,
                       Py_ssize_t count) noexcept nogil:
    """dst[i] := src[i] * 1/(1-p) if element i is kept, else 0 (``dst`` may be ``src``).

    Element i (row-major over the batch's (n, width) output) is kept when
    u_i >= p, with u_i = (mix(stream + (i+1) G) >> 11) * 2^-53 in [0, 1):
    splitmix64 at counter i of the (seed, step, layer) stream.  A pure
    function of (seed, step, layer, i), so the masks do not depend on the
    thread count, forward and backward draw the same one, and
    bpcore.reference_core draws them bit for bit with NumPy's uint64 ops.
    PyTorch's native_dropout computes (x * mask) * scale with scale =
    1/(1-p) rounded to the dtype: the same floats.
    """
    cdef unsigned long long stream = dropout_stream(drop.seed, drop.step, layer), bits
    cdef double p = drop.p[layer]
    cdef floating scale = <floating>(1.0 / (1.0 - p))
    cdef Py_ssize_t i
    for i in range(count):
        bits = _mix64(stream + <unsigned long long>(i + 1) * _GOLDEN)
        if <double>(bits >> 11) * _TWO_M53 >= p:
            dst[i] = src[i] * scale
        else:
            dst[i] = 0


cdef int forward_rows(const Net* net, const floating* params, const floating* x,
                      Py_ssize_t n, floating** acts, bint logits,
                      const Dropout* drop) noexcept nogil:
    """acts[l] := a_l for l = 1..n_layers from x (n rows), keeping no pre-activation.

    ``logits``: leave the output before its softmax or sigmoid (the losses
    that take logits apply them themselves, stably).  ``drop``: the training
    step's dropout (NULL: none, as in inference); a hidden layer with p > 0
    writes its output to drop.pre and its masked output to acts.
    """
    return forward_rows_z(net, params, x, n, acts, NULL, logits, drop)


cdef int forward_rows_z(const Net* net, const floating* params, const floating* x,
                        Py_ssize_t n, floating** acts, floating** zs,
                        bint logits, const Dropout* drop) noexcept nogil:
    """forward_rows, and zs[l] := z_l for the layers whose backward needs it (zs: the
    training workspace, or NULL: nothing kept, those activations applied in place).

    With dropout on layer l, its activation goes to drop.pre[l+1] (what backward
    takes the derivative at) and the masked, scaled values to acts[l+1].
    """
    cdef bint dropped
    cdef floating* a_out
    cdef int l, status, act
    cdef const floating* a_prev = x
    cdef Py_ssize_t n_in, n_out, i
    cdef floating* out
    cdef floating* dst
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        act = net.act[l]
        if logits and l == net.n_layers - 1 and act == ACT_SIGMOID:
            act = ACT_IDENTITY
        dropped = drop != NULL and l < net.n_layers - 1 and drop.p[l] > 0
        a_out = <floating*>drop.pre[l + 1] if dropped else acts[l + 1]
        dst = a_out
        if not _fused(act) and zs != NULL and activation_needs_z(act):
            dst = zs[l + 1]
        status = _product(net, n, n_out, n_in, a_prev, n_in, 1, params + net.w_off[l],
                          n_out, 1, dst, n_out, _forward_epilogue(act),
                          params + net.b_off[l], <const floating*>NULL, 0)
        if status != BP_OK:
            return status
        if not _fused(act):
            activation_forward_params(act, dst, a_out, n * n_out, net.act_param + 2 * l)
        if dropped:
            dropout_rows(drop, l, a_out, acts[l + 1], n * n_out)
        a_prev = acts[l + 1]
    if net.act[net.n_layers - 1] == ACT_SOFTMAX and not logits:
        softmax_rows(acts[net.n_layers], acts[net.n_layers], n, net.sizes[net.n_layers])
    elif net.act[net.n_layers - 1] == ACT_EXP:
        out = acts[net.n_layers]
        for i in range(n * net.sizes[net.n_layers]):
            out[i] = exp(out[i])
    return BP_OK


cdef inline bint _takes_logits(const Net* net) noexcept nogil:
    """The loss applies the output's softmax / sigmoid itself (PyTorch's CE and BCE)."""
    return not net.sklearn and (net.loss == LOSS_CROSS_ENTROPY or net.loss == LOSS_BCE)


# ---------------------------------------------------------------------------
# The loss rule: value and d loss / d output, in PyTorch's or scikit-learn's
# conventions
# ---------------------------------------------------------------------------

cdef void softmax_backward_rows(const floating* a, const floating* grad, floating* out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    """out := a * (grad - sum(grad * a)) row by row: the softmax's Jacobian applied to grad."""
    cdef Py_ssize_t i, j
    cdef double dot
    cdef const floating* ai
    cdef const floating* gi
    cdef floating* oi
    for i in range(n_rows):
        ai = a + i * n_cols
        gi = grad + i * n_cols
        oi = out + i * n_cols
        dot = 0
        for j in range(n_cols):
            dot += <double>gi[j] * ai[j]
        for j in range(n_cols):
            oi[j] = <floating>(ai[j] * (gi[j] - dot))


cdef inline double _unit_weight(const floating* sw, Py_ssize_t i, double wmax) noexcept nogil:
    """w_i, or w_i / wmax when the weights had to be rescaled (wmax != 0)."""
    return sw[i] / wmax if wmax != 0 else sw[i]


cdef double output_loss_rows(const Net* net, const floating* out, const void* y,
                             const floating* sw, Py_ssize_t n,
                             floating* delta) noexcept nogil:
    """PyTorch's rule: the loss on n output rows and delta := its gradient w.r.t. the output.

    (With respect to the logits for the losses that take them.)  Unweighted
    (``sw`` NULL): the mean / sum of the Trainer's reduction.  With weights:
    sum_i w_i * loss_i, divided by sum_i w_i for "mean", so integer weights
    equal repeated rows and a zero weight equals a dropped row.  ``delta``
    may be NULL (the loss only).
    """
    cdef Py_ssize_t n_out = net.sizes[net.n_layers], i, count = n * n_out
    cdef double scale, total = 0, norm = 1, wmax = 0
    cdef const floating* target
    if sw != NULL and net.mean:
        norm = 0
        for i in range(n):
            norm += sw[i]
        # NOTE: a batch of zero-weight rows only (fit's shuffled batches can be one)
        # gives loss 0 and delta 0, not 0/0.
        if norm == 0:
            norm = 1
        elif not isfinite(norm):
            # NOTE: huge finite weights (1e307 each) overflow the sum; w_i / inf
            # would silently zero the loss and the gradient.  The mean does not
            # depend on the weights' scale, so sum w_i / max w instead (as the
            # twin does), and each w_i is divided by max w (_unit_weight).
            for i in range(n):
                wmax = max(wmax, <double>sw[i])
            norm = 0
            for i in range(n):
                norm += sw[i] / wmax
    if net.loss == LOSS_CROSS_ENTROPY:
        if net.class_weight != NULL or net.label_smoothing != 0:
            return _weighted_ce_rows(net, out, <const long long*>y, sw, n, delta, wmax)
        if sw == NULL:
            scale = 1.0 / n if net.mean else 1.0
            return scale * softmax_cross_entropy_rows(out, <const long long*>y, delta, n,
                                                      n_out, scale)
        for i in range(n):
            scale = _unit_weight(sw, i, wmax) / norm
            total += scale * softmax_cross_entropy_rows(
                out + i * n_out, <const long long*>y + i,
                delta + i * n_out if delta != NULL else NULL, 1, n_out, scale)
        return total
    target = <const floating*>y
    if net.loss == LOSS_BCE:
        if sw == NULL:
            scale = 1.0 / count if net.mean else 1.0
            return scale * _bce_rows(net, out, target, delta, n, n_out, scale)
        for i in range(n):
            scale = _unit_weight(sw, i, wmax) / (norm * n_out) if net.mean else sw[i]
            total += scale * _bce_rows(net, out + i * n_out, target + i * n_out,
                                       delta + i * n_out if delta != NULL else NULL,
                                       1, n_out, scale)
        return total
    # MSE and the other pointwise losses (regression_loss is mse_forward_backward for MSE)
    if sw == NULL:
        scale = net.mse_factor / count if net.mean else net.mse_factor
        return regression_loss(net.pointwise, out, target, delta, count, net.loss_param, scale)
    for i in range(n):
        scale = (net.mse_factor * _unit_weight(sw, i, wmax) / (norm * n_out) if net.mean
                 else net.mse_factor * sw[i])
        total += regression_loss(net.pointwise, out + i * n_out, target + i * n_out,
                                 delta + i * n_out if delta != NULL else NULL,
                                 n_out, net.loss_param, scale)
    return total


cdef inline double _bce_rows(const Net* net, const floating* z, const floating* t,
                             floating* delta, Py_ssize_t rows, Py_ssize_t n_out,
                             double scale) noexcept nogil:
    """The binary cross-entropy's kernel: with the Net's pos_weight, or without."""
    if net.pos_weight != NULL:
        return sigmoid_bce_pos_weight(z, t, net.pos_weight, delta, rows, n_out, scale)
    return sigmoid_bce(z, t, delta, rows * n_out, scale)


cdef double _weighted_ce_rows(const Net* net, const floating* out, const long long* y,
                              const floating* sw, Py_ssize_t n, floating* delta,
                              double wmax) noexcept nogil:
    """PyTorch's cross-entropy with class weights / label smoothing on n rows (see
    softmax_cross_entropy_weighted_rows); "mean" divides by sum_i u_i w[y_i], u_i the
    row weights (1 without), so row weights act as repeated rows as elsewhere.

    NOTE: a batch whose targets all weigh 0 gives loss 0 and delta 0 (not torch's
    0/0), as the row weights' rule does.
    """
    cdef Py_ssize_t n_out = net.sizes[net.n_layers], i
    cdef double norm = 1, u, total = 0, scale
    if net.mean:
        norm = 0
        for i in range(n):
            u = _unit_weight(sw, i, wmax) if sw != NULL else 1.0
            norm += u * (net.class_weight[y[i]] if net.class_weight != NULL else 1.0)
        if norm == 0:
            norm = 1
    if sw == NULL:
        return softmax_cross_entropy_weighted_rows(out, y, net.class_weight,
                                                   net.label_smoothing, delta, n, n_out,
                                                   1.0 / norm) / norm
    for i in range(n):
        scale = (_unit_weight(sw, i, wmax) if net.mean else sw[i]) / norm
        total += scale * softmax_cross_entropy_weighted_rows(
            out + i * n_out, y + i, net.class_weight, net.label_smoothing,
            delta + i * n_out if delta != NULL else NULL, 1, n_out, scale)
    return total


cdef double sk_data_loss(int loss, const floating* out, const floating* y,
                         const floating* sw, Py_ssize_t n, Py_ssize_t n_out,
                         double sw_sum) noexcept nogil:
    """scikit-learn's rule, the loss term of its LOSS_FUNCTIONS: weighted average over rows.

    squared error: 0.5 * mean over outputs of the weighted row average of (y - p)^2;
    log / binary log: -sum over outputs of the weighted average of xlogy terms,
    p clipped to [eps, 1 - eps] with eps the dtype's machine epsilon;
    Poisson: sum over outputs of the weighted average of xlogy(y, y / p) - y + p.
    """
    cdef Py_ssize_t i, j
    cdef double total = 0, row, w
    cdef floating p, t, q
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    for i in range(n):
        row = 0
        for j in range(n_out):
            p = out[i * n_out + j]
            t = y[i * n_out + j]
            if loss == LOSS_SK_SQUARED:
                row += <double>((t - p) * (t - p))
            elif loss == LOSS_SK_POISSON:
                if t != 0:
                    row += t * log(<double>(t / p))
                row += <double>(p - t)
            else:
                # NOTE: scikit-learn clips before the logs (never log(0)), so
                # its loss saturates at -log(eps) per term; so does this one.
                p = min(max(p, eps), 1 - eps)
                if t != 0:
                    row -= t * log(<double>p)
                if loss == LOSS_SK_BINARY_LOG:
                    q = 1 - t
                    if q != 0:
                        row -= q * log(<double>(1 - p))
        w = sw[i] if sw != NULL else 1.0
        total += w * row
    if loss == LOSS_SK_SQUARED:
        return 0.5 * (total / sw_sum / n_out)
    return total / sw_sum


cdef double sum_of_squares(const floating* w, Py_ssize_t n) noexcept nogil:
    """sum(w * w) in double with eight partial sums.

    NOTE: one running sum is a chain of dependent adds (4 cycles each), which
    made this the slowest part of a small network's step; eight independent
    sums vectorize.  The rounding differs from NumPy's dot by a few ulps.
    """
    cdef double acc[8]
    cdef Py_ssize_t i, j, main = n - n % 8
    for j in range(8):
        acc[j] = 0
    i = 0
    while i < main:
        for j in range(8):
            acc[j] += <double>w[i + j] * w[i + j]
        i += 8
    for i in range(main, n):
        acc[0] += <double>w[i] * w[i]
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))


cdef double sk_output_delta(const Net* net, const floating* params, const floating* out,
                            const floating* y, const floating* sw, Py_ssize_t n,
                            double sw_sum, floating* delta) noexcept nogil:
    """scikit-learn's rule: delta := (out - y) * w; returns its loss with the L2 term.

    Each output activation is its loss's canonical link, so the delta is the
    same for every loss; the reported loss adds 0.5 * alpha * sum ||W||^2 /
    sw_sum (no intercepts), rounded as scikit-learn does.
    """
    cdef int l
    cdef Py_ssize_t n_out = net.sizes[net.n_layers], i, j
    cdef floating d
    cdef double squares = 0, loss
    loss = sk_data_loss(net.loss, out, y, sw, n, n_out, sw_sum)
    for i in range(n):
        for j in range(n_out):
            d = out[i * n_out + j] - y[i * n_out + j]
            if sw != NULL:
                d = d * sw[i]
            delta[i * n_out + j] = d
    for l in range(net.n_layers):
        squares += sum_of_squares(params + net.w_off[l], net.sizes[l] * net.sizes[l + 1])
    return loss + (0.5 * net.alpha) * squares / sw_sum


cdef inline const floating* _saved(const Net* net, int l, const floating* a) noexcept nogil:
    """What layer l's activation backward reads: its output a, or its pre-activation z."""
    if activation_needs_z(net.act[l - 1]):
        return <const floating*>net.zs[l]
    return a


cdef int output_delta_rows(const Net* net, const floating* params, const floating* x,
                           const void* y, const floating* sw, Py_ssize_t n,
                           double* loss_out, double* sw_sum_out) noexcept nogil:
    """Forward and loss on n rows; d loss / d output (pre-activation) into delta0.

    ``sw``: row weights or NULL (see output_loss_rows).  *sw_sum_out := the
    batch's weight sum (its row count without weights), by which scikit-learn's
    rule divides the gradient.  Returns BP_OK, a GEMM error, or
    STATUS_NONFINITE when the loss is not finite.
    """
    cdef int L = net.n_layers, status
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_out = net.sizes[L], i
    cdef floating* delta = <floating*>net.delta0
    cdef floating* out
    cdef double loss, sw_sum = 0
    cdef int act_out = net.act[L - 1]
    status = forward_rows_z(net, params, x, n, acts, <floating**>net.zs, _takes_logits(net),
                            net.drop)
    if status != BP_OK:
        return status
    out = acts[L]
    if sw == NULL:
        sw_sum = n
    else:
        for i in range(n):
            sw_sum += sw[i]
    sw_sum_out[0] = sw_sum
    if net.sklearn:
        loss = sk_output_delta(net, params, out, <const floating*>y, sw, n, sw_sum, delta)
    else:
        loss = output_loss_rows(net, out, y, sw, n, delta)
        if not _takes_logits(net):
            if act_out == ACT_SOFTMAX:
                softmax_backward_rows(out, delta, delta, n, n_out)
            elif act_out != ACT_IDENTITY:
                activation_backward_params(act_out, _saved(net, L, out), delta, delta,
                                           n * n_out, net.act_param + 2 * (L - 1))
    loss_out[0] = loss
    if not isfinite(loss):
        return STATUS_NONFINITE
    return BP_OK


# ---------------------------------------------------------------------------
# Backward, one layer at a time
# ---------------------------------------------------------------------------

cdef bint all_finite(const floating* x, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """No inf or NaN in x[start:stop].

    NOTE: tested on the exponent bits (all ones <=> inf or NaN) and OR-reduced
    as integers; a floating-point sum could not be reordered without
    -ffast-math.  The exponent field plus one unit of its lowest bit carries
    into the sign bit exactly when the field is all ones, so the loop is an
    and, an add and an or per element, which SSE2 vectorises (a compare feeding
    the or did not vectorise: one element per cycle, ~4 us of a digits step).
    """
    cdef Py_ssize_t i
    cdef const unsigned int* u32
    cdef const unsigned long long* u64
    cdef unsigned int bad32 = 0
    cdef unsigned long long bad64 = 0
    if floating is float:
        u32 = <const unsigned int*>(x + start)
        for i in range(stop - start):
            bad32 |= (u32[i] & 0x7f800000u) + 0x00800000u
        return (bad32 >> 31) == 0
    else:
        u64 = <const unsigned long long*>(x + start)
        for i in range(stop - start):
            bad64 |= (u64[i] & 0x7ff0000000000000ull) + 0x0010000000000000ull
        return (bad64 >> 63) == 0


# Elementwise passes over many parameters run in spans on the GEMM's pool
# (run_chunks): the threaded products that wrote them left them spread over both
# cores' caches, and one thread pulling them over is slower than two sharing the
# pass (the update of 64-1000-100-10's 101k float32 parameters after a 2-thread
# step: 142 us alone, 44 pooled, 14 from one core's own cache at 1 thread).
cdef Py_ssize_t PARALLEL_PASS = 1 << 16         # below: ~10 us, not worth a wake-up
cdef enum:
    PASS_CHUNKS = 6                             # three a thread on two cores


cdef inline void _span(Py_ssize_t n, int chunk, int nchunks, Py_ssize_t* lo,
                       Py_ssize_t* hi) noexcept nogil:
    """Span ``chunk`` of ``nchunks`` over [0, n): bounds rounded down to 64 elements
    (whole cache lines, and whole vectors, so a span's loop vectorises as the whole
    pass's would); the last span ends at n."""
    lo[0] = chunk * n // nchunks // 64 * 64
    hi[0] = n if chunk + 1 == nchunks else (chunk + 1) * n // nchunks // 64 * 64


ctypedef struct _ScanJob:
    const void* x
    Py_ssize_t start, n
    int bad[PASS_CHUNKS]


cdef inline void _scan_chunk(_ScanJob* job, int chunk, const floating* kind) noexcept nogil:
    cdef Py_ssize_t lo, hi
    _span(job.n, chunk, PASS_CHUNKS, &lo, &hi)
    job.bad[chunk] = not all_finite(<const floating*>job.x, job.start + lo, job.start + hi)


cdef void _scan_chunk_f32(void* job, int chunk, int worker) noexcept nogil:
    _scan_chunk(<_ScanJob*>job, chunk, <const float*>NULL)


cdef void _scan_chunk_f64(void* job, int chunk, int worker) noexcept nogil:
    _scan_chunk(<_ScanJob*>job, chunk, <const double*>NULL)


cdef bint grads_finite(const floating* x, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """all_finite(x, start, stop), in spans on the pool from PARALLEL_PASS elements."""
    cdef _ScanJob job
    cdef int c
    if stop - start < PARALLEL_PASS:
        return all_finite(x, start, stop)
    job.x, job.start, job.n = x, start, stop - start
    run_chunks(_scan_chunk_f32 if floating is float else _scan_chunk_f64, &job,
               PASS_CHUNKS, 0)
    for c in range(PASS_CHUNKS):
        if job.bad[c]:
            return False
    return True


cdef int backward_layer_rows(const Net* net, const floating* params, const floating* x,
                             Py_ssize_t n, floating* grads, int l,
                             double sw_sum) noexcept nogil:
    """Layer l's gradient (and delta_{l-1}) from delta_l; layers must come L-1 down to 0.

    delta_l sits in delta0 when L-1-l is even, else in delta1 (the buffers
    alternate).  scikit-learn's rule then takes (a.T @ delta + alpha * W) /
    sw_sum and sum(delta) / sw_sum, rounded step by step as scikit-learn
    does.  Returns STATUS_NONFINITE if the layer's gradient is not finite.
    With dropout on layer l-1's output, delta_{l-1} takes the derivative at
    the unmasked output and then the forward's mask and scale; layer 0 ends
    the step (its masks are used up: drop.step advances).
    """
    cdef int L = net.n_layers, status
    cdef bint dropped = net.drop != NULL and l > 0 and net.drop.p[l - 1] > 0
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_in = net.sizes[l], n_out = net.sizes[l + 1], k
    cdef bint even = (L - 1 - l) % 2 == 0
    cdef floating* delta = <floating*>(net.delta0 if even else net.delta1)
    cdef floating* delta_next = <floating*>(net.delta1 if even else net.delta0)
    cdef const floating* a_prev = x if l == 0 else acts[l]
    cdef floating* gw = grads + net.w_off[l]
    cdef floating* gb = grads + net.b_off[l]
    cdef const floating* w = params + net.w_off[l]
    cdef floating alpha_t = <floating>net.alpha, sw_t = <floating>sw_sum
    if l > 0:
        status = _product(net, n, n_in, n_out, delta, n_out, 1, w, 1, n_out, delta_next,
                          n_in, _backward_epilogue(net.act[l - 1]), <const floating*>NULL,
                          <floating*>net.drop.pre[l] if dropped else acts[l], n_in)
        if status != BP_OK:
            return status
        if not _fused(net.act[l - 1]):
            activation_backward_params(
                net.act[l - 1], _saved(net, l, <floating*>net.drop.pre[l] if dropped else acts[l]),
                delta_next, delta_next, n * n_in, net.act_param + 2 * (l - 1))
        if dropped:
            dropout_rows(net.drop, l - 1, delta_next, delta_next, n * n_in)
    elif net.drop != NULL:
        net.drop.step += 1
    status = _product(net, n_in, n_out, n, a_prev, 1, n_in, delta, n_out, 1, gw, n_out,
                      BP_EPI_NONE, <const floating*>NULL, <const floating*>NULL, 0)
    if status != BP_OK:
        return status
    column_sums(delta, n, n_out, gb)
    if net.sklearn:
        for k in range(n_in * n_out):
            gw[k] = (gw[k] + alpha_t * w[k]) / sw_t
        for k in range(n_out):
            gb[k] = gb[k] / sw_t
    if not grads_finite(grads, net.w_off[l], net.b_off[l] + n_out):
        return STATUS_NONFINITE
    return BP_OK


cdef int loss_and_grad_rows(const Net* net, const floating* params, const floating* x,
                            const void* y, const floating* sw, Py_ssize_t n,
                            floating* grads, double* loss_out) noexcept nogil:
    """Forward, loss and backward on n rows: grads := d loss / d params; *loss_out := loss.

    ``y`` is float targets (n x n_out), or int64 labels (n,) for PyTorch's
    cross-entropy; ``sw`` per-row weights or NULL.  Returns BP_OK, a GEMM
    error, or STATUS_NONFINITE when the loss or a gradient is not finite
    (grads are then unspecified).

    NOTE: this is exactly output_delta_rows followed by backward_layer_rows
    for l = L-1 .. 0; the distributed fit calls the pieces itself to start one
    layer's reduction while the next layer's backward runs.
    """
    cdef int l, status
    cdef double sw_sum
    status = output_delta_rows(net, params, x, y, sw, n, loss_out, &sw_sum)
    if status != BP_OK:
        return status
    for l in range(net.n_layers - 1, -1, -1):
        status = backward_layer_rows(net, params, x, n, grads, l, sw_sum)
        if status != BP_OK:
            return status
    return BP_OK


# ---------------------------------------------------------------------------
# The update rule: PyTorch's SGD / Adam or scikit-learn's, over the flat block
# ---------------------------------------------------------------------------

cdef void _torch_update_range(Update* rule, floating* params, const floating* grads,
                              floating* s1, floating* s2, floating* s3, Py_ssize_t start,
                              Py_ssize_t n, double weight_decay) noexcept nogil:
    """One PyTorch update of params[start:start+n] (state blocks offset alike; NULL: unused)."""
    params += start
    grads += start
    s1 = s1 + start if s1 != NULL else NULL
    s2 = s2 + start if s2 != NULL else NULL
    s3 = s3 + start if s3 != NULL else NULL
    if rule.kind == UPD_SGD:
        if floating is float:
            bp_sgd_f32(params, grads, s1, n, <float>rule.lr, <float>rule.momentum,
                       <float>weight_decay, rule.nesterov)
        else:
            bp_sgd_f64(params, grads, s1, n, rule.lr, rule.momentum, weight_decay,
                       rule.nesterov)
    elif rule.kind == UPD_RMSPROP:
        if floating is float:
            bp_rmsprop_f32(params, grads, s1, s2, s3, n, rule.lr, rule.alpha, rule.eps,
                           weight_decay, rule.momentum, rule.centered)
        else:
            bp_rmsprop_f64(params, grads, s1, s2, s3, n, rule.lr, rule.alpha, rule.eps,
                           weight_decay, rule.momentum, rule.centered)
    elif rule.kind == UPD_ADAMW:
        if floating is float:
            bp_adamw_f32(params, grads, s1, s2, n, rule.lr, rule.beta1, rule.beta2, rule.eps,
                         weight_decay, rule.step)
        else:
            bp_adamw_f64(params, grads, s1, s2, n, rule.lr, rule.beta1, rule.beta2, rule.eps,
                         weight_decay, rule.step)
    elif floating is float:
        bp_adam_f32(params, grads, s1, s2, n, rule.lr, rule.beta1, rule.beta2, rule.eps,
                    weight_decay, rule.step)
    else:
        bp_adam_f64(params, grads, s1, s2, n, rule.lr, rule.beta1, rule.beta2, rule.eps,
                    weight_decay, rule.step)


cdef void clip_gradients(const Update* rule, floating* grads, Py_ssize_t n) noexcept nogil:
    """grads clamped to +-clip_value, then scaled by min(1, clip_norm / (||grads|| + 1e-6)).

    As torch.nn.utils.clip_grad_value_ and clip_grad_norm_ (the L2 norm over
    every parameter at once).  NOTE: the norm is summed in double over the
    whole block; PyTorch takes one norm per tensor and the norm of those, so
    the coefficient agrees to rounding, not bit for bit.
    """
    cdef Py_ssize_t i
    cdef floating c, coef
    cdef double total
    if rule.clip_by_value:
        c = <floating>rule.clip_value
        for i in range(n):
            grads[i] = min(max(grads[i], -c), c)
    if rule.clip_by_norm:
        total = sqrt(sum_of_squares(grads, n))
        if rule.clip_norm / (total + 1e-6) < 1.0:
            coef = <floating>(rule.clip_norm / (total + 1e-6))
            for i in range(n):
                grads[i] = grads[i] * coef


cdef void _sklearn_update(Update* rule, floating* params, const floating* grads,
                          floating* s1, floating* s2, Py_ssize_t n) noexcept nogil:
    """One update of scikit-learn's SGDOptimizer or AdamOptimizer (step advanced already)."""
    cdef double lr_t
    if rule.kind == UPD_SK_SGD:
        if floating is float:
            bp_sk_sgd_f32(params, grads, s1, n, <float>rule.lr, <float>rule.momentum,
                          rule.nesterov)
        else:
            bp_sk_sgd_f64(params, grads, s1, n, rule.lr, rule.momentum, rule.nesterov)
        return
    # NOTE: the step size in double, as scikit-learn computes learning_rate.
    lr_t = (rule.lr * sqrt(1 - pow(rule.beta2, <double>rule.step))
            / (1 - pow(rule.beta1, <double>rule.step)))
    if floating is float:
        bp_sk_adam_f32(params, grads, s1, s2, n, <float>(-lr_t), <float>rule.beta1,
                       <float>(1 - rule.beta1), <float>rule.beta2, <float>(1 - rule.beta2),
                       <float>rule.eps)
    else:
        bp_sk_adam_f64(params, grads, s1, s2, n, -lr_t, rule.beta1, 1 - rule.beta1,
                       rule.beta2, 1 - rule.beta2, rule.eps)


cdef void _update_span(Update* rule, floating* params, const floating* grads,
                       floating* s1, floating* s2, floating* s3, Py_ssize_t start,
                       Py_ssize_t n) noexcept nogil:
    """The update of params[start:start+n] when every element takes the same rule
    (no weights-only decay): elementwise, so a span gives the whole update's bits."""
    if rule.kind == UPD_SK_SGD or rule.kind == UPD_SK_ADAM:
        _sklearn_update(rule, params + start, grads + start,
                        s1 + start if s1 != NULL else NULL,
                        s2 + start if s2 != NULL else NULL, n)
    else:
        _torch_update_range(rule, params, grads, s1, s2, s3, start, n, rule.weight_decay)


# The update in spans (PARALLEL_PASS), each the whole update's rule on its elements.
ctypedef struct _UpdateJob:
    Update* rule
    void* params
    const void* grads
    void* s1
    void* s2
    void* s3
    Py_ssize_t n


cdef inline void _update_chunk(_UpdateJob* job, int chunk, const floating* kind) noexcept nogil:
    cdef Py_ssize_t lo, hi
    _span(job.n, chunk, PASS_CHUNKS, &lo, &hi)
    if hi > lo:
        _update_span(job.rule, <floating*>job.params, <const floating*>job.grads,
                     <floating*>job.s1, <floating*>job.s2, <floating*>job.s3, lo, hi - lo)


cdef void _update_chunk_f32(void* job, int chunk, int worker) noexcept nogil:
    _update_chunk(<_UpdateJob*>job, chunk, <const float*>NULL)


cdef void _update_chunk_f64(void* job, int chunk, int worker) noexcept nogil:
    _update_chunk(<_UpdateJob*>job, chunk, <const double*>NULL)


cdef void apply_update(const Net* net, Update* rule, floating* params, floating* grads,
                       floating* s1, floating* s2, floating* s3,
                       Py_ssize_t n_params) noexcept nogil:
    """params := one optimizer step over the flat block.

    State: s1 = SGD's velocity, Adam's m or RMSprop's square average; s2 =
    Adam's v or RMSprop's momentum buffer; s3 = RMSprop's gradient average
    (centered).  The step first takes this update's settings from the rule's
    table (a per-batch schedule) and clips ``grads`` in place when asked.
    """
    cdef int l
    cdef double mu
    if rule.table_pos < rule.table_len:
        rule.lr = rule.lr_table[rule.table_pos]
        if rule.momentum_table != NULL:
            mu = rule.momentum_table[rule.table_pos]
            if rule.kind == UPD_ADAM or rule.kind == UPD_ADAMW:
                rule.beta1 = mu
            else:
                rule.momentum = mu
        rule.table_pos += 1
    if rule.clip_by_value or rule.clip_by_norm:
        clip_gradients(rule, grads, n_params)
    if rule.kind == UPD_ADAM or rule.kind == UPD_SK_ADAM or rule.kind == UPD_ADAMW:
        rule.step += 1
    cdef _UpdateJob job
    if (rule.kind == UPD_SK_SGD or rule.kind == UPD_SK_ADAM or not rule.weights_only
            or rule.weight_decay == 0):
        if n_params < PARALLEL_PASS:
            _update_span(rule, params, grads, s1, s2, s3, 0, n_params)
            return
        # NOTE: elementwise, so any split gives the same bits (PARALLEL_PASS)
        job.rule, job.params, job.grads = rule, params, grads
        job.s1, job.s2, job.s3, job.n = s1, s2, s3, n_params
        run_chunks(_update_chunk_f32 if floating is float else _update_chunk_f64, &job,
                   PASS_CHUNKS, 0)
    else:
        for l in range(net.n_layers):
            _torch_update_range(rule, params, grads, s1, s2, s3, net.w_off[l],
                                net.sizes[l] * net.sizes[l + 1], rule.weight_decay)
            _torch_update_range(rule, params, grads, s1, s2, s3, net.b_off[l],
                                net.sizes[l + 1], 0.0)


# ---------------------------------------------------------------------------
# The epoch: mini-batches in order or gathered by a permutation, one nogil call
# ---------------------------------------------------------------------------

cdef int train_epoch_rows(const Net* net, Update* rule, floating* params, floating* grads,
                          floating* s1, floating* s2, floating* s3, Py_ssize_t n_params,
                          const floating* x, const void* y, const floating* sw,
                          const long long* order, Py_ssize_t n_samples,
                          Py_ssize_t batch_size, floating* x_batch, void* y_batch,
                          floating* sw_batch, Py_ssize_t y_row_bytes, double* loss_sum,
                          Py_ssize_t* batches_done, Pending* pending) noexcept nogil:
    """Mini-batch training over the rows of x in ``order`` (NULL: in place, no gathering).

    Each batch: loss_and_grad_rows under the Trainer's loss rule, then
    apply_update under ``rule``.  *loss_sum := sum of batch loss * batch
    rows (PyTorch's rule with weights: * the batch's weight sum);
    *batches_done counts the batches whose update was applied.  Stops at the
    first failing batch, or when a signal handler raised (its exception kept
    in ``pending``).
    """
    cdef Py_ssize_t start, rows, r, src, n_in = net.sizes[0]
    cdef const floating* xb
    cdef const void* yb
    cdef const floating* swb
    cdef double loss, weight
    cdef int status
    start = 0
    while start < n_samples:
        rows = min(batch_size, n_samples - start)
        if order == NULL:
            xb = x + start * n_in
            yb = <const char*>y + start * y_row_bytes
            swb = sw + start if sw != NULL else NULL
        else:
            for r in range(rows):
                src = order[start + r]
                memcpy(x_batch + r * n_in, x + src * n_in, n_in * sizeof(floating))
                memcpy(<char*>y_batch + r * y_row_bytes, <const char*>y + src * y_row_bytes,
                       y_row_bytes)
                if sw != NULL:
                    sw_batch[r] = sw[src]
            xb = x_batch
            yb = y_batch
            swb = sw_batch if sw != NULL else NULL
        status = loss_and_grad_rows(net, params, xb, yb, swb, rows, grads, &loss)
        if status != BP_OK:
            return status
        apply_update(net, rule, params, grads, s1, s2, s3, n_params)
        weight = rows
        if swb != NULL and not net.sklearn:
            weight = 0
            for r in range(rows):
                weight += swb[r]
        loss_sum[0] += loss * weight
        batches_done[0] += 1
        if batches_done[0] % SIGNAL_CHECK_EVERY == 0:
            if poll_signals(pending) != BP_OK:
                return STATUS_INTERRUPTED
        start += rows
    return BP_OK


# ---------------------------------------------------------------------------
# One call into the core: what a Trainer method asks, and the one dtype dispatch
# ---------------------------------------------------------------------------

cdef enum:
    # what run_call does (one per Trainer method that enters the core)
    OP_FORWARD = 0        # acts := forward (buffers of this call: thread-safe)
    OP_EVALUATE = 1       # loss := forward + the loss rule's value (no gradient)
    OP_LOSS_GRAD = 2      # grads, loss := loss_and_grad_rows
    OP_UPDATE = 3         # params := apply_update
    OP_STEP = 4           # OP_LOSS_GRAD, then OP_UPDATE when it succeeded
    OP_EPOCH = 5          # train_epoch_rows
    OP_BEGIN = 6          # output_delta_rows (the step cut at layer boundaries)
    OP_BACKWARD = 7       # backward_layer_rows for one layer


cdef struct Call:
    # The arguments of one call, as untyped pointers: the Trainer method fills
    # what its op reads (checked shapes and dtypes), run_call types them once.
    int op
    void* params
    void* grads
    void* s1                     # optimizer state (velocity, m or square_avg), or NULL
    void* s2                     # optimizer state (v or RMSprop's momentum buffer), or NULL
    void* s3                     # optimizer state (RMSprop's grad_avg), or NULL
    const void* x
    const void* y                # float targets, or int64 labels
    const void* sw               # row weights, or NULL
    const long long* order       # the epoch's row order, or NULL
    Py_ssize_t n                 # rows of x
    Py_ssize_t n_params
    Py_ssize_t batch_size
    Py_ssize_t y_row_bytes
    void* out                    # OP_FORWARD: the caller's (n, n_out) result
    void* x_batch                # OP_EPOCH's gather buffers
    void* y_batch
    void* sw_batch
    Update* rule
    int layer                    # OP_BACKWARD
    double sw_sum                # OP_BEGIN's out, OP_BACKWARD's in
    double loss                  # out
    Py_ssize_t done              # OP_EPOCH's out: batches applied
    Pending pending              # OP_EPOCH's out: a signal handler's exception


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Two C-contiguous arrays share a byte (one C test, no Python attribute lookup)."""
    cdef char* alo = <char*>cnp.PyArray_DATA(a)
    cdef char* blo = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t an = cnp.PyArray_NBYTES(a), bn = cnp.PyArray_NBYTES(b)
    return an > 0 and bn > 0 and alo < blo + bn and blo < alo + an


# Bytes of _forward_private's block (pointer table and hidden outputs) kept on the stack.
cdef enum:
    FORWARD_STACK_BYTES = 4096
# A forward pass of fewer multiply-adds (rows x parameters) keeps the GIL: releasing
# and taking it back costs ~450 instructions, a tenth of a 64-64-10 one-row predict.
# (Concurrent callers are then serialised, which is as safe; longer calls still run
# without it, side by side.)
cdef Py_ssize_t FORWARD_NOGIL_WORK = 32768


cdef int _forward_private(const Net* net, Call* c, const floating* params,
                          bint logits) noexcept nogil:
    """Forward into buffers of this call only (malloc: no Python object, thread-safe)."""
    cdef int L = net.n_layers, l, status
    # NOTE: one block for the pointer table and the layers' outputs (the
    # caller's `out` is the last one for OP_FORWARD), each at 64 bytes.
    cdef size_t table = ((L + 1) * sizeof(void*) + 63) & ~(<size_t>63)
    cdef size_t size = table
    cdef int last = L - 1 if c.op == OP_FORWARD else L
    for l in range(1, last + 1):
        size += (c.n * net.sizes[l] * sizeof(floating) + 63) & ~(<size_t>63)
    # NOTE: a one-row prediction's block is a few hundred bytes: on the stack
    # (aligned by hand), since aligned_alloc + free cost ~1 000 instructions,
    # a sixth of a 64-64-10 predict.
    cdef char local[FORWARD_STACK_BYTES + 64]
    cdef bint heap = size > FORWARD_STACK_BYTES
    cdef char* block = (<char*>aligned_alloc(64, size) if heap
                        else <char*>((<size_t>local + 63) & ~(<size_t>63)))
    if block == NULL:
        return BP_ENOMEM
    cdef floating** acts = <floating**>block
    cdef char* p = block + table
    for l in range(1, last + 1):
        acts[l] = <floating*>p
        p += ((c.n * net.sizes[l] * sizeof(floating) + 63) & ~(<size_t>63))
    if c.op == OP_FORWARD:
        acts[L] = <floating*>c.out
    status = forward_rows(net, params, <const floating*>c.x, c.n, acts, logits, NULL)
    if status == BP_OK and c.op == OP_EVALUATE:
        if net.sklearn:
            c.loss = sk_data_loss(net.loss, acts[L], <const floating*>c.y, <const floating*>NULL,
                                  c.n, net.sizes[L], c.n)
        else:
            c.loss = output_loss_rows(net, acts[L], c.y, <const floating*>NULL, c.n,
                                      <floating*>NULL)
    if heap:
        free(block)
    return status


cdef int _run_typed(const Net* net, Call* c, floating* params) noexcept nogil:
    """Do c.op with every pointer typed as ``floating`` (the Trainer's dtype)."""
    cdef floating* grads = <floating*>c.grads
    cdef int status
    if c.op == OP_FORWARD:
        return _forward_private(net, c, params, False)
    if c.op == OP_EVALUATE:
        return _forward_private(net, c, params, _takes_logits(net))
    if c.op == OP_UPDATE:
        apply_update(net, c.rule, params, grads, <floating*>c.s1, <floating*>c.s2,
                     <floating*>c.s3, c.n_params)
        return BP_OK
    if c.op == OP_LOSS_GRAD or c.op == OP_STEP:
        status = loss_and_grad_rows(net, params, <const floating*>c.x, c.y,
                                    <const floating*>c.sw, c.n, grads, &c.loss)
        if status == BP_OK and c.op == OP_STEP:
            apply_update(net, c.rule, params, grads, <floating*>c.s1, <floating*>c.s2,
                         <floating*>c.s3, c.n_params)
        return status
    if c.op == OP_EPOCH:
        return train_epoch_rows(net, c.rule, params, grads, <floating*>c.s1, <floating*>c.s2,
                                <floating*>c.s3, c.n_params, <const floating*>c.x, c.y, <const floating*>c.sw,
                                c.order, c.n, c.batch_size, <floating*>c.x_batch, c.y_batch,
                                <floating*>c.sw_batch, c.y_row_bytes, &c.loss, &c.done,
                                &c.pending)
    if c.op == OP_BEGIN:
        return output_delta_rows(net, params, <const floating*>c.x, c.y, <const floating*>c.sw,
                                 c.n, &c.loss, &c.sw_sum)
    if c.op == OP_BACKWARD:
        return backward_layer_rows(net, params, <const floating*>c.x, c.n, grads, c.layer,
                                   c.sw_sum)
    return -1  # an op this function does not know: _raise_for calls it an internal error


cdef int run_call(const Net* net, int typenum, Call* c) noexcept nogil:
    """The core's one float32/float64 dispatch: every Trainer method enters here."""
    if typenum == cnp.NPY_FLOAT:
        return _run_typed(net, c, <float*>c.params)
    return _run_typed(net, c, <double*>c.params)


# ---------------------------------------------------------------------------
# The Python face of the core: UpdateRule and Trainer
# ---------------------------------------------------------------------------

UPDATE_KINDS = {"sgd": UPD_SGD, "adam": UPD_ADAM, "adamw": UPD_ADAMW, "rmsprop": UPD_RMSPROP,
                "sklearn_sgd": UPD_SK_SGD, "sklearn_adam": UPD_SK_ADAM}


cdef class UpdateRule:
    """An optimizer and its settings: one update of the flat parameter block.

    Parameters
    ----------
    kind : {"sgd", "adam", "adamw", "rmsprop", "sklearn_sgd", "sklearn_adam"}
        ``torch.optim.SGD`` (bitwise: see optim.h) / ``Adam`` / ``AdamW`` /
        ``RMSprop``, or scikit-learn's ``SGDOptimizer`` / ``AdamOptimizer``.
    lr : float
        The rate (scikit-learn's Adam: ``learning_rate_init``).
    momentum, nesterov
        SGD's (both conventions); ``momentum`` also RMSprop's.
    weight_decay : float
        PyTorch's L2 term added to the gradient (AdamW: the decoupled decay;
        scikit-learn's ``alpha`` is part of its loss rule instead:
        :attr:`Trainer.alpha`).
    betas, eps
        Adam's and AdamW's (``eps`` also RMSprop's).
    step : int
        Adam's steps taken so far; advanced by every update.
    weights_only : bool
        PyTorch's rules: weight decay on the weights W_l only, not the biases.
    alpha, centered
        RMSprop's.
    clip_grad_norm, clip_grad_value : float or None
        Clip the gradient block in place before each update (PyTorch's rules):
        clamp to +-clip_grad_value, then scale by min(1, clip_grad_norm /
        (||g|| + 1e-6)), ||g|| the L2 norm over all parameters.

    The values are taken as given (the faces validate them).  State blocks
    (see :attr:`stateful`): SGD (velocity,); Adam / AdamW (m, v); RMSprop
    (square_avg, momentum_buffer, grad_avg).
    """
    cdef Update rule
    cdef object _tables  # the arrays rule.lr_table / momentum_table point into
    cdef bint _table_momentum  # the momentum table turns momentum on somewhere

    def __init__(self, str kind, *, double lr, double momentum=0.0, double weight_decay=0.0,
                 bint nesterov=False, betas=(0.9, 0.999), double eps=1e-8, long long step=0,
                 bint weights_only=False, double alpha=0.99, bint centered=False,
                 clip_grad_norm=None, clip_grad_value=None):
        if kind not in UPDATE_KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(map(repr, UPDATE_KINDS))}; "
                             f"got {kind!r}")
        memset(&self.rule, 0, sizeof(Update))
        self.rule.kind = UPDATE_KINDS[kind]
        self.rule.lr = lr
        self.rule.momentum = momentum
        self.rule.weight_decay = weight_decay
        self.rule.nesterov = nesterov
        self.rule.beta1 = betas[0]
        self.rule.beta2 = betas[1]
        self.rule.eps = eps
        self.rule.step = step
        self.rule.weights_only = weights_only
        self.rule.alpha = alpha
        self.rule.centered = centered
        self.rule.clip_by_norm = clip_grad_norm is not None
        self.rule.clip_norm = clip_grad_norm if clip_grad_norm is not None else 0.0
        self.rule.clip_by_value = clip_grad_value is not None
        self.rule.clip_value = clip_grad_value if clip_grad_value is not None else 0.0
        self._tables = None
        self._table_momentum = False

    def set_schedule(self, lrs, momenta=None):
        """The next ``len(lrs)`` updates take their rate from ``lrs`` (a per-batch schedule).

        ``lrs``: float64 (k,); ``momenta``: float64 (k,) or None -- each update's
        momentum (Adam / AdamW: beta1), as OneCycleLR cycles it.  Read by the
        compiled step one entry per update, so an epoch needs no Python per batch.
        """
        lrs, momenta = V.schedule_tables(lrs, momenta)
        self._tables = (lrs, momenta)
        # NOTE: a table that turns momentum on needs the velocity (stateful) even
        # when the rule starts at 0, or the kernel would write through NULL.
        self._table_momentum = momenta is not None and bool((momenta != 0).any())
        self.rule.lr_table = <const double*>cnp.PyArray_DATA(<cnp.ndarray>lrs)
        self.rule.momentum_table = (<const double*>cnp.PyArray_DATA(<cnp.ndarray>momenta)
                                    if momenta is not None else NULL)
        self.rule.table_len = lrs.shape[0]
        self.rule.table_pos = 0

    @property
    def kind(self):
        return next(k for k, v in UPDATE_KINDS.items() if v == self.rule.kind)

    @property
    def lr(self):
        return self.rule.lr

    @lr.setter
    def lr(self, double value):
        self.rule.lr = value

    @property
    def momentum(self):
        """The momentum (after a scheduled update: the last one's)."""
        return self.rule.momentum

    @property
    def beta1(self):
        return self.rule.beta1

    @property
    def step(self):
        """Adam's steps taken (advanced by each update)."""
        return self.rule.step

    @step.setter
    def step(self, long long value):
        self.rule.step = value

    @property
    def stateful(self):
        """How many state blocks the rule reads and writes (the leading entries of ``state``).

        0, 1 (SGD's velocity), 2 (Adam's moments; RMSprop with momentum) or 3
        (centered RMSprop, whose second block is then read only with momentum).
        """
        cdef bint momentum = self.rule.momentum != 0 or self._table_momentum
        if self.rule.kind in (UPD_ADAM, UPD_SK_ADAM, UPD_ADAMW):
            return 2
        if self.rule.kind == UPD_RMSPROP:
            return 3 if self.rule.centered else (2 if momentum else 1)
        if self.rule.kind == UPD_SK_SGD or momentum:
            return 1
        return 0

    def __repr__(self):
        return (f"UpdateRule({self.kind!r}, lr={self.rule.lr!r}, momentum={self.rule.momentum!r},"
                f" weight_decay={self.rule.weight_decay!r}, step={self.rule.step})")


def _act_params(activations, params):
    """The Net's act_param block: 2 doubles per layer, the activation's parameters in
    bpcore._validate.ACTIVATION_PARAMS order, defaults where ``params`` (one dict per
    layer, or None) does not say."""
    block = np.zeros(2 * len(activations), np.float64)
    for l, name in enumerate(activations):
        given = params[l] if params is not None and params[l] is not None else {}
        for k, (key, default) in enumerate(V.ACTIVATION_PARAMS.get(name, {}).items()):
            block[2 * l + k] = given.get(key, default)
    return block


cdef inline void* _data(object arr):
    """The data pointer of an ndarray, NULL for None."""
    return cnp.PyArray_DATA(<cnp.ndarray>arr) if arr is not None else NULL


cdef class Trainer:
    """Shapes, activations, the loss rule and the workspace of one model.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first: (n_in, h_1, ..., n_out).
    activations : sequence of str
        One per layer (the last is the output activation; "exp" is
        scikit-learn's Poisson link).
    loss : str
        PyTorch's rules "mse", "l1", "huber", "smooth_l1", "cross_entropy"
        (int64 labels), "binary_cross_entropy"; or scikit-learn's "sk_squared_error",
        "sk_log_loss", "sk_binary_log_loss", "sk_poisson" (float targets).
    reduction : str
        "mean", "sum", "half_sum", "half_mean" (PyTorch's rules).
    dtype : numpy dtype
        float32 or float64.
    alpha : float
        scikit-learn's L2 penalty (its rules only); settable.
    activation_params : sequence of dict or None, optional
        One per layer (None entries allowed): the activation's parameters by
        name (``{"negative_slope": 0.2}``), PyTorch's defaults where absent;
        taken as given (the faces validate them).
    loss_params : dict, optional
        The loss rule's options, taken as given: ``delta`` ("huber"),
        ``beta`` ("smooth_l1"), ``class_weight`` (n_out,) and
        ``label_smoothing`` ("cross_entropy"), ``pos_weight`` (n_out,)
        ("binary_cross_entropy").
    compute_dtype : None or "bfloat16"
        "bfloat16" (float32 only; a ``ValueError`` naming it otherwise): every
        product of forward and backward from bfloat16-rounded operands with
        float32 accumulation (see the module's Design note); None: in ``dtype``.

    The core's interface (see the module's Design note) is :meth:`forward`,
    :meth:`evaluate`, :meth:`loss_and_grad`, :meth:`update` and
    :meth:`epoch`, plus :meth:`loss_and_grad_begin` / :meth:`backward_layer`
    (the step cut at layer boundaries) and :meth:`train_step_fast`.  Every
    array is a C-contiguous block checked by the face (bpcore.nn); the
    methods check only what would make the kernels read or write out of
    bounds.  Parameters, gradients and optimizer state are flat blocks laid
    out as :meth:`offsets` says, owned by the caller.
    """
    cdef Net net
    cdef readonly object dtype
    cdef readonly object compute_dtype  # None or "bfloat16" (the products' operands)
    cdef readonly Py_ssize_t n_params
    cdef readonly Py_ssize_t capacity
    cdef int typenum
    cdef object _sizes, _acts, _w_off, _b_off, _buffers, _act_ptrs
    cdef object _act_params, _z_ptrs, _z_buffers, _loss_arrays
    cdef Py_ssize_t max_width
    cdef Py_ssize_t _pending_rows      # rows of the step cut by loss_and_grad_begin (0: none)
    cdef double _pending_sw_sum
    cdef readonly Py_ssize_t batches_done  # batches applied by the last epoch call
    cdef int _next_layer
    cdef Dropout drop                  # net.drop points here when a hidden layer drops
    cdef object _drop_p, _pre_ptrs

    def __init__(self, sizes, activations, loss, reduction, dtype, alpha=0.0, dropout=None, *,
                 activation_params=None, loss_params=None, compute_dtype=None):
        self.dtype = np.dtype(dtype)
        self.compute_dtype = V.check_compute_dtype(compute_dtype, self.dtype)
        self.net.bf16 = self.compute_dtype == "bfloat16"
        self.typenum = cnp.NPY_FLOAT if self.dtype == np.float32 else cnp.NPY_DOUBLE
        self._sizes = np.ascontiguousarray(sizes, dtype=np.intp)
        self._acts = np.ascontiguousarray([ACTIVATIONS[a] for a in activations], dtype=np.intc)
        n_layers = len(self._sizes) - 1
        self._act_params = _act_params(activations, activation_params)
        w_off = np.empty(n_layers, np.intp)
        b_off = np.empty(n_layers, np.intp)
        offset = 0
        for l in range(n_layers):
            w_off[l] = offset
            offset += self._sizes[l] * self._sizes[l + 1]
            b_off[l] = offset
            offset += self._sizes[l + 1]
        self._w_off, self._b_off = w_off, b_off
        self.n_params = offset
        self.max_width = int(max(self._sizes))
        self.net.n_layers = n_layers
        self.net.sizes = <const Py_ssize_t*>cnp.PyArray_DATA(self._sizes)
        self.net.act = <const int*>cnp.PyArray_DATA(self._acts)
        self.net.act_param = <const double*>cnp.PyArray_DATA(self._act_params)
        self.net.w_off = <const Py_ssize_t*>cnp.PyArray_DATA(self._w_off)
        self.net.b_off = <const Py_ssize_t*>cnp.PyArray_DATA(self._b_off)
        self.net.loss = LOSSES[loss]
        self.net.sklearn = loss.startswith("sk_")
        self.net.mse_factor = 0.5 if reduction.startswith("half") else 1.0
        self.net.mean = reduction.endswith("mean")
        self.net.alpha = alpha
        self._set_loss_params(loss, loss_params or {})
        self._act_ptrs = np.zeros(n_layers + 1, np.uintp)
        self.net.acts = <char**>cnp.PyArray_DATA(self._act_ptrs)
        self._z_ptrs = np.zeros(n_layers + 1, np.uintp)
        self.net.zs = <char**>cnp.PyArray_DATA(self._z_ptrs)
        self.capacity = 0
        self._buffers = None
        self._init_dropout(dropout)

    cdef void _init_dropout(self, object dropout) except *:
        """Dropout probabilities, one per hidden layer (None: none); checked by the face."""
        cdef int n_hidden = self.net.n_layers - 1
        probabilities = [0.0] * n_hidden if dropout is None else [float(p) for p in dropout]
        if len(probabilities) != n_hidden:
            raise ValueError(f"`dropout` must have one probability per hidden layer "
                             f"({n_hidden}); got {len(probabilities)}")
        self._drop_p = np.ascontiguousarray(probabilities + [0.0], dtype=np.float64)
        self._pre_ptrs = np.zeros(self.net.n_layers + 1, np.uintp)
        memset(&self.drop, 0, sizeof(Dropout))
        self.drop.p = <const double*>cnp.PyArray_DATA(self._drop_p)
        self.drop.pre = <char**>cnp.PyArray_DATA(self._pre_ptrs)
        self.net.drop = &self.drop if any(p > 0 for p in probabilities) else NULL

    @property
    def dropout(self):
        """The dropout probability of each hidden layer's output (a tuple)."""
        return tuple(float(p) for p in self._drop_p[:self.net.n_layers - 1])

    @property
    def dropout_seed(self):
        """The key of the dropout masks (with the step, the layer and the element)."""
        return int(self.drop.seed)

    @dropout_seed.setter
    def dropout_seed(self, unsigned long long value):
        self.drop.seed = value

    @property
    def dropout_step(self):
        """The training step whose masks the next loss_and_grad draws; each one advances it."""
        return self.drop.step

    @dropout_step.setter
    def dropout_step(self, long long value):
        self.drop.step = value

    cdef void _set_loss_params(self, str loss, dict params) except *:
        """The loss rule's options (taken as given): delta / beta, class_weight,
        label_smoothing, pos_weight; the arrays are kept alive here."""
        param = float(params.get("delta", params.get("beta", 1.0)))
        self.net.pointwise = {"l1": REG_L1, "huber": REG_HUBER}.get(loss, REG_MSE)
        if loss == "smooth_l1":
            # PyTorch: smooth_l1_loss with beta = 0 is l1_loss
            self.net.pointwise = REG_SMOOTH_L1 if param != 0 else REG_L1
        self.net.loss_param = param
        self.net.label_smoothing = float(params.get("label_smoothing", 0.0))
        self._loss_arrays = {k: np.ascontiguousarray(params[k], np.float64)
                             for k in ("class_weight", "pos_weight") if params.get(k) is not None}
        self.net.class_weight = NULL
        self.net.pos_weight = NULL
        if "class_weight" in self._loss_arrays:
            self.net.class_weight = <const double*>cnp.PyArray_DATA(
                self._loss_arrays["class_weight"])
        if "pos_weight" in self._loss_arrays:
            self.net.pos_weight = <const double*>cnp.PyArray_DATA(self._loss_arrays["pos_weight"])

    @property
    def alpha(self):
        """scikit-learn's L2 penalty (its loss rules only)."""
        return self.net.alpha

    @alpha.setter
    def alpha(self, double value):
        self.net.alpha = value

    def offsets(self):
        """(w_off, b_off): where each layer's W and b start in the flat block."""
        return self._w_off.copy(), self._b_off.copy()

    # -- checks and the workspace ---------------------------------------------

    cdef void _reserve(self, Py_ssize_t rows) except *:
        """Grow the workspace to ``rows`` rows (never shrinks; allocation happens only here)."""
        if rows <= self.capacity:
            return
        cdef Py_ssize_t l
        cdef cnp.uintp_t[::1] ptrs = self._act_ptrs
        buffers = [np.empty((rows, int(self._sizes[l])), self.dtype)
                   for l in range(self.net.n_layers + 1)]
        deltas = [np.empty(rows * self.max_width, self.dtype) for _ in range(2)]
        for l in range(1, self.net.n_layers + 1):
            ptrs[l] = <cnp.uintp_t>cnp.PyArray_DATA(<cnp.ndarray>buffers[l])
        cdef cnp.uintp_t[::1] pre_ptrs = self._pre_ptrs
        pre = [np.empty((rows, int(self._sizes[l])), self.dtype) if self._drop_p[l - 1] > 0
               else None for l in range(1, self.net.n_layers)]
        for l in range(1, self.net.n_layers):
            if pre[l - 1] is not None:
                pre_ptrs[l] = <cnp.uintp_t>cnp.PyArray_DATA(<cnp.ndarray>pre[l - 1])
        # NOTE: a pre-activation buffer only for the layers whose backward reads z
        cdef cnp.uintp_t[::1] zptrs = self._z_ptrs
        self._z_buffers = {}
        for l in range(1, self.net.n_layers + 1):
            if activation_needs_z(self.net.act[l - 1]):
                self._z_buffers[l] = np.empty((rows, int(self._sizes[l])), self.dtype)
                zptrs[l] = <cnp.uintp_t>cnp.PyArray_DATA(<cnp.ndarray>self._z_buffers[l])
        self.net.delta0 = <char*>cnp.PyArray_DATA(<cnp.ndarray>deltas[0])
        self.net.delta1 = <char*>cnp.PyArray_DATA(<cnp.ndarray>deltas[1])
        y_gather = (np.empty(rows, np.int64) if self._labels()
                    else np.empty((rows, int(self._sizes[self.net.n_layers])), self.dtype))
        sw_gather = np.empty(rows, self.dtype)
        self._buffers = (buffers, deltas, y_gather, sw_gather, pre)
        self.capacity = rows

    cdef bint _labels(self):
        """y holds int64 class labels (PyTorch's cross-entropy), else float targets."""
        return self.net.loss == LOSS_CROSS_ENTROPY

    cdef void _check_block(self, object block, str name) except *:
        if (not c_array(block, self.typenum, -1)
                or cnp.PyArray_SIZE(<cnp.ndarray>block) < self.n_params):
            raise ValueError(f"`{name}` must be a C-contiguous {self.dtype} block of at least "
                             f"{self.n_params} values")

    cdef tuple _check_state(self, UpdateRule rule, object state):
        """The rule's state blocks (s1, s2, s3), None where the rule keeps none."""
        if state is None:
            state = (None, None, None)
        if not isinstance(state, tuple) or len(state) not in (2, 3):
            raise ValueError("`state` must be a pair or triple (s1, s2[, s3]) of blocks or None")
        if len(state) == 2:
            state = state + (None,)
        cdef int need = rule.stateful
        for i in range(need):
            self._check_block(state[i], f"state[{i}]")
        # NOTE: no generator expression here: Cython's generators are garbage in
        # a reference cycle after each call (tracemalloc sees them grow until gc runs).
        return (state[0] if need >= 1 else None, state[1] if need >= 2 else None,
                state[2] if need >= 3 else None)

    cdef void _check_order(self, object order, Py_ssize_t n) except *:
        """``order`` is None or a permutation-like int64 index vector over n rows."""
        if order is None:
            return
        # NOTE: aligned too -- the epoch reads it as long long*.
        if not c_array(order, cnp.NPY_INT64, 1) or cnp.PyArray_DIM(<cnp.ndarray>order, 0) != n:
            raise ValueError("`order` must be a C-contiguous, aligned int64 array of shape (n,)")
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError("`order` holds an index out of range")

    cdef void _check_rows(self, object x, object y, bint need_y=True) except *:
        # NOTE: aligned too -- the kernels read rows with aligned vector loads.
        if (not c_array(x, self.typenum, 2)
                or cnp.PyArray_DIM(<cnp.ndarray>x, 1) != self.net.sizes[0]):
            raise ValueError(f"`x` must be a C-contiguous, aligned {self.dtype} array of shape "
                             f"(n, {self._sizes[0]})")
        if y is None:
            if need_y:  # NOTE: the kernels would read y through a NULL pointer
                raise ValueError("`y` is required")
            return
        if self._labels():
            if (not c_array(y, cnp.NPY_INT64, 1)
                    or cnp.PyArray_DIM(<cnp.ndarray>y, 0) != cnp.PyArray_DIM(<cnp.ndarray>x, 0)):
                raise ValueError("`y` must be C-contiguous int64 labels of shape (n,)")
        elif (not c_array(y, self.typenum, 2)
                or cnp.PyArray_DIM(<cnp.ndarray>y, 0) != cnp.PyArray_DIM(<cnp.ndarray>x, 0)
                or cnp.PyArray_DIM(<cnp.ndarray>y, 1) != self.net.sizes[self.net.n_layers]):
            raise ValueError(f"`y` must be a C-contiguous {self.dtype} array of shape "
                             f"(n, {self._sizes[self.net.n_layers]})")

    cdef void _check_weights(self, object sample_weight, Py_ssize_t n) except *:
        if sample_weight is None:
            return
        if (not c_array(sample_weight, self.typenum, 1)
                or cnp.PyArray_DIM(<cnp.ndarray>sample_weight, 0) != n):
            raise ValueError(f"`sample_weight` must be a C-contiguous {self.dtype} array of "
                             f"shape ({n},)")

    cdef void _open(self, Call* c, int op, object params, object grads=None,
                    bint with_grads=False) except *:
        """c := a new call of ``op`` on the checked ``params`` (and ``grads``)."""
        memset(c, 0, sizeof(Call))
        c.op = op
        c.n_params = self.n_params
        self._check_block(params, "params")
        c.params = _data(params)
        if with_grads:
            self._check_block(grads, "grads")
            c.grads = _data(grads)

    cdef void _with_rule(self, Call* c, UpdateRule rule, object state) except *:
        """c's update rule and its checked state blocks."""
        s1, s2, s3 = self._check_state(rule, state)
        c.s1 = _data(s1)
        c.s2 = _data(s2)
        c.s3 = _data(s3)
        c.rule = &rule.rule

    cdef Py_ssize_t _with_rows(self, Call* c, object x, object y, object sample_weight=None,
                               bint need_y=True) except -1:
        """c's checked rows (x, y, row weights); returns their count."""
        self._check_rows(x, y, need_y)
        c.n = x.shape[0]
        self._check_weights(sample_weight, c.n)
        c.x = _data(x)
        c.y = _data(y)
        c.sw = _data(sample_weight)
        return c.n

    cdef int _enter(self, Call* c) except -1:
        """Run ``c`` in the core without the GIL; raise for the failing statuses.

        Returns the status that is no error (0, NONFINITE, INTERRUPTED), so
        the methods' one path into the compiled code is this function.
        """
        cdef int status
        if c.op == OP_FORWARD and c.n * c.n_params < FORWARD_NOGIL_WORK:
            status = run_call(&self.net, self.typenum, c)
        else:
            with nogil:
                status = run_call(&self.net, self.typenum, c)
        _raise_for(status)
        return status

    # -- the interface ----------------------------------------------------------

    def forward(self, params, x, out):
        """out := the network's output for x (n, n_in) -> (n, n_out); thread-safe.

        The hidden layers' outputs live in a block of this call only (no
        Python object is allocated), so many threads may run it at once.
        """
        cdef Call c
        self._open(&c, OP_FORWARD, params)
        cdef Py_ssize_t n = self._with_rows(&c, x, None, None, False)
        if (not c_array(out, self.typenum, 2) or cnp.PyArray_DIM(<cnp.ndarray>out, 0) != n
                or cnp.PyArray_DIM(<cnp.ndarray>out, 1) != self.net.sizes[self.net.n_layers]
                or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
            raise ValueError("`out` must be a writeable, C-contiguous, aligned array of the "
                             "output's shape and dtype")
        if _overlap(<cnp.ndarray>x, <cnp.ndarray>out):
            raise ValueError("`out` must not overlap `x`")
        if n == 0:
            return out
        c.out = _data(out)
        self._enter(&c)
        return out

    def evaluate(self, params, x, y):
        """The loss on (x, y), no gradient (scikit-learn's rule: its data term); thread-safe."""
        cdef Call c
        self._open(&c, OP_EVALUATE, params)
        if self._with_rows(&c, x, y) == 0:
            return float("nan") if self.net.mean else 0.0
        self._enter(&c)
        return c.loss

    def loss_and_grad(self, params, x, y, grads, sample_weight=None):
        """grads[:n_params] := d loss / d params on the batch (x, y); returns (status, loss).

        ``x`` (n, n_in); ``y`` (n, n_out) floats, or (n,) int64 labels for
        "cross_entropy"; ``sample_weight`` (n,) or None (see output_loss_rows).
        Status 0, or NONFINITE (the loss or a gradient is not finite; grads
        are then unspecified).
        """
        cdef Call c
        self._open(&c, OP_LOSS_GRAD, params, grads, True)
        cdef Py_ssize_t n = self._with_rows(&c, x, y, sample_weight)
        if n == 0 and self.net.sklearn:
            raise ValueError("`x` must have at least one row")
        self._reserve(n)
        return self._enter(&c), c.loss

    def update(self, params, grads, state, UpdateRule rule):
        """params := one step of ``rule`` over the flat block; ``rule.step`` advances (Adam).

        ``state``: (s1, s2) or (s1, s2, s3) -- SGD's velocity (momentum, or
        scikit-learn's SGD always); Adam's / AdamW's first and second moments;
        RMSprop's square average, momentum buffer and gradient average; None
        entries where the rule keeps no state (see UpdateRule.stateful).
        ``grads`` is clipped in place when the rule clips.
        """
        cdef Call c
        self._open(&c, OP_UPDATE, params, grads, True)
        self._with_rule(&c, rule, state)
        self._enter(&c)

    def epoch(self, params, grads, state, x, y, sample_weight, order, Py_ssize_t batch_size,
              UpdateRule rule):
        """Mini-batches of ``batch_size`` over x in ``order`` (int64 indices, or None), each
        a loss_and_grad and an update, in one nogil call; returns (status, loss_sum, batches).

        loss_sum is the sum of batch loss x batch rows (PyTorch's rule with
        weights: x the batch's weight sum) over the applied batches; the
        batches after a failing one are not run.  An exception raised by a
        signal handler during the epoch propagates unchanged, with the
        parameters of the batches applied before it (``batches_done``).
        """
        cdef Call c
        self._open(&c, OP_EPOCH, params, grads, True)
        self._with_rule(&c, rule, state)
        cdef Py_ssize_t n = self._with_rows(&c, x, y, sample_weight)
        if batch_size < 1:
            raise ValueError("`batch_size` must be >= 1")
        self._check_order(order, n)
        self._reserve(min(batch_size, max(n, 1)))
        buffers, _, y_batch, sw_batch, _ = self._buffers
        c.order = <const long long*>_data(order)
        c.batch_size = batch_size
        # NOTE: the row size from the shape, never y.strides[0]: NumPy calls a
        # one-row array C-contiguous whatever its row stride (even 0).
        c.y_row_bytes = (sizeof(long long) if self._labels()
                         else self._sizes[self.net.n_layers] * y.itemsize)
        c.x_batch = _data(buffers[0])
        c.y_batch = _data(y_batch)
        c.sw_batch = _data(sw_batch)
        cdef int status
        with nogil:
            status = run_call(&self.net, self.typenum, &c)
        self.batches_done = c.done
        reraise_pending(&c.pending)
        _raise_for(status)
        return status, c.loss, c.done

    def train_step_fast(self, params, grads, velocity, x, y, lr, momentum, weight_decay,
                        nesterov):
        """PyTorch's SGD step on (x, y) when every argument is already in final form, else None.

        The check costs a few C-API macros instead of bpcore.nn's general
        validation, which on a small network would cost more than the step.
        Returns (status, loss) as loss_and_grad; updates only when status is 0.
        """
        if not (type(lr) is float and type(momentum) is float and type(weight_decay) is float
                and type(nesterov) is bool):
            return None
        cdef double lr_ = lr, mu = momentum, wd = weight_decay
        if not (0 <= lr_ < INFINITY and 0 <= mu < INFINITY and 0 <= wd < INFINITY
                and (mu != 0 or not nesterov) and (mu == 0 or velocity is not None)):
            return None
        # x (and float y) in final form: the input policy's one test (bpcore/_policy.pxd)
        if plain_array(x) != self.typenum or self.net.sklearn:
            return None
        cdef cnp.ndarray xa = <cnp.ndarray>x
        if (cnp.PyArray_NDIM(xa) != 2 or cnp.PyArray_DIM(xa, 1) != self.net.sizes[0]
                or cnp.PyArray_DIM(xa, 0) < 1):
            return None
        cdef Py_ssize_t n = cnp.PyArray_DIM(xa, 0), i
        cdef const long long* labels
        cdef cnp.ndarray ya
        if self._labels():
            # int64 labels (no float data, so not plain_array's test): the core's
            # contract, on an exact ndarray as the other fast-path arguments
            if not (cnp.PyArray_CheckExact(y) and c_array(y, cnp.NPY_INT64, 1)):
                return None
            ya = <cnp.ndarray>y
            if cnp.PyArray_DIM(ya, 0) != n:
                return None
            labels = <const long long*>cnp.PyArray_DATA(ya)
            for i in range(n):
                if labels[i] < 0 or labels[i] >= self.net.sizes[self.net.n_layers]:
                    return None
        else:
            if plain_array(y) != self.typenum:
                return None
            ya = <cnp.ndarray>y
            if (cnp.PyArray_NDIM(ya) != 2 or cnp.PyArray_DIM(ya, 0) != n
                    or cnp.PyArray_DIM(ya, 1) != self.net.sizes[self.net.n_layers]):
                return None
            if self.net.loss == LOSS_BCE and not ((ya >= 0) & (ya <= 1)).all():
                return None  # targets outside [0, 1]: the general path says so
        self._reserve(n)
        cdef Update rule
        memset(&rule, 0, sizeof(Update))
        rule.kind = UPD_SGD
        rule.lr = lr_
        rule.momentum = mu
        rule.weight_decay = wd
        rule.nesterov = nesterov
        rule.weights_only = False
        cdef Call c
        memset(&c, 0, sizeof(c))
        c.op = OP_STEP
        c.params = cnp.PyArray_DATA(<cnp.ndarray>params)
        c.grads = cnp.PyArray_DATA(<cnp.ndarray>grads)
        c.s1 = cnp.PyArray_DATA(<cnp.ndarray>velocity) if mu != 0 else NULL
        c.x = cnp.PyArray_DATA(xa)
        c.y = cnp.PyArray_DATA(ya)
        c.n = n
        c.n_params = self.n_params
        c.rule = &rule
        return self._enter(&c), c.loss

    # -- the step cut at layer boundaries (bpcore.distributed's overlap) --------

    def loss_and_grad_begin(self, params, x, y):
        """Forward and loss on (x, y), keeping what backward_layer needs; returns (status, loss).

        Follow with ``backward_layer(params, x, grads, l)`` for l = L-1 down
        to 0 on the same x and params: together they equal ``loss_and_grad``
        bitwise.
        """
        cdef Call c
        self._open(&c, OP_BEGIN, params)
        cdef Py_ssize_t n = self._with_rows(&c, x, y)
        if n < 1:
            raise ValueError("`x` must have at least 1 row")
        self._reserve(n)
        cdef int status = self._enter(&c)
        self._pending_rows = n if status == BP_OK else 0
        self._pending_sw_sum = c.sw_sum
        self._next_layer = self.net.n_layers - 1
        return status, c.loss

    def backward_layer(self, params, x, grads, int layer):
        """grads' W_layer and b_layer := their gradient; returns the status (0 or non-finite)."""
        cdef Call c
        self._open(&c, OP_BACKWARD, params, grads, True)
        cdef Py_ssize_t n = self._with_rows(&c, x, None, None, False)
        if self._pending_rows == 0 or n != self._pending_rows:
            raise ValueError("backward_layer must follow loss_and_grad_begin on the same `x`")
        if layer != self._next_layer:
            raise ValueError(f"backward_layer must run layers from the last down; expected "
                             f"layer {self._next_layer}, got {layer}")
        c.sw_sum = self._pending_sw_sum
        c.layer = layer
        cdef int status = self._enter(&c)
        self._next_layer = layer - 1
        if status != BP_OK or layer == 0:
            self._pending_rows = 0
        return status


cdef object _raise_for(int status):
    """Raise for the statuses that are bugs or resource failures; return the others."""
    if status == BP_ENOMEM:
        raise MemoryError("bpcore could not allocate the GEMM's packing buffers")
    if status not in (BP_OK, STATUS_NONFINITE, STATUS_INTERRUPTED):
        raise RuntimeError(f"bpcore internal error: status {status}")
    return None
