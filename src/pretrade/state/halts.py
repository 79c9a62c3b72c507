"""The kill switch: halts in force, applied to the table and written through to Redis.

Everything about halts is here:

* :class:`HaltBook` is this process's view of the ``halt:*`` keys, mirrored
  into the table; it tells its listeners (portfolio streams, the audit's
  :class:`HaltObserver`) of every change after the table has it.
* :func:`write_halt` is the Halt RPC: it writes a halt to Redis first and
  then applies it here at once, so the caller's next order already sees it;
  every other server process (and the next start) sees it through the sync,
  which re-reads the key when its keyspace notification arrives. A halt that
  Redis refuses to store is not applied.
* :class:`Breakers` are the circuit breakers: automatic halts the engine
  asks for, applied at once and written to Redis like an operator's.
* :class:`HaltObserver` audits the halt changes seen in Redis that this
  process did not make.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pretrade._core import PositionTable, TableFullError
from pretrade._core.constants import AUTO_HALT_LOSS_LIMIT, DEFAULT_REJECT_WINDOW_MS
from pretrade.audit.entries import SOURCE_BREAKER, SOURCE_REDIS, SOURCE_RPC
from pretrade.audit.trail import AuditTrail
from pretrade.engine.errors import FailedPrecondition, InvalidRequest
from pretrade.engine.fixedpoint import format_notional
from pretrade.engine.limits import LimitKind
from pretrade.engine.text import clipped, require_id
from pretrade.state.schema import MAX_HALT_SECONDS, HaltRecord, halt_key
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.halts")

HaltKey = tuple[int, bytes]
MAX_REASON_LENGTH = 512
#: The most of a reason (or an author) a log line or an escalated reason quotes.
LOGGED_REASON = 160


class HaltListener(Protocol):
    """Told of every halt applied or lifted (mode 0: lifted)."""

    def halt_changed(self, scope: int, target: bytes, mode: int, reason: str) -> None: ...


class HaltBook:
    """Halts in force in this process, mirrored into the PositionTable."""

    def __init__(self, table: PositionTable | None, shared: PositionTable | None = None
                 ) -> None:
        # The writer's book mirrors into the table it writes. A server process
        # that only reads the table keeps a book without one (table None), fed
        # by the change feed; halts it sets itself (RPC, breakers) go to the
        # shared table, so every process's next order sees them at once.
        self.table = table
        self.shared = shared
        self._halts: dict[HaltKey, HaltRecord] = {}
        # Bumped by every local write; the sync skips applying a read that a
        # local write overtook (a fresher notification is already on its way).
        self._local_generation: dict[HaltKey, int] = {}
        #: Told of every change, after the table has it.
        self.listeners: list[HaltListener] = []

    def generation(self, key: HaltKey) -> int:
        return self._local_generation.get(key, 0)

    def apply(self, record: HaltRecord) -> None:
        key = (record.scope, record.target)
        self._halts[key] = record
        if self.table is not None:
            _set_halt(self.table, record.scope, record.target, record.mode)
        self._notify(record.scope, record.target, record.mode, record.reason)

    def lift(self, scope: int, target: bytes) -> None:
        """Lift a halt; idempotent (the table may hold it even if the book does not)."""
        self._halts.pop((scope, target), None)
        if self.table is not None:
            _set_halt(self.table, scope, target, 0)
        self._notify(scope, target, 0, "")

    def keys(self) -> list[HaltKey]:
        """The (scope, target) of every halt in force."""
        return list(self._halts)

    def current(self, scope: int, target: bytes) -> HaltRecord | None:
        return self._halts.get((scope, target))

    def enforce(self, record: HaltRecord) -> None:
        """A halt this process decided (Halt RPC, breaker): here and in the shared table."""
        self.bump((record.scope, record.target))
        self.apply(record)
        if self.shared is not None:
            _set_halt(self.shared, record.scope, record.target, record.mode)

    def release(self, scope: int, target: bytes) -> None:
        """A lift this process decided: here and in the shared table."""
        self.bump((scope, target))
        self.lift(scope, target)
        if self.shared is not None:
            _set_halt(self.shared, scope, target, 0)

    def replace_all(self, records: list[HaltRecord]) -> None:
        """Make the book and the table hold exactly these halts (full load)."""
        before = set(self._halts)
        self._halts.clear()
        if self.table is not None:
            self.table.clear_halts()
        for record in records:
            self.apply(record)  # notifies each
        for scope, target in before - set(self._halts):
            self._notify(scope, target, 0, "")

    def require_known(self, scope: int, target: bytes) -> None:
        """FailedPrecondition unless the table knows the account or symbol (GLOBAL: always).

        Known as the order checks know it: an account with holdings or limits
        (what StreamPortfolio serves), a symbol with ``instrument:<SYM>``.
        """
        table = self.table or self.shared
        if scope == pb.HALT_SCOPE_GLOBAL or table is None:
            return
        account = scope == pb.HALT_SCOPE_ACCOUNT
        info = table.account_info(target) if account else table.instrument_info(target)
        if info and info["known"]:
            return
        what = "account" if account else "symbol"
        has = "no holdings or limits" if account else "no instrument:<SYM> reference data"
        raise FailedPrecondition(
            f"pretrade has never seen {what} {target.decode(errors='replace')!r} ({has}): "
            "check the spelling, or halt it anyway (only_if_known false, `pretrade halt "
            "--force`)", reason=f"UNKNOWN_{what.upper()}",
            metadata={what: target.decode(errors="replace")})

    def snapshot(self) -> pb.HaltState:
        """Every halt in force, globally first, then accounts, then symbols."""
        ordered = sorted(self._halts.values(), key=lambda r: (r.scope, r.target))
        return pb.HaltState(halts=[record.to_proto() for record in ordered])

    def bump(self, key: HaltKey) -> None:
        self._local_generation[key] = self._local_generation.get(key, 0) + 1

    def _notify(self, scope: int, target: bytes, mode: int, reason: str) -> None:
        for listener in self.listeners:
            listener.halt_changed(scope, target, mode, reason)


def _set_halt(table: PositionTable, scope: int, target: bytes, mode: int) -> None:
    """The halt into the table. An account or symbol the table has no room for is not
    in it, and its orders are rejected CAPACITY_EXHAUSTED already: nothing to hold."""
    try:
        table.set_halt(scope, target or None, mode)
    except TableFullError as error:
        log.warning("halt on %s not held by the table, which has no room for it (%s); its "
                    "orders are rejected CAPACITY_EXHAUSTED", target.decode(errors="replace"),
                    error)


def validate_halt_request(request: pb.HaltRequest) -> tuple[int, bytes]:
    """Check a HaltRequest; return ``(scope, target)`` or raise InvalidRequest."""
    if request.scope == pb.HALT_SCOPE_GLOBAL:
        if request.account_id or request.symbol:
            raise InvalidRequest("a GLOBAL halt takes neither account_id nor symbol",
                                 "account_id" if request.account_id else "symbol")
        target = b""
    elif request.scope == pb.HALT_SCOPE_ACCOUNT:
        if request.symbol:
            raise InvalidRequest("an ACCOUNT halt takes account_id, not symbol", "symbol")
        target = require_id(request.account_id, "account_id")
    elif request.scope == pb.HALT_SCOPE_SYMBOL:
        if request.account_id:
            raise InvalidRequest("a SYMBOL halt takes symbol, not account_id", "account_id")
        target = require_id(request.symbol, "symbol")
    else:
        raise InvalidRequest("scope must be HALT_SCOPE_GLOBAL, HALT_SCOPE_ACCOUNT or "
                             f"HALT_SCOPE_SYMBOL, got {request.scope}", "scope")
    if request.mode not in (pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
        raise InvalidRequest("mode must be HALT_MODE_ACTIVE, HALT_MODE_REDUCE_ONLY or "
                             f"HALT_MODE_HALTED, got {request.mode}", "mode")
    if request.mode != pb.HALT_MODE_ACTIVE and not request.reason.strip():
        raise InvalidRequest("a halt needs a reason", "reason")
    if len(request.reason) > MAX_REASON_LENGTH or len(request.requested_by) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason and requested_by are limited to {MAX_REASON_LENGTH} "
                             "characters", "reason" if len(request.reason) > MAX_REASON_LENGTH
                             else "requested_by")
    if not 0 <= request.ttl_seconds <= MAX_HALT_SECONDS:
        raise InvalidRequest(f"ttl_seconds must be 0 (no expiry) to {MAX_HALT_SECONDS}, "
                             f"got {request.ttl_seconds}", "ttl_seconds")
    return request.scope, target


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
                     default_by: str = "unknown", *, audit: AuditTrail | None = None,
                     principal: str = "") -> pb.HaltState:
    """Validate, write through to Redis, apply locally, audit; return the halts in force.

    ``principal`` names the authenticated caller, for the audit entry.
    """
    scope, target = validate_halt_request(request)
    if request.only_if_known and request.mode != pb.HALT_MODE_ACTIVE:
        book.require_known(scope, target)
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
                       by, principal=principal)
        log.warning("halt lifted: %s by %s (%s)", key.decode(), clipped(by, LOGGED_REASON),
                    clipped(request.reason, LOGGED_REASON) or "no reason given")
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
                   record.expires_at_ms, principal=principal)
    log.warning("halt set: %s %s by %s: %s", key.decode(), pb.HaltMode.Name(record.mode),
                clipped(record.halted_by, LOGGED_REASON), clipped(record.reason, LOGGED_REASON))
    return book.snapshot()


#: Pause after a failed write of an automatic halt, doubled up to the maximum.
STORE_RETRY_SECONDS = 0.1
STORE_RETRY_MAX_SECONDS = 5.0
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
        #: (scope, AutoHalt kind) -> automatic halts applied (the metrics).
        self.trips: dict[tuple[int, int], int] = {}
        self.write_failures = 0
        self._writes: set[asyncio.Task[None]] = set()

    def trip(self, account: bytes, kind: int, profit_and_loss: int, principal: str = "") -> None:
        """Apply the automatic halt the engine asked for (AutoHalt ``kind``).

        ``principal`` names the caller whose order tripped it, for the audit.

        A breaker never weakens or shortens a halt already in force: over a
        permanent REDUCE_ONLY set by an operator, a reject storm escalates to a
        HALTED that is permanent too (an operator must lift it).
        """
        info = self.table.account_info(account) or {"limits": {}}
        seconds = min(info["limits"].get(LimitKind.AUTO_HALT_SECONDS)
                      or DEFAULT_AUTO_HALT_SECONDS, MAX_HALT_SECONDS)
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
            # The reason in force may be anything an operator wrote to Redis.
            reason += (f"; escalated from {pb.HaltMode.Name(existing.mode)} "
                       f"({clipped(existing.reason, LOGGED_REASON)})")
        record = HaltRecord(pb.HALT_SCOPE_ACCOUNT, account, mode, reason, RISK_ENGINE, now_ms,
                            now_ms + seconds * 1000 if seconds else 0)
        self.book.enforce(record)
        self.tripped += 1
        self.trips[(record.scope, kind)] = self.trips.get((record.scope, kind), 0) + 1
        if self.audit is not None:
            self.audit.halt(SOURCE_BREAKER, record.scope, account, mode, reason, RISK_ENGINE,
                            record.expires_at_ms, principal=principal)
        log.warning("automatic halt: account %s %s for %s: %s", account.decode(),
                    pb.HaltMode.Name(mode), f"{seconds} s" if seconds else "ever", reason)
        task = asyncio.get_running_loop().create_task(self._store(record, seconds))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def unwritten(self) -> int:
        """Automatic halts in force here that Redis does not hold yet (GetStatus)."""
        return len(self._writes)

    async def _store(self, record: HaltRecord, seconds: int) -> None:
        # Retried until Redis has it, or a newer halt of the account replaced
        # it here: an automatic halt that only this process knows would be
        # lost at the next resync, so it is never given up on.
        delay = STORE_RETRY_SECONDS
        while True:
            try:
                await store_halt(self.client, record, seconds)
                if delay > STORE_RETRY_SECONDS:
                    log.warning("the automatic halt of %s is in Redis now",
                                record.target.decode())
                return
            except (RedisError, OSError) as error:
                self.write_failures += 1
                log.error("could not write the automatic halt of %s to Redis (%s); retrying "
                          "in %.1f s", record.target.decode(), error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)
            if self.book.current(record.scope, record.target) != record:
                return


class HaltObserver:
    """Audits the halt changes this process sees in Redis but did not make.

    Registered as a listener of the :class:`HaltBook`,
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
