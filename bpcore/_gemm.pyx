"""Compiled GEMM: ``C := epi(alpha * op(A) @ op(B) + beta * C)`` for float32 and float64.

Design:

* Two layers.  ``gemm`` / ``gemm_f32`` / ``gemm_f64`` (declared in
  ``_gemm.pxd``) are ``noexcept nogil`` and take pointers with signed element
  strides, BLIS style; other kernels call them directly.  ``matmul`` is the
  thin Python face: it validates (``bpcore._validate``), allocates ``out``,
  and makes one call.  Transposes are strides, never copies.
* The five loops of the Goto/BLIS algorithm, one function per level::

      jc  (_gemm_blocked)  NC columns of B and C       B panel   -> L3
      pc  (_gemm_blocked)  KC of the inner dimension   pack B~ (KC x NC, NR-wide slivers)
      ic  (_row_blocks)    MC rows of A and C          pack A~ (MC x KC, MR-tall) -> L2
      jr  (_macro_kernel)  NR columns                  one B~ sliver (KC x NR) -> L1
      ir  (_macro_kernel)  MR rows                     micro-kernel: MR x NR tile in registers

  The micro-kernels (8x48 float32 / 8x24 float64 with AVX-512F; 6x16 / 6x8
  with AVX2+FMA or portable), their block sizes (``kernels.h``) and the
  epilogue are small C in ``bpcore/_gemm/*.h``.  A micro-kernel reads A through
  strides, so A is packed only when that pays: an A with a unit stride feeding
  a narrow C (the MLP shapes) is read in place, and a row-major A is "packed"
  as a compact row-by-row copy.  A transposed B is packed by 8x8 register
  transposes.  Edge tiles are computed at
  their true width (masked stores, half-width tile for narrow edges); problems
  below ``SMALL_MNK`` skip blocking altogether.
* Products with few rows of C (a prediction on one row, a small batch) take
  the small path instead (``small.h``): no packing, A and B read in place by
  tiles of their own shapes that compute every element with the chosen
  kernel's operations in the kernel's order, so its results are bitwise those
  of the blocked path (``_set_path`` forces either one, for tests).
* The epilogue (bias, activation, or the activation derivative from a saved
  matrix ``aux``) runs on each tile right after its last K block is stored.
* Threads (if built with them: ``BPCORE_OPENMP``) are the GEMM's own pool
  (``pool.h``), not an OpenMP team: each (jc, pc) step is one job of chunks
  -- B~ slivers to pack, then MR-aligned blocks of rows of C, about three per
  thread -- claimed from an atomic counter by whichever thread is awake.  A
  thread that gets no core (NumPy's BLAS threads spinning after a call, other
  processes) claims nothing and delays nothing, so two threads are never
  slower than one by more than a wake-up call (the OpenMP version was up to
  800x slower on a loaded machine).  K is never split, and every element of
  C is computed by the same operations in the same order whatever thread or
  tile holds it, so results are bitwise identical run to run AND independent
  of the number of threads.  Problems below ``PARALLEL_MNK`` run on one thread.
  The small path shares a product by slices of C's columns (``_SmallJob``),
  each slice computed exactly as the whole product computes it; and
  ``run_chunks`` lends the pool to the training core's elementwise passes (the
  optimizer update) over what threaded products left in both cores' caches.
  A process forked after this one started its threads runs every product on
  one thread (``forksafe.h``): the pool's threads do not survive fork.
* Kernels are chosen once at import (``__builtin_cpu_supports``): AVX-512F,
  else AVX2+FMA, else portable; ``BPCORE_FORCE_KERNEL=avx512|avx2|portable``
  forces one, ``BPCORE_FORCE_PORTABLE=1`` the portable ones (``_env.py``), and
  ``_set_kernel`` switches in-process for tests.  The FPU state is never touched (no
  flush-to-zero; the build never uses -ffast-math).
* ``compute_dtype="bfloat16"`` (``gemm_bf16``): where the CPU has AVX512_BF16,
  the same loops run a bfloat16 kernel row (``bp_bf16_kernels``, ``pairs``):
  A~ and B~ are packed once as rounded bfloat16 pairs in 32 bits (``bf16.h``;
  A always packed), and the 8x48 tile issues one ``vdpbf16ps`` per pair --
  twice the FLOPs of an FMA, on half the panel bytes.  Elsewhere rounded float32
  copies go through the float32 kernel.  ``BPCORE_FORCE_BF16=amx|native|emulated``
  chooses, ``_set_bf16_path`` switches for tests (also to the tile over scalar C,
  ``"avx512_bf16_emulated"``, on every CPU).
* Packing buffers are 64-byte aligned and reused across calls (one spare kept
  in an atomic slot, see ``workspace.h``).  A failed allocation returns
  ``BP_ENOMEM``, which ``matmul`` raises as ``MemoryError``.
"""
import os
import warnings

from bpcore import _env

import numpy as np
from numpy import ndarray
cimport numpy as cnp
from bpcore._policy cimport final_array, plain_array

cnp.import_array()

from bpcore._validate import (check_choice, check_compute_dtype, check_int, check_out, check_real, check_shape,
                              float_arrays)

from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from libc.math cimport isfinite
from libc.stddef cimport ptrdiff_t
from libc.string cimport memcpy, memset

cdef extern from "kernels.h" nogil:
    ctypedef void (*bp_ukr_f32_fn)(ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                                   const float *b, const float *alpha, const float *beta,
                                   float *c, ptrdiff_t rsc, int mr, int nr) noexcept
    ctypedef void (*bp_ukr_f64_fn)(ptrdiff_t k, const double *a, ptrdiff_t rsa, ptrdiff_t csa,
                                   const double *b, const double *alpha, const double *beta,
                                   double *c, ptrdiff_t rsc, int mr, int nr) noexcept
    ctypedef void (*bp_pack_bt_f32_fn)(ptrdiff_t kc, int nr, const float *b, ptrdiff_t csb,
                                       float *dst) noexcept
    ctypedef void (*bp_pack_bt_f64_fn)(ptrdiff_t kc, int nr, const double *b, ptrdiff_t csb,
                                       double *dst) noexcept
    ctypedef struct bp_blocks:
        int mr, nr, kc, mc, nc
    ctypedef void (*bp_small_f32_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t kcb,
                                     float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                                     const float *b, ptrdiff_t rsb, float beta, float *c,
                                     ptrdiff_t rsc, int epi, const float *bias,
                                     const float *aux, ptrdiff_t ldaux) noexcept
    ctypedef void (*bp_small_f64_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t kcb,
                                     double alpha, const double *a, ptrdiff_t rsa,
                                     ptrdiff_t csa, const double *b, ptrdiff_t rsb,
                                     double beta, double *c, ptrdiff_t rsc, int epi,
                                     const double *bias, const double *aux,
                                     ptrdiff_t ldaux) noexcept
    ctypedef struct bp_kernel:
        const char *name
        bp_ukr_f32_fn ukr_f32
        bp_pack_bt_f32_fn pack_bt_f32
        bp_blocks f32
        bp_ukr_f64_fn ukr_f64
        bp_pack_bt_f64_fn pack_bt_f64
        bp_blocks f64
        bp_small_f32_fn small_f32
        bp_small_f64_fn small_f64
        int pairs
    enum:
        BP_TILE_MAX
        BP_KERNEL_PORTABLE
        BP_KERNEL_AVX2
        BP_KERNEL_AVX512
        BP_KERNEL_AVX512_EMULATED
        BP_KERNEL_COUNT
    const bp_kernel bp_kernels[]
    int bp_kernel_runs(int which)
    enum:
        BP_BF16_AVX512
        BP_BF16_AVX512_EMULATED
        BP_BF16_AMX
    const bp_kernel bp_bf16_kernels[]
    int bp_bf16_kernel_runs(int which)
    int bp_cpu_avx2()
    int bp_cpu_fma()
    int bp_cpu_avx512f()
    int bp_cpu_avx512bf16()
    void bp_amx_begin()
    void bp_amx_end()
    void bp_small_note()
    long bp_small_calls()
    void bp_col_split_note()
    long bp_col_split_calls()
    void bp_pack_a_f32(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                       ptrdiff_t csa, int mr_tile, float *dst)
    void bp_pack_a_f64(ptrdiff_t mc, ptrdiff_t kc, const double *a, ptrdiff_t rsa,
                       ptrdiff_t csa, int mr_tile, double *dst)
    void bp_pack_b_rows_f32(ptrdiff_t kc, const float *b, ptrdiff_t rsb, int nr_tile,
                            float *dst)
    void bp_pack_b_rows_f64(ptrdiff_t kc, const double *b, ptrdiff_t rsb, int nr_tile,
                            double *dst)

cdef extern from "epilogue.h" nogil:
    void bp_epilogue_f32(int kind, ptrdiff_t mr, ptrdiff_t nr, float *c, ptrdiff_t rsc,
                         ptrdiff_t csc, const float *bias, const float *aux, ptrdiff_t ldaux)
    void bp_epilogue_f64(int kind, ptrdiff_t mr, ptrdiff_t nr, double *c, ptrdiff_t rsc,
                         ptrdiff_t csc, const double *bias, const double *aux, ptrdiff_t ldaux)
    int bp_epilogue_isa
    int bp_epilogue_use_avx2()

cdef extern from "workspace.h" nogil:
    void *bp_ws_acquire(size_t nbytes)
    void bp_ws_release(void *buf)
    void *bp_ws_acquire_bf16(size_t nbytes)
    void bp_ws_release_bf16(void *buf)

