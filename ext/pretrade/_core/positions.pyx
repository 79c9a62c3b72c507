# cython: freethreading_compatible = False
"""The memory-mapped position table (see positions.pxd for the C surface)."""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

cimport pretrade._core.layout as L

LAYOUT = {
    "version": L.LAYOUT_VERSION,
    "header_bytes": sizeof(L.TableHeader),
    "account_bytes": sizeof(L.AccountRecord),
    "instrument_bytes": sizeof(L.InstrumentRecord),
    "position_bytes": sizeof(L.PositionSlot),
    "override_bytes": sizeof(L.OverrideRecord),
    "max_id_length": L.MAX_ID_LENGTH,
    "limit_kinds": L.LIMIT_KIND_COUNT,
}


class TableFullError(MemoryError):
    """A fixed-capacity region of the table has no free record left."""


class TableLayoutError(ValueError):
    """The mapped file does not hold a table of this build's layout."""


# Index entries hold record index + 1, so a zero-filled (sparse) index is empty.
cdef enum:
    EMPTY_ENTRY = 0


cdef uint64_t _align(uint64_t value, uint64_t alignment) noexcept nogil:
    return (value + alignment - 1) // alignment * alignment


cdef uint32_t _index_capacity(uint32_t records) noexcept nogil:
    # At most half full, so linear probes stay short.
    cdef uint32_t capacity = 16
    while capacity < 2 * records:
        capacity *= 2
    return capacity


cdef uint32_t _lock_stride() noexcept nogil:
    # One cache line (or more) per mutex, so stripes do not false-share.
    return <uint32_t>_align(sizeof(L.pthread_mutex_t), 64)


cdef void _plan(L.TableHeader* h, uint32_t max_accounts, uint32_t max_instruments,
                uint32_t max_positions, uint32_t max_overrides,
                uint32_t lock_stripes, uint32_t max_orders) noexcept nogil:
    memset(h, 0, sizeof(L.TableHeader))
    h.magic = L.TABLE_MAGIC
    h.layout_version = L.LAYOUT_VERSION
    h.header_size = sizeof(L.TableHeader)
    h.account_size = sizeof(L.AccountRecord)
    h.instrument_size = sizeof(L.InstrumentRecord)
    h.position_size = sizeof(L.PositionSlot)
    h.override_size = sizeof(L.OverrideRecord)
    h.lock_stride = _lock_stride()
    h.lock_stripes = lock_stripes
    h.max_accounts = max_accounts
    h.max_instruments = max_instruments
    h.max_positions = max_positions
    h.max_overrides = max_overrides
    h.account_index_mask = _index_capacity(max_accounts) - 1
    h.instrument_index_mask = _index_capacity(max_instruments) - 1
    h.position_index_mask = _index_capacity(max_positions) - 1
    h.max_orders = max_orders
    h.order_index_mask = _index_capacity(max_orders) - 1
    h.order_size = sizeof(L.OrderRecord)
    h.activity_size = sizeof(L.AccountActivity)
    cdef uint64_t offset = _align(sizeof(L.TableHeader), 64)
    h.locks_offset = offset
    # lock 0 is the registry lock; 1..stripes are the account stripes
    offset = _align(offset + <uint64_t>h.lock_stride * (lock_stripes + 1), 64)
    h.accounts_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.AccountRecord) * max_accounts, 64)
    h.instruments_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.InstrumentRecord) * max_instruments, 64)
    h.positions_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.PositionSlot) * max_positions, 64)
    h.overrides_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.OverrideRecord) * max_overrides, 64)
    h.account_index_offset = offset
    offset = _align(offset + 4 * (<uint64_t>h.account_index_mask + 1), 64)
    h.instrument_index_offset = offset
    offset = _align(offset + 4 * (<uint64_t>h.instrument_index_mask + 1), 64)
    h.position_index_offset = offset
    offset = _align(offset + 4 * (<uint64_t>h.position_index_mask + 1), 64)
    h.orders_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.OrderRecord) * max_orders, 64)
    h.order_index_offset = offset
    offset = _align(offset + 4 * (<uint64_t>h.order_index_mask + 1), 4096)
    h.activity_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.AccountActivity) * max_accounts, 4096)
    h.total_size = offset


def _check_capacities(max_accounts, max_instruments, max_positions, max_overrides, lock_stripes,
                      max_orders):
    for name, value in (("max_accounts", max_accounts), ("max_instruments", max_instruments),
                        ("max_positions", max_positions), ("max_overrides", max_overrides),
                        ("max_orders", max_orders)):
        if not 1 <= value <= L.MAX_CAPACITY:
            raise ValueError(f"{name} must be between 1 and {L.MAX_CAPACITY}, got {value}")
    if lock_stripes < 1 or lock_stripes > L.MAX_LOCK_STRIPES or lock_stripes & (lock_stripes - 1):
        raise ValueError(f"lock_stripes must be a power of two from 1 to {L.MAX_LOCK_STRIPES}, "
                         f"got {lock_stripes}")


cdef bytes _check_id(object value, str what):
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    cdef Py_ssize_t n = len(<bytes>value)
    if n == 0 or n > L.MAX_ID_LENGTH:
        raise ValueError(f"{what} must be 1 to {L.MAX_ID_LENGTH} bytes, got {n}")
    if b"\0" in <bytes>value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return <bytes>value


cdef void _write_limits(L.LimitSet* target, object limits) except *:
    cdef L.LimitSet fresh
    memset(&fresh, 0, sizeof(L.LimitSet))
    if limits is not None:
        for kind, value in limits.items():
            if not 0 <= kind < L.LIMIT_KIND_COUNT:
                raise ValueError(f"unknown limit kind {kind}")
            if not 0 <= value < (1 << 63):
                raise ValueError(f"limit {kind} = {value} is not a non-negative int64")
            fresh.values[kind] = value
            fresh.present |= (1u << kind)
    memcpy(target, &fresh, sizeof(L.LimitSet))


