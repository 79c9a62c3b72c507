"""Account groups end to end: a real gRPC channel, state written by redis-cli.

ACC-1 and ACC-2 (generous limits of their own) are in the desk DESK-1
(``groups:{ACC}``), whose ``group:<G>`` hash holds the desk's
max_long_position, summed over both accounts' positions and working buys.
Every change is made in Redis and followed by the sync; after each, a fresh
load of the same Redis (what a restart, or the reconciliation, builds)
equals the followed table.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
import redis

from book import (
    differences_from_a_fresh_load,
    order,
    redis_cli,
    seed_account,
    seed_limits,
    wait_until,
)
from conftest import GatewayThread, gateway_settings
from pretrade.engine.limits import LimitKind
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from test_cluster_store import accounts_on_each_primary

DESK_LIMIT = 150


@pytest.fixture
def desk(redis_client: redis.Redis, redis_url: str) -> redis.Redis:
    """ACC-1 and ACC-2 in DESK-1, whose max_long_position is 150; no positions."""
    seed_account(redis_client, "ACC-1")
    seed_limits(redis_client, "ACC-2")
    redis_cli(redis_url,
              "SADD groups:{ACC-1} DESK-1\n"
              "SADD groups:{ACC-2} DESK-1\n"
              f"HSET group:DESK-1 max_long_position {DESK_LIMIT}\n")
    return redis_client


def rejections(decision: pb.Decision) -> list[tuple[int, int, int]]:
    return [(r.code, r.observed, r.limit) for r in decision.rejections]


def groups_of(gateway, account: bytes) -> tuple[bytes, ...]:
    return gateway.gateway.table.account_groups(account)  # type: ignore[no-any-return]


def group(gateway, group_id: bytes) -> dict | None:
    return gateway.gateway.table.group_info(group_id)  # type: ignore[no-any-return]


def loaded(gateway) -> None:
    """Wait until the gateway holds the desk as the fixture wrote it."""
    wait_until(lambda: group(gateway, b"DESK-1"),
               lambda info: info is not None and info["known"]
               and info["members"] == (b"ACC-1", b"ACC-2"))


_barriers = itertools.count()


def applied_everything_before(redis_client: redis.Redis, gateway) -> None:
    """Wait until the gateway has applied every write made before this call.

    The sync applies halts last in each batch, so once a halt written now is
    in force every earlier write is in the table (a symbol halt of a symbol
    nobody trades, its mode switched at each call)."""
    mode = (pb.HALT_MODE_HALTED, pb.HALT_MODE_REDUCE_ONLY)[next(_barriers) % 2]
    redis_client.hset("halt:symbol:BARRIER", "mode", pb.HaltMode.Name(mode)[len("HALT_MODE_"):])
    wait_until(lambda: gateway.gateway.table.halt_mode(pb.HALT_SCOPE_SYMBOL, b"BARRIER"),
               lambda found: found == mode)


def in_sync_with_redis(redis_url: str, gateway) -> None:
    """A fresh load of Redis equals the followed table (the reconciliation's compare)."""
    assert differences_from_a_fresh_load(redis_url, gateway.gateway.table) == []


def test_a_desk_limit_holds_over_both_accounts_and_a_raise_of_it_is_followed(
        desk, redis_url, gateway, stub):
    loaded(gateway)
    assert groups_of(gateway, b"ACC-1") == groups_of(gateway, b"ACC-2") == (b"DESK-1",)
    status = stub.GetStatus(pb.StatusRequest())   # the desk's record, of the table's room
    assert status.groups == 1 and status.max_groups > 1
    assert stub.EvaluateOrder(order(account="ACC-1", quantity=100)).approved
    # ACC-2's own limits allow 60 (max_long_position 5,000); the desk's do not
    refused = stub.EvaluateOrder(order(account="ACC-2", quantity=60))
    assert rejections(refused) == [(pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 160, DESK_LIMIT)]
    assert refused.rejections[0].message == (
        "the long position of a group of the account would be 160, over the group's max "
        "long position 150")
    assert stub.EvaluateOrder(order(account="ACC-2", quantity=50)).approved  # 150: at it
    in_sync_with_redis(redis_url, gateway)

    redis_cli(redis_url, "HSET group:DESK-1 max_long_position 300\n")
    wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2", quantity=60)),
               lambda decision: decision.approved)
    assert group(gateway, b"DESK-1")["limits"] == {LimitKind.MAX_LONG_POSITION: 300}
    in_sync_with_redis(redis_url, gateway)


