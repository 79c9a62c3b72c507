"""Account ownership over real node processes, one real redis-server, real gRPC.

Two ``pretrade serve`` nodes split the accounts' shards between them (their
leases in Redis): each decides its own accounts, refuses the other's
FAILED_PRECONDITION NOT_OWNER naming the owner, and a node that cannot renew
its lease stops approving (STALE_DATA) before the lease can expire, after
which another node takes the shard with a higher epoch.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from book import codes, order, seed_account, wait_until
from pretrade.audit.entries import AUDIT_STREAM, rows_of
from pretrade.shards.slots import shard_of
from pretrade.state.schema import lease_epoch_key, lease_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

SHARDS = 2
TTL_MS = 1_500
#: One account in each of the two shards.
IN_SHARD = {shard_of(b"ACC-1", SHARDS): "ACC-1", shard_of(b"ACC-2", SHARDS): "ACC-2"}
assert sorted(IN_SHARD) == [0, 1]


def ownership_env(node: str, shards: str, ttl_ms: int = TTL_MS) -> dict[str, str]:
    return {"PRETRADE_OWNED_SHARDS": shards, "PRETRADE_SHARD_COUNT": str(SHARDS),
            "PRETRADE_NODE_ID": node, "PRETRADE_LEASE_TTL_MS": str(ttl_ms)}


def node_starter(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Serve]]:
    """``start(node, shards, ttl_ms)``: a ``pretrade serve`` owning those shards, serving;
    every node started is killed afterwards (thawed first, if a test froze it)."""
    started: list[Serve] = []

    def start(node: str, shards: str, ttl_ms: int = TTL_MS) -> Serve:
        server = Serve(tmp_path, node, "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                       env=ownership_env(node, shards, ttl_ms))
        started.append(server)
        server.wait_for_banner()
        server.wait_until_serving()
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            os.kill(server.pid, signal.SIGCONT)  # a test may have left it frozen
        server.kill()


@pytest.fixture
def start_node(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Serve]]:
    yield from node_starter(tmp_path, redis_url)


def stub_of(server: Serve) -> risk_pb2_grpc.PreTradeRiskStub:
    return risk_pb2_grpc.PreTradeRiskStub(grpc.insecure_channel(server.target))


def refusal(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def held(stub: risk_pb2_grpc.PreTradeRiskStub, shard: int) -> bool:
    leases = stub.GetStatus(pb.StatusRequest(), timeout=5).shard_leases
    return any(lease.shard == shard and lease.held_here for lease in leases)


def decided_ids(redis_client) -> Counter[str]:
    """Order ids of the audit's decisions that were decided (not replayed), counted."""
    seen: Counter[str] = Counter()
    for entry_id, raw in redis_client.xrange(AUDIT_STREAM):
        for _, row in rows_of(entry_id, raw):
            if row.get("event") == "decision" and row.get("replayed") == "0":
                seen[row["order_id"]] += 1
    return seen


def seeded(r: redis.Redis) -> None:
    for account in IN_SHARD.values():
        seed_account(r, account)


def holding_shard_zero(redis_client: redis.Redis, start_gateway, lease_ttl_ms: int = TTL_MS):
    """An in-process gateway "node-a" over the seeded book, once it holds shard 0's lease."""
    seeded(redis_client)
    gateway = start_gateway("gw", owned_shards="0", shard_count=SHARDS, node_id="node-a",
                            lease_ttl_ms=lease_ttl_ms)
    with grpc.insecure_channel(gateway.target) as channel:
        wait_until(lambda: held(risk_pb2_grpc.PreTradeRiskStub(channel), 0), bool, timeout=10)
    return gateway


