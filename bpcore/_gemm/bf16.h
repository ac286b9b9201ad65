/* bf16.h -- float32 -> bfloat16 rounding for compute_dtype="bfloat16"
 * (included by _gemm.pyx only).
 *
 * bfloat16 is the top half of a float32 (sign, 8-bit exponent, 7 fraction
 * bits), so rounding to nearest, ties to even, is integer arithmetic on the bit
 * pattern: add 0x7FFF plus the lowest kept bit, clear the low 16 bits.  A carry
 * runs into the exponent (and past the largest bfloat16 to infinity), as it
 * must.  NaN is kept NaN (quiet bit set; the add could carry it to infinity).
 * The same rule as bpcore.reference.round_bfloat16.
 *
 * The values stay float32 here (the low 16 bits zero): the emulated path then
 * runs the float32 GEMM on them -- each product of two bfloat16 values is exact
 * in float32, so it gives vdpbf16ps's values to float32 rounding (vdpbf16ps
 * also flushes subnormal inputs and results to zero; this path does not).
 */
#ifndef BP_BF16_H
#define BP_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float bp_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? u | 0x00400000u
                                                       : u + 0x7FFFu + ((u >> 16) & 1u);
    const uint32_t bits = r & 0xFFFF0000u;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* dst[o*inner + i] = round(src[o*s_outer + i*s_inner]): a rounded, contiguous copy
 * (the caller puts the source's unit stride, if any, on the inner axis). */
static void bp_round_bf16_copy(ptrdiff_t outer, ptrdiff_t inner, const float *src,
                               ptrdiff_t s_outer, ptrdiff_t s_inner, float *dst)
{
    for (ptrdiff_t o = 0; o < outer; ++o, dst += inner) {
        const float *s = src + o * s_outer;
        if (s_inner == 1)
            for (ptrdiff_t i = 0; i < inner; ++i) dst[i] = bp_round_bf16(s[i]);
        else
            for (ptrdiff_t i = 0; i < inner; ++i) dst[i] = bp_round_bf16(s[i * s_inner]);
    }
}

#endif
