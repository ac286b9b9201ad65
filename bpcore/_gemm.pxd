# The C-level GEMM of bpcore, for other extension modules:
#
#     from bpcore._gemm cimport gemm, gemm_f32, gemm_f64, bp_epilogue, BP_EPI_BIAS_RELU, BP_OK
#
# C := epi(alpha * op(A) @ op(B) + beta * C), everything given as pointers and
# signed element strides (BLIS style: a row stride and a column stride per
# operand, so op(X) = X.T is just X's strides swapped):
#
#   op(A)  m x k, element (i, p) at a[i*rsa + p*csa]
#   op(B)  k x n, element (p, j) at b[p*rsb + j*csb]
#   C      m x n, element (i, j) at c[i*rsc + j*csc]; must not overlap A or B
#   bias   n values, bias[j]          (BP_EPI_BIAS* kinds; else may be NULL)
#   aux    m x n, aux[i*ldaux + j]    (BP_EPI_MUL_D* kinds; else may be NULL)
#   num_threads  <= 0: the module's setting (bpcore._gemm.set_num_threads)
#
# beta == 0 never reads C (NaN there does not propagate).  Any m, n, k >= 0;
# k == 0 gives epi(beta * C).  Returns BP_OK, or BP_ENOMEM when a packing
# buffer cannot be allocated, BP_EINVAL for an unknown kind or a missing
# bias/aux -- C is then unspecified.  Runs without the GIL; raises nothing.
from cython cimport floating

cdef extern from "bp_gemm.h":
    ctypedef enum bp_epilogue:
        BP_EPI_NONE
        BP_EPI_BIAS
        BP_EPI_BIAS_RELU
        BP_EPI_BIAS_SIGMOID
        BP_EPI_BIAS_TANH
        BP_EPI_BIAS_IDENTITY
        BP_EPI_MUL_DRELU
        BP_EPI_MUL_DSIGMOID
        BP_EPI_MUL_DTANH
    enum:
        BP_EPI_COUNT
        BP_OK
        BP_ENOMEM
        BP_EINVAL

cdef int gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
              const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
              const floating *b, Py_ssize_t rsb, Py_ssize_t csb,
              floating beta, floating *c, Py_ssize_t rsc, Py_ssize_t csc,
              bp_epilogue epi, const floating *bias,
              const floating *aux, Py_ssize_t ldaux,
              int num_threads) noexcept nogil

cdef int gemm_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                  const float *a, Py_ssize_t rsa, Py_ssize_t csa,
                  const float *b, Py_ssize_t rsb, Py_ssize_t csb,
                  float beta, float *c, Py_ssize_t rsc, Py_ssize_t csc,
                  bp_epilogue epi, const float *bias,
                  const float *aux, Py_ssize_t ldaux,
                  int num_threads) noexcept nogil

cdef int gemm_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                  const double *a, Py_ssize_t rsa, Py_ssize_t csa,
                  const double *b, Py_ssize_t rsb, Py_ssize_t csb,
                  double beta, double *c, Py_ssize_t rsc, Py_ssize_t csc,
                  bp_epilogue epi, const double *bias,
                  const double *aux, Py_ssize_t ldaux,
                  int num_threads) noexcept nogil

# C := epi(alpha * bf16(op(A)) @ bf16(op(B)) + beta * C): float32 operands rounded to
# bfloat16 (nearest, ties to even), float32 accumulation; otherwise as gemm_f32.
cdef int gemm_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                   const float *a, Py_ssize_t rsa, Py_ssize_t csa,
                   const float *b, Py_ssize_t rsb, Py_ssize_t csb,
                   float beta, float *c, Py_ssize_t rsc, Py_ssize_t csc,
                   bp_epilogue epi, const float *bias,
                   const float *aux, Py_ssize_t ldaux,
                   int num_threads) noexcept nogil

# Run chunks 0..nchunks-1 of fn (each independent of the others, in any order and on
# any thread) on up to num_threads threads of the GEMM's pool (<= 0: the module's
# setting), the caller included; on the caller alone when one thread is asked, the
# pool is busy or backing off, or in a fork child (as gemm decides).  Returns when
# every chunk has run.  For elementwise passes over what a threaded product wrote:
# run on both cores, each reads and writes mostly what is in its own cache.
ctypedef void (*chunk_fn)(void *arg, int chunk, int worker) noexcept nogil

cdef void run_chunks(chunk_fn fn, void *arg, int nchunks, int num_threads) noexcept nogil
