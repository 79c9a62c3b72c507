"""Keep the shared PositionTable equal to Redis: bulk load, then follow every change.

Redis holds the truth. The sync subscribes to keyspace notifications for
every key family in :mod:`pretrade.state.schema` *before* it loads, so no
change made during the load is missed; then it follows the notifications,
re-reading each changed key (a burst of events for one key is one re-read;
re-reads are batched into MULTI/EXEC pipelines, so the three lot hashes of an
account are read as one snapshot).

Pub/sub is fire-and-forget: when the link drops, the table is marked not live
(orders get STALE_DATA), and after reconnecting the sync reloads everything
before it marks the table live again.

On a Redis Cluster, losing one primary is narrower. Its slots are marked
lost in the table (orders whose account or symbol has a key in one get
STALE_DATA; every other order trades, on a table the other primaries' canaries
still prove live). Once every lost slot is served by a primary the sync can
reach (the replica promoted), the sync subscribes there, re-reads every key
of those slots and every entity the table holds in them, and clears the
slots when that primary's canary comes back. Anything else (the primary
served ``halt:all`` or ``restricted:short``, which every order reads; the
slot map changed beyond the lost slots; the old primary answers again) is
the full resync above.

An entity that does not fit in the table (an account, an instrument, an
account's positions, per-symbol limits or restored orders past a capacity)
fails closed on its own: it is logged once, counted (``over_capacity``),
and its orders are rejected CAPACITY_EXHAUSTED, while everything else keeps
loading and trading.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pretrade._core import PositionTable, TableFullError, account_key_slots, symbol_key_slots
from pretrade._core.constants import CLUSTER_SLOTS
from pretrade.engine.tally import SECONDS_BOUNDS, Buckets
from pretrade.engine.text import as_text, is_valid_id, quoted
from pretrade.state.connection import (
    Reads,
    is_cluster,
    named_primary_clients,
    node_client,
    read_snapshot,
)
from pretrade.state.halts import HaltBook, HaltKey
from pretrade.state.journal import DecidedOrder, decode
from pretrade.state.lotlog import (
    MAX_ENTRIES,
    MAX_LOTS,
    LotBook,
    load_library,
    read_entries,
    top_sequence,
)
from pretrade.state.schema import (
    CANARY,
    FENCE,
    HALT_ALL,
    MARK,
    ORDERS,
    REQUIRED_NOTIFY_FLAGS,
    RESTRICTED_SHORT,
    SCAN_PATTERNS,
    TIMESERIES_NOTIFY_FLAGS,
    InstrumentRef,
    KeyKind,
    LotHash,
    ParsedLimits,
    StateError,
    account_of_orders_key,
    account_snapshot_keys,
    aggregate_lots,
    balances_key,
    classify,
    fills_by_order,
    flatten_groups,
    group_key,
    groups_key,
    halt_from_redis,
    halt_key,
    instrument_key,
    limits_key,
    locates_key,
    lot_count,
    lot_event_account,
    lot_fields,
    lot_log_key,
    mark_key,
    orders_key,
    parse_balances,
    parse_group,
    parse_instrument,
    parse_last_price,
    parse_limits,
    parse_locates,
    parse_mark,
    parse_realized_pnl,
    parse_series_price,
    parse_state_version,
    price_history_key,
    price_key,
    version_key,
)
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.sync")

LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: A Redis Cluster whose slots moved (MOVED/ASK), or that is failing over: resync.
TOPOLOGY_ERRORS = (MovedError, AskError, ClusterDownError, TryAgainError, RedisClusterException)
#: RedisTimeSeries' error for a TS.GET of a key that does not exist.
SERIES_MISSING = "TSDB: the key does not exist"
#: Replies per account snapshot: six HGETALLs, the GET of version:{ACC} and
#: the newest entry of lotlog:{ACC} (XREVRANGE ... COUNT 1).
SNAPSHOT_REPLIES = 8
#: A lot-log read's mark lives this long (it is heard within the lag bound).
MARK_TTL_MS = 60_000
#: Tries of a lot-log read whose entries grew between its two reads.
LOT_LOG_TRIES = 3
#: The first three of them: the lot hashes (tickers, quantities, prices).
LOT_HASHES = 3


class SyncListener(Protocol):
    """Told of every change the sync applies (after the table has it)."""

    def account_changed(self, account: bytes, positions: dict[bytes, tuple[int, int]],
                        realized_pnl: int) -> None:
        """An account's positions ``{symbol: (quantity, cost_basis)}`` or P&L changed."""

    def price_changed(self, symbol: bytes, price: int | None) -> None:
        """A symbol's last price changed (None: it has none now), or its currency did."""

    def account_invalid(self, account: bytes, invalid: bool) -> None:
        """An account's state in Redis stopped parsing (True) or parses again (False)."""

    def group_changed(self, group: bytes) -> None:
        """An account group's record (its ``group:<G>`` hash) or its members changed:
        an account joined or left it, directly or through a group inside it. The
        table has the change; read it there (``group_info``)."""


#: An account with more lots than this is re-read apart from the batch: its
#: hashes in chunks (HSCAN) under WATCH, so Redis serves everyone else (the
#: durable writes of decisions above all) between the chunks instead of
#: running one MULTI/EXEC of hundreds of thousands of fields.
LARGE_ACCOUNT_LOTS = 20_000
#: Reads on the replica (``redis_read_url``): the time the fence and every
#: large account of a batch may take there (this fraction of the lag bound, a
#: beat's spacing), the most a WAIT may block the primary's connection, how
#: often the fence is looked for, and how long a replica that failed, lagged
#: or was slow rests.
REPLICA_BUDGET_FRACTION = 0.25
REPLICA_MAX_WAIT_SECONDS = 2.0
REPLICA_POLL_SECONDS = 0.002
REPLICA_REST_SECONDS = 5.0
#: Fields per HSCAN of a large account.
LARGE_READ_CHUNK = 20_000
#: After a chunked read a write spoiled (WATCH), this many reads of that account
#: are atomic before chunks are tried again: an account written faster than it
#: can be read in chunks is read in one MULTI/EXEC, not in chunks thrown away.
ATOMIC_READS_AFTER_SPOIL = 64


class SyncConfigError(RuntimeError):
    """Redis is not configured the way the sync needs, and pretrade may not fix it."""


class SyncGap(RuntimeError):
    """The table may have missed changes (the canary, a reconnect, a replaced database): resync."""


@dataclass
class AccountSync:
    """What the sync knows of one account, beyond what the table holds."""

    has_lots: bool = False
    has_limits: bool = False
    lots_invalid: bool = False
    limits_invalid: bool = False
    balances_invalid: bool = False
    locates_invalid: bool = False
    orders_invalid: bool = False
    override_symbols: set[bytes] = field(default_factory=set)
    #: What the listeners were last told of ``invalid``.
    reported_invalid: bool = False
    #: What of the account did not fit in the table: source -> the Capacity that is full.
    over_capacity: dict[str, int] = field(default_factory=dict)
    #: Lots at the last read: a large account is re-read in chunks.
    lot_count: int = 0
    #: Atomic reads still to make since a chunked read was spoiled.
    atomic_reads: int = 0
    #: A large account written through pretrade_lots: its lots as last read
    #: (pretrade.state.lotlog), re-read lot by lot; None: read whole.
    book: LotBook | None = None
    #: Keyspace events heard on its per-lot hashes (a running count), the
    #: count when the awaited mark was heard, and the count the book holds.
    heard: int = 0
    heard_at_mark: int = 0
    heard_in_book: int = 0
    #: The mark the last lot-log read SET, and the last one heard back.
    mark_sent: int = 0
    mark_heard: int = 0
    #: An event of lotlog:{ACC} itself (DEL, RENAME...): read whole.
    log_spoiled: bool = False

    @property
    def known(self) -> bool:
        return self.has_lots or self.has_limits

    @property
    def invalid(self) -> bool:
        return (self.lots_invalid or self.limits_invalid or self.balances_invalid
                or self.locates_invalid or self.orders_invalid)

    @property
    def capacity(self) -> int:
        """The Capacity one part of the account did not fit in (0: it all fits)."""
        for source in ("orders", "lots", "limits", "locates", "balances", "groups"):
            if source in self.over_capacity:
                return self.over_capacity[source]
        return 0


@dataclass
class Dirty:
    """Entities to re-read, coalesced: each appears once however many events named it."""

    lots: set[bytes] = field(default_factory=set)
    limits: set[bytes] = field(default_factory=set)
    instruments: set[bytes] = field(default_factory=set)
    prices: set[bytes] = field(default_factory=set)
    halts: set[HaltKey] = field(default_factory=set)
    balances: set[bytes] = field(default_factory=set)
    locates: set[bytes] = field(default_factory=set)
    #: Accounts whose ``groups:{ACC}`` changed, and groups whose ``group:<G>`` did.
    account_groups: set[bytes] = field(default_factory=set)
    groups: set[bytes] = field(default_factory=set)
    restricted: bool = False

    def add_key(self, key: bytes, series_prices: bool = False) -> bool:
        """Note a changed key; False when pretrade does not follow it.

        ``series_prices``: the last prices are ``price_history:<SYM>`` series
        (``price_source = "timeseries"``), and ``price:<SYM>`` keys are not
        followed; else the other way round.
        """
        found = classify(key)
        if found is None:
            return False
        kind, scope, target = found
        if kind is (KeyKind.PRICE if series_prices else KeyKind.PRICE_HISTORY):
            return False
        if kind is KeyKind.PRICE_HISTORY:
            kind = KeyKind.PRICE
        if kind is KeyKind.LOTS:
            self.lots.add(target)
        elif kind is KeyKind.LIMITS:
            self.limits.add(target)
        elif kind is KeyKind.INSTRUMENT:
            self.instruments.add(target)
        elif kind is KeyKind.PRICE:
            self.prices.add(target)
        elif kind is KeyKind.BALANCES:
            self.balances.add(target)
        elif kind is KeyKind.LOCATES:
            self.locates.add(target)
        elif kind is KeyKind.GROUPS:
            self.account_groups.add(target)
        elif kind is KeyKind.GROUP:
            self.groups.add(target)
        elif kind is KeyKind.RESTRICTED:
            self.restricted = True
        else:
            self.halts.add((scope, target))
        return True

    def __len__(self) -> int:
        return (len(self.lots) + len(self.limits) + len(self.instruments) + len(self.prices)
                + len(self.halts) + len(self.balances) + len(self.locates)
                + len(self.account_groups) + len(self.groups) + self.restricted)


@dataclass
class SyncStats:
    """What the sync did, for GetStatus."""

    full_loads: int = 0
    #: Keyspace notifications read.
    events: int = 0
    #: Batches of entities re-read from Redis (a full load counts one).
    refreshes: int = 0
    invalid_entities: int = 0
    #: Decided orders put back into the table from ``orders:{ACC}``.
    orders_restored: int = 0
    #: Redis Cluster primaries lost (their slots stale), and lost slots re-read in place.
    primaries_lost: int = 0
    slots_recovered: int = 0
    #: Large accounts re-read on the replica (``redis_read_url``), and those read
    #: on the primary instead because the replica did not show the change in time.
    replica_reads: int = 0
    replica_fallbacks: int = 0
    #: Large accounts re-read lot by lot from their lot log, and lot-log
    #: accounts read whole instead (a write not through pretrade_lots, a gap).
    lot_log_reads: int = 0
    lot_log_whole_reads: int = 0
    #: Last prices read from their series (``price_source = "timeseries"``) and applied.
    series_prices: int = 0
    last_full_load_seconds: float = 0.0
    last_error: str = ""


