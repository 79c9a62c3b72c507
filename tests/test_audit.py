"""The audit trail: decisions and halt changes in the Redis stream ``audit``, and its reader.

Real parts throughout: a gateway on a free port in front of the session's
redis-server, orders and halts over a real gRPC channel, the stream read
back with XRANGE and with ``pretrade audit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from book import order, seed_account, wait_until
from pretrade.api.access import new_token, token_entry
from pretrade.audit.entries import AUDIT_STREAM, encode, encode_batch, rows_of
from pretrade.audit.query import AuditQuery, read_audit
from pretrade.audit.trail import AuditTrail
from pretrade.cli.commands import main, parse_when
from pretrade.cli.format import format_audit_entries
from pretrade.v1 import records_pb2, risk_pb2_grpc
from pretrade.v1 import risk_pb2 as pb

EVERY_DECISION_FIELD = {"event", "ts", "pid", "principal", "order_id", "account", "symbol", "side",
                        "order_type", "quantity", "price", "venue", "counterparty", "verdict",
                        "codes", "notional", "latency_ns", "replayed", "replaces",
                        "time_in_force", "expire_at", "group_id"}
EVERY_HALT_FIELD = {"event", "ts", "pid", "principal", "source", "scope", "target", "mode",
                    "reason", "by", "expires_at"}


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    return redis_client


def entries(client: redis.Redis, event: str | None = None) -> list[dict[str, str]]:
    """Every record of the stream, oldest first, as the rows a reader sees."""
    found = [fields for entry_id, raw in client.xrange(AUDIT_STREAM)
             for _, fields in rows_of(entry_id, raw)]
    return [fields for fields in found if event is None or fields["event"] == event]


def audited(client: redis.Redis, count: int, event: str | None = None) -> list[dict[str, str]]:
    """Wait until the stream holds ``count`` entries (of ``event``); return them."""
    return wait_until(lambda: entries(client, event), lambda found: len(found) >= count)


def halt(scope: int, mode: int, *, account: str = "", symbol: str = "", reason: str = "",
         ttl: int = 0) -> pb.HaltRequest:
    return pb.HaltRequest(scope=scope, mode=mode, account_id=account, symbol=symbol,
                          reason=reason, ttl_seconds=ttl, requested_by="alice")


# -- decisions --


def test_every_decision_is_in_the_stream_with_its_order_verdict_codes_and_latency(
        seeded, gateway, stub):
    approved = order(quantity=10, order_id="audit-1")
    rejected = order(quantity=1_500, order_id="audit-2", order_type=pb.ORDER_TYPE_MARKET,
                     price=0)
    assert stub.EvaluateOrder(approved).approved
    assert not stub.EvaluateOrder(rejected).approved
    first, second = audited(seeded, 2)

    assert set(first) == EVERY_DECISION_FIELD
    assert first["event"] == "decision" and first["verdict"] == "APPROVED"
    assert (first["order_id"], first["account"], first["symbol"]) == ("audit-1", "ACC-1", "AAPL")
    assert (first["side"], first["order_type"]) == ("BUY", "LIMIT")
    assert (first["quantity"], first["price"], first["notional"]) == ("10", "683378", "6833780")
    assert first["venue"] == "XNAS" and first["counterparty"] == ""
    assert first["codes"] == "" and first["replayed"] == "0"
    assert first["principal"] == ""  # auth = "none"
    assert int(first["latency_ns"]) > 0
    assert int(first["pid"]) == stub.GetStatus(pb.StatusRequest()).pid
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert now_ms - 60_000 < int(first["ts"]) <= now_ms

    assert second["verdict"] == "REJECTED" and second["order_type"] == "MARKET"
    assert second["codes"].split(",") == ["MAX_ORDER_QUANTITY", "MAX_ORDER_NOTIONAL"]


def test_an_orders_time_in_force_and_expiry_are_in_its_audit_record(seeded, gateway, stub):
    expire_at = int(time.time() * 1000) + 3_600_000
    gtd = order(order_id="audit-gtd")
    gtd.time_in_force, gtd.expire_at_unix_ms = pb.TIME_IN_FORCE_GTD, expire_at
    ioc = order(order_id="audit-ioc")
    ioc.time_in_force = pb.TIME_IN_FORCE_IOC
    for sent in (gtd, ioc, order(order_id="audit-plain")):
        assert stub.EvaluateOrder(sent).approved
    found = audited(seeded, 3)
    assert [(e["order_id"], e["time_in_force"], e["expire_at"]) for e in found] == [
        ("audit-gtd", "GTD", str(expire_at)), ("audit-ioc", "IOC", "0"),
        ("audit-plain", "UNSPECIFIED", "0")]


def test_a_legs_oco_group_is_in_its_audit_record(seeded, gateway, stub):
    leg = order(order_id="audit-leg")
    leg.group_id, leg.contingency = "EXIT-9", pb.CONTINGENCY_ONE_CANCELS_OTHER
    for sent in (leg, order(order_id="audit-single")):
        assert stub.EvaluateOrder(sent).approved
    assert [(e["order_id"], e["group_id"]) for e in audited(seeded, 2)] == [
        ("audit-leg", "EXIT-9"), ("audit-single", "")]


def test_a_replayed_order_id_is_audited_as_replayed(seeded, gateway, stub):
    again = order(order_id="twice")
    assert stub.EvaluateOrder(again).approved
    assert stub.EvaluateOrder(again).replayed
    assert [e["replayed"] for e in audited(seeded, 2)] == ["0", "1"]


def test_a_batch_audits_each_order_including_a_malformed_one(seeded, gateway, stub):
    batch = pb.OrderBatch(orders=[order(order_id="b-1"), order(order_id="b-2", account=""),
                                  order(order_id="b-3", side=42)])
    stub.EvaluateOrders(batch)
    found = audited(seeded, 3)
    assert [(e["order_id"], e["verdict"], e["codes"]) for e in found] == [
        ("b-1", "APPROVED", ""), ("b-2", "REJECTED", "INVALID_REQUEST"),
        ("b-3", "REJECTED", "INVALID_REQUEST")]
    assert found[2]["side"] == "42"  # a number the contract does not name stays a number


def test_status_counts_what_the_audit_wrote(seeded, gateway, stub):
    for _ in range(5):
        stub.EvaluateOrder(order())
    audited(seeded, 5)
    status = wait_until(lambda: stub.GetStatus(pb.StatusRequest()),
                        lambda s: s.audit_written == 5)
    assert (status.audit_dropped, status.audit_pending, status.audit_write_errors) == (0, 0, 0)


# -- halts --


def test_a_halt_and_its_lift_through_the_rpc_are_audited_with_who_what_and_why(
        seeded, gateway, stub):
    stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1",
                   reason="fat finger", ttl=600))
    stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_ACTIVE, account="ACC-1",
                   reason="all clear"))
    stub.Halt(halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_REDUCE_ONLY, reason="close"))
    set_, lift, global_ = audited(seeded, 3, "halt")
    assert set(set_) == EVERY_HALT_FIELD
    assert {k: set_[k] for k in ("source", "scope", "target", "mode", "reason", "by")} == {
        "source": "rpc", "scope": "ACCOUNT", "target": "ACC-1", "mode": "HALTED",
        "reason": "fat finger", "by": "alice"}
    assert 590_000 <= int(set_["expires_at"]) - int(set_["ts"]) <= 600_000
    assert (lift["mode"], lift["reason"], lift["expires_at"]) == ("ACTIVE", "all clear", "0")
    assert (global_["scope"], global_["target"], global_["mode"]) == (
        "GLOBAL", "", "REDUCE_ONLY")


def test_the_sync_reading_back_this_process_s_own_halt_adds_no_entry(seeded, gateway, stub):
    stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_HALTED, symbol="AAPL", reason="news"))
    # The write's own notification comes back through the sync; then an unrelated
    # change proves the sync has caught up past it.
    stub.Halt(halt(pb.HALT_SCOPE_SYMBOL, pb.HALT_MODE_HALTED, symbol="MSFT", reason="news"))
    seeded.hset("halt:symbol:IBM", mapping={"mode": "HALTED", "reason": "x", "by": "bob",
                                            "at": "1"})
    found = audited(seeded, 3, "halt")
    assert [(e["source"], e["target"]) for e in found] == [
        ("rpc", "AAPL"), ("rpc", "MSFT"), ("redis", "IBM")]


def test_an_automatic_halt_is_audited_as_the_breaker_s(seeded, gateway, stub):
    seeded.hset("limits:{ACC-1}", mapping={"max_rejects_per_window": 2,
                                           "reject_window_ms": 60_000,
                                           "auto_halt_seconds": 120})
    wait_until(lambda: gateway.gateway.table.account_info(b"ACC-1")["limits"],
               lambda limits: len(limits) == 9)
    for _ in range(2):
        assert not stub.EvaluateOrder(order(quantity=5_000)).approved
    found = audited(seeded, 3)
    assert [e["event"] for e in found] == ["decision", "decision", "halt"]
    breaker = found[2]
    assert (breaker["source"], breaker["by"], breaker["mode"], breaker["target"]) == (
        "breaker", "risk engine", "HALTED", "ACC-1")
    assert "2 rejections" in breaker["reason"]
    # Written to Redis by the breaker and read back by the sync: still one entry.
    wait_until(lambda: seeded.exists("halt:account:ACC-1"), bool)
    stub.Halt(halt(pb.HALT_SCOPE_GLOBAL, pb.HALT_MODE_HALTED, reason="sentinel"))
    assert [e["source"] for e in audited(seeded, 2, "halt")] == ["breaker", "rpc"]


def test_an_operator_s_halt_in_redis_and_its_expiry_are_audited_as_seen_in_redis(
        seeded, gateway, stub):
    seeded.hset("halt:account:ACC-1", mapping={"mode": "REDUCE_ONLY", "reason": "margin call",
                                               "by": "desk-7", "at": "1700000000000"})
    seeded.pexpire("halt:account:ACC-1", 300)
    set_, lifted = audited(seeded, 2, "halt")
    assert {k: set_[k] for k in ("source", "scope", "target", "mode", "reason", "by")} == {
        "source": "redis", "scope": "ACCOUNT", "target": "ACC-1", "mode": "REDUCE_ONLY",
        "reason": "margin call", "by": "desk-7"}
    assert (lifted["source"], lifted["mode"], lifted["by"]) == ("redis", "ACTIVE", "")


def test_the_authenticated_caller_is_recorded_with_what_its_call_did(seeded, start_gateway,
                                                                    tmp_path):
    tokens = {"oms-1": ("trader", ["ACC-1"]), "desk": ("risk_operator", [])}
    secrets = {name: new_token() for name in tokens}
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text("\n".join(token_entry(name, role, accounts, secrets[name])
                                     for name, (role, accounts) in tokens.items()))
    gateway = start_gateway("tokens", auth="tokens", tokens_file=str(tokens_file))
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        as_oms = [("authorization", f"Bearer {secrets['oms-1']}")]
        as_desk = [("authorization", f"Bearer {secrets['desk']}")]
        stub.EvaluateOrder(order(order_id="t-1"), metadata=as_oms)
        stub.EvaluateOrders(pb.OrderBatch(orders=[order(order_id="t-2")]), metadata=as_oms)
        stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1",
                       reason="check"), metadata=as_desk)
    found = audited(seeded, 3)
    assert [(e["event"], e["principal"]) for e in found] == [
        ("decision", "oms-1"), ("decision", "oms-1"), ("halt", "desk")]
    assert found[2]["by"] == "alice"  # what the request claims, beside who sent it


def test_halts_in_force_at_start_are_not_reported_as_changes(seeded, start_gateway):
    seeded.hset("halt:all", mapping={"mode": "HALTED", "reason": "before", "by": "bob",
                                     "at": "1"})
    gateway = start_gateway()
    gateway.run(asyncio.sleep(0.2))
    assert entries(seeded) == []
    status = gateway.gateway.status()
    assert (status.audit_written, status.audit_pending) == (0, 0)


# -- the writer: never blocking, bounded, counted --


def test_an_answer_waits_for_its_audit_record_and_is_unavailable_while_redis_is_silent(
        seeded, start_gateway):
    gateway = start_gateway(audit_queue_size=3)
    audit = gateway.gateway.audit
    with grpc.insecure_channel(gateway.target) as channel, socket.socket() as silent:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.EvaluateOrder(order(order_id="before")).approved
        # Answered, so recorded already: no waiting for the stream.
        assert [e["order_id"] for e in entries(seeded)] == ["before"]
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        redis_client, audit.write_timeout = audit.client, 0.5
        audit.client = aioredis.Redis(port=silent.getsockname()[1])
        for n in range(3):
            with pytest.raises(grpc.RpcError) as unrecorded:
                stub.EvaluateOrder(order(order_id=f"silent-{n}"), timeout=0.5)
            assert unrecorded.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "audit record is not in Redis" in unrecorded.value.details()
        refused = stub.EvaluateOrder(order(order_id="silent-3"), timeout=1)
        assert [r.code for r in refused.rejections] == [pb.REJECT_CODE_AUDIT_UNAVAILABLE]
        audit.client = redis_client  # Redis is back: the stuck write times out, then retries
        wait_until(lambda: stub.GetStatus(pb.StatusRequest()).audit_pending,
                   lambda pending: pending == 0, timeout=10)
        # The decisions stand: re-sent, each replays, and now its record is written.
        again = stub.EvaluateOrder(order(order_id="silent-0"), timeout=10)
        assert again.approved and again.replayed
    assert [e["order_id"] for e in entries(seeded)] == ["before", "silent-0", "silent-1",
                                                        "silent-2", "silent-0"]


def test_with_drop_a_redis_that_does_not_answer_never_blocks_a_decision_and_drops_count(
        seeded, start_gateway, caplog):
    gateway = start_gateway(audit_queue_size=20, audit_when_full="drop",
                            audit_before_answer=False)
    audit = gateway.gateway.audit
    with grpc.insecure_channel(gateway.target) as channel, socket.socket() as silent:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        assert stub.EvaluateOrder(order(order_id="before")).approved
        audited(seeded, 1)
        # The audit's Redis now accepts connections and never answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        redis_client, audit.write_timeout = audit.client, 0.5
        audit.client = aioredis.Redis(port=silent.getsockname()[1])
        caplog.set_level(logging.WARNING, logger="pretrade.audit")
        for n in range(50):
            decision = stub.EvaluateOrder(order(order_id=f"silent-{n}"), timeout=1)
            assert decision.approved, decision
        status = stub.GetStatus(pb.StatusRequest(), timeout=1)
        assert status.audit_pending == 20 and status.audit_dropped == 30
        assert "dropping audit entries, 1 dropped so far" in caplog.text
        audit.client = redis_client  # Redis is back: the stuck write times out, then retries
        status = wait_until(lambda: stub.GetStatus(pb.StatusRequest()),
                            lambda s: s.audit_pending == 0, timeout=10)
    assert (status.audit_written, status.audit_dropped) == (21, 30)
    assert status.audit_write_errors >= 1
    assert [e["order_id"] for e in entries(seeded)] == ["before"] + [
        f"silent-{n}" for n in range(20)]


def test_a_failed_write_is_retried_and_nothing_is_lost_or_counted_twice(redis_client,
                                                                       redis_url):
    async def scenario() -> tuple[int, int, int]:
        dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        trail = AuditTrail(dead, queue_size=100)
        trail.start()
        for n in range(10):
            trail.decision(order(order_id=f"retry-{n}"), True, (), 100, False, 10)
        await asyncio.sleep(0.5)
        errors, pending = trail.stats.write_errors, trail.pending
        trail.client = aioredis.Redis.from_url(redis_url)  # Redis is back
        await trail.close(timeout=5)
        await trail.client.aclose()
        await dead.aclose()
        return errors, pending, trail.stats.written

    errors, pending, written = asyncio.run(scenario())
    assert errors >= 1 and pending == 10
    assert written == 10
    assert [e["order_id"] for e in entries(redis_client)] == [f"retry-{n}" for n in range(10)]


def test_the_writer_never_trims_the_stream(redis_client, redis_url):
    """Only the archiver trims, up to what it archived: the writer keeps every entry."""
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        trail = AuditTrail(client, queue_size=5_000)
        trail.start()
        # One stream entry per batch: let each change go out on its own.
        for n in range(300):
            trail.halt("rpc", pb.HALT_SCOPE_GLOBAL, b"", pb.HALT_MODE_HALTED, f"r{n}", "me")
            while trail.pending:
                await asyncio.sleep(0)
        await trail.close(timeout=10)
        await client.aclose()

    asyncio.run(scenario())
    assert redis_client.xlen(AUDIT_STREAM) == 300
    first_id, first = redis_client.xrange(AUDIT_STREAM, count=1)[0]
    assert rows_of(first_id, first)[0][1]["reason"] == "r0"


# -- a full queue: no decision without its record --

#: Long enough for a burst of orders, short of the sync's lag bound in these tests.
PAUSE_MS = 1_500


def pause_writes(client: redis.Redis, ms: int = PAUSE_MS) -> None:
    """Redis holds back every write (XADD too) for ``ms``: a slow Redis, for the writer."""
    client.execute_command("CLIENT", "PAUSE", ms, "WRITE")


def test_a_full_audit_queue_refuses_orders_audit_unavailable_and_reserves_nothing(
        seeded, start_gateway):
    gateway = start_gateway(audit_queue_size=5, durable_decisions=False,
                            max_sync_lag_ms=5_000)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        before = stub.GetStatus(pb.StatusRequest())
        pause_writes(seeded)
        calls = []
        for n in range(12):  # at once: the first ones wait for their records meanwhile
            calls.append(stub.EvaluateOrder.future(order(quantity=100, order_id=f"full-{n}"),
                                                   timeout=5))
            time.sleep(0.02)
        during = stub.GetStatus(pb.StatusRequest())
        answers = [call.result() for call in calls]
        decided = [a for a in answers if a.approved]
        refused = [a for a in answers if not a.approved]
        # The first five fit in the queue (the writer's XADD waits on Redis); the rest
        # are refused with their own code, and the engine never saw them.
        assert [a.order_id for a in decided] == [f"full-{n}" for n in range(5)]
        assert len(refused) == 7
        for answer in refused:
            assert [r.code for r in answer.rejections] == [pb.REJECT_CODE_AUDIT_UNAVAILABLE]
            assert "audit queue is full" in answer.rejections[0].message
            assert (answer.rejections[0].observed, answer.rejections[0].limit) == (5, 5)
        assert during.orders - before.orders == 5  # nothing reserved or remembered
        assert during.audit_refused == 7 and during.audit_dropped == 0
        assert during.audit_pending == 5
        # Redis takes writes again: the queue drains, and a refused order, sent again,
        # is decided for the first time (not a replay: it was never remembered).
        wait_until(lambda: stub.GetStatus(pb.StatusRequest()).audit_pending,
                   lambda pending: pending == 0, timeout=10)
        again = stub.EvaluateOrder(order(quantity=100, order_id="full-5"), timeout=5)
        assert again.approved and not again.replayed
        assert stub.GetStatus(pb.StatusRequest()).orders - before.orders == 6
    # Every decision answered is in the stream, and no refused one is.
    recorded = [e["order_id"] for e in audited(seeded, 6, "decision")]
    assert recorded == [f"full-{n}" for n in range(6)]


def test_a_full_audit_queue_refuses_a_batch_order_by_order(seeded, start_gateway):
    gateway = start_gateway(audit_queue_size=3, durable_decisions=False,
                            max_sync_lag_ms=5_000)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        pause_writes(seeded)
        reply = stub.EvaluateOrders(pb.OrderBatch(orders=[
            order(order_id=f"batch-{n}") for n in range(4)] + [pb.Order(order_id="bad")]),
            timeout=5)
    assert [d.approved for d in reply.decisions] == [True, True, True, False, False]
    for decision in reply.decisions[3:]:
        assert [r.code for r in decision.rejections] == [pb.REJECT_CODE_AUDIT_UNAVAILABLE]


def test_audit_when_full_drop_decides_and_counts_the_dropped_records(seeded, start_gateway):
    gateway = start_gateway(audit_queue_size=5, durable_decisions=False,
                            max_sync_lag_ms=5_000, audit_when_full="drop",
                            audit_before_answer=False)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        pause_writes(seeded)
        answers = [stub.EvaluateOrder(order(order_id=f"drop-{n}"), timeout=5)
                   for n in range(8)]
        status = stub.GetStatus(pb.StatusRequest())
    assert all(a.approved for a in answers)
    assert (status.audit_dropped, status.audit_refused) == (3, 0)


def test_a_burst_of_decisions_is_one_stream_entry_per_batch_and_reads_back_whole(redis_client,
                                                                                redis_url):
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        trail = AuditTrail(client, queue_size=10_000)
        trail.start()
        for n in range(2_500):
            trail.decision(order(order_id=f"b{n}", venue="X;N:A,S"), n % 2 == 0,
                           () if n % 2 == 0 else ((pb.REJECT_CODE_MAX_ORDER_QUANTITY, 1, 2),),
                           100 + n, False, 1_000, "oms-1")
        await trail.close(timeout=10)
        await client.aclose()

    asyncio.run(scenario())
    assert redis_client.xlen(AUDIT_STREAM) == 3  # 1,000 + 1,000 + 500 records
    rows = entries(redis_client)
    assert [row["order_id"] for row in rows] == [f"b{n}" for n in range(2_500)]
    assert rows[1]["codes"] == "MAX_ORDER_QUANTITY" and rows[1]["verdict"] == "REJECTED"
    assert rows[0]["venue"] == "X;N:A,S" and rows[0]["principal"] == "oms-1"
    assert set(rows[0]) == EVERY_DECISION_FIELD


def test_text_fields_are_cut_so_a_huge_malformed_order_cannot_bloat_the_stream():
    huge = order(order_id="x" * 100_000, account="y" * 100_000)
    fields = encode(("decision", 0, "", huge, False, ((39, 0, 0),), 0, False, 0, "z" * 100_000),
                    "1")
    assert max(len(str(value)) for value in fields) <= 256


def test_a_version_2_entry_with_the_order_in_flat_fields_reads_as_the_same_row():
    # Version 3 keeps a well-formed order whole; version 2 (written before)
    # set its fields one by one. Both read to the same row.
    sent = order(order_id="v2-1", venue="XNAS", counterparty="CP-1", quantity=7)
    sent.time_in_force, sent.expire_at_unix_ms = pb.TIME_IN_FORCE_GTD, 1_700_000_600_000
    entry = ("decision", 1_700_000_000_000_000_000, "oms-1", sent, False, ((39, 5, 6),), 1234,
             True, 55, "orig")
    current = encode_batch([entry])
    [kept] = records_pb2.AuditBatch.FromString(current).records
    assert kept.decision.HasField("order") and kept.decision.order_id == ""
    flat = records_pb2.AuditBatch()
    record = flat.records.add(ts_unix_ms=1_700_000_000_000, principal="oms-1")
    record.decision.MergeFrom(records_pb2.AuditDecision(
        order_id="v2-1", account="ACC-1", symbol="AAPL", side=sent.side,
        order_type=sent.order_type, quantity=7, price=sent.price, venue="XNAS",
        counterparty="CP-1", approved=False, codes=[39], notional=55, latency_ns=1234,
        replayed=True, replaces="orig", time_in_force=pb.TIME_IN_FORCE_GTD,
        expire_at_unix_ms=1_700_000_600_000))
    [(_, new_row)] = rows_of("1-0", {b"v": b"3", b"pid": b"7", b"data": current})
    [(_, old_row)] = rows_of("1-0", {b"v": b"2", b"pid": b"7", b"data": flat.SerializeToString()})
    assert new_row == old_row
    assert (new_row["order_id"], new_row["venue"], new_row["time_in_force"],
            new_row["expire_at"]) == ("v2-1", "XNAS", "GTD", "1700000600000")


# -- reading: pretrade audit --


@pytest.fixture
def trail(seeded, gateway, stub) -> redis.Redis:
    """Three decisions of two accounts and a halt, written and audited."""
    seed_account(seeded, "ACC-2")
    wait_until(lambda: stub.EvaluateOrder(order(account="ACC-2", order_id="b-1")).approved,
               bool)
    stub.EvaluateOrder(order(order_id="a-1"))
    stub.EvaluateOrder(order(order_id="a-2", quantity=1_500))
    stub.Halt(halt(pb.HALT_SCOPE_ACCOUNT, pb.HALT_MODE_HALTED, account="ACC-1",
                   reason="too many rejects"))
    audited(seeded, 4)
    return seeded


def test_audit_command_filters_by_account_and_prints_a_table(trail, redis_url, capsys):
    assert main(["audit", "--redis-url", redis_url, "--account", "ACC-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "PID", "CALLER", "EVENT", "SUBJECT", "ORDER", "ID",
                                "WHAT", "LATENCY", "DETAIL"]
    assert len(lines) == 4
    assert "APPROVED" in lines[1] and "a-1" in lines[1] and "BUY 10 AAPL @ $68.3378" in lines[1]
    assert "REJECTED" in lines[2] and "MAX_ORDER_QUANTITY, MAX_ORDER_NOTIONAL" in lines[2]
    assert "HALT HALTED" in lines[3] and "account ACC-1" in lines[3]
    assert "by alice via rpc" in lines[3] and "too many rejects" in lines[3]


def test_audit_command_finds_one_order_id_as_json(trail, redis_url, capsys):
    assert main(["audit", "--redis-url", redis_url, "--order-id", "a-2", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    assert entry["order_id"] == "a-2" and entry["verdict"] == "REJECTED"
    # The dialect of every --json: the AuditRecord's names, enums by full name.
    assert entry["codes"] == ["REJECT_CODE_MAX_ORDER_QUANTITY", "REJECT_CODE_MAX_ORDER_NOTIONAL"]
    assert entry["quantity"] == 1_500 and entry["replayed"] is False
    assert entry["side"] == "SIDE_BUY" and entry["approved"] is False
    assert isinstance(entry["ts_unix_ms"], int) and "ts" not in entry
    assert entry["id"].count("-") == 1


def test_audit_command_time_range_and_limit(trail, redis_url, capsys):
    assert main(["audit", "--redis-url", redis_url, "--since", "10m", "--limit", "2",
                 "--event", "decision"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[5] for row in rows] == ["a-1", "a-2"]  # the newest two, oldest first
    assert main(["audit", "--redis-url", redis_url, "--until", "1h"]) == 0
    assert capsys.readouterr().out.strip() == "No audit entries match."


def test_audit_command_reads_redis_url_from_the_environment(trail, redis_url, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("PRETRADE_REDIS_URL", redis_url)
    assert main(["audit", "--order-id", "b-1"]) == 0
    assert "b-1" in capsys.readouterr().out


def test_audit_command_without_a_redis_url_says_what_it_needs(capsys, monkeypatch):
    for name in ("PRETRADE_REDIS_URL", "REDIS_URL", "PRETRADE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert main(["audit"]) == 2
    assert "--redis-url" in capsys.readouterr().err


def test_audit_command_against_an_unreachable_redis_fails_with_status_2(capsys):
    assert main(["audit", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "reading the audit stream failed" in capsys.readouterr().err


def test_read_audit_pages_through_a_long_stream(redis_client):
    for n in range(2_500):
        redis_client.xadd(AUDIT_STREAM, {"event": "decision", "ts": n, "order_id": f"o{n}",
                                         "account": "A" if n % 2 else "B"})
    found = read_audit(redis_client, AuditQuery(account="A", limit=0))
    assert len(found) == 1_250
    assert [f["order_id"] for _, f in found[:2]] == ["o1", "o3"]
    assert read_audit(redis_client, AuditQuery(order_id="o7"))[0][1]["account"] == "A"


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", 1_700_000_000_000 - 600_000),
    ("500ms", 1_700_000_000_000 - 500),
    ("1d", 1_700_000_000_000 - 86_400_000),
    ("now", 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14 22:13:20", 1_700_000_000_000),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
])
def test_parse_when_takes_durations_ago_and_iso_times(text, expected):
    now = datetime.fromtimestamp(1_700_000_000, UTC)
    assert parse_when(text, now) == expected


@pytest.mark.parametrize("text", ["", "10", "10 minutes", "-5m", "yesterday", "10y"])
def test_parse_when_refuses_anything_else(text):
    with pytest.raises(ValueError, match="duration"):
        parse_when(text)


def test_format_audit_entries_survives_entries_it_cannot_parse():
    text = format_audit_entries([("1-0", {"event": "decision", "ts": "x", "price": "y"}),
                                 ("2-0", {"event": "halt"}), ("3-0", {})])
    assert len(text.splitlines()) == 4


def test_every_field_of_both_entry_kinds_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "redis-schema.md").read_text()
    section = doc.split("\n## The audit trail: `audit`\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    decision = encode(("decision", 0, "", order(), True, (), 0, False, 0, ""), "1")[::2]
    halt_change = encode(("halt", 0, "", "rpc", 1, b"", 3, "r", "me", 0), "1")[::2]
    assert documented == set(decision) | set(halt_change)
