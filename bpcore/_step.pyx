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
# NOTE: non-finite values are caught before the update, from the loss, the
# bias gradients (a NaN/inf anywhere in a delta reaches its column sum) and one
# pass over the whole gradient block.  On failure nothing is updated.
from cython cimport floating
from libc.math cimport INFINITY, isfinite
from libc.string cimport memcpy

import numpy as np
cimport numpy as cnp

from bpcore import _validate as V
from bpcore._gemm cimport (gemm, BP_OK, BP_ENOMEM, BP_EPI_NONE, BP_EPI_BIAS,
                           BP_EPI_BIAS_RELU, BP_EPI_BIAS_SIGMOID, BP_EPI_BIAS_TANH,
                           BP_EPI_MUL_DRELU, BP_EPI_MUL_DSIGMOID, BP_EPI_MUL_DTANH,
                           bp_epilogue)
from bpcore._kernels cimport (ACT_IDENTITY, ACT_RELU, ACT_SIGMOID, ACT_TANH,
                              activation_backward, softmax_rows, column_sums,
                              mse_forward_backward, softmax_cross_entropy_rows)

cnp.import_array()

cdef extern from "optim.h" nogil:
    void bp_sgd_f32(float* param, const float* grad, float* velocity, Py_ssize_t n,
                    float lr, float momentum, float weight_decay, int nesterov)
    void bp_sgd_f64(double* param, const double* grad, double* velocity, Py_ssize_t n,
                    double lr, double momentum, double weight_decay, int nesterov)
    int bp_optim_select(int want_avx2)

cdef extern from "Python.h":
    int _check_signals "PyErr_CheckSignals" ()
    void _clear_error "PyErr_Clear" ()

# Output activation beyond the elementwise ones.
cdef enum:
    ACT_SOFTMAX = 4

cdef enum:
    LOSS_MSE = 0
    LOSS_CROSS_ENTROPY = 1

# Status codes beyond the GEMM's BP_OK / BP_ENOMEM.
cdef enum:
    STATUS_NONFINITE = 100
    STATUS_INTERRUPTED = 101

ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "sigmoid": ACT_SIGMOID,
               "tanh": ACT_TANH, "softmax": ACT_SOFTMAX}
LOSSES = {"mse": LOSS_MSE, "cross_entropy": LOSS_CROSS_ENTROPY}
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
    """acts[l] := a_l for l = 1..n_layers from x (n rows).  ``logits``: leave the output pre-softmax."""
    cdef int l, status
    cdef const floating* a_prev = x
    cdef Py_ssize_t n_in, n_out
    for l in range(net.n_layers):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        status = gemm(n, n_out, n_in, <floating>1, a_prev, n_in, 1,
                      params + net.w_off[l], n_out, 1, <floating>0, acts[l + 1], n_out, 1,
                      _forward_epilogue(net.act[l]), params + net.b_off[l], NULL, 0, 0)
        if status != BP_OK:
            return status
        a_prev = acts[l + 1]
    if net.act[net.n_layers - 1] == ACT_SOFTMAX and not logits:
        softmax_rows(acts[net.n_layers], acts[net.n_layers], n, net.sizes[net.n_layers])
    return BP_OK


