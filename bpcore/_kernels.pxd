# The nogil kernels of _kernels.pyx, for other compiled modules (the fused
# training step) to cimport.  Pointers are to C-contiguous buffers.
from cython cimport floating

cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3
    # 4 and 5 are _step's output activations (softmax, exp)
    ACT_LEAKY_RELU = 6
    ACT_ELU = 7
    ACT_GELU = 8
    ACT_GELU_TANH = 9
    ACT_SILU = 10
    ACT_SOFTPLUS = 11


cdef inline bint activation_needs_z(int op) noexcept nogil:
    """The activation's derivative needs its input z (not writable from its output)."""
    return op == ACT_GELU or op == ACT_GELU_TANH or op == ACT_SILU or op == ACT_SOFTPLUS


# The activations with PyTorch's default parameters (the C-level API of the
# README's "Using bpcore from C or Cython"; its signatures stay as they are).
cdef void activation_forward(int op, const floating* z, floating* out,
                             Py_ssize_t n) noexcept nogil
cdef void activation_backward(int op, const floating* a, const floating* grad,
                              floating* out, Py_ssize_t n) noexcept nogil
# The same with the activation's parameters ``param`` (leaky_relu: negative_slope;
# elu: alpha; softplus: beta, threshold), or NULL for PyTorch's defaults.
# ``saved`` is the output a, or the input z where activation_needs_z(op).
cdef void activation_forward_params(int op, const floating* z, floating* out, Py_ssize_t n,
                                    const double* param) noexcept nogil
cdef void activation_backward_params(int op, const floating* saved, const floating* grad,
                                     floating* out, Py_ssize_t n,
                                     const double* param) noexcept nogil
cdef void softmax_rows(const floating* z, floating* out, Py_ssize_t n_rows,
                       Py_ssize_t n_cols) noexcept nogil
cdef void column_sums(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                      floating* out) noexcept nogil
cdef int linear_forward_ptr(const floating* x, const floating* w, const floating* b,
                            floating* out, Py_ssize_t n, Py_ssize_t n_in,
                            Py_ssize_t n_out) noexcept nogil
cdef int linear_backward_ptr(const floating* x, const floating* w, const floating* grad,
                             floating* grad_x, floating* grad_w, floating* grad_b,
                             Py_ssize_t n, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil
cdef double mse_forward_backward(const floating* pred, const floating* target,
                                 floating* grad_out, Py_ssize_t n,
                                 double scale) noexcept nogil
cdef double softmax_cross_entropy_rows(const floating* logits, const long long* labels,
                                       floating* grad_out, Py_ssize_t n_rows,
                                       Py_ssize_t n_cols, double grad_scale) noexcept nogil
cdef double sigmoid_bce(const floating* z, const floating* t, floating* grad_out,
                        Py_ssize_t n, double grad_scale) noexcept nogil

# The pointwise regression losses beside MSE (PyTorch's l1_loss, huber_loss, smooth_l1_loss).
cdef enum:
    REG_MSE = 0
    REG_L1 = 1
    REG_HUBER = 2          # param: delta
    REG_SMOOTH_L1 = 3      # param: beta (> 0; beta = 0 is REG_L1)

cdef double regression_loss(int kind, const floating* pred, const floating* target,
                            floating* grad_out, Py_ssize_t n, double param,
                            double scale) noexcept nogil
cdef double softmax_cross_entropy_weighted_rows(
    const floating* logits, const long long* labels, const double* class_weight,
    double smoothing, floating* grad_out, Py_ssize_t n_rows, Py_ssize_t n_cols,
    double grad_scale) noexcept nogil
cdef double sigmoid_bce_pos_weight(const floating* z, const floating* t, const double* pw,
                                   floating* grad_out, Py_ssize_t n_rows, Py_ssize_t n_cols,
                                   double grad_scale) noexcept nogil

# Parameter updates with PyTorch's / scikit-learn's rounding (static C in optim.h:
# each module that cimports these gets its own copy and selects it with
# bp_optim_select at import).
cdef extern from "optim.h" nogil:
    void bp_sgd_f32(float* param, const float* grad, float* velocity, Py_ssize_t n,
                    float lr, float momentum, float weight_decay, int nesterov)
    void bp_sgd_f64(double* param, const double* grad, double* velocity, Py_ssize_t n,
                    double lr, double momentum, double weight_decay, int nesterov)
    int bp_optim_select(int want_avx2)
    void bp_adam_f32(float* param, const float* grad, float* m, float* s, Py_ssize_t n,
                     double lr, double b1, double b2, double eps, double weight_decay,
                     long long t)
    void bp_adam_f64(double* param, const double* grad, double* m, double* s, Py_ssize_t n,
                     double lr, double b1, double b2, double eps, double weight_decay,
                     long long t)
    void bp_adamw_f32(float* param, const float* grad, float* m, float* s, Py_ssize_t n,
                      double lr, double b1, double b2, double eps, double weight_decay,
                      long long t)
    void bp_adamw_f64(double* param, const double* grad, double* m, double* s, Py_ssize_t n,
                      double lr, double b1, double b2, double eps, double weight_decay,
                      long long t)
    void bp_rmsprop_f32(float* param, const float* grad, float* square_avg, float* buf,
                        float* grad_avg, Py_ssize_t n, double lr, double alpha, double eps,
                        double weight_decay, double momentum, int centered)
    void bp_rmsprop_f64(double* param, const double* grad, double* square_avg, double* buf,
                        double* grad_avg, Py_ssize_t n, double lr, double alpha, double eps,
                        double weight_decay, double momentum, int centered)
    void bp_sk_sgd_f32(float* param, const float* grad, float* velocity, Py_ssize_t n,
                       float lr, float momentum, int nesterov)
    void bp_sk_sgd_f64(double* param, const double* grad, double* velocity, Py_ssize_t n,
                       double lr, double momentum, int nesterov)
    void bp_sk_adam_f32(float* param, const float* grad, float* m, float* s, Py_ssize_t n,
                        float neg_lr_t, float b1, float one_minus_b1, float b2,
                        float one_minus_b2, float eps)
    void bp_sk_adam_f64(double* param, const double* grad, double* m, double* s,
                        Py_ssize_t n, double neg_lr_t, double b1, double one_minus_b1,
                        double b2, double one_minus_b2, double eps)
