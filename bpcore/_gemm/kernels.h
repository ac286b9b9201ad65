/* kernels.h -- the GEMM's kernel table: per instruction set, the register
 * tile, the B~ packing that matches its width, and the block sizes that fit
 * its tile to the caches (included by _gemm.pyx only).
 *
 * The five loops (_gemm.pyx) read everything from the chosen entry, so a new
 * instruction set is one more row here.  Block sizes, in elements:
 *
 *   KC  the inner-dimension block: a B~ sliver (KC x NR) stays in L1 while
 *       the ir loop streams the A~ slivers past it;
 *   MC  rows of the A~ block (MC x KC), kept in L2 across the jr loop;
 *       a multiple of MR;
 *   NC  columns of the B~ panel (KC x NC), in L3 across the ic loop;
 *       a multiple of NR.
 *
 * Caches assumed: L1d 32-48 KiB, L2 512 KiB-2 MiB, L3 >= 8 MiB (x86-64 cores
 * of the AVX2 / AVX-512 generations; smaller caches only cost speed).
 */
#ifndef BP_KERNELS_H
#define BP_KERNELS_H

#include "microkernel.h"
#include "pack.h"
#include "small.h"
#include "bf16.h"

typedef struct bp_blocks {
    int mr, nr;          /* register tile                                   */
    int kc, mc, nc;      /* cache blocks (see above)                        */
} bp_blocks;

typedef struct bp_kernel {
    const char *name;    /* as cpu_features() reports it                    */
    bp_ukr_f32_fn ukr_f32;
    bp_pack_bt_f32_fn pack_bt_f32;
    bp_blocks f32;
    bp_ukr_f64_fn ukr_f64;
    bp_pack_bt_f64_fn pack_bt_f64;
    bp_blocks f64;
    /* the small-product path with this kernel's arithmetic (small.h), run with its KC */
    bp_small_f32_fn small_f32;
    bp_small_f64_fn small_f64;
    /* 1: a bfloat16 tile (bp_bf16_kernels): the loops pack A~ and B~ as bfloat16
     * pairs (bf16.h), always pack A, and use its f32 entries only; 2: the same with
     * the AMX tile's A~ layout (bp_pack_a_amx) and its tile configuration loaded
     * around each macro kernel (bp_amx_begin / bp_amx_end) */
    int pairs;
} bp_kernel;

enum {
    BP_KERNEL_PORTABLE = 0,
    BP_KERNEL_AVX2 = 1,
    BP_KERNEL_AVX512 = 2,
    BP_KERNEL_AVX512_EMULATED = 3,  /* the AVX-512 tile over scalar C: tests only */
    BP_KERNEL_COUNT = 4
};

/* 6 x 16 float: B~ sliver 256*16*4 B = 16 KiB (L1), A~ 144*256*4 B = 144 KiB (L2),
 *   B~ panel 256*4080*4 B = 4 MiB (L3).
 * 6 x 8 double: 256*8*8 B = 16 KiB, 72*256*8 B = 144 KiB, 8 MiB.               */
#define BP_BLOCKS_256_F32 {BP_MR, BP_NR_F32, 256, 144, 4080}
#define BP_BLOCKS_256_F64 {BP_MR, BP_NR_F64, 256, 72, 4080}
/* 8 x 48 float: B~ sliver 128*48*4 B = 24 KiB (L1: the sliver is 3x wider, so KC
 *   is halved), A~ 512*128*4 B = 256 KiB (L2), B~ panel 128*4080*4 B = 2 MiB (L3).
 * 8 x 24 double: 128*24*8 B = 24 KiB, 256*128*8 B = 256 KiB, 4 MiB.             */
#define BP_BLOCKS_512_F32 {BP_MR_Z, BP_NR_Z_F32, 128, 512, 4080}
#define BP_BLOCKS_512_F64 {BP_MR_Z, BP_NR_Z_F64, 128, 256, 4080}

static const bp_kernel bp_kernels[BP_KERNEL_COUNT] = {
    {"portable", bp_ukr_f32_portable, bp_pack_bt_f32_portable, BP_BLOCKS_256_F32,
                 bp_ukr_f64_portable, bp_pack_bt_f64_portable, BP_BLOCKS_256_F64,
                 bp_small_f32_portable, bp_small_f64_portable},
    {"avx2_fma", bp_ukr_f32_avx2, bp_pack_bt_f32_avx2, BP_BLOCKS_256_F32,
                 bp_ukr_f64_avx2, bp_pack_bt_f64_avx2, BP_BLOCKS_256_F64,
                 bp_small_f32_avx2, bp_small_f64_avx2},
    {"avx512", bp_ukr_f32_avx512, bp_pack_bt_f32_avx2_48, BP_BLOCKS_512_F32,
               bp_ukr_f64_avx512, bp_pack_bt_f64_avx2_24, BP_BLOCKS_512_F64,
               bp_small_f32_avx2, bp_small_f64_avx2},
    {"avx512_emulated", bp_ukr_f32_avx512_emulated, bp_pack_bt_f32_portable48,
                        BP_BLOCKS_512_F32,
                        bp_ukr_f64_avx512_emulated, bp_pack_bt_f64_portable24,
                        BP_BLOCKS_512_F64,
                        bp_small_f32_fma_c, bp_small_f64_fma_c},
};

