"""The embedded redis-server: found, started, reachable, stopped, persistent."""

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from book import wait_until
from pretrade.app import devredis, redisbinaries
from pretrade.app.devredis import RedisServer, find_redis_cli, find_redis_server
from pretrade.engine.errors import DataDirInUse
from test_serve import process_alive


def _port_accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def test_a_redis_server_and_cli_binary_are_found():
    assert _is_executable(find_redis_server())
    assert _is_executable(find_redis_cli())


def test_an_explicit_binary_path_wins(monkeypatch):
    found = find_redis_server()
    monkeypatch.setenv("PRETRADE_REDIS_SERVER", found)
    monkeypatch.setenv("PATH", "")
    assert find_redis_server() == found


def test_an_explicit_binary_path_that_does_not_exist_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PRETRADE_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RuntimeError, match="PRETRADE_REDIS_SERVER"):
        find_redis_server()


def test_the_redis_stack_binary_is_used_when_none_is_named_and_loads_timeseries(monkeypatch,
                                                                               tmp_path):
    monkeypatch.delenv("PRETRADE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", "")
    found = Path(find_redis_server())
    stack = redisbinaries.stack_dir()
    assert stack is not None
    assert found in (redisbinaries.wrapper_dir() / "bin" / "redis-server",
                     stack / "bin" / "redis-server")
    with RedisServer(data_dir=tmp_path) as server:
        assert server.timeseries
        client = redis.Redis.from_url(server.url, protocol=2)
        assert client.info("server")["redis_version"].startswith("7.4.")
        client.execute_command("TS.ADD", "price_history:AAPL", 1, 689100)
        assert client.execute_command("TS.GET", "price_history:AAPL") == [1, b"689100"]


def test_the_redis_stack_wrapper_fetched_openssl_1_1_by_its_pinned_digest():
    """Where the system lacks OpenSSL 1.1, `make` wrote a wrapper and the pinned libraries."""
    wrapper = redisbinaries.wrapper_dir() / "bin" / "redis-server"
    if not wrapper.exists():
        pytest.skip("Redis Stack runs here as it is: no wrapper was needed")
    libraries = redisbinaries.wrapper_dir() / "lib"
    assert sorted(p.name for p in libraries.iterdir()) == sorted(redisbinaries.OPENSSL_LIBRARIES)
    assert str(libraries) in wrapper.read_text()
    assert subprocess.run([str(wrapper), "--version"], capture_output=True,
                          check=True).stdout.startswith(b"Redis server v=7.4.")


def test_the_cluster_fixtures_run_the_embedded_redis_unless_another_is_named(monkeypatch):
    monkeypatch.delenv(redisbinaries.CLUSTER_BINARY_ENV, raising=False)
    assert redisbinaries.find_cluster_redis_server() == find_redis_server()
    monkeypatch.setenv(redisbinaries.CLUSTER_BINARY_ENV, find_redis_cli())
    assert redisbinaries.find_cluster_redis_server() == find_redis_cli()


def test_a_debian_archive_without_data_is_refused():
    with pytest.raises(RuntimeError, match="not a Debian archive"):
        redisbinaries._deb_data(b"PK\x03\x04 not an ar archive")
    empty_ar = b"!<arch>\n" + b"debian-binary/  0           0     0     100644  4         `\n2.0\n"
    with pytest.raises(RuntimeError, match="no data.tar member"):
        redisbinaries._deb_data(empty_ar)


def test_session_server_answers_ping(redis_client):
    assert redis_client.ping() is True
    redis_client.set(b"pretrade:probe", b"1")
    assert redis_client.get(b"pretrade:probe") == b"1"


def test_session_server_publishes_all_keyspace_and_keyevent_notifications(redis_client):
    flags = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    flags = flags.decode() if isinstance(flags, bytes) else flags
    assert "K" in flags and "E" in flags
    assert "A" in flags or set("g$lshzxe") <= set(flags)


def test_keyspace_notification_arrives_for_a_write(redis_client):
    pubsub = redis_client.pubsub()
    try:
        pubsub.psubscribe("__keyspace@0__:pretrade:*")
        assert pubsub.get_message(timeout=2.0)["type"] == "psubscribe"
        redis_client.hset(b"pretrade:account:A1", b"cash", b"100")
        message = pubsub.get_message(timeout=2.0)
        assert message is not None
        assert message["channel"] == b"__keyspace@0__:pretrade:account:A1"
        assert message["data"] == b"hset"
    finally:
        pubsub.close()


def test_server_binds_loopback_with_snapshots_off(redis_client):
    config = redis_client.config_get("*")
    assert config["bind"] == "127.0.0.1"
    assert config["save"] == ""
    assert config["appendonly"] == "no"


