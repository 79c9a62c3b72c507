"""Server processes for the benchmarks: a Gateway with an empty echo handler beside it.

The echo method lives only here, on the same grpc.aio server stack as
PreTradeRisk, so EvaluateOrder can be compared with a call that does no work.
Each server runs in its own process (spawned before any gRPC object exists in
it), so the client's and the server's CPU are separate.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ECHO_METHOD = "/pretrade.bench.Echo/Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler("pretrade.bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo)})


async def _serve(settings_values: dict[str, Any], redis_url: str, ready: Any,
                 stop: Any) -> None:
    from pretrade.app.config import Settings
    from pretrade.app.server import Gateway

    gateway = Gateway(Settings(**settings_values), redis_url)
    gateway.server.add_generic_rpc_handlers([_echo_handler()])
    port = await gateway.start()
    await gateway.wait_ready()
    ready.send((port, os.getpid()))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    await gateway.stop(grace=1)


def _main(settings_values: dict[str, Any], redis_url: str, ready: Any, stop: Any) -> None:
    asyncio.run(_serve(settings_values, redis_url, ready, stop))


@dataclass
class BenchServer:
    process: multiprocessing.process.BaseProcess
    stop: Any
    target: str
    pid: int

    def close(self) -> None:
        self.stop.set()
        self.process.join(20)
        if self.process.is_alive():
            self.process.kill()


def start_bench_server(redis_url: str, table: Path, **overrides: Any) -> BenchServer:
    values: dict[str, Any] = {"listen": "127.0.0.1:0", "table_path": str(table),
                              "insecure": True, "auth": "none", "max_accounts": 1_024,
                              "max_instruments": 1_024, "max_positions": 65_536,
                              "max_orders": 2_000_000}
    values.update(overrides)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    stop = context.Event()
    process = context.Process(target=_main, args=(values, redis_url, child, stop), daemon=True)
    process.start()
    if not parent.poll(60):
        process.kill()
        raise RuntimeError("the benchmark server did not start")
    port, pid = parent.recv()
    return BenchServer(process, stop, f"127.0.0.1:{port}", pid)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


BANNER = re.compile(rb"serving PreTradeRisk on (\S+:\d+)")


def free_port() -> int:
    """A loopback port that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_serving(target: str, deadline: float) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            assert time.monotonic() < deadline, f"pretrade serve is {status}, not SERVING"
            time.sleep(0.05)


@contextlib.contextmanager
def serve_process(redis_url: str, table: Path, *, env: dict[str, str] | None = None,
                  timeout: float = 120) -> Iterator[tuple[str, int]]:
    """``pretrade serve`` in a child process (its own GIL): ``(target, pid)`` once it serves.

    "Serves" is its health check answering SERVING (the banner comes when it
    listens, a moment before its first proof that it is in sync with Redis).
    The pid is the sync process's (the one started); its server processes are its children.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", "serve", "--redis-url", redis_url,
         "--listen", "127.0.0.1:0", "--table-path", str(table), "--log-level", "WARNING",
         "--insecure", "--auth", "none"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        target = None
        while target is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"pretrade serve exited with {process.wait()}")
            found = BANNER.search(line)
            target = found.group(1).decode() if found else None
        assert target is not None, f"pretrade serve did not print its banner in {timeout} s"
        _wait_until_serving(target, deadline)
        yield target, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
