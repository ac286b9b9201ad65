/* pool.h -- the GEMM's own worker threads (included by _gemm.pyx only).
 *
 * Why not OpenMP's team: a parallel region ends in a barrier that waits for
 * every thread of the team, whether or not it got a core.  In a process that
 * also calls NumPy, OpenBLAS's threads spin for a while after each call and
 * hold the other core; on a busy machine other processes do.  A worker that
 * is not scheduled then stalls the whole product at each barrier (measured on
 * a loaded 2-core machine: a 130x300x40 product took 60 ms at 2 threads
 * against 0.07 ms at 1).  Here instead:
 *
 *   - a job is nchunks independent pieces, claimed one at a time from an
 *     atomic counter by the caller and by any worker that is awake: a worker
 *     that does not get a core claims nothing, and the others do its share;
 *   - the caller waits only for chunks that were claimed (in flight), never
 *     for a worker to show up;
 *   - after a job a worker spins for BP_POOL_SPIN_NS (the next product of a
 *     training step comes within microseconds), then sleeps on a condition
 *     variable, so it does not hold a core the rest of the process (NumPy's
 *     BLAS) could use; a sleeping worker costs the caller one wake-up call
 *     per job, never a wait.
 *
 *   - a caller that found its workers starved -- over the jobs of one product
 *     (acquire to release) of at least BP_POOL_STARVED_MIN_NS, the workers ran
 *     under an eighth of the chunks, or the caller waited for chunks in flight
 *     longer than half the time --
 *     runs its next jobs alone for a back-off that doubles while it stays so
 *     (BP_POOL_SOLO_MIN_NS .. BP_POOL_SOLO_MAX_NS) and is forgotten after one
 *     good job.  Another process or a spinning BLAS thread on the other core
 *     then costs one slow job per back-off, not every job: 2 threads are not
 *     slower than 1 on a busy machine.
 *
 * Which thread runs a chunk never changes what the chunk computes, so results
 * do not depend on the thread count or on the schedule (_gemm.pyx's chunks
 * are whole rows of C).  One job at a time: a caller that finds the pool busy
 * (another Python thread's product) runs its own job alone.
 *
 * Job protocol.  `claim` packs the job's generation (high 32 bits) and the
 * next unclaimed chunk (low 32).  The caller writes fn/arg/nchunks, then
 * publishes generation g+1 with a release store; a worker claims chunk i by a
 * compare-and-swap of (g, i) -> (g, i+1), so a worker holding a stale view
 * (an older generation, or a chunk already taken) fails the swap and claims
 * nothing.  `done` counts finished chunks; the caller returns when it reaches
 * nchunks.  A chunk claimed from generation g can only be claimed while g is
 * unfinished, so the job fields it read are g's.
 */
#ifndef BP_POOL_H
#define BP_POOL_H

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

typedef void (*bp_task_fn)(void *arg, int chunk, int worker);

#define BP_POOL_MAX_WORKERS 255     /* besides the caller                        */
/* A worker's spin after a job, before sleeping.  NOTE: it spans the serial parts
 * between a step's threaded products (loss, small products, bias sums: 20-60 us);
 * at 20 us the worker slept through them, woke late for the next product on a
 * VM, and the caller judged it starved: 16-39 of ~320 64-1000-100-10 steps at 2
 * threads, the step then at its 1-thread time (731 us against 520); at 100 us,
 * 1-3 alone and 14-17 beside PyTorch, NumPy and JAX, 520 us. */
#define BP_POOL_SPIN_NS 100000
#define BP_POOL_WAIT_SPINS 4096     /* the caller's pause loop before it yields    */
#define BP_POOL_STARVED_MIN_NS 50000    /* shorter products say little of the workers */
#define BP_POOL_SOLO_MIN_NS 2000000     /* the first back-off after a starved product */
#define BP_POOL_SOLO_MAX_NS 256000000   /* the longest                               */

static struct {
    pthread_mutex_t busy;           /* held by the one caller running a job       */
    pthread_mutex_t lock;           /* guards sleepers and the condition          */
    pthread_cond_t wake;
    int sleepers;
    int nworkers;                   /* started so far (only grows)                */
    /* the job (atomic accesses only) */
    bp_task_fn fn;
    void *arg;
    int nchunks;
    int nthreads;                   /* workers with id < nthreads take part       */
    unsigned long long claim;       /* generation << 32 | next chunk              */
    int done;
    int by_workers;                 /* of done, the chunks the workers ran          */
    int hold;                       /* tests: workers skip every job, as if they got no core */
    /* the back-off (atomic accesses only): before solo_until, jobs run alone */
    long long solo_until, backoff;
    long long starved_products;     /* how many products found the workers starved (tests) */
    /* since bp_pool_acquire: the jobs' time, the caller's waits for chunks in flight,
     * chunks, and chunks the workers ran (the caller's alone: it holds `busy`) */
    long long held_ns, tail_ns, held_chunks, held_by_workers;
} bp_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static inline void bp_pool_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

