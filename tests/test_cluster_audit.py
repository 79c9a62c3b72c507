"""Decided orders and the audit trail on a real Redis Cluster.

``orders:{ACC}`` stays in its account's slot (its writes are grouped by slot,
never one transaction across them) and a new node restores from it; each node
writes its own audit stream ``audit:{NODE}``, and ``pretrade audit`` (and
ListRejections) read every node's, merged in time order.
"""

import json

import grpc
import pytest

from book import codes, order, seed_account, seed_lots
from conftest import GatewayThread, gateway_settings
from pretrade.app.config import ConfigError, Settings
from pretrade.audit.entries import AUDIT_STREAM, node_stream
from pretrade.cli.commands import main
from pretrade.state.schema import orders_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from test_cluster_store import accounts_on_each_primary


@pytest.fixture
def start_node(cluster_client, redis_cluster, tmp_path):
    """Start gateways ("nodes") on the flushed session cluster; all stop at teardown."""
    started: list[GatewayThread] = []

    def start(name: str, **overrides) -> GatewayThread:
        settings = gateway_settings(tmp_path, table_path=str(tmp_path / f"{name}.table"),
                                    node_id=name, **overrides)
        node = GatewayThread(settings, redis_cluster.url)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def test_decided_orders_land_in_their_accounts_slot_and_a_new_node_restores_them(
        cluster_client, start_node):
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
        seed_lots(cluster_client, account, [("L1", "AAPL", 500, 683_378)])
    first = start_node("node-a")
    with grpc.insecure_channel(first.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        for account in accounts:
            assert stub.EvaluateOrder(order(account, quantity=900, order_id=f"w-{account}")
                                      ).approved
    first.stop()
    for account in accounts:
        key = orders_key(account.encode())
        assert cluster_client.hget(key, f"w-{account}".encode()) is not None
        assert cluster_client.get_node_from_key(key).port == \
            cluster_client.get_node_from_key(f"limits:{{{account}}}").port
    second = start_node("node-b")
    with grpc.insecure_channel(second.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        for account in accounts:
            # 500 held + 900 working (restored) of the 5,000 long limit: 3,601 more is too many
            assert codes(stub.EvaluateOrder(order(account, quantity=1_000))) == []
            assert stub.EvaluateOrder(order(account, quantity=1_000)).approved
            assert stub.EvaluateOrder(order(account, quantity=1_000)).approved
            assert pb.REJECT_CODE_MAX_LONG_POSITION in codes(
                stub.EvaluateOrder(order(account, quantity=601)))
            replay = stub.EvaluateOrder(order(account, quantity=900, order_id=f"w-{account}"))
            assert replay.approved and replay.replayed


def test_each_node_audits_to_its_own_stream_and_pretrade_audit_reads_them_all(
        cluster_client, redis_cluster, start_node, capsys):
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
    nodes = [start_node("node-a"), start_node("node-b")]
    decided = []
    for n, node in enumerate(nodes):
        with grpc.insecure_channel(node.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            for account in accounts:
                ok, too_big = f"ok-{n}-{account}", f"big-{n}-{account}"
                assert stub.EvaluateOrder(order(account, order_id=ok)).approved
                assert not stub.EvaluateOrder(order(account, quantity=1_001,
                                                    order_id=too_big)).approved
                decided += [ok, too_big]
    streams = {node_stream("node-a"), node_stream("node-b")}
    assert not cluster_client.exists(AUDIT_STREAM)
    assert all(cluster_client.xlen(stream) > 0 for stream in streams)

    assert main(["audit", "--redis-url", redis_cluster.url, "--event", "decision",
                 "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(entry["order_id"] for entry in entries) == sorted(decided)
    times = [entry["ts_unix_ms"] for entry in entries]
    assert times == sorted(times)  # merged in time order
    assert main(["audit", "--redis-url", redis_cluster.url, "--order-id", decided[-1],
                 "--json"]) == 0
    (only,) = capsys.readouterr().out.splitlines()
    assert json.loads(only)["order_id"] == decided[-1]

    # a node's ListRejections reads every node's stream
    with grpc.insecure_channel(nodes[0].target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        listed = stub.ListRejections(pb.RejectionsRequest())
    assert {rejected.order_id for rejected in listed.rejections} == {
        order_id for order_id in decided if order_id.startswith("big-")}


def test_the_archiver_is_refused_on_a_cluster_url():
    with pytest.raises(ConfigError, match="per-node audit"):
        Settings(redis_url="redis+cluster://127.0.0.1:7000", archive=True)
    assert main(["archive", "--redis-url", "redis+cluster://127.0.0.1:7000",
                 "--database-url", "postgresql://a@127.0.0.1:1/x"]) != 0


def test_a_standalone_node_still_audits_to_the_one_audit_stream(redis_client, start_gateway):
    seed_account(redis_client)
    gateway = start_gateway(node_id="ignored-here")
    with grpc.insecure_channel(gateway.target) as channel:
        assert risk_pb2_grpc.PreTradeRiskStub(channel).EvaluateOrder(order()).approved
    assert redis_client.xlen(AUDIT_STREAM) > 0
    assert not list(redis_client.scan_iter(match=b"audit:*"))


