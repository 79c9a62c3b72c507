"""Decided orders made durable in Redis, so a restarted server replays them.

Every decision the engine stores under an order id (approved or rejected) is
written to ``orders:{ACC}`` (field: order id, value: the byte 0x02 and the
protobuf message ``pretrade.v1.DecidedOrderRecord``, proto/pretrade/v1/records.proto)
before the client is answered, when ``durable_decisions`` is on. The record
is length-delimited protobuf, so no value a client may send can break it;
the text records of the first version (``1;SYMBOL;...``) are still read. A restarted
server puts them back into its table before it trusts the table (see
``RedisSync.full_load``): approved orders work again and are then reduced by
their fills and cancels, and a re-sent order id gets its original decision.

Writes are group-committed: every decision made while a write is in flight
goes into the next pipeline, so the cost is one round trip per batch, not per
order, and one multi-field HSET per account in it. On a Redis Cluster the
batch is one pipeline per primary, sent together, each on a plain client of
its own: a primary that is lost holds back (and has retried) only the records
of its own slots, and the callers of every other account are answered within
the lag bound (the cluster client closes all its connections and re-reads the
slot map after any connection error, so it carries only the retries).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from pretrade.engine.errors import Unavailable
from pretrade.engine.fixedpoint import fits_int64
from pretrade.state.connection import node_client
from pretrade.state.schema import StateError, orders_key, parse_int64
from pretrade.v1 import records_pb2

log = logging.getLogger("pretrade.orders")

#: The first byte of a record: 0x02 and a DecidedOrderRecord.
FORMAT = b"\x02"
#: Records of the first version were ``;``-joined text starting ``1;``.
LEGACY_FORMAT = b"1;"
#: Pause after a failed write, doubled per failure up to the maximum (short, as the
#: audit writer's: once Redis is back, the queued decisions are durable soon after).
RETRY_SECONDS = 0.1
RETRY_MAX_SECONDS = 0.5
#: What a write may fail with: Redis refused or did not answer, or a cluster slot
#: has no primary known (one failed).
WRITE_ERRORS = (RedisError, RedisClusterException, OSError)
#: Most decided orders kept for a retry while Redis refuses them (the table
#: goes stale within max_sync_lag_ms, so few orders are decided meanwhile).
MAX_RETRIED = 100_000


class DecidedOrder(NamedTuple):
    """What the table stores for one decided order id (a tuple: one is built per
    decided order before its answer, and a frozen dataclass cost 1.7 µs of it)."""

    account: bytes
    order_id: bytes
    symbol: bytes
    side: int
    order_type: int
    quantity: int
    price: int
    valuation_price: int
    notional: int
    venue: bytes
    counterparty: bytes
    approved: bool
    rejections: tuple[tuple[int, int, int], ...]
    time_in_force: int = 0
    expire_at_unix_ms: int = 0
    #: When the approved order stops counting (Unix ms); 0: at its fill or cancel.
    working_until_unix_ms: int = 0
    #: A replacement (ReplaceOrder): the order id it replaced, and the units its
    #: chain filled before that original (OrderRecord.carried); b"" and 0 for an order.
    replaces: bytes = b""
    carried: int = 0
    #: Order.group_id of a leg of an OCO group (a replacement keeps its original's).
    group: bytes = b""

    def encode(self, decided_at_unix_ms: int = 0) -> bytes:
        """The value of this order's field in ``orders:{ACC}``: 0x02 and its record."""
        record = records_pb2.DecidedOrderRecord(
            symbol=self.symbol.decode("ascii"), side=self.side,  # type: ignore[arg-type]
            order_type=self.order_type,  # type: ignore[arg-type]
            quantity=self.quantity, price=self.price, valuation_price=self.valuation_price,
            notional=self.notional, venue=self.venue, counterparty=self.counterparty,
            approved=self.approved, decided_at_unix_ms=decided_at_unix_ms)
        # The fields most orders leave at their defaults are set only when not:
        # passing them to the constructor cost a third of the encoding.
        if self.time_in_force:
            record.time_in_force = self.time_in_force  # type: ignore[assignment]
        if self.expire_at_unix_ms:
            record.expire_at_unix_ms = self.expire_at_unix_ms
        if self.working_until_unix_ms:
            record.working_until_unix_ms = self.working_until_unix_ms
        if self.replaces:
            record.replaces = self.replaces
        if self.carried:
            record.carried = self.carried
        if self.group:
            record.group_id = self.group
        if self.rejections:
            add = record.rejections.add
            for code, observed, limit in self.rejections:
                add(code=code, observed=observed, limit=limit)
        return FORMAT + record.SerializeToString()


def decode(account: bytes, order_id: bytes, raw: bytes) -> DecidedOrder:
    """Parse one ``orders:{ACC}`` field; StateError when it is not a decided order."""
    if raw.startswith(FORMAT):
        return _decode_record(account, order_id, raw[len(FORMAT):])
    if raw.startswith(LEGACY_FORMAT):
        return _decode_legacy(account, order_id, raw)
    raise StateError(f"order {order_id!r}: not a decided order record")


