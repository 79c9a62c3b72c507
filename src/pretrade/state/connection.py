"""Redis connections for pretrade: hiredis parses replies and packs commands.

redis-py's synchronous client packs commands with hiredis's C packer when it
is installed; its asyncio client packs them in Python, one ``encode`` call per
argument. A profile of the batch path showed two thirds of the server's time
in that packing (the audit trail's XADDs and the durable decisions' HSETs), so
pretrade's asyncio connections use hiredis for both directions.

A ``redis+cluster://host:port[,host:port...]`` URL names Redis Cluster seed
nodes: :func:`connect` returns redis-py's asyncio ``RedisCluster`` (hiredis
parses its replies; it packs commands itself), and :func:`primary_clients`
gives one plain hiredis-packing client per primary, for what is node-local
in a cluster (keyspace notifications, CONFIG).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import hiredis
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: The scheme of a Redis Cluster URL: seed nodes, comma-separated.
CLUSTER_SCHEME = "redis+cluster://"


class HiredisPackingConnection(aioredis.Connection):
    """An asyncio TCP connection whose commands are packed by ``hiredis.pack_command``."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Same splitting of a multi-word command name ("CONFIG GET") as redis-py.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``)."""
    return url.startswith(CLUSTER_SCHEME)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``redis+cluster://[user:password@]host:port[,host:port...]``: seeds, user, password.

    Raises
    ------
    ValueError
        When it is not such a URL, names no seed, or a seed is not ``host:port``.
    """
    if not is_cluster_url(url):
        raise ValueError(f"a Redis Cluster URL starts with {CLUSTER_SCHEME}")
    rest = url[len(CLUSTER_SCHEME):].rstrip("/")
    username = password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        user, _, secret = credentials.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    seeds = []
    for seed in rest.split(","):
        host, _, port = seed.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Redis Cluster seed is host:port, got {seed!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, username, password


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A synchronous client for ``url`` (the CLI's): ``redis.RedisCluster`` for a cluster URL."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    seeds, username, password = parse_cluster_url(url)
    options.setdefault("username", username)
    options.setdefault("password", password)
    cluster: Any = redis.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in seeds],
        require_full_coverage=False, **options)
    return cluster


class KeptCommandTable(AsyncCommandsParser):
    """redis-py's table of command key positions, kept when a re-read of it fails.

    The asyncio cluster client (redis-py 8.1) re-initializes after any
    connection error, and each time re-reads the COMMAND table from the
    first primary of its slot map. While that primary is down (killed, not
    yet replaced by its replica) every re-initialization fails, so every
    command of the client fails, on every slot. The table does not change
    while the servers run: once it has been read, a failed re-read keeps it.
    """

    async def initialize(self, node: Any = None) -> None:
        try:
            await super().initialize(node)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if not self.commands:
                raise


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; TCP URLs get the hiredis-packing connection.

    A ``redis+cluster://`` URL gives an ``aioredis.RedisCluster`` (typed as
    the ``Redis`` its callers use: the commands pretrade sends are the same).
    """
    if is_cluster_url(url):
        seeds, username, password = parse_cluster_url(url)
        options.setdefault("username", username)
        options.setdefault("password", password)
        options.pop("connection_class", None)
        # A failed primary stops its own slots, not the client: the sync fails
        # closed on its own until the replica is promoted and it has resynced.
        cluster: Any = aioredis.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            require_full_coverage=False, **options)
        cluster.commands_parser = KeptCommandTable()
        return cluster
    if url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackingConnection)
    return aioredis.Redis.from_url(url, **options)


#: The protocol of every client pretrade makes (see :func:`redis_client`).
RESP2 = 2