cdef extern from "bf16.h" nogil:
    void bp_round_bf16_copy(ptrdiff_t outer, ptrdiff_t inner, const float *src,
                            ptrdiff_t s_outer, ptrdiff_t s_inner, float *dst)
    void bp_pack_a_bf16(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                        ptrdiff_t csa, int mr_tile, float *dst)
    void bp_pack_b_bf16(ptrdiff_t kc, int nr, const float *b, ptrdiff_t rsb, ptrdiff_t csb,
                        int nr_tile, float *dst)
    void bp_pack_a_amx(ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t rsa,
                       ptrdiff_t csa, int mr_tile, float *dst)
    int bp_bf16_pack_isa
    int bp_bf16_pack_use_avx2()

cdef extern from "pool.h" nogil:
    ctypedef void (*bp_task_fn)(void *arg, int chunk, int worker) noexcept
    int bp_pool_acquire(int nthreads)
    void bp_pool_release()
    void bp_pool_run(bp_task_fn fn, void *arg, int nchunks, int nthreads)
    void bp_pool_wait_count(int *count, int target)
    void bp_pool_count(int *count)
    void bp_pool_hold(int on)
    void bp_pool_reset_backoff()
    long long bp_pool_starved_products()

cdef extern from "forksafe.h" nogil:
    int bp_forksafe_init()
    void bp_note_pool_start()
    int bp_threads_allowed()


# --------------------------------------------------------------------------
# Thresholds.  The register tiles and the block sizes (MR/NR, KC/MC/NC) are per
# kernel, with the cache each block targets: the table in _gemm/kernels.h.
# --------------------------------------------------------------------------
# Below this m*n*k a plain loop beats packing (2x2x2 is about call overhead).
cdef Py_ssize_t SMALL_MNK = 512
# Below this m*n*k one thread is faster: a job costs the caller a wake-up call
# (~2-5 us) when the workers sleep, against ~65 us of float32 work at this size.
cdef Py_ssize_t PARALLEL_MNK = 128 * 128 * 128
# NOTE: the AMX tile computes ~10x the float32 FLOPs per cycle, so a product is
# worth a second thread only from ~10x the multiply-adds (measured, 2 threads /
# 1, bf16 on AMX: 64x100x1000 x1.06, 1000x100x64 x0.97, 256x256x784 x1.67)
cdef Py_ssize_t PARALLEL_MNK_AMX = 256 * 256 * 256
# Read A in place (no packing) when it has a unit stride (row-major A, or A.T of
# a row-major X) and C is at most this wide: packing costs O(m*k) moves against
# O(m*k*n) FMAs, so it pays only for a wide C (measured: 3-5% of 64x100x1000).
cdef Py_ssize_t NOPACK_A_MAX_N = 256
# The small path (small.h: A and B read in place, nothing packed), taken when
# B's rows and C's rows are contiguous and C has few rows.  Packing B~ costs a
# pass over B (k*n loads and stores) that only m rows reuse, and the 6-row tile
# computes 6 rows for each one stored; in place, each block of up to 6 rows
# streams B itself.  Measured with 1 thread, interleaved medians, small/blocked
# time: m <= 8 wins everywhere (x0.47-0.87); beyond, each block of rows reads B
# again -- fine from L2 (784x256 float32, 800 KB: x0.84 at m = 32, x0.96 at 64;
# 64x64: x0.83-0.95 to m = 128), not from L3 (784x256 float64, 1.6 MB: x1.07 at
# m = 32); and a narrow C (masked loads of B's last vector every k step) loses
# past 16 rows (64x10 float32: x1.14 at m = 32).
cdef Py_ssize_t SMALL_M_MAX = 8                 # always, up to this many rows
cdef Py_ssize_t SMALL_M_L2 = 64                 # ... and up to this many when
cdef Py_ssize_t SMALL_B_L2_BYTES = 1 << 20      #   B fits in L2 (512 KiB-1 MiB)
cdef Py_ssize_t SMALL_NARROW_N = 64             #   and C is this wide, or
cdef Py_ssize_t SMALL_M_NARROW = 16             #   has at most this many rows
# ... and when the product is shared by threads, up to this many rows: each thread
# then packs its own B~ (PRIVATE_B_MAX), which beats the column slices from 64 rows
# (2 threads, Zen 1, small/blocked: f32 64x100x1000 235/201 us, 64x256x784 404/368,
# 64x64x1024 145/125, f64 64x512x256 528/502; f64 64x100x1000 352/377 the exception)
# but not at 48 (f64 48x200x500 243/309) or 32 (f32 32x256x784 179/216).
cdef Py_ssize_t SMALL_M_THREADED = 48
# Up to this many threads, each thread packs its own copy of the (jc, pc) step's
# B~ instead of a share of one copy (_Job.private_b).  B~ is read by every row
# chunk: one copy packed half by each core left each core reading half of it from
# the other's cache for every block of rows (measured at 2 threads, float32, 1 vs 2
# threads: 256x256x784 x1.76 shared, x1.90 private; 96x256x784 x1.56 / x1.81;
# 64x1000x200 x1.40 / x1.72; 1024x512x784 x1.93 / x1.96).  The price is packing
# all of B~ on every thread (O(k*n) against O(m*n*k/threads) multiply-adds), so
# past a few threads one shared copy (BLIS's layout, B~ in a shared L3) is kept.
# Not measured beyond 2 threads (a 2-core machine).
cdef enum:
    PRIVATE_B_MAX = 4
cdef int _private_b_max = PRIVATE_B_MAX
# NOTE: a threaded product with more columns than rows (C wider than tall: a
# small batch through a wide layer) whose A is read in place (not packed) is
# shared by slices of columns instead, each thread packing only its own slivers
# of B~ into the one B~ and reading all of A: per thread that moves A + B/2,
# against A/2 + B for the rows (where each thread packs its whole private B~).
# Measured at 2 threads, Zen 1, f32, interleaved medians, rows/columns us:
# 64x256x784 433/383, 64x784x256 (A transposed) 426/393, 64x100x1000 235/232.
# Where A is packed, every slice packs all of it again: 128x512x256 500/521,
# 96x512x256 373/383 (and 64x1000x100, small k, 229/209), so those keep the rows.
# At least COL_SPLIT_CHUNKS slivers a thread, so the slices stay even.
cdef bint _col_split = True
cdef Py_ssize_t COL_SPLIT_CHUNKS = 3
# _macro_kernel: a block of C up to this size takes its epilogue whole (in L1).
cdef Py_ssize_t EPI_WHOLE_BYTES = 16384
# Release the GIL only when the call is long enough to be worth it.
cdef Py_ssize_t NOGIL_MNK = 32 * 32 * 32


# --------------------------------------------------------------------------
# Runtime state: kernels chosen at import, thread count.
# --------------------------------------------------------------------------
# NOTE: a pointer into the constant table; gemm() reads it once per call, so a
# _set_kernel in another thread never mixes two kernels' tiles in one product.
cdef const bp_kernel *_kern = &bp_kernels[<int>BP_KERNEL_PORTABLE]
# compute_dtype="bfloat16" products: a row of bp_bf16_kernels, or NULL for the
# emulated path (rounded float32 operands through _kern); read once per call too.
cdef const bp_kernel *_bf16_kern = NULL
cdef int _num_threads = 1
# Which path gemm() takes (tests force one; see _set_path).
cdef enum:
    _PATH_AUTO = 0       # tiny loop, small path or blocked, by the thresholds
    _PATH_SMALL = 1      # the small path wherever its layouts allow it, else blocked
    _PATH_BLOCKED = 2    # always the blocked path (the tiny loop only for k == 0)
cdef int _path = _PATH_AUTO
_PATHS = {"auto": _PATH_AUTO, "small": _PATH_SMALL, "blocked": _PATH_BLOCKED}
_OPENMP = bool(BPCORE_OPENMP)
# name -> row of the kernel table, best first (the import-time choice tries them in order)
_KERNELS = {"avx512": BP_KERNEL_AVX512, "avx2_fma": BP_KERNEL_AVX2,
            "portable": BP_KERNEL_PORTABLE, "avx512_emulated": BP_KERNEL_AVX512_EMULATED}
# BPCORE_FORCE_KERNEL's values -> kernel names
_FORCE_NAMES = {"avx512": "avx512", "avx2": "avx2_fma", "portable": "portable"}
# compute_dtype="bfloat16" paths, best first: name -> row of bp_bf16_kernels (-1: the
# emulated path, which every CPU runs)
_BF16_PATHS = {"amx": BP_BF16_AMX, "avx512_bf16": BP_BF16_AVX512, "emulated": -1,
               "avx512_bf16_emulated": BP_BF16_AVX512_EMULATED}
# BPCORE_FORCE_BF16's values -> path names
_FORCE_BF16_NAMES = {"amx": "amx", "native": "avx512_bf16", "emulated": "emulated"}


