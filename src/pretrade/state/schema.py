"""Every Redis key pretrade reads or writes, and how its values parse.

This module is the code side of ``docs/redis-schema.md``: key builders, the
classification of a key seen in a keyspace notification, and strict parsers
that turn raw hash fields into fixed-point integers. A value that does not
parse raises :class:`StateError`; the sync then marks the entity invalid, so
its orders are rejected (fail closed) instead of being checked against a
guessed value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import cast

from redis.typing import EncodableT, FieldT

from pretrade._core.constants import MAX_MARGIN_BPS, RATE_RING_CAPACITY, TAG_LIMIT_SLOTS
from pretrade._core.lots import sum_lots, sum_lots_flat
from pretrade.engine.fixedpoint import fits_int64
from pretrade.engine.limits import (
    GROUP_LIMIT_KINDS,
    MAX_ACCOUNT_GROUPS,
    NAMED_LIMITS,
    PER_SYMBOL_LIMITS,
    LimitKind,
    Limits,
)
from pretrade.engine.text import is_currency_code, is_valid_id, is_valid_tag, quoted
from pretrade.v1 import risk_pb2 as pb

TICKERS_BY_LOT = b"tickers_by_lot:"
QUANTITIES_BY_LOT = b"quantities_by_lot:"
PRICES_BY_LOT = b"prices_by_lot:"
PNL = b"pnl:"
ORDERS_BY_LOT = b"orders_by_lot:"
CANCELS = b"cancels:"
#: ``version:{ACC}``: a counter the order system INCRs in the MULTI/EXEC of a
#: position change; an order carrying it as ``min_state_version`` is decided
#: only on a snapshot that includes that change (read your own writes).
VERSION = b"version:"
#: ``lotlog:{ACC}``: a stream of the lots the ``pretrade_lots`` Redis function
#: wrote (pretrade.state.lotlog); a large account with one is re-read lot by lot.
LOT_LOG = b"lotlog:"
BALANCES = b"balances:"
LOCATES = b"locates:"
RESTRICTED_SHORT = b"restricted:short"
#: Decided orders (pretrade's own durable copy, see orders.py). Read at a full
#: load only, so they are not among the notification patterns.
ORDERS = b"orders:"
LIMITS = b"limits:"
#: Account groups (a desk, a firm): ``groups:{ACC}``, a set of the ids of the
#: groups the account is directly in, and ``group:<G>``, a hash of a group's
#: limits and its optional ``parent`` group.
GROUPS = b"groups:"
GROUP = b"group:"
INSTRUMENT = b"instrument:"
PRICE = b"price:"
#: ``price_source = "timeseries"``: a RedisTimeSeries series per symbol, whose
#: latest sample (``TS.GET``) is the last price; ``price:`` keys are then ignored.
PRICE_HISTORY = b"price_history:"
HALT_ALL = b"halt:all"
HALT_ACCOUNT = b"halt:account:"
HALT_SYMBOL = b"halt:symbol:"

#: A sync's canary (``pretrade:canary:<random id>``, a string with a TTL): written
#: every beat, its keyspace notification proves that changes reach the table;
#: its disappearance means the database was emptied or replaced.
CANARY = b"pretrade:canary:"

#: A sync's fence (``pretrade:fence:<random id>``, a string with a TTL), SET to a
#: fresh random token on the primary before a large account is read on a replica
#: (``redis_read_url``): the replica's read counts only if it holds that token.
#: Not among the notification patterns.
FENCE = b"pretrade:fence:"

#: A sync's mark of one lot-log read (``pretrade:mark:{ACC}:<sync>:<n>``, a string with a
#: TTL), SET in the read's MULTI/EXEC: its keyspace notification comes after
#: every notification of what the read saw. Not among the notification patterns.
MARK = b"pretrade:mark:"

#: Account ownership (``owned_shards``): the lease of shard N
#: (``pretrade:lease:<N>``, a string with a TTL, its value the holder as JSON)
#: and its fencing epoch counter (``pretrade:lease-epoch:<N>``, INCR'd by each
#: new holder). Single keys, so they work unchanged on Redis Cluster; not
#: among the notification patterns (the lease keeper reads them itself).
LEASE = b"pretrade:lease:"
LEASE_EPOCH = b"pretrade:lease-epoch:"

#: SCAN patterns for a full load, one per entity kind.
SCAN_PATTERNS = (
    b"tickers_by_lot:*",
    b"quantities_by_lot:*",
    b"prices_by_lot:*",
    b"pnl:*",
    b"orders_by_lot:*",
    b"cancels:*",
    b"version:*",
    b"lotlog:*",
    b"balances:*",
    b"locates:*",
    b"restricted:*",
    b"limits:*",
    b"groups:*",
    b"group:*",
    b"instrument:*",
    b"price:*",
    b"price_history:*",
    b"halt:*",
)

#: Keyspace notification classes pretrade needs: K (keyspace channel),
#: g (DEL, EXPIRE...), $ (strings), h (hashes), s (sets), x (expired),
#: e (evicted).
REQUIRED_NOTIFY_FLAGS = "Kg$hsxe"
#: With ``price_source = "timeseries"`` also d (module key types: the
#: series' ts.add, ts.madd, ts.incrby, ts.del... events).
TIMESERIES_NOTIFY_FLAGS = REQUIRED_NOTIFY_FLAGS + "d"
#: The largest series value taken as a price: a sample is a double, exact for
#: integers below 2**53 only.
MAX_SERIES_PRICE = 2**53 - 1


class StateError(ValueError):
    """A Redis value that pretrade cannot trust."""


class KeyKind(Enum):
    LOTS = "lots"
    LIMITS = "limits"
    INSTRUMENT = "instrument"
    PRICE = "price"
    PRICE_HISTORY = "price_history"
    HALT = "halt"
    BALANCES = "balances"
    LOCATES = "locates"
    RESTRICTED = "restricted"
    #: ``groups:{ACC}``: an account's groups (the target is the account).
    GROUPS = "groups"
    #: ``group:<G>``: a group's hash (the target is the group id).
    GROUP = "group"


def tagged(account_id: bytes) -> bytes:
    """``{ACC}``: the account id as a cluster hash tag."""
    return b"{" + account_id + b"}"


def lot_keys(account_id: bytes) -> tuple[bytes, bytes, bytes]:
    """The three lot hashes of an account: tickers, quantities, prices."""
    tag = tagged(account_id)
    return (TICKERS_BY_LOT + tag, QUANTITIES_BY_LOT + tag, PRICES_BY_LOT + tag)


def account_snapshot_keys(account_id: bytes) -> tuple[bytes, ...]:
    """Everything read in one MULTI/EXEC for an account's positions and working orders:
    the three lot hashes, ``orders_by_lot``, ``cancels`` and ``pnl`` (one hash slot)."""
    tag = tagged(account_id)
    return (*lot_keys(account_id), ORDERS_BY_LOT + tag, CANCELS + tag, PNL + tag)


def version_key(account_id: bytes) -> bytes:
    """``version:{ACC}``: the account's state version (read with its snapshot)."""
    return VERSION + tagged(account_id)


