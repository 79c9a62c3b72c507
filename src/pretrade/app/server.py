"""Assembling one server process: table, sync, servicer, health and reflection.

``Gateway`` is everything one process runs, on one asyncio loop:

* the shared :class:`~pretrade.engine.table.MappedTable` and the compiled Engine;
* :class:`~pretrade.state.sync.RedisSync`, which loads and follows Redis;
* the gRPC server with PreTradeRisk, the standard health service (SERVING
  only while the table is loaded and in sync) and server reflection.

``serve_forever`` is what ``pretrade serve`` runs: it adds the embedded
redis-server when no Redis URL is configured, the demo book, signal handling
and the start-up banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from pretrade._core import Engine
from pretrade._core.constants import LATENCY_BUCKET_BOUNDS_NS, VERDICT_NAMES
from pretrade.api.budget import CallGate
from pretrade.api.health import HealthServicer
from pretrade.api.malformed import MalformedRequestInterceptor
from pretrade.api.servicer import PreTradeRiskServicer
from pretrade.api.telemetry import CallMetrics
from pretrade.app.archiving import archiver_beside
from pretrade.app.config import Settings, parse_listen, redacted_url
from pretrade.app.lifetime import (
    check_kept_children,
    die_with_parent,
    exit_text,
    listener_pids,
    process_name,
    serving_group,
)
from pretrade.app.metrics import MetricsServer, worker_listen
from pretrade.app.security import ServerAccess
from pretrade.app.writer import TableWriter, audit_stream, settings_redis
from pretrade.audit.trail import AuditTrail
from pretrade.engine.errors import (
    CannotListen,
    EmbeddedServerFailed,
    RedisUnreachable,
    WorkerFailed,
)
from pretrade.engine.sessions import parse_time_of_day
from pretrade.engine.table import Capacities, MappedTable, Residency
from pretrade.engine.tally import Buckets
from pretrade.state.connection import connect
from pretrade.state.feed import FeedFollower, new_channel
from pretrade.state.halts import HaltBook
from pretrade.state.journal import Journal
from pretrade.state.sync import SyncConfigError
from pretrade.stream.portfolio import PortfolioHub
from pretrade.v1 import risk_pb2, risk_pb2_grpc

log = logging.getLogger("pretrade.server")

SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["PreTradeRisk"].full_name
HEALTH_POLL_SECONDS = 0.05
#: How long the owner waits for its workers to bind and serve.
WORKER_START_SECONDS = 60.0
#: The signal the owner sends each worker once every process serves.
GROUP_SERVING_SIGNAL = signal.SIGUSR1


class Gateway:
    """One pretrade server process: call :meth:`start`, then :meth:`stop`.

    Without ``channel`` it is the whole server in one process: it writes the
    table itself (a :class:`~pretrade.app.writer.TableWriter` on the same
    loop), as tests and tools run it. With ``channel`` it is one of the
    server processes of ``pretrade serve``: it maps the table the sync process
    writes, decides on it, and follows that process's change feed for its
    portfolio streams and halt book.
    """

    def __init__(self, settings: Settings, redis_url: str, *, mapped: MappedTable | None = None,
                 channel: bytes | None = None, number: int = 0,
                 elsewhere: Mapping[str, tuple[str, str]] | None = None) -> None:
        # First: contradictory or incomplete TLS/auth settings stop here, before
        # a table file or a connection exists.
        self.access = ServerAccess.from_settings(settings)
        self.settings = settings
        self.redis_url = redis_url
        self.reader = channel is not None
        self.redis = settings_redis(redis_url, settings)
        # Its own connection, without redis-py's timer around every reply (a
        # quarter of the writer's CPU): the writer bounds each batch itself.
        self.audit = AuditTrail(settings_redis(redis_url, settings, socket_timeout=None),
                                queue_size=settings.audit_queue_size,
                                refuse_when_full=settings.audit_when_full == "reject",
                                stream=audit_stream(redis_url, settings))
        self.writer: TableWriter | None = None
        self.feed: FeedFollower | None = None
        if channel is not None:
            self.mapped = mapped or MappedTable.attach(settings.resolved_table_path(),
                                                       residency_of(settings))
            self.table = self.mapped.table
            self.halts = HaltBook(None, shared=self.table)
            self.feed = FeedFollower(self.redis, channel, self.table, self.halts)
            ready = self.feed.ready
        else:
            self.mapped = mapped or MappedTable.create(settings.resolved_table_path(),
                                                       capacities_of(settings),
                                                       residency_of(settings))
            self.table = self.mapped.table
            self.writer = TableWriter(settings, redis_url, self.table, audit=self.audit)
            self.halts = self.writer.halts
            ready = self.writer.sync.ready
        self.ready = ready
        self.engine = Engine(self.table)
        # Registered before the sync starts, so the hub sees the first full load.
        self.portfolio = PortfolioHub(self.table, ready,
                                      default_currency=settings.default_currency)
        (self.feed or self.writer.sync).listeners.append(self.portfolio)  # type: ignore[union-attr]
        self.halts.listeners.append(self.portfolio)
        self.journal = Journal(self.redis) if settings.durable_decisions else None
        self.servicer = PreTradeRiskServicer(self.engine, self.halts, self.redis, self.portfolio,
                                             status=self.status, journal=self.journal,
                                             audit=self.audit,
                                             wait_limit_seconds=settings.max_sync_lag_ms / 1000,
                                             audit_before_answer=settings.audit_before_answer,
                                             default_currency=settings.default_currency,
                                             session_window=settings.order_session_window,
                                             day_session_end_ms=None
                                             if settings.day_session_end_utc is None
                                             else parse_time_of_day(
                                                 settings.day_session_end_utc))
        self.health = HealthServicer()  # its Watch streams end at shutdown
        # Each class of call has its own budget (instead of grpc.aio's one
        # server-wide count), and the gate ends every call at shutdown.
        self.gate = CallGate(orders=settings.max_concurrent_rpcs,
                             streams=settings.max_portfolio_streams,
                             control=settings.max_control_calls, open=settings.max_open_calls,
                             reads=settings.max_read_calls,
                             sessions=settings.max_order_sessions, elsewhere=elsewhere)
        # Several processes share one port only when asked to; otherwise a
        # second server on the same port must fail, not split the traffic.
        reuse = 1 if settings.workers > 1 else 0
        # First: the access interceptors wrap handlers that expect a parsed
        # request. Last: the gate, so a call refused by access holds no slot.
        # Metrics hook: gRPC calls are counted right after the parsing (app/metrics.py).
        self.calls = CallMetrics()
        interceptors = (MalformedRequestInterceptor(), self.calls, *self.access.interceptors,
                        self.gate)
        self.server = grpc.aio.server(interceptors=interceptors,
                                      options=_server_options(settings, reuse, self.gate.total))
        self.port = 0
        self.serving = False
        #: Set once every process of the group serves: health stays NOT_SERVING before.
        self.group_serving = asyncio.Event()
        if not self.reader:
            self.group_serving.set()
        self._tasks: list[asyncio.Task[None]] = []
        # Metrics hook: server process i serves /metrics on PORT + i (app/metrics.py).
        self.metrics = (MetricsServer(self, worker_listen(settings.metrics_listen, number),
                                      number) if settings.metrics_listen else None)

    async def start(self) -> int:
        """Check Redis, bind, serve; the table loads in the background. Returns the port."""
        if self.writer is not None:
            await self.writer.prepare()
        risk_pb2_grpc.add_PreTradeRiskServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        _enable_reflection(self.server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = self.access.bind(self.server, self.settings.listen)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise CannotListen(_cannot_listen(self.settings.listen, self.settings.listen_port))
        await self.server.start()
        if self.metrics is not None:  # metrics hook
            try:
                await self.metrics.start()
            except OSError as error:
                raise CannotListen(f"cannot serve metrics on {self.metrics.listen} "
                                   f"({error.strerror or error}): choose another "
                                   "--metrics-listen HOST:PORT") from None
        self.audit.start()
        if self.writer is not None:
            self.writer.listening_on(self.port)
            await self.writer.start()
        else:
            assert self.feed is not None
            self._tasks.append(asyncio.create_task(self.feed.run(), name="pretrade-feed"))
        self._tasks.append(asyncio.create_task(self._track_health(), name="pretrade-health"))
        log.info("serving %s on port %d (table %s; %s)", SERVICE_NAME, self.port,
                 self.mapped.path, self.access.summary)
        self.access.warn_if_exposed(self.settings)
        return self.port

    @property
    def update_lag(self) -> Buckets:
        """The sync's Redis-write-to-applied histogram (from the feed in a server process)."""
        if self.writer is not None:
            return self.writer.sync.update_lag
        assert self.feed is not None
        return self.feed.update_lag

    def status(self) -> risk_pb2.ServerStatus:
        """What GetStatus answers: sync state and lag, table use, counters."""
        counts = self.table.counts()
        if self.writer is not None:
            status = self.writer.status()
        else:
            assert self.feed is not None
            # The sync's figures come from the writer's feed (at most a quarter
            # of a second old); liveness is the table's own, read now.
            status = risk_pb2.ServerStatus()
            status.CopyFrom(self.feed.status)
        status.MergeFrom(risk_pb2.ServerStatus(
            accounts=counts["accounts"], instruments=counts["instruments"],
            positions=counts["positions"], orders=counts["orders"],
            groups=counts["groups"], max_groups=counts["max_groups"],
            max_orders=counts["max_orders"], automatic_halts=self.servicer.breakers.tripped,
            pid=os.getpid(), audit_written=self.audit.stats.written,
            audit_dropped=self.audit.stats.dropped, audit_pending=self.audit.pending,
            audit_write_errors=self.audit.stats.write_errors,
            automatic_halts_unwritten=self.servicer.breakers.unwritten,
            automatic_halt_write_failures=self.servicer.breakers.write_failures,
            journal_written=self.journal.written if self.journal else 0,
            journal_failures=self.journal.failed if self.journal else 0,
            journal_pending=self.journal.pending if self.journal else 0,
            orders_evicted=counts["orders_evicted"], audit_refused=self.audit.stats.refused))
        status.sync_live = self.table.sync_live
        status.lost_slots = self.table.lost_slot_count()
        engine_figures(self.engine, status)
        return status

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the first full load is done and health reports SERVING."""
        async def loaded_and_serving() -> None:
            await self.ready.wait()
            while not self.serving:
                await asyncio.sleep(HEALTH_POLL_SECONDS / 5)

        await asyncio.wait_for(loaded_and_serving(), timeout)

    async def _track_health(self) -> None:
        # Health follows the table's liveness: SERVING only while in sync.
        reported: bool | None = None
        while True:
            live = self.table.sync_live and self.group_serving.is_set() and self.ready.is_set()
            if live != reported:
                status = (health_pb2.HealthCheckResponse.SERVING if live
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, status)
                reported = self.serving = live
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, finish in-flight calls, write the audit, release everything.

        New calls are refused at once; calls in flight get ``grace`` seconds
        (default: the ``shutdown_grace_ms`` setting), and so does writing the
        audit entries still queued.
        """
        if grace is None:
            grace = self.settings.shutdown_grace_ms / 1000
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        self.gate.close()  # new calls: UNAVAILABLE, undecided
        self.portfolio.close()  # streams end UNAVAILABLE within the grace period
        self.servicer.close_sessions()  # order sessions too, once they answered what they decided
        # Every call ends here, answered or UNAVAILABLE: none is left for the
        # transport's shutdown to cancel.
        await self.gate.drain(deadline)
        await self.server.stop(max(deadline - time.monotonic(), 0.1))
        # No call runs any more, so every decision answered is queued by now.
        await self.audit.close(timeout=grace)
        await self.audit.client.aclose()
        if self.feed is not None:
            self.feed.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.writer is not None:
            await self.writer.stop(grace)
        if self.metrics is not None:  # metrics hook: scrapes until the end
            await self.metrics.stop()
        if self.journal is not None:
            await self.journal.aclose()
        await self.redis.aclose()
        self.mapped.close(unlink=not self.reader)

    async def abandon(self) -> None:
        """Undo a :meth:`start` that failed: nothing was served, so nothing is flushed."""
        if self.metrics is not None:  # metrics hook
            await self.metrics.stop()
        await self.server.stop(None)
        await self.audit.client.aclose()
        if self.writer is not None:
            await self.writer.abandon()
        if self.journal is not None:
            await self.journal.aclose()
        await self.redis.aclose()
        self.mapped.close(unlink=not self.reader)