def _decode_record(account: bytes, order_id: bytes, payload: bytes) -> DecidedOrder:
    record = records_pb2.DecidedOrderRecord()
    try:
        record.ParseFromString(payload)
    except DecodeError as error:
        raise StateError(f"order {order_id!r}: unreadable record ({error})") from None
    symbol = record.symbol.encode("utf-8")
    if not symbol:
        raise StateError(f"order {order_id!r}: a record without a symbol")
    if record.quantity <= 0 and record.approved:
        raise StateError(f"order {order_id!r}: approved with quantity {record.quantity}")
    if record.carried < 0 or (record.carried and not record.replaces) \
            or (record.approved and record.carried >= record.quantity):
        raise StateError(f"order {order_id!r}: carried fills {record.carried} do not fit "
                         f"quantity {record.quantity}")
    return DecidedOrder(account, order_id, symbol, record.side, record.order_type,
                        record.quantity, record.price, record.valuation_price, record.notional,
                        record.venue, record.counterparty, record.approved,
                        tuple((r.code, r.observed, r.limit) for r in record.rejections),
                        record.time_in_force, record.expire_at_unix_ms,
                        record.working_until_unix_ms, record.replaces, record.carried,
                        record.group_id)


def _decode_legacy(account: bytes, order_id: bytes, raw: bytes) -> DecidedOrder:
    # Version 1: ``1;SYMBOL;side;type;qty;price;valuation;notional;venue;counterparty;A|R;
    # c:o:l,...``. A venue holding ";" made such a record unreadable: it fails
    # its account closed, as any unreadable record does.
    parts = raw.split(b";")
    if len(parts) != 12 or parts[10] not in (b"A", b"R"):
        raise StateError(f"order {order_id!r}: not a version-1 decided order")
    numbers = [parse_int64(part, f"order {order_id!r}") for part in parts[2:8]]
    rejections = []
    for item in filter(None, parts[11].split(b",")):
        fields = item.split(b":")
        if len(fields) != 3:
            raise StateError(f"order {order_id!r}: a rejection is not code:observed:limit")
        code, observed, limit = (parse_int64(x, f"order {order_id!r} rejection")
                                 for x in fields)
        rejections.append((code, observed, limit))
    if not all(fits_int64(n) for n in numbers):
        raise StateError(f"order {order_id!r}: a figure does not fit in int64")
    return DecidedOrder(account, order_id, parts[1], numbers[0], numbers[1], numbers[2],
                        numbers[3], numbers[4], numbers[5], parts[8], parts[9],
                        parts[10] == b"A", tuple(rejections))