def cpu_features():
    """What the CPU offers and which micro-kernel this process uses.

    Returns
    -------
    dict
        ``{"avx2": bool, "fma": bool, "avx512f": bool, "avx512_bf16": bool,
        "amx_bf16": bool, "kernel": "avx512" | "avx2_fma" | "portable",
        "bf16": "amx" | "avx512_bf16" | "emulated", "openmp": bool}``
        (``"avx512_emulated"`` / ``"avx512_bf16_emulated"`` only after
        ``_set_kernel`` / ``_set_bf16_path`` in a test).  ``"amx_bf16"``: the CPU
        has AMX-TILE and AMX-BF16 and Linux granted this process the tile state.
        ``"bf16"``: the path of ``compute_dtype="bfloat16"`` products --
        ``"amx"`` (TDPBF16PS tiles) where ``amx_bf16``, else ``"avx512_bf16"``
        (vdpbf16ps on bfloat16 pairs) where the CPU has AVX512_BF16, else
        ``"emulated"`` (rounded float32 operands through the float32 kernel);
        ``BPCORE_FORCE_BF16=amx|native|emulated`` chooses.
    """
    return {"avx2": bool(bp_cpu_avx2()), "fma": bool(bp_cpu_fma()),
            "avx512f": bool(bp_cpu_avx512f()), "avx512_bf16": bool(bp_cpu_avx512bf16()),
            "amx_bf16": bool(bp_bf16_kernel_runs(BP_BF16_AMX)),
            "kernel": _kern.name.decode(), "bf16": _bf16_name(), "openmp": _OPENMP}


def _bf16_name():
    """The compute_dtype="bfloat16" path in use: a key of ``_BF16_PATHS``."""
    return "emulated" if _bf16_kern == NULL else _bf16_kern.name.decode()


def _runnable_kernels():
    """The kernels this build and CPU can run, best first (tests run each one)."""
    return [name for name, which in _KERNELS.items() if bp_kernel_runs(which)]


def _kernel_blocks(name):
    """``{"float32": {...}, "float64": {...}}``: the tile and block sizes of a kernel."""
    check_choice("name", name, tuple(_KERNELS))
    cdef const bp_kernel *k = &bp_kernels[<int>_KERNELS[name]]
    return {"float32": k.f32, "float64": k.f64}


cdef bp_kernel _resized_kern     # _set_blocks's copy of a table row


def _set_blocks(dtype, kc, mc, nc):
    """The current kernel with other cache blocks for ``dtype`` (bench and tests: block
    sizes swept in one process, where separate builds compare across a noisy host).

    ``kc >= 1``; ``mc`` and ``nc`` multiples of the tile's ``mr`` and ``nr``.  Not while
    a product runs.  ``_set_kernel`` returns to the table's blocks.  Returns the
    previous ``{"kc", "mc", "nc"}``.
    """
    global _kern, _resized_kern
    check_choice("dtype", dtype, ("float32", "float64"))
    cdef bp_kernel k = _kern[0]
    cdef bp_blocks *bl = &k.f32 if dtype == "float32" else &k.f64
    before = {"kc": bl.kc, "mc": bl.mc, "nc": bl.nc}
    if not (isinstance(kc, int) and kc >= 1):
        raise ValueError(f"`kc` must be an int >= 1, got {kc!r}")
    if not (isinstance(mc, int) and mc >= bl.mr and mc % bl.mr == 0):
        raise ValueError(f"`mc` must be a positive multiple of mr={bl.mr}, got {mc!r}")
    if not (isinstance(nc, int) and nc >= bl.nr and nc % bl.nr == 0):
        raise ValueError(f"`nc` must be a positive multiple of nr={bl.nr}, got {nc!r}")
    bl.kc, bl.mc, bl.nc = kc, mc, nc
    _resized_kern = k
    _kern = &_resized_kern
    return before


def _set_kernel(name):
    """Select the micro-kernels by name (a key of ``_KERNELS``; for tests)."""
    global _kern
    check_choice("name", name, tuple(_KERNELS))
    if not bp_kernel_runs(_KERNELS[name]):
        raise RuntimeError(f"this CPU (or build) cannot run the {name!r} kernel; "
                           f"it runs {', '.join(map(repr, _runnable_kernels()))}")
    _kern = &bp_kernels[<int>_KERNELS[name]]


def _runnable_bf16_paths():
    """The compute_dtype="bfloat16" paths this build and CPU can run, best first."""
    return [name for name, which in _BF16_PATHS.items()
            if which < 0 or bp_bf16_kernel_runs(which)]


def _set_bf16_path(name):
    """Select the compute_dtype="bfloat16" path by name (a key of ``_BF16_PATHS``; for
    tests).  Returns the previous one."""
    global _bf16_kern
    check_choice("name", name, tuple(_BF16_PATHS))
    if name not in _runnable_bf16_paths():
        raise RuntimeError(f"this CPU (or build) cannot run the {name!r} bfloat16 path; "
                           f"it runs {', '.join(map(repr, _runnable_bf16_paths()))}")
    before = _bf16_name()
    which = _BF16_PATHS[name]
    if which < 0:
        _bf16_kern = NULL
    else:
        _bf16_kern = &bp_bf16_kernels[<int>which]
    return before


def _choose_bf16_path():
    """The import-time choice: BPCORE_FORCE_PORTABLE (emulated), else BPCORE_FORCE_BF16,
    else the best this CPU runs."""
    if _env.force_portable():
        return "emulated"
    return _forced_or_best(_runnable_bf16_paths(), "BPCORE_FORCE_BF16", _env.force_bf16(),
                           _FORCE_BF16_NAMES)


def _forced_or_best(runnable, switch, forced, names):
    """``names[forced]`` if this CPU runs it, else (with a RuntimeWarning naming the
    ``switch`` when one was forced) the first of ``runnable``."""
    if forced is not None:
        if names[forced] in runnable:
            return names[forced]
        warnings.warn(f"{switch}={forced}: this CPU (or build) cannot run it; "
                      f"using {runnable[0]!r}", RuntimeWarning, stacklevel=3)
    return runnable[0]


def _set_path(name):
    """Force the GEMM's path for tests: "auto" (the thresholds), "small" (the in-place
    small-product path wherever B and C have unit column strides), "blocked" (packing)."""
    global _path
    check_choice("name", name, tuple(_PATHS))
    _path = _PATHS[name]


def _set_epilogue_isa(name):
    """Force the epilogue's build for tests: "avx2" or "baseline" (the same floats);
    "auto" asks the CPU again.  Returns the previous choice."""
    global bp_epilogue_isa
    before, bp_epilogue_isa = _isa_setting(name, bp_epilogue_use_avx2())
    return before


def _isa_setting(name, uses_avx2):
    """(the previous choice's name, the new flag) for a ``_set_*_isa`` hook."""
    check_choice("name", name, ("auto", "avx2", "baseline"))
    if name == "avx2" and not cpu_features().get("avx2"):
        raise ValueError("this CPU has no AVX2")
    return "avx2" if uses_avx2 else "baseline", {"auto": -1, "avx2": 1, "baseline": 0}[name]


def _set_bf16_pack_isa(name):
    """Force the bfloat16 pair packers' build for tests: "avx2" or "baseline" (the same
    bits); "auto" asks the CPU again.  Returns the previous choice."""
    global bp_bf16_pack_isa
    before, bp_bf16_pack_isa = _isa_setting(name, bp_bf16_pack_use_avx2())
    return before


def _col_split_calls():
    """How many products were shared by slices of columns so far (for tests)."""
    return bp_col_split_calls()


def _small_calls():
    """How many products took the small path so far in this process (for tests)."""
    return bp_small_calls()


def _choose_kernel():
    """The import-time choice: BPCORE_FORCE_PORTABLE, else BPCORE_FORCE_KERNEL, else the best."""
    if _env.force_portable():
        return "portable"
    return _forced_or_best(_runnable_kernels(), "BPCORE_FORCE_KERNEL", _env.force_kernel(),
                           _FORCE_NAMES)


def set_num_threads(n):
    """Use ``n`` threads for large products (the default: ``OMP_NUM_THREADS``, else the cores).

    Parameters
    ----------
    n : int
        1 <= n <= 2**31 - 1.  Kept but not used (products run on one thread) in a build
        without threads (``BPCORE_NO_OPENMP=1``), and in a process forked (``os.fork``,
        multiprocessing's ``fork``) after it or an ancestor ran a product on several
        threads: the worker threads do not survive fork.  ``get_num_threads`` tells.
        A product runs on fewer threads when it is small, or when another Python
        thread's product holds the workers (it then runs on its caller's thread).
    """
    global _num_threads
    # The count is a C int: a bigger one is a ValueError naming `n`, not an OverflowError.
    _num_threads = check_int("n", n, minimum=1, maximum=2 ** 31 - 1)
    bp_pool_reset_backoff()     # a new setting starts without pool.h's back-off


def get_num_threads():
    """The number of threads large products use.

    Returns
    -------
    int
        The ``set_num_threads`` setting, or 1 where it is not used (no OpenMP,
        or a fork child of a threaded process).
    """
    # NOTE: the fork-child rule: fork copies only the calling thread, so the
    # pool's workers are gone in the child and its job state may be mid-job
    # (forksafe.h); the child runs serially rather than rebuild it.
    return _num_threads if _OPENMP and bp_threads_allowed() else 1


def _set_private_b_max(n):
    """Tests: each thread packs its own B~ up to ``n`` threads (0: one shared copy always).

    Returns the previous setting.  The bits never depend on it."""
    global _private_b_max
    before = _private_b_max
    _private_b_max = max(0, min(PRIVATE_B_MAX, int(n)))
    return before


def _set_col_split(on):
    """Tests: share a wide product by slices of columns (on, the default) or of rows
    only.  Returns the previous setting.  The bits never depend on it."""
    global _col_split
    before = bool(_col_split)
    _col_split = bool(on)
    return before


def _hold_workers(on):
    """Tests: the pool's workers skip every job (as if the OS gave them no core)."""
    bp_pool_hold(1 if on else 0)


