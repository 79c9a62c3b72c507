"""``make cluster``: a whole sharded deployment on one machine, from the embedded binary.

A Redis Cluster of 3 primaries with a replica each (:class:`RedisClusterServer`),
and three ``pretrade serve`` nodes on it: ``node-a`` owns the first half of
the shards, ``node-b`` the second half, and ``node-c`` is the standby of both
(it follows every shard and approves nothing until an owner's lease lapses).
``node-a`` loads the demo book, whose accounts land in both halves.

Each start is a fresh Redis Cluster (in a temporary directory, removed at
the stop); the nodes' tables live in the data directory. The owners start
first and the standby only once they hold their leases, so the leases go
where the layout says. Ctrl-C (or SIGTERM) stops the nodes,
then the Redis Cluster. A node that dies meanwhile is reported and left
dead: its shards fail over to the standby, which is the thing to try.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pretrade.app.config import CONFIG_FILE_ENV, environment_variable
from pretrade.app.devredis import RedisClusterServer
from pretrade.app.lifetime import returncode_text, start_child, stop_child
from pretrade.shards.slots import shard_of
from pretrade.v1 import risk_pb2, risk_pb2_grpc

log = logging.getLogger(__name__)

#: The demo book's accounts (see pretrade.app.demo), to say which node owns each.
DEMO_ACCOUNTS = (b"DEMO-1", b"DEMO-2")
#: How long a node may take to start and, for an owner, to take its leases.
READY_SECONDS = 60.0
STOP_SECONDS = 15.0


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    first_shard: int
    last_shard: int
    standby: bool = False

    @property
    def shards(self) -> str:
        """As the ``owned_shards`` setting spells them."""
        return f"{self.first_shard}-{self.last_shard}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def plan(ports: tuple[int, int, int], shard_count: int) -> list[Node]:
    """Two owners with half the shards each, and a standby that follows them all."""
    half = shard_count // 2
    return [Node("node-a", ports[0], 0, half - 1),
            Node("node-b", ports[1], half, shard_count - 1),
            Node("node-c", ports[2], 0, shard_count - 1, standby=True)]


def _ready(node: Node, process: subprocess.Popen[bytes]) -> None:
    """Wait until the node serves and, for an owner, holds every lease it owns."""
    deadline = time.monotonic() + READY_SECONDS
    with grpc.insecure_channel(node.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        risk = risk_pb2_grpc.PreTradeRiskStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{node.name} ended ({returncode_text(process.returncode)}) "
                                   "before it served")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not serve on {node.target} within "
                                   f"{READY_SECONDS:.0f} s")
            try:
                serving = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status \
                    == health_pb2.HealthCheckResponse.SERVING
                leases = risk.GetStatus(risk_pb2.StatusRequest(), timeout=2).shard_leases
            except grpc.RpcError:
                serving, leases = False, []
            held = {lease.shard for lease in leases if lease.held_here}
            if serving and (node.standby or
                            held == set(range(node.first_shard, node.last_shard + 1))):
                return
            time.sleep(0.2)


def run(ports: tuple[int, int, int], data_dir: Path, *, shard_count: int,
        lease_ttl_ms: int, stop: threading.Event) -> int:
    """Start the Redis Cluster and the three nodes, print how to use them, serve until
    ``stop`` is set; 0 when everything stopped in order."""
    data_dir.mkdir(parents=True, exist_ok=True)
    nodes = plan(ports, shard_count)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with RedisClusterServer() as cluster:  # fresh each start, in a temporary directory
        try:
            for node in nodes:
                settings = {"owned_shards": node.shards, "shard_count": shard_count,
                            "node_id": node.name, "advertised_address": node.target,
                            "lease_ttl_ms": lease_ttl_ms, "data_dir": data_dir / node.name,
                            "table_path": data_dir / f"{node.name}.table"}
                env = {name: value for name, value in os.environ.items()
                       if name not in ("REDIS_URL", CONFIG_FILE_ENV,
                                       environment_variable("redis_url"))}
                env.update({environment_variable(name): str(value)
                            for name, value in settings.items()})
                command = ["serve", "--redis-url", cluster.url, "--listen", node.target,
                           "--insecure", "--auth", "none"]
                if node.name == "node-a":
                    command.append("--demo")
                processes[node.name] = start_child(command, env, node.name)
                _ready(node, processes[node.name])
            _print_banner(cluster, nodes, shard_count)
            ended: set[str] = set()
            while not stop.wait(0.5):
                for name, process in processes.items():
                    if name not in ended and process.poll() is not None:
                        ended.add(name)
                        print(f"{name} ended ({returncode_text(process.returncode)}); "
                              "its shards fail over to the standby once its leases lapse",
                              flush=True)
        finally:
            for name, process in reversed(processes.items()):
                if process.poll() is None:
                    stop_child(process, name, STOP_SECONDS)
    return 0


def _print_banner(cluster: RedisClusterServer, nodes: list[Node], shard_count: int) -> None:
    print("pretrade local cluster is up")
    print(f"  Redis Cluster  {cluster.url}  (3 primaries, a replica each)")
    for node in nodes:
        role = "standby of every shard" if node.standby else f"owns shards {node.shards}"
        print(f"  {node.name}         {node.target}  {role} (of {shard_count})")
    for account in DEMO_ACCOUNTS:
        shard = shard_of(account, shard_count)
        owner = next(node for node in nodes
                     if not node.standby and node.first_shard <= shard <= node.last_shard)
        print(f"  {account.decode()} is in shard {shard}: {owner.name} decides it")
    first = nodes[0].target
    print("Send an order to any node; the client follows the owner's address:")
    print(f"  .venv/bin/pretrade order --target {first} --account DEMO-1 --symbol AAPL "
          "--side buy --qty 10 --price 68.91")
    print(f"  .venv/bin/pretrade order --target {first} --account DEMO-2 --symbol BRK.B "
          "--side buy --qty 10 --price 455.10")
    print("Try a failover: kill -9 an owner (its pid is in `ps -ef | grep node-`); "
          "the standby takes its shards when the lease lapses. Ctrl-C stops everything.",
          flush=True)


def serve_until_signalled(ports: tuple[int, int, int], data_dir: Path, *, shard_count: int,
                          lease_ttl_ms: int) -> int:
    """:func:`run` until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return run(ports, data_dir, shard_count=shard_count, lease_ttl_ms=lease_ttl_ms, stop=stop)