static inline long long bp_pool_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Claim and run chunks of the job whose claim word was last seen as w. */
static void bp_pool_work(unsigned long long w, int worker)
{
    const unsigned long long gen = w >> 32;
    const bp_task_fn fn = __atomic_load_n(&bp_pool.fn, __ATOMIC_RELAXED);
    void *const arg = __atomic_load_n(&bp_pool.arg, __ATOMIC_RELAXED);
    const unsigned long long n = (unsigned long long)__atomic_load_n(&bp_pool.nchunks,
                                                                     __ATOMIC_RELAXED);
    while ((w >> 32) == gen && (w & 0xffffffffULL) < n) {
        if (__atomic_compare_exchange_n(&bp_pool.claim, &w, w + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            fn(arg, (int)(w & 0xffffffffULL), worker);
            if (worker != 0)
                __atomic_fetch_add(&bp_pool.by_workers, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&bp_pool.done, 1, __ATOMIC_RELEASE);
            w = __atomic_load_n(&bp_pool.claim, __ATOMIC_ACQUIRE);
        }   /* else w now holds the current word: retry, or leave if it moved on */
    }
}

static void *bp_pool_worker(void *p)
{
    const int id = (int)((uintptr_t)p >> 32);
    unsigned long long seen = (uintptr_t)p & 0xffffffffULL;  /* generation at start */
    for (;;) {
        unsigned long long w = __atomic_load_n(&bp_pool.claim, __ATOMIC_ACQUIRE);
        const long long t0 = bp_pool_now_ns();
        for (unsigned i = 1; (w >> 32) == seen; ++i) {
            bp_pool_pause();
            if (i % 256 == 0 && bp_pool_now_ns() - t0 > BP_POOL_SPIN_NS) {
                pthread_mutex_lock(&bp_pool.lock);
                ++bp_pool.sleepers;
                while ((w = __atomic_load_n(&bp_pool.claim, __ATOMIC_ACQUIRE)) >> 32 == seen)
                    pthread_cond_wait(&bp_pool.wake, &bp_pool.lock);
                --bp_pool.sleepers;
                pthread_mutex_unlock(&bp_pool.lock);
                break;
            }
            w = __atomic_load_n(&bp_pool.claim, __ATOMIC_ACQUIRE);
        }
        seen = w >> 32;
        if (id < __atomic_load_n(&bp_pool.nthreads, __ATOMIC_RELAXED)
                && !__atomic_load_n(&bp_pool.hold, __ATOMIC_RELAXED))
            bp_pool_work(w, id);
    }
    return NULL;
}

/* Take the pool for a job of up to `nthreads` threads (caller included), starting
 * workers as needed.  Returns the thread count the job may use: >= 2 with the pool
 * held (give it back with bp_pool_release), or 1 -- run alone, nothing held --
 * when another caller has it or no worker could be started. */
static int bp_pool_acquire(int nthreads)
{
    if (nthreads < 2)
        return 1;
    const long long until = __atomic_load_n(&bp_pool.solo_until, __ATOMIC_RELAXED);
    if (until != 0 && bp_pool_now_ns() < until)
        return 1;               /* backing off: the workers were starved lately */
    if (pthread_mutex_trylock(&bp_pool.busy) != 0)
        return 1;
    if (nthreads - 1 > BP_POOL_MAX_WORKERS)
        nthreads = BP_POOL_MAX_WORKERS + 1;
    if (bp_pool.nworkers < nthreads - 1) {
        /* workers take no signals: Python handles them in its main thread */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        const unsigned long long gen = __atomic_load_n(&bp_pool.claim, __ATOMIC_RELAXED) >> 32;
        while (bp_pool.nworkers < nthreads - 1) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            const uintptr_t p = ((uintptr_t)(bp_pool.nworkers + 1) << 32) | (uintptr_t)gen;
            const int err = pthread_create(&t, &attr, bp_pool_worker, (void *)p);
            pthread_attr_destroy(&attr);
            if (err != 0)
                break;
            ++bp_pool.nworkers;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (bp_pool.nworkers == 0) {
        pthread_mutex_unlock(&bp_pool.busy);
        return 1;
    }
    bp_pool.held_ns = bp_pool.tail_ns = bp_pool.held_chunks = bp_pool.held_by_workers = 0;
    return nthreads < bp_pool.nworkers + 1 ? nthreads : bp_pool.nworkers + 1;
}

static void bp_pool_hold(int on)
{
    __atomic_store_n(&bp_pool.hold, on, __ATOMIC_RELAXED);
}

static void bp_pool_judge(void);

static void bp_pool_release(void)
{
    bp_pool_judge();
    pthread_mutex_unlock(&bp_pool.busy);
}

/* Run chunks 0..nchunks-1 of fn on up to nthreads threads (the pool held). */
static void bp_pool_run(bp_task_fn fn, void *arg, int nchunks, int nthreads)
{
    __atomic_store_n(&bp_pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.arg, arg, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.nchunks, nchunks, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.nthreads, nthreads, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.by_workers, 0, __ATOMIC_RELAXED);
    const long long t0 = bp_pool_now_ns();
    const unsigned long long w =
        ((__atomic_load_n(&bp_pool.claim, __ATOMIC_RELAXED) >> 32) + 1) << 32;
    __atomic_store_n(&bp_pool.claim, w, __ATOMIC_RELEASE);
    pthread_mutex_lock(&bp_pool.lock);
    if (bp_pool.sleepers > 0)
        pthread_cond_broadcast(&bp_pool.wake);
    pthread_mutex_unlock(&bp_pool.lock);
    bp_pool_work(w, 0);
    const long long t1 = bp_pool_now_ns();
    /* only chunks in flight remain: wait for them, yielding in case their thread
     * shares this core */
    for (unsigned i = 1; __atomic_load_n(&bp_pool.done, __ATOMIC_ACQUIRE) < nchunks; ++i) {
        bp_pool_pause();
        if (i % BP_POOL_WAIT_SPINS == 0)
            sched_yield();
    }
    const long long t2 = bp_pool_now_ns();
    /* the caller alone writes these (it holds `busy`) */
    bp_pool.held_ns += t2 - t0;
    bp_pool.tail_ns += t2 - t1;
    bp_pool.held_chunks += nchunks;
    bp_pool.held_by_workers += __atomic_load_n(&bp_pool.by_workers, __ATOMIC_RELAXED);
}

/* The back-off's verdict on the jobs since bp_pool_acquire (one product). */
static void bp_pool_judge(void)
{
    if (bp_pool.held_ns < BP_POOL_STARVED_MIN_NS)
        return;
    /* NOTE: the caller writes the back-off (it holds `busy`); other callers only
     * read solo_until, and bp_pool_reset_backoff clears both. */
    /* NOTE: healthy, the caller's wait is at most one chunk in flight: with 3 chunks
     * a thread, up to a third of the time (a third was the first bound tried: it
     * flagged 6 of 30 healthy 256-784-256-10 steps and took their 2-thread gain) */
    if (8 * bp_pool.held_by_workers < bp_pool.held_chunks
            || 2 * bp_pool.tail_ns > bp_pool.held_ns) {
        const long long b0 = __atomic_load_n(&bp_pool.backoff, __ATOMIC_RELAXED);
        long long b = b0 ? 2 * b0 : BP_POOL_SOLO_MIN_NS;
        if (b > BP_POOL_SOLO_MAX_NS)
            b = BP_POOL_SOLO_MAX_NS;
        __atomic_store_n(&bp_pool.backoff, b, __ATOMIC_RELAXED);
        __atomic_store_n(&bp_pool.solo_until, bp_pool_now_ns() + b, __ATOMIC_RELAXED);
        __atomic_fetch_add(&bp_pool.starved_products, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_store_n(&bp_pool.backoff, 0, __ATOMIC_RELAXED);
    }
}

/* Forget the back-off (tests, and set_num_threads: a new setting starts afresh).
 * NOTE: without `busy` (a fork child may find it held by a thread it does not
 * have): atomic stores, so a product judged meanwhile in another thread either
 * comes before the reset or after it, both valid histories. */
static void bp_pool_reset_backoff(void)
{
    __atomic_store_n(&bp_pool.backoff, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&bp_pool.solo_until, 0, __ATOMIC_RELAXED);
}

/* Products that found the workers starved, so far. */
static long long bp_pool_starved_products(void)
{
    return __atomic_load_n(&bp_pool.starved_products, __ATOMIC_RELAXED);
}

/* For chunks that depend on earlier chunks of the same job (the B~ packing before
 * the row chunks that read it): wait until *count reaches target. */
static inline void bp_pool_wait_count(int *count, int target)
{
    for (unsigned i = 1; __atomic_load_n(count, __ATOMIC_ACQUIRE) < target; ++i) {
        bp_pool_pause();
        if (i % BP_POOL_WAIT_SPINS == 0)
            sched_yield();
    }
}

static inline void bp_pool_count(int *count)
{
    __atomic_fetch_add(count, 1, __ATOMIC_RELEASE);
}

#endif
