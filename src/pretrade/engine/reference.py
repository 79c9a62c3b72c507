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
one sequence of operations can be applied to both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from pretrade._core import Verdict
from pretrade._core.constants import (
    AUTO_HALT_LOSS_LIMIT,
    AUTO_HALT_NONE,
    AUTO_HALT_REJECT_STORM,
    DEFAULT_NOTIONAL_WINDOW_MS,
    DEFAULT_ORDER_WINDOW_MS,
    DEFAULT_REJECT_WINDOW_MS,
    HALT_NONE,
    MAX_ID_LENGTH,
    MAX_REJECTIONS,
    MAX_TAG_LENGTH,
    RATE_RING_CAPACITY,
    REJECT_RING_CAPACITY,
    STORED_REJECTIONS,
    TAG_LIMIT_SLOTS,
)
from pretrade.engine.fixedpoint import INT64_MAX, INT64_MIN, fits_int64
from pretrade.engine.limits import REQUIRED_LIMITS, LimitKind, Limits
from pretrade.v1 import risk_pb2 as pb

NS_PER_MS = 1_000_000

Rejection = tuple[int, int, int]


def clamp(value: int) -> int:
    """Figures reported on the wire are int64: clamp, never wrap."""
    return max(INT64_MIN, min(INT64_MAX, value))


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


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


@dataclass
class RefAccount:
    known: bool = False
    invalid: bool = False
    limits: Limits | None = None
    halt_mode: int = HALT_NONE
    cash: int | None = None
    credit_line: int = 0
    realized_pnl: int = 0
    venue_limits: dict[bytes, int] = field(default_factory=dict)
    counterparty_limits: dict[bytes, int] = field(default_factory=dict)
    working: list[bytes] = field(default_factory=list)  # order ids, oldest first
    rate: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=RATE_RING_CAPACITY))  # (at_ns, running total)
    cumulative_notional: int = 0
    rejects: deque[int] = field(default_factory=lambda: deque(maxlen=REJECT_RING_CAPACITY))


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
    gross: int = 0
    net: int = 0
    unrealized: int = 0
    committed: int = 0
    issuer_exposure: int = 0
    sector_exposure: int = 0

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
        return self.slot.working_buy if self.slot else 0

    @property
    def working_sell(self) -> int:
        return self.slot.working_sell if self.slot else 0

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
        ms = self.account_limit(kind)
        if ms is None or ms <= 0:
            ms = default_ms
        return ms * NS_PER_MS if ms < INT64_MAX // NS_PER_MS else INT64_MAX

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


# -- PRE-TRADE CHECKS (same order and names as PIPELINE in checks.pyx) --

def check_sync_live(ctx: Context, reject: Reject) -> None:
    if not ctx.sync_live:
        reject(pb.REJECT_CODE_STALE_DATA, 0, 0)


def check_account_known(ctx: Context, reject: Reject) -> None:
    if not ctx.account_known:
        reject(pb.REJECT_CODE_UNKNOWN_ACCOUNT, 0, 0)
    elif ctx.account is not None and ctx.account.invalid:
        reject(pb.REJECT_CODE_INVALID_STATE, pb.HALT_SCOPE_ACCOUNT, 0)


def check_symbol_known(ctx: Context, reject: Reject) -> None:
    if not ctx.instrument_known:
        reject(pb.REJECT_CODE_UNKNOWN_SYMBOL, 0, 0)
    elif ctx.instrument is not None and ctx.instrument.invalid:
        reject(pb.REJECT_CODE_INVALID_STATE, pb.HALT_SCOPE_SYMBOL, 0)


def check_order_id_unused(ctx: Context, reject: Reject) -> None:
    if ctx.duplicate_conflict:
        reject(pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0)


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
    if minimum is not None and ctx.quantity < minimum:
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
    if ctx.notional > available:
        reject(pb.REJECT_CODE_BUYING_POWER, ctx.notional, clamp(available))


def _first_in_window(rate: deque[tuple[int, int]], since_ns: int) -> int:
    for index, (at_ns, _) in enumerate(rate):
        if at_ns > since_ns:
            return index
    return len(rate)


