"""bpcore._gemm against a float64 NumPy product: shapes x layouts x dtypes x kernels."""
import subprocess
import sys
import textwrap

import numpy as np
from conftest import import_oracle, layout, run_python, sigmoid as _sigmoid
import pytest

from bpcore import _gemm
from bpcore import reference as R
from bpcore._gemm import matmul

DTYPES = (np.float32, np.float64)
# Relative error per unit of K: well above K*eps growth, far below any real bug.
EPS = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-15}


# Every kernel this CPU runs; "avx512_emulated" (the AVX-512 tile over scalar C) runs
# everywhere, so the 8 x 48 / 8 x 24 tile's edges and blocking are tested on any CPU.
KERNELS = _gemm._runnable_kernels()


@pytest.fixture(params=KERNELS)
def kernel(request):
    before = _gemm.cpu_features()["kernel"]
    _gemm._set_kernel(request.param)
    yield request.param
    _gemm._set_kernel(before)


@pytest.fixture
def threads():
    before = _gemm.get_num_threads()
    yield _gemm.set_num_threads
    _gemm.set_num_threads(before)


def reference(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """alpha*op(a)@op(b) + beta*out in float64 (out ignored when beta == 0)."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    r = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if beta != 0:
        r = r + beta * np.asarray(out, dtype=np.float64)
    return r


def assert_close(got, op_a, b, want, alpha=1.0, beta=0.0, out=None, trans_b=None):
    """|got - want| <= eps * ((k+4) |alpha| (|op(a)| @ |op(b)|) + 4 |beta| |out|), elementwise.

    The classic bound for a K-term dot product, gamma_K * |A||B|, with eps a
    few times the unit roundoff (see EPS)."""
    k = op_a.shape[1]
    op_b = b if b.shape[0] == k and (trans_b is None or not trans_b) else b.T
    bound = (k + 4) * abs(alpha) * (np.abs(op_a).astype(np.float64) @ np.abs(op_b))
    if beta != 0 and out is not None:
        bound = bound + 4 * abs(beta) * np.abs(out)
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= EPS[np.dtype(got.dtype)] * bound + 1e-300)
    assert not bad.any(), (f"{bad.sum()} elements off; worst error {err.max():.3g} "
                           f"where the bound is {(EPS[np.dtype(got.dtype)] * bound).min():.3g}")


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def operands(rng, m, n, k, dtype, trans_a=False, trans_b=False):
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    return a, b


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------
_rng = np.random.default_rng(1234)
RANDOM_SHAPES = [tuple(int(x) for x in _rng.integers(1, 301, size=3)) for _ in range(10)] + [
    (1, 1, 1), (2, 2, 2), (6, 16, 1), (7, 17, 3), (5, 9, 257), (13, 100, 64),
    (64, 100, 1000), (64, 1000, 100), (1000, 100, 64), (145, 33, 513), (1, 300, 300),
    (300, 1, 300), (300, 300, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", RANDOM_SHAPES)
def test_matches_numpy_all_transposes(kernel, dtype, m, n, k):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    for trans_a in (False, True):
        for trans_b in (False, True):
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            got = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
            assert got.dtype == dtype and got.shape == (m, n)
            assert got.flags.c_contiguous
            assert_close(got, a.T if trans_a else a, b, reference(a, b, trans_a, trans_b),
                         trans_b=trans_b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large(dtype):
    rng = np.random.default_rng(7)
    a, b = operands(rng, 700, 520, 900, dtype)
    assert_close(matmul(a, b), a, b, reference(a, b))
    a, b = operands(rng, 700, 520, 900, dtype, True, True)
    assert_close(matmul(a, b, trans_a=True, trans_b=True), a.T, b,
                 reference(a, b, True, True), trans_b=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(3, 5, 4), (50, 70, 300), (200, 130, 600)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (-0.5, 2.0), (2.5, -1.0), (0.0, 0.5),
                                        (3.0, 0.0)])
def test_alpha_beta(kernel, dtype, m, n, k, alpha, beta):
    rng = np.random.default_rng(3)
    a, b = operands(rng, m, n, k, dtype, trans_b=True)
    out = rand(rng, (m, n), dtype)
    c0 = out.copy()
    got = matmul(a, b, trans_b=True, alpha=alpha, beta=beta, out=out)
    assert got is out
    assert_close(got, a, b, reference(a, b, False, True, alpha, beta, c0), alpha, beta, c0,
                 trans_b=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(2, 3, 4), (40, 50, 60), (150, 170, 300)])
def test_beta_zero_ignores_nan_in_out(kernel, dtype, m, n, k):
    rng = np.random.default_rng(5)
    a, b = operands(rng, m, n, k, dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    got = matmul(a, b, beta=0.0, out=out)
    assert np.isfinite(got).all()
    assert_close(got, a, b, reference(a, b))


def _layouts(x):
    """Views of the same values with other strides (all must be read in place)."""
    for kind in ("contiguous", "fortran", "transposed", "sliced", "negative", "read_only"):
        yield kind, layout(x, kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(4, 5, 3), (37, 45, 70), (130, 40, 300)])
def test_any_strides(kernel, dtype, m, n, k):
    rng = np.random.default_rng(11)
    a0, b0 = operands(rng, m, n, k, dtype)
    for trans in (False, True):
        for name_a, a in _layouts(a0.T.copy() if trans else a0):
            for name_b, b in _layouts(b0):
                got = matmul(a, b, trans_a=trans)
                want = reference(a, b, trans_a=trans)
                assert_close(got, a.T if trans else a, b, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(3, 4, 5), (40, 50, 300), (130, 70, 20)])
def test_c_entry_with_strided_c(kernel, dtype, m, n, k):
    """The C entry point's general column stride of C (matmul's out is C-contiguous)."""
    rng = np.random.default_rng(12)
    a, b = operands(rng, m, n, k, dtype)
    for layout in ("F", "strided", "negative"):
        if layout == "F":
            out = np.asfortranarray(rand(rng, (m, n), dtype))
        elif layout == "strided":
            out = rand(rng, (2 * m, 3 * n), dtype)[::2, ::3]
        else:
            out = rand(rng, (m, n), dtype)[::-1, ::-1]
        c0 = out.copy()
        got = _gemm._matmul_strided_out(a, b, out, alpha=1.5, beta=-0.5)
        assert got is out
        assert_close(out, a, b, reference(a, b, alpha=1.5, beta=-0.5, out=c0), 1.5, -0.5, c0)
        out[...] = np.nan
        _gemm._matmul_strided_out(a, b, out)
        assert_close(out, a, b, reference(a, b))


def test_memmap_input(tmp_path):
    rng = np.random.default_rng(2)
    a = rand(rng, (30, 40), np.float32)
    path = tmp_path / "a.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=a.shape)
    mm[:] = a
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=a.shape)
    b = rand(rng, (40, 20), np.float32)
    assert_close(matmul(ro, b), a, b, reference(a, b))
    assert_close(matmul(b.T, ro.T, trans_a=False), b.T, a.T, reference(b.T, ro.T))


def test_misaligned_input_is_handled():
    raw = np.zeros(4 * 12 + 1, dtype=np.uint8)
    a = np.frombuffer(raw.data, dtype=np.float32, count=12, offset=1).reshape(3, 4)
    b = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_array_equal(matmul(a, b), np.zeros((3, 2), np.float32))


def test_lists_and_ints_take_float64():
    got = matmul([[1, 2], [3, 4]], [[1, 0], [0, 1]])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[1, 2], [3, 4]])
    x = np.ones((2, 2), np.float32)
    assert matmul(x, [[1, 2], [3, 4]]).dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (0, 5, 0)])
def test_zero_sized(kernel, dtype, m, n, k):
    rng = np.random.default_rng(0)
    a, b = operands(rng, m, n, k, dtype)
    got = matmul(a, b)
    assert got.shape == (m, n) and got.dtype == dtype
    np.testing.assert_array_equal(got, np.zeros((m, n), dtype))
    out = np.full((m, n), 3.0, dtype=dtype)
    matmul(a, b, alpha=2.0, beta=0.5, out=out)
    np.testing.assert_array_equal(out, np.full((m, n), 1.5, dtype))
    out = np.full((m, n), np.nan, dtype=dtype)
    matmul(a, b, out=out)
    np.testing.assert_array_equal(out, np.zeros((m, n), dtype))


# ---------------------------------------------------------------------------
# Epilogues (the C entry point, through the private _matmul_epilogue hook)
# ---------------------------------------------------------------------------
EPILOGUE_REFERENCE = {
    "none": lambda z, bias, aux: z,
    "bias": lambda z, bias, aux: z + bias,
    "bias_identity": lambda z, bias, aux: z + bias,
    "bias_relu": lambda z, bias, aux: np.maximum(z + bias, 0),
    "bias_sigmoid": lambda z, bias, aux: _sigmoid(z + bias),
    "bias_tanh": lambda z, bias, aux: np.tanh(z + bias),
    "mul_drelu": lambda z, bias, aux: z * (aux > 0),
    "mul_dsigmoid": lambda z, bias, aux: z * (aux * (1 - aux)),
    "mul_dtanh": lambda z, bias, aux: z * (1 - aux ** 2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", sorted(EPILOGUE_REFERENCE))
@pytest.mark.parametrize("m,n,k,trans_b,beta", [(2, 3, 2, False, 0.0), (64, 100, 300, False, 0.0),
                                                (37, 50, 600, True, 0.5), (9, 7, 0, False, 1.0),
                                                (32, 10, 64, True, 0.0), (64, 10, 32, False, 0.5)])
def test_epilogues(kernel, dtype, epilogue, m, n, k, trans_b, beta):
    rng = np.random.default_rng(17)
    a, b = operands(rng, m, n, k, dtype, trans_b=trans_b)
    bias = rand(rng, n, dtype)
    aux = rng.uniform(-1, 1, (m, n)).astype(dtype)
    out = rand(rng, (m, n), dtype)
    c0 = out.copy()
    got = _gemm._matmul_epilogue(a, b, epilogue, bias=bias, aux=aux, trans_b=trans_b,
                                 alpha=0.7, beta=beta, out=out if beta else None)
    z = reference(a, b, False, trans_b, 0.7, beta, c0)
    want = EPILOGUE_REFERENCE[epilogue](z, bias.astype(np.float64), aux.astype(np.float64))
    tol = EPS[np.dtype(dtype)] * 8 * (max(k, 1) * np.abs(a).max(initial=1)
                                      * np.abs(b).max(initial=1) + 2 + np.abs(bias).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.skipif(not _gemm.cpu_features()["avx2"], reason="needs AVX2")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", sorted(EPILOGUE_REFERENCE))
@pytest.mark.parametrize("m,n,k,trans_b", [(32, 64, 64, False), (32, 10, 64, True),
                                           (64, 100, 300, False), (5, 33, 17, True)])
def test_epilogue_builds_give_the_same_floats(kernel, dtype, epilogue, m, n, k, trans_b):
    """The baseline and the AVX2 build of the epilogue (epilogue.h) agree bit for bit,
    special values included, and match the reference."""
    rng = np.random.default_rng(31)
    a, b = operands(rng, m, n, k, dtype, trans_b=trans_b)
    bias = rand(rng, n, dtype)
    aux = rng.uniform(-1, 1, (m, n)).astype(dtype)
    aux[0, : min(n, 4)] = [0.0, -0.0, np.nan, np.inf][: min(n, 4)]
    a[1, 0] = np.nan
    got = {}
    for isa in ("baseline", "avx2"):
        before = _gemm._set_epilogue_isa(isa)
        try:
            got[isa] = _gemm._matmul_epilogue(a, b, epilogue, bias=bias, aux=aux,
                                              trans_b=trans_b, alpha=0.7)
        finally:
            _gemm._set_epilogue_isa(before)
    assert got["baseline"].tobytes() == got["avx2"].tobytes()
    z = reference(a, b, False, trans_b, 0.7, 0.0, None)
    with np.errstate(invalid="ignore"):     # the NaN row
        want = EPILOGUE_REFERENCE[epilogue](z, bias.astype(np.float64), aux.astype(np.float64))
    finite = np.isfinite(want)
    tol = EPS[np.dtype(dtype)] * 8 * (k * np.abs(np.nan_to_num(a)).max()
                                      * np.abs(b).max() + 2 + np.abs(bias).max())
    np.testing.assert_allclose(got["avx2"][finite], want[finite], rtol=0, atol=tol)
    np.testing.assert_array_equal(np.isnan(got["avx2"]), np.isnan(want))


def test_epilogue_aux_with_its_own_row_stride():
    rng = np.random.default_rng(4)
    a, b = operands(rng, 20, 30, 40, np.float64)
    big = rng.uniform(-1, 1, (20, 50))
    aux = big[:, 5:35]
    got = _gemm._matmul_epilogue(a, b, "mul_dtanh", aux=aux)
    np.testing.assert_allclose(got, (a @ b) * (1 - aux ** 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_epilogue_is_stable(dtype):
    a = np.array([[1.0], [-1.0], [0.0]], dtype)
    b = np.array([[1e4, -1e4, 50.0, -50.0, 1e30, -1e30]], dtype)
    with np.errstate(all="raise"):
        got = _gemm._matmul_epilogue(a, b, "bias_sigmoid", bias=np.zeros(6, dtype))
    assert np.isfinite(got).all()
    assert got[0, 0] == 1 and got[0, 1] == 0 and got[2, 0] == 0.5


# NOTE: a k = 1 product of ones with one row b stores every b[0, j] exactly (no
# sum; -0.0 comes out as +0.0, the accumulator's zero plus -0.0), so the
# epilogue's inputs are the plain product's, bit for bit; m * n * k above the
# plain loop's size (SMALL_MNK) takes the blocked path, the (4, 3) shape the plain loop.
SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, -1.5, 2.5, 1e-40, -1e-40, 3e38, -3e38]


def _exact_product(dtype, m, row):
    a = np.ones((m, 1), dtype)
    b = np.asarray(row, dtype)[None, :]
    z = _gemm._matmul_epilogue(a, b, "none")
    np.testing.assert_array_equal(z, np.repeat(b, m, axis=0))
    return a, b, z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,reps", [(64, 8), (4, 1)])
def test_relu_epilogues_keep_each_special_value(kernel, dtype, m, reps):
    with np.errstate(all="ignore"):
        row = np.tile(np.asarray(SPECIALS, dtype), reps)[: max(3, 12 * reps)]
        a, b, z = _exact_product(dtype, m, row)
        got = _gemm._matmul_epilogue(a, b, "bias_relu", bias=np.zeros(row.size, dtype))
        want = np.where(z < 0, dtype(0), z)     # NaN stays; negatives become +0.0
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                      want.view(f"u{want.itemsize}"))
        aux = np.random.default_rng(3).choice(np.asarray([-1.0, 0.0, -0.0, 1.0, np.nan], dtype),
                                              z.shape)
        got = _gemm._matmul_epilogue(a, b, "mul_drelu", aux=aux)
        want = z * (aux > 0).astype(dtype)      # inf * 0 is NaN, -1.5 * 0 is -0.0
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue,standalone", [("bias_sigmoid", "sigmoid_forward"),
                                                 ("bias_tanh", "tanh_forward")])
def test_vector_epilogues_equal_the_standalone_kernels(kernel, dtype, epilogue, standalone):
    # The fused forward's activation is the one sigmoid_forward / tanh_forward
    # compute (vmath.h), bit for bit, whatever the tile edges.
    import bpcore

    rng = np.random.default_rng(5)
    for m, n in [(64, 100), (7, 53), (3, 5)]:
        row = np.concatenate([rng.uniform(-30, 30, n - 3), [0.0, -0.0, 90.0]]).astype(dtype)
        bias = rng.uniform(-1, 1, n).astype(dtype)
        a, b, z = _exact_product(dtype, m, row)
        got = _gemm._matmul_epilogue(a, b, epilogue, bias=bias)
        want = getattr(bpcore, standalone)(z + bias)
        np.testing.assert_array_equal(got, want)


def test_epilogue_errors():
    a = np.ones((3, 4))
    b = np.ones((4, 5))
    with pytest.raises(ValueError, match="bias"):
        _gemm._matmul_epilogue(a, b, "bias_relu", bias=np.ones(4))
    with pytest.raises(ValueError, match="aux"):
        _gemm._matmul_epilogue(a, b, "mul_drelu", aux=np.ones((5, 3)))
    with pytest.raises(ValueError, match="epilogue"):
        _gemm._matmul_epilogue(a, b, "softmax")


# ---------------------------------------------------------------------------
# Errors: each names the argument
# ---------------------------------------------------------------------------
def test_mixed_dtypes():
    with pytest.raises(TypeError, match="`a`.*`b`"):
        matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))
    with pytest.raises(TypeError, match="`a`"):
        matmul(np.ones((2, 2), np.complex128), np.ones((2, 2)))
    with pytest.raises(TypeError, match="`b`"):
        matmul(np.ones((2, 2)), np.ones((2, 2), np.float16))


def test_wrong_ndim():
    with pytest.raises(ValueError, match="`a` must be 2-D"):
        matmul(np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="`b` must be 2-D"):
        matmul(np.ones((2, 3)), np.ones((2, 3, 4)))


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_inner_dimension_mismatch(trans_a, trans_b):
    a = np.ones((3, 4), np.float32)
    b = np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match=r"`b` must have shape .*\(5, 6\)") as info:
        matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert "(3, 4)" in str(info.value) or "(4, 3)" in str(info.value)


def test_bad_out():
    a = np.ones((3, 4))
    b = np.ones((4, 5))
    with pytest.raises(ValueError, match="`out` must have shape"):
        matmul(a, b, out=np.empty((5, 3)))
    with pytest.raises(ValueError, match="`out` must have dtype"):
        matmul(a, b, out=np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="`out` must be C-contiguous"):
        matmul(a, b, out=np.empty((5, 3)).T)
    ro = np.empty((3, 5))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`out` is read-only"):
        matmul(a, b, out=ro)
    with pytest.raises(ValueError, match="`out` must be a NumPy array"):
        matmul(a, b, out=[[0.0] * 5] * 3)
    sq = np.ones((4, 4))
    with pytest.raises(ValueError, match="`out` overlaps the input `a`"):
        matmul(sq, sq.copy(), out=sq)
    with pytest.raises(ValueError, match="`out` overlaps the input `b`"):
        matmul(sq.copy(), sq, out=sq)


def test_beta_needs_out():
    with pytest.raises(ValueError, match=r"beta != 0 needs `out`"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), beta=1.0)


def test_bad_scalars():
    with pytest.raises(TypeError, match="`alpha`"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), alpha="2")
    with pytest.raises(ValueError, match="`alpha` must be finite"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), alpha=float("inf"))
    with pytest.raises(ValueError, match="`beta`"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), beta=np.nan, out=np.ones((2, 2)))
    with pytest.raises(ValueError, match="`n`"):
        _gemm.set_num_threads(0)
    with pytest.raises(ValueError, match="`name`"):
        _gemm._set_kernel("sse9")


# ---------------------------------------------------------------------------
# Determinism, threads, dispatch, FPU state
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_reproducible(dtype):
    rng = np.random.default_rng(8)
    a, b = operands(rng, 301, 203, 777, dtype)
    first = matmul(a, b)
    for _ in range(3):
        np.testing.assert_array_equal(matmul(a, b), first)


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without OpenMP")
@pytest.mark.parametrize("dtype", DTYPES)
# (13, ...): fewer row tiles than 3 chunks per thread; (1031, ...): chunks of more than
# MC rows, m not a multiple of the tile
@pytest.mark.parametrize("m,n,k", [(517, 300, 600), (64, 1000, 300), (1000, 100, 64),
                                   (13, 400, 500), (1031, 64, 40)])
def test_thread_count_does_not_change_results(threads, dtype, m, n, k):
    rng = np.random.default_rng(9)
    a, b = operands(rng, m, n, k, dtype)
    threads(1)
    one = matmul(a, b)
    epi1 = _gemm._matmul_epilogue(a, b, "bias_tanh", bias=np.ones(n, dtype))
    threads(2)
    two = matmul(a, b)
    epi2 = _gemm._matmul_epilogue(a, b, "bias_tanh", bias=np.ones(n, dtype))
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(epi1, epi2)
    threads(3)  # more threads than cores is allowed
    np.testing.assert_array_equal(matmul(a, b), one)
    threads(8)  # past PRIVATE_B_MAX: one B~ shared by the threads
    np.testing.assert_array_equal(matmul(a, b), one)


@pytest.fixture
def private_b():
    """_gemm._set_private_b_max, restored after the test."""
    before = _gemm._set_private_b_max(4)
    yield _gemm._set_private_b_max
    _gemm._set_private_b_max(before)


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without OpenMP")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(256, 256, 784), (517, 300, 600), (13, 4100, 300),
                                   (1031, 64, 40)])
def test_private_and_shared_b_panels_give_the_same_bits(kernel, threads, private_b, gemm_path,
                                                        dtype, m, n, k):
    """Each thread packing its own B~ (up to PRIVATE_B_MAX threads) or a share of one:
    the same bits as one thread, with an epilogue, a beta and a B wider than NC (4080)."""
    rng = np.random.default_rng(m + n)
    a, b = operands(rng, m, n, k, dtype)
    c0, bias = rand(rng, (m, n), dtype), rand(rng, n, dtype)
    gemm_path("blocked")
    out = {}
    for n_threads, private in ((1, 4), (2, 4), (2, 0), (3, 4), (3, 0)):
        threads(n_threads)
        private_b(private)
        out[n_threads, private] = (
            matmul(a, b, alpha=0.5, beta=-1.25, out=c0.copy()),
            _gemm._matmul_epilogue(a, b, "bias_relu", bias=bias))
    for key, (plain, epi) in out.items():
        assert plain.tobytes() == out[1, 4][0].tobytes(), key
        assert epi.tobytes() == out[1, 4][1].tobytes(), key
    assert_close(out[2, 4][0], a, b, reference(a, b, alpha=0.5, beta=-1.25, out=c0),
                 0.5, -1.25, c0)
    assert _gemm._set_private_b_max(4) == 0 and _gemm._set_private_b_max(99) == 4


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without threads")
@pytest.mark.parametrize("m,n,k,trans_a", [(64, 256, 784, False), (50, 100, 700, True),
                                           (49, 240, 300, False), (20, 97, 1100, False)])
def test_a_wide_product_shared_by_column_slices_has_the_same_bits(kernel, threads, gemm_path,
                                                                   dtype, m, n, k, trans_a):
    """C wider than tall, A read in place: the threads share it by slices of whole B~
    slivers (each packing its own into the one B~), the same bits as the row split
    and as one thread -- with alpha/beta, a bias epilogue, a derivative epilogue."""
    rng = np.random.default_rng(m * n)
    a, b = operands(rng, m, n, k, dtype, trans_a)
    c0, bias, aux = rand(rng, (m, n), dtype), rand(rng, n, dtype), rand(rng, (m, n), dtype)
    nr = _gemm._kernel_blocks(kernel)[np.dtype(dtype).name]["nr"]
    gemm_path("blocked")

    def run(t):
        out = []
        for call in (lambda: matmul(a, b, trans_a=trans_a, alpha=0.5, beta=-1.25,
                                    out=c0.copy()),
                     lambda: _gemm._matmul_epilogue(a, b, "bias_tanh", bias=bias,
                                                    trans_a=trans_a),
                     lambda: _gemm._matmul_epilogue(a, b, "mul_drelu", aux=aux,
                                                    trans_a=trans_a)):
            threads(t)      # no back-off from the product before: each one may split
            out.append(call())
        return out
    before = _gemm._set_col_split(True)
    try:
        one = run(1)
        calls = _gemm._col_split_calls()
        cols = run(2)
        took = _gemm._col_split_calls() - calls
        cols3 = run(3)
        _gemm._set_col_split(False)
        calls = _gemm._col_split_calls()
        rows = run(2)
        assert _gemm._col_split_calls() == calls
    finally:
        _gemm._set_col_split(before)
    if _gemm.get_num_threads() > 1:     # not a fork child without threads
        # the rule: A read in place (n <= 256 here), at least 3 slivers a thread
        assert took == (3 if -(-n // nr) >= 6 else 0)
    for got in (cols, cols3, rows):
        for x, y in zip(got, one):
            assert x.tobytes() == y.tobytes()
    assert_close(one[0], a.T if trans_a else a, b,
                 reference(a, b, trans_a, False, 0.5, -1.25, c0), 0.5, -1.25, c0)


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without threads")
def test_threaded_product_never_waits_for_an_absent_worker():
    """A worker that gets no core claims no chunk and delays nothing: the caller does
    the whole job (an OpenMP team's barrier waited for every thread; on a loaded
    machine that made 2 threads up to 800x slower than 1).  The pool notes such a
    product as starved and runs the next ones alone for a while (no wake-up, no
    chance of waiting for a descheduled worker); set_num_threads starts afresh.
    Bitwise the same results throughout."""
    out = _run_fresh("""
        import numpy as np
        from bpcore import _gemm
        rng = np.random.default_rng(3)
        a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 300))
        _gemm.set_num_threads(1)
        one = _gemm.matmul(a, b)
        _gemm.set_num_threads(2)
        _gemm.matmul(a, b)                  # the worker exists now
        _gemm._hold_workers(True)
        before = _gemm._starved_products()
        held = [_gemm.matmul(a, b) for _ in range(20)]
        starved = _gemm._starved_products() - before
        _gemm.set_num_threads(2)            # forget the back-off: the next product tries again
        mark = _gemm._starved_products()
        held.append(_gemm.matmul(a, b))
        retried = _gemm._starved_products() - mark
        _gemm._hold_workers(False)
        print(all((h == one).all() for h in held), starved, retried,
              (_gemm.matmul(a, b) == one).all())
    """, timeout=60)
    same, starved, retried, after = out.split()
    assert same == "True" and after == "True"
    # the first held product is starved; the back-off (>= 2 ms, doubling) spares others
    assert 1 <= int(starved) < 20
    assert int(retried) >= 1


def test_thread_setting_round_trips(threads):
    threads(1)
    assert _gemm.get_num_threads() == 1
    if _gemm.cpu_features()["openmp"]:
        threads(2)
        assert _gemm.get_num_threads() == 2


def test_cpu_features():
    f = _gemm.cpu_features()
    assert set(f) >= {"avx2", "fma", "avx512f", "kernel"}
    assert f["kernel"] in ("avx512", "avx2_fma", "portable")
    # the import-time choice is the best kernel this CPU runs
    assert _gemm._runnable_kernels()[0] == f["kernel"] or _env_forced()


def _env_forced():
    import os
    return any(os.environ.get(v) for v in ("BPCORE_FORCE_PORTABLE", "BPCORE_FORCE_KERNEL"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_set_blocks_resizes_the_current_kernels_blocks(dtype):
    """The bench's block sweep: any kc, the smallest mc and nc, big ones; the product
    stays right (only the summation order changes) and _set_kernel restores the table."""
    name = _gemm.cpu_features()["kernel"]
    table = _gemm._kernel_blocks(name)[np.dtype(dtype).name]
    rng = np.random.default_rng(12)
    a, b = operands(rng, 70, 130, 300, dtype)
    try:
        for kc, mc, nc in ((1, table["mr"], table["nr"]), (7, 2 * table["mr"], table["nr"]),
                           (300, table["mc"], 2 * table["nc"]), (512, 4 * table["mr"], 96)):
            if nc % table["nr"]:
                continue
            before = _gemm._set_blocks(np.dtype(dtype).name, kc, mc, nc)
            assert set(before) == {"kc", "mc", "nc"}
            assert _gemm.cpu_features()["kernel"] == name
            assert_close(_gemm.matmul(a, b), a, b, reference(a, b))
        for bad, match in (({"kc": 0}, "`kc` must be"), ({"mc": table["mr"] + 1}, "`mc` must"),
                           ({"nc": 0}, "`nc` must"), ({"kc": 2.0}, "`kc` must")):
            args = {"kc": 64, "mc": table["mc"], "nc": table["nc"], **bad}
            with pytest.raises(ValueError, match=match):
                _gemm._set_blocks(np.dtype(dtype).name, **args)
        with pytest.raises(ValueError, match="`dtype` must be one of"):
            _gemm._set_blocks("float16", 64, table["mc"], table["nc"])
    finally:
        _gemm._set_kernel(name)
    assert _gemm._kernel_blocks(name)[np.dtype(dtype).name] == table


@pytest.mark.parametrize("name", ["avx512", "avx2_fma", "portable", "avx512_emulated"])
def test_kernel_table_is_consistent(name):
    for dtype, blocks in _gemm._kernel_blocks(name).items():
        assert blocks["mc"] % blocks["mr"] == 0 and blocks["nc"] % blocks["nr"] == 0, dtype
        assert blocks["mr"] * blocks["nr"] <= 8 * 48
        # the B~ sliver fits a 32 KiB L1 with room for the A sliver
        assert blocks["kc"] * blocks["nr"] * np.dtype(dtype).itemsize <= 24 * 1024


# m, n crossing every tile height (6, 8) and width (8, 16, 24, 32, 48) edge; k crossing KC=128
TILE_EDGES = [(m, n, k) for m, n, k in zip(
    (1, 5, 6, 7, 8, 9, 13, 16, 17, 25),
    (47, 1, 17, 24, 9, 33, 49, 8, 25, 97),
    (129, 3, 128, 257, 64, 130, 1, 200, 127, 129))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tile_edges(kernel, dtype):
    """Every partial tile (rows past mr, masked columns, 1-3 vectors per row) with
    alpha, beta and NaN in an ignored C, in each kernel."""
    rng = np.random.default_rng(21)
    for m, n, k in TILE_EDGES:
        for trans_a, trans_b in ((False, False), (True, True)):
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            out = rand(rng, (m, n), dtype)
            want = reference(a, b, trans_a, trans_b, -0.5, 2.0, out)
            got = matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=-0.5, beta=2.0,
                         out=out.copy())
            assert_close(got, a.T if trans_a else a, b, want, -0.5, 2.0, out, trans_b=trans_b)
            nan = np.full((m, n), np.nan, dtype)
            got = matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=nan)
            assert_close(got, a.T if trans_a else a, b, reference(a, b, trans_a, trans_b),
                         trans_b=trans_b)


def _run_fresh(code, **env):
    return run_python(code, **env)


_FORCED = """
    import numpy as np
    from bpcore import _gemm, cpu_features
    rng = np.random.default_rng(5)
    a = rng.standard_normal((70, 300)).astype(np.float32)
    b = rng.standard_normal((300, 50)).astype(np.float32)
    np.save(OUT, _gemm.matmul(a, b))
    print(cpu_features()["kernels"]["gemm"])
