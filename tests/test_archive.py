"""The archiver: the stream ``audit`` into PostgreSQL, exactly once, and trimmed only behind it.

Real parts: the session's redis-server, the session's PostgreSQL (a fresh
database per test), the real writer (:class:`AuditTrail`) filling the stream.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from book import order
from pretrade.audit.archive import (
    GROUP,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    Archiver,
    ArchiveStore,
    migrate,
    parse_entry_id,
    rows_of_entry,
)
from pretrade.audit.entries import AUDIT_STREAM, encode_batch
from pretrade.audit.trail import AuditTrail
from pretrade.v1 import risk_pb2 as pb


def write_records(redis_url: str, decisions: int, *, halts: int = 0, per_entry: int = 10,
                  prefix: str = "o") -> None:
    """``decisions`` decisions (and ``halts`` halt changes) through the real writer,
    ``per_entry`` records to a stream entry."""
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        trail = AuditTrail(client, queue_size=100_000)
        trail.start()
        for n in range(decisions):
            rejections = () if n % 3 else ((pb.REJECT_CODE_BUYING_POWER, 5, 4),
                                           (pb.REJECT_CODE_ORDER_RATE, 9, 8))
            trail.decision(order(order_id=f"{prefix}-{n}", account=f"ACC-{n % 4}"),
                           not rejections, rejections, 1_000 + n, False, 6_833_780,
                           f"oms-{n % 2}")
            if (n + 1) % per_entry == 0:
                while trail.pending:
                    await asyncio.sleep(0)
        for n in range(halts):
            trail.halt("rpc", pb.HALT_SCOPE_ACCOUNT, b"ACC-1", pb.HALT_MODE_HALTED,
                       f"reason {n}", "alice", 0, "desk")
        await trail.close(timeout=10)
        await client.aclose()

    asyncio.run(scenario())


def archive_all(archiver: Archiver, rounds: int = 200) -> None:
    """Step until a round archives nothing."""
    for _ in range(rounds):
        if archiver.step() == 0:
            return
    raise AssertionError("the archiver did not catch up")


def rows(database_url: str, sql: str = "SELECT * FROM audit_record ORDER BY 1, 2, 3",
         params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as connection:
        cursor = connection.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture
def archiver(redis_client: redis.Redis, database_url: str) -> Any:
    made: list[Archiver] = []

    def make(**options: Any) -> Archiver:
        options.setdefault("block_ms", 10)
        found = Archiver(redis_client, ArchiveStore(database_url), **options)
        made.append(found)
        return found

    yield make
    for found in made:
        found.store.close()


def test_every_record_becomes_one_row_with_its_fields(redis_client, redis_url, database_url,
                                                      archiver):
    write_records(redis_url, 30, halts=2)
    archive_all(archiver())
    found = rows(database_url)
    assert len(found) == 32
    decisions = [r for r in found if r["event"] == "decision"]
    assert [r["order_id"] for r in decisions] == [f"o-{n}" for n in range(30)]
    first, rejected = decisions[1], decisions[0]
    assert (first["account"], first["symbol"], first["side"], first["order_type"]) == (
        "ACC-1", "AAPL", "BUY", "LIMIT")
    assert (first["quantity"], first["price"], first["notional"]) == (10, 683_378, 6_833_780)
    assert first["approved"] is True and first["codes"] == [] and first["principal"] == "oms-1"
    assert rejected["approved"] is False
    assert rejected["codes"] == ["BUYING_POWER", "ORDER_RATE"]
    halt = [r for r in found if r["event"] == "halt"][0]
    assert (halt["scope"], halt["target"], halt["account"], halt["mode"]) == (
        "ACCOUNT", "ACC-1", "ACC-1", "HALTED")
    assert (halt["reason"], halt["halted_by"], halt["principal"]) == ("reason 0", "alice", "desk")
    # The key: the stream entry id and the record's place in its batch.
    entry_ids = {parse_entry_id(entry_id) for entry_id, _ in redis_client.xrange(AUDIT_STREAM)}
    assert {(r["stream_ms"], r["stream_seq"]) for r in found} == entry_ids


def test_the_questions_operators_ask_have_their_indexes(database_url, archiver):
    archiver().store.connection()
    indexes = {r["indexdef"].split(" USING ")[1] for r in rows(
        database_url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'audit_record'")}
    assert {"btree (account, ts)", "btree (order_id)", "gin (codes)",
            "btree (principal, ts)", "btree (ts)",
            "btree (stream_ms, stream_seq, idx)"} <= indexes


def test_migrations_are_versioned_and_applied_once(database_url):
    with psycopg.connect(database_url) as connection:
        assert migrate(connection) == [m.version for m in MIGRATIONS]
        assert migrate(connection) == []
    applied = rows(database_url, f"SELECT version, name FROM {MIGRATIONS_TABLE}")
    assert [(r["version"], r["name"]) for r in applied] == [(m.version, m.name)
                                                            for m in MIGRATIONS]


def test_an_entry_delivered_twice_gives_one_row(redis_client, redis_url, database_url,
                                                archiver):
    """At-least-once: an archiver that committed and died before XACK leaves the entries
    pending; the one that takes them over writes them again, and nothing is added."""
    write_records(redis_url, 40)
    first = archiver(consumer="first")
    first.ensure_group()
    delivered = first._read(">", block=False)  # read, written, never acknowledged
    first.store.write([row for entry_id, fields in delivered
                       for row in rows_of_entry(entry_id, fields)])
    assert redis_client.xpending(AUDIT_STREAM, GROUP)["pending"] == len(delivered) == 4
    second = archiver(consumer="second", claim_idle_ms=0)
    archive_all(second)
    assert second.stats.claimed == 4 and second.stats.duplicates == 40
    found = rows(database_url)
    assert sorted(r["order_id"] for r in found) == sorted(f"o-{n}" for n in range(40))
    assert redis_client.xpending(AUDIT_STREAM, GROUP)["pending"] == 0


def test_trimming_never_removes_an_unacknowledged_entry(redis_client, redis_url, database_url,
                                                        archiver):
    write_records(redis_url, 100)  # ten entries
    ids = [entry_id for entry_id, _ in redis_client.xrange(AUDIT_STREAM)]
    dead = archiver(consumer="dead", entries_per_read=3)
    dead.ensure_group()
    assert len(dead._read(">", block=False)) == 3  # delivered, never acknowledged
    live = archiver(consumer="live", retain_ms=0)  # keeps nothing it archived
    archive_all(live)
    live.trim()
    # The three pending entries (the oldest) and everything after them stay.
    assert [entry_id for entry_id, _ in redis_client.xrange(AUDIT_STREAM)] == ids
    # Once they are taken over and archived, the stream is trimmed behind them.
    live.claim_idle_ms = 0
    live._next_claim = 0.0
    archive_all(live)
    live.trim()
    assert [entry_id for entry_id, _ in redis_client.xrange(AUDIT_STREAM)] == ids[-1:]
    assert len(rows(database_url)) == 100
    write_records(redis_url, 10, prefix="late")
    archive_all(live)
    assert len(rows(database_url)) == 110


def test_trimming_keeps_archived_entries_for_the_retention_time(redis_client, redis_url,
                                                                archiver):
    write_records(redis_url, 50)
    keeper = archiver(retain_ms=60_000)
    archive_all(keeper)
    assert keeper.trim() == 0
    assert redis_client.xlen(AUDIT_STREAM) == 5


def test_without_an_archiver_nothing_trims_the_stream(redis_client, redis_url):
    write_records(redis_url, 300)
    assert redis_client.xlen(AUDIT_STREAM) == 30


def test_an_unreadable_batch_is_archived_as_an_unreadable_row(redis_client, database_url,
                                                              archiver):
    redis_client.xadd(AUDIT_STREAM, {"v": "2", "pid": "7", "n": "1", "data": b"\xff\xff"})
    redis_client.xadd(AUDIT_STREAM, {"v": "2", "pid": "7", "n": "1", "data": encode_batch(
        [("decision", 1_700_000_000_000_000_000, "p\x00", pb.Order(
            order_id="nul\x00id", account_id="ACC-1", symbol="AAPL", quantity=1,
            time_in_force=pb.TIME_IN_FORCE_GTD, expire_at_unix_ms=1_700_000_600_000,
            group_id="G\x00"), True,
          (), 1, False, 1, "orig\x00")])})
    archive_all(archiver())
    found = rows(database_url)
    assert [r["event"] for r in found] == ["unreadable", "decision"]
    assert "does not parse" in found[0]["reason"]
    assert found[1]["order_id"] == "nul\ufffdid" and found[1]["principal"] == "p\ufffd"
    # a ReplaceOrder's record keeps the original it replaced (migration 2)
    assert found[1]["replaces"] == "orig\ufffd"
    # and its time in force and expiry (migration 3)
    assert (found[1]["time_in_force"], found[1]["expire_at_ms"]) == ("GTD", 1_700_000_600_000)
    # and the OCO group of a leg (migration 4)
    assert found[1]["group_id"] == "G\ufffd"


def test_the_archiver_keeps_going_when_postgresql_goes_away_and_comes_back(
        redis_client, redis_url, database_url, postgres_server, archiver):
    write_records(redis_url, 20)
    keeper = archiver()
    archive_all(keeper)
    # Every connection to the database is cut (as a PostgreSQL restart does).
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (name,))
    write_records(redis_url, 20, prefix="after")
    stop = threading.Event()
    runner = threading.Thread(target=keeper.run, args=(stop,))
    runner.start()
    try:
        deadline = 100
        while len(rows(database_url)) < 40 and deadline:
            deadline -= 1
            stop.wait(0.05)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert keeper.stats.errors >= 1
    assert len(rows(database_url)) == 40
    assert redis_client.xpending(AUDIT_STREAM, GROUP)["pending"] == 0


# -- pretrade audit: the archive and the stream, merged --


def audit_json(capsys: Any, *args: str) -> list[dict[str, Any]]:
    import json

    from pretrade.cli.commands import main

    capsys.readouterr()
    assert main(["audit", *args, "--json", "--limit", "0"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_audit_reads_history_from_postgresql_and_the_rest_from_the_stream_once(
        capsys, redis_client, redis_url, database_url, archiver):
    write_records(redis_url, 30)
    keeper = archiver(retain_ms=3_600_000)  # archived entries stay in the stream too
    archive_all(keeper)
    write_records(redis_url, 9, prefix="new")  # not archived yet
    source = ("--redis-url", redis_url, "--database-url", database_url)
    every = audit_json(capsys, *source)
    assert [e["order_id"] for e in every] == [f"o-{n}" for n in range(30)] + [
        f"new-{n}" for n in range(9)]
    assert len({e["id"] for e in every}) == 39
    # Trimmed down to nothing: the history is still whole, from PostgreSQL.
    archive_all(keeper)
    keeper.retain_ms = 0
    keeper.trim()
    assert redis_client.xlen(AUDIT_STREAM) == 1
    assert [e["order_id"] for e in audit_json(capsys, *source)] == [
        e["order_id"] for e in every]
    # Without the archive, only what the stream still holds.
    assert len(audit_json(capsys, "--redis-url", redis_url)) == 9


def test_audit_filters_by_reject_code_and_principal_in_both_sources(
        capsys, redis_url, database_url, archiver):
    write_records(redis_url, 30)
    archive_all(archiver(retain_ms=0))
    write_records(redis_url, 9, prefix="new")
    source = ("--redis-url", redis_url, "--database-url", database_url)
    rejected = audit_json(capsys, *source, "--code", "buying_power")
    assert [e["order_id"] for e in rejected] == [f"o-{n}" for n in range(0, 30, 3)] + [
        f"new-{n}" for n in range(0, 9, 3)]
    assert all("REJECT_CODE_BUYING_POWER" in e["codes"] for e in rejected)
    by_one = audit_json(capsys, *source, "--principal", "oms-1", "--account", "ACC-1")
    assert [e["order_id"] for e in by_one] == [f"o-{n}" for n in range(30) if n % 4 == 1] + [
        f"new-{n}" for n in range(9) if n % 4 == 1]
    newest = audit_json(capsys, *source, "--order-id", "o-7")
    assert [(e["order_id"], e["account"], e["principal"]) for e in newest] == [
        ("o-7", "ACC-3", "oms-1")]


def test_audit_with_an_unreachable_archive_fails_with_status_2(capsys, redis_url):
    from pretrade.cli.commands import main

    assert main(["audit", "--redis-url", redis_url, "--database-url",
                 "postgresql://nobody@127.0.0.1:1/none"]) == 2
    assert "reading the audit archive failed" in capsys.readouterr().err


def test_the_names_of_archivers_gone_with_nothing_pending_are_forgotten(
        redis_client, redis_url, archiver, monkeypatch):
    import pretrade.audit.archive as archive

    write_records(redis_url, 20)
    gone = archiver(consumer="gone", entries_per_read=1)
    gone.ensure_group()
    assert len(gone._read(">", block=False)) == 1  # pending under "gone"
    archiver(consumer="done").step()  # reads the other entry, acknowledges it
    live = archiver(consumer="live", claim_idle_ms=0)
    monkeypatch.setattr(archive, "FORGET_IDLE_MS", 0)
    live.trim()
    names = {c["name"] for c in redis_client.xinfo_consumers(AUDIT_STREAM, GROUP)}
    assert names == {b"gone"}  # "done" is forgotten; "gone" still holds an entry: kept
    archive_all(live)  # takes it over
    live.trim()
    names = {c["name"] for c in redis_client.xinfo_consumers(AUDIT_STREAM, GROUP)}
    assert names == {b"live"}
