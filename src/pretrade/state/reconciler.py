"""Reconciliation: does the live table hold what Redis holds?

:func:`confirmed_differences` compares a live table with a fresh load of
Redis (:mod:`pretrade.state.reconcile`) and, when they differ, looks again
after ``confirm_seconds``: only a field that differs both times is reported.
A live table follows Redis within the sync's lag bound, and orders decided
while Redis is read change the table under the comparison; a real drift
(a change the sync missed, a table written by something else) stays.

:class:`Reconciler` runs it in a server every ``interval`` seconds; its
figures go to GetStatus and the metrics, and a drift is logged as an error
(an alert for whoever watches the log) with the first differences.
``pretrade reconcile`` runs it once against the table of a running server.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from pretrade._core import PositionTable
from pretrade.engine.table import Capacities
from pretrade.state.reconcile import Difference, compare, load_from_redis

log = logging.getLogger("pretrade.reconcile")

#: Differences named in the alert line (all of them are in GetStatus's count).
LOGGED_DIFFERENCES = 5


def capacities_of_table(table: PositionTable) -> Capacities:
    """The capacities a table was made with (a fresh load needs the same room)."""
    counts = table.counts()
    return Capacities(
        max_accounts=counts["max_accounts"], max_instruments=counts["max_instruments"],
        max_positions=counts["max_positions"], max_overrides=counts["max_overrides"],
        lock_stripes=counts["lock_stripes"], max_orders=counts["max_orders"],
        max_orders_per_account=counts["max_orders_per_account"],
        order_expiry_ms=counts["order_expiry_ms"])


async def confirmed_differences(client: aioredis.Redis, live: PositionTable,
                                confirm_seconds: float, *, series_prices: bool = False
                                ) -> list[Difference]:
    """The differences between ``live`` and Redis that are still there ``confirm_seconds`` later.

    Reported with the values of the second look. Raises what reading Redis
    raises. ``series_prices``: as for :func:`load_from_redis`.
    """
    capacities = capacities_of_table(live)
    first = compare(live, await load_from_redis(client, capacities,
                                                series_prices=series_prices))
    if not first:
        return []
    await asyncio.sleep(confirm_seconds)
    seen = {(difference.entity, difference.field) for difference in first}
    second = compare(live, await load_from_redis(client, capacities,
                                                 series_prices=series_prices))
    return [difference for difference in second if (difference.entity, difference.field) in seen]


class Reconciler:
    """The scheduled reconciliation of one server process's table."""

    def __init__(self, client: aioredis.Redis, table: PositionTable, interval_seconds: int,
                 confirm_seconds: float, *, series_prices: bool = False) -> None:
        self.client = client
        self.series_prices = series_prices
        self.table = table
        self.interval_seconds = interval_seconds
        self.confirm_seconds = confirm_seconds
        #: Completed comparisons, failed ones, and the latest result.
        self.runs = 0
        self.failures = 0
        self.differences = 0
        self.last_run_unix_ms = 0
        self.last: list[Difference] = []

    async def run(self) -> None:
        """Reconcile every ``interval_seconds`` (never when it is 0), until cancelled."""
        if self.interval_seconds <= 0:
            return
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.once()

    async def once(self) -> list[Difference] | None:
        """One reconciliation; None when it could not be made (not live, Redis unreadable)."""
        if not self.table.sync_live:
            # Every order is rejected STALE_DATA meanwhile, and the sync
            # reloads the whole table once the link is back.
            log.info("reconciliation skipped: the table is not in sync with Redis now")
            return None
        try:
            found = await confirmed_differences(self.client, self.table, self.confirm_seconds,
                                                series_prices=self.series_prices)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # counted and logged; the next round tries again
            self.failures += 1
            log.warning("reconciliation failed: could not load Redis for the comparison: %s",
                        error)
            return None
        self.runs += 1
        self.differences = len(found)
        self.last_run_unix_ms = time.time_ns() // 1_000_000
        self.last = found
        if found:
            shown = "; ".join(str(d) for d in found[:LOGGED_DIFFERENCES])
            more = len(found) - LOGGED_DIFFERENCES
            log.error("ALERT reconciliation: the table differs from Redis in %d fields: %s%s",
                      len(found), shown, f" (and {more} more)" if more > 0 else "",
                      extra={"alert": "reconciliation_drift", "differences": len(found)})
        else:
            log.info("reconciliation: the table equals Redis")
        return found
