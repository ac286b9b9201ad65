/* tile_avx512.h -- the 512-bit register tile, a template: no include guard,
 * included once per (dtype, instruction set) by microkernel_avx512.h, which
 * defines before each inclusion:
 *
 *   BP_Z_T        float | double
 *   BP_Z_V        the vector type (__m512 / __m512d, or an emulated one)
 *   BP_Z_W        lanes per vector (16 / 8)
 *   BP_Z_NR       columns of the tile: 3 vectors
 *   BP_Z_OP(op)   the vector operation `op` (e.g. _mm512_fmadd_ps)
 *   BP_Z_NAME(x)  x with the instantiation's suffix (e.g. x##_f32_avx512)
 *   BP_Z_INLINE, BP_Z_FN  storage class and target attributes
 *
 * and, for the bfloat16 tile (microkernel_avx512.h's bf16 instantiations), the
 * packed operands' own arithmetic -- unset, the dtype's FMA:
 *
 *   BP_Z_AT         the element of A~ and B~ (BP_Z_T; uint32_t: a bfloat16 pair)
 *   BP_Z_BV         the vector of a B~ row (BP_Z_V)
 *   BP_Z_LOADB(p)   an aligned load of a B~ row (BP_Z_OP(load))
 *   BP_Z_BCAST(x)   one A~ element in every lane (BP_Z_OP(set1))
 *   BP_Z_MAC(c,x,b) c + x*b lane by lane (BP_Z_OP(fmadd)(x, b, c))
 *   BP_Z_STEPS(k)   packed rows for k values of the inner dimension (k; pairs:
 *                   (k + 1) / 2, the packers zero the odd k's last high half)
 *
 * C, alpha and beta stay BP_Z_T.  It #undefs all of them at its end, so the next
 * instantiation defines them anew.
 *
 * The tile is BP_MR_Z = 8 rows x 3 vectors: 24 accumulators, 3 for the B~ row
 * and 1 broadcast A value (28 of 32 zmm registers).  Per K step it issues 24
 * FMAs against 8 broadcasts and 3 aligned loads, so loads never bound it, and
 * the 24 independent chains hide the FMA latency (4 cycles) on one or two FMA
 * pipes.  8 rows divide the batch sizes an MLP uses (64, 256, 1024), where a
 * taller tile would compute rows past m; 3 vectors (48 floats / 24 doubles)
 * with 1- and 2-vector edge tiles leave at most one partly used vector per row.
 * Same contract as the other tiles (microkernel.h).
 */

#ifndef BP_Z_AT
#define BP_Z_AT BP_Z_T
#define BP_Z_BV BP_Z_V
#define BP_Z_LOADB(p) BP_Z_OP(load)(p)
#define BP_Z_BCAST(x) BP_Z_OP(set1)(x)
#define BP_Z_MAC(c, x, b) BP_Z_OP(fmadd)(x, b, c)
#define BP_Z_STEPS(k) (k)
#endif

/* c[0:n] := va*x + vb*c[0:n] for the first n (1..W) lanes; C not read when beta0. */
BP_Z_INLINE void BP_Z_NAME(bp_zrow)(BP_Z_T *c, BP_Z_V x, BP_Z_V va, BP_Z_V vb, int beta0,
                                    int n)
{
    x = BP_Z_OP(mul)(va, x);
    if (n >= BP_Z_W) {
        if (!beta0) x = BP_Z_OP(fmadd)(vb, BP_Z_OP(loadu)(c), x);
        BP_Z_OP(storeu)(c, x);
    } else {
        const unsigned m = (1u << n) - 1;
        if (!beta0) x = BP_Z_OP(fmadd)(vb, BP_Z_OP(maskz_loadu)(m, c), x);
        BP_Z_OP(mask_storeu)(c, m, x);
    }
}

/* One tile row of nv vectors, nr of its columns stored. */
BP_Z_INLINE void BP_Z_NAME(bp_zrow3)(BP_Z_T *c, BP_Z_V x0, BP_Z_V x1, BP_Z_V x2, BP_Z_V va,
                                     BP_Z_V vb, int beta0, const int nv, int nr)
{
    BP_Z_NAME(bp_zrow)(c, x0, va, vb, beta0, nr);
    if (nv > 1) BP_Z_NAME(bp_zrow)(c + BP_Z_W, x1, va, vb, beta0, nr - BP_Z_W);
    if (nv > 2) BP_Z_NAME(bp_zrow)(c + 2 * BP_Z_W, x2, va, vb, beta0, nr - 2 * BP_Z_W);
}

