"""The change feed: the table writer tells the server processes what it changed.

One process writes the shared table from Redis (``pretrade serve``'s sync
process); the processes that answer orders only read it. They still need to
know *what* changed, for their portfolio streams and their halt books:

* :class:`FeedPublisher` runs beside the writer's sync. It is a sync and
  halt listener: it names each changed account, symbol, group and halt, coalesces
  them per event-loop turn, and PUBLISHes one :class:`TableChanges` message
  on the group's Redis channel; and every ``status_seconds`` the sync's
  figures for GetStatus.
* :class:`FeedFollower` runs in each server process. It reads the values the
  names point to from the table itself (positions, prices), so a notice can
  never carry stale data, and hands them to the same listeners the sync
  would call in one process.

Pub/sub loses messages across a reconnect: the follower treats a reconnect,
a sequence gap, a new writer or a full load as a gap and refreshes every
account and price from the table and the halts from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from pretrade._core import PositionTable
from pretrade.engine.tally import SECONDS_BOUNDS, Buckets
from pretrade.state.connection import Reads, is_cluster, primary_clients, read_snapshot
from pretrade.state.halts import HaltBook
from pretrade.state.schema import HALT_ALL, HaltRecord, classify, halt_from_redis
from pretrade.state.sync import LINK_ERRORS, SyncListener
from pretrade.v1 import records_pb2
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.feed")

CHANNEL_PREFIX = b"pretrade:feed:"
#: How often the writer publishes its sync figures (GetStatus in other processes).
STATUS_SECONDS = 0.25
#: Most names per message; a larger turn is sent as several messages.
MAX_NAMES = 2_000
#: SCAN MATCH for every halt key: halt:all, halt:account:<ACC>, halt:symbol:<SYM>.
HALT_KEYS = HALT_ALL.partition(b":")[0] + b":*"


def new_channel() -> bytes:
    """A channel of one server group's own (made before the processes fork)."""
    return CHANNEL_PREFIX + uuid.uuid4().hex.encode()


class FeedPublisher:
    """Beside the writer: a SyncListener and HaltListener that publishes what changed.

    Parameters
    ----------
    client
        Redis to publish on.
    channel
        The group's channel (:func:`new_channel`).
    halts
        The writer's halt book, to send a changed halt's whole record.
    status
        Called every ``status_seconds``: the writer's figures (a ServerStatus).
    """

    def __init__(self, client: aioredis.Redis, channel: bytes, halts: HaltBook,
                 status: Callable[[], pb.ServerStatus], *,
                 update_lag: Buckets | None = None,
                 status_seconds: float = STATUS_SECONDS) -> None:
        self.client = client
        self.update_lag = update_lag
        self.channel = channel
        self.halts = halts
        self.status = status
        self.status_seconds = status_seconds
        self.writer = uuid.uuid4().hex
        self.sequence = 0
        self.published = 0
        self.failures = 0
        self._accounts: dict[bytes, None] = {}
        self._invalid: dict[bytes, None] = {}
        self._symbols: dict[bytes, None] = {}
        self._groups: dict[bytes, None] = {}
        self._halts: list[pb.Halt] = []
        self._reloaded = False
        self._wake = asyncio.Event()
        self._stopping = False

    # -- LISTENER CALLBACKS (never block: names are queued for the next send) --

    def account_changed(self, account: bytes, positions: dict[bytes, tuple[int, int]],
                        realized_pnl: int) -> None:
        self._accounts[account] = None
        self._wake.set()

    def price_changed(self, symbol: bytes, price: int | None) -> None:
        self._symbols[symbol] = None
        self._wake.set()

    def account_invalid(self, account: bytes, invalid: bool) -> None:
        self._invalid[account] = None
        self._wake.set()

    def group_changed(self, group: bytes) -> None:
        self._groups[group] = None
        self._wake.set()

    def halt_changed(self, scope: int, target: bytes, mode: int, reason: str) -> None:
        record = self.halts.current(scope, target) if mode else None
        if record is not None:
            self._halts.append(record.to_proto())
        else:
            self._halts.append(pb.Halt(scope=cast(pb.HaltScope, scope),
                                       target=target.decode(),
                                       mode=cast(pb.HaltMode, mode), reason=reason))
        self._wake.set()

    def reloaded(self) -> None:
        """A full load finished (RedisSync.full_load's listeners)."""
        self._reloaded = True
        self._wake.set()

    # -- SENDING --

    async def run(self) -> None:
        """Publish what changed, each event-loop turn, and the figures; until :meth:`stop`."""
        next_status = 0.0
        while not self._stopping:
            now = time.monotonic()
            timeout = max(0.0, next_status - now)
            if not self._wake.is_set() and timeout > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
            self._wake.clear()
            messages = self._take()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.status_seconds
                if not messages:
                    messages = [records_pb2.TableChanges()]
                messages[-1].status.CopyFrom(self.status())
                if self.update_lag is not None:
                    messages[-1].update_lag_counts[:] = self.update_lag.counts
                    messages[-1].update_lag_seconds_sum = self.update_lag.total
            await self._send(messages)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _take(self) -> list[records_pb2.TableChanges]:
        if not (self._accounts or self._invalid or self._symbols or self._groups
                or self._halts or self._reloaded):
            return []
        accounts, invalid, symbols = list(self._accounts), list(self._invalid), list(self._symbols)
        groups = list(self._groups)
        halts, reloaded = self._halts, self._reloaded
        self._accounts, self._invalid, self._symbols, self._groups = {}, {}, {}, {}
        self._halts, self._reloaded = [], False
        messages: list[records_pb2.TableChanges] = []
        # Halts keep their order and go first; a reload goes with the last part.
        while accounts or invalid or symbols or groups or halts or not messages:
            message = records_pb2.TableChanges(halts=halts[:MAX_NAMES],
                                               accounts=accounts[:MAX_NAMES],
                                               invalid_changed=invalid[:MAX_NAMES],
                                               symbols=symbols[:MAX_NAMES],
                                               groups=groups[:MAX_NAMES])
            halts, accounts = halts[MAX_NAMES:], accounts[MAX_NAMES:]
            invalid, symbols = invalid[MAX_NAMES:], symbols[MAX_NAMES:]
            groups = groups[MAX_NAMES:]
            messages.append(message)
        messages[-1].reloaded = reloaded
        return messages

    async def _send(self, messages: list[records_pb2.TableChanges]) -> None:
        if not messages:
            return
        for message in messages:
            self.sequence += 1
            message.sequence = self.sequence
            message.writer = self.writer
        try:
            if is_cluster(self.client):
                # redis-py refuses PUBLISH in a cluster pipeline; a notice is rarely
                # more than one message, and each reaches every node.
                for message in messages:
                    await self.client.publish(self.channel, message.SerializeToString())
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for message in messages:
                        pipe.publish(self.channel, message.SerializeToString())
                    await pipe.execute()
            self.published += len(messages)
        except (*LINK_ERRORS, RedisError) as error:
            # The followers see the sequence jump and refresh everything.
            self.failures += 1
            log.warning("could not publish %d table change notices (%s); the server "
                        "processes refresh from the table when the feed resumes",
                        len(messages), error)


