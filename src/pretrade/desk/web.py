"""The risk desk's web server: the page, sign-in, the kill switch, and server-sent events.

aiohttp serves everything on one asyncio loop, where the gRPC calls to the
gateway (:mod:`pretrade.desk.gateway`) run too. The browser never polls: it
opens two EventSource streams and the desk pushes to them:

``GET /api/events``
    ``accounts`` (the ids shown and who is signed in), ``portfolio`` (each
    StreamPortfolio message of every account shown, relayed as it arrives:
    holdings, totals and alerts, money as exact integer strings in 1/10,000
    of the currency), ``halts`` (the halts in force, when they change),
    ``history`` then ``stats`` (decisions per second and engine latency
    p50/p99, one sample a second, for operators: GetStatus is theirs) and
    ``problem`` (a call that failed, or ``""`` once it works again).
``GET /api/rejections?account=ID&code=NAME``
    ``rejections``: the latest rejected decisions from the audit trail, with
    that filter, whenever they change.

``POST /api/session`` signs in with a bearer token (checked by the gateway),
``DELETE /api/session`` signs out, ``GET /api/me`` says who is signed in,
``POST /api/halt`` is the kill switch (the page asks for confirmation first;
the gateway decides whether the user may). Bad input is a 4xx with one line
of JSON (``{"error": ...}``), never a traceback. With ``auth = "none"`` (the
local development setting) everybody is admin and nobody signs in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from pretrade.api.roles import ADMIN, TRADER
from pretrade.desk.gateway import DeskError, DeskGateway
from pretrade.desk.sessions import COOKIE, Session, SessionStore
from pretrade.engine.names import full_name, names_of
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.desk")

STATIC = Path(__file__).resolve().parent / "static"
#: Accounts one page shows (a StreamPortfolio each).
MAX_ACCOUNTS_SHOWN = 100
#: Rejections one page shows.
REJECTIONS_SHOWN = 50
#: Seconds between the desk's reads of halts and status, of the accounts list, of rejections.
HALTS_SECONDS = 1.0
STATS_SECONDS = 1.0
ACCOUNTS_SECONDS = 5.0
REJECTIONS_SECONDS = 2.0
#: A comment line on an idle event stream, so proxies and the browser keep it open.
KEEPALIVE_SECONDS = 15.0
#: Events queued for one browser; a browser that falls this far behind is disconnected
#: (its EventSource reconnects and gets a fresh snapshot).
QUEUE_EVENTS = 2_000
#: A failed portfolio stream is opened again after this.
RETRY_SECONDS = 2.0
MAX_BODY_BYTES = 16_384
HALT_SCOPES = ("GLOBAL", "ACCOUNT", "SYMBOL")
HALT_MODES = ("HALTED", "REDUCE_ONLY", "ACTIVE")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def as_json(message: Message) -> dict[str, Any]:
    """A protobuf message as proto3 JSON: int64 as strings (exact in JavaScript), enums
    by name, every field present."""
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _percentile(counts: list[int], bounds: list[int], share: float) -> float | None:
    """The engine-time bucket bound (microseconds) under which ``share`` of ``counts`` fall."""
    total = sum(counts)
    if total <= 0:
        return None
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= share * total:
            return bounds[min(index, len(bounds) - 1)] / 1000
    return bounds[-1] / 1000


def stats_sample(before: pb.ServerStatus, after: pb.ServerStatus, seconds: float
                 ) -> dict[str, float | None]:
    """One chart sample from two GetStatus readings ``seconds`` apart: decisions per
    second and that interval's engine-time p50 and p99 (bucket bounds, microseconds)."""
    def decided(status: pb.ServerStatus) -> int:
        return status.decisions_approved + status.decisions_rejected + status.decisions_replayed

    if after.pid != before.pid or decided(after) < decided(before):  # another process answered
        return {"t": time.time() * 1000, "rate": None, "p50_us": None, "p99_us": None}
    counts = [max(a - b, 0) for a, b in zip(after.engine_latency_counts,
                                             before.engine_latency_counts, strict=False)]
    bounds = list(after.engine_latency_bounds_ns)
    return {"t": time.time() * 1000,
            "rate": (decided(after) - decided(before)) / seconds if seconds > 0 else None,
            "p50_us": _percentile(counts, bounds, 0.50) if bounds else None,
            "p99_us": _percentile(counts, bounds, 0.99) if bounds else None}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _answers(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Security headers on every answer; a DeskError as its status and one line of JSON."""
    try:
        response = await handler(request)
    except DeskError as error:
        response = _error(error.status, error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error(error.status, error.reason)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


class EventStream:
    """One browser's server-sent event stream: producers put events, one writer sends them."""

    def __init__(self, response: web.StreamResponse, closing: asyncio.Event) -> None:
        self.response = response
        #: The desk's: set when it stops, and every stream ends.
        self.closing = closing
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_EVENTS)
        self.problems: dict[str, str] = {}
        #: Set when the browser fell QUEUE_EVENTS behind: the stream ends.
        self.overflowed = asyncio.Event()

    def send(self, event: str, data: Any) -> None:
        """Queue one event; a browser too far behind is disconnected (it reconnects)."""
        try:
            self.queue.put_nowait(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        except asyncio.QueueFull:
            self.overflowed.set()

    def problem(self, source: str, message: str) -> None:
        """Report a failing source once, and its recovery (``""``) once."""
        if self.problems.get(source, "") != message:
            self.problems[source] = message
            self.send("problem", {"source": source, "message": message})

    async def run(self, producers: list[Callable[[EventStream], Awaitable[None]]]) -> None:
        """Write events until the browser goes away (or a producer fails), then stop all."""
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(producer(self))
                                            for producer in producers]
        tasks += [asyncio.ensure_future(self._write()),
                  asyncio.ensure_future(self.overflowed.wait()),
                  asyncio.ensure_future(self.closing.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("an event stream of the desk failed", exc_info=outcome)

    async def _write(self) -> None:
        while True:
            try:
                chunk = await asyncio.wait_for(self.queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                chunk = b": keepalive\n\n"
            try:
                await self.response.write(chunk)
            except (ConnectionError, RuntimeError):  # the browser closed the connection
                return


class Desk:
    """The desk's web application over one gateway.

    Parameters
    ----------
    gateway : DeskGateway
        Where every read and the kill switch go.
    auth : str
        ``tokens``: users sign in with their bearer token; ``none``: no
        sign-in, everybody is admin (as the gateway with ``auth = "none"``).
    """

    def __init__(self, gateway: DeskGateway, auth: str = "tokens") -> None:
        self.gateway = gateway
        self.auth = auth
        self.sessions = SessionStore()
        #: Set by :meth:`close`: every event stream ends.
        self.closing = asyncio.Event()
        self.open_streams = 0
        self.codes = sorted(name for name in names_of(pb.RejectCode).values()
                            if name != "UNSPECIFIED")

    def application(self) -> web.Application:
        app = web.Application(middlewares=[_answers], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self.index)
        app.router.add_get("/api/me", self.me)
        app.router.add_post("/api/session", self.sign_in)
        app.router.add_delete("/api/session", self.sign_out)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/api/rejections", self.rejections)
        app.router.add_post("/api/halt", self.halt)
        app.router.add_static("/static", STATIC, follow_symlinks=False)
        return app

    # -- pages and sessions --

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    def _session(self, request: web.Request) -> Session:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise DeskError(401, "not signed in: sign in with your bearer token")
        return session

    def _describe(self, session: Session) -> dict[str, Any]:
        return {"principal": session.principal, "role": session.role, "auth": self.auth,
                "halts_allowed": session.role != TRADER, "codes": self.codes,
                "gateway": self.gateway.target}

    async def me(self, request: web.Request) -> web.Response:
        if self.auth == "none" and self.sessions.get(request.cookies.get(COOKIE)) is None:
            session = Session(token=None, principal="", role=ADMIN)
            response = web.json_response(self._describe(session))
            self._set_cookie(response, self.sessions.open(session))
            return response
        return web.json_response(self._describe(self._session(request)))

    async def sign_in(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        token = body.get("token")
        if not isinstance(token, str) or not token.strip() or len(token) > 512:
            raise DeskError(400, "token: expected the bearer token as a non-empty string")
        reply = await self.gateway.call("ListAccounts", pb.AccountsRequest(limit=1),
                                        token.strip())
        session = Session(token=token.strip(), principal=reply.principal, role=reply.role)
        response = web.json_response(self._describe(session))
        self._set_cookie(response, self.sessions.open(session))
        log.info("desk sign-in: %s (role %s)", reply.principal or "-", reply.role)
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        self.sessions.close(request.cookies.get(COOKIE))
        response = web.json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    @staticmethod
    def _set_cookie(response: web.Response, session_id: str) -> None:
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/")

    # -- the kill switch --

    async def halt(self, request: web.Request) -> web.Response:
        session = self._session(request)
        halt = halt_request(await _json_body(request), session.principal or "desk")
        reply = await self.gateway.call("Halt", halt, session.token)
        log.warning("desk halt: %s %s %s by %s", pb.HaltScope.Name(halt.scope),
                    halt.account_id or halt.symbol or "-", pb.HaltMode.Name(halt.mode),
                    session.principal or "-")
        return web.json_response(as_json(reply))

    # -- the event streams --

    async def _open_stream(self, request: web.Request) -> EventStream:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return EventStream(response, self.closing)

    async def close(self, timeout: float = 2.0) -> None:
        """End every event stream (before the web server stops)."""
        self.closing.set()
        deadline = time.monotonic() + timeout
        while self.open_streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        accounts = await self.gateway.call(
            "ListAccounts", pb.AccountsRequest(limit=MAX_ACCOUNTS_SHOWN), session.token)
        stream = await self._open_stream(request)
        stream.send("accounts", {**as_json(accounts), **self._describe(session)})
        if session.samples:
            stream.send("history", list(session.samples))
        producers = [self._accounts(session, list(accounts.account_ids)), self._halts(session)]
        if session.role != TRADER:
            producers.append(self._stats(session))
        await self._run(stream, producers)
        return stream.response

    async def _run(self, stream: EventStream,
                   producers: list[Callable[[EventStream], Awaitable[None]]]) -> None:
        self.open_streams += 1
        try:
            await stream.run(producers)
        finally:
            self.open_streams -= 1

    async def rejections(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        code = request.query.get("code", "")
        if code and code not in self.codes:
            raise DeskError(400, f"code {code!r} is not a reject code; one of "
                            f"{', '.join(self.codes)}")
        query = pb.RejectionsRequest(account_id=request.query.get("account", ""),
                                     code=full_name(pb.RejectCode, code) if code else None,
                                     limit=REJECTIONS_SHOWN)
        first = await self.gateway.call("ListRejections", query, session.token)
        stream = await self._open_stream(request)
        await self._run(stream, [lambda events: _follow(
            events, "rejections",
            lambda: self.gateway.call("ListRejections", query, session.token),
            lambda reply: as_json(reply)["rejections"], REJECTIONS_SECONDS, first)])
        return stream.response

    def _accounts(self, session: Session, first: list[str]
                  ) -> Callable[[EventStream], Awaitable[None]]:
        """Relay StreamPortfolio of every account shown; follow the accounts list."""
        async def run(events: EventStream) -> None:
            streams: dict[str, asyncio.Task[None]] = {}
            shown = first
            try:
                while True:
                    for account in shown:
                        if account not in streams:
                            streams[account] = asyncio.ensure_future(
                                self._portfolio(session, account, events))
                    await asyncio.sleep(ACCOUNTS_SECONDS)
                    try:
                        reply = await self.gateway.call(
                            "ListAccounts", pb.AccountsRequest(limit=MAX_ACCOUNTS_SHOWN),
                            session.token)
                    except DeskError as error:
                        events.problem("accounts", error.message)
                        continue
                    events.problem("accounts", "")
                    if list(reply.account_ids) != shown:
                        shown = list(reply.account_ids)
                        events.send("accounts", {**as_json(reply), **self._describe(session)})
            finally:
                for task in streams.values():
                    task.cancel()
        return run

    async def _portfolio(self, session: Session, account: str, events: EventStream) -> None:
        source = f"portfolio {account}"
        while True:
            try:
                async for update in self._updates(session, account):
                    events.send("portfolio", as_json(update))
                    events.problem(source, "")
            except DeskError as error:
                events.problem(source, error.message)
            await asyncio.sleep(RETRY_SECONDS)

    def _updates(self, session: Session, account: str) -> AsyncIterator[pb.PortfolioUpdate]:
        return self.gateway.stream_portfolio(account, session.token)

    def _halts(self, session: Session) -> Callable[[EventStream], Awaitable[None]]:
        return lambda events: _follow(
            events, "halts", lambda: self.gateway.call("ListHalts", pb.HaltsRequest(),
                                                       session.token),
            lambda reply: as_json(reply)["halts"], HALTS_SECONDS)

    def _stats(self, session: Session) -> Callable[[EventStream], Awaitable[None]]:
        async def run(events: EventStream) -> None:
            before: tuple[float, pb.ServerStatus] | None = None
            while True:
                try:
                    status = await self.gateway.call("GetStatus", pb.StatusRequest(),
                                                     session.token)
                except DeskError as error:
                    events.problem("stats", error.message)
                    before = None
                else:
                    events.problem("stats", "")
                    now = time.monotonic()
                    if before is not None:
                        sample = stats_sample(before[1], status, now - before[0])
                        last = session.samples[-1]["t"] if session.samples else 0
                        if (sample["t"] or 0) - (last or 0) >= STATS_SECONDS * 900:
                            session.samples.append(sample)  # one a second, however many tabs
                        events.send("stats", sample)
                    before = (now, status)
                await asyncio.sleep(STATS_SECONDS)
        return run


async def _follow(events: EventStream, name: str, fetch: Callable[[], Awaitable[Any]],
                  shown_of: Callable[[Any], Any], seconds: float, first: Any = None) -> None:
    """Read with ``fetch`` every ``seconds``; send event ``name`` (``shown_of`` the reply)
    whenever what it shows changes, and a problem while the read fails."""
    shown, reply = None, first
    while True:
        if reply is None:
            try:
                reply = await fetch()
            except DeskError as error:
                events.problem(name, error.message)
        if reply is not None:
            events.problem(name, "")
            data = shown_of(reply)
            if data != shown:
                events.send(name, data)
                shown = data
        reply = None
        await asyncio.sleep(seconds)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; DeskError 400 (415 for another type) otherwise."""
    if request.content_type != "application/json":
        raise DeskError(415, "send the body as application/json")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise DeskError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DeskError(400, "the body must be a JSON object")
    return body


def halt_request(body: dict[str, Any], by: str) -> pb.HaltRequest:
    """The kill switch's form as a HaltRequest; DeskError 400 for a malformed field.

    ``scope`` GLOBAL, ACCOUNT or SYMBOL; ``target`` the account or symbol;
    ``mode`` HALTED, REDUCE_ONLY or ACTIVE (lift); ``reason`` (required unless
    lifting: the gateway says so); ``ttl_seconds`` optional, 0 or more.
    """
    scope, mode = body.get("scope"), body.get("mode")
    if scope not in HALT_SCOPES:
        raise DeskError(400, f"scope: expected one of {', '.join(HALT_SCOPES)}")
    if mode not in HALT_MODES:
        raise DeskError(400, f"mode: expected one of {', '.join(HALT_MODES)}")
    target, reason, ttl = body.get("target", ""), body.get("reason", ""), body.get("ttl_seconds", 0)
    if not isinstance(target, str) or not isinstance(reason, str):
        raise DeskError(400, "target and reason must be strings")
    if scope != "GLOBAL" and not target.strip():
        raise DeskError(400, f"target: a {scope} halt names its {scope.lower()}")
    if ttl in (None, ""):
        ttl = 0
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        raise DeskError(400, "ttl_seconds: expected a whole number of seconds, 0 or more")
    return pb.HaltRequest(
        scope=full_name(pb.HaltScope, scope), mode=full_name(pb.HaltMode, mode),
        account_id=target.strip() if scope == "ACCOUNT" else "",
        symbol=target.strip() if scope == "SYMBOL" else "", reason=reason.strip(),
        ttl_seconds=ttl, requested_by=by)