cdef int loss_and_grad_rows(const Net* net, const floating* params, const floating* x,
                            const void* y, Py_ssize_t n, floating* grads,
                            double* loss_out) noexcept nogil:
    """Forward, loss and backward on n rows: grads := d loss / d params; *loss_out := loss.

    ``y`` is float targets (n x n_out) for MSE or int64 labels (n,) for
    cross-entropy.  Returns BP_OK, a GEMM error, or STATUS_NONFINITE when
    the loss or a gradient is not finite (grads are then unspecified).
    """
    cdef int L = net.n_layers, l, status
    cdef floating** acts = <floating**>net.acts
    cdef Py_ssize_t n_out = net.sizes[L], n_in, count, j
    cdef floating* delta = <floating*>net.delta0
    cdef floating* delta_next = <floating*>net.delta1
    cdef floating* swap
    cdef floating* out
    cdef const floating* a_prev
    cdef double scale, loss
    cdef int act_out = net.act[L - 1]
    status = forward_rows(net, params, x, n, acts, net.loss == LOSS_CROSS_ENTROPY)
    if status != BP_OK:
        return status
    out = acts[L]
    if net.loss == LOSS_CROSS_ENTROPY:
        scale = 1.0 / n if net.mean else 1.0
        loss = scale * softmax_cross_entropy_rows(out, <const long long*>y, delta, n, n_out,
                                                  scale)
    else:
        count = n * n_out
        scale = net.mse_factor / count if net.mean else net.mse_factor
        loss = mse_forward_backward(out, <const floating*>y, delta, count, scale)
        if act_out == ACT_SOFTMAX:
            softmax_backward_rows(out, delta, delta, n, n_out)
        elif act_out != ACT_IDENTITY:
            activation_backward(act_out, out, delta, delta, count)
    loss_out[0] = loss
    if not isfinite(loss):
        return STATUS_NONFINITE
    for l in range(L - 1, -1, -1):
        n_in = net.sizes[l]
        n_out = net.sizes[l + 1]
        a_prev = x if l == 0 else acts[l]
        if l > 0:
            # delta_{l-1} = (delta_l @ W_l.T) * act'(a_{l-1}); W_l.T is W_l's strides swapped.
            status = gemm(n, n_in, n_out, <floating>1, delta, n_out, 1,
                          params + net.w_off[l], 1, n_out, <floating>0, delta_next, n_in, 1,
                          _backward_epilogue(net.act[l - 1]), NULL, acts[l], n_in, 0)
            if status != BP_OK:
                return status
        # grad W_l = a_{l-1}.T @ delta_l; a_{l-1}.T read through strides.
        status = gemm(n_in, n_out, n, <floating>1, a_prev, 1, n_in, delta, n_out, 1,
                      <floating>0, grads + net.w_off[l], n_out, 1, BP_EPI_NONE, NULL, NULL,
                      0, 0)
        if status != BP_OK:
            return status
        column_sums(delta, n, n_out, grads + net.b_off[l])
        for j in range(n_out):
            if not isfinite(grads[net.b_off[l] + j]):
                return STATUS_NONFINITE
        swap = delta
        delta = delta_next
        delta_next = swap
    # NOTE: finite biases' gradients do not imply finite weights' gradients: an
    # infinite input feeding a saturated tanh/sigmoid gives a finite loss and
    # delta, but inf * delta in x.T @ delta.  One branch-free pass over the
    # whole block keeps a non-finite gradient from ever reaching the parameters.
    if not _all_finite(grads, net.b_off[L - 1] + net.sizes[L]):
        return STATUS_NONFINITE
    return BP_OK


