"""The table writer: everything that keeps the shared table equal to Redis.

``pretrade serve`` runs it in a process of its own (the sync process), and
the processes that answer orders only read the table, so re-reading a
large account, a bulk load or a restore never waits in line with a
decision. It holds:

* :class:`~pretrade.state.sync.RedisSync` (bulk load, keyspace
  notifications, re-reads, restore of decided orders, the canary) and its
  :class:`~pretrade.state.halts.HaltBook`;
* :class:`~pretrade.state.prices.PriceFeed` (ticks from the ``prices`` stream);
* the expiry of decided orders that stopped working;
* the audit of halt changes seen in Redis (:class:`~pretrade.state.halts.HaltObserver`);
* with a channel, the :class:`~pretrade.state.feed.FeedPublisher` that tells
  the server processes what changed.

In one process (tests, tools) a :class:`~pretrade.app.server.Gateway` runs a
writer on its own loop, and listens to its sync directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import redis.asyncio as aioredis

from pretrade._core import PositionTable
from pretrade.app.config import Settings
from pretrade.audit.entries import AUDIT_STREAM, node_stream
from pretrade.audit.trail import AuditTrail
from pretrade.shards.leases import LeaseKeeper
from pretrade.state.connection import is_cluster_url, redis_client
from pretrade.state.feed import FeedPublisher
from pretrade.state.halts import HaltBook, HaltObserver
from pretrade.state.prices import PriceFeed
from pretrade.state.reconciler import Reconciler
from pretrade.state.sync import RedisSync
from pretrade.v1 import risk_pb2

log = logging.getLogger("pretrade.writer")


def settings_redis(url: str, settings: Settings, *, socket_timeout: float | None = 10,
                   retries: int | None = None) -> aioredis.Redis:
    """:func:`~pretrade.state.connection.redis_client` with the settings' ACL user and password."""
    return redis_client(url, username=settings.redis_username,
                        password=settings.redis_password, socket_timeout=socket_timeout,
                        retries=retries)


def advertised_address(settings: Settings, port: int | None = None) -> str:
    """Where other nodes and clients send this node's accounts: the setting, else ``listen``."""
    if settings.advertised_address is not None:
        return settings.advertised_address
    host = settings.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port if port is not None else settings.listen_port}"


def audit_stream(url: str, settings: Settings) -> bytes:
    """The audit stream this node writes: ``audit``, or ``audit:{NODE}`` on a Redis Cluster."""
    return node_stream(settings.node_name()) if is_cluster_url(url) else AUDIT_STREAM


