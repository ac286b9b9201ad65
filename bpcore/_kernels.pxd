# The nogil kernels of _kernels.pyx, for other compiled modules (the fused
# training step) to cimport.  Pointers are to C-contiguous buffers.
from cython cimport floating

cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3

cdef void activation_forward(int op, const floating* z, floating* out,
                             Py_ssize_t n) noexcept nogil
cdef void activation_backward(int op, const floating* a, const floating* grad,
                              floating* out, Py_ssize_t n) noexcept nogil
cdef void softmax_rows(const floating* z, floating* out, Py_ssize_t n_rows,
                       Py_ssize_t n_cols) noexcept nogil
