"""The per-order building blocks of the servicer path, each timed beside the form it replaced.

    .venv/bin/python bench/microbench.py
    .venv/bin/python bench/microbench.py --profile   # cProfile of decide's loop, by own time

docs/performance.md quotes these figures (the servicer-path sections). Each
line times the current form and, where one was replaced, the earlier form
kept here only to measure it against: the message constructor given every
field or only those set, a batch reply built in place or copied in, the
journal record as a frozen dataclass or a named tuple, its encoding, the
audit record kept whole or set field by field, ``PreTradeRiskServicer.decide``
itself, and a Redis round trip from a bare asyncio process through
pretrade's own client.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from pretrade._core import Engine
from pretrade.api.servicer import PreTradeRiskServicer
from pretrade.app.devredis import RedisServer
from pretrade.audit.entries import MAX_TEXT, _set_order_fields, encode_batch
from pretrade.engine.limits import LimitKind
from pretrade.engine.table import new_private_table
from pretrade.state.connection import redis_client
from pretrade.state.halts import HaltBook
from pretrade.state.journal import DecidedOrder
from pretrade.v1 import records_pb2
from pretrade.v1 import risk_pb2 as pb

PRICE = 683_378
ORDERS = 1_000


def show(label: str, value: float, unit: str = "µs") -> None:
    print(f"{label:<40} {value:8.2f} {unit}")


def timed(label: str, work: Callable[[], object], calls: int, per: int = 1) -> None:
    """Best of five runs of ``calls`` calls, in µs per call (per ``per`` items of one)."""
    best = min(timeit.repeat(work, number=calls, repeat=5))
    show(label, best / calls / per * 1e6, "µs" if per == 1 else "µs per item")


def orders() -> list[pb.Order]:
    return [pb.Order(order_id=f"lg-0-{n}", account_id="ACC-1", symbol="AAPL", side=pb.SIDE_BUY,
                     order_type=pb.ORDER_TYPE_LIMIT, quantity=1, price=PRICE, venue="XNAS")
            for n in range(ORDERS)]


def decisions() -> None:
    every = dict(order_id="o-1", approved=True, rejections=[], latency_ns=1_000,
                 account_id="ACC-1", symbol="AAPL", notional=PRICE, replayed=False,
                 currency="USD")
    only_set = {k: v for k, v in every.items() if k not in ("rejections", "replayed")}
    timed("pb.Decision, every field given", lambda: pb.Decision(**every), 100_000)
    timed("pb.Decision, only the fields set", lambda: pb.Decision(**only_set), 100_000)

    def copied_in() -> None:
        pb.DecisionBatch(decisions=[pb.Decision(**only_set) for _ in range(ORDERS)])

    def in_place() -> None:
        add = pb.DecisionBatch().decisions.add
        for _ in range(ORDERS):
            add(**only_set)

    timed("batch reply, decisions copied in", copied_in, 50, ORDERS)
    timed("batch reply, built in place", in_place, 50, ORDERS)


@dataclass(frozen=True)
class FrozenDecidedOrder:  # DecidedOrder as it was, to time against
    account: bytes
    order_id: bytes
    symbol: bytes
    side: int
    order_type: int
    quantity: int
    price: int
    valuation_price: int
    notional: int
    venue: bytes
    counterparty: bytes
    approved: bool
    rejections: tuple[tuple[int, int, int], ...]
    time_in_force: int = 0
    expire_at_unix_ms: int = 0
    working_until_unix_ms: int = 0
    replaces: bytes = b""
    carried: int = 0


def journal_records() -> None:
    fields = (b"ACC-1", b"o-1", b"AAPL", 1, 1, 1, PRICE, PRICE, PRICE, b"XNAS", b"", True, ())
    timed("journal record, frozen dataclass", lambda: FrozenDecidedOrder(*fields), 100_000)
    timed("journal record, named tuple", lambda: DecidedOrder(*fields), 100_000)
    order = DecidedOrder(*fields)

    def every_field() -> bytes:  # DecidedOrder.encode as it was
        record = records_pb2.DecidedOrderRecord(
            symbol="AAPL", side=order.side, order_type=order.order_type,  # type: ignore[arg-type]
            quantity=order.quantity, price=order.price, valuation_price=order.valuation_price,
            notional=order.notional, venue=order.venue, counterparty=order.counterparty,
            approved=order.approved, decided_at_unix_ms=1, time_in_force=0,  # type: ignore[arg-type]
            expire_at_unix_ms=0, working_until_unix_ms=0, replaces=b"", carried=0, rejections=[])
        return b"\x02" + record.SerializeToString()

    assert every_field() == order.encode(1)
    timed("journal encoding, every field given", every_field, 100_000)
    timed("journal encoding, DecidedOrder.encode", lambda: order.encode(1), 100_000)


def audit_records() -> None:
    entries = [("decision", time.time_ns(), "", o, True, (), 1_234, False, PRICE, "")
               for o in orders()]

    def field_by_field() -> bytes:  # batch version 2: every order set field by field
        batch = records_pb2.AuditBatch()
        for (_, at_ns, principal, order, approved, _, latency, replayed, notional,
             replaces) in entries:
            record = batch.records.add(ts_unix_ms=at_ns // 1_000_000, principal=principal)
            _set_order_fields(record.decision, order)
            decision = record.decision
            decision.approved, decision.notional = approved, notional
            decision.latency_ns, decision.replayed = latency, replayed
            decision.replaces = replaces[:MAX_TEXT]
        return batch.SerializeToString()

    timed("audit record, field by field (v2)", field_by_field, 20, ORDERS)
    timed("audit record, encode_batch (v3)", lambda: encode_batch(entries), 20, ORDERS)


def servicer(profile: bool = False) -> None:
    requests = orders() * 50
    table = new_private_table(max_accounts=16, max_instruments=16, max_positions=64,
                              max_overrides=16, lock_stripes=4, max_orders=len(requests) + 10,
                              max_orders_per_account=len(requests) + 10)
    table.set_sync_live(True)
    table.set_instrument(b"AAPL", known=True)
    table.set_last_price(b"AAPL", PRICE)
    table.set_account_state(b"ACC-1", known=True)
    table.set_account_limits(b"ACC-1", {int(k): 10**15 for k in LimitKind if k < 5}
                             | {int(LimitKind.PRICE_COLLAR_BPS): 1_000})
    for n, request in enumerate(requests):
        request.order_id = f"s-{n}"
    decide = PreTradeRiskServicer(Engine(table), HaltBook(table), aioredis.Redis()).decide
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [decide(request) for request in requests])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return
    started = time.perf_counter()
    for request in requests:
        decide(request)
    show("PreTradeRiskServicer.decide", (time.perf_counter() - started) / len(requests) * 1e6,
         "µs per order")


def redis_round_trip() -> None:
    async def measure(url: str) -> tuple[float, float]:
        client = redis_client(url)
        plain, pipelined = [], []
        for n in range(3_000):
            started = time.perf_counter_ns()
            await client.hset(b"orders:{ACC-1}", mapping={b"p%d" % n: b"x" * 60})
            plain.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(b"orders:{ACC-1}", mapping={b"q%d" % n: b"x" * 60})
                await pipe.execute()
            pipelined.append(time.perf_counter_ns() - started)
        await client.aclose()
        return statistics.median(plain) / 1000, statistics.median(pipelined) / 1000

    with tempfile.TemporaryDirectory() as directory, \
            RedisServer(data_dir=Path(directory)) as server:
        plain, pipelined = asyncio.run(measure(server.url))
    show("Redis HSET from bare asyncio, p50", plain)
    show("the same HSET pipelined, p50", pipelined)


def main() -> None:
    if "--profile" in sys.argv[1:]:
        servicer(profile=True)
        return
    decisions()
    journal_records()
    audit_records()
    servicer()
    redis_round_trip()


if __name__ == "__main__":
    main()
