/* forksafe.h -- is it safe for this process to use the GEMM's worker threads?
 * (included by _gemm.pyx only).
 *
 * The threads are now the GEMM's own pool (pool.h), which has the same
 * problem as the libgomp team it replaced (below): fork() copies only the
 * calling thread, so a child would find worker bookkeeping for threads that do
 * not exist, possibly mid-job.  The rule is kept as it was:
 *
 * GNU libgomp keeps its worker threads in a pool after a parallel region and
 * reuses them for the next one.  fork() copies only the calling thread, but the
 * child inherits the pool's bookkeeping: its first parallel region waits for
 * workers that do not exist, forever.  libgomp has no call to reset the pool,
 * so a child forked after the parent started it runs every product on one
 * thread (a plain serial branch that never calls into libgomp).
 *
 * Two flags, both inherited by fork:
 *   bp_pool_started  this process (or an ancestor it was forked from) entered a
 *                    multi-thread region; set BEFORE entering, so a fork racing
 *                    the region's start in another thread errs on the safe side.
 *   bp_threads_off   set in the child by the pthread_atfork handler when
 *                    bp_pool_started was set at fork time; never cleared.
 * A grandchild inherits both, so it is serial too.  fork+exec and spawn give
 * a fresh process (both zero), which may use threads again.
 */
#ifndef BP_FORKSAFE_H
#define BP_FORKSAFE_H

#include <pthread.h>

static int bp_pool_started = 0;
static int bp_threads_off = 0;

/* The child side of fork(): only a flag store (async-signal-safe). */
static void bp_atfork_child(void)
{
    if (__atomic_load_n(&bp_pool_started, __ATOMIC_RELAXED))
        __atomic_store_n(&bp_threads_off, 1, __ATOMIC_RELAXED);
}

/* Register the fork handler once per process; 0 on success.  If it cannot be
 * registered (ENOMEM), fork children could not be told apart, so this process
 * never starts threads at all. */
static int bp_forksafe_init(void)
{
    static int registered = 0;
    if (registered)
        return 0;
    if (pthread_atfork(NULL, NULL, bp_atfork_child) != 0) {
        __atomic_store_n(&bp_threads_off, 1, __ATOMIC_RELAXED);
        return -1;
    }
    registered = 1;
    return 0;
}

/* Call just before a parallel region with more than one thread (sequentially
 * consistent: visible before any of libgomp's own writes for the region). */
static inline void bp_note_pool_start(void)
{
    __atomic_store_n(&bp_pool_started, 1, __ATOMIC_SEQ_CST);
}

/* 1 if this process may run a multi-thread OpenMP region. */
static inline int bp_threads_allowed(void)
{
    return !__atomic_load_n(&bp_threads_off, __ATOMIC_RELAXED);
}

#endif