def redis_client(url: str, *, username: str | None = None, password: str | None = None,
                 socket_timeout: float | None = 10, retries: int | None = None
                 ) -> aioredis.Redis:
    """The gateway's asyncio client: bytes replies, hiredis both ways, bounded connects.

    ``socket_timeout=None`` is for a connection whose caller bounds each
    batch itself (the audit writer): no timer around every reply.
    ``retries``: how often redis-py retries a command that failed on the
    link, with no backoff (None: redis-py's default, 10 with a growing
    backoff on a cluster). A caller that tries again itself on a schedule
    (the lease keeper) passes 0, so a command to a lost primary fails in
    milliseconds instead of holding the next ones back.

    RESP2 (``protocol=2``), not redis-py 8's default RESP3: the replies are
    shaped the same (legacy responses), but hiredis builds a RESP3 map of
    100,000 fields (an HGETALL of a large account's lot hash) about 3x
    slower than the flat RESP2 array redis-py pairs up: 84 ms against 48 ms.
    """
    options: dict[str, Any] = {}
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    return connect(
        url, decode_responses=False, health_check_interval=5, socket_connect_timeout=5,
        socket_timeout=socket_timeout, username=username or None, password=password or None,
        protocol=RESP2, **options)


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, aioredis.RedisCluster)


def primary_clients(client: aioredis.Redis) -> list[aioredis.Redis]:
    """One plain asyncio client per primary of a cluster client's current slot map.

    They share the cluster client's credentials and timeouts, use the
    hiredis-packing connection, and are the caller's to close. Keyspace
    notifications are node-local in a cluster: each primary is subscribed on
    its own.
    """
    return list(named_primary_clients(client).values())


def named_primary_clients(client: aioredis.Redis) -> dict[str, aioredis.Redis]:
    """:func:`primary_clients` by the primaries' ``host:port``, in the order of their names."""
    cluster: Any = client
    return {node.name: node_client(client, node.host, node.port)
            for node in sorted(cluster.get_primaries(), key=lambda node: node.name)}


def node_client(client: aioredis.Redis, host: str, port: int) -> aioredis.Redis:
    """A plain asyncio client for one node of a cluster client (the caller's to close).

    It shares the cluster client's credentials and timeouts and uses the
    hiredis-packing connection. Its errors are its own: the cluster
    client's connections and slot map are not touched by them.
    """
    cluster: Any = client
    kwargs = cluster.nodes_manager.connection_kwargs
    options = {name: kwargs[name] for name in (
        "username", "password", "socket_timeout", "socket_connect_timeout",
        "health_check_interval", "decode_responses", "protocol") if name in kwargs}
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool(
        host=host, port=port, connection_class=HiredisPackingConnection, **options))


def slot_map(client: aioredis.Redis) -> dict[int, str]:
    """A cluster client's slot -> primary ``host:port``, as it knows it now."""
    cluster: Any = client
    return {slot: nodes[0].name for slot, nodes in cluster.nodes_manager.slots_cache.items()
            if nodes}


class Reads:
    """Read commands queued as on a pipeline, to run as one consistent snapshot.

    :func:`read_snapshot` runs them in one MULTI/EXEC on a standalone Redis
    (every key in one snapshot, as before clusters), and on a cluster in one
    MULTI/EXEC per hash slot: a transaction never spans slots, and an
    account's keys (``{ACC}``) share one, so each account is still read in
    one consistent snapshot.
    """

    def __init__(self) -> None:
        self.commands: list[tuple[str, bytes]] = []
        #: The arguments of :meth:`command`'s commands, by position.
        self.raw: dict[int, tuple[Any, ...]] = {}

    def hgetall(self, key: bytes) -> None:
        self.commands.append(("hgetall", key))

    def hgetall_flat(self, key: bytes) -> None:
        """HGETALL whose reply may stay the flat RESP2 array (field, value, ...).

        On a standalone Redis it does; on a cluster, or from a client whose
        HGETALL answers otherwise, the reply is the usual dict. For a caller
        that takes both and needs no dict (the lot hashes of a large account:
        pairing 100,000 fields into a dict costs about 9 ms).
        """
        self.commands.append(("hgetall_flat", key))

    def get(self, key: bytes) -> None:
        self.commands.append(("get", key))

    def pttl(self, key: bytes) -> None:
        self.commands.append(("pttl", key))

    def smembers(self, key: bytes) -> None:
        self.commands.append(("smembers", key))

    def ts_get(self, key: bytes) -> None:
        """RedisTimeSeries' latest sample of a series: ``[timestamp, value]``, or ``[]``."""
        self.commands.append(("ts.get", key))

    def command(self, key: bytes, *args: Any) -> None:
        """Any other command on ``key``: ``args`` are the whole command, the key among them."""
        self.commands.append((_RAW, key))
        self.raw[len(self.commands) - 1] = args

    def __len__(self) -> int:
        return len(self.commands)


