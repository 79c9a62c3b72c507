# cython: freethreading_compatible = False
"""The memory-mapped position table (see positions.pxd for the C surface)."""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport INT64_MIN, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset, strncmp
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

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


cdef inline int64_t _monotonic_ns() noexcept nogil:
    # The clock of time.perf_counter_ns on Linux, which decisions are stamped with.
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1_000_000_000 + now.tv_nsec


class TableFullError(MemoryError):
    """A fixed-capacity region of the table has no free record left.

    ``capacity`` names the region (a ``Capacity`` number, the same a
    CAPACITY_EXHAUSTED rejection carries in ``observed``) and ``limit`` how
    many records it holds; nothing of the failed call was written.
    """

    def __init__(self, message, capacity=0, limit=0):
        super().__init__(message)
        self.capacity = capacity
        self.limit = limit


class TableLayoutError(ValueError):
    """The mapped file does not hold a table of this build's layout."""


# Index entries hold record index + 1, so a zero-filled (sparse) index is empty.
# A decided order that leaves the table leaves a tombstone in the order index:
# lookups probe past it, inserts may take it.
cdef enum:
    EMPTY_ENTRY = 0
    TOMBSTONE = -1
    # locks after the account stripes
    ORDER_LOCK_AFTER_STRIPES = 1      # the free list of order records
    REBUILD_LOCK_AFTER_STRIPES = 2    # one order index rebuild at a time (try-lock only)


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


cdef inline bint _expired(int64_t since_ns, int64_t now_ns, int64_t window_ns) noexcept nogil:
    # since + window <= now, without overflow (window >= 0)
    if now_ns < INT64_MIN + window_ns:
        return False
    return since_ns <= now_ns - window_ns


cdef inline uint32_t _lock_count(uint32_t lock_stripes) noexcept nogil:
    return lock_stripes + 3 + L.GROUP_LOCK_STRIPES


cdef uint32_t _default_share(uint32_t max_orders) noexcept nogil:
    cdef uint32_t share = max_orders // L.ACCOUNT_SHARE_DIVISOR
    return share if share > 0 else 1


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
    # Room for every record, for one insert in flight per stripe, and for
    # tombstones: the index is rebuilt before it is three quarters used.
    h.order_index_mask = _index_capacity(max_orders + lock_stripes) - 1
    h.order_size = sizeof(L.OrderRecord)
    h.activity_size = sizeof(L.AccountActivity)
    h.group_size = sizeof(L.GroupRecord)
    h.max_groups = max_accounts if max_accounts < L.MAX_GROUPS else L.MAX_GROUPS
    h.group_index_mask = _index_capacity(h.max_groups) - 1
    h.max_orders_per_account = _default_share(max_orders)
    h.order_expiry_ns = <int64_t>L.DEFAULT_ORDER_EXPIRY_MS * 1_000_000
    h.order_free_head = L.NO_INDEX
    cdef uint64_t offset = _align(sizeof(L.TableHeader), 64)
    h.locks_offset = offset
    # lock 0 is the registry lock; 1..stripes are the account stripes; then
    # the order free list lock, the order index rebuild lock, one spare, and
    # the group locks
    offset = _align(offset + <uint64_t>h.lock_stride * _lock_count(lock_stripes), 64)
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
    h.groups_offset = offset
    offset = _align(offset + <uint64_t>sizeof(L.GroupRecord) * h.max_groups, 64)
    h.group_index_offset = offset
    offset = _align(offset + 4 * (<uint64_t>h.group_index_mask + 1), 4096)
    h.total_size = offset


def _check_order_policy(max_orders, max_orders_per_account, order_expiry_ms):
    if not 0 <= max_orders_per_account <= L.MAX_CAPACITY:
        raise ValueError(f"max_orders_per_account must be between 1 and {L.MAX_CAPACITY} "
                         f"(0: max_orders / {L.ACCOUNT_SHARE_DIVISOR}), "
                         f"got {max_orders_per_account}")
    if not 0 <= order_expiry_ms <= (1 << 63) // 1_000_000 - 1:
        raise ValueError(f"order_expiry_ms must be a non-negative number of milliseconds, "
                         f"got {order_expiry_ms}")


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


cdef uint32_t _pack_currency(object code) except? 0:
    # An ISO 4217 code ("USD") packed c0 | c1 << 8 | c2 << 16, the
    # InstrumentRecord.currency field; "" packs to 0 (none given).
    cdef bytes raw = code.encode("ascii", "replace") if isinstance(code, str) else bytes(code)
    if not raw:
        return 0
    if len(raw) != 3 or not all(65 <= c <= 90 for c in raw):
        raise ValueError(f"a currency is three letters A-Z (ISO 4217), got {code!r}")
    return <uint32_t>raw[0] | (<uint32_t>raw[1] << 8) | (<uint32_t>raw[2] << 16)


cdef str _unpack_currency(uint32_t packed):
    if packed == 0:
        return ""
    return bytes((packed & 0xFF, (packed >> 8) & 0xFF, (packed >> 16) & 0xFF)).decode("ascii")


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
    for kind in range(<int>L.LIMIT_KIND_COUNT):
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


_INT64 = range(-(1 << 63), 1 << 63)
_INT32 = range(-(1 << 31), 1 << 31)
_TIMES_IN_FORCE = (L.TIME_IN_FORCE_UNSPECIFIED, L.TIME_IN_FORCE_DAY, L.TIME_IN_FORCE_IOC,
                   L.TIME_IN_FORCE_GTC, L.TIME_IN_FORCE_GTD)


cdef bytes _replaced_id(const L.OrderRecord* order):
    # OrderRecord.replaces, NUL-padded to ORDER_ID_CAPACITY
    return order.replaces[:L.ORDER_ID_CAPACITY].split(b"\0", 1)[0]


INT64_LIMIT = (1 << 63) - 1


def _checked_restore(order):
    """One restored order's fields, checked against what an OrderRecord holds.

    Twelve fields, or fifteen with its time in force: ``time_in_force``,
    ``expire_at_ms`` and ``working_until_ms`` (when it stops counting, Unix
    ms; 0 when its fill or cancel is reported), or seventeen for a
    replacement: then ``replaces`` (the original's order id) and ``carried``
    (OrderRecord.carried) follow those three, or eighteen for a leg of an
    order group: then ``group`` (Order.group_id) follows those.
    """
    time_in_force = expire_at_ms = working_until_ms = 0
    replaces, carried, group = b"", 0, b""
    if len(order) == 18:
        group = order[17]
    if len(order) >= 17:
        replaces, carried = order[15], order[16]
    if len(order) >= 15:
        time_in_force, expire_at_ms, working_until_ms = order[12:15]
        order = order[:12]
    (order_id, symbol, side, order_type, quantity, price, valuation_price, notional, venue,
     counterparty, approved, rejections) = order
    if not isinstance(replaces, bytes) or len(replaces) > L.MAX_ORDER_ID_LENGTH \
            or b"\0" in replaces:
        raise ValueError(f"a replaced order id must be at most {L.MAX_ORDER_ID_LENGTH} bytes")
    if not isinstance(group, bytes) or len(group) > L.MAX_ORDER_ID_LENGTH or b"\0" in group:
        raise ValueError(f"a group id must be at most {L.MAX_ORDER_ID_LENGTH} bytes")
    if carried not in _INT64 or carried < 0 or (approved and carried >= quantity) \
            or (carried and not replaces):
        raise ValueError(f"order {order_id!r}: carried fills {carried} do not fit its quantity")
    if not isinstance(order_id, bytes) or not 1 <= len(order_id) <= L.MAX_ORDER_ID_LENGTH:
        raise ValueError(f"order id must be 1 to {L.MAX_ORDER_ID_LENGTH} bytes")
    _check_id(symbol, "symbol")
    for tag in (venue, counterparty):
        if not isinstance(tag, bytes) or len(tag) > L.MAX_TAG_LENGTH or b"\0" in tag:
            raise ValueError(f"venue and counterparty must be at most {L.MAX_TAG_LENGTH} bytes")
    if side not in (L.SIDE_BUY, L.SIDE_SELL, L.SIDE_SELL_SHORT) \
            or order_type not in (L.ORDER_TYPE_LIMIT, L.ORDER_TYPE_MARKET):
        raise ValueError(f"order {order_id!r}: side {side} or order type {order_type} unknown")
    if time_in_force not in _TIMES_IN_FORCE:
        raise ValueError(f"order {order_id!r}: time in force {time_in_force} unknown")
    for value in (quantity, price, valuation_price, notional, expire_at_ms, working_until_ms):
        if value not in _INT64:
            raise ValueError(f"order {order_id!r}: {value} does not fit in int64")
    if approved and (quantity <= 0 or valuation_price <= 0
                     or quantity * valuation_price not in _INT64):
        raise ValueError(f"order {order_id!r}: an approved order has a positive quantity and "
                         "valuation price whose product fits in int64")
    rejections = tuple(rejections)
    for code, observed, limit in rejections[:L.STORED_REJECTIONS]:
        if code not in _INT32 or observed not in _INT64 or limit not in _INT64:
            raise ValueError(f"order {order_id!r}: rejection {(code, observed, limit)} "
                             "does not fit")
    return (order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
            venue, counterparty, bool(approved), rejections, time_in_force, expire_at_ms,
            working_until_ms, replaces, carried, group)


cdef inline bint same_group(const L.OrderRecord* order, const L.OrderRecord* key) noexcept nogil:
    # Legs of one order group: its id, symbol, venue and counterparty
    return (order.group_hash == key.group_hash
            and memcmp(order.group, key.group, L.ORDER_ID_CAPACITY) == 0
            and order.instrument_index == key.instrument_index
            and memcmp(order.venue, key.venue, L.TAG_CAPACITY) == 0
            and memcmp(order.counterparty, key.counterparty, L.TAG_CAPACITY) == 0)


cdef bytes _group_id(const L.OrderRecord* order):
    # OrderRecord.group, NUL-padded to ORDER_ID_CAPACITY
    return order.group[:L.ORDER_ID_CAPACITY].split(b"\0", 1)[0]


cdef tuple _group_key(const L.OrderRecord* order):
    # What same_group compares
    return (_group_id(order), order.instrument_index, order.venue[:L.TAG_CAPACITY],
            order.counterparty[:L.TAG_CAPACITY])


cdef int _check_halt_mode(int mode) except -1:
    if mode not in (L.HALT_NONE, L.HALT_MODE_ACTIVE, L.HALT_MODE_REDUCE_ONLY, L.HALT_MODE_HALTED):
        raise ValueError(f"unknown halt mode {mode}")
    return L.HALT_NONE if mode == L.HALT_MODE_ACTIVE else mode


