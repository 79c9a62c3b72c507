"""The PreTradeRisk gRPC servicer: protobuf in, the compiled pipeline, protobuf out.

Validation of the request shape (:mod:`pretrade.api.requests`) ends the call
with INVALID_ARGUMENT; everything about the order itself (quantity, price,
limits, halts) is a coded rejection from the pipeline. Domain errors become
statuses in :mod:`pretrade.api.status`, and nowhere else.

Decisions the engine keeps under an order id are written to Redis before the
answer (the journal) and then marked durable in the table: only durable
records may leave it. A re-sent id whose record left is answered from its
durable copy in ``orders:{ACC}``, never decided anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pretrade._core import Engine, Verdict
from pretrade._core.constants import MAX_ORDER_ID_LENGTH, ORDER_ID_EXPIRED, STORED_REJECTIONS
from pretrade.api.access import current_principal, principal_name
from pretrade.api.requests import (
    ValidOrder,
    ValidReplace,
    validate_batch,
    validate_order,
    validate_portfolio_request,
    validate_replace,
)
from pretrade.api.roles import ADMIN
from pretrade.api.session import Session
from pretrade.api.status import grpc_status, rejection_message, status_details
from pretrade.audit.entries import DECISION
from pretrade.audit.query import AuditQuery, read_audit_async
from pretrade.audit.trail import AuditTrail
from pretrade.engine.errors import DeadlineExceeded, InvalidRequest, Unavailable
from pretrade.engine.names import full_name, short_name
from pretrade.engine.sessions import next_session_end_unix_ms, working_until
from pretrade.engine.table import DEFAULT_CURRENCY, currency_of
from pretrade.engine.text import as_text, is_valid_id, require_id
from pretrade.shards.leases import Ownership
from pretrade.state.halts import Breakers, HaltBook, write_halt
from pretrade.state.journal import DecidedOrder, Journal, decode
from pretrade.state.schema import StateError, orders_key
from pretrade.stream.portfolio import PortfolioHub, requested_heartbeat
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

log = logging.getLogger("pretrade.servicer")

#: How often an order waiting for its account's state looks at the table.
STATE_POLL_SECONDS = 0.0005
#: How long before a call's deadline a wait on Redis gives up, so the answer arrives first.
ANSWER_MARGIN_SECONDS = 0.05

_MALFORMED = ((pb.REJECT_CODE_INVALID_REQUEST, 0, 0),)  # what the audit records
#: Times an id is looked up in Redis while its account keeps evicting records.
_EXPIRED_LOOKUPS = 3
#: (position in the call, the order, the eviction count the engine quoted)
Expired = tuple[int, pb.Order, int]
#: ListAccounts: ids given when the request asks for 0, and at most.
ACCOUNTS_LISTED, MOST_ACCOUNTS_LISTED = 1_000, 10_000
#: ListRejections: rejections given when the request asks for 0, and at most.
REJECTIONS_LISTED, MOST_REJECTIONS_LISTED = 100, 1_000
#: ListRejections reads at most about this many of the newest audit records: a
#: filter that matches little costs no more than that.
REJECTION_SCAN_ROWS = 5_000


_UNRECORDED_CODES = frozenset({pb.REJECT_CODE_STALE_DATA, pb.REJECT_CODE_AUDIT_UNAVAILABLE})


def must_be_recorded(decisions: Iterable[pb.Decision]) -> bool:
    """Whether an answer waits for its audit records (with ``audit_before_answer``).

    Every decision waits, except a STALE_DATA rejection (the sync has lost
    Redis: the record cannot be written now, and the answer must not hang
    on it; nothing of it reaches a market) and an AUDIT_UNAVAILABLE refusal
    (not decided, no record).
    """
    return any(decision.approved or not any(r.code in _UNRECORDED_CODES
                                            for r in decision.rejections)
               for decision in decisions)


def expired_mark(verdict: Verdict) -> int | None:
    """The eviction count when the engine did not decide because the id may have been
    decided before and its record left the table (see ``Engine.evaluate``), else None."""
    if verdict.approved or verdict.replayed or len(verdict.rejections) != 1:
        return None
    code, observed, evictions = verdict.rejections[0]
    if code == pb.REJECT_CODE_DUPLICATE_ORDER_ID and observed == ORDER_ID_EXPIRED:
        return evictions
    return None


class PreTradeRiskServicer(risk_pb2_grpc.PreTradeRiskServicer):
    """Answers EvaluateOrder from the compiled engine and Halt through Redis."""

    def __init__(self, engine: Engine, halts: HaltBook, redis_client: aioredis.Redis,
                 portfolio: PortfolioHub | None = None,
                 status: Callable[[], pb.ServerStatus] | None = None,
                 journal: Journal | None = None,
                 audit: AuditTrail | None = None, wait_limit_seconds: float = 2.0,
                 audit_before_answer: bool = False,
                 default_currency: str = DEFAULT_CURRENCY,
                 day_session_end_ms: int | None = None, session_window: int = 1_024) -> None:
        self.engine = engine
        #: Orders an OrderSession decides ahead of what its client has read.
        self.session_window = session_window
        self.sessions: set[Session] = set()
        self.sessions_closed = False
        #: When the trading day ends, ms after midnight UTC (DAY and IOC orders
        #: stop counting then); None: not configured.
        self.day_session_end_ms = day_session_end_ms
        #: Decision.currency of a symbol whose instrument names none.
        self.default_currency = default_currency
        #: The longest a call waits on Redis's behalf (its decisions made
        #: durable, the account state it asks for): the sync's lag bound. A
        #: Redis that holds a call back longer is unavailable, not slow.
        self.wait_limit_seconds = wait_limit_seconds
        self.halts = halts
        self.redis = redis_client
        self.breakers = Breakers(engine.table, halts, redis_client, audit)
        self.portfolio = portfolio
        self.status = status
        # Every decision and halt is queued for the audit stream; with
        # audit_before_answer, an answer waits until its records are in Redis.
        self.audit = audit
        self.audit_before_answer = audit_before_answer
        # Decided orders are made durable before the answer when set.
        self.journal = journal
        if journal is not None:
            journal.on_durable = self._mark_durable
        # Account ownership (off unless the table has shards): an order for an
        # account whose shard this node does not hold is refused NOT_OWNER.
        self.ownership = Ownership(engine.table, redis_client)

    def decide(self, order: pb.Order) -> pb.Decision:
        """One order through validation and the pipeline (no network involved).

        An id whose record left the table cannot be read back here: it is
        refused (DUPLICATE_ORDER_ID), never decided anew.
        """
        return self.decide_durably(order)[0]

    def decide_durably(self, order: pb.Order, durable_checked: int = -1,
                       expired: list[Expired] | None = None, index: int = 0,
                       make: Callable[..., pb.Decision] = pb.Decision,
                       ) -> tuple[pb.Decision, DecidedOrder | None]:
        """The decision, and the record to make durable before answering (or None).

        ``make`` builds the decision from its fields: a batch passes its reply's
        ``decisions.add``, so the decision is built in place, not copied in.

        When the id may have been decided before and its record left the
        table, and ``expired`` is given, the decision is provisional: the
        order is appended to ``expired`` (with ``index``) for
        :meth:`resolve_expired`, which reads its durable copy.
        """
        valid = validate_order(order)
        if self.audit is not None and not self.audit.has_room():
            # No decision without its record: refused before the engine reserves anything.
            return self._audit_unavailable(order), None
        # perf_counter is CLOCK_MONOTONIC: one clock for every server process,
        # so the velocity windows in the shared table agree across processes.
        # Time in force reads the wall clock (GTD expiries, the session end).
        now_unix_ms = time.time_ns() // 1_000_000
        session_end = 0 if self.day_session_end_ms is None else next_session_end_unix_ms(
            now_unix_ms, self.day_session_end_ms)
        started = time.perf_counter_ns()
        verdict = self.engine.evaluate(valid.order_id, valid.account, valid.symbol, order.side,
                                       order.order_type, order.quantity, order.price,
                                       valid.venue, valid.counterparty, started, durable_checked,
                                       order.min_state_version, order.time_in_force,
                                       order.expire_at_unix_ms, now_unix_ms, session_end,
                                       valid.group)
        latency = time.perf_counter_ns() - started
        evictions = expired_mark(verdict)
        if evictions is not None and expired is not None:
            expired.append((index, order, evictions))
            return self._decision(order, verdict, latency, make), None
        principal = principal_name()
        if self.audit is not None:
            self.audit.decision(order, verdict.approved, verdict.rejections, latency,
                                verdict.replayed, verdict.notional, principal)
        if verdict.auto_halt:
            self.breakers.trip(valid.account, verdict.auto_halt, verdict.profit_and_loss,
                               principal)
        durable = None
        if verdict.stored and self.journal is not None:
            durable = DecidedOrder(
                valid.account, valid.order_id, valid.symbol, order.side, order.order_type,
                order.quantity, order.price,
                verdict.notional // order.quantity if verdict.approved else order.price,
                verdict.notional, valid.venue, valid.counterparty, verdict.approved,
                verdict.rejections[:STORED_REJECTIONS], order.time_in_force,
                order.expire_at_unix_ms,
                working_until(order.time_in_force, order.expire_at_unix_ms, session_end)
                if verdict.approved else 0, group=valid.group)
        return self._decision(order, verdict, latency, make), durable

    def _audit_unavailable(self, order: pb.Order) -> pb.Decision:
        """AUDIT_UNAVAILABLE: the order is not decided, as its record could not be queued."""
        assert self.audit is not None
        self.audit.refuse()
        return pb.Decision(
            order_id=order.order_id[:MAX_ORDER_ID_LENGTH], approved=False,
            account_id=order.account_id[:64], symbol=order.symbol[:64],
            rejections=[rejection_message(pb.REJECT_CODE_AUDIT_UNAVAILABLE, self.audit.pending,
                                          self.audit.queue_size)])

    def _decision(self, order: pb.Order, verdict: Verdict, latency: int,
                  make: Callable[..., pb.Decision] = pb.Decision) -> pb.Decision:
        currency = currency_of(self.engine.table, order.symbol.encode(), self.default_currency)
        decision = make(order_id=order.order_id, approved=verdict.approved,
                        latency_ns=latency, account_id=order.account_id, symbol=order.symbol,
                        notional=verdict.notional, currency=currency)
        # Only what is set: an empty list or a False passed to the constructor
        # costs a third of building the message (most orders are approved).
        if verdict.rejections:
            decision.rejections.extend([rejection_message(code, observed, limit, currency)
                                        for code, observed, limit in verdict.rejections])
        if verdict.replayed:
            decision.replayed = True
        return decision

    async def resolve_expired(self, expired: list[Expired]
                              ) -> dict[int, tuple[pb.Decision, DecidedOrder | None]]:
        """Answer orders whose id may have been decided before from their durable copies.

        One pipelined read of ``orders:{ACC}`` per round: a copy of the same
        order replays it, of another order is DUPLICATE_ORDER_ID, an
        unreadable one INVALID_STATE; no copy (the id was only a false alarm
        of the account's filter) decides the order now (in a batch: after
        the batch's other orders). Unavailable when Redis cannot be read, or
        the account keeps evicting records meanwhile.
        """
        answers: dict[int, tuple[pb.Decision, DecidedOrder | None]] = {}
        for _ in range(_EXPIRED_LOOKUPS):
            if not expired:
                return answers
            started = time.perf_counter_ns()
            valid = [validate_order(order) for _, order, _ in expired]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for ids in valid:
                        pipe.hget(orders_key(ids.account), ids.order_id)
                    copies = await pipe.execute()
            except (RedisError, OSError) as error:
                raise Unavailable("the order id may have been decided before, and its earlier "
                                  f"decision could not be read back: {error}") from error
            again: list[Expired] = []
            for (index, order, evictions), ids, raw in zip(expired, valid, copies, strict=True):
                if raw is not None:
                    answers[index] = (self._replay_durable(order, ids, raw,
                                                           time.perf_counter_ns() - started),
                                      None)
                else:
                    answers[index] = self.decide_durably(order, evictions, again, index)
            expired = again
        if expired:
            raise Unavailable("the order id's earlier decision could not be read back while "
                              "its account's records were leaving the table; send it again")
        return answers

    def _replay_durable(self, order: pb.Order, ids: ValidOrder, raw: bytes,
                        latency: int) -> pb.Decision:
        """The decision an order id got before, from its durable copy."""
        if self.audit is not None and not self.audit.has_room():
            return self._audit_unavailable(order)
        try:
            record = decode(ids.account, ids.order_id, raw)
        except StateError as error:
            log.error("the durable decision of order %r of account %r cannot be read, so it is "
                      "refused: %s", ids.order_id, ids.account, error)
            rejections: tuple[tuple[int, int, int], ...] = (
                (pb.REJECT_CODE_INVALID_STATE, pb.HALT_SCOPE_ACCOUNT, 0),)
            approved, notional, replayed = False, 0, False
        else:
            if (record.replaces, record.symbol, record.side, record.order_type,
                    record.quantity, record.price, record.venue, record.counterparty,
                    record.time_in_force, record.expire_at_unix_ms, record.group) == (
                    b"", ids.symbol, order.side, order.order_type, order.quantity, order.price,
                    ids.venue, ids.counterparty, order.time_in_force, order.expire_at_unix_ms,
                    ids.group):
                rejections, approved = record.rejections, record.approved
                notional, replayed = record.notional, True
            else:
                rejections = ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0),)
                approved, notional, replayed = False, 0, False
        return self._answer(order, approved, rejections, latency, replayed, notional)

    def _answer(self, order: pb.Order, approved: bool,
                rejections: tuple[tuple[int, int, int], ...], latency: int, replayed: bool,
                notional: int, replaces: str = "") -> pb.Decision:
        """A decision read back from its durable copy: audited, then answered."""
        if self.audit is not None:
            self.audit.decision(order, approved, rejections, latency, replayed, notional,
                                principal_name(), replaces)
        currency = currency_of(self.engine.table, order.symbol.encode(), self.default_currency)
        return pb.Decision(
            order_id=order.order_id, approved=approved,
            rejections=[rejection_message(*r, currency) for r in rejections],
            latency_ns=latency, account_id=order.account_id, symbol=order.symbol,
            notional=notional, replayed=replayed, currency=currency)

    # -- CANCEL/REPLACE --

    @staticmethod
    def _replacement(request: pb.ReplaceRequest, known: dict[str, Any] | None,
                     is_replacement: bool) -> pb.Order:
        """The replacement as an Order (for the audit and the Decision).

        ``known`` is what the table holds for the replacement itself
        (``is_replacement``) or for the original (its terms, which the request
        changes), or None when neither is known.
        """
        order = pb.Order(order_id=request.order_id, account_id=request.account_id,
                         quantity=request.quantity, price=request.price)
        if known is not None:
            order.symbol = as_text(known["symbol"])
            order.side = known["side"]
            order.order_type = known["order_type"]
            order.venue = as_text(known["venue"])
            order.counterparty = as_text(known["counterparty"])
            if is_replacement or not request.quantity:
                order.quantity = known["quantity"]
            if is_replacement or not request.price:
                order.price = known["price"]
            # a replacement keeps its original's time in force, and its group
            order.time_in_force = known["time_in_force"]
            order.expire_at_unix_ms = known["expire_at_ms"]
            if known.get("group"):
                order.group_id = as_text(known["group"])
                order.contingency = pb.CONTINGENCY_ONE_CANCELS_OTHER
        return order

    def decide_replace(self, request: pb.ReplaceRequest, durable_checked: int = -1,
                       ) -> tuple[pb.Decision, DecidedOrder | None, int | None]:
        """A cancel/replace through the pipeline (no network involved).

        Returns its Decision, the record to make durable before answering (or
        None) and, when the new id may have been decided before and its record
        left the table, the account's eviction count (the Decision is then
        provisional: the caller reads the id's durable copy first).
        """
        valid = validate_replace(request)
        table = self.engine.table
        if self.audit is not None and not self.audit.has_room():
            return self._audit_unavailable(self._replacement(
                request, table.order_info(valid.account, valid.original), False)), None, None
        now_unix_ms = time.time_ns() // 1_000_000  # an original's time in force may have ended
        started = time.perf_counter_ns()
        verdict = self.engine.replace(valid.order_id, valid.account, valid.original,
                                      request.quantity, request.price, started,
                                      durable_checked, request.min_state_version, now_unix_ms)
        latency = time.perf_counter_ns() - started
        evictions = expired_mark(verdict)
        known = table.order_info(valid.account, valid.order_id)
        is_replacement = known is not None and known["replaces"] == valid.original
        if not is_replacement:
            known = table.order_info(valid.account, valid.original)
        order = self._replacement(request, known, is_replacement)
        if evictions is not None:
            return self._decision(order, verdict, latency), None, evictions
        principal = principal_name()
        if self.audit is not None:
            self.audit.decision(order, verdict.approved, verdict.rejections, latency,
                                verdict.replayed, verdict.notional, principal,
                                request.original_order_id)
        if verdict.auto_halt:
            self.breakers.trip(valid.account, verdict.auto_halt, verdict.profit_and_loss,
                               principal)
        durable = None
        if verdict.stored and self.journal is not None and known is not None \
                and is_replacement:
            durable = DecidedOrder(
                valid.account, valid.order_id, known["symbol"], known["side"],
                known["order_type"], known["quantity"], known["price"],
                known["valuation_price"], verdict.notional, known["venue"],
                known["counterparty"], verdict.approved, verdict.rejections[:STORED_REJECTIONS],
                known["time_in_force"], known["expire_at_ms"],
                known["working_until_ms"] if verdict.approved else 0,
                valid.original, known["carried"], known["group"])
        return self._decision(order, verdict, latency), durable, None

    async def resolve_replace(self, request: pb.ReplaceRequest, evictions: int
                              ) -> tuple[pb.Decision, DecidedOrder | None]:
        """A replace whose new id may have been decided before: from its durable copy
        in ``orders:{ACC}`` (the same replace replays, another is DUPLICATE_ORDER_ID),
        or, with no copy, decided now (as :meth:`resolve_expired` for orders)."""
        valid = validate_replace(request)
        for _ in range(_EXPIRED_LOOKUPS):
            started = time.perf_counter_ns()
            try:
                raw = await self.redis.hget(orders_key(valid.account), valid.order_id)
            except (RedisError, OSError) as error:
                raise Unavailable("the order id may have been decided before, and its earlier "
                                  f"decision could not be read back: {error}") from error
            if raw is not None:
                if isinstance(raw, str):  # a client without decode_responses gives bytes
                    raw = raw.encode("utf-8", "surrogateescape")
                return self._replay_durable_replace(request, valid, raw,
                                                    time.perf_counter_ns() - started), None
            decision, durable, again = self.decide_replace(request, evictions)
            if again is None:
                return decision, durable
            evictions = again
        raise Unavailable("the order id's earlier decision could not be read back while "
                          "its account's records were leaving the table; send it again")

    def _replay_durable_replace(self, request: pb.ReplaceRequest, valid: ValidReplace,
                                raw: bytes, latency: int) -> pb.Decision:
        """The decision a replacement id got before, from its durable copy."""
        order = self._replacement(request, None, False)
        if self.audit is not None and not self.audit.has_room():
            return self._audit_unavailable(order)
        try:
            record = decode(valid.account, valid.order_id, raw)
        except StateError as error:
            log.error("the durable decision of order %r of account %r cannot be read, so it is "
                      "refused: %s", valid.order_id, valid.account, error)
            return self._answer(order, False, ((pb.REJECT_CODE_INVALID_STATE,
                                                pb.HALT_SCOPE_ACCOUNT, 0),),
                                latency, False, 0, request.original_order_id)
        if record.replaces == valid.original and request.quantity in (0, record.quantity) \
                and request.price in (0, record.price):
            order = self._replacement(request, {
                "symbol": record.symbol, "side": record.side, "order_type": record.order_type,
                "venue": record.venue, "counterparty": record.counterparty,
                "quantity": record.quantity, "price": record.price,
                "time_in_force": record.time_in_force,
                "expire_at_ms": record.expire_at_unix_ms, "group": record.group}, True)
            return self._answer(order, record.approved, record.rejections, latency, True,
                                record.notional, request.original_order_id)
        return self._answer(order, False, ((pb.REJECT_CODE_DUPLICATE_ORDER_ID, 0, 0),),
                            latency, False, 0, request.original_order_id)

    async def ReplaceOrder(self, request: pb.ReplaceRequest,  # noqa: N802 (gRPC method name)
                           context: grpc.aio.ServicerContext) -> pb.Decision:
        try:
            _check_deadline(context)
            await self.refuse_unowned((request.account_id,))
            if request.min_state_version:
                account = request.account_id.encode("utf-8", "replace")
                if is_valid_id(account):
                    await self.wait_for_state({account: request.min_state_version},
                                              self.wait_budget(context.time_remaining()))
            mark = self.audit_mark()
            decision, durable, evictions = self.decide_replace(request)
            if evictions is not None:
                decision, durable = await self.resolve_replace(request, evictions)
            await self._settle([durable] if durable is not None else [], mark,
                               context.time_remaining(), must_be_recorded((decision,)))
            return decision
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "ReplaceOrder", request)
            raise

    async def refuse_unowned(self, accounts: Iterable[str]) -> None:
        """FailedPrecondition NOT_OWNER when an account's shard is not this node's.

        Before anything is decided or recorded: never decided by the wrong
        node. A batch is refused whole when any of its accounts is elsewhere
        (the refusal names every shard's owner, for the client to split it).
        """
        unowned = self.ownership.unowned(accounts)
        if unowned:
            raise await self.ownership.refusal(unowned)

    def wait_budget(self, deadline_seconds: float | None) -> float:
        """Seconds a call may wait on Redis: the limit, and short of its deadline.

        Short enough before the deadline (``deadline_seconds`` left, None: no
        deadline) for the answer, UNAVAILABLE or a decision, to reach the
        client rather than its deadline passing first.
        """
        if deadline_seconds is None:
            return self.wait_limit_seconds
        margin = min(ANSWER_MARGIN_SECONDS, deadline_seconds / 10)
        return min(self.wait_limit_seconds, deadline_seconds - margin)

    @staticmethod
    def states_wanted(orders: Iterable[pb.Order]) -> dict[bytes, int]:
        """``{account: version}`` the orders ask the table for (Order.min_state_version)."""
        wanted: dict[bytes, int] = {}
        for order in orders:
            if order.min_state_version > 0:
                account = order.account_id.encode("utf-8", "replace")
                if is_valid_id(account):
                    wanted[account] = max(wanted.get(account, 0), order.min_state_version)
        return wanted

    async def wait_for_state(self, wanted: dict[bytes, int], budget: float) -> None:
        """Wait, at most ``budget`` seconds, until the table holds the versions ``wanted``.

        Read your own writes: whatever is still behind then is rejected
        STALE_DATA by the pipeline itself.
        """
        give_up = time.monotonic() + budget
        table = self.engine.table
        while any(table.state_version(a) < v for a, v in wanted.items()) \
                and time.monotonic() < give_up:
            await asyncio.sleep(STATE_POLL_SECONDS)

    async def _make_durable(self, durable: list[DecidedOrder],
                            deadline_seconds: float | None) -> None:
        """Write the decisions to Redis before the answer (bounded by the call's deadline).

        The journal tells the table once Redis has them (:meth:`_mark_durable`),
        also when that happens after this wait gave up.
        """
        if not durable or self.journal is None:
            return
        await self.journal.commit(durable, self.wait_budget(deadline_seconds))

    def audit_mark(self) -> int:
        """Where the audit queue stands before a call decides (see :meth:`_settle`)."""
        return self.audit.last_queued if self.audit is not None else 0

    async def _settle(self, durable: list[DecidedOrder], mark: int,
                      deadline_seconds: float | None, record: bool) -> None:
        """Before the answer: the call's decisions durable (the journal) and, with
        ``audit_before_answer`` and ``record``, its audit records in Redis (both
        waits at once).

        ``mark`` is :meth:`audit_mark` from before the call decided: when the
        queue grew since, the call queued records and waits for them.
        ``record`` is :func:`must_be_recorded` of its decisions.
        """
        audit = self.audit
        if audit is None or not self.audit_before_answer or not record \
                or audit.last_queued <= mark:
            await self._make_durable(durable, deadline_seconds)
            return
        recorded = audit.recorded(audit.last_queued, self.wait_budget(deadline_seconds))
        if not durable or self.journal is None:
            await recorded
            return
        outcomes = await asyncio.gather(self._make_durable(durable, deadline_seconds),
                                        recorded, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def settle_answer(self, decisions: list[pb.Decision], durable: list[DecidedOrder],
                            mark: int) -> None:
        """:meth:`_settle` for decisions of no one call's deadline (an OrderSession's group)."""
        await self._settle(durable, mark, None, must_be_recorded(decisions))

    def _mark_durable(self, written: list[DecidedOrder]) -> None:
        self.engine.table.mark_durable_many([(d.account, d.order_id) for d in written])

    async def EvaluateOrder(self, request: pb.Order,  # noqa: N802 (gRPC method name)
                            context: grpc.aio.ServicerContext) -> pb.Decision:
        try:
            _check_deadline(context)
            await self.refuse_unowned((request.account_id,))
            if request.min_state_version:
                await self.wait_for_state(self.states_wanted((request,)),
                                          self.wait_budget(context.time_remaining()))
            mark = self.audit_mark()
            expired: list[Expired] = []
            decision, durable = self.decide_durably(request, expired=expired)
            if expired:
                decision, durable = (await self.resolve_expired(expired))[0]
            await self._settle([durable] if durable is not None else [], mark,
                               context.time_remaining(), must_be_recorded((decision,)))
            return decision
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "EvaluateOrder", request)
            raise

    def invalid_decision(self, order: pb.Order, error: InvalidRequest) -> pb.Decision:
        """The INVALID_REQUEST decision of a malformed order in a batch or a session (audited)."""
        if self.audit is not None and not self.audit.has_room():
            return self._audit_unavailable(order)
        if self.audit is not None:
            self.audit.decision(order, False, _MALFORMED, 0, False, 0, principal_name())
        return pb.Decision(
            order_id=order.order_id[:MAX_ORDER_ID_LENGTH], approved=False,
            account_id=order.account_id[:64], symbol=order.symbol[:64],
            rejections=[pb.Rejection(code=pb.REJECT_CODE_INVALID_REQUEST, message=str(error))])

    def decide_batch(self, batch: pb.OrderBatch,
                     durable: list[DecidedOrder] | None = None,
                     expired: list[Expired] | None = None) -> pb.DecisionBatch:
        """Every order of a batch, in order; a malformed one gets INVALID_REQUEST.

        Records to make durable are appended to ``durable`` when it is given;
        orders to answer from their durable copy to ``expired`` (see
        :meth:`decide_durably`).
        """
        started = time.perf_counter_ns()
        reply = pb.DecisionBatch()
        decisions = reply.decisions
        for index, order in enumerate(batch.orders):
            try:
                # Built in place in the reply (decisions.add); one that is not
                # (a refusal before the engine) is copied in.
                decision, record = self.decide_durably(order, expired=expired, index=index,
                                                       make=decisions.add)
                if len(decisions) == index:
                    decisions.append(decision)
                if record is not None and durable is not None:
                    durable.append(record)
            except InvalidRequest as error:
                decisions.append(self.invalid_decision(order, error))
        reply.latency_ns = time.perf_counter_ns() - started
        return reply

    async def EvaluateOrders(self, request: pb.OrderBatch,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.DecisionBatch:
        try:
            _check_deadline(context)
            validate_batch(request)
            await self.refuse_unowned(order.account_id for order in request.orders)
            if wanted := self.states_wanted(request.orders):
                await self.wait_for_state(wanted, self.wait_budget(context.time_remaining()))
            mark = self.audit_mark()
            durable: list[DecidedOrder] = []
            expired: list[Expired] = []
            reply = self.decide_batch(request, durable, expired)
            if expired:
                for index, (decision, record) in (await self.resolve_expired(expired)).items():
                    reply.decisions[index].CopyFrom(decision)
                    if record is not None:
                        durable.append(record)
            await self._settle(durable, mark, context.time_remaining(),
                               must_be_recorded(reply.decisions))
            return reply
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "EvaluateOrders")
            raise

    async def OrderSession(self, request_iterator: AsyncIterator[Any],  # noqa: N802
                           context: grpc.aio.ServicerContext) -> None:
        session = Session(self, request_iterator, context, self.session_window)
        self.sessions.add(session)
        if self.sessions_closed:
            session.close()
        try:
            await session.run()
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "OrderSession")
            raise
        finally:
            self.sessions.discard(session)

    def close_sessions(self) -> None:
        """Shutdown: every OrderSession answers what it decided, then ends UNAVAILABLE."""
        self.sessions_closed = True
        for session in self.sessions:
            session.close()

    async def GetStatus(self, request: pb.StatusRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> pb.ServerStatus:
        try:
            if self.status is None:
                raise Unavailable("this server has no status source")
            return self.status()
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "GetStatus")
            raise

    async def ListAccounts(self, request: pb.AccountsRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> pb.AccountList:
        try:
            limit = _bounded(request.limit, ACCOUNTS_LISTED, MOST_ACCOUNTS_LISTED, "limit")
            principal = current_principal()
            ids = sorted(as_text(a) for a in self.engine.table.account_ids())
            if principal is not None and principal.accounts is not None:
                ids = [a for a in ids if principal.may_use(a)]
            return pb.AccountList(account_ids=ids[:limit], truncated=len(ids) > limit,
                                  principal=principal.name if principal else "",
                                  role=principal.role if principal else ADMIN)
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "ListAccounts")
            raise

    async def ListHalts(self, request: pb.HaltsRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> pb.HaltState:
        try:
            halts = self.halts.snapshot()
            principal = current_principal()
            if principal is None or principal.accounts is None:
                return halts
            return pb.HaltState(halts=[
                halt for halt in halts.halts
                if halt.scope != pb.HALT_SCOPE_ACCOUNT or principal.may_use(halt.target)])
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "ListHalts")
            raise

    async def ListRejections(self, request: pb.RejectionsRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.RejectionList:
        try:
            limit = _bounded(request.limit, REJECTIONS_LISTED, MOST_REJECTIONS_LISTED, "limit")
            if request.code and request.code not in pb.RejectCode.values():
                raise InvalidRequest(f"code {request.code} is not a RejectCode")
            account = require_id(request.account_id, "account_id").decode() \
                if request.account_id else None
            principal = current_principal()
            accounts = None
            if account is None and principal is not None and principal.accounts is not None:
                accounts = principal.accounts
            query = AuditQuery(
                account=account, accounts=accounts, event=DECISION, rejected_only=True,
                code=short_name(pb.RejectCode, request.code) if request.code else None,
                limit=limit, max_rows=REJECTION_SCAN_ROWS)
            try:
                rows = await read_audit_async(self.redis, query)
            except (RedisError, OSError) as error:
                raise Unavailable(f"the audit trail cannot be read: {error}") from error
            return pb.RejectionList(rejections=[_rejected_order(row_id, fields)
                                                for row_id, fields in reversed(rows)])
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "ListRejections")
            raise

    async def Halt(self, request: pb.HaltRequest,  # noqa: N802
                   context: grpc.aio.ServicerContext) -> pb.HaltState:
        try:
            _check_deadline(context)
            return await write_halt(self.redis, self.halts, request, audit=self.audit,
                                    principal=principal_name())
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "Halt")
            raise

    async def StreamPortfolio(self, request: pb.PortfolioRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> None:
        portfolio = self.portfolio
        if portfolio is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "StreamPortfolio is not served by this server")
            return
        try:
            subject, group = validate_portfolio_request(request)
            interval = requested_heartbeat(request.heartbeat_interval_ms)
            # context.write rather than yield: one async generator less per message.
            async with contextlib.aclosing(portfolio.stream(subject, interval,
                                                            group=group)) as updates:
                async for update in updates:
                    await context.write(update)
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "StreamPortfolio")
            raise


def _bounded(asked: int, default: int, most: int, name: str) -> int:
    """A request's count: 0 is ``default``, more than ``most`` is ``most``."""
    if asked < 0:
        raise InvalidRequest(f"{name} must be 0 (the default, {default}) or positive, "
                             f"got {asked}")
    return min(asked or default, most)


def _integer(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _rejected_order(row_id: str, fields: dict[str, str]) -> pb.RejectedOrder:
    """One audit row of a rejected decision as the wire message."""
    names = [code for code in fields.get("codes", "").split(",") if code]
    return pb.RejectedOrder(
        order_id=fields.get("order_id", ""), account_id=fields.get("account", ""),
        symbol=fields.get("symbol", ""),
        side=full_name(pb.Side, fields.get("side", "")),
        quantity=_integer(fields.get("quantity")), price=_integer(fields.get("price")),
        codes=[full_name(pb.RejectCode, name) for name in names],
        decided_at_unix_ms=_integer(fields.get("ts")), principal=fields.get("principal", ""),
        audit_id=row_id)


def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    """Refuse a call whose deadline has already passed, before any work is done.

    gRPC drops most such calls before they reach a handler, but not one that
    was dispatched just before its deadline and then waited for the event
    loop: deciding it late would reserve limits for an order the client
    already counts as failed.
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the deadline passed before the call was started")


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str,
                 order: pb.Order | pb.ReplaceRequest | None = None) -> None:
    """End the call with the status errors.grpc_status maps ``error`` to (abort raises)."""
    code, details = grpc_status(error)
    # The log's JSON lines index these (app/logs.py).
    extra = {"account": order.account_id[:64], "order_id": order.order_id[:64]} if order else {}
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error in %s", method, exc_info=error, extra=extra)
    else:
        log.info("%s %s: %s", method, code.name, details, extra=extra)
    await context.abort(code, details, status_details(code, details, error))
