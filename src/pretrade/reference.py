"""The slow, obvious twin of the compiled check pipeline.

Every check in ``ext/pretrade/_core/checks.pyx`` has a pure-Python mirror
here, with the same name, the same inputs and the same output: a decision is
``(approved, notional, rejections)`` with ``rejections`` a tuple of
``(code, observed, limit)`` triples in pipeline order. The differential tests
drive this book and the compiled table with the same operations and demand
identical decisions, so this file is the specification of the checks.

It mirrors the state-writing API of ``pretrade._core.PositionTable`` too, so
one sequence of operations can be applied to both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pretrade.fixedpoint import INT64_MAX, INT64_MIN, fits_int64
from pretrade.limits import REQUIRED_LIMITS, LimitKind, Limits
from pretrade.v1 import risk_pb2 as pb

MAX_ID_LENGTH = 39
MAX_REJECTIONS = 24
HALT_NONE = 0

Rejection = tuple[int, int, int]
Decision = tuple[bool, int, tuple[Rejection, ...]]


@dataclass
class RefAccount:
    known: bool = False
    invalid: bool = False
    limits: Limits | None = None
    halt_mode: int = HALT_NONE


@dataclass
class RefInstrument:
    known: bool = False
    invalid: bool = False
    tick_size: int = 1
    lot_size: int = 1
    last_price: int | None = None
    halt_mode: int = HALT_NONE


@dataclass
class RefPosition:
    quantity: int = 0
    cost_basis: int = 0
    overrides: Limits = field(default_factory=dict)


@dataclass
class Context:
    """What every check may read; built once per order by ``prepare_context``."""

    sync_live: bool
    global_halt: int
    account: RefAccount | None
    instrument: RefInstrument | None
    overrides: Limits
    position: int
    quantity: int
    price: int
    side: int
    order_type: int
    valuation_price: int = 0
    price_valid: bool = False
    notional: int = 0
    notional_valid: bool = False
    signed_quantity: int = 0
    projected_position: int = 0
    projection_valid: bool = False

    @property
    def account_known(self) -> bool:
        return self.account is not None and self.account.known

    @property
    def instrument_known(self) -> bool:
        return self.instrument is not None and self.instrument.known

    def limit(self, kind: LimitKind) -> int | None:
        """The per-symbol override if set, else the account default, else None."""
        if kind in self.overrides:
            return self.overrides[kind]
        if self.account is not None and self.account.limits is not None:
            return self.account.limits.get(kind)
        return None

    def is_reducing(self) -> bool:
        """Shrinks |position| without flipping its sign."""
        if not self.projection_valid or self.signed_quantity == 0:
            return False
        if self.position > 0:
            return self.signed_quantity < 0 and self.projected_position >= 0
        if self.position < 0:
            return self.signed_quantity > 0 and self.projected_position <= 0
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


def check_quantity_positive(ctx: Context, reject: Reject) -> None:
    if ctx.quantity <= 0:
        reject(pb.REJECT_CODE_INVALID_QUANTITY, ctx.quantity, 1)


def check_price_usable(ctx: Context, reject: Reject) -> None:
    if ctx.order_type == pb.ORDER_TYPE_LIMIT:
        if ctx.price <= 0:
            reject(pb.REJECT_CODE_INVALID_PRICE, ctx.price, 1)
    elif ctx.instrument_known and not ctx.price_valid:
        reject(pb.REJECT_CODE_PRICE_UNAVAILABLE, 0, 0)


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
        all_required = (1 << len(REQUIRED_LIMITS)) - 1
        reject(pb.REJECT_CODE_LIMITS_NOT_CONFIGURED, missing, all_required)


def check_max_order_quantity(ctx: Context, reject: Reject) -> None:
    limit = ctx.limit(LimitKind.MAX_ORDER_QUANTITY)
    if limit is not None and ctx.quantity > limit:
        reject(pb.REJECT_CODE_MAX_ORDER_QUANTITY, ctx.quantity, limit)


def check_max_order_notional(ctx: Context, reject: Reject) -> None:
    limit = ctx.limit(LimitKind.MAX_ORDER_NOTIONAL)
    if ctx.notional_valid and limit is not None and ctx.notional > limit:
        reject(pb.REJECT_CODE_MAX_ORDER_NOTIONAL, ctx.notional, limit)


def check_position_limits(ctx: Context, reject: Reject) -> None:
    if not ctx.projection_valid or ctx.quantity <= 0:
        return
    projected = ctx.projected_position
    size_after = abs(projected)
    net = ctx.limit(LimitKind.MAX_NET_POSITION)
    if net is not None and size_after > net and size_after > abs(ctx.position):
        reject(pb.REJECT_CODE_MAX_NET_POSITION, size_after, net)
    long = ctx.limit(LimitKind.MAX_LONG_POSITION)
    if long is not None and projected > long and projected > ctx.position:
        reject(pb.REJECT_CODE_MAX_LONG_POSITION, projected, long)
    short = ctx.limit(LimitKind.MAX_SHORT_POSITION)
    if short is not None and -projected > short and projected < ctx.position:
        reject(pb.REJECT_CODE_MAX_SHORT_POSITION, -projected, short)


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
    check_quantity_positive,
    check_price_usable,
    check_arithmetic_fits,
    check_limits_configured,
    check_max_order_quantity,
    check_max_order_notional,
    check_position_limits,
    check_halts,
)


def _check_id(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"{what} must be 1 to {MAX_ID_LENGTH} bytes, got {len(value)}")
    if b"\0" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


def _halt_mode(mode: int) -> int:
    if mode not in (HALT_NONE, pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
        raise ValueError(f"unknown halt mode {mode}")
    return HALT_NONE if mode == pb.HALT_MODE_ACTIVE else mode


class ReferenceBook:
    """Dictionaries in, decisions out: the oracle for the compiled Engine."""

    def __init__(self) -> None:
        self.accounts: dict[bytes, RefAccount] = {}
        self.instruments: dict[bytes, RefInstrument] = {}
        self.positions: dict[tuple[bytes, bytes], RefPosition] = {}
        self.global_halt = HALT_NONE
        self.sync_live = False

    # -- STATE (mirrors PositionTable) --

    def _account(self, account_id: bytes) -> RefAccount:
        return self.accounts.setdefault(_check_id(account_id, "account id"), RefAccount())

    def _instrument(self, symbol: bytes) -> RefInstrument:
        return self.instruments.setdefault(_check_id(symbol, "symbol"), RefInstrument())

    def set_sync_live(self, live: bool) -> None:
        self.sync_live = live

    def set_account_state(self, account_id: bytes, *, known: bool, invalid: bool = False) -> None:
        account = self._account(account_id)
        account.known, account.invalid = known, invalid

    def set_account_limits(self, account_id: bytes, limits: Mapping[int, int] | None) -> None:
        self._account(account_id).limits = None if limits is None else dict(limits)

    def set_symbol_limits(
        self, account_id: bytes, symbol: bytes, limits: Mapping[int, int] | None
    ) -> None:
        self._account(account_id)
        self._instrument(symbol)
        position = self.positions.setdefault((account_id, symbol), RefPosition())
        position.overrides = dict(limits or {})

    def replace_positions(
        self, account_id: bytes, positions: Mapping[bytes, tuple[int, int]]
    ) -> None:
        self._account(account_id)
        for (account, _), position in self.positions.items():
            if account == account_id:
                position.quantity = position.cost_basis = 0
        for symbol, (quantity, cost_basis) in positions.items():
            if not (fits_int64(quantity) and fits_int64(cost_basis)):
                raise OverflowError(f"position {symbol!r} does not fit in int64")
            self._instrument(symbol)
            position = self.positions.setdefault((account_id, symbol), RefPosition())
            position.quantity, position.cost_basis = quantity, cost_basis

    def set_instrument(
        self,
        symbol: bytes,
        *,
        known: bool,
        tick_size: int = 1,
        lot_size: int = 1,
        invalid: bool = False,
    ) -> None:
        if tick_size <= 0 or lot_size <= 0:
            raise ValueError(
                f"tick_size and lot_size must be positive, got {tick_size}, {lot_size}")
        instrument = self._instrument(symbol)
        instrument.known, instrument.invalid = known, invalid
        instrument.tick_size, instrument.lot_size = tick_size, lot_size

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

    # -- DECISIONS --

    def prepare_context(
        self, account_id: bytes, symbol: bytes, side: int, order_type: int, quantity: int,
        price: int,
    ) -> Context:
        account = self.accounts.get(account_id)
        instrument = self.instruments.get(symbol)
        position = None
        if account is not None and instrument is not None:
            position = self.positions.get((account_id, symbol))
        ctx = Context(
            sync_live=self.sync_live,
            global_halt=self.global_halt,
            account=account,
            instrument=instrument,
            overrides=position.overrides if position else {},
            position=position.quantity if position else 0,
            quantity=quantity,
            price=price,
            side=side,
            order_type=order_type,
        )
        if order_type == pb.ORDER_TYPE_LIMIT:
            ctx.valuation_price, ctx.price_valid = price, price > 0
        elif (
            order_type == pb.ORDER_TYPE_MARKET
            and ctx.instrument_known
            and instrument is not None
            and instrument.last_price is not None
        ):
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
        return ctx

    def evaluate(
        self, account_id: bytes, symbol: bytes, side: int, order_type: int, quantity: int,
        price: int,
    ) -> Decision:
        """Run every check on one order: ``(approved, notional, rejections)``."""
        for name, value in (("quantity", quantity), ("price", price)):
            if not fits_int64(value):
                raise OverflowError(f"{name} {value} does not fit in int64")
        ctx = self.prepare_context(account_id, symbol, side, order_type, quantity, price)
        rejections: list[Rejection] = []

        def reject(code: int, observed: int, limit: int) -> None:
            rejections.append((code, observed, limit))

        for check in PIPELINE:
            check(ctx, reject)
        return (not rejections, ctx.notional, tuple(rejections[:MAX_REJECTIONS]))
