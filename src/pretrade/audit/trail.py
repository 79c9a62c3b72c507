"""The audit trail: every decision and every halt change, in the Redis stream ``audit``
(on a Redis Cluster, each node's own ``audit:{NODE}``).

Off the hot path
----------------
:meth:`AuditTrail.decision` and :meth:`AuditTrail.halt` only append a small
tuple to a bounded in-memory queue: no await, no encoding, O(1). The
servicer keeps a reference to the request message; nothing is copied. A
background task (:meth:`AuditTrail.run`) takes up to :data:`BATCH_SIZE`
entries at a time, encodes them as one protobuf message
(:func:`~pretrade.audit.entries.encode_batch`) and writes it with one
``XADD audit * v 2 pid <pid> n <count> data <batch>``. The writer never
trims the stream: only the archiver does, up to what it has archived
(:mod:`pretrade.audit.archive`), so no entry leaves Redis unarchived.
While a batch is in flight new entries queue up behind it, so under load the
batches grow and the cost per entry falls (group commit).

A slow or unreachable Redis never blocks a decision. Entries leave the queue
only once Redis has acknowledged their batch; a failed write is retried after
a pause (so an entry is written at least once: a batch whose reply was lost
may be written twice). When the queue is full, :meth:`AuditTrail.has_room`
is False and the servicer refuses new orders AUDIT_UNAVAILABLE before the
engine sees them (counted in :attr:`AuditStats.refused`), unless the trail
was made with ``refuse_when_full=False`` (``audit_when_full = "drop"``):
then it has room for anything, and entries past the queue's size are dropped
and counted (:attr:`AuditStats.dropped`, and ``audit_dropped`` in GetStatus).
Halt changes are never refused: one that finds the queue full is dropped and
counted. A WARNING is logged at the first drop or refusal and then at most
every :data:`DROP_LOG_SECONDS` with the counts so far.

:meth:`AuditTrail.close` writes what is still queued, within a time bound;
``Gateway.stop`` calls it after the gRPC server has finished its in-flight
calls, so every decision answered before a shutdown is in the stream.

The entry format is in :mod:`pretrade.audit.entries`; the reader
(``pretrade audit``) is :mod:`pretrade.audit.query`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pretrade.audit.entries import AUDIT_STREAM, BATCH_VERSION, DECISION, HALT, encode_batch
from pretrade.engine.errors import Unavailable
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.audit")

#: Entries per pipelined write.
BATCH_SIZE = 1_000
#: At most one "dropping audit entries" warning per this many seconds.
DROP_LOG_SECONDS = 10.0
#: A batch write this slow (seconds) means Redis, not the writer, is the bottleneck.
SLOW_WRITE_SECONDS = 0.5
#: The longest a batch's write may take before it counts as failed (and is retried).
WRITE_TIMEOUT_SECONDS = 10.0
#: Pause after a failed write, doubled per failure up to RETRY_MAX_SECONDS. Kept short:
#: answers wait for their audit record (audit_before_answer), so after a Redis failover
#: the first orders wait out the pause that is running (with 2 s, up to a second more).
RETRY_SECONDS = 0.1
RETRY_MAX_SECONDS = 0.5


@dataclass
class AuditStats:
    """What the audit writer did, for GetStatus."""

    written: int = 0
    dropped: int = 0
    #: Orders refused AUDIT_UNAVAILABLE because the queue was full.
    refused: int = 0
    write_errors: int = 0
    #: How long the last batch took to write (seconds).
    last_write_seconds: float = 0.0


class AuditTrail:
    """A bounded queue of audit entries and the task that writes them to Redis.

    Parameters
    ----------
    client
        An asyncio Redis client. It may (and for speed should) have no socket
        timeout: each batch's write is bounded by ``write_timeout`` here, one
        timer per batch rather than redis-py's one per reply.
    queue_size
        Entries held in memory while Redis is slow or away.
    refuse_when_full
        True (the default): a full queue has no room (:meth:`has_room`), so
        orders are refused rather than decided unrecorded. False: entries
        past ``queue_size`` are dropped and counted.
    stream
        The stream's key.
    write_timeout
        Seconds a batch's write may take before it counts as failed.
    """

    def __init__(self, client: aioredis.Redis, *, queue_size: int = 100_000,
                 refuse_when_full: bool = True, stream: bytes = AUDIT_STREAM,
                 write_timeout: float = WRITE_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.write_timeout = write_timeout
        self.queue_size = queue_size
        self.refuse_when_full = refuse_when_full
        self.stream = stream
        self.stats = AuditStats()
        self.pid = str(os.getpid())
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = -DROP_LOG_SECONDS
        self._failing = False
        #: Entries queued so far, and how many of those have left the queue (in order).
        self._queued_seq = 0
        self._done_seq = 0
        #: Calls waiting for their entries: (sequence number, tie-break, future).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tie = itertools.count()

    @property
    def pending(self) -> int:
        """Entries queued and not yet acknowledged by Redis."""
        return len(self._queue)

    @property
    def last_queued(self) -> int:
        """The sequence number of the newest entry queued (0: none yet).

        A caller reads it before and after it decides: when it grew, its own
        entries are up to it, and :meth:`recorded` waits for them.
        """
        return self._queued_seq

    async def recorded(self, seq: int, timeout: float) -> None:
        """Return once every entry up to ``seq`` is in Redis; Unavailable past ``timeout``.

        The entries stay queued after a timeout and are written when Redis
        takes them; only the caller stops waiting.
        """
        if seq <= self._done_seq:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tie), done))
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=max(timeout, 0.0))
        except TimeoutError:
            raise Unavailable(
                f"the decision was made, but its audit record is not in Redis after "
                f"{timeout * 1000:.0f} ms (Redis holds writes back); it will be written when "
                "Redis takes it: re-send the same order id, it replays") from None

    def _advance(self, count: int, written: bool) -> None:
        """``count`` entries left the queue (written, or lost): wake who waited for them."""
        before, self._done_seq = self._done_seq, self._done_seq + count
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._done_seq:
            seq, _, done = heapq.heappop(waiters)
            if done.done():
                continue
            if written or seq <= before:
                done.set_result(None)
            else:
                done.set_exception(Unavailable("the decision's audit record could not be "
                                               "encoded and is lost; see the server log"))

    # -- THE HOT PATH: append only --

    def has_room(self) -> bool:
        """Whether a decision may be made now: its record will fit in the queue.

        Always True with ``refuse_when_full=False`` (records past the size
        are dropped instead). The caller decides and queues without an await
        in between, so the room it saw is still there.
        """
        return not self.refuse_when_full or len(self._queue) < self.queue_size

    def refuse(self) -> None:
        """Count an order refused for want of room (and warn, rate-limited)."""
        self.stats.refused += 1
        self._warn_full()

    def decision(self, order: pb.Order, approved: bool, rejections: Any, latency_ns: int,
                 replayed: bool, notional: int, principal: str = "", replaces: str = "") -> None:
        """Queue one decision; ``rejections`` is a sequence of ``(code, observed, limit)``.

        ``principal`` names the authenticated caller ("" with ``auth = "none"``);
        ``replaces`` the original order id of a ReplaceOrder ("" for an order).
        """
        self._put((DECISION, time.time_ns(), principal, order, approved, rejections,
                   latency_ns, replayed, notional, replaces))

    def halt(self, source: str, scope: int, target: bytes, mode: int, reason: str, by: str,
             expires_at_ms: int = 0, principal: str = "") -> None:
        """Queue one halt change (``mode`` ACTIVE or 0 for a lift)."""
        self._put((HALT, time.time_ns(), principal, source, scope, target, mode,
                   reason, by, expires_at_ms))

    def _put(self, entry: tuple[Any, ...]) -> None:
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._drop()
            return
        if not queue:
            self._wake.set()
        queue.append(entry)
        self._queued_seq += 1

    def _drop(self) -> None:
        self.stats.dropped += 1
        self._warn_full()

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_SECONDS:
            self._last_drop_log = now
            if self.refuse_when_full:
                log.warning("audit queue full (%d entries): refusing orders AUDIT_UNAVAILABLE, "
                            "%d refused so far (%d halt changes dropped); %s", self.queue_size,
                            self.stats.refused, self.stats.dropped, self._why_full())
            else:
                log.warning("audit queue full (%d entries): dropping audit entries, %d "
                            "dropped so far; %s", self.queue_size, self.stats.dropped,
                            self._why_full())

    def _why_full(self) -> str:
        """The cause of a full queue, from what the writer saw."""
        if self._failing:
            return "Redis refuses or does not answer the writes (see the errors above)"
        if self.stats.last_write_seconds >= SLOW_WRITE_SECONDS:
            return (f"Redis is slow: the last batch took "
                    f"{self.stats.last_write_seconds * 1000:.0f} ms")
        return ("the writer cannot keep up with this process's decisions: Redis answers "
                f"fast (last batch {self.stats.last_write_seconds * 1000:.1f} ms), the event "
                "loop has no time left to encode; raise audit_queue_size or run more workers")

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
                self._failing = True
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
                self._advance(lost, written=False)
                self.stats.dropped += lost
                log.exception("could not encode %d audit entries; they are dropped", lost)
                continue
            if failing_since:
                log.info("audit entries are written to Redis again")
            self._failing = False
            delay, failing_since = RETRY_SECONDS, 0.0

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._queue, BATCH_SIZE))
        started = time.monotonic()
        # A TimeoutError is an OSError: run() counts it and retries the batch.
        async with asyncio.timeout(self.write_timeout):
            await self.client.execute_command(
                "XADD", self.stream, "*", "v", BATCH_VERSION,
                "pid", self.pid, "n", len(batch), "data", encode_batch(batch))
        self.stats.last_write_seconds = time.monotonic() - started
        # Only now: an entry leaves the queue once Redis has it.
        for _ in batch:
            self._queue.popleft()
        self.stats.written += len(batch)
        self._advance(len(batch), written=True)

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
