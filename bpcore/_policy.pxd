# Design:
#
# The input policy's "final form", as compiled code tests it.  bpcore/_validate.py
# states the policy (and converts or refuses everything else, naming the
# argument); an array already in final form -- an exact ndarray, float32 or
# float64, C-contiguous, aligned, native byte order -- needs none of that, so the
# compiled fast paths (bpcore._kernels' functions, Trainer.train_step_fast)
# recognise it with a few C-API macros and skip the general validation.  This is
# the one copy of that test; _validate.is_final is its Python statement, and
# tests/test_validate.py checks that the two agree on every layout of
# tests/conftest.layout.
#
# NOTE: PyArray_IS_C_CONTIGUOUS is also true for arrays whose size-1 dimensions
# have any stride (even 0): the fast paths never read strides, only the shape.
cimport numpy as cnp


cdef inline int plain_array(object arr) noexcept:
    """The NumPy type number of a final-form float32/float64 ndarray; else -1."""
    if not cnp.PyArray_CheckExact(arr):
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int t = cnp.PyArray_TYPE(a)
    if ((t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE) or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or not cnp.PyArray_ISBEHAVED_RO(a)):
        return -1
    return t