cdef dict _read_limits(const L.LimitSet* limits):
    cdef dict out = {}
    cdef int kind
    for kind in range(L.LIMIT_KIND_COUNT):
        if limits.present & (1u << kind):
            out[kind] = limits.values[kind]
    return out


cdef void _stage_tags(L.TagLimit* staged, object limits, str what) except *:
    memset(staged, 0, sizeof(L.TagLimit) * L.TAG_LIMIT_SLOTS)
    if len(limits) > L.TAG_LIMIT_SLOTS:
        raise ValueError(f"at most {L.TAG_LIMIT_SLOTS} named {what} limits per account, "
                         f"got {len(limits)}")
    cdef int n = 0
    for name, limit in limits.items():
        if not isinstance(name, bytes) or not 1 <= len(name) <= L.MAX_TAG_LENGTH or b"\0" in name:
            raise ValueError(f"{what} name must be 1 to {L.MAX_TAG_LENGTH} bytes, got {name!r}")
        if not 0 <= limit < (1 << 63):
            raise ValueError(f"{what} limit must be a non-negative int64, got {limit}")
        memcpy(staged[n].name, <const char*>name, len(name))
        staged[n].limit = limit
        n += 1


cdef int _check_halt_mode(int mode) except -1:
    if mode not in (L.HALT_NONE, L.HALT_MODE_ACTIVE, L.HALT_MODE_REDUCE_ONLY, L.HALT_MODE_HALTED):
        raise ValueError(f"unknown halt mode {mode}")
    return L.HALT_NONE if mode == L.HALT_MODE_ACTIVE else mode


