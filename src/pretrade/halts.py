"""The kill switch: halts in force, applied to the table and written through to Redis.

``HaltBook`` is this process's view of the ``halt:*`` keys. The Halt RPC
writes a halt to Redis first and then applies it here at once, so the caller's
next order already sees it; every other server process (and the next start)
sees it through the sync, which re-reads the key when its keyspace
notification arrives. A halt that Redis refuses to store is not applied.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pretrade._core import PositionTable
from pretrade.audit import SOURCE_BREAKER, SOURCE_RPC, AuditTrail
from pretrade.errors import InvalidRequest
from pretrade.fixedpoint import format_notional
from pretrade.limits import DEFAULT_REJECT_WINDOW_MS, LimitKind
from pretrade.redis_schema import HaltRecord, halt_key, is_valid_id
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.halts")

HaltKey = tuple[int, bytes]
AUTO_HALT_LOSS_LIMIT, AUTO_HALT_REJECT_STORM = 1, 2  # the core's AutoHalt values
MAX_REASON_LENGTH = 512
MAX_TTL_SECONDS = 366 * 24 * 3600


class HaltBook:
    """Halts in force in this process, mirrored into the PositionTable."""

    def __init__(self, table: PositionTable, shared: PositionTable | None = None) -> None:
        self.table = table
        # A worker process keeps its book on a private table fed by its own
        # sync; halts it sets itself (RPC, breakers) go to the shared table too,
        # so every process's next order sees them at once.
        self.shared = shared
        self._halts: dict[HaltKey, HaltRecord] = {}
        # Bumped by every local write; the sync skips applying a read that a
        # local write overtook (a fresher notification is already on its way).
        self._local_generation: dict[HaltKey, int] = {}

    def generation(self, key: HaltKey) -> int:
        return self._local_generation.get(key, 0)

    def apply(self, record: HaltRecord) -> None:
        key = (record.scope, record.target)
        self._halts[key] = record
        self.table.set_halt(record.scope, record.target or None, record.mode)

    def lift(self, scope: int, target: bytes) -> None:
        """Lift a halt; idempotent (the table may hold it even if the book does not)."""
        self._halts.pop((scope, target), None)
        self.table.set_halt(scope, target or None, 0)

    def current(self, scope: int, target: bytes) -> HaltRecord | None:
        return self._halts.get((scope, target))

    def enforce(self, record: HaltRecord) -> None:
        """A halt this process decided (Halt RPC, breaker): here and in the shared table."""
        self.bump((record.scope, record.target))
        self.apply(record)
        if self.shared is not None:
            self.shared.set_halt(record.scope, record.target or None, record.mode)

    def release(self, scope: int, target: bytes) -> None:
        """A lift this process decided: here and in the shared table."""
        self.bump((scope, target))
        self.lift(scope, target)
        if self.shared is not None:
            self.shared.set_halt(scope, target or None, 0)

    def replace_all(self, records: list[HaltRecord]) -> None:
        """Make the book and the table hold exactly these halts (full load)."""
        self._halts.clear()
        self.table.clear_halts()
        for record in records:
            self.apply(record)

    def snapshot(self) -> pb.HaltState:
        """Every halt in force, globally first, then accounts, then symbols."""
        ordered = sorted(self._halts.values(), key=lambda r: (r.scope, r.target))
        return pb.HaltState(halts=[record.to_proto() for record in ordered])

    def bump(self, key: HaltKey) -> None:
        self._local_generation[key] = self._local_generation.get(key, 0) + 1


def validate_halt_request(request: pb.HaltRequest) -> tuple[int, bytes]:
    """Check a HaltRequest; return ``(scope, target)`` or raise InvalidRequest."""
    if request.scope == pb.HALT_SCOPE_GLOBAL:
        if request.account_id or request.symbol:
            raise InvalidRequest("a GLOBAL halt takes neither account_id nor symbol")
        target = b""
    elif request.scope == pb.HALT_SCOPE_ACCOUNT:
        if request.symbol:
            raise InvalidRequest("an ACCOUNT halt takes account_id, not symbol")
        target = _target(request.account_id, "account_id")
    elif request.scope == pb.HALT_SCOPE_SYMBOL:
        if request.account_id:
            raise InvalidRequest("a SYMBOL halt takes symbol, not account_id")
        target = _target(request.symbol, "symbol")
    else:
        raise InvalidRequest("scope must be HALT_SCOPE_GLOBAL, HALT_SCOPE_ACCOUNT or "
                             f"HALT_SCOPE_SYMBOL, got {request.scope}")
    if request.mode not in (pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
        raise InvalidRequest("mode must be HALT_MODE_ACTIVE, HALT_MODE_REDUCE_ONLY or "
                             f"HALT_MODE_HALTED, got {request.mode}")
    if request.mode != pb.HALT_MODE_ACTIVE and not request.reason.strip():
        raise InvalidRequest("a halt needs a reason")
    if len(request.reason) > MAX_REASON_LENGTH or len(request.requested_by) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason and requested_by are limited to {MAX_REASON_LENGTH} "
                             "characters")
    if not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"ttl_seconds must be 0 (no expiry) to {MAX_TTL_SECONDS}, "
                             f"got {request.ttl_seconds}")
    return request.scope, target


def _target(text: str, field: str) -> bytes:
    raw = text.encode("utf-8")
    if not is_valid_id(raw):
        raise InvalidRequest(f"{field} {text!r} is not a valid id (1 to 39 characters of "
                             "A-Z a-z 0-9 . _ / - and a few symbols)")
    return raw


async def store_halt(client: aioredis.Redis, record: HaltRecord, ttl_seconds: int) -> None:
    """Write one halt to its ``halt:*`` key (replacing it), with its TTL, atomically."""
    key = halt_key(record.scope, record.target)
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=record.to_fields())
        if ttl_seconds:
            pipe.expire(key, ttl_seconds)
        await pipe.execute()


async def write_halt(client: aioredis.Redis, book: HaltBook, request: pb.HaltRequest,
                     default_by: str = "unknown", *,
                     audit: AuditTrail | None = None) -> pb.HaltState:
    """Validate, write through to Redis, apply locally, audit; return the halts in force."""
    scope, target = validate_halt_request(request)
    key = halt_key(scope, target)
    by = request.requested_by.strip() or default_by
    if request.mode == pb.HALT_MODE_ACTIVE:
        await client.delete(key)
        # Applied (and the generation bumped) after the write: a sync read that
        # started before it is stale and must not undo this; its own
        # notification re-reads the key.
        book.release(scope, target)
        if audit is not None:
            audit.halt(SOURCE_RPC, scope, target, pb.HALT_MODE_ACTIVE, request.reason.strip(),
                       by)
        log.warning("halt lifted: %s by %s (%s)", key.decode(), by,
                    request.reason or "no reason given")
        return book.snapshot()
    now_ms = time.time_ns() // 1_000_000
    record = HaltRecord(
        scope=scope, target=target, mode=request.mode, reason=request.reason.strip(),
        halted_by=by, halted_at_ms=now_ms,
        expires_at_ms=now_ms + request.ttl_seconds * 1000 if request.ttl_seconds else 0,
    )
    await store_halt(client, record, request.ttl_seconds)
    book.enforce(record)
    if audit is not None:
        audit.halt(SOURCE_RPC, scope, target, record.mode, record.reason, by,
                   record.expires_at_ms)
    log.warning("halt set: %s %s by %s: %s", key.decode(),
                pb.HaltMode.Name(record.mode), record.halted_by, record.reason)
    return book.snapshot()


#: How long an automatic halt lasts when the account sets no auto_halt_seconds.
DEFAULT_AUTO_HALT_SECONDS = 300
RISK_ENGINE = "risk engine"


class Breakers:
    """Circuit breakers: the engine asks, this applies the automatic halt.

    The halt takes effect in this process at once (the table is shared, so in
    every process mapping it), then is written to Redis in the background,
    exactly like an operator's halt, with its reason and "halted by: risk
    engine". A failed write is logged; the local halt stays until the next
    resync replaces it with what Redis holds.
    """

    def __init__(self, table: PositionTable, book: HaltBook,
                 client: aioredis.Redis, audit: AuditTrail | None = None) -> None:
        self.table = table
        self.book = book
        self.client = client
        self.audit = audit
        self.tripped = 0
        self.write_failures = 0
        self._writes: set[asyncio.Task[None]] = set()

    def trip(self, account: bytes, kind: int, profit_and_loss: int) -> None:
        """Apply the automatic halt the engine asked for (AutoHalt ``kind``).

        A breaker never weakens or shortens a halt already in force: over a
        permanent REDUCE_ONLY set by an operator, a reject storm escalates to a
        HALTED that is permanent too (an operator must lift it).
        """
        info = self.table.account_info(account) or {"limits": {}}
        seconds = min(info["limits"].get(LimitKind.AUTO_HALT_SECONDS)
                      or DEFAULT_AUTO_HALT_SECONDS, MAX_TTL_SECONDS)
        existing = self.book.current(pb.HALT_SCOPE_ACCOUNT, account)
        if existing is not None and existing.mode == pb.HALT_MODE_HALTED:
            return
        if kind == AUTO_HALT_LOSS_LIMIT:
            mode = pb.HALT_MODE_REDUCE_ONLY
            limit = info["limits"].get(LimitKind.LOSS_LIMIT, 0)
            reason = (f"loss limit: day P&L {format_notional(profit_and_loss)} is below "
                      f"-{format_notional(limit)}")
        else:
            mode = pb.HALT_MODE_HALTED
            limit = info["limits"].get(LimitKind.MAX_REJECTS_PER_WINDOW, 0)
            window = info["limits"].get(LimitKind.REJECT_WINDOW_MS) or DEFAULT_REJECT_WINDOW_MS
            reason = f"{limit} rejections within {window} ms"
        now_ms = time.time_ns() // 1_000_000
        if existing is not None:
            if existing.mode == mode:
                return
            if existing.expires_at_ms == 0:
                seconds = 0
            else:
                seconds = max(seconds, -(-(existing.expires_at_ms - now_ms) // 1000))
            reason += f"; escalated from {pb.HaltMode.Name(existing.mode)} ({existing.reason})"
        record = HaltRecord(pb.HALT_SCOPE_ACCOUNT, account, mode, reason, RISK_ENGINE, now_ms,
                            now_ms + seconds * 1000 if seconds else 0)
        self.book.enforce(record)
        self.tripped += 1
        if self.audit is not None:
            self.audit.halt(SOURCE_BREAKER, record.scope, account, mode, reason, RISK_ENGINE,
                            record.expires_at_ms)
        log.warning("automatic halt: account %s %s for %s: %s", account.decode(),
                    pb.HaltMode.Name(mode), f"{seconds} s" if seconds else "ever", reason)
        task = asyncio.get_running_loop().create_task(self._store(record, seconds))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, record: HaltRecord, seconds: int) -> None:
        try:
            await store_halt(self.client, record, seconds)
        except (RedisError, OSError) as error:
            self.write_failures += 1
            log.error("could not write the automatic halt of %s to Redis: %s",
                      record.target.decode(), error)
