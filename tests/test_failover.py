"""Standby failover over real node processes: the owner is killed (-9), its lease
expires, the standby (which follows the same shard but approves nothing) takes it,
restores the decided orders of ``orders:{ACC}`` and serves.

Every order id answered before the kill replays identically at the standby, the
owner's working reservations still count there, and the audit shows no order id
decided (other than replayed) twice: no account served by two nodes at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from book import codes, order, seed_account, wait_until
from pretrade.client import CallFailed, RiskClient
from pretrade.v1 import risk_pb2 as pb
from serving import Serve
from test_ownership import IN_SHARD, decided_ids, held, node_starter, refusal, stub_of

ACCOUNT = IN_SHARD[0]
TTL_MS = 1_500
#: Orders of 100 the owner approves before it is killed: 3,000 working of the 5,000 allowed.
BEFORE = 30


@pytest.fixture
def start_node(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Serve]]:
    yield from node_starter(tmp_path, redis_url)


def first_approval(client: RiskClient, started: float, timeout: float = 20.0
                   ) -> tuple[float, int]:
    """Seconds from ``started`` to the first approval of a fresh order, and the attempts."""
    attempts = 0
    while time.monotonic() - started < timeout:
        attempts += 1
        try:
            decision = client.evaluate(order(ACCOUNT, quantity=100, order_id=f"probe-{attempts}"))
            if decision.approved:
                return time.monotonic() - started, attempts
            assert codes(decision) == [pb.REJECT_CODE_STALE_DATA], decision
        except CallFailed as failed:
            assert failed.code in (grpc.StatusCode.UNAVAILABLE,
                                   grpc.StatusCode.FAILED_PRECONDITION), failed
            # while it restores, the new owner answers STALE_DATA: never a
            # refusal that points at itself
            assert failed.metadata.get("owner") != "standby", failed
        time.sleep(0.01)
    raise AssertionError(f"no approval within {timeout} s")


def test_the_standby_takes_over_a_killed_owner_and_replays_what_it_answered(
        redis_client, start_node):
    seed_account(redis_client, ACCOUNT)
    owner = start_node("owner", "0", TTL_MS)
    wait_until(lambda: held(stub_of(owner), 0), bool, timeout=10)
    standby = start_node("standby", "0", TTL_MS)
    # the standby follows the shard but decides nothing: refused, naming the owner
    with pytest.raises(grpc.RpcError) as refused:
        stub_of(standby).EvaluateOrder(order(ACCOUNT), timeout=5)
    assert refusal(refused.value).metadata["owner"] == "owner"
    with RiskClient([standby.target, owner.target], retries=0) as client:
        answered = {f"w-{i}": client.evaluate(order(ACCOUNT, quantity=100, order_id=f"w-{i}"))
                    for i in range(BEFORE)}
        assert all(d.approved and not d.replayed for d in answered.values())
    owner.kill()                                   # -9, the whole process group
    killed = time.monotonic()
    with RiskClient([standby.target, owner.target], retries=0, timeout=2) as client:
        seconds, attempts = first_approval(client, killed)
        print(f"failover: owner killed -> first approval by the standby in "
              f"{seconds * 1000:.0f} ms ({attempts} attempts; lease ttl {TTL_MS} ms)")
        assert wait_until(lambda: held(stub_of(standby), 0), bool)
        # every id answered before the kill replays as it was answered
        for order_id, before in answered.items():
            again = client.evaluate(order(ACCOUNT, quantity=100, order_id=order_id))
            assert again.replayed and again.approved == before.approved
            assert (again.notional, list(again.rejections)) == (before.notional,
                                                                 list(before.rejections))
        # the owner's 3,000 working (and the probe's 100) still count against 5,000
        room = (5_000 - BEFORE * 100 - 100) // 100
        after = [client.evaluate(order(ACCOUNT, quantity=100, order_id=f"a-{i}"))
                 for i in range(room + 1)]
    assert all(d.approved for d in after[:room])
    assert not after[room].approved
    assert pb.REJECT_CODE_MAX_LONG_POSITION in codes(after[room])
    # no order id was decided by both nodes
    decided = decided_ids(redis_client)
    assert decided and max(decided.values()) == 1, decided.most_common(3)
    assert seconds < TTL_MS / 1000 * 3
