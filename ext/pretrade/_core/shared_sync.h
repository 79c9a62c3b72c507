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

/* Redis Cluster's HASH_SLOT of a key whose hash tag is the whole of `key`
 * (an account id, which holds no braces: keys are `...:{ACC}`): CRC16/XMODEM
 * (polynomial 0x1021, initial 0) of its bytes, mod 16384 (the low 14 bits).
 * The account's shard follows from it (see pt_shard_of_slot); the Python
 * layer computes the same with binascii.crc_hqx, and a test compares both
 * with Redis's CLUSTER KEYSLOT. */
static const uint16_t pt_crc16_table[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
    0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
    0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
    0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
    0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
    0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
    0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
    0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
    0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
    0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
    0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
    0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
    0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
    0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
    0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
    0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
    0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
    0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
    0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
    0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static inline uint32_t pt_key_slot(const char *key, int64_t length)
{
    uint16_t crc = 0;
    for (int64_t i = 0; i < length; i++)
        crc = (uint16_t)((crc << 8) ^ pt_crc16_table[((crc >> 8) ^ (uint8_t)key[i]) & 0xff]);
    return crc & 16383u;
}

/* Shards are contiguous slot ranges: shard i of n holds the slots s with
 * i*16384 <= s*n < (i+1)*16384, so shard = s*n / 16384 (n <= MAX_SHARDS). */
static inline int32_t pt_shard_of_slot(uint32_t slot, uint32_t shard_count)
{
    return (int32_t)(((uint64_t)slot * shard_count) >> 14);
}

#endif
