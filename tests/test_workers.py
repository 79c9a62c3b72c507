"""Several server processes on one port and one shared table (pretrade serve --workers)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import codes, order, seed_account, wait_until
from pretrade.app.lifetime import KeptChild, check_kept_children, listener_pids
from pretrade.cli.commands import EXIT_WORKER_FAILED
from pretrade.engine.table import MappedTable
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port
from test_serve import process_alive

BANNER = re.compile(r"serving PreTradeRisk on ([\d.]+:\d+)")


@pytest.fixture
def two_workers(redis_client: redis.Redis, redis_url: str, tmp_path: Path
                ) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    seed_account(redis_client)
    redis_client.hset("limits:{ACC-1}", "max_long_position", 3_000)
    table = tmp_path / "shared.table"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRADE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrade", "serve", "--workers", "2", "--listen",
         "127.0.0.1:0", "--redis-url", redis_url, "--table-path", str(table),
         "--insecure", "--auth", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)
    try:
        target = None
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while target is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            match = BANNER.search(line)
            target = match.group(1) if match else None
        assert target, "no banner"
        threading.Thread(target=process.stdout.read, daemon=True).start()  # drain logs
        yield target, table, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        # Whatever the test left of the group (a worker that outlived its owner).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _stub(target: str) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    # A local subchannel pool gives each channel its own connection.
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def _wait_live(stub: risk_pb2_grpc.PreTradeRiskStub) -> None:
    deadline = time.monotonic() + 20
    while not stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_workers_share_one_port_and_one_table(two_workers):
    target, table_path, _ = two_workers
    pids = set()
    channels = [_stub(target) for _ in range(16)]
    try:
        for _, stub in channels:
            _wait_live(stub)
            pids.add(stub.GetStatus(pb.StatusRequest(), timeout=5).pid)
        assert len(pids) == 2, "connections should spread over both processes"
    finally:
        for channel, _ in channels:
            channel.close()


def _first_child(pid: int, timeout: float = 20.0) -> int:
    """The first child process of ``pid``, as soon as it exists (polled in /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.0005)
    raise AssertionError(f"pid {pid} forked no worker within {timeout} s")


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=5).status