class FeedFollower:
    """In a server process: follows the writer's feed, feeds the local listeners.

    Parameters
    ----------
    client
        Redis to subscribe on (and to read halts from after a gap).
    channel
        The group's channel.
    table
        The shared table the values are read from.
    halts
        This process's halt book (its table is None: the writer owns the table).
    """

    def __init__(self, client: aioredis.Redis, channel: bytes, table: PositionTable,
                 halts: HaltBook, *, reconnect_delay: float = 0.5) -> None:
        self.client = client
        self.channel = channel
        self.table = table
        self.halts = halts
        self.reconnect_delay = reconnect_delay
        self.listeners: list[SyncListener] = []
        #: Set once the table is loaded and this process has caught up with it.
        self.ready = asyncio.Event()
        #: The writer's latest figures (GetStatus), and its update-lag histogram.
        self.status = pb.ServerStatus()
        self.update_lag = Buckets(SECONDS_BOUNDS)
        self.refreshes = 0
        self.notices = 0
        self._writer = ""
        self._sequence = 0
        self._stopping = False
        self._gap = True

    async def run(self) -> None:
        """Subscribe, catch up, follow; after any gap refresh; until :meth:`stop`."""
        while not self._stopping:
            node: aioredis.Redis | None = None
            pubsub: aioredis.client.PubSub | None = None
            try:
                node = await self._subscriber()
                pubsub = node.pubsub()
                await pubsub.subscribe(self.channel)
                assert pubsub.connection is not None
                pubsub.connection.register_connect_callback(self._reconnected)
                self._gap = True
                await self._follow(pubsub)
            except (*LINK_ERRORS, RedisClusterException) as error:
                log.warning("change feed lost (%s); refreshing when it is back", error)
                await asyncio.sleep(self.reconnect_delay)
            finally:
                if pubsub is not None:
                    if pubsub.connection is not None:
                        pubsub.connection.deregister_connect_callback(self._reconnected)
                    try:
                        await pubsub.aclose()
                    except LINK_ERRORS as error:
                        log.debug("closing the feed's pub/sub: %s", error)
                if node is not None and node is not self.client:
                    await node.aclose()

    async def _subscriber(self) -> aioredis.Redis:
        """Where to subscribe: the client itself, or on a Redis Cluster one primary.

        A PUBLISH reaches every node of a cluster, so any node will do; a
        plain connection to it, since redis-py's cluster pub/sub has no
        connection to watch for a reconnect until it has subscribed.
        """
        if not is_cluster(self.client):
            return self.client
        cluster: Any = self.client
        await cluster.nodes_manager.initialize()
        first, *others = primary_clients(self.client)
        for other in others:
            await other.aclose()
        return first

    def stop(self) -> None:
        self._stopping = True

    async def _reconnected(self, connection: object) -> None:
        self._gap = True

    async def _follow(self, pubsub: aioredis.client.PubSub) -> None:
        while not self._stopping:
            if self._gap and self.table.sync_live:
                # Subscribed first, then read: nothing can fall between the two.
                self._gap = False
                await self.refresh_all()
                self.ready.set()
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is None or message.get("type") != "message":
                continue
            data = message.get("data")
            if not isinstance(data, bytes):
                continue
            try:
                notice = records_pb2.TableChanges.FromString(data)
            except Exception as error:  # noqa: BLE001 - a foreign publisher: a gap, not a crash
                log.warning("unreadable change notice on %s (%s): refreshing everything",
                            self.channel.decode(), error)
                self._gap = True
                continue
            self.apply(notice)

    def apply(self, notice: records_pb2.TableChanges) -> None:
        """One notice: read what it names from the table; a gap or a reload refreshes all."""
        self.notices += 1
        if notice.HasField("status"):
            self.status = notice.status
            if len(notice.update_lag_counts) == len(self.update_lag.counts):
                self.update_lag.counts[:] = notice.update_lag_counts
                self.update_lag.total = notice.update_lag_seconds_sum
        if notice.writer != self._writer or notice.sequence != self._sequence + 1:
            self._gap = True
        self._writer, self._sequence = notice.writer, notice.sequence
        for halt in notice.halts:
            self._apply_halt(halt)
        if notice.reloaded:
            self._gap = True
        if self._gap:
            return  # the refresh at the top of the loop reads everything
        self._accounts(notice.accounts)
        for account in notice.invalid_changed:
            info = self.table.account_info(account)
            for listener in self.listeners:
                listener.account_invalid(account, bool(info and info["invalid"]))
        for symbol in notice.symbols:
            self._price(symbol)
        # after the accounts: a group's new members are read as they are now
        self._groups(notice.groups)

    async def refresh_all(self) -> None:
        """Every account, price and halt again: after a start, a reconnect or a gap."""
        self.refreshes += 1
        await self._reload_halts()
        for symbol in self.table.instrument_ids():
            self._price(symbol)
        accounts = self.table.account_ids()
        self._accounts(accounts)
        for account in accounts:
            info = self.table.account_info(account)
            for listener in self.listeners:
                listener.account_invalid(account, bool(info and info["invalid"]))
        # The table lists no groups: those of its accounts are every group with members.
        self._groups(sorted({group for account in accounts
                             for group in self.table.account_groups(account)}))

    def _groups(self, groups: Iterable[bytes]) -> None:
        for group in groups:
            for listener in self.listeners:
                listener.group_changed(group)

    def _accounts(self, accounts: Iterable[bytes]) -> None:
        for account in accounts:
            info = self.table.account_info(account)
            positions = self.table.account_positions(account)
            realized = info["realized_pnl"] if info else 0
            for listener in self.listeners:
                listener.account_changed(account, positions, realized)

    def _price(self, symbol: bytes) -> None:
        info = self.table.instrument_info(symbol)
        price = info.get("last_price") if info else None
        for listener in self.listeners:
            listener.price_changed(symbol, price or None)

    def _apply_halt(self, halt: pb.Halt) -> None:
        target = halt.target.encode()
        if halt.mode:
            self.halts.apply(HaltRecord.from_proto(halt))
        else:
            self.halts.lift(halt.scope, target)

    async def _reload_halts(self) -> None:
        # The table holds each halt's mode, not its record: those come from Redis.
        try:
            keys = [key async for key in self.client.scan_iter(match=HALT_KEYS, count=5000)]
            reads = Reads()
            for key in keys:
                reads.hgetall(key)
                reads.pttl(key)
            replies = await read_snapshot(self.client, reads)
        except LINK_ERRORS as error:
            log.warning("could not read the halts after a feed gap (%s); retrying", error)
            self._gap = True
            return
        now_ms = time.time_ns() // 1_000_000
        found: dict[tuple[int, bytes], HaltRecord] = {}
        for n, key in enumerate(keys):
            kind = classify(key)
            fields, ttl_ms = replies[2 * n], replies[2 * n + 1]
            if kind is None or not fields:
                continue
            _, scope, target = kind
            found[(scope, target)], _ = halt_from_redis(scope, target, fields, ttl_ms, now_ms)
        for scope, target in [key for key in self.halts.keys() if key not in found]:
            self.halts.lift(scope, target)
        for record in found.values():
            self.halts.apply(record)