cdef inline bint _all_finite(const floating* v, Py_ssize_t n) noexcept nogil:
    """No NaN or inf in v[0:n]."""
    # NOTE: v - v is 0 exactly when v is finite (NaN otherwise).  The flag is
    # shaped so gcc vectorises the pass (checked with -fopt-info-vec): an int
    # OR for float, a same-type select for double (whose 64-bit compares do
    # not narrow to an int under SSE2).  A running float sum would be a
    # latency-bound chain: it cost 7x the step at batch size 1.
    cdef int bad = 0
    cdef floating flag = 0, d
    cdef Py_ssize_t i
    if floating is float:
        for i in range(n):
            bad |= (v[i] - v[i]) != 0
        return bad == 0
    else:
        for i in range(n):
            d = v[i] - v[i]
            flag = flag if d == 0 else 1
        return flag == 0


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
                          double* loss_sum, Py_ssize_t* batches_done) noexcept nogil:
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
            with gil:
                if _check_signals() != 0:
                    _clear_error()
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
        self._buffers = (buffers, deltas, y_gather)
        self.capacity = rows

    cdef void _check_block(self, object block, str name) except *:
        if (not isinstance(block, np.ndarray) or block.dtype != self.dtype
                or not block.flags.c_contiguous or block.size < self.n_params):
            raise ValueError(f"`{name}` must be a C-contiguous {self.dtype} block of at least "
                             f"{self.n_params} values")

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
        cdef double loss = 0, scale
        cdef bint ce = self.net.loss == LOSS_CROSS_ENTROPY
        if n == 0:
            return float("nan") if self.net.mean else 0.0
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = forward_rows(&self.net, <const float*>pp, <const float*>xp, n,
                                      <float**>acts, ce)
            else:
                status = forward_rows(&self.net, <const double*>pp, <const double*>xp, n,
                                      <double**>acts, ce)
            if status == BP_OK and ce:
                scale = 1.0 / n if self.net.mean else 1.0
                if self.typenum == cnp.NPY_FLOAT:
                    loss = scale * softmax_cross_entropy_rows(
                        <const float*>acts[self.net.n_layers], <const long long*>yp, NULL,
                        n, n_out, scale)
                else:
                    loss = scale * softmax_cross_entropy_rows(
                        <const double*>acts[self.net.n_layers], <const long long*>yp, NULL,
                        n, n_out, scale)
            elif status == BP_OK:
                scale = (self.net.mse_factor / (n * n_out) if self.net.mean
                         else self.net.mse_factor)
                if self.typenum == cnp.NPY_FLOAT:
                    loss = mse_forward_backward(<const float*>acts[self.net.n_layers],
                                                <const float*>yp, NULL, n * n_out, scale)
                else:
                    loss = mse_forward_backward(<const double*>acts[self.net.n_layers],
                                                <const double*>yp, NULL, n * n_out, scale)
        _raise_for(status)
        return loss

    def loss_and_grad(self, params, x, y, grads):
        """grads[:n_params] := d loss / d params on the batch (x, y); returns (status, loss)."""
        self._check_block(params, "params")
        self._check_block(grads, "grads")
        self._check_rows(x, y)
        cdef Py_ssize_t n = x.shape[0]
        self._reserve(n)
        cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>params)
        cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grads)
        cdef void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef void* yp = cnp.PyArray_DATA(<cnp.ndarray>y)
        cdef double loss = 0
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = loss_and_grad_rows(&self.net, <const float*>pp, <const float*>xp, yp,
                                            n, <float*>gp, &loss)
            else:
                status = loss_and_grad_rows(&self.net, <const double*>pp, <const double*>xp,
                                            yp, n, <double*>gp, &loss)
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
        """One fused step on (x, y); returns (status, loss).  Nothing is updated unless status is 0."""
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
        if batch_size < 1:
            raise ValueError("`batch_size` must be >= 1")
        if order is not None:
            if (not isinstance(order, np.ndarray) or order.dtype != np.int64
                    or order.shape != (n,) or not order.flags.c_contiguous):
                raise ValueError("`order` must be C-contiguous int64 of shape (n,)")
            if n and (order.min() < 0 or order.max() >= n):
                raise ValueError("`order` holds an index out of range")
        self._reserve(min(batch_size, max(n, 1)))
        x_batch, _, y_batch = self._buffers
        x_batch = x_batch[0]
        cdef Py_ssize_t y_row_bytes = y.strides[0]
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
        cdef Py_ssize_t n_params = self.n_params
        cdef int status
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = train_epoch_rows(&self.net, <float*>pp, <float*>gp, <float*>vp,
                                          n_params, <const float*>xp, yp, op, n, batch_size,
                                          <float*>xbp, ybp, y_row_bytes, lr, momentum,
                                          weight_decay, nesterov, &loss_sum, &done)
            else:
                status = train_epoch_rows(&self.net, <double*>pp, <double*>gp, <double*>vp,
                                          n_params, <const double*>xp, yp, op, n, batch_size,
                                          <double*>xbp, ybp, y_row_bytes, lr, momentum,
                                          weight_decay, nesterov, &loss_sum, &done)
        _raise_for(status)
        return status, loss_sum, done


cdef object _raise_for(int status):
    """Raise for the statuses that are bugs or resource failures; return the others."""
    if status == BP_ENOMEM:
        raise MemoryError("bpcore could not allocate the GEMM's packing buffers")
    if status not in (BP_OK, STATUS_NONFINITE, STATUS_INTERRUPTED):
        raise RuntimeError(f"bpcore internal error: status {status}")
    return None
