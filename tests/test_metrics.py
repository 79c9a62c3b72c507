"""The Prometheus endpoint of a real ``pretrade serve``: scraped over HTTP while orders flow.

Each test starts a server subprocess with ``--metrics-listen``, sends real
gRPC calls and checks that the scraped figures move with them: decisions by
verdict, rejections by code, halts and the breakers, the gRPC conventions,
the sync and table gauges. With ``--workers 2`` each process serves its own
port (PORT + i), and the figures of both add up to what was sent.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from book import GENEROUS_LIMITS, order, seed_account, wait_until
from faults import child_pids
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_ports(count: int) -> int:
    """A port such that it and the ``count - 1`` after it are free now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                held = socket.socket()
                sockets.append(held)
                held.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for held in sockets:
                held.close()
    raise AssertionError("no run of free ports")


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` on ``port``: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= set(series))


@pytest.fixture
def metered(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[
        tuple[Serve, int]]:
    seed_account(redis_client)
    port = free_ports(1)
    server = Serve(tmp_path, "metered", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--metrics-listen", f"127.0.0.1:{port}")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        yield server, port
    finally:
        server.kill()


def test_scraped_figures_move_with_orders_rejections_and_halts(metered, redis_client):
    server, port = metered
    before = scrape(port)
    assert value(before, "pretrade_sync_live") == 1
    # the server process, a child of the sync process that was started
    (child,) = child_pids(server.pid)
    assert value(before, "pretrade_process", worker="0", pid=str(child)) == 1
    assert value(before, "pretrade_table_records", kind="accounts") == 1
    assert value(before, "pretrade_table_capacity", kind="orders") > 0
    assert value(before, "pretrade_table_records", kind="groups") == 0
    assert value(before, "pretrade_table_capacity", kind="groups") > 0
    assert value(before, "pretrade_risk_checks_total", verdict="approved") == 0
    with grpc.insecure_channel(server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        for _ in range(3):
            assert stub.EvaluateOrder(order(), timeout=5).approved
        too_big = order(quantity=GENEROUS_LIMITS["max_order_quantity"] + 1)
        assert not stub.EvaluateOrder(too_big, timeout=5).approved
        assert not stub.EvaluateOrder(order(account="NOBODY"), timeout=5).approved
        replay = order(order_id="same-id")
        assert stub.EvaluateOrder(replay, timeout=5).approved
        assert stub.EvaluateOrder(replay, timeout=5).replayed
        stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id="ACC-1",
                                 mode=pb.HALT_MODE_HALTED, reason="metrics test"), timeout=5)
        assert not stub.EvaluateOrder(order(), timeout=5).approved
        with pytest.raises(grpc.RpcError) as refused:
            stub.EvaluateOrder(pb.Order(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The sync runs in the sync process: its figures reach this server process
    # with the change feed, at most a quarter of a second later.
    after = wait_until(lambda: scrape(port), lambda figures: value(
        figures, "pretrade_sync_events_total") > value(before, "pretrade_sync_events_total"))
    assert value(after, "pretrade_risk_checks_total", verdict="approved") == 4
    assert value(after, "pretrade_risk_checks_total", verdict="rejected") == 3
    assert value(after, "pretrade_risk_checks_total", verdict="replayed") == 1
    assert value(after, "pretrade_rejections_total", code="MAX_ORDER_QUANTITY") == 1
    assert value(after, "pretrade_rejections_total", code="UNKNOWN_ACCOUNT") == 1
    assert value(after, "pretrade_rejections_total", code="ACCOUNT_HALT") == 1
    # The engine-time histogram: every decision in a bucket, and some time spent.
    assert value(after, "pretrade_risk_check_latency_microseconds_count",
                 verdict="approved") == 4
    assert value(after, "pretrade_risk_check_latency_microseconds_bucket", verdict="approved",
                 le="+Inf") == 4
    assert value(after, "pretrade_risk_check_latency_microseconds_sum", verdict="approved") > 0
    service = "pretrade.v1.PreTradeRisk"
    unary = {"grpc_service": service, "grpc_type": "unary"}
    assert value(after, "grpc_server_started_total", grpc_method="EvaluateOrder", **unary) == 9
    assert value(after, "grpc_server_handled_total", grpc_method="EvaluateOrder",
                 grpc_code="OK", **unary) == 8
    assert value(after, "grpc_server_handled_total", grpc_method="EvaluateOrder",
                 grpc_code="INVALID_ARGUMENT", **unary) == 1
    assert value(after, "grpc_server_handled_total", grpc_method="Halt", grpc_code="OK",
                 **unary) == 1
    assert value(after, "grpc_server_handling_seconds_count", grpc_method="EvaluateOrder",
                 **unary) == 9
    # The halt reached the table through Redis and the sync: events were followed,
    # and the canary's round trip measured the update lag.
    assert value(after, "pretrade_sync_events_total") > value(before, "pretrade_sync_events_total")
    assert value(after, "pretrade_position_update_lag_seconds_count") > 0
    assert value(after, "pretrade_sync_full_loads_total") == 1
    assert value(after, "pretrade_audit_written_total") >= value(before,
                                                                  "pretrade_audit_written_total")


def test_a_reject_storm_trip_is_counted_by_scope_and_reason(metered, redis_client):
    server, port = metered
    redis_client.hset("limits:{ACC-1}", mapping={"max_rejects_per_window": 3,
                                                 "reject_window_ms": 60_000})
    with grpc.insecure_channel(server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        too_big = GENEROUS_LIMITS["max_order_quantity"] + 1
        wait_until(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5).events_applied,
                   lambda events: events > 0)
        for _ in range(3):
            stub.EvaluateOrder(order(quantity=too_big), timeout=5)
        wait_until(lambda: value(scrape(port), "pretrade_circuit_breaker_trips_total",
                                 scope="account", reason="reject_storm"),
                   lambda trips: trips == 1)
        decision = stub.EvaluateOrder(order(), timeout=5)
        assert pb.REJECT_CODE_ACCOUNT_HALT in [r.code for r in decision.rejections]


def test_the_endpoint_serves_only_metrics_and_refuses_other_methods(metered):
    _, port = metered
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert missing.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405
    # A client that connects and sends nothing holds no slot for ever.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        assert value(scrape(port), "pretrade_sync_live") == 1
        idle.settimeout(10)
        assert idle.recv(100) == b""  # closed by the server after its request timeout


def test_with_two_workers_each_process_serves_its_own_figures(redis_client, redis_url,
                                                              tmp_path):
    seed_account(redis_client)
    port = free_ports(2)
    server = Serve(tmp_path, "metered-workers", "--workers", "2", "--redis-url", redis_url,
                   "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        sent = 24
        pids = set()
        for _ in range(sent):
            # Each channel its own connection, so SO_REUSEPORT spreads them.
            with grpc.insecure_channel(server.target,
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as c:
                stub = risk_pb2_grpc.PreTradeRiskStub(c)
                pids.add(stub.GetStatus(pb.StatusRequest(), timeout=5).pid)
                assert stub.EvaluateOrder(order(), timeout=5).approved
        owner, worker = scrape(port), scrape(port + 1)
        workers = {key[1] for key in (*owner, *worker) if key[0] == "pretrade_process"}
        assert {dict(labels)["worker"] for labels in workers} == {"0", "1"}
        approved = [value(figures, "pretrade_risk_checks_total", verdict="approved")
                    for figures in (owner, worker)]
        assert sum(approved) == sent
        if len(pids) == 2:
            assert all(count > 0 for count in approved)
        # The shared table says the same on both ports.
        for figures in (owner, worker):
            assert value(figures, "pretrade_table_records", kind="orders") == sent
        assert sum(total(figures, "grpc_server_started_total", grpc_method="EvaluateOrder")
                   for figures in (owner, worker)) == sent
    finally:
        server.kill()


def test_metrics_are_off_unless_asked_for(redis_client, redis_url, tmp_path):
    seed_account(redis_client)
    server = Serve(tmp_path, "unmetered", "--redis-url", redis_url, "--listen", "127.0.0.1:0")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        assert "metrics on http" not in server.log()
    finally:
        server.kill()


def test_a_metrics_address_in_use_refuses_the_start_with_exit_4(redis_client, redis_url,
                                                                 tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = Serve(tmp_path, "metrics-taken", "--redis-url", redis_url, "--listen",
                       "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}")
        try:
            assert server.wait(timeout=60) == 4
            assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log()
        finally:
            server.kill()


def test_the_grafana_dashboard_queries_only_metrics_the_exporter_serves():
    import json
    import re

    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    exporter = (root / "src" / "pretrade" / "app" / "metrics.py").read_text()
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(?:pretrade|grpc_server)_\w+", target["expr"]))
    assert len(queried) > 15
    for name in queried:
        base = re.sub(r"_(bucket|total)$", "", name)
        assert f'"{base}"' in exporter, name
