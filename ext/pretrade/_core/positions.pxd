# PositionTable: accounts, instruments, positions, limits and halts in one
# memory-mapped file that every server process maps.
#
# The table never opens files itself (the compiled core does no I/O): Python
# creates and maps the file and hands the buffer in. Writers take the stripe
# lock chosen by account index; new records are added under the registry lock
# and published to the id indexes with release stores, so lookups need no lock.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint8_t
from libc.string cimport strncmp, strncpy

cimport pretrade._core.layout as L


cdef inline uint32_t hash_id(const char* data, Py_ssize_t length) noexcept nogil:
    # FNV-1a, 32 bit: ids are short ASCII strings, so this is fast and spreads well.
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    for i in range(length):
        h = (h ^ <uint8_t>data[i]) * 16777619u
    return h


cdef inline uint32_t hash_pair(int32_t account_index, int32_t instrument_index) noexcept nogil:
    cdef uint32_t h = (<uint32_t>account_index) * 2654435761u
    h ^= (<uint32_t>instrument_index) + 0x9e3779b9u + (h << 6) + (h >> 2)
    return h


cdef inline void add_tag_total(L.TagLimit* totals, uint32_t* overflow, uint32_t bit,
                               const char* name, int64_t amount) noexcept nogil:
    # Adds to the running total for ``name`` (NUL-terminated, < TAG_CAPACITY),
    # taking a free slot for a new name; no slot left sets the overflow bit.
    cdef int n
    cdef int free_slot = -1
    if name[0] == 0:
        return
    for n in range(L.TAG_LIMIT_SLOTS):
        if totals[n].name[0] == 0:
            if free_slot < 0:
                free_slot = n
        elif strncmp(totals[n].name, name, L.TAG_CAPACITY) == 0:
            totals[n].limit += amount
            return
    if free_slot < 0:
        overflow[0] |= bit
        return
    strncpy(totals[free_slot].name, name, L.TAG_CAPACITY)
    totals[free_slot].limit = amount


cdef class PositionTable:
    cdef object _buffer             # keeps the mapping alive while pointers exist
    cdef char* base
    cdef L.TableHeader* header
    cdef L.AccountRecord* accounts
    cdef L.InstrumentRecord* instruments
    cdef L.PositionSlot* positions
    cdef L.OverrideRecord* overrides
    cdef int32_t* account_index
    cdef int32_t* instrument_index
    cdef int32_t* position_index
    cdef L.OrderRecord* orders
    cdef int32_t* order_index
    cdef L.AccountActivity* activity

    # -- LOOKUPS (lock free) --
    cdef int32_t find_account(self, const char* account_id, Py_ssize_t length) noexcept nogil
    cdef int32_t find_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil
    cdef int32_t find_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil
    cdef int32_t find_order(self, int32_t account_index, const char* order_id,
                            Py_ssize_t length) noexcept nogil
    cdef L.OrderRecord* allocate_order(self, int32_t account_index, const char* order_id,
                                     Py_ssize_t length) noexcept nogil
    cdef void publish_order(self, L.OrderRecord* rec) noexcept nogil

    # -- RECORD CREATION (registry lock) --
    cdef int32_t ensure_account(self, const char* account_id, Py_ssize_t length) noexcept nogil
    cdef int32_t ensure_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil
    cdef int32_t ensure_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil
    cdef int32_t ensure_override(self, int32_t position_index) noexcept nogil

    # -- LOCKS --
    cdef L.pthread_mutex_t* registry_lock(self) noexcept nogil
    cdef L.pthread_mutex_t* stripe_lock(self, int32_t account_index) noexcept nogil
    cdef void lock_account(self, int32_t account_index) noexcept nogil
    cdef void unlock_account(self, int32_t account_index) noexcept nogil
    cdef void _bind(self, object buffer) except *
    cdef void _lock_registry(self) noexcept nogil
    cdef int32_t _account(self, object account_id) except -2
    cdef int32_t _instrument(self, object symbol) except -2
    cdef int32_t _position(self, int32_t account_index, int32_t instrument_index) except -2
    cdef void _bump_version(self) noexcept nogil
    cdef void recompute_working(self, int32_t account_index, object filled,
                                object cancelled) except *