cdef char* _writable_bytes(object view, uint64_t* size) except NULL:
    """The address and length of ``view``'s bytes, which must be writable and
    contiguous. ``view`` is a builtin memoryview the caller keeps: its export
    of the mapping is what keeps the address valid (an mmap cannot close or
    resize while exported). The buffer protocol is used directly, not a typed
    memoryview, whose support code was a seventh of this module's C."""
    cdef Py_buffer pb
    PyObject_GetBuffer(view, &pb, PyBUF_WRITABLE)
    cdef char* base = <char*>pb.buf
    size[0] = <uint64_t>pb.len
    PyBuffer_Release(&pb)
    if base == NULL:
        raise ValueError("the table buffer is empty")
    return base


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
               bint assume_zeroed=False, uint32_t max_orders_per_account=0,
               int64_t order_expiry_ms=L.DEFAULT_ORDER_EXPIRY_MS):
        """Initialise an empty table in the writable ``buffer``.

        Every region of a fresh table is zero bytes (index entry 0 = empty).
        With ``assume_zeroed`` (a new sparse file or anonymous mapping) the
        buffer is not cleared, so untouched pages never take memory.

        ``max_orders_per_account`` is one account's share of the decided
        orders the table holds (0: ``max_orders / 8``); ``order_expiry_ms``
        how long a decided order that no longer works (rejected, filled,
        cancelled) stays once its decision is durable (see ``expire_orders``).
        """
        _check_capacities(max_accounts, max_instruments, max_positions, max_overrides,
                          lock_stripes, max_orders)
        _check_order_policy(max_orders, max_orders_per_account, order_expiry_ms)
        cdef L.TableHeader plan
        _plan(&plan, max_accounts, max_instruments, max_positions, max_overrides, lock_stripes,
              max_orders)
        if max_orders_per_account:
            plan.max_orders_per_account = max_orders_per_account
        plan.order_expiry_ns = order_expiry_ms * 1_000_000
        cdef PositionTable table = PositionTable.__new__(PositionTable)
        cdef object view = memoryview(buffer)
        cdef uint64_t size = 0
        cdef char* base = _writable_bytes(view, &size)
        if size < plan.total_size:
            raise ValueError(f"buffer holds {size} bytes, the table needs {plan.total_size}")
        if not assume_zeroed:
            memset(base, 0, plan.total_size)
        memcpy(base, &plan, sizeof(L.TableHeader))
        cdef L.TableHeader* h = <L.TableHeader*>base
        cdef uint32_t i
        cdef int rc
        for i in range(_lock_count(lock_stripes)):
            rc = L.pt_mutex_init_shared(<L.pthread_mutex_t*>(base + h.locks_offset + <uint64_t>i * h.lock_stride))
            if rc:
                raise OSError(rc, "pthread_mutex_init (process-shared, robust) failed")
        table._bind(view)
        return table

    @staticmethod
    def attach(buffer):
        """Map a table that another process formatted; refuse a foreign layout."""
        cdef object view = memoryview(buffer)
        cdef uint64_t size = 0
        cdef char* base = _writable_bytes(view, &size)
        if size < sizeof(L.TableHeader):
            raise TableLayoutError("buffer is smaller than a table header")
        cdef L.TableHeader* h = <L.TableHeader*>base
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
                or h.group_size != plan.group_size
                or h.total_size != plan.total_size or size < plan.total_size):
            raise TableLayoutError("table record sizes differ from this build's layout")
        cdef PositionTable table = PositionTable.__new__(PositionTable)
        table._bind(view)
        return table

    cdef void _bind(self, object view) except *:
        cdef uint64_t size = 0
        self.base = _writable_bytes(view, &size)
        self._buffer = view
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
        self.groups = <L.GroupRecord*>(self.base + self.header.groups_offset)
        self.group_index = <int32_t*>(self.base + self.header.group_index_offset)

    def release(self):
        """Drop the pointers and the buffer export, so the mapping can close."""
        self.base = NULL
        self.header = NULL
        self._buffer = None

    # -- LOCKS --

    cdef L.pthread_mutex_t* registry_lock(self) noexcept nogil:
        return <L.pthread_mutex_t*>(self.base + self.header.locks_offset)

    cdef L.pthread_mutex_t* lock_at(self, uint32_t n) noexcept nogil:
        return <L.pthread_mutex_t*>(self.base + self.header.locks_offset
                                  + <uint64_t>n * self.header.lock_stride)

    cdef L.pthread_mutex_t* stripe_lock(self, int32_t account_index) noexcept nogil:
        cdef uint32_t stripe = 1 + (<uint32_t>account_index & (self.header.lock_stripes - 1))
        return <L.pthread_mutex_t*>(self.base + self.header.locks_offset
                                  + <uint64_t>stripe * self.header.lock_stride)

    cdef void lock_account(self, int32_t account_index) noexcept nogil:
        cdef L.pthread_mutex_t* rebuild
        if L.pt_load_i32(&self.header.order_index_rebuilding):
            # An order index rebuild waits for every stripe: let it have them
            # (mutexes are not fair) by waiting for it here, holding none.
            rebuild = self.lock_at(self.header.lock_stripes + REBUILD_LOCK_AFTER_STRIPES)
            if L.pt_mutex_lock(rebuild) == 1:
                # the rebuilder died: its flag with it
                L.pt_add_i64(&self.header.recovered_locks, 1)
                L.pt_store_i32(&self.header.order_index_rebuilding, 0)
            L.pt_mutex_unlock(rebuild)
        cdef uint32_t stripes[2 * L.MAX_ACCOUNT_GROUPS]
        self._lock_with_groups(account_index, NULL, 0, stripes)

    cdef void unlock_account(self, int32_t account_index) noexcept nogil:
        # Its groups cannot change while the stripe is held: read them first.
        cdef uint32_t stripes[L.MAX_ACCOUNT_GROUPS]
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t count = 0
        if account.group_count > 0:
            count = self._group_stripes(account_index, NULL, 0, stripes)
        L.pt_mutex_unlock(self.stripe_lock(account_index))
        self._unlock_stripes_of_groups(stripes, count)

    # An account in groups is locked with its groups: their locks in
    # ascending order, then its stripe. Every writer of an account's state
    # takes lock_account, so a holder of a group's lock reads every member of
    # the group as it stands (the check of a group limit does). Group locks
    # are only ever taken before a stripe, and the order index rebuild takes
    # stripes only, so no cycle of waits can form.

    cdef L.pthread_mutex_t* group_lock_at(self, uint32_t n) noexcept nogil:
        return self.lock_at(self.header.lock_stripes + 3 + n)

    cdef int32_t _group_stripes(self, int32_t account_index, const int32_t* extra,
                                int32_t extra_count, uint32_t* stripes) noexcept nogil:
        # The group lock numbers of the account's groups and of ``extra``
        # (group indexes), ascending, each once; returns how many.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t n = L.pt_load_i32(&account.group_count)
        cdef int32_t count = 0, i, j, k, total
        cdef uint32_t stripe
        if n < 0 or n > L.MAX_ACCOUNT_GROUPS:
            n = 0
        total = n + extra_count
        for k in range(total):
            if k < n:
                stripe = <uint32_t>L.pt_load_i32(&account.groups[k]) & (L.GROUP_LOCK_STRIPES - 1)
            else:
                stripe = <uint32_t>extra[k - n] & (L.GROUP_LOCK_STRIPES - 1)
            i = 0
            while i < count and stripes[i] < stripe:
                i += 1
            if i < count and stripes[i] == stripe:
                continue
            j = count
            while j > i:
                stripes[j] = stripes[j - 1]
                j -= 1
            stripes[i] = stripe
            count += 1
        return count

    cdef void _lock_stripes_of_groups(self, const uint32_t* stripes,
                                      int32_t count) noexcept nogil:
        cdef int32_t i
        for i in range(count):
            if L.pt_mutex_lock(self.group_lock_at(stripes[i])) == 1:
                L.pt_add_i64(&self.header.recovered_locks, 1)

    cdef void _unlock_stripes_of_groups(self, const uint32_t* stripes,
                                        int32_t count) noexcept nogil:
        cdef int32_t i
        for i in range(count):
            L.pt_mutex_unlock(self.group_lock_at(stripes[i]))

    cdef int32_t _lock_with_groups(self, int32_t account_index, const int32_t* extra,
                                   int32_t extra_count, uint32_t* stripes) noexcept nogil:
        # The account's groups' locks (and those of the groups ``extra``),
        # then its stripe; its groups are read again under the stripe, and a
        # change since they were first read starts over. Returns how many
        # group locks it holds (their numbers in ``stripes``, ascending).
        cdef uint32_t again[2 * L.MAX_ACCOUNT_GROUPS]
        cdef int32_t count, k
        cdef bint same
        while True:
            count = self._group_stripes(account_index, extra, extra_count, stripes)
            self._lock_stripes_of_groups(stripes, count)
            if L.pt_mutex_lock(self.stripe_lock(account_index)) == 1:
                L.pt_add_i64(&self.header.recovered_locks, 1)
            same = self._group_stripes(account_index, extra, extra_count, again) == count
            k = 0
            while same and k < count:
                same = again[k] == stripes[k]
                k += 1
            if same:
                return count
            L.pt_mutex_unlock(self.stripe_lock(account_index))
            self._unlock_stripes_of_groups(stripes, count)

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

    cdef int32_t find_account_group(self, const char* group_id, Py_ssize_t length) noexcept nogil:
        if length <= 0 or length > L.MAX_ID_LENGTH:
            return L.NO_INDEX
        cdef uint32_t h = hash_id(group_id, length)
        cdef uint32_t mask = self.header.group_index_mask
        cdef uint32_t probe = h & mask
        cdef int32_t found
        cdef L.GroupRecord* rec
        while True:
            found = L.pt_load_i32(&self.group_index[probe]) - 1
            if found == L.NO_INDEX:
                return L.NO_INDEX
            rec = &self.groups[found]
            if (rec.id_hash == h and rec.id_length == <uint32_t>length
                    and memcmp(rec.group_id, group_id, length) == 0):
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
        # Caller holds the account's stripe lock: its own records cannot leave
        # or be reused meanwhile. Records of other accounts may be, which is
        # why account_index (written first) is compared.
        if length <= 0 or length > L.MAX_ORDER_ID_LENGTH:
            return L.NO_INDEX
        cdef uint32_t h = hash_id(order_id, length) ^ hash_pair(account_index, 0)
        cdef uint32_t mask = self.header.order_index_mask
        cdef uint32_t probe = h & mask
        cdef uint32_t probes = 0
        cdef int32_t entry, found
        cdef L.OrderRecord* rec
        while probes <= mask:
            entry = L.pt_load_i32(&self.order_index[probe])
            if entry == EMPTY_ENTRY:
                return L.NO_INDEX
            if entry != TOMBSTONE:
                found = entry - 1
                rec = &self.orders[found]
                if (rec.account_index == account_index and rec.id_hash == h
                        and rec.id_length == <uint32_t>length
                        and memcmp(rec.order_id, order_id, length) == 0):
                    return found
            probe = (probe + 1) & mask
            probes += 1
        return L.NO_INDEX

    cdef bint order_id_evicted(self, int32_t account_index, const char* order_id,
                               Py_ssize_t length) noexcept nogil:
        # Whether the id may be one whose record left the table (Bloom filter:
        # no false negatives). Caller holds the account's stripe lock.
        cdef L.AccountActivity* activity = &self.activity[account_index]
        if activity.evictions == 0 or length <= 0:
            return False
        cdef uint32_t h1 = hash_id(order_id, length)
        cdef uint32_t h2 = mix32(h1) | 1u
        cdef uint32_t bit
        cdef int k
        for k in range(L.EVICTED_FILTER_HASHES):
            bit = (h1 + <uint32_t>k * h2) & (L.EVICTED_FILTER_WORDS * 64 - 1)
            if not activity.evicted[bit >> 6] & (1ull << (bit & 63)):
                return False
        return True

    cdef void advance_clock(self, int64_t now_ns) noexcept nogil:
        # The table's clock only moves forward, to the latest reading any caller
        # gave, in steps of TABLE_CLOCK_STEP_NS or more (it starts at 0 and
        # never goes below, so now_ns - seen cannot overflow).
        cdef int64_t seen = L.pt_load_i64(&self.header.clock_ns)
        while now_ns > seen and now_ns - seen >= L.TABLE_CLOCK_STEP_NS:
            if L.pt_cas_i64(&self.header.clock_ns, seen, now_ns):
                return
            seen = L.pt_load_i64(&self.header.clock_ns)

    # -- DECIDED ORDERS --
    # A record is taken from the bump allocator, else from the free list, else
    # (and always once the account holds its whole share) it is the account's
    # own oldest non-working record whose decision is durable: that one leaves
    # the table (its id goes to the account's evicted-id filter, a tombstone
    # to the index) and its slot is reused. A record whose decision is not
    # durable never leaves: it is the only copy.

    cdef int32_t _take_record(self) noexcept nogil:
        cdef int32_t index
        while True:
            index = L.pt_load_i32(&self.header.order_next)
            if <uint32_t>index >= self.header.max_orders:
                break
            if L.pt_cas_i32(&self.header.order_next, index, index + 1):
                return index
        cdef L.pthread_mutex_t* lock = self.lock_at(self.header.lock_stripes
                                                    + ORDER_LOCK_AFTER_STRIPES)
        if L.pt_mutex_lock(lock) == 1:
            L.pt_add_i64(&self.header.recovered_locks, 1)
        index = self.header.order_free_head
        if index != L.NO_INDEX:
            self.header.order_free_head = self.orders[index].next_working
        L.pt_mutex_unlock(lock)
        return index

    cdef void _free_record(self, int32_t index) noexcept nogil:
        cdef L.pthread_mutex_t* lock = self.lock_at(self.header.lock_stripes
                                                    + ORDER_LOCK_AFTER_STRIPES)
        self.orders[index].flags = 0
        self.orders[index].status = 0
        if L.pt_mutex_lock(lock) == 1:
            L.pt_add_i64(&self.header.recovered_locks, 1)
        self.orders[index].next_working = self.header.order_free_head
        self.header.order_free_head = index
        L.pt_mutex_unlock(lock)
        L.pt_add_i32(&self.header.orders_in_use, -1)

    cdef void append_idle(self, int32_t account_index, int32_t index, int64_t at) noexcept nogil:
        # The record stopped working (or never did): last in the account's
        # list of records that may leave the table, oldest first.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.OrderRecord* rec = &self.orders[index]
        rec.idle_since_ns = at
        rec.next_idle = L.NO_INDEX
        if account.last_idle_order == L.NO_INDEX:
            account.first_idle_order = index
        else:
            self.orders[account.last_idle_order].next_idle = index
        account.last_idle_order = index
        account.idle_count += 1

    cdef int32_t _pop_evictable(self, int32_t account_index) noexcept nogil:
        # The oldest non-working record of the account that may leave (its
        # decision is durable), unlinked from its list; NO_INDEX if none among
        # the first EVICT_SCAN. A record that may not leave yet goes to the
        # back of the list with a fresh start.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t head
        cdef int n
        for n in range(L.EVICT_SCAN):
            head = account.first_idle_order
            if head == L.NO_INDEX:
                return L.NO_INDEX
            account.first_idle_order = self.orders[head].next_idle
            if account.first_idle_order == L.NO_INDEX:
                account.last_idle_order = L.NO_INDEX
            account.idle_count -= 1
            if self.orders[head].flags & L.ORDER_DURABLE:
                self.orders[head].next_idle = L.NO_INDEX
                return head
            self.append_idle(account_index, head, L.pt_load_i64(&self.header.clock_ns))
        return L.NO_INDEX

    cdef void _unindex_order(self, int32_t index) noexcept nogil:
        cdef uint32_t mask = self.header.order_index_mask
        cdef uint32_t probe = self.orders[index].id_hash & mask
        cdef uint32_t probes = 0
        while probes <= mask:
            if L.pt_load_i32(&self.order_index[probe]) == index + 1:
                L.pt_store_i32(&self.order_index[probe], TOMBSTONE)
                L.pt_add_i32(&self.header.order_tombstones, 1)
                return
            probe = (probe + 1) & mask
            probes += 1

    cdef void _evict(self, int32_t account_index, int32_t index) noexcept nogil:
        # The record (unlinked from its list) leaves the table: its id into the
        # account's filter, a tombstone into the index. Its slot stays in use.
        cdef L.OrderRecord* rec = &self.orders[index]
        self._unindex_order(index)
        self._filter_add(account_index, rec.order_id, rec.id_length)
        L.pt_add_i64(&self.header.orders_evicted, 1)
        self.accounts[account_index].order_count -= 1

    cdef bint _index_room(self, int32_t account_index) noexcept nogil:
        # Whether the order index takes one more entry, with room kept for one
        # insert in flight per stripe; rebuilt (tombstones dropped) when three
        # quarters are used. An insert may land on a tombstone, so only live
        # entries count against the room: a rebuild that another process is
        # running (and cannot finish while this caller holds its stripe) never
        # makes an order CAPACITY_EXHAUSTED here. Live entries are at most
        # max_orders, half the index.
        cdef int64_t capacity = <int64_t>self.header.order_index_mask + 1
        cdef int64_t margin = <int64_t>self.header.lock_stripes + 1
        if (L.pt_load_i32(&self.header.order_index_used) + margin) * 4 >= capacity * 3 \
                and L.pt_load_i32(&self.header.order_tombstones) > 0:
            self._rebuild_order_index(account_index)
        return (L.pt_load_i32(&self.header.order_index_used)
                - L.pt_load_i32(&self.header.order_tombstones) + margin) < capacity

    cdef bint _rebuild_order_index(self, int32_t account_index) noexcept nogil:
        # Drop the tombstones: reinsert every record in use into an empty
        # index. Every reader and writer of the index holds a stripe lock, so
        # this takes them all (the caller holds its own); one rebuild at a
        # time, and a caller that finds one running does not wait for it (the
        # rebuilder may be waiting for the caller's stripe).
        cdef L.pthread_mutex_t* rebuild = self.lock_at(self.header.lock_stripes
                                                       + REBUILD_LOCK_AFTER_STRIPES)
        cdef int rc = L.pt_mutex_trylock(rebuild)
        if rc != 0 and rc != 1:
            return False
        cdef uint32_t held = 1 + (<uint32_t>account_index & (self.header.lock_stripes - 1))
        cdef uint32_t stripe, mask = self.header.order_index_mask, probe
        cdef int32_t i, used = 0, end
        if rc == 1:
            L.pt_add_i64(&self.header.recovered_locks, 1)
        L.pt_store_i32(&self.header.order_index_rebuilding, 1)
        for stripe in range(1, self.header.lock_stripes + 1):
            if stripe != held and L.pt_mutex_lock(self.lock_at(stripe)) == 1:
                L.pt_add_i64(&self.header.recovered_locks, 1)
        memset(self.order_index, 0, 4 * (<uint64_t>mask + 1))
        end = L.pt_load_i32(&self.header.order_next)
        for i in range(end):
            if self.orders[i].flags & L.ORDER_IN_USE:
                probe = self.orders[i].id_hash & mask
                while self.order_index[probe] != EMPTY_ENTRY:
                    probe = (probe + 1) & mask
                self.order_index[probe] = i + 1
                used += 1
        L.pt_store_i32(&self.header.order_tombstones, 0)
        L.pt_store_i32(&self.header.order_index_used, used)
        L.pt_add_i64(&self.header.order_index_rebuilds, 1)
        L.pt_store_i32(&self.header.order_index_rebuilding, 0)
        for stripe in range(1, self.header.lock_stripes + 1):
            if stripe != held:
                L.pt_mutex_unlock(self.lock_at(stripe))
        L.pt_mutex_unlock(rebuild)
        return True

    cdef L.OrderRecord* allocate_order(self, int32_t account_index, const char* order_id,
                                     Py_ssize_t length, int32_t* what) noexcept nogil:
        # Caller holds the account's stripe lock, so no other writer can insert
        # the same (account, order id). Returns NULL, with what = the Capacity
        # that is exhausted, when no record can be had.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t index = L.NO_INDEX
        if not self._index_room(account_index):
            what[0] = L.CAPACITY_ORDER_TABLE
            return NULL
        if <uint32_t>account.order_count < self.header.max_orders_per_account:
            index = self._take_record()
            if index != L.NO_INDEX:
                L.pt_add_i32(&self.header.orders_in_use, 1)
            else:
                index = self._pop_evictable(account_index)
                if index == L.NO_INDEX:
                    what[0] = L.CAPACITY_ORDER_TABLE
                    return NULL
                self._evict(account_index, index)
        else:
            index = self._pop_evictable(account_index)
            if index == L.NO_INDEX:
                what[0] = L.CAPACITY_ACCOUNT_ORDERS
                return NULL
            self._evict(account_index, index)
        account.order_count += 1
        cdef L.OrderRecord* rec = &self.orders[index]
        # account_index first: a lock-free reader of another account must
        # never see its own index on a record being rewritten
        rec.account_index = account_index
        memset(<char*>rec + sizeof(int32_t), 0, sizeof(L.OrderRecord) - sizeof(int32_t))
        memcpy(rec.order_id, order_id, length)
        rec.id_length = <uint32_t>length
        rec.id_hash = hash_id(order_id, length) ^ hash_pair(account_index, 0)
        rec.position_index = L.NO_INDEX
        rec.next_working = L.NO_INDEX
        rec.next_idle = L.NO_INDEX
        rec.flags = L.ORDER_IN_USE
        return rec

    cdef void publish_order(self, L.OrderRecord* rec) noexcept nogil:
        # Called once the record is complete: index it for lookups (into an
        # empty entry or a tombstone; the caller checked the id is not there).
        cdef int32_t index = <int32_t>(rec - self.orders)
        cdef uint32_t mask = self.header.order_index_mask
        cdef uint32_t probe = rec.id_hash & mask
        cdef int32_t entry
        while True:
            entry = L.pt_load_i32(&self.order_index[probe])
            if entry == EMPTY_ENTRY:
                if L.pt_cas_i32(&self.order_index[probe], EMPTY_ENTRY, index + 1):
                    L.pt_add_i32(&self.header.order_index_used, 1)
                    return
            elif entry == TOMBSTONE:
                if L.pt_cas_i32(&self.order_index[probe], TOMBSTONE, index + 1):
                    L.pt_add_i32(&self.header.order_tombstones, -1)
                    return
            else:
                probe = (probe + 1) & mask

    cdef void add_working(self, int32_t account_index, L.OrderRecord* rec) noexcept nogil:
        # Count what a working record counts (its caller set counted and
        # counted_notional) against its position slot and its venue and
        # counterparty totals, and link it into the account's working list:
        # O(1), the same sums recompute_working rebuilds.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int64_t notional = rec.counted_notional
        count_working(&self.positions[rec.position_index], rec, 1)
        rec.next_working = account.first_working_order
        account.first_working_order = <int32_t>(rec - self.orders)
        account.working_order_count += 1
        if rec.group_hash != 0:
            rec.next_grouped = account.first_grouped
            account.first_grouped = account.first_working_order
        if rec.working_until_ms != 0 and (account.next_lapse_ms == 0
                                          or rec.working_until_ms < account.next_lapse_ms):
            L.pt_store_i64(&account.next_lapse_ms, rec.working_until_ms)
        add_tag_total(account.venue_working, &account.tag_overflow, 1, rec.venue, notional)
        add_tag_total(account.counterparty_working, &account.tag_overflow, 2,
                      rec.counterparty, notional)

    cdef int32_t unlink_working(self, int32_t account_index, L.OrderRecord* rec) noexcept nogil:
        # The inverse of add_working, for a replace (ReplaceOrder): the record
        # leaves the working list and its reservation every sum, exactly, so
        # the replacement is checked as if the original were gone. Returns
        # the record before it in the list (NO_INDEX: it was the head), which
        # relink_working needs to put it back where it was. The record keeps
        # its status and remaining. Its locate use is released too (reserve
        # consumed it). O(working orders of the account): only replaces walk.
        # The other legs of its group then count the group's worst without it.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.PositionSlot* slot = &self.positions[rec.position_index]
        cdef int32_t index = <int32_t>(rec - self.orders)
        cdef int32_t previous = L.NO_INDEX
        cdef int32_t o = account.first_working_order
        cdef int64_t notional = rec.counted_notional
        while o != L.NO_INDEX and o != index:
            previous = o
            o = self.orders[o].next_working
        if previous == L.NO_INDEX:
            account.first_working_order = rec.next_working
        else:
            self.orders[previous].next_working = rec.next_working
        rec.next_working = L.NO_INDEX
        account.working_order_count -= 1
        count_working(slot, rec, -1)
        if rec.side == L.SIDE_SELL_SHORT:
            slot.locate_used -= rec.remaining
        # a name without a running total is summed from the list, which no
        # longer holds the record
        sub_tag_total(account.venue_working, rec.venue, notional)
        sub_tag_total(account.counterparty_working, rec.counterparty, notional)
        if rec.group_hash != 0:
            self._unlink_grouped(account_index, index)
            self.regroup(account_index, rec)
        return previous

    cdef void _unlink_grouped(self, int32_t account_index, int32_t index) noexcept nogil:
        # Take a record off the account's list of working group legs.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t o = account.first_grouped
        cdef int32_t previous = L.NO_INDEX
        while o != L.NO_INDEX and o != index:
            previous = o
            o = self.orders[o].next_grouped
        if o == L.NO_INDEX:
            return
        if previous == L.NO_INDEX:
            account.first_grouped = self.orders[o].next_grouped
        else:
            self.orders[previous].next_grouped = self.orders[o].next_grouped
        self.orders[o].next_grouped = L.NO_INDEX

    cdef void _rebuild_grouped(self, int32_t account_index) noexcept nogil:
        # The account's list of working group legs, from its working list.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t o = account.first_working_order
        account.first_grouped = L.NO_INDEX
        while o != L.NO_INDEX:
            if self.orders[o].group_hash != 0:
                self.orders[o].next_grouped = account.first_grouped
                account.first_grouped = o
            o = self.orders[o].next_working

    cdef void relink_working(self, int32_t account_index, L.OrderRecord* rec,
                             int32_t previous) noexcept nogil:
        # Undo unlink_working (a rejected replace leaves the original
        # untouched): the same place in the list, the same sums.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.PositionSlot* slot = &self.positions[rec.position_index]
        cdef int32_t index = <int32_t>(rec - self.orders)
        cdef int64_t notional = rec.counted_notional
        if previous == L.NO_INDEX:
            rec.next_working = account.first_working_order
            account.first_working_order = index
        else:
            rec.next_working = self.orders[previous].next_working
            self.orders[previous].next_working = index
        account.working_order_count += 1
        count_working(slot, rec, 1)
        if rec.side == L.SIDE_SELL_SHORT:
            slot.locate_used += rec.remaining
        sub_tag_total(account.venue_working, rec.venue, -notional)
        sub_tag_total(account.counterparty_working, rec.counterparty, -notional)
        if rec.group_hash != 0:
            rec.next_grouped = account.first_grouped
            account.first_grouped = index
            self.regroup(account_index, rec)

    cdef void regroup(self, int32_t account_index, const L.OrderRecord* like) noexcept nogil:
        # Caller holds the account's lock. The working legs of the order group
        # of ``like`` count together, on each side, the most units any of them
        # has left and the most notional: at most one leg can trade. A group
        # is its id with one symbol, venue and counterparty (the checks refuse
        # a leg that differs; legs restored from Redis that differ count as
        # groups of their own). Each sum leaves what the legs counted and
        # takes what they count now; O(working orders of the account).
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.OrderRecord* order
        cdef int32_t units_leader[4]
        cdef int32_t notional_leader[4]
        cdef int64_t most_units[4]
        cdef int64_t most_notional[4]
        cdef int64_t notional
        cdef L.OrderRecord key
        cdef int32_t o
        cdef int side
        memcpy(&key, like, sizeof(L.OrderRecord))   # like may be one of the legs
        for side in range(4):
            units_leader[side] = notional_leader[side] = L.NO_INDEX
            most_units[side] = most_notional[side] = -1
        o = account.first_grouped
        while o != L.NO_INDEX:
            order = &self.orders[o]
            if same_group(order, &key):
                count_working(&self.positions[order.position_index], order, -1)
                sub_tag_total(account.venue_working, order.venue, order.counted_notional)
                sub_tag_total(account.counterparty_working, order.counterparty,
                              order.counted_notional)
                side = order.side & 3
                notional = order.remaining * order.valuation_price
                if order.remaining > most_units[side]:
                    most_units[side] = order.remaining
                    units_leader[side] = o
                if notional > most_notional[side]:
                    most_notional[side] = notional
                    notional_leader[side] = o
            o = order.next_grouped
        o = account.first_grouped
        while o != L.NO_INDEX:
            order = &self.orders[o]
            if same_group(order, &key):
                side = order.side & 3
                order.counted = most_units[side] if o == units_leader[side] else 0
                order.counted_notional = most_notional[side] if o == notional_leader[side] else 0
                count_working(&self.positions[order.position_index], order, 1)
                sub_tag_total(account.venue_working, order.venue, -order.counted_notional)
                sub_tag_total(account.counterparty_working, order.counterparty,
                              -order.counted_notional)
            o = order.next_grouped

    cdef int32_t _expire_account(self, int32_t account_index, int64_t now_ns,
                                 int32_t budget) noexcept nogil:
        # Records of one account that stopped working at least order_expiry_ns
        # ago and are durable leave the table; one that is not durable yet
        # starts its wait again. Caller holds the account's stripe lock.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef int32_t head, evicted = 0
        cdef int32_t visits = account.idle_count
        while visits > 0 and evicted < budget:
            head = account.first_idle_order
            if head == L.NO_INDEX or not _expired(self.orders[head].idle_since_ns, now_ns,
                                                  self.header.order_expiry_ns):
                break
            account.first_idle_order = self.orders[head].next_idle
            if account.first_idle_order == L.NO_INDEX:
                account.last_idle_order = L.NO_INDEX
            account.idle_count -= 1
            if self.orders[head].flags & L.ORDER_DURABLE:
                self._evict(account_index, head)
                self._free_record(head)
                evicted += 1
            else:
                self.append_idle(account_index, head, now_ns)
            visits -= 1
        return evicted

    # -- RECORD CREATION --
    # Accounts, instruments, positions and overrides are only ever appended. Each is fully written before its index
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
            rec.first_grouped = L.NO_INDEX
            rec.first_idle_order = L.NO_INDEX
            rec.last_idle_order = L.NO_INDEX
            probe = h & mask
            while L.pt_load_i32(&self.account_index[probe]) != EMPTY_ENTRY:
                probe = (probe + 1) & mask
            L.pt_store_i32(&self.header.account_count, found + 1)
            L.pt_store_i32(&self.account_index[probe], found + 1)
        L.pt_mutex_unlock(self.registry_lock())
        return found

    cdef int32_t ensure_account_group(self, const char* group_id, Py_ssize_t length) noexcept nogil:
        # A new group is not configured (no flags) and has no members.
        cdef int32_t found = self.find_account_group(group_id, length)
        if found != L.NO_INDEX or length <= 0 or length > L.MAX_ID_LENGTH:
            return found
        cdef uint32_t h = hash_id(group_id, length)
        cdef uint32_t mask = self.header.group_index_mask
        cdef uint32_t probe
        cdef L.GroupRecord* rec
        self._lock_registry()
        found = self.find_account_group(group_id, length)
        if found == L.NO_INDEX and <uint32_t>self.header.group_count < self.header.max_groups:
            found = self.header.group_count
            rec = &self.groups[found]
            memset(rec, 0, sizeof(L.GroupRecord))
            memcpy(rec.group_id, group_id, length)
            rec.id_hash = h
            rec.id_length = <uint32_t>length
            rec.first_member = L.NO_INDEX
            probe = h & mask
            while L.pt_load_i32(&self.group_index[probe]) != EMPTY_ENTRY:
                probe = (probe + 1) & mask
            L.pt_store_i32(&self.header.group_count, found + 1)
            L.pt_store_i32(&self.group_index[probe], found + 1)
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
            raise TableFullError(f"account table full ({self.header.max_accounts} accounts)",
                                 L.CAPACITY_ACCOUNTS, self.header.max_accounts)
        return index

    cdef int32_t _instrument(self, object symbol) except -2:
        cdef bytes key = _check_id(symbol, "symbol")
        cdef int32_t index = self.ensure_instrument(key, len(key))
        if index == L.NO_INDEX:
            raise TableFullError(f"instrument table full ({self.header.max_instruments} symbols)",
                                 L.CAPACITY_INSTRUMENTS, self.header.max_instruments)
        return index

    cdef int32_t _position(self, int32_t account_index, int32_t instrument_index) except -2:
        cdef int32_t index = self.ensure_position(account_index, instrument_index)
        if index == L.NO_INDEX:
            raise TableFullError(f"position table full ({self.header.max_positions} slots)",
                                 L.CAPACITY_POSITIONS, self.header.max_positions)
        return index

    cdef void _check_room(self, int32_t account_index, object symbols) except *:
        # Raise TableFullError before anything is created when the instruments
        # and position slots these symbols need do not all fit (a partial write
        # would use up the room of other accounts for nothing).
        cdef int64_t new_instruments = 0, new_positions = 0
        cdef int32_t i
        cdef bytes key
        for symbol in symbols:
            key = _check_id(symbol, "symbol")
            i = self.find_instrument(key, len(key))
            if i == L.NO_INDEX:
                new_instruments += 1
                new_positions += 1
            elif self.find_position(account_index, i) == L.NO_INDEX:
                new_positions += 1
        if L.pt_load_i32(&self.header.instrument_count) + new_instruments \
                > <int64_t>self.header.max_instruments:
            raise TableFullError(f"instrument table full ({self.header.max_instruments} symbols)",
                                 L.CAPACITY_INSTRUMENTS, self.header.max_instruments)
        if L.pt_load_i32(&self.header.position_count) + new_positions \
                > <int64_t>self.header.max_positions:
            raise TableFullError(f"position table full ({self.header.max_positions} slots)",
                                 L.CAPACITY_POSITIONS, self.header.max_positions)

    cdef void _bump_version(self) noexcept nogil:
        L.pt_add_i64(&self.header.sync_version, 1)

    def upsert_account(self, account_id):
        """Return the account's record index, creating an unknown record if new."""
        return self._account(account_id)

    def set_account_state(self, account_id, *, bint known, bint invalid=False,
                          int capacity=0):
        """Mark an account known (it has holdings or limits) and/or unparseable.

        ``capacity`` is the ``Capacity`` that part of its state did not fit
        in (0: it all fits): its orders are then rejected CAPACITY_EXHAUSTED.
        """
        if not 0 <= capacity <= L.CAPACITY_GROUPS:
            raise ValueError(f"unknown capacity {capacity}")
        cdef int32_t a = self._account(account_id)
        self.lock_account(a)
        cdef uint32_t flags = self.accounts[a].flags & ~(L.ACCOUNT_KNOWN | L.ACCOUNT_STATE_INVALID
                                                         | L.ACCOUNT_OVER_CAPACITY)
        if known:
            flags |= L.ACCOUNT_KNOWN
        if invalid:
            flags |= L.ACCOUNT_STATE_INVALID
        if capacity:
            flags |= L.ACCOUNT_OVER_CAPACITY
        self.accounts[a].capacity_kind = capacity
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
            raise TableFullError(f"override table full ({self.header.max_overrides} records)",
                                 L.CAPACITY_OVERRIDES, self.header.max_overrides)
        self.lock_account(a)
        memcpy(&self.overrides[o].limits, &staged, sizeof(L.LimitSet))
        self.unlock_account(a)
        self._bump_version()

    # -- ACCOUNT GROUPS --

    cdef int32_t _group(self, object group_id) except -2:
        cdef bytes key = _check_id(group_id, "group id")
        cdef int32_t index = self.ensure_account_group(key, len(key))
        if index == L.NO_INDEX:
            raise TableFullError(f"group table full ({self.header.max_groups} groups)",
                                 L.CAPACITY_GROUPS, self.header.max_groups)
        return index

    def set_group(self, group_id, limits, *, bint invalid=False):
        """Set a group's limits from its ``group:<G>`` hash: ``{LimitKind: value}``
        of the kinds a group may set; None: the group has no hash (its
        members' orders are GROUP_UNAVAILABLE); ``invalid``: its hash did not
        parse (likewise)."""
        cdef L.LimitSet staged
        if limits is not None:
            for kind in limits:
                if not 0 <= kind < L.LIMIT_KIND_COUNT or not L.GROUP_LIMIT_MASK & (1u << kind):
                    raise ValueError(f"limit kind {kind} cannot be set on a group")
        _write_limits(&staged, None if invalid else limits)
        cdef int32_t g = self._group(group_id)
        cdef uint32_t stripe = <uint32_t>g & (L.GROUP_LOCK_STRIPES - 1)
        cdef uint32_t flags = 0
        if invalid:
            flags = L.GROUP_KNOWN | L.GROUP_STATE_INVALID
        elif limits is not None:
            flags = L.GROUP_KNOWN
        self._lock_stripes_of_groups(&stripe, 1)
        memcpy(&self.groups[g].limits, &staged, sizeof(L.LimitSet))
        self.groups[g].flags = flags
        self._unlock_stripes_of_groups(&stripe, 1)
        self._bump_version()

    def set_account_groups(self, account_id, group_ids, *, bint invalid=False):
        """Set the groups an account is in: its ``groups:{ACC}`` and their
        parents, flattened, in the order they are checked (sorted by id); at
        most MAX_ACCOUNT_GROUPS. ``invalid``: they could not be resolved (a
        parent cycle, too many, a bad id): the account's orders are then
        GROUP_UNAVAILABLE."""
        cdef list keys = [_check_id(g, "group id") for g in group_ids]
        if len(keys) > L.MAX_ACCOUNT_GROUPS:
            raise ValueError(f"an account is in at most {L.MAX_ACCOUNT_GROUPS} groups, "
                             f"got {len(keys)}")
        if len(set(keys)) != len(keys):
            raise ValueError("an account's groups must be distinct")
        cdef int32_t wanted[L.MAX_ACCOUNT_GROUPS]
        cdef int32_t n = len(keys), k, previous, m, j
        for k in range(n):
            wanted[k] = self._group(keys[k])
        cdef int32_t a = self._account(account_id)
        cdef L.AccountRecord* account = &self.accounts[a]
        cdef L.GroupRecord* group
        cdef uint32_t stripes[2 * L.MAX_ACCOUNT_GROUPS]
        cdef int32_t count = self._lock_with_groups(a, wanted, n, stripes)
        # leave every old group, then join the new ones at the head of their lists
        for k in range(account.group_count):
            group = &self.groups[account.groups[k]]
            previous = L.NO_INDEX
            m = group.first_member
            while m != a and m != L.NO_INDEX:
                previous = m
                m = next_member(self.accounts, m, account.groups[k])
            if m == a:
                if previous == L.NO_INDEX:
                    group.first_member = account.next_member[k]
                else:
                    j = member_slot(&self.accounts[previous], account.groups[k])
                    if j >= 0:
                        self.accounts[previous].next_member[j] = account.next_member[k]
                group.member_count -= 1
        L.pt_store_i32(&account.group_count, 0)
        for k in range(n):
            group = &self.groups[wanted[k]]
            account.groups[k] = wanted[k]
            account.next_member[k] = group.first_member
            group.first_member = a
            group.member_count += 1
        for k in range(n, L.MAX_ACCOUNT_GROUPS):
            account.groups[k] = L.NO_INDEX
            account.next_member[k] = L.NO_INDEX
        L.pt_store_i32(&account.group_count, n)
        if invalid:
            account.flags |= L.ACCOUNT_GROUPS_INVALID
        else:
            account.flags &= ~L.ACCOUNT_GROUPS_INVALID
        L.pt_mutex_unlock(self.stripe_lock(a))
        self._unlock_stripes_of_groups(stripes, count)
        self._bump_version()

    def account_groups(self, account_id):
        """The ids of the groups the account is in, in the order they are checked."""
        cdef bytes key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(key, len(key))
        if a == L.NO_INDEX:
            return ()
        cdef int32_t k
        self.lock_account(a)
        cdef tuple ids = tuple(self.groups[self.accounts[a].groups[k]].group_id[
            :self.groups[self.accounts[a].groups[k]].id_length]
            for k in range(self.accounts[a].group_count))
        self.unlock_account(a)
        return ids

    def group_info(self, group_id):
        """A group as the table holds it: ``known`` (its hash exists), ``invalid``,
        ``limits`` ({LimitKind: value}) and ``members`` (account ids, sorted);
        None when the table has no record of it."""
        cdef bytes key = _check_id(group_id, "group id")
        cdef int32_t g = self.find_account_group(key, len(key))
        if g == L.NO_INDEX:
            return None
        cdef uint32_t stripe = <uint32_t>g & (L.GROUP_LOCK_STRIPES - 1)
        cdef L.GroupRecord* group = &self.groups[g]
        cdef list members = []
        cdef int32_t m
        self._lock_stripes_of_groups(&stripe, 1)
        m = group.first_member
        while m != L.NO_INDEX:
            members.append(self.accounts[m].account_id[:self.accounts[m].id_length])
            m = next_member(self.accounts, m, g)
        info = {"known": bool(group.flags & L.GROUP_KNOWN),
                "invalid": bool(group.flags & L.GROUP_STATE_INVALID),
                "limits": _read_limits(&group.limits), "members": tuple(sorted(members))}
        self._unlock_stripes_of_groups(&stripe, 1)
        return info

    def replace_positions(self, account_id, positions, filled=None, cancelled=None,
                          realized_pnl=None, state_version=None):
        """Set an account's state from one Redis snapshot, atomically.

        ``positions`` is ``{symbol: (quantity, cost_basis)}``; positions of the
        account that are not named become zero, so the table equals the lots.
        ``filled`` maps order ids to the quantity their fill lots carry, and
        ``cancelled`` holds cancelled order ids: each working order's
        remaining quantity becomes ``quantity - filled`` (0 if cancelled), in
        the same locked step as the positions, so a fill is never counted both
        as working and as position, nor as neither. ``None`` leaves the
        working orders as they are. ``state_version`` is the snapshot's
        ``version:{ACC}`` (orders that ask for a later one wait, then get
        STALE_DATA); ``None`` leaves it.
        """
        cdef int32_t a = self._account(account_id)
        staged = []
        if state_version is not None and not 0 <= state_version < (1 << 63):
            raise OverflowError("state version must be a non-negative int64")
        for symbol, (quantity, cost_basis) in positions.items():
            if not -(1 << 63) <= quantity < (1 << 63) or not -(1 << 63) <= cost_basis < (1 << 63):
                raise OverflowError(f"position {symbol!r} does not fit in int64")
        self._check_room(a, positions)
        for symbol, (quantity, cost_basis) in positions.items():
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
            if state_version is not None:
                # last, with a release store: a reader that sees the version
                # sees every position of the snapshot that carried it
                L.pt_store_i64(&self.accounts[a].state_version, state_version)
        finally:
            self.unlock_account(a)
        self._bump_version()

    cdef void recompute_working(self, int32_t account_index, object filled,
                                object cancelled) except *:
        # Caller holds the account's stripe lock. Each working order's
        # remaining from the snapshot's fills and cancels, then every working
        # sum of the account rebuilt from its working orders, so nothing can
        # drift. A leg of an order group ends with its own fill or cancel
        # only: the venue's cancels of the other legs end those.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.OrderRecord* order
        cdef int32_t o = account.first_working_order
        cdef int32_t kept_head = L.NO_INDEX
        cdef int32_t kept_count = 0
        cdef int32_t next_o
        cdef int64_t remaining
        staged = []
        while o != L.NO_INDEX:
            order = &self.orders[o]
            key = order.order_id[:order.id_length]
            if key in cancelled:
                remaining = 0
            else:
                # FIX cumulative quantity: a replacement's filled units include
                # the original's (also fills that reach Redis after the replace)
                # and what the chain filled before it (carried).
                own = filled.get(key, 0)
                done = order.carried + own
                if order.replaces[0] != 0:
                    done += filled.get(_replaced_id(order), 0)
                order.own_filled = own if own < INT64_LIMIT else INT64_LIMIT
                remaining = order.quantity - done if done < order.quantity else 0
            # A leg's fill, even a complete one, ends no other leg of its group:
            # they stop counting when their own cancels are reported. The
            # table cannot tell which legs the venue's group held (a group id
            # reused before the fill reached it, a late fill after a refused
            # replace), and a fresh load of Redis could not either.
            staged.append((o, remaining))
            o = order.next_working
        for o, remaining in staged:
            order = &self.orders[o]
            order.remaining = remaining
            if remaining > 0:
                order.next_working = kept_head
                kept_head = o
                kept_count += 1
            else:
                order.status = L.ORDER_DONE
                order.next_working = L.NO_INDEX
                order.counted = order.counted_notional = 0
                self.append_idle(account_index, o, L.pt_load_i64(&self.header.clock_ns))
        account.first_working_order = kept_head
        account.working_order_count = kept_count
        self._rebuild_grouped(account_index)
        self._count_groups(account_index)
        self._resum(account_index)

    cdef void _count_groups(self, int32_t account_index) except *:
        # What each working order counts (see regroup), for every group at
        # once: O(working orders of the account).
        cdef L.OrderRecord* order
        cdef int32_t o = self.accounts[account_index].first_working_order
        cdef int64_t notional
        worst = {}
        while o != L.NO_INDEX:
            order = &self.orders[o]
            if order.group[0] == 0:
                count_all(order)
            else:
                order.counted = order.counted_notional = 0
                notional = order.remaining * order.valuation_price
                leaders = worst.setdefault((_group_key(order), order.side), [-1, o, -1, o])
                if order.remaining > leaders[0]:
                    leaders[0], leaders[1] = order.remaining, o
                if notional > leaders[2]:
                    leaders[2], leaders[3] = notional, o
            o = order.next_working
        for units, units_leader, notional, notional_leader in worst.values():
            self.orders[units_leader].counted = units
            self.orders[notional_leader].counted_notional = notional

    cdef void _resum(self, int32_t account_index) noexcept nogil:
        # Every working sum of the account's slots and its venue and
        # counterparty totals, from what its working orders count.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.PositionSlot* slot
        cdef int32_t p = account.first_position
        while p != L.NO_INDEX:
            slot = &self.positions[p]
            slot.working_buy = slot.working_sell = 0
            slot.working_buy_notional = slot.working_sell_notional = 0
            slot.working_short_notional = 0
            p = slot.next_in_account
        cdef int32_t o = account.first_working_order
        while o != L.NO_INDEX:
            count_working(&self.positions[self.orders[o].position_index], &self.orders[o], 1)
            o = self.orders[o].next_working
        self._rebuild_tag_totals(account_index)

    cdef void _rebuild_tag_totals(self, int32_t account_index) noexcept nogil:
        # The per-venue / per-counterparty running totals, from the working list.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.OrderRecord* order
        memset(account.venue_working, 0, sizeof(account.venue_working))
        memset(account.counterparty_working, 0, sizeof(account.counterparty_working))
        account.tag_overflow = 0
        cdef int32_t o = account.first_working_order
        while o != L.NO_INDEX:
            order = &self.orders[o]
            add_tag_total(account.venue_working, &account.tag_overflow, 1, order.venue,
                          order.counted_notional)
            add_tag_total(account.counterparty_working, &account.tag_overflow, 2,
                          order.counterparty, order.counted_notional)
            o = order.next_working

    cdef int32_t _end_lapsed(self, int32_t account_index, int64_t now_unix_ms) except -1:
        # Caller holds the account's stripe lock. Working orders whose time in
        # force ended at or before now stop counting, as a reported cancel
        # would end them (locates used stay used, as for a cancel). O(working
        # orders of the account), however many legs of groups lapse.
        cdef L.AccountRecord* account = &self.accounts[account_index]
        cdef L.OrderRecord* order
        cdef int32_t o = account.first_working_order
        cdef int32_t previous = L.NO_INDEX
        cdef int32_t next_o, ended = 0
        cdef int64_t next_lapse = 0
        cdef bint grouped = False
        while o != L.NO_INDEX:
            order = &self.orders[o]
            next_o = order.next_working
            if lapsed(order, now_unix_ms):
                count_working(&self.positions[order.position_index], order, -1)
                if order.group[0] != 0:
                    grouped = True
                order.remaining = order.counted = order.counted_notional = 0
                order.status = L.ORDER_DONE
                order.next_working = L.NO_INDEX
                if previous == L.NO_INDEX:
                    account.first_working_order = next_o
                else:
                    self.orders[previous].next_working = next_o
                account.working_order_count -= 1
                self.append_idle(account_index, o, L.pt_load_i64(&self.header.clock_ns))
                ended += 1
            else:
                if order.working_until_ms != 0 and (next_lapse == 0
                                                    or order.working_until_ms < next_lapse):
                    next_lapse = order.working_until_ms
                previous = o
            o = next_o
        L.pt_store_i64(&account.next_lapse_ms, next_lapse)
        if grouped:
            # the legs left of a group may be its worst now: count them again
            self._rebuild_grouped(account_index)
            self._count_groups(account_index)
            self._resum(account_index)
        elif ended:
            self._rebuild_tag_totals(account_index)
        return ended

    def end_lapsed_orders(self, int64_t now_unix_ms):
        """Working orders whose time in force ended at or before ``now_unix_ms``
        (the wall clock, Unix ms) stop counting: a DAY or IOC order at the
        session end it was decided in, a GTD order at its expiry. The table's
        writer calls it now and then; returns how many stopped. An account
        none of whose orders can have lapsed costs one read."""
        cdef int32_t a, count, ended = 0
        cdef int64_t next_lapse
        count = L.pt_load_i32(&self.header.account_count)
        for a in range(count):
            next_lapse = L.pt_load_i64(&self.accounts[a].next_lapse_ms)  # a hint, no lock
            if next_lapse == 0 or next_lapse > now_unix_ms:
                continue
            self.lock_account(a)
            try:
                ended += self._end_lapsed(a, now_unix_ms)
            finally:
                self.unlock_account(a)
        if ended:
            self._bump_version()
        return ended

    def restore_order(self, account_id, order_id, symbol, side, order_type, quantity, price,
                      valuation_price, notional, venue, counterparty, approved, rejections,
                      time_in_force=0, expire_at_ms=0, working_until_ms=0, replaces=b"",
                      carried=0, group=b""):
        """Put back one decided order (see :meth:`restore_orders`); True when it was added."""
        return self.restore_orders(account_id, [(
            order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
            venue, counterparty, approved, rejections, time_in_force, expire_at_ms,
            working_until_ms, replaces, carried, group)]) == 1

    def restore_orders(self, account_id, orders):
        """Put back decided orders of one account from their durable copies (crash recovery).

        ``orders`` holds ``(order_id, symbol, side, order_type, quantity, price,
        valuation_price, notional, venue, counterparty, approved, rejections)``
        tuples, optionally followed by ``time_in_force, expire_at_ms,
        working_until_ms`` (see :meth:`end_lapsed_orders`), and for a
        replacement by ``replaces, carried`` after those. An approved order is working again with its whole quantity
        reserved (the next account snapshot subtracts its fills and cancels);
        a rejected one is remembered so its id replays. Their decisions are
        durable (they came from Redis), so they may leave the table again.
        An order id already in the table is left alone. Each order costs O(1):
        nothing walks the account's working orders. Returns how many were added.

        Raises ValueError when a record cannot be held, and TableFullError
        (nothing added) when they do not all fit: the account's share, the
        order table, or the instruments and position slots they need.
        """
        cdef int32_t a = self._account(account_id)
        staged = {}
        for order in orders:
            checked = _checked_restore(order)
            staged[checked[0]] = checked
        cdef int32_t held, room_account, room_table, idle
        cdef int added = 0
        self.lock_account(a)
        try:
            missing = [order for order_id, order in staged.items()
                       if self.find_order(a, order_id, len(order_id)) == L.NO_INDEX]
            if not missing:
                return 0
            idle = self.accounts[a].idle_count
            room_account = <int32_t>self.header.max_orders_per_account \
                - self.accounts[a].order_count + idle
            room_table = <int32_t>self.header.max_orders \
                - L.pt_load_i32(&self.header.orders_in_use) + idle
            if len(missing) > room_account:
                raise TableFullError(
                    f"{len(missing)} decided orders do not fit in the account's share of the "
                    f"order table ({self.header.max_orders_per_account} orders)",
                    L.CAPACITY_ACCOUNT_ORDERS, self.header.max_orders_per_account)
            if len(missing) > room_table:
                raise TableFullError(
                    f"{len(missing)} decided orders do not fit in the order table "
                    f"({self.header.max_orders} orders)",
                    L.CAPACITY_ORDER_TABLE, self.header.max_orders)
            self._check_room(a, {order[1] for order in missing})
            try:
                for order in missing:
                    added += self._restore_one(a, order)
            finally:
                # each leg was counted whole: now its group counts its worst
                # (also when a later order could not be restored)
                if any(order[17] and order[10] for order in missing[:added]):
                    self._count_groups(a)
                    self._resum(a)
        finally:
            self.unlock_account(a)
            if added:
                self._bump_version()
        return added

    cdef int _restore_one(self, int32_t a, object order) except -1:
        # Caller holds the account's lock; the order passed _checked_restore.
        (order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
         venue, counterparty, approved, rejections, time_in_force, expire_at_ms,
         working_until_ms, replaces, carried, group) = order
        cdef int32_t i = self._instrument(symbol)
        cdef int32_t p = self._position(a, i) if approved else L.NO_INDEX
        cdef int32_t what = 0
        cdef int n
        if approved and not self._reservation_fits(a, p, side, quantity,
                                                   quantity * valuation_price, venue,
                                                   counterparty):
            raise ValueError(f"order {order_id!r}: its reservation would take the account's "
                             "working sums past int64")
        cdef L.OrderRecord* rec = self.allocate_order(a, order_id, len(order_id), &what)
        if rec == NULL:
            raise TableFullError(f"no room for decided order {order_id!r}: capacity {what} "
                                 f"({capacity_limit(self.header, what)})", what,
                                 capacity_limit(self.header, what))
        rec.instrument_index = i
        rec.side = side
        rec.order_type = order_type
        rec.quantity = quantity
        rec.price = price
        rec.valuation_price = valuation_price
        rec.notional = notional
        rec.approved = approved
        rec.time_in_force = time_in_force
        rec.expire_at_ms = expire_at_ms
        rec.working_until_ms = working_until_ms
        memcpy(rec.venue, <const char*>venue, len(venue))
        memcpy(rec.counterparty, <const char*>counterparty, len(counterparty))
        memcpy(rec.replaces, <const char*>replaces, len(replaces))
        memcpy(rec.group, <const char*>group, len(group))
        if group:
            rec.group_hash = group_hash(<const char*>group, len(group))
        rec.carried = carried
        rec.rejection_count = len(rejections)
        for n, (code, observed, limit) in enumerate(rejections[:L.STORED_REJECTIONS]):
            rec.rejections[n].code = code
            rec.rejections[n].observed = observed
            rec.rejections[n].limit = limit
        rec.flags |= L.ORDER_DURABLE
        if approved:
            rec.status = L.ORDER_WORKING
            rec.position_index = p
            # the next account snapshot subtracts the fills (see recompute_working)
            rec.remaining = quantity - carried
            count_all(rec)   # a group's legs count their worst at the end (restore_orders)
            if side == L.SIDE_SELL_SHORT:
                self.positions[p].locate_used += quantity
            self.add_working(a, rec)
        else:
            rec.status = L.ORDER_REJECTED
            self.append_idle(a, <int32_t>(rec - self.orders), L.pt_load_i64(&self.header.clock_ns))
        self.publish_order(rec)
        return 1

    cdef object _working_at(self, int32_t a, bytes name, bint by_venue):
        # Working notional of the account at one venue (or counterparty): the
        # running total, or the sum over its working orders once the totals
        # ran out of slots (as the checks' working_at).
        cdef L.AccountRecord* account = &self.accounts[a]
        cdef L.TagLimit* totals = &account.venue_working[0]
        cdef const char* tag
        cdef int n
        if not by_venue:
            totals = &account.counterparty_working[0]
        for n in range(L.TAG_LIMIT_SLOTS):
            if totals[n].name[0] != 0 and strncmp(totals[n].name, name, L.TAG_CAPACITY) == 0:
                return totals[n].limit
        if not account.tag_overflow & (1u if by_venue else 2u):
            return 0
        total = 0
        cdef int32_t o = account.first_working_order
        cdef L.OrderRecord* order
        while o != L.NO_INDEX:
            order = &self.orders[o]
            tag = &order.venue[0] if by_venue else &order.counterparty[0]
            if strncmp(tag, name, L.TAG_CAPACITY) == 0:
                total += order.counted_notional
            o = order.next_working
        return total

    cdef bint _reservation_fits(self, int32_t a, int32_t p, int side, object quantity,
                                object notional, bytes venue, bytes counterparty) except -1:
        # Every running sum a restored working order adds to stays an int64
        # (the decision path checks the same before it reserves).
        cdef L.PositionSlot* slot = &self.positions[p]
        if side == L.SIDE_BUY:
            sums = [slot.working_buy + quantity, slot.working_buy_notional + notional]
        else:
            sums = [slot.working_sell + quantity, slot.working_sell_notional + notional,
                    slot.working_short_notional + notional, slot.locate_used + quantity]
        if venue:
            sums.append(self._working_at(a, venue, True) + notional)
        if counterparty:
            sums.append(self._working_at(a, counterparty, False) + notional)
        return all(value in _INT64 for value in sums)

    cdef bint _filter_add(self, int32_t account_index, const char* order_id,
                          Py_ssize_t length) noexcept nogil:
        # Add an id to the account's evicted-id filter; True when it was not in it.
        cdef L.AccountActivity* activity = &self.activity[account_index]
        cdef uint32_t h1 = hash_id(order_id, length)
        cdef uint32_t h2 = mix32(h1) | 1u
        cdef uint32_t bit
        cdef uint64_t mask
        cdef bint added = False
        cdef int k
        for k in range(L.EVICTED_FILTER_HASHES):
            bit = (h1 + <uint32_t>k * h2) & (L.EVICTED_FILTER_WORDS * 64 - 1)
            mask = 1ull << (bit & 63)
            if not activity.evicted[bit >> 6] & mask:
                activity.evicted[bit >> 6] |= mask
                added = True
        activity.evictions += 1
        return added

    def forget_orders(self, account_id, order_ids):
        """Order ids of the account decided before, whose durable copy is in Redis,
        that the table need not hold (at a restore: rejected orders, and
        approved ones already filled or cancelled). Each goes to the account's
        evicted-id filter, so a re-sent one is looked up in Redis, never
        decided anew; ids the table holds are left alone. Returns how many
        the filter did not have."""
        cdef int32_t a = self._account(account_id)
        checked = []
        for order_id in order_ids:
            if not isinstance(order_id, bytes) or not 1 <= len(order_id) <= L.MAX_ORDER_ID_LENGTH:
                raise ValueError(f"order id must be 1 to {L.MAX_ORDER_ID_LENGTH} bytes")
            checked.append(order_id)
        cdef int added = 0
        cdef bytes key
        self.lock_account(a)
        for key in checked:
            if self.find_order(a, key, len(key)) == L.NO_INDEX:
                added += self._filter_add(a, key, len(key))
        self.unlock_account(a)
        return added

    def order_id_may_have_expired(self, account_id, order_id):
        """Whether the account's evicted-id filter holds the id (it may give false positives)."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        if a == L.NO_INDEX or not isinstance(order_id, bytes):
            return False
        self.lock_account(a)
        result = self.order_id_evicted(a, order_id, len(order_id))
        self.unlock_account(a)
        return result

    def mark_durable(self, account_id, order_id):
        """The decision stored under this order id is now in Redis; True if the table holds it."""
        return self.mark_durable_many(((account_id, order_id),)) == 1

    def mark_durable_many(self, decided):
        """:meth:`mark_durable` for ``(account_id, order_id)`` pairs; returns how many it held."""
        cdef int marked = 0
        cdef int32_t a, o
        cdef bytes key
        for account_id, order_id in decided:
            key = _check_id(account_id, "account id")
            a = self.find_account(key, len(key))
            if a == L.NO_INDEX or not isinstance(order_id, bytes):
                continue
            self.lock_account(a)
            o = self.find_order(a, order_id, len(order_id))
            if o != L.NO_INDEX:
                self.orders[o].flags |= L.ORDER_DURABLE
                marked += 1
            self.unlock_account(a)
        return marked

    def expire_orders(self, int64_t now_ns, int32_t budget=10_000):
        """Let durable decided orders that stopped working ``order_expiry_ms`` before
        ``now_ns`` (the decisions' clock) leave the table, at most ``budget`` of
        them; returns how many left. The owner of the table calls it now and then."""
        cdef int32_t a, count, evicted = 0
        cdef int32_t head
        self.advance_clock(now_ns)
        count = L.pt_load_i32(&self.header.account_count)
        for a in range(count):
            if evicted >= budget:
                break
            head = self.accounts[a].first_idle_order      # a hint, read without the lock
            if head == L.NO_INDEX or not _expired(self.orders[head].idle_since_ns, now_ns,
                                                  self.header.order_expiry_ns):
                continue
            self.lock_account(a)
            evicted += self._expire_account(a, now_ns, budget - evicted)
            self.unlock_account(a)
        if evicted:
            self._bump_version()
        return evicted

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
        self._check_room(a, locates)
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
                       bint short_restricted=False, currency="", margin_bps=(0, 0, 0, 0)):
        """Set an instrument's reference data.

        Tick size is in price units, lot size in units; issuer and sector are
        small ids the caller interns (0: none given); currency is an ISO 4217
        code of three letters A-Z, or "" for none given; ``margin_bps`` the
        margin rates in basis points of notional, ``(initial long, initial
        short, maintenance long, maintenance short)``, each 0 to MAX_MARGIN_BPS.
        """
        if tick_size <= 0 or lot_size <= 0:
            raise ValueError(f"tick_size and lot_size must be positive, got {tick_size}, {lot_size}")
        rates = tuple(margin_bps)
        if len(rates) != 4 or not all(0 <= rate <= L.MAX_MARGIN_BPS for rate in rates):
            raise ValueError(f"margin rates are four basis points from 0 to {L.MAX_MARGIN_BPS}, "
                             f"got {margin_bps!r}")
        cdef uint32_t packed_currency = _pack_currency(currency)
        cdef int32_t i = self._instrument(symbol)
        cdef L.InstrumentRecord* rec = &self.instruments[i]
        rec.tick_size = tick_size
        rec.lot_size = lot_size
        rec.issuer_id = issuer_id
        rec.sector_id = sector_id
        rec.currency = packed_currency
        (rec.initial_margin_long_bps, rec.initial_margin_short_bps,
         rec.maintenance_margin_long_bps, rec.maintenance_margin_short_bps) = rates
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

    def set_sync_live(self, bint live, int64_t until_ns=0):
        """Say whether the sync link trusts the table; while not, orders get STALE_DATA.

        ``until_ns`` (CLOCK_MONOTONIC, as ``time.perf_counter_ns``) bounds the
        trust: orders decided after it get STALE_DATA until the writer renews
        it. 0: no deadline (private tables of tests and tools).
        """
        L.pt_store_i64(&self.header.sync_live_until_ns, until_ns if live else 0)
        L.pt_store_i32(&self.header.sync_live, 1 if live else 0)

    # -- LOST SLOTS (a Redis Cluster primary the sync stopped hearing from) --

    def set_slots_lost(self, ranges, bint lost):
        """Mark Redis Cluster slot ranges ``[(first, last), ...]`` (inclusive) lost, or served.

        While a slot is lost, an order whose account or symbol has a key in
        it (or that is valued over a holding whose symbol has one) gets
        STALE_DATA; every other order is decided as usual. The sync marks
        the slots of a primary it lost, and clears them once their new
        primary is followed and re-read. Returns how many slots are lost now.
        """
        cdef uint64_t word
        cdef int32_t first, last, n
        spans = [(int(first_), int(last_)) for first_, last_ in ranges]
        for first, last in spans:
            if not 0 <= first <= last < L.CLUSTER_SLOTS:
                raise ValueError(f"a slot range is 0 <= first <= last < {L.CLUSTER_SLOTS}, "
                                 f"got {first}..{last}")
        if not lost and spans:
            L.pt_store_i32(&self.header.lost_slot_count, 0)  # re-counted below
        for first, last in spans:
            for n in range(first, last + 1):
                word = <uint64_t>L.pt_load_i64(<int64_t*>&self.header.lost_slots[n >> 6])
                if lost:
                    word |= (<uint64_t>1) << (n & 63)
                else:
                    word &= ~((<uint64_t>1) << (n & 63))
                L.pt_store_i64(<int64_t*>&self.header.lost_slots[n >> 6], <int64_t>word)
        cdef int32_t count = 0
        for n in range(L.LOST_SLOT_WORDS):
            count += bin(<uint64_t>L.pt_load_i64(<int64_t*>&self.header.lost_slots[n])).count("1")
        L.pt_store_i32(&self.header.lost_slot_count, count)
        self._bump_version()
        return count

    def lost_slot_count(self):
        """How many Redis Cluster slots are lost now (see :meth:`set_slots_lost`)."""
        return L.pt_load_i32(&self.header.lost_slot_count)

    def slot_lost(self, uint32_t slot):
        """Whether one Redis Cluster slot is lost now."""
        if slot >= L.CLUSTER_SLOTS:
            raise ValueError(f"a slot is below {L.CLUSTER_SLOTS}, got {slot}")
        return bool((<uint64_t>L.pt_load_i64(<int64_t*>&self.header.lost_slots[slot >> 6])
                     >> (slot & 63)) & 1)

    # -- ACCOUNT OWNERSHIP (leases of shards; the table writer keeps them) --

    def set_shards(self, uint32_t count):
        """Turn account ownership on with ``count`` shards (0: off), no lease held.

        With it on, an order decides only while its account's shard is held
        (:meth:`set_shard_lease`); any other gets STALE_DATA.
        """
        cdef int i
        if count > L.MAX_SHARDS:
            raise ValueError(f"at most {L.MAX_SHARDS} shards, got {count}")
        for i in range(L.MAX_SHARDS):
            L.pt_store_i64(&self.header.shard_live_until_ns[i], 0)
            L.pt_store_i64(&self.header.shard_epoch[i], 0)
        L.pt_store_i32(<int32_t*>&self.header.shard_count, <int32_t>count)

    def set_shard_lease(self, uint32_t shard, int64_t epoch, int64_t until_ns):
        """Hold ``shard`` under fencing ``epoch`` until ``until_ns`` (CLOCK_MONOTONIC).

        ``epoch`` 0 releases it. Ordered for readers in other processes
        (checks.pyx reads the epoch first): a release clears the deadline
        before the epoch, a grant writes the epoch before the deadline.
        """
        if shard >= <uint32_t>L.pt_load_i32(<int32_t*>&self.header.shard_count):
            raise ValueError(f"no shard {shard} in a table of "
                             f"{L.pt_load_i32(<int32_t*>&self.header.shard_count)} shards")
        if epoch < 0:
            raise ValueError("a fencing epoch is positive (0: released)")
        if epoch == 0:
            L.pt_store_i64(&self.header.shard_live_until_ns[shard], 0)
            L.pt_store_i64(&self.header.shard_epoch[shard], 0)
        else:
            L.pt_store_i64(&self.header.shard_epoch[shard], epoch)
            L.pt_store_i64(&self.header.shard_live_until_ns[shard], until_ns)

    @property
    def shard_count(self):
        """Shards accounts are split into (0: ownership off)."""
        return <uint32_t>L.pt_load_i32(<int32_t*>&self.header.shard_count)

    def shard_lease(self, uint32_t shard):
        """``(epoch, until_ns)`` of a shard's lease in this table; (0, 0): not held."""
        if shard >= L.MAX_SHARDS:
            raise ValueError(f"no shard {shard}")
        return (L.pt_load_i64(&self.header.shard_epoch[shard]),
                L.pt_load_i64(&self.header.shard_live_until_ns[shard]))

    # -- PYTHON READERS (status, tests) --

    @property
    def sync_live(self):
        """Live and within the writer's deadline, by this process's clock now."""
        cdef int64_t until = L.pt_load_i64(&self.header.sync_live_until_ns)
        if L.pt_load_i32(&self.header.sync_live) != 1:
            return False
        return until == 0 or _monotonic_ns() <= until

    @property
    def sync_live_until_ns(self):
        return L.pt_load_i64(&self.header.sync_live_until_ns)

    @property
    def sync_version(self):
        return L.pt_load_i64(&self.header.sync_version)

    @property
    def recovered_locks(self):
        return L.pt_load_i64(&self.header.recovered_locks)

    def state_version(self, account_id):
        """The account's ``version:{ACC}`` as of the last snapshot applied; 0 if none."""
        cdef bytes a_key = _check_id(account_id, "account id")
        cdef int32_t a = self.find_account(a_key, len(a_key))
        return 0 if a == L.NO_INDEX else L.pt_load_i64(&self.accounts[a].state_version)

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
            "groups": L.pt_load_i32(&h.group_count), "max_groups": h.max_groups,
            "orders": L.pt_load_i32(&h.orders_in_use), "max_orders": h.max_orders,
            "max_orders_per_account": h.max_orders_per_account,
            "order_expiry_ms": h.order_expiry_ns // 1_000_000,
            "orders_evicted": L.pt_load_i64(&h.orders_evicted),
            "order_index_rebuilds": L.pt_load_i64(&h.order_index_rebuilds),
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
            "groups_invalid": bool(rec.flags & L.ACCOUNT_GROUPS_INVALID),
            "halt_mode": rec.halt_mode,
            "limits": _read_limits(&rec.limits),
            "cash": rec.cash if rec.flags & L.ACCOUNT_HAS_BALANCES else None,
            "credit_line": rec.credit_line if rec.flags & L.ACCOUNT_HAS_BALANCES else None,
            "realized_pnl": rec.realized_pnl,
            "state_version": L.pt_load_i64(&rec.state_version),
            "working_orders": rec.working_order_count,
            "orders": rec.order_count,
            "capacity": rec.capacity_kind if rec.flags & L.ACCOUNT_OVER_CAPACITY else 0,
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
        ``counterparty``, ``remaining``, ``replaces``, ``carried``, ``time_in_force``,
        ``expire_at_ms``, ``working_until_ms`` and ``group``: what its durable record holds.
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
                    "replaces": _replaced_id(rec), "carried": rec.carried,
                    "time_in_force": rec.time_in_force, "expire_at_ms": rec.expire_at_ms,
                    "working_until_ms": rec.working_until_ms, "group": _group_id(rec),
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
        cdef int32_t o
        cdef L.OrderRecord* rec
        cdef L.InstrumentRecord* instrument
        self.lock_account(a)
        try:
            o = self.find_order(a, order_id, len(order_id))
            if o == L.NO_INDEX:
                return None
            rec = &self.orders[o]
            instrument = &self.instruments[rec.instrument_index]
            return {
                "status": {L.ORDER_REJECTED: "rejected", L.ORDER_WORKING: "working",
                           L.ORDER_DONE: "done", L.ORDER_REPLACED: "replaced"}[rec.status],
                "approved": bool(rec.approved),
                "quantity": rec.quantity,
                "remaining": rec.remaining,
                "notional": rec.notional,
                "side": rec.side,
                "durable": bool(rec.flags & L.ORDER_DURABLE),
                "symbol": instrument.symbol[:instrument.id_length],
                "order_type": rec.order_type, "price": rec.price,
                "valuation_price": rec.valuation_price,
                "venue": rec.venue[:L.TAG_CAPACITY].split(b"\0", 1)[0],
                "counterparty": rec.counterparty[:L.TAG_CAPACITY].split(b"\0", 1)[0],
                "replaces": _replaced_id(rec), "carried": rec.carried,
                "time_in_force": rec.time_in_force, "expire_at_ms": rec.expire_at_ms,
                "working_until_ms": rec.working_until_ms, "group": _group_id(rec),
            }
        finally:
            self.unlock_account(a)

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
            "currency": _unpack_currency(rec.currency),
            "margin_bps": (rec.initial_margin_long_bps, rec.initial_margin_short_bps,
                           rec.maintenance_margin_long_bps, rec.maintenance_margin_short_bps),
        }

    def instrument_currency(self, bytes symbol):
        """The symbol's ISO 4217 currency (InstrumentRecord.currency); "" when none is given.

        "" too for a symbol the table does not hold. Cheaper than
        instrument_info: the servicer reads it for every Decision.
        """
        cdef int32_t i = self.find_instrument(symbol, len(symbol))
        if i == L.NO_INDEX:
            return ""
        return _unpack_currency(self.instruments[i].currency)

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
