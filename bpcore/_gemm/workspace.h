/* workspace.h -- 64-byte aligned packing buffers, reused across calls
 * (included by _gemm.pyx only).
 *
 * One spare buffer is kept per atomic slot (packing; bfloat16 operands): a call takes it (or
 * allocates a larger one) and gives it back when done.  Concurrent calls from
 * several Python threads each get their own buffer; at most one spare stays
 * allocated (reachable, so not a leak).  Reusing it avoids the page faults a
 * fresh mmap-sized allocation costs on every call (~30 us per MiB).
 */
#ifndef BP_WORKSPACE_H
#define BP_WORKSPACE_H

#include <stdlib.h>

#define BP_ALIGN 64  /* a cache line; also the header that records the size */

static void *bp_ws_spare = NULL;
static void *bp_ws_spare_bf16 = NULL;   /* the bfloat16 path's rounded operands */

/* A buffer of at least `bytes` bytes, 64-byte aligned, or NULL; from `slot`'s spare. */
static void *bp_ws_acquire_from(void **slot, size_t bytes)
{
    char *block = __atomic_exchange_n((char **)slot, NULL, __ATOMIC_ACQ_REL);
    if (block != NULL && *(size_t *)block >= bytes)
        return block + BP_ALIGN;
    free(block);
    void *fresh = NULL;
    if (posix_memalign(&fresh, BP_ALIGN, bytes + BP_ALIGN) != 0)
        return NULL;
    *(size_t *)fresh = bytes;
    return (char *)fresh + BP_ALIGN;
}

/* Give back a buffer from bp_ws_acquire_from(slot, ...); keeps it as that slot's spare. */
static void bp_ws_release_to(void **slot, void *buf)
{
    if (buf == NULL)
        return;
    char *old = __atomic_exchange_n((char **)slot, (char *)buf - BP_ALIGN, __ATOMIC_ACQ_REL);
    free(old);
}

/* The packing buffers' slot. */
static void *bp_ws_acquire(size_t bytes) { return bp_ws_acquire_from(&bp_ws_spare, bytes); }
static void bp_ws_release(void *buf) { bp_ws_release_to(&bp_ws_spare, buf); }

/* The bfloat16 path's slot: its buffer is held while the GEMM inside takes the other. */
static void *bp_ws_acquire_bf16(size_t bytes)
{
    return bp_ws_acquire_from(&bp_ws_spare_bf16, bytes);
}
static void bp_ws_release_bf16(void *buf) { bp_ws_release_to(&bp_ws_spare_bf16, buf); }

#endif
