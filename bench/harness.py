"""The timing harness's primitives: thread limits, interleaved timing, child processes, peak.

The primitives shared with the light ``python -m bpcore bench`` live in the
package (:mod:`bpcore._quickbench`) and are re-exported here, so both measure
the same way; the package never imports this directory.  The child
processes (MPI ranks, RSS probes) run ``bench/worker.py`` with the parent's
``sys.path``, so they import the same bpcore without any path into a source
tree.
"""
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

# re-exported for the tables and the pytest-benchmark files
from bpcore._quickbench import (SETTLE, gemm_table, import_peer,  # noqa: F401
                                limit_threads, same_bpcore_env, time_calls)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_worker(args, *, ranks=None, timeout=600):
    """Run ``bench/worker.py args`` (under ``mpiexec -n ranks`` unless None); return stdout.

    One thread per process (OMP/OpenBLAS), in a temporary directory.
    """
    env = dict(same_bpcore_env(), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(HERE, "worker.py"), *args]
    if ranks is not None:
        mpiexec = (shutil.which("mpiexec", path=os.path.dirname(sys.executable))
                   or shutil.which("mpiexec"))
        if mpiexec is None:
            raise RuntimeError("mpiexec not found (pip install mpich, or a system MPI)")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker failed: {res.stderr[-2000:]}")
    return res.stdout


# ---------------------------------------------------------------------------
# Arithmetic peak: a register-only FMA loop in C, built at bench time if a compiler exists
# ---------------------------------------------------------------------------

# NOTE: one machine vector per accumulator (-march=native tells the width) and 12
# independent chains, enough to hide the FMA latency on two FMA ports while all fit in
# registers (16 ymm with AVX2, 32 zmm with AVX-512).  m < 1 keeps every accumulator
# bounded (it tends to a / (1 - m)), far from subnormals.
_FMA_C = r"""
#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
#define CHAINS 12
#define LOOP(name, T)                                                       \
typedef T name##_v __attribute__((vector_size(VBYTES)));                    \
double name(long iters) {                                                   \
    name##_v acc[CHAINS], m, a;                                             \
    for (int j = 0; j < CHAINS; j++) acc[j] = (name##_v){0} + (T)j;         \
    m = (name##_v){0} + (T)0.999999; a = (name##_v){0} + (T)1e-6;          \
    for (long i = 0; i < iters; i++) {                                      \
        _Pragma("GCC unroll 16")  /* registers, not the stack */            \
        for (int j = 0; j < CHAINS; j++) acc[j] = acc[j] * m + a;           \
    }                                                                       \
    double s = 0;                                                           \
    for (int j = 0; j < CHAINS; j++)                                        \
        for (unsigned k = 0; k < VBYTES / sizeof(T); k++) s += acc[j][k];   \
    return s;                                                               \
}                                                                           \
long name##_flops_per_iter(void) { return 2L * CHAINS * (long)(VBYTES / sizeof(T)); }
LOOP(fma_float32, float)
LOOP(fma_float64, double)

/* bfloat16 dot products (vdpbf16ps: 16 float32 lanes, each += two bf16 products,
 * so 64 FLOPs an instruction), where the compiler targets AVX512_BF16. */
#if defined(__AVX512BF16__)
#include <immintrin.h>
int bf16_available(void) { return 1; }
double fma_bfloat16(long iters) {
    __m512 acc[CHAINS];
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
    /* products of 2^-20 and 1: accumulators grow by ~1e-6 per step, bounded */
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3580), b = (__m512bh)_mm512_set1_epi16(0x3f80);
    for (long i = 0; i < iters; i++) {
        _Pragma("GCC unroll 16")
        for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    }
    double s = 0;
    for (int j = 0; j < CHAINS; j++) s += _mm512_reduce_add_ps(acc[j]);
    return s;
}
long fma_bfloat16_flops_per_iter(void) { return 64L * CHAINS; }
#else
int bf16_available(void) { return 0; }
double fma_bfloat16(long iters) { (void)iters; return 0; }
long fma_bfloat16_flops_per_iter(void) { return 0; }
#endif

/* AMX: four independent TDPBF16PS (16 x 16 float32 += 16 x 32 by 32 x 16 bfloat16,
 * 16384 FLOPs each) on tiles already loaded, as bpcore's 2 x 2 tile issues them.
 * The process must hold the tile state (bpcore's import asks Linux for it). */
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int amx_available(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 22 & 1) || !(d >> 24 & 1))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;  /* ARCH_REQ_XCOMP_PERM, XTILEDATA */
}
double fma_amx(long iters) {
    struct { unsigned char p, s, r[14]; unsigned short colsb[16]; unsigned char rows[16]; }
        __attribute__((aligned(64))) cfg;
    static unsigned tile[256] __attribute__((aligned(64)));  /* zeros: bounded sums */
    memset(&cfg, 0, sizeof cfg);
    cfg.p = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg) : "memory");
    __asm__ volatile("tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\t"
                     "tilezero %%tmm3\n\ttileloadd (%0,%1,1), %%tmm4\n\t"
                     "tileloadd (%0,%1,1), %%tmm5\n\ttileloadd (%0,%1,1), %%tmm6\n\t"
                     "tileloadd (%0,%1,1), %%tmm7" :: "r"(tile), "r"(64L) : "memory");
    for (long i = 0; i < iters; i++)
        __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\ttdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
                         "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\ttdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
    __asm__ volatile("tilerelease" ::: "memory");
    return 0;
}
long fma_amx_flops_per_iter(void) { return 4L * 16 * 16 * 32 * 2; }
#else
int amx_available(void) { return 0; }
double fma_amx(long iters) { (void)iters; return 0; }
long fma_amx_flops_per_iter(void) { return 0; }
#endif
"""


