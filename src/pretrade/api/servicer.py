"""The PreTradeRisk gRPC servicer: protobuf in, the compiled pipeline, protobuf out.

Validation of the request shape (:mod:`pretrade.api.requests`) ends the call
with INVALID_ARGUMENT; everything about the order itself (quantity, price,
limits, halts) is a coded rejection from the pipeline. Domain errors become
statuses in :mod:`pretrade.api.status`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import grpc
import redis.asyncio as aioredis

from pretrade._core import Engine
from pretrade._core.constants import MAX_ORDER_ID_LENGTH, STORED_REJECTIONS
from pretrade.api.access import principal_name
from pretrade.api.requests import validate_batch, validate_order
from pretrade.api.status import grpc_status, rejection_message
from pretrade.audit.trail import AuditTrail
from pretrade.engine.errors import DeadlineExceeded, InvalidRequest, Unavailable
from pretrade.engine.text import require_id
from pretrade.state.halts import Breakers, HaltBook, write_halt
from pretrade.state.journal import DecidedOrder, Journal
from pretrade.stream.portfolio import PortfolioHub, requested_heartbeat
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

log = logging.getLogger("pretrade.servicer")

_MALFORMED = ((pb.REJECT_CODE_INVALID_REQUEST, 0, 0),)  # what the audit records


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
        verdict = self.engine.evaluate(valid.order_id, valid.account, valid.symbol, order.side,
                                       order.order_type, order.quantity, order.price,
                                       valid.venue, valid.counterparty, started)
        latency = time.perf_counter_ns() - started
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
                verdict.rejections[:STORED_REJECTIONS])
        decision = pb.Decision(
            order_id=order.order_id, approved=verdict.approved,
            rejections=[rejection_message(*r) for r in verdict.rejections],
            latency_ns=latency, account_id=order.account_id, symbol=order.symbol,
            notional=verdict.notional, replayed=verdict.replayed,
        )
        return decision, durable

    async def EvaluateOrder(self, request: pb.Order,  # noqa: N802 (gRPC method name)
                            context: grpc.aio.ServicerContext) -> pb.Decision:
        try:
            _check_deadline(context)
            decision, durable = self.decide_durably(request)
            if durable is not None and self.journal is not None:
                await self.journal.commit((durable,), context.time_remaining())
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
                    self.audit.decision(order, False, _MALFORMED, 0, False, 0, principal_name())
        return pb.DecisionBatch(decisions=decisions,
                                latency_ns=time.perf_counter_ns() - started)

    async def EvaluateOrders(self, request: pb.OrderBatch,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.DecisionBatch:
        try:
            _check_deadline(context)
            validate_batch(request)
            durable: list[DecidedOrder] = []
            reply = self.decide_batch(request, durable)
            if durable and self.journal is not None:
                await self.journal.commit(durable, context.time_remaining())
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
            account = require_id(request.account_id, "account_id")
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
