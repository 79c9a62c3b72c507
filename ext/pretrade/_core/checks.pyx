"""The pre-trade check pipeline over a PositionTable (see checks.pxd).

Reading guide: prepare_context resolves everything once; each check_* below
is one control; decide_locked runs them, then either reserves the order
(approved) or remembers the rejection. reference.py is the same logic in
plain Python.
"""

cimport cython
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset, strlen
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cimport pretrade._core.layout as L
from pretrade._core.positions cimport capacity_limit
from pretrade._core.positions cimport lapsed
from pretrade._core.positions cimport working_until
from pretrade._core.positions cimport group_hash
from pretrade._core.positions cimport member_slot, next_member

# Limits every order is checked against; a missing one fails closed.
REQUIRED_LIMIT_MASK = (1 << L.LIMIT_REQUIRED_COUNT) - 1
cdef uint32_t _REQUIRED_LIMITS = (1u << L.LIMIT_REQUIRED_COUNT) - 1
cdef int64_t NS_PER_MS = 1_000_000

# Upper bounds of the engine-time histogram's buckets, ns (layout.pxd LATENCY_BOUNDS).
cdef int64_t[L.LATENCY_BOUNDS] LATENCY_BOUNDS_NS = [
    500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 5_000_000, 10_000_000]
#: The same bounds for the exporter (and its test).
LATENCY_BUCKET_BOUNDS_NS = tuple(LATENCY_BOUNDS_NS[i] for i in range(L.LATENCY_BOUNDS))


cdef inline int64_t monotonic_ns() noexcept nogil:
    # CLOCK_MONOTONIC, as time.perf_counter_ns: one vDSO call, no system call.
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1_000_000_000 + now.tv_nsec


_VERDICT_FIELDS = ("approved", "notional", "rejections", "replayed", "auto_halt",
                   "profit_and_loss", "stored")


cdef class Verdict:
    """The engine's answer to one order (Engine.evaluate; the twin returns the same).

    approved: the order may go; notional: quantity x valuation price (1/10,000
    of the currency), 0 when unknown; rejections: a tuple of (code, observed,
    limit) triples in pipeline order (pretrade.v1 RejectCode numbers);
    replayed: the order id was decided before and this is that decision;
    auto_halt: the AutoHalt the caller must apply (0 none, 1 loss limit:
    REDUCE_ONLY, 2 reject storm: HALTED); profit_and_loss: the account's P&L
    when the loss limit tripped; stored: the decision was kept under its
    order id and is not durable yet (the caller writes it to Redis before it
    answers, then marks it durable) -- for a replay too, when the first
    write failed.

    A struct with names, built in C without a tuple: it compares, iterates
    and unpacks like the 7-tuple it replaces, in that field order.
    """

    _fields = _VERDICT_FIELDS

    def __init__(self, bint approved, int64_t notional, tuple rejections, bint replayed,
                 int32_t auto_halt, int64_t profit_and_loss, bint stored):
        self.approved = approved
        self.notional = notional
        self.rejections = rejections
        self.replayed = replayed
        self.auto_halt = auto_halt
        self.profit_and_loss = profit_and_loss
        self.stored = stored

    def astuple(self):
        return (self.approved, self.notional, self.rejections, self.replayed, self.auto_halt,
                self.profit_and_loss, self.stored)

    def __iter__(self):
        return iter(self.astuple())

    def __len__(self):
        return len(_VERDICT_FIELDS)

    def __getitem__(self, index):
        return self.astuple()[index]

    def __eq__(self, other):
        if isinstance(other, Verdict):
            return self.astuple() == (<Verdict>other).astuple()
        return NotImplemented

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return "Verdict(" + ", ".join(f"{name}={value!r}" for name, value in
                                      zip(_VERDICT_FIELDS, self.astuple())) + ")"



# -- HELPERS --

cdef inline void reject(DecisionRecord* out, int32_t code, int64_t observed,
                        int64_t limit) noexcept nogil:
    # Past MAX_REJECTIONS the order is still rejected: approval is decided by
    # the count, which keeps growing; only the detail rows stop.
    if out.rejection_count < L.MAX_REJECTIONS:
        out.rejections[out.rejection_count].code = code
        out.rejections[out.rejection_count].observed = observed
        out.rejections[out.rejection_count].limit = limit
    out.rejection_count += 1


cdef inline int64_t clamp(int128_t value) noexcept nogil:
    # Figures reported on the wire are int64; a 128-bit intermediate is
    # clamped, never wrapped.
    if value > INT64_MAX:
        return INT64_MAX
    if value < INT64_MIN:
        return INT64_MIN
    return <int64_t>value


cdef inline int128_t magnitude(int128_t value) noexcept nogil:
    return -value if value < 0 else value


cdef inline bint effective_limit(const CheckContext* ctx, int kind, int64_t* value) noexcept nogil:
    # A per-symbol override wins over the account-wide default.
    if ctx.overrides != NULL and ctx.overrides.present & (1u << kind):
        value[0] = ctx.overrides.values[kind]
        return True
    if ctx.account != NULL and ctx.account.flags & L.ACCOUNT_HAS_LIMITS \
            and ctx.account.limits.present & (1u << kind):
        value[0] = ctx.account.limits.values[kind]
        return True
    return False


cdef inline bint account_limit(const CheckContext* ctx, int kind, int64_t* value) noexcept nogil:
    # Account-level controls (exposure, velocity, ...) take no per-symbol override.
    if ctx.account != NULL and ctx.account.flags & L.ACCOUNT_HAS_LIMITS \
            and ctx.account.limits.present & (1u << kind):
        value[0] = ctx.account.limits.values[kind]
        return True
    return False


cdef inline int64_t window_ns(const CheckContext* ctx, int kind, int64_t default_ms) noexcept nogil:
    cdef int64_t ms
    if not account_limit(ctx, kind, &ms) or ms <= 0:
        ms = default_ms
    return ms * NS_PER_MS if ms < INT64_MAX // NS_PER_MS else INT64_MAX


cdef inline bint is_buy(const CheckContext* ctx) noexcept nogil:
    return ctx.signed_quantity > 0


cdef inline bint is_reducing(const CheckContext* ctx) noexcept nogil:
    # Shrinks |position| without flipping its sign, counting the orders
    # already working on that side: opposite side, and no larger than what
    # the position has left.
    if ctx.signed_quantity == 0:
        return False
    cdef int128_t quantity = magnitude(<int128_t>ctx.signed_quantity)
    if ctx.position > 0:
        return ctx.signed_quantity < 0 and \
            <int128_t>ctx.position - ctx.working_sell - quantity >= 0
    if ctx.position < 0:
        return ctx.signed_quantity > 0 and \
            <int128_t>ctx.position + ctx.working_buy + quantity <= 0
    return False


cdef inline bint tags_equal(const char* stored, const char* given, Py_ssize_t length) noexcept nogil:
    # stored is NUL-padded to TAG_CAPACITY
    if length >= L.TAG_CAPACITY:
        return False
    return memcmp(stored, given, length) == 0 and stored[length] == 0


cdef inline void memcpy_tag(char* stored, const char* given, Py_ssize_t length) noexcept nogil:
    memset(stored, 0, L.TAG_CAPACITY)
    memcpy(stored, given, length)


cdef inline bint tag_limit(const L.TagLimit* limits, const char* name, Py_ssize_t length,
                           int64_t* value) noexcept nogil:
    cdef int n
    for n in range(L.TAG_LIMIT_SLOTS):
        if limits[n].name[0] != 0 and tags_equal(limits[n].name, name, length):
            value[0] = limits[n].limit
            return True
    return False


# -- ACCOUNT VALUATION --

cdef void scan_account(PositionTable table, CheckContext* ctx) noexcept nogil:
    # One pass over the account's positions at last prices; only run when a
    # control needs it (exposure, buying power, concentration, loss limit).
    # 128-bit sums cannot overflow, so the result does not depend on order.
    cdef int32_t p = ctx.account.first_position
    cdef const L.PositionSlot* slot
    cdef const L.InstrumentRecord* instrument
    cdef int32_t order_issuer = ctx.instrument.issuer_id
    cdef int32_t order_sector = ctx.instrument.sector_id
    cdef int128_t value, exposure, covered
    cdef int64_t last = 0
    cdef bint slots_lost = L.pt_load_i32(&ctx.header.lost_slot_count) != 0
    cdef int32_t lost
    cdef int64_t working_buy, buy_notional, sell_notional, short_notional
    ctx.scan_lost_slot = -1
    while p != L.NO_INDEX:
        slot = &table.positions[p]
        working_buy = slot.working_buy
        buy_notional = slot.working_buy_notional
        sell_notional = slot.working_sell_notional
        short_notional = slot.working_short_notional
        if slot.instrument_index == ctx.slot_instrument and (ctx.group_units != 0
                                                             or ctx.group_notional != 0):
            # an order group's leg: what its group counts already is not counted again
            if ctx.signed_quantity > 0:
                working_buy -= ctx.group_units
                buy_notional -= ctx.group_notional
            else:
                sell_notional -= ctx.group_notional
                if ctx.order_side == L.SIDE_SELL_SHORT:
                    short_notional -= ctx.group_notional
        instrument = &table.instruments[slot.instrument_index]
        if slots_lost:  # the lowest, so the twin reports the same slot
            lost = lost_symbol_slot(ctx.header, instrument)
            if lost >= 0 and (ctx.scan_lost_slot < 0 or lost < ctx.scan_lost_slot):
                ctx.scan_lost_slot = lost
        value = 0
        if slot.quantity != 0:
            if L.pt_load_i32(<const int32_t*>&instrument.flags) & L.INSTRUMENT_HAS_PRICE:
                last = L.pt_load_i64(&instrument.last_price)
                value = <int128_t>slot.quantity * last
                ctx.unrealized += value - slot.cost_basis
            else:
                ctx.scan_unpriced = True
        exposure = magnitude(value) + buy_notional + sell_notional
        ctx.gross += exposure
        if slot.instrument_index == ctx.slot_instrument:
            ctx.order_slot_value = value
            ctx.order_slot_working_buy = buy_notional
            ctx.order_slot_working_sell = sell_notional
        else:
            ctx.initial_margin_bps += margin_of_slot(
                instrument, value, buy_notional, sell_notional)
        ctx.net += value + buy_notional - sell_notional
        ctx.committed += buy_notional + short_notional
        if value < 0:
            # a short commits its value at the last price, but not twice for
            # the units working buys already cover (they are committed)
            covered = -<int128_t>slot.quantity
            if working_buy < covered:
                covered = working_buy
            ctx.committed -= value + covered * last
        if slot.instrument_index == ctx.slot_instrument or (
                order_issuer != 0 and instrument.issuer_id == order_issuer):
            ctx.issuer_exposure += exposure
        if slot.instrument_index == ctx.slot_instrument or (
                order_sector != 0 and instrument.sector_id == order_sector):
            ctx.sector_exposure += exposure
        p = slot.next_in_account
    if (ctx.gross > INT64_MAX or ctx.net > INT64_MAX or ctx.net < INT64_MIN
            or ctx.unrealized > INT64_MAX or ctx.unrealized < INT64_MIN
            or ctx.committed > INT64_MAX):
        ctx.scan_overflow = True


