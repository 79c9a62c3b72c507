"""The audit trail: every decision and every halt change, in the Redis stream ``audit``.

Off the hot path
----------------
:meth:`AuditTrail.decision` and :meth:`AuditTrail.halt` only append a small
tuple to a bounded in-memory queue: no await, no encoding, O(1). The
servicer keeps a reference to the request message; nothing is copied. A
background task (:meth:`AuditTrail.run`) takes up to :data:`BATCH_SIZE`
entries at a time, encodes them and writes them in one pipeline of
``XADD audit MAXLEN ~ <max_len> * field value ...``. While a batch is in
flight new entries queue up behind it, so under load the batches grow and
the cost per entry falls (group commit).

A slow or unreachable Redis never blocks a decision. Entries leave the queue
only once Redis has acknowledged their batch; a failed write is retried after
a pause (so an entry is written at least once: a batch whose reply was lost
may be written twice). When the queue is full, new entries are dropped and
counted (:attr:`AuditStats.dropped`, and ``audit_dropped`` in GetStatus); a
WARNING is logged at the first drop and then at most every
:data:`DROP_LOG_SECONDS` with the count so far.

:meth:`AuditTrail.close` writes what is still queued, within a time bound;
``Gateway.stop`` calls it after the gRPC server has finished its in-flight
calls, so every decision answered before a shutdown is in the stream.

Entry format
------------
Every value is text (UTF-8). Common fields: ``event`` (``decision`` or
``halt``), ``ts`` (Unix epoch milliseconds when the gateway decided or
applied it; the stream id is when Redis received the batch, a few
milliseconds later), ``pid`` (the server process) and ``principal`` (the
name of the authenticated caller whose call made the entry, from
:func:`pretrade.access.current_principal`; empty with ``auth = "none"`` and
for changes seen in Redis).

``decision``: ``order_id``, ``account``, ``symbol``, ``side`` (``BUY``,
``SELL``, ``SELL_SHORT``), ``order_type`` (``LIMIT``, ``MARKET``),
``quantity`` (units), ``price`` (1/10,000), ``venue``, ``counterparty``,
``verdict`` (``APPROVED`` or ``REJECTED``), ``codes`` (the reject codes
without ``REJECT_CODE_``, comma-separated, empty when approved),
``notional`` (1/10,000), ``latency_ns`` and ``replayed`` (``1`` when the
order id was decided before and this is that decision replayed, else
``0``). Text fields are cut to :data:`MAX_TEXT` characters (only a malformed
order in a batch can have longer ones).

``halt``: ``source`` (``rpc``: the Halt RPC; ``breaker``: an automatic halt
of the circuit breakers; ``redis``: a change this process did not make but
saw in Redis, such as an operator's ``HSET``/``DEL`` or an expired TTL),
``scope`` (``GLOBAL``, ``ACCOUNT``, ``SYMBOL``), ``target`` (account or
symbol, empty for GLOBAL), ``mode`` (``HALTED``, ``REDUCE_ONLY`` or
``ACTIVE`` for a lift), ``reason``, ``by`` (who; empty when a lift was seen
in Redis) and ``expires_at`` (Unix epoch milliseconds, ``0`` for never).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pretrade.access import current_principal
from pretrade.v1 import risk_pb2 as pb

if TYPE_CHECKING:
    from pretrade.halts import HaltBook

log = logging.getLogger("pretrade.audit")

#: The Redis stream of audit entries.
AUDIT_STREAM = b"audit"
#: Entries per pipelined write.
BATCH_SIZE = 1_000
#: Longest text kept in an entry's field (characters).
MAX_TEXT = 256
#: At most one "dropping audit entries" warning per this many seconds.
DROP_LOG_SECONDS = 10.0
#: The longest a batch's write may take before it counts as failed (and is retried).
WRITE_TIMEOUT_SECONDS = 10.0
#: Pause after a failed write, doubled per failure up to RETRY_MAX_SECONDS.
RETRY_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0

DECISION, HALT = "decision", "halt"
SOURCE_RPC, SOURCE_BREAKER, SOURCE_REDIS = "rpc", "breaker", "redis"

_SIDES: dict[int, str] = {pb.SIDE_BUY: "BUY", pb.SIDE_SELL: "SELL",
                          pb.SIDE_SELL_SHORT: "SELL_SHORT"}
_ORDER_TYPES: dict[int, str] = {pb.ORDER_TYPE_LIMIT: "LIMIT", pb.ORDER_TYPE_MARKET: "MARKET"}
_SCOPES: dict[int, str] = {pb.HALT_SCOPE_GLOBAL: "GLOBAL", pb.HALT_SCOPE_ACCOUNT: "ACCOUNT",
                           pb.HALT_SCOPE_SYMBOL: "SYMBOL"}
_MODES: dict[int, str] = {0: "ACTIVE", pb.HALT_MODE_ACTIVE: "ACTIVE",
                          pb.HALT_MODE_REDUCE_ONLY: "REDUCE_ONLY", pb.HALT_MODE_HALTED: "HALTED"}
_CODES: dict[int, str] = {number: name.removeprefix("REJECT_CODE_")
                          for name, number in pb.RejectCode.items()}


def _name(names: dict[int, str], value: int) -> str:
    # A number the contract does not name (a fuzzed enum) is kept as a number.
    return names.get(value) or str(value)


@dataclass
class AuditStats:
    """What the audit writer did, for GetStatus."""

    written: int = 0
    dropped: int = 0
    write_errors: int = 0


class AuditTrail:
    """A bounded queue of audit entries and the task that writes them to Redis.

    Parameters
    ----------
    client
        An asyncio Redis client. It may (and for speed should) have no socket
        timeout: each batch's write is bounded by ``write_timeout`` here, one
        timer per batch rather than redis-py's one per reply.
    max_len
        Keep about this many entries in the stream (``XADD MAXLEN ~``).
    queue_size
        Entries held in memory while Redis is slow or away; past it, new
        entries are dropped and counted.
    stream
        The stream's key.
    write_timeout
        Seconds a batch's write may take before it counts as failed.
    """

    def __init__(self, client: aioredis.Redis, *, max_len: int = 1_000_000,
                 queue_size: int = 100_000, stream: bytes = AUDIT_STREAM,
                 write_timeout: float = WRITE_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.write_timeout = write_timeout
        self.max_len = max_len
        self.queue_size = queue_size
        self.stream = stream
        self.stats = AuditStats()
        self.pid = str(os.getpid())
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = -DROP_LOG_SECONDS

    @property
    def pending(self) -> int:
        """Entries queued and not yet acknowledged by Redis."""
        return len(self._queue)

    # -- THE HOT PATH: append only --

    def decision(self, order: pb.Order, approved: bool, rejections: Any, latency_ns: int,
                 replayed: bool, notional: int) -> None:
        """Queue one decision; ``rejections`` is a sequence of ``(code, observed, limit)``."""
        self._put((DECISION, time.time_ns(), current_principal(), order, approved, rejections,
                   latency_ns, replayed, notional))

    def halt(self, source: str, scope: int, target: bytes, mode: int, reason: str, by: str,
             expires_at_ms: int = 0) -> None:
        """Queue one halt change (``mode`` ACTIVE or 0 for a lift)."""
        self._put((HALT, time.time_ns(), current_principal(), source, scope, target, mode,
                   reason, by, expires_at_ms))

    def _put(self, entry: tuple[Any, ...]) -> None:
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._drop()
            return
        if not queue:
            self._wake.set()
        queue.append(entry)

    def _drop(self) -> None:
        self.stats.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_SECONDS:
            self._last_drop_log = now
            log.warning("audit queue full (%d entries, Redis slow or unreachable): dropping "
                        "audit entries, %d dropped so far", self.queue_size, self.stats.dropped)

    # -- THE WRITER --

    def start(self) -> None:
        """Start the background writer on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="pretrade-audit")

    async def run(self) -> None:
        """Write queued entries until :meth:`close`; retry failed batches."""
        delay = RETRY_SECONDS
        failing_since = 0.0
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._write_batch()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self.stats.write_errors += 1
                now = time.monotonic()
                if failing_since == 0.0 or now - failing_since >= DROP_LOG_SECONDS:
                    failing_since = now
                    log.error("could not write %d audit entries to Redis (%s); retrying",
                              min(len(self._queue), BATCH_SIZE), error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            except Exception:  # a bug, not Redis: retrying the batch would loop forever
                lost = min(len(self._queue), BATCH_SIZE)
                for _ in range(lost):
                    self._queue.popleft()
                self.stats.dropped += lost
                log.exception("could not encode %d audit entries; they are dropped", lost)
                continue
            if failing_since:
                log.info("audit entries are written to Redis again")
            delay, failing_since = RETRY_SECONDS, 0.0

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._queue, BATCH_SIZE))
        # A TimeoutError is an OSError: run() counts it and retries the batch.
        async with asyncio.timeout(self.write_timeout), \
                self.client.pipeline(transaction=False) as pipe:
            head = ("XADD", self.stream, "MAXLEN", "~", self.max_len, "*")
            for entry in batch:
                pipe.execute_command(*head, *encode(entry, self.pid))
            await pipe.execute()
        # Only now: an entry leaves the queue once Redis has it.
        for _ in batch:
            self._queue.popleft()
        self.stats.written += len(batch)

    async def close(self, timeout: float) -> None:
        """Write what is queued (at most ``timeout`` seconds), then stop the writer."""
        self._closing = True
        self._wake.set()
        queued = len(self._queue)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            log.error("shutdown: %d audit entries could not be written to Redis within "
                      "%.1f s and are lost", len(self._queue), timeout)
        else:
            log.info("audit trail flushed: the last %d queued entries written (%d in all, "
                     "%d dropped)", queued, self.stats.written, self.stats.dropped)


