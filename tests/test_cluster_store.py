"""The gateway on a real Redis Cluster: loads from every primary, follows every primary.

Accounts are picked so that their ``{ACC}`` keys sit on each of the three
primaries; instruments, prices and halts have no hash tag and land wherever
their key hashes. Everything is written by a plain cluster client, the way an
order system or a risk desk would, and must reach the node's decisions.
"""

import asyncio
import collections
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from book import (
    GENEROUS_LIMITS,
    codes,
    order,
    seed_account,
    seed_instrument,
    seed_limits,
    seed_lots,
    wait_until,
)
from conftest import GatewayThread, gateway_settings
from pretrade.app.devredis import RedisClusterServer, RedisServer
from pretrade.audit.entries import node_stream
from pretrade.engine.table import new_private_table
from pretrade.state.connection import redis_client
from pretrade.state.halts import HaltBook
from pretrade.state.journal import decode
from pretrade.state.schema import (
    HALT_ALL,
    RESTRICTED_SHORT,
    halt_key,
    instrument_key,
    limits_key,
    orders_key,
)
from pretrade.state.sync import Dirty, RedisSync
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port
from test_serve import demo_order


def accounts_on_each_primary(client: redis.RedisCluster) -> list[str]:
    """One account id per primary: the first ``CL-n`` whose ``{ACC}`` slot it serves."""
    found: dict[int, str] = {}
    for n in range(1000):
        account = f"CL-{n}"
        found.setdefault(client.get_node_from_key(limits_key(account.encode())).port, account)
        if len(found) == len(client.get_primaries()):
            return [found[port] for port in sorted(found)]
    raise AssertionError("no account found for every primary")


@pytest.fixture
def cluster_gateway(cluster_client: redis.RedisCluster, redis_cluster: RedisClusterServer,
                    tmp_path: Path) -> Iterator[GatewayThread]:
    """A gateway over the (flushed) session cluster, started after the test's seeding."""
    started: list[GatewayThread] = []

    def start() -> GatewayThread:
        gateway = GatewayThread(gateway_settings(tmp_path), redis_cluster.url)
        started.append(gateway)
        return gateway

    yield start  # type: ignore[misc]
    for gateway in started:
        gateway.stop()


def _stub(gateway: GatewayThread) -> tuple[grpc.Channel, risk_pb2_grpc.PreTradeRiskStub]:
    channel = grpc.insecure_channel(gateway.target)
    return channel, risk_pb2_grpc.PreTradeRiskStub(channel)


def test_orders_are_decided_right_for_accounts_on_each_of_the_three_primaries(
        cluster_client, cluster_gateway):
    accounts = accounts_on_each_primary(cluster_client)
    assert len(accounts) == 3
    for account in accounts:
        seed_account(cluster_client, account)
        seed_lots(cluster_client, account, [("L1", "AAPL", 4_990, 683_378)])
    channel, stub = _stub(cluster_gateway())
    with channel:
        for account in accounts:
            assert stub.EvaluateOrder(order(account, quantity=10)).approved
            assert codes(stub.EvaluateOrder(order(account, quantity=11))) == [
                pb.REJECT_CODE_MAX_NET_POSITION, pb.REJECT_CODE_MAX_LONG_POSITION]
            too_big = stub.EvaluateOrder(order(account, quantity=1_001, side=pb.SIDE_SELL))
            assert codes(too_big) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]


def test_the_sync_follows_every_primary_with_a_canary_on_each(
        redis_cluster, cluster_client, cluster_gateway):
    gateway = cluster_gateway()
    sync = gateway.gateway.writer.sync
    primaries = {node.port for node in redis_cluster.primaries()}
    assert {cluster_client.get_node_from_key(key).port for key in sync.canary_keys} == primaries
    assert len(sync.canary_keys) == 3
    assert gateway.gateway.table.sync_live


def test_a_limit_change_and_a_fill_on_each_primary_reach_the_decision(
        cluster_client, cluster_gateway):
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
    channel, stub = _stub(cluster_gateway())
    with channel:
        for account in accounts:
            assert stub.EvaluateOrder(order(account, quantity=100)).approved
            seed_limits(cluster_client, account, **{**GENEROUS_LIMITS,
                                                    "max_order_quantity": 50})
            wait_until(lambda account=account: codes(stub.EvaluateOrder(
                order(account, quantity=100))),
                lambda found: found == [pb.REJECT_CODE_MAX_ORDER_QUANTITY])
            # a fill: a lot of 4,980 makes the next 30 break the long limit of 5,000
            seed_lots(cluster_client, account, [("F1", "AAPL", 4_980, 683_378)])
            wait_until(lambda account=account: codes(stub.EvaluateOrder(
                order(account, quantity=30))),
                lambda found: found == [pb.REJECT_CODE_MAX_NET_POSITION,
                                        pb.REJECT_CODE_MAX_LONG_POSITION])


