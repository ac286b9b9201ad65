/* workspace.h -- 64-byte aligned packing buffers, reused across calls
 * (included by _gemm.pyx only).
 *
 * One spare buffer is kept in a single atomic slot: a call takes it (or
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

/* A buffer of at least `bytes` bytes, 64-byte aligned, or NULL. */
static void *bp_ws_acquire(size_t bytes)
{
    char *block = __atomic_exchange_n((char **)&bp_ws_spare, NULL, __ATOMIC_ACQ_REL);
    if (block != NULL && *(size_t *)block >= bytes)
        return block + BP_ALIGN;
    free(block);
    void *fresh = NULL;
    if (posix_memalign(&fresh, BP_ALIGN, bytes + BP_ALIGN) != 0)
        return NULL;
    *(size_t *)fresh = bytes;
    return (char *)fresh + BP_ALIGN;
}

/* Give back a buffer from bp_ws_acquire; keeps it as the spare. */
static void bp_ws_release(void *buf)
{
    if (buf == NULL)
        return;
    char *old = __atomic_exchange_n((char **)&bp_ws_spare, (char *)buf - BP_ALIGN, __ATOMIC_ACQ_REL);
    free(old);
}

#endif
