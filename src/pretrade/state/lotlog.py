"""The lot log: a large account re-read lot by lot, never silently wrong.

A keyspace notification names a hash, not its field, so a one-lot change to
an account of 100,000 lots means reading all 100,000 again. The order system
can instead write lots through ``pretrade_lots`` (``lotlog.lua``, a Redis
function pretrade loads): in one atomic call it writes the lots, appends to
``lotlog:{ACC}`` an entry naming them and the number of keyspace events its
writes raised on the four per-lot hashes, and INCRs ``version:{ACC}``.

The sync then reads only the lots the new entries name. It proves that
nothing else changed: it counts the events it hears on those hashes, and
every read SETs the account's mark (``pretrade:mark:{ACC}``) in its
MULTI/EXEC. Redis publishes notifications in the order it runs commands, so
once the mark's notification arrives, every event of a write the read saw has
arrived too. More events than the entries declared means a write that did not
go through the function (an HSET by hand, an expiry, a partial call): the
account is read whole, as without the log. Fewer (an event not delivered), a
gap in the entries' sequence, or a log the sync cannot read: read whole too.

:class:`LotBook` keeps the account's lots as last read and their sums, so a
change of a few lots costs a few lots of work; its answers equal
:func:`~pretrade.state.schema.aggregate_lots` and
:func:`~pretrade.state.schema.fills_by_order` of the same hashes (the tests
compare them), and whenever a lot is malformed it asks those very functions,
so the error is theirs too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from pretrade.engine.fixedpoint import fits_int64
from pretrade.engine.text import is_valid_id
from pretrade.state.schema import (
    StateError,
    account_snapshot_keys,
    aggregate_lots,
    fills_by_order,
    lot_log_key,
    parse_int64,
    version_key,
)

#: The Redis function order systems call, and its library's source.
FUNCTION = "pretrade_lots"
LIBRARY = (files("pretrade.state") / "lotlog.lua").read_text()
#: Entries, and distinct lots they name, read at most per lot-log read; more:
#: the account is read whole (cheaper by then, and one HMGET stays bounded).
MAX_ENTRIES = 1_000
MAX_LOTS = 20_000
#: A lot-log entry's id: ``0-<sequence>``, one more than the entry before.
_ENTRY_ID = re.compile(rb"0-([0-9]{1,18})")


def function_keys(account: bytes) -> tuple[bytes, ...]:
    """The six keys of ``FCALL pretrade_lots 6 ...`` for ``account``, in their order."""
    tickers, quantities, prices, orders_by_lot, _, _ = account_snapshot_keys(account)
    return (lot_log_key(account), tickers, quantities, prices, orders_by_lot,
            version_key(account))


async def load_library(node: aioredis.Redis) -> str:
    """FUNCTION LOAD REPLACE the library on ``node``; "" or why it could not be."""
    try:
        await node.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
    except ResponseError as error:  # Redis before 7, an ACL: the log is not offered
        return str(error)
    return ""


def entry_sequence(entry_id: bytes) -> int | None:
    """The sequence of a lot-log entry id, None when pretrade_lots did not write it."""
    found = _ENTRY_ID.fullmatch(entry_id)
    return None if found is None else int(found.group(1))


def top_sequence(reply: Any) -> int | None:
    """The newest entry's sequence from ``XREVRANGE lotlog + - COUNT 1`` (0: no log)."""
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return None
    if not reply:
        return 0
    return entry_sequence(reply[0][0])


def read_entries(reply: Any, after: int) -> tuple[list[bytes], int, int] | None:
    """``(lots named, events declared, last sequence)`` of the entries after ``after``.

    None when the entries cannot be trusted: not a reply of pretrade_lots'
    entries, or a gap in their sequence (trimmed, or the log replaced).
    """
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return None
    lots: list[bytes] = []
    events = 0
    last = after
    for entry_id, fields in reply:
        if entry_sequence(entry_id) != last + 1 or not isinstance(fields, dict):
            return None
        last += 1
        declared = fields.get(b"events")
        if declared is None or not declared.isdigit():
            return None
        events += int(declared)
        # The other fields are numbered 1, 2, ...: the lots of the call's ops.
        lots.extend(value for name, value in fields.items() if name != b"events")
    return lots, events, last