def encode(entry: tuple[Any, ...], pid: str) -> list[Any]:
    """The stream fields of one queued entry, as a flat ``field, value, ...`` list."""
    if entry[0] == DECISION:
        _, at_ns, principal, order, approved, rejections, latency_ns, replayed, notional = entry
        return [
            "event", DECISION, "ts", at_ns // 1_000_000, "pid", pid,
            "principal", principal.name if principal is not None else "",
            "order_id", order.order_id[:MAX_TEXT], "account", order.account_id[:MAX_TEXT],
            "symbol", order.symbol[:MAX_TEXT], "side", _name(_SIDES, order.side),
            "order_type", _name(_ORDER_TYPES, order.order_type),
            "quantity", order.quantity, "price", order.price,
            "venue", order.venue[:MAX_TEXT], "counterparty", order.counterparty[:MAX_TEXT],
            "verdict", "APPROVED" if approved else "REJECTED",
            "codes", ",".join([_name(_CODES, r[0]) for r in rejections]),
            "notional", notional, "latency_ns", latency_ns, "replayed", 1 if replayed else 0,
        ]
    _, at_ns, principal, source, scope, target, mode, reason, by, expires_at_ms = entry
    return [
        "event", HALT, "ts", at_ns // 1_000_000, "pid", pid,
        "principal", principal.name if principal is not None else "", "source", source,
        "scope", _name(_SCOPES, scope), "target", target, "mode", _name(_MODES, mode),
        "reason", reason[:MAX_TEXT * 2], "by", by[:MAX_TEXT], "expires_at", expires_at_ms,
    ]