def check_velocity(ctx: Context, reject: Reject) -> None:
    account = ctx.account
    if account is None or not ctx.account_known or ctx.quantity <= 0:
        return
    limit = ctx.account_limit(LimitKind.MAX_ORDERS_PER_WINDOW)
    if limit is not None:
        since = ctx.now_ns - ctx.window_ns(LimitKind.ORDER_WINDOW_MS, DEFAULT_ORDER_WINDOW_MS)
        count = len(account.rate) - _first_in_window(account.rate, since)
        if count + 1 > limit:
            reject(pb.REJECT_CODE_ORDER_RATE, count + 1, limit)
    limit = ctx.account_limit(LimitKind.MAX_NOTIONAL_PER_WINDOW)
    if limit is not None and ctx.notional_valid:
        since = ctx.now_ns - ctx.window_ns(LimitKind.NOTIONAL_WINDOW_MS,
                                           DEFAULT_NOTIONAL_WINDOW_MS)
        first = _first_in_window(account.rate, since)
        if first == 0 and len(account.rate) == RATE_RING_CAPACITY:
            reject(pb.REJECT_CODE_NOTIONAL_RATE, INT64_MAX, limit)
            return
        newest = account.cumulative_notional
        if first == len(account.rate):
            before = newest
        elif first > 0:
            before = account.rate[first - 1][1]
        else:
            before = 0
        if newest - before + ctx.notional > limit:
            reject(pb.REJECT_CODE_NOTIONAL_RATE, clamp(newest - before + ctx.notional), limit)


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
        after = (working.get(name, 0) if len(name) <= MAX_TAG_LENGTH else 0) + ctx.notional
        if after > limit:
            reject(code, clamp(after), limit)


def check_loss_limit(ctx: Context, reject: Reject) -> None:
    loss_limit = ctx.account_limit(LimitKind.LOSS_LIMIT)
    if not ctx.valuation_ok or loss_limit is None or ctx.account is None:
        return
    pnl = ctx.unrealized + ctx.account.realized_pnl
    if pnl < -loss_limit and not ctx.is_reducing():
        reject(pb.REJECT_CODE_LOSS_LIMIT, clamp(pnl), -loss_limit)


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
    check_quantity_positive,
    check_price_usable,
    check_tick_size,
    check_order_size,
    check_price_collar,
    check_arithmetic_fits,
    check_limits_configured,
    check_max_order_quantity,
    check_max_order_notional,
    check_position_limits,
    check_short_sale,
    check_account_valuation,
    check_exposure,
    check_buying_power,
    check_velocity,
    check_max_working_orders,
    check_concentration,
    check_venue_exposure,
    check_loss_limit,
    check_halts,
)

# Rejections the engine caused, or halts already in force: not client errors,
# so they do not feed the reject-storm breaker.
_NOT_CLIENT_CAUSED = frozenset((
    pb.REJECT_CODE_STALE_DATA, pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.REJECT_CODE_GLOBAL_HALT,
    pb.REJECT_CODE_ACCOUNT_HALT, pb.REJECT_CODE_SYMBOL_HALT, pb.REJECT_CODE_REDUCE_ONLY,
))


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