"""


@pytest.mark.parametrize("value, name", [(v, n) for v, n in (
    ("avx512", "avx512"), ("avx2", "avx2_fma"), ("AVX2", "avx2_fma"), ("portable", "portable"))
    if n in KERNELS])
def test_force_kernel_env(tmp_path, value, name):
    """BPCORE_FORCE_KERNEL picks the kernel at import: the same bits as _set_kernel here."""
    path = str(tmp_path / "c.npy")
    out = _run_fresh(_FORCED.replace("OUT", repr(path)), BPCORE_FORCE_KERNEL=value)
    assert out == name
    rng = np.random.default_rng(5)
    a = rng.standard_normal((70, 300)).astype(np.float32)
    b = rng.standard_normal((300, 50)).astype(np.float32)
    before = _gemm.cpu_features()["kernel"]
    _gemm._set_kernel(name)
    try:
        np.testing.assert_array_equal(np.load(path), matmul(a, b))
    finally:
        _gemm._set_kernel(before)


def test_force_kernel_env_edge_cases():
    # BPCORE_FORCE_PORTABLE wins; a bad value names the switch
    assert _run_fresh("import bpcore; print(bpcore.cpu_features()['kernels']['gemm'])",
                      BPCORE_FORCE_PORTABLE="1", BPCORE_FORCE_KERNEL="avx2") == "portable"
    with pytest.raises(AssertionError, match="`BPCORE_FORCE_KERNEL` must be one of"):
        _run_fresh("import bpcore", BPCORE_FORCE_KERNEL="sse9")
    if "avx512" not in KERNELS:  # a kernel this CPU cannot run: a warning, then the best one
        out = _run_fresh("""
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                import bpcore
            print(bpcore.cpu_features()["kernel"], caught[0].category.__name__)
        """, BPCORE_FORCE_KERNEL="avx512")
        assert out == f"{KERNELS[0]} RuntimeWarning"


def test_force_bf16_env():
    """BPCORE_FORCE_BF16 picks the compute_dtype="bfloat16" path at import;
    BPCORE_FORCE_PORTABLE means the emulated one; a path this CPU cannot run warns."""
    code = "import bpcore; print(bpcore.cpu_features()['bf16'])"
    assert _run_fresh(code, BPCORE_FORCE_BF16="emulated") == "emulated"
    assert _run_fresh(code, BPCORE_FORCE_BF16=" Emulated ") == "emulated"
    assert _run_fresh(code, BPCORE_FORCE_PORTABLE="1", BPCORE_FORCE_BF16="native") \
        == "emulated"
    with pytest.raises(AssertionError, match="`BPCORE_FORCE_BF16` must be one of"):
        _run_fresh("import bpcore", BPCORE_FORCE_BF16="amx2")
    for value, path in [("native", "avx512_bf16"), ("amx", "amx")]:
        if path in _gemm._runnable_bf16_paths():
            assert _run_fresh(code, BPCORE_FORCE_BF16=value) == path
        else:
            out = _run_fresh("""
                import warnings
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    import bpcore
                print(bpcore.cpu_features()["bf16"], caught[0].category.__name__,
                      "BPCORE_FORCE_BF16=" in str(caught[0].message))
            """, BPCORE_FORCE_BF16=value)
            assert out == "emulated RuntimeWarning True"


def test_force_portable_env():
    out = _run_fresh("""
        import numpy as np
        from bpcore import _gemm
        a = np.arange(12.0).reshape(3, 4)
        assert np.allclose(_gemm.matmul(a, a.T), a @ a.T)
        print(_gemm.cpu_features()["kernel"])
    """, BPCORE_FORCE_PORTABLE="1")
    assert out == "portable"


def test_import_leaves_denormals_alone():
    out = _run_fresh("""
        import bpcore._gemm  # first: the module is what is under test
        import numpy as np
        a = np.ones((64, 64), np.float32)
        bpcore._gemm.matmul(a, a)
        print(np.float32(1e-45) * np.float32(1) != 0, np.float64(5e-324) * 1.0 != 0)
    """)
    assert out == "True True"


# ---------------------------------------------------------------------------
# compute_dtype="bfloat16": operands rounded to bfloat16, float32 accumulation
# ---------------------------------------------------------------------------
# ties to even both ways, a carry into the exponent, overflow to inf, subnormals, NaN
BF16_SPECIAL = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20,
                         2 - 2 ** -9, -(1 + 3 * 2 ** -8), 3.3895314e38, 3.3961776e38, 3.4e38,
                         -3.4e38, 1e-40, -1e-45, 1.1754944e-38, 0.0, -0.0, np.inf, -np.inf,
                         np.nan], np.float32)


def _bits(x):
    return np.where(np.isnan(x), np.float32(np.nan), x).view(np.uint32)


def test_round_bfloat16_matches_torch():
    torch = import_oracle("torch")
    rng = np.random.default_rng(31)
    x = np.concatenate([BF16_SPECIAL, rng.standard_normal(4000).astype(np.float32) * 1e3,
                        rng.integers(0, 2 ** 32, 4000, dtype=np.uint32).view(np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    got = R.round_bfloat16(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert (got.view(np.uint32) & 0xFFFF == 0).all()


@pytest.mark.parametrize("backend", [_gemm, R], ids=["compiled", "reference"])
def test_bf16_rounds_each_operand(backend, bf16_path):
    """x @ [[1]] with compute_dtype="bfloat16" is round_bfloat16(x), bit for bit (but
    the sign of zero: a sum starts at +0, so -0 comes out +0, as in any GEMM; and
    the bfloat16 tile, as vdpbf16ps, reads a subnormal as zero)."""
    x = BF16_SPECIAL.reshape(-1, 1)
    want = R.round_bfloat16(x) + np.float32(0)
    if backend is _gemm and bf16_path != "emulated":
        normal = ~(np.abs(want) < np.finfo(np.float32).tiny)
        if bf16_path == "avx512_bf16":  # the hardware's subnormals: not asserted here
            x, want = x[normal[:, 0]], want[normal[:, 0]]
        else:
            want = np.where(normal, want, np.float32(0))
    got = backend.matmul(x, np.ones((1, 1), np.float32), compute_dtype="bfloat16")
    np.testing.assert_array_equal(_bits(got), _bits(want))
    got = backend.matmul(np.ones((1, 1), np.float32), x.T, compute_dtype="bfloat16")
    np.testing.assert_array_equal(_bits(got), _bits(want.T))


BF16_SHAPES = [(1, 1, 1), (7, 17, 3), (37, 53, 29), (64, 100, 300), (130, 47, 257)]


@pytest.mark.parametrize("backend", [_gemm, R], ids=["compiled", "reference"])
@pytest.mark.parametrize("m,n,k", BF16_SHAPES)
def test_bf16_matmul_is_the_float32_product_of_rounded_operands(kernel, backend, m, n, k):
    rng = np.random.default_rng(m + 7 * n + 31 * k)
    for trans_a, trans_b in ((False, False), (True, False), (False, True), (True, True)):
        a, b = operands(rng, m, n, k, np.float32, trans_a, trans_b)
        out = rand(rng, (m, n), np.float32)
        ra, rb = R.round_bfloat16(a), R.round_bfloat16(b)
        want = reference(ra, rb, trans_a, trans_b, 1.5, -0.5, out)   # exact products, f64 sums
        got = backend.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.5,
                             out=out.copy(), compute_dtype="bfloat16")
        assert got.dtype == np.float32
        assert_close(got, ra.T if trans_a else ra, rb, want, 1.5, -0.5, out, trans_b=trans_b)
        # and not the float32 product (the rounding is really applied)
        if k >= 29:
            assert not np.allclose(got, reference(a, b, trans_a, trans_b, 1.5, -0.5, out),
                                   rtol=1e-5, atol=1e-5)


def test_bf16_twins_agree_and_match_torch(bf16_path):
    torch = import_oracle("torch")
    rng = np.random.default_rng(33)
    for m, n, k in BF16_SHAPES:
        a, b = operands(rng, m, n, k, np.float32)
        got = _gemm.matmul(a, b, compute_dtype="bfloat16")
        twin = R.matmul(a, b, compute_dtype="bfloat16")
        bound = (k + 4) * 1e-6 * (np.abs(R.round_bfloat16(a)) @ np.abs(R.round_bfloat16(b)))
        assert (np.abs(got - twin) <= 2 * bound).all()
        # PyTorch's bf16 matmul on the same rounded operands returns bfloat16: one
        # rounding of the float32 sum, so within half a bfloat16 ulp (2**-8 relative)
        ta = torch.from_numpy(a).to(torch.bfloat16)
        tb = torch.from_numpy(b).to(torch.bfloat16)
        ref = (ta @ tb).to(torch.float32).numpy()
        assert (np.abs(got - ref) <= 2 ** -8 * np.abs(ref) + 2 * bound).all()


def test_bf16_products_alternate_with_pytorchs_in_one_thread(bf16_path, threads):
    """Embedded beside PyTorch, whose bf16 matmul on an AMX CPU runs oneDNN's own AMX
    tiles with their own tile configuration in the same threads: each product, in
    turn, still right (bpcore loads its configuration around each macro kernel and
    releases the tiles after)."""
    torch = import_oracle("torch")
    rng = np.random.default_rng(34)
    a, b = operands(rng, 256, 192, 320, np.float32)
    ta, tb = torch.from_numpy(a).to(torch.bfloat16), torch.from_numpy(b).to(torch.bfloat16)
    want = R.round_bfloat16(a).astype(np.float64) @ R.round_bfloat16(b)
    bound = 330 * 2.0 ** -23 * (np.abs(R.round_bfloat16(a)).astype(np.float64)
                                @ np.abs(R.round_bfloat16(b)))
    first = None
    for t in (1, 2, 1, 2):
        threads(t)
        theirs = (ta @ tb).to(torch.float32).numpy()
        ours = _gemm.matmul(a, b, compute_dtype="bfloat16")
        assert (np.abs(ours - want) <= bound).all()
        assert (np.abs(theirs - want) <= 2 ** -8 * np.abs(want) + bound).all()
        first = ours if first is None else first
        np.testing.assert_array_equal(ours, first)


@pytest.mark.parametrize("backend", [_gemm, R], ids=["compiled", "reference"])
def test_bf16_bad_arguments(backend):
    a32 = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="`compute_dtype` must be one of 'bfloat16'"):
        backend.matmul(a32, a32, compute_dtype="float16")
    with pytest.raises(ValueError, match="`compute_dtype`='bfloat16' needs float32"):
        backend.matmul(np.ones((2, 2)), np.ones((2, 2)), compute_dtype="bfloat16")
    assert backend.matmul(a32, a32, compute_dtype=None).dtype == np.float32


def test_bf16_path_is_reported_and_chosen_by_the_cpu(bf16_path):
    assert _gemm.cpu_features()["bf16"] == bf16_path
    f = _gemm.cpu_features()
    native = f["avx512_bf16"] and f["avx512f"]
    runnable = _gemm._runnable_bf16_paths()
    assert ("avx512_bf16" in runnable) == native
    assert ("amx" in runnable) == f["amx_bf16"]
    assert runnable[-2:] == ["emulated", "avx512_bf16_emulated"]
    out = run_python("from bpcore import _gemm; print(_gemm.cpu_features()['bf16'])",
                     BPCORE_FORCE_BF16="", BPCORE_FORCE_PORTABLE="")
    assert out == ("amx" if f["amx_bf16"] else "avx512_bf16" if native else "emulated")


def test_bf16_path_bad_name():
    with pytest.raises(ValueError, match="`name` must be one of"):
        _gemm._set_bf16_path("amx2")
    if "avx512_bf16" not in _gemm._runnable_bf16_paths():
        with pytest.raises(RuntimeError, match="cannot run the 'avx512_bf16' bfloat16 path"):
            _gemm._set_bf16_path("avx512_bf16")


# The bfloat16 tile (microkernel_avx512.h): K in pairs, each pair's high (odd) product
# added before its low (even) one, as vdpbf16ps does; per KC block of 256 values the
# sums start at zero and are then added to C.  A model of those float32 operations in
# NumPy (each bfloat16 product is exact in float32, so each step is one rounding).
BF16_KC = 256


def _bf16_tile_model(a, b):
    ra, rb = R.round_bfloat16(a), R.round_bfloat16(b)
    m, k = ra.shape
    c = None
    for p0 in range(0, k, BF16_KC):
        acc = np.zeros((m, rb.shape[1]), np.float32)
        for p in range(p0, min(k, p0 + BF16_KC), 2):
            if p + 1 < min(k, p0 + BF16_KC):
                acc = acc + ra[:, p + 1, None] * rb[None, p + 1, :]
            acc = acc + ra[:, p, None] * rb[None, p, :]
        c = acc if c is None else c + acc
    return c


BF16_TILE_SHAPES = [(1, 1, 1), (1, 1, 2), (8, 48, 3), (9, 49, 256), (13, 50, 257),
                    (17, 97, 2 * BF16_KC + 3), (3, 16, 600), (40, 33, 17),
                    (64, 32, 1024), (33, 17, 544)]  # AMX: whole 512-value blocks, no tail


# the paths through the bfloat16 tile (the emulated one sums in the float32 kernel's order)
BF16_TILES = [p for p in _gemm._runnable_bf16_paths() if p != "emulated"]


@pytest.mark.parametrize("bf16_path", BF16_TILES, indirect=True)
@pytest.mark.parametrize("m,n,k", BF16_TILE_SHAPES)
def test_bf16_tile_sums_each_pair_high_half_first(bf16_path, m, n, k):
    rng = np.random.default_rng(m * n + k)
    a, b = operands(rng, m, n, k, np.float32)
    want = _bf16_tile_model(a, b)
    for trans_a, trans_b in ((False, False), (True, False), (False, True), (True, True)):
        got = _gemm.matmul(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b,
                           trans_a=trans_a, trans_b=trans_b, compute_dtype="bfloat16")
        if bf16_path == "avx512_bf16_emulated":
            np.testing.assert_array_equal(got, want)
        else:
            # NOTE: the hardware's tile is held to the model's order only within float32
            # rounding of the sums: the order is Intel's documented one, and no CPU
            # of the machines this was written on had the instruction to confirm it
            bound = (k + 4) * 2.0 ** -23 * (np.abs(R.round_bfloat16(a)).astype(np.float64)
                                            @ np.abs(R.round_bfloat16(b)))
            assert (np.abs(got - want) <= bound).all()


@pytest.mark.parametrize("m,n,k", BF16_SHAPES + [(9, 50, 513), (200, 150, 130)])
def test_bf16_paths_match_the_rounded_product(bf16_path, m, n, k):
    """Every path: alpha op(A) op(B) + beta C on rounded operands, transposes, views."""
    rng = np.random.default_rng(m + 5 * n + 17 * k)
    for trans_a, trans_b in ((False, False), (True, False), (False, True), (True, True)):
        a, b = operands(rng, m, n, k, np.float32, trans_a, trans_b)
        a = np.repeat(a, 2, axis=1)[:, ::2]     # strided views, the values unchanged
        b = np.repeat(b, 3, axis=0)[::3]
        out = rand(rng, (m, n), np.float32)
        ra, rb = R.round_bfloat16(a), R.round_bfloat16(b)
        want = reference(ra, rb, trans_a, trans_b, 1.5, -0.5, out)
        got = matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.5,
                     out=out.copy(), compute_dtype="bfloat16")
        assert_close(got, ra.T if trans_a else ra, rb, want, 1.5, -0.5, out, trans_b=trans_b)
        # C with a column stride (the tile then writes a buffer the loops copy out)
        c = np.zeros((n, m), np.float32).T
        c[...] = out
        got_s = _gemm._matmul_strided_out(a, b, c, trans_a=trans_a, trans_b=trans_b,
                                          alpha=1.5, beta=-0.5, compute_dtype="bfloat16")
        np.testing.assert_array_equal(got_s, got)


@pytest.mark.parametrize("epilogue", sorted(EPILOGUE_REFERENCE))
def test_bf16_paths_fuse_each_epilogue(bf16_path, epilogue):
    """The epilogue after a bfloat16 product: the plain product's floats through it."""
    rng = np.random.default_rng(len(epilogue))
    m, n, k = 37, 70, 45
    a, b = operands(rng, m, n, k, np.float32)
    bias = rand(rng, n, np.float32)
    aux = rand(rng, (m, n), np.float32)
    z = _gemm.matmul(a, b, compute_dtype="bfloat16")
    got = _gemm._matmul_epilogue(a, b, epilogue, bias=bias, aux=aux,
                                 compute_dtype="bfloat16")
    want = _gemm._matmul_epilogue(z, np.eye(n, dtype=np.float32), epilogue, bias=bias,
                                  aux=aux)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("private_b", [4, 0], ids=["private_b", "shared_b"])