class HaltObserver:
    """Audits the halt changes this process sees in Redis but did not make.

    Registered as a listener of the :class:`~pretrade.portfolio.ObservedHaltBook`,
    it hears every change the book applies. A change this process made
    (Halt RPC, breaker) bumped the book's local generation first, and is
    audited where it was made; a re-read that finds what the book already
    held is an echo. What is left came from elsewhere: an operator writing
    ``halt:*`` keys, another server process, an expired TTL. The halts found
    by the first full load are the state at start, not changes: they are
    remembered but not audited.
    """

    def __init__(self, audit: AuditTrail, book: HaltBook, loaded: asyncio.Event) -> None:
        self.audit = audit
        self.book = book
        self.loaded = loaded
        # (scope, target) -> (local generation, mode, reason) last heard
        self._known: dict[tuple[int, bytes], tuple[int, int, str]] = {}

    def halt_changed(self, scope: int, target: bytes, mode: int, reason: str) -> None:
        key = (scope, target)
        generation = self.book.generation(key)
        known_generation, known_mode, known_reason = self._known.get(key, (0, 0, ""))
        self._known[key] = (generation, mode, reason)
        if generation != known_generation or (mode, reason) == (known_mode, known_reason):
            return
        if not self.loaded.is_set():
            return
        record = self.book.current(scope, target)
        self.audit.halt(SOURCE_REDIS, scope, target, mode, reason,
                        record.halted_by if record else "",
                        record.expires_at_ms if record else 0)