def lot_log_key(account_id: bytes) -> bytes:
    """``lotlog:{ACC}``: the lots ``pretrade_lots`` wrote (pretrade.state.lotlog)."""
    return LOT_LOG + tagged(account_id)


def mark_key(account_id: bytes, sync_id: bytes, number: int) -> bytes:
    """``pretrade:mark:{ACC}:<sync>:<n>``: a lot-log read's mark, in the account's slot.

    ``sync_id`` is the sync's own random id: every sync following the same
    Redis (an owner and its standby) numbers its marks from 1.
    """
    return b"%s%s:%s:%d" % (MARK, tagged(account_id), sync_id, number)


def parse_mark(key: bytes) -> tuple[bytes, bytes, int] | None:
    """``(account, sync id, n)`` of a mark key (:func:`mark_key`); None for any other key."""
    if not key.startswith(MARK):
        return None
    rest, _, number = key[len(MARK):].rpartition(b":")
    tag, _, sync_id = rest.rpartition(b":")
    account = _untag(tag)
    if account is None or not sync_id or not number.isdigit():
        return None
    return account, sync_id, int(number)


#: The per-lot hashes, whose keyspace events a lot-log entry declares.
PER_LOT_HASHES = (TICKERS_BY_LOT, QUANTITIES_BY_LOT, PRICES_BY_LOT, ORDERS_BY_LOT)


