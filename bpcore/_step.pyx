# Design:
#
# The fused training step and the epoch loop of bpcore's MLP.
#
# A `Trainer` holds what does not change between calls -- layer sizes,
# activations, the loss -- and a workspace sized for the largest batch seen
# (activations, two delta buffers, gather buffers for shuffled batches).  It
# holds no parameters: the parameters, their gradients and the optimizer
# state are flat blocks owned by the Python model (bpcore.nn.MLP), laid out
# layer by layer as W_l (n_in x n_out, row-major) then b_l (n_out,), and
# passed in on every call.  The same step therefore serves one model, a
# data-parallel rank (whose gradient block carries extra slots for a single
# Allreduce) and scikit-learn-style coefs_/intercepts_ (views of one block).
#
# One call is one nogil stretch that allocates nothing:
#   forward   z_l = a_{l-1} @ W_l + b_l and a_l = act(z_l), bias and activation
#             applied by the GEMM's store (epilogue);
#   loss      value and d loss / d output in one pass (softmax + cross-entropy
#             fused; MSE through the output activation's derivative);
#   backward  delta_{l-1} = (delta_l @ W_l.T) * act'(a_{l-1}), the derivative
#             applied by the GEMM's store, W_l.T read through strides; no
#             product for the first layer's input;
#   update    one SGD pass over the whole flat block (torch.optim.SGD's
#             rounding, see optim.h).
#
# NOTE: non-finite values are caught before the update: a non-finite loss
# stops the step before backward, and the whole gradient block is scanned
# (exponent bits, vectorised) before the optimizer touches the parameters.
# On failure nothing is updated.
from cython cimport floating
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport INFINITY, exp, isfinite, log, pow, sqrt
from libc.string cimport memcpy, memset

import numpy as np
cimport numpy as cnp

from bpcore import _validate as V
from bpcore._gemm cimport (gemm, BP_OK, BP_ENOMEM, BP_EPI_NONE, BP_EPI_BIAS,
                           BP_EPI_BIAS_RELU, BP_EPI_BIAS_SIGMOID, BP_EPI_BIAS_TANH,
                           BP_EPI_MUL_DRELU, BP_EPI_MUL_DSIGMOID, BP_EPI_MUL_DTANH,
                           bp_epilogue)
from bpcore._kernels cimport (ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_TANH,
                              activation_backward, softmax_rows, column_sums,
                              mse_forward_backward, softmax_cross_entropy_rows, sigmoid_bce)

cnp.import_array()

from bpcore._kernels cimport (
    bp_sgd_f32, bp_sgd_f64, bp_optim_select, bp_adam_f32, bp_adam_f64,
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

cdef enum:
    OPT_SGD = 0
    OPT_ADAM = 1

cdef enum:
    OPT_SK_SGD = 0
    OPT_SK_ADAM = 1

# Status codes beyond the GEMM's BP_OK / BP_ENOMEM.
cdef enum:
    STATUS_NONFINITE = 100
    STATUS_INTERRUPTED = 101

ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "sigmoid": ACT_SIGMOID,
               "tanh": ACT_TANH, "softmax": ACT_SOFTMAX, "exp": ACT_EXP}
LOSSES = {"mse": LOSS_MSE, "cross_entropy": LOSS_CROSS_ENTROPY,
          "sk_squared_error": LOSS_SK_SQUARED, "sk_log_loss": LOSS_SK_LOG,
          "sk_binary_log_loss": LOSS_SK_BINARY_LOG, "sk_poisson": LOSS_SK_POISSON,
          "binary_cross_entropy": LOSS_BCE}
OPTIMIZERS = {"sgd": OPT_SGD, "adam": OPT_ADAM}
SK_SOLVERS = {"sgd": OPT_SK_SGD, "adam": OPT_SK_ADAM}
NONFINITE = STATUS_NONFINITE
INTERRUPTED = STATUS_INTERRUPTED

# How many batches run between two looks at Ctrl-C (each look takes the GIL).
cdef Py_ssize_t SIGNAL_CHECK_EVERY = 16

bp_optim_select(1)


cdef struct Net:
    int n_layers
    const Py_ssize_t* sizes      # n_layers + 1 widths, input first
    const int* act               # activation of each layer's output
    const Py_ssize_t* w_off      # offset of W_l in the parameter block
    const Py_ssize_t* b_off      # offset of b_l
    int loss
    double mse_factor            # 1 ("mean", "sum") or 0.5 ("half_*")
    bint mean                    # the loss divides by the sample (element) count
    char** acts                  # acts[1..n_layers]: capacity x sizes[l] buffers
    char* delta0                 # two capacity x max width buffers, used in turn
    char* delta1


# Products below this many multiply-adds (~20 us on one core) run on one
# thread: forking and joining OpenMP threads costs more than the work saved
# (measured: a 32-row digits batch took 4x longer at 2 threads).
cdef Py_ssize_t SMALL_PRODUCT = 1 << 20