#: Commands of a module, which a pipeline has no method for.
_MODULE_COMMANDS = frozenset({"ts.get"})

#: :meth:`Reads.hgetall_flat`'s command.
_FLAT_HGETALL = "hgetall_flat"
#: :meth:`Reads.command`'s.
_RAW = "raw"


def _flat_hgetall_callbacks(callbacks: Any) -> Any:
    """A pipeline's reply callbacks, with an HGETALL that leaves a ``flat=True``
    command's RESP2 array as it is (the pipeline's own copy: the client's
    callbacks, which other pipelines share, stay as they are)."""
    default = callbacks.get("HGETALL")

    def hgetall(response: Any, flat: bool = False, **options: Any) -> Any:
        if flat and isinstance(response, list):
            return response
        return default(response, **options) if default is not None else response

    merged = type(callbacks)(callbacks)
    merged["HGETALL"] = hgetall
    return merged


#: Slot transactions of one snapshot in flight at once on a cluster.
SLOT_TRANSACTIONS_IN_FLIGHT = 32


async def read_snapshot(client: aioredis.Redis, reads: Reads) -> list[Any]:
    """The replies to ``reads``, in order; an error reply is its exception (WRONGTYPE...)."""
    if not reads.commands:
        return []
    if not is_cluster(client):
        async with client.pipeline(transaction=True) as pipe:
            if any(name == _FLAT_HGETALL for name, _ in reads.commands):
                pipe.response_callbacks = _flat_hgetall_callbacks(pipe.response_callbacks)
            for at, (name, key) in enumerate(reads.commands):
                if name == _RAW:
                    pipe.execute_command(*reads.raw[at])
                elif name == _FLAT_HGETALL:
                    pipe.execute_command("HGETALL", key, flat=True)
                elif name in _MODULE_COMMANDS:
                    pipe.execute_command(name.upper(), key)
                else:
                    getattr(pipe, name)(key)
            return list(await pipe.execute(raise_on_error=False))
    cluster: Any = client
    by_slot: dict[int, list[int]] = {}
    for at, (_, key) in enumerate(reads.commands):
        by_slot.setdefault(cluster.keyslot(key), []).append(at)
    replies: list[Any] = [None] * len(reads.commands)
    in_flight = asyncio.Semaphore(SLOT_TRANSACTIONS_IN_FLIGHT)

    async def read_slot(positions: list[int]) -> None:
        async with in_flight, client.pipeline(transaction=True) as pipe:
            for at in positions:
                name, key = reads.commands[at]
                # Not pipe.hgetall(): redis-py 8.1's cluster transaction hands the
                # command's routing kwargs (keys=) to reply callbacks that take none.
                if name == _RAW:
                    pipe.execute_command(*reads.raw[at])
                else:
                    pipe.execute_command("HGETALL" if name == _FLAT_HGETALL else name.upper(),
                                         key)
            for at, reply in zip(positions, await pipe.execute(raise_on_error=False),
                                 strict=True):
                replies[at] = reply

    await asyncio.gather(*(read_slot(positions) for positions in by_slot.values()))
    return replies
