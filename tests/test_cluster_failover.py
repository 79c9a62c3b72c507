"""Kill -9 a Redis Cluster primary under a steady order load (bounded: one minute each).

Two order streams run throughout: one for an account on the primary that
dies, one for an account on another primary. Right after the kill, the risk
desk cuts the first account's max order quantity below the orders' size, a
write to ``limits:{ACC}`` that can only land on the promoted replica. The
node must fail closed for what the lost primary served (STALE_DATA, or
UNAVAILABLE while a decision of it cannot be made durable), never approve
the first account on its old limits once the new ones are in Redis (beyond
the lag bound), and trade it again once the promoted replica is followed.

Two drills. When the lost primary holds none of the keys every order reads
(``halt:all``, ``restricted:short``), nor the other account's, its symbol's
or the node's audit stream, the other account trades throughout: only the
lost slots are stale, and they are re-read in place, without a full load.
When it holds ``halt:all``, no order can be decided (a global halt written
there would go unseen): the whole table is stale until a full resync.
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
from pretrade.audit.entries import node_stream
from pretrade.shards.slots import shard_of
from pretrade.state.schema import (
    HALT_ALL,
    RESTRICTED_SHORT,
    halt_key,
    instrument_key,
    lease_key,
    limits_key,
    price_key,
)
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

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
        """Refused for staleness, the cut limit, or both; or undecided: UNAVAILABLE (not
        made durable), FAILED_PRECONDITION (the shard's lease lapsed, nobody holds it)."""
        if self.error:
            return self.error in ("UNAVAILABLE", "FAILED_PRECONDITION")
        return not self.approved and set(self.codes) <= FAIL_CLOSED


def _load(target: str, account: str, symbol: str, stop: threading.Event,
          answers: list[Answer]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                decision = stub.EvaluateOrder(order(account, symbol, quantity=ORDER_QUANTITY,
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


def _wait_until_approved(target: str, accounts: tuple[str, ...], symbol: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        deadline = time.monotonic() + 20
        for account in accounts:
            while not stub.EvaluateOrder(order(account, symbol, quantity=ORDER_QUANTITY,
                                               price=689_100), timeout=10).approved:
                assert time.monotonic() < deadline, f"{account} was never approved"
                time.sleep(0.1)


def _approved_throughout(answers: list[Answer], since: float, until: float) -> list[Answer]:
    """Assert that orders were sent between ``since`` and ``until`` and that every
    order was approved; the ones sent in that window."""
    during = [answer for answer in answers if since < answer.sent < until]
    assert during, "no order of the other account was sent while the slots were lost"
    assert all(answer.approved for answer in answers), [
        (answer.codes, answer.error) for answer in answers if not answer.approved]
    return during


def _port(client: redis.RedisCluster, key: bytes) -> int:
    return int(client.get_node_from_key(key).port)


@dataclass
class Drill:
    """Who trades in a drill, and which primary dies."""

    victim_port: int
    victim_account: str
    other_account: str
    symbol: str
    node_id: str


def _drill(client: redis.RedisCluster, *, global_keys_lost: bool, shards: int = 0) -> Drill:
    """A primary to kill: the one holding ``halt:all``, or one holding no key but the
    victim account's that the drill's orders read; with accounts, symbol and node name.

    With ``shards`` (the node owns them all), the other account's shard is the last one
    whose lease key is elsewhere, and a shard before it has its lease on the victim."""
    primaries = sorted(int(node.port) for node in client.get_primaries())
    held = {_port(client, HALT_ALL), _port(client, RESTRICTED_SHORT)}
    victim = (_port(client, HALT_ALL) if global_keys_lost
              else next(port for port in primaries if port not in held))

    def first(names: list[str], keys) -> str:
        return next(name for name in names
                    if all(_port(client, key) != victim for key in keys(name.encode())))

    numbered = [f"CL-{n}" for n in range(2000)]
    victim_account = next(name for name in numbered
                          if _port(client, limits_key(name.encode())) == victim)
    other = first(numbered, lambda a: (limits_key(a), halt_key(pb.HALT_SCOPE_ACCOUNT, a)))
    if shards:
        on_victim = [shard for shard in range(shards) if _port(client, lease_key(shard)) == victim]
        kept = max(shard for shard in range(shards) if shard not in on_victim)
        assert on_victim and min(on_victim) < kept
        other = first([name for name in numbered if shard_of(name.encode(), shards) == kept],
                      lambda a: (limits_key(a), halt_key(pb.HALT_SCOPE_ACCOUNT, a)))
    symbol = first([f"S{n}" for n in range(2000)], lambda s: (
        instrument_key(s), price_key(s), halt_key(pb.HALT_SCOPE_SYMBOL, s)))
    node_id = first([f"risk-{n}" for n in range(2000)], lambda n: (node_stream(n.decode()),))
    return Drill(victim, victim_account, other, symbol, node_id)


def _run_drill(tmp_path, *, global_keys_lost: bool, shards: int = 0):
    with RedisClusterServer(data_dir=tmp_path / "cluster", node_timeout_ms=1_000) as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        drill = _drill(client, global_keys_lost=global_keys_lost, shards=shards)
        owning = {"owned_shards": f"0-{shards - 1}", "shard_count": shards} if shards else {}
        for account in (drill.victim_account, drill.other_account):
            seed_account(client, account, drill.symbol)
            client.hset(limits_key(account.encode()), mapping={
                "max_long_position": 1_000_000, "max_net_position": 1_000_000})
        gateway = GatewayThread(gateway_settings(tmp_path, max_sync_lag_ms=MAX_SYNC_LAG_MS,
                                                 max_orders=100_000, node_id=drill.node_id,
                                                 **owning),
                                cluster.url)
        sync = gateway.gateway.writer.sync
        table = gateway.gateway.table
        stop = threading.Event()
        victim_answers: list[Answer] = []
        other_answers: list[Answer] = []
        loads = [threading.Thread(target=_load, args=(gateway.target, account, drill.symbol,
                                                      stop, answers))
                 for account, answers in ((drill.victim_account, victim_answers),
                                          (drill.other_account, other_answers))]
        try:
            if shards:  # every lease held, and the full load after taking them done
                keeper = gateway.gateway.writer.keeper
                deadline = time.monotonic() + 20
                while len(keeper.held) < shards or keeper.restoring:
                    assert time.monotonic() < deadline, "the node never held every shard"
                    time.sleep(0.05)
                _wait_until_approved(gateway.target, (drill.victim_account, drill.other_account),
                                     drill.symbol)
            for load in loads:
                load.start()
            time.sleep(1.0)
            assert all(answer.approved for answer in victim_answers + other_answers)
            full_loads = sync.stats.full_loads
            victim_slots = sum(last - first + 1 for first, last, owner in sync.topology
                               if owner.endswith(f":{drill.victim_port}"))
            victim = next(node for node in cluster.nodes if node.port == drill.victim_port)
            killed_at = time.monotonic()
            cluster.kill(victim)
            cut_at = _cut_limit_when_writable(client, drill.victim_account, killed_at + 30)
            cluster.wait_until_served()
            deadline = time.monotonic() + 30

            def resynced() -> bool:
                if global_keys_lost:
                    return sync.stats.full_loads > full_loads and table.sync_live
                return table.lost_slot_count() == 0 and table.sync_live

            while not resynced():
                assert time.monotonic() < deadline, "the node never resynced"
                time.sleep(0.05)
            resynced_at = time.monotonic()
            time.sleep(2.0)  # both accounts' orders flow on the resynced table
            full_loads_after = sync.stats.full_loads - full_loads
            status = gateway.gateway.status()
            assert status.lost_slots == 0
            if not global_keys_lost:  # one primary's slots, re-read in place
                assert (status.primaries_lost, status.slots_recovered) == (1, victim_slots)
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
    assert other_answers[-1].approved
    return killed_at, cut_at, resynced_at, full_loads_after, victim_answers, other_answers


@pytest.mark.timeout(60)
def test_a_lost_primary_stales_only_its_slots_and_accounts_elsewhere_keep_trading(tmp_path):
    killed_at, cut_at, resynced_at, full_loads, victim_answers, other_answers = _run_drill(
        tmp_path, global_keys_lost=False)
    # The account on a healthy primary: every order decided and approved, throughout.
    during = _approved_throughout(other_answers, killed_at, resynced_at)
    # The lost slots were re-read in place: no full load.
    assert full_loads == 0
    stale = [answer for answer in victim_answers if answer.sent > killed_at
             and not answer.approved]
    print(f"failover: {len(during)} orders of the other account approved while the slots "
          f"were lost; the first account's slots stale for {resynced_at - killed_at:.2f} s "
          f"({len(stale)} refusals), limit cut {cut_at - killed_at:.2f} s after the kill")


@pytest.mark.timeout(60)
def test_a_lost_primary_holding_halt_all_stales_the_table_until_a_full_resync(tmp_path):
    killed_at, cut_at, _, full_loads, _, other_answers = _run_drill(
        tmp_path, global_keys_lost=True)
    assert full_loads >= 1
    # The account on a healthy primary is refused (the whole table is stale), then trades
    # again after the failover, within the bound. (An order sent in the first moments
    # after the kill, before the loss is seen, is decided within the lag bound.)
    refused = next(answer.sent for answer in other_answers
                   if answer.sent > killed_at and not answer.approved)
    after = [answer for answer in other_answers if answer.sent > refused and answer.approved]
    assert after, "the account on a healthy primary never traded again"
    assert after[0].sent - killed_at < 30
    print(f"failover: stale for {after[0].sent - killed_at:.2f} s after the kill; limit "
          f"cut {cut_at - killed_at:.2f} s after it")


@pytest.mark.timeout(90)
def test_a_lost_primary_holding_some_leases_stops_only_their_shards(tmp_path):
    """With ownership on, the other account's shard is renewed after shards whose lease
    keys are on the lost primary: their failing renewals must not hold its renewal back
    past its deadline."""
    killed_at, _, resynced_at, full_loads, _, other_answers = _run_drill(
        tmp_path, global_keys_lost=False, shards=16)
    during = _approved_throughout(other_answers, killed_at, resynced_at)
    print(f"failover with leases: {len(during)} orders of the other account approved while "
          f"the lost primary's slots and leases were out, {resynced_at - killed_at:.2f} s")


@pytest.mark.timeout(120)
def test_two_primaries_lost_at_once_are_each_recovered_in_place(tmp_path):
    """Five primaries, two killed together: each promoted replica clears only its own
    share of the lost slots, the second loss does not force a full resync, and an
    account on a healthy primary trades throughout."""
    with RedisClusterServer(primaries=5, data_dir=tmp_path / "cluster",
                            node_timeout_ms=1_000) as cluster:
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        held = {_port(client, HALT_ALL), _port(client, RESTRICTED_SHORT)}
        victims = [port for port in sorted(int(node.port) for node in client.get_primaries())
                   if port not in held][:2]
        numbered = [f"CL-{n}" for n in range(2000)]

        def away(names: list[str], keys) -> str:
            return next(name for name in names
                        if all(_port(client, key) not in victims for key in keys(name.encode())))

        victim_accounts = [next(name for name in numbered
                                if _port(client, limits_key(name.encode())) == port)
                           for port in victims]
        other = away(numbered, lambda a: (limits_key(a), halt_key(pb.HALT_SCOPE_ACCOUNT, a)))
        symbol = away([f"S{n}" for n in range(2000)], lambda s: (
            instrument_key(s), price_key(s), halt_key(pb.HALT_SCOPE_SYMBOL, s)))
        node_id = away([f"risk-{n}" for n in range(2000)], lambda n: (node_stream(n.decode()),))
        for account in (*victim_accounts, other):
            seed_account(client, account, symbol)
            client.hset(limits_key(account.encode()), mapping={
                "max_long_position": 1_000_000, "max_net_position": 1_000_000})
        # Ten redis-servers on two cores: a lag bound with room for the re-read of
        # two primaries' slots, which holds the notifications back while it runs
        # (1,000 ms was passed by 8 ms once, under the whole suite, and the full
        # resync that forced is what this test rules out).
        gateway = GatewayThread(gateway_settings(tmp_path, max_sync_lag_ms=2_000,
                                                 max_orders=100_000, node_id=node_id),
                                cluster.url)
        sync, table = gateway.gateway.writer.sync, gateway.gateway.table
        stop = threading.Event()
        answers: list[Answer] = []
        load = threading.Thread(target=_load, args=(gateway.target, other, symbol, stop, answers))
        try:
            _wait_until_approved(gateway.target, (*victim_accounts, other), symbol)
            load.start()
            time.sleep(1.0)
            full_loads = sync.stats.full_loads
            lost = sum(last - first + 1 for first, last, owner in sync.topology
                       if int(owner.rsplit(":", 1)[1]) in victims)
            killed_at = time.monotonic()
            for node in cluster.nodes:
                if node.port in victims:
                    cluster.kill(node)
            cluster.wait_until_served()
            deadline = time.monotonic() + 30
            while not (sync.stats.slots_recovered == lost and table.lost_slot_count() == 0
                       and table.sync_live):
                assert time.monotonic() < deadline, (sync.stats.slots_recovered, lost,
                                                     table.lost_slot_count())
                time.sleep(0.05)
            recovered_at = time.monotonic()
            _wait_until_approved(gateway.target, tuple(victim_accounts), symbol)
            time.sleep(0.5)
            assert sync.stats.full_loads == full_loads
            assert sync.stats.primaries_lost == 2
        finally:
            stop.set()
            load.join(timeout=15)
            gateway.stop()
            client.close()
    during = _approved_throughout(answers, killed_at, recovered_at)
    print(f"two primaries lost: {len(during)} orders of the other account approved; "
          f"{lost} slots recovered in place {recovered_at - killed_at:.2f} s after the kill")