def test_stop_closes_the_port_and_is_idempotent(tmp_path):
    server = RedisServer(data_dir=tmp_path).start()
    port, pid = server.port, server.pid
    assert _port_accepts_connections(port)
    server.stop()
    assert not server.running
    assert not _port_accepts_connections(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.stop()


def test_a_server_that_was_never_started_stops_quietly():
    RedisServer().stop()


def test_temporary_data_dir_is_removed_at_stop():
    with RedisServer() as server:
        data_dir = server.data_dir
        assert data_dir.is_dir()
        assert server.log_path.exists()
    assert not data_dir.exists()


def test_persistent_server_keeps_data_across_a_restart(tmp_path):
    with RedisServer(data_dir=tmp_path, persistent=True) as first:
        client = redis.Redis.from_url(first.url)
        client.set(b"pretrade:halt:global", b"HALTED")
        client.close()
    with RedisServer(data_dir=tmp_path, persistent=True) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get(b"pretrade:halt:global") == b"HALTED"
        client.close()


def test_non_persistent_server_starts_empty_after_a_restart(tmp_path):
    with RedisServer(data_dir=tmp_path) as first:
        client = redis.Redis.from_url(first.url)
        client.set(b"pretrade:halt:global", b"HALTED")
        client.close()
    with RedisServer(data_dir=tmp_path) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get(b"pretrade:halt:global") is None
        client.close()


def test_persistent_without_a_data_dir_is_refused():
    with pytest.raises(ValueError, match="data_dir"):
        RedisServer(persistent=True)


def test_password_is_required_and_kept_off_disk(tmp_path):
    with RedisServer(data_dir=tmp_path, password='s3cret "quoted"') as server:
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        authenticated = redis.Redis.from_url(server.url)
        assert authenticated.ping() is True
        authenticated.close()
        assert not (tmp_path / "redis-secrets.conf").exists()


def test_a_taken_port_fails_with_the_reason(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = RedisServer(port=port, data_dir=tmp_path)
        with pytest.raises(RuntimeError, match="address in use"):
            server.start()
        assert not server.running


def test_starting_twice_is_refused(redis_server):
    with pytest.raises(RuntimeError, match="already running"):
        redis_server.start()


def test_log_file_is_private_to_the_data_dir(redis_server):
    assert redis_server.log_path.parent == redis_server.data_dir
    assert stat.S_ISREG(redis_server.log_path.stat().st_mode)


def test_a_free_port_taken_before_redis_binds_it_is_retried_with_another(monkeypatch, tmp_path):
    real_pick = devredis._pick_free_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(devredis, "_pick_free_port", lambda: next(picks, None) or real_pick())
        with RedisServer(data_dir=tmp_path) as server:
            assert server.port != taken
            client = redis.Redis.from_url(server.url)
            assert client.ping() is True
            client.close()


def test_two_servers_never_share_a_data_directory(tmp_path):
    with RedisServer(data_dir=tmp_path, persistent=True) as first:
        second = RedisServer(data_dir=tmp_path, persistent=True)
        with pytest.raises(DataDirInUse) as refused:
            second.start()
        message = str(refused.value)
        assert "\n" not in message
        assert str(tmp_path) in message and f"redis-server pid {first.pid}" in message
        assert not second.running
        assert first.running and redis.Redis(port=first.port).ping()
    # Once the first has stopped, the directory is free again.
    with RedisServer(data_dir=tmp_path, persistent=True) as third:
        assert redis.Redis(port=third.port).ping()


_PARENT = """
import sys, time
from pathlib import Path
from pretrade.app.devredis import RedisServer
server = RedisServer(data_dir=Path(sys.argv[1]), persistent=True).start()
print(server.pid, flush=True)
time.sleep(600)
"""


def test_a_redis_server_whose_parent_is_killed_dies_and_frees_its_directory(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    redis_pid = None
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert process_alive(redis_pid)
        parent.kill()  # kill -9: no chance to stop its redis-server
        parent.wait(timeout=10)
        wait_until(lambda: process_alive(redis_pid), lambda alive: not alive, timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
        if redis_pid is not None and process_alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
    with RedisServer(data_dir=tmp_path, persistent=True) as after:
        assert redis.Redis(port=after.port).ping()


def test_the_suite_refuses_an_external_redis_that_holds_keys(tmp_path):
    # PRETRADE_TEST_REDIS_URL: every test flushes the Redis it runs on, so one with
    # data in it is refused before any test runs, not wiped.
    with RedisServer(data_dir=tmp_path / "held") as held:
        client = redis.Redis.from_url(held.url)
        client.set("someone-elses", "data")
        env = {**os.environ, "PRETRADE_TEST_REDIS_URL": held.url}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_service.py::test_position_written_by_redis_cli_changes_the_next_decision"],
            cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
            timeout=120)
        assert run.returncode == 4, run.stdout + run.stderr
        assert "PRETRADE_TEST_REDIS_URL holds 1 keys" in run.stdout + run.stderr
        assert client.get("someone-elses") == b"data"
        client.close()


def test_a_child_that_dies_before_it_runs_redis_server_is_started_again(monkeypatch, tmp_path):
    # What gRPC's at-fork handlers now and then do to a child forked by a process
    # that runs gRPC: SIGABRT between fork and exec. The first child aborts.
    marker = tmp_path / "aborted-once"
    real = devredis.die_with_parent

    def abort_the_first_child(parent_pid: int) -> None:
        if not marker.exists():
            marker.touch()
            os.abort()
        real(parent_pid)

    monkeypatch.setattr(devredis, "die_with_parent", abort_the_first_child)
    with RedisServer(data_dir=tmp_path / "data") as server:
        assert marker.exists()
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()