cdef inline int _threads_for(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The GEMM's num_threads argument: 1 for a small product, else 0 (the module's setting)."""
    return 1 if m * n * k < SMALL_PRODUCT else 0


cdef inline bp_epilogue _forward_epilogue(int act) noexcept nogil:
    if act == ACT_RELU:
        return BP_EPI_BIAS_RELU
    if act == ACT_SIGMOID:
        return BP_EPI_BIAS_SIGMOID
    if act == ACT_TANH:
        return BP_EPI_BIAS_TANH
    return BP_EPI_BIAS


cdef inline bp_epilogue _backward_epilogue(int act) noexcept nogil:
    if act == ACT_RELU:
        return BP_EPI_MUL_DRELU
    if act == ACT_SIGMOID:
        return BP_EPI_MUL_DSIGMOID
    if act == ACT_TANH:
        return BP_EPI_MUL_DTANH
    return BP_EPI_NONE


# ---------------------------------------------------------------------------
# Kernels of the step (nogil, on the flat blocks)
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


cdef int forward_rows(const Net* net, const floating* params, const floating* x,
                      Py_ssize_t n, floating** acts, bint logits) noexcept nogil:
    """acts[l] := a_l for l = 1..n_layers from x (n rows).

    ``logits``: leave the output before its softmax or sigmoid (the losses
    that take logits apply them themselves, stably).
    """
    cdef int l, status, act
    cdef const floating* a_prev = x
    cdef Py_ssize_t n_in, n_out, i
    cdef floating* out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        act = net.act[l]
        if logits and l == net.n_layers - 1 and act == ACT_SIGMOID:
            act = ACT_IDENTITY
        status = gemm(n, n_out, n_in, <floating>1, a_prev, n_in, 1,
                      params + net.w_off[l], n_out, 1, <floating>0, acts[l + 1], n_out, 1,
                      _forward_epilogue(act), params + net.b_off[l], NULL, 0,
                      _threads_for(n, n_out, n_in))
        if status != BP_OK:
            return status
        a_prev = acts[l + 1]
    if net.act[net.n_layers - 1] == ACT_SOFTMAX and not logits:
        softmax_rows(acts[net.n_layers], acts[net.n_layers], n, net.sizes[net.n_layers])
    elif net.act[net.n_layers - 1] == ACT_EXP:
        out = acts[net.n_layers]
        for i in range(n * net.sizes[net.n_layers]):
            out[i] = exp(out[i])
    return BP_OK


cdef inline bint _takes_logits(int loss) noexcept nogil:
    return loss == LOSS_CROSS_ENTROPY or loss == LOSS_BCE


cdef int loss_and_grad_rows(const Net* net, const floating* params, const floating* x,
                            const void* y, Py_ssize_t n, floating* grads,
                            double* loss_out) noexcept nogil:
    """``loss_and_grad_rows_w`` with unit weights."""
    return loss_and_grad_rows_w(net, params, x, y, NULL, n, grads, loss_out)


cdef inline double _unit_weight(const floating* sw, Py_ssize_t i, double wmax) noexcept nogil:
    """w_i, or w_i / wmax when the weights had to be rescaled (wmax != 0)."""
    return sw[i] / wmax if wmax != 0 else sw[i]


cdef double output_loss_rows(const Net* net, const floating* out, const void* y,
                             const floating* sw, Py_ssize_t n,
                             floating* delta) noexcept nogil:
    """The loss on n output rows and delta := its gradient w.r.t. the output (or logits).

    Unweighted (``sw`` NULL): the mean / sum of the Trainer's reduction.  With
    weights: sum_i w_i * loss_i, divided by sum_i w_i for "mean", so integer
    weights equal repeated rows and a zero weight equals a dropped row.
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
            # twin does); sw_scale below applies the same 1 / max to each w_i.
            for i in range(n):
                wmax = max(wmax, <double>sw[i])
            norm = 0
            for i in range(n):
                norm += sw[i] / wmax
    if net.loss == LOSS_CROSS_ENTROPY:
        if sw == NULL:
            scale = 1.0 / n if net.mean else 1.0
            return scale * softmax_cross_entropy_rows(out, <const long long*>y, delta, n,
                                                      n_out, scale)
        for i in range(n):
            scale = _unit_weight(sw, i, wmax) / norm
            total += scale * softmax_cross_entropy_rows(
                out + i * n_out, <const long long*>y + i, delta + i * n_out, 1, n_out, scale)
        return total
    target = <const floating*>y
    if net.loss == LOSS_BCE:
        if sw == NULL:
            scale = 1.0 / count if net.mean else 1.0
            return scale * sigmoid_bce(out, target, delta, count, scale)
        for i in range(n):
            scale = _unit_weight(sw, i, wmax) / (norm * n_out) if net.mean else sw[i]
            total += scale * sigmoid_bce(out + i * n_out, target + i * n_out,
                                         delta + i * n_out, n_out, scale)
        return total
    if sw == NULL:
        scale = net.mse_factor / count if net.mean else net.mse_factor
        return mse_forward_backward(out, target, delta, count, scale)
    for i in range(n):
        scale = (net.mse_factor * _unit_weight(sw, i, wmax) / (norm * n_out) if net.mean
                 else net.mse_factor * sw[i])
        total += mse_forward_backward(out + i * n_out, target + i * n_out, delta + i * n_out,
                                      n_out, scale)
    return total


cdef int loss_and_grad_rows_w(const Net* net, const floating* params, const floating* x,
                              const void* y, const floating* sw, Py_ssize_t n,
                              floating* grads, double* loss_out) noexcept nogil:
    """Forward, loss and backward on n rows: grads := d loss / d params; *loss_out := loss.

    ``y`` is float targets (n x n_out) for MSE and binary cross-entropy or
    int64 labels (n,) for cross-entropy; ``sw`` per-row weights or NULL (see
    output_loss_rows).  Returns BP_OK, a GEMM error, or STATUS_NONFINITE when
    the loss or a gradient is not finite (grads are then unspecified).
    """
    cdef int l, status
    status = output_delta_rows_w(net, params, x, y, sw, n, loss_out)
    if status != BP_OK:
        return status
    for l in range(net.n_layers - 1, -1, -1):
        status = backward_layer_rows(net, params, x, n, grads, l)
        if status != BP_OK:
            return status
    return BP_OK