#: The reflection service as gRPC names it now; grpcio-reflection implements
#: only its older name (v1alpha), whose messages are the same on the wire.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Serve reflection under both names: v1 (grpcurl, Postman) and v1alpha (older tools).

    One servicer answers both. v1's messages have the fields, numbers and
    types of v1alpha's, so v1alpha's message classes parse and write v1's
    bytes; only the service name differs.
    """
    names = (SERVICE_NAME, health.SERVICE_NAME, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),))


def engine_figures(engine: Engine, status: risk_pb2.ServerStatus) -> None:
    """The engine's decision counters and engine-time buckets into ``status`` (GetStatus)."""
    figures = engine.metrics()
    verdicts = {name: figures["checks"][index] for index, name in VERDICT_NAMES.items()}
    status.decisions_approved = verdicts["approved"]
    status.decisions_rejected = verdicts["rejected"]
    status.decisions_replayed = verdicts["replayed"]
    status.engine_latency_bounds_ns[:] = LATENCY_BUCKET_BOUNDS_NS
    status.engine_latency_counts[:] = [sum(counts) for counts in zip(*figures["latency"],
                                                                     strict=True)]


def _server_options(settings: Settings, reuse_port: int, calls: int) -> list[tuple[str, int]]:
    """gRPC's options: SO_REUSEPORT, keepalive, and room for a burst of every budget at once.

    gRPC holds the calls it has received until pretrade takes them up, and
    by default cancels some once 1,000 wait (and all past 3,000): a burst of
    orders within ``max_concurrent_rpcs`` ended CANCELLED. It may hold as
    many as all the budgets together now (each call then gets an answer or
    RESOURCE_EXHAUSTED from the gate), and one connection may not have more
    streams open than that (its client waits for a slot instead).

    Keepalive (README, "Keepalive"): the server pings a quiet connection every
    ``keepalive_time_ms`` (also one with no call open, and with no data sent
    meanwhile: a portfolio stream may be quiet for long) and closes it when
    the ping goes unanswered; a client may ping at most every
    ``keepalive_min_ping_interval_ms``, else two strikes end its connection.
    """
    return [("grpc.so_reuseport", reuse_port),
            ("grpc.server.max_pending_requests", calls),
            ("grpc.server.max_pending_requests_hard_limit", calls),
            ("grpc.max_concurrent_streams", calls),
            ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
            # gRPC core now times every ping out by this one (default 60 s).
            ("grpc.http2.ping_timeout_ms", settings.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms",
             settings.keepalive_min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 2)]


