"""The slow, obvious twin of the compiled check pipeline.

Every check in ``ext/pretrade/_core/checks.pyx`` has a pure-Python mirror
here, with the same name, the same inputs and the same output: a decision is
the core's :class:`~pretrade._core.Verdict` (``approved``, ``notional``,
``rejections``, ``replayed``, ``auto_halt``, ``profit_and_loss``,
``stored``), with ``rejections`` a tuple of ``(code, observed, limit)``
triples in pipeline order. The differential tests drive this book and the
compiled table with the same operations and demand identical decisions, so
this file is the specification of the checks. Every size and default it uses
is the core's own (:mod:`pretrade._core.constants`).

It mirrors the state-writing API of ``pretrade._core.PositionTable`` too, so
one sequence of operations can be applied to both: the table's capacities
(a full region raises the same ``TableFullError``), each account's share of
the decided orders, and which records leave the table when (only durable
ones that no longer work, oldest first), with the same evicted-id filter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from pretrade._core import TableFullError, Verdict
from pretrade._core.constants import (
    ACCOUNT_SHARE_DIVISOR,
    AUTO_HALT_LOSS_LIMIT,
    AUTO_HALT_NONE,
    AUTO_HALT_REJECT_STORM,
    CAPACITY_NUMBERS,
    CLUSTER_SLOTS,
    DEFAULT_NOTIONAL_WINDOW_MS,
    DEFAULT_ORDER_EXPIRY_MS,
    DEFAULT_ORDER_WINDOW_MS,
    DEFAULT_REJECT_WINDOW_MS,
    EVICT_SCAN,
    EVICTED_FILTER_HASHES,
    EVICTED_FILTER_WORDS,
    HALT_NONE,
    MAX_CAPACITY,
    MAX_GROUPS,
    MAX_ID_LENGTH,
    MAX_MARGIN_BPS,
    MAX_ORDER_ID_LENGTH,
    MAX_REJECTIONS,
    MAX_SHARDS,
    MAX_TAG_LENGTH,
    ORDER_DONE,
    ORDER_ID_EXPIRED,
    ORDER_REJECTED,
    ORDER_REPLACED,
    ORDER_WORKING,
    RATE_RING_CAPACITY,
    REJECT_RING_CAPACITY,
    STORED_REJECTIONS,
    TABLE_CLOCK_STEP_NS,
    TAG_LIMIT_SLOTS,
)
from pretrade.engine.fixedpoint import INT64_MAX, INT64_MIN, fits_int64
from pretrade.engine.limits import (
    GROUP_LIMIT_KINDS,
    MAX_ACCOUNT_GROUPS,
    REQUIRED_LIMITS,
    LimitKind,
    Limits,
)
from pretrade.engine.sessions import working_until
from pretrade.engine.text import is_currency_code
from pretrade.v1 import risk_pb2 as pb

NS_PER_MS = 1_000_000
UINT32 = 0xFFFF_FFFF
FILTER_BITS = EVICTED_FILTER_WORDS * 64
ORDER_TABLE = CAPACITY_NUMBERS["ORDER_TABLE"]
ACCOUNT_ORDERS = CAPACITY_NUMBERS["ACCOUNT_ORDERS"]
ACCOUNTS = CAPACITY_NUMBERS["ACCOUNTS"]
INSTRUMENTS = CAPACITY_NUMBERS["INSTRUMENTS"]
POSITIONS = CAPACITY_NUMBERS["POSITIONS"]
OVERRIDES = CAPACITY_NUMBERS["OVERRIDES"]
GROUPS = CAPACITY_NUMBERS["GROUPS"]

Rejection = tuple[int, int, int]

#: A group that sets one of these is valued over all its members' books.
GROUP_VALUATION_LIMITS: frozenset[LimitKind] = frozenset((
    LimitKind.MAX_GROSS_EXPOSURE, LimitKind.MAX_NET_EXPOSURE, LimitKind.LOSS_LIMIT,
))


class GroupUnavailable(IntEnum):
    """Why an account group cannot be checked: a GROUP_UNAVAILABLE rejection's observed
    (the smallest that applies; its limit is the group's 1-based place in the account's)."""

    NOT_CONFIGURED = 1    # no group:<G> hash
    TREE_INVALID = 2      # the account's groups could not be resolved (limit 0)
    HASH_INVALID = 3      # group:<G> did not parse
    SHARD_NOT_HELD = 4    # ownership on, a member's shard not held now
    SLOT_LOST = 5         # a member's keys, or group:<G>, in a lost slot
    MEMBER_INVALID = 6    # a member's state is invalid or did not fit


def clamp(value: int) -> int:
    """Figures reported on the wire are int64: clamp, never wrap."""
    return max(INT64_MIN, min(INT64_MAX, value))


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def fnv1a(data: bytes) -> int:
    """FNV-1a, 32 bit: the core's hash of an id."""
    h = 2166136261
    for byte in data:
        h = ((h ^ byte) * 16777619) & UINT32
    return h


def mix32(h: int) -> int:
    """murmur3's finaliser: the core's second hash for the evicted-id filter."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & UINT32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & UINT32
    return h ^ (h >> 16)


def filter_bits(order_id: bytes) -> int:
    """The bits an order id sets in an account's evicted-id filter, as one int."""
    h1 = fnv1a(order_id)
    h2 = mix32(h1) | 1
    bits = 0
    for k in range(EVICTED_FILTER_HASHES):
        bits |= 1 << ((h1 + k * h2) & (FILTER_BITS - 1))
    return bits


@dataclass
class RefOrder:
    symbol: bytes
    side: int
    order_type: int
    quantity: int
    price: int
    venue: bytes
    counterparty: bytes
    approved: bool
    notional: int
    rejections: tuple[Rejection, ...]
    rejection_count: int
    valuation_price: int = 0
    working: bool = False
    remaining: int = 0
    durable: bool = False     # its decision is in Redis: it may leave the table
    idle_since: int = 0       # when it stopped working (the table's clock)
    time_in_force: int = 0    # TimeInForce as sent
    expire_at_ms: int = 0     # Order.expire_at_unix_ms as sent
    working_until_ms: int = 0  # Unix ms when it stops counting; 0: at its fill or cancel
    # ReplaceOrder: the id it replaced ("" for an order), the chain's fills
    # before that original, its own id's fills in the last snapshot, and
    # whether an approved replacement of it took over (OrderRecord's fields).
    replaces: bytes = b""
    carried: int = 0
    own_filled: int = 0
    replaced: bool = False
    group: bytes = b""        # Order.group_id: an OCO group ("" none)

    @property
    def status(self) -> int:
        """The core's OrderStatus: 1 rejected, 2 working, 3 done, 4 replaced."""
        if not self.approved:
            return ORDER_REJECTED
        if self.working:
            return ORDER_WORKING
        return ORDER_REPLACED if self.replaced else ORDER_DONE

    def lapsed(self, now_unix_ms: int) -> bool:
        """Its time in force ended at or before ``now_unix_ms`` (positions.pxd lapsed)."""
        return self.working_until_ms != 0 and self.working_until_ms <= now_unix_ms

    @property
    def group_key(self) -> tuple[bytes, bytes, bytes, bytes]:
        """Its order group: the id with its symbol, venue and counterparty."""
        return (self.group, self.symbol, self.venue, self.counterparty)


@dataclass
class RefAccount:
    known: bool = False
    invalid: bool = False
    state_version: int = 0
    limits: Limits | None = None
    halt_mode: int = HALT_NONE
    cash: int | None = None
    credit_line: int = 0
    realized_pnl: int = 0
    venue_limits: dict[bytes, int] = field(default_factory=dict)
    counterparty_limits: dict[bytes, int] = field(default_factory=dict)
    capacity: int = 0         # the Capacity part of its state did not fit in (0: none)
    # order ids working, in the core's list order (its head first)
    working: deque[bytes] = field(default_factory=deque)
    order_count: int = 0      # its decided orders the table holds
    idle: deque[bytes] = field(default_factory=deque)  # not working, oldest first
    evictions: int = 0        # ids that went to the filter
    evicted: int = 0          # the evicted-id filter, as the bits of an int
    rate: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=RATE_RING_CAPACITY))  # (at_ns, running total)
    cumulative_notional: int = 0
    rejects: deque[int] = field(default_factory=lambda: deque(maxlen=REJECT_RING_CAPACITY))
    groups: tuple[bytes, ...] = ()  # its groups flattened, in check order
    groups_invalid: bool = False    # its group tree could not be resolved


@dataclass
class RefGroup:
    """An account group (``group:<G>``): its limits and its members' approved orders."""

    known: bool = False       # group:<G> exists
    invalid: bool = False     # and did not parse
    limits: Limits = field(default_factory=dict)
    rate: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=RATE_RING_CAPACITY))  # (at_ns, running total)
    cumulative_notional: int = 0


@dataclass
class GroupView:
    """One of the ordering account's groups as ``check_account_groups`` reads it: why it
    cannot be checked (0: it can) and the figures of its members other than the
    ordering account (whose own figures are the order's context's)."""

    group_id: bytes
    record: RefGroup
    unavailable: int = 0
    position: int = 0         # the order's symbol: quantity, working buy and sell units
    working_buy: int = 0
    working_sell: int = 0
    gross: int = 0            # the members' books at last prices, as the account scan
    net: int = 0
    pnl: int = 0              # unrealized + realized P&L
    unpriced: bool = False    # a member holds a symbol without a last price
    # it could be checked when resolved and values books: the account's own
    # scan runs (whatever the members' valuation finds after it)
    valued: bool = False

    @property
    def limits(self) -> Limits:
        return self.record.limits

    @property
    def values_books(self) -> bool:
        """It sets an exposure or loss limit: its members' books are valued."""
        return not GROUP_VALUATION_LIMITS.isdisjoint(self.record.limits)


@dataclass
class RefInstrument:
    known: bool = False
    invalid: bool = False
    tick_size: int = 1
    lot_size: int = 1
    last_price: int | None = None
    halt_mode: int = HALT_NONE
    issuer_id: int = 0
    sector_id: int = 0
    short_restricted: bool = False
    currency: str = ""        # ISO 4217; "" none given (no check reads it)
    # basis points of notional: initial long, initial short, maintenance long, short
    margin_bps: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class RefPosition:
    quantity: int = 0
    cost_basis: int = 0
    overrides: Limits = field(default_factory=dict)
    working_buy: int = 0
    working_sell: int = 0
    working_buy_notional: int = 0
    working_sell_notional: int = 0
    working_short_notional: int = 0
    located: int = 0
    locate_used: int = 0
    override_record: bool = False   # holds an override record (counted against max_overrides)