class TableWriter:
    """The sync, the price feed, order expiry and the halt audit, over one table.

    Parameters
    ----------
    settings, redis_url
        As for the server.
    table
        The table to write (shared, or the one process's).
    audit
        Where halt changes seen in Redis are audited; a writer of its own
        process makes its own trail when None.
    channel
        The server group's change-feed channel; None: no other process reads.
    """

    def __init__(self, settings: Settings, redis_url: str, table: PositionTable, *,
                 audit: AuditTrail | None = None, channel: bytes | None = None) -> None:
        self.settings = settings
        self.table = table
        self.redis = settings_redis(redis_url, settings)
        self.halts = HaltBook(table)
        # Large accounts are re-read on the replica, when there is one.
        self.replica = (settings_redis(settings.redis_read_url, settings)
                        if settings.redis_read_url is not None else None)
        series_prices = settings.price_source == "timeseries"
        self.sync = RedisSync(self.redis, table, self.halts, max_lag_ms=settings.max_sync_lag_ms,
                              read_client=self.replica, series_prices=series_prices)
        # The `prices` stream of ticks goes with the price:<SYM> keys; series
        # prices come through the series' own notifications, in the sync.
        self.prices: PriceFeed | None = (None if series_prices
                                         else PriceFeed(self.redis, self.sync))
        self.own_audit = audit is None
        self.audit = audit if audit is not None else AuditTrail(
            settings_redis(redis_url, settings, socket_timeout=None),
            queue_size=settings.audit_queue_size, stream=audit_stream(redis_url, settings))
        # Halt changes seen in Redis are audited once, by the writer.
        self.halts.listeners.append(HaltObserver(self.audit, self.halts, self.sync.ready))
        # The scheduled reconciliation runs beside the one writer (its figures go
        # to every server process's GetStatus with the sync's).
        self.reconciler = Reconciler(self.redis, table, settings.reconcile_interval_seconds,
                                     confirm_seconds=settings.max_sync_lag_ms / 1000,
                                     series_prices=series_prices)
        self.publisher: FeedPublisher | None = None
        if channel is not None:
            self.publisher = FeedPublisher(self.redis, channel, self.halts, self.status,
                                           update_lag=self.sync.update_lag)
            self.sync.listeners.append(self.publisher)
            self.halts.listeners.append(self.publisher)
            self.sync.load_listeners.append(self.publisher.reloaded)
        # Account ownership: the shards' leases, renewed here (the process that
        # writes the table), their deadlines checked by every server process.
        owned = settings.shards_owned
        table.set_shards(settings.shard_count if owned is not None else 0)
        self.keeper: LeaseKeeper | None = None
        if owned is not None:
            self.keeper = LeaseKeeper(
                # No retries inside redis-py: each round tries every lease again,
                # and a renewal stuck retrying a lost primary (0.1-0.3 s a try)
                # held back the renewals after it past their deadlines.
                settings_redis(redis_url, settings, socket_timeout=settings.lease_ttl_ms / 3000,
                               retries=0),
                table, node=settings.node_name(), address=advertised_address(settings),
                shards=owned, ttl_ms=settings.lease_ttl_ms,
                loads=lambda: self.sync.stats.full_loads,
                reload=self.sync._resync)  # noqa: SLF001 (the sync's own resync request)
        self._tasks: list[asyncio.Task[None]] = []

    def listening_on(self, port: int) -> None:
        """The port the server bound (``listen`` had port 0): the address the leases name."""
        if self.keeper is not None:
            self.keeper.address = advertised_address(self.settings, port)
            if self.settings.node_id is None:
                self.keeper.node = self.settings.node_name(port)

    async def prepare(self) -> None:
        """Before anything serves: the notification flags (SyncConfigError if not allowed)."""
        await self.sync.ensure_notifications()

    async def start(self) -> None:
        """Follow Redis from now on; the first full load runs in the background."""
        # Before the sync's first load starts, so ticks during the load are replayed.
        if self.prices is not None:
            await self.prices.mark_start()
        if self.own_audit:
            self.audit.start()
        self._tasks = [asyncio.create_task(self.sync.run(), name="pretrade-sync"),
                       asyncio.create_task(self._expire_orders(), name="pretrade-order-expiry"),
                       asyncio.create_task(self.reconciler.run(), name="pretrade-reconcile")]
        if self.prices is not None:
            self._tasks.append(asyncio.create_task(self.prices.run(), name="pretrade-prices"))
        if self.publisher is not None:
            self._tasks.append(asyncio.create_task(self.publisher.run(), name="pretrade-feed"))
        if self.keeper is not None:
            self._tasks.append(asyncio.create_task(self.keeper.run(), name="pretrade-leases"))

    def status(self) -> risk_pb2.ServerStatus:
        """The writer's part of GetStatus: the sync, the prices, the table's use."""
        stats = self.sync.stats
        status = risk_pb2.ServerStatus(
            sync_live=self.table.sync_live, lag_ms=self.sync.lag_ms,
            max_lag_ms=self.sync.max_lag_ms,
            last_full_load_unix_ms=self.sync.last_full_load_unix_ms,
            full_loads=stats.full_loads,
            last_full_load_ms=int(stats.last_full_load_seconds * 1000),
            events_applied=stats.events, invalid_entities=stats.invalid_entities,
            last_error=stats.last_error,
            price_ticks=(self.prices.stats.ticks_applied if self.prices is not None
                         else stats.series_prices),
            sync_refreshes=stats.refreshes, orders_restored=stats.orders_restored,
            capacity_exhausted=len(self.sync.over_capacity),
            reconcile_runs=self.reconciler.runs, reconcile_failures=self.reconciler.failures,
            reconcile_differences=self.reconciler.differences,
            last_reconcile_unix_ms=self.reconciler.last_run_unix_ms,
            primaries_lost=stats.primaries_lost, slots_recovered=stats.slots_recovered,
            replica_reads=stats.replica_reads, replica_fallbacks=stats.replica_fallbacks,
            lot_log_reads=stats.lot_log_reads, lot_log_whole_reads=stats.lot_log_whole_reads)
        keeper = self.keeper
        if keeper is not None:
            status.MergeFrom(risk_pb2.ServerStatus(
                shard_count=keeper.shard_count, node_id=keeper.node,
                advertised_address=keeper.address, lease_failures=keeper.failures,
                shard_leases=[risk_pb2.ShardLease(
                    shard=owner.shard, first_slot=owner.first_slot, last_slot=owner.last_slot,
                    node_id=owner.node, address=owner.address, epoch=owner.epoch,
                    held_here=owner.shard in keeper.held and owner.shard not in keeper.restoring)
                    for owner in keeper.map]))
        return status

    async def _expire_orders(self) -> None:
        # Durable decided orders that stopped working order_expiry_ms ago leave
        # the shared table, a bounded number per round (the same clock as the
        # decisions: CLOCK_MONOTONIC). Working orders whose time in force
        # ended (a DAY order at the session end, a GTD at its expiry: the wall
        # clock) stop counting, within a round of it.
        period = max(0.01, min(0.25, self.settings.order_expiry_ms / 4000))
        budget = 10_000
        while True:
            self.table.end_lapsed_orders(time.time_ns() // 1_000_000)
            if self.table.expire_orders(time.perf_counter_ns(), budget) < budget:
                await asyncio.sleep(period)
            else:
                await asyncio.sleep(0)

    async def stop(self, grace: float = 5.0) -> None:
        """Give the leases back; stop following; write the halt audit still queued;
        release the connections."""
        if self.keeper is not None:
            await self.keeper.release()
        self.sync.stop()
        if self.prices is not None:
            self.prices.stop()
        if self.publisher is not None:
            self.publisher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.own_audit:
            await self.audit.close(timeout=grace)
            await self.audit.client.aclose()
        await self._close_clients()

    async def _close_clients(self) -> None:
        await self.redis.aclose()
        if self.replica is not None:
            await self.replica.aclose()
        if self.keeper is not None:
            await self.keeper.client.aclose()

    async def abandon(self) -> None:
        """Undo a failed start: nothing was written."""
        if self.own_audit:
            await self.audit.client.aclose()
        await self._close_clients()