# -- READING THE TRAIL (the `pretrade audit` command) --

#: How much earlier than an entry's ``ts`` Redis may have received it: the
#: stream id of an entry written late (Redis was away) is later than its
#: ``ts``, so a time range reads ids this much wider and filters on ``ts``.
WRITE_DELAY_SLACK_MS = 60_000
_PAGE = 1_000
_INTEGER_FIELDS = frozenset({"ts", "pid", "quantity", "price", "notional", "latency_ns",
                             "expires_at"})


@dataclass(frozen=True)
class AuditQuery:
    """Which entries ``pretrade audit`` shows: every given condition must hold.

    ``account`` matches a decision's account and a halt of that account;
    ``since_ms`` and ``until_ms`` bound ``ts`` (Unix ms, inclusive);
    ``limit`` keeps the newest matches (0: all).
    """

    account: str | None = None
    order_id: str | None = None
    event: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100

    def matches(self, fields: dict[str, str]) -> bool:
        if self.event is not None and fields.get("event") != self.event:
            return False
        if self.order_id is not None and (fields.get("event") != DECISION
                                          or fields.get("order_id") != self.order_id):
            return False
        if self.account is not None:
            if fields.get("event") == DECISION:
                if fields.get("account") != self.account:
                    return False
            elif fields.get("scope") != "ACCOUNT" or fields.get("target") != self.account:
                return False
        if self.since_ms is not None or self.until_ms is not None:
            try:
                at = int(fields.get("ts", ""))
            except ValueError:
                return False
            if self.since_ms is not None and at < self.since_ms:
                return False
            if self.until_ms is not None and at > self.until_ms:
                return False
        return True


def read_audit(client: Any, query: AuditQuery,
               stream: bytes = AUDIT_STREAM) -> list[tuple[str, dict[str, str]]]:
    """The entries matching ``query``, oldest first, as ``(stream id, fields)``.

    ``client`` is a synchronous ``redis.Redis``. Reads newest first with
    ``XREVRANGE`` in pages, from the time range's end, until ``limit``
    matches are found or the range is exhausted.
    """
    high = "+" if query.until_ms is None else str(query.until_ms + WRITE_DELAY_SLACK_MS)
    low = "-" if query.since_ms is None else str(max(query.since_ms - WRITE_DELAY_SLACK_MS,
                                                     0))
    found: list[tuple[str, dict[str, str]]] = []
    while True:
        page = client.xrevrange(stream, max=high, min=low, count=_PAGE)
        for raw_id, raw_fields in page:
            fields = {_text(k): _text(v) for k, v in raw_fields.items()}
            if query.matches(fields):
                found.append((_text(raw_id), fields))
                if query.limit and len(found) >= query.limit:
                    return found[::-1]
        if len(page) < _PAGE:
            return found[::-1]
        high = "(" + _text(page[-1][0])


def entry_as_json(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """An entry with typed values: integers as numbers, ``codes`` a list, ``replayed`` a bool."""
    typed: dict[str, Any] = {"id": entry_id}
    for name, value in fields.items():
        if name in _INTEGER_FIELDS:
            try:
                typed[name] = int(value)
                continue
            except ValueError:
                pass
        if name == "codes":
            typed[name] = value.split(",") if value else []
        elif name == "replayed":
            typed[name] = value == "1"
        else:
            typed[name] = value
    return typed


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