@dataclass
class Context:
    """What every check may read; built once per order by ``prepare_context``."""

    sync_live: bool
    global_halt: int
    account: RefAccount | None
    instrument: RefInstrument | None
    slot: RefPosition | None
    symbol: bytes
    quantity: int
    price: int
    side: int
    order_type: int
    now_ns: int
    venue: bytes
    counterparty: bytes
    capacities: Mapping[int, int] = field(default_factory=dict)  # Capacity -> its size
    min_state_version: int = 0
    time_in_force: int = 0
    expire_at_ms: int = 0
    now_unix_ms: int = 0
    session_end_ms: int = 0
    account_region_full: bool = False
    instrument_region_full: bool = False
    working_venue: dict[bytes, int] = field(default_factory=dict)
    working_counterparty: dict[bytes, int] = field(default_factory=dict)
    valuation_price: int = 0
    price_valid: bool = False
    notional: int = 0
    notional_valid: bool = False
    signed_quantity: int = 0
    projected_position: int = 0
    projection_valid: bool = False
    duplicate_conflict: bool = False
    scan_needed: bool = False
    scan_unpriced: bool = False
    scan_overflow: bool = False
    # a key of the account, of the symbol, or of a held symbol in a lost slot (-1: none)
    lost_account_slot: int = -1
    lost_symbol_slot: int = -1
    scan_lost_slot: int = -1
    gross: int = 0
    net: int = 0
    unrealized: int = 0
    committed: int = 0
    issuer_exposure: int = 0
    sector_exposure: int = 0
    # initial margin (notional x bps) of the other positions; the order's own
    # position's value at last and working notionals, apart
    initial_margin_bps: int = 0
    order_slot: tuple[int, int, int] = (0, 0, 0)
    # an order group's leg: the most units and notional the group's working
    # legs of its side have left, up to the order's own; a leg that differs
    group: bytes = b""
    group_units: int = 0
    group_notional: int = 0
    group_mismatch: int = 0
    # the account's groups (a desk, a firm), in check order; its tree unresolvable
    account_groups: tuple[GroupView, ...] = ()
    account_groups_invalid: bool = False

    @property
    def account_known(self) -> bool:
        return self.account is not None and self.account.known

    @property
    def instrument_known(self) -> bool:
        return self.instrument is not None and self.instrument.known

    @property
    def position(self) -> int:
        return self.slot.quantity if self.slot else 0

    @property
    def working_buy(self) -> int:
        if self.slot is None:
            return 0
        return self.slot.working_buy - (self.group_units if self.side == pb.SIDE_BUY else 0)

    @property
    def working_sell(self) -> int:
        if self.slot is None:
            return 0
        return self.slot.working_sell - (self.group_units if self.side != pb.SIDE_BUY else 0)

    @property
    def valuation_ok(self) -> bool:
        return self.scan_needed and not self.scan_unpriced and not self.scan_overflow

    def limit(self, kind: LimitKind) -> int | None:
        """The per-symbol override if set, else the account default, else None."""
        if self.slot is not None and kind in self.slot.overrides:
            return self.slot.overrides[kind]
        return self.account_limit(kind)

    def account_limit(self, kind: LimitKind) -> int | None:
        if self.account is not None and self.account.limits is not None:
            return self.account.limits.get(kind)
        return None

    def window_ns(self, kind: LimitKind, default_ms: int) -> int:
        return window_ns(self.account_limit(kind), default_ms)

    def is_buy(self) -> bool:
        return self.signed_quantity > 0

    def is_reducing(self) -> bool:
        """Shrinks |position| without flipping its sign, counting working orders."""
        if self.signed_quantity == 0:
            return False
        quantity = abs(self.signed_quantity)
        if self.position > 0:
            return self.signed_quantity < 0 and self.position - self.working_sell - quantity >= 0
        if self.position < 0:
            return self.signed_quantity > 0 and self.position + self.working_buy + quantity <= 0
        return False


Reject = Callable[[int, int, int], None]


def window_ns(ms: int | None, default_ms: int) -> int:
    """A velocity window's length: its limit in ms (unset or not positive: the default)."""
    if ms is None or ms <= 0:
        ms = default_ms
    return ms * NS_PER_MS if ms < INT64_MAX // NS_PER_MS else INT64_MAX


def lost_key_slot(lost: Collection[int], keys: Iterable[bytes]) -> int:
    """The slot of the first of ``keys`` that is in a lost slot, or -1."""
    if lost:
        for key in keys:
            slot = key_slot(key)
            if slot in lost:
                return slot
    return -1


def account_keys(account_id: bytes) -> tuple[bytes, ...]:
    """The keys an order of the account is decided on, as far as their slots go: its
    ``{ACC}`` keys (one slot) and its halt key."""
    return (b"limits:{" + account_id + b"}", b"halt:account:" + account_id)


def symbol_keys(symbol: bytes) -> tuple[bytes, ...]:
    """The keys of a symbol an order is decided on: reference data, last price, halt."""
    return (b"instrument:" + symbol, b"price:" + symbol, b"halt:symbol:" + symbol)


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a whole key: that of its hash tag (the first ``{...}``
    with something inside) when it has one, else of the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return cluster_slot(key)


def cluster_slot(key: bytes) -> int:
    """Redis Cluster's HASH_SLOT of a hash tag, the slow obvious way: CRC16/XMODEM, bit by bit.

    (Polynomial 0x1021, initial value 0, mod 16384: the Redis Cluster
    specification; "123456789" gives 0x31C3.)
    """
    crc = 0
    for byte in key:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % CLUSTER_SLOTS


# -- PRE-TRADE CHECKS (same order and names as PIPELINE in checks.pyx) --

def check_sync_live(ctx: Context, reject: Reject) -> None:
    """Stale: not live, older than the account snapshot the order asks for, or decided
    on a key in a Redis Cluster slot whose primary the sync lost."""
    if not ctx.sync_live:
        reject(pb.REJECT_CODE_STALE_DATA, 0, 0)
        return
    if ctx.min_state_version > 0:
        version = ctx.account.state_version if ctx.account is not None else 0
        if version < ctx.min_state_version:
            reject(pb.REJECT_CODE_STALE_DATA, version, ctx.min_state_version)
            return
    if ctx.lost_account_slot >= 0:
        reject(pb.REJECT_CODE_STALE_DATA, -pb.HALT_SCOPE_ACCOUNT, ctx.lost_account_slot)
    elif ctx.lost_symbol_slot >= 0:
        reject(pb.REJECT_CODE_STALE_DATA, -pb.HALT_SCOPE_SYMBOL, ctx.lost_symbol_slot)
    elif ctx.scan_lost_slot >= 0:
        reject(pb.REJECT_CODE_STALE_DATA, -pb.HALT_SCOPE_SYMBOL, ctx.scan_lost_slot)


def check_account_known(ctx: Context, reject: Reject) -> None:
    """Unknown, invalid, or not (or not wholly) in the table for want of room."""
    if ctx.account_region_full:
        reject(pb.REJECT_CODE_CAPACITY_EXHAUSTED, ACCOUNTS, ctx.capacities[ACCOUNTS])
        return
    if ctx.account is not None and ctx.account.capacity:
        reject(pb.REJECT_CODE_CAPACITY_EXHAUSTED, ctx.account.capacity,
               ctx.capacities[ctx.account.capacity])
        if not ctx.account_known:
            return
    if not ctx.account_known:
        reject(pb.REJECT_CODE_UNKNOWN_ACCOUNT, 0, 0)
    elif ctx.account is not None and ctx.account.invalid:
        reject(pb.REJECT_CODE_INVALID_STATE, pb.HALT_SCOPE_ACCOUNT, 0)


def check_symbol_known(ctx: Context, reject: Reject) -> None:
    if ctx.instrument_region_full:
        reject(pb.REJECT_CODE_CAPACITY_EXHAUSTED, INSTRUMENTS, ctx.capacities[INSTRUMENTS])
    elif not ctx.instrument_known:
        reject(pb.REJECT_CODE_UNKNOWN_SYMBOL, 0, 0)
    elif ctx.instrument is not None and ctx.instrument.invalid:
        reject(pb.REJECT_CODE_INVALID_STATE, pb.HALT_SCOPE_SYMBOL, 0)


def check_order_id_unused(ctx: Context, reject: Reject) -> None:
    if ctx.duplicate_conflict:
        reject(pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0)


def check_time_in_force(ctx: Context, reject: Reject) -> None:
    """A GTD order needs an expiry after the caller's wall clock."""
    if ctx.time_in_force == pb.TIME_IN_FORCE_GTD and ctx.expire_at_ms <= ctx.now_unix_ms:
        reject(pb.REJECT_CODE_ORDER_EXPIRED, ctx.expire_at_ms, ctx.now_unix_ms)


def check_order_group(ctx: Context, reject: Reject) -> None:
    if ctx.group_mismatch:
        reject(pb.REJECT_CODE_GROUP_MISMATCH, ctx.group_mismatch, 0)


def check_quantity_positive(ctx: Context, reject: Reject) -> None:
    if ctx.quantity <= 0:
        reject(pb.REJECT_CODE_INVALID_QUANTITY, ctx.quantity, 1)


def check_price_usable(ctx: Context, reject: Reject) -> None:
    if ctx.order_type == pb.ORDER_TYPE_LIMIT:
        if ctx.price <= 0:
            reject(pb.REJECT_CODE_INVALID_PRICE, ctx.price, 1)
    elif ctx.instrument_known and not ctx.price_valid:
        reject(pb.REJECT_CODE_PRICE_UNAVAILABLE, 0, 0)


def check_tick_size(ctx: Context, reject: Reject) -> None:
    if ctx.order_type == pb.ORDER_TYPE_LIMIT and ctx.price > 0 and ctx.instrument_known:
        assert ctx.instrument is not None
        if ctx.price % ctx.instrument.tick_size:
            reject(pb.REJECT_CODE_TICK_SIZE, ctx.price, ctx.instrument.tick_size)


def check_order_size(ctx: Context, reject: Reject) -> None:
    if ctx.quantity <= 0:
        return
    minimum = ctx.limit(LimitKind.MIN_ORDER_QUANTITY)
    # An order that closes or only reduces a position is exempt: a residual
    # smaller than the minimum must stay sellable.
    if minimum is not None and ctx.quantity < minimum and not ctx.is_reducing():
        reject(pb.REJECT_CODE_MIN_ORDER_QUANTITY, ctx.quantity, minimum)
    if ctx.instrument_known and ctx.instrument is not None \
            and ctx.quantity % ctx.instrument.lot_size:
        reject(pb.REJECT_CODE_LOT_SIZE, ctx.quantity, ctx.instrument.lot_size)


def check_price_collar(ctx: Context, reject: Reject) -> None:
    if ctx.order_type != pb.ORDER_TYPE_LIMIT or ctx.price <= 0 or not ctx.instrument_known:
        return
    collar = ctx.limit(LimitKind.PRICE_COLLAR_BPS)
    if collar is None:
        return
    assert ctx.instrument is not None
    last = ctx.instrument.last_price
    if last is None:
        reject(pb.REJECT_CODE_PRICE_UNAVAILABLE, 0, 0)
        return
    deviation = abs(ctx.price - last) * 10_000
    if deviation > collar * last:
        reject(pb.REJECT_CODE_PRICE_COLLAR, clamp(ceil_div(deviation, last)), collar)


def check_arithmetic_fits(ctx: Context, reject: Reject) -> None:
    overflowed = (ctx.price_valid and not ctx.notional_valid) or (
        ctx.account_known and not ctx.projection_valid
    )
    if ctx.quantity > 0 and overflowed:
        reject(pb.REJECT_CODE_ARITHMETIC_OVERFLOW, ctx.quantity, ctx.valuation_price)


def check_limits_configured(ctx: Context, reject: Reject) -> None:
    if not ctx.account_known:
        return
    missing = 0
    for kind in REQUIRED_LIMITS:
        if ctx.limit(kind) is None:
            missing |= 1 << kind
    if missing:
        reject(pb.REJECT_CODE_LIMITS_NOT_CONFIGURED, missing, (1 << len(REQUIRED_LIMITS)) - 1)


def check_max_order_quantity(ctx: Context, reject: Reject) -> None:
    limit = ctx.limit(LimitKind.MAX_ORDER_QUANTITY)
    if limit is not None and ctx.quantity > limit:
        reject(pb.REJECT_CODE_MAX_ORDER_QUANTITY, ctx.quantity, limit)


def check_max_order_notional(ctx: Context, reject: Reject) -> None:
    limit = ctx.limit(LimitKind.MAX_ORDER_NOTIONAL)
    if ctx.notional_valid and limit is not None and ctx.notional > limit:
        reject(pb.REJECT_CODE_MAX_ORDER_NOTIONAL, ctx.notional, limit)


def check_min_order_notional(ctx: Context, reject: Reject) -> None:
    """The minimum quantity's exemption: closing or only reducing always goes."""
    minimum = ctx.limit(LimitKind.MIN_ORDER_NOTIONAL)
    if ctx.notional_valid and ctx.quantity > 0 and minimum is not None \
            and ctx.notional < minimum and not ctx.is_reducing():
        reject(pb.REJECT_CODE_MIN_ORDER_NOTIONAL, ctx.notional, minimum)


def check_position_limits(ctx: Context, reject: Reject) -> None:
    """Worst case counting working orders; a buy grows only the long side."""
    if not ctx.projection_valid or ctx.quantity <= 0:
        return
    net = ctx.limit(LimitKind.MAX_NET_POSITION)
    if ctx.is_buy():
        long_after = ctx.position + ctx.working_buy + ctx.quantity
        if net is not None and long_after > net:
            reject(pb.REJECT_CODE_MAX_NET_POSITION, clamp(long_after), net)
        long = ctx.limit(LimitKind.MAX_LONG_POSITION)
        if long is not None and long_after > long:
            reject(pb.REJECT_CODE_MAX_LONG_POSITION, clamp(long_after), long)
    else:
        short_after = -(ctx.position - ctx.working_sell - ctx.quantity)
        if net is not None and short_after > net:
            reject(pb.REJECT_CODE_MAX_NET_POSITION, clamp(short_after), net)
        short = ctx.limit(LimitKind.MAX_SHORT_POSITION)
        if short is not None and short_after > short:
            reject(pb.REJECT_CODE_MAX_SHORT_POSITION, clamp(short_after), short)