def test_a_desk_inside_a_firm_is_held_to_both_and_leaving_the_firm_is_followed(
        desk, redis_url, gateway, stub):
    loaded(gateway)
    redis_cli(redis_url,
              "HSET group:FIRM max_long_position 120\n"
              "HSET group:DESK-1 parent FIRM\n")
    wait_until(lambda: groups_of(gateway, b"ACC-2"), lambda found: found == (b"DESK-1", b"FIRM"))
    assert groups_of(gateway, b"ACC-1") == (b"DESK-1", b"FIRM")
    assert group(gateway, b"FIRM")["members"] == (b"ACC-1", b"ACC-2")
    assert stub.EvaluateOrder(order(account="ACC-1", quantity=100)).approved
    # the firm's 120 binds before the desk's 150, for either account
    for account in ("ACC-1", "ACC-2"):
        assert rejections(stub.EvaluateOrder(order(account=account, quantity=30))) == [
            (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 130, 120)], account
    assert stub.EvaluateOrder(order(account="ACC-2", quantity=20)).approved  # 120: at it
    in_sync_with_redis(redis_url, gateway)

    # the desk leaves the firm: only the desk's 150 is left
    redis_cli(redis_url, "HDEL group:DESK-1 parent\n")
    wait_until(lambda: groups_of(gateway, b"ACC-2"), lambda found: found == (b"DESK-1",))
    assert group(gateway, b"FIRM")["members"] == ()
    assert stub.EvaluateOrder(order(account="ACC-2", quantity=30)).approved  # 150
    assert rejections(stub.EvaluateOrder(order(account="ACC-1", quantity=1))) == [
        (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 151, DESK_LIMIT)]
    in_sync_with_redis(redis_url, gateway)


def test_a_group_hash_with_an_unknown_field_makes_the_group_unavailable(
        desk, redis_url, gateway, stub):
    loaded(gateway)
    redis_cli(redis_url, "HSET group:DESK-1 max_order_quantity 5\n")  # not a group limit
    wait_until(lambda: group(gateway, b"DESK-1"), lambda info: info["invalid"])
    for account in ("ACC-1", "ACC-2"):
        refused = stub.EvaluateOrder(order(account=account))
        assert rejections(refused) == [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 3, 1)], account
    assert refused.rejections[0].message == (
        "group 1 of the account (its groups sorted by id) has a group:<G> hash that could not "
        "be parsed; see the server log: its orders are refused")
    assert stub.GetStatus(pb.StatusRequest()).invalid_entities >= 1  # counted, and logged
    in_sync_with_redis(redis_url, gateway)

    redis_cli(redis_url, "HDEL group:DESK-1 max_order_quantity\n")
    wait_until(lambda: stub.EvaluateOrder(order(account="ACC-1")),
               lambda decision: decision.approved)
    in_sync_with_redis(redis_url, gateway)


def test_leaving_the_group_removes_its_limit_for_the_account(desk, redis_url, gateway, stub):
    loaded(gateway)
    assert stub.EvaluateOrder(order(account="ACC-1", quantity=100)).approved
    assert rejections(stub.EvaluateOrder(order(account="ACC-2", quantity=60))) == [
        (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 160, DESK_LIMIT)]
    redis_cli(redis_url, "SREM groups:{ACC-2} DESK-1\n")  # its last member: the key goes
    wait_until(lambda: groups_of(gateway, b"ACC-2"), lambda found: found == ())
    assert group(gateway, b"DESK-1")["members"] == (b"ACC-1",)
    assert stub.EvaluateOrder(order(account="ACC-2", quantity=60)).approved
    # ACC-1 is still held to the desk, which no longer counts ACC-2
    assert stub.EvaluateOrder(order(account="ACC-1", quantity=50)).approved
    assert rejections(stub.EvaluateOrder(order(account="ACC-1", quantity=1))) == [
        (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 151, DESK_LIMIT)]
    in_sync_with_redis(redis_url, gateway)