cdef inline int128_t margin_of_side(const L.InstrumentRecord* instrument,
                                    int128_t value) noexcept nogil:
    # A long at the long rate, a short at the short rate (notional x bps).
    if value > 0:
        return value * instrument.initial_margin_long_bps
    return -value * instrument.initial_margin_short_bps


cdef inline int128_t margin_of_slot(const L.InstrumentRecord* instrument, int128_t value,
                                    int128_t working_buy, int128_t working_sell) noexcept nogil:
    # The worst case of one position: every working buy fills, or every
    # working sell does (a sell that reduces a long frees margin, it adds none).
    cdef int128_t long_side = margin_of_side(instrument, value + working_buy)
    cdef int128_t short_side = margin_of_side(instrument, value - working_sell)
    return long_side if long_side > short_side else short_side


cdef bint needs_scan(const CheckContext* ctx) noexcept nogil:
    cdef int64_t unused
    return ctx.account_known and ctx.instrument_known and (
        account_limit(ctx, L.LIMIT_MAX_GROSS_EXPOSURE, &unused)
        or account_limit(ctx, L.LIMIT_MAX_NET_EXPOSURE, &unused)
        or account_limit(ctx, L.LIMIT_MAX_ISSUER_CONCENTRATION_BPS, &unused)
        or account_limit(ctx, L.LIMIT_MAX_SECTOR_CONCENTRATION_BPS, &unused)
        or account_limit(ctx, L.LIMIT_LOSS_LIMIT, &unused)
        or (ctx.account.flags & L.ACCOUNT_HAS_BALANCES) != 0
        or ctx.groups_need_scan)


cdef inline bint valuation_ok(const CheckContext* ctx) noexcept nogil:
    return ctx.scan_needed and not ctx.scan_unpriced and not ctx.scan_overflow


# -- PRE-TRADE CHECKS --
# Each check reads the context and appends at most a few rejections. A check
# whose inputs are missing stays silent: the check that found them missing
# has already rejected the order, so nothing is ever approved unchecked.

