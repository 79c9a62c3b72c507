"""Kill -9 a Redis Cluster primary under a steady order load (bounded: one minute).

Two order streams run throughout: one for an account on the primary that
dies, one for an account on another primary. Right after the kill, the risk
risk desk cuts the first account's max order quantity below the orders'
size, a write to ``limits:{ACC}`` that can only land on the promoted
replica. The node must fail closed while it resyncs (STALE_DATA, or
UNAVAILABLE while its audit cannot be written), never approve the first
account on its old limits once the new ones are in Redis (beyond the lag
bound), and trade again once it has resynced.
"""

import threading
import time
from dataclasses import dataclass

import grpc
import pytest
import redis

from book import codes, order, seed_account
from conftest import GatewayThread, gateway_settings
from pretrade.app.devredis import RedisClusterServer
from pretrade.state.schema import limits_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from test_cluster_store import accounts_on_each_primary

MAX_SYNC_LAG_MS = 500
#: What an order of the drill may be refused with: a stale table, the halt, or both.
FAIL_CLOSED = {pb.REJECT_CODE_STALE_DATA, pb.REJECT_CODE_MAX_ORDER_QUANTITY}


#: The drill's orders are of this size; the cut limit is below it.
ORDER_QUANTITY = 2


@dataclass
class Answer:
    sent: float
    approved: bool
    codes: list[int]
    #: The gRPC status of a call that was refused without a decision ("" when decided).
    error: str = ""

    @property
    def failed_closed(self) -> bool:
        """Refused for staleness, the cut limit, or both; or UNAVAILABLE (audit not written)."""
        if self.error:
            return self.error == "UNAVAILABLE"
        return not self.approved and set(self.codes) <= FAIL_CLOSED


def _load(target: str, account: str, stop: threading.Event, answers: list[Answer]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                decision = stub.EvaluateOrder(order(account, quantity=ORDER_QUANTITY,
                                                    price=689_100), timeout=10)
                answers.append(Answer(sent, decision.approved, codes(decision)))
            except grpc.RpcError as error:
                answers.append(Answer(sent, False, [], error.code().name))
            time.sleep(0.005)


def _cut_limit_when_writable(client: redis.RedisCluster, account: str, deadline: float
                             ) -> float:
    """Cut the account's max order quantity once its slot takes writes again; when it did."""
    while True:
        try:
            client.hset(limits_key(account.encode()), "max_order_quantity", ORDER_QUANTITY - 1)
            return time.monotonic()
        except (redis.exceptions.RedisClusterException, redis.RedisError):
            assert time.monotonic() < deadline, "the slot never took writes again"
            time.sleep(0.05)


@pytest.mark.timeout(60)
def test_a_killed_primary_under_load_fails_closed_resyncs_and_never_approves_on_stale_data(
        tmp_path):
    with RedisClusterServer(data_dir=tmp_path / "cluster", node_timeout_ms=1_000) as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        victim_account, other_account, _ = accounts_on_each_primary(client)
        for account in (victim_account, other_account):
            seed_account(client, account)
            client.hset(limits_key(account.encode()), mapping={
                "max_long_position": 1_000_000, "max_net_position": 1_000_000})
        gateway = GatewayThread(gateway_settings(tmp_path, max_sync_lag_ms=MAX_SYNC_LAG_MS,
                                                 max_orders=100_000), cluster.url)
        sync = gateway.gateway.writer.sync
        stop = threading.Event()
        victim_answers: list[Answer] = []
        other_answers: list[Answer] = []
        loads = [threading.Thread(target=_load, args=(gateway.target, account, stop, answers))
                 for account, answers in ((victim_account, victim_answers),
                                          (other_account, other_answers))]
        try:
            for load in loads:
                load.start()
            time.sleep(1.0)
            assert all(answer.approved for answer in victim_answers + other_answers)
            full_loads = sync.stats.full_loads
            victim = cluster.primary_of(limits_key(victim_account.encode()))
            killed_at = time.monotonic()
            cluster.kill(victim)
            cut_at = _cut_limit_when_writable(client, victim_account, killed_at + 30)
            cluster.wait_until_served()
            deadline = time.monotonic() + 30
            while not (sync.stats.full_loads > full_loads and gateway.gateway.table.sync_live):
                assert time.monotonic() < deadline, "the node never resynced"
                time.sleep(0.05)
            time.sleep(2.0)  # both accounts' orders flow on the resynced table
        finally:
            stop.set()
            for load in loads:
                load.join(timeout=15)
            gateway.stop()
            client.close()

    # Not one approval on the old limits once the cut was in Redis (lag bound aside).
    late = [answer for answer in victim_answers
            if answer.sent > cut_at + MAX_SYNC_LAG_MS / 1000]
    assert late, "no orders of the first account were sent after the cut"
    assert all(answer.failed_closed for answer in late), [
        (answer.codes, answer.error) for answer in late if not answer.failed_closed]
    assert late[-1].codes == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]  # resynced: the new limit
    # Refused during the failover only by failing closed, never by a guess.
    refused = [answer for answer in victim_answers + other_answers
               if answer.sent > killed_at and not answer.approved]
    assert refused and all(answer.failed_closed for answer in refused), [
        (answer.codes, answer.error) for answer in refused if not answer.failed_closed]
    # The other primary's account trades again after the failover, within the bound.
    after = [answer for answer in other_answers if answer.sent > killed_at and answer.approved]
    assert after, "the account on a healthy primary never traded again"
    assert after[0].sent - killed_at < 30
    assert other_answers[-1].approved
    print(f"failover: stale for {after[0].sent - killed_at:.2f} s after the kill; limit "
          f"cut {cut_at - killed_at:.2f} s after it; {len(victim_answers)} + "
          f"{len(other_answers)} orders decided")
