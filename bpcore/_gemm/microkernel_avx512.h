/* microkernel_avx512.h -- the AVX-512F tiles, 8 x 48 float / 8 x 24 double, and
 * the AVX512_BF16 tile, 8 x 48 float from bfloat16 pairs (included by
 * microkernel.h only, where BP_ROW is defined).
 *
 * tile_avx512.h is instantiated six times:
 *   bp_ukr_f{32,64}_avx512           over the AVX-512F intrinsics, compiled for
 *                                    that ISA per function (target attribute),
 *                                    so the module still loads on any x86-64;
 *   bp_ukr_f{32,64}_avx512_emulated  over avx512_emu.h's scalar stand-ins, on
 *                                    every platform: the same tile, for tests
 *                                    on CPUs without AVX-512;
 *   bp_ukr_bf16_avx512[_emulated]    the bfloat16 tile, over vdpbf16ps
 *                                    (target "avx512f,avx512bf16") and over
 *                                    avx512_emu.h's lane-by-lane model of it.
 *
 * Where 512-bit FMAs are native (two 512-bit FMA units: most Intel server
 * cores) the tile does twice the FLOPs per instruction of the AVX2 6 x 16 one,
 * so on paper it doubles the peak.  Zen 4 splits each 512-bit operation into
 * two 256-bit halves: the same FLOPs per cycle as AVX2, and the gain there is
 * only the larger tile (fewer loads and loop overhead per FMA).
 */
#ifndef BP_MICROKERNEL_AVX512_H
#define BP_MICROKERNEL_AVX512_H

#include "avx512_emu.h"

#define BP_MR_Z 8         /* rows of the 512-bit tile                         */
#define BP_NR_Z_F32 48    /* columns: three 16-float zmm registers per row     */
#define BP_NR_Z_F64 24    /* columns: three 8-double zmm registers per row     */

#define BP_Z_INLINE static inline
#define BP_Z_FN static
#define BP_Z_T float
#define BP_Z_V bp_emu_ps
#define BP_Z_W 16
#define BP_Z_NR BP_NR_Z_F32
#define BP_Z_OP(op) bp_emu_##op##_ps
#define BP_Z_NAME(x) x##_f32_avx512_emulated
#include "tile_avx512.h"

#define BP_Z_T double
#define BP_Z_V bp_emu_pd
#define BP_Z_W 8
#define BP_Z_NR BP_NR_Z_F64
#define BP_Z_OP(op) bp_emu_##op##_pd
#define BP_Z_NAME(x) x##_f64_avx512_emulated
#include "tile_avx512.h"

/* The bfloat16 tile (compute_dtype="bfloat16"): the same 8 x 48 float32
 * accumulators, each K step a bfloat16 pair of A~ and B~ (bf16.h's pair
 * packers) through vdpbf16ps -- 2 FLOPs a lane per step where fmadd does 1. */
#define BP_Z_T float
#define BP_Z_V bp_emu_ps
#define BP_Z_W 16
#define BP_Z_NR BP_NR_Z_F32
#define BP_Z_OP(op) bp_emu_##op##_ps
#define BP_Z_NAME(x) x##_bf16_avx512_emulated
#define BP_Z_AT uint32_t
#define BP_Z_BV bp_emu_pbh
#define BP_Z_LOADB(p) bp_emu_load_pbh(p)
#define BP_Z_BCAST(x) bp_emu_set1_pbh(x)
#define BP_Z_MAC(c, x, b) bp_emu_dpbf16_ps(c, x, b)
#define BP_Z_STEPS(k) (((k) + 1) / 2)
#include "tile_avx512.h"
#undef BP_Z_INLINE
#undef BP_Z_FN

#if defined(__x86_64__)
#include <immintrin.h>

#define BP_HAVE_AVX512_KERNELS 1
#define BP_AVX512 __attribute__((target("avx512f")))

static int bp_cpu_avx512f(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512f"); }
static int bp_cpu_avx512bf16(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
}

#define BP_Z_INLINE static inline BP_AVX512 __attribute__((always_inline))
#define BP_Z_FN static BP_AVX512
#define BP_Z_T float
#define BP_Z_V __m512
#define BP_Z_W 16
#define BP_Z_NR BP_NR_Z_F32
#define BP_Z_OP(op) _mm512_##op##_ps
#define BP_Z_NAME(x) x##_f32_avx512
#include "tile_avx512.h"

#define BP_Z_T double
#define BP_Z_V __m512d
#define BP_Z_W 8
#define BP_Z_NR BP_NR_Z_F64
#define BP_Z_OP(op) _mm512_##op##_pd
#define BP_Z_NAME(x) x##_f64_avx512
#include "tile_avx512.h"
#undef BP_Z_INLINE
#undef BP_Z_FN

#define BP_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))
#define BP_Z_INLINE static inline BP_AVX512_BF16 __attribute__((always_inline))
#define BP_Z_FN static BP_AVX512_BF16
#define BP_Z_T float
#define BP_Z_V __m512
#define BP_Z_W 16
#define BP_Z_NR BP_NR_Z_F32
#define BP_Z_OP(op) _mm512_##op##_ps
#define BP_Z_NAME(x) x##_bf16_avx512
#define BP_Z_AT uint32_t
#define BP_Z_BV __m512bh
#define BP_Z_LOADB(p) ((__m512bh)_mm512_load_si512((const void *)(p)))
#define BP_Z_BCAST(x) ((__m512bh)_mm512_set1_epi32((int)(x)))
#define BP_Z_MAC(c, x, b) _mm512_dpbf16_ps(c, x, b)
#define BP_Z_STEPS(k) (((k) + 1) / 2)
#include "tile_avx512.h"
#undef BP_Z_INLINE
#undef BP_Z_FN

#else  /* no AVX-512 build: the names fall back to the emulated tiles (never chosen) */
#define BP_HAVE_AVX512_KERNELS 0
static int bp_cpu_avx512f(void) { return 0; }
static int bp_cpu_avx512bf16(void) { return 0; }
#define bp_ukr_f32_avx512 bp_ukr_f32_avx512_emulated
#define bp_ukr_f64_avx512 bp_ukr_f64_avx512_emulated
#define bp_ukr_bf16_avx512 bp_ukr_bf16_avx512_emulated
#endif

#endif