def lot_event_account(key: bytes) -> tuple[bytes, bool] | None:
    """``(account, True)`` for a per-lot hash, ``(account, False)`` for ``lotlog:{ACC}``."""
    for prefix in PER_LOT_HASHES:
        if key.startswith(prefix):
            account = _untag(key[len(prefix):])
            return None if account is None else (account, True)
    if key.startswith(LOT_LOG):
        account = _untag(key[len(LOT_LOG):])
        return None if account is None else (account, False)
    return None


def parse_state_version(raw: bytes | None) -> int:
    """A ``version:{ACC}`` value: a non-negative int64; 0 when absent."""
    if raw is None:
        return 0
    version = parse_int64(raw, "state version")
    if version < 0:
        raise StateError(f"state version must not be negative, got {version}")
    return version


def orders_key(account_id: bytes) -> bytes:
    """``orders:{ACC}``: order id -> a decided order (pretrade.state.journal encoding)."""
    return ORDERS + tagged(account_id)


def account_of_orders_key(key: bytes) -> bytes | None:
    return _untag(key[len(ORDERS):]) if key.startswith(ORDERS) else None


def balances_key(account_id: bytes) -> bytes:
    return BALANCES + tagged(account_id)


def locates_key(account_id: bytes) -> bytes:
    return LOCATES + tagged(account_id)


def fills_by_order(quantities: Mapping[bytes, bytes],
                   orders_by_lot: Mapping[bytes, bytes]) -> dict[bytes, int]:
    """Units filled per order id: the sum of |quantity| of the lots attributed to it."""
    filled: dict[bytes, int] = {}
    for lot, order_id in orders_by_lot.items():
        raw = quantities.get(lot)
        if raw is None:
            raise StateError(f"lot {quoted(lot)} is attributed to {quoted(order_id)} but has "
                             "no quantity")
        filled[order_id] = filled.get(order_id, 0) + abs(parse_int64(raw, f"lot {quoted(lot)}"))
    return filled


def parse_balances(fields: Mapping[bytes, bytes]) -> tuple[int, int] | None:
    """``(cash, credit_line)`` from ``balances:{ACC}``; None when the hash is absent."""
    if not fields:
        return None
    cash = parse_int64(fields.get(b"cash"), "cash")
    credit = parse_int64(fields.get(b"credit_line", b"0"), "credit_line")
    if credit < 0:
        raise StateError(f"credit_line must not be negative, got {credit}")
    return cash, credit


def parse_locates(fields: Mapping[bytes, bytes]) -> dict[bytes, int]:
    """``{symbol: located units}`` from ``locates:{ACC}``."""
    locates = {}
    for symbol, raw in fields.items():
        if not is_valid_id(symbol):
            raise StateError(f"locate for {quoted(symbol)}: not a valid symbol")
        quantity = parse_int64(raw, f"locate {quoted(symbol)}")
        if quantity < 0:
            raise StateError(f"locate {quoted(symbol)} is negative: {quantity}")
        locates[symbol] = quantity
    return locates


def pnl_key(account_id: bytes) -> bytes:
    """``pnl:{ACC}``: the day's realized P&L (field ``realized``), read with the lots."""
    return PNL + tagged(account_id)


def parse_realized_pnl(fields: Mapping[bytes, bytes]) -> int:
    """The ``realized`` field of ``pnl:{ACC}`` (1/10,000 of the currency); 0 when absent."""
    raw = fields.get(b"realized")
    return 0 if raw is None else parse_int64(raw, "realized P&L")


def limits_key(account_id: bytes) -> bytes:
    return LIMITS + tagged(account_id)


def groups_key(account_id: bytes) -> bytes:
    """``groups:{ACC}``: the ids of the groups the account is directly in (a set)."""
    return GROUPS + tagged(account_id)


def group_key(group_id: bytes) -> bytes:
    """``group:<G>``: a group's limits and its ``parent`` (a hash, no hash tag)."""
    return GROUP + group_id


def instrument_key(symbol: bytes) -> bytes:
    return INSTRUMENT + symbol


def price_key(symbol: bytes) -> bytes:
    return PRICE + symbol


def price_history_key(symbol: bytes) -> bytes:
    return PRICE_HISTORY + symbol


