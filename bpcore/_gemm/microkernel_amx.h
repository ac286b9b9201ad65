/* microkernel_amx.h -- the AMX bfloat16 tile: 32 x 32 float from bfloat16 pairs
 * (included by microkernel.h after microkernel_avx512.h; used by kernels.h's
 * bp_bf16_kernels row "amx").
 *
 * Design: AMX (Sapphire Rapids and later Xeons) computes a whole 16 x 16 float32
 * block per instruction: TDPBF16PS C += A B over 16 pairs of the inner dimension
 * (16 x 16 x 32 multiply-adds), from eight tile registers of 16 rows x 64 bytes.
 * On such a Xeon vdpbf16ps issues one 512-bit instruction per two cycles (measured
 * 2026-12-03: 101 GFLOP/s against 200 for float32 FMAs), so the 8 x 48
 * AVX512_BF16 tile is slower than float32 there; this tile is the bfloat16 path
 * where the CPU and the OS allow AMX.
 *
 * The register tile is 2 x 2 blocks of C (tmm0-3, 32 x 32 floats) from two A
 * tiles (tmm4-5: rows 0-15 and 16-31, 16 pairs each) and two B tiles (tmm6-7:
 * columns 0-15 and 16-31): per 16 pairs four loads feed four TDPBF16PS, the
 * layout oneDNN's brgemm uses.  The operands are the GEMM's packed panels:
 *
 *   B~  bf16.h's pair sliver with NR = 32: pair q of column j at [q*32 + j], so a
 *       B tile is 16 pair rows at stride 128 bytes, columns 0-15 or 16-31;
 *   A~  bp_pack_a_amx's sliver (bf16.h): blocks of 32 rows x 16 pairs, so an A
 *       tile is 1 KiB contiguous, 16 rows at a 64-byte stride.  (An earlier
 *       layout, rows at a stride of kp pairs, made each tile load touch 16 lines
 *       1 KiB apart; measured here, the two were within the host's noise.)
 *
 * A last run of fewer than 16 pairs (kc not a multiple of 32) is copied into
 * zero-padded scratch tiles on the stack: the tile shapes stay those of the one
 * configuration (16 x 64 bytes for all eight), which is loaded once per macro
 * kernel (bp_amx_begin), not per tile call.  (Zero-padding that last block in
 * the packers instead was measured no faster: 256x256x784 0.39 vs 0.42 ms.)
 *
 * NOTE: the arithmetic is TDPBF16PS's: each pair's two products added to the sum
 * (odd element first, as vdpbf16ps), subnormal inputs and outputs flushed to
 * zero, round to nearest even.  bpcore holds it to the rounded product within
 * float32 rounding (tests), not to a bit pattern.
 *
 * NOTE: Linux gives a process the tile data state only on request
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); the request is made once,
 * when bp_amx_available() is first asked (at import, choosing the bfloat16 path),
 * and a refusal (an old kernel, a too small sigaltstack somewhere in the process)
 * leaves the path unavailable.  Granted, the kernel saves 8 KiB more state in
 * signal frames of this process, and refuses a later sigaltstack() too small for
 * it -- as after PyTorch's or oneDNN's own request on such a CPU.
 */
#ifndef BP_MICROKERNEL_AMX_H
#define BP_MICROKERNEL_AMX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BP_MR_AMX 32
#define BP_NR_AMX 32

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <cpuid.h>
#include <unistd.h>
#include <sys/syscall.h>

#define BP_HAVE_AMX_KERNELS 1
#define BP_AMX __attribute__((target("avx512f")))   /* the C update; tiles: asm below */

/* the tile configuration: palette 1, eight tiles of 16 rows x 64 bytes */
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) bp_amx_cfg;

/* NOTE: the tile instructions as inline assembly with a memory clobber, not GCC
 * 12's intrinsics: its _tile_loadconfig tells the compiler it reads 8 bytes (the
 * rest of the configuration's stores were dropped at -O2: #UD at the first
 * tilezero), and its _tile_loadd none (so stores to a scratch tile before the load
 * are dead to it).  AT&T operand order: sources first. */
#define BP_TILE_LOAD(t, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t :: "r"(base), "r"((long)(stride)) : "memory")
#define BP_TILE_STORE(t, base, stride) \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" :: "r"(base), "r"((long)(stride)) : "memory")
#define BP_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define BP_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)

static int bp_amx_state = -1;   /* -1: not asked yet; 0: unavailable; 1: granted */

/* 1 if the CPU has AMX-TILE and AMX-BF16, the OS enables the tile state (XCR0 bits
 * 17-18) and grants it to this process; asked once (see the NOTE above). */
static int bp_amx_available(void)
{
    int state = __atomic_load_n(&bp_amx_state, __ATOMIC_ACQUIRE);
    if (state >= 0)
        return state;
    unsigned a, b, c, d;
    int ok = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1)
            && __get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1)) {     /* OSXSAVE */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        if ((lo & (3u << 17)) == (3u << 17))
            /* ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 */
            ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
    __atomic_store_n(&bp_amx_state, ok, __ATOMIC_RELEASE);
    return ok;
}