def _access_note(access: ServerAccess | None) -> str:
    if access is None:
        return ""
    lines = [f"  Access: {access.summary}."]
    if access.interceptors:
        lines.append("  Every call needs --token TOKEN (or $PRETRADE_TOKEN); "
                     "`pretrade token` makes one.")
    if not access.plaintext:
        lines.append("  Clients add --tls-ca CA.pem (grpcurl: -cacert CA.pem, not -plaintext).")
    return "\n" + "\n".join(lines)


def _streams_note(settings: Settings) -> str:
    if settings.stream_listen is None:
        return ""
    processes = (f"{settings.stream_workers} processes" if settings.stream_workers > 1
                 else "a process")
    return (f"\n  Portfolio streams: on {settings.stream_listen} only ({processes} of their own"
            f"{f', nice +{settings.stream_nice}' if settings.stream_nice else ''})")


def _banner(port: int, host: str, redis_url: str, workers: int = 1,
            access: ServerAccess | None = None, desk_listen: str | None = None,
            streams_note: str = "") -> str:
    target = f"{host}:{port}"
    processes = f", {workers} processes" if workers > 1 else ""
    notes = _access_note(access) + streams_note
    if desk_listen:
        notes += f"\n  Risk desk: http://{desk_listen}/ (open it in a browser)"
    return f"""
pretrade is serving PreTradeRisk on {target} (Redis: {redis_url}{processes}){notes}

  Send an order:
    .venv/bin/pretrade order --target {target} --account DEMO-1 --symbol AAPL \\
        --side buy --qty 100 --price 68.91
  Halt an account, then lift it:
    .venv/bin/pretrade halt --target {target} --scope account --account DEMO-1 \\
        --mode halted --reason "risk check"
    .venv/bin/pretrade halt --target {target} --scope account --account DEMO-1 --mode active
  Any gRPC tool works too (reflection is on), e.g.
    grpcurl -plaintext -d '{{"order_id":"o1","account_id":"DEMO-1","symbol":"AAPL",
      "side":"SIDE_BUY","quantity":100,"price":689100,"order_type":"ORDER_TYPE_LIMIT"}}' \\
      {target} pretrade.v1.PreTradeRisk/EvaluateOrder

Ctrl-C stops it.
"""


