"""Redis connections for pretrade: hiredis parses replies and packs commands.

redis-py's synchronous client packs commands with hiredis's C packer when it
is installed; its asyncio client packs them in Python, one ``encode`` call per
argument. A profile of the batch path showed two thirds of the server's time
in that packing (the audit trail's XADDs and the durable decisions' HSETs), so
pretrade's asyncio connections use hiredis for both directions.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis


class HiredisPackingConnection(aioredis.Connection):
    """An asyncio TCP connection whose commands are packed by ``hiredis.pack_command``."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Same splitting of a multi-word command name ("CONFIG GET") as redis-py.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; TCP URLs get the hiredis-packing connection."""
    if url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackingConnection)
    return aioredis.Redis.from_url(url, **options)


def redis_client(url: str, *, username: str | None = None, password: str | None = None,
                 socket_timeout: float | None = 10) -> aioredis.Redis:
    """The gateway's asyncio client: bytes replies, hiredis both ways, bounded connects.

    ``socket_timeout=None`` is for a connection whose caller bounds each
    batch itself (the audit writer): no timer around every reply.
    """
    return connect(
        url, decode_responses=False, health_check_interval=5, socket_connect_timeout=5,
        socket_timeout=socket_timeout, username=username or None, password=password or None)