cdef void check_sync_live(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Stale: the table is not live, or older than the account snapshot the
    # order asks for (read your own writes: observed = the account's
    # version:{ACC} in the table, limit = the one the order needs).
    # The writer renews the deadline while the canary comes back; a writer
    # that stopped renewing it (killed, frozen) leaves a table that expires.
    # With account ownership on, the account's shard must also be held: a
    # lease this node stopped renewing (Redis unreachable, the process
    # frozen) expires here before it can in Redis, so no two nodes approve
    # for one account (L.TableHeader.shard_live_until_ns).
    cdef int64_t version
    cdef int64_t until = L.pt_load_i64(&ctx.header.sync_live_until_ns)
    if L.pt_load_i32(&ctx.header.sync_live) != 1 or (until != 0 and out.order.now_ns > until) \
            or not shard_held(ctx.header, out.order.shard, out.order.now_ns):
        reject(out, L.REJECT_STALE_DATA, 0, 0)
        return
    if out.order.min_state_version > 0:
        version = L.pt_load_i64(&ctx.account.state_version) if ctx.account != NULL else 0
        if version < out.order.min_state_version:
            reject(out, L.REJECT_STALE_DATA, version, out.order.min_state_version)
            return
    check_slots_served(ctx, out)


# -- LOST SLOTS (a Redis Cluster primary the sync lost) --
# The keys an order's decision reads, by name: the account's own keys share
# the slot of its {ACC} hash tag, its halt key does not; a symbol's three
# keys each have a slot of their own (docs/redis-schema.md). Ids hold no
# braces, so a key's slot is the CRC16 of its whole name.
cdef const char* ACCOUNT_HALT_PREFIX = b"halt:account:"
cdef const char* INSTRUMENT_PREFIX = b"instrument:"
cdef const char* PRICE_PREFIX = b"price:"
cdef const char* SYMBOL_HALT_PREFIX = b"halt:symbol:"


cdef inline uint32_t prefixed_slot(const char* prefix, const char* name,
                                   Py_ssize_t length) noexcept nogil:
    cdef char key[64]
    cdef Py_ssize_t n = strlen(prefix)
    memcpy(key, prefix, n)
    memcpy(key + n, name, length)
    return L.pt_key_slot(key, n + length)


cdef inline bint slot_lost(const L.TableHeader* header, uint32_t slot) noexcept nogil:
    return (<uint64_t>L.pt_load_i64(<const int64_t*>&header.lost_slots[slot >> 6])
            >> (slot & 63)) & 1


cdef int32_t lost_account_slot(const L.TableHeader* header,
                               const L.AccountRecord* account) noexcept nogil:
    # The lost slot of one of the account's keys, or -1.
    cdef Py_ssize_t n = account.id_length
    cdef uint32_t slot = L.pt_key_slot(account.account_id, n)
    if slot_lost(header, slot):
        return slot
    slot = prefixed_slot(ACCOUNT_HALT_PREFIX, account.account_id, n)
    return slot if slot_lost(header, slot) else -1


cdef int32_t lost_symbol_slot(const L.TableHeader* header,
                              const L.InstrumentRecord* instrument) noexcept nogil:
    # The lost slot of one of the symbol's keys, or -1.
    cdef Py_ssize_t n = instrument.id_length
    cdef uint32_t slot = prefixed_slot(INSTRUMENT_PREFIX, instrument.symbol, n)
    if slot_lost(header, slot):
        return slot
    slot = prefixed_slot(PRICE_PREFIX, instrument.symbol, n)
    if slot_lost(header, slot):
        return slot
    slot = prefixed_slot(SYMBOL_HALT_PREFIX, instrument.symbol, n)
    return slot if slot_lost(header, slot) else -1


def account_key_slots(bytes account_id):
    """The Redis Cluster slots of the keys an order of ``account_id`` is decided on:
    its ``{ACC}`` keys', then ``halt:account:<ACC>``'s."""
    if not 0 < len(account_id) <= L.MAX_ID_LENGTH:
        raise ValueError(f"an account id is 1 to {L.MAX_ID_LENGTH} bytes")
    return (L.pt_key_slot(account_id, len(account_id)),
            prefixed_slot(ACCOUNT_HALT_PREFIX, account_id, len(account_id)))


def symbol_key_slots(bytes symbol):
    """The Redis Cluster slots of ``instrument:``, ``price:`` and ``halt:symbol:<SYM>``."""
    if not 0 < len(symbol) <= L.MAX_ID_LENGTH:
        raise ValueError(f"a symbol is 1 to {L.MAX_ID_LENGTH} bytes")
    cdef Py_ssize_t n = len(symbol)
    return (prefixed_slot(INSTRUMENT_PREFIX, symbol, n), prefixed_slot(PRICE_PREFIX, symbol, n),
            prefixed_slot(SYMBOL_HALT_PREFIX, symbol, n))


cdef void check_slots_served(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # While a primary is lost, an order whose account or symbol has a key in
    # one of its slots is STALE_DATA (observed: -HaltScope of whose key it
    # is, limit: the slot; a symbol's keys in the order instrument, price,
    # halt); so is one valued over a holding whose symbol has such a key
    # (the lowest such slot). Orders of every other slot are decided as usual.
    cdef int32_t slot
    if L.pt_load_i32(&ctx.header.lost_slot_count) == 0:
        return
    if ctx.account != NULL:
        slot = lost_account_slot(ctx.header, ctx.account)
        if slot >= 0:
            reject(out, L.REJECT_STALE_DATA, -L.HALT_SCOPE_ACCOUNT, slot)
            return
    if ctx.instrument != NULL:
        slot = lost_symbol_slot(ctx.header, ctx.instrument)
        if slot >= 0:
            reject(out, L.REJECT_STALE_DATA, -L.HALT_SCOPE_SYMBOL, slot)
            return
    if ctx.scan_lost_slot >= 0:
        reject(out, L.REJECT_STALE_DATA, -L.HALT_SCOPE_SYMBOL, ctx.scan_lost_slot)


cdef inline bint shard_held(const L.TableHeader* header, int32_t shard,
                            int64_t now_ns) noexcept nogil:
    # NO_INDEX: ownership is off. The epoch is read first: the writer clears
    # the deadline before the epoch, and sets the epoch before the deadline.
    cdef int64_t until
    if shard == L.NO_INDEX:
        return True
    if L.pt_load_i64(&header.shard_epoch[shard]) == 0:
        return False
    until = L.pt_load_i64(&header.shard_live_until_ns[shard])
    return until != 0 and now_ns <= until


cdef void check_account_known(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # An account the table had no room for is not in it: that is not
    # "unknown". One whose positions, overrides or restored orders did not
    # fit is in it, incomplete: refused too (observed: what did not fit).
    if ctx.account_region_full:
        reject(out, L.REJECT_CAPACITY_EXHAUSTED, L.CAPACITY_ACCOUNTS, ctx.header.max_accounts)
        return
    if ctx.account != NULL and ctx.account.flags & L.ACCOUNT_OVER_CAPACITY:
        reject(out, L.REJECT_CAPACITY_EXHAUSTED, ctx.account.capacity_kind,
               capacity_limit(ctx.header, ctx.account.capacity_kind))
        if not ctx.account_known:
            return
    if not ctx.account_known:
        reject(out, L.REJECT_UNKNOWN_ACCOUNT, 0, 0)
    elif ctx.account.flags & L.ACCOUNT_STATE_INVALID:
        reject(out, L.REJECT_INVALID_STATE, L.HALT_SCOPE_ACCOUNT, 0)


cdef void check_symbol_known(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if ctx.instrument_region_full:
        reject(out, L.REJECT_CAPACITY_EXHAUSTED, L.CAPACITY_INSTRUMENTS,
               ctx.header.max_instruments)
    elif not ctx.instrument_known:
        reject(out, L.REJECT_UNKNOWN_SYMBOL, 0, 0)
    elif L.pt_load_i32(<const int32_t*>&ctx.instrument.flags) & L.INSTRUMENT_STATE_INVALID:
        reject(out, L.REJECT_INVALID_STATE, L.HALT_SCOPE_SYMBOL, 0)


cdef void check_order_id_unused(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if ctx.duplicate_conflict:
        reject(out, L.REJECT_DUPLICATE_ORDER_ID, 0, 0)


cdef void check_time_in_force(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # A GTD order must still have time to work: an expiry at or before the
    # caller's wall clock (or none) is refused (observed: the expiry, limit: now).
    if out.order.time_in_force == L.TIME_IN_FORCE_GTD \
            and out.order.expire_at_ms <= out.order.now_unix_ms:
        reject(out, L.REJECT_ORDER_EXPIRED, out.order.expire_at_ms, out.order.now_unix_ms)


cdef void check_order_group(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # The legs of an order group are of one symbol, venue and counterparty:
    # the venue runs the contingency, and the group counts its worst leg.
    if ctx.group_mismatch != 0:
        reject(out, L.REJECT_GROUP_MISMATCH, ctx.group_mismatch, 0)


cdef void check_quantity_positive(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.quantity <= 0:
        reject(out, L.REJECT_INVALID_QUANTITY, out.order.quantity, 1)


cdef void check_price_usable(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.order_type == L.ORDER_TYPE_LIMIT:
        if out.order.price <= 0:
            reject(out, L.REJECT_INVALID_PRICE, out.order.price, 1)
    elif ctx.instrument_known and not ctx.price_valid:
        reject(out, L.REJECT_PRICE_UNAVAILABLE, 0, 0)


cdef void check_tick_size(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.order_type == L.ORDER_TYPE_LIMIT and out.order.price > 0 and ctx.instrument_known:
        if out.order.price % ctx.instrument.tick_size != 0:
            reject(out, L.REJECT_TICK_SIZE, out.order.price, ctx.instrument.tick_size)


cdef void check_order_size(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t minimum
    if out.order.quantity <= 0:
        return
    # An order that closes or only reduces a position is exempt: a residual
    # smaller than the minimum must stay sellable.
    if effective_limit(ctx, L.LIMIT_MIN_ORDER_QUANTITY, &minimum) \
            and out.order.quantity < minimum and not is_reducing(ctx):
        reject(out, L.REJECT_MIN_ORDER_QUANTITY, out.order.quantity, minimum)
    if ctx.instrument_known and out.order.quantity % ctx.instrument.lot_size != 0:
        reject(out, L.REJECT_LOT_SIZE, out.order.quantity, ctx.instrument.lot_size)


cdef void check_price_collar(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # A LIMIT price more than N basis points from the last price is a fat
    # finger. No last price: the collar cannot be applied, so fail closed.
    cdef int64_t collar_bps
    cdef int64_t last
    cdef int128_t deviation
    if out.order.order_type != L.ORDER_TYPE_LIMIT or out.order.price <= 0 \
            or not ctx.instrument_known:
        return
    if not effective_limit(ctx, L.LIMIT_PRICE_COLLAR_BPS, &collar_bps):
        return
    if not L.pt_load_i32(<const int32_t*>&ctx.instrument.flags) & L.INSTRUMENT_HAS_PRICE:
        reject(out, L.REJECT_PRICE_UNAVAILABLE, 0, 0)
        return
    last = L.pt_load_i64(&ctx.instrument.last_price)
    deviation = magnitude(<int128_t>out.order.price - last) * 10_000
    if deviation > <int128_t>collar_bps * last:
        # observed: the deviation in basis points, rounded up
        reject(out, L.REJECT_PRICE_COLLAR, clamp((deviation + last - 1) // last), collar_bps)


cdef void check_arithmetic_fits(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if out.order.quantity > 0 and (
            (ctx.price_valid and not ctx.notional_valid)
            or (ctx.account_known and not ctx.projection_valid)):
        reject(out, L.REJECT_ARITHMETIC_OVERFLOW, out.order.quantity, ctx.valuation_price)


cdef void check_limits_configured(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    if not ctx.account_known:
        return
    cdef uint32_t missing = 0
    cdef int64_t unused
    cdef int kind
    for kind in range(<int>L.LIMIT_REQUIRED_COUNT):
        if not effective_limit(ctx, kind, &unused):
            missing |= 1u << kind
    if missing:
        # observed = bit mask of the missing LimitKinds
        reject(out, L.REJECT_LIMITS_NOT_CONFIGURED, missing, _REQUIRED_LIMITS)


cdef void check_max_order_quantity(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    if effective_limit(ctx, L.LIMIT_MAX_ORDER_QUANTITY, &limit) and out.order.quantity > limit:
        reject(out, L.REJECT_MAX_ORDER_QUANTITY, out.order.quantity, limit)


cdef void check_max_order_notional(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    if ctx.notional_valid and effective_limit(ctx, L.LIMIT_MAX_ORDER_NOTIONAL, &limit) \
            and ctx.notional > limit:
        reject(out, L.REJECT_MAX_ORDER_NOTIONAL, ctx.notional, limit)


cdef void check_min_order_notional(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # The same exemption as the minimum quantity: an order that closes or
    # only reduces a position must go however small the residual is.
    cdef int64_t minimum
    if ctx.notional_valid and out.order.quantity > 0 \
            and effective_limit(ctx, L.LIMIT_MIN_ORDER_NOTIONAL, &minimum) \
            and ctx.notional < minimum and not is_reducing(ctx):
        reject(out, L.REJECT_MIN_ORDER_NOTIONAL, ctx.notional, minimum)


cdef void check_position_limits(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Worst case, counting every working order on the order's side: 100
    # orders sent before any fill cannot together pass a limit. A buy can
    # only grow the long side and a sell the short side, so an order that
    # reduces always passes, even when a lowered limit is already exceeded.
    if not ctx.projection_valid or out.order.quantity <= 0:
        return
    cdef int64_t limit
    cdef int128_t long_after, short_after
    if is_buy(ctx):
        long_after = <int128_t>ctx.position + ctx.working_buy + out.order.quantity
        if effective_limit(ctx, L.LIMIT_MAX_NET_POSITION, &limit) and long_after > limit:
            reject(out, L.REJECT_MAX_NET_POSITION, clamp(long_after), limit)
        if effective_limit(ctx, L.LIMIT_MAX_LONG_POSITION, &limit) and long_after > limit:
            reject(out, L.REJECT_MAX_LONG_POSITION, clamp(long_after), limit)
    else:
        short_after = -(<int128_t>ctx.position - ctx.working_sell - out.order.quantity)
        if effective_limit(ctx, L.LIMIT_MAX_NET_POSITION, &limit) and short_after > limit:
            reject(out, L.REJECT_MAX_NET_POSITION, clamp(short_after), limit)
        if effective_limit(ctx, L.LIMIT_MAX_SHORT_POSITION, &limit) and short_after > limit:
            reject(out, L.REJECT_MAX_SHORT_POSITION, clamp(short_after), limit)


cdef void check_short_sale(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # A sell that would take the position (less working sells) below zero
    # must be marked SELL_SHORT; a short sale needs a symbol off the
    # restricted list and a locate for its whole quantity.
    cdef int128_t left_after
    cdef int64_t available
    if out.order.quantity <= 0 or not ctx.instrument_known:
        return
    if out.order.side == L.SIDE_SELL:
        left_after = <int128_t>ctx.position - ctx.working_sell - out.order.quantity
        if left_after < 0:
            reject(out, L.REJECT_SHORT_SALE_NOT_MARKED, clamp(left_after), 0)
    elif out.order.side == L.SIDE_SELL_SHORT:
        if L.pt_load_i32(<const int32_t*>&ctx.instrument.flags) & L.INSTRUMENT_SHORT_RESTRICTED:
            reject(out, L.REJECT_SHORT_SALE_RESTRICTED, 0, 0)
        available = 0
        if ctx.slot != NULL and ctx.slot.located > ctx.slot.locate_used:
            available = ctx.slot.located - ctx.slot.locate_used
        if out.order.quantity > available:
            reject(out, L.REJECT_NO_LOCATE, out.order.quantity, available)


cdef void check_account_valuation(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Exposure, buying power, concentration and loss limits value the whole
    # account at last prices; a holding without a price fails them closed.
    if not ctx.scan_needed:
        return
    if ctx.scan_unpriced:
        reject(out, L.REJECT_PRICE_UNAVAILABLE, 1, 0)
    elif ctx.scan_overflow:
        reject(out, L.REJECT_ARITHMETIC_OVERFLOW, 0, 0)


cdef void check_exposure(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Gross counts the order whatever its side; net moves with its side and
    # is only held against an order that makes |net| larger.
    cdef int64_t limit
    cdef int128_t gross_after, net_after
    if not valuation_ok(ctx) or not ctx.notional_valid:
        return
    gross_after = ctx.gross + ctx.notional
    if account_limit(ctx, L.LIMIT_MAX_GROSS_EXPOSURE, &limit) and gross_after > limit:
        reject(out, L.REJECT_MAX_GROSS_EXPOSURE, clamp(gross_after), limit)
    net_after = ctx.net + ctx.notional if is_buy(ctx) else ctx.net - ctx.notional
    if account_limit(ctx, L.LIMIT_MAX_NET_EXPOSURE, &limit) and magnitude(net_after) > limit \
            and magnitude(net_after) > magnitude(ctx.net):
        reject(out, L.REJECT_MAX_NET_EXPOSURE, clamp(magnitude(net_after)), limit)


cdef void check_buying_power(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # available = cash + credit line - (working buys + short positions at
    # last + working short sales). Buys and short sales must fit in it.
    cdef int128_t available
    if not valuation_ok(ctx) or not ctx.notional_valid \
            or not ctx.account.flags & L.ACCOUNT_HAS_BALANCES:
        return
    if out.order.side == L.SIDE_SELL:
        return
    available = <int128_t>ctx.account.cash + ctx.account.credit_line - ctx.committed
    # The part of a buy that covers a short (one not covered by working buys
    # yet) is not held, and releases what that part of the short commits (its
    # value at the last price): the order is held to the net change.
    # An order that only covers holds nothing: it commits no more than before,
    # however little is available.
    cdef int128_t held = ctx.notional
    cdef int128_t uncovered = -(<int128_t>ctx.position + ctx.working_buy)
    cdef int128_t cover = 0
    if ctx.signed_quantity > 0 and out.order.quantity > 0 and uncovered > 0 \
            and L.pt_load_i32(<const int32_t*>&ctx.instrument.flags) & L.INSTRUMENT_HAS_PRICE:
        cover = uncovered if uncovered < out.order.quantity else out.order.quantity
        held -= cover * (<int128_t>ctx.notional / out.order.quantity)
        available += cover * <int128_t>L.pt_load_i64(&ctx.instrument.last_price)
    if held > available and (cover == 0 or held > 0):
        reject(out, L.REJECT_BUYING_POWER, <int64_t>held, clamp(available))


cdef void check_margin(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Initial margin of the positions, the working orders and this order
    # against equity = cash + credit line + realized + unrealized P&L. An
    # order that only reduces frees margin and always goes; an account whose
    # instruments carry no margin rates requires none and is not checked.
    cdef int128_t required, equity
    if not valuation_ok(ctx) or not ctx.notional_valid \
            or not ctx.account.flags & L.ACCOUNT_HAS_BALANCES or is_reducing(ctx):
        return
    if is_buy(ctx):
        required = margin_of_slot(ctx.instrument, ctx.order_slot_value,
                                  ctx.order_slot_working_buy + ctx.notional,
                                  ctx.order_slot_working_sell)
    else:
        required = margin_of_slot(ctx.instrument, ctx.order_slot_value,
                                  ctx.order_slot_working_buy,
                                  ctx.order_slot_working_sell + ctx.notional)
    required += ctx.initial_margin_bps
    if required == 0:
        return
    equity = (<int128_t>ctx.account.cash + ctx.account.credit_line + ctx.account.realized_pnl
              + ctx.unrealized)
    if required > equity * 10_000:
        # observed: the margin required, rounded up; limit: the equity
        reject(out, L.REJECT_MARGIN_SHORTFALL, clamp((required + 9_999) // 10_000),
               clamp(equity))


cdef int32_t first_in_window(const L.RateRing* ring, int64_t since_ns) noexcept nogil:
    # Logical index (0 = oldest) of the first remembered order after since_ns.
    cdef int32_t lo = 0, hi = ring.count, mid
    cdef int32_t oldest = ring.head - ring.count + L.RATE_RING_CAPACITY
    while lo < hi:
        mid = (lo + hi) // 2
        if ring.entries[(oldest + mid) % L.RATE_RING_CAPACITY].at_ns > since_ns:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline bint limit_in(const L.LimitSet* limits, int kind, int64_t* value) noexcept nogil:
    if limits.present & (1u << kind):
        value[0] = limits.values[kind]
        return True
    return False


cdef inline int64_t ring_window_ns(const L.LimitSet* limits, int kind,
                                   int64_t default_ms) noexcept nogil:
    cdef int64_t ms
    if not limit_in(limits, kind, &ms) or ms <= 0:
        ms = default_ms
    return ms * NS_PER_MS if ms < INT64_MAX // NS_PER_MS else INT64_MAX


cdef void check_ring(const CheckContext* ctx, DecisionRecord* out, const L.RateRing* ring,
                     const L.LimitSet* limits, int32_t order_code,
                     int32_t notional_code) noexcept nogil:
    # Sliding windows over a ring of approved orders (an account's, or a
    # group's): their count and their notional, with this order.
    cdef int64_t limit, since
    cdef int32_t first, count
    cdef int64_t newest_total, before_total
    if limit_in(limits, L.LIMIT_MAX_ORDERS_PER_WINDOW, &limit):
        since = out.order.now_ns - ring_window_ns(limits, L.LIMIT_ORDER_WINDOW_MS,
                                                  L.DEFAULT_ORDER_WINDOW_MS)
        count = ring.count - first_in_window(ring, since)
        if count + 1 > limit:
            reject(out, order_code, count + 1, limit)
    if limit_in(limits, L.LIMIT_MAX_NOTIONAL_PER_WINDOW, &limit) and ctx.notional_valid:
        since = out.order.now_ns - ring_window_ns(limits, L.LIMIT_NOTIONAL_WINDOW_MS,
                                                  L.DEFAULT_NOTIONAL_WINDOW_MS)
        first = first_in_window(ring, since)
        if first == 0 and ring.count == L.RATE_RING_CAPACITY:
            # The ring forgot orders still inside the window: fail closed.
            reject(out, notional_code, INT64_MAX, limit)
            return
        # Entries hold the running total including their own order, so the
        # window's notional is the newest total minus the total just before it.
        newest_total = ring.cumulative_notional
        if first == ring.count:
            before_total = newest_total
        elif first > 0:
            before_total = ring.entries[(ring.head - ring.count + first - 1
                                         + L.RATE_RING_CAPACITY) % L.RATE_RING_CAPACITY
                                        ].cumulative_notional
        else:
            before_total = 0
        if <int128_t>newest_total - before_total + ctx.notional > limit:
            reject(out, notional_code,
                   clamp(<int128_t>newest_total - before_total + ctx.notional), limit)


cdef void check_velocity(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Sliding windows over the account's approved orders: count and notional.
    if ctx.activity == NULL or not ctx.account_known or out.order.quantity <= 0 \
            or not ctx.account.flags & L.ACCOUNT_HAS_LIMITS:
        return
    check_ring(ctx, out, &ctx.activity.rate, &ctx.account.limits, L.REJECT_ORDER_RATE,
               L.REJECT_NOTIONAL_RATE)


cdef inline void ring_push(L.RateRing* ring, int64_t at, int64_t notional) noexcept nogil:
    # Remember an approved order; timestamps stay non-decreasing, so the
    # window search works.
    cdef L.RateEntry* entry
    if ring.count > 0:
        entry = &ring.entries[(ring.head - 1 + L.RATE_RING_CAPACITY) % L.RATE_RING_CAPACITY]
        if at < entry.at_ns:
            at = entry.at_ns
    ring.cumulative_notional += notional
    entry = &ring.entries[ring.head]
    entry.at_ns = at
    entry.cumulative_notional = ring.cumulative_notional
    ring.head = (ring.head + 1) % L.RATE_RING_CAPACITY
    if ring.count < L.RATE_RING_CAPACITY:
        ring.count += 1


cdef void check_max_working_orders(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    if ctx.account_known and account_limit(ctx, L.LIMIT_MAX_WORKING_ORDERS, &limit) \
            and ctx.account.working_order_count + 1 > limit:
        reject(out, L.REJECT_MAX_WORKING_ORDERS, ctx.account.working_order_count + 1, limit)


cdef void check_concentration(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Issuer (or sector) exposure after the order, as a share of gross
    # exposure after it, in basis points; only once gross reaches a floor.
    cdef int64_t bps, floor
    cdef int128_t gross_after, share_after
    if not valuation_ok(ctx) or not ctx.notional_valid:
        return
    gross_after = ctx.gross + ctx.notional
    if not account_limit(ctx, L.LIMIT_CONCENTRATION_MIN_GROSS, &floor):
        floor = 0
    if gross_after <= 0 or gross_after < floor:
        return
    if account_limit(ctx, L.LIMIT_MAX_ISSUER_CONCENTRATION_BPS, &bps):
        share_after = ctx.issuer_exposure + ctx.notional
        if share_after * 10_000 > <int128_t>bps * gross_after:
            reject(out, L.REJECT_ISSUER_CONCENTRATION,
                   clamp((share_after * 10_000 + gross_after - 1) // gross_after), bps)
    if account_limit(ctx, L.LIMIT_MAX_SECTOR_CONCENTRATION_BPS, &bps):
        share_after = ctx.sector_exposure + ctx.notional
        if share_after * 10_000 > <int128_t>bps * gross_after:
            reject(out, L.REJECT_SECTOR_CONCENTRATION,
                   clamp((share_after * 10_000 + gross_after - 1) // gross_after), bps)


cdef int128_t working_at(const CheckContext* ctx, const char* name, Py_ssize_t length,
                         bint by_venue) noexcept nogil:
    # Notional of the account's working orders routed to one venue (or
    # counterparty): what each counts (remaining units at the price it was
    # valued at; an order group's legs, their worst). The
    # account keeps running totals; only after more names than it has slots
    # were working at once does this walk the working orders.
    cdef const L.TagLimit* totals = &ctx.account.counterparty_working[0]
    if by_venue:
        totals = &ctx.account.venue_working[0]
    cdef int64_t found
    if tag_limit(totals, name, length, &found):
        return found
    if not ctx.account.tag_overflow & (1u if by_venue else 2u):
        return 0
    cdef int128_t total = 0
    cdef int32_t o = ctx.account.first_working_order
    cdef const L.OrderRecord* order
    cdef const char* tag
    while o != L.NO_INDEX:
        order = &ctx.orders[o]
        tag = <const char*>order.venue if by_venue else <const char*>order.counterparty
        if tags_equal(tag, name, length):
            total += order.counted_notional
        o = order.next_working
    return total


cdef void check_venue_exposure(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    cdef int64_t limit
    cdef int128_t after
    if not ctx.account_known or not ctx.notional_valid:
        return
    if out.order.venue_length > 0 and (
            tag_limit(ctx.account.venue_limits, out.order.venue, out.order.venue_length, &limit)
            or account_limit(ctx, L.LIMIT_MAX_VENUE_EXPOSURE, &limit)):
        after = working_at(ctx, out.order.venue, out.order.venue_length, True) + ctx.notional \
            - ctx.group_notional
        if after > limit:
            reject(out, L.REJECT_VENUE_EXPOSURE, clamp(after), limit)
    if out.order.counterparty_length > 0 and (
            tag_limit(ctx.account.counterparty_limits, out.order.counterparty,
                      out.order.counterparty_length, &limit)
            or account_limit(ctx, L.LIMIT_MAX_COUNTERPARTY_EXPOSURE, &limit)):
        after = working_at(ctx, out.order.counterparty, out.order.counterparty_length,
                           False) + ctx.notional - ctx.group_notional
        if after > limit:
            reject(out, L.REJECT_COUNTERPARTY_EXPOSURE, clamp(after), limit)


cdef void check_loss_limit(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # Below the loss limit only reducing orders pass; the engine also asks
    # for the account to be moved to REDUCE_ONLY (decide_locked).
    cdef int64_t loss_limit
    cdef int128_t pnl
    if not valuation_ok(ctx) or not account_limit(ctx, L.LIMIT_LOSS_LIMIT, &loss_limit):
        return
    pnl = ctx.unrealized + ctx.account.realized_pnl
    if pnl < -<int128_t>loss_limit and not is_reducing(ctx):
        reject(out, L.REJECT_LOSS_LIMIT, clamp(pnl), -loss_limit)


cdef void check_account_groups(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    # The limits of the account's groups (a desk, a firm), held against the
    # group summed over its members (resolve_groups, sum_groups), in the
    # account's group order. A group that cannot be checked fails closed
    # (GROUP_UNAVAILABLE, observed: why, limit: its position in the list).
    cdef int32_t k
    cdef const GroupSums* group
    cdef const L.LimitSet* limits
    cdef int64_t limit
    cdef int128_t after, net_after
    if not ctx.account_known:
        return
    if ctx.groups_invalid:
        reject(out, L.REJECT_GROUP_UNAVAILABLE, L.GROUP_TREE_INVALID, 0)
        return
    for k in range(ctx.group_count):
        group = &ctx.group_sums[k]
        if group.unavailable != 0:
            reject(out, L.REJECT_GROUP_UNAVAILABLE, group.unavailable, k + 1)
            continue
        if out.order.quantity <= 0 or not ctx.instrument_known:
            continue
        limits = &group.group.limits
        if ctx.projection_valid:
            if is_buy(ctx):
                after = group.position + group.working_buy + out.order.quantity
                if limit_in(limits, L.LIMIT_MAX_LONG_POSITION, &limit) and after > limit:
                    reject(out, L.REJECT_GROUP_MAX_LONG_POSITION, clamp(after), limit)
            else:
                after = -(group.position - group.working_sell - out.order.quantity)
                if limit_in(limits, L.LIMIT_MAX_SHORT_POSITION, &limit) and after > limit:
                    reject(out, L.REJECT_GROUP_MAX_SHORT_POSITION, clamp(after), limit)
        if group.valued:
            if group.unpriced:
                reject(out, L.REJECT_PRICE_UNAVAILABLE, 2, 0)
            elif group.overflow:
                reject(out, L.REJECT_ARITHMETIC_OVERFLOW, 2, 0)
            else:
                if ctx.notional_valid:
                    after = group.gross + ctx.notional
                    if limit_in(limits, L.LIMIT_MAX_GROSS_EXPOSURE, &limit) and after > limit:
                        reject(out, L.REJECT_GROUP_MAX_GROSS_EXPOSURE, clamp(after), limit)
                    net_after = group.net + ctx.notional if is_buy(ctx) \
                        else group.net - ctx.notional
                    if limit_in(limits, L.LIMIT_MAX_NET_EXPOSURE, &limit) \
                            and magnitude(net_after) > limit \
                            and magnitude(net_after) > magnitude(group.net):
                        reject(out, L.REJECT_GROUP_MAX_NET_EXPOSURE, clamp(magnitude(net_after)),
                               limit)
                if limit_in(limits, L.LIMIT_LOSS_LIMIT, &limit) \
                        and group.pnl < -<int128_t>limit and not is_reducing(ctx):
                    reject(out, L.REJECT_GROUP_LOSS_LIMIT, clamp(group.pnl), -limit)
        check_ring(ctx, out, &group.group.rate, limits, L.REJECT_GROUP_ORDER_RATE,
                   L.REJECT_GROUP_NOTIONAL_RATE)


cdef inline void check_one_halt(const CheckContext* ctx, DecisionRecord* out, int32_t mode,
                                int32_t scope, int32_t halted_code) noexcept nogil:
    if mode == L.HALT_MODE_HALTED:
        reject(out, halted_code, scope, 0)
    elif mode == L.HALT_MODE_REDUCE_ONLY and not is_reducing(ctx):
        # observed = the HaltScope that is reduce-only
        reject(out, L.REJECT_REDUCE_ONLY, scope, 0)


cdef void check_halts(const CheckContext* ctx, DecisionRecord* out) noexcept nogil:
    check_one_halt(ctx, out, L.pt_load_i32(&ctx.header.global_halt), L.HALT_SCOPE_GLOBAL,
                   L.REJECT_GLOBAL_HALT)
    if ctx.account != NULL:
        check_one_halt(ctx, out, L.pt_load_i32(&ctx.account.halt_mode), L.HALT_SCOPE_ACCOUNT,
                       L.REJECT_ACCOUNT_HALT)
    if ctx.instrument != NULL:
        check_one_halt(ctx, out, L.pt_load_i32(&ctx.instrument.halt_mode), L.HALT_SCOPE_SYMBOL,
                       L.REJECT_SYMBOL_HALT)


# The pipeline, in order. Order matters only for the order of rejections.
cdef enum:
    CHECK_COUNT = 29
cdef check_fn[CHECK_COUNT] PIPELINE = [
    check_sync_live,
    check_account_known,
    check_symbol_known,
    check_order_id_unused,
    check_time_in_force,
    check_order_group,
    check_quantity_positive,
    check_price_usable,
    check_tick_size,
    check_order_size,
    check_price_collar,
    check_arithmetic_fits,
    check_limits_configured,
    check_max_order_quantity,
    check_max_order_notional,
    check_min_order_notional,
    check_position_limits,
    check_short_sale,
    check_account_valuation,
    check_exposure,
    check_buying_power,
    check_margin,
    check_velocity,
    check_max_working_orders,
    check_concentration,
    check_venue_exposure,
    check_loss_limit,
    check_account_groups,
    check_halts,
]
CHECK_NAMES = (
    "sync_live", "account_known", "symbol_known", "order_id_unused", "time_in_force",
    "order_group", "quantity_positive",
    "price_usable", "tick_size", "order_size", "price_collar", "arithmetic_fits",
    "limits_configured", "max_order_quantity", "max_order_notional", "min_order_notional",
    "position_limits",
    "short_sale", "account_valuation", "exposure", "buying_power", "margin", "velocity",
    "max_working_orders", "concentration", "venue_exposure", "loss_limit", "account_groups",
    "halts",
)


# -- CONTEXT --

cdef inline int32_t account_shard(const L.TableHeader* header, const char* account_id,
                                  Py_ssize_t length) noexcept nogil:
    # The shard of the account's Redis Cluster slot; NO_INDEX while ownership is off.
    cdef uint32_t count = <uint32_t>L.pt_load_i32(<const int32_t*>&header.shard_count)
    if count == 0:
        return L.NO_INDEX
    return L.pt_shard_of_slot(L.pt_key_slot(account_id, length), count)


cdef inline bint ids_equal(const char* stored, const char* given, Py_ssize_t length) noexcept nogil:
    # stored is NUL-padded to ORDER_ID_CAPACITY
    if length >= L.ORDER_ID_CAPACITY:
        return False
    return memcmp(stored, given, length) == 0 and stored[length] == 0


cdef inline Py_ssize_t id_length(const char* stored) noexcept nogil:
    # A stored group id is NUL-padded to ORDER_ID_CAPACITY
    cdef Py_ssize_t n = 0
    while n < L.MAX_ORDER_ID_LENGTH and stored[n] != 0:
        n += 1
    return n


cdef void find_group(PositionTable table, const OrderInput* order, CheckContext* ctx) noexcept nogil:
    # An order group's leg: what the group's working legs of its side count
    # (the group's worst so far), up to the order's own units and notional,
    # and whether a leg is of another symbol, venue or counterparty. The
    # legs are found on the account's list of working group legs: O(those),
    # paid by grouped orders only.
    cdef int32_t o = ctx.account.first_grouped
    cdef const L.OrderRecord* leg
    cdef int64_t units = 0, notional = 0
    cdef int32_t mismatch
    cdef uint32_t wanted = group_hash(order.group, order.group_length)
    while o != L.NO_INDEX:
        leg = &table.orders[o]
        if leg.group_hash == wanted and ids_equal(leg.group, order.group, order.group_length):
            # what differs first: symbol, venue, counterparty (the least over the legs)
            mismatch = 0
            if leg.instrument_index != order.instrument_index:
                mismatch = 1
            elif not (order.venue_length < L.TAG_CAPACITY
                      and tags_equal(leg.venue, order.venue, order.venue_length)):
                mismatch = 2
            elif not (order.counterparty_length < L.TAG_CAPACITY
                      and tags_equal(leg.counterparty, order.counterparty,
                                     order.counterparty_length)):
                mismatch = 3
            if mismatch != 0 and (ctx.group_mismatch == 0 or mismatch < ctx.group_mismatch):
                ctx.group_mismatch = mismatch
            elif mismatch == 0 and leg.side == order.side:
                units += leg.counted
                notional += leg.counted_notional
        o = leg.next_grouped
    if ctx.group_mismatch != 0 or order.quantity <= 0:
        return
    ctx.group_units = units if units < order.quantity else order.quantity
    if ctx.notional_valid:
        ctx.group_notional = notional if notional < ctx.notional else ctx.notional
    if order.side == L.SIDE_BUY:
        ctx.working_buy -= ctx.group_units
    else:
        ctx.working_sell -= ctx.group_units


# -- ACCOUNT GROUPS --
# The caller holds the locks of the account's groups (lock_account), so
# every member's records stand still while they are summed.

cdef uint32_t _VALUED_LIMITS = ((1u << L.LIMIT_MAX_GROSS_EXPOSURE)
                                | (1u << L.LIMIT_MAX_NET_EXPOSURE) | (1u << L.LIMIT_LOSS_LIMIT))
cdef uint32_t _POSITION_LIMITS = (1u << L.LIMIT_MAX_LONG_POSITION) \
    | (1u << L.LIMIT_MAX_SHORT_POSITION)
cdef const char* GROUP_PREFIX = b"group:"


cdef int32_t group_unavailable(PositionTable table, const DecisionRecord* record,
                               const L.GroupRecord* group) noexcept nogil:
    # Why a configured group cannot be checked (the smallest reason), or 0.
    cdef const L.TableHeader* header = table.header
    cdef bint lost = L.pt_load_i32(&header.lost_slot_count) != 0
    cdef bint sharded = L.pt_load_i32(<const int32_t*>&header.shard_count) != 0
    cdef int32_t reason = 0, m = group.first_member, k
    cdef const L.AccountRecord* member
    if lost and slot_lost(header, prefixed_slot(GROUP_PREFIX, group.group_id,
                                                group.id_length)):
        reason = L.GROUP_SLOT_LOST
    while m != L.NO_INDEX:
        member = &table.accounts[m]
        if sharded and not shard_held(header, account_shard(header, member.account_id,
                                                            member.id_length),
                                      record.order.now_ns):
            return L.GROUP_SHARD_NOT_HELD
        if lost and lost_account_slot(header, member) >= 0:
            reason = L.GROUP_SLOT_LOST
        elif reason == 0 and member.flags & (L.ACCOUNT_STATE_INVALID | L.ACCOUNT_OVER_CAPACITY):
            reason = L.GROUP_MEMBER_INVALID
        k = member_slot(member, <int32_t>(group - table.groups))
        if k < 0:  # a member list that does not hold together: fail closed
            return L.GROUP_MEMBER_INVALID
        m = member.next_member[k]
    return reason


cdef void resolve_groups(PositionTable table, const DecisionRecord* record,
                         CheckContext* ctx) noexcept nogil:
    # The account's groups: which can be checked, and which need its holdings valued.
    cdef int32_t k
    cdef GroupSums* sums
    cdef const L.GroupRecord* group
    if ctx.account.flags & L.ACCOUNT_GROUPS_INVALID:
        ctx.groups_invalid = True
        return
    ctx.group_count = ctx.account.group_count
    for k in range(ctx.group_count):
        sums = &ctx.group_sums[k]
        memset(sums, 0, sizeof(GroupSums))
        group = &table.groups[ctx.account.groups[k]]
        sums.group = group
        if not group.flags & L.GROUP_KNOWN:
            sums.unavailable = L.GROUP_NOT_CONFIGURED
        elif group.flags & L.GROUP_STATE_INVALID:
            sums.unavailable = L.GROUP_HASH_INVALID
        else:
            sums.unavailable = group_unavailable(table, record, group)
        if sums.unavailable == 0 and group.limits.present & _VALUED_LIMITS:
            sums.valued = True
            ctx.groups_need_scan = True


cdef void value_member(PositionTable table, const L.AccountRecord* member,
                       GroupSums* sums) noexcept nogil:
    # A member's holdings at last prices and working notionals, as scan_account
    # sums them. A holding whose symbol has a key in a lost slot has a price
    # the table cannot vouch for: the group cannot be checked (as the
    # account's own such holding makes its order STALE_DATA).
    cdef int32_t p = member.first_position
    cdef const L.PositionSlot* slot
    cdef const L.InstrumentRecord* instrument
    cdef int128_t value
    cdef bint slots_lost = L.pt_load_i32(&table.header.lost_slot_count) != 0
    while p != L.NO_INDEX:
        slot = &table.positions[p]
        instrument = &table.instruments[slot.instrument_index]
        if slots_lost and lost_symbol_slot(table.header, instrument) >= 0:
            sums.unavailable = L.GROUP_SLOT_LOST
        value = 0
        if slot.quantity != 0:
            if L.pt_load_i32(<const int32_t*>&instrument.flags) & L.INSTRUMENT_HAS_PRICE:
                value = <int128_t>slot.quantity * L.pt_load_i64(&instrument.last_price)
                sums.pnl += value - slot.cost_basis
            else:
                sums.unpriced = True
        sums.gross += magnitude(value) + slot.working_buy_notional + slot.working_sell_notional
        sums.net += value + slot.working_buy_notional - slot.working_sell_notional
        p = slot.next_in_account
    sums.pnl += member.realized_pnl


cdef inline bint outside_int64(int128_t value) noexcept nogil:
    return value > INT64_MAX or value < INT64_MIN


cdef void sum_groups(PositionTable table, const DecisionRecord* record,
                     CheckContext* ctx) noexcept nogil:
    # Each group that can be checked, summed over its members: the order's
    # account with its own figures (an order group's legs counted once, as
    # its checks count them), the others from their records.
    cdef int32_t k, m, p, g
    cdef GroupSums* sums
    cdef const L.AccountRecord* member
    cdef const L.PositionSlot* slot
    cdef bint positions
    for k in range(ctx.group_count):
        sums = &ctx.group_sums[k]
        if sums.unavailable != 0:
            continue
        positions = (sums.group.limits.present & _POSITION_LIMITS) != 0
        g = ctx.account.groups[k]
        m = sums.group.first_member
        while m != L.NO_INDEX:
            member = &table.accounts[m]
            if m == record.order.account_index:
                if positions:
                    sums.position += ctx.position
                    sums.working_buy += ctx.working_buy
                    sums.working_sell += ctx.working_sell
                if sums.valued:
                    sums.gross += ctx.gross
                    sums.net += ctx.net
                    sums.pnl += ctx.unrealized + ctx.account.realized_pnl
                    sums.unpriced = sums.unpriced or ctx.scan_unpriced
            else:
                if positions:
                    p = table.find_position(m, record.order.instrument_index)
                    if p != L.NO_INDEX:
                        slot = &table.positions[p]
                        sums.position += slot.quantity
                        sums.working_buy += slot.working_buy
                        sums.working_sell += slot.working_sell
                if sums.valued:
                    value_member(table, member, sums)
            m = next_member(table.accounts, m, g)
        sums.overflow = sums.valued and (outside_int64(sums.gross) or outside_int64(sums.net)
                                         or outside_int64(sums.pnl))


cdef void prepare_context(PositionTable table, DecisionRecord* record,
                          CheckContext* ctx) noexcept nogil:
    cdef const OrderInput* order = &record.order
    cdef int32_t position_index
    cdef int32_t override_index
    cdef int32_t instrument_flags = 0
    memset(ctx, 0, <size_t>(<char*>&ctx.group_sums[0] - <char*>ctx))
    ctx.scan_lost_slot = -1
    ctx.header = table.header
    ctx.orders = table.orders
    ctx.slot_instrument = order.instrument_index
    if order.account_index != L.NO_INDEX:
        ctx.account = &table.accounts[order.account_index]
        ctx.activity = &table.activity[order.account_index]
        ctx.account_known = (ctx.account.flags & L.ACCOUNT_KNOWN) != 0
    elif 0 < order.account_id_length <= L.MAX_ID_LENGTH and \
            <uint32_t>L.pt_load_i32(&table.header.account_count) >= table.header.max_accounts:
        ctx.account_region_full = True
    if order.instrument_index == L.NO_INDEX and 0 < order.symbol_length <= L.MAX_ID_LENGTH and \
            <uint32_t>L.pt_load_i32(&table.header.instrument_count) \
            >= table.header.max_instruments:
        ctx.instrument_region_full = True
    if order.instrument_index != L.NO_INDEX:
        ctx.instrument = &table.instruments[order.instrument_index]
        instrument_flags = L.pt_load_i32(<const int32_t*>&ctx.instrument.flags)
        ctx.instrument_known = (instrument_flags & L.INSTRUMENT_KNOWN) != 0
    if ctx.account != NULL and ctx.instrument != NULL:
        position_index = table.find_position(order.account_index, order.instrument_index)
        if position_index != L.NO_INDEX:
            ctx.slot = &table.positions[position_index]
            ctx.position = ctx.slot.quantity
            ctx.working_buy = ctx.slot.working_buy
            ctx.working_sell = ctx.slot.working_sell
            override_index = L.pt_load_i32(&table.positions[position_index].override_index)
            if override_index != L.NO_INDEX:
                ctx.overrides = &table.overrides[override_index].limits

    if order.order_type == L.ORDER_TYPE_LIMIT:
        ctx.valuation_price = order.price
        ctx.price_valid = order.price > 0
    elif order.order_type == L.ORDER_TYPE_MARKET and ctx.instrument_known \
            and instrument_flags & L.INSTRUMENT_HAS_PRICE:
        ctx.valuation_price = L.pt_load_i64(&ctx.instrument.last_price)
        ctx.price_valid = ctx.valuation_price > 0

    if order.quantity > 0:
        if ctx.price_valid:
            ctx.notional_valid = not L.pt_mul_overflow(order.quantity, ctx.valuation_price,
                                                     &ctx.notional)
        ctx.signed_quantity = order.quantity if order.side == L.SIDE_BUY else -order.quantity
        ctx.projection_valid = (
            not L.pt_add_overflow(ctx.position, ctx.signed_quantity, &ctx.projected_position)
            and ctx.projected_position != INT64_MIN and ctx.position != INT64_MIN)
    if not ctx.notional_valid:
        ctx.notional = 0
    ctx.order_side = order.side
    if order.group_length > 0 and ctx.account != NULL:
        find_group(table, order, ctx)
    if ctx.account_known and (ctx.account.group_count > 0
                              or ctx.account.flags & L.ACCOUNT_GROUPS_INVALID):
        resolve_groups(table, record, ctx)
    if needs_scan(ctx):
        ctx.scan_needed = True
        scan_account(table, ctx)
    if ctx.group_count > 0 and ctx.instrument_known:
        sum_groups(table, record, ctx)


cdef inline bint same_order(const L.OrderRecord* stored, const DecisionRecord* record) noexcept nogil:
    # A re-sent order is the same order when every field the checks read
    # matches (a replacement's id is never an order's: see same_replace).
    return (stored.replaces[0] == 0
            and stored.instrument_index == record.order.instrument_index
            and stored.side == record.order.side
            and stored.order_type == record.order.order_type
            and stored.quantity == record.order.quantity
            and stored.price == record.order.price
            and stored.time_in_force == record.order.time_in_force
            and stored.expire_at_ms == record.order.expire_at_ms
            and tags_equal(stored.venue, record.order.venue, record.order.venue_length)
            and tags_equal(stored.counterparty, record.order.counterparty,
                           record.order.counterparty_length)
            and ids_equal(stored.group, record.order.group, record.order.group_length))


cdef inline void clear_decision(DecisionRecord* record) noexcept nogil:
    # A record about to be decided: no verdict yet.
    record.rejection_count = 0
    record.approved = False
    record.replayed = False
    record.stored = False
    record.auto_halt = L.AUTO_HALT_NONE
    record.profit_and_loss = 0
    record.notional = 0


cdef inline bint same_replace(const L.OrderRecord* stored, const DecisionRecord* record) noexcept nogil:
    # A re-sent ReplaceOrder: the same original, and the quantity and price
    # it asks for (0: the original's, which the stored replacement took).
    return (record.order.replaces_length < L.ORDER_ID_CAPACITY
            and memcmp(stored.replaces, record.order.replaces, record.order.replaces_length) == 0
            and stored.replaces[record.order.replaces_length] == 0
            and (record.order.quantity == 0 or stored.quantity == record.order.quantity)
            and (record.order.price == 0 or stored.price == record.order.price))


cdef inline Py_ssize_t tag_length(const char* stored) noexcept nogil:
    # A stored venue or counterparty is NUL-padded to TAG_CAPACITY
    cdef Py_ssize_t n = 0
    while n < L.MAX_TAG_LENGTH and stored[n] != 0:
        n += 1
    return n


cdef inline bint counts_toward_reject_storm(const DecisionRecord* record) noexcept nogil:
    # Rejections the client caused. Not: the engine's own state (stale data,
    # a full table, a group it cannot check) or halts already in force, which
    # would re-trigger forever.
    cdef int32_t i, code
    for i in range(min(record.rejection_count, L.MAX_REJECTIONS)):
        code = record.rejections[i].code
        if code in (L.REJECT_STALE_DATA, L.REJECT_CAPACITY_EXHAUSTED, L.REJECT_GLOBAL_HALT,
                    L.REJECT_ACCOUNT_HALT, L.REJECT_SYMBOL_HALT, L.REJECT_REDUCE_ONLY,
                    L.REJECT_GROUP_UNAVAILABLE):
            return False
    return True


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

    ``evaluate`` decides one order and returns a :class:`Verdict`; the
    pure-Python twin in ``pretrade.engine.reference`` returns the same.
    """

    def __cinit__(self, PositionTable table, int32_t pool_size=64):
        self.table = table
        self.pool = DecisionPool(pool_size)
        memset(&self.counters, 0, sizeof(L.EngineCounters))
        self.counting = True

    cdef void count_decision(self, const DecisionRecord* record, int64_t elapsed_ns) noexcept nogil:
        # The metrics of one decision: its verdict, its engine time in one
        # histogram bucket, and each rejection code of a decision made now.
        # Plain increments (see layout.pxd EngineCounters).
        cdef int32_t kind, i, bucket = 0, code
        if record.replayed:
            kind = L.VERDICT_REPLAYED
        elif record.approved:
            kind = L.VERDICT_APPROVED
        elif record.rejection_count == 1 and record.rejections[0].observed == L.ORDER_ID_EXPIRED \
                and record.rejections[0].code == L.REJECT_DUPLICATE_ORDER_ID:
            # Not a decision: the caller reads the id's durable copy, then
            # replays it or asks again (and that answer is counted).
            return
        else:
            kind = L.VERDICT_REJECTED
            for i in range(min(record.rejection_count, L.MAX_REJECTIONS)):
                code = record.rejections[i].code
                if 0 <= code < L.REJECT_CODE_SLOTS:
                    self.counters.rejections[code] += 1
        self.counters.checks[kind] += 1
        while bucket < L.LATENCY_BOUNDS and elapsed_ns > LATENCY_BOUNDS_NS[bucket]:
            bucket += 1
        self.counters.latency[kind][bucket] += 1
        self.counters.latency_sum_ns[kind] += elapsed_ns

    def metrics(self):
        """What :meth:`evaluate` counted: a dict read by the metrics exporter.

        ``checks``: decisions per verdict (approved, rejected, replayed);
        ``latency``: per verdict, the count in each engine-time bucket (upper
        bounds :data:`LATENCY_BUCKET_BOUNDS_NS`, then one past the last), not
        cumulative; ``latency_sum_ns``: per verdict; ``rejections``: {code:
        count} of decisions made now (replays are not counted again).
        """
        cdef int32_t kind, bucket, code
        return {
            "checks": tuple(self.counters.checks[kind] for kind in range(L.VERDICT_KINDS)),
            "latency": tuple(tuple(self.counters.latency[kind][bucket]
                                   for bucket in range(L.LATENCY_BOUNDS + 1))
                             for kind in range(L.VERDICT_KINDS)),
            "latency_sum_ns": tuple(self.counters.latency_sum_ns[kind]
                                    for kind in range(L.VERDICT_KINDS)),
            "rejections": {code: self.counters.rejections[code]
                           for code in range(L.REJECT_CODE_SLOTS)
                           if self.counters.rejections[code]},
        }

    @cython.boundscheck(False)
    cdef void run_pipeline(self, DecisionRecord* record) noexcept nogil:
        cdef CheckContext ctx
        cdef int i
        prepare_context(self.table, record, &ctx)
        if ctx.account != NULL and record.order.order_id_length > 0:
            i = self.table.find_order(record.order.account_index, record.order.order_id,
                                      record.order.order_id_length)
            if i != L.NO_INDEX:
                if same_order(&self.table.orders[i], record):
                    self.replay(&self.table.orders[i], record)
                    return
                ctx.duplicate_conflict = True
            elif self.table.order_id_evicted(record.order.account_index, record.order.order_id,
                                             record.order.order_id_length) \
                    and ctx.activity.evictions != record.order.durable_checked:
                # The id may have been decided before and left the table: never
                # decide it anew before the caller has read its durable copy.
                record.approved = False
                reject(record, L.REJECT_DUPLICATE_ORDER_ID, L.ORDER_ID_EXPIRED,
                       ctx.activity.evictions)
                return
        for i in range(CHECK_COUNT):
            PIPELINE[i](&ctx, record)
        record.notional = ctx.notional
        record.approved = record.rejection_count == 0
        if ctx.account_known and valuation_ok(&ctx):
            self.watch_loss_limit(&ctx, record)
        if ctx.account != NULL and not ctx.duplicate_conflict:
            self.remember(&ctx, record)

    cdef void run_replace(self, DecisionRecord* record) noexcept nogil:
        # ReplaceOrder under the account's lock (see replace). Rejections
        # about the original (45-47) are not stored under the new id: nothing
        # was decided about an order, and a re-send meets the same original.
        cdef int32_t a = record.order.account_index
        cdef int32_t i, o, previous
        cdef L.OrderRecord* original
        cdef const L.AccountActivity* activity
        cdef int64_t done, total
        cdef CheckContext live
        # A table that is not live (or behind the account state asked for)
        # cannot say whether the original works: STALE_DATA, as for an order.
        memset(&live, 0, sizeof(CheckContext))
        live.scan_lost_slot = -1
        live.header = self.table.header
        if a != L.NO_INDEX:
            live.account = &self.table.accounts[a]
        check_sync_live(&live, record)
        if record.rejection_count > 0:
            return
        if a == L.NO_INDEX:
            reject(record, L.REJECT_UNKNOWN_ORIGINAL_ORDER, 0, 0)
            return
        activity = &self.table.activity[a]
        i = self.table.find_order(a, record.order.order_id, record.order.order_id_length)
        if i != L.NO_INDEX:
            if same_replace(&self.table.orders[i], record):
                self.replay(&self.table.orders[i], record)
            else:
                reject(record, L.REJECT_DUPLICATE_ORDER_ID, 0, 0)
            return
        if self.table.order_id_evicted(a, record.order.order_id, record.order.order_id_length) \
                and activity.evictions != record.order.durable_checked:
            reject(record, L.REJECT_DUPLICATE_ORDER_ID, L.ORDER_ID_EXPIRED, activity.evictions)
            return
        o = self.table.find_order(a, record.order.replaces, record.order.replaces_length)
        if o == L.NO_INDEX:
            # Working records never leave the table: one that left was done.
            if self.table.order_id_evicted(a, record.order.replaces,
                                           record.order.replaces_length):
                reject(record, L.REJECT_ORIGINAL_NOT_WORKING, 0, 0)
            else:
                reject(record, L.REJECT_UNKNOWN_ORIGINAL_ORDER, 0, 0)
            return
        original = &self.table.orders[o]
        if original.status != L.ORDER_WORKING:
            reject(record, L.REJECT_ORIGINAL_NOT_WORKING, original.status, 0)
            return
        if lapsed(original, record.order.now_unix_ms):
            # its time in force ended; end_lapsed_orders has not swept it yet
            reject(record, L.REJECT_ORIGINAL_NOT_WORKING, L.ORDER_DONE, 0)
            return
        done = original.quantity - original.remaining
        total = record.order.quantity if record.order.quantity != 0 else original.quantity
        if record.order.price == 0:
            record.order.price = original.price
        if total <= done:
            reject(record, L.REJECT_REPLACE_BELOW_FILLED, total, done)
            return
        record.order.quantity = total - done
        record.order.filled_before = done
        record.order.carried = done - original.own_filled
        record.order.side = original.side
        record.order.order_type = original.order_type
        record.order.instrument_index = original.instrument_index
        # The original's time in force: working_until of the stored
        # replacement is working_until(time_in_force, expire_at_ms,
        # session_end_ms), which with session_end_ms = the original's end is
        # that end for every time in force (GTD: its expiry, GTC: 0).
        record.order.time_in_force = original.time_in_force
        record.order.expire_at_ms = original.expire_at_ms
        record.order.session_end_ms = original.working_until_ms
        memcpy(record.venue_copy, original.venue, L.TAG_CAPACITY)
        memcpy(record.counterparty_copy, original.counterparty, L.TAG_CAPACITY)
        memcpy(record.group_copy, original.group, L.ORDER_ID_CAPACITY)
        record.order.group = record.group_copy
        record.order.group_length = id_length(record.group_copy)
        record.order.venue_length = tag_length(record.venue_copy)
        record.order.counterparty_length = tag_length(record.counterparty_copy)
        record.order.symbol_length = self.table.instruments[original.instrument_index].id_length
        previous = self.table.unlink_working(a, original)
        self.run_pipeline(record)
        if record.approved:
            original.status = L.ORDER_REPLACED
            original.remaining = original.counted = original.counted_notional = 0
            self.table.append_idle(a, o, L.pt_load_i64(&self.table.header.clock_ns))
        else:
            self.table.relink_working(a, original, previous)

    cdef void replay(self, const L.OrderRecord* stored, DecisionRecord* record) noexcept nogil:
        cdef int32_t i
        record.replayed = True
        record.approved = stored.approved
        record.notional = stored.notional
        record.rejection_count = stored.rejection_count
        for i in range(min(stored.rejection_count, L.STORED_REJECTIONS)):
            record.rejections[i].code = stored.rejections[i].code
            record.rejections[i].observed = stored.rejections[i].observed
            record.rejections[i].limit = stored.rejections[i].limit
        if record.rejection_count > L.STORED_REJECTIONS:
            record.rejection_count = L.STORED_REJECTIONS
        # Not yet in Redis (its write failed, or is still under way): the
        # caller makes it durable before it answers, as for a new decision.
        record.stored = not stored.flags & L.ORDER_DURABLE

    cdef void watch_loss_limit(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil:
        cdef int64_t loss_limit
        cdef int128_t pnl
        if not account_limit(ctx, L.LIMIT_LOSS_LIMIT, &loss_limit):
            return
        pnl = ctx.unrealized + ctx.account.realized_pnl
        if pnl < -<int128_t>loss_limit and L.pt_load_i32(&ctx.account.halt_mode) \
                not in (L.HALT_MODE_REDUCE_ONLY, L.HALT_MODE_HALTED):
            record.auto_halt = L.AUTO_HALT_LOSS_LIMIT
            record.profit_and_loss = clamp(pnl)

    cdef void remember(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil:
        # Store the decision under its order id (so a re-send replays it) and,
        # when approved, reserve the order. Not stored: decisions the engine
        # could not really make (stale data, no room, a group it cannot
        # check), so a retry gets a real one.
        cdef int32_t i, code
        cdef L.OrderRecord* stored
        cdef int32_t position_index = L.NO_INDEX
        cdef int32_t what = 0
        cdef bint not_made = False
        for i in range(min(record.rejection_count, L.MAX_REJECTIONS)):
            code = record.rejections[i].code
            if code == L.REJECT_STALE_DATA or code == L.REJECT_CAPACITY_EXHAUSTED \
                    or code == L.REJECT_GROUP_UNAVAILABLE:
                not_made = True
        # An order for a symbol the table has never seen is not stored either:
        # stored orders are compared by instrument index, which it lacks.
        # Nor is an order id longer than a record holds (the servicer refuses
        # one; a direct caller gets a decision that is not remembered).
        if not_made or record.order.order_id_length <= 0 \
                or record.order.order_id_length > L.MAX_ORDER_ID_LENGTH \
                or record.order.instrument_index == L.NO_INDEX:
            return
        if record.approved:
            position_index = self.table.ensure_position(record.order.account_index,
                                                        record.order.instrument_index)
            if position_index == L.NO_INDEX:
                record.approved = False
                reject(record, L.REJECT_CAPACITY_EXHAUSTED, L.CAPACITY_POSITIONS,
                       self.table.header.max_positions)
                self.count_rejection(ctx, record)
                return
            if not self.reservation_fits(ctx, record, &self.table.positions[position_index]):
                # The running sums the reservation adds to would pass int64.
                record.approved = False
                reject(record, L.REJECT_ARITHMETIC_OVERFLOW, record.order.quantity,
                       ctx.valuation_price)
        stored = self.table.allocate_order(record.order.account_index, record.order.order_id,
                                           record.order.order_id_length, &what)
        if stored == NULL:
            # No room to remember it: refused whatever it was, and says what is full.
            record.approved = False
            reject(record, L.REJECT_CAPACITY_EXHAUSTED, what,
                   capacity_limit(self.table.header, what))
            self.count_rejection(ctx, record)
            return
        stored.instrument_index = record.order.instrument_index
        stored.side = record.order.side
        stored.order_type = record.order.order_type
        # a replacement's quantity is its total (FIX OrderQty): what it checks
        # and reserves (record.order.quantity) plus what its chain filled
        stored.quantity = record.order.quantity + record.order.filled_before
        stored.carried = record.order.carried
        if record.order.replaces_length > 0:
            memcpy(stored.replaces, record.order.replaces, record.order.replaces_length)
        stored.price = record.order.price
        stored.valuation_price = ctx.valuation_price
        stored.notional = record.notional
        stored.approved = record.approved
        stored.time_in_force = record.order.time_in_force
        stored.expire_at_ms = record.order.expire_at_ms
        stored.working_until_ms = working_until(record.order.time_in_force,
                                                record.order.expire_at_ms,
                                                record.order.session_end_ms)
        if record.order.venue_length < L.TAG_CAPACITY:
            memcpy_tag(stored.venue, record.order.venue, record.order.venue_length)
        if record.order.counterparty_length < L.TAG_CAPACITY:
            memcpy_tag(stored.counterparty, record.order.counterparty,
                       record.order.counterparty_length)
        if 0 < record.order.group_length < L.ORDER_ID_CAPACITY:
            memcpy(stored.group, record.order.group, record.order.group_length)
            stored.group_hash = group_hash(record.order.group, record.order.group_length)
        stored.rejection_count = record.rejection_count
        for i in range(min(record.rejection_count, L.STORED_REJECTIONS)):
            stored.rejections[i].code = record.rejections[i].code
            stored.rejections[i].observed = record.rejections[i].observed
            stored.rejections[i].limit = record.rejections[i].limit
        if record.approved:
            self.reserve(ctx, record, stored, position_index)
        else:
            stored.status = L.ORDER_REJECTED
            self.table.append_idle(record.order.account_index,
                                   <int32_t>(stored - self.table.orders),
                                   L.pt_load_i64(&self.table.header.clock_ns))
            self.count_rejection(ctx, record)
        self.table.publish_order(stored)
        record.stored = True

    cdef bint reservation_fits(self, const CheckContext* ctx, const DecisionRecord* record,
                               const L.PositionSlot* slot) noexcept nogil:
        # Every running sum a reservation adds to stays an exact int64.
        cdef const L.AccountActivity* activity = ctx.activity
        cdef int128_t quantity = record.order.quantity
        cdef int128_t notional = record.notional
        cdef int128_t venue_total = 0, counterparty_total = 0
        cdef int32_t k
        if 0 < record.order.venue_length < L.TAG_CAPACITY:
            venue_total = working_at(ctx, record.order.venue, record.order.venue_length, True)
        if 0 < record.order.counterparty_length < L.TAG_CAPACITY:
            counterparty_total = working_at(ctx, record.order.counterparty,
                                            record.order.counterparty_length, False)
        if record.order.side == L.SIDE_BUY:
            if slot.working_buy + quantity > INT64_MAX \
                    or slot.working_buy_notional + notional > INT64_MAX:
                return False
        else:
            if slot.working_sell + quantity > INT64_MAX \
                    or slot.working_sell_notional + notional > INT64_MAX \
                    or slot.working_short_notional + notional > INT64_MAX \
                    or slot.locate_used + quantity > INT64_MAX:
                return False
        for k in range(ctx.group_count):
            if ctx.group_sums[k].group.rate.cumulative_notional + notional > INT64_MAX:
                return False
        return (activity.rate.cumulative_notional + notional <= INT64_MAX
                and venue_total + notional <= INT64_MAX
                and counterparty_total + notional <= INT64_MAX)

    cdef void reserve(self, const CheckContext* ctx, DecisionRecord* record, L.OrderRecord* stored,
                      int32_t position_index) noexcept nogil:
        cdef L.PositionSlot* slot = &self.table.positions[position_index]
        cdef L.AccountActivity* activity = &self.table.activity[record.order.account_index]
        cdef int32_t k
        stored.status = L.ORDER_WORKING
        stored.position_index = position_index
        stored.remaining = record.order.quantity
        if record.order.side == L.SIDE_SELL_SHORT:
            slot.locate_used += record.order.quantity
        # remaining x valuation price is the notional: the same sums as
        # recompute_working. A group's leg counts only what takes the group's
        # worst past what its other legs count (ctx.group_*), so the legs
        # together count the worst leg.
        stored.counted = record.order.quantity - ctx.group_units
        stored.counted_notional = record.notional - ctx.group_notional
        self.table.add_working(record.order.account_index, stored)
        # the velocity rings: the account's, and each of its groups'
        ring_push(&activity.rate, record.order.now_ns, record.notional)
        for k in range(ctx.group_count):
            ring_push(&(<L.GroupRecord*>ctx.group_sums[k].group).rate, record.order.now_ns,
                      record.notional)

    cdef void count_rejection(self, const CheckContext* ctx, DecisionRecord* record) noexcept nogil:
        # The reject-storm breaker: K client-caused rejections in a window
        # HALT the account (applied by the Python layer, written to Redis).
        cdef int64_t limit, since, at
        cdef int32_t n, count, oldest
        cdef L.AccountActivity* activity = &self.table.activity[record.order.account_index]
        if not ctx.account_known or not counts_toward_reject_storm(record):
            return
        if not account_limit(ctx, L.LIMIT_MAX_REJECTS_PER_WINDOW, &limit):
            return
        at = record.order.now_ns
        if activity.reject_count > 0:
            since = activity.rejects_at_ns[(activity.reject_head - 1 + L.REJECT_RING_CAPACITY)
                                           % L.REJECT_RING_CAPACITY]
            if at < since:
                at = since
        activity.rejects_at_ns[activity.reject_head] = at
        activity.reject_head = (activity.reject_head + 1) % L.REJECT_RING_CAPACITY
        if activity.reject_count < L.REJECT_RING_CAPACITY:
            activity.reject_count += 1
        since = at - window_ns(ctx, L.LIMIT_REJECT_WINDOW_MS, L.DEFAULT_REJECT_WINDOW_MS)
        count = 0
        oldest = activity.reject_head - activity.reject_count + L.REJECT_RING_CAPACITY
        for n in range(activity.reject_count):
            if activity.rejects_at_ns[(oldest + n) % L.REJECT_RING_CAPACITY] > since:
                count += 1
        if count >= limit and L.pt_load_i32(&ctx.account.halt_mode) != L.HALT_MODE_HALTED:
            record.auto_halt = L.AUTO_HALT_REJECT_STORM

    cdef void decide_locked(self, DecisionRecord* record) noexcept nogil:
        clear_decision(record)
        if record.order.account_index != L.NO_INDEX:
            self.table.lock_account(record.order.account_index)
            self.run_pipeline(record)
            self.table.unlock_account(record.order.account_index)
        else:
            self.run_pipeline(record)

    cdef DecisionRecord* _decide(self, bytes order_id, bytes account_id, bytes symbol, int side,
                                 int order_type, int64_t quantity, int64_t price, bytes venue,
                                 bytes counterparty, int64_t now_ns,
                                 int64_t durable_checked,
                                 int64_t min_state_version, int32_t time_in_force,
                                 int64_t expire_at_unix_ms, int64_t now_unix_ms,
                                 int64_t session_end_unix_ms, bytes group_id) except NULL:
        cdef DecisionRecord* record = self._acquire(order_id, account_id, quantity, price, now_ns,
                                                    durable_checked, min_state_version,
                                                    now_unix_ms)
        record.order.time_in_force = time_in_force
        record.order.expire_at_ms = expire_at_unix_ms
        record.order.session_end_ms = session_end_unix_ms
        record.order.symbol_length = len(symbol)
        record.order.side = side
        record.order.order_type = order_type
        record.order.venue = venue
        record.order.venue_length = len(venue)
        record.order.counterparty = counterparty
        record.order.counterparty_length = len(counterparty)
        record.order.group = group_id
        record.order.group_length = len(group_id)
        record.order.instrument_index = self.table.find_instrument(symbol, len(symbol))
        self.decide_locked(record)
        return record

    cdef DecisionRecord* _acquire(self, bytes order_id, bytes account_id, int64_t quantity,
                                  int64_t price, int64_t now_ns, int64_t durable_checked,
                                  int64_t min_state_version, int64_t now_unix_ms) except NULL:
        # A record from the pool with what an order and a replace share.
        cdef DecisionRecord* record = self.pool.acquire()
        if record == NULL:
            raise RuntimeError("decision pool exhausted")
        self.table.advance_clock(now_ns)
        memset(&record.order, 0, sizeof(OrderInput))
        record.order.quantity = quantity
        record.order.price = price
        record.order.now_ns = now_ns
        record.order.durable_checked = durable_checked
        record.order.min_state_version = min_state_version
        record.order.now_unix_ms = now_unix_ms
        record.order.order_id = order_id
        record.order.order_id_length = len(order_id)
        record.order.account_id_length = len(account_id)
        record.order.account_index = self.table.find_account(account_id, len(account_id))
        record.order.shard = account_shard(self.table.header, account_id, len(account_id))
        return record

    cpdef Verdict evaluate(self, bytes order_id, bytes account_id, bytes symbol, int side,
                          int order_type, int64_t quantity, int64_t price, bytes venue=b"",
                          bytes counterparty=b"", int64_t now_ns=0,
                          int64_t durable_checked=-1, int64_t min_state_version=0,
                          int32_t time_in_force=0, int64_t expire_at_unix_ms=0,
                          int64_t now_unix_ms=0, int64_t session_end_unix_ms=0,
                          bytes group_id=b""):
        """Run every check on one order and return its :class:`Verdict`.

        An id the account's evicted-id filter holds is not decided: the answer
        is DUPLICATE_ORDER_ID with observed ORDER_ID_EXPIRED and limit the
        account's eviction count. The caller reads the id's durable copy and
        replays it, or, when there is none, calls again with
        ``durable_checked`` = that count (a newer eviction asks again).

        Time in force: ``time_in_force`` (a TimeInForce number) and
        ``expire_at_unix_ms`` as sent; ``now_unix_ms`` the wall clock (a GTD
        order expiring at or before it is ORDER_EXPIRED);
        ``session_end_unix_ms`` the end of the session a DAY or IOC order
        works in (0: none). An approved order stops counting once
        :meth:`PositionTable.end_lapsed_orders` passes its end.

        ``group_id`` (up to MAX_ORDER_ID_LENGTH bytes, no NUL; b"": none) puts
        the order in a one-cancels-other group: the group's working legs of
        one side count together their worst leg, not their sum.
        """
        if len(group_id) > L.MAX_ORDER_ID_LENGTH or b"\0" in group_id:
            raise ValueError(f"a group id must be at most {L.MAX_ORDER_ID_LENGTH} bytes, "
                             "with no NUL")
        cdef int64_t started = monotonic_ns() if self.counting else 0
        cdef DecisionRecord* record = self._decide(order_id, account_id, symbol, side,
                                                   order_type, quantity, price, venue,
                                                   counterparty, now_ns, durable_checked,
                                                   min_state_version, time_in_force,
                                                   expire_at_unix_ms, now_unix_ms,
                                                   session_end_unix_ms, group_id)
        return self._verdict(record, started)

    cpdef Verdict replace(self, bytes order_id, bytes account_id, bytes original_order_id,
                          int64_t quantity, int64_t price, int64_t now_ns=0,
                          int64_t durable_checked=-1, int64_t min_state_version=0,
                          int64_t now_unix_ms=0):
        """Cancel/replace: decide the replacement ``order_id`` of the working order
        ``original_order_id`` and return its :class:`Verdict`.

        ``quantity`` is the new total (FIX OrderQty: it includes what the
        original filled) and ``price`` the new price; 0 keeps the original's.
        Symbol, side, order type, venue, counterparty and time in force (with
        its expiry and the end it works until) are the original's.
        In one step under the account's lock the original's reservation is
        released, the replacement runs through every check for its quantity
        less the filled units, and then either the replacement works and the
        original is replaced (approved) or the original works on as it was.
        An original whose time in force ended at or before ``now_unix_ms``
        (the wall clock; 0: not known) is not working, swept or not.
        A re-sent ``order_id`` replays; ``durable_checked`` as for evaluate.
        """
        if not 1 <= len(order_id) <= L.MAX_ORDER_ID_LENGTH \
                or not 1 <= len(original_order_id) <= L.MAX_ORDER_ID_LENGTH:
            raise ValueError(f"order ids must be 1 to {L.MAX_ORDER_ID_LENGTH} bytes")
        cdef int64_t started = monotonic_ns() if self.counting else 0
        cdef DecisionRecord* record = self._acquire(order_id, account_id, quantity, price,
                                                    now_ns, durable_checked, min_state_version,
                                                    now_unix_ms)
        record.order.replaces = original_order_id
        record.order.replaces_length = len(original_order_id)
        record.order.venue = record.venue_copy
        record.order.counterparty = record.counterparty_copy
        record.order.instrument_index = L.NO_INDEX
        clear_decision(record)
        if record.order.account_index == L.NO_INDEX:
            self.run_replace(record)
        else:
            self.table.lock_account(record.order.account_index)
            self.run_replace(record)
            self.table.unlock_account(record.order.account_index)
        return self._verdict(record, started)

    cdef Verdict _verdict(self, DecisionRecord* record, int64_t started):
        # The Verdict of a decided record, which goes back to the pool.
        if self.counting:
            self.count_decision(record, monotonic_ns() - started)
        cdef int32_t shown = min(record.rejection_count, L.MAX_REJECTIONS)
        cdef list rejections
        cdef int32_t i
        cdef Verdict result = Verdict.__new__(Verdict)
        if shown == 0:
            result.rejections = ()
        else:
            rejections = [None] * shown
            for i in range(shown):
                rejections[i] = (record.rejections[i].code, record.rejections[i].observed,
                                 record.rejections[i].limit)
            result.rejections = tuple(rejections)
        result.approved = record.approved
        result.notional = record.notional
        result.replayed = record.replayed
        result.auto_halt = record.auto_halt
        result.profit_and_loss = record.profit_and_loss
        result.stored = record.stored
        self.pool.release(record)
        return result

    def evaluate_many(self, int32_t times, bytes account_id, bytes symbol, int side,
                      int order_type, int64_t quantity, int64_t price, int64_t now_ns):
        """Run the pipeline ``times`` times on one order without an order id (so
        nothing is stored or reserved) and return the rejection count of the
        last run. Benchmarks divide the elapsed time by ``times`` to see the
        pipeline's own cost without the Python call around it."""
        cdef DecisionRecord* record = self._decide(b"", account_id, symbol, side, order_type,
                                                   quantity, price, b"", b"", now_ns, -1, 0,
                                                   0, 0, 0, 0, b"")
        cdef int32_t n
        for n in range(times - 1):
            self.decide_locked(record)
        cdef int count = record.rejection_count
        self.pool.release(record)
        return count