class RedisSync:
    """Loads the table from Redis and keeps it equal to Redis.

    Parameters
    ----------
    client
        An asyncio Redis client (hiredis parser when installed) with
        ``decode_responses=False``.
    table
        The shared table this process owns the writing of.
    halts
        The halt book the Halt RPC also writes to.
    batch_size
        Entities per pipelined read.
    read_client
        A replica of ``client`` (a standalone Redis), where large accounts are
        re-read (:meth:`_read_on_replica`); None: they are read on ``client``.
    """

    def __init__(self, client: aioredis.Redis, table: PositionTable, halts: HaltBook, *,
                 batch_size: int = 500, reconnect_delay: float = 0.2,
                 max_lag_ms: int = 2_000, large_account_lots: int = LARGE_ACCOUNT_LOTS,
                 atomic_reads_after_spoil: int = ATOMIC_READS_AFTER_SPOIL,
                 read_client: aioredis.Redis | None = None,
                 series_prices: bool = False) -> None:
        self.client = client
        self.read_client = read_client
        #: Last prices from RedisTimeSeries (``price_history:<SYM>``, TS.GET),
        #: not from ``price:<SYM>`` strings (``price_source``).
        self.series_prices = series_prices
        self.notify_flags = TIMESERIES_NOTIFY_FLAGS if series_prices else REQUIRED_NOTIFY_FLAGS
        #: The fence this sync writes on the primary before a read on the replica.
        self.fence_key = FENCE + uuid.uuid4().hex.encode()
        #: This sync's own in its lot-log marks (another sync's are not its own).
        self._mark_id = uuid.uuid4().hex[:16].encode()
        #: Until when (monotonic seconds) the replica is not tried: it failed or lagged.
        self._replica_rests_until = 0.0
        self.large_account_lots = large_account_lots
        self.atomic_reads_after_spoil = atomic_reads_after_spoil
        #: Large accounts re-read in chunks, and those that fell back to the atomic read.
        self.chunked_reads = 0
        self.chunked_fallbacks = 0
        self.table = table
        self.halts = halts
        self.batch_size = batch_size
        self.reconnect_delay = reconnect_delay
        self.accounts: dict[bytes, AccountSync] = {}
        self.instruments: dict[bytes, InstrumentRef] = {}
        self.restricted: set[bytes] = set()
        self.restricted_unreadable = False
        self._price_generation: dict[bytes, int] = {}
        self._price_read_generation: dict[bytes, int] = {}
        self.issuer_ids: dict[str, int] = {}
        self.sector_ids: dict[str, int] = {}
        self.priced: set[bytes] = set()
        # Account groups. As read: each account's direct groups (groups:{ACC};
        # None: unreadable) and each group's hash (group:<G>: its limits and
        # parent; None: it does not parse; absent: no hash). As the table holds
        # them: each account's flattened groups (None: its tree is invalid; absent:
        # none), the accounts in each group, and the groups given a record.
        self.direct_groups: dict[bytes, frozenset[bytes] | None] = {}
        self.group_hashes: dict[bytes, tuple[dict[int, int], bytes | None] | None] = {}
        self.flattened: dict[bytes, tuple[bytes, ...] | None] = {}
        self.group_members: dict[bytes, set[bytes]] = {}
        self.group_records: set[bytes] = set()
        #: Accounts whose groups are to be flattened again at the end of the batch,
        #: and those whose flattened groups did not fit in the table (flattened
        #: again whenever a parent changes, since their tree may be smaller now).
        self._regroup: set[bytes] = set()
        self._groups_unfit: set[bytes] = set()
        #: Groups whose record or members changed in the batch: told at its end.
        self._groups_changed: set[bytes] = set()
        self.stats = SyncStats()
        #: Entities that do not fit in the table now: (kind, name) -> the Capacity full.
        self.over_capacity: dict[tuple[str, bytes], int] = {}
        self.listeners: list[SyncListener] = []
        #: Called after every full load (the change feed says "refresh everything").
        self.load_listeners: list[Callable[[], None]] = []
        self.ready = asyncio.Event()
        self.max_lag_ms = max_lag_ms
        self.following = False          # loaded, subscribed and reading notifications
        self.last_full_load_unix_ms = 0
        self._stopping = False
        # The canary: a key of this sync's own, written every beat_seconds;
        # its keyspace notification coming back proves the path end to end.
        # On a Redis Cluster one per primary (notifications are node-local),
        # and the table is as fresh as the oldest of their newest beats heard.
        self.canary_key = CANARY + uuid.uuid4().hex.encode()
        self.cluster = is_cluster(client)
        #: Bumped at every (re)connect. Each generation writes canary keys of its own,
        #: so a beat begun before a reload (stuck on the dead link, say) cannot
        #: vouch for the new load, nor its notification be taken for a new beat's.
        self._generation = 0
        self.canary_keys: list[bytes] = [self._canary_base()]
        self._canary_ttl_ms = max(60_000, 20 * max_lag_ms)
        self._beat_number = 0
        #: Per canary key: send times of beats not heard yet, and of the newest heard.
        #: Send times of the beats in flight per canary key, oldest first (None: a
        #: write whose notification proves nothing of a beat: the plant of a key).
        self._beats: dict[bytes, collections.deque[float | None]] = {}
        self._heard: dict[bytes, float] = {}
        self.confirmed_at = 0.0         # ...and applied: the table is this fresh
        #: The cluster's slot ranges and their primaries when the sync subscribed.
        self.topology: list[tuple[int, int, str]] = []
        #: The Redis servers followed now: the client itself, or a cluster's primaries.
        self._nodes: list[aioredis.Redis] = []
        #: Their pub/subs, merged (cluster only), and each primary's client by host:port.
        self._merged: MergedPubSub | None = None
        self._pubsubs: list[aioredis.client.PubSub] = []
        #: The pub/sub _follow reads, and messages a lot-log read took from it
        #: while it waited for its mark (counted, still to be noted).
        self._pubsub: aioredis.client.PubSub | MergedPubSub | None = None
        self._carried: list[dict[str, Any]] = []
        self._mark_number = 0
        self._by_name: dict[str, aioredis.Redis] = {}
        #: Primaries lost while following, by host:port: their slot ranges (stale).
        self.lost: dict[str, list[tuple[int, int]]] = {}
        #: A slot map that serves every lost slot again, for the follower to act on.
        self._recovered_topology: list[tuple[int, int, str]] | None = None
        #: Canary keys of promoted primaries not heard yet: the slot ranges they
        #: vouch for and when their re-read began.
        self._recovering: dict[bytes, tuple[list[tuple[int, int]], float]] = {}
        #: Clients of primaries lost in this generation, closed when it ends.
        self._dropped: list[aioredis.Redis] = []
        #: Canary write -> applied, seconds: the position update lag (the metrics).
        self.update_lag = Buckets(SECONDS_BOUNDS)
        self._resync_reason = ""
        self._database_replaced = False
        db = 0 if self.cluster else client.connection_pool.connection_kwargs.get("db", 0)
        self._channel_prefix = f"__keyspace@{db}__:".encode()

    # -- STARTUP --

    async def ensure_notifications(self, node: aioredis.Redis | None = None) -> None:
        """Make sure keyspace notifications carry the events the sync follows.

        Sets ``notify-keyspace-events`` when the server allows CONFIG SET;
        otherwise raises SyncConfigError saying exactly what to configure.
        ``node``: the Redis to check (one primary of a cluster); the sync's
        own client when omitted.
        """
        node = node if node is not None else self.client
        try:
            reply = await node.config_get("notify-keyspace-events")
            current = as_text(next(iter(reply.values()), None))
        except ResponseError as error:
            current = None
            reason = str(error)
        if self.series_prices:
            await self._ensure_timeseries(node)
        if current is not None and _has_flags(current, self.notify_flags):
            return
        wanted = _merge_flags(current or "", self.notify_flags)
        try:
            await node.config_set("notify-keyspace-events", wanted)
            log.info("set notify-keyspace-events to %r (was %r)", wanted, current)
            return
        except ResponseError as error:
            reason = str(error)
        raise SyncConfigError(
            f"Redis keyspace notifications are {current!r}, and pretrade needs at least "
            f"{self.notify_flags!r} to follow changes; it may not set them ({reason}). "
            f"Configure the server with: CONFIG SET notify-keyspace-events {wanted} "
            f"(or `notify-keyspace-events {wanted}` in redis.conf), or grant this user "
            "the CONFIG command.")

    async def _ensure_timeseries(self, node: aioredis.Redis) -> None:
        """SyncConfigError unless ``node`` has the RedisTimeSeries module (``TS.GET``).

        Checked at every (re)connect with the notification flags: a Redis
        restarted without the module would otherwise answer every price read
        with an error, which fails closed but says less.
        """
        try:
            # The canary key is a string or absent: with the module, an error
            # that names the key (WRONGTYPE, or no such key); without, an
            # unknown command.
            await node.execute_command("TS.GET", self.canary_key)
            return
        except ResponseError as error:
            if "unknown command" not in str(error).lower():
                return
            raise SyncConfigError(
                "price_source=timeseries, and this Redis has no RedisTimeSeries module (no "
                "TS.GET command): load it (loadmodule redistimeseries.so, or Redis Stack), "
                "or use price_source=keys") from None

    # -- THE LOOP --

    @property
    def lag_ms(self) -> int:
        """How far the table may be behind Redis, in milliseconds.

        The age of the newest canary beat that has come back through the
        keyspace notifications (and whose batch is applied): every change
        Redis made before that beat is in the table. Not a PING: a PING
        proves Redis answers, not that its changes reach the table.
        """
        return int((time.monotonic() - self.confirmed_at) * 1000)

    @property
    def live_until_ns(self) -> int:
        """Until when the table may be trusted (CLOCK_MONOTONIC ns): the newest confirmed
        beat plus the lag bound."""
        return int(self.confirmed_at * 1e9) + self.max_lag_ms * 1_000_000

    @property
    def beat_seconds(self) -> float:
        """How often the canary is written: four beats per lag bound."""
        return max(self.max_lag_ms / 4000, 0.01)

    async def run(self) -> None:
        """Load, follow, and after any link failure resync; until :meth:`stop`."""
        watchdog = asyncio.create_task(self._watchdog(), name="pretrade-sync-watchdog")
        try:
            await self._run()
        finally:
            watchdog.cancel()
            self.following = False
            self.table.set_sync_live(False)
            await self._remove_canary()

    async def _watchdog(self) -> None:
        # The table is live only while the canary comes back within
        # max_lag_ms: a silent link, a paused Redis or notifications that no
        # longer arrive all fail closed on their own, and force a resync.
        beating: asyncio.Task[None] | None = None
        beating_generation = 0
        last_beat = 0.0
        reported = False
        while True:
            now = time.monotonic()
            if beating is not None and not beating.done() \
                    and beating_generation != self._generation:
                beating.cancel()  # stuck on the link that was lost: the new load beats anew
            if self.following and (beating is None or beating.done()) \
                    and now - last_beat >= self.beat_seconds:
                last_beat = now
                beating_generation = self._generation
                beating = asyncio.create_task(self._beat(), name="pretrade-sync-canary")
            live = self.following and self.lag_ms <= self.max_lag_ms
            if live:
                # Renewed every turn: the table stays trusted only while this
                # writer runs (a killed or frozen writer's table expires).
                self.table.set_sync_live(True, self.live_until_ns)
            if live != reported:
                reported = live
                if not live:
                    self.table.set_sync_live(False)
                if live:
                    log.info("sync live (lag %d ms)", self.lag_ms)
                elif self.following:
                    log.error("the canary has not come back through the keyspace notifications "
                              "for %d ms (bound %d ms); orders get STALE_DATA, resyncing",
                              self.lag_ms, self.max_lag_ms)
                    self._resync("the canary stopped coming back")
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        while not self._stopping:
            self._generation += 1
            self.canary_keys = [self._canary_base()]
            self._nodes = []
            self._by_name = {}
            pubsubs: list[aioredis.client.PubSub] = []
            self._pubsubs = pubsubs
            merged: MergedPubSub | None = None
            self._merged = None
            self._resync_reason = ""
            # The table is not live here: a full load follows, so no slot stays lost.
            self.lost = {}
            self._recovering = {}
            self._recovered_topology = None
            if self.cluster and self.table.lost_slot_count():
                self.table.set_slots_lost([(0, CLUSTER_SLOTS - 1)], False)
            try:
                self._nodes = await self._subscribed_nodes()
                for node in self._nodes:
                    pubsubs.append(await self._subscribe(node))
                await self._plant_canary()
                if self._database_replaced:
                    await self._write_back_working_orders()
                    self._database_replaced = False
                await self.full_load()
                self._beats = {key: collections.deque() for key in self.canary_keys}
                self._heard = {}
                # Live again only once a beat of this load comes back: a beat
                # confirmed before the link was lost proves nothing of this one.
                self.confirmed_at = 0.0
                self.following = True
                self.ready.set()
                log.info("sync loaded; live once the canary comes back")
                if self.cluster:
                    merged = self._merged = MergedPubSub(dict(zip(self._by_name, pubsubs,
                                                                  strict=True)))
                await self._follow(merged or pubsubs[0])
            except (*LINK_ERRORS, *TOPOLOGY_ERRORS, SyncGap, SyncConfigError) as error:
                self._lost(error, "Redis link lost" if isinstance(error, LINK_ERRORS)
                           else "resync needed")
                await self._recycle_connections()
                await asyncio.sleep(self.reconnect_delay)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any other failure must not leave a live, stale table
                log.exception("sync failed; resyncing from scratch")
                self._lost(error, "sync failed")
                await asyncio.sleep(self.reconnect_delay)
            finally:
                if merged is not None:
                    merged.close()
                for pubsub in pubsubs:
                    # The connection goes back to the pool: it must not call back.
                    if pubsub.connection is not None:
                        pubsub.connection.deregister_connect_callback(self._pubsub_reconnected)
                    await _close_quietly(pubsub)
                if self.cluster:
                    for node in [*self._nodes, *self._dropped]:
                        await _close_quietly(node)
                    self._dropped = []

    async def _subscribe(self, node: aioredis.Redis) -> aioredis.client.PubSub:
        """A pub/sub on ``node`` for every key family and the canaries."""
        # Re-asserted at every (re)connect: a restarted or failed-over
        # Redis does not keep flags pretrade set at runtime.
        await self.ensure_notifications(node)
        # The lot log's function, for order systems that write lots through it
        # (pretrade.state.lotlog): a restarted Redis may have lost it too.
        if why := await load_library(node):
            log.warning("the lot log's Redis function could not be loaded (%s): large "
                        "accounts are re-read whole", why)
        pubsub = node.pubsub()
        await pubsub.psubscribe(*[self._channel_prefix + p
                                  for p in (*SCAN_PATTERNS, CANARY + b"*", MARK + b"*")])
        # redis-py reconnects and re-subscribes a pub/sub by itself:
        # notifications sent meanwhile are lost, so that is a gap.
        assert pubsub.connection is not None
        pubsub.connection.register_connect_callback(self._pubsub_reconnected)
        return pubsub

    async def _subscribed_nodes(self) -> list[aioredis.Redis]:
        """The Redis servers whose notifications the sync follows: every primary of a cluster.

        On a cluster the slot map is read afresh first (a failover or a
        migration since the last look), kept in :attr:`topology` for the
        beats to compare, and each primary gets a canary key in its own slots.
        """
        if not self.cluster:
            return [self.client]
        cluster: Any = self.client
        await cluster.nodes_manager.initialize()
        self.topology = await self._read_topology()
        self._by_name = named_primary_clients(self.client)
        names = sorted({owner for _, _, owner in self.topology})
        self.canary_keys = [self._canary_key_on(owner) for owner in names]
        return list(self._by_name.values())

    async def _read_topology(self) -> list[tuple[int, int, str]]:
        """The cluster's slot ranges and their primaries (``host:port``), as a node says now.

        Asked of the primaries followed, in turn (the cluster client would ask
        its default node, which may be the one lost), then of the client.
        """
        for node in [*self._nodes, self.client]:
            try:
                reply = await node.execute_command("CLUSTER SLOTS")
                break
            except LINK_ERRORS:
                if node is self.client:
                    raise
        if isinstance(reply, dict):  # the cluster client's parsed form
            return sorted((first, last,
                           f"{as_text(about['primary'][0])}:{int(about['primary'][1])}")
                          for (first, last), about in reply.items())
        return sorted((int(entry[0]), int(entry[1]),
                       f"{as_text(entry[2][0])}:{int(entry[2][1])}") for entry in reply)

    def _canary_base(self) -> bytes:
        """This generation's canary key (on a cluster, the stem of one per primary)."""
        return self.canary_key + b":%d" % self._generation

    def _canary_key_on(self, owner: str) -> bytes:
        """A canary key of this sync whose slot the primary ``owner`` serves."""
        cluster: Any = self.client
        base = self._canary_base()
        for n in range(100_000):
            key = base + b":%d" % n
            slot = cluster.keyslot(key)
            if any(first <= slot <= last and name == owner
                   for first, last, name in self.topology):
                return key
        raise SyncGap(f"no canary key found for the primary {owner}")

    def _canary_client(self, key: bytes) -> aioredis.Redis:
        """The client a canary is written with: on a cluster, the plain client of the
        primary serving it, so a primary that fails does not hold the others' beats
        back (the cluster client re-reads its slot map, and retries, after any
        connection error); else, or for a primary not followed, the client itself."""
        if not self.cluster:
            return self.client
        cluster: Any = self.client
        slot = cluster.keyslot(key)
        owner = next((name for first, last, name in self.topology if first <= slot <= last), "")
        return self._by_name.get(owner, self.client)

    def _lost(self, error: BaseException, what: str) -> None:
        self.following = False
        self.table.set_sync_live(False)
        self.stats.last_error = f"{type(error).__name__}: {error}"
        log.error("%s (%s); orders get STALE_DATA until resynced", what, self.stats.last_error)

    def _resync(self, reason: str) -> None:
        """Ask the loop to drop the link and load everything again (seen within 0.1 s)."""
        if not self._resync_reason:
            self._resync_reason = reason

    async def _pubsub_reconnected(self, connection: object) -> None:
        self._resync("the pub/sub connection was re-established: notifications may be lost")

    async def _recycle_connections(self) -> None:
        # Idle pooled connections may be to a Redis that is gone (restarted,
        # failed over): close them, so the next journal write or halt does
        # not fail on one. Connections in use finish or fail on their own.
        # A cluster client re-reads its slot map on the next subscribe instead.
        if self.cluster:
            return
        try:
            await self.client.connection_pool.disconnect(inuse_connections=False)
        except LINK_ERRORS as error:
            log.debug("closing idle Redis connections: %s", error)

    def stop(self) -> None:
        self._stopping = True

    # -- THE CANARY --

    async def _plant_canary(self) -> None:
        """Create this sync's canary keys: one gone means the database was replaced."""
        self._beats = {key: collections.deque() for key in self.canary_keys}
        for key in self.canary_keys:
            await self.client.set(key, b"0", px=self._canary_ttl_ms)

    async def _beat(self) -> None:
        """Write the canary and check the flags; its notification proves the path end to end.

        In one MULTI: EXISTS (0: FLUSHALL, FLUSHDB or SWAPDB replaced the
        database since the load), then the write whose keyspace notification
        must come back. The notification flags are read too: flags switched
        off (or only some of them) mean changes may have been missed.
        """
        self._beat_number += 1
        generation = self._generation
        try:
            # On a cluster: one canary per primary, each in a slot of its own node
            # (a lost primary's is not written; a promoted one's is, before it is heard).
            for key in dict.fromkeys([*self.canary_keys, *self._recovering]):
                try:
                    async with self._canary_client(key).pipeline(transaction=True) as pipe:
                        pipe.exists(key)
                        pipe.set(key, b"%d" % self._beat_number, px=self._canary_ttl_ms)
                        sent_at = time.monotonic()
                        existed, _ = await pipe.execute()
                except (*LINK_ERRORS, *TOPOLOGY_ERRORS) as error:
                    if not self.lost and isinstance(error, TOPOLOGY_ERRORS):
                        raise
                    # A primary is going (its pub/sub will say) or gone: the others beat on.
                    log.debug("canary %s not written: %s", quoted(key), error)
                    continue
                if generation != self._generation:
                    # Begun before the sync reloaded: it says nothing of the new load
                    # (its key may even be gone with a restarted Redis).
                    return
                self._beats.setdefault(key, collections.deque()).append(sent_at)
                if not existed and key not in self._recovering:
                    self._database_replaced = True
                    self._resync("the database was emptied or replaced (FLUSHALL, FLUSHDB or "
                                 "SWAPDB): the canary key is gone")
                    return
            for node in list(self._nodes):
                try:
                    reply = await node.config_get("notify-keyspace-events")
                except LINK_ERRORS as error:
                    log.debug("notification flags not read: %s", error)
                    continue
                flags = as_text(next(iter(reply.values()), None))
                if not _has_flags(flags, self.notify_flags):
                    self._resync(f"notify-keyspace-events is {flags!r} now: changes may have "
                                 "been missed")
            await self._probe_lost()
            if self.cluster and (topology := await self._read_topology()) != self.topology:
                if self.lost:
                    self._recovered_topology = topology  # the follower looks at it
                else:
                    self._resync(f"the Redis Cluster's slot map changed (a failover, a "
                                 f"migration or a node added or removed): {len(topology)} "
                                 "ranges now")
        except TOPOLOGY_ERRORS as error:
            self._resync(f"the Redis Cluster is changing ({type(error).__name__}: {error})")
        except ResponseError as error:
            # CONFIG denied, or the key has another type: resync, which says why.
            self._resync(f"the canary could not be written or checked: {error}")
        except LINK_ERRORS as error:
            log.debug("canary beat failed: %s", error)  # the lag bound will tell

    def _canary_heard(self, key: bytes, event: object) -> bool:
        """A notification of one of this sync's canary keys; True for a beat's write."""
        if event != b"set":
            return False
        beats = self._beats.get(key)
        if beats:
            sent = beats.popleft()
            if sent is not None:
                self._heard[key] = sent
        return True

    @property
    def _heard_beat(self) -> float:
        """Send time of the newest beat heard back from every canary (0: not from all yet)."""
        return min((self._heard.get(key, 0.0) for key in self.canary_keys), default=0.0)

    async def _write_back_working_orders(self, accounts: list[bytes] | None = None) -> None:
        """Put the table's working orders into a replaced database (``orders:{ACC}``).

        The orders were approved and may be working at the market: forgetting
        them because Redis lost their records would free their reservations.
        Written with HSETNX, so a record the new database holds is kept.
        ``accounts``: only theirs (those of a promoted replica, which may
        have missed the last writes of its primary); None: every account.
        """
        written = 0
        for account in self.table.account_ids() if accounts is None else accounts:
            orders = self.table.working_orders(account)
            if not orders:
                continue
            key = orders_key(account)
            async with self.client.pipeline(transaction=False) as pipe:
                for order in orders:
                    record = DecidedOrder(
                        account, order["order_id"], order["symbol"], order["side"],
                        order["order_type"], order["quantity"], order["price"],
                        order["valuation_price"], order["notional"], order["venue"],
                        order["counterparty"], True, (),
                        time_in_force=order["time_in_force"],
                        expire_at_unix_ms=order["expire_at_ms"],
                        working_until_unix_ms=order["working_until_ms"],
                        replaces=order["replaces"], carried=order["carried"],
                        group=order["group"])
                    pipe.hsetnx(key, order["order_id"], record.encode())
                replies = await pipe.execute()
            written += sum(1 for reply in replies if reply)
        if written:
            log.warning("the database was replaced: %d working orders written back to "
                        "orders:{ACC}, so they keep their reservations", written)

    async def _remove_canary(self) -> None:
        try:
            for key in self.canary_keys:
                await self.client.delete(key)
        except (*LINK_ERRORS, ResponseError, RedisClusterException) as error:
            log.debug("could not remove the canary key: %s", error)

    async def _follow(self, pubsub: aioredis.client.PubSub | MergedPubSub) -> None:
        self._pubsub = pubsub
        self._carried = []
        while not self._stopping:
            if self._resync_reason:
                raise SyncGap(self._resync_reason)
            if self._recovered_topology is not None:
                topology, self._recovered_topology = self._recovered_topology, None
                await self._follow_promoted(topology)
            dirty = Dirty()
            if self._carried:
                # Read while a lot-log read waited for its mark: counted then, noted now.
                for carried in self._carried:
                    self._note(dirty, carried)
                self._carried = []
            else:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0.1)
                except NodeLost as lost:
                    self._primary_lost(lost.name, lost.error)
                    continue
                if message is None:
                    continue
                self._count(message)
                self._note(dirty, message)
            # Drain what is already queued, so a burst becomes one batch.
            while len(dirty) < self.batch_size:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0)
                except NodeLost as lost:
                    self._primary_lost(lost.name, lost.error)
                    continue
                if message is None:
                    break
                self._count(message)
                self._note(dirty, message)
            if len(dirty):
                await self.refresh(dirty, incremental=True)
            # Only now is every change before the beat in the table.
            if self._heard_beat > self.confirmed_at:
                self.confirmed_at = self._heard_beat
                self.update_lag.observe(time.monotonic() - self._heard_beat)  # metrics
            self._clear_recovered_slots()

    # -- A LOST REDIS CLUSTER PRIMARY --

    def _primary_lost(self, name: str, error: BaseException) -> None:
        """The pub/sub of the primary ``name`` failed: mark its slots lost, follow the rest.

        Raises SyncGap (a full resync) when it served a key every order reads.
        """
        ranges = [(first, last) for first, last, owner in self.topology if owner == name]
        if not ranges or name in self.lost:
            return
        cluster: Any = self.client
        shared = [key for key in (HALT_ALL, RESTRICTED_SHORT)
                  if _in_ranges(cluster.keyslot(key), ranges)]
        if shared:
            raise SyncGap(f"lost the Redis Cluster primary {name} ({error}), which serves "
                          f"{b', '.join(shared).decode()}: every order reads it")
        count = self.table.set_slots_lost(ranges, True)
        self.lost[name] = ranges
        # A promoted primary lost before its canary came back: its slots stay lost.
        for key in [key for key in self._recovering if _in_ranges(cluster.keyslot(key), ranges)]:
            del self._recovering[key]
        self.stats.primaries_lost += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        # Its canary can no longer come back: the table is as fresh as the others say.
        self.canary_keys = [key for key in self.canary_keys
                            if not _in_ranges(cluster.keyslot(key), ranges)]
        node = self._by_name.pop(name, None)
        if node is not None:
            if node in self._nodes:
                self._nodes.remove(node)
            self._dropped.append(node)  # closed with the others when this generation ends
        log.error("lost the Redis Cluster primary %s (%s): orders with a key in its %d slots "
                  "get STALE_DATA until a promoted replica is followed; %d slots lost, the "
                  "rest trade", name, self.stats.last_error,
                  sum(last - first + 1 for first, last in ranges), count)

    async def _probe_lost(self) -> None:
        """A lost primary that answers again while it still serves its slots (it came
        back within the cluster's node timeout, so no replica was promoted) may have
        lost writes, and no slot-map change would ever say so: a full resync."""
        for name in list(self.lost):
            host, _, port = name.rpartition(":")
            probe = node_client(self.client, host, int(port))
            try:
                await asyncio.wait_for(probe.ping(), timeout=self.max_lag_ms / 10_000)
            except (*LINK_ERRORS, TimeoutError, ResponseError):
                continue  # still gone (or loading: the next beat asks again)
            finally:
                await _close_quietly(probe)
            # Its working orders' records may be gone with it: written back first.
            self._database_replaced = True
            self._resync(f"the lost Redis Cluster primary {name} answers again: it may have "
                         "restarted and lost writes")
            return

    async def _follow_promoted(self, topology: list[tuple[int, int, str]]) -> None:
        """Follow the primaries that serve the lost slots now, and re-read those slots.

        Waits (returns) while a lost slot has no reachable primary yet (none,
        or a lost one still named); raises SyncGap when the slot map changed
        elsewhere too. A lost primary that answers again is
        :meth:`_probe_lost`'s (it restarted: it may have lost writes).
        """
        before = _owners(self.topology)
        after = _owners(topology)
        lost = {slot for ranges in self.lost.values() for first, last in ranges
                for slot in range(first, last + 1)}
        if any(after.get(slot) != owner for slot, owner in before.items() if slot not in lost):
            raise SyncGap("the Redis Cluster's slot map changed beyond a lost primary's slots")
        promoted = {after.get(slot) for slot in lost}
        if None in promoted:
            return  # not served yet
        if promoted & set(self.lost):
            # Another lost primary still named for its slots: not failed over yet
            # (wait; its slots stay lost). One that answers again is the beat's
            # probe's to find: a full resync.
            return
        cluster: Any = self.client
        await cluster.nodes_manager.initialize()
        self.topology = topology
        recovered = [span for ranges in self.lost.values() for span in ranges]
        started = time.monotonic()
        clients = named_primary_clients(self.client)
        dirty = Dirty()
        try:
            for name in sorted(cast(set[str], promoted)):
                node = clients.pop(name)
                if name not in self._by_name:
                    # Followed (and so closed when this generation ends) before
                    # it is subscribed, which may fail.
                    self._by_name[name] = node
                    self._nodes.append(node)
                    pubsub = await self._subscribe(node)
                    self._pubsubs.append(pubsub)
                    assert self._merged is not None
                    self._merged.add(name, pubsub)
                else:
                    await _close_quietly(node)
                    node = self._by_name[name]
                # Its own share of the lost slots: they trade again once its canary
                # is heard after the re-read (a node that served other slots already
                # keeps its canary in the liveness minimum meanwhile).
                own = _overlaps([(first, last) for first, last, owner in topology
                                 if owner == name], recovered)
                key = self._canary_key_on(name)
                self._beats.setdefault(key, collections.deque()).append(None)
                await self.client.set(key, b"0", px=self._canary_ttl_ms)
                self._recovering[key] = (own, started)
                # Subscribed first, then read: a change after the subscription is
                # either in this read or in a notification that follows it.
                async for found in node.scan_iter(count=5000):
                    if _in_ranges(cluster.keyslot(found), own):
                        dirty.add_key(found)
        finally:
            for other in clients.values():
                await _close_quietly(other)
        self._add_known_in(dirty, recovered)
        await self.refresh(dirty)
        await self._write_back_working_orders(
            [account for account in self.table.account_ids()
             if any(_in_ranges(slot, recovered) for slot in account_key_slots(account))])
        self.lost = {}  # every lost slot is served again; still stale until heard
        log.info("following the promoted Redis Cluster primaries %s: %d entities of the lost "
                 "slots re-read; they trade once their canary comes back",
                 ", ".join(sorted(cast(set[str], promoted))), len(dirty))

    def _add_known_in(self, dirty: Dirty, ranges: list[tuple[int, int]]) -> None:
        """Every entity the table holds with a key in ``ranges``: deleted ones are cleared."""
        for account in self.accounts:
            limits_slot, halt_slot = account_key_slots(account)
            if _in_ranges(limits_slot, ranges):
                dirty.lots.add(account)
                dirty.limits.add(account)
                dirty.balances.add(account)
                dirty.locates.add(account)
                dirty.account_groups.add(account)
            if _in_ranges(halt_slot, ranges):
                dirty.halts.add((pb.HALT_SCOPE_ACCOUNT, account))
        for symbol in set(self.instruments) | self.priced:
            instrument_slot, price_slot, halt_slot = symbol_key_slots(symbol)
            if _in_ranges(instrument_slot, ranges):
                dirty.instruments.add(symbol)
            if _in_ranges(price_slot, ranges):
                dirty.prices.add(symbol)
            if _in_ranges(halt_slot, ranges):
                dirty.halts.add((pb.HALT_SCOPE_SYMBOL, symbol))
        cluster: Any = self.client
        for group in self.group_hashes:
            if _in_ranges(cluster.keyslot(group_key(group)), ranges):
                dirty.groups.add(group)

    def _clear_recovered_slots(self) -> None:
        """Slots whose promoted primary's canary came back after their re-read trade again."""
        for key, (ranges, started) in list(self._recovering.items()):
            if self._heard.get(key, 0.0) < started:
                continue
            del self._recovering[key]
            if key not in self.canary_keys:
                self.canary_keys.append(key)
            count = self.table.set_slots_lost(ranges, False)
            self.stats.slots_recovered += sum(last - first + 1 for first, last in ranges)
            log.info("the lost slots %s are followed and re-read: they trade again (%d slots "
                     "still lost)", ", ".join(f"{first}-{last}" for first, last in ranges),
                     count)

    def _count(self, message: dict[str, object]) -> None:
        """Count an event of a lot-log account's per-lot hashes, or hear a mark.

        Called once per message, as it is read (a message carried over by a
        lot-log read is noted later, not counted again).
        """
        channel = message.get("channel")
        if not (isinstance(channel, bytes) and channel.startswith(self._channel_prefix)):
            return
        key = channel[len(self._channel_prefix):]
        if (mark := parse_mark(key)) is not None:
            account, sync_id, number = mark
            state = self.accounts.get(account)
            if state is not None and sync_id == self._mark_id and number == state.mark_sent \
                    and message.get("data") == b"set":
                state.mark_heard, state.heard_at_mark = number, state.heard
            return
        if (found := lot_event_account(key)) is None:
            return
        state = self.accounts.get(found[0])
        event = message.get("data")
        # "new" comes with the write that made the key, "keymiss" with a read
        # of a missing one (the sync's own HMGETs): neither is a change.
        if state is None or state.book is None or event in (b"new", b"keymiss"):
            return
        if found[1]:
            state.heard += 1
        elif event not in (b"xadd", b"xtrim"):  # (heard only with the stream class on)
            state.log_spoiled = True  # the log itself deleted, renamed, expired...

    def _note(self, dirty: Dirty, message: dict[str, object]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes) and channel.startswith(self._channel_prefix):
            key = channel[len(self._channel_prefix):]
            if key.startswith(MARK):
                return
            if key in self._beats:
                self._canary_heard(key, message.get("data"))
                return
            self.stats.events += 1
            dirty.add_key(key, self.series_prices)

    # -- LOADING --

    async def full_load(self) -> None:
        """Read every key family and make the table equal to Redis."""
        started = time.perf_counter()
        dirty = Dirty()
        # One pass over the keyspace; keys pretrade does not own are skipped.
        async for key in self.client.scan_iter(count=5000):
            dirty.add_key(key, self.series_prices)
        # Decided orders first: the account snapshots below subtract their
        # fills and cancels from what they reserve.
        await self._restore_orders()
        # What the table knew but Redis no longer has must be cleared too.
        dirty.lots |= set(self.accounts)
        dirty.limits |= set(self.accounts)
        dirty.balances |= set(self.accounts)
        dirty.locates |= set(self.accounts)
        dirty.account_groups |= set(self.direct_groups) | set(self.flattened)
        dirty.groups |= set(self.group_hashes)
        dirty.restricted = True
        dirty.instruments |= set(self.instruments)
        dirty.prices |= self.priced
        dirty.halts |= {(pb.HALT_SCOPE_GLOBAL, b"")} | set(self.halts._halts)
        await self.refresh(dirty, progress=LoadProgress(len(dirty)))
        self.stats.full_loads += 1
        self.last_full_load_unix_ms = time.time_ns() // 1_000_000
        self.stats.last_full_load_seconds = time.perf_counter() - started
        for loaded in self.load_listeners:
            loaded()
        counts = self.table.counts()
        log.info("loaded %d accounts, %d instruments, %d position slots, %d halts from Redis "
                 "in %.3f s", len(self.accounts), len(self.instruments), counts["positions"],
                 len(self.halts.snapshot().halts), self.stats.last_full_load_seconds)

    async def _restore_orders(self) -> None:
        """Put decided orders from ``orders:{ACC}`` back into the table (crash recovery).

        Each account's records are read in one MULTI/EXEC with the fills and
        cancels attributed to its orders, so only orders still working take a
        record of the table again (all of them or, when they do not fit, none:
        the account fails closed, CAPACITY_EXHAUSTED). Rejected, filled and
        cancelled ones go to the account's evicted-id filter: a re-sent id is
        answered from its durable copy. Linear in the number of orders.
        Orders the table already holds are left alone, so a resync after a
        lost link restores nothing. An unreadable record makes its account
        invalid (its working reservation is unknown): its orders fail closed;
        the account's other records are restored all the same.
        """
        keys = [key async for key in self.client.scan_iter(match=ORDERS + b"*", count=1000)]
        restored = 0
        for start in range(0, len(keys), self.batch_size):
            batch = [(key, account) for key in keys[start:start + self.batch_size]
                     if (account := account_of_orders_key(key)) is not None]
            reads = Reads()
            for key, account in batch:
                reads.hgetall(key)
                _, quantities, _, orders_by_lot, cancels, _ = account_snapshot_keys(account)
                reads.hgetall(quantities)
                reads.hgetall(orders_by_lot)
                reads.hgetall(cancels)
            replies = await read_snapshot(self.client, reads)
            for n, (_, account) in enumerate(batch):
                restored += self._restore_account(account, *replies[4 * n:4 * n + 4])
        if restored:
            log.info("restored %d decided orders from Redis", restored)
        self.stats.orders_restored += restored

    def _restore_account(self, account: bytes, orders: Any, quantities: Any,
                         orders_by_lot: Any, cancels: Any) -> int:
        state = self.accounts.setdefault(account, AccountSync())
        state.orders_invalid = False
        try:
            fields = _hash(orders)
        except StateError as error:
            fields = {}
            state.orders_invalid = True
            self._invalid("decided orders of account", account, error)
        try:
            filled = fills_by_order(_hash(quantities), _hash(orders_by_lot))
            cancelled = set(_hash(cancels))
        except StateError:
            # the lots are reported invalid when they load; until then count
            # every approved order as working (the larger reservation)
            filled, cancelled = {}, set()
        working, finished = [], []
        decided = {}
        # an order whose time in force ended while no gateway ran counts no more
        now_unix_ms = time.time_ns() // 1_000_000
        for order_id, raw in fields.items():
            try:
                decided[order_id] = decode(account, order_id, raw)
            except StateError as error:
                state.orders_invalid = True
                self._invalid(f"decided order {quoted(order_id)} of account", account, error)
        # An approved replacement ends its original (ReplaceOrder), whatever its record says.
        replaced = {order.replaces for order in decided.values()
                    if order.approved and order.replaces}
        # A leg of an OCO group is restored whatever its group's other legs
        # did, as the live table keeps it: a fill of another leg ends no leg,
        # its own fill or cancel does.
        for order_id, order in decided.items():
            done = order.carried + filled.get(order_id, 0) + (
                filled.get(order.replaces, 0) if order.replaces else 0)
            if order.approved and order_id not in cancelled and order_id not in replaced \
                    and done < order.quantity \
                    and not 0 < order.working_until_unix_ms <= now_unix_ms:
                working.append((order_id, order.symbol, order.side, order.order_type,
                                order.quantity, order.price, order.valuation_price,
                                order.notional, order.venue, order.counterparty, True,
                                order.rejections, order.time_in_force,
                                order.expire_at_unix_ms, order.working_until_unix_ms,
                                order.replaces, order.carried, order.group))
            else:
                finished.append(order_id)
        restored = 0
        try:
            restored += self.table.forget_orders(account, finished)
            restored += self.table.restore_orders(account, working)
            state.over_capacity.pop("orders", None)
        except TableFullError as error:
            state.over_capacity["orders"] = error.capacity
            self._does_not_fit(f"decided orders of account ({len(working)} working)", account,
                               error)
        except ValueError as error:
            state.orders_invalid = True
            self._invalid("decided orders of account", account, error)
        self._publish_account(account, state)
        return restored

    async def refresh(self, dirty: Dirty, progress: LoadProgress | None = None,
                      incremental: bool = False) -> None:
        """Re-read the named entities from Redis and apply them, in batches.

        Each batch is read in one MULTI/EXEC (a consistent snapshot of every
        key in it; on a Redis Cluster one per hash slot, so each account is
        still one snapshot) and then applied without yielding to the event
        loop, so no order decided in this process sees half of a batch.

        ``incremental``: the entities are dirty because of the notifications
        :meth:`_follow` counted, so an account with a lot log may be re-read
        lot by lot (:meth:`_read_logged`). Any other re-read reads it whole.
        """
        self.stats.refreshes += 1
        large = sorted(account for account in dirty.lots
                       if account in self.accounts
                       and self.accounts[account].lot_count > self.large_account_lots)
        if large:
            dirty.lots.difference_update(large)
        logged = [account for account in large
                  if incremental and self.accounts[account].book is not None]
        if logged:
            large = [account for account in large if account not in logged]
        for batch in _split(dirty, self.batch_size):
            halt_keys = sorted(batch.halts)
            generations = [self.halts.generation(key) for key in halt_keys]
            # A tick the price feed applies while this read is in flight is
            # newer than what the read returns: the read must not undo it.
            self._price_read_generation = {symbol: self._price_generation.get(symbol, 0)
                                           for symbol in batch.prices}
            # (queue, apply, items, replies per item); applied in this order:
            # reference data and prices before the accounts that hold them.
            groups: list[tuple[Any, Any, list[bytes], int]] = [
                (self._queue_instruments, self._apply_instruments, sorted(batch.instruments), 1),
                (self._queue_prices, self._apply_prices, sorted(batch.prices), 1),
                (self._queue_limits, self._apply_limits, sorted(batch.limits), 1),
                (self._queue_balances, self._apply_balances, sorted(batch.balances), 1),
                (self._queue_locates, self._apply_locates, sorted(batch.locates), 1),
                (self._queue_groups, self._apply_groups, sorted(batch.groups), 1),
                (self._queue_account_groups, self._apply_account_groups,
                 sorted(batch.account_groups), 1),
                (self._queue_lots, self._apply_lots, sorted(batch.lots), SNAPSHOT_REPLIES),
            ]
            reads = Reads()
            if batch.restricted:
                reads.smembers(RESTRICTED_SHORT)
            for queue, _, items, _ in groups:
                queue(reads, items)
            self._queue_halts(reads, halt_keys)
            replies = await read_snapshot(self.client, reads)
            at = 0
            if batch.restricted:
                self._apply_restricted(replies[0])
                at = 1
            for _, apply, items, width in groups:
                apply(items, replies[at:at + len(items) * width])
                at += len(items) * width
            self._flatten_groups()
            self._tell_groups_changed()
            self._apply_halts(halt_keys, replies[at:], generations)
            if progress is not None:
                progress.advance(len(batch))
        fell_back = set()
        for account in logged:
            if await self._read_logged(account):
                self.stats.lot_log_reads += 1
            else:
                self.stats.lot_log_whole_reads += 1
                fell_back.add(account)
                large.append(account)
        on_replica = await self._read_on_replica(large) if large else {}
        for account in large:
            heard = None
            if account in on_replica:
                replies = on_replica[account]
            else:
                replies, heard = await self._read_large_account(account,
                                                                mark=account in fell_back)
            self._apply_lots([account], replies, heard)
            if progress is not None:
                progress.advance(1)
        if progress is not None:
            progress.finish()

    async def _read_large_account(self, account: bytes, mark: bool = False
                                  ) -> tuple[list[Any], int | None]:
        """One large account's snapshot on the primary, the replies ``_queue_lots`` would give.

        With ``mark`` (a lot-log account read whole, while following), the
        snapshot's transaction SETs the account's next mark too, and the events
        heard up to it come with the replies: those are the events the snapshot
        holds, so events of its writes still in flight are not taken for
        writes by hand afterwards (else an account written fast stays in whole
        reads). None: not marked, or the mark was not heard.

        Its hashes are read in chunks under WATCH, and the read counts only if
        no key of the account changed meanwhile (EXEC of the version read
        succeeds): the same consistent snapshot as one MULTI/EXEC, without
        holding Redis for the whole of it. A spoiled read is made again in one
        MULTI/EXEC, and so are the next ATOMIC_READS_AFTER_SPOIL reads of the
        account (it is written faster than it can be read in chunks).
        """
        state = self.accounts[account]
        snapshot = account_snapshot_keys(account)
        version, lot_log = version_key(account), lot_log_key(account)
        mark = mark and self._pubsub is not None
        marked = self._next_mark(account) if mark else b""
        replies: list[Any] | None = None
        if state.atomic_reads > 0:
            state.atomic_reads -= 1
        else:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*snapshot, version, lot_log)
                    hashes: list[Any] = [await _scan_hash(pipe, key) for key in snapshot]
                    pipe.multi()
                    pipe.get(version)
                    pipe.execute_command("XREVRANGE", lot_log, "+", "-", "COUNT", 1)
                    if mark:
                        pipe.set(marked, b"1", px=MARK_TTL_MS)
                    tail = await pipe.execute(raise_on_error=False)
                    self.chunked_reads += 1
                    replies = [*hashes, *tail[:2]]
                except WatchError:
                    self.chunked_fallbacks += 1
                    state.atomic_reads = self.atomic_reads_after_spoil
        if replies is None:
            reads = Reads()
            self._queue_lots(reads, [account])
            if mark:
                _queue_mark(reads, marked)
            replies = (await read_snapshot(self.client, reads))[:SNAPSHOT_REPLIES]
        if mark and await self._hear_mark(state):
            return replies, state.heard_at_mark
        return replies, None

    def _next_mark(self, account: bytes) -> bytes:
        """The key of the account's next mark (its number is the one awaited now)."""
        state = self.accounts[account]
        self._mark_number += 1
        state.mark_sent = self._mark_number
        return mark_key(account, self._mark_id, state.mark_sent)

    async def _read_on_replica(self, accounts: list[bytes]) -> dict[bytes, list[Any]]:
        """Large accounts' snapshots read on the replica; those missing: read them on the primary.

        The changes that made them dirty are on the primary; the replica may
        not have them yet. So the fence (a key of this sync's own) is SET to
        a fresh random token on the primary first, after those changes, and a
        replica's snapshot counts only if it holds that token: the
        MULTI/EXEC that reads an account reads the fence too, so the account
        is at least as new as the change. A token, not a counter: a replica
        left behind by a primary that was flushed holds any count, never a
        token written since. One fence and one WAIT serve every account of
        the batch; the replica is polled for the fence alone, then each
        account is read once. All of it within REPLICA_BUDGET_FRACTION of
        the lag bound, counted from before the WAIT: a replica that fails,
        lags, is slow, or is no replica of this primary (it never shows the
        token) leaves the rest of the batch to the primary and gets no tries
        for REPLICA_REST_SECONDS.
        """
        if self.read_client is None or time.monotonic() < self._replica_rests_until:
            return {}
        budget = self.max_lag_ms * REPLICA_BUDGET_FRACTION / 1000
        deadline = time.monotonic() + budget
        # WAIT within the budget, and well within the primary client's socket timeout.
        wait_ms = max(1, int(min(budget, REPLICA_MAX_WAIT_SECONDS) * 1000))
        try:
            fence = uuid.uuid4().hex.encode()
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self.fence_key, fence, px=self._canary_ttl_ms)
                pipe.execute_command("WAIT", 1, wait_ms)
                await pipe.execute()
        except ResponseError as error:  # the fence refused (an ACL, out of memory): the primary
            self._fall_back(f"the primary refused the fence ({error})", len(accounts))
            return {}
        read: dict[bytes, list[Any]] = {}

        def left() -> float:
            # Checked before every command, and each bounded by what is left:
            # a cancel redis-py absorbs (it reconnects) cannot make this loop endless.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        try:
            while True:
                async with asyncio.timeout(left()):
                    seen = await self.read_client.get(self.fence_key)
                if seen == fence:
                    break
                await asyncio.sleep(REPLICA_POLL_SECONDS)
            for account in accounts:
                reads = Reads()
                reads.get(self.fence_key)
                self._queue_lots(reads, [account])
                async with asyncio.timeout(left()):
                    seen, *replies = await read_snapshot(self.read_client, reads)
                if seen != fence:  # a newer fence: not this sync's (it reads one at a time)
                    raise RedisError(f"the fence changed under the read ({seen!r})")
                read[account] = replies
        except TimeoutError:
            self._fall_back(f"the fence and {len(read)} of {len(accounts)} accounts read "
                            f"in the {budget * 1000:.0f} ms allowed",
                            len(accounts) - len(read))
        except (RedisError, OSError) as error:
            self._fall_back(f"{type(error).__name__}: {error}", len(accounts) - len(read))
        self.stats.replica_reads += len(read)
        return read

    def _fall_back(self, reason: str, accounts: int) -> None:
        """``accounts`` are read on the primary, and the replica rests; logged with why."""
        self.stats.replica_fallbacks += accounts
        self._replica_rests_until = time.monotonic() + REPLICA_REST_SECONDS
        log.warning("%d large accounts are read on the primary, not the replica: %s; the "
                    "replica is tried again in %.0f s", accounts, reason, REPLICA_REST_SECONDS)

    def _queue_lots(self, pipe: Reads, accounts: list[bytes]) -> None:
        for account in accounts:
            keys = account_snapshot_keys(account)
            for key in keys[:LOT_HASHES]:  # summed as read, no dict needed
                pipe.hgetall_flat(key)
            for key in keys[LOT_HASHES:]:
                pipe.hgetall(key)
            pipe.get(version_key(account))
            lot_log = lot_log_key(account)
            pipe.command(lot_log, "XREVRANGE", lot_log, "+", "-", "COUNT", 1)

    def _apply_lots(self, accounts: list[bytes], replies: list[Any],
                    heard: int | None = None) -> None:
        # One MULTI/EXEC: lots, fill attribution, cancels, P&L, the state
        # version and the lot log's newest entry of each account are one
        # snapshot, applied in one locked step of the table.
        width = SNAPSHOT_REPLIES
        for n, account in enumerate(accounts):
            state = self.accounts.setdefault(account, AccountSync())
            state.book = None
            version = None
            try:
                *hashes, raw_version, log_top = replies[width * n: width * n + width]
                # The lot hashes as read: dicts, or flat HGETALL replies.
                tickers, quantities, prices = (_lot_hash(reply) for reply in hashes[:LOT_HASHES])
                orders_by_lot, cancels, pnl = (_hash(reply) for reply in hashes[LOT_HASHES:])
                version = _version(raw_version)
                state.has_lots = bool(tickers or quantities or prices)
                state.lot_count = lot_count(tickers)
                positions = aggregate_lots(tickers, quantities, prices)
                filled = fills_by_order(lot_fields(quantities), orders_by_lot) \
                    if orders_by_lot else {}
                realized = parse_realized_pnl(pnl)
                state.lots_invalid = False
                sequence = top_sequence(log_top)
                if sequence and state.lot_count > self.large_account_lots:
                    # Written through pretrade_lots: from now on read lot by lot.
                    state.book = LotBook(lot_fields(tickers), lot_fields(quantities),
                                         lot_fields(prices), orders_by_lot, sequence)
                    # The events the snapshot holds: up to its mark when it had one.
                    state.heard_in_book = state.heard if heard is None else heard
                    state.log_spoiled = False
            except StateError as error:
                positions, filled, cancels, realized = {}, {}, {}, 0
                state.has_lots = True
                state.lots_invalid = True
                self._invalid("lots of account", account, error)
            self._store_lots(account, state, positions, filled, cancels, realized, version)

    def _store_lots(self, account: bytes, state: AccountSync,
                    positions: dict[bytes, tuple[int, int]], filled: dict[bytes, int],
                    cancels: dict[bytes, bytes], realized: int, version: int | None) -> None:
        """An account's positions as read, into the table, then told to the listeners."""
        try:
            self.table.replace_positions(account, positions, filled=filled,
                                         cancelled=set(cancels), realized_pnl=realized,
                                         state_version=version)
            state.over_capacity.pop("lots", None)
        except TableFullError as error:
            state.over_capacity["lots"] = error.capacity
            self._does_not_fit("positions of account", account, error)
        self._publish_account(account, state)
        for listener in self.listeners:
            listener.account_changed(account, positions, realized)

    async def _read_logged(self, account: bytes) -> bool:
        """Re-read only the lots that the account's new lot-log entries name; False: read whole.

        The entries after the book's are read, then, in one MULTI/EXEC, the
        lots they name from the four per-lot hashes, the account's small
        hashes and version, the log's newest entry (the read stands only if
        no entry came meanwhile, else it is made again with those) and the
        account's next mark. Once the mark is heard back, every event of a
        write this read saw has been counted: the read is applied only if the
        events heard since the book's read equal what the entries declare.
        """
        state = self.accounts[account]
        book = state.book
        assert book is not None
        if state.log_spoiled or self._pubsub is None:
            return False
        lot_log = lot_log_key(account)
        tickers, quantities, prices, orders_by_lot, cancels, pnl = \
            account_snapshot_keys(account)
        sequence, declared = book.sequence, 0
        lots: dict[bytes, None] = {}
        for _ in range(LOT_LOG_TRIES):
            try:
                entries = await self.client.xrange(lot_log, min=b"(0-%d" % sequence, max=b"+",
                                                   count=MAX_ENTRIES)
            except ResponseError:
                return False  # WRONGTYPE: the log was replaced since its events were read
            found = read_entries(entries, sequence)
            if found is None or len(entries or ()) >= MAX_ENTRIES:
                return False  # a gap, a log not of pretrade_lots, or too far behind
            named, events, sequence = found
            lots.update(dict.fromkeys(named))
            declared += events
            if len(lots) > MAX_LOTS:
                return False
            if state.heard - state.heard_in_book > declared:
                # Every event heard is of a write made before this XRANGE, and
                # the entries of those written through the function are in it.
                return False  # so one was not written through it
            ids = list(lots)
            reads = Reads()
            if ids:
                for key in (tickers, quantities, prices, orders_by_lot):
                    reads.command(key, "HMGET", key, *ids)
            reads.hgetall(cancels)
            reads.hgetall(pnl)
            reads.get(version_key(account))
            reads.command(lot_log, "XREVRANGE", lot_log, "+", "-", "COUNT", 1)
            _queue_mark(reads, self._next_mark(account))
            replies = await read_snapshot(self.client, reads)
            top = top_sequence(replies[-2])
            if top == sequence:
                break
            if top is None or top < sequence:
                return False  # the log was replaced meanwhile
        else:
            return False
        if not await self._hear_mark(state) or state.log_spoiled \
                or state.heard_at_mark - state.heard_in_book != declared:
            return False  # a write not through pretrade_lots (or an event not heard)
        values = replies[:4] if ids else [[], [], [], []]
        cancels_reply, pnl_reply, raw_version = replies[-5:-2]
        try:
            if any(isinstance(reply, Exception) for reply in values):
                raise StateError("unreadable")
            cancelled, version = _hash(cancels_reply), _version(raw_version)
            realized = parse_realized_pnl(_hash(pnl_reply))
        except StateError:
            return False  # WRONGTYPE...: the whole read says what is wrong
        book.update(ids, values)
        book.sequence = sequence
        try:
            positions, filled = book.positions(), book.filled()
            state.lots_invalid = False
        except StateError as error:
            positions, filled, cancelled, realized = {}, {}, {}, 0
            state.lots_invalid = True
            self._invalid("lots of account", account, error)
        state.heard_in_book = state.heard_at_mark
        state.has_lots = any(book.hashes[:LOT_HASHES])
        state.lot_count = len(book)
        self._store_lots(account, state, positions, filled, cancelled, realized, version)
        return True

    async def _hear_mark(self, state: AccountSync) -> bool:
        """Read the followed pub/sub until ``state``'s mark comes back (False: not in time).

        What is read meanwhile is counted now and noted by _follow next.
        """
        assert self._pubsub is not None
        deadline = time.monotonic() + self.max_lag_ms * REPLICA_BUDGET_FRACTION / 1000
        while state.mark_heard != state.mark_sent:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=left)
            except NodeLost as lost:
                self._primary_lost(lost.name, lost.error)
                return False
            if message is not None:
                self._count(message)
                self._carried.append(message)
        return True

    def _queue_limits(self, pipe: Reads, accounts: list[bytes]) -> None:
        for account in accounts:
            pipe.hgetall(limits_key(account))

    def _apply_limits(self, accounts: list[bytes], replies: list[Any]) -> None:
        for account, reply in zip(accounts, replies, strict=True):
            state = self.accounts.setdefault(account, AccountSync())
            try:
                fields = _hash(reply)
                parsed = parse_limits(fields)
                state.has_limits = bool(fields)
                state.limits_invalid = False
            except StateError as error:
                fields, parsed = {b"invalid": b""}, ParsedLimits()
                state.has_limits = True
                state.limits_invalid = True
                self._invalid("limits of account", account, error)
            try:
                self.table.set_account_limits(account, parsed.account if fields else None)
                self.table.set_tag_limits(account, parsed.venues, parsed.counterparties)
                for symbol in state.override_symbols - set(parsed.per_symbol):
                    self.table.set_symbol_limits(account, symbol, None)
                for symbol, limits in parsed.per_symbol.items():
                    self.table.set_symbol_limits(account, symbol, limits)
                state.over_capacity.pop("limits", None)
            except TableFullError as error:
                state.over_capacity["limits"] = error.capacity
                self._does_not_fit("limits of account", account, error)
            state.override_symbols = set(parsed.per_symbol)
            self._publish_account(account, state)

    def _queue_balances(self, pipe: Reads, accounts: list[bytes]) -> None:
        for account in accounts:
            pipe.hgetall(balances_key(account))

    def _apply_balances(self, accounts: list[bytes], replies: list[Any]) -> None:
        for account, reply in zip(accounts, replies, strict=True):
            state = self.accounts.setdefault(account, AccountSync())
            try:
                balances = parse_balances(_hash(reply))
                state.balances_invalid = False
            except StateError as error:
                balances = None
                state.balances_invalid = True
                self._invalid("balances of account", account, error)
            cash, credit = balances if balances is not None else (None, 0)
            try:
                self.table.set_balances(account, cash, credit)
                state.over_capacity.pop("balances", None)
            except TableFullError as error:
                state.over_capacity["balances"] = error.capacity
            self._publish_account(account, state)
            # the portfolio streams value equity and margin from the balances
            info = self.table.account_info(account)
            if info is not None:
                positions = self.table.account_positions(account)
                for listener in self.listeners:
                    listener.account_changed(account, positions, info["realized_pnl"])

    def _queue_locates(self, pipe: Reads, accounts: list[bytes]) -> None:
        for account in accounts:
            pipe.hgetall(locates_key(account))

    def _apply_locates(self, accounts: list[bytes], replies: list[Any]) -> None:
        for account, reply in zip(accounts, replies, strict=True):
            state = self.accounts.setdefault(account, AccountSync())
            try:
                locates = parse_locates(_hash(reply))
                state.locates_invalid = False
            except StateError as error:
                locates = {}
                state.locates_invalid = True
                self._invalid("locates of account", account, error)
            try:
                self.table.set_locates(account, locates)
                state.over_capacity.pop("locates", None)
            except TableFullError as error:
                state.over_capacity["locates"] = error.capacity
                self._does_not_fit("locates of account", account, error)
            self._publish_account(account, state)

    # -- ACCOUNT GROUPS --

    def _queue_groups(self, pipe: Reads, groups: list[bytes]) -> None:
        for group in groups:
            pipe.hgetall(group_key(group))

    def _apply_groups(self, groups: list[bytes], replies: list[Any]) -> None:
        reparented = False
        for group, reply in zip(groups, replies, strict=True):
            parent_before = self._parent(group)
            try:
                fields = _hash(reply)
                if fields:
                    self.group_hashes[group] = parse_group(fields)
                else:
                    self.group_hashes.pop(group, None)
            except StateError as error:
                self.group_hashes[group] = None
                self._invalid("group", group, error)
            if group in self.group_records:
                # A group no account is in gets no record (it would hold one of
                # the table's max_groups for good): the first account that names
                # it gives it one, with its hash as read then.
                self._publish_group(group)
            parent = self._parent(group)
            if parent != parent_before:
                # The trees that hold the group change.
                self._regroup |= self.group_members.get(group, set())
                reparented = True
        if reparented:
            # So may those that could not be resolved (a cycle broken, a tree
            # shorter now), or did not fit.
            self._regroup |= {account for account, flattened in self.flattened.items()
                              if flattened is None}
            self._regroup |= self._groups_unfit

    def _parent(self, group: bytes) -> bytes | None:
        parsed = self.group_hashes.get(group)
        return parsed[1] if parsed is not None else None

    def _publish_group(self, group: bytes) -> None:
        """Give the table the group's limits as read (none: no hash; invalid: unparseable)."""
        limits: dict[int, int] | None = None
        invalid = False
        if group in self.group_hashes:
            parsed = self.group_hashes[group]
            if parsed is None:
                invalid = True
            else:
                limits = parsed[0]
        try:
            self.table.set_group(group, limits, invalid=invalid)
        except TableFullError as error:
            self._does_not_fit("group", group, error)
            return
        self.group_records.add(group)
        self._groups_changed.add(group)
        if self.over_capacity.pop(("group", group), None) is not None:
            log.warning("group %s fits in the table again", group.decode(errors="replace"))

    def _queue_account_groups(self, pipe: Reads, accounts: list[bytes]) -> None:
        for account in accounts:
            pipe.smembers(groups_key(account))

    def _apply_account_groups(self, accounts: list[bytes], replies: list[Any]) -> None:
        for account, reply in zip(accounts, replies, strict=True):
            self.accounts.setdefault(account, AccountSync())
            if isinstance(reply, Exception):
                self.direct_groups[account] = None
                self._invalid("groups of account", account, StateError(f"unreadable: {reply}"))
            elif reply:
                self.direct_groups[account] = frozenset(reply)
            else:
                self.direct_groups.pop(account, None)
            self._regroup.add(account)

    def _flatten_groups(self) -> None:
        """Flatten the groups of the accounts whose groups or trees changed, into the table."""
        if not self._regroup:
            return
        accounts, self._regroup = sorted(self._regroup), set()
        parents = {group: parsed[1] for group, parsed in self.group_hashes.items()
                   if parsed is not None and parsed[1] is not None}
        for account in accounts:
            direct = self.direct_groups.get(account, frozenset())
            flattened: tuple[bytes, ...] | None = None
            if direct is not None:  # None: unreadable, logged as read
                try:
                    flattened = flatten_groups(direct, parents)
                except StateError as error:
                    self._invalid("groups of account", account, error)
            self._set_account_groups(account, direct or frozenset(), flattened)

    def _set_account_groups(self, account: bytes, direct: frozenset[bytes],
                            flattened: tuple[bytes, ...] | None) -> None:
        """Store the account's flattened groups (None: its tree is invalid) if they changed."""
        state = self.accounts.setdefault(account, AccountSync())
        before = self.flattened.get(account, ())
        if flattened == before and "groups" not in state.over_capacity:
            return
        # Every group named gets a record of its own state first.
        for group in sorted({*direct, *(flattened or ())} - self.group_records):
            if is_valid_id(group):
                self._publish_group(group)
        try:
            self.table.set_account_groups(account, flattened or (),
                                          invalid=flattened is None)
            state.over_capacity.pop("groups", None)
            self._groups_unfit.discard(account)
        except TableFullError as error:
            state.over_capacity["groups"] = error.capacity
            self._groups_unfit.add(account)
            self._does_not_fit("groups of account", account, error)
        else:
            for group in before or ():
                members = self.group_members.get(group)
                if members is not None:
                    members.discard(account)
                    if not members:
                        del self.group_members[group]
            for group in flattened or ():
                self.group_members.setdefault(group, set()).add(account)
            self._groups_changed |= set(before or ()) ^ set(flattened or ())
            if flattened == ():
                self.flattened.pop(account, None)
            else:
                self.flattened[account] = flattened
        self._publish_account(account, state)

    def _tell_groups_changed(self) -> None:
        """Tell the listeners of the groups whose record or members the batch changed:
        once each, after the batch's lots and memberships are all in the table."""
        if not self._groups_changed:
            return
        groups, self._groups_changed = sorted(self._groups_changed), set()
        for group in groups:
            for listener in self.listeners:
                listener.group_changed(group)

    def _publish_account(self, account: bytes, state: AccountSync) -> None:
        try:
            self.table.set_account_state(account, known=state.known, invalid=state.invalid,
                                         capacity=state.capacity)
        except TableFullError as error:
            # no room for the account at all: not in the table, its orders
            # are rejected CAPACITY_EXHAUSTED (accounts)
            self._does_not_fit("account", account, error)
            return
        key = ("account", account)
        if state.capacity:
            self.over_capacity[key] = state.capacity
        elif self.over_capacity.pop(key, None) is not None:
            log.warning("account %s fits in the table again; its orders are checked",
                        account.decode(errors="replace"))
        if state.invalid != state.reported_invalid:
            state.reported_invalid = state.invalid
            for listener in self.listeners:
                listener.account_invalid(account, state.invalid)

    def _apply_restricted(self, reply: Any) -> None:
        was_unreadable = self.restricted_unreadable
        self.restricted_unreadable = isinstance(reply, Exception)
        if isinstance(reply, Exception):
            # Cannot tell which symbols are restricted: restrict every short sale.
            self._invalid("restricted list", RESTRICTED_SHORT, reply)
            restricted = self.restricted
        else:
            restricted = set(reply)
        changed = restricted ^ self.restricted
        self.restricted = restricted
        if was_unreadable != self.restricted_unreadable:
            changed = set(self.instruments)
        for symbol in changed:
            if symbol in self.instruments:
                self._publish_instrument(symbol)

    def _intern(self, names: dict[str, int], name: str) -> int:
        if not name:
            return 0
        return names.setdefault(name, len(names) + 1)

    def _publish_instrument(self, symbol: bytes, invalid: bool = False) -> None:
        reference = self.instruments[symbol]
        before = self.table.instrument_info(symbol)
        try:
            self.table.set_instrument(
                symbol, known=True, invalid=invalid, tick_size=reference.tick_size,
                lot_size=reference.lot_size,
                issuer_id=self._intern(self.issuer_ids, reference.issuer),
                sector_id=self._intern(self.sector_ids, reference.sector),
                short_restricted=symbol in self.restricted or self.restricted_unreadable,
                currency=reference.currency, margin_bps=reference.margin_bps)
        except TableFullError as error:
            self._does_not_fit("instrument", symbol, error)
            return
        self._currency_changed(symbol, before, reference.currency)

    def _currency_changed(self, symbol: bytes, before: dict[str, Any] | None,
                          currency: str) -> None:
        """Holdings carry their instrument's currency: a new one is told like a price."""
        after = self.table.instrument_info(symbol)
        if before is not None and (before["currency"] != currency or (
                after is not None and before["margin_bps"] != after["margin_bps"])):
            for listener in self.listeners:
                listener.price_changed(symbol, before["last_price"])
        if self.over_capacity.pop(("instrument", symbol), None) is not None:
            log.warning("instrument %s fits in the table again",
                        symbol.decode(errors="replace"))

    def _queue_instruments(self, pipe: Reads, symbols: list[bytes]) -> None:
        for symbol in symbols:
            pipe.hgetall(instrument_key(symbol))

    def _apply_instruments(self, symbols: list[bytes], replies: list[Any]) -> None:
        for symbol, reply in zip(symbols, replies, strict=True):
            try:
                fields = _hash(reply)
                if not fields:
                    self.instruments.pop(symbol, None)
                    self.over_capacity.pop(("instrument", symbol), None)
                    before = self.table.instrument_info(symbol)
                    if before is not None:
                        self.table.set_instrument(symbol, known=False)
                        self._currency_changed(symbol, before, "")
                    continue
                self.instruments[symbol] = parse_instrument(fields)
                self._publish_instrument(symbol)
            except StateError as error:
                self.instruments[symbol] = InstrumentRef()
                self._publish_instrument(symbol, invalid=True)
                self._invalid("instrument", symbol, error)

    def _queue_prices(self, pipe: Reads, symbols: list[bytes]) -> None:
        for symbol in symbols:
            if self.series_prices:
                pipe.ts_get(price_history_key(symbol))
            else:
                pipe.get(price_key(symbol))

    def _apply_prices(self, symbols: list[bytes], replies: list[Any]) -> None:
        for symbol, raw in zip(symbols, replies, strict=True):
            price = None
            if self.series_prices and isinstance(raw, ResponseError) \
                    and str(raw).startswith(SERIES_MISSING):
                raw = None          # no series: no price, as a missing price:<SYM>
            if raw is not None:
                try:
                    if isinstance(raw, Exception):
                        raise StateError(f"unreadable: {raw}")
                    price = (parse_series_price(raw) if self.series_prices
                             else parse_last_price(raw))
                except StateError as error:
                    self._invalid("last price of", symbol, error)
            if self._price_generation.get(symbol, 0) != self._price_read_generation.get(symbol):
                continue
            if self.series_prices and price is not None:
                self.stats.series_prices += 1
            self._set_price(symbol, price)

    def apply_price(self, symbol: bytes, price: int | None) -> None:
        """A tick from the price feed: the symbol's last price now (see prices.py)."""
        self._price_generation[symbol] = self._price_generation.get(symbol, 0) + 1
        self._set_price(symbol, price)

    def _set_price(self, symbol: bytes, price: int | None) -> None:
        """Make ``price`` the symbol's last price in the table and tell the listeners."""
        if price is None:
            self.priced.discard(symbol)
        else:
            self.priced.add(symbol)
        try:
            self.table.set_last_price(symbol, price)
        except TableFullError as error:
            # no room for the symbol: its orders are rejected CAPACITY_EXHAUSTED
            self._does_not_fit("instrument", symbol, error)
        for listener in self.listeners:
            listener.price_changed(symbol, price)

    def _queue_halts(self, pipe: Reads, keys: list[HaltKey]) -> None:
        for scope, target in keys:
            pipe.hgetall(halt_key(scope, target))
            pipe.pttl(halt_key(scope, target))

    def _apply_halts(self, keys: list[HaltKey], replies: list[Any],
                     generations: list[int]) -> None:
        now_ms = time.time_ns() // 1_000_000
        for n, (scope, target) in enumerate(keys):
            if self.halts.generation((scope, target)) != generations[n]:
                continue  # a local Halt RPC overtook this read; its event follows
            fields, ttl_ms = replies[2 * n], replies[2 * n + 1]
            if not fields:
                self.halts.lift(scope, target)
                continue
            record, error = halt_from_redis(scope, target, fields, ttl_ms, now_ms)
            if error is not None:
                self._invalid("halt", halt_key(scope, target), error)
            self.halts.apply(record)

    def _does_not_fit(self, what: str, name: bytes, error: TableFullError) -> None:
        """Log an entity that does not fit, once while it does not (fails closed alone)."""
        kind = what if what in ("instrument", "group") else "account"
        key = (kind, name)
        if key in self.over_capacity and self.over_capacity[key] == error.capacity:
            return
        self.over_capacity[key] = error.capacity
        log.error("%s %s does not fit in the table (%s); its orders are rejected "
                  "CAPACITY_EXHAUSTED until a server with room loads it", what,
                  name.decode(errors="replace"), error)

    def _invalid(self, what: str, name: bytes, error: Exception) -> None:
        self.stats.invalid_entities += 1
        log.error("%s %s is invalid in Redis, its orders are rejected: %s", what,
                  name.decode(errors="replace"), error)