class _Commit:
    """One caller's orders: answered once all of them are written, or at the first failure."""

    __slots__ = ("done", "left")

    def __init__(self, done: asyncio.Future[None], left: int) -> None:
        self.done = done
        self.left = left

    def written(self, count: int) -> None:
        self.left -= count
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)

    def failed(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


#: Queued orders, each with the caller waiting for it (None: a retry nobody waits on).
_Queue = list[tuple[DecidedOrder, _Commit | None]]
#: The queue written through the client as given (standalone Redis; on a cluster:
#: the retries, and orders of a slot with no primary known, routed by the slot map
#: as it changes).
ROUTED = ""


class Journal:
    """Group-committed writes of decided orders to Redis.

    One queue and one writing loop per Redis server (standalone: one; a
    cluster: one per primary, by the slot map the client knows when the
    order is queued, written on a plain client of that primary), so a
    primary that does not answer holds back only its own slots' records.
    A write a primary refuses or redirects (MOVED, ASK) is tried once more
    through the cluster client, which follows the slot map; what still
    fails is retried there, in the background.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.cluster = isinstance(client, aioredis.RedisCluster)
        self.written = 0
        self.failed = 0
        #: Told of every batch once Redis has it (the table marks them durable).
        self.on_durable: Callable[[list[DecidedOrder]], None] | None = None
        self._queues: dict[str, _Queue] = {}
        self._flushing: set[str] = set()
        #: A plain client per primary written to (cluster only), by ``host:port``.
        self._nodes: dict[str, aioredis.Redis] = {}

    async def commit(self, orders: Iterable[DecidedOrder], timeout: float) -> None:
        """Return once ``orders`` are in Redis; raise Unavailable when they cannot be.

        Waits at most ``timeout`` seconds (the caller bounds it by the sync's
        lag bound and its call's deadline), then raises
        :class:`~pretrade.engine.errors.Unavailable`. The write itself goes
        on: the decision becomes durable when Redis takes it, and a re-sent
        order id replays it.
        """
        batch = list(orders)
        if not batch:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        # A failure may come after the caller stopped waiting: retrieve it, so
        # asyncio does not report it as never retrieved.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        commit = _Commit(done, len(batch))
        if self.cluster:
            for order in batch:
                self._queue(self._server_of(order), [(order, commit)], loop)
        else:
            self._queue(ROUTED, [(order, commit) for order in batch], loop)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=max(timeout, 0.0))
        except TimeoutError:
            raise Unavailable(
                f"the decision could not be made durable within {timeout * 1000:.0f} ms "
                "(Redis holds writes back); it stands and will be written when Redis takes "
                "it: re-send the same order id, it replays") from None

    def _queue(self, server: str, entries: _Queue, loop: asyncio.AbstractEventLoop) -> None:
        self._queues.setdefault(server, []).extend(entries)
        if server not in self._flushing:
            self._flushing.add(server)
            loop.create_task(self._flush(server))

    def _server_of(self, order: DecidedOrder) -> str:
        """The primary (host:port) an order's record goes to; "" on standalone Redis."""
        if not self.cluster:
            return ROUTED
        cluster: Any = self.client
        try:
            node = cluster.get_node_from_key(orders_key(order.account))
        except WRITE_ERRORS:
            return ROUTED  # no primary known for the slot now: routed when written
        if node.name not in self._nodes:
            self._nodes[node.name] = node_client(self.client, node.host, int(node.port))
        return str(node.name)

    async def aclose(self) -> None:
        """Close the primaries' plain clients (the client given is the caller's)."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose()

    async def _write(self, server: str, pending: list[DecidedOrder]) -> None:
        # Writing a decided order twice writes the same bytes: one retry is
        # safe, and saves the first batch after Redis came back from failing
        # on a connection from before, or after a primary's slots moved (a
        # timeout is not retried: its batch may still be in flight).
        now_ms = time.time_ns() // 1_000_000
        # One multi-field HSET per account, not one command per order: a batch of
        # 1,000 orders of a few accounts is a few commands and a few replies, which
        # is most of what the round costs the server (packing and parsing replies).
        # The same order id twice in a round keeps its last record, as HSETs in turn would.
        by_key: dict[bytes, dict[bytes, bytes]] = {}
        for order in pending:
            by_key.setdefault(orders_key(order.account), {})[order.order_id] = \
                order.encode(now_ms)
        target = self._nodes.get(server, self.client)
        for attempt in (1, 2):
            try:
                async with target.pipeline(transaction=False) as pipe:
                    for key, fields in by_key.items():
                        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                    await pipe.execute()
                return
            except (RedisConnectionError, MovedError, AskError) as error:
                if target is not self.client:
                    # Not this primary's any more, or gone: made anew if it is named again.
                    self._nodes.pop(server, None)
                    await target.aclose()
                if attempt == 2:
                    raise
                log.warning("retrying %d durable decisions once: %s", len(pending), error)
                target = self.client

    async def _flush(self, server: str) -> None:
        # One pipeline per round: whatever queued while the last one was out
        # rides the next, so throughput does not pay a round trip per order.
        # A batch that fails stays queued and is retried (with backoff) until
        # Redis takes it: its decisions stand in the table (the callers were
        # told UNAVAILABLE, and a re-send replays them), so their records must
        # reach Redis too, or a restart would forget reservations.
        delay = RETRY_SECONDS
        queue = self._queues.setdefault(server, [])
        try:
            while queue:
                pending = queue[:]
                del queue[:]
                try:
                    await self._write(server, [order for order, _ in pending])
                except WRITE_ERRORS as error:
                    self.failed += len(pending)
                    log.error("could not make %d decisions durable (%s); retrying in %.1f s",
                              len(pending), error, delay)
                    failure = Unavailable(f"the decision could not be made durable: {error}; "
                                          "re-send the same order id, it replays")
                    for _, commit in pending:
                        if commit is not None:
                            commit.failed(failure)
                    # Retried for the record's sake: nobody waits on it now. A
                    # primary's are retried routed by the slot map, which moves
                    # its slots to the replica promoted in its place.
                    retried: _Queue = [(order, None) for order, _ in pending[-MAX_RETRIED:]]
                    if len(pending) > MAX_RETRIED:
                        log.critical("%d durable decisions dropped: more than %d wait for "
                                     "Redis", len(pending) - MAX_RETRIED, MAX_RETRIED)
                    if server != ROUTED:
                        self._queue(ROUTED, retried, asyncio.get_running_loop())
                        continue
                    queue[:0] = retried
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                delay = RETRY_SECONDS
                self.written += len(pending)
                if self.on_durable is not None:
                    self.on_durable([order for order, _ in pending])
                # Runs of one caller's orders are told at once.
                last: _Commit | None = None
                run = 0
                for _, commit in pending:
                    if commit is not last:
                        if last is not None:
                            last.written(run)
                        last, run = commit, 0
                    run += 1
                if last is not None:
                    last.written(run)
        finally:
            self._flushing.discard(server)

    @property
    def pending(self) -> int:
        """Decided orders waiting for Redis (queued, or retried after a failure)."""
        return sum(len(queue) for queue in self._queues.values())