def build_fma_loop():
    """Compile the FMA loop with ``cc -O3 -march=native``; a ctypes library or None.

    None when no C compiler is found or it fails (the peak table then says so).
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    # NOTE: the directory goes once the library is loaded; the mapping stays.
    with tempfile.TemporaryDirectory(prefix="bpcore-fma-") as workdir:
        src, lib = os.path.join(workdir, "fma.c"), os.path.join(workdir, "fma.so")
        with open(src, "w") as f:
            f.write(_FMA_C)
        try:
            subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=fast", "-shared",
                            "-fPIC", "-o", lib, src], check=True, capture_output=True,
                           timeout=120)
            dll = ctypes.CDLL(lib)
        except (OSError, subprocess.SubprocessError):
            return None
    dll.bf16_available.restype = ctypes.c_int
    dll.amx_available.restype = ctypes.c_int
    for dtype in ("float32", "float64", "bfloat16", "amx"):
        getattr(dll, f"fma_{dtype}").restype = ctypes.c_double
        getattr(dll, f"fma_{dtype}").argtypes = [ctypes.c_long]
        getattr(dll, f"fma_{dtype}_flops_per_iter").restype = ctypes.c_long
    return dll


def fma_peak(dll, dtype, threads, *, seconds=0.1, rounds=5):
    """GFLOP/s of ``threads`` concurrent FMA loops (ctypes releases the GIL); best round."""
    loop = getattr(dll, f"fma_{dtype}")
    per_iter = getattr(dll, f"fma_{dtype}_flops_per_iter")()
    iters = 1 << 16
    while True:  # calibrate one call to ~``seconds``
        start = time.perf_counter()
        loop(iters)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / elapsed))
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=loop, args=(iters,)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # NOTE: the best round, not the median: this measures a ceiling, and
        # other load on the machine only ever lowers it.
        best = max(best, threads * iters * per_iter / (time.perf_counter() - start) / 1e9)
    return best


def peak_table(*, threads=(1, 2), n=1024, rounds=5, file=None):
    """Measured arithmetic peak per thread count and dtype: the FMA loop and a large GEMM.

    Prints the ``n``-cubed GEMM rates of bpcore and NumPy, the FMA loop's
    GFLOP/s (if a C compiler is found) and each GEMM's share of it.  Returns
    ``({threads: {dtype: GFLOP/s}}, what)``: the FMA loop's rates, or without
    a compiler the faster GEMM's, and which of the two they are -- the
    default reference of the training table's percentages.
    """
    dll = build_fma_loop()
    rates = {}
    what = "the FMA loop" if dll is not None else "the large-GEMM rate"
    for t in threads:
        gemm = gemm_table(sizes=(n,), threads=t, rounds=rounds, min_time=0.1, file=file)
        if dll is None:
            print("(FMA loop not built: no working C compiler; set CC)", file=file)
        else:
            print(f"Arithmetic peak, {t} thread(s): a register-only FMA loop (C, -march=native, "
                  f"best of 5 rounds); % = the GEMMs above as a share of it", file=file)
            print(f"{'dtype':8} {'FMA GFLOP/s':>12} {'bpcore %':>9} {'numpy %':>8}", file=file)
            rates[t] = {dtype: fma_peak(dll, dtype, t) for dtype in gemm}
            for dtype, r in gemm.items():
                peak = rates[t][dtype]
                print(f"{dtype:8} {peak:12.1f} {100 * r['bpcore'] / peak:9.1f} "
                      f"{100 * r['numpy'] / peak:8.1f}", file=file)
            if dll.bf16_available():
                rates[t]["bfloat16"] = fma_peak(dll, "bfloat16", t)
                print(f"{'bfloat16':8} {rates[t]['bfloat16']:12.1f}  (vdpbf16ps dot loop)",
                      file=file)
            else:
                print("bfloat16: no AVX512_BF16 on this CPU, no bf16 dot loop (bpcore's "
                      "compute_dtype='bfloat16' runs emulated: float32 arithmetic)", file=file)
            if dll.amx_available():
                rates[t]["amx"] = fma_peak(dll, "amx", t)
                print(f"{'amx':8} {rates[t]['amx']:12.1f}  (TDPBF16PS loop, 2 x 2 tiles)",
                      file=file)
        if dll is None:
            rates[t] = {d: max(r.values()) for d, r in gemm.items()}
    return rates, what
