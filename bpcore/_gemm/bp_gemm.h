/* bp_gemm.h -- the public C vocabulary of bpcore's GEMM: epilogue kinds and
 * status codes.  Declarations only, so any extension that cimports
 * bpcore._gemm may include it.  The entry points themselves are Cython
 * functions declared in bpcore/_gemm.pxd (see the "Design:" comment atop
 * bpcore/_gemm.pyx).
 */
#ifndef BP_GEMM_H
#define BP_GEMM_H

/* What the store applies to every element v = alpha*(op(A)op(B))[i,j] + beta*C[i,j]
 * once the whole K sum is in (i: row, j: column of C).                        */
typedef enum bp_epilogue {
    BP_EPI_NONE = 0,          /* C = v                                        */
    BP_EPI_BIAS = 1,          /* C = v + bias[j]                              */
    BP_EPI_BIAS_RELU = 2,     /* C = max(v + bias[j], 0)   (NaN propagates)   */
    BP_EPI_BIAS_SIGMOID = 3,  /* C = 1 / (1 + exp(-(v + bias[j])))  (stable)  */
    BP_EPI_BIAS_TANH = 4,     /* C = tanh(v + bias[j])                        */
    BP_EPI_BIAS_IDENTITY = 5, /* C = v + bias[j]  (the linear "activation")   */
    BP_EPI_MUL_DRELU = 6,     /* C = v * (aux[i,j] > 0)                       */
    BP_EPI_MUL_DSIGMOID = 7,  /* C = v * (aux[i,j] * (1 - aux[i,j]))          */
    BP_EPI_MUL_DTANH = 8      /* C = v * (1 - aux[i,j]**2)                    */
} bp_epilogue;

#define BP_EPI_COUNT 9

/* Status returned by the entry points (never an exception: they run nogil). */
enum {
    BP_OK = 0,
    BP_ENOMEM = -1,   /* a packing buffer could not be allocated             */
    BP_EINVAL = -2    /* bad epilogue kind, or bias/aux missing for the kind */
};

#endif
