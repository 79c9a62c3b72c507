"""Assembling one server process: table, sync, servicer, health and reflection.

``Gateway`` is everything one process runs, on one asyncio loop:

* the shared :class:`~pretrade.table.MappedTable` and the compiled Engine;
* :class:`~pretrade.sync.RedisSync`, which loads and follows Redis;
* the gRPC server with PreTradeRisk, the standard health service (SERVING
  only while the table is loaded and in sync) and server reflection.

``serve_forever`` is what ``pretrade serve`` runs: it adds the embedded
redis-server when no Redis URL is configured, the demo book, signal handling
and the start-up banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pretrade._core import Engine
from pretrade.config import Settings
from pretrade.portfolio import ObservedHaltBook, PortfolioHub
from pretrade.prices import PriceFeed
from pretrade.servicer import PreTradeRiskServicer
from pretrade.sync import RedisSync, SyncConfigError
from pretrade.table import Capacities, MappedTable
from pretrade.v1 import risk_pb2, risk_pb2_grpc

log = logging.getLogger("pretrade.server")

SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["PreTradeRisk"].full_name
HEALTH_POLL_SECONDS = 0.05


def redis_client(url: str, settings: Settings) -> aioredis.Redis:
    """An asyncio client with bytes replies (hiredis parses them when installed)."""
    return aioredis.Redis.from_url(
        url, decode_responses=False, health_check_interval=5, socket_connect_timeout=5,
        socket_timeout=10, username=settings.redis_username or None,
        password=settings.redis_password or None)


class Gateway:
    """One pretrade server process: call :meth:`start`, then :meth:`stop`."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        capacities = Capacities(
            max_accounts=settings.max_accounts, max_instruments=settings.max_instruments,
            max_positions=settings.max_positions,
            max_overrides=min(settings.max_positions, 65_536),
            lock_stripes=settings.lock_stripes)
        self.mapped = MappedTable.create(settings.resolved_table_path(), capacities)
        self.table = self.mapped.table
        self.engine = Engine(self.table)
        self.halts = ObservedHaltBook(self.table)
        self.redis = redis_client(redis_url, settings)
        self.sync = RedisSync(self.redis, self.table, self.halts)
        # Registered before the sync starts, so the hub sees the first full load.
        self.portfolio = PortfolioHub(self.table, self.sync.ready)
        self.sync.listeners.append(self.portfolio)
        self.halts.listeners.append(self.portfolio)
        self.prices = PriceFeed(self.redis, self.sync)
        self.servicer = PreTradeRiskServicer(self.engine, self.halts, self.redis, self.portfolio)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.port = 0
        self.serving = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Check Redis, bind, serve; the table loads in the background. Returns the port."""
        await self.sync.ensure_notifications()
        risk_pb2_grpc.add_PreTradeRiskServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"could not listen on {self.settings.listen}")
        await self.server.start()
        # Before the sync's first load starts, so ticks during the load are replayed.
        await self.prices.mark_start()
        self._tasks = [asyncio.create_task(self.sync.run(), name="pretrade-sync"),
                       asyncio.create_task(self.prices.run(), name="pretrade-prices"),
                       asyncio.create_task(self._track_health(), name="pretrade-health")]
        log.info("serving %s on port %d (table %s)", SERVICE_NAME, self.port, self.mapped.path)
        return self.port

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the first full load is done and health reports SERVING."""
        async def loaded_and_serving() -> None:
            await self.sync.ready.wait()
            while not self.serving:
                await asyncio.sleep(HEALTH_POLL_SECONDS / 5)

        await asyncio.wait_for(loaded_and_serving(), timeout)

    async def _track_health(self) -> None:
        # Health follows the table's liveness: SERVING only while in sync.
        reported: bool | None = None
        while True:
            live = self.table.sync_live
            if live != reported:
                status = (health_pb2.HealthCheckResponse.SERVING if live
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, status)
                reported = self.serving = live
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING, finish in-flight calls within ``grace``, release everything."""
        await self.health.enter_graceful_shutdown()
        self.portfolio.close()  # streams end UNAVAILABLE within the grace period
        await self.server.stop(grace)
        self.sync.stop()
        self.prices.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.redis.aclose()
        self.mapped.close(unlink=True)


def _banner(port: int, host: str, redis_url: str) -> str:
    target = f"{host}:{port}"
    return f"""
pretrade is serving PreTradeRisk on {target} (Redis: {redis_url})

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


async def _serve(settings: Settings, redis_url: str) -> int:
    if settings.demo_book:
        from pretrade.demo import load_demo_book

        client = redis_client(redis_url, settings)
        try:
            if await load_demo_book(client):
                log.info("demo book written to Redis")
        finally:
            await client.aclose()
    gateway = Gateway(settings, redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        port = await gateway.start()
    except SyncConfigError as error:
        log.critical("%s", error)
        gateway.mapped.close(unlink=True)
        return 3
    print(_banner(port, settings.listen_host, redis_url), flush=True)
    await stop.wait()
    log.info("stopping: health NOT_SERVING, finishing in-flight calls")
    await gateway.stop()
    return 0


def serve_forever(settings: Settings) -> int:
    """Run one server until SIGINT or SIGTERM; return the exit status."""
    if not settings.embedded_redis:
        assert settings.redis_url is not None
        return asyncio.run(_serve(settings, settings.redis_url))
    from pretrade.devredis import RedisServer

    data_dir = Path(settings.data_dir) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    with RedisServer(data_dir=data_dir, persistent=True) as embedded:
        log.info("embedded redis-server pid %d at %s (data in %s)", embedded.pid, embedded.url,
                 data_dir)
        return asyncio.run(_serve(settings, embedded.url))