def test_two_nodes_each_decide_their_own_accounts_and_refuse_the_others_naming_the_owner(
        redis_client, start_node):
    seeded(redis_client)
    a = start_node("node-a", "0")
    b = start_node("node-b", "1")
    stubs = {0: stub_of(a), 1: stub_of(b)}
    targets = {0: a.target, 1: b.target}
    for shard in (0, 1):
        wait_until(lambda s=shard: held(stubs[s], s), bool, timeout=10)
    for shard, account in IN_SHARD.items():
        assert stubs[shard].EvaluateOrder(order(account), timeout=5).approved
        other = stubs[1 - shard]
        with pytest.raises(grpc.RpcError) as refused:
            other.EvaluateOrder(order(account, order_id=f"x-{account}"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = refusal(refused.value)
        assert info.reason == "NOT_OWNER" and info.domain == "pretrade.dev"
        assert dict(info.metadata) == {
            "account": account, "shard": str(shard), "owner": f"node-{'ab'[shard]}",
            "address": targets[shard], "shards": str(shard), "shard_count": str(SHARDS),
            f"owner.{shard}": f"node-{'ab'[shard]}", f"address.{shard}": targets[shard]}
        # refused before anything was decided: the owner decides that id afresh
        decision = stubs[shard].EvaluateOrder(order(account, order_id=f"x-{account}"),
                                              timeout=5)
        assert decision.approved and not decision.replayed
    # a batch with an account elsewhere is refused whole, naming every owner
    batch = pb.OrderBatch(orders=[order("ACC-1"), order("ACC-2")])
    with pytest.raises(grpc.RpcError) as refused:
        stubs[0].EvaluateOrders(batch, timeout=5)
    assert refusal(refused.value).metadata["shards"] == "1"
    status = stubs[0].GetStatus(pb.StatusRequest(), timeout=5)
    assert status.shard_count == SHARDS and status.node_id == "node-a"
    assert status.advertised_address == a.target
    assert [(lease.shard, lease.node_id, lease.held_here) for lease in status.shard_leases] \
        == [(0, "node-a", True), (1, "node-b", False)]
    assert [(lease.first_slot, lease.last_slot) for lease in status.shard_leases] \
        == [(0, 8191), (8192, 16383)]


def test_a_frozen_owner_stops_approving_before_its_lease_expires_and_the_next_holder_serves(
        redis_client, start_node):
    seeded(redis_client)
    account = IN_SHARD[0]
    a = start_node("node-a", "0")
    stub_a = stub_of(a)
    wait_until(lambda: held(stub_a, 0), bool, timeout=10)
    first = json.loads(redis_client.get(lease_key(0)))
    assert first["node"] == "node-a" and first["epoch"] >= 1
    assert stub_a.EvaluateOrder(order(account, order_id="before"), timeout=5).approved
    # node B wants the same shard: it cannot have it while A renews
    b = start_node("node-b", "0")
    stub_b = stub_of(b)
    with pytest.raises(grpc.RpcError) as refused:
        stub_b.EvaluateOrder(order(account), timeout=5)
    assert refusal(refused.value).metadata["owner"] == "node-a"
    # freeze A's sync process (the one that renews): its server processes go
    # on answering, and must stop approving before the lease expires in Redis
    sync_pid = a.pid
    os.kill(sync_pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    # (approved, codes, A still holds the lease in Redis right after the answer)
    decisions: list[tuple[bool, list[int], bool]] = []
    try:
        while time.monotonic() - frozen_at < TTL_MS / 1000 * 3:
            decision = stub_a.EvaluateOrder(order(account), timeout=5)
            value = redis_client.get(lease_key(0))
            still_a = value is not None and json.loads(value)["node"] == "node-a"
            decisions.append((decision.approved, codes(decision), still_a))
            if not still_a:
                break
            time.sleep(0.01)
        assert not decisions[-1][2], "the lease never expired"
        # A approved only while it held the lease, and refused STALE_DATA while it
        # still held it (its own deadline came first)
        assert not any(approved for approved, _, still_a in decisions if not still_a)
        assert any(codes_ == [pb.REJECT_CODE_STALE_DATA] and still_a
                   for _, codes_, still_a in decisions), decisions
        # B takes the shard once the lease expired, with a higher epoch, and serves
        wait_until(lambda: held(stub_b, 0), bool, timeout=10)
        second = json.loads(redis_client.get(lease_key(0)))
        assert second["node"] == "node-b" and second["epoch"] > first["epoch"]
        assert stub_b.EvaluateOrder(order(account, order_id="after"), timeout=5).approved
        # A stays stale for that account while it is frozen
        assert codes(stub_a.EvaluateOrder(order(account), timeout=5)) \
            == [pb.REJECT_CODE_STALE_DATA]
    finally:
        os.kill(sync_pid, signal.SIGCONT)
    # thawed, A finds its lease gone: it refuses NOT_OWNER, naming B
    def refused_by_a() -> str:
        try:
            stub_a.EvaluateOrder(order(account), timeout=5)
        except grpc.RpcError as error:
            return refusal(error).metadata["owner"]
        return ""
    assert wait_until(refused_by_a, lambda owner: owner == "node-b", timeout=10) == "node-b"
    # every order id was decided once, by one node (the audit of both)
    decided = decided_ids(redis_client)
    assert decided["before"] == decided["after"] == 1 and max(decided.values()) == 1


def test_a_lease_key_of_another_type_is_nobodys_and_the_shard_is_refused_naming_no_owner(
        redis_client, start_gateway):
    seeded(redis_client)
    redis_client.hset(lease_key(0), "node", "impostor")
    gateway = start_gateway("gw", owned_shards="all", shard_count=SHARDS, node_id="node-a",
                            lease_ttl_ms=TTL_MS)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        wait_until(lambda: held(stub, 1), bool, timeout=10)
        assert stub.EvaluateOrder(order(IN_SHARD[1]), timeout=5).approved
        with pytest.raises(grpc.RpcError) as refused:
            stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5)
        info = refusal(refused.value)
        assert info.reason == "NOT_OWNER"
        assert (info.metadata["shard"], info.metadata["owner"], info.metadata["address"]) \
            == ("0", "", "")
        assert stub.GetStatus(pb.StatusRequest(), timeout=5).lease_failures == 0
        # the operator removes it: the node takes the shard within a renewal period
        redis_client.delete(lease_key(0))
        wait_until(lambda: held(stub, 0), bool, timeout=10)
        assert stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5).approved


def test_a_clean_stop_gives_the_leases_back_at_once(redis_client, start_gateway):
    gateway = holding_shard_zero(redis_client, start_gateway, lease_ttl_ms=60_000)
    assert json.loads(redis_client.get(lease_key(0)))["address"] == gateway.target
    gateway.stop()
    assert not redis_client.exists(lease_key(0))


def test_a_stolen_lease_is_lost_at_the_next_renewal_and_the_thief_is_named(
        redis_client, start_gateway):
    gateway = holding_shard_zero(redis_client, start_gateway)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        mine = json.loads(redis_client.get(lease_key(0)))
        assert stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5).approved
        thief = {"node": "thief", "address": "10.9.9.9:1", "epoch": mine["epoch"] + 1,
                 "token": "t"}
        redis_client.set(lease_key(0), json.dumps(thief), px=60_000)

        def owner_named() -> str:
            try:
                stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5)
            except grpc.RpcError as error:
                return refusal(error).metadata["address"]
            return ""

        assert wait_until(owner_named, bool, timeout=TTL_MS / 1000) == "10.9.9.9:1"
        status = stub.GetStatus(pb.StatusRequest(), timeout=5)
        assert not any(lease.held_here for lease in status.shard_leases)
    # it does not take the shard back while the thief's lease lives
    assert json.loads(redis_client.get(lease_key(0)))["node"] == "thief"