class ReferenceBook:
    """Dictionaries in, decisions out: the oracle for the compiled Engine.

    ``max_orders`` mirrors the table's order capacity, so a full order region
    gives the same CAPACITY_EXHAUSTED decisions in both.
    """

    def __init__(self, max_orders: int = 65_536) -> None:
        self.accounts: dict[bytes, RefAccount] = {}
        self.instruments: dict[bytes, RefInstrument] = {}
        self.positions: dict[tuple[bytes, bytes], RefPosition] = {}
        self.orders: dict[tuple[bytes, bytes], RefOrder] = {}
        self.max_orders = max_orders
        self.global_halt = HALT_NONE
        self.sync_live = False

    # -- STATE (mirrors PositionTable) --

    def _account(self, account_id: bytes) -> RefAccount:
        return self.accounts.setdefault(_check_key(account_id, "account id"), RefAccount())

    def _instrument(self, symbol: bytes) -> RefInstrument:
        return self.instruments.setdefault(_check_key(symbol, "symbol"), RefInstrument())

    def _slot(self, account_id: bytes, symbol: bytes) -> RefPosition:
        self._account(account_id)
        self._instrument(symbol)
        return self.positions.setdefault((account_id, symbol), RefPosition())

    def set_sync_live(self, live: bool) -> None:
        self.sync_live = live

    def set_account_state(self, account_id: bytes, *, known: bool, invalid: bool = False) -> None:
        account = self._account(account_id)
        account.known, account.invalid = known, invalid

    def set_account_limits(self, account_id: bytes, limits: Mapping[int, int] | None) -> None:
        checked = _check_limits(limits)
        self._account(account_id).limits = checked

    def set_symbol_limits(
        self, account_id: bytes, symbol: bytes, limits: Mapping[int, int] | None
    ) -> None:
        checked = _check_limits(limits or None)
        self._account(account_id)
        self._instrument(symbol)
        if (account_id, symbol) not in self.positions and not limits:
            return
        self._slot(account_id, symbol).overrides = checked or {}

    def set_balances(self, account_id: bytes, cash: int | None, credit_line: int) -> None:
        account = self._account(account_id)
        account.cash = cash
        account.credit_line = 0 if cash is None else credit_line

    def set_locates(self, account_id: bytes, locates: Mapping[bytes, int]) -> None:
        self._account(account_id)
        for (account, _), position in self.positions.items():
            if account == account_id:
                position.located = 0
        for symbol, quantity in locates.items():
            self._slot(account_id, symbol).located = quantity

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

    def replace_positions(
        self, account_id: bytes, positions: Mapping[bytes, tuple[int, int]],
        filled: Mapping[bytes, int] | None = None, cancelled: Collection[bytes] | None = None,
        realized_pnl: int | None = None,
    ) -> None:
        for symbol, (quantity, cost_basis) in positions.items():
            if not (fits_int64(quantity) and fits_int64(cost_basis)):
                raise OverflowError(f"position {symbol!r} does not fit in int64")
        account = self._account(account_id)
        for (owner, _), position in self.positions.items():
            if owner == account_id:
                position.quantity = position.cost_basis = 0
        for symbol, (quantity, cost_basis) in positions.items():
            position = self._slot(account_id, symbol)
            position.quantity, position.cost_basis = quantity, cost_basis
        if realized_pnl is not None:
            account.realized_pnl = realized_pnl
        if filled is not None or cancelled is not None:
            self._recompute_working(account_id, account, filled or {}, cancelled or ())

    def _recompute_working(self, account_id: bytes, account: RefAccount,
                           filled: Mapping[bytes, int], cancelled: Collection[bytes]) -> None:
        for (owner, _), position in self.positions.items():
            if owner == account_id:
                position.working_buy = position.working_sell = 0
                position.working_buy_notional = position.working_sell_notional = 0
                position.working_short_notional = 0
        still_working = []
        for order_id in account.working:
            order = self.orders[(account_id, order_id)]
            done = filled.get(order_id, 0)
            remaining = 0 if order_id in cancelled else max(0, order.quantity - done)
            order.remaining = remaining
            if remaining > 0:
                still_working.append(order_id)
                self._add_working(self.positions[(account_id, order.symbol)], order)
            else:
                order.working = False
        account.working = still_working

    @staticmethod
    def _add_working(slot: RefPosition, order: RefOrder) -> None:
        notional = order.remaining * order.valuation_price
        if order.side == pb.SIDE_BUY:
            slot.working_buy += order.remaining
            slot.working_buy_notional += notional
        else:
            slot.working_sell += order.remaining
            slot.working_sell_notional += notional
            if order.side == pb.SIDE_SELL_SHORT:
                slot.working_short_notional += notional

    def set_instrument(
        self, symbol: bytes, *, known: bool, tick_size: int = 1, lot_size: int = 1,
        invalid: bool = False, issuer_id: int = 0, sector_id: int = 0,
        short_restricted: bool = False,
    ) -> None:
        if tick_size <= 0 or lot_size <= 0:
            raise ValueError(
                f"tick_size and lot_size must be positive, got {tick_size}, {lot_size}")
        instrument = self._instrument(symbol)
        instrument.known, instrument.invalid = known, invalid
        instrument.tick_size, instrument.lot_size = tick_size, lot_size
        instrument.issuer_id, instrument.sector_id = issuer_id, sector_id
        instrument.short_restricted = short_restricted

    def set_last_price(self, symbol: bytes, price: int | None) -> None:
        if price is not None and price <= 0:
            raise ValueError(f"a last price must be positive, got {price}")
        self._instrument(symbol).last_price = price

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

    # -- DECISIONS --

    def _scan(self, ctx: Context, account_id: bytes) -> None:
        assert ctx.instrument is not None
        order_issuer, order_sector = ctx.instrument.issuer_id, ctx.instrument.sector_id
        for (owner, symbol), slot in self.positions.items():
            if owner != account_id:
                continue
            instrument = self.instruments[symbol]
            value = 0
            if slot.quantity:
                if instrument.last_price is not None:
                    value = slot.quantity * instrument.last_price
                    ctx.unrealized += value - slot.cost_basis
                else:
                    ctx.scan_unpriced = True
            exposure = abs(value) + slot.working_buy_notional + slot.working_sell_notional
            ctx.gross += exposure
            ctx.net += value + slot.working_buy_notional - slot.working_sell_notional
            ctx.committed += slot.working_buy_notional + slot.working_short_notional
            if value < 0:
                ctx.committed -= value
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
    ) -> Context:
        account = self.accounts.get(account_id)
        instrument = self.instruments.get(symbol)
        slot = None
        if account is not None and instrument is not None:
            slot = self.positions.get((account_id, symbol))
        ctx = Context(
            sync_live=self.sync_live, global_halt=self.global_halt, account=account,
            instrument=instrument, slot=slot, symbol=symbol, quantity=quantity, price=price,
            side=side, order_type=order_type, now_ns=now_ns, venue=venue,
            counterparty=counterparty,
        )
        if account is not None and (venue or counterparty):
            for order_id in account.working:
                order = self.orders[(account_id, order_id)]
                notional = order.remaining * order.valuation_price
                for tags, name in ((ctx.working_venue, order.venue),
                                   (ctx.working_counterparty, order.counterparty)):
                    tags[name] = tags.get(name, 0) + notional
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
        if ctx.account_known and ctx.instrument_known and account is not None and (
            account.cash is not None or any(
                ctx.account_limit(kind) is not None for kind in (
                    LimitKind.MAX_GROSS_EXPOSURE, LimitKind.MAX_NET_EXPOSURE,
                    LimitKind.MAX_ISSUER_CONCENTRATION_BPS,
                    LimitKind.MAX_SECTOR_CONCENTRATION_BPS, LimitKind.LOSS_LIMIT))
        ):
            ctx.scan_needed = True
            self._scan(ctx, account_id)
        return ctx

    def evaluate(
        self, order_id: bytes, account_id: bytes, symbol: bytes, side: int, order_type: int,
        quantity: int, price: int, venue: bytes = b"", counterparty: bytes = b"",
        now_ns: int = 0,
    ) -> Verdict:
        """Run every check on one order; the same Verdict as ``Engine.evaluate``."""
        for name, value in (("quantity", quantity), ("price", price), ("now_ns", now_ns)):
            if not fits_int64(value):
                raise OverflowError(f"{name} {value} does not fit in int64")
        ctx = self.prepare_context(account_id, symbol, side, order_type, quantity, price,
                                   venue, counterparty, now_ns)
        account = ctx.account
        if account is not None and order_id:
            stored = self.orders.get((account_id, order_id))
            if stored is not None:
                if (stored.symbol == symbol and stored.side == side
                        and stored.order_type == order_type and stored.quantity == quantity
                        and stored.price == price and len(venue) <= MAX_TAG_LENGTH
                        and stored.venue == venue and len(counterparty) <= MAX_TAG_LENGTH
                        and stored.counterparty == counterparty):
                    return Verdict(stored.approved, stored.notional,
                                   stored.rejections[:STORED_REJECTIONS], True, AUTO_HALT_NONE,
                                   0, False)
                ctx.duplicate_conflict = True
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
            before = len(self.orders)
            approved, auto_halt = self._remember(ctx, account_id, order_id, approved,
                                                 rejections, auto_halt)
            kept = len(self.orders) > before
        return Verdict(approved, ctx.notional, tuple(rejections[:MAX_REJECTIONS]), False,
                       auto_halt, pnl, kept)

    def _remember(self, ctx: Context, account_id: bytes, order_id: bytes, approved: bool,
                  rejections: list[Rejection], auto_halt: int) -> tuple[bool, int]:
        codes = [code for code, _, _ in rejections[:MAX_REJECTIONS]]
        if pb.REJECT_CODE_STALE_DATA in codes or not order_id or ctx.instrument is None:
            return approved, auto_halt
        assert ctx.account is not None
        if approved and not self._reservation_fits(ctx, account_id):
            approved = False
            rejections.append((pb.REJECT_CODE_ARITHMETIC_OVERFLOW, ctx.quantity,
                               ctx.valuation_price))
        if len(self.orders) >= self.max_orders:
            if approved:
                approved = False
                rejections.append((pb.REJECT_CODE_CAPACITY_EXHAUSTED, 0, 0))
            return approved, self._count_rejection(ctx, rejections, auto_halt)
        order = RefOrder(
            symbol=ctx.symbol, side=ctx.side, order_type=ctx.order_type, quantity=ctx.quantity,
            price=ctx.price, venue=_tag(ctx.venue), counterparty=_tag(ctx.counterparty),
            approved=approved, notional=ctx.notional,
            rejections=tuple(rejections[:STORED_REJECTIONS]), rejection_count=len(rejections),
            valuation_price=ctx.valuation_price,
        )
        self.orders[(account_id, order_id)] = order
        if approved:
            self._reserve(ctx, account_id, order_id, order)
        else:
            auto_halt = self._count_rejection(ctx, rejections, auto_halt)
        return approved, auto_halt

    def _reservation_fits(self, ctx: Context, account_id: bytes) -> bool:
        """Every running sum the reservation adds to stays an exact int64."""
        account = ctx.account
        assert account is not None
        slot = self.positions.get((account_id, ctx.symbol), RefPosition())
        n, q = ctx.notional, ctx.quantity
        sums = [account.cumulative_notional + n]
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
        self._add_working(slot, order)
        if order.side == pb.SIDE_SELL_SHORT:
            slot.locate_used += order.quantity
        account.working.append(order_id)
        at = ctx.now_ns
        if account.rate:
            at = max(at, account.rate[-1][0])
        account.cumulative_notional += order.notional
        account.rate.append((at, account.cumulative_notional))

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