def test_bf16_paths_give_the_same_bits_at_any_thread_count(bf16_path, threads, private_b):
    rng = np.random.default_rng(8)
    before = _gemm._set_private_b_max(private_b)
    try:
        # the last above the AMX tile's own threading threshold (PARALLEL_MNK_AMX)
        for m, n, k in ((200, 150, 130), (130, 100, 300), (300, 260, 260)):
            a, b = operands(rng, m, n, k, np.float32)
            results = []
            for t in (1, 2, 3):
                threads(t)
                results.append(_gemm.matmul(a, b, compute_dtype="bfloat16"))
            for r in results[1:]:
                np.testing.assert_array_equal(r, results[0])
    finally:
        _gemm._set_private_b_max(before)


@pytest.mark.parametrize("bf16_path", BF16_TILES, indirect=True)
def test_bf16_pair_packers_give_the_same_bits_in_each_build(bf16_path):
    """bf16.h's AVX2 pair packers (8 lanes, 8 x 8 transposes) and its element-by-element
    ones: the same products for every layout of A and B, odd k and edges, special values."""
    if not _gemm.cpu_features()["avx2"]:
        pytest.skip("this CPU has no AVX2")
    rng = np.random.default_rng(5)
    for m, n, k in ((8, 48, 16), (17, 53, 33), (40, 100, 300), (9, 8, 15), (24, 7, 2)):
        for trans_a, trans_b in ((False, False), (True, False), (False, True), (True, True)):
            a, b = operands(rng, m, n, k, np.float32, trans_a, trans_b)
            a.flat[::7] = BF16_SPECIAL[rng.integers(0, BF16_SPECIAL.size, a.size)][::7]
            b.flat[::5] = BF16_SPECIAL[rng.integers(0, BF16_SPECIAL.size, b.size)][::5]
            got = {}
            for isa in ("avx2", "baseline"):
                before = _gemm._set_bf16_pack_isa(isa)
                try:
                    got[isa] = matmul(a, b, trans_a=trans_a, trans_b=trans_b,
                                      compute_dtype="bfloat16")
                finally:
                    _gemm._set_bf16_pack_isa(before)
            np.testing.assert_array_equal(_bits(got["avx2"]), _bits(got["baseline"]))