def _starved_products():
    """Tests: how many threaded products found their workers starved (pool.h's back-off)."""
    return bp_pool_starved_products()


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_num_threads = _default_threads()
bp_forksafe_init()      # on failure it turns threads off (get_num_threads() == 1)
_set_kernel(_choose_kernel())
_set_bf16_path(_choose_bf16_path())


# --------------------------------------------------------------------------
# Packing.  A~ (pack.h's bp_pack_a_*): MR-tall slivers.  B~: NR-wide slivers,
#   element (p, j) of sliver s at [s*NR*kc + p*NR + j], zero-padded to NR columns.
# --------------------------------------------------------------------------
cdef void _pack_b_sliver(const bp_kernel *K, Py_ssize_t kc, Py_ssize_t nr, const floating *b,
                         Py_ssize_t rsb, Py_ssize_t csb, floating *dst) noexcept nogil:
    cdef Py_ssize_t p, j
    cdef Py_ssize_t NR = K.f32.nr if floating is float else K.f64.nr
    if floating is float:
        if K.pairs:             # the bfloat16 tile: rounded pairs (bf16.h), any strides
            bp_pack_b_bf16(kc, <int>nr, b, rsb, csb, <int>NR, dst)
            return
    if rsb == 1 and csb != 1:   # columns contiguous (B transposed): a transpose, in C
        if floating is float:
            K.pack_bt_f32(kc, <int>nr, b, csb, dst)
        else:
            K.pack_bt_f64(kc, <int>nr, b, csb, dst)
        return
    if csb == 1 and nr == NR:   # rows of B contiguous: copy NR-long runs
        if floating is float:
            bp_pack_b_rows_f32(kc, b, rsb, <int>NR, dst)
        else:
            bp_pack_b_rows_f64(kc, b, rsb, <int>NR, dst)
        return
    memset(dst, 0, kc * NR * sizeof(floating))
    if csb == 1:
        for p in range(kc):
            memcpy(dst + p * NR, b + p * rsb, nr * sizeof(floating))
    else:
        for p in range(kc):
            for j in range(nr):
                dst[p * NR + j] = b[p * rsb + j * csb]


# --------------------------------------------------------------------------
# The loops.
# --------------------------------------------------------------------------
cdef inline void _ukr(const bp_kernel *K, Py_ssize_t k, const floating *a, Py_ssize_t rsa,
                      Py_ssize_t csa, const floating *b, floating alpha, floating beta,
                      floating *c, Py_ssize_t rsc, int mr, int nr) noexcept nogil:
    if floating is float:
        K.ukr_f32(k, a, rsa, csa, b, &alpha, &beta, c, rsc, mr, nr)
    else:
        K.ukr_f64(k, a, rsa, csa, b, &alpha, &beta, c, rsc, mr, nr)


cdef inline void _epilogue(int epi, Py_ssize_t mr, Py_ssize_t nr, floating *c,
                           Py_ssize_t rsc, Py_ssize_t csc, const floating *bias,
                           const floating *aux, Py_ssize_t ldaux) noexcept nogil:
    if floating is float:
        bp_epilogue_f32(epi, mr, nr, c, rsc, csc, bias, aux, ldaux)
    else:
        bp_epilogue_f64(epi, mr, nr, c, rsc, csc, bias, aux, ldaux)