def check_short_sale(ctx: Context, reject: Reject) -> None:
    if ctx.quantity <= 0 or not ctx.instrument_known:
        return
    assert ctx.instrument is not None
    if ctx.side == pb.SIDE_SELL:
        left_after = ctx.position - ctx.working_sell - ctx.quantity
        if left_after < 0:
            reject(pb.REJECT_CODE_SHORT_SALE_NOT_MARKED, clamp(left_after), 0)
    elif ctx.side == pb.SIDE_SELL_SHORT:
        if ctx.instrument.short_restricted:
            reject(pb.REJECT_CODE_SHORT_SALE_RESTRICTED, 0, 0)
        available = 0
        if ctx.slot is not None and ctx.slot.located > ctx.slot.locate_used:
            available = ctx.slot.located - ctx.slot.locate_used
        if ctx.quantity > available:
            reject(pb.REJECT_CODE_NO_LOCATE, ctx.quantity, available)


def check_account_valuation(ctx: Context, reject: Reject) -> None:
    if not ctx.scan_needed:
        return
    if ctx.scan_unpriced:
        reject(pb.REJECT_CODE_PRICE_UNAVAILABLE, 1, 0)
    elif ctx.scan_overflow:
        reject(pb.REJECT_CODE_ARITHMETIC_OVERFLOW, 0, 0)


def check_exposure(ctx: Context, reject: Reject) -> None:
    if not ctx.valuation_ok or not ctx.notional_valid:
        return
    gross_after = ctx.gross + ctx.notional
    limit = ctx.account_limit(LimitKind.MAX_GROSS_EXPOSURE)
    if limit is not None and gross_after > limit:
        reject(pb.REJECT_CODE_MAX_GROSS_EXPOSURE, clamp(gross_after), limit)
    net_after = ctx.net + ctx.notional if ctx.is_buy() else ctx.net - ctx.notional
    limit = ctx.account_limit(LimitKind.MAX_NET_EXPOSURE)
    if limit is not None and abs(net_after) > limit and abs(net_after) > abs(ctx.net):
        reject(pb.REJECT_CODE_MAX_NET_EXPOSURE, clamp(abs(net_after)), limit)


def check_buying_power(ctx: Context, reject: Reject) -> None:
    if not ctx.valuation_ok or not ctx.notional_valid or ctx.account is None \
            or ctx.account.cash is None or ctx.side == pb.SIDE_SELL:
        return
    available = ctx.account.cash + ctx.account.credit_line - ctx.committed
    # The part of a buy that covers a short (one not covered by working buys
    # yet) is not held, and releases what that part of the short commits (its
    # value at the last price): the order is held to the net change.
    # An order that only covers holds nothing: it commits no more than before,
    # however little is available.
    held, cover = ctx.notional, 0
    uncovered = -(ctx.position + ctx.working_buy)
    last = ctx.instrument.last_price if ctx.instrument is not None else None
    if ctx.signed_quantity > 0 and ctx.quantity > 0 and uncovered > 0 and last is not None:
        cover = min(ctx.quantity, uncovered)
        held -= cover * (ctx.notional // ctx.quantity)
        available += cover * last
    if held > available and (cover == 0 or held > 0):
        reject(pb.REJECT_CODE_BUYING_POWER, held, clamp(available))


def margin_of_slot(instrument: RefInstrument, value: int, working_buy: int,
                   working_sell: int) -> int:
    """Initial margin (notional x bps) of one position in its worst case: every
    working buy fills, or every working sell does; long at the long rate,
    short at the short rate."""
    def side(extreme: int) -> int:
        return extreme * instrument.margin_bps[0] if extreme > 0 \
            else -extreme * instrument.margin_bps[1]
    return max(side(value + working_buy), side(value - working_sell))


def check_margin(ctx: Context, reject: Reject) -> None:
    """Initial margin (positions + working orders + this order) against equity."""
    account, instrument = ctx.account, ctx.instrument
    if not ctx.valuation_ok or not ctx.notional_valid or account is None \
            or instrument is None or account.cash is None or ctx.is_reducing():
        return
    value, working_buy, working_sell = ctx.order_slot
    if ctx.is_buy():
        working_buy += ctx.notional
    else:
        working_sell += ctx.notional
    required = ctx.initial_margin_bps + margin_of_slot(instrument, value, working_buy,
                                                       working_sell)
    if required == 0:
        return
    equity = account.cash + account.credit_line + account.realized_pnl + ctx.unrealized
    if required > equity * 10_000:
        reject(pb.REJECT_CODE_MARGIN_SHORTFALL, clamp(ceil_div(required, 10_000)), clamp(equity))


def _first_in_window(rate: deque[tuple[int, int]], since_ns: int) -> int:
    for index, (at_ns, _) in enumerate(rate):
        if at_ns > since_ns:
            return index
    return len(rate)


def _check_rates(ctx: Context, reject: Reject, rate: deque[tuple[int, int]],
                 cumulative_notional: int, limits: Mapping[int, int], order_code: int,
                 notional_code: int) -> None:
    """Sliding windows over a ring of approved orders (an account's or a group's):
    their count and their notional, with the windows and limits of ``limits``."""
    limit = limits.get(LimitKind.MAX_ORDERS_PER_WINDOW)
    if limit is not None:
        since = ctx.now_ns - window_ns(limits.get(LimitKind.ORDER_WINDOW_MS),
                                       DEFAULT_ORDER_WINDOW_MS)
        count = len(rate) - _first_in_window(rate, since)
        if count + 1 > limit:
            reject(order_code, count + 1, limit)
    limit = limits.get(LimitKind.MAX_NOTIONAL_PER_WINDOW)
    if limit is not None and ctx.notional_valid:
        since = ctx.now_ns - window_ns(limits.get(LimitKind.NOTIONAL_WINDOW_MS),
                                       DEFAULT_NOTIONAL_WINDOW_MS)
        first = _first_in_window(rate, since)
        if first == 0 and len(rate) == RATE_RING_CAPACITY:
            # the ring forgot orders still inside the window: fail closed
            reject(notional_code, INT64_MAX, limit)
            return
        newest = cumulative_notional
        if first == len(rate):
            before = newest
        elif first > 0:
            before = rate[first - 1][1]
        else:
            before = 0
        if newest - before + ctx.notional > limit:
            reject(notional_code, clamp(newest - before + ctx.notional), limit)


def check_velocity(ctx: Context, reject: Reject) -> None:
    account = ctx.account
    if account is None or not ctx.account_known or ctx.quantity <= 0:
        return
    _check_rates(ctx, reject, account.rate, account.cumulative_notional, account.limits or {},
                 pb.REJECT_CODE_ORDER_RATE, pb.REJECT_CODE_NOTIONAL_RATE)


def check_max_working_orders(ctx: Context, reject: Reject) -> None:
    limit = ctx.account_limit(LimitKind.MAX_WORKING_ORDERS)
    if ctx.account_known and limit is not None and ctx.account is not None \
            and len(ctx.account.working) + 1 > limit:
        reject(pb.REJECT_CODE_MAX_WORKING_ORDERS, len(ctx.account.working) + 1, limit)


def check_concentration(ctx: Context, reject: Reject) -> None:
    if not ctx.valuation_ok or not ctx.notional_valid:
        return
    gross_after = ctx.gross + ctx.notional
    floor = ctx.account_limit(LimitKind.CONCENTRATION_MIN_GROSS) or 0
    if gross_after <= 0 or gross_after < floor:
        return
    for kind, exposure, code in (
        (LimitKind.MAX_ISSUER_CONCENTRATION_BPS, ctx.issuer_exposure,
         pb.REJECT_CODE_ISSUER_CONCENTRATION),
        (LimitKind.MAX_SECTOR_CONCENTRATION_BPS, ctx.sector_exposure,
         pb.REJECT_CODE_SECTOR_CONCENTRATION),
    ):
        bps = ctx.account_limit(kind)
        share_after = exposure + ctx.notional
        if bps is not None and share_after * 10_000 > bps * gross_after:
            reject(code, clamp(ceil_div(share_after * 10_000, gross_after)), bps)


def check_venue_exposure(ctx: Context, reject: Reject) -> None:
    account = ctx.account
    if account is None or not ctx.account_known or not ctx.notional_valid:
        return
    for name, named, default, working, code in (
        (ctx.venue, account.venue_limits, LimitKind.MAX_VENUE_EXPOSURE, ctx.working_venue,
         pb.REJECT_CODE_VENUE_EXPOSURE),
        (ctx.counterparty, account.counterparty_limits, LimitKind.MAX_COUNTERPARTY_EXPOSURE,
         ctx.working_counterparty, pb.REJECT_CODE_COUNTERPARTY_EXPOSURE),
    ):
        if not name:
            continue
        limit = named.get(name) if len(name) <= MAX_TAG_LENGTH else None
        if limit is None:
            limit = ctx.account_limit(default)
        if limit is None:
            continue
        after = (working.get(name, 0) if len(name) <= MAX_TAG_LENGTH else 0) + ctx.notional \
            - ctx.group_notional
        if after > limit:
            reject(code, clamp(after), limit)


def check_loss_limit(ctx: Context, reject: Reject) -> None:
    loss_limit = ctx.account_limit(LimitKind.LOSS_LIMIT)
    if not ctx.valuation_ok or loss_limit is None or ctx.account is None:
        return
    pnl = ctx.unrealized + ctx.account.realized_pnl
    if pnl < -loss_limit and not ctx.is_reducing():
        reject(pb.REJECT_CODE_LOSS_LIMIT, clamp(pnl), -loss_limit)


def _check_group_positions(ctx: Context, group: GroupView, reject: Reject) -> None:
    """The group's long and short limits on the order's symbol, over all its members
    (the ordering account with its own working figures, order groups counted once)."""
    if not ctx.projection_valid:
        return
    position = group.position + ctx.position
    if ctx.is_buy():
        limit = group.limits.get(LimitKind.MAX_LONG_POSITION)
        long_after = position + group.working_buy + ctx.working_buy + ctx.quantity
        if limit is not None and long_after > limit:
            reject(pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, clamp(long_after), limit)
    else:
        limit = group.limits.get(LimitKind.MAX_SHORT_POSITION)
        short_after = -(position - group.working_sell - ctx.working_sell - ctx.quantity)
        if limit is not None and short_after > limit:
            reject(pb.REJECT_CODE_GROUP_MAX_SHORT_POSITION, clamp(short_after), limit)


def _check_group_valuation(ctx: Context, group: GroupView, reject: Reject) -> None:
    """The group's gross and net exposure and loss limit over its members' books."""
    limits = group.limits
    if not group.values_books or ctx.account is None:
        return
    if group.unpriced or ctx.scan_unpriced:
        reject(pb.REJECT_CODE_PRICE_UNAVAILABLE, 2, 0)
        return
    gross = group.gross + ctx.gross
    net = group.net + ctx.net
    pnl = group.pnl + ctx.unrealized + ctx.account.realized_pnl
    if not all(fits_int64(value) for value in (gross, net, pnl)):
        reject(pb.REJECT_CODE_ARITHMETIC_OVERFLOW, 2, 0)
        return
    if ctx.notional_valid:
        limit = limits.get(LimitKind.MAX_GROSS_EXPOSURE)
        gross_after = gross + ctx.notional
        if limit is not None and gross_after > limit:
            reject(pb.REJECT_CODE_GROUP_MAX_GROSS_EXPOSURE, clamp(gross_after), limit)
        limit = limits.get(LimitKind.MAX_NET_EXPOSURE)
        net_after = net + ctx.notional if ctx.is_buy() else net - ctx.notional
        if limit is not None and abs(net_after) > limit and abs(net_after) > abs(net):
            reject(pb.REJECT_CODE_GROUP_MAX_NET_EXPOSURE, clamp(abs(net_after)), limit)
    loss_limit = limits.get(LimitKind.LOSS_LIMIT)
    if loss_limit is not None and pnl < -loss_limit and not ctx.is_reducing():
        reject(pb.REJECT_CODE_GROUP_LOSS_LIMIT, clamp(pnl), -loss_limit)


def check_account_groups(ctx: Context, reject: Reject) -> None:
    """Each group the account is in (a desk, its firm), in the account's order, held to
    its limits over all its members; a group that cannot be checked fails closed."""
    if not ctx.account_known:
        return
    if ctx.account_groups_invalid:
        reject(pb.REJECT_CODE_GROUP_UNAVAILABLE, int(GroupUnavailable.TREE_INVALID), 0)
        return
    for place, group in enumerate(ctx.account_groups, start=1):
        if group.unavailable:
            reject(pb.REJECT_CODE_GROUP_UNAVAILABLE, group.unavailable, place)
            continue
        if ctx.quantity <= 0 or not ctx.instrument_known:
            # (an unknown symbol's order is refused already; the account's own
            # figures, its scan's, are not taken for it: as the core)
            continue
        _check_group_positions(ctx, group, reject)
        _check_group_valuation(ctx, group, reject)
        _check_rates(ctx, reject, group.record.rate, group.record.cumulative_notional,
                     group.limits, pb.REJECT_CODE_GROUP_ORDER_RATE,
                     pb.REJECT_CODE_GROUP_NOTIONAL_RATE)


def _check_one_halt(ctx: Context, reject: Reject, mode: int, scope: int, code: int) -> None:
    if mode == pb.HALT_MODE_HALTED:
        reject(code, scope, 0)
    elif mode == pb.HALT_MODE_REDUCE_ONLY and not ctx.is_reducing():
        reject(pb.REJECT_CODE_REDUCE_ONLY, scope, 0)


def check_halts(ctx: Context, reject: Reject) -> None:
    _check_one_halt(ctx, reject, ctx.global_halt, pb.HALT_SCOPE_GLOBAL, pb.REJECT_CODE_GLOBAL_HALT)
    if ctx.account is not None:
        _check_one_halt(
            ctx, reject, ctx.account.halt_mode, pb.HALT_SCOPE_ACCOUNT, pb.REJECT_CODE_ACCOUNT_HALT
        )
    if ctx.instrument is not None:
        _check_one_halt(
            ctx, reject, ctx.instrument.halt_mode, pb.HALT_SCOPE_SYMBOL, pb.REJECT_CODE_SYMBOL_HALT
        )


PIPELINE: tuple[Callable[[Context, Reject], None], ...] = (
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
)

# Rejections the engine caused (a group it cannot check included), or halts
# already in force: not client errors, so they do not feed the reject-storm
# breaker.
_NOT_CLIENT_CAUSED = frozenset((
    pb.REJECT_CODE_STALE_DATA, pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.REJECT_CODE_GLOBAL_HALT,
    pb.REJECT_CODE_ACCOUNT_HALT, pb.REJECT_CODE_SYMBOL_HALT, pb.REJECT_CODE_REDUCE_ONLY,
    pb.REJECT_CODE_GROUP_UNAVAILABLE,
))
# Decisions the engine could not really make: not stored, so a retry gets a real one.
_NOT_MADE = frozenset((pb.REJECT_CODE_STALE_DATA, pb.REJECT_CODE_CAPACITY_EXHAUSTED,
                       pb.REJECT_CODE_GROUP_UNAVAILABLE))


def _check_key(value: bytes, what: str) -> bytes:
    """The table's own check of an id it is given (bytes, length, no NUL), as the core does it.

    Not the wire's rule for ids (:mod:`pretrade.engine.text`): the table takes
    any id that fits its record, and the twin must refuse exactly what it refuses.
    """
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"{what} must be 1 to {MAX_ID_LENGTH} bytes, got {len(value)}")
    if b"\0" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