def halt_key(scope: int, target: bytes = b"") -> bytes:
    """The key of a halt: ``halt:all``, ``halt:account:<ACC>`` or ``halt:symbol:<SYM>``."""
    if scope == pb.HALT_SCOPE_GLOBAL:
        return HALT_ALL
    if scope == pb.HALT_SCOPE_ACCOUNT:
        return HALT_ACCOUNT + target
    if scope == pb.HALT_SCOPE_SYMBOL:
        return HALT_SYMBOL + target
    raise ValueError(f"unknown halt scope {scope}")


def lease_key(shard: int) -> bytes:
    """``pretrade:lease:<N>``: who holds shard N (see :mod:`pretrade.shards.leases`)."""
    return LEASE + str(shard).encode()


def lease_epoch_key(shard: int) -> bytes:
    """``pretrade:lease-epoch:<N>``: the fencing epoch counter of shard N."""
    return LEASE_EPOCH + str(shard).encode()


def _untag(rest: bytes) -> bytes | None:
    if len(rest) >= 3 and rest.startswith(b"{") and rest.endswith(b"}"):
        inner = rest[1:-1]
        return inner if is_valid_id(inner) else None
    return None


def classify(key: bytes) -> tuple[KeyKind, int, bytes] | None:
    """What a key holds: ``(kind, halt scope or 0, account id or symbol)``.

    Returns None for keys pretrade does not own (they are ignored).
    """
    for prefix in (TICKERS_BY_LOT, QUANTITIES_BY_LOT, PRICES_BY_LOT, PNL, ORDERS_BY_LOT,
                   CANCELS, VERSION, LOT_LOG):
        if key.startswith(prefix):
            account = _untag(key[len(prefix):])
            return (KeyKind.LOTS, 0, account) if account else None
    for prefix, account_kind in ((BALANCES, KeyKind.BALANCES), (LOCATES, KeyKind.LOCATES)):
        if key.startswith(prefix):
            account = _untag(key[len(prefix):])
            return (account_kind, 0, account) if account else None
    if key == RESTRICTED_SHORT:
        return (KeyKind.RESTRICTED, 0, b"short")
    for prefix, account_kind in ((LIMITS, KeyKind.LIMITS), (GROUPS, KeyKind.GROUPS)):
        if key.startswith(prefix):
            account = _untag(key[len(prefix):])
            return (account_kind, 0, account) if account else None
    if key.startswith(GROUP):
        group = key[len(GROUP):]
        return (KeyKind.GROUP, 0, group) if is_valid_id(group) else None
    for prefix, kind in ((INSTRUMENT, KeyKind.INSTRUMENT), (PRICE, KeyKind.PRICE),
                         (PRICE_HISTORY, KeyKind.PRICE_HISTORY)):
        if key.startswith(prefix):
            symbol = key[len(prefix):]
            return (kind, 0, symbol) if is_valid_id(symbol) else None
    if key == HALT_ALL:
        return (KeyKind.HALT, pb.HALT_SCOPE_GLOBAL, b"")
    for prefix, scope in ((HALT_ACCOUNT, pb.HALT_SCOPE_ACCOUNT),
                          (HALT_SYMBOL, pb.HALT_SCOPE_SYMBOL)):
        if key.startswith(prefix):
            target = key[len(prefix):]
            return (KeyKind.HALT, scope, target) if is_valid_id(target) else None
    return None


# -- VALUES --

_INTEGER = re.compile(rb"[+-]?[0-9]{1,19}")


def parse_int64(raw: bytes | None, what: str) -> int:
    """A base-10 int64 with no decimal point, exponent or whitespace."""
    if raw is None or _INTEGER.fullmatch(raw) is None:
        raise StateError(f"{what}: {quoted(raw)} is not an integer")
    value = int(raw)
    if not fits_int64(value):
        raise StateError(f"{what}: {quoted(raw)} does not fit in int64")
    return value


#: A lot hash as read: a mapping, or a flat HGETALL reply (field, value, ...).
LotHash = Mapping[bytes, bytes] | list[bytes]


