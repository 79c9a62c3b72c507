"""The archive under faults, with real processes: ``pretrade serve`` and ``pretrade archive``
children, orders over gRPC, Redis paused, processes killed with SIGKILL.

What must hold afterwards: every order that got an answer (a decision) has exactly one
audit row in PostgreSQL, and no record has two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from book import order, seed_account, wait_until
from faults import child_pids
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port
from test_serve import serve_environment

#: How long the order flow runs in each test (seconds).
FLOW_SECONDS = 3.0
CATCH_UP_SECONDS = 30.0


class ArchiveProcess:
    """``python -m pretrade archive`` as a child process, its log in a file."""

    def __init__(self, tmp_path: Path, name: str, redis_url: str, database_url: str,
                 **settings: str) -> None:
        env = serve_environment(tmp_path / f"{name}-data", tmp_path / f"{name}.table")
        env.update({"PRETRADE_REDIS_URL": redis_url, "PRETRADE_DATABASE_URL": database_url,
                    "PRETRADE_ARCHIVE_CLAIM_IDLE_MS": "300", "PRETRADE_AUDIT_RETAIN_MS": "1"})
        env.update({f"PRETRADE_{name.upper()}": value for name, value in settings.items()})
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrade", "archive", "--consumer", name],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=20)
        self._log.close()
        return status


class OrderFlow:
    """Batches of orders from a thread until stopped; remembers every decision answered."""

    def __init__(self, target: str, prefix: str, batch: int = 20) -> None:
        self.target, self.prefix, self.batch = target, prefix, batch
        self.answered: list[str] = []
        self.refused: list[str] = []  # AUDIT_UNAVAILABLE: not decided, so not recorded
        self.failed_calls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        with grpc.insecure_channel(self.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            while not self.stop.is_set():
                orders = [order(order_id=f"{self.prefix}-{n + i}", quantity=1,
                                side=pb.SIDE_BUY if (n + i) % 2 else pb.SIDE_SELL)
                          for i in range(self.batch)]
                n += self.batch
                try:
                    reply = stub.EvaluateOrders(pb.OrderBatch(orders=orders), timeout=5)
                except grpc.RpcError:
                    self.failed_calls += 1
                    time.sleep(0.01)
                    continue
                for decision in reply.decisions:
                    codes = [r.code for r in decision.rejections]
                    if codes == [pb.REJECT_CODE_AUDIT_UNAVAILABLE]:
                        self.refused.append(decision.order_id)
                    else:
                        self.answered.append(decision.order_id)

    def __enter__(self) -> OrderFlow:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=20)


def archived(database_url: str, prefix: str) -> dict[str, int]:
    """Rows per order id of the decisions archived for ``prefix``."""
    with psycopg.connect(database_url) as connection:
        try:
            found = connection.execute(
                "SELECT order_id, count(*) FROM audit_record WHERE event = 'decision' "
                "AND order_id LIKE %s GROUP BY order_id", (f"{prefix}-%",)).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return dict(found)


def wait_archived(database_url: str, prefix: str, expected: set[str]) -> dict[str, int]:
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while True:
        found = archived(database_url, prefix)
        if expected <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


@pytest.fixture
def server(tmp_path: Path, redis_url: str, book: redis.Redis) -> Iterator[Serve]:
    started = Serve(tmp_path, "gateway", "--redis-url", redis_url, "--listen", "127.0.0.1:0")
    try:
        started.wait_for_banner()
        started.wait_until_serving()
        yield started
    finally:
        started.kill()


def test_every_answered_order_has_one_row_after_redis_pauses_and_the_archiver_is_killed(
        tmp_path, redis_url, database_url, book, server):
    first = ArchiveProcess(tmp_path, "first", redis_url, database_url)
    second = None
    try:
        with OrderFlow(server.target, "paused") as flow:
            time.sleep(FLOW_SECONDS / 4)
            book.execute_command("CLIENT", "PAUSE", 700)  # every client: writes and reads
            time.sleep(FLOW_SECONDS / 4)
            first.kill()  # SIGKILL, whatever it was doing
            time.sleep(FLOW_SECONDS / 4)
            second = ArchiveProcess(tmp_path, "second", redis_url, database_url)
            time.sleep(FLOW_SECONDS / 4)
        assert len(flow.answered) > 100, (flow.answered[:5], flow.failed_calls)
        found = wait_archived(database_url, "paused", set(flow.answered))
        missing = set(flow.answered) - set(found)
        assert not missing, f"{len(missing)} answered orders have no row: {sorted(missing)[:5]}"
        assert {order_id: n for order_id, n in found.items() if n != 1} == {}
        assert not set(flow.refused) & set(found)
        assert second.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()


@pytest.mark.parametrize("durable_decisions", ["1", "0"])
def test_a_server_killed_mid_batch_loses_no_answered_decision_and_writes_none_twice(
        tmp_path, redis_url, database_url, book, durable_decisions):
    server = Serve(tmp_path, "killed", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   env={"PRETRADE_DURABLE_DECISIONS": durable_decisions})
    keeper = ArchiveProcess(tmp_path, "keeper", redis_url, database_url)
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with OrderFlow(server.target, "killed", batch=100) as flow:
            time.sleep(FLOW_SECONDS / 2)
            # Redis holds writes back: what is decided now waits for its record...
            book.execute_command("CLIENT", "PAUSE", 1_000, "WRITE")
            time.sleep(0.3)
            # ...when the server dies, batches in flight: kill -9 of the processes that
            # decide (the server processes), then of the sync process that started them
            for pid in [*child_pids(server.pid), server.pid]:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        assert len(flow.answered) > 100
        assert flow.failed_calls >= 1  # the calls in flight when it died
        found = wait_archived(database_url, "killed", set(flow.answered))
        missing = set(flow.answered) - set(found)
        assert not missing, f"{len(missing)} answered orders have no row: {sorted(missing)[:5]}"
        assert {order_id: n for order_id, n in found.items() if n != 1} == {}
        assert keeper.stop() == 0
    finally:
        keeper.kill()
        server.kill()


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_the_archiver_serves_its_figures_and_they_move_with_the_archive(
        tmp_path, redis_url, database_url, server):
    port = free_port()
    archiver = ArchiveProcess(tmp_path, "metered", redis_url, database_url,
                              archive_metrics_listen=f"127.0.0.1:{port}")
    try:
        before = wait_until(lambda: _try_scrape(port), lambda figures: figures is not None, 20)
        assert before["pretrade_audit_archived_rows_total"] == 0
        with OrderFlow(server.target, "metered") as flow:
            time.sleep(FLOW_SECONDS / 3)
        answered = set(flow.answered)
        assert answered
        wait_archived(database_url, "metered", answered)
        after = wait_until(lambda: _scrape(port), lambda figures: figures[
            "pretrade_audit_archived_rows_total"] >= len(answered), 20)
        assert after["pretrade_audit_archived_entries_total"] > 0
        assert after["pretrade_audit_archive_errors_total"] == 0
        assert after["pretrade_audit_archive_lag_seconds"] >= 0
        assert archiver.stop() == 0
    finally:
        archiver.kill()


def _try_scrape(port: int) -> dict[str, float] | None:
    try:
        return _scrape(port)
    except OSError:
        return None


def _archiver_of(server: Serve) -> int | None:
    """The pid of the archiver child of ``server`` (``python -m pretrade archive``), if any."""
    for pid in child_pids(server.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"archive" in command and b"pretrade" in command:
            return pid
    return None


def test_a_killed_archiver_beside_serve_is_started_again_and_archives_what_waited(
        tmp_path, redis_url, database_url, book):
    server = Serve(tmp_path, "kept", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--archive", "--database-url", database_url)
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        first = wait_until(lambda: _archiver_of(server), lambda pid: pid is not None, 20)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # Decided while no archiver runs: they wait in the stream for the next one.
        with OrderFlow(server.target, "kept") as flow:
            time.sleep(FLOW_SECONDS / 3)
        assert flow.answered
        second = wait_until(lambda: _archiver_of(server),
                            lambda pid: pid is not None and pid != first, 20)
        found = wait_archived(database_url, "kept", set(flow.answered))
        assert set(flow.answered) <= set(found)
        assert {order_id: n for order_id, n in found.items() if n != 1} == {}
        assert f"the archiver (pid {first}) ended on its own (killed by SIGKILL)" in server.log()
        assert server.process.poll() is None  # the gateway never stopped for it
        assert server.terminate() == 0, server.log()
        assert not Path(f"/proc/{second}").exists()  # stopped with the server, and reaped
    finally:
        server.kill()