cdef void _macro_kernel(const bp_kernel *K, Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc,
                        floating alpha, const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
                        bint a_packed, const floating *bpk, floating beta,
                        floating *c, Py_ssize_t rsc, Py_ssize_t csc,
                        int epi, const floating *bias, const floating *aux,
                        Py_ssize_t ldaux) noexcept nogil:
    """The jr and ir loops: C[0:mc, 0:nc] := alpha*A~ B~ + beta*C, then epi (if epi)."""
    cdef Py_ssize_t MR = K.f32.mr if floating is float else K.f64.mr
    cdef Py_ssize_t NR = K.f32.nr if floating is float else K.f64.nr
    cdef Py_ssize_t tj, ti, jr, ir, i, j
    cdef int mr, nr
    cdef const floating *ap
    cdef floating *cp
    cdef floating tile[BP_TILE_MAX]     # for a C with non-unit column stride
    # NOTE: a block of C that fits in L1 gets its epilogue once, after all its
    # tiles (elementwise, so the same floats): per MR x NR tile the epilogue's
    # row loops are a few elements each, mostly call and set-up (measured: a
    # fifth of a 32x64x10 product's time).  A larger block keeps it per tile,
    # while the tile is still in L1.
    cdef bint whole = mc * nc * <Py_ssize_t>sizeof(floating) <= EPI_WHOLE_BYTES
    if floating is float:
        if K.pairs == 2:    # the AMX tile's configuration, on this thread (kernels.h)
            bp_amx_begin()
    for tj in range((nc + NR - 1) // NR):
        jr = tj * NR
        nr = <int>min(NR, nc - jr)
        for ti in range((mc + MR - 1) // MR):
            ir = ti * MR
            mr = <int>min(MR, mc - ir)
            ap = a + (ir * kc if a_packed else ir * rsa)
            cp = c + ir * rsc + jr * csc
            if csc == 1:
                _ukr(K, kc, ap, rsa, csa, bpk + jr * kc, alpha, beta, cp, rsc, mr, nr)
            else:
                _ukr(K, kc, ap, rsa, csa, bpk + jr * kc, alpha, 0, tile, NR, mr, nr)
                for i in range(mr):
                    for j in range(nr):
                        if beta == 0:
                            cp[i * rsc + j * csc] = tile[i * NR + j]
                        else:
                            cp[i * rsc + j * csc] = tile[i * NR + j] + beta * cp[i * rsc + j * csc]
            if epi != BP_EPI_NONE and not whole:
                _epilogue(epi, mr, nr, cp, rsc, csc,
                          bias + jr if bias != NULL else NULL,
                          aux + ir * ldaux + jr if aux != NULL else NULL, ldaux)
    if floating is float:
        if K.pairs == 2:
            bp_amx_end()
    if epi != BP_EPI_NONE and whole:
        _epilogue(epi, mc, nc, c, rsc, csc, bias, aux, ldaux)


cdef void _row_blocks(const bp_kernel *K, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t nc,
                      Py_ssize_t kc, floating alpha, const floating *a, Py_ssize_t rsa,
                      Py_ssize_t csa, bint pack_a, floating *apk, const floating *bpk,
                      floating beta, floating *c, Py_ssize_t rsc, Py_ssize_t csc,
                      int epi, const floating *bias, const floating *aux,
                      Py_ssize_t ldaux) noexcept nogil:
    """The ic loop over rows [i0, i1): pack an MC x KC block of A (or not), run jr/ir."""
    cdef Py_ssize_t MC = K.f32.mc if floating is float else K.f64.mc
    cdef int MR = K.f32.mr if floating is float else K.f64.mr
    cdef Py_ssize_t t, ic, mc, i
    for t in range((i1 - i0 + MC - 1) // MC):
        ic = i0 + t * MC
        mc = min(MC, i1 - ic)
        if pack_a and csa == 1 and not K.pairs:
            for i in range(mc):
                memcpy(apk + i * kc, a + (ic + i) * rsa, kc * sizeof(floating))
            _macro_kernel(K, mc, nc, kc, alpha, apk, kc, 1, False, bpk, beta,
                          c + ic * rsc, rsc, csc, epi, bias,
                          aux + ic * ldaux if aux != NULL else NULL, ldaux)
        elif pack_a:    # MR-tall slivers (the bfloat16 tile's: rounded pairs, bf16.h)
            if floating is float and K.pairs == 2:
                bp_pack_a_amx(mc, kc, a + ic * rsa, rsa, csa, MR, apk)
            elif floating is float and K.pairs:
                bp_pack_a_bf16(mc, kc, a + ic * rsa, rsa, csa, MR, apk)
            elif floating is float:
                bp_pack_a_f32(mc, kc, a + ic * rsa, rsa, csa, MR, apk)
            else:
                bp_pack_a_f64(mc, kc, a + ic * rsa, rsa, csa, MR, apk)
            _macro_kernel(K, mc, nc, kc, alpha, apk, 1, MR, True, bpk, beta,
                          c + ic * rsc, rsc, csc, epi, bias,
                          aux + ic * ldaux if aux != NULL else NULL, ldaux)
        else:
            _macro_kernel(K, mc, nc, kc, alpha, a + ic * rsa, rsa, csa, False, bpk, beta,
                          c + ic * rsc, rsc, csc, epi, bias,
                          aux + ic * ldaux if aux != NULL else NULL, ldaux)


# One (jc, pc) step of the loops as a job of independent chunks (pool.h): chunks
# [0, nslivers) pack the B~ slivers, the rest each compute a run of whole MR-row
# tiles of C: chunk c of nrow_chunks the tiles [c*mtiles/nrow_chunks, (c+1)*mtiles/nrow_chunks)
# (after waiting for the packing).  Run by the pool's threads, or in order by the caller.
# With private_b (PRIVATE_B_MAX) there are only the row chunks: a thread packs its
# own whole B~ before its first one, so it never waits for another thread's packing.
# With split_cols (_col_split) the chunks are slices of whole B~ slivers instead, each
# packing its own slivers and computing every row of their columns.
ctypedef struct _Job:
    const bp_kernel *K
    Py_ssize_t m, nc, kc, mtiles, mr, nrow_chunks, nslivers
    bint split_cols         # chunk c: the slivers [c*nslivers/nchunks, (c+1)*nslivers/nchunks)
                            # -- packed by that chunk into their place in B~ -- times all rows
    double alpha, beta
    const void *a
    Py_ssize_t rsa, csa
    bint pack_a
    void *apk               # A~ buffers, one per thread: worker w's at apk + w * a_elems
    Py_ssize_t a_elems
    const void *b
    Py_ssize_t rsb, csb
    void *bpk
    void *c
    Py_ssize_t rsc, csc
    int epi
    const void *bias
    const void *aux
    Py_ssize_t ldaux
    int packed              # B~ slivers packed so far (atomic)
    bint private_b          # each worker packs its own whole B~ (at bpk + w * b_elems)
    Py_ssize_t b_elems
    int wpacked[PRIVATE_B_MAX]  # private_b: worker w has packed this job's B~


cdef inline void _job_pack(_Job *job, Py_ssize_t s0, Py_ssize_t s1, floating *bpk) noexcept nogil:
    """B~ slivers [s0, s1) of ``job`` into ``bpk``."""
    cdef Py_ssize_t NR = job.K.f32.nr if floating is float else job.K.f64.nr
    cdef Py_ssize_t s
    for s in range(s0, s1):
        _pack_b_sliver(job.K, job.kc, min(NR, job.nc - s * NR),
                       <const floating *>job.b + s * NR * job.csb, job.rsb, job.csb,
                       bpk + s * NR * job.kc)


cdef inline void _job_chunk(_Job *job, int chunk, int worker, const floating *kind) noexcept nogil:
    """Chunk ``chunk`` of ``job`` (``kind`` only selects the dtype)."""
    cdef Py_ssize_t s, s1
    cdef const floating *aux = <const floating *>job.aux
    cdef const floating *bias = <const floating *>job.bias
    cdef floating *bpk = <floating *>job.bpk
    cdef Py_ssize_t NR = job.K.f32.nr if floating is float else job.K.f64.nr
    cdef Py_ssize_t i0 = 0, i1 = job.m, j0 = 0, j1 = job.nc     # this chunk's part of C
    if job.split_cols:
        s = chunk * job.nslivers // job.nrow_chunks
        s1 = (chunk + 1) * job.nslivers // job.nrow_chunks
        _job_pack(job, s, s1, bpk)
        j0, j1 = s * NR, min(job.nc, s1 * NR)
    elif job.private_b:
        # NOTE: worker w's own copy; only w reads and writes wpacked[w] in a job
        bpk = bpk + worker * job.b_elems
        if not job.wpacked[worker]:
            _job_pack(job, 0, job.nslivers, bpk)
            job.wpacked[worker] = 1
        s = chunk
    elif chunk < job.nslivers:
        _job_pack(job, chunk, chunk + 1, bpk)
        bp_pool_count(&job.packed)
        return
    else:
        bp_pool_wait_count(&job.packed, <int>job.nslivers)
        s = chunk - job.nslivers
    if not job.split_cols:
        i0 = s * job.mtiles // job.nrow_chunks * job.mr
        i1 = min(job.m, (s + 1) * job.mtiles // job.nrow_chunks * job.mr)
    _row_blocks(job.K, i0, i1, j1 - j0, job.kc,
                <floating>job.alpha, <const floating *>job.a, job.rsa, job.csa, job.pack_a,
                <floating *>job.apk + worker * job.a_elems, bpk + j0 * job.kc,
                <floating>job.beta, <floating *>job.c + j0 * job.csc, job.rsc, job.csc,
                job.epi, bias + j0 if bias != NULL else NULL,
                aux + j0 if aux != NULL else NULL, job.ldaux)


cdef void _job_chunk_f32(void *job, int chunk, int worker) noexcept nogil:
    _job_chunk(<_Job *>job, chunk, worker, <const float *>NULL)


cdef void _job_chunk_f64(void *job, int chunk, int worker) noexcept nogil:
    _job_chunk(<_Job *>job, chunk, worker, <const double *>NULL)


cdef int _gemm_blocked(const bp_kernel *K, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       floating alpha, const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
                       const floating *b, Py_ssize_t rsb, Py_ssize_t csb,
                       floating beta, floating *c, Py_ssize_t rsc, Py_ssize_t csc,
                       int epi, const floating *bias, const floating *aux,
                       Py_ssize_t ldaux, int nthreads) noexcept nogil:
    """The jc and pc loops, each step one job; up to ``nthreads`` threads share its rows."""
    cdef bp_blocks bl = K.f32 if floating is float else K.f64
    cdef Py_ssize_t MR = bl.mr, NR = bl.nr, KC = bl.kc, MC = bl.mc, NC = bl.nc
    cdef Py_ssize_t kc_max = min(KC, k)
    cdef Py_ssize_t nc_max = min(NC, (n + NR - 1) // NR * NR)
    cdef Py_ssize_t mtiles = (m + MR - 1) // MR
    cdef Py_ssize_t nrow_chunks
    cdef Py_ssize_t tjc, tpc, jc, pc
    cdef _Job job
    cdef floating *ws
    cdef bp_task_fn task = _job_chunk_f32 if floating is float else _job_chunk_f64
    cdef int threads = _pool_take(nthreads, mtiles)
    # NOTE: at least 3 row chunks per thread, so a thread that gets less of a core
    # (another process, a BLAS thread still spinning) leaves its share to the others;
    # a multiple of the thread count, of whole tiles differing by at most one tile, so
    # that threads that do get a core finish together.  (Chunks capped at MC rows
    # left 1024 rows as 7 x 144 + 16: one thread did 4 chunks, the other 3.1 -- 89%
    # of two cores.)  Alone: one chunk (an A~ block reused across the whole jr loop).
    nrow_chunks = 1 if threads == 1 else min(
        mtiles, threads * max(3, (mtiles + threads * (MC // MR) - 1) // (threads * (MC // MR))))
    job.pack_a = K.pairs or not ((csa == 1 or rsa == 1) and n <= NOPACK_A_MAX_N)
    # the column slices (see _col_split); n <= NC, so one jc step, and nslivers fixed
    job.split_cols = (threads > 1 and _col_split and n > m and not job.pack_a
                      and (n + NR - 1) // NR >= COL_SPLIT_CHUNKS * threads)
    if job.split_cols:
        nrow_chunks = min((n + NR - 1) // NR, COL_SPLIT_CHUNKS * threads)
        bp_col_split_note()
    job.mtiles, job.mr, job.nrow_chunks = mtiles, MR, nrow_chunks
    job.a_elems = min(MC, (mtiles + nrow_chunks - 1) // nrow_chunks * MR) * kc_max \
        if job.pack_a else 0
    # NOTE: not for the AMX tile: its B~ sliver's products take less time than
    # packing it (memory-bound here), so a B~ per thread doubled the packing (2
    # threads, 1024-784-512-10 bf16 step: 4215 us private, 3913 shared)
    job.private_b = (1 < threads <= _private_b_max and not job.split_cols
                     and K.pairs != 2)
    job.b_elems = kc_max * nc_max
    cdef Py_ssize_t b_total = (threads if job.private_b else 1) * job.b_elems
    ws = <floating *>bp_ws_acquire((b_total + threads * job.a_elems) * sizeof(floating))
    if ws == NULL:
        if threads > 1:
            bp_pool_release()
        return BP_ENOMEM
    job.K, job.m, job.rsa, job.csa, job.rsb, job.csb = K, m, rsa, csa, rsb, csb
    job.alpha, job.bpk, job.apk = alpha, ws, ws + b_total
    job.rsc, job.csc, job.ldaux = rsc, csc, ldaux
    for tjc in range((n + NC - 1) // NC):
        jc = tjc * NC
        job.nc = min(NC, n - jc)
        job.nslivers = (job.nc + NR - 1) // NR
        job.c = c + jc * csc
        job.bias = bias + jc if bias != NULL else NULL
        job.aux = aux + jc if aux != NULL else NULL
        for tpc in range((k + KC - 1) // KC):
            pc = tpc * KC
            job.kc = min(KC, k - pc)
            job.a = a + pc * csa
            job.b = b + pc * rsb + jc * csb
            job.beta = beta if pc == 0 else 1
            job.epi = epi if pc + job.kc == k else BP_EPI_NONE
            job.packed = 0
            if job.private_b:
                memset(job.wpacked, 0, sizeof(job.wpacked))
            if job.private_b or job.split_cols:
                bp_pool_run(task, &job, <int>nrow_chunks, threads)
            elif threads > 1:
                bp_pool_run(task, &job, <int>(job.nslivers + nrow_chunks), threads)
            else:
                for s in range(job.nslivers + nrow_chunks):
                    task(&job, <int>s, 0)
    if threads > 1:
        bp_pool_release()
    bp_ws_release(ws)
    return BP_OK


cdef void _gemm_small(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                      const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
                      const floating *b, Py_ssize_t rsb, Py_ssize_t csb,
                      floating beta, floating *c, Py_ssize_t rsc, Py_ssize_t csc) noexcept nogil:
    """Tiny products (and k == 0): dot products in k order, no packing."""
    cdef Py_ssize_t i, j, p
    cdef floating acc
    for i in range(m):
        for j in range(n):
            acc = 0
            for p in range(k):
                acc = acc + a[i * rsa + p * csa] * b[p * rsb + j * csb]
            if beta == 0:
                c[i * rsc + j * csc] = alpha * acc
            else:
                c[i * rsc + j * csc] = alpha * acc + beta * c[i * rsc + j * csc]


cdef inline bint _small_pays(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                             Py_ssize_t itemsize) noexcept nogil:
    """The thresholds above: the small path is faster for this (m, n, k)."""
    return m <= SMALL_M_MAX or (m <= SMALL_M_L2 and k * n * itemsize <= SMALL_B_L2_BYTES
                                and (n >= SMALL_NARROW_N or m <= SMALL_M_NARROW))


# The small path shared by threads: chunk c of nchunks computes the columns of units
# [c*units/nchunks, (c+1)*units/nchunks) of C, a unit being SMALL_UNIT_BYTES of a row
# (one 256-bit vector), so only the last chunk has a partial last vector, as the whole
# product would.  Each chunk is the small path on a column slice -- B's and C's columns
# offset, A whole -- and every element's floats depend on its row and column alone
# (small.h), so the slices give the whole product's bits.  Columns, not rows: each
# thread streams only its part of B, and a 64-row C has 11 six-row blocks (6 + 5 on
# two threads) but 13 units per 100 float32 columns.
cdef Py_ssize_t SMALL_UNIT_BYTES = 32

ctypedef struct _SmallJob:
    const bp_kernel *K
    Py_ssize_t m, n, k, unit, units, nchunks
    double alpha, beta
    const void *a
    Py_ssize_t rsa, csa
    const void *b
    Py_ssize_t rsb
    void *c
    Py_ssize_t rsc
    int epi
    const void *bias
    const void *aux
    Py_ssize_t ldaux


cdef inline void _small_call(const bp_kernel *K, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                             floating alpha, const floating *a, Py_ssize_t rsa,
                             Py_ssize_t csa, const floating *b, Py_ssize_t rsb, floating beta,
                             floating *c, Py_ssize_t rsc, int epi, const floating *bias,
                             const floating *aux, Py_ssize_t ldaux) noexcept nogil:
    """The kernel's small.h function for this dtype, with the kernel's KC."""
    if floating is float:
        K.small_f32(m, n, k, K.f32.kc, alpha, a, rsa, csa, b, rsb, beta, c, rsc, epi,
                    bias, aux, ldaux)
    else:
        K.small_f64(m, n, k, K.f64.kc, alpha, a, rsa, csa, b, rsb, beta, c, rsc, epi,
                    bias, aux, ldaux)


cdef inline void _small_chunk(_SmallJob *job, int chunk, const floating *kind) noexcept nogil:
    """Chunk ``chunk`` of ``job``: the small path on its slice of columns."""
    cdef Py_ssize_t j0 = chunk * job.units // job.nchunks * job.unit
    cdef Py_ssize_t j1 = min(job.n, (chunk + 1) * job.units // job.nchunks * job.unit)
    cdef const floating *bias = <const floating *>job.bias
    cdef const floating *aux = <const floating *>job.aux
    if j1 <= j0:
        return
    _small_call(job.K, job.m, j1 - j0, job.k, <floating>job.alpha, <const floating *>job.a,
                job.rsa, job.csa, <const floating *>job.b + j0, job.rsb, <floating>job.beta,
                <floating *>job.c + j0, job.rsc, job.epi,
                bias + j0 if bias != NULL else NULL, aux + j0 if aux != NULL else NULL,
                job.ldaux)


cdef void _small_chunk_f32(void *job, int chunk, int worker) noexcept nogil:
    _small_chunk(<_SmallJob *>job, chunk, <const float *>NULL)


cdef void _small_chunk_f64(void *job, int chunk, int worker) noexcept nogil:
    _small_chunk(<_SmallJob *>job, chunk, <const double *>NULL)


cdef void _small_path(const bp_kernel *K, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
                      const floating *b, Py_ssize_t rsb, floating beta, floating *c,
                      Py_ssize_t rsc, int epi, const floating *bias, const floating *aux,
                      Py_ssize_t ldaux, int nthreads) noexcept nogil:
    """small.h's path, on up to ``nthreads`` threads (column slices, see _SmallJob)."""
    cdef _SmallJob job
    job.unit = SMALL_UNIT_BYTES // sizeof(floating)
    job.units = (n + job.unit - 1) // job.unit
    cdef int threads = _pool_take(nthreads, job.units)
    if threads == 1:
        _small_call(K, m, n, k, alpha, a, rsa, csa, b, rsb, beta, c, rsc, epi, bias, aux,
                    ldaux)
        return
    # NOTE: three chunks a thread, as the blocked path's rows (a thread that gets
    # less of a core leaves its share to the others)
    job.nchunks = min(job.units, 3 * threads)
    job.K, job.m, job.n, job.k = K, m, n, k
    job.alpha, job.beta = alpha, beta
    job.a, job.rsa, job.csa, job.b, job.rsb = a, rsa, csa, b, rsb
    job.c, job.rsc, job.epi, job.bias, job.aux, job.ldaux = c, rsc, epi, bias, aux, ldaux
    bp_pool_run(_small_chunk_f32 if floating is float else _small_chunk_f64, &job,
                <int>job.nchunks, threads)
    bp_pool_release()


cdef inline bint _epilogue_ok(bp_epilogue epi, const void *bias, const void *aux) noexcept nogil:
    """``epi`` is one of the table's, with the operand it reads."""
    if <int>epi < 0 or <int>epi >= BP_EPI_COUNT:
        return False
    if BP_EPI_BIAS <= epi <= BP_EPI_BIAS_IDENTITY and bias == NULL:
        return False
    return not (BP_EPI_MUL_DRELU <= epi <= BP_EPI_MUL_DTANH and aux == NULL)


cdef inline int _pool_take(int nthreads, Py_ssize_t units) noexcept nogil:
    """The threads a job of ``units`` independent pieces gets, of ``nthreads`` wanted:
    1 (run it alone, nothing held), or >= 2 with the pool held (bp_pool_release)."""
    if nthreads < 2 or units < 2:
        return 1
    bp_note_pool_start()    # before any worker exists (forksafe.h)
    return bp_pool_acquire(<int>min(<Py_ssize_t>nthreads, units))


cdef inline int _threads_for(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                             int num_threads) noexcept nogil:
    """The threads a product of this size may use (``num_threads`` 0: the setting)."""
    # A fork child of a threaded process must never enter a parallel region.
    if m * n * k < PARALLEL_MNK or not BPCORE_OPENMP or not bp_threads_allowed():
        return 1
    return num_threads if num_threads > 0 else _num_threads


cdef int gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
              const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
              const floating *b, Py_ssize_t rsb, Py_ssize_t csb,
              floating beta, floating *c, Py_ssize_t rsc, Py_ssize_t csc,
              bp_epilogue epi, const floating *bias,
              const floating *aux, Py_ssize_t ldaux,
              int num_threads) noexcept nogil:
    """C := epi(alpha * op(A) @ op(B) + beta * C); see _gemm.pxd for the contract."""
    if not _epilogue_ok(epi, bias, aux):
        return BP_EINVAL
    cdef const bp_kernel *K = _kern
    cdef int path = _path
    if m <= 0 or n <= 0:
        return BP_OK
    cdef int nthreads = _threads_for(m, n, k, num_threads)
    # NOTE: the small path shares a product between threads by column slices
    # (_SmallJob); its thresholds were measured at one thread, and a shared
    # product takes it up to SMALL_M_THREADED rows.
    if (k > 0 and csb == 1 and csc == 1 and path != _PATH_BLOCKED
            and (path == _PATH_SMALL or (m * n * k > SMALL_MNK
                                         and (nthreads == 1 or m <= SMALL_M_THREADED)
                                         and _small_pays(m, n, k, sizeof(floating))))):
        bp_small_note()
        _small_path(K, m, n, k, alpha, a, rsa, csa, b, rsb, beta, c, rsc, <int>epi, bias,
                    aux, ldaux, nthreads)
        return BP_OK
    if k <= 0 or (path == _PATH_AUTO and m * n * k <= SMALL_MNK):
        _gemm_small(m, n, max(k, 0), alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        if epi != BP_EPI_NONE:
            _epilogue(epi, m, n, c, rsc, csc, bias, aux, ldaux)
        return BP_OK
    return _gemm_blocked(K, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                         epi, bias, aux, ldaux, nthreads)


cdef int gemm_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                  const float *a, Py_ssize_t rsa, Py_ssize_t csa,
                  const float *b, Py_ssize_t rsb, Py_ssize_t csb,
                  float beta, float *c, Py_ssize_t rsc, Py_ssize_t csc,
                  bp_epilogue epi, const float *bias,
                  const float *aux, Py_ssize_t ldaux,
                  int num_threads) noexcept nogil:
    """float32 ``gemm`` (for callers that prefer a non-fused name)."""
    return gemm(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                epi, bias, aux, ldaux, num_threads)


cdef int gemm_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                  const double *a, Py_ssize_t rsa, Py_ssize_t csa,
                  const double *b, Py_ssize_t rsb, Py_ssize_t csb,
                  double beta, double *c, Py_ssize_t rsc, Py_ssize_t csc,
                  bp_epilogue epi, const double *bias,
                  const double *aux, Py_ssize_t ldaux,
                  int num_threads) noexcept nogil:
    """float64 ``gemm``."""
    return gemm(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                epi, bias, aux, ldaux, num_threads)


cdef void _round_operand(Py_ssize_t rows, Py_ssize_t cols, const float *x, Py_ssize_t rs,
                         Py_ssize_t cs, float *dst, Py_ssize_t *drs,
                         Py_ssize_t *dcs) noexcept nogil:
    """A rounded, contiguous copy of the rows x cols operand x; its strides in drs/dcs.
    Stored column by column when x is (a transpose, unit row stride), so the GEMM
    reads it as it would have read x."""
    if rs == 1 and cs != 1:
        bp_round_bf16_copy(cols, rows, x, cs, rs, dst)
        drs[0], dcs[0] = 1, rows
    else:
        bp_round_bf16_copy(rows, cols, x, rs, cs, dst)
        drs[0], dcs[0] = cols, 1


cdef int gemm_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                   const float *a, Py_ssize_t rsa, Py_ssize_t csa,
                   const float *b, Py_ssize_t rsb, Py_ssize_t csb,
                   float beta, float *c, Py_ssize_t rsc, Py_ssize_t csc,
                   bp_epilogue epi, const float *bias,
                   const float *aux, Py_ssize_t ldaux,
                   int num_threads) noexcept nogil:
    """``gemm_f32`` on op(A) and op(B) rounded to bfloat16 (bf16.h), float32 accumulation.

    Two paths (``_bf16_kern``, chosen at import): the bfloat16 tile (vdpbf16ps on
    pairs) through the blocked loops, which pack each operand once as rounded
    pairs; or, on CPUs without AVX512_BF16, rounded float32 copies of both
    operands (O(mk + kn) extra work and memory), then the float32 GEMM.

    NOTE: the two paths round the operands alike but sum differently: the tile
    adds each pair's odd product before its even one (vdpbf16ps's order) and
    flushes subnormals, so they agree to float32 rounding, not bit for bit."""
    cdef float *ra
    cdef float *rb
    cdef Py_ssize_t ars, acs, brs, bcs
    cdef int status
    cdef const bp_kernel *K = _bf16_kern
    if m <= 0 or n <= 0 or k <= 0:
        return gemm_f32(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                        epi, bias, aux, ldaux, num_threads)
    if K != NULL:
        if not _epilogue_ok(epi, bias, aux):
            return BP_EINVAL
        return _gemm_blocked(K, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc,
                             csc, epi, bias, aux, ldaux,
                             1 if K.pairs == 2 and m * n * k < PARALLEL_MNK_AMX
                             else _threads_for(m, n, k, num_threads))
    ra = <float *>bp_ws_acquire_bf16((m * k + k * n) * sizeof(float))
    if ra == NULL:
        return BP_ENOMEM
    rb = ra + m * k
    _round_operand(m, k, a, rsa, csa, ra, &ars, &acs)
    _round_operand(k, n, b, rsb, csb, rb, &brs, &bcs)
    status = gemm_f32(m, n, k, alpha, ra, ars, acs, rb, brs, bcs, beta, c, rsc, csc,
                      epi, bias, aux, ldaux, num_threads)
    bp_ws_release_bf16(ra)
    return status


cdef void run_chunks(chunk_fn fn, void *arg, int nchunks, int num_threads) noexcept nogil:
    """See _gemm.pxd."""
    cdef int nthreads = num_threads if num_threads > 0 else _num_threads
    cdef int threads = 1, s
    if BPCORE_OPENMP and bp_threads_allowed():
        threads = _pool_take(nthreads, nchunks)
    if threads > 1:
        bp_pool_run(<bp_task_fn>fn, arg, nchunks, threads)
        bp_pool_release()
    else:
        for s in range(nchunks):
            fn(arg, s, 0)


# --------------------------------------------------------------------------
# Python face.
# --------------------------------------------------------------------------
EPILOGUES = {
    "none": BP_EPI_NONE, "bias": BP_EPI_BIAS, "bias_relu": BP_EPI_BIAS_RELU,
    "bias_sigmoid": BP_EPI_BIAS_SIGMOID, "bias_tanh": BP_EPI_BIAS_TANH,
    "bias_identity": BP_EPI_BIAS_IDENTITY, "mul_drelu": BP_EPI_MUL_DRELU,
    "mul_dsigmoid": BP_EPI_MUL_DSIGMOID, "mul_dtanh": BP_EPI_MUL_DTANH,
}

cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)
cdef object _empty = np.empty
cdef int _RO = PyBUF_STRIDES | PyBUF_FORMAT


cdef inline bint _elementwise(const Py_buffer *v) noexcept:
    """Pointer and strides are whole elements (so element strides are exact)."""
    cdef Py_ssize_t s = v.itemsize
    return (<size_t>v.buf % s == 0 and v.strides[0] % s == 0 and v.strides[1] % s == 0)


cdef int _compute(Py_buffer *va, Py_buffer *vb, bint ta, bint tb, double alpha,
                  double beta, Py_buffer *vc, int epi, Py_buffer *vbias,
                  Py_buffer *vaux, bint bf16=False) except -1:
    """One call of ``gemm`` on acquired buffers (shapes already checked)."""
    cdef Py_ssize_t s = va.itemsize
    cdef Py_ssize_t m = va.shape[1] if ta else va.shape[0]
    cdef Py_ssize_t k = va.shape[0] if ta else va.shape[1]
    cdef Py_ssize_t n = vb.shape[0] if tb else vb.shape[1]
    cdef Py_ssize_t rsa = va.strides[0] // s, csa = va.strides[1] // s
    cdef Py_ssize_t rsb = vb.strides[0] // s, csb = vb.strides[1] // s
    cdef Py_ssize_t rsc = vc.strides[0] // s, csc = vc.strides[1] // s
    cdef Py_ssize_t ldaux = vaux.strides[0] // s if vaux != NULL else 0
    cdef const void *bias = vbias.buf if vbias != NULL else NULL
    cdef const void *aux = vaux.buf if vaux != NULL else NULL
    cdef int status
    if ta:
        rsa, csa = csa, rsa
    if tb:
        rsb, csb = csb, rsb
    if bf16:
        with nogil:
            status = gemm_bf16(m, n, k, <float>alpha, <const float *>va.buf, rsa, csa,
                               <const float *>vb.buf, rsb, csb, <float>beta,
                               <float *>vc.buf, rsc, csc, <bp_epilogue>epi,
                               <const float *>bias, <const float *>aux, ldaux, 0)
    elif m * n * k < NOGIL_MNK:
        if s == 4:
            status = gemm_f32(m, n, k, <float>alpha, <const float *>va.buf, rsa, csa,
                              <const float *>vb.buf, rsb, csb, <float>beta,
                              <float *>vc.buf, rsc, csc, <bp_epilogue>epi,
                              <const float *>bias, <const float *>aux, ldaux, 0)
        else:
            status = gemm_f64(m, n, k, alpha, <const double *>va.buf, rsa, csa,
                              <const double *>vb.buf, rsb, csb, beta,
                              <double *>vc.buf, rsc, csc, <bp_epilogue>epi,
                              <const double *>bias, <const double *>aux, ldaux, 0)
    else:
        with nogil:
            if s == 4:
                status = gemm_f32(m, n, k, <float>alpha, <const float *>va.buf, rsa, csa,
                                  <const float *>vb.buf, rsb, csb, <float>beta,
                                  <float *>vc.buf, rsc, csc, <bp_epilogue>epi,
                                  <const float *>bias, <const float *>aux, ldaux, 0)
            else:
                status = gemm_f64(m, n, k, alpha, <const double *>va.buf, rsa, csa,
                                  <const double *>vb.buf, rsb, csb, beta,
                                  <double *>vc.buf, rsc, csc, <bp_epilogue>epi,
                                  <const double *>bias, <const double *>aux, ldaux, 0)
    if status == BP_ENOMEM:
        raise MemoryError("bpcore.matmul could not allocate its packing buffers")
    if status != BP_OK:
        raise ValueError(f"bpcore gemm rejected its arguments (status {status})")
    return 0


cdef object _run(object a, object b, bint ta, bint tb, double alpha, double beta,
                 object out, int epi=BP_EPI_NONE, object bias=None, object aux=None,
                 bint bf16=False):
    """Acquire buffers of validated arrays, allocate ``out`` if None, compute."""
    cdef Py_buffer va, vb, vc, vbias, vaux
    cdef Py_buffer *pbias = NULL
    cdef Py_buffer *paux = NULL
    cdef Py_ssize_t m, n
    PyObject_GetBuffer(a, &va, _RO)
    try:
        if not _elementwise(&va):           # misaligned data: compute on a copy
            PyBuffer_Release(&va)
            # NOTE: a copy, not ascontiguousarray: a misaligned array that is
            # already C-contiguous would come back as is (UBSan: misaligned load).
            a = np.array(a, order="C", copy=True)
            PyObject_GetBuffer(a, &va, _RO)
        PyObject_GetBuffer(b, &vb, _RO)
        try:
            if not _elementwise(&vb):
                PyBuffer_Release(&vb)
                b = np.array(b, order="C", copy=True)
                PyObject_GetBuffer(b, &vb, _RO)
            m = va.shape[1] if ta else va.shape[0]
            n = vb.shape[0] if tb else vb.shape[1]
            if out is None:
                out = _empty((m, n), _F32 if va.itemsize == 4 else _F64)
            PyObject_GetBuffer(out, &vc, PyBUF_STRIDES | PyBUF_WRITABLE)
            try:
                if bias is not None:
                    PyObject_GetBuffer(bias, &vbias, PyBUF_STRIDES)
                    pbias = &vbias
                if aux is not None:
                    PyObject_GetBuffer(aux, &vaux, PyBUF_STRIDES)
                    paux = &vaux
                _compute(&va, &vb, ta, tb, alpha, beta, &vc, epi, pbias, paux, bf16)
            finally:
                if pbias != NULL:
                    PyBuffer_Release(pbias)
                if paux != NULL:
                    PyBuffer_Release(paux)
                PyBuffer_Release(&vc)
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)
    return out


cdef inline bint _writeable(object arr):
    return arr.flags.writeable


cdef inline void _extent(const Py_buffer *v, char **lo, char **hi) noexcept:
    """The first and one-past-last byte a 2-D buffer can touch (signed strides)."""
    cdef char *start = <char*>v.buf
    cdef char *end = <char*>v.buf
    cdef Py_ssize_t d, span
    for d in range(2):
        span = (v.shape[d] - 1) * v.strides[d] if v.shape[d] > 0 else 0
        if span < 0:
            start += span
        else:
            end += span
    lo[0] = start
    hi[0] = end + v.itemsize


cdef inline bint _apart(const Py_buffer *x, const Py_buffer *y) noexcept:
    cdef char *xlo
    cdef char *xhi
    cdef char *ylo
    cdef char *yhi
    _extent(x, &xlo, &xhi)
    _extent(y, &ylo, &yhi)
    return xhi <= ylo or yhi <= xlo


cdef object _fast(object a, object b, bint ta, bint tb, object alpha, object beta,
                  object out):
    """``matmul`` for the common call: a few C checks instead of the full policy.

    The operands in final form but for contiguity and ``out`` in final form
    (bpcore/_policy.pxd: the input policy's one test), one dtype, matching
    shapes, finite float alpha/beta, ``out`` None -- then beta 0 -- or a
    writeable array of the right shape with canonical strides lying apart
    from both operands.  None when any check fails -- the full path then
    raises or converts."""
    cdef Py_buffer va, vb, vc
    cdef Py_ssize_t m, n, k, kb
    cdef int kind = final_array(a, False)
    if (type(alpha) is not float or not isfinite(<double>alpha)
            or type(beta) is not float or not isfinite(<double>beta)
            or kind < 0 or final_array(b, False) != kind
            or (out is None and <double>beta != 0.0)
            or (out is not None and (plain_array(out) != kind or not _writeable(out)))):
        return None  # e.g. a read-only `out`: the full path says so, naming `out`
    if PyObject_GetBuffer(a, &va, _RO) != 0:
        return None
    try:
        if PyObject_GetBuffer(b, &vb, _RO) != 0:
            return None
        try:
            if va.ndim != 2 or vb.ndim != 2:
                return None
            m = va.shape[1] if ta else va.shape[0]
            k = va.shape[0] if ta else va.shape[1]
            kb = vb.shape[1] if tb else vb.shape[0]
            n = vb.shape[0] if tb else vb.shape[1]
            if k != kb:
                return None
            if out is None:
                out = _empty((m, n), _F32 if kind == cnp.NPY_FLOAT else _F64)
                PyObject_GetBuffer(out, &vc, PyBUF_STRIDES | PyBUF_WRITABLE)
            else:
                PyObject_GetBuffer(out, &vc, _RO | PyBUF_WRITABLE)
                # NOTE: canonical strides too (C-contiguity allows any stride on a
                # size-1 dimension); the full path gives such an `out` a plain view.
                if (vc.ndim != 2 or vc.shape[0] != m or vc.shape[1] != n
                        or vc.strides[1] != vc.itemsize or vc.strides[0] != n * vc.itemsize
                        or not _apart(&vc, &va) or not _apart(&vc, &vb)):
                    PyBuffer_Release(&vc)
                    return None
            try:
                _compute(&va, &vb, ta, tb, <double>alpha, <double>beta, &vc, BP_EPI_NONE,
                         NULL, NULL)
            finally:
                PyBuffer_Release(&vc)
            return out
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)


def _check_operands(a, b, trans_a, trans_b, alpha, beta, out):
    """The full validation policy for ``matmul``; returns the arguments to compute with."""
    _, (a, b) = float_arrays(("a", a, 2), ("b", b, 2))
    dtype = a.dtype
    ta, tb = bool(trans_a), bool(trans_b)
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    want = ("n", k) if tb else (k, "n")
    op_a = "a.T" if ta else "a"
    check_shape("b", b, want,
                f"(trans_b={tb}) to match `{op_a}` of shape ({m}, {k}) on the inner dimension")
    n = b.shape[0] if tb else b.shape[1]
    alpha = check_real("alpha", alpha)
    beta = check_real("beta", beta)
    if out is None and beta != 0:
        raise ValueError("beta != 0 needs `out` (the C that beta scales); got out=None")
    out = check_out(out, "out", (m, n), dtype, inputs=(("a", a), ("b", b)))
    return a, b, ta, tb, alpha, beta, out


def matmul(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None,
           compute_dtype=None):
    """``alpha * op(a) @ op(b) + beta * out``, with op(x) = x.T if trans_x.

    Parameters
    ----------
    a : array_like, shape (m, k), or (k, m) if ``trans_a``
    b : array_like, shape (k, n), or (n, k) if ``trans_b``
        float32 or float64 (one dtype for both); any strides, read-only and
        memory-mapped arrays included -- nothing is copied where strides allow.
    trans_a, trans_b : bool
        Use the transpose, read in place (never copied).
    alpha, beta : float
        ``beta == 0`` ignores whatever ``out`` holds (NaN included), as BLAS does.
    out : ndarray, shape (m, n), optional
        C-contiguous, writeable, of the operands' dtype, not overlapping them.
        Required when ``beta != 0``.
    compute_dtype : None or "bfloat16"
        "bfloat16" (float32 operands only): multiply op(a) and op(b) rounded to
        bfloat16 (nearest, ties to even; ``bpcore.reference.round_bfloat16``),
        accumulating in float32.  ``cpu_features()["bf16"]`` tells the path.

    Returns
    -------
    ndarray, shape (m, n)
        ``out`` if given, else a new array.
    """
    cdef object result
    if compute_dtype is None:
        result = _fast(a, b, trans_a, trans_b, alpha, beta, out)
        if result is not None:
            return result
    # NOTE: the GEMM takes any element strides, so a and b are passed as they
    # are (a stride of a size-1 dimension is never multiplied by a non-zero
    # index; a stride 0 reads one row or column again).  `buf` is `out` or a
    # plain, canonically strided view of it (a subclass, a size-1 dimension
    # with an odd stride); the caller's `out` is what comes back.
    a, b, ta, tb, alpha, beta, buf = _check_operands(a, b, trans_a, trans_b, alpha, beta, out)
    bf16 = check_compute_dtype(compute_dtype, a.dtype) == "bfloat16"
    result = _run(a, b, ta, tb, alpha, beta, buf, BP_EPI_NONE, None, None, bf16)
    return result if out is None else out


def _matmul_epilogue(a, b, epilogue, bias=None, aux=None, *, trans_a=False, trans_b=False,
                     alpha=1.0, beta=0.0, out=None, compute_dtype=None):
    """``matmul`` followed by a fused epilogue (for tests of the C entry point).

    ``epilogue`` is a key of ``EPILOGUES``; ``bias`` has shape (n,) for the
    ``bias*`` kinds, ``aux`` shape (m, n) for the ``mul_d*`` kinds.
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"`epilogue` must be one of {', '.join(map(repr, EPILOGUES))}; "
                         f"got {epilogue!r}")
    a, b, ta, tb, alpha, beta, out = _check_operands(a, b, trans_a, trans_b, alpha, beta, out)
    m, n = out.shape
    if epilogue.startswith("bias"):
        _, (bias,) = float_arrays(("bias", bias if bias is not None else a.dtype.type(0), 1),
                                  contiguous=True)
        bias = bias.astype(a.dtype, copy=False)
        check_shape("bias", bias, (n,), "(one value per column of the product)")
        aux = None
    elif epilogue.startswith("mul"):
        _, (aux,) = float_arrays(("aux", aux, 2))
        aux = aux.astype(a.dtype, copy=False)
        check_shape("aux", aux, (m, n), "(the saved activation, shaped like the product)")
        if aux.strides[1] != aux.itemsize:
            aux = np.ascontiguousarray(aux)
        bias = None
    else:
        bias = aux = None
    bf16 = check_compute_dtype(compute_dtype, a.dtype) == "bfloat16"
    return _run(a, b, ta, tb, alpha, beta, out, EPILOGUES[epilogue], bias, aux, bf16)


def _matmul_strided_out(a, b, out, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
                        compute_dtype=None):
    """``matmul`` into an ``out`` of any element strides (tests the C entry's general
    column stride of C, which ``matmul``'s C-contiguous ``out`` never reaches)."""
    a, b, ta, tb, alpha, _, full = _check_operands(a, b, trans_a, trans_b, alpha, 0.0, None)
    beta = check_real("beta", beta)
    if not isinstance(out, ndarray) or out.shape != full.shape or out.dtype != full.dtype:
        raise ValueError(f"`out` must be an array of shape {full.shape} and dtype {full.dtype}")
    if not out.flags.writeable or np.shares_memory(out, a) or np.shares_memory(out, b):
        raise ValueError("`out` must be writeable and must not overlap `a` or `b`")
    if any(st % out.itemsize for st in out.strides):
        raise ValueError("`out` strides must be whole elements")
    bf16 = check_compute_dtype(compute_dtype, a.dtype) == "bfloat16"
    return _run(a, b, ta, tb, alpha, beta, out, BP_EPI_NONE, None, None, bf16)