def aggregate_lots(tickers: LotHash, quantities: LotHash, prices: LotHash
                   ) -> dict[bytes, tuple[int, int]]:
    """Positions from lots, as :func:`aggregate_lots_reference` says, in compiled code.

    The hashes are dicts, or flat HGETALL replies (:meth:`Reads.hgetall_flat
    <pretrade.state.connection.Reads.hgetall_flat>`). The compiled loops
    (``pretrade._core.lots``) take the plain case: three dicts, or three
    replies that list the same lots in the same order (others are paired
    up). Whatever they do not accept (a missing lot, a bad value or symbol, a
    sum that leaves int64 on the way), the reference decides, with its message.
    """
    if isinstance(tickers, list) and isinstance(quantities, list) and isinstance(prices, list):
        summed = sum_lots_flat(tickers, quantities, prices, is_valid_id)
        if summed is not None:
            return summed
    tickers, quantities, prices = lot_fields(tickers), lot_fields(quantities), lot_fields(prices)
    if isinstance(tickers, dict) and isinstance(quantities, dict) and isinstance(prices, dict):
        # None also when the three hashes' lots differ: the reference says which.
        summed = sum_lots(tickers, quantities, prices, is_valid_id)
        if summed is not None:
            return summed
    return aggregate_lots_reference(tickers, quantities, prices)


def lot_fields(reply: LotHash) -> Mapping[bytes, bytes]:
    """A lot hash as a mapping: a flat HGETALL reply (field, value, ...) paired up."""
    if isinstance(reply, list):
        if len(reply) % 2:
            raise StateError(f"unexpected HGETALL reply of {len(reply)} items")
        fields = iter(reply)
        return dict(zip(fields, fields, strict=False))  # of even length
    return reply


def lot_count(reply: LotHash) -> int:
    """The lots in one lot hash as read."""
    return len(reply) // 2 if isinstance(reply, list) else len(reply)


def aggregate_lots_reference(
    tickers: Mapping[bytes, bytes], quantities: Mapping[bytes, bytes],
    prices: Mapping[bytes, bytes],
) -> dict[bytes, tuple[int, int]]:
    """Positions from lots: ``{symbol: (net quantity, cost basis)}``.

    Net quantity is the sum of the lots' signed quantities; cost basis is the
    sum of quantity x price, so the average cost is cost_basis / quantity
    (lots 10 @ 683378 and 10 @ 688200 give 20 with cost basis 13715780, an
    average of 685789: $68.5789). Every lot must appear in all three hashes;
    each position's sums must fit in int64.

    The oracle of :func:`aggregate_lots`'s compiled loop (tests compare them);
    a message is made only for an error, each symbol is validated once.
    """
    if not (tickers.keys() == quantities.keys() == prices.keys()):
        lots = set(tickers) | set(quantities) | set(prices)
        missing = min(lot for lot in lots
                      if lot not in tickers or lot not in quantities or lot not in prices)
        raise StateError(f"lot {quoted(missing)} is not in all three lot hashes")
    integer = _INTEGER.fullmatch
    sums: dict[bytes, list[int]] = {}
    for lot, symbol in tickers.items():
        raw_quantity, raw_price = quantities[lot], prices[lot]
        if integer(raw_quantity) is None or integer(raw_price) is None:
            parse_int64(raw_quantity, f"lot {quoted(lot)} quantity")
            parse_int64(raw_price, f"lot {quoted(lot)} price")
        quantity, price = int(raw_quantity), int(raw_price)
        if price < 0:
            raise StateError(f"lot {quoted(lot)}: negative price {price}")
        found = sums.get(symbol)
        if found is None:
            if not is_valid_id(symbol):
                raise StateError(f"lot {quoted(lot)}: {quoted(symbol)} is not a valid symbol")
            found = sums[symbol] = [0, 0]
        found[0] += quantity
        found[1] += quantity * price
    positions: dict[bytes, tuple[int, int]] = {}
    for symbol, (net, basis) in sums.items():
        if not (fits_int64(net) and fits_int64(basis)):
            raise StateError(f"position in {quoted(symbol)} does not fit in int64")
        positions[symbol] = (net, basis)
    return positions


#: The longest a halt may last (a halt's TTL, a breaker's auto_halt_seconds): a year.
MAX_HALT_SECONDS = 366 * 24 * 3600


@dataclass
class ParsedLimits:
    """A ``limits:{ACC}`` hash, parsed."""

    account: Limits = field(default_factory=dict)
    per_symbol: dict[bytes, Limits] = field(default_factory=dict)
    venues: dict[bytes, int] = field(default_factory=dict)
    counterparties: dict[bytes, int] = field(default_factory=dict)


