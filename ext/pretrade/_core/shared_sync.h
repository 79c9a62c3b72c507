/* Process-shared synchronisation and checked arithmetic for the pretrade core.
 *
 * Everything here is a static inline over pthreads and GCC builtins, so the
 * Cython modules can call it without the GIL and without touching Python.
 * The mutexes live inside the memory-mapped position table: they are created
 * PTHREAD_PROCESS_SHARED so every server process mapping the file can use
 * them, and PTHREAD_MUTEX_ROBUST so a process killed while holding one does
 * not wedge the others (the next locker is told EOWNERDEAD and recovers it).
 */
#ifndef PRETRADE_SHARED_SYNC_H
#define PRETRADE_SHARED_SYNC_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>

static inline int pt_mutex_init_shared(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc) return rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

/* Returns 0 when locked normally, 1 when the previous owner died holding the
 * lock and it was made consistent again, or an errno value on failure. */
static inline int pt_mutex_lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return rc;
}

/* Like pt_mutex_lock, but returns EBUSY at once when another thread holds it. */
static inline int pt_mutex_trylock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return rc;
}

static inline void pt_mutex_unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

/* Index slots are published with release stores and read with acquire
 * loads: a reader that sees a slot number also sees the record behind it. */
static inline int32_t pt_load_i32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pt_store_i32(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int64_t pt_load_i64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pt_store_i64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int64_t pt_add_i64(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline int32_t pt_add_i32(int32_t *p, int32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline int pt_cas_i64(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
/* Compare-and-swap: 1 when *p held expected and now holds desired. */
static inline int pt_cas_i32(int32_t *p, int32_t expected, int32_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* 128-bit intermediates: a product of two int64 fits, so limit comparisons
 * never wrap. */
typedef __int128 pt_int128;

/* Checked int64 arithmetic: return 1 on overflow (result then undefined). */
static inline int pt_mul_overflow(int64_t a, int64_t b, int64_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int pt_add_overflow(int64_t a, int64_t b, int64_t *out) { return __builtin_add_overflow(a, b, out); }
static inline int pt_sub_overflow(int64_t a, int64_t b, int64_t *out) { return __builtin_sub_overflow(a, b, out); }

#endif