def test_halt_all_a_symbol_halt_and_an_instrument_change_reach_the_node(
        cluster_client, cluster_gateway):
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
    seed_instrument(cluster_client, "MSFT", price=4_000_000)
    channel, stub = _stub(cluster_gateway())
    halted = {b"mode": b"HALTED", b"reason": b"test", b"by": b"desk", b"at": b"1"}
    with channel:
        cluster_client.hset(halt_key(pb.HALT_SCOPE_SYMBOL, b"MSFT"), mapping=halted)
        for account in accounts:
            wait_until(lambda account=account: codes(stub.EvaluateOrder(
                order(account, "MSFT", price=4_000_000))),
                lambda found: found == [pb.REJECT_CODE_SYMBOL_HALT])
            assert stub.EvaluateOrder(order(account)).approved
        cluster_client.hset(HALT_ALL, mapping=halted)
        for account in accounts:
            wait_until(lambda account=account: codes(stub.EvaluateOrder(order(account))),
                       lambda found: pb.REJECT_CODE_GLOBAL_HALT in found)
        cluster_client.delete(HALT_ALL, halt_key(pb.HALT_SCOPE_SYMBOL, b"MSFT"))
        cluster_client.hset(instrument_key(b"AAPL"), b"lot_size", b"100")
        for account in accounts:
            wait_until(lambda account=account: codes(stub.EvaluateOrder(order(account))),
                       lambda found: found == [pb.REJECT_CODE_LOT_SIZE])
            assert stub.EvaluateOrder(order(account, quantity=100)).approved
            assert stub.EvaluateOrder(order(account, "MSFT", price=4_000_000)).approved


def _decide(stub: risk_pb2_grpc.PreTradeRiskStub, account: str, quantity: int = 10) -> list[int]:
    """The codes of a BUY of AAPL at $68.91 (on the demo book's cent ticks too); [] approved."""
    decision = stub.EvaluateOrder(order(account, quantity=quantity, price=689_100))
    return [] if decision.approved else codes(decision)


def _node_off(cluster: RedisClusterServer, primary: RedisServer) -> str:
    """A node name whose audit stream is not on ``primary``: with that primary down the
    node's answers are not held back for their audit records (UNAVAILABLE, which is
    the failover drill's to check), so these tests see the decisions."""
    return next(f"node-{n}" for n in range(1000)
                if cluster.primary_of(node_stream(f"node-{n}")).port != primary.port)


def test_one_silent_primary_fails_the_table_closed_until_its_canary_comes_back(tmp_path):
    # A paused primary (its notifications stop, the others flow) is a stale
    # table, not a live one, for the accounts of the healthy primaries too.
    with RedisClusterServer(data_dir=tmp_path / "cluster", node_timeout_ms=15_000) as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        accounts = accounts_on_each_primary(client)
        for account in accounts:
            seed_account(client, account)
        paused = cluster.primary_of(limits_key(accounts[2].encode()))
        gateway = GatewayThread(gateway_settings(tmp_path, max_sync_lag_ms=400,
                                                 node_id=_node_off(cluster, paused)),
                                cluster.url)
        try:
            channel, stub = _stub(gateway)
            with channel:
                assert all(_decide(stub, account) == [] for account in accounts)
                os.kill(paused.pid, signal.SIGSTOP)
                try:
                    wait_until(lambda: _decide(stub, accounts[0]),
                               lambda found: found == [pb.REJECT_CODE_STALE_DATA])
                finally:
                    os.kill(paused.pid, signal.SIGCONT)
                for account in accounts:
                    wait_until(lambda account=account: _decide(stub, account),
                               lambda found: found == [], timeout=15)
        finally:
            gateway.stop()
            client.close()


def test_a_failed_over_primary_is_resynced_and_followed_on_its_promoted_replica(tmp_path):
    with RedisClusterServer(data_dir=tmp_path / "cluster") as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        accounts = accounts_on_each_primary(client)
        for account in accounts:
            seed_account(client, account)
        victim = cluster.primary_of(limits_key(accounts[1].encode()))
        gateway = GatewayThread(gateway_settings(
            tmp_path, node_id=_node_off(cluster, victim)), cluster.url)
        sync = gateway.gateway.writer.sync
        try:
            channel, stub = _stub(gateway)
            with channel:
                assert all(_decide(stub, account) == [] for account in accounts)
                loads = sync.stats.full_loads
                cluster.kill(victim)
                # stale while the cluster fails over (no order decided on a table that
                # may have missed the dead primary's last writes): the whole table when
                # the primary served a key every order reads, else its own slots
                table = gateway.gateway.table
                wait_until(lambda: (table.sync_live, table.lost_slot_count()),
                           lambda state: not state[0] or state[1] > 0)
                cluster.wait_until_served()
                for account in accounts:
                    wait_until(lambda account=account: _decide(stub, account),
                               lambda found: found == [], timeout=30)
                # re-read: all of it, or the lost slots in place
                assert sync.stats.full_loads > loads or sync.stats.slots_recovered > 0
                assert table.lost_slot_count() == 0
                victim_name = f"127.0.0.1:{victim.port}"
                assert victim_name not in {owner for _, _, owner in sync.topology}
                assert len(sync.canary_keys) == 3
                # the promoted replica's notifications reach the decisions
                seed_limits(client, accounts[1], **{**GENEROUS_LIMITS, "max_order_quantity": 5})
                wait_until(lambda: _decide(stub, accounts[1]),
                           lambda found: found == [pb.REJECT_CODE_MAX_ORDER_QUANTITY],
                           timeout=10)
        finally:
            gateway.stop()
            client.close()