def parse_limits(fields: Mapping[bytes, bytes]) -> ParsedLimits:
    """Account limits, per-symbol overrides and named venue/counterparty limits.

    A field is a limit name (``max_order_quantity``); a limit name, a colon
    and a symbol (``max_long_position:AAPL``) for a per-symbol override of the
    limits in PER_SYMBOL_LIMITS; or ``max_venue_exposure:<VENUE>`` /
    ``max_counterparty_exposure:<NAME>`` for one named venue or counterparty.
    Values are non-negative int64: units for quantities and positions,
    1/10,000 of the currency for notionals, basis points for ``*_bps``,
    milliseconds for ``*_ms`` and seconds for ``auto_halt_seconds``.
    """
    parsed = ParsedLimits()
    for raw_field, raw_value in fields.items():
        name, colon, suffix = raw_field.partition(b":")
        try:
            kind = LimitKind.from_field(name.decode("ascii"))
        except (KeyError, UnicodeDecodeError):
            raise StateError(f"unknown limit field {quoted(raw_field)}") from None
        value = parse_int64(raw_value, f"limit {quoted(raw_field)}")
        if value < 0:
            raise StateError(f"limit {quoted(raw_field)} is negative: {value}")
        if colon and not suffix:
            raise StateError(f"limit {quoted(raw_field)}: empty name after the colon")
        if kind == LimitKind.AUTO_HALT_SECONDS and value > MAX_HALT_SECONDS:
            raise StateError(f"limit {quoted(raw_field)} = {value}: at most {MAX_HALT_SECONDS} "
                             "seconds (a year)")
        if kind in (LimitKind.MAX_ORDERS_PER_WINDOW, LimitKind.MAX_REJECTS_PER_WINDOW) \
                and value > RATE_RING_CAPACITY:
            raise StateError(f"limit {quoted(raw_field)} = {value}: the engine remembers at "
                             f"most {RATE_RING_CAPACITY} orders per account for its windows")
        if not suffix:
            parsed.account[kind] = value
        elif kind in NAMED_LIMITS:
            if not is_valid_tag(suffix):
                raise StateError(f"limit {quoted(raw_field)}: {quoted(suffix)} is not a valid "
                                 "name")
            target = parsed.venues if kind == LimitKind.MAX_VENUE_EXPOSURE \
                else parsed.counterparties
            target[suffix] = value
        elif kind in PER_SYMBOL_LIMITS:
            if not is_valid_id(suffix):
                raise StateError(f"limit {quoted(raw_field)}: {quoted(suffix)} is not a valid "
                                 "symbol")
            parsed.per_symbol.setdefault(suffix, {})[kind] = value
        else:
            raise StateError(f"limit {quoted(raw_field)}: {name.decode()} cannot be set per "
                             "symbol")
    for what, named in (("venue", parsed.venues), ("counterparty", parsed.counterparties)):
        if len(named) > TAG_LIMIT_SLOTS:
            raise StateError(f"at most {TAG_LIMIT_SLOTS} named {what} limits per account")
    return parsed


# -- ACCOUNT GROUPS --

#: The limit fields a ``group:<G>`` hash may hold (besides ``parent``).
GROUP_LIMIT_FIELDS: frozenset[bytes] = frozenset(kind.field.encode()
                                                 for kind in GROUP_LIMIT_KINDS)


def parse_group(fields: Mapping[bytes, bytes]) -> tuple[Limits, bytes | None]:
    """A ``group:<G>`` hash: ``(limits, parent group id or None)``.

    A field is one of GROUP_LIMIT_FIELDS (named as in ``limits:{ACC}``, no
    per-symbol or named suffix) or ``parent``, the id of the group this one
    is inside (an id as an account id is). The limit values parse as those
    of ``limits:{ACC}`` do (:func:`parse_limits`: non-negative int64, at most
    RATE_RING_CAPACITY orders per window). Anything else raises StateError:
    the whole hash is invalid.
    """
    parent = fields.get(b"parent")
    if parent is not None and not is_valid_id(parent):
        raise StateError(f"parent {quoted(parent)} is not a valid group id")
    limits = {name: value for name, value in fields.items() if name != b"parent"}
    for name in limits:
        if name not in GROUP_LIMIT_FIELDS:
            raise StateError(f"group field {quoted(name)} is neither parent nor a group limit "
                             f"({', '.join(sorted(n.decode() for n in GROUP_LIMIT_FIELDS))})")
    return parse_limits(limits).account, parent


