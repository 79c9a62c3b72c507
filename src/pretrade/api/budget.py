"""Call budgets, and the end of every call at shutdown: nothing is starved, nothing CANCELLED.

Each class of call has its own bounded number of calls a process runs at once
(:data:`CLASSES`; each budget is a setting), so no class can take what
another needs: open health Watch streams cannot starve order flow, a storm
of orders cannot keep a risk operator's Halt out, portfolio streams cannot
hold the slots of unary calls. A call past its budget ends
``RESOURCE_EXHAUSTED`` at once (the message names the budget and its
setting) instead of queueing. The calls of one class are counted from the
moment the servicer is entered until the call ends; a call refused by access
control never holds a slot (:class:`CallGate` comes after the access
interceptors).

Shutdown (:meth:`CallGate.drain`): once closed, new PreTradeRisk calls end
``UNAVAILABLE`` ("shutting down"), undecided and safe to send elsewhere; calls
already running get the grace period to finish; the gate then waits for a
moment without new calls, so that the calls gRPC had received but not yet
handed to pretrade are taken up (and refused) rather than cancelled by the
transport's shutdown; and a call still running when the grace period ends
is ended ``UNAVAILABLE`` by the gate itself. No call the server accepted ends
``CANCELLED``.

Where ``pretrade serve`` serves portfolio streams on an address of their own
(``stream_listen``), each address refuses the calls of the other
(``elsewhere``): FAILED_PRECONDITION, naming the address to call, with an
ErrorInfo of reason SERVED_ELSEWHERE.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from pretrade.api.access import OPEN_SERVICES
from pretrade.api.status import SERVED_ELSEWHERE, TOO_MANY_CALLS, error_info, status_details
from pretrade.v1 import risk_pb2 as pb

__all__ = ["CLASSES", "Budget", "CallGate", "SHUTTING_DOWN"]

log = logging.getLogger("pretrade.budget")

_SERVICE = pb.DESCRIPTOR.services_by_name["PreTradeRisk"].full_name
_ORDER_METHODS = frozenset({f"/{_SERVICE}/EvaluateOrder", f"/{_SERVICE}/EvaluateOrders",
                           f"/{_SERVICE}/ReplaceOrder"})
_READ_METHODS = frozenset({f"/{_SERVICE}/ListAccounts", f"/{_SERVICE}/ListHalts",
                           f"/{_SERVICE}/ListRejections"})

#: The classes of calls, each with the setting that bounds it.
CLASSES = {
    "orders": ("order calls (EvaluateOrder, EvaluateOrders, ReplaceOrder)",
               "max_concurrent_rpcs"),
    "sessions": ("order sessions (OrderSession)", "max_order_sessions"),
    "streams": ("portfolio streams (StreamPortfolio)", "max_portfolio_streams"),
    "control": ("control calls (Halt, GetStatus)", "max_control_calls"),
    "reads": ("desk reads (ListAccounts, ListHalts, ListRejections)", "max_read_calls"),
    "open": ("health and reflection calls", "max_open_calls"),
}
SHUTTING_DOWN = ("pretrade is shutting down: the call was not started; send it to another "
                 "server")
GRACE_ENDED = ("pretrade is shutting down and the grace period ended before this call did; "
               "re-send it (a re-sent order id replays its decision)")
#: Refusals of one budget are logged at most this often.
REFUSAL_LOG_SECONDS = 1.0
#: After the calls in flight, how long the gate waits at most for a moment without calls.
QUIET_SECONDS = 0.05
QUIET_WAIT_SECONDS = 1.0
#: How long calls ended at the end of the grace period get to send their status.
EXPIRY_SECONDS = 0.5


@dataclass
class Budget:
    """One class of calls: its bound, what it holds now, what it refused."""

    name: str
    limit: int
    in_use: int = 0
    refused: int = 0
    _last_log: float = field(default=-REFUSAL_LOG_SECONDS, repr=False)

    @property
    def label(self) -> str:
        return CLASSES[self.name][0]

    @property
    def setting(self) -> str:
        return CLASSES[self.name][1]

    def refusal(self) -> str:
        return (f"too many {self.label} at once: this server runs at most {self.limit} "
                f"({self.setting}); retry shortly")


class _Call:
    """A call the gate admitted: its task, so that shutdown can end it."""

    __slots__ = ("budget", "expired", "task")

    def __init__(self, budget: Budget, task: asyncio.Task[Any] | None) -> None:
        self.budget = budget
        self.task = task
        self.expired = False


class CallGate(grpc.aio.ServerInterceptor):
    """Admits each call against its class's budget; closes and drains at shutdown.

    Parameters are the budgets, one per key of :data:`CLASSES`.
    """

    def __init__(self, *, orders: int, streams: int, control: int, open: int,
                 reads: int = 100, sessions: int = 64,
                 elsewhere: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.budgets = {name: Budget(name, limit) for name, limit in
                        (("orders", orders), ("sessions", sessions), ("streams", streams),
                         ("control", control), ("reads", reads), ("open", open))}
        #: Classes of calls this address does not serve: {class: (address, its setting)}.
        self.elsewhere = dict(elsewhere or {})
        unknown = set(self.elsewhere) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown classes of calls: {sorted(unknown)}")
        self.closing = False
        #: Calls received (every call, refused or not), and when the last one came.
        self.arrivals = 0
        self.last_arrival = time.monotonic()
        self._calls: set[_Call] = set()
        self._changed = asyncio.Event()

    @property
    def total(self) -> int:
        """All budgets together: the most calls this process runs at once."""
        return sum(budget.limit for budget in self.budgets.values())

    def budget_of(self, method: str) -> Budget:
        service = method[1:].rpartition("/")[0]
        if service in OPEN_SERVICES:
            return self.budgets["open"]
        if method in _ORDER_METHODS:
            return self.budgets["orders"]
        if method == f"/{_SERVICE}/OrderSession":
            return self.budgets["sessions"]
        if method == f"/{_SERVICE}/StreamPortfolio":
            return self.budgets["streams"]
        if method in _READ_METHODS:
            return self.budgets["reads"]
        return self.budgets["control"]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.arrivals += 1
        self.last_arrival = time.monotonic()
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._gated(handler, self.budget_of(handler_call_details.method))

    # -- admission --

    async def _admit(self, budget: Budget, context: grpc.aio.ServicerContext) -> _Call:
        if self.closing and budget.name != "open":
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if budget.name in self.elsewhere:
            address, setting = self.elsewhere[budget.name]
            refusal = f"{budget.label} are not served on this address: call {address} ({setting})"
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal, status_details(
                grpc.StatusCode.FAILED_PRECONDITION, refusal, info=error_info(
                    SERVED_ELSEWHERE, {"calls": budget.name, "address": address})))
        if budget.in_use >= budget.limit:
            budget.refused += 1
            now = time.monotonic()
            if now - budget._last_log >= REFUSAL_LOG_SECONDS:
                budget._last_log = now
                log.warning("refusing %s: %d at once already (%s); %d refused so far",
                            budget.label, budget.in_use, budget.setting, budget.refused)
            refusal = budget.refusal()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, status_details(
                grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, info=error_info(
                    TOO_MANY_CALLS, {"budget": budget.name, "limit": str(budget.limit),
                                     "setting": budget.setting})))
        budget.in_use += 1
        call = _Call(budget, asyncio.current_task())
        self._calls.add(call)
        return call

    def _release(self, call: _Call) -> None:
        call.budget.in_use -= 1
        self._calls.discard(call)
        self._changed.set()

    async def _expired(self, call: _Call, context: grpc.aio.ServicerContext) -> None:
        """End a call that the end of the grace period cancelled: UNAVAILABLE, not CANCELLED."""
        if call.task is not None:
            call.task.uncancel()
        try:
            await context.abort(grpc.StatusCode.UNAVAILABLE, GRACE_ENDED)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            # The transport could not take the status (a reader that stopped reading).
            log.debug("could not end a call past the grace period: %s", error)
            raise asyncio.CancelledError from None

    def _gated(self, handler: grpc.RpcMethodHandler, budget: Budget) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        behaviour, make = {
            (False, False): (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
            (False, True): (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            (True, False): (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            (True, True): (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        }[kind]
        if inspect.isasyncgenfunction(behaviour):
            async def each(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = await self._admit(budget, context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                except asyncio.CancelledError:
                    if not call.expired:
                        raise
                    await self._expired(call, context)
                finally:
                    self._release(call)

            wrapped: Callable[..., Any] = each
        else:
            async def one(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = await self._admit(budget, context)
                try:
                    result = behaviour(request, context)
                    return await result if inspect.isawaitable(result) else result
                except asyncio.CancelledError:
                    if not call.expired:
                        raise
                    await self._expired(call, context)
                finally:
                    self._release(call)

            wrapped = one
        return make(wrapped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    # -- shutdown --

    def close(self) -> None:
        """From now on every new PreTradeRisk call ends UNAVAILABLE (open services still answer)."""
        self.closing = True

    def in_flight(self, *, open_calls: bool = False) -> int:
        return sum(1 for call in self._calls if open_calls or call.budget.name != "open")

    async def drain(self, deadline: float) -> None:
        """Let the calls in flight finish by ``deadline`` (``time.monotonic``); end the rest.

        Then wait (briefly) for a moment without new calls, so that nothing gRPC
        has received is left for its shutdown to cancel.
        """
        self.close()
        await self._wait(lambda: self.in_flight() == 0, deadline)
        quiet_until = min(deadline, time.monotonic() + QUIET_WAIT_SECONDS)
        await self._wait(lambda: self.in_flight() == 0
                         and time.monotonic() - self.last_arrival >= QUIET_SECONDS, quiet_until)
        if self._calls:
            log.warning("shutdown: the grace period is over; ending %d calls still running "
                        "UNAVAILABLE", len(self._calls))
            for call in list(self._calls):
                if call.task is not None:
                    call.expired = True
                    call.task.cancel()
            await self._wait(lambda: not self._calls, time.monotonic() + EXPIRY_SECONDS)

    async def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, QUIET_SECONDS))
            except TimeoutError:
                pass