cdef class PositionTable:
    """Accounts, instruments, positions, limits and halts in a mapped buffer.

    Build one with :meth:`format` (a new table) or :meth:`attach` (a table
    another process formatted). Python code (the Redis sync, the Halt RPC,
    tests) writes through the methods below; the check pipeline reads the
    records directly from C.
    """

    def __cinit__(self):
        self.base = NULL
        self.header = NULL

    # -- CONSTRUCTION --

    @staticmethod
    def required_size(uint32_t max_accounts, uint32_t max_instruments, uint32_t max_positions,
                      uint32_t max_overrides, uint32_t lock_stripes, uint32_t max_orders=65536):
        """Bytes a table of these capacities needs (a multiple of the page size)."""
        _check_capacities(max_accounts, max_instruments, max_positions, max_overrides,
                          lock_stripes, max_orders)
        cdef L.TableHeader h
        _plan(&h, max_accounts, max_instruments, max_positions, max_overrides, lock_stripes,
              max_orders)
        return h.total_size

    @staticmethod
    def format(buffer, uint32_t max_accounts, uint32_t max_instruments, uint32_t max_positions,
               uint32_t max_overrides, uint32_t lock_stripes, uint32_t max_orders=65536,
               bint assume_zeroed=False):
        """Initialise an empty table in the writable ``buffer``.

        Every region of a fresh table is zero bytes (index entry 0 = empty).
        With ``assume_zeroed`` (a new sparse file or anonymous mapping) the
        buffer is not cleared, so untouched pages never take memory.
        """
        _check_capacities(max_accounts, max_instruments, max_positions, max_overrides,
                          lock_stripes, max_orders)
        cdef L.TableHeader plan
        _plan(&plan, max_accounts, max_instruments, max_positions, max_overrides, lock_stripes,
              max_orders)
        cdef PositionTable table = PositionTable.__new__(PositionTable)
        cdef unsigned char[::1] view = buffer
        if <uint64_t>view.shape[0] < plan.total_size:
            raise ValueError(f"buffer holds {view.shape[0]} bytes, the table needs {plan.total_size}")
        cdef char* base = <char*>&view[0]
        if not assume_zeroed:
            memset(base, 0, plan.total_size)
        memcpy(base, &plan, sizeof(L.TableHeader))
        cdef L.TableHeader* h = <L.TableHeader*>base
        cdef uint32_t i
        cdef int rc
        for i in range(lock_stripes + 1):
            rc = L.pt_mutex_init_shared(<L.pthread_mutex_t*>(base + h.locks_offset + <uint64_t>i * h.lock_stride))
            if rc:
                raise OSError(rc, "pthread_mutex_init (process-shared, robust) failed")
        table._bind(view)
        return table

    @staticmethod
    def attach(buffer):
        """Map a table that another process formatted; refuse a foreign layout."""
        cdef unsigned char[::1] view = buffer
        if <size_t>view.shape[0] < sizeof(L.TableHeader):
            raise TableLayoutError("buffer is smaller than a table header")
        cdef L.TableHeader* h = <L.TableHeader*>&view[0]
        if h.magic != L.TABLE_MAGIC or h.layout_version != L.LAYOUT_VERSION:
            raise TableLayoutError("not a pretrade table of layout version %d" % L.LAYOUT_VERSION)
        cdef L.TableHeader plan
        _plan(&plan, h.max_accounts, h.max_instruments, h.max_positions, h.max_overrides,
              h.lock_stripes, h.max_orders)
        if (h.header_size != plan.header_size or h.account_size != plan.account_size
                or h.instrument_size != plan.instrument_size
                or h.position_size != plan.position_size
                or h.override_size != plan.override_size or h.lock_stride != plan.lock_stride
                or h.order_size != plan.order_size or h.activity_size != plan.activity_size
                or h.total_size != plan.total_size or <uint64_t>view.shape[0] < plan.total_size):
            raise TableLayoutError("table record sizes differ from this build's layout")
        cdef PositionTable table = PositionTable.__new__(PositionTable)
        table._bind(view)
        return table

    cdef void _bind(self, object view) except *:
        cdef unsigned char[::1] v = view
        self._buffer = view
        self.base = <char*>&v[0]
        self.header = <L.TableHeader*>self.base
        self.accounts = <L.AccountRecord*>(self.base + self.header.accounts_offset)
        self.instruments = <L.InstrumentRecord*>(self.base + self.header.instruments_offset)
        self.positions = <L.PositionSlot*>(self.base + self.header.positions_offset)
        self.overrides = <L.OverrideRecord*>(self.base + self.header.overrides_offset)
        self.account_index = <int32_t*>(self.base + self.header.account_index_offset)
        self.instrument_index = <int32_t*>(self.base + self.header.instrument_index_offset)
        self.position_index = <int32_t*>(self.base + self.header.position_index_offset)
        self.orders = <L.OrderRecord*>(self.base + self.header.orders_offset)
        self.order_index = <int32_t*>(self.base + self.header.order_index_offset)
        self.activity = <L.AccountActivity*>(self.base + self.header.activity_offset)

    def release(self):
        """Drop the pointers and the buffer export, so the mapping can close."""
        self.base = NULL
        self.header = NULL
        self._buffer = None

    # -- LOCKS --

    cdef L.pthread_mutex_t* registry_lock(self) noexcept nogil:
        return <L.pthread_mutex_t*>(self.base + self.header.locks_offset)

    cdef L.pthread_mutex_t* stripe_lock(self, int32_t account_index) noexcept nogil:
        cdef uint32_t stripe = 1 + (<uint32_t>account_index & (self.header.lock_stripes - 1))
        return <L.pthread_mutex_t*>(self.base + self.header.locks_offset
                                  + <uint64_t>stripe * self.header.lock_stride)

    cdef void lock_account(self, int32_t account_index) noexcept nogil:
        if L.pt_mutex_lock(self.stripe_lock(account_index)) == 1:
            L.pt_add_i64(&self.header.recovered_locks, 1)

    cdef void unlock_account(self, int32_t account_index) noexcept nogil:
        L.pt_mutex_unlock(self.stripe_lock(account_index))

    cdef void _lock_registry(self) noexcept nogil:
        if L.pt_mutex_lock(self.registry_lock()) == 1:
            L.pt_add_i64(&self.header.recovered_locks, 1)

    # -- LOOKUPS --

    cdef int32_t find_account(self, const char* account_id, Py_ssize_t length) noexcept nogil:
        if length <= 0 or length > L.MAX_ID_LENGTH:
            return L.NO_INDEX
        cdef uint32_t h = hash_id(account_id, length)
        cdef uint32_t mask = self.header.account_index_mask
        cdef uint32_t probe = h & mask
        cdef int32_t found
        cdef L.AccountRecord* rec
        while True:
            found = L.pt_load_i32(&self.account_index[probe]) - 1
            if found == L.NO_INDEX:
                return L.NO_INDEX
            rec = &self.accounts[found]
            if (rec.id_hash == h and rec.id_length == <uint32_t>length
                    and memcmp(rec.account_id, account_id, length) == 0):
                return found
            probe = (probe + 1) & mask

    cdef int32_t find_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil:
        if length <= 0 or length > L.MAX_ID_LENGTH:
            return L.NO_INDEX
        cdef uint32_t h = hash_id(symbol, length)
        cdef uint32_t mask = self.header.instrument_index_mask
        cdef uint32_t probe = h & mask
        cdef int32_t found
        cdef L.InstrumentRecord* rec
        while True:
            found = L.pt_load_i32(&self.instrument_index[probe]) - 1
            if found == L.NO_INDEX:
                return L.NO_INDEX
            rec = &self.instruments[found]
            if (rec.id_hash == h and rec.id_length == <uint32_t>length
                    and memcmp(rec.symbol, symbol, length) == 0):
                return found
            probe = (probe + 1) & mask

    cdef int32_t find_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil:
        cdef uint32_t mask = self.header.position_index_mask
        cdef uint32_t probe = hash_pair(account_index, instrument_index) & mask
        cdef int32_t found
        cdef L.PositionSlot* slot
        while True:
            found = L.pt_load_i32(&self.position_index[probe]) - 1
            if found == L.NO_INDEX:
                return L.NO_INDEX
            slot = &self.positions[found]
            if slot.account_index == account_index and slot.instrument_index == instrument_index:
                return found
            probe = (probe + 1) & mask

    cdef int32_t find_order(self, int32_t account_index, const char* order_id,
                            Py_ssize_t length) noexcept nogil:
        if length <= 0 or length > L.MAX_ORDER_ID_LENGTH:
            return L.NO_INDEX
        cdef uint32_t h = hash_id(order_id, length) ^ hash_pair(account_index, 0)
        cdef uint32_t mask = self.header.order_index_mask
        cdef uint32_t probe = h & mask
        cdef int32_t found
        cdef L.OrderRecord* rec
        while True:
            found = L.pt_load_i32(&self.order_index[probe]) - 1
            if found == L.NO_INDEX:
                return L.NO_INDEX
            rec = &self.orders[found]
            if (rec.id_hash == h and rec.account_index == account_index
                    and rec.id_length == <uint32_t>length
                    and memcmp(rec.order_id, order_id, length) == 0):
                return found
            probe = (probe + 1) & mask

    cdef L.OrderRecord* allocate_order(self, int32_t account_index, const char* order_id,
                                     Py_ssize_t length) noexcept nogil:
        # Caller holds the account's stripe lock, so no other writer can insert
        # the same (account, order id); other keys race only for index slots,
        # which compare-and-swap settles without a lock. Returns NULL when the
        # order region is full.
        cdef int32_t index
        while True:
            index = L.pt_load_i32(&self.header.order_count)
            if <uint32_t>index >= self.header.max_orders:
                return NULL
            if L.pt_cas_i32(&self.header.order_count, index, index + 1):
                break
        cdef L.OrderRecord* rec = &self.orders[index]
        memset(rec, 0, sizeof(L.OrderRecord))
        memcpy(rec.order_id, order_id, length)
        rec.id_length = <uint32_t>length
        rec.id_hash = hash_id(order_id, length) ^ hash_pair(account_index, 0)
        rec.account_index = account_index
        rec.position_index = L.NO_INDEX
        rec.next_working = L.NO_INDEX
        return rec

    cdef void publish_order(self, L.OrderRecord* rec) noexcept nogil:
        # Called once the record is complete: index it for lock-free lookups.
        cdef int32_t index = <int32_t>(rec - self.orders)
        cdef uint32_t mask = self.header.order_index_mask
        cdef uint32_t probe = rec.id_hash & mask
        while not L.pt_cas_i32(&self.order_index[probe], EMPTY_ENTRY, index + 1):
            probe = (probe + 1) & mask

    # -- RECORD CREATION --
    # Records are only ever appended. Each is fully written before its index
    # entry is published (release store), so a lock-free reader that finds the
    # index entry sees a complete record.

    cdef int32_t ensure_account(self, const char* account_id, Py_ssize_t length) noexcept nogil:
        cdef int32_t found = self.find_account(account_id, length)
        if found != L.NO_INDEX or length <= 0 or length > L.MAX_ID_LENGTH:
            return found
        cdef uint32_t h = hash_id(account_id, length)
        cdef uint32_t mask = self.header.account_index_mask
        cdef uint32_t probe
        cdef L.AccountRecord* rec
        self._lock_registry()
        found = self.find_account(account_id, length)
        if found == L.NO_INDEX and <uint32_t>self.header.account_count < self.header.max_accounts:
            found = self.header.account_count
            rec = &self.accounts[found]
            memset(rec, 0, sizeof(L.AccountRecord))
            memcpy(rec.account_id, account_id, length)
            rec.id_hash = h
            rec.id_length = <uint32_t>length
            rec.first_position = L.NO_INDEX
            rec.first_working_order = L.NO_INDEX
            probe = h & mask
            while L.pt_load_i32(&self.account_index[probe]) != EMPTY_ENTRY:
                probe = (probe + 1) & mask
            L.pt_store_i32(&self.header.account_count, found + 1)
            L.pt_store_i32(&self.account_index[probe], found + 1)
        L.pt_mutex_unlock(self.registry_lock())
        return found

    cdef int32_t ensure_instrument(self, const char* symbol, Py_ssize_t length) noexcept nogil:
        cdef int32_t found = self.find_instrument(symbol, length)
        if found != L.NO_INDEX or length <= 0 or length > L.MAX_ID_LENGTH:
            return found
        cdef uint32_t h = hash_id(symbol, length)
        cdef uint32_t mask = self.header.instrument_index_mask
        cdef uint32_t probe
        cdef L.InstrumentRecord* rec
        self._lock_registry()
        found = self.find_instrument(symbol, length)
        if found == L.NO_INDEX and <uint32_t>self.header.instrument_count < self.header.max_instruments:
            found = self.header.instrument_count
            rec = &self.instruments[found]
            memset(rec, 0, sizeof(L.InstrumentRecord))
            memcpy(rec.symbol, symbol, length)
            rec.id_hash = h
            rec.id_length = <uint32_t>length
            rec.tick_size = 1
            rec.lot_size = 1
            probe = h & mask
            while L.pt_load_i32(&self.instrument_index[probe]) != EMPTY_ENTRY:
                probe = (probe + 1) & mask
            L.pt_store_i32(&self.header.instrument_count, found + 1)
            L.pt_store_i32(&self.instrument_index[probe], found + 1)
        L.pt_mutex_unlock(self.registry_lock())
        return found

    cdef int32_t ensure_position(self, int32_t account_index, int32_t instrument_index) noexcept nogil:
        cdef int32_t found = self.find_position(account_index, instrument_index)
        if found != L.NO_INDEX:
            return found
        cdef uint32_t mask = self.header.position_index_mask
        cdef uint32_t probe
        cdef L.PositionSlot* slot
        cdef L.AccountRecord* account = &self.accounts[account_index]
        self._lock_registry()
        found = self.find_position(account_index, instrument_index)
        if found == L.NO_INDEX and <uint32_t>self.header.position_count < self.header.max_positions:
            found = self.header.position_count
            slot = &self.positions[found]
            memset(slot, 0, sizeof(L.PositionSlot))
            slot.account_index = account_index
            slot.instrument_index = instrument_index
            slot.override_index = L.NO_INDEX
            slot.next_in_account = account.first_position
            probe = hash_pair(account_index, instrument_index) & mask
            while L.pt_load_i32(&self.position_index[probe]) != EMPTY_ENTRY:
                probe = (probe + 1) & mask
            L.pt_store_i32(&self.header.position_count, found + 1)
            L.pt_store_i32(&account.first_position, found)
            L.pt_store_i32(&self.position_index[probe], found + 1)
        L.pt_mutex_unlock(self.registry_lock())
        return found

    cdef int32_t ensure_override(self, int32_t position_index) noexcept nogil:
        cdef L.PositionSlot* slot = &self.positions[position_index]
        cdef int32_t found = L.pt_load_i32(&slot.override_index)
        if found != L.NO_INDEX:
            return found
        self._lock_registry()
        found = slot.override_index
        if found == L.NO_INDEX and <uint32_t>self.header.override_count < self.header.max_overrides:
            found = self.header.override_count
            memset(&self.overrides[found], 0, sizeof(L.OverrideRecord))
            self.overrides[found].account_index = slot.account_index
            self.overrides[found].instrument_index = slot.instrument_index
            L.pt_store_i32(&self.header.override_count, found + 1)
            L.pt_store_i32(&slot.override_index, found)
        L.pt_mutex_unlock(self.registry_lock())
        return found

    # -- PYTHON WRITERS (the sync, the Halt RPC, tests) --

    cdef int32_t _account(self, object account_id) except -2:
        cdef bytes key = _check_id(account_id, "account id")
        cdef int32_t index = self.ensure_account(key, len(key))
        if index == L.NO_INDEX:
            raise TableFullError(f"account table full ({self.header.max_accounts} accounts)")
        return index

    cdef int32_t _instrument(self, object symbol) except -2:
        cdef bytes key = _check_id(symbol, "symbol")
        cdef int32_t index = self.ensure_instrument(key, len(key))
        if index == L.NO_INDEX:
            raise TableFullError(f"instrument table full ({self.header.max_instruments} symbols)")
        return index

    cdef int32_t _position(self, int32_t account_index, int32_t instrument_index) except -2:
        cdef int32_t index = self.ensure_position(account_index, instrument_index)
        if index == L.NO_INDEX:
            raise TableFullError(f"position table full ({self.header.max_positions} slots)")
        return index

    cdef void _bump_version(self) noexcept nogil:
        L.pt_add_i64(&self.header.sync_version, 1)

    def upsert_account(self, account_id):
        """Return the account's record index, creating an unknown record if new."""
        return self._account(account_id)

    def set_account_state(self, account_id, *, bint known, bint invalid=False):
        """Mark an account known (it has holdings or limits) and/or unparseable."""
        cdef int32_t a = self._account(account_id)
        self.lock_account(a)
        cdef uint32_t flags = self.accounts[a].flags & ~(L.ACCOUNT_KNOWN | L.ACCOUNT_STATE_INVALID)
        if known:
            flags |= L.ACCOUNT_KNOWN
        if invalid:
            flags |= L.ACCOUNT_STATE_INVALID
        self.accounts[a].flags = flags
        self.unlock_account(a)
        self._bump_version()

    def set_account_limits(self, account_id, limits):
        """Replace the account-wide limits: ``{LimitKind: value}``, or None for none."""
        cdef int32_t a = self._account(account_id)
        cdef L.LimitSet staged
        _write_limits(&staged, limits)
        self.lock_account(a)
        memcpy(&self.accounts[a].limits, &staged, sizeof(L.LimitSet))
        if limits is None:
            self.accounts[a].flags &= ~L.ACCOUNT_HAS_LIMITS
        else:
            self.accounts[a].flags |= L.ACCOUNT_HAS_LIMITS
        self.unlock_account(a)
        self._bump_version()

    def set_symbol_limits(self, account_id, symbol, limits):
        """Replace the per-symbol overrides for one account; None removes them."""
        cdef int32_t a = self._account(account_id)
        cdef int32_t i = self._instrument(symbol)
        cdef L.LimitSet staged
        _write_limits(&staged, limits if limits else None)
        cdef int32_t p = self.find_position(a, i)
        if p == L.NO_INDEX and not limits:
            return
        p = self._position(a, i)
        cdef int32_t o = self.ensure_override(p)
        if o == L.NO_INDEX:
            raise TableFullError(f"override table full ({self.header.max_overrides} records)")
        self.lock_account(a)
        memcpy(&self.overrides[o].limits, &staged, sizeof(L.LimitSet))
        self.unlock_account(a)
        self._bump_version()

    def replace_positions(self, account_id, positions, filled=None, cancelled=None,
                          realized_pnl=None):
        """Set an account's state from one Redis snapshot, atomically.

        ``positions`` is ``{symbol: (quantity, cost_basis)}``; positions of the
        account that are not named become zero, so the table equals the lots.
        ``filled`` maps order ids to the quantity their fill lots carry, and
        ``cancelled`` holds cancelled order ids: each working order's
        remaining quantity becomes ``quantity - filled`` (0 if cancelled), in
        the same locked step as the positions, so a fill is never counted both
        as working and as position, nor as neither. ``None`` leaves the
        working orders as they are.
        """
        cdef int32_t a = self._account(account_id)
        staged = []
        for symbol, (quantity, cost_basis) in positions.items():
            if not -(1 << 63) <= quantity < (1 << 63) or not -(1 << 63) <= cost_basis < (1 << 63):
                raise OverflowError(f"position {symbol!r} does not fit in int64")
            staged.append((self._position(a, self._instrument(symbol)), quantity, cost_basis))
        if realized_pnl is not None and not -(1 << 63) <= realized_pnl < (1 << 63):
            raise OverflowError("realized P&L does not fit in int64")
        cdef int32_t p
        self.lock_account(a)
        try:
            p = self.accounts[a].first_position
            while p != L.NO_INDEX:
                self.positions[p].quantity = 0
                self.positions[p].cost_basis = 0
                p = self.positions[p].next_in_account
            for p, quantity, cost_basis in staged:
                self.positions[p].quantity = quantity
                self.positions[p].cost_basis = cost_basis
            if realized_pnl is not None:
                self.accounts[a].realized_pnl = realized_pnl
            if filled is not None or cancelled is not None:
                self.recompute_working(a, filled or {}, cancelled or ())
        finally:
            self.unlock_account(a)
        self._bump_version()

    cdef void recompute_working(self, int32_t account_index, object filled,
                                object cancelled) except *:
        # Caller holds the account's stripe lock. Rebuilds every working sum
        # of the account from its working orders, so nothing can drift.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.PositionSlot* slot
        cdef L.OrderRecord* order
        cdef int32_t p = account.first_position
        while p != L.NO_INDEX:
            slot = &self.positions[p]
            slot.working_buy = slot.working_sell = 0
            slot.working_buy_notional = slot.working_sell_notional = 0
            slot.working_short_notional = 0
            p = slot.next_in_account
        cdef int32_t o = account.first_working_order
        cdef int32_t kept_head = L.NO_INDEX
        cdef int32_t kept_count = 0
        cdef int32_t next_o
        cdef int64_t remaining, done
        while o != L.NO_INDEX:
            order = &self.orders[o]
            next_o = order.next_working
            key = order.order_id[:order.id_length]
            if key in cancelled:
                remaining = 0
            else:
                done = filled.get(key, 0)
                remaining = order.quantity - done if done < order.quantity else 0
            order.remaining = remaining
            if remaining > 0:
                order.next_working = kept_head
                kept_head = o
                kept_count += 1
                slot = &self.positions[order.position_index]
                if order.side == L.SIDE_BUY:
                    slot.working_buy += remaining
                    slot.working_buy_notional += remaining * order.valuation_price
                else:
                    slot.working_sell += remaining
                    slot.working_sell_notional += remaining * order.valuation_price
                    if order.side == L.SIDE_SELL_SHORT:
                        slot.working_short_notional += remaining * order.valuation_price
            else:
                order.status = L.ORDER_DONE
                order.next_working = L.NO_INDEX
            o = next_o
        account.first_working_order = kept_head
        account.working_order_count = kept_count
        # rebuild the per-venue / per-counterparty running totals
        memset(account.venue_working, 0, sizeof(account.venue_working))
        memset(account.counterparty_working, 0, sizeof(account.counterparty_working))
        account.tag_overflow = 0
        o = kept_head
        while o != L.NO_INDEX:
            order = &self.orders[o]
            add_tag_total(account.venue_working, &account.tag_overflow, 1, order.venue,
                          order.remaining * order.valuation_price)
            add_tag_total(account.counterparty_working, &account.tag_overflow, 2,
                          order.counterparty, order.remaining * order.valuation_price)
            o = order.next_working

    def restore_order(self, account_id, order_id, symbol, int side, int order_type,
                      int64_t quantity, int64_t price, int64_t valuation_price,
                      int64_t notional, venue, counterparty, bint approved, rejections):
        """Put back a decided order from its durable copy (crash recovery).

        An approved order is working again with its whole quantity reserved
        (the next account snapshot subtracts its fills and cancels); a
        rejected one is remembered so its id replays. An order id already in
        the table is left alone. Returns True when the order was added.
        """
        cdef int32_t a = self._account(account_id)
        cdef int32_t i = self._instrument(symbol)
        if not isinstance(order_id, bytes) or not 1 <= len(order_id) <= L.MAX_ORDER_ID_LENGTH:
            raise ValueError(f"order id must be 1 to {L.MAX_ORDER_ID_LENGTH} bytes")
        for tag in (venue, counterparty):
            if not isinstance(tag, bytes) or len(tag) > L.MAX_TAG_LENGTH:
                raise ValueError(f"venue and counterparty must be at most {L.MAX_TAG_LENGTH} bytes")
        if quantity <= 0 and approved:
            raise ValueError("an approved order has a positive quantity")
        cdef int32_t p = self._position(a, i) if approved else L.NO_INDEX
        cdef L.OrderRecord* rec
        cdef int n
        self.lock_account(a)
        try:
            if self.find_order(a, order_id, len(order_id)) != L.NO_INDEX:
                return False
            rec = self.allocate_order(a, order_id, len(order_id))
            if rec == NULL:
                raise TableFullError(f"order table full ({self.header.max_orders} orders)")
            rec.instrument_index = i
            rec.side = side
            rec.order_type = order_type
            rec.quantity = quantity
            rec.price = price
            rec.valuation_price = valuation_price
            rec.notional = notional
            rec.approved = approved
            memcpy(rec.venue, <const char*>venue, len(venue))
            memcpy(rec.counterparty, <const char*>counterparty, len(counterparty))
            rec.rejection_count = len(rejections)
            for n, (code, observed, limit) in enumerate(rejections[:L.STORED_REJECTIONS]):
                rec.rejections[n].code = code
                rec.rejections[n].observed = observed
                rec.rejections[n].limit = limit
            if approved:
                rec.status = L.ORDER_WORKING
                rec.position_index = p
                rec.remaining = quantity
                rec.next_working = self.accounts[a].first_working_order
                self.accounts[a].first_working_order = <int32_t>(rec - self.orders)
                if side == L.SIDE_SELL_SHORT:
                    self.positions[p].locate_used += quantity
                # rebuild the working sums, counts and venue totals from the list
                self.recompute_working(a, {}, ())
            else:
                rec.status = L.ORDER_REJECTED
            self.publish_order(rec)
        finally:
            self.unlock_account(a)
        self._bump_version()
        return True

    def set_balances(self, account_id, cash, credit_line):
        """Cash and credit line (1/10,000 units) for buying power; None: no check."""
        cdef int32_t a = self._account(account_id)
        self.lock_account(a)
        if cash is None:
            self.accounts[a].flags &= ~L.ACCOUNT_HAS_BALANCES
            self.accounts[a].cash = self.accounts[a].credit_line = 0
        else:
            self.accounts[a].cash = cash
            self.accounts[a].credit_line = credit_line
            self.accounts[a].flags |= L.ACCOUNT_HAS_BALANCES
        self.unlock_account(a)
        self._bump_version()

    def set_locates(self, account_id, locates):
        """Located quantity per symbol ``{symbol: units}``; others become 0."""
        cdef int32_t a = self._account(account_id)
        staged = [(self._position(a, self._instrument(symbol)), quantity)
                  for symbol, quantity in locates.items()]
        cdef int32_t p
        self.lock_account(a)
        p = self.accounts[a].first_position
        while p != L.NO_INDEX:
            self.positions[p].located = 0
            p = self.positions[p].next_in_account
        for p, quantity in staged:
            self.positions[p].located = quantity
        self.unlock_account(a)
        self._bump_version()

    def set_tag_limits(self, account_id, venues, counterparties):
        """Exposure limits for named venues and counterparties ``{name: notional}``."""
        cdef int32_t a = self._account(account_id)
        cdef L.TagLimit staged_venues[L.TAG_LIMIT_SLOTS]
        cdef L.TagLimit staged_counterparties[L.TAG_LIMIT_SLOTS]
        _stage_tags(staged_venues, venues, "venue")
        _stage_tags(staged_counterparties, counterparties, "counterparty")
        self.lock_account(a)
        memcpy(self.accounts[a].venue_limits, staged_venues, sizeof(staged_venues))
        memcpy(self.accounts[a].counterparty_limits, staged_counterparties,
               sizeof(staged_counterparties))
        self.unlock_account(a)
        self._bump_version()

    def set_instrument(self, symbol, *, bint known, int64_t tick_size=1, int64_t lot_size=1,
                       bint invalid=False, int32_t issuer_id=0, int32_t sector_id=0,
                       bint short_restricted=False):
        """Set an instrument's reference data.

        Tick size is in price units, lot size in units; issuer and sector are
        small ids the caller interns (0: none given).
        """
        if tick_size <= 0 or lot_size <= 0:
            raise ValueError(f"tick_size and lot_size must be positive, got {tick_size}, {lot_size}")
        cdef int32_t i = self._instrument(symbol)
        cdef L.InstrumentRecord* rec = &self.instruments[i]
        rec.tick_size = tick_size
        rec.lot_size = lot_size
        rec.issuer_id = issuer_id
        rec.sector_id = sector_id
        cdef uint32_t flags = rec.flags & ~(L.INSTRUMENT_KNOWN | L.INSTRUMENT_STATE_INVALID
                                            | L.INSTRUMENT_SHORT_RESTRICTED)
        if known:
            flags |= L.INSTRUMENT_KNOWN
        if invalid:
            flags |= L.INSTRUMENT_STATE_INVALID
        if short_restricted:
            flags |= L.INSTRUMENT_SHORT_RESTRICTED
        L.pt_store_i32(<int32_t*>&rec.flags, <int32_t>flags)
        self._bump_version()

    def set_last_price(self, symbol, price):
        """Set the reference (last) price in 1/10,000 units; None removes it."""
        cdef int32_t i = self._instrument(symbol)
        cdef L.InstrumentRecord* rec = &self.instruments[i]
        if price is None:
            L.pt_store_i32(<int32_t*>&rec.flags, <int32_t>(rec.flags & ~L.INSTRUMENT_HAS_PRICE))
            L.pt_store_i64(&rec.last_price, 0)
        else:
            if price <= 0:
                raise ValueError(f"a last price must be positive, got {price}")
            L.pt_store_i64(&rec.last_price, price)
            L.pt_store_i32(<int32_t*>&rec.flags, <int32_t>(rec.flags | L.INSTRUMENT_HAS_PRICE))
        self._bump_version()

    def set_halt(self, int scope, target, int mode):
        """Set the halt mode of one scope (L.HALT_NONE or ACTIVE lifts it)."""
        cdef int stored = _check_halt_mode(mode)
        if scope == L.HALT_SCOPE_GLOBAL:
            L.pt_store_i32(&self.header.global_halt, stored)
        elif scope == L.HALT_SCOPE_ACCOUNT:
            L.pt_store_i32(&self.accounts[self._account(target)].halt_mode, stored)
        elif scope == L.HALT_SCOPE_SYMBOL:
            L.pt_store_i32(&self.instruments[self._instrument(target)].halt_mode, stored)
        else:
            raise ValueError(f"unknown halt scope {scope}")
        self._bump_version()

    def clear_halts(self):
        """Lift every halt in the table (before a full reload from Redis)."""
        cdef int32_t i
        L.pt_store_i32(&self.header.global_halt, L.HALT_NONE)
        for i in range(L.pt_load_i32(&self.header.account_count)):
            L.pt_store_i32(&self.accounts[i].halt_mode, L.HALT_NONE)
        for i in range(L.pt_load_i32(&self.header.instrument_count)):
            L.pt_store_i32(&self.instruments[i].halt_mode, L.HALT_NONE)
        self._bump_version()

    def set_sync_live(self, bint live):
        """Say whether the sync link trusts the table; while not, orders get STALE_DATA."""
        L.pt_store_i32(&self.header.sync_live, 1 if live else 0)

    # -- PYTHON READERS (status, tests) --

    @property
    def sync_live(self):
        return L.pt_load_i32(&self.header.sync_live) == 1

    @property
    def sync_version(self):
        return L.pt_load_i64(&self.header.sync_version)

    @property
    def recovered_locks(self):
        return L.pt_load_i64(&self.header.recovered_locks)

    def account_ids(self):
        """Every account id the table has a record for, in record order."""
        cdef int32_t i
        cdef L.AccountRecord* rec
        out = []
        for i in range(L.pt_load_i32(&self.header.account_count)):
            rec = &self.accounts[i]
            out.append(rec.account_id[:rec.id_length])
        return out

    def instrument_ids(self):
        """Every symbol the table has a record for, in record order."""
        cdef int32_t i
        cdef L.InstrumentRecord* rec
        out = []
        for i in range(L.pt_load_i32(&self.header.instrument_count)):
            rec = &self.instruments[i]
            out.append(rec.symbol[:rec.id_length])
        return out

    def counts(self):
        """Records in use and capacities, as a dict."""
        h = self.header
        return {
            "accounts": h.account_count, "max_accounts": h.max_accounts,
            "instruments": h.instrument_count, "max_instruments": h.max_instruments,
            "positions": h.position_count, "max_positions": h.max_positions,
            "overrides": h.override_count, "max_overrides": h.max_overrides,
            "orders": h.order_count, "max_orders": h.max_orders,
            "lock_stripes": h.lock_stripes, "total_bytes": h.total_size,
        }

    def position(self, account_id, symbol):
        """``(quantity, cost_basis)`` of one position; (0, 0) when there is none."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef bytes s_key = _check_id(symbol, "symbol")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        cdef int32_t i = self.find_instrument(s_key, len(s_key))
        if a == L.NO_INDEX or i == L.NO_INDEX:
            return (0, 0)
        cdef int32_t p = self.find_position(a, i)
        if p == L.NO_INDEX:
            return (0, 0)
        self.lock_account(a)
        result = (self.positions[p].quantity, self.positions[p].cost_basis)
        self.unlock_account(a)
        return result

    def account_positions(self, account_id):
        """``{symbol: (quantity, cost_basis)}`` for every slot of the account."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        cdef dict out = {}
        if a == L.NO_INDEX:
            return out
        self.lock_account(a)
        cdef int32_t p = self.accounts[a].first_position
        cdef L.InstrumentRecord* rec
        while p != L.NO_INDEX:
            rec = &self.instruments[self.positions[p].instrument_index]
            out[rec.symbol[:rec.id_length]] = (self.positions[p].quantity,
                                               self.positions[p].cost_basis)
            p = self.positions[p].next_in_account
        self.unlock_account(a)
        return out

    def account_info(self, account_id):
        """Flags, halt mode and limits of an account, or None if never seen."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        if a == L.NO_INDEX:
            return None
        cdef L.AccountRecord* rec = &self.accounts[a]
        return {
            "known": bool(rec.flags & L.ACCOUNT_KNOWN),
            "has_limits": bool(rec.flags & L.ACCOUNT_HAS_LIMITS),
            "invalid": bool(rec.flags & L.ACCOUNT_STATE_INVALID),
            "halt_mode": rec.halt_mode,
            "limits": _read_limits(&rec.limits),
            "cash": rec.cash if rec.flags & L.ACCOUNT_HAS_BALANCES else None,
            "credit_line": rec.credit_line if rec.flags & L.ACCOUNT_HAS_BALANCES else None,
            "realized_pnl": rec.realized_pnl,
            "working_orders": rec.working_order_count,
        }

    def working(self, account_id, symbol):
        """Reserved working quantities of one position: ``(buy units, sell units)``."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef bytes s_key = _check_id(symbol, "symbol")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        cdef int32_t i = self.find_instrument(s_key, len(s_key))
        if a == L.NO_INDEX or i == L.NO_INDEX:
            return (0, 0)
        cdef int32_t p = self.find_position(a, i)
        if p == L.NO_INDEX:
            return (0, 0)
        self.lock_account(a)
        result = (self.positions[p].working_buy, self.positions[p].working_sell)
        self.unlock_account(a)
        return result

    def position_and_working(self, account_id, symbol):
        """``(quantity, working buy, working sell)`` of one position, read under its lock."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef bytes s_key = _check_id(symbol, "symbol")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        cdef int32_t i = self.find_instrument(s_key, len(s_key))
        if a == L.NO_INDEX or i == L.NO_INDEX:
            return (0, 0, 0)
        cdef int32_t p = self.find_position(a, i)
        if p == L.NO_INDEX:
            return (0, 0, 0)
        self.lock_account(a)
        result = (self.positions[p].quantity, self.positions[p].working_buy,
                  self.positions[p].working_sell)
        self.unlock_account(a)
        return result

    def working_orders(self, account_id):
        """The account's working orders, newest first, as dicts (read under its lock).

        Each has ``order_id``, ``symbol``, ``side``, ``order_type``,
        ``quantity``, ``price``, ``valuation_price``, ``notional``, ``venue``,
        ``counterparty`` and ``remaining``: what its durable record holds.
        """
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        cdef list out = []
        cdef int32_t o
        cdef L.OrderRecord* rec
        cdef L.InstrumentRecord* instrument
        if a == L.NO_INDEX:
            return out
        self.lock_account(a)
        try:
            o = self.accounts[a].first_working_order
            while o != L.NO_INDEX:
                rec = &self.orders[o]
                instrument = &self.instruments[rec.instrument_index]
                out.append({
                    "order_id": rec.order_id[:rec.id_length],
                    "symbol": instrument.symbol[:instrument.id_length],
                    "side": rec.side, "order_type": rec.order_type,
                    "quantity": rec.quantity, "price": rec.price,
                    "valuation_price": rec.valuation_price, "notional": rec.notional,
                    # NUL-padded to TAG_CAPACITY
                    "venue": rec.venue[:L.TAG_CAPACITY].split(b"\0", 1)[0],
                    "counterparty": rec.counterparty[:L.TAG_CAPACITY].split(b"\0", 1)[0],
                    "remaining": rec.remaining,
                })
                o = rec.next_working
        finally:
            self.unlock_account(a)
        return out

    def order_info(self, account_id, order_id):
        """What the table holds for one decided order id, or None."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        if a == L.NO_INDEX or not isinstance(order_id, bytes):
            return None
        cdef int32_t o = self.find_order(a, order_id, len(order_id))
        if o == L.NO_INDEX:
            return None
        cdef L.OrderRecord* rec = &self.orders[o]
        return {
            "status": {L.ORDER_REJECTED: "rejected", L.ORDER_WORKING: "working",
                       L.ORDER_DONE: "done"}[rec.status],
            "approved": bool(rec.approved),
            "quantity": rec.quantity,
            "remaining": rec.remaining,
            "notional": rec.notional,
            "side": rec.side,
        }

    def instrument_info(self, symbol):
        """Reference data, last price and halt mode of a symbol, or None if never seen."""
        cdef bytes s_key = _check_id(symbol, "symbol")
        cdef int32_t i = self.find_instrument(s_key, len(s_key))
        if i == L.NO_INDEX:
            return None
        cdef L.InstrumentRecord* rec = &self.instruments[i]
        return {
            "known": bool(rec.flags & L.INSTRUMENT_KNOWN),
            "invalid": bool(rec.flags & L.INSTRUMENT_STATE_INVALID),
            "last_price": rec.last_price if rec.flags & L.INSTRUMENT_HAS_PRICE else None,
            "tick_size": rec.tick_size,
            "lot_size": rec.lot_size,
            "halt_mode": rec.halt_mode,
        }

    def halt_mode(self, int scope, target=None):
        """The halt mode in force for a scope (L.HALT_NONE = 0 when none)."""
        cdef int32_t index
        if scope == L.HALT_SCOPE_GLOBAL:
            return L.pt_load_i32(&self.header.global_halt)
        if scope == L.HALT_SCOPE_ACCOUNT:
            key = _check_id(target, "account id")
            index = self.find_account(key, len(key))
            return L.HALT_NONE if index == L.NO_INDEX else L.pt_load_i32(&self.accounts[index].halt_mode)
        if scope == L.HALT_SCOPE_SYMBOL:
            key = _check_id(target, "symbol")
            index = self.find_instrument(key, len(key))
            return L.HALT_NONE if index == L.NO_INDEX else L.pt_load_i32(&self.instruments[index].halt_mode)
        raise ValueError(f"unknown halt scope {scope}")
