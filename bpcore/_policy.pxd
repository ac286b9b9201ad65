# Design:
#
# The input policy's "final form", as compiled code tests it.  bpcore/_validate.py
# states the policy (and converts or refuses everything else, naming the
# argument); an array already in final form -- an exact ndarray, float32 or
# float64, C-contiguous, aligned, native byte order -- needs none of that, so the
# compiled fast paths (bpcore._kernels' functions, Trainer.train_step_fast,
# bpcore.matmul) recognise it with a few C-API macros and skip the general
# validation.  This is the one copy of that test; _validate.is_final is its
# Python statement, and tests/test_validate.py checks that the two agree on
# every layout of tests/conftest.layout.
#
# The core (bpcore._step.Trainer) takes blocks its faces have already converted;
# it checks only that its kernels cannot read out of bounds (c_array below).
#
# matmul's operands are the one place where strides are read (the GEMM takes
# any element strides): there the same test holds without C-contiguity
# (``final_array(arr, False)``; ``is_final(arr, contiguous=False)``).
#
# NOTE: PyArray_IS_C_CONTIGUOUS is also true for arrays whose size-1 dimensions
# have any stride (even 0): the fast paths never read strides, only the shape.
cimport numpy as cnp


cdef inline int final_array(object arr, bint contiguous) noexcept:
    """The NumPy type number of a final-form float32/float64 ndarray; else -1.

    ``contiguous`` False: any strides that are whole elements (NumPy's aligned
    flag) instead of C-contiguous.
    """
    if not cnp.PyArray_CheckExact(arr):
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int t = cnp.PyArray_TYPE(a)
    if ((t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE)
            or (contiguous and not cnp.PyArray_IS_C_CONTIGUOUS(a))
            or not cnp.PyArray_ISBEHAVED_RO(a)):
        return -1
    return t


cdef inline int plain_array(object arr) noexcept:
    """``final_array(arr, True)``: what every fast path but matmul's operands takes."""
    return final_array(arr, True)


cdef inline bint c_array(object arr, int typenum, int ndim) noexcept:
    """``arr`` is an ndarray (a subclass too) of ``typenum`` in native byte order,
    C-contiguous, aligned, with ``ndim`` dimensions (-1: any): the training core's
    contract (bpcore._step.Trainer's checks: what its kernels may read without going
    out of bounds, after the faces converted with bpcore._validate).  C-API macros,
    no Python attribute lookups (a one-row predict's checks cost 1.2 us through
    ``.flags`` and ``.dtype``)."""
    if not cnp.PyArray_Check(arr):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>arr
    return (cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(a), typenum)
            and cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a) and (ndim < 0 or cnp.PyArray_NDIM(a) == ndim))