def flatten_groups(direct: Iterable[bytes], parents: Mapping[bytes, bytes | None]
                   ) -> tuple[bytes, ...]:
    """An account's groups, flattened: its ``direct`` groups and, transitively, their parents.

    ``parents`` maps a group id to its parent's (a group without one, or
    missing, has none). The result is deduplicated and sorted by id (bytes),
    the order the groups are checked in. StateError (the account's group
    tree is invalid) for a group id that is not a valid id, a cycle of
    parents, or more than MAX_ACCOUNT_GROUPS groups.
    """
    found: set[bytes] = set()
    for start in sorted(direct):
        chain: list[bytes] = []
        group: bytes | None = start
        while group is not None and group not in found:
            if not is_valid_id(group):
                raise StateError(f"group id {quoted(group)} is not a valid id")
            if group in chain:
                cycle = [*chain[chain.index(group):], group]
                raise StateError("the parents of groups form a cycle: "
                                 + " -> ".join(g.decode() for g in cycle))
            chain.append(group)
            if len(found) + len(chain) > MAX_ACCOUNT_GROUPS:
                raise StateError(f"more than {MAX_ACCOUNT_GROUPS} groups, parents included")
            group = parents.get(group)
        found.update(chain)
    return tuple(sorted(found))


@dataclass(frozen=True)
class InstrumentRef:
    """Reference data of one instrument (``instrument:<SYM>``)."""

    tick_size: int = 1
    lot_size: int = 1
    issuer: str = ""
    sector: str = ""
    #: ISO 4217 code; "" when the hash has none (readers use default_currency).
    currency: str = ""
    #: Margin rates, basis points of notional; 0: none.
    initial_margin_long_bps: int = 0
    initial_margin_short_bps: int = 0
    maintenance_margin_long_bps: int = 0
    maintenance_margin_short_bps: int = 0

    @property
    def margin_bps(self) -> tuple[int, int, int, int]:
        """The four rates in :data:`MARGIN_FIELDS` order, as the table takes them."""
        return (self.initial_margin_long_bps, self.initial_margin_short_bps,
                self.maintenance_margin_long_bps, self.maintenance_margin_short_bps)


#: The margin rates of ``instrument:<SYM>`` (basis points of notional, 0 to
#: MAX_MARGIN_BPS), in the order the table takes them.
MARGIN_FIELDS = (b"initial_margin_long_bps", b"initial_margin_short_bps",
                 b"maintenance_margin_long_bps", b"maintenance_margin_short_bps")


def parse_instrument(fields: Mapping[bytes, bytes]) -> InstrumentRef:
    """Parse an ``instrument:<SYM>`` hash; tick and lot size default to 1.

    ``currency``, when present, must be three ASCII letters A-Z (ISO 4217):
    anything else makes the instrument unreadable, like a bad tick size.
    """
    tick = parse_int64(fields.get(b"tick_size", b"1"), "tick_size")
    lot = parse_int64(fields.get(b"lot_size", b"1"), "lot_size")
    if tick <= 0 or lot <= 0:
        raise StateError(f"tick_size and lot_size must be positive, got {tick} and {lot}")
    currency = fields.get(b"currency")
    if currency is not None and not is_currency_code(currency):
        raise StateError(f"currency {quoted(currency)} is not an ISO 4217 code (three "
                         "letters A-Z, e.g. USD)")

    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", errors="replace")

    rates = []
    for name in MARGIN_FIELDS:
        rate = parse_int64(fields.get(name, b"0"), name.decode())
        if not 0 <= rate <= MAX_MARGIN_BPS:
            raise StateError(f"{name.decode()} must be 0 to {MAX_MARGIN_BPS} basis points, "
                             f"got {rate}")
        rates.append(rate)
    return InstrumentRef(tick, lot, text(b"issuer"), text(b"sector"), text(b"currency"),
                         *rates)


_SERIES_INTEGER = re.compile(rb"[0-9]{1,16}")


