# PositionTable: accounts, instruments, positions, limits and halts in one
# memory-mapped file that every server process maps.
#
# The table never opens files itself (the compiled core does no I/O): Python
# creates and maps the file and hands the buffer in. Writers take the stripe
# lock chosen by account index; new records are added under the registry lock
# and published to the id indexes with release stores, so lookups need no lock.
# Decided orders are the exception: their records are reused (one that no
# longer works and is durable in Redis leaves for a new order; the order
# index keeps a tombstone and is rebuilt when they pile up), so an order
# lookup holds the account's stripe lock, under which its records stay put.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t
from libc.string cimport strncmp, strncpy

cimport pretrade._core.layout as L


cdef inline uint32_t hash_id(const char* data, Py_ssize_t length) noexcept nogil:
    # FNV-1a, 32 bit: ids are short ASCII strings, so this is fast and spreads well.
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    for i in range(length):
        h = (h ^ <uint8_t>data[i]) * 16777619u
    return h


cdef inline uint32_t mix32(uint32_t h) noexcept nogil:
    # murmur3's finaliser: a second hash derived from the first, so the
    # evicted-id filter probes EVICTED_FILTER_HASHES bits h1 + k * h2.
    h ^= h >> 16
    h *= 0x85ebca6bu
    h ^= h >> 13
    h *= 0xc2b2ae35u
    h ^= h >> 16
    return h


cdef inline int64_t working_until(int32_t time_in_force, int64_t expire_at_ms,
                                  int64_t session_end_ms) noexcept nogil:
    # When an approved order stops counting (Unix ms; 0: when its fill or
    # cancel is reported). An IOC order's fill or cancel is reported at once,
    # but until it is in Redis its reservation stands; at the latest it ends
    # with the session, like DAY.
    if time_in_force == L.TIME_IN_FORCE_GTD:
        return expire_at_ms
    if time_in_force == L.TIME_IN_FORCE_DAY or time_in_force == L.TIME_IN_FORCE_IOC:
        return session_end_ms
    return 0


cdef inline bint lapsed(const L.OrderRecord* order, int64_t now_unix_ms) noexcept nogil:
    # Its time in force ended at or before the wall clock now_unix_ms: a
    # working order stops counting (end_lapsed_orders) and cannot be replaced.
    return order.working_until_ms != 0 and order.working_until_ms <= now_unix_ms


cdef inline int64_t capacity_limit(const L.TableHeader* h, int32_t kind) noexcept nogil:
    # The size of the region a Capacity names (a CAPACITY_EXHAUSTED rejection's limit).
    if kind == L.CAPACITY_ORDER_TABLE:
        return h.max_orders
    if kind == L.CAPACITY_ACCOUNT_ORDERS:
        return h.max_orders_per_account
    if kind == L.CAPACITY_ACCOUNTS:
        return h.max_accounts
    if kind == L.CAPACITY_INSTRUMENTS:
        return h.max_instruments
    if kind == L.CAPACITY_POSITIONS:
        return h.max_positions
    if kind == L.CAPACITY_OVERRIDES:
        return h.max_overrides
    if kind == L.CAPACITY_GROUPS:
        return h.max_groups
    return 0


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


cdef inline void count_working(L.PositionSlot* slot, const L.OrderRecord* rec,
                               int64_t sign) noexcept nogil:
    # What a working record counts (counted units, counted notional) on its
    # slot's sums (sign 1: counted, -1: released); recompute_working rebuilds
    # the same.
    cdef int64_t units = sign * rec.counted
    cdef int64_t notional = sign * rec.counted_notional
    if rec.side == L.SIDE_BUY:
        slot.working_buy += units
        slot.working_buy_notional += notional
    else:
        slot.working_sell += units
        slot.working_sell_notional += notional
        if rec.side == L.SIDE_SELL_SHORT:
            slot.working_short_notional += notional


cdef inline uint32_t group_hash(const char* group, Py_ssize_t length) noexcept nogil:
    # OrderRecord.group_hash of a group id: never 0, which marks no group
    return hash_id(group, length) | 1u


cdef inline int32_t member_slot(const L.AccountRecord* account, int32_t group) noexcept nogil:
    # Which of the account's groups ``group`` is: the slot of its next_member
    # that continues that group's member list; -1 if it is not one of them
    # (a list that does not hold together: the walker stops there).
    cdef int32_t k
    for k in range(account.group_count):
        if account.groups[k] == group:
            return k
    return -1


cdef inline int32_t next_member(const L.AccountRecord* accounts, int32_t m,
                                int32_t group) noexcept nogil:
    # The member after ``m`` on ``group``'s list (NO_INDEX: the last, or a
    # list that does not hold together).
    cdef int32_t k = member_slot(&accounts[m], group)
    return accounts[m].next_member[k] if k >= 0 else L.NO_INDEX


cdef inline void count_all(L.OrderRecord* rec) noexcept nogil:
    # A record outside any group counts all it has left.
    rec.counted = rec.remaining
    rec.counted_notional = rec.remaining * rec.valuation_price


