"""The pre-trade check pipeline over a PositionTable (see checks.pxd)."""

cimport cython
from libc.stdint cimport INT64_MIN, int32_t, int64_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from pretrade._core.layout cimport ACCOUNT_HAS_LIMITS
from pretrade._core.layout cimport ACCOUNT_KNOWN
from pretrade._core.layout cimport ACCOUNT_STATE_INVALID
from pretrade._core.layout cimport HALT_MODE_HALTED
from pretrade._core.layout cimport HALT_MODE_REDUCE_ONLY
from pretrade._core.layout cimport HALT_SCOPE_ACCOUNT
from pretrade._core.layout cimport HALT_SCOPE_GLOBAL
from pretrade._core.layout cimport HALT_SCOPE_SYMBOL
from pretrade._core.layout cimport INSTRUMENT_HAS_PRICE
from pretrade._core.layout cimport INSTRUMENT_KNOWN
from pretrade._core.layout cimport INSTRUMENT_STATE_INVALID
from pretrade._core.layout cimport LIMIT_KIND_COUNT
from pretrade._core.layout cimport LIMIT_MAX_LONG_POSITION
from pretrade._core.layout cimport LIMIT_MAX_NET_POSITION
from pretrade._core.layout cimport LIMIT_MAX_ORDER_NOTIONAL
from pretrade._core.layout cimport LIMIT_MAX_ORDER_QUANTITY
from pretrade._core.layout cimport LIMIT_MAX_SHORT_POSITION
from pretrade._core.layout cimport MAX_REJECTIONS
from pretrade._core.layout cimport NO_INDEX
from pretrade._core.layout cimport ORDER_TYPE_LIMIT
from pretrade._core.layout cimport ORDER_TYPE_MARKET
from pretrade._core.layout cimport REJECT_ACCOUNT_HALT
from pretrade._core.layout cimport REJECT_ARITHMETIC_OVERFLOW
from pretrade._core.layout cimport REJECT_GLOBAL_HALT
from pretrade._core.layout cimport REJECT_INVALID_PRICE
from pretrade._core.layout cimport REJECT_INVALID_QUANTITY
from pretrade._core.layout cimport REJECT_INVALID_STATE
from pretrade._core.layout cimport REJECT_LIMITS_NOT_CONFIGURED
from pretrade._core.layout cimport REJECT_MAX_LONG_POSITION
from pretrade._core.layout cimport REJECT_MAX_NET_POSITION
from pretrade._core.layout cimport REJECT_MAX_ORDER_NOTIONAL
from pretrade._core.layout cimport REJECT_MAX_ORDER_QUANTITY
from pretrade._core.layout cimport REJECT_MAX_SHORT_POSITION
from pretrade._core.layout cimport REJECT_PRICE_UNAVAILABLE
from pretrade._core.layout cimport REJECT_REDUCE_ONLY
from pretrade._core.layout cimport REJECT_STALE_DATA
from pretrade._core.layout cimport REJECT_SYMBOL_HALT
from pretrade._core.layout cimport REJECT_UNKNOWN_ACCOUNT
from pretrade._core.layout cimport REJECT_UNKNOWN_SYMBOL
from pretrade._core.layout cimport SIDE_BUY
from pretrade._core.layout cimport SIDE_SELL
from pretrade._core.layout cimport SIDE_SELL_SHORT
from pretrade._core.layout cimport pt_add_overflow
from pretrade._core.layout cimport pt_load_i32
from pretrade._core.layout cimport pt_load_i64
from pretrade._core.layout cimport pt_mul_overflow

# Limits every order is checked against; a missing one fails closed.
REQUIRED_LIMIT_MASK = (1 << LIMIT_KIND_COUNT) - 1
cdef uint32_t _REQUIRED_LIMITS = (1u << LIMIT_KIND_COUNT) - 1


# -- HELPERS --

cdef inline void reject(DecisionRecord* out, int32_t code, int64_t observed,
                        int64_t limit) noexcept nogil:
    # Past MAX_REJECTIONS the order is still rejected: approval is decided by
    # the count, which keeps growing; only the detail rows stop.
    if out.rejection_count < MAX_REJECTIONS:
        out.rejections[out.rejection_count].code = code
        out.rejections[out.rejection_count].observed = observed
        out.rejections[out.rejection_count].limit = limit
    out.rejection_count += 1