def capacities_of(settings: Settings) -> Capacities:
    return Capacities(
        max_accounts=settings.max_accounts, max_instruments=settings.max_instruments,
        max_positions=settings.max_positions, max_overrides=min(settings.max_positions, 65_536),
        lock_stripes=settings.lock_stripes, max_orders=settings.max_orders,
        max_orders_per_account=settings.account_share, order_expiry_ms=settings.order_expiry_ms)


def residency_of(settings: Settings) -> Residency:
    return Residency(prefault=settings.prefault_table, lock=settings.lock_table_memory)


async def _load_demo(settings: Settings, redis_url: str) -> None:
    from pretrade.app.demo import load_demo_book

    client = settings_redis(redis_url, settings)
    try:
        if await load_demo_book(client, series_prices=settings.price_source == "timeseries"):
            log.info("demo book written to Redis")
    finally:
        await client.aclose()


async def _check_redis(settings: Settings, redis_url: str) -> None:
    """PING Redis once, before anything is made; RedisUnreachable says what to fix."""
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, RedisError, ResponseError
    from redis.retry import Retry

    where = redacted_url(redis_url)
    client = connect(redis_url, username=settings.redis_username or None,
                     password=settings.redis_password or None, socket_connect_timeout=5,
                     socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        await client.ping()
    except (AuthenticationError, ResponseError) as error:
        raise RedisUnreachable(
            f"Redis at {where} refused the connection ({error}): check redis_username and "
            "redis_password (or the credentials in the URL)") from None
    except (RedisError, OSError) as error:
        raise RedisUnreachable(
            f"cannot reach Redis at {where} ({error}): start it, or point --redis-url "
            "(PRETRADE_REDIS_URL) at a running one") from None
    finally:
        await client.aclose()


def _cannot_listen(listen: str, port: int, reason: str = "") -> str:
    """The one line for a listen address that cannot be bound, naming who holds it."""
    groups = sorted({serving_group(pid) for pid in listener_pids(port)}) if port else []
    holders = [f"pid {pid} ({process_name(pid) or '?'})" for pid in groups]
    if holders:
        return (f"cannot listen on {listen}: it is in use by {', '.join(holders)}; stop that "
                "server first, or choose another --listen HOST:PORT")
    return (f"cannot listen on {listen}{f' ({reason})' if reason else ''}: the address is in "
            "use or not available here; choose another --listen HOST:PORT")


def _probe_listen(settings: Settings) -> None:
    """Bind the listen address once, before the table is touched; CannotListen if taken.

    Without SO_REUSEPORT, so it fails as well when a group of processes
    (``--workers``, bound with SO_REUSEPORT) holds the port. SO_REUSEADDR keeps
    the connections of a server that just stopped (TIME_WAIT) from counting.
    The metrics address of every server process is probed the same way.
    """
    _probe_address(settings.listen_host, settings.listen_port,
                   lambda port, reason: _cannot_listen(settings.listen, port, reason))
    if settings.stream_listen is not None:
        stream_host, stream_port = parse_listen(settings.stream_listen)
        _probe_address(stream_host, stream_port, _stream_refusal(settings.stream_listen))
    if settings.metrics_listen:
        for number in range(len(process_plan(settings))):
            listen = worker_listen(settings.metrics_listen, number)
            host, port = parse_listen(listen)
            _probe_address(host, port, _metrics_refusal(listen))


def _stream_refusal(listen: str) -> Callable[[int, str], str]:
    def refusal(port: int, reason: str) -> str:
        return (f"cannot listen for portfolio streams on {listen}"
                f"{f' ({reason})' if reason else ''}: the address is in use or not available "
                "here; choose another --stream-listen HOST:PORT")
    return refusal


def _metrics_refusal(listen: str) -> Callable[[int, str], str]:
    def refusal(port: int, reason: str) -> str:
        return (f"cannot serve metrics on {listen} ({reason}): choose another "
                "--metrics-listen HOST:PORT")
    return refusal


def _probe_address(host: str, port: int, refusal: Callable[[int, str], str]) -> None:
    """Bind ``host:port`` once; CannotListen with ``refusal(port if in use else 0, reason)``."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CannotListen(refusal(0, error.strerror or str(error))) from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                in_use = error.errno == errno.EADDRINUSE
                raise CannotListen(refusal(port if in_use else 0,
                                           error.strerror or str(error))) from None


async def _workers_serving(ready: int, workers: int, stop: asyncio.Event) -> bool:
    """Wait for one byte from each worker on ``ready``; False if asked to stop meanwhile.

    The pipe reaches end of file when every worker has closed its end: a
    worker that exits before it serves closes it without writing.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    seen = 0

    def readable() -> None:
        nonlocal seen
        try:
            data = os.read(ready, 64)
        except BlockingIOError:
            return
        seen += len(data)
        if done.done():
            return
        if seen >= workers:
            done.set_result(None)
        elif not data:
            done.set_exception(WorkerFailed(
                f"{workers - seen} of {workers} worker processes ended before they served "
                "(any log lines of theirs above say why)"))

    os.set_blocking(ready, False)
    loop.add_reader(ready, readable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        finished, _ = await asyncio.wait((done, stopping), timeout=WORKER_START_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
        if done in finished:
            done.result()
            return True
        if stopping in finished:
            return False
        raise WorkerFailed(f"the worker processes did not all serve within "
                           f"{WORKER_START_SECONDS:.0f} s")
    finally:
        loop.remove_reader(ready)
        stopping.cancel()
        if not done.done():
            done.cancel()


async def _serve(settings: Settings, redis_url: str, channel: bytes, ready: int,
                 number: int = 0, elsewhere: Mapping[str, tuple[str, str]] | None = None) -> int:
    """One server process of the group: start, say so on ``ready``, serve until SIGTERM/SIGINT.

    Health stays NOT_SERVING until the sync process signals that every
    process of the group serves (GROUP_SERVING_SIGNAL) and the table is live.
    """
    gateway = Gateway(settings, redis_url, channel=channel, number=number, elsewhere=elsewhere)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(GROUP_SERVING_SIGNAL, gateway.group_serving.set)
    try:
        await gateway.start()
    except BaseException:
        await gateway.abandon()
        raise
    try:
        os.write(ready, b"1")
        os.close(ready)
    except BaseException:
        await gateway.stop(grace=1.0)
        raise
    await stop.wait()
    log.info("stopping: health NOT_SERVING, finishing in-flight calls")
    await gateway.stop()
    return 0


def _fixed_port(settings: Settings) -> Settings:
    # Every server process must bind the same port: resolve ":0" once, up front.
    if settings.listen_port == 0:
        settings = dataclasses.replace(settings, listen=_fixed_listen(settings.listen))
    if settings.stream_listen is not None and parse_listen(settings.stream_listen)[1] == 0:
        settings = dataclasses.replace(settings,
                                       stream_listen=_fixed_listen(settings.stream_listen))
    return settings


def _fixed_listen(listen: str) -> str:
    """``HOST:0`` as ``HOST:PORT`` with a port that is free now."""
    host = parse_listen(listen)[0]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ProcessPlan:
    """One server process of ``pretrade serve``: its settings, and what its address refuses."""

    number: int
    settings: Settings
    elsewhere: Mapping[str, tuple[str, str]]
    nice: int = 0


def process_plan(settings: Settings) -> list[ProcessPlan]:
    """The server processes: ``workers`` for orders, then ``stream_workers`` for streams.

    Without ``stream_listen`` every process serves every call on ``listen``.
    With it, the order processes refuse portfolio streams (naming
    ``stream_listen``) and the stream processes, bound to ``stream_listen`` at
    ``stream_nice``, refuse orders (naming ``listen``).
    """
    if settings.stream_listen is None:
        return [ProcessPlan(number, settings, {}) for number in range(1, settings.workers + 1)]
    to_streams = {"streams": (settings.stream_listen, "stream_listen")}
    to_orders = {"orders": (settings.listen, "listen"), "sessions": (settings.listen, "listen")}
    # A stream process's own listen address is stream_listen.
    streams = dataclasses.replace(settings, listen=settings.stream_listen, stream_listen=None,
                                  workers=settings.stream_workers)
    return ([ProcessPlan(number, settings, to_streams)
             for number in range(1, settings.workers + 1)]
            + [ProcessPlan(settings.workers + number, streams, to_orders, settings.stream_nice)
               for number in range(1, settings.stream_workers + 1)])


def _run_server_process(plan: ProcessPlan, redis_url: str, channel: bytes,
                        ready: int, owner: int) -> None:
    """A forked server process's whole life; never returns (``os._exit``)."""
    status = 1
    number = plan.number
    try:
        # Nobody would write its table without the sync process: it ends with it.
        die_with_parent(owner)
        if plan.nice:
            os.nice(plan.nice)
        log.info("server process %d (pid %d) starting on %s%s", number, os.getpid(),
                 plan.settings.listen, f" at nice +{plan.nice}" if plan.nice else "")
        # metrics hook: server process i (from 0) serves /metrics on PORT + i
        status = asyncio.run(_serve(plan.settings, redis_url, channel, ready, number - 1,
                                    plan.elsewhere))
    except BaseException:
        log.exception("server process %d failed", number)
    finally:
        os._exit(status)


async def _write(settings: Settings, mapped: MappedTable, redis_url: str, channel: bytes,
                 ready: int, children: list[int]) -> int:
    """The sync process: write the table, start the group, supervise it, stop it last.

    The table is written here only; the server processes decide on it. Once
    every server process serves and the first load is done, they are told
    (GROUP_SERVING_SIGNAL) and the banner is printed. A server process that
    ends on its own stops the group (WorkerFailed). At SIGTERM the server
    processes stop first (their calls in flight may still wait for the
    sync), then the writer.
    """
    writer = TableWriter(settings, redis_url, mapped.table, channel=channel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await writer.prepare()
    except SyncConfigError as error:
        log.critical("%s", error)
        await writer.abandon()
        return 3
    await writer.start()
    try:
        if not await _workers_serving(ready, len(children), stop):
            return 0  # stopped while the server processes were starting
        loaded = asyncio.ensure_future(writer.sync.ready.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((loaded, stopping), return_when=asyncio.FIRST_COMPLETED)
        loaded.cancel()
        stopping.cancel()
        if stop.is_set():
            return 0
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, GROUP_SERVING_SIGNAL)
        print(_banner(settings.listen_port, settings.listen_host, redis_url, settings.workers,
                      ServerAccess.from_settings(settings), settings.desk_listen,
                      _streams_note(settings)), flush=True)
        await _supervise(children, stop)
        log.info("stopping: the server processes first, then the sync")
        return 0
    finally:
        await _stop_children(children, settings.shutdown_grace_ms / 1000 + 5)
        await writer.stop(settings.shutdown_grace_ms / 1000)


async def _supervise(children: list[int], stop: asyncio.Event) -> None:
    """Until ``stop``; WorkerFailed as soon as a server process ends on its own.

    The kept children (the archiver, the desk) that ended are started again.
    """
    while not stop.is_set():
        check_kept_children()
        for pid in children:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                children.remove(pid)
                raise WorkerFailed(
                    f"server process {pid} ended ({exit_text(status)}); the group stopped, "
                    "start it again (any log lines of that process above say why)")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _stop_children(children: list[int], timeout: float) -> None:
    """SIGTERM each server process; wait for them (SIGKILL past ``timeout``); reap them."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while children:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.remove(pid)
        if children and time.monotonic() > deadline:
            log.error("server processes %s did not stop within %.0f s: killed", children,
                      timeout)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        if children:
            await asyncio.sleep(0.02)


def _serve_processes(settings: Settings, redis_url: str) -> int:
    """The sync process (this one) and ``workers`` forked server processes, one table.

    Nothing is made before the listen address and Redis have been checked,
    and a table another live server holds is never touched (its lock says so).
    Everything that must be shared (the table file, the port number, the
    change-feed channel) is made before the fork, and no gRPC or event-loop
    object exists yet: each server process builds its own server afterwards
    (bound with SO_REUSEPORT when there are several).
    """
    _probe_listen(settings)
    asyncio.run(_check_redis(settings, redis_url))
    if settings.demo_book:
        asyncio.run(_load_demo(settings, redis_url))
    settings = _fixed_port(settings)
    mapped = MappedTable.create(settings.resolved_table_path(), capacities_of(settings),
                                residency_of(settings))
    channel = new_channel()
    children: list[int] = []
    ready_read, ready_write = os.pipe()
    try:
        owner = os.getpid()
        for plan in process_plan(settings):
            pid = os.fork()
            if pid == 0:
                os.close(ready_read)
                _run_server_process(plan, redis_url, channel, ready_write, owner)
            children.append(pid)
        os.close(ready_write)
        ready_write = -1
        return asyncio.run(_write(settings, mapped, redis_url, channel, ready_read, children))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for fd in (ready_read, ready_write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        mapped.close(unlink=True)


def serve_forever(settings: Settings) -> int:
    """Run the server (and its workers) until SIGINT or SIGTERM; return the exit status.

    Raises :class:`~pretrade.app.config.ConfigError` before anything starts when
    the TLS and auth settings are contradictory or incomplete.
    """
    ServerAccess.from_settings(settings)
    if not settings.embedded_redis:
        assert settings.redis_url is not None
        with archiver_beside(settings, settings.redis_url):  # the audit archive, when asked
            return _serve_processes(settings, settings.redis_url)
    from pretrade.app.devredis import RedisServer

    data_dir = Path(settings.data_dir) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            embedded = stack.enter_context(RedisServer(data_dir=data_dir, persistent=True))
        except RuntimeError as error:  # no binary, or it would not start
            raise EmbeddedServerFailed(f"the embedded redis-server: {error}") from None
        log.info("embedded redis-server pid %d at %s (data in %s)", embedded.pid, embedded.url,
                 data_dir)
        with archiver_beside(settings, embedded.url):  # the audit archive, when asked
            return _serve_processes(settings, embedded.url)