BP_Z_INLINE void BP_Z_NAME(bp_ztile)(const int nv, ptrdiff_t k, const BP_Z_AT *a,
        ptrdiff_t rsa, ptrdiff_t csa, const BP_Z_AT *b, const BP_Z_T *alpha,
        const BP_Z_T *beta, BP_Z_T *c, ptrdiff_t rsc, int mr, int nr)
{
    const ptrdiff_t o1 = BP_ROW(1), o2 = BP_ROW(2), o3 = BP_ROW(3), o4 = BP_ROW(4),
                    o5 = BP_ROW(5), o6 = BP_ROW(6), o7 = BP_ROW(7);
    for (int i = 0; i < mr; ++i) {     /* C is read and written after the K loop */
        __builtin_prefetch(c + i * rsc);
        __builtin_prefetch(c + i * rsc + nr - 1);
    }
    const BP_Z_V z = BP_Z_OP(setzero)();
    BP_Z_V c00 = z, c01 = z, c02 = z, c10 = z, c11 = z, c12 = z, c20 = z, c21 = z, c22 = z,
           c30 = z, c31 = z, c32 = z, c40 = z, c41 = z, c42 = z, c50 = z, c51 = z, c52 = z,
           c60 = z, c61 = z, c62 = z, c70 = z, c71 = z, c72 = z;
    const ptrdiff_t steps = BP_Z_STEPS(k);
    for (ptrdiff_t p = 0; p < steps; ++p, a += csa, b += BP_Z_NR) {
        const BP_Z_BV b0 = BP_Z_LOADB(b);
        const BP_Z_BV b1 = nv > 1 ? BP_Z_LOADB(b + BP_Z_W) : b0;
        const BP_Z_BV b2 = nv > 2 ? BP_Z_LOADB(b + 2 * BP_Z_W) : b0;
        BP_Z_BV x;
#define BP_Z_STEP(i, off)                                                  \
        x = BP_Z_BCAST(a[off]);                                            \
        c##i##0 = BP_Z_MAC(c##i##0, x, b0);                                \
        if (nv > 1) c##i##1 = BP_Z_MAC(c##i##1, x, b1);                    \
        if (nv > 2) c##i##2 = BP_Z_MAC(c##i##2, x, b2);
        BP_Z_STEP(0, 0) BP_Z_STEP(1, o1) BP_Z_STEP(2, o2) BP_Z_STEP(3, o3)
        BP_Z_STEP(4, o4) BP_Z_STEP(5, o5) BP_Z_STEP(6, o6) BP_Z_STEP(7, o7)
#undef BP_Z_STEP
    }
    const BP_Z_V va = BP_Z_OP(set1)(*alpha), vb = BP_Z_OP(set1)(*beta);
    const int beta0 = *beta == 0;
    BP_Z_NAME(bp_zrow3)(c, c00, c01, c02, va, vb, beta0, nv, nr);
    if (mr > 1) BP_Z_NAME(bp_zrow3)(c + rsc, c10, c11, c12, va, vb, beta0, nv, nr);
    if (mr > 2) BP_Z_NAME(bp_zrow3)(c + 2 * rsc, c20, c21, c22, va, vb, beta0, nv, nr);
    if (mr > 3) BP_Z_NAME(bp_zrow3)(c + 3 * rsc, c30, c31, c32, va, vb, beta0, nv, nr);
    if (mr > 4) BP_Z_NAME(bp_zrow3)(c + 4 * rsc, c40, c41, c42, va, vb, beta0, nv, nr);
    if (mr > 5) BP_Z_NAME(bp_zrow3)(c + 5 * rsc, c50, c51, c52, va, vb, beta0, nv, nr);
    if (mr > 6) BP_Z_NAME(bp_zrow3)(c + 6 * rsc, c60, c61, c62, va, vb, beta0, nv, nr);
    if (mr > 7) BP_Z_NAME(bp_zrow3)(c + 7 * rsc, c70, c71, c72, va, vb, beta0, nv, nr);
}

/* Edge tiles use as few vectors per row as their width needs: no wasted FMAs.
 * The table's signature has BP_Z_T operands; a bfloat16 tile's packers wrote
 * BP_Z_AT there (and only BP_Z_AT lvalues touch them). */
BP_Z_FN void BP_Z_NAME(bp_ukr)(ptrdiff_t k, const BP_Z_T *a_, ptrdiff_t rsa, ptrdiff_t csa,
                               const BP_Z_T *b_, const BP_Z_T *alpha, const BP_Z_T *beta,
                               BP_Z_T *c, ptrdiff_t rsc, int mr, int nr)
{
    const BP_Z_AT *a = (const BP_Z_AT *)(const void *)a_;
    const BP_Z_AT *b = (const BP_Z_AT *)(const void *)b_;
    if (nr > 2 * BP_Z_W)  BP_Z_NAME(bp_ztile)(3, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
    else if (nr > BP_Z_W) BP_Z_NAME(bp_ztile)(2, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
    else                  BP_Z_NAME(bp_ztile)(1, k, a, rsa, csa, b, alpha, beta, c, rsc, mr, nr);
}

#undef BP_Z_T
#undef BP_Z_V
#undef BP_Z_W
#undef BP_Z_NR
#undef BP_Z_OP
#undef BP_Z_NAME
#undef BP_Z_AT
#undef BP_Z_BV
#undef BP_Z_LOADB
#undef BP_Z_BCAST
#undef BP_Z_MAC
#undef BP_Z_STEPS