def test_bf16_tile_flushes_subnormals_as_vdpbf16ps():
    """The scalar model of vdpbf16ps treats subnormal operands as zero and flushes a
    subnormal sum (the emulated path, float32 FMAs, keeps them)."""
    before = _gemm._set_bf16_path("avx512_bf16_emulated")
    try:
        x = np.array([[1e-39, 1e-20, 2.0 ** -120, 1.5]], np.float32)
        y = np.array([[1.0], [1e-19], [2.0 ** -10], [0.0]], np.float32)
        # 1e-39 is subnormal: read as 0; 1e-20*1e-19 and 2^-130 would be subnormal sums
        got = _gemm.matmul(x, y, compute_dtype="bfloat16")
        assert got[0, 0] == 0.0
        np.testing.assert_array_equal(
            _gemm.matmul(np.array([[2.0 ** -100]], np.float32),
                         np.array([[2.0 ** -30]], np.float32), compute_dtype="bfloat16"), 0)
        np.testing.assert_array_equal(
            _gemm.matmul(np.array([[2.0 ** -100]], np.float32),
                         np.array([[2.0 ** -20]], np.float32), compute_dtype="bfloat16"),
            np.float32(2.0 ** -120))
    finally:
        _gemm._set_bf16_path(before)


# ---------------------------------------------------------------------------
# The small path (small.h): A and B read in place, bitwise equal to the blocked path
# ---------------------------------------------------------------------------
@pytest.fixture
def gemm_path():
    """_gemm._set_path, restored to "auto" after the test."""
    yield _gemm._set_path
    _gemm._set_path("auto")