def _check_limits(limits: Mapping[int, int] | None) -> Limits | None:
    if limits is None:
        return None
    for kind, value in limits.items():
        if not 0 <= kind < len(LimitKind):
            raise ValueError(f"unknown limit kind {kind}")
        if not 0 <= value <= INT64_MAX:
            raise ValueError(f"limit {kind} = {value} is not a non-negative int64")
    return dict(limits)


def _halt_mode(mode: int) -> int:
    if mode not in (HALT_NONE, pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
        raise ValueError(f"unknown halt mode {mode}")
    return HALT_NONE if mode == pb.HALT_MODE_ACTIVE else mode


def _tag(value: bytes) -> bytes:
    """How a venue or counterparty is stored with an order: too long is none."""
    return value if len(value) <= MAX_TAG_LENGTH else b""


_INT64 = range(INT64_MIN, INT64_MAX + 1)
_INT32 = range(-(1 << 31), 1 << 31)
_TIMES_IN_FORCE = (pb.TIME_IN_FORCE_UNSPECIFIED, pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_IOC,
                   pb.TIME_IN_FORCE_GTC, pb.TIME_IN_FORCE_GTD)


def _checked_restore(order: tuple[Any, ...]) -> tuple[Any, ...]:
    """One restored order's fields, checked as the core checks them (12, or 15 with
    ``time_in_force, expire_at_ms, working_until_ms``, or 17 for a replacement:
    ``replaces`` and ``carried`` follow those three)."""
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
    if not isinstance(replaces, bytes) or len(replaces) > MAX_ORDER_ID_LENGTH \
            or b"\0" in replaces:
        raise ValueError(f"a replaced order id must be at most {MAX_ORDER_ID_LENGTH} bytes")
    if not isinstance(group, bytes) or len(group) > MAX_ORDER_ID_LENGTH or b"\0" in group:
        raise ValueError(f"a group id must be at most {MAX_ORDER_ID_LENGTH} bytes")
    if carried not in _INT64 or carried < 0 or (approved and carried >= quantity) \
            or (carried and not replaces):
        raise ValueError(f"order {order_id!r}: carried fills {carried} do not fit its quantity")
    if not isinstance(order_id, bytes) or not 1 <= len(order_id) <= MAX_ORDER_ID_LENGTH:
        raise ValueError(f"order id must be 1 to {MAX_ORDER_ID_LENGTH} bytes")
    _check_key(symbol, "symbol")
    for tag in (venue, counterparty):
        if not isinstance(tag, bytes) or len(tag) > MAX_TAG_LENGTH or b"\0" in tag:
            raise ValueError(f"venue and counterparty must be at most {MAX_TAG_LENGTH} bytes")
    if side not in (pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT) \
            or order_type not in (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET):
        raise ValueError(f"order {order_id!r}: side {side} or order type {order_type} unknown")
    if time_in_force not in _TIMES_IN_FORCE:
        raise ValueError(f"order {order_id!r}: time in force {time_in_force} unknown")
    for value in (quantity, price, valuation_price, notional, expire_at_ms, working_until_ms):
        if value not in _INT64:
            raise ValueError(f"order {order_id!r}: {value} does not fit in int64")
    if approved and (quantity <= 0 or valuation_price <= 0
                     or not fits_int64(quantity * valuation_price)):
        raise ValueError(f"order {order_id!r}: an approved order has a positive quantity and "
                         "valuation price whose product fits in int64")
    rejections = tuple(tuple(r) for r in rejections)
    for code, observed, limit in rejections[:STORED_REJECTIONS]:
        if code not in _INT32 or observed not in _INT64 or limit not in _INT64:
            raise ValueError(f"order {order_id!r}: rejection {(code, observed, limit)} "
                             "does not fit")
    return (order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
            venue, counterparty, bool(approved), rejections, time_in_force, expire_at_ms,
            working_until_ms, replaces, carried, group)


class ReferenceBook:
    """Dictionaries in, decisions out: the oracle for the compiled Engine.

    The capacities mirror the table's (defaults: ``Capacities``'), so a full
    region gives the same ``TableFullError`` and the same CAPACITY_EXHAUSTED
    decisions in both; ``max_orders_per_account`` (0: ``max_orders / 8``)
    and ``order_expiry_ms`` are the table's policy for decided orders.
    """

    def __init__(self, max_orders: int = 65_536, *, max_accounts: int = 16_384,
                 max_instruments: int = 65_536, max_positions: int = 1_048_576,
                 max_overrides: int = 65_536, max_orders_per_account: int = 0,
                 order_expiry_ms: int = DEFAULT_ORDER_EXPIRY_MS) -> None:
        for name, value in (("max_accounts", max_accounts), ("max_instruments", max_instruments),
                            ("max_positions", max_positions), ("max_overrides", max_overrides),
                            ("max_orders", max_orders)):
            if not 1 <= value <= MAX_CAPACITY:
                raise ValueError(f"{name} must be between 1 and {MAX_CAPACITY}, got {value}")
        if not 0 <= max_orders_per_account <= MAX_CAPACITY or order_expiry_ms < 0:
            raise ValueError("max_orders_per_account and order_expiry_ms must not be negative")
        self.accounts: dict[bytes, RefAccount] = {}
        self.instruments: dict[bytes, RefInstrument] = {}
        self.positions: dict[tuple[bytes, bytes], RefPosition] = {}
        self.orders: dict[tuple[bytes, bytes], RefOrder] = {}
        self.groups: dict[bytes, RefGroup] = {}
        self.max_orders = max_orders
        self.max_groups = min(max_accounts, MAX_GROUPS)
        self.max_accounts, self.max_instruments = max_accounts, max_instruments
        self.max_positions, self.max_overrides = max_positions, max_overrides
        self.share = max_orders_per_account or max(1, max_orders // ACCOUNT_SHARE_DIVISOR)
        self.order_expiry_ns = order_expiry_ms * NS_PER_MS
        self.capacities = {ORDER_TABLE: max_orders, ACCOUNT_ORDERS: self.share,
                           ACCOUNTS: max_accounts, INSTRUMENTS: max_instruments,
                           POSITIONS: max_positions, OVERRIDES: max_overrides,
                           GROUPS: self.max_groups}
        self.override_count = 0
        self.clock_ns = 0
        self.global_halt = HALT_NONE
        self.sync_live = False
        self.sync_live_until_ns = 0
        self.lost_slots: set[int] = set()
        # Account ownership: 0 shards is off; else {shard: (epoch, until_ns)} held.
        self.shard_count = 0
        self.shard_leases: dict[int, tuple[int, int]] = {}

    # -- STATE (mirrors PositionTable) --

    def _full(self, capacity: int, what: str) -> TableFullError:
        limit = self.capacities[capacity]
        return TableFullError(f"{what} table full ({limit})", capacity, limit)

    def _account(self, account_id: bytes) -> RefAccount:
        key = _check_key(account_id, "account id")
        found = self.accounts.get(key)
        if found is None:
            if len(self.accounts) >= self.max_accounts:
                raise self._full(ACCOUNTS, "account")
            found = self.accounts[key] = RefAccount()
        return found

    def _instrument(self, symbol: bytes) -> RefInstrument:
        key = _check_key(symbol, "symbol")
        found = self.instruments.get(key)
        if found is None:
            if len(self.instruments) >= self.max_instruments:
                raise self._full(INSTRUMENTS, "instrument")
            found = self.instruments[key] = RefInstrument()
        return found

    def _slot(self, account_id: bytes, symbol: bytes) -> RefPosition:
        """The position slot, made (account, instrument, slot: in that order) if new."""
        self._account(account_id)
        self._instrument(symbol)
        found = self.positions.get((account_id, symbol))
        if found is None:
            if len(self.positions) >= self.max_positions:
                raise self._full(POSITIONS, "position")
            found = self.positions[(account_id, symbol)] = RefPosition()
        return found

    def _check_room(self, account_id: bytes, symbols: Iterable[bytes]) -> None:
        """TableFullError before anything is made when the instruments and slots do not fit."""
        new_instruments = new_positions = 0
        for symbol in symbols:
            _check_key(symbol, "symbol")
            if symbol not in self.instruments:
                new_instruments += 1
                new_positions += 1
            elif (account_id, symbol) not in self.positions:
                new_positions += 1
        if len(self.instruments) + new_instruments > self.max_instruments:
            raise self._full(INSTRUMENTS, "instrument")
        if len(self.positions) + new_positions > self.max_positions:
            raise self._full(POSITIONS, "position")

    def set_sync_live(self, live: bool, until_ns: int = 0) -> None:
        self.sync_live = live
        self.sync_live_until_ns = until_ns if live else 0

    # -- LOST SLOTS (mirrors PositionTable.set_slots_lost) --

    def set_slots_lost(self, ranges: Iterable[tuple[int, int]], lost: bool) -> int:
        spans = [(int(first), int(last)) for first, last in ranges]
        for first, last in spans:
            if not 0 <= first <= last < CLUSTER_SLOTS:
                raise ValueError(f"a slot range is 0 <= first <= last < {CLUSTER_SLOTS}, "
                                 f"got {first}..{last}")
        for first, last in spans:
            if lost:
                self.lost_slots.update(range(first, last + 1))
            else:
                self.lost_slots.difference_update(range(first, last + 1))
        return len(self.lost_slots)

    def lost_slot_count(self) -> int:
        return len(self.lost_slots)

    def slot_lost(self, slot: int) -> bool:
        if not 0 <= slot < CLUSTER_SLOTS:
            raise ValueError(f"a slot is below {CLUSTER_SLOTS}, got {slot}")
        return slot in self.lost_slots

    # -- ACCOUNT OWNERSHIP (mirrors PositionTable.set_shards / set_shard_lease) --

    def set_shards(self, count: int) -> None:
        if not 0 <= count <= MAX_SHARDS:
            raise ValueError(f"at most {MAX_SHARDS} shards, got {count}")
        self.shard_count = count
        self.shard_leases = {}

    def set_shard_lease(self, shard: int, epoch: int, until_ns: int) -> None:
        if not 0 <= shard < self.shard_count:
            raise ValueError(f"no shard {shard} in a table of {self.shard_count} shards")
        if epoch < 0:
            raise ValueError("a fencing epoch is positive (0: released)")
        if epoch == 0:
            self.shard_leases.pop(shard, None)
        else:
            self.shard_leases[shard] = (epoch, until_ns)

    def shard_lease(self, shard: int) -> tuple[int, int]:
        return self.shard_leases.get(shard, (0, 0))

    def shard_held(self, account_id: bytes, now_ns: int) -> bool:
        """Ownership off, or the account's shard held with its deadline not passed."""
        if not self.shard_count:
            return True
        shard = cluster_slot(account_id) * self.shard_count // CLUSTER_SLOTS
        epoch, until = self.shard_lease(shard)
        return epoch != 0 and until != 0 and now_ns <= until


    def set_account_state(self, account_id: bytes, *, known: bool, invalid: bool = False,
                          capacity: int = 0) -> None:
        if not 0 <= capacity <= GROUPS:
            raise ValueError(f"unknown capacity {capacity}")
        account = self._account(account_id)
        account.known, account.invalid, account.capacity = known, invalid, capacity

    def set_account_limits(self, account_id: bytes, limits: Mapping[int, int] | None) -> None:
        checked = _check_limits(limits)
        self._account(account_id).limits = checked


    def set_symbol_limits(
        self, account_id: bytes, symbol: bytes, limits: Mapping[int, int] | None
    ) -> None:
        self._account(account_id)
        self._instrument(symbol)
        checked = _check_limits(limits or None)
        if (account_id, symbol) not in self.positions and not limits:
            return
        slot = self._slot(account_id, symbol)
        if not slot.override_record:
            if self.override_count >= self.max_overrides:
                raise self._full(OVERRIDES, "override")
            slot.override_record = True
            self.override_count += 1
        slot.overrides = checked or {}

    def set_balances(self, account_id: bytes, cash: int | None, credit_line: int) -> None:
        account = self._account(account_id)
        account.cash = cash
        account.credit_line = 0 if cash is None else credit_line


    def set_locates(self, account_id: bytes, locates: Mapping[bytes, int]) -> None:
        self._account(account_id)
        self._check_room(account_id, locates)
        slots = {symbol: self._slot(account_id, symbol) for symbol in locates}
        for (account, _), position in self.positions.items():
            if account == account_id:
                position.located = 0
        for symbol, quantity in locates.items():
            slots[symbol].located = quantity

    def set_tag_limits(self, account_id: bytes, venues: Mapping[bytes, int],
                       counterparties: Mapping[bytes, int]) -> None:
        for what, limits in (("venue", venues), ("counterparty", counterparties)):
            if len(limits) > TAG_LIMIT_SLOTS:
                raise ValueError(f"at most {TAG_LIMIT_SLOTS} named {what} limits per account")
            for name, limit in limits.items():
                if not 1 <= len(name) <= MAX_TAG_LENGTH or b"\0" in name:
                    raise ValueError(f"{what} name must be 1 to {MAX_TAG_LENGTH} bytes")
                if not 0 <= limit <= INT64_MAX:
                    raise ValueError(f"{what} limit must be a non-negative int64")
        account = self._account(account_id)
        account.venue_limits = dict(venues)
        account.counterparty_limits = dict(counterparties)


    # -- ACCOUNT GROUPS (mirrors PositionTable.set_group / set_account_groups) --

    def _group(self, group_id: bytes) -> RefGroup:
        key = _check_key(group_id, "group id")
        found = self.groups.get(key)
        if found is None:
            if len(self.groups) >= self.max_groups:
                raise self._full(GROUPS, "group")
            found = self.groups[key] = RefGroup()
        return found

    def set_group(self, group_id: bytes, limits: Mapping[int, int] | None, *,
                  invalid: bool = False) -> None:
        """A group's ``group:<G>`` hash: its limits (only GROUP_LIMIT_KINDS), None when
        it has none (not configured), or ``invalid`` when it did not parse (then it
        keeps no limits)."""
        for kind in limits or ():
            if kind not in GROUP_LIMIT_KINDS:
                raise ValueError(f"limit kind {kind} cannot be set on a group")
        checked = _check_limits(None if invalid else limits)
        group = self._group(group_id)
        group.known = checked is not None or invalid
        group.invalid = invalid
        group.limits = checked or {}

    def set_account_groups(self, account_id: bytes, group_ids: Sequence[bytes], *,
                           invalid: bool = False) -> None:
        """The account's groups, flattened (its groups and their parents), in check
        order; ``invalid`` when its group tree could not be resolved. A group not
        seen before gets a record, not configured until :meth:`set_group` (as the
        table does it: one by one, then the account's record)."""
        ids = tuple(_check_key(group_id, "group id") for group_id in group_ids)
        if len(ids) > MAX_ACCOUNT_GROUPS:
            raise ValueError(f"an account is in at most {MAX_ACCOUNT_GROUPS} groups, "
                             f"got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError("an account's groups must be distinct")
        for group_id in ids:
            self._group(group_id)
        account = self._account(account_id)
        account.groups, account.groups_invalid = ids, invalid

    def account_groups(self, account_id: bytes) -> tuple[bytes, ...]:
        """The account's groups in their stored (check) order; () for an unknown account."""
        account = self.accounts.get(_check_key(account_id, "account id"))
        return () if account is None else account.groups

    def group_info(self, group_id: bytes) -> dict[str, Any] | None:
        """A group's record (``known``, ``invalid``, ``limits``, ``members``), or None."""
        key = _check_key(group_id, "group id")
        group = self.groups.get(key)
        if group is None:
            return None
        return {"known": group.known, "invalid": group.invalid, "limits": dict(group.limits),
                "members": tuple(sorted(self._members(key)))}

    def _members(self, group_id: bytes) -> list[bytes]:
        """The accounts whose groups include ``group_id``, in record order."""
        return [account_id for account_id, account in self.accounts.items()
                if group_id in account.groups]

    def replace_positions(
        self, account_id: bytes, positions: Mapping[bytes, tuple[int, int]],
        filled: Mapping[bytes, int] | None = None, cancelled: Collection[bytes] | None = None,
        realized_pnl: int | None = None, state_version: int | None = None,
    ) -> None:
        account = self._account(account_id)
        if state_version is not None and not 0 <= state_version <= INT64_MAX:
            raise OverflowError("state version must be a non-negative int64")
        for symbol, (quantity, cost_basis) in positions.items():
            if not (fits_int64(quantity) and fits_int64(cost_basis)):
                raise OverflowError(f"position {symbol!r} does not fit in int64")
        self._check_room(account_id, positions)
        slots = {symbol: self._slot(account_id, symbol) for symbol in positions}
        if realized_pnl is not None and not fits_int64(realized_pnl):
            raise OverflowError("realized P&L does not fit in int64")
        for (owner, _), position in self.positions.items():
            if owner == account_id:
                position.quantity = position.cost_basis = 0
        for symbol, (quantity, cost_basis) in positions.items():
            slots[symbol].quantity, slots[symbol].cost_basis = quantity, cost_basis
        if realized_pnl is not None:
            account.realized_pnl = realized_pnl
        if filled is not None or cancelled is not None:
            self._recompute_working(account_id, account, filled or {}, cancelled or ())
        if state_version is not None:
            account.state_version = state_version

    def _recompute_working(self, account_id: bytes, account: RefAccount,
                           filled: Mapping[bytes, int], cancelled: Collection[bytes]) -> None:
        # The core walks its working list from the head and pushes what still
        # works onto a new list: the new list is the kept ones reversed.
        kept = []
        remaining_of: dict[bytes, int] = {}
        for order_id in account.working:
            order = self.orders[(account_id, order_id)]
            if order_id in cancelled:
                remaining = 0
            else:
                # FIX cumulative quantity: a replacement's filled units
                # include its original's and what its chain filled before
                own = filled.get(order_id, 0)
                done = order.carried + own
                if order.replaces:
                    done += filled.get(order.replaces, 0)
                order.own_filled = min(own, INT64_MAX)
                remaining = max(0, order.quantity - done)
            remaining_of[order_id] = remaining
        # A leg's fill ends no other leg of its group: their cancels do (the
        # table cannot tell which legs the venue's group held).
        for order_id, remaining in remaining_of.items():
            order = self.orders[(account_id, order_id)]
            order.remaining = remaining
            if remaining > 0:
                kept.append(order_id)
            else:
                order.working = False
                self._idle(account, order_id, order, self.clock_ns)
        account.working = deque(reversed(kept))
        self._resum(account_id)

    def _working_sums(self, account_id: bytes) -> tuple[
            dict[tuple[bytes, int], tuple[int, int]], dict[bytes, int], dict[bytes, int]]:
        """What the account's working orders count, recomputed from them: per
        (symbol, side) units and notional, and notional per venue and per
        counterparty. Each counts its remaining units at its valuation price,
        except that the legs of one order group count, per side, the most
        units and the most notional any of them has left."""
        account = self.accounts[account_id]
        counted: list[tuple[bytes, int, bytes, bytes, int, int]] = []
        worst: dict[tuple[tuple[bytes, bytes, bytes, bytes], int], list[int]] = {}
        for order_id in account.working:
            order = self.orders[(account_id, order_id)]
            notional = order.remaining * order.valuation_price
            if order.group:
                most = worst.setdefault((order.group_key, order.side), [0, 0])
                most[0], most[1] = max(most[0], order.remaining), max(most[1], notional)
            else:
                counted.append((order.symbol, order.side, order.venue, order.counterparty,
                                order.remaining, notional))
        for ((_, symbol, venue, counterparty), side), (units, notional) in worst.items():
            counted.append((symbol, side, venue, counterparty, units, notional))
        by_slot: dict[tuple[bytes, int], tuple[int, int]] = {}
        venues: dict[bytes, int] = {}
        counterparties: dict[bytes, int] = {}
        for symbol, side, venue, counterparty, units, notional in counted:
            was = by_slot.get((symbol, side), (0, 0))
            by_slot[(symbol, side)] = (was[0] + units, was[1] + notional)
            venues[venue] = venues.get(venue, 0) + notional
            counterparties[counterparty] = counterparties.get(counterparty, 0) + notional
        return by_slot, venues, counterparties

    def _resum(self, account_id: bytes) -> None:
        """Every working sum of the account's positions, from :meth:`_working_sums`."""
        by_slot = self._working_sums(account_id)[0]
        for (owner, symbol), slot in self.positions.items():
            if owner != account_id:
                continue
            buy = by_slot.get((symbol, pb.SIDE_BUY), (0, 0))
            sell = by_slot.get((symbol, pb.SIDE_SELL), (0, 0))
            short = by_slot.get((symbol, pb.SIDE_SELL_SHORT), (0, 0))
            slot.working_buy, slot.working_buy_notional = buy
            slot.working_sell = sell[0] + short[0]
            slot.working_sell_notional = sell[1] + short[1]
            slot.working_short_notional = short[1]

    def end_lapsed_orders(self, now_unix_ms: int) -> int:
        """Working orders whose time in force ended at or before ``now_unix_ms``
        stop counting, as a reported cancel ends them; returns how many."""
        if not fits_int64(now_unix_ms):
            raise OverflowError(f"now_unix_ms {now_unix_ms} does not fit in int64")
        ended = 0
        for account_id, account in self.accounts.items():
            kept: deque[bytes] = deque()
            for order_id in account.working:
                order = self.orders[(account_id, order_id)]
                if order.working_until_ms == 0 or order.working_until_ms > now_unix_ms:
                    kept.append(order_id)
                    continue
                order.remaining, order.working = 0, False
                self._idle(account, order_id, order, self.clock_ns)
                ended += 1
            if len(kept) != len(account.working):
                account.working = kept
                self._resum(account_id)
        return ended

    def set_instrument(
        self, symbol: bytes, *, known: bool, tick_size: int = 1, lot_size: int = 1,
        invalid: bool = False, issuer_id: int = 0, sector_id: int = 0,
        short_restricted: bool = False, currency: str = "",
        margin_bps: tuple[int, int, int, int] = (0, 0, 0, 0),
    ) -> None:
        if tick_size <= 0 or lot_size <= 0:
            raise ValueError(
                f"tick_size and lot_size must be positive, got {tick_size}, {lot_size}")
        rates = tuple(margin_bps)
        if len(rates) != 4 or not all(0 <= rate <= MAX_MARGIN_BPS for rate in rates):
            raise ValueError(f"margin rates are four basis points from 0 to {MAX_MARGIN_BPS}, "
                             f"got {margin_bps!r}")
        if currency and not is_currency_code(currency.encode("ascii", "replace")):
            raise ValueError(f"a currency is three letters A-Z (ISO 4217), got {currency!r}")
        instrument = self._instrument(symbol)
        instrument.known, instrument.invalid = known, invalid
        instrument.tick_size, instrument.lot_size = tick_size, lot_size
        instrument.issuer_id, instrument.sector_id = issuer_id, sector_id
        instrument.short_restricted = short_restricted
        instrument.currency = currency
        instrument.margin_bps = rates


    def set_last_price(self, symbol: bytes, price: int | None) -> None:
        instrument = self._instrument(symbol)
        if price is not None and price <= 0:
            raise ValueError(f"a last price must be positive, got {price}")
        instrument.last_price = price

    def set_halt(self, scope: int, target: bytes | None, mode: int) -> None:
        stored = _halt_mode(mode)
        if scope == pb.HALT_SCOPE_GLOBAL:
            self.global_halt = stored
        elif scope == pb.HALT_SCOPE_ACCOUNT:
            self._account(target or b"").halt_mode = stored
        elif scope == pb.HALT_SCOPE_SYMBOL:
            self._instrument(target or b"").halt_mode = stored
        else:
            raise ValueError(f"unknown halt scope {scope}")

    def clear_halts(self) -> None:
        self.global_halt = HALT_NONE
        for account in self.accounts.values():
            account.halt_mode = HALT_NONE
        for instrument in self.instruments.values():
            instrument.halt_mode = HALT_NONE

    def position(self, account_id: bytes, symbol: bytes) -> tuple[int, int]:
        found = self.positions.get((account_id, symbol))
        return (0, 0) if found is None else (found.quantity, found.cost_basis)

    def working(self, account_id: bytes, symbol: bytes) -> tuple[int, int]:
        found = self.positions.get((account_id, symbol))
        return (0, 0) if found is None else (found.working_buy, found.working_sell)

    # -- DECIDED ORDERS: the account's share, durability, leaving the table --

    def _advance_clock(self, now_ns: int) -> None:
        """The table's clock: forward only, in steps of TABLE_CLOCK_STEP_NS or more."""
        if now_ns - self.clock_ns >= TABLE_CLOCK_STEP_NS:
            self.clock_ns = now_ns

    def _idle(self, account: RefAccount, order_id: bytes, order: RefOrder, at: int) -> None:
        order.idle_since = at
        account.idle.append(order_id)

    def _filter_add(self, account: RefAccount, order_id: bytes) -> bool:
        bits = filter_bits(order_id)
        added = account.evicted & bits != bits
        account.evicted |= bits
        account.evictions += 1
        return added

    def _filter_has(self, account: RefAccount, order_id: bytes) -> bool:
        bits = filter_bits(order_id)
        return account.evictions > 0 and account.evicted & bits == bits

    def _evict(self, account_id: bytes, account: RefAccount, order_id: bytes) -> None:
        del self.orders[(account_id, order_id)]
        self._filter_add(account, order_id)
        account.order_count -= 1

    def _pop_evictable(self, account: RefAccount, account_id: bytes) -> bytes | None:
        """The oldest durable non-working id, among the first EVICT_SCAN; others rotate."""
        for _ in range(EVICT_SCAN):
            if not account.idle:
                return None
            order_id = account.idle.popleft()
            order = self.orders[(account_id, order_id)]
            if order.durable:
                return order_id
            self._idle(account, order_id, order, self.clock_ns)
        return None

    def _allocate(self, account_id: bytes, account: RefAccount) -> int:
        """Room for one more decided order of the account: 0, or the Capacity that is full."""
        if account.order_count < self.share:
            if len(self.orders) >= self.max_orders:
                evicted = self._pop_evictable(account, account_id)
                if evicted is None:
                    return ORDER_TABLE
                self._evict(account_id, account, evicted)
        else:
            evicted = self._pop_evictable(account, account_id)
            if evicted is None:
                return ACCOUNT_ORDERS
            self._evict(account_id, account, evicted)
        account.order_count += 1
        return 0

    def mark_durable(self, account_id: bytes, order_id: bytes) -> bool:
        return self.mark_durable_many(((account_id, order_id),)) == 1

    def mark_durable_many(self, decided: Iterable[tuple[bytes, bytes]]) -> int:
        marked = 0
        for account_id, order_id in decided:
            _check_key(account_id, "account id")
            order = self.orders.get((account_id, order_id))
            if order is not None:
                order.durable = True
                marked += 1
        return marked

    def expire_orders(self, now_ns: int, budget: int = 10_000) -> int:
        self._advance_clock(now_ns)
        evicted = 0
        for account_id, account in self.accounts.items():
            if evicted >= budget:
                break
            visits = len(account.idle)
            while visits > 0 and evicted < budget:
                order = self.orders[(account_id, account.idle[0])]
                if order.idle_since + self.order_expiry_ns > now_ns:
                    break
                order_id = account.idle.popleft()
                if order.durable:
                    self._evict(account_id, account, order_id)
                    evicted += 1
                else:
                    self._idle(account, order_id, order, now_ns)
                visits -= 1
        return evicted

    def forget_orders(self, account_id: bytes, order_ids: Iterable[bytes]) -> int:
        account = self._account(account_id)
        checked = list(order_ids)
        for order_id in checked:
            if not 1 <= len(order_id) <= MAX_ORDER_ID_LENGTH:
                raise ValueError(f"order id must be 1 to {MAX_ORDER_ID_LENGTH} bytes")
        added = 0
        for order_id in checked:
            if (account_id, order_id) not in self.orders:
                added += self._filter_add(account, order_id)
        return added

    def order_id_may_have_expired(self, account_id: bytes, order_id: bytes) -> bool:
        account = self.accounts.get(_check_key(account_id, "account id"))
        return account is not None and self._filter_has(account, order_id)

    def restore_order(self, account_id: bytes, order_id: bytes, symbol: bytes, side: int,
                      order_type: int, quantity: int, price: int, valuation_price: int,
                      notional: int, venue: bytes, counterparty: bytes, approved: bool,
                      rejections: Iterable[Rejection], time_in_force: int = 0,
                      expire_at_ms: int = 0, working_until_ms: int = 0,
                      replaces: bytes = b"", carried: int = 0, group: bytes = b"") -> bool:
        return self.restore_orders(account_id, [(
            order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
            venue, counterparty, approved, rejections, time_in_force, expire_at_ms,
            working_until_ms, replaces, carried, group)]) == 1

    def restore_orders(self, account_id: bytes, orders: Iterable[tuple[Any, ...]]) -> int:
        account = self._account(account_id)
        staged: dict[bytes, tuple[Any, ...]] = {}
        for fields in orders:
            checked = _checked_restore(fields)
            staged[checked[0]] = checked
        missing = [staged_order for order_id, staged_order in staged.items()
                   if (account_id, order_id) not in self.orders]
        if not missing:
            return 0
        if len(missing) > self.share - account.order_count + len(account.idle):
            raise self._full(ACCOUNT_ORDERS, "the account's share of the order")
        if len(missing) > self.max_orders - len(self.orders) + len(account.idle):
            raise self._full(ORDER_TABLE, "order")
        self._check_room(account_id, {staged_order[1] for staged_order in missing})
        # As the core: each restored order counts whole until the batch is in
        # (its group's worst is taken after), so each must fit the sums so far.
        _, venues, counterparties = self._working_sums(account_id)
        grouped = False
        try:
            for staged_order in missing:
                grouped |= self._restore_one(account_id, account, staged_order, venues,
                                             counterparties)
        finally:
            if grouped:
                self._resum(account_id)
        return len(missing)

    def _restore_one(self, account_id: bytes, account: RefAccount, staged: tuple[Any, ...],
                     venues: dict[bytes, int], counterparties: dict[bytes, int]) -> bool:
        """Put back one checked order, counted whole; True when it is a working leg."""
        (order_id, symbol, side, order_type, quantity, price, valuation_price, notional,
         venue, counterparty, approved, rejections, time_in_force, expire_at_ms,
         working_until_ms, replaces, carried, group) = staged
        self._instrument(symbol)
        slot = self._slot(account_id, symbol) if approved else None
        if slot is not None and not self._restored_fits(
                slot, side, quantity, quantity * valuation_price,
                venues.get(venue, 0) if venue else None,
                counterparties.get(counterparty, 0) if counterparty else None):
            raise ValueError(f"order {order_id!r}: its reservation would take the account's "
                             "working sums past int64")
        full = self._allocate(account_id, account)
        if full:
            raise self._full(full, "order")
        order = RefOrder(
            symbol=symbol, side=side, order_type=order_type, quantity=quantity,
            price=price, venue=venue, counterparty=counterparty, approved=approved,
            notional=notional, rejections=rejections[:STORED_REJECTIONS],
            rejection_count=len(rejections), valuation_price=valuation_price,
            durable=True, time_in_force=time_in_force, expire_at_ms=expire_at_ms,
            working_until_ms=working_until_ms, replaces=replaces, carried=carried,
            group=group)
        self.orders[(account_id, order_id)] = order
        if slot is None:
            self._idle(account, order_id, order, self.clock_ns)
            return False
        # the next account snapshot subtracts the fills
        order.working, order.remaining = True, quantity - carried
        if side == pb.SIDE_SELL_SHORT:
            slot.locate_used += quantity
        account.working.appendleft(order_id)
        units, amount = order.remaining, order.remaining * valuation_price
        if side == pb.SIDE_BUY:
            slot.working_buy += units
            slot.working_buy_notional += amount
        else:
            slot.working_sell += units
            slot.working_sell_notional += amount
            if side == pb.SIDE_SELL_SHORT:
                slot.working_short_notional += amount
        venues[venue] = venues.get(venue, 0) + amount
        counterparties[counterparty] = counterparties.get(counterparty, 0) + amount
        return bool(group)

    @staticmethod
    def _restored_fits(slot: RefPosition, side: int, quantity: int, notional: int,
                       venue_total: int | None, counterparty_total: int | None) -> bool:
        if side == pb.SIDE_BUY:
            sums = [slot.working_buy + quantity, slot.working_buy_notional + notional]
        else:
            sums = [slot.working_sell + quantity, slot.working_sell_notional + notional,
                    slot.working_short_notional + notional, slot.locate_used + quantity]
        sums += [total + notional for total in (venue_total, counterparty_total)
                 if total is not None]
        return all(fits_int64(value) for value in sums)

    # -- DECISIONS --

    def _scan(self, ctx: Context, account_id: bytes) -> None:
        assert ctx.instrument is not None
        order_issuer, order_sector = ctx.instrument.issuer_id, ctx.instrument.sector_id
        for (owner, symbol), slot in self.positions.items():
            if owner != account_id:
                continue
            instrument = self.instruments[symbol]
            lost = lost_key_slot(self.lost_slots, symbol_keys(symbol))
            if lost >= 0 and (ctx.scan_lost_slot < 0 or lost < ctx.scan_lost_slot):
                ctx.scan_lost_slot = lost
            value = 0
            if slot.quantity:
                if instrument.last_price is not None:
                    value = slot.quantity * instrument.last_price
                    ctx.unrealized += value - slot.cost_basis
                else:
                    ctx.scan_unpriced = True
            working_buy = slot.working_buy
            buy, sell = slot.working_buy_notional, slot.working_sell_notional
            short = slot.working_short_notional
            if symbol == ctx.symbol:
                # an order group's leg: what its group counts already is not counted again
                if ctx.side == pb.SIDE_BUY:
                    working_buy -= ctx.group_units
                    buy -= ctx.group_notional
                else:
                    sell -= ctx.group_notional
                    if ctx.side == pb.SIDE_SELL_SHORT:
                        short -= ctx.group_notional
            exposure = abs(value) + buy + sell
            ctx.gross += exposure
            if symbol == ctx.symbol:
                ctx.order_slot = (value, buy, sell)
            else:
                ctx.initial_margin_bps += margin_of_slot(instrument, value, buy, sell)
            ctx.net += value + buy - sell
            ctx.committed += buy + short
            if value < 0:
                # a short commits its value at the last price, but not twice
                # for the units working buys already cover (they are committed)
                covered = min(-slot.quantity, working_buy)
                ctx.committed -= value + covered * (instrument.last_price or 0)
            same = symbol == ctx.symbol
            if same or (order_issuer and instrument.issuer_id == order_issuer):
                ctx.issuer_exposure += exposure
            if same or (order_sector and instrument.sector_id == order_sector):
                ctx.sector_exposure += exposure
        ctx.scan_overflow = not all(fits_int64(v) for v in (
            ctx.gross, ctx.net, ctx.unrealized, ctx.committed))


    def prepare_context(
        self, account_id: bytes, symbol: bytes, side: int, order_type: int, quantity: int,
        price: int, venue: bytes = b"", counterparty: bytes = b"", now_ns: int = 0,
        group: bytes = b"",
    ) -> Context:
        account = self.accounts.get(account_id)
        instrument = self.instruments.get(symbol)
        slot = None
        if account is not None and instrument is not None:
            slot = self.positions.get((account_id, symbol))
        ctx = Context(
            sync_live=self.sync_live and (self.sync_live_until_ns == 0
                                          or now_ns <= self.sync_live_until_ns)
            and self.shard_held(account_id, now_ns),
            global_halt=self.global_halt, account=account,
            instrument=instrument, slot=slot, symbol=symbol, quantity=quantity, price=price,
            side=side, order_type=order_type, now_ns=now_ns, venue=venue,
            counterparty=counterparty, capacities=self.capacities,
            account_region_full=(account is None and 1 <= len(account_id) <= MAX_ID_LENGTH
                                 and len(self.accounts) >= self.max_accounts),
            instrument_region_full=(instrument is None and 1 <= len(symbol) <= MAX_ID_LENGTH
                                    and len(self.instruments) >= self.max_instruments),
            lost_account_slot=(-1 if account is None
                               else lost_key_slot(self.lost_slots, account_keys(account_id))),
            lost_symbol_slot=(-1 if instrument is None
                              else lost_key_slot(self.lost_slots, symbol_keys(symbol))),
        )
        if account is not None and (venue or counterparty):
            _, ctx.working_venue, ctx.working_counterparty = self._working_sums(account_id)
        if order_type == pb.ORDER_TYPE_LIMIT:
            ctx.valuation_price, ctx.price_valid = price, price > 0
        elif (order_type == pb.ORDER_TYPE_MARKET and ctx.instrument_known
              and instrument is not None and instrument.last_price is not None):
            ctx.valuation_price = instrument.last_price
            ctx.price_valid = instrument.last_price > 0
        if quantity > 0:
            if ctx.price_valid:
                notional = quantity * ctx.valuation_price
                ctx.notional_valid = fits_int64(notional)
                ctx.notional = notional if ctx.notional_valid else 0
            ctx.signed_quantity = quantity if side == pb.SIDE_BUY else -quantity
            projected = ctx.position + ctx.signed_quantity
            ctx.projection_valid = INT64_MIN < projected <= INT64_MAX and ctx.position != INT64_MIN
            ctx.projected_position = projected if ctx.projection_valid else 0
        if group and account is not None:
            self._find_group(ctx, account_id, account, group)
        if account is not None and ctx.account_known:
            self._find_account_groups(ctx, account_id, account)
        if ctx.account_known and ctx.instrument_known and account is not None and (
            account.cash is not None or any(
                ctx.account_limit(kind) is not None for kind in (
                    LimitKind.MAX_GROSS_EXPOSURE, LimitKind.MAX_NET_EXPOSURE,
                    LimitKind.MAX_ISSUER_CONCENTRATION_BPS,
                    LimitKind.MAX_SECTOR_CONCENTRATION_BPS, LimitKind.LOSS_LIMIT))
            # a group that can be checked values its members' books: the
            # account's own figures are its scan's
            or any(group.valued for group in ctx.account_groups)
        ):
            ctx.scan_needed = True
            self._scan(ctx, account_id)
        return ctx

    def _group_unavailable(self, group_id: bytes, group: RefGroup, members: list[bytes],
                           now_ns: int) -> int:
        """Why the group cannot be checked now (the smallest reason), or 0."""
        if not group.known:
            return GroupUnavailable.NOT_CONFIGURED
        if group.invalid:
            return GroupUnavailable.HASH_INVALID
        if self.shard_count and not all(self.shard_held(member, now_ns) for member in members):
            return GroupUnavailable.SHARD_NOT_HELD
        if self.lost_slots and (
                key_slot(b"group:" + group_id) in self.lost_slots
                or any(lost_key_slot(self.lost_slots, account_keys(member)) >= 0
                       for member in members)):
            return GroupUnavailable.SLOT_LOST
        if any(self.accounts[member].invalid or self.accounts[member].capacity
               for member in members):
            return GroupUnavailable.MEMBER_INVALID
        return 0

    def _find_account_groups(self, ctx: Context, account_id: bytes,
                             account: RefAccount) -> None:
        """The account's groups for ``check_account_groups``: whether each can be
        checked, and the figures of its other members (the order's symbol's position
        and working units; their books, when the group values them)."""
        ctx.account_groups_invalid = account.groups_invalid
        if account.groups_invalid:
            return
        views = []
        for group_id in account.groups:
            group = self.groups[group_id]
            members = self._members(group_id)
            view = GroupView(group_id, group,
                             int(self._group_unavailable(group_id, group, members, ctx.now_ns)))
            views.append(view)
            view.valued = not view.unavailable and view.values_books
            if view.unavailable or not ctx.instrument_known:
                continue  # (an order of an unknown symbol is refused for that: not summed)
            for member in members:
                if member == account_id:
                    continue
                slot = self.positions.get((member, ctx.symbol))
                if slot is not None:
                    view.position += slot.quantity
                    view.working_buy += slot.working_buy
                    view.working_sell += slot.working_sell
                if view.values_books:
                    self._value_member(view, member)
        ctx.account_groups = tuple(views)

    def _value_member(self, view: GroupView, member: bytes) -> None:
        """Add one other member's book at last prices to its group's figures, as the
        account scan values a book (no order of its own to adjust for). A holding
        whose symbol has a key in a lost slot makes the group SLOT_LOST."""
        for (owner, symbol), slot in self.positions.items():
            if owner != member:
                continue
            if self.lost_slots and lost_key_slot(self.lost_slots, symbol_keys(symbol)) >= 0:
                view.unavailable = GroupUnavailable.SLOT_LOST
            value = 0
            if slot.quantity:
                last = self.instruments[symbol].last_price
                if last is None:
                    view.unpriced = True
                else:
                    value = slot.quantity * last
                    view.pnl += value - slot.cost_basis
            view.gross += abs(value) + slot.working_buy_notional + slot.working_sell_notional
            view.net += value + slot.working_buy_notional - slot.working_sell_notional
        view.pnl += self.accounts[member].realized_pnl

    def _find_group(self, ctx: Context, account_id: bytes, account: RefAccount,
                    group: bytes) -> None:
        """An order group's leg: whether a working leg of the group differs (the
        least of 1 symbol, 2 venue, 3 counterparty over the legs), else what
        the group's legs of its side count already (their worst), up to the
        order's own."""
        ctx.group = group
        units = notional = 0
        for order_id in account.working:
            leg = self.orders[(account_id, order_id)]
            if leg.group != group:
                continue
            differs = [mismatch for mismatch, same in (
                (1, leg.symbol == ctx.symbol),
                (2, len(ctx.venue) <= MAX_TAG_LENGTH and leg.venue == ctx.venue),
                (3, len(ctx.counterparty) <= MAX_TAG_LENGTH
                 and leg.counterparty == ctx.counterparty)) if not same]
            if differs:
                ctx.group_mismatch = min(differs[0], ctx.group_mismatch or differs[0])
            elif leg.side == ctx.side:
                units = max(units, leg.remaining)
                notional = max(notional, leg.remaining * leg.valuation_price)
        if ctx.group_mismatch or ctx.quantity <= 0:
            return
        ctx.group_units = min(units, ctx.quantity)
        if ctx.notional_valid:
            ctx.group_notional = min(notional, ctx.notional)

    def evaluate(
        self, order_id: bytes, account_id: bytes, symbol: bytes, side: int, order_type: int,
        quantity: int, price: int, venue: bytes = b"", counterparty: bytes = b"",
        now_ns: int = 0, durable_checked: int = -1, min_state_version: int = 0,
        time_in_force: int = 0, expire_at_unix_ms: int = 0, now_unix_ms: int = 0,
        session_end_unix_ms: int = 0, group_id: bytes = b"",
    ) -> Verdict:
        """Run every check on one order; the same Verdict as ``Engine.evaluate``."""
        if len(group_id) > MAX_ORDER_ID_LENGTH or b"\0" in group_id:
            raise ValueError(f"a group id must be at most {MAX_ORDER_ID_LENGTH} bytes, "
                             "with no NUL")
        for name, value in (("quantity", quantity), ("price", price), ("now_ns", now_ns),
                            ("durable_checked", durable_checked),
                            ("min_state_version", min_state_version),
                            ("expire_at_unix_ms", expire_at_unix_ms),
                            ("now_unix_ms", now_unix_ms),
                            ("session_end_unix_ms", session_end_unix_ms)):
            if not fits_int64(value):
                raise OverflowError(f"{name} {value} does not fit in int64")
        if time_in_force not in _INT32:
            raise OverflowError(f"time_in_force {time_in_force} does not fit in int32")
        self._advance_clock(now_ns)
        ctx = self.prepare_context(account_id, symbol, side, order_type, quantity, price,
                                   venue, counterparty, now_ns, group_id)
        ctx.min_state_version = min_state_version
        ctx.time_in_force, ctx.expire_at_ms = time_in_force, expire_at_unix_ms
        ctx.now_unix_ms, ctx.session_end_ms = now_unix_ms, session_end_unix_ms
        account = ctx.account
        if account is not None and order_id:
            stored = self.orders.get((account_id, order_id))
            if stored is not None:
                if (not stored.replaces and stored.symbol == symbol and stored.side == side
                        and stored.order_type == order_type and stored.quantity == quantity
                        and stored.price == price and stored.time_in_force == time_in_force
                        and stored.expire_at_ms == expire_at_unix_ms
                        and len(venue) <= MAX_TAG_LENGTH
                        and stored.venue == venue and len(counterparty) <= MAX_TAG_LENGTH
                        and stored.counterparty == counterparty and stored.group == group_id):
                    # not yet durable: the caller writes it before answering
                    return Verdict(stored.approved, stored.notional,
                                   stored.rejections[:STORED_REJECTIONS], True, AUTO_HALT_NONE,
                                   0, not stored.durable)
                ctx.duplicate_conflict = True
            elif self._filter_has(account, order_id) and account.evictions != durable_checked:
                # maybe decided before, its record gone: the caller reads Redis first
                return Verdict(False, 0, ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED,
                                           account.evictions),), False, AUTO_HALT_NONE, 0, False)
        rejections: list[Rejection] = []

        def reject(code: int, observed: int, limit: int) -> None:
            rejections.append((code, observed, limit))

        for check in PIPELINE:
            check(ctx, reject)
        approved = not rejections
        auto_halt, pnl = AUTO_HALT_NONE, 0
        loss_limit = ctx.account_limit(LimitKind.LOSS_LIMIT)
        if ctx.account_known and ctx.valuation_ok and loss_limit is not None \
                and account is not None:
            total = ctx.unrealized + account.realized_pnl
            if total < -loss_limit and account.halt_mode not in (
                    pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
                auto_halt, pnl = AUTO_HALT_LOSS_LIMIT, clamp(total)
        kept = False
        if account is not None and not ctx.duplicate_conflict:
            approved, auto_halt, kept = self._remember(ctx, account_id, order_id, approved,
                                                       rejections, auto_halt)
        return Verdict(approved, ctx.notional, tuple(rejections[:MAX_REJECTIONS]), False,
                       auto_halt, pnl, kept)

    def replace(
        self, order_id: bytes, account_id: bytes, original_order_id: bytes, quantity: int,
        price: int, now_ns: int = 0, durable_checked: int = -1, min_state_version: int = 0,
        now_unix_ms: int = 0,
    ) -> Verdict:
        """Cancel/replace; the same Verdict as ``Engine.replace``.

        The original's reservation leaves every sum (so what margin it
        committed too), the replacement (its total ``quantity`` less what the
        original filled, at ``price``; 0 keeps either) runs through the whole
        pipeline as an order with the original's time in force and end, and
        then the original is replaced (approved) or put back where it was. An
        original whose time in force ended by ``now_unix_ms`` is not working.
        """
        for name, value in (("quantity", quantity), ("price", price), ("now_ns", now_ns),
                            ("durable_checked", durable_checked),
                            ("min_state_version", min_state_version),
                            ("now_unix_ms", now_unix_ms)):
            if not fits_int64(value):
                raise OverflowError(f"{name} {value} does not fit in int64")
        if not 1 <= len(order_id) <= MAX_ORDER_ID_LENGTH \
                or not 1 <= len(original_order_id) <= MAX_ORDER_ID_LENGTH:
            raise ValueError(f"order ids must be 1 to {MAX_ORDER_ID_LENGTH} bytes")
        self._advance_clock(now_ns)

        def refused(code: int, observed: int = 0, limit: int = 0) -> Verdict:
            return Verdict(False, 0, ((code, observed, limit),), False, AUTO_HALT_NONE, 0, False)

        account = self.accounts.get(account_id)
        live: list[Rejection] = []
        check_sync_live(Context(
            sync_live=self.sync_live and (self.sync_live_until_ns == 0
                                          or now_ns <= self.sync_live_until_ns)
            and self.shard_held(account_id, now_ns),
            global_halt=self.global_halt, account=account, instrument=None, slot=None,
            symbol=b"", quantity=quantity, price=price, side=0, order_type=0, now_ns=now_ns,
            venue=b"", counterparty=b"", min_state_version=min_state_version,
            lost_account_slot=(-1 if account is None
                               else lost_key_slot(self.lost_slots, account_keys(account_id)))),
            lambda code, observed, limit: live.append((code, observed, limit)))
        if live:
            return Verdict(False, 0, tuple(live), False, AUTO_HALT_NONE, 0, False)
        if account is None:
            return refused(pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER)
        stored = self.orders.get((account_id, order_id))
        if stored is not None:
            if stored.replaces == original_order_id \
                    and quantity in (0, stored.quantity) and price in (0, stored.price):
                return Verdict(stored.approved, stored.notional,
                               stored.rejections[:STORED_REJECTIONS], True, AUTO_HALT_NONE, 0,
                               not stored.durable)
            return refused(pb.REJECT_CODE_DUPLICATE_ORDER_ID)
        if self._filter_has(account, order_id) and account.evictions != durable_checked:
            return refused(pb.REJECT_CODE_DUPLICATE_ORDER_ID, ORDER_ID_EXPIRED, account.evictions)
        original = self.orders.get((account_id, original_order_id))
        if original is None:
            # working records never leave the table: one that left was done
            if self._filter_has(account, original_order_id):
                return refused(pb.REJECT_CODE_ORIGINAL_NOT_WORKING)
            return refused(pb.REJECT_CODE_UNKNOWN_ORIGINAL_ORDER)
        if not original.working:
            return refused(pb.REJECT_CODE_ORIGINAL_NOT_WORKING, original.status)
        if original.lapsed(now_unix_ms):
            # its time in force ended; end_lapsed_orders has not swept it yet
            return refused(pb.REJECT_CODE_ORIGINAL_NOT_WORKING, ORDER_DONE)
        done = original.quantity - original.remaining
        total = quantity or original.quantity
        price = price or original.price
        if total <= done:
            return refused(pb.REJECT_CODE_REPLACE_BELOW_FILLED, total, done)
        # release the original's reservation (and the locate it consumed)
        slot = self.positions[(account_id, original.symbol)]
        place = account.working.index(original_order_id)
        del account.working[place]
        self._resum(account_id)
        if original.side == pb.SIDE_SELL_SHORT:
            slot.locate_used -= original.remaining
        verdict = self.evaluate(order_id, account_id, original.symbol, original.side,
                                original.order_type, total - done, price, original.venue,
                                original.counterparty, now_ns, durable_checked,
                                min_state_version, original.time_in_force,
                                original.expire_at_ms, now_unix_ms,
                                # working_until(tif, expiry, this) is the original's end
                                original.working_until_ms, original.group)
        if verdict.approved:
            replacement = self.orders[(account_id, order_id)]
            replacement.quantity = total
            replacement.replaces = original_order_id
            replacement.carried = done - original.own_filled
            original.working, original.remaining, original.replaced = False, 0, True
            self._idle(account, original_order_id, original, self.clock_ns)
        else:
            rejected = self.orders.get((account_id, order_id))
            if rejected is not None:
                rejected.quantity = total
                rejected.replaces = original_order_id
                rejected.carried = done - original.own_filled
            account.working.insert(place, original_order_id)
            self._resum(account_id)
            if original.side == pb.SIDE_SELL_SHORT:
                slot.locate_used += original.remaining
        return verdict

    def _remember(self, ctx: Context, account_id: bytes, order_id: bytes, approved: bool,
                  rejections: list[Rejection], auto_halt: int) -> tuple[bool, int, bool]:
        """Store the decision (and reserve an approval); returns (approved, auto_halt, stored).

        Not stored: what the engine could not really decide (stale data, no
        room, a group it cannot check), so a retry gets a real decision.
        """
        codes = [code for code, _, _ in rejections[:MAX_REJECTIONS]]
        if not _NOT_MADE.isdisjoint(codes) or not order_id \
                or len(order_id) > MAX_ORDER_ID_LENGTH or ctx.instrument is None:
            return approved, auto_halt, False
        account = ctx.account
        assert account is not None
        if approved:
            if (account_id, ctx.symbol) not in self.positions \
                    and len(self.positions) >= self.max_positions:
                rejections.append((pb.REJECT_CODE_CAPACITY_EXHAUSTED, POSITIONS,
                                   self.max_positions))
                return False, self._count_rejection(ctx, rejections, auto_halt), False
            self._slot(account_id, ctx.symbol)
            if not self._reservation_fits(ctx, account_id):
                approved = False
                rejections.append((pb.REJECT_CODE_ARITHMETIC_OVERFLOW, ctx.quantity,
                                   ctx.valuation_price))
        full = self._allocate(account_id, account)
        if full:
            rejections.append((pb.REJECT_CODE_CAPACITY_EXHAUSTED, full, self.capacities[full]))
            return False, self._count_rejection(ctx, rejections, auto_halt), False
        order = RefOrder(
            symbol=ctx.symbol, side=ctx.side, order_type=ctx.order_type, quantity=ctx.quantity,
            price=ctx.price, venue=_tag(ctx.venue), counterparty=_tag(ctx.counterparty),
            approved=approved, notional=ctx.notional,
            rejections=tuple(rejections[:STORED_REJECTIONS]), rejection_count=len(rejections),
            valuation_price=ctx.valuation_price, time_in_force=ctx.time_in_force,
            expire_at_ms=ctx.expire_at_ms,
            working_until_ms=working_until(ctx.time_in_force, ctx.expire_at_ms,
                                           ctx.session_end_ms),
            group=ctx.group,
        )
        self.orders[(account_id, order_id)] = order
        if approved:
            self._reserve(ctx, account_id, order_id, order)
        else:
            self._idle(account, order_id, order, self.clock_ns)
            auto_halt = self._count_rejection(ctx, rejections, auto_halt)
        return approved, auto_halt, True

    def _reservation_fits(self, ctx: Context, account_id: bytes) -> bool:
        """Every running sum the reservation adds to stays an exact int64."""
        account = ctx.account
        assert account is not None
        slot = self.positions.get((account_id, ctx.symbol), RefPosition())
        n, q = ctx.notional, ctx.quantity
        sums = [account.cumulative_notional + n]
        sums += [group.record.cumulative_notional + n for group in ctx.account_groups
                 if not group.unavailable]
        for name, working in ((ctx.venue, ctx.working_venue),
                              (ctx.counterparty, ctx.working_counterparty)):
            if name and len(name) <= MAX_TAG_LENGTH:
                sums.append(working.get(name, 0) + n)
        if ctx.side == pb.SIDE_BUY:
            sums += [slot.working_buy + q, slot.working_buy_notional + n]
        else:
            sums += [slot.working_sell + q, slot.working_sell_notional + n,
                     slot.working_short_notional + n, slot.locate_used + q]
        return all(value <= INT64_MAX for value in sums)


    def _reserve(self, ctx: Context, account_id: bytes, order_id: bytes, order: RefOrder) -> None:
        account = ctx.account
        assert account is not None
        slot = self._slot(account_id, ctx.symbol)
        order.working, order.remaining = True, order.quantity
        if order.side == pb.SIDE_SELL_SHORT:
            slot.locate_used += order.quantity
        account.working.appendleft(order_id)
        self._resum(account_id)
        at = ctx.now_ns
        if account.rate:
            at = max(at, account.rate[-1][0])
        account.cumulative_notional += order.notional
        account.rate.append((at, account.cumulative_notional))
        for group in ctx.account_groups:
            if group.unavailable:
                continue
            ring = group.record
            at = max(ctx.now_ns, ring.rate[-1][0]) if ring.rate else ctx.now_ns
            ring.cumulative_notional += order.notional
            ring.rate.append((at, ring.cumulative_notional))

    def _count_rejection(self, ctx: Context, rejections: list[Rejection],
                         auto_halt: int) -> int:
        account = ctx.account
        if account is None or not ctx.account_known:
            return auto_halt
        if any(code in _NOT_CLIENT_CAUSED for code, _, _ in rejections[:MAX_REJECTIONS]):
            return auto_halt
        limit = ctx.account_limit(LimitKind.MAX_REJECTS_PER_WINDOW)
        if limit is None:
            return auto_halt
        at = ctx.now_ns
        if account.rejects:
            at = max(at, account.rejects[-1])
        account.rejects.append(at)
        since = at - ctx.window_ns(LimitKind.REJECT_WINDOW_MS, DEFAULT_REJECT_WINDOW_MS)
        count = sum(1 for when in account.rejects if when > since)
        if count >= limit and account.halt_mode != pb.HALT_MODE_HALTED:
            return AUTO_HALT_REJECT_STORM
        return auto_halt
