"""The PreTradeRisk gRPC servicer: protobuf in, the compiled pipeline, protobuf out.

Validation of the request shape (ids present, enums specified) happens here
and ends the call with INVALID_ARGUMENT; everything about the order itself
(quantity, price, limits, halts) is a coded rejection from the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from pretrade._core import Engine
from pretrade.audit import AuditTrail
from pretrade.errors import (
    DeadlineExceeded,
    InvalidRequest,
    Unavailable,
    grpc_status,
    rejection_message,
)
from pretrade.halts import Breakers, HaltBook, write_halt
from pretrade.orders import DecidedOrder, Journal
from pretrade.portfolio import PortfolioHub, requested_heartbeat
from pretrade.redis_schema import is_valid_id
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

log = logging.getLogger("pretrade.servicer")

MAX_ORDER_ID_LENGTH = 63
MAX_BATCH = 10_000
STORED_REJECTIONS = 8  # what the core keeps with an order (layout.pxd)
MAX_TAG_LENGTH = 15
# Printable ASCII without spaces: what FIX ClOrdIDs and MICs use in practice.
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
SIDES = frozenset((pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT))
ORDER_TYPES = frozenset((pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET))
_MALFORMED = ((pb.REJECT_CODE_INVALID_REQUEST, 0, 0),)  # what the audit records

def _id(text: str, field: str) -> bytes:
    if not text:
        raise InvalidRequest(f"{field} is required")
    raw = text.encode("utf-8")
    if not is_valid_id(raw):
        raise InvalidRequest(f"{field} {text[:64]!r} is not a valid id (1 to 39 characters of "
                             "A-Z a-z 0-9 . _ / - and a few symbols)")
    return raw


def _text(text: str, field: str, longest: int, required: bool) -> bytes:
    if not text:
        if required:
            raise InvalidRequest(f"{field} is required")
        return b""
    if len(text) > longest or not _PRINTABLE.fullmatch(text):
        raise InvalidRequest(f"{field} must be 1 to {longest} printable ASCII characters "
                             f"without spaces, got {text[:80]!r}")
    return text.encode("ascii")


@dataclass(frozen=True)
class ValidOrder:
    """The byte-string fields of an Order that passed validate_order."""

    order_id: bytes
    account: bytes
    symbol: bytes
    venue: bytes
    counterparty: bytes


def validate_order(order: pb.Order) -> ValidOrder:
    """Check the request's shape; return its ids as bytes, or raise InvalidRequest."""
    order_id = _text(order.order_id, "order_id", MAX_ORDER_ID_LENGTH, required=True)
    account = _id(order.account_id, "account_id")
    symbol = _id(order.symbol, "symbol")
    if order.side not in SIDES:
        raise InvalidRequest(f"side must be SIDE_BUY, SIDE_SELL or SIDE_SELL_SHORT, "
                             f"got {order.side}")
    if order.order_type not in ORDER_TYPES:
        raise InvalidRequest(f"order_type must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET, "
                             f"got {order.order_type}")
    venue = _text(order.venue, "venue", MAX_TAG_LENGTH, required=False)
    counterparty = _text(order.counterparty, "counterparty", MAX_TAG_LENGTH, required=False)
    return ValidOrder(order_id, account, symbol, venue, counterparty)