#: Changes in Redis, each followed by the gateway, then held against a fresh load:
#: (the redis-cli script, what ACC-1's order gets then: (code, observed, limit)s).
CHANGES = [
    ("SADD groups:{ACC-1} FIRM\n", [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 1, 2)]),  # FIRM: no hash
    ("HSET group:FIRM max_gross_exposure 900000000000\n", []),
    ("HSET group:FIRM parent DESK-1\nHSET group:DESK-1 parent FIRM\n",           # a cycle
     [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 2, 0)]),
    ("HDEL group:FIRM parent\n", []),                                            # broken
    ("SREM groups:{ACC-1} FIRM\n", []),                  # still in FIRM, through DESK-1
    ("HSET group:FIRM parent 'A B'\n", [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 3, 2)]),
    ("DEL group:FIRM\nSET group:FIRM x\n", [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 3, 2)]),
    ("DEL group:FIRM\n", [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 1, 2)]),
    ("HDEL group:DESK-1 parent\n", []),
    ("SADD groups:{ACC-1} " + " ".join(f"G{n}" for n in range(8)) + "\n",   # nine groups
     [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 2, 0)]),
    ("DEL groups:{ACC-1}\nSET groups:{ACC-1} DESK-1\n",                     # not a set
     [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 2, 0)]),
    ("DEL groups:{ACC-1}\nDEL group:DESK-1\n", []),
    ("SADD groups:{ACC-1} DESK-1\n", [(pb.REJECT_CODE_GROUP_UNAVAILABLE, 1, 1)]),
]


def test_after_every_change_the_followed_table_equals_a_fresh_load(desk, redis_url, gateway,
                                                                    stub):
    loaded(gateway)
    for script, expected in CHANGES:
        redis_cli(redis_url, script)
        applied_everything_before(desk, gateway)
        decision = stub.EvaluateOrder(order(account="ACC-1", quantity=1))
        assert rejections(decision) == expected, script
        assert decision.approved == (not expected), script
        in_sync_with_redis(redis_url, gateway)


def test_a_group_past_the_tables_room_refuses_its_accounts_orders(redis_client, redis_url,
                                                                 start_gateway):
    # max_accounts 8: room for 8 groups. ACC-1 takes all of them, ACC-2's ninth does not fit.
    seed_account(redis_client, "ACC-1")
    seed_limits(redis_client, "ACC-2")
    redis_cli(redis_url, "SADD groups:{ACC-1} " + " ".join(f"G{n}" for n in range(8)) + "\n"
              + "".join(f"HSET group:G{n} max_long_position 1000\n" for n in range(8)))
    gateway = start_gateway(max_accounts=8)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.EvaluateOrder(order(account="ACC-2")).approved
        redis_cli(redis_url, "SADD groups:{ACC-2} G8\n")
        refused = wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2")),
                             lambda decision: not decision.approved)
        assert rejections(refused) == [(pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.CAPACITY_GROUPS, 8)]
        assert "no room for a group this account is in" in refused.rejections[0].message
        assert stub.GetStatus(pb.StatusRequest()).capacity_exhausted >= 1
        assert stub.EvaluateOrder(order(account="ACC-1")).approved  # its groups all fit

        redis_cli(redis_url, "SREM groups:{ACC-2} G8\n")
        wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2")),
                   lambda decision: decision.approved)


def test_groups_gone_with_a_replaced_database_are_cleared_by_the_resync(desk, redis_url,
                                                                        gateway, stub):
    # FLUSHALL publishes no keyspace notification for the keys it deletes: only
    # the resync (the canary is gone) can tell that ACC-1 left DESK-1.
    loaded(gateway)
    assert stub.EvaluateOrder(order(account="ACC-1", quantity=100)).approved
    desk.flushall()
    seed_account(desk, "ACC-1")
    seed_limits(desk, "ACC-2")
    redis_cli(redis_url, "SADD groups:{ACC-2} FIRM\nHSET group:FIRM max_long_position 10\n")
    wait_until(lambda: (groups_of(gateway, b"ACC-1"), groups_of(gateway, b"ACC-2")),
               lambda found: found == ((), (b"FIRM",)), timeout=15)
    wait_until(lambda: group(gateway, b"DESK-1"),
               lambda info: not info["known"] and info["members"] == ())
    decision = wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2", quantity=11)),
                          lambda decision: pb.REJECT_CODE_STALE_DATA not in
                          [r.code for r in decision.rejections])
    assert rejections(decision) == [(pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 11, 10)]
    in_sync_with_redis(redis_url, gateway)