@pytest.mark.timeout(60)
def test_a_lost_primary_back_with_no_failover_is_a_full_resync_not_slots_lost_for_good(
        tmp_path):
    # No replica, so no failover and no slot-map change: the primary comes back
    # on its own slots, without its data. Only a full load can trust them again.
    with RedisClusterServer(data_dir=tmp_path / "cluster", replicas=0) as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        accounts = accounts_on_each_primary(client)
        for account in accounts:
            seed_account(client, account)
        global_keys = {cluster.primary_of(key).port for key in (HALT_ALL, RESTRICTED_SHORT)}
        victim = next(primary for primary in cluster.primaries()
                      if primary.port not in global_keys)
        victim_account = next(account for account in accounts
                              if cluster.primary_of(limits_key(account.encode())) is victim)
        gateway = GatewayThread(gateway_settings(
            tmp_path, node_id=_node_off(cluster, victim)), cluster.url)
        sync, table = gateway.gateway.writer.sync, gateway.gateway.table
        try:
            channel, stub = _stub(gateway)
            with channel:
                assert _decide(stub, victim_account) == []
                loads = sync.stats.full_loads
                cluster.kill(victim)
                wait_until(table.lost_slot_count, lambda count: count > 0)
                cluster.restart(victim)
                wait_until(lambda: (sync.stats.full_loads > loads, table.lost_slot_count(),
                                    table.sync_live),
                           lambda state: state == (True, 0, True), timeout=20)
                # its account went with the primary's data: refused, never approved; the
                # order approved before is written back, so it still reserves when the
                # account is loaded again
                assert pb.REJECT_CODE_UNKNOWN_ACCOUNT in _decide(stub, victim_account)
                records = client.hgetall(orders_key(victim_account.encode()))
                assert [decode(victim_account.encode(), order_id, raw).approved
                        for order_id, raw in records.items()].count(True) == 1
        finally:
            gateway.stop()
            client.close()


def test_the_table_is_only_as_fresh_as_the_oldest_beat_heard_from_every_primary(
        redis_cluster, cluster_client):
    async def check() -> None:
        table = new_private_table(max_accounts=8, max_instruments=8, max_positions=16,
                                  max_overrides=8, lock_stripes=2)
        client = redis_client(redis_cluster.url)
        sync = RedisSync(client, table, HaltBook(table))
        nodes = await sync._subscribed_nodes()
        try:
            keys = sync.canary_keys
            assert len(nodes) == len(keys) == 3
            sync._beats = {key: collections.deque() for key in keys}
            for sent_at, key in zip((10.0, 20.0, 30.0), keys, strict=True):
                sync._beats[key].extend([sent_at, sent_at + 100])

            def hear(key: bytes) -> None:
                sync._note(Dirty(), {"channel": b"__keyspace@0__:" + key, "data": b"set"})

            hear(keys[1])
            hear(keys[2])
            assert sync._heard_beat == 0.0  # one primary not heard from: nothing confirmed
            hear(keys[0])
            assert sync._heard_beat == 10.0
            hear(keys[0])  # the first primary's next beat: the oldest is the second's now
            assert sync._heard_beat == 20.0
        finally:
            for node in nodes:
                await node.aclose()
            await client.aclose()

    asyncio.run(check())


def test_pretrade_serve_demo_with_two_processes_on_a_cluster_url_decides_and_follows(
        cluster_client, redis_cluster, tmp_path):
    # The real command: the writer syncs from the cluster, the server processes
    # follow it through the change feed (a PUBLISH, cluster-wide).
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
    server = Serve(tmp_path, "cluster-serve", "--workers", "2", "--listen",
                   f"127.0.0.1:{free_port()}", "--redis-url", redis_cluster.url, "--demo")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            assert stub.EvaluateOrder(demo_order("cluster-demo-1")).approved  # --demo wrote it
            for account in accounts:
                assert _decide(stub, account) == []
                seed_limits(cluster_client, account, **{**GENEROUS_LIMITS,
                                                        "max_order_quantity": 5})
            # every server process (the calls spread over both) sees every change
            for account in accounts:
                for _ in range(4):
                    wait_until(lambda account=account: _decide(stub, account),
                               lambda found: found == [pb.REJECT_CODE_MAX_ORDER_QUANTITY])
        assert server.terminate() == 0, server.log()
    finally:
        server.kill()