/* The bfloat16 tiles: float32 C from bfloat16 pairs, 8 x 48 as the AVX-512F tile.
 * A K step is a pair, so KC = 256 values keeps the float32 tile's footprint:
 *   B~ sliver 128 pairs*48*4 B = 24 KiB (L1), A~ 512*128*4 B = 256 KiB (L2), B~
 *   panel 128*4080*4 B = 2 MiB (L3).  KC must be even: every block but the last
 *   starts on a pair.                                                          */
#define BP_BLOCKS_BF16 {BP_MR_Z, BP_NR_Z_F32, 256, 512, 4080}

/* The AMX tile (microkernel_amx.h), 32 x 32, a K step of 16 pairs per TDPBF16PS:
 *   B~ sliver 256 pairs*32*4 B = 32 KiB (L1, reread by every A~ sliver of the
 *   block), A~ 512*256*4 B = 512 KiB (L2), B~ panel 256*4096*4 B = 4 MiB (L3).
 *   Its A~ has its own layout (blocks of 32 rows x 16 pairs, one A tile 1 KiB
 *   contiguous: bf16.h's bp_pack_a_amx), told by pairs = 2. */
#define BP_BLOCKS_AMX {BP_MR_AMX, BP_NR_AMX, 512, 512, 4096}

enum {
    BP_BF16_AVX512 = 0,
    BP_BF16_AVX512_EMULATED = 1,    /* the same tile over avx512_emu.h: tests only */
    BP_BF16_AMX = 2,
    BP_BF16_COUNT = 3
};

static const bp_kernel bp_bf16_kernels[BP_BF16_COUNT] = {
    {"avx512_bf16", bp_ukr_bf16_avx512, NULL, BP_BLOCKS_BF16,
                    NULL, NULL, {0, 0, 0, 0, 0}, NULL, NULL, 1},
    {"avx512_bf16_emulated", bp_ukr_bf16_avx512_emulated, NULL, BP_BLOCKS_BF16,
                             NULL, NULL, {0, 0, 0, 0, 0}, NULL, NULL, 1},
    {"amx", bp_ukr_bf16_amx, NULL, BP_BLOCKS_AMX,
            NULL, NULL, {0, 0, 0, 0, 0}, NULL, NULL, 2},
};

/* 1 if this build and this CPU can run the bfloat16 tile `which`. */
static int bp_bf16_kernel_runs(int which)
{
    switch (which) {
    case BP_BF16_AVX512_EMULATED:
        return 1;
    case BP_BF16_AVX512:
        return BP_HAVE_AVX512_KERNELS && bp_cpu_avx512f() && bp_cpu_avx512bf16();
    case BP_BF16_AMX:       /* its stores and A~ packer use AVX-512F, its B~ packer AVX2 */
        return BP_HAVE_AMX_KERNELS && bp_cpu_avx512f() && bp_cpu_avx2() && bp_amx_available();
    default:
        return 0;
    }
}

/* How many products were shared by slices of columns (_gemm.pyx's split_cols; tests). */
static long bp_col_split_count = 0;
static inline void bp_col_split_note(void)
{
    __atomic_fetch_add(&bp_col_split_count, 1, __ATOMIC_RELAXED);
}
static inline long bp_col_split_calls(void)
{
    return __atomic_load_n(&bp_col_split_count, __ATOMIC_RELAXED);
}

/* 1 if this build and this CPU can run kernel `which`. */
static int bp_kernel_runs(int which)
{
    switch (which) {
    case BP_KERNEL_PORTABLE:
    case BP_KERNEL_AVX512_EMULATED:
        return 1;
    case BP_KERNEL_AVX2:
        return BP_HAVE_AVX2_KERNELS && bp_cpu_avx2() && bp_cpu_fma();
    case BP_KERNEL_AVX512:
        /* the packing of its slivers uses AVX2 */
        return BP_HAVE_AVX512_KERNELS && bp_cpu_avx512f() && bp_cpu_avx2() && bp_cpu_fma();
    default:
        return 0;
    }
}

#endif