/* Load the tile configuration on this thread (before a macro kernel's tiles). */
static void bp_amx_begin(void)
{
    bp_amx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg) : "memory");
}

/* Return the tiles to their initial state (after a macro kernel): context switches
 * of this thread then skip their 8 KiB. */
static void bp_amx_end(void) { __asm__ volatile("tilerelease" ::: "memory"); }

/* c[0:n] := alpha*x[0:n] + beta*c[0:n] (C not read when beta is 0), n <= 16 */
static inline BP_AMX __attribute__((always_inline)) void
bp_amx_row16(float *c, const float *x, __m512 va, __m512 vb, int beta0, int n)
{
    const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m512 v = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, x));
    if (!beta0) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c), v);
    _mm512_mask_storeu_ps(c, m, v);
}

/* The tile: C[0:mr, 0:nr] := alpha * A~ B~ + beta * C over k values (kp pairs).
 * Same contract as the other tiles (microkernel.h); rsa and csa are unused (the
 * A~ layout above is implied by k). */
static BP_AMX void bp_ukr_bf16_amx(ptrdiff_t k, const float *a_, ptrdiff_t rsa,
                                   ptrdiff_t csa, const float *b_, const float *alpha,
                                   const float *beta, float *c, ptrdiff_t rsc, int mr, int nr)
{
    (void)rsa; (void)csa;
    const uint32_t *a = (const uint32_t *)(const void *)a_;
    const uint32_t *b = (const uint32_t *)(const void *)b_;
    const ptrdiff_t kp = (k + 1) / 2, full = kp / 16, rest = kp % 16;
    const ptrdiff_t sa = 64, sb = 4 * BP_NR_AMX;          /* row strides, bytes */
    const uint32_t *a1 = a + 16 * 16;                     /* rows 16-31 */
    const int two_m = mr > 16, two_n = nr > 16;
    BP_TILE_ZERO(0); BP_TILE_ZERO(1); BP_TILE_ZERO(2); BP_TILE_ZERO(3);
    for (ptrdiff_t q = 0; q < full; ++q) {
        BP_TILE_LOAD(4, a + 512 * q, sa);
        BP_TILE_LOAD(6, b + 16 * q * BP_NR_AMX, sb);
        BP_TILE_DP(0, 4, 6);
        if (two_n) {
            BP_TILE_LOAD(7, b + 16 * q * BP_NR_AMX + 16, sb);
            BP_TILE_DP(1, 4, 7);
        }
        if (two_m) {
            BP_TILE_LOAD(5, a1 + 512 * q, sa);
            BP_TILE_DP(2, 5, 6);
            if (two_n) BP_TILE_DP(3, 5, 7);
        }
    }
    if (rest) {     /* the last < 16 pairs, zero-padded to a whole tile */
        uint32_t at[32 * 16] __attribute__((aligned(64)));
        uint32_t bt[16 * BP_NR_AMX] __attribute__((aligned(64)));
        const int rows = two_m ? 32 : 16;
        memset(at, 0, sizeof at);
        memset(bt, 0, sizeof bt);
        for (int i = 0; i < (mr < rows ? mr : rows); ++i)
            memcpy(at + 16 * i, a + 512 * full + i * rest, (size_t)rest * 4);
        memcpy(bt, b + 16 * full * BP_NR_AMX, (size_t)rest * BP_NR_AMX * 4);
        BP_TILE_LOAD(4, at, 64);
        BP_TILE_LOAD(6, bt, sb);
        BP_TILE_DP(0, 4, 6);
        if (two_n) {
            BP_TILE_LOAD(7, bt + 16, sb);
            BP_TILE_DP(1, 4, 7);
        }
        if (two_m) {
            BP_TILE_LOAD(5, at + 16 * 16, 64);
            BP_TILE_DP(2, 5, 6);
            if (two_n) BP_TILE_DP(3, 5, 7);
        }
    }
    float acc[32 * 32] __attribute__((aligned(64)));
    BP_TILE_STORE(0, acc, 128);
    if (two_n) BP_TILE_STORE(1, acc + 16, 128);
    if (two_m) {
        BP_TILE_STORE(2, acc + 16 * 32, 128);
        if (two_n) BP_TILE_STORE(3, acc + 16 * 32 + 16, 128);
    }
    const __m512 va = _mm512_set1_ps(*alpha), vb = _mm512_set1_ps(*beta);
    const int beta0 = *beta == 0;
    for (int i = 0; i < mr; ++i) {
        bp_amx_row16(c + i * rsc, acc + 32 * i, va, vb, beta0, nr);
        if (two_n) bp_amx_row16(c + i * rsc + 16, acc + 32 * i + 16, va, vb, beta0, nr - 16);
    }
}

#else   /* no AMX build: never available; the names exist for the kernel table */
#define BP_HAVE_AMX_KERNELS 0
static int bp_amx_available(void) { return 0; }
static void bp_amx_begin(void) {}
static void bp_amx_end(void) {}
#define bp_ukr_bf16_amx bp_ukr_bf16_avx512_emulated
#endif

#endif
