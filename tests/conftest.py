"""Shared fixtures: real parts, started once, on free ports.

One redis-server (found by :func:`pretrade.devredis.find_redis_server`)
serves the whole session; each test that asks for ``redis_client`` starts
from an empty database. The gRPC server fixtures (a server on port 0 in
front of ``redis_server``) are added here by the server's author.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pretrade.devredis import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for the whole session."""
    data_dir: Path = tmp_path_factory.mktemp("redis")
    with RedisServer(data_dir=data_dir) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client to an empty database (FLUSHALL before the test)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    client.flushall()
    try:
        yield client
    finally:
        client.close()