class LotBook:
    """One account's per-lot hashes as last read, with their sums kept up to date.

    ``positions()`` and ``filled()`` equal aggregate_lots and fills_by_order
    of the four hashes; ``update`` changes some lots in time proportional to
    them, not to the account.
    """

    def __init__(self, tickers: Mapping[bytes, bytes], quantities: Mapping[bytes, bytes],
                 prices: Mapping[bytes, bytes], orders_by_lot: Mapping[bytes, bytes],
                 sequence: int) -> None:
        # Copies: the book changes them lot by lot.
        self.hashes = (dict(tickers), dict(quantities), dict(prices), dict(orders_by_lot))
        #: The last lot-log entry the book holds.
        self.sequence = sequence
        #: symbol -> [net quantity, cost basis, lots]; order -> [units filled, lots].
        self._sums: dict[bytes, list[int]] = {}
        self._fills: dict[bytes, list[int]] = {}
        #: Lots the sums cannot take (missing from a hash, a bad value or symbol).
        self._bad: set[bytes] = set()
        for lot in {lot for values in self.hashes for lot in values}:
            self._add(lot)

    def __len__(self) -> int:
        return len(self.hashes[0])

    def _add(self, lot: bytes) -> None:
        tickers, quantities, prices, orders = self.hashes
        symbol, raw_quantity, raw_price = tickers.get(lot), quantities.get(lot), prices.get(lot)
        order = orders.get(lot)
        if symbol is None and raw_quantity is None and raw_price is None:
            if order is not None:
                self._bad.add(lot)  # attributed to an order but has no quantity
            return
        try:  # the whole read's parser: a lot it refuses is one the sums cannot take
            quantity = parse_int64(raw_quantity, "quantity")
            price = parse_int64(raw_price, "price")
        except StateError:
            self._bad.add(lot)
            return
        if symbol is None or price < 0 or not is_valid_id(symbol):
            self._bad.add(lot)
            return
        sums = self._sums.setdefault(symbol, [0, 0, 0])
        sums[0] += quantity
        sums[1] += quantity * price
        sums[2] += 1
        if order is not None:
            fills = self._fills.setdefault(order, [0, 0])
            fills[0] += abs(quantity)
            fills[1] += 1

    def _remove(self, lot: bytes) -> None:
        if lot in self._bad:
            self._bad.discard(lot)
            return
        tickers, quantities, prices, orders = self.hashes
        symbol = tickers.get(lot)
        if symbol is None:
            return
        quantity, price = int(quantities[lot]), int(prices[lot])
        sums = self._sums[symbol]
        sums[0] -= quantity
        sums[1] -= quantity * price
        sums[2] -= 1
        if not sums[2]:
            del self._sums[symbol]
        order = orders.get(lot)
        if order is not None:
            fills = self._fills[order]
            fills[0] -= abs(quantity)
            fills[1] -= 1
            if not fills[1]:
                del self._fills[order]

    def update(self, lots: list[bytes], values: list[list[bytes | None]]) -> None:
        """Lots as read again: ``values[h][i]`` is hash h's value of ``lots[i]`` (None: none).

        ``lots`` name each lot once (HMGET replies of the four hashes, in order).
        """
        for at, lot in enumerate(lots):
            self._remove(lot)
            for hash_values, read in zip(self.hashes, values, strict=True):
                value = read[at]
                if value is None:
                    hash_values.pop(lot, None)
                else:
                    hash_values[lot] = value
            self._add(lot)

    def positions(self) -> dict[bytes, tuple[int, int]]:
        """``{symbol: (net quantity, cost basis)}``, as aggregate_lots; StateError as it."""
        if self._bad:
            return aggregate_lots(*self.hashes[:3])
        positions = {}
        for symbol, (net, basis, _) in self._sums.items():
            if not (fits_int64(net) and fits_int64(basis)):
                return aggregate_lots(*self.hashes[:3])  # raises, with its message
            positions[symbol] = (net, basis)
        return positions

    def filled(self) -> dict[bytes, int]:
        """Units filled per order id, as fills_by_order; StateError as it."""
        if self._bad:
            return fills_by_order(self.hashes[1], self.hashes[3])
        return {order: units for order, (units, _) in self._fills.items()}
