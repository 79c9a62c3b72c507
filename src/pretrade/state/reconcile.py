"""Does the table hold what Redis holds? A fresh load from Redis, compared field by field.

:func:`load_from_redis` reads Redis the way a starting server does (the same
:class:`~pretrade.state.sync.RedisSync` full load, decided orders included)
into a private table; :func:`compare` lists every difference between two
tables: per account its state, halt, limits, balances, realized P&L and
working-order count and groups (flattened, in check order), per position its
quantity, cost basis and working quantities, per account group its state,
limits and members, per instrument its reference data, last price and halt,
and the global halt. A live table that is in sync compares equal to a fresh load of
the same Redis.

Used by the fault-injection tests (after every fault the live table must
equal Redis) and by reconciliation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pretrade._core import PositionTable
from pretrade.engine.table import Capacities, new_private_table
from pretrade.state.halts import HaltBook
from pretrade.state.sync import RedisSync
from pretrade.v1 import risk_pb2 as pb

#: The account fields compared (PositionTable.account_info).
ACCOUNT_FIELDS = ("known", "invalid", "halt_mode", "limits", "cash", "credit_line",
                  "realized_pnl", "working_orders")
#: The instrument fields compared (PositionTable.instrument_info).
INSTRUMENT_FIELDS = ("known", "invalid", "last_price", "tick_size", "lot_size", "halt_mode",
                     "currency")
#: The account group fields compared (PositionTable.group_info).
GROUP_FIELDS = ("known", "invalid", "limits", "members")


@dataclass(frozen=True)
class Difference:
    """One field on which the two tables disagree."""

    entity: str     # "account ACC-1", "position ACC-1 AAPL", "instrument AAPL", "global"
    field: str
    live: Any
    redis: Any

    def __str__(self) -> str:
        return f"{self.entity}: {self.field} is {self.live!r} in the table, {self.redis!r} in Redis"


async def load_from_redis(client: aioredis.Redis, capacities: Capacities, *,
                          series_prices: bool = False) -> PositionTable:
    """A private table loaded from Redis exactly as a starting server loads it, and live.

    ``series_prices``: the server's ``price_source`` is ``timeseries``, so the
    last prices are read from the ``price_history:<SYM>`` series, as it does.
    """
    table = new_private_table(**dataclasses.asdict(capacities))
    sync = RedisSync(client, table, HaltBook(table), series_prices=series_prices)
    await sync.full_load()
    table.set_sync_live(True)
    return table


def _account(table: PositionTable, account: bytes) -> dict[str, Any]:
    info = table.account_info(account)
    if info is None or not (info["known"] or info["invalid"]):
        # Never seen, or seen and gone from Redis: every order of it is
        # UNKNOWN_ACCOUNT, whatever its record still holds.
        return {"known": False, "invalid": False}
    return {name: info[name] for name in ACCOUNT_FIELDS}


def _instrument(table: PositionTable, symbol: bytes) -> dict[str, Any]:
    info = table.instrument_info(symbol)
    if info is None or not (info["known"] or info["invalid"]):
        return {"known": False, "invalid": False, "halt_mode": info["halt_mode"] if info else 0}
    return {name: info[name] for name in INSTRUMENT_FIELDS}


def _groups(table: PositionTable, account: bytes) -> dict[str, Any]:
    """The account's groups (flattened, in check order) and whether its tree is invalid."""
    info = table.account_info(account)
    return {"groups": table.account_groups(account),
            "groups_invalid": bool(info and info.get("groups_invalid"))}


def _group(table: PositionTable, group: bytes) -> dict[str, Any]:
    info = table.group_info(group)
    if info is None or not (info["known"] or info["invalid"] or info["members"]):
        # No record, or one that nothing uses any more (no hash, no member).
        return {"known": False, "invalid": False, "limits": {}, "members": ()}
    return {name: info[name] for name in GROUP_FIELDS}


def _positions(table: PositionTable, account: bytes) -> dict[bytes, tuple[int, int, int, int]]:
    """``{symbol: (quantity, cost basis, working buy, working sell)}``, zero rows left out."""
    out = {}
    for symbol, (quantity, cost_basis) in table.account_positions(account).items():
        working_buy, working_sell = table.working(account, symbol)
        row = (quantity, cost_basis, working_buy, working_sell)
        if any(row):
            out[symbol] = row
    return out


def compare(live: PositionTable, fresh: PositionTable) -> list[Difference]:
    """Every difference between the live table and a fresh load of Redis, sorted."""
    differences: list[Difference] = []

    def note(entity: str, left: dict[Any, Any], right: dict[Any, Any],
             names: Iterable[Any]) -> None:
        for name in names:
            if left.get(name) != right.get(name):
                differences.append(Difference(entity, str(name), left.get(name),
                                              right.get(name)))

    groups: set[bytes] = set()
    for account in sorted(set(live.account_ids()) | set(fresh.account_ids())):
        name = account.decode(errors="replace")
        # An account's groups count whether it is known or not: its groups'
        # members and sums include it either way.
        left_groups, right_groups = _groups(live, account), _groups(fresh, account)
        groups.update(left_groups["groups"], right_groups["groups"])
        note(f"account {name}", left_groups, right_groups, ("groups", "groups_invalid"))
        left_account, right_account = _account(live, account), _account(fresh, account)
        note(f"account {name}", left_account, right_account, ACCOUNT_FIELDS)
        if not (left_account["known"] or left_account["invalid"]
                or right_account["known"] or right_account["invalid"]):
            continue
        live_positions, fresh_positions = _positions(live, account), _positions(fresh, account)
        for symbol in sorted(live_positions.keys() | fresh_positions.keys()):
            left = dict(zip(("quantity", "cost_basis", "working_buy", "working_sell"),
                            live_positions.get(symbol, (0, 0, 0, 0)), strict=True))
            right = dict(zip(("quantity", "cost_basis", "working_buy", "working_sell"),
                             fresh_positions.get(symbol, (0, 0, 0, 0)), strict=True))
            note(f"position {name} {symbol.decode(errors='replace')}", left, right, left)
    for group in sorted(groups):
        note(f"group {group.decode(errors='replace')}", _group(live, group),
             _group(fresh, group), GROUP_FIELDS)
    for symbol in sorted(set(live.instrument_ids()) | set(fresh.instrument_ids())):
        note(f"instrument {symbol.decode(errors='replace')}", _instrument(live, symbol),
             _instrument(fresh, symbol), INSTRUMENT_FIELDS)
    note("global", {"halt_mode": live.halt_mode(pb.HALT_SCOPE_GLOBAL)},
         {"halt_mode": fresh.halt_mode(pb.HALT_SCOPE_GLOBAL)}, ("halt_mode",))
    return sorted(differences, key=lambda d: (d.entity, d.field))
