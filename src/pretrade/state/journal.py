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
order, and one multi-field HSET per account in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from pretrade.engine.errors import Unavailable
from pretrade.engine.fixedpoint import fits_int64
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
                        record.working_until_unix_ms, record.replaces, record.carried)


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


class Journal:
    """Group-committed writes of decided orders to Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.written = 0
        self.failed = 0
        #: Told of every batch once Redis has it (the table marks them durable).
        self.on_durable: Callable[[list[DecidedOrder]], None] | None = None
        self._pending: list[DecidedOrder] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing = False

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
        self._pending.extend(batch)
        self._waiters.append(done)
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=max(timeout, 0.0))
        except TimeoutError:
            raise Unavailable(
                f"the decision could not be made durable within {timeout * 1000:.0f} ms "
                "(Redis holds writes back); it stands and will be written when Redis takes "
                "it: re-send the same order id, it replays") from None

    async def _write(self, pending: list[DecidedOrder]) -> None:
        # Writing a decided order twice writes the same bytes: one retry is
        # safe, and saves the first batch after Redis came back from failing
        # on a connection from before (a timeout is not retried: its batch
        # may still be in flight).
        now_ms = time.time_ns() // 1_000_000
        # One multi-field HSET per account, not one command per order: a batch of
        # 1,000 orders of a few accounts is a few commands and a few replies, which
        # is most of what the round costs the server (packing and parsing replies).
        # The same order id twice in a round keeps its last record, as HSETs in turn would.
        by_key: dict[bytes, dict[bytes, bytes]] = {}
        for order in pending:
            by_key.setdefault(orders_key(order.account), {})[order.order_id] = \
                order.encode(now_ms)
        for attempt in (1, 2):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, fields in by_key.items():
                        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                    await pipe.execute()
                return
            except RedisConnectionError as error:
                if attempt == 2:
                    raise
                log.warning("retrying %d durable decisions once: %s", len(pending), error)

    async def _flush(self) -> None:
        # One pipeline per round: whatever queued while the last one was out
        # rides the next, so throughput does not pay a round trip per order.
        # A batch that fails stays queued and is retried (with backoff) until
        # Redis takes it: its decisions stand in the table (the callers were
        # told UNAVAILABLE, and a re-send replays them), so their records must
        # reach Redis too, or a restart would forget reservations.
        delay = RETRY_SECONDS
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                waiters, self._waiters = self._waiters, []
                try:
                    await self._write(pending)
                except (RedisError, OSError) as error:
                    self.failed += len(pending)
                    log.error("could not make %d decisions durable (%s); retrying in %.1f s",
                              len(pending), error, delay)
                    failure = Unavailable(f"the decision could not be made durable: {error}; "
                                          "re-send the same order id, it replays")
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(failure)
                    self._pending[:0] = pending[-MAX_RETRIED:]
                    if len(pending) > MAX_RETRIED:
                        log.critical("%d durable decisions dropped: more than %d wait for "
                                     "Redis", len(pending) - MAX_RETRIED, MAX_RETRIED)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                delay = RETRY_SECONDS
                self.written += len(pending)
                if self.on_durable is not None:
                    self.on_durable(pending)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._flushing = False

    @property
    def pending(self) -> int:
        """Decided orders waiting for Redis (queued, or retried after a failure)."""
        return len(self._pending)