cdef bint all_finite(const floating* x, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """No inf or NaN in x[start:stop].

    NOTE: tested on the exponent bits (all ones <=> inf or NaN) and OR-reduced
    as integers, which the compiler may vectorise; a floating-point sum could
    not be reordered without -ffast-math.
    """
    cdef Py_ssize_t i
    cdef const unsigned int* u32
    cdef const unsigned long long* u64
    cdef unsigned int bad32 = 0
    cdef unsigned long long bad64 = 0
    if floating is float:
        u32 = <const unsigned int*>(x + start)
        for i in range(stop - start):
            bad32 |= (u32[i] & 0x7f800000u) == 0x7f800000u
        return bad32 == 0
    else:
        u64 = <const unsigned long long*>(x + start)
        for i in range(stop - start):
            bad64 |= (u64[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull
        return bad64 == 0


# ---------------------------------------------------------------------------
# The step's two pieces: output delta, then one layer of backward at a time
# ---------------------------------------------------------------------------
#
# NOTE: loss_and_grad_rows is exactly output_delta_rows followed by
# backward_layer_rows for l = L-1 .. 0; the distributed fit calls the pieces
# itself to start one layer's reduction while the next layer's backward runs.

cdef int output_delta_rows(const Net* net, const floating* params, const floating* x,
                           const void* y, Py_ssize_t n, double* loss_out) noexcept nogil:
    """Forward and loss on n rows; d loss / d output (pre-activation) into delta0."""
    return output_delta_rows_w(net, params, x, y, NULL, n, loss_out)


cdef int output_delta_rows_w(const Net* net, const floating* params, const floating* x,
                             const void* y, const floating* sw, Py_ssize_t n,
                             double* loss_out) noexcept nogil:
    """``output_delta_rows`` with row weights ``sw`` (NULL: none; see output_loss_rows)."""
    cdef int L = net.n_layers, status
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_out = net.sizes[L], count
    cdef floating* delta = <floating*>net.delta0
    cdef floating* out
    cdef double scale, loss
    cdef int act_out = net.act[L - 1]
    status = forward_rows(net, params, x, n, acts, _takes_logits(net.loss))
    if status != BP_OK:
        return status
    out = acts[L]
    loss = output_loss_rows(net, out, y, sw, n, delta)
    if not _takes_logits(net.loss):
        count = n * n_out
        if act_out == ACT_SOFTMAX:
            softmax_backward_rows(out, delta, delta, n, n_out)
        elif act_out != ACT_IDENTITY:
            activation_backward(act_out, out, delta, delta, count)
    loss_out[0] = loss
    if not isfinite(loss):
        return STATUS_NONFINITE
    return BP_OK


cdef int backward_layer_rows(const Net* net, const floating* params, const floating* x,
                             Py_ssize_t n, floating* grads, int l) noexcept nogil:
    """Layer l's gradient (and delta_{l-1}) from delta_l; layers must come L-1 down to 0.

    delta_l sits in delta0 when L-1-l is even, else in delta1 (the buffers
    alternate as in loss_and_grad_rows).
    """
    cdef int L = net.n_layers, status
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_in = net.sizes[l], n_out = net.sizes[l + 1]
    cdef bint even = (L - 1 - l) % 2 == 0
    cdef floating* delta = <floating*>(net.delta0 if even else net.delta1)
    cdef floating* delta_next = <floating*>(net.delta1 if even else net.delta0)
    cdef const floating* a_prev = x if l == 0 else acts[l]
    if l > 0:
        status = gemm(n, n_in, n_out, <floating>1, delta, n_out, 1,
                      params + net.w_off[l], 1, n_out, <floating>0, delta_next, n_in, 1,
                      _backward_epilogue(net.act[l - 1]), NULL, acts[l], n_in,
                      _threads_for(n, n_in, n_out))
        if status != BP_OK:
            return status
    status = gemm(n_in, n_out, n, <floating>1, a_prev, 1, n_in, delta, n_out, 1,
                  <floating>0, grads + net.w_off[l], n_out, 1, BP_EPI_NONE, NULL, NULL, 0,
                  _threads_for(n_in, n_out, n))
    if status != BP_OK:
        return status
    column_sums(delta, n, n_out, grads + net.b_off[l])
    if not all_finite(grads, net.w_off[l], net.b_off[l] + n_out):
        return STATUS_NONFINITE
    return BP_OK


cdef inline void sgd_block(floating* params, const floating* grads, floating* velocity,
                           Py_ssize_t n, double lr, double momentum, double weight_decay,
                           int nesterov) noexcept nogil:
    if floating is float:
        bp_sgd_f32(params, grads, velocity, n, <float>lr, <float>momentum,
                   <float>weight_decay, nesterov)
    else:
        bp_sgd_f64(params, grads, velocity, n, lr, momentum, weight_decay, nesterov)


cdef int train_epoch_rows(const Net* net, floating* params, floating* grads,
                          floating* velocity, Py_ssize_t n_params,
                          const floating* x, const void* y, const long long* order,
                          Py_ssize_t n_samples, Py_ssize_t batch_size,
                          floating* x_batch, void* y_batch, Py_ssize_t y_row_bytes,
                          double lr, double momentum, double weight_decay, int nesterov,
                          double* loss_sum, Py_ssize_t* batches_done,
                          Pending* pending) noexcept nogil:
    """Mini-batch SGD over the rows of x in ``order`` (NULL: in place, no gathering).

    *loss_sum := sum of batch loss * batch size; *batches_done counts the
    batches whose update was applied.  Stops at the first failing batch.
    """
    cdef Py_ssize_t start, rows, r, src, n_in = net.sizes[0]
    cdef Py_ssize_t x_row_bytes = n_in * sizeof(floating)
    cdef const floating* xb
    cdef const void* yb
    cdef double loss
    cdef int status
    start = 0
    while start < n_samples:
        rows = min(batch_size, n_samples - start)
        if order == NULL:
            xb = x + start * n_in
            yb = <const char*>y + start * y_row_bytes
        else:
            for r in range(rows):
                src = order[start + r]
                memcpy(x_batch + r * n_in, x + src * n_in, x_row_bytes)
                memcpy(<char*>y_batch + r * y_row_bytes, <const char*>y + src * y_row_bytes,
                       y_row_bytes)
            xb = x_batch
            yb = y_batch
        status = loss_and_grad_rows(net, params, xb, yb, rows, grads, &loss)
        if status != BP_OK:
            return status
        sgd_block(params, grads, velocity, n_params, lr, momentum, weight_decay, nesterov)
        loss_sum[0] += loss * rows
        batches_done[0] += 1
        if batches_done[0] % SIGNAL_CHECK_EVERY == 0:
            if poll_signals(pending) != BP_OK:
                return STATUS_INTERRUPTED
        start += rows
    return BP_OK


# ---------------------------------------------------------------------------
# The general update and epoch (bpcore.MLP with Adam, weights-only decay or
# sample weights): PyTorch's SGD or Adam over the flat block
# ---------------------------------------------------------------------------

cdef struct Optim:
    int kind                     # OPT_SGD or OPT_ADAM
    double lr, momentum, weight_decay
    int nesterov
    double beta1, beta2, eps
    long long step               # Adam's steps taken, advanced before each update
    bint weights_only            # weight decay on the W_l only (not the biases)


cdef void _update_range(Optim* opt, floating* params, const floating* grads, floating* s1,
                        floating* s2, Py_ssize_t start, Py_ssize_t n,
                        double weight_decay) noexcept nogil:
    if opt.kind == OPT_SGD:
        sgd_block(params + start, grads + start, s1 + start if s1 != NULL else NULL, n,
                  opt.lr, opt.momentum, weight_decay, opt.nesterov)
    elif floating is float:
        bp_adam_f32(params + start, grads + start, s1 + start, s2 + start, n, opt.lr,
                    opt.beta1, opt.beta2, opt.eps, weight_decay, opt.step)
    else:
        bp_adam_f64(params + start, grads + start, s1 + start, s2 + start, n, opt.lr,
                    opt.beta1, opt.beta2, opt.eps, weight_decay, opt.step)


cdef void apply_update(const Net* net, Optim* opt, floating* params, const floating* grads,
                       floating* s1, floating* s2, Py_ssize_t n_params) noexcept nogil:
    """params := one optimizer step over the flat block (state s1 = velocity or m, s2 = v)."""
    cdef int l
    cdef Py_ssize_t w_size
    if opt.kind == OPT_ADAM:
        opt.step += 1
    if not opt.weights_only or opt.weight_decay == 0:
        _update_range(opt, params, grads, s1, s2, 0, n_params, opt.weight_decay)
        return
    for l in range(net.n_layers):
        w_size = net.sizes[l] * net.sizes[l + 1]
        _update_range(opt, params, grads, s1, s2, net.w_off[l], w_size, opt.weight_decay)
        _update_range(opt, params, grads, s1, s2, net.b_off[l], net.sizes[l + 1], 0.0)


cdef int train_epoch_rows_opt(const Net* net, floating* params, floating* grads,
                              floating* s1, floating* s2, Py_ssize_t n_params,
                              const floating* x, const void* y, const floating* sw,
                              const long long* order, Py_ssize_t n_samples,
                              Py_ssize_t batch_size, floating* x_batch, void* y_batch,
                              floating* sw_batch, Py_ssize_t y_row_bytes, Optim* opt,
                              double* loss_sum, Py_ssize_t* batches_done,
                              Pending* pending) noexcept nogil:
    """``train_epoch_rows`` with any optimizer of ``Optim`` and optional row weights.

    *loss_sum := sum of batch loss * batch rows (batch weight sum with weights).
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
        status = loss_and_grad_rows_w(net, params, xb, yb, swb, rows, grads, &loss)
        if status != BP_OK:
            return status
        apply_update(net, opt, params, grads, s1, s2, n_params)
        if swb == NULL:
            weight = rows
        else:
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
# scikit-learn's conventions, for bpcore.sklearn: the loss, gradient and
# updates of sklearn.neural_network's MLP, formula for formula
# ---------------------------------------------------------------------------
#
# scikit-learn's MLP differs from the step above in three ways, all kept:
#   * the output delta is (output - y) * sample_weight for every loss (each
#     output activation is its loss's canonical link), and the gradient is
#     (a.T @ delta + alpha * W) / sw_sum, sw_sum = the batch's weight sum (its
#     row count without weights) -- so for multi-output squared error the
#     gradient is n_out times that of the reported loss, as in scikit-learn;
#   * the reported loss is computed from the output probabilities clipped to
#     [eps, 1 - eps], plus 0.5 * alpha * sum ||W||^2 / sw_sum (no intercepts);
#   * its optimizers (optim.h: bp_sk_sgd_*, bp_sk_adam_*).

cdef struct SkOptim:
    int kind                     # OPT_SK_SGD or OPT_SK_ADAM
    double lr                    # SGD's rate, Adam's learning_rate_init
    double momentum
    int nesterov
    double beta1, beta2, eps
    long long t                  # Adam's step count, advanced before each update


cdef double sk_data_loss(int loss, const floating* out, const floating* y,
                         const floating* sw, Py_ssize_t n, Py_ssize_t n_out,
                         double sw_sum) noexcept nogil:
    """The loss term of scikit-learn's LOSS_FUNCTIONS: weighted average over rows.

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


cdef int sk_loss_and_grad_rows(const Net* net, const floating* params, const floating* x,
                               const floating* y, const floating* sw, Py_ssize_t n,
                               double alpha, floating* grads,
                               double* loss_out) noexcept nogil:
    """scikit-learn's _backprop on n rows: grads := its gradient, *loss_out := its loss.

    ``sw`` may be NULL (unit weights).  Returns BP_OK, a GEMM error, or
    STATUS_NONFINITE.
    """
    cdef int L = net.n_layers, l, status
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_out = net.sizes[L], n_in, i, j, k, size
    cdef floating* delta = <floating*>net.delta0
    cdef floating* delta_next = <floating*>net.delta1
    cdef floating* swap
    cdef floating* gw
    cdef floating* gb
    cdef const floating* w
    cdef const floating* a_prev
    cdef const floating* out
    cdef floating d, alpha_t = <floating>alpha, sw_t
    cdef double sw_sum = 0, squares = 0, loss
    status = forward_rows(net, params, x, n, acts, False)
    if status != BP_OK:
        return status
    out = acts[L]
    if sw == NULL:
        sw_sum = n
    else:
        for i in range(n):
            sw_sum += sw[i]
    sw_t = <floating>sw_sum
    loss = sk_data_loss(net.loss, out, y, sw, n, n_out, sw_sum)
    for i in range(n):
        for j in range(n_out):
            d = out[i * n_out + j] - y[i * n_out + j]
            if sw != NULL:
                d = d * sw[i]
            delta[i * n_out + j] = d
    for l in range(L):
        squares += sum_of_squares(params + net.w_off[l], net.sizes[l] * net.sizes[l + 1])
    loss += (0.5 * alpha) * squares / sw_sum
    loss_out[0] = loss
    if not isfinite(loss):
        return STATUS_NONFINITE
    for l in range(L - 1, -1, -1):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        a_prev = x if l == 0 else acts[l]
        if l > 0:
            status = gemm(n, n_in, n_out, <floating>1, delta, n_out, 1,
                          params + net.w_off[l], 1, n_out, <floating>0, delta_next, n_in, 1,
                          _backward_epilogue(net.act[l - 1]), NULL, acts[l], n_in,
                          _threads_for(n, n_in, n_out))
            if status != BP_OK:
                return status
        gw = grads + net.w_off[l]
        status = gemm(n_in, n_out, n, <floating>1, a_prev, 1, n_in, delta, n_out, 1,
                      <floating>0, gw, n_out, 1, BP_EPI_NONE, NULL, NULL, 0,
                      _threads_for(n_in, n_out, n))
        if status != BP_OK:
            return status
        # (a.T @ delta + alpha * W) / sw_sum, rounded step by step as scikit-learn does.
        w = params + net.w_off[l]
        size = n_in * n_out
        for k in range(size):
            gw[k] = (gw[k] + alpha_t * w[k]) / sw_t
        gb = grads + net.b_off[l]
        column_sums(delta, n, n_out, gb)
        for j in range(n_out):
            gb[j] = gb[j] / sw_t
            if not isfinite(gb[j]):
                return STATUS_NONFINITE
        swap = delta
        delta = delta_next
        delta_next = swap
    return BP_OK


cdef void sk_update(SkOptim* opt, floating* params, const floating* grads, floating* s1,
                    floating* s2, Py_ssize_t n) noexcept nogil:
    """One update of scikit-learn's SGDOptimizer or AdamOptimizer over the flat block."""
    cdef double lr_t
    if opt.kind == OPT_SK_SGD:
        if floating is float:
            bp_sk_sgd_f32(params, grads, s1, n, <float>opt.lr, <float>opt.momentum,
                          opt.nesterov)
        else:
            bp_sk_sgd_f64(params, grads, s1, n, opt.lr, opt.momentum, opt.nesterov)
        return
    opt.t += 1
    # NOTE: the step size in double, as scikit-learn computes learning_rate.
    lr_t = opt.lr * sqrt(1 - pow(opt.beta2, <double>opt.t)) / (1 - pow(opt.beta1, <double>opt.t))
    if floating is float:
        bp_sk_adam_f32(params, grads, s1, s2, n, <float>(-lr_t), <float>opt.beta1,
                       <float>(1 - opt.beta1), <float>opt.beta2, <float>(1 - opt.beta2),
                       <float>opt.eps)
    else:
        bp_sk_adam_f64(params, grads, s1, s2, n, -lr_t, opt.beta1, 1 - opt.beta1, opt.beta2,
                       1 - opt.beta2, opt.eps)


cdef int sk_train_epoch_rows(const Net* net, floating* params, floating* grads,
                             floating* s1, floating* s2, Py_ssize_t n_params,
                             const floating* x, const floating* y, const floating* sw,
                             const long long* order, Py_ssize_t n_samples,
                             Py_ssize_t batch_size, floating* x_batch, floating* y_batch,
                             floating* sw_batch, double alpha, SkOptim* opt,
                             double* loss_sum, Py_ssize_t* batches_done,
                             Pending* pending) noexcept nogil:
    """One epoch of scikit-learn's _fit_stochastic inner loop over x in ``order`` (or in place).

    *loss_sum := sum of batch loss * batch rows over the applied batches.
    """
    cdef Py_ssize_t start, rows, r, src, n_in = net.sizes[0], n_out = net.sizes[net.n_layers]
    cdef const floating* xb
    cdef const floating* yb
    cdef const floating* swb
    cdef double loss
    cdef int status
    start = 0
    while start < n_samples:
        rows = min(batch_size, n_samples - start)
        if order == NULL:
            xb = x + start * n_in
            yb = y + start * n_out
            swb = sw + start if sw != NULL else NULL
        else:
            for r in range(rows):
                src = order[start + r]
                memcpy(x_batch + r * n_in, x + src * n_in, n_in * sizeof(floating))
                memcpy(y_batch + r * n_out, y + src * n_out, n_out * sizeof(floating))
                if sw != NULL:
                    sw_batch[r] = sw[src]
            xb = x_batch
            yb = y_batch
            swb = sw_batch if sw != NULL else NULL
        status = sk_loss_and_grad_rows(net, params, xb, yb, swb, rows, alpha, grads, &loss)
        if status != BP_OK:
            return status
        sk_update(opt, params, grads, s1, s2, n_params)
        loss_sum[0] += loss * rows
        batches_done[0] += 1
        if batches_done[0] % SIGNAL_CHECK_EVERY == 0:
            if poll_signals(pending) != BP_OK:
                return STATUS_INTERRUPTED
        start += rows
    return BP_OK


# ---------------------------------------------------------------------------
# The Python face: a Trainer per model, called by bpcore.nn.MLP
# ---------------------------------------------------------------------------

cdef class Trainer:
    """Shapes, activations, loss and workspace of one MLP (see the module's Design note).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first: (n_in, h_1, ..., n_out).
    activations : sequence of str
        One per layer (the last is the output activation).
    loss : {"mse", "cross_entropy"}
    reduction : str
        "mean", "sum", "half_sum", "half_mean" (MSE) or "mean", "sum".
    dtype : numpy dtype
        float32 or float64.

    All arrays passed to the methods are checked by bpcore.nn; the methods
    check only what would make the kernels read or write out of bounds.
    """
    cdef Net net
    cdef readonly object dtype
    cdef readonly Py_ssize_t n_params
    cdef readonly Py_ssize_t capacity
    cdef int typenum
    cdef object _sizes, _acts, _w_off, _b_off, _buffers, _act_ptrs
    cdef Py_ssize_t max_width
    cdef Py_ssize_t _pending_rows      # rows of the step cut by loss_and_grad_begin (0: none)
    cdef readonly Py_ssize_t batches_done  # batches applied by the last epoch call
    cdef int _next_layer

    def __init__(self, sizes, activations, loss, reduction, dtype):
        self.dtype = np.dtype(dtype)
        self.typenum = cnp.NPY_FLOAT if self.dtype == np.float32 else cnp.NPY_DOUBLE
        self._sizes = np.ascontiguousarray(sizes, dtype=np.intp)
        self._acts = np.ascontiguousarray([ACTIVATIONS[a] for a in activations], dtype=np.intc)
        n_layers = len(self._sizes) - 1
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
        self.net.w_off = <const Py_ssize_t*>cnp.PyArray_DATA(self._w_off)
        self.net.b_off = <const Py_ssize_t*>cnp.PyArray_DATA(self._b_off)
        self.net.loss = LOSSES[loss]
        self.net.mse_factor = 0.5 if reduction.startswith("half") else 1.0
        self.net.mean = reduction.endswith("mean")
        self._act_ptrs = np.zeros(n_layers + 1, np.uintp)
        self.net.acts = <char**>cnp.PyArray_DATA(self._act_ptrs)
        self.capacity = 0
        self._buffers = None

    def offsets(self):
        """(w_off, b_off): where each layer's W and b start in the flat block."""
        return self._w_off.copy(), self._b_off.copy()

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
        self.net.delta0 = <char*>cnp.PyArray_DATA(<cnp.ndarray>deltas[0])
        self.net.delta1 = <char*>cnp.PyArray_DATA(<cnp.ndarray>deltas[1])
        y_gather = (np.empty(rows, np.int64) if self.net.loss == LOSS_CROSS_ENTROPY
                    else np.empty((rows, int(self._sizes[self.net.n_layers])), self.dtype))
        sw_gather = np.empty(rows, self.dtype)
        self._buffers = (buffers, deltas, y_gather, sw_gather)
        self.capacity = rows

    cdef void _check_block(self, object block, str name) except *:
        if (not isinstance(block, np.ndarray) or block.dtype != self.dtype
                or not block.flags.c_contiguous or block.size < self.n_params):
            raise ValueError(f"`{name}` must be a C-contiguous {self.dtype} block of at least "
                             f"{self.n_params} values")

    cdef void _check_order(self, object order, Py_ssize_t n) except *:
        """``order`` is None or a permutation-like int64 index vector over n rows."""
        if order is None:
            return
        if (not isinstance(order, np.ndarray) or order.dtype != np.int64
                or order.shape != (n,) or not order.flags.c_contiguous):
            raise ValueError("`order` must be C-contiguous int64 of shape (n,)")
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError("`order` holds an index out of range")

    cdef tuple _epoch_buffers(self, Py_ssize_t n, object order, Py_ssize_t batch_size):
        """Check an epoch's batch size and row order; its (x, y, weight) gather buffers."""
        if batch_size < 1:
            raise ValueError("`batch_size` must be >= 1")
        self._check_order(order, n)
        self._reserve(min(batch_size, max(n, 1)))
        buffers, _, y_batch, sw_batch = self._buffers
        return buffers[0], y_batch, sw_batch

    cdef void _check_rows(self, object x, object y, bint need_y=True) except *:
        if (not isinstance(x, np.ndarray) or x.dtype != self.dtype or x.ndim != 2
                or not x.flags.c_contiguous or x.shape[1] != self._sizes[0]):
            raise ValueError(f"`x` must be a C-contiguous {self.dtype} array of shape "
                             f"(n, {self._sizes[0]})")
        if y is None:
            if need_y:  # NOTE: the kernels would read y through a NULL pointer
                raise ValueError("`y` is required")
            return
        if self.net.loss == LOSS_CROSS_ENTROPY:
            if (not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1
                    or not y.flags.c_contiguous or y.shape[0] != x.shape[0]):
                raise ValueError("`y` must be C-contiguous int64 labels of shape (n,)")
        elif (not isinstance(y, np.ndarray) or y.dtype != self.dtype or y.ndim != 2
                or not y.flags.c_contiguous
                or y.shape != (x.shape[0], self._sizes[self.net.n_layers])):
            raise ValueError(f"`y` must be a C-contiguous {self.dtype} array of shape "
                             f"(n, {self._sizes[self.net.n_layers]})")

    def forward(self, params, x, out):
        """out := the network's output for x, with buffers private to this call (thread-safe)."""
        self._check_block(params, "params")
        self._check_rows(x, None, False)
        cdef Py_ssize_t n = x.shape[0], l
        if out.shape != (n, self._sizes[self.net.n_layers]) or out.dtype != self.dtype:
            raise ValueError("`out` has the wrong shape or dtype")
        if n == 0:
            return out
        buffers = [None] + [np.empty((n, int(self._sizes[l])), self.dtype)
                            for l in range(1, self.net.n_layers)] + [out]
        ptrs_arr = np.zeros(self.net.n_layers + 1, np.uintp)
        cdef cnp.uintp_t[::1] ptrs = ptrs_arr
        for l in range(1, self.net.n_layers + 1):
            ptrs[l] = <cnp.uintp_t>cnp.PyArray_DATA(<cnp.ndarray>buffers[l])
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void** acts = <void**>cnp.PyArray_DATA(ptrs_arr)
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = forward_rows(&self.net, <const float*>pp, <const float*>xp, n,
                                      <float**>acts, False)
            else:
                status = forward_rows(&self.net, <const double*>pp, <const double*>xp, n,
                                      <double**>acts, False)
        _raise_for(status)
        return out

    def evaluate(self, params, x, y):
        """The loss on (x, y) without gradients, with buffers private to this call."""
        self._check_block(params, "params")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0], l
        cdef Py_ssize_t n_out = self._sizes[self.net.n_layers]
        buffers = [None] + [np.empty((n, int(self._sizes[l])), self.dtype)
                            for l in range(1, self.net.n_layers + 1)]
        ptrs_arr = np.zeros(self.net.n_layers + 1, np.uintp)
        cdef cnp.uintp_t[::1] ptrs = ptrs_arr
        for l in range(1, self.net.n_layers + 1):
            ptrs[l] = <cnp.uintp_t>cnp.PyArray_DATA(<cnp.ndarray>buffers[l])
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef void** acts = <void**>cnp.PyArray_DATA(ptrs_arr)
        cdef int status = BP_OK
        cdef double loss = 0
        cdef bint ce = _takes_logits(self.net.loss)
        if n == 0:
            return float("nan") if self.net.mean else 0.0
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = forward_rows(&self.net, <const float*>pp, <const float*>xp, n,
                                      <float**>acts, ce)
            else:
                status = forward_rows(&self.net, <const double*>pp, <const double*>xp, n,
                                      <double**>acts, ce)
            if status == BP_OK:
                if self.typenum == cnp.NPY_FLOAT:
                    loss = output_loss_rows(&self.net, <const float*>acts[self.net.n_layers],
                                            yp, <const float*>NULL, n, <float*>NULL)
                else:
                    loss = output_loss_rows(&self.net, <const double*>acts[self.net.n_layers],
                                            yp, <const double*>NULL, n, <double*>NULL)
        _raise_for(status)
        return loss

    def loss_and_grad(self, params, x, y, grads, sample_weight=None):
        """grads[:n_params] := d loss / d params on the batch (x, y); returns (status, loss).

        ``sample_weight``: per-row weights (C-contiguous, the Trainer's dtype)
        or None; see output_loss_rows for the weighted reductions.
        """
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        self._check_weights(sample_weight, n)
        cdef void* swp = (cnp.PyArray_DATA(<cnp.ndarray>sample_weight)
                          if sample_weight is not None else NULL)
        self._reserve(n)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef double loss = 0
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = loss_and_grad_rows_w(&self.net, <const float*>pp, <const float*>xp,
                                              yp, <const float*>swp, n, <float*>gp, &loss)
            else:
                status = loss_and_grad_rows_w(&self.net, <const double*>pp,
                                              <const double*>xp, yp, <const double*>swp, n,
                                              <double*>gp, &loss)
        _raise_for(status)
        return status, loss

    def sgd(self, params, grads, velocity, double lr, double momentum, double weight_decay,
            bint nesterov):
        """params := one SGD step over the flat block (velocity may be None without momentum)."""
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        if momentum != 0:
            self._check_block(velocity, "velocity")
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>velocity) if momentum != 0 else NULL
        cdef Py_ssize_t n = self.n_params
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                sgd_block(<float*>pp, <const float*>gp, <float*>vp, n, lr, momentum,
                          weight_decay, nesterov)
            else:
                sgd_block(<double*>pp, <const double*>gp, <double*>vp, n, lr, momentum,
                          weight_decay, nesterov)

    def train_step(self, params, grads, velocity, x, y, double lr, double momentum,
                   double weight_decay, bint nesterov):
        """One fused step on (x, y); returns (status, loss).  Updates only when status is 0."""
        status, loss = self.loss_and_grad(params, x, y, grads)
        if status == BP_OK:
            self.sgd(params, grads, velocity, lr, momentum, weight_decay, nesterov)
        return status, loss

    def train_step_fast(self, params, grads, velocity, x, y, lr, momentum, weight_decay,
                        nesterov):
        """``train_step`` when every argument is already in final form, else None.

        The check costs a few C-API macros instead of bpcore.nn's general
        validation, which on a small network would cost more than the step.
        """
        if not (type(lr) is float and type(momentum) is float and type(weight_decay) is float
                and type(nesterov) is bool):
            return None
        cdef double lr_ = lr, mu = momentum, wd = weight_decay
        if not (0 <= lr_ < INFINITY and 0 <= mu < INFINITY and 0 <= wd < INFINITY
                and (mu != 0 or not nesterov) and (mu == 0 or velocity is not None)):
            return None
        if not cnp.PyArray_CheckExact(x) or not cnp.PyArray_CheckExact(y):
            return None
        cdef cnp.ndarray xa = <cnp.ndarray>x, ya = <cnp.ndarray>y
        if (cnp.PyArray_TYPE(xa) != self.typenum or cnp.PyArray_NDIM(xa) != 2
                or not cnp.PyArray_IS_C_CONTIGUOUS(xa) or not cnp.PyArray_ISBEHAVED_RO(xa)
                or cnp.PyArray_DIM(xa, 1) != self.net.sizes[0] or cnp.PyArray_DIM(xa, 0) < 1):
            return None
        cdef Py_ssize_t n = cnp.PyArray_DIM(xa, 0), i
        cdef const long long* labels
        if not cnp.PyArray_IS_C_CONTIGUOUS(ya) or not cnp.PyArray_ISBEHAVED_RO(ya):
            return None
        if self.net.loss == LOSS_CROSS_ENTROPY:
            if (cnp.PyArray_TYPE(ya) != cnp.NPY_INT64 or cnp.PyArray_NDIM(ya) != 1
                    or cnp.PyArray_DIM(ya, 0) != n):
                return None
            labels = <const long long*>cnp.PyArray_DATA(ya)
            for i in range(n):
                if labels[i] < 0 or labels[i] >= self.net.sizes[self.net.n_layers]:
                    return None
        elif (cnp.PyArray_TYPE(ya) != self.typenum or cnp.PyArray_NDIM(ya) != 2
                or cnp.PyArray_DIM(ya, 0) != n
                or cnp.PyArray_DIM(ya, 1) != self.net.sizes[self.net.n_layers]):
            return None
        elif self.net.loss == LOSS_BCE and not ((ya >= 0) & (ya <= 1)).all():
            return None  # targets outside [0, 1]: the general path says so
        self._reserve(n)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>velocity) if mu != 0 else NULL
        cdef void* xp = cnp.PyArray_DATA(xa)
        cdef void* yp = cnp.PyArray_DATA(ya)
        cdef double loss = 0
        cdef int status
        cdef int nest = nesterov
        cdef Py_ssize_t n_params = self.n_params
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = loss_and_grad_rows(&self.net, <const float*>pp, <const float*>xp, yp,
                                            n, <float*>gp, &loss)
                if status == BP_OK:
                    sgd_block(<float*>pp, <const float*>gp, <float*>vp, n_params, lr_, mu, wd,
                              nest)
            else:
                status = loss_and_grad_rows(&self.net, <const double*>pp, <const double*>xp,
                                            yp, n, <double*>gp, &loss)
                if status == BP_OK:
                    sgd_block(<double*>pp, <const double*>gp, <double*>vp, n_params, lr_, mu,
                              wd, nest)
        _raise_for(status)
        return status, loss

    def train_epoch(self, params, grads, velocity, x, y, order, Py_ssize_t batch_size,
                    double lr, double momentum, double weight_decay, bint nesterov):
        """Mini-batches of ``batch_size`` over x in ``order`` (int64 indices, or None).

        Returns (status, loss_sum, batches_done): loss_sum is the sum of batch
        loss x batch size over the applied batches.
        """
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        if momentum != 0:
            self._check_block(velocity, "velocity")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        x_batch, y_batch, _ = self._epoch_buffers(n, order, batch_size)
        # NOTE: the row size from the shape, never y.strides[0]: NumPy calls a
        # one-row array C-contiguous whatever its row stride (even 0).
        cdef Py_ssize_t y_row_bytes = (sizeof(long long) if self.net.loss == LOSS_CROSS_ENTROPY
                                       else self._sizes[self.net.n_layers] * y.itemsize)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* vp = cnp.PyArray_DATA(<cnp.ndarray>velocity) if momentum != 0 else NULL
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef const long long* op = (<const long long*>cnp.PyArray_DATA(<cnp.ndarray>order)
                                    if order is not None else NULL)
        cdef void* xbp = cnp.PyArray_DATA(<cnp.ndarray>x_batch)
        cdef void* ybp = cnp.PyArray_DATA(<cnp.ndarray>y_batch)
        cdef double loss_sum = 0
        cdef Py_ssize_t done = 0
        cdef Pending pending
        memset(&pending, 0, sizeof(pending))
        cdef Py_ssize_t n_params = self.n_params
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = train_epoch_rows(&self.net, <float*>pp, <float*>gp, <float*>vp,
                                          n_params, <const float*>xp, yp, op, n, batch_size,
                                          <float*>xbp, ybp, y_row_bytes, lr, momentum,
                                          weight_decay, nesterov, &loss_sum, &done, &pending)
            else:
                status = train_epoch_rows(&self.net, <double*>pp, <double*>gp, <double*>vp,
                                          n_params, <const double*>xp, yp, op, n, batch_size,
                                          <double*>xbp, ybp, y_row_bytes, lr, momentum,
                                          weight_decay, nesterov, &loss_sum, &done, &pending)
        self.batches_done = done
        reraise_pending(&pending)
        _raise_for(status)
        return status, loss_sum, done

    # -- any optimizer, optional weights (bpcore.MLP beyond plain SGD) ---------

    cdef void _fill_optim(self, Optim* opt, str optimizer, double lr, double momentum,
                          double weight_decay, bint nesterov, double beta1, double beta2,
                          double eps, long long step, bint weights_only) except *:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam'; got {optimizer!r}")
        opt.kind = OPTIMIZERS[optimizer]
        opt.lr = lr
        opt.momentum = momentum
        opt.weight_decay = weight_decay
        opt.nesterov = nesterov
        opt.beta1 = beta1
        opt.beta2 = beta2
        opt.eps = eps
        opt.step = step
        opt.weights_only = weights_only

    cdef void _check_state(self, str optimizer, object state1, object state2,
                           double momentum) except *:
        if optimizer == "adam":
            self._check_block(state1, "state1")
            self._check_block(state2, "state2")
        elif momentum != 0:
            self._check_block(state1, "state1")

    def update(self, params, grads, state1, state2, str optimizer, double lr,
               double momentum=0.0, double weight_decay=0.0, bint nesterov=False,
               double beta1=0.9, double beta2=0.999, double eps=1e-8, long long step=0,
               bint weights_only=False):
        """params := one SGD or Adam step (PyTorch's) over the flat block; returns Adam's step.

        ``state1``/``state2``: SGD's velocity (None without momentum) / unused,
        or Adam's first / second moments; ``step``: Adam's steps so far.
        ``weights_only``: weight decay on the W_l only.
        """
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_state(optimizer, state1, state2, momentum)
        cdef Optim opt
        self._fill_optim(&opt, optimizer, lr, momentum, weight_decay, nesterov, beta1, beta2,
                         eps, step, weights_only)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* s1 = cnp.PyArray_DATA(<cnp.ndarray>state1) if state1 is not None else NULL
        cdef void* s2 = cnp.PyArray_DATA(<cnp.ndarray>state2) if state2 is not None else NULL
        cdef Py_ssize_t n = self.n_params
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                apply_update(&self.net, &opt, <float*>pp, <const float*>gp, <float*>s1,
                             <float*>s2, n)
            else:
                apply_update(&self.net, &opt, <double*>pp, <const double*>gp, <double*>s1,
                             <double*>s2, n)
        return opt.step

    def train_epoch_opt(self, params, grads, state1, state2, x, y, sample_weight, order,
                        Py_ssize_t batch_size, str optimizer, double lr, double momentum=0.0,
                        double weight_decay=0.0, bint nesterov=False, double beta1=0.9,
                        double beta2=0.999, double eps=1e-8, long long step=0,
                        bint weights_only=False):
        """``train_epoch`` with the optimizer of ``update`` and optional row weights.

        Returns (status, loss_sum, batches_done, step); loss_sum weighs each
        batch's loss by its rows (its weight sum with ``sample_weight``).
        """
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_state(optimizer, state1, state2, momentum)
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        self._check_weights(sample_weight, n)
        x_batch, y_batch, sw_batch = self._epoch_buffers(n, order, batch_size)
        cdef Optim opt
        self._fill_optim(&opt, optimizer, lr, momentum, weight_decay, nesterov, beta1, beta2,
                         eps, step, weights_only)
        # NOTE: the row size from the shape, never y.strides[0]: NumPy calls a
        # one-row array C-contiguous whatever its row stride (even 0).
        cdef Py_ssize_t y_row_bytes = (sizeof(long long) if self.net.loss == LOSS_CROSS_ENTROPY
                                       else self._sizes[self.net.n_layers] * y.itemsize)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* s1 = cnp.PyArray_DATA(<cnp.ndarray>state1) if state1 is not None else NULL
        cdef void* s2 = cnp.PyArray_DATA(<cnp.ndarray>state2) if state2 is not None else NULL
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef void* swp = (cnp.PyArray_DATA(<cnp.ndarray>sample_weight)
                          if sample_weight is not None else NULL)
        cdef const long long* op = (<const long long*>cnp.PyArray_DATA(<cnp.ndarray>order)
                                    if order is not None else NULL)
        cdef void* xbp = cnp.PyArray_DATA(<cnp.ndarray>x_batch)
        cdef void* ybp = cnp.PyArray_DATA(<cnp.ndarray>y_batch)
        cdef void* swbp = cnp.PyArray_DATA(<cnp.ndarray>sw_batch)
        cdef double loss_sum = 0
        cdef Py_ssize_t done = 0
        cdef Pending pending
        memset(&pending, 0, sizeof(pending))
        cdef Py_ssize_t n_params = self.n_params
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = train_epoch_rows_opt(
                    &self.net, <float*>pp, <float*>gp, <float*>s1, <float*>s2, n_params,
                    <const float*>xp, yp, <const float*>swp, op, n, batch_size, <float*>xbp,
                    ybp, <float*>swbp, y_row_bytes, &opt, &loss_sum, &done, &pending)
            else:
                status = train_epoch_rows_opt(
                    &self.net, <double*>pp, <double*>gp, <double*>s1, <double*>s2, n_params,
                    <const double*>xp, yp, <const double*>swp, op, n, batch_size,
                    <double*>xbp, ybp, <double*>swbp, y_row_bytes, &opt, &loss_sum, &done,
                    &pending)
        self.batches_done = done
        reraise_pending(&pending)
        _raise_for(status)
        return status, loss_sum, done, opt.step

    # -- scikit-learn's conventions (bpcore.sklearn) ---------------------------

    cdef void _check_weights(self, object sample_weight, Py_ssize_t n) except *:
        if sample_weight is None:
            return
        if (not isinstance(sample_weight, np.ndarray) or sample_weight.dtype != self.dtype
                or sample_weight.shape != (n,) or not sample_weight.flags.c_contiguous):
            raise ValueError(f"`sample_weight` must be a C-contiguous {self.dtype} array of "
                             f"shape ({n},)")

    def sklearn_loss_and_grad(self, params, x, y, sample_weight, double alpha, grads):
        """scikit-learn's _backprop: grads := its gradient on (x, y); returns (status, loss).

        ``y`` holds float targets (n, n_out) (a classifier's binarized labels);
        the loss is one of the "sk_*" losses.
        """
        if self.net.loss < LOSS_SK_SQUARED:
            raise ValueError("sklearn_loss_and_grad needs one of the 'sk_*' losses")
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        self._check_weights(sample_weight, n)
        if n == 0:
            raise ValueError("`x` must have at least one row")
        self._reserve(n)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef void* swp = (cnp.PyArray_DATA(<cnp.ndarray>sample_weight)
                          if sample_weight is not None else NULL)
        cdef double loss = 0
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = sk_loss_and_grad_rows(&self.net, <const float*>pp, <const float*>xp,
                                               <const float*>yp, <const float*>swp, n, alpha,
                                               <float*>gp, &loss)
            else:
                status = sk_loss_and_grad_rows(&self.net, <const double*>pp,
                                               <const double*>xp, <const double*>yp,
                                               <const double*>swp, n, alpha, <double*>gp,
                                               &loss)
        _raise_for(status)
        return status, loss

    def sklearn_train_epoch(self, params, grads, state1, state2, x, y, sample_weight, order,
                            Py_ssize_t batch_size, double alpha, str solver, double lr,
                            double momentum=0.0, bint nesterov=False, double beta1=0.9,
                            double beta2=0.999, double eps=1e-8, long long t=0):
        """One epoch of scikit-learn's stochastic solver, all batches in one nogil call.

        ``solver`` "sgd" (``state1`` = velocities, ``lr`` the current rate) or
        "adam" (``state1``/``state2`` = first/second moments, ``lr`` =
        learning_rate_init, ``t`` the steps taken so far).  Returns (status,
        loss_sum, batches_done, t).
        """
        if self.net.loss < LOSS_SK_SQUARED:
            raise ValueError("sklearn_train_epoch needs one of the 'sk_*' losses")
        if solver not in SK_SOLVERS:
            raise ValueError(f"`solver` must be 'sgd' or 'adam'; got {solver!r}")
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_block(state1, "state1")
        if solver == "adam":
            self._check_block(state2, "state2")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        self._check_weights(sample_weight, n)
        x_batch, y_batch, sw_batch = self._epoch_buffers(n, order, batch_size)
        cdef SkOptim opt
        opt.kind = SK_SOLVERS[solver]
        opt.lr = lr
        opt.momentum = momentum
        opt.nesterov = nesterov
        opt.beta1 = beta1
        opt.beta2 = beta2
        opt.eps = eps
        opt.t = t
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* s1 = cnp.PyArray_DATA(<cnp.ndarray>state1)
        cdef void* s2 = cnp.PyArray_DATA(<cnp.ndarray>state2) if solver == "adam" else NULL
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef void* swp = (cnp.PyArray_DATA(<cnp.ndarray>sample_weight)
                          if sample_weight is not None else NULL)
        cdef const long long* op = (<const long long*>cnp.PyArray_DATA(<cnp.ndarray>order)
                                    if order is not None else NULL)
        cdef void* xbp = cnp.PyArray_DATA(<cnp.ndarray>x_batch)
        cdef void* ybp = cnp.PyArray_DATA(<cnp.ndarray>y_batch)
        cdef void* swbp = cnp.PyArray_DATA(<cnp.ndarray>sw_batch)
        cdef double loss_sum = 0
        cdef Py_ssize_t done = 0
        cdef Pending pending
        memset(&pending, 0, sizeof(pending))
        cdef Py_ssize_t n_params = self.n_params
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = sk_train_epoch_rows(
                    &self.net, <float*>pp, <float*>gp, <float*>s1, <float*>s2, n_params,
                    <const float*>xp, <const float*>yp, <const float*>swp, op, n, batch_size,
                    <float*>xbp, <float*>ybp, <float*>swbp, alpha, &opt, &loss_sum, &done,
                    &pending)
            else:
                status = sk_train_epoch_rows(
                    &self.net, <double*>pp, <double*>gp, <double*>s1, <double*>s2, n_params,
                    <const double*>xp, <const double*>yp, <const double*>swp, op, n,
                    batch_size, <double*>xbp, <double*>ybp, <double*>swbp, alpha, &opt,
                    &loss_sum, &done, &pending)
        self.batches_done = done
        reraise_pending(&pending)
        _raise_for(status)
        return status, loss_sum, done, opt.t

    # -- the step cut at layer boundaries (bpcore.distributed's overlap) --------

    def loss_and_grad_begin(self, params, x, y):
        """Forward and loss on (x, y), keeping what backward_layer needs; returns (status, loss).

        Follow with ``backward_layer(params, x, grads, l)`` for l = L-1 down
        to 0 on the same x and params: together they equal ``loss_and_grad``
        bitwise.
        """
        self._check_block(params, "params")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        if n < 1:
            raise ValueError("`x` must have at least 1 row")
        self._reserve(n)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef double loss = 0
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = output_delta_rows(&self.net, <const float*>pp, <const float*>xp, yp, n,
                                           &loss)
            else:
                status = output_delta_rows(&self.net, <const double*>pp, <const double*>xp, yp,
                                           n, &loss)
        _raise_for(status)
        self._pending_rows = n if status == BP_OK else 0
        self._next_layer = self.net.n_layers - 1
        return status, loss

    def backward_layer(self, params, x, grads, int layer):
        """grads' W_layer and b_layer := their gradient; returns the status (0 or non-finite)."""
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_rows(x, None, need_y=False)
        if self._pending_rows == 0 or x.shape[0] != self._pending_rows:
            raise ValueError("backward_layer must follow loss_and_grad_begin on the same `x`")
        if layer != self._next_layer:
            raise ValueError(f"backward_layer must run layers from the last down; expected "
                             f"layer {self._next_layer}, got {layer}")
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef Py_ssize_t n = self._pending_rows
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = backward_layer_rows(&self.net, <const float*>pp, <const float*>xp, n,
                                             <float*>gp, layer)
            else:
                status = backward_layer_rows(&self.net, <const double*>pp, <const double*>xp, n,
                                             <double*>gp, layer)
        _raise_for(status)
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