cdef inline void sub_tag_total(L.TagLimit* totals, const char* name, int64_t amount) noexcept nogil:
    # Takes ``amount`` off the running total of ``name`` when it has one (a
    # name that had no free slot is summed from the working list instead).
    cdef int n
    if name[0] == 0:
        return
    for n in range(L.TAG_LIMIT_SLOTS):
        if totals[n].name[0] != 0 and strncmp(totals[n].name, name, L.TAG_CAPACITY) == 0:
            totals[n].limit -= amount
            return


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
    cdef L.GroupRecord* groups
    cdef int32_t* group_index

    # -- LOOKUPS (lock free) --
    cdef int32_t find_account(self, const char* account_id, Py_ssize_t length) noexcept nogil
    cdef int32_t find_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil
    cdef int32_t find_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil
    cdef int32_t find_order(self, int32_t account_index, const char* order_id,
                            Py_ssize_t length) noexcept nogil
    cdef bint order_id_evicted(self, int32_t account_index, const char* order_id,
                               Py_ssize_t length) noexcept nogil
    cdef int32_t find_account_group(self, const char* group_id, Py_ssize_t length) noexcept nogil

    # -- DECIDED ORDERS (caller holds the account's stripe lock) --
    cdef L.OrderRecord* allocate_order(self, int32_t account_index, const char* order_id,
                                     Py_ssize_t length, int32_t* what) noexcept nogil
    cdef void publish_order(self, L.OrderRecord* rec) noexcept nogil
    cdef void append_idle(self, int32_t account_index, int32_t index, int64_t at) noexcept nogil
    cdef void add_working(self, int32_t account_index, L.OrderRecord* rec) noexcept nogil
    cdef int32_t unlink_working(self, int32_t account_index, L.OrderRecord* rec) noexcept nogil
    cdef void relink_working(self, int32_t account_index, L.OrderRecord* rec,
                             int32_t previous) noexcept nogil
    cdef void advance_clock(self, int64_t now_ns) noexcept nogil
    cdef int32_t _take_record(self) noexcept nogil
    cdef void _free_record(self, int32_t index) noexcept nogil
    cdef int32_t _pop_evictable(self, int32_t account_index) noexcept nogil
    cdef void _evict(self, int32_t account_index, int32_t index) noexcept nogil
    cdef void _unindex_order(self, int32_t index) noexcept nogil
    cdef bint _index_room(self, int32_t account_index) noexcept nogil
    cdef bint _rebuild_order_index(self, int32_t account_index) noexcept nogil
    cdef int32_t _expire_account(self, int32_t account_index, int64_t now_ns,
                                 int32_t budget) noexcept nogil

    # -- RECORD CREATION (registry lock) --
    cdef int32_t ensure_account(self, const char* account_id, Py_ssize_t length) noexcept nogil
    cdef int32_t ensure_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil
    cdef int32_t ensure_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil
    cdef int32_t ensure_override(self, int32_t position_index) noexcept nogil
    cdef int32_t ensure_account_group(self, const char* group_id, Py_ssize_t length) noexcept nogil

    # -- LOCKS --
    cdef L.pthread_mutex_t* registry_lock(self) noexcept nogil
    cdef L.pthread_mutex_t* lock_at(self, uint32_t n) noexcept nogil
    cdef L.pthread_mutex_t* stripe_lock(self, int32_t account_index) noexcept nogil
    cdef void lock_account(self, int32_t account_index) noexcept nogil
    cdef void unlock_account(self, int32_t account_index) noexcept nogil
    cdef L.pthread_mutex_t* group_lock_at(self, uint32_t n) noexcept nogil
    cdef int32_t _group_stripes(self, int32_t account_index, const int32_t* extra,
                                int32_t extra_count, uint32_t* stripes) noexcept nogil
    cdef void _lock_stripes_of_groups(self, const uint32_t* stripes,
                                      int32_t count) noexcept nogil
    cdef void _unlock_stripes_of_groups(self, const uint32_t* stripes,
                                        int32_t count) noexcept nogil
    cdef int32_t _lock_with_groups(self, int32_t account_index, const int32_t* extra,
                                   int32_t extra_count, uint32_t* stripes) noexcept nogil
    cdef void _bind(self, object buffer) except *
    cdef void _lock_registry(self) noexcept nogil
    cdef int32_t _account(self, object account_id) except -2
    cdef int32_t _group(self, object group_id) except -2
    cdef int32_t _instrument(self, object symbol) except -2
    cdef int32_t _position(self, int32_t account_index, int32_t instrument_index) except -2
    cdef void _bump_version(self) noexcept nogil
    cdef void recompute_working(self, int32_t account_index, object filled,
                                object cancelled) except *
    cdef int _restore_one(self, int32_t a, object order) except -1
    cdef void _rebuild_tag_totals(self, int32_t account_index) noexcept nogil
    cdef void regroup(self, int32_t account_index, const L.OrderRecord* like) noexcept nogil
    cdef void _unlink_grouped(self, int32_t account_index, int32_t index) noexcept nogil
    cdef void _rebuild_grouped(self, int32_t account_index) noexcept nogil
    cdef void _count_groups(self, int32_t account_index) except *
    cdef void _resum(self, int32_t account_index) noexcept nogil
    cdef int32_t _end_lapsed(self, int32_t account_index, int64_t now_unix_ms) except -1
    cdef bint _filter_add(self, int32_t account_index, const char* order_id,
                          Py_ssize_t length) noexcept nogil
    cdef object _working_at(self, int32_t a, bytes name, bint by_venue)
    cdef bint _reservation_fits(self, int32_t a, int32_t p, int side, object quantity,
                                object notional, bytes venue, bytes counterparty) except -1
    cdef void _check_room(self, int32_t account_index, object symbols) except *