class PreTradeRiskServicer(risk_pb2_grpc.PreTradeRiskServicer):
    """Answers EvaluateOrder from the compiled engine and Halt through Redis."""

    def __init__(self, engine: Engine, halts: HaltBook, redis_client: aioredis.Redis,
                 portfolio: PortfolioHub | None = None,
                 status: Callable[[], pb.ServerStatus] | None = None,
                 journal: Journal | None = None,
                 audit: AuditTrail | None = None) -> None:
        self.engine = engine
        self.halts = halts
        self.redis = redis_client
        self.breakers = Breakers(engine.table, halts, redis_client, audit)
        self.portfolio = portfolio
        self.status = status
        # Every decision and halt is queued for the audit stream (never awaited).
        self.audit = audit
        # Decided orders are made durable before the answer when set.
        self.journal = journal

    def decide(self, order: pb.Order) -> pb.Decision:
        """One order through validation and the pipeline (no network involved)."""
        return self.decide_durably(order)[0]

    def decide_durably(self, order: pb.Order) -> tuple[pb.Decision, DecidedOrder | None]:
        """The decision, and the record to make durable before answering (or None)."""
        valid = validate_order(order)
        # perf_counter is CLOCK_MONOTONIC: one clock for every server process,
        # so the velocity windows in the shared table agree across processes.
        started = time.perf_counter_ns()
        approved, notional, rejections, replayed, auto_halt, pnl, stored = (
            self.engine.evaluate(valid.order_id, valid.account, valid.symbol, order.side,
                                 order.order_type, order.quantity, order.price, valid.venue,
                                 valid.counterparty, started))
        latency = time.perf_counter_ns() - started
        if self.audit is not None:
            self.audit.decision(order, approved, rejections, latency, replayed, notional)
        if auto_halt:
            self.breakers.trip(valid.account, auto_halt, pnl)
        durable = None
        if stored and self.journal is not None:
            durable = DecidedOrder(
                valid.account, valid.order_id, valid.symbol, order.side, order.order_type,
                order.quantity, order.price,
                notional // order.quantity if approved else order.price, notional,
                valid.venue, valid.counterparty, approved, rejections[:STORED_REJECTIONS])
        decision = pb.Decision(
            order_id=order.order_id, approved=approved,
            rejections=[rejection_message(*r) for r in rejections],
            latency_ns=latency, account_id=order.account_id, symbol=order.symbol,
            notional=notional, replayed=replayed,
        )
        return decision, durable

    async def EvaluateOrder(self, request: pb.Order,  # noqa: N802 (gRPC method name)
                            context: grpc.aio.ServicerContext) -> pb.Decision:
        try:
            _check_deadline(context)
            decision, durable = self.decide_durably(request)
            if durable is not None and self.journal is not None:
                await self.journal.commit((durable,))
            return decision
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "EvaluateOrder")
            raise

    def decide_batch(self, batch: pb.OrderBatch,
                     durable: list[DecidedOrder] | None = None) -> pb.DecisionBatch:
        """Every order of a batch, in order; a malformed one gets INVALID_REQUEST.

        Records to make durable are appended to ``durable`` when it is given.
        """
        started = time.perf_counter_ns()
        decisions = []
        for order in batch.orders:
            try:
                decision, record = self.decide_durably(order)
                decisions.append(decision)
                if record is not None and durable is not None:
                    durable.append(record)
            except InvalidRequest as error:
                decisions.append(pb.Decision(
                    order_id=order.order_id[:MAX_ORDER_ID_LENGTH], approved=False,
                    account_id=order.account_id[:64], symbol=order.symbol[:64],
                    rejections=[pb.Rejection(code=pb.REJECT_CODE_INVALID_REQUEST,
                                             message=str(error))]))
                if self.audit is not None:
                    self.audit.decision(order, False, _MALFORMED, 0, False, 0)
        return pb.DecisionBatch(decisions=decisions,
                                latency_ns=time.perf_counter_ns() - started)

    async def EvaluateOrders(self, request: pb.OrderBatch,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.DecisionBatch:
        try:
            _check_deadline(context)
            if len(request.orders) > MAX_BATCH:
                raise InvalidRequest(f"a batch holds at most {MAX_BATCH} orders, "
                                     f"got {len(request.orders)}")
            durable: list[DecidedOrder] = []
            reply = self.decide_batch(request, durable)
            if durable and self.journal is not None:
                await self.journal.commit(durable)
            return reply
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "EvaluateOrders")
            raise

    async def GetStatus(self, request: pb.StatusRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> pb.ServerStatus:
        try:
            if self.status is None:
                raise Unavailable("this server has no status source")
            return self.status()
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "GetStatus")
            raise

    async def Halt(self, request: pb.HaltRequest,  # noqa: N802
                   context: grpc.aio.ServicerContext) -> pb.HaltState:
        try:
            _check_deadline(context)
            return await write_halt(self.redis, self.halts, request, audit=self.audit)
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
            account = _id(request.account_id, "account_id")
            interval = requested_heartbeat(request.heartbeat_interval_ms)
            # context.write rather than yield: one async generator less per message.
            async with contextlib.aclosing(portfolio.stream(account, interval)) as updates:
                async for update in updates:
                    await context.write(update)
        except Exception as error:  # mapped to a status by _abort, never swallowed
            await _abort(context, error, "StreamPortfolio")
            raise


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


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    """End the call with the status errors.grpc_status maps ``error`` to (abort raises)."""
    code, details = grpc_status(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error in %s", method, exc_info=error)
    else:
        log.info("%s %s: %s", method, code.name, details)
    await context.abort(code, details)