class NodeLost(Exception):
    """The pub/sub of one cluster primary failed: its notifications stopped."""

    def __init__(self, name: str, error: BaseException) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        self.error = error


class MergedPubSub:
    """The messages of several pub/subs (one per cluster primary, by host:port), read as one.

    A task per pub/sub reads into one queue; a link failure of one of them
    (its primary died) is raised by :meth:`get_message` as :class:`NodeLost`,
    and the others read on; any other failure is raised as it is.
    """

    def __init__(self, pubsubs: dict[str, aioredis.client.PubSub]) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        for name, pubsub in pubsubs.items():
            self.add(name, pubsub)

    def add(self, name: str, pubsub: aioredis.client.PubSub) -> None:
        """Read ``pubsub`` (of the primary ``name``) too."""
        self._readers.append(asyncio.create_task(self._read(name, pubsub),
                                                 name=f"pretrade-sync-pubsub-{name}"))

    async def _read(self, name: str, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self._queue.put_nowait(message)
        except LINK_ERRORS as error:  # told to the follower: that primary's slots are lost
            self._queue.put_nowait(NodeLost(name, error))
        except Exception as error:  # told to the follower, which resyncs
            self._queue.put_nowait(error)

    async def get_message(self, ignore_subscribe_messages: bool = True,
                          timeout: float = 0.0) -> dict[str, Any] | None:
        try:
            item = (self._queue.get_nowait() if timeout <= 0
                    else await asyncio.wait_for(self._queue.get(), timeout))
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()


class LoadProgress:
    """Progress of a bulk load: a bar with a rate on a terminal, log lines otherwise."""

    def __init__(self, total: int, every_seconds: float = 1.0) -> None:
        self.total = total
        self.done = 0
        self.every = every_seconds
        self.started = self.last_report = time.perf_counter()
        self.terminal = sys.stderr.isatty()

    def advance(self, entities: int) -> None:
        self.done += entities
        now = time.perf_counter()
        if now - self.last_report >= self.every:
            self.last_report = now
            self._report(now)

    def _report(self, now: float, final: bool = False) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        if self.terminal:
            width = 30
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\rloading [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done:,}/{self.total:,} entities, {rate:,.0f}/s"
                             + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log.info("loading: %d/%d entities, %.0f/s", self.done, self.total, rate)

    def finish(self) -> None:
        if self.total >= 10_000 or self.terminal and self.done:
            self._report(time.perf_counter(), final=True)


def _in_ranges(slot: int, ranges: list[tuple[int, int]]) -> bool:
    return any(first <= slot <= last for first, last in ranges)


def _owners(topology: list[tuple[int, int, str]]) -> dict[int, str]:
    """Slot -> its primary's host:port, from a slot map."""
    return {slot: owner for first, last, owner in topology for slot in range(first, last + 1)}


def _split(dirty: Dirty, size: int) -> Iterator[Dirty]:
    """Cut a Dirty set into batches of at most ``size`` entities."""
    batch = Dirty(restricted=dirty.restricted)
    for attribute in ("lots", "limits", "balances", "locates", "instruments", "prices",
                      "groups", "account_groups", "halts"):
        for item in getattr(dirty, attribute):
            getattr(batch, attribute).add(item)
            if len(batch) >= size:
                yield batch
                batch = Dirty()
    if len(batch):
        yield batch


async def _scan_hash(pipe: Pipeline, key: bytes) -> object:
    """HGETALL in HSCAN chunks (on a WATCHing pipeline); an error reply as the exception."""
    fields: dict[bytes, bytes] = {}
    cursor = 0
    try:
        while True:
            cursor, chunk = await pipe.hscan(key, cursor, count=LARGE_READ_CHUNK)
            fields.update(cast(dict[bytes, bytes], chunk))
            if cursor == 0:
                return fields
    except ResponseError as error:  # WRONGTYPE...: the account's state is invalid
        return error


def _lot_hash(reply: object) -> LotHash:
    """A lot hash's reply: a dict, or the flat array of :meth:`Reads.hgetall_flat`."""
    if isinstance(reply, list):
        return reply
    return _hash(reply)


def _queue_mark(reads: Reads, mark: bytes) -> None:
    """The SET of a lot-log read's mark, in the read's own transaction."""
    reads.command(mark, "SET", mark, b"1", "PX", MARK_TTL_MS)


def _version(reply: object) -> int:
    """A snapshot's ``GET version:{ACC}``; StateError when unreadable."""
    if isinstance(reply, Exception):
        raise StateError(f"version: {reply}")
    return parse_state_version(cast(bytes | None, reply))


def _hash(reply: object) -> dict[bytes, bytes]:
    """A HGETALL reply, or StateError when Redis answered with an error (WRONGTYPE...)."""
    if isinstance(reply, Exception):
        raise StateError(f"unreadable: {reply}")
    if not isinstance(reply, dict):
        raise StateError(f"unexpected reply {type(reply).__name__}")
    return reply


def _has_flags(current: str, required: str) -> bool:
    # "A" is an alias for "g$lshzxetd" (every class); K/E select the channel.
    expanded = current.replace("A", "g$lshzxetd")
    return all(flag in expanded for flag in required)


def _merge_flags(current: str, required: str) -> str:
    return current + "".join(flag for flag in required if flag not in current.replace(
        "A", "g$lshzxetd"))


def _overlaps(spans: list[tuple[int, int]], ranges: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """The parts of ``spans`` (slot ranges, inclusive) inside ``ranges``."""
    return [(max(first, low), min(last, high)) for first, last in spans
            for low, high in ranges if max(first, low) <= min(last, high)]


async def _close_quietly(pubsub: aioredis.client.PubSub | aioredis.Redis) -> None:
    try:
        await pubsub.aclose()
    except LINK_ERRORS as error:
        log.debug("closing a broken pub/sub connection: %s", error)