def _on_paths(compute, gemm_path, small_expected=True):
    """compute() on the small path and on the blocked path; checks that the small
    path ran exactly when expected (once per gemm call) and never when blocked."""
    results = {}
    for name in ("small", "blocked"):
        gemm_path(name)
        before = _gemm._small_calls()
        results[name] = compute()
        took = _gemm._small_calls() - before
        if name == "blocked":
            assert took == 0
        else:
            assert (took > 0) == small_expected, f"small path taken {took} times"
    return results["small"], results["blocked"]


def _b_views(b, rng):
    """B with contiguous rows, as the small path reads it: plain, rows of a wider
    array every other row, rows in reverse order (negative row stride)."""
    k, n = b.shape
    wide = rand(rng, (2 * k, n + 5), b.dtype)
    wide[::2, 3:3 + n] = b
    yield "contiguous", b
    yield "row_strided", wide[::2, 3:3 + n]
    yield "reversed_rows", b[::-1].copy()[::-1]


# m = 1 .. past one block of tile rows; n across 1-, 2-, 3-, 8-vector tiles and their
# masked edges; k past KC (256; 128 in the AVX-512 kernels) so C accumulates in blocks.
SMALL_SHAPES = [(1, 1, 1), (1, 10, 64), (1, 64, 64), (1, 65, 300), (1, 200, 257),
                (2, 33, 7), (3, 25, 129), (4, 17, 5), (5, 49, 100), (6, 16, 1),
                (6, 100, 520), (7, 9, 3), (13, 31, 40), (32, 256, 130)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SMALL_SHAPES)
