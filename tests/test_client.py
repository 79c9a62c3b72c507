"""pretrade.client against real nodes: two gateways splitting the shards over one real
redis-server, real gRPC channels.

The client routes each order to its account's owner by slot, learns the map
from a refusal (FAILED_PRECONDITION NOT_OWNER, followed once) or from Redis,
batches per node, re-sends only what reached no node, and the seed's race
(2,000 concurrent BUYs of 10 against a max long of 5,000) approves exactly 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from book import codes, order, seed_account, wait_until
from conftest import GatewayThread
from pretrade.client import AsyncRiskClient, CallFailed, RiskClient
from pretrade.shards.slots import shard_of
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import free_port
from test_ownership import IN_SHARD, SHARDS, held

TTL_MS = 1_500


def two_nodes(redis_client, start_gateway: Callable[..., GatewayThread]
              ) -> tuple[GatewayThread, GatewayThread]:
    for account in IN_SHARD.values():
        seed_account(redis_client, account)
    nodes = tuple(start_gateway(f"node-{name}", owned_shards=str(shard), shard_count=SHARDS,
                                node_id=f"node-{name}", lease_ttl_ms=TTL_MS)
                  for shard, name in enumerate("ab"))
    for shard, node in enumerate(nodes):
        with grpc.insecure_channel(node.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            wait_until(lambda s=stub, n=shard: held(s, n), bool, timeout=10)
    return nodes[0], nodes[1]


def approved_by(node: GatewayThread) -> int:
    return node.gateway.status().decisions_approved


def test_the_client_follows_a_redirect_once_and_then_routes_by_slot(redis_client,
                                                                     start_gateway):
    a, b = two_nodes(redis_client, start_gateway)
    with RiskClient([a.target]) as client:
        assert client.evaluate(order(IN_SHARD[1], order_id="r-1")).approved   # via a -> b
        assert client.refreshes == 1
        assert client.map.address_of(IN_SHARD[1]) == b.target
        assert client.map.address_of(IN_SHARD[0]) == a.target
        assert client.evaluate(order(IN_SHARD[1], order_id="r-2")).approved
        assert client.evaluate(order(IN_SHARD[0], order_id="r-3")).approved
        assert client.refreshes == 1                    # straight to the owners since
    assert (approved_by(a), approved_by(b)) == (1, 2)


def test_the_map_can_come_from_redis_and_batches_go_one_per_node(redis_client, start_gateway):
    a, b = two_nodes(redis_client, start_gateway)
    orders = [order(IN_SHARD[i % 2], order_id=f"m-{i}") for i in range(20)]
    url = redis_client.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}"
    with RiskClient([a.target], redis_url=redis_url, shard_count=SHARDS) as client:
        decisions = client.evaluate_many(orders)
        assert client.refreshes == 1
    assert [d.order_id for d in decisions] == [o.order_id for o in orders]
    assert all(d.approved for d in decisions)
    assert (approved_by(a), approved_by(b)) == (10, 10)


def test_a_batch_over_both_shards_sent_to_one_node_is_split_after_its_refusal(
        redis_client, start_gateway):
    a, b = two_nodes(redis_client, start_gateway)
    orders = [order(IN_SHARD[i % 2], order_id=f"s-{i}") for i in range(7)]
    with RiskClient([b.target]) as client:
        decisions = client.evaluate_many(orders)
        again = client.evaluate_many(orders)            # the same ids: replayed
    assert [d.order_id for d in decisions] == [o.order_id for o in orders]
    assert all(d.approved and not d.replayed for d in decisions)
    assert all(d.approved and d.replayed for d in again)
    assert (approved_by(a), approved_by(b)) == (4, 3)


def test_the_asyncio_client_routes_batches_and_follows_redirects_the_same(redis_client,
                                                                          start_gateway):
    a, b = two_nodes(redis_client, start_gateway)

    async def run() -> tuple[pb.Decision, list[pb.Decision], int]:
        async with AsyncRiskClient([a.target]) as client:
            one = await client.evaluate(order(IN_SHARD[1], order_id="as-1"))
            many = await client.evaluate_many(
                [order(IN_SHARD[i % 2], order_id=f"as-m{i}") for i in range(6)])
            return one, many, client.refreshes

    one, many, refreshes = asyncio.run(run())
    assert one.approved and refreshes == 1
    assert [d.order_id for d in many] == [f"as-m{i}" for i in range(6)]
    assert all(d.approved for d in many)
    assert (approved_by(a), approved_by(b)) == (3, 4)


def test_a_redirect_is_followed_once_and_a_shard_nobody_holds_fails_naming_no_owner(
        redis_client, start_gateway):
    seed_account(redis_client, IN_SHARD[1])
    a = start_gateway("node-a", owned_shards="0", shard_count=SHARDS, node_id="node-a",
                      lease_ttl_ms=TTL_MS)
    with RiskClient([a.target]) as client, pytest.raises(CallFailed) as failed:
        client.evaluate(order(IN_SHARD[1]))
    assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.reason == "NOT_OWNER" and failed.value.metadata["owner"] == ""
    assert client.refreshes == 1


def test_only_calls_that_reached_no_node_are_sent_again(redis_client, start_gateway):
    seed_account(redis_client, "ACC-1")
    node = start_gateway("single")           # ownership off: any node decides
    dead = f"127.0.0.1:{free_port()}"
    with RiskClient([dead, node.target], timeout=2) as client:
        first = client.evaluate(order("ACC-1", order_id="same"))
        assert first.approved and not first.replayed
        assert client.refreshes == 1          # the dead seed: retried at the next one
        # the same id again is a replay: re-sending is safe
        assert client.evaluate(order("ACC-1", order_id="same")).replayed
        # a malformed order is not retried
        refreshes = client.refreshes
        with pytest.raises(CallFailed) as failed:
            client.replace(pb.ReplaceRequest(order_id="", account_id="ACC-1",
                                             original_order_id="same"))
        assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.refreshes == refreshes
    with RiskClient([dead], timeout=2, retries=1) as client, pytest.raises(CallFailed) as gone:
        client.evaluate(order("ACC-1"))
    assert gone.value.code == grpc.StatusCode.UNAVAILABLE and client.refreshes == 1


def test_the_seed_race_through_the_client_approves_exactly_500(redis_client, start_gateway):
    a, b = two_nodes(redis_client, start_gateway)
    account = IN_SHARD[1]                     # owned by b; the client starts at a

    async def race() -> tuple[list[pb.Decision], int]:
        async with AsyncRiskClient([a.target], timeout=30) as client:
            return list(await asyncio.gather(*(
                client.evaluate(order(account, quantity=10, order_id=f"race-{i}"))
                for i in range(2_000)))), client.refreshes

    decisions, refreshes = asyncio.run(race())
    print(f"map refreshes for 2,000 refused calls: {refreshes}")
    assert refreshes < 200                    # the refused calls share their refreshes
    approved = sum(d.approved for d in decisions)
    assert approved == 500
    # max net and max long are both 5,000 in the book
    assert all(set(codes(d)) == {pb.REJECT_CODE_MAX_NET_POSITION,
                                 pb.REJECT_CODE_MAX_LONG_POSITION}
               for d in decisions if not d.approved)
    assert approved_by(a) == 0 and approved_by(b) == 500
    assert shard_of(account.encode(), SHARDS) == 1


def test_pretrade_order_sent_to_a_node_that_does_not_own_the_account_is_decided_by_its_owner(
        redis_client, start_gateway):
    from test_cli import order_args, run_pretrade

    a, b = two_nodes(redis_client, start_gateway)
    run = run_pretrade(*order_args(a.target, account=IN_SHARD[1]), "--order-id", "cli-owned")
    assert run.returncode == 0, run
    assert "APPROVED" in run.stdout
    assert (approved_by(a), approved_by(b)) == (0, 1)