@pytest.mark.parametrize("held_between", [False, True])
def test_a_lapsed_lease_is_taken_again_and_served_at_once_unless_another_node_held_it(
        redis_client, start_gateway, held_between):
    """A lease that expired unrenewed (its primary lost, say) and that nobody took since
    is taken again with the next epoch and its shard decided at once, on the table as it
    is; a jump of the epoch means another holder, whose decisions only a full load reads."""
    gateway = holding_shard_zero(redis_client, start_gateway)
    sync, keeper = gateway.gateway.writer.sync, gateway.gateway.writer.keeper
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5).approved
        epoch = json.loads(redis_client.get(lease_key(0)))["epoch"]
        loads = sync.stats.full_loads
        if held_between:  # another node took the shard and let it go meanwhile
            redis_client.incr(lease_epoch_key(0))
        redis_client.delete(lease_key(0))  # expired in Redis
        wait_until(lambda: json.loads(redis_client.get(lease_key(0)) or "{}").get("epoch"),
                   lambda new: new is not None and new > epoch, timeout=TTL_MS / 1000 * 2)
        new_epoch = json.loads(redis_client.get(lease_key(0)))["epoch"]
        assert new_epoch == epoch + (2 if held_between else 1)
        wait_until(lambda: stub.EvaluateOrder(order(IN_SHARD[0]), timeout=5).approved, bool,
                   timeout=10)
    assert keeper.rejoined == (0 if held_between else 1)
    assert (sync.stats.full_loads > loads) is held_between


def test_an_order_session_ends_not_owner_at_an_account_another_node_owns(
        redis_client, start_gateway):
    gateway = holding_shard_zero(redis_client, start_gateway)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        orders = [order(IN_SHARD[0], order_id="s-1"), order(IN_SHARD[1], order_id="s-2"),
                  order(IN_SHARD[0], order_id="s-3")]
        answered = []
        with pytest.raises(grpc.RpcError) as ended:
            for decision in stub.OrderSession(iter(orders), timeout=10):
                answered.append(decision)
    assert [d.order_id for d in answered] == ["s-1"] and answered[0].approved
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal(ended.value).reason == "NOT_OWNER"
    assert decided_ids(redis_client) == Counter({"s-1": 1})   # s-2 and s-3 not decided
