"""OrderSession: one stream of orders, one decision per order, in order, group-committed.

Two tasks share a session. The *reader* takes the next order from the
stream, decides it at once (the servicer's ``decide_durably``, as for
EvaluateOrder) and appends the decision to the open group. The *writer*
takes the whole open group, waits until its decisions are durable and
recorded (one journal and audit wait for the group, as for a batch), then
writes them in order. Orders decided while a group waits go into the next
one, so a busy session pays one Redis round trip per group, not per order.

Bounds: the reader decides at most ``window`` orders ahead of the decisions
written; past it, it stops reading, and gRPC's flow control then holds the
sender. A slow reader of decisions therefore holds at most ``window``
decisions here.

Ends: the client half-closes (the stream ends OK after the last decision);
an order for an account the caller may not use (PERMISSION_DENIED) or, with
account ownership, that another node owns (FAILED_PRECONDITION NOT_OWNER), Redis
refusing a group (UNAVAILABLE; the group's orders are decided and reserved,
and a re-send replays them once Redis has them), or shutdown (UNAVAILABLE).
In every case the decisions of the groups before are written first, and an
order that got no decision was not decided.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import grpc

from pretrade.api.malformed import MalformedMessage
from pretrade.engine.errors import InvalidRequest, Unavailable
from pretrade.state.journal import DecidedOrder
from pretrade.v1 import risk_pb2 as pb


class Decider(Protocol):
    """What a session needs of the servicer (``PreTradeRiskServicer``)."""

    wait_limit_seconds: float

    def audit_mark(self) -> int: ...

    def decide_durably(self, order: pb.Order, durable_checked: int = -1,
                       expired: list[Any] | None = None, index: int = 0,
                       ) -> tuple[pb.Decision, DecidedOrder | None]: ...

    async def resolve_expired(self, expired: list[Any]
                              ) -> dict[int, tuple[pb.Decision, DecidedOrder | None]]: ...

    def invalid_decision(self, order: pb.Order, error: InvalidRequest) -> pb.Decision: ...

    def states_wanted(self, orders: Iterable[pb.Order]) -> dict[bytes, int]: ...

    async def wait_for_state(self, wanted: dict[bytes, int], budget: float) -> None: ...

    async def settle_answer(self, decisions: list[pb.Decision], durable: list[DecidedOrder],
                            mark: int) -> None: ...

    async def refuse_unowned(self, accounts: Iterable[str]) -> None: ...

#: Why a session ended at shutdown (UNAVAILABLE).
SESSION_CLOSED = ("pretrade is shutting down: the session ended after every order it had "
                  "decided was answered; re-send the rest to another server")


class _Group:
    """Decisions waiting for one settle: in order, with their durable records."""

    __slots__ = ("decisions", "durable", "mark")

    def __init__(self, mark: int) -> None:
        self.decisions: list[pb.Decision] = []
        self.durable: list[DecidedOrder] = []
        #: The audit queue's mark before the first of them was decided.
        self.mark = mark


class Session:
    """One OrderSession call: :meth:`run` until the stream ends."""

    def __init__(self, servicer: Decider, requests: AsyncIterator[Any],
                 context: grpc.aio.ServicerContext, window: int) -> None:
        self.servicer = servicer
        self.requests = requests
        self.context = context
        self.window = window
        self.unanswered = 0
        self.decided = 0
        self.closed = False
        self._group: _Group | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()

    def close(self) -> None:
        """Shutdown: stop reading; the writer answers what is decided and ends the call."""
        self.closed = True
        self._wake.set()

    async def run(self) -> None:
        """Answer every order of the stream; raise what ended it (for the caller to map)."""
        reader = asyncio.create_task(self._read())
        reader.add_done_callback(lambda _: self._wake.set())
        try:
            while not (reader.done() or self.closed):
                await self._wake.wait()
                self._wake.clear()
                await self._flush()
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({reader})
        # What the reader decided before it ended (or was stopped) is answered first.
        await self._flush()
        error = None if reader.cancelled() else reader.exception()
        if error is not None:
            raise error
        if self.closed:
            raise Unavailable(SESSION_CLOSED)

    async def _flush(self) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        await self.servicer.settle_answer(group.decisions, group.durable, group.mark)
        for decision in group.decisions:
            await self.context.write(decision)
        self.unanswered -= len(group.decisions)
        self._room.set()

    async def _read(self) -> None:
        requests = aiter(self.requests)
        while True:
            while self.unanswered >= self.window:
                self._room.clear()
                await self._room.wait()
            try:
                message = await anext(requests)
            except StopAsyncIteration:
                return
            if self.closed:
                return  # read, not decided: the client re-sends it elsewhere
            mark = self.servicer.audit_mark()
            decision, durable = await self._decide(message)
            group = self._group
            if group is None:
                group = self._group = _Group(mark)
            group.decisions.append(decision)
            if durable is not None:
                group.durable.append(durable)
            self.unanswered += 1
            self.decided += 1
            self._wake.set()

    async def _decide(self, message: Any) -> tuple[pb.Decision, DecidedOrder | None]:
        servicer = self.servicer
        if isinstance(message, MalformedMessage):
            return servicer.invalid_decision(pb.Order(), message.error), None
        # An account another node owns ends the session (FAILED_PRECONDITION
        # NOT_OWNER) before its order is decided, as an account the caller may
        # not use does: the orders before it are answered, it and the rest are not.
        await servicer.refuse_unowned((message.account_id,))
        try:
            if message.min_state_version:
                await servicer.wait_for_state(servicer.states_wanted((message,)),
                                              servicer.wait_limit_seconds)
            expired: list[Any] = []
            decided = servicer.decide_durably(message, expired=expired)
            if expired:
                decided = (await servicer.resolve_expired(expired))[0]
            return decided
        except InvalidRequest as error:
            return servicer.invalid_decision(message, error), None