cdef inline bint effective_limit(const CheckContext* ctx, int kind, int64_t* value) noexcept nogil:
    # A per-symbol override wins over the account-wide default.
    if ctx.overrides != NULL and ctx.overrides.present & (1u << kind):
        value[0] = ctx.overrides.values[kind]
        return True
    if ctx.account != NULL and ctx.account.flags & ACCOUNT_HAS_LIMITS \
            and ctx.account.limits.present & (1u << kind):
        value[0] = ctx.account.limits.values[kind]
        return True
    return False


cdef inline bint is_reducing(const CheckContext* ctx) noexcept nogil:
    # Shrinks |position| without flipping its sign: opposite side, and no
    # larger than the position.
    if not ctx.projection_valid or ctx.signed_quantity == 0:
        return False
    if ctx.position > 0:
        return ctx.signed_quantity < 0 and ctx.projected_position >= 0
    if ctx.position < 0:
        return ctx.signed_quantity > 0 and ctx.projected_position <= 0
    return False


cdef inline int64_t magnitude(int64_t value) noexcept nogil:
    # Callers guarantee value != INT64_MIN (prepare_context rejects it).
    return -value if value < 0 else value


# -- PRE-TRADE CHECKS --
# Each check reads the context and appends at most a few rejections. A check
# whose inputs are missing stays silent: the check that found them missing
# has already rejected the order, so nothing is ever approved unchecked.