def parse_series_price(reply: object) -> int | None:
    """A ``TS.GET price_history:<SYM>`` reply: its latest sample as a price, None if empty.

    The series holds prices in 1/10,000 of the currency, as integers: a
    sample is a double, so a fraction (``68.91``), an exponent, a value of
    2**53 or more, zero or a negative one is refused (StateError), never
    rounded.
    """
    if isinstance(reply, list) and not reply:
        return None
    if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes)):
        raise StateError(f"not a TS.GET reply: {reply!r:.80}")
    raw = reply[1]
    if _SERIES_INTEGER.fullmatch(raw) is None:
        raise StateError(f"latest sample {quoted(raw)} is not a whole number of 1/10,000 "
                         "of the currency")
    price = int(raw)
    if not 0 < price <= MAX_SERIES_PRICE:
        raise StateError(f"latest sample {price} is not in 1..{MAX_SERIES_PRICE} (a series "
                         "value is exact below 2**53 only)")
    return price


def parse_last_price(raw: bytes) -> int:
    """A ``price:<SYM>`` value: a positive int64 in 1/10,000 of the currency."""
    price = parse_int64(raw, "last price")
    if price <= 0:
        raise StateError(f"last price must be positive, got {price}")
    return price


# -- HALTS --

HALT_MODE_NAMES: dict[int, bytes] = {
    pb.HALT_MODE_HALTED: b"HALTED",
    pb.HALT_MODE_REDUCE_ONLY: b"REDUCE_ONLY",
}
_HALT_MODES_BY_NAME = {name: mode for mode, name in HALT_MODE_NAMES.items()}


@dataclass(frozen=True)
class HaltRecord:
    """One halt as stored in a ``halt:*`` hash."""

    scope: int
    target: bytes
    mode: int
    reason: str
    halted_by: str
    halted_at_ms: int
    expires_at_ms: int = 0

    def to_fields(self) -> dict[FieldT, EncodableT]:
        fields: dict[FieldT, EncodableT] = {
            b"mode": HALT_MODE_NAMES[self.mode],
            b"reason": self.reason.encode(),
            b"by": self.halted_by.encode(),
            b"at": str(self.halted_at_ms).encode(),
        }
        if self.expires_at_ms:
            fields[b"expires_at"] = str(self.expires_at_ms).encode()
        return fields

    @classmethod
    def from_proto(cls, halt: pb.Halt) -> HaltRecord:
        return cls(halt.scope, halt.target.encode(), halt.mode, halt.reason, halt.halted_by,
                   halt.halted_at_unix_ms, halt.expires_at_unix_ms)

    def to_proto(self) -> pb.Halt:
        return pb.Halt(
            scope=cast(pb.HaltScope, self.scope), target=self.target.decode(),
            mode=cast(pb.HaltMode, self.mode), reason=self.reason,
            halted_by=self.halted_by, halted_at_unix_ms=self.halted_at_ms,
            expires_at_unix_ms=self.expires_at_ms,
        )


def halt_from_redis(scope: int, target: bytes, fields: object, ttl_ms: object,
                    now_ms: int) -> tuple[HaltRecord, StateError | None]:
    """A ``halt:*`` HGETALL reply and its PTTL as the halt in force, and the error if any.

    Someone meant to halt: an unreadable halt (a reply that is an error, such
    as WRONGTYPE, or fields that do not parse) is a full halt. A key with a
    TTL and no ``expires_at`` expires with its key.
    """
    error = None
    try:
        if not isinstance(fields, dict):
            raise StateError(f"unreadable: {fields}")
        record = parse_halt(scope, target, fields)
    except StateError as failure:
        error = failure
        record = HaltRecord(scope, target, pb.HALT_MODE_HALTED,
                            f"unreadable halt record ({failure})", "unknown", now_ms)
    if isinstance(ttl_ms, int) and ttl_ms > 0 and not record.expires_at_ms:
        record = HaltRecord(record.scope, record.target, record.mode, record.reason,
                            record.halted_by, record.halted_at_ms, now_ms + ttl_ms)
    return record, error


def parse_halt(scope: int, target: bytes, fields: Mapping[bytes, bytes]) -> HaltRecord:
    """Parse a ``halt:*`` hash. An unknown mode raises StateError."""
    mode = _HALT_MODES_BY_NAME.get(fields.get(b"mode", b"").upper())
    if mode is None:
        raise StateError(f"halt {quoted(target)}: unknown mode {quoted(fields.get(b'mode'))}")

    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", errors="replace")

    at = parse_int64(fields[b"at"], "halt at") if b"at" in fields else 0
    expires = parse_int64(fields[b"expires_at"], "halt expires_at") \
        if b"expires_at" in fields else 0
    return HaltRecord(scope, target, mode, text(b"reason"), text(b"by"), at, expires)