def test_the_banner_and_health_serving_wait_for_every_worker(redis_client, redis_url,
                                                              tmp_path):
    seed_account(redis_client)
    for attempt in range(3):
        port = free_port()
        server = Serve(tmp_path, f"slow-worker-{attempt}", "--workers", "2", "--listen",
                       f"127.0.0.1:{port}", "--redis-url", redis_url)
        try:
            worker = _first_child(server.pid)
            os.kill(worker, signal.SIGSTOP)  # a worker that is slow to start
            try:
                if worker in listener_pids(port):
                    continue  # it bound before it was stopped: try again
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
                    # The other server process serves and the table is in sync ...
                    wait_until(lambda stub=stub: stub.GetStatus(
                        pb.StatusRequest(), timeout=5, wait_for_ready=True).sync_live, bool, 20)
                    time.sleep(0.5)
                    # ... but while a worker does not, no banner and no SERVING.
                    assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
                    assert not any("serving PreTradeRisk" in line for line in server.stdout), \
                        server.stdout
            finally:
                os.kill(worker, signal.SIGCONT)
            target = server.wait_for_banner()
            # The server processes listen; the sync process (the one started) does not.
            children = [int(pid) for pid in
                        Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
            assert worker in children and len(children) == 2
            assert listener_pids(port) == sorted(children)
            with grpc.insecure_channel(target) as channel:
                wait_until(lambda channel=channel: _health(channel),
                           lambda status: status == health_pb2.HealthCheckResponse.SERVING, 20)
            assert server.terminate() == 0, server.log()
            assert "Traceback" not in server.log(), server.log()
            return
        finally:
            server.kill()
    pytest.fail("the worker bound its port before it could be stopped, three times")


def test_a_worker_that_dies_before_it_serves_fails_the_start_with_its_own_status(
        redis_client, redis_url, tmp_path):
    seed_account(redis_client)
    for attempt in range(3):
        port = free_port()
        server = Serve(tmp_path, f"dying-worker-{attempt}", "--workers", "2", "--listen",
                       f"127.0.0.1:{port}", "--redis-url", redis_url)
        try:
            worker = _first_child(server.pid)
            os.kill(worker, signal.SIGSTOP)
            if worker in listener_pids(port):
                continue  # it bound before it was stopped: try again
            os.kill(worker, signal.SIGKILL)
            assert server.wait() == EXIT_WORKER_FAILED, server.log()
            last = server.log().strip().splitlines()[-1]
            assert last.startswith("pretrade: ") and "worker" in last, server.log()
            assert "Traceback" not in server.log(), server.log()
            assert not any("serving PreTradeRisk" in line for line in server.stdout)
            assert not (tmp_path / f"dying-worker-{attempt}.table").exists()
            return
        finally:
            server.kill()
    pytest.fail("the worker bound its port before it could be stopped, three times")


def test_a_worker_of_a_killed_owner_stops_too(two_workers):
    target, table_path, process = two_workers
    channels = [_stub(target) for _ in range(16)]
    try:
        pids = {stub.GetStatus(pb.StatusRequest(), timeout=5).pid for _, stub in channels}
    finally:
        for channel, _ in channels:
            channel.close()
    # two server processes answer; the sync process that started them does not
    assert len(pids) == 2 and process.pid not in pids
    process.kill()  # kill -9: no chance to stop its server processes itself
    process.wait(10)
    for worker in pids:
        wait_until(lambda worker=worker: process_alive(worker), lambda alive: not alive, 10)


def test_orders_on_several_processes_never_jointly_breach_a_limit(two_workers):
    target, table_path, _ = two_workers
    approved: list[int] = []
    lock = threading.Lock()

    def fire(worker: int) -> None:
        rng = random.Random(worker)
        channel, stub = _stub(target)
        mine = 0
        with channel:
            _wait_live(stub)
            for _ in range(250):
                quantity = rng.randint(1, 40)
                if stub.EvaluateOrder(order(quantity=quantity), timeout=10).approved:
                    mine += quantity
        with lock:
            approved.append(mine)

    threads = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(approved) == 8
    mapped = MappedTable.attach(table_path)
    try:
        working = mapped.table.working(b"ACC-1", b"AAPL")[0]
    finally:
        mapped.close()
    assert sum(approved) <= 3_000
    assert sum(approved) == working
    assert sum(approved) > 3_000 - 40


def test_a_halt_through_one_process_stops_orders_on_every_process(two_workers):
    target, _, _ = two_workers
    channels = [_stub(target) for _ in range(8)]
    try:
        for _, stub in channels:
            _wait_live(stub)
        channels[0][1].Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                                           mode=pb.HALT_MODE_HALTED, reason="test"))
        for _, stub in channels:
            assert codes(stub.EvaluateOrder(order(), timeout=5)) == [
                pb.REJECT_CODE_ACCOUNT_HALT]
    finally:
        for channel, _ in channels:
            channel.close()


def test_sigterm_stops_every_process(two_workers):
    target, table_path, process = two_workers
    channel, stub = _stub(target)
    with channel:
        _wait_live(stub)
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert not table_path.exists()


def test_a_kept_child_that_keeps_failing_is_started_again_ever_more_slowly(caplog):
    # A real child that fails at once (an unknown command: argparse's exit status 2).
    child = KeptChild(["no-such-command"], dict(os.environ), "failing child",
                      first_delay=0.2, longest_delay=0.4, healthy_after=60)
    # Each delay is timed from the check that saw the end (just after ``before``)
    # to when it made the child due; the restart is never early, and may be late
    # by as much as a loaded machine delays this loop (0.44 s once in CI).
    delays: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while child.restarts < 3 and time.monotonic() < deadline:
            was_due, restarts = child.restart_due, child.restarts
            before = time.monotonic()
            check_kept_children()
            after, due = time.monotonic(), child.restart_due
            if was_due is None and due is not None:
                delays.append(due - before)
            if child.restarts > restarts:
                assert was_due is not None and after >= was_due, "started before it was due"
            time.sleep(0.01)
    finally:
        child.stop(5)
    assert child.restarts == 3
    # 0.2 s, then doubled to the longest, 0.4 s, and no more
    assert [round(delay, 1) for delay in delays] == [0.2, 0.4, 0.4], delays
    assert "the failing child (pid" in caplog.text and "exit status 2" in caplog.text
    check_kept_children()  # a stopped child is not kept any more
    assert child.restarts == 3