cdef void check_sync_live(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if pt_load_i32(&ctx.header.sync_live) != 1:
        reject(out, REJECT_STALE_DATA, 0, 0)


cdef void check_account_known(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if not ctx.account_known:
        reject(out, REJECT_UNKNOWN_ACCOUNT, 0, 0)
    elif ctx.account.flags & ACCOUNT_STATE_INVALID:
        reject(out, REJECT_INVALID_STATE, HALT_SCOPE_ACCOUNT, 0)


cdef void check_symbol_known(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if not ctx.instrument_known:
        reject(out, REJECT_UNKNOWN_SYMBOL, 0, 0)
    elif pt_load_i32(<const int32_t*>&ctx.instrument.flags) & INSTRUMENT_STATE_INVALID:
        reject(out, REJECT_INVALID_STATE, HALT_SCOPE_SYMBOL, 0)


cdef void check_quantity_positive(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.quantity <= 0:
        reject(out, REJECT_INVALID_QUANTITY, out.order.quantity, 1)


cdef void check_price_usable(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.order_type == ORDER_TYPE_LIMIT:
        if out.order.price <= 0:
            reject(out, REJECT_INVALID_PRICE, out.order.price, 1)
    elif ctx.instrument_known and not ctx.price_valid:
        reject(out, REJECT_PRICE_UNAVAILABLE, 0, 0)


cdef void check_arithmetic_fits(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.quantity > 0 and (
            (ctx.price_valid and not ctx.notional_valid)
            or (ctx.account_known and not ctx.projection_valid)):
        reject(out, REJECT_ARITHMETIC_OVERFLOW, out.order.quantity, ctx.valuation_price)


cdef void check_limits_configured(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if not ctx.account_known:
        return
    cdef uint32_t missing = 0
    cdef int64_t unused
    cdef int kind
    for kind in range(LIMIT_KIND_COUNT):
        if not effective_limit(ctx, kind, &unused):
            missing |= 1u << kind
    if missing:
        # observed = bit mask of the missing LimitKinds
        reject(out, REJECT_LIMITS_NOT_CONFIGURED, missing, _REQUIRED_LIMITS)


cdef void check_max_order_quantity(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    if effective_limit(ctx, LIMIT_MAX_ORDER_QUANTITY, &limit) and out.order.quantity > limit:
        reject(out, REJECT_MAX_ORDER_QUANTITY, out.order.quantity, limit)


cdef void check_max_order_notional(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    if ctx.notional_valid and effective_limit(ctx, LIMIT_MAX_ORDER_NOTIONAL, &limit) \
            and ctx.notional > limit:
        reject(out, REJECT_MAX_ORDER_NOTIONAL, ctx.notional, limit)


cdef void check_position_limits(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Only an order that grows the position in the limited direction can
    # breach: a reducing order always passes, even when the position is
    # already over a limit that was lowered.
    if not ctx.projection_valid or out.order.quantity <= 0:
        return
    cdef int64_t limit
    cdef int64_t projected = ctx.projected_position
    cdef int64_t size_after = magnitude(projected)
    if effective_limit(ctx, LIMIT_MAX_NET_POSITION, &limit) and size_after > limit \
            and size_after > magnitude(ctx.position):
        reject(out, REJECT_MAX_NET_POSITION, size_after, limit)
    if effective_limit(ctx, LIMIT_MAX_LONG_POSITION, &limit) and projected > limit \
            and projected > ctx.position:
        reject(out, REJECT_MAX_LONG_POSITION, projected, limit)
    if effective_limit(ctx, LIMIT_MAX_SHORT_POSITION, &limit) and -projected > limit \
            and projected < ctx.position:
        reject(out, REJECT_MAX_SHORT_POSITION, -projected, limit)


cdef inline void check_one_halt(const CheckContext* ctx, DecisionRecord* out, int32_t mode,
                                int32_t scope, int32_t halted_code) noexcept nogil:
    if mode == HALT_MODE_HALTED:
        reject(out, halted_code, scope, 0)
    elif mode == HALT_MODE_REDUCE_ONLY and not is_reducing(ctx):
        # observed = the HaltScope that is reduce-only
        reject(out, REJECT_REDUCE_ONLY, scope, 0)


cdef void check_halts(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    check_one_halt(ctx, out, pt_load_i32(&ctx.header.global_halt), HALT_SCOPE_GLOBAL,
                   REJECT_GLOBAL_HALT)
    if ctx.account != NULL:
        check_one_halt(ctx, out, pt_load_i32(&ctx.account.halt_mode), HALT_SCOPE_ACCOUNT,
                       REJECT_ACCOUNT_HALT)
    if ctx.instrument != NULL:
        check_one_halt(ctx, out, pt_load_i32(&ctx.instrument.halt_mode), HALT_SCOPE_SYMBOL,
                       REJECT_SYMBOL_HALT)


# The pipeline, in order. Order matters only for the order of rejections.
cdef check_fn[11] PIPELINE = [
    check_sync_live,
    check_account_known,
    check_symbol_known,
    check_quantity_positive,
    check_price_usable,
    check_arithmetic_fits,
    check_limits_configured,
    check_max_order_quantity,
    check_max_order_notional,
    check_position_limits,
    check_halts,
]
CHECK_NAMES = (
    "sync_live", "account_known", "symbol_known", "quantity_positive", "price_usable",
    "arithmetic_fits", "limits_configured", "max_order_quantity", "max_order_notional",
    "position_limits", "halts",
)


# -- CONTEXT --

cdef void prepare_context(PositionTable table, DecisionRecord* record,
                          CheckContext* ctx) noexcept nogil:
    cdef const OrderInput* order = &record.order
    cdef int32_t position_index
    cdef int32_t override_index
    cdef int32_t instrument_flags = 0
    memset(ctx, 0, sizeof(CheckContext))
    ctx.header = table.header
    if order.account_index != NO_INDEX:
        ctx.account = &table.accounts[order.account_index]
        ctx.account_known = (ctx.account.flags & ACCOUNT_KNOWN) != 0
    if order.instrument_index != NO_INDEX:
        ctx.instrument = &table.instruments[order.instrument_index]
        instrument_flags = pt_load_i32(<const int32_t*>&ctx.instrument.flags)
        ctx.instrument_known = (instrument_flags & INSTRUMENT_KNOWN) != 0
    if ctx.account != NULL and ctx.instrument != NULL:
        position_index = table.find_position(order.account_index, order.instrument_index)
        if position_index != NO_INDEX:
            ctx.position = table.positions[position_index].quantity
            override_index = pt_load_i32(&table.positions[position_index].override_index)
            if override_index != NO_INDEX:
                ctx.overrides = &table.overrides[override_index].limits

    if order.order_type == ORDER_TYPE_LIMIT:
        ctx.valuation_price = order.price
        ctx.price_valid = order.price > 0
    elif order.order_type == ORDER_TYPE_MARKET and ctx.instrument_known \
            and instrument_flags & INSTRUMENT_HAS_PRICE:
        ctx.valuation_price = pt_load_i64(&ctx.instrument.last_price)
        ctx.price_valid = ctx.valuation_price > 0

    if order.quantity > 0:
        if ctx.price_valid:
            ctx.notional_valid = not pt_mul_overflow(order.quantity, ctx.valuation_price,
                                                     &ctx.notional)
        ctx.signed_quantity = order.quantity if order.side == SIDE_BUY else -order.quantity
        ctx.projection_valid = (
            not pt_add_overflow(ctx.position, ctx.signed_quantity, &ctx.projected_position)
            and ctx.projected_position != INT64_MIN and ctx.position != INT64_MIN)
    if not ctx.notional_valid:
        ctx.notional = 0


cdef class DecisionPool:
    """Preallocated decision records, handed out and returned without malloc."""

    def __cinit__(self, int32_t capacity=64):
        if capacity < 1:
            raise ValueError("a decision pool needs at least one record")
        self.records = <DecisionRecord*>malloc(sizeof(DecisionRecord) * capacity)
        self.free_stack = <int32_t*>malloc(sizeof(int32_t) * capacity)
        if self.records == NULL or self.free_stack == NULL:
            raise MemoryError()
        self.capacity = capacity
        cdef int32_t i
        for i in range(capacity):
            self.free_stack[i] = capacity - 1 - i
        self.free_count = capacity

    def __dealloc__(self):
        free(self.records)
        free(self.free_stack)

    cdef DecisionRecord* acquire(self) noexcept nogil:
        if self.free_count == 0:
            return NULL
        self.free_count -= 1
        return &self.records[self.free_stack[self.free_count]]

    cdef void release(self, DecisionRecord* record) noexcept nogil:
        self.free_stack[self.free_count] = <int32_t>(record - self.records)
        self.free_count += 1

    @property
    def available(self):
        return self.free_count


cdef class Engine:
    """The check pipeline bound to one PositionTable.

    ``evaluate`` returns ``(approved, notional, rejections)`` where
    ``rejections`` is a tuple of ``(code, observed, limit)`` triples, codes
    being pretrade.v1 RejectCode numbers. The pure-Python twin in
    ``pretrade.reference`` returns exactly the same shape.
    """

    def __cinit__(self, PositionTable table, int32_t pool_size=64):
        self.table = table
        self.pool = DecisionPool(pool_size)

    @cython.boundscheck(False)
    cdef void run_pipeline(self, DecisionRecord* record) noexcept nogil:
        cdef CheckContext ctx
        cdef int i
        record.rejection_count = 0
        prepare_context(self.table, record, &ctx)
        for i in range(11):
            PIPELINE[i](&ctx, record)
        record.notional = ctx.notional
        record.approved = record.rejection_count == 0

    cdef DecisionRecord* _decide(self, bytes account_id, bytes symbol, int side,
                                 int order_type, int64_t quantity, int64_t price) except NULL:
        cdef DecisionRecord* record = self.pool.acquire()
        if record == NULL:
            raise RuntimeError("decision pool exhausted")
        record.order.quantity = quantity
        record.order.price = price
        record.order.side = side
        record.order.order_type = order_type
        record.order.account_index = self.table.find_account(account_id, len(account_id))
        record.order.instrument_index = self.table.find_instrument(symbol, len(symbol))
        if record.order.account_index != NO_INDEX:
            self.table.lock_account(record.order.account_index)
            self.run_pipeline(record)
            self.table.unlock_account(record.order.account_index)
        else:
            self.run_pipeline(record)
        return record

    cpdef tuple evaluate(self, bytes account_id, bytes symbol, int side, int order_type,
                         int64_t quantity, int64_t price):
        """Run every check on one order; see the class docstring for the result."""
        cdef DecisionRecord* record = self._decide(account_id, symbol, side, order_type,
                                                   quantity, price)
        cdef int32_t shown = min(record.rejection_count, MAX_REJECTIONS)
        cdef list rejections = [None] * shown
        cdef int32_t i
        for i in range(shown):
            rejections[i] = (record.rejections[i].code, record.rejections[i].observed,
                             record.rejections[i].limit)
        result = (bool(record.approved), record.notional, tuple(rejections))
        self.pool.release(record)
        return result

    cpdef int evaluate_rejection_count(self, bytes account_id, bytes symbol, int side,
                                       int order_type, int64_t quantity, int64_t price):
        """Run every check and return only the number of rejections (benchmarks)."""
        cdef DecisionRecord* record = self._decide(account_id, symbol, side, order_type,
                                                   quantity, price)
        cdef int count = record.rejection_count
        self.pool.release(record)
        return count