def test_a_desk_of_accounts_on_every_primary_of_a_redis_cluster_is_loaded_and_followed(
        cluster_client, redis_cluster, tmp_path):
    # Each account's groups:{ACC} is in its own primary's slot, group:DESK-1 in a
    # slot of its own: the load and the re-reads take one transaction per slot.
    accounts = accounts_on_each_primary(cluster_client)
    for account in accounts:
        seed_account(cluster_client, account)
        cluster_client.sadd(f"groups:{{{account}}}", "DESK-1")
    cluster_client.hset("group:DESK-1", "max_long_position", 90)
    gateway = GatewayThread(gateway_settings(tmp_path), redis_cluster.url)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            for account in accounts:
                assert stub.EvaluateOrder(order(account=account, quantity=30)).approved
            assert rejections(stub.EvaluateOrder(order(account=accounts[0], quantity=1))) == [
                (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 91, 90)]
            cluster_client.hset("group:DESK-1", "max_long_position", 100)
            cluster_client.srem(f"groups:{{{accounts[1]}}}", "DESK-1")
            wait_until(lambda: gateway.gateway.table.group_info(b"DESK-1")["members"],
                       lambda members: len(members) == 2)
            wait_until(lambda: stub.EvaluateOrder(order(account=accounts[2], quantity=40)),
                       lambda decision: decision.approved)  # 30 + 30 + 40 of 100
            assert rejections(stub.EvaluateOrder(order(account=accounts[0], quantity=1))) == [
                (pb.REJECT_CODE_GROUP_MAX_LONG_POSITION, 101, 100)]
            in_sync_with_redis(redis_cluster.url, gateway)
    finally:
        gateway.stop()


def test_an_account_whose_tree_did_not_fit_is_flattened_again_when_a_parent_goes(
        redis_client, redis_url, start_gateway):
    # Room for 8 group records (max_accounts 8): ACC-1's seven groups and H.
    # H inside NEW needs a ninth, so ACC-2 joining H is over capacity; once
    # H has no parent, ACC-2's tree fits and its orders are decided again.
    seed_account(redis_client, "ACC-1")
    seed_limits(redis_client, "ACC-2")
    redis_cli(redis_url, "SADD groups:{ACC-1} " + " ".join(f"G{n}" for n in range(7)) + "\n"
              + "".join(f"HSET group:G{n} max_long_position 1000\n" for n in range(7))
              + "HSET group:H max_long_position 1000\n")
    gateway = start_gateway(max_accounts=8)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        redis_cli(redis_url, "HSET group:H parent NEW\nSADD groups:{ACC-2} H\n")
        applied_everything_before(redis_client, gateway)
        assert rejections(stub.EvaluateOrder(order(account="ACC-2"))) == [
            (pb.REJECT_CODE_CAPACITY_EXHAUSTED, pb.CAPACITY_GROUPS, 8)]
        redis_cli(redis_url, "HDEL group:H parent\n")
        applied_everything_before(redis_client, gateway)
        assert stub.EvaluateOrder(order(account="ACC-2")).approved
    assert differences_from_a_fresh_load(redis_url, gateway.gateway.table) == []


def test_group_hashes_no_account_is_in_take_no_room_in_the_table(redis_client, redis_url,
                                                                 start_gateway):
    # Room for 8 group records: eight hashes written and deleted with no
    # account in them must not use it up for the desk an account then joins.
    seed_account(redis_client, "ACC-1")
    gateway = start_gateway(max_accounts=8)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        redis_cli(redis_url, "".join(f"HSET group:X{n} max_long_position 1\n" for n in range(8)))
        applied_everything_before(redis_client, gateway)
        redis_cli(redis_url, "".join(f"DEL group:X{n}\n" for n in range(8)))
        redis_cli(redis_url, "HSET group:DESK max_long_position 1000\nSADD groups:{ACC-1} DESK\n")
        applied_everything_before(redis_client, gateway)
        assert gateway.gateway.table.account_groups(b"ACC-1") == (b"DESK",)
        assert stub.EvaluateOrder(order(account="ACC-1")).approved
    assert differences_from_a_fresh_load(redis_url, gateway.gateway.table) == []