def test_small_path_equals_blocked_bitwise(kernel, gemm_path, dtype, m, n, k):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    for trans_a in (False, True):
        a0, b0 = operands(rng, m, n, k, dtype, trans_a)
        c0 = rand(rng, (m, n), dtype)
        for name_a, a in _layouts(a0):
            for name_b, b in _b_views(b0, rng):
                for alpha, beta in ((1.0, 0.0), (-0.7, 1.5)):
                    def compute():
                        out = c0.copy() if beta else np.full((m, n), np.nan, dtype)
                        return matmul(a, b, trans_a=trans_a, alpha=alpha, beta=beta, out=out)
                    small, blocked = _on_paths(compute, gemm_path)
                    assert small.tobytes() == blocked.tobytes(), (name_a, name_b, alpha, beta)
                    assert_close(small, a.T if trans_a else a, b,
                                 reference(a, b, trans_a, False, alpha, beta, c0),
                                 alpha, beta, c0 if beta else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", sorted(EPILOGUE_REFERENCE))
@pytest.mark.parametrize("m,n,k,beta", [(1, 10, 64, 0.0), (3, 70, 300, 0.5), (6, 17, 9, 1.0),
                                        (20, 70, 33, 0.0), (32, 64, 64, 0.5)])
def test_small_path_epilogues_bitwise(kernel, gemm_path, dtype, epilogue, m, n, k, beta):
    rng = np.random.default_rng(23)
    a, b = operands(rng, m, n, k, dtype)
    bias = rand(rng, n, dtype)
    aux = rng.uniform(-1, 1, (m, n)).astype(dtype)
    c0 = rand(rng, (m, n), dtype)

    def compute():
        return _gemm._matmul_epilogue(a, b, epilogue, bias=bias, aux=aux, alpha=0.7,
                                      beta=beta, out=c0.copy() if beta else None)
    small, blocked = _on_paths(compute, gemm_path)
    assert small.tobytes() == blocked.tobytes()
    z = reference(a, b, False, False, 0.7, beta, c0)
    want = EPILOGUE_REFERENCE[epilogue](z, bias.astype(np.float64), aux.astype(np.float64))
    tol = EPS[np.dtype(dtype)] * 8 * (k * np.abs(a).max() * np.abs(b).max() + 2
                                      + np.abs(bias).max())
    np.testing.assert_allclose(small, want, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_path_leaves_other_layouts_to_the_blocked_path(kernel, gemm_path, dtype):
    """A transposed B (columns contiguous) or a B / C with a non-unit column stride
    is packed: the small path is not taken, and the result is still right."""
    rng = np.random.default_rng(29)
    m, n, k = 3, 20, 40
    a, bt = operands(rng, m, n, k, dtype, trans_b=True)
    small, blocked = _on_paths(lambda: matmul(a, bt, trans_b=True), gemm_path, False)
    assert small.tobytes() == blocked.tobytes()
    assert_close(small, a, bt, reference(a, bt, False, True), trans_b=True)
    b = rand(rng, (k, 2 * n), dtype)[:, ::2]
    small, blocked = _on_paths(lambda: matmul(a, b), gemm_path, False)
    assert small.tobytes() == blocked.tobytes()
    b = np.ascontiguousarray(b)

    def strided_out():
        out = np.zeros((m, 3 * n), dtype)[:, ::3]
        return _gemm._matmul_strided_out(a, b, out).copy()
    small, blocked = _on_paths(strided_out, gemm_path, False)
    assert small.tobytes() == blocked.tobytes()
    assert_close(small, a, b, reference(a, b))


def test_small_path_is_chosen_for_few_rows(gemm_path):
    """By the thresholds: one row takes it, a tall product packs."""
    rng = np.random.default_rng(31)
    gemm_path("auto")
    for m, expected in ((1, True), (200, False)):
        a, b = operands(rng, m, 64, 64, np.float32)
        before = _gemm._small_calls()
        matmul(a, b)
        assert (_gemm._small_calls() > before) == expected, m
    with pytest.raises(ValueError, match="name"):
        _gemm._set_path("sometimes")


# Products past PARALLEL_MNK (2**21 multiply-adds) with few rows: the small path shares
# them between threads by column slices of 32 bytes (_SmallJob).  n: many slices, a
# masked last vector, fewer 32-byte units than 3 chunks a thread (9 float32 columns:
# 2 units), a single unit (4 float64 columns: none to share).
SHARED_SMALL_SHAPES = [(64, 100, 1000), (8, 1027, 300), (33, 77, 1200), (5, 9, 50000),
                       (3, 4, 200000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHARED_SMALL_SHAPES)
def test_small_path_shared_by_threads_bitwise(kernel, gemm_path, threads, dtype, m, n, k):
    """At 2 threads the small path still takes these products and gives the bits of
    1 thread and of the blocked path (every element's floats depend on its row and
    column alone, so column slices change nothing)."""
    rng = np.random.default_rng(m * 131 + n)
    a, b = operands(rng, m, n, k, dtype)
    c0 = rand(rng, (m, n), dtype)
    out = {}
    for n_threads in (1, 2):
        threads(n_threads)
        for name in ("auto", "small", "blocked"):
            gemm_path(name)
            before = _gemm._small_calls()
            out[n_threads, name] = matmul(a, b, alpha=0.5, beta=1.5, out=c0.copy())
            if name == "small":
                assert _gemm._small_calls() == before + 1
    want = out[1, "blocked"].tobytes()
    assert all(o.tobytes() == want for o in out.values())
    assert_close(out[2, "small"], a, b, reference(a, b, alpha=0.5, beta=1.5, out=c0),
                 0.5, 1.5, c0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epilogue", sorted(EPILOGUE_REFERENCE))
@pytest.mark.parametrize("m,n,k", [(64, 100, 1000), (7, 13, 30000)])
def test_small_path_shared_epilogues_bitwise(kernel, gemm_path, threads, dtype, epilogue,
                                             m, n, k):
    """The epilogue (bias from its column, aux from its element) on column slices."""
    rng = np.random.default_rng(41)
    a, b = operands(rng, m, n, k, dtype)
    bias = rand(rng, n, dtype)
    aux = rng.uniform(-1, 1, (m, n)).astype(dtype)
    out = {}
    for n_threads, name in ((1, "blocked"), (2, "small"), (1, "small")):
        threads(n_threads)
        gemm_path(name)
        out[n_threads, name] = _gemm._matmul_epilogue(a, b, epilogue, bias=bias, aux=aux,
                                                      alpha=0.7)
    assert out[2, "small"].tobytes() == out[1, "blocked"].tobytes()
    assert out[1, "small"].tobytes() == out[1, "blocked"].tobytes()


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without threads")
def test_a_shared_product_takes_the_small_path_up_to_48_rows(gemm_path, threads):
    """Past 48 rows a product shared by threads goes to the blocked path, whose
    threads each pack their own B~; alone it takes the small path to 64 rows."""
    rng = np.random.default_rng(33)
    gemm_path("auto")
    for m, n_threads, expected in ((64, 1, True), (64, 2, False), (48, 2, True),
                                   (48, 1, True)):
        a, b = operands(rng, m, 100, 1000, np.float32)
        threads(n_threads)
        before = _gemm._small_calls()
        matmul(a, b)
        assert (_gemm._small_calls() > before) == expected, (m, n_threads)


@pytest.mark.skipif(not _gemm.cpu_features()["openmp"], reason="built without threads")
def test_small_path_goes_through_the_pool():
    """At 2 threads a small-path product past PARALLEL_MNK is a pool job: with the
    workers held (as if they got no core) the caller does every slice, the pool notes
    the product as starved, and the bits are those of 1 thread."""
    out = _run_fresh("""
        import numpy as np
        from bpcore import _gemm
        rng = np.random.default_rng(7)
        a, b = rng.standard_normal((32, 1000)), rng.standard_normal((1000, 100))
        _gemm.set_num_threads(1)
        one = _gemm.matmul(a, b)
        _gemm.set_num_threads(2)
        _gemm.matmul(a, b)                  # the worker exists now
        _gemm.set_num_threads(2)            # forget any back-off from its start-up
        _gemm._hold_workers(True)
        before, calls = _gemm._starved_products(), _gemm._small_calls()
        held = _gemm.matmul(a, b)
        starved = _gemm._starved_products() - before
        small = _gemm._small_calls() - calls
        _gemm._hold_workers(False)
        _gemm.set_num_threads(2)
        print((held == one).all(), starved, small, (_gemm.matmul(a, b) == one).all())
    """, timeout=60)
    same, starved, small, after = out.split()
    assert same == "True" and after == "True"
    assert int(small) == 1
    assert int(starved) == 1


def test_small_path_predict_matches_blocked(gemm_path):
    """A whole forward pass (the compiled core's calls of gemm): the same bits."""
    import bpcore
    net = bpcore.MLP([64, 64, 10], activation="tanh", loss="cross_entropy",
                     dtype="float32", seed=3)
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    small, blocked = _on_paths(lambda: net.predict(x), gemm_path)
    assert small.tobytes() == blocked.tobytes()
