"""Bad input: over 100,000 generated requests to one gateway over a real gRPC channel.

EvaluateOrders carries the volume (about 96,000 orders in batches); single
EvaluateOrder calls, Halt calls, random and mutated bytes sent to the raw
methods and messages over gRPC's size limit make up the rest. The run
passes only if

* no invalid order is approved: :func:`must_not_be_approved` decides that
  from the order and the halts in force alone, without the server's code;
* every refusal carries a code: a rejected decision lists at least one
  reject code, a failed call has a gRPC status from a small expected set;
* a Halt request is applied exactly when :func:`halt_problem` finds it
  well formed, and never half;
* nothing hangs (every call has a deadline) and nothing crashes: afterwards
  the server still answers health, GetStatus and a plain valid order.

The generator is a seeded ``random.Random``; the seed is printed, and
``PRETRADE_FUZZ_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import GENEROUS_LIMITS, seed_instrument, seed_limits
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
GRPC_MAX_MESSAGE = 4 * 1024 * 1024  # the server's default receive limit

BATCHES, BATCH_SIZE = 96, 1_000
SINGLE_ORDERS = 1_500
HALT_ROUNDS, HALTS_PER_ROUND, ORDERS_PER_HALT_ROUND = 15, 100, 100
RAW_CALLS = 1_000
MINIMUM_REQUESTS = 100_000
CALL_TIMEOUT = 10.0

PRICES = {"AAPL": 683_378, "MSFT": 3_512_500}
UNPRICED = "NOPX"
SYMBOLS = (*PRICES, UNPRICED)
ACCOUNTS = ("ACC-1", "ACC-2")
LIMITS = {**GENEROUS_LIMITS, "max_order_quantity": 1_000_000,
          "max_order_notional": 10**13, "max_net_position": 10**9,
          "max_long_position": 10**9, "max_short_position": 10**9,
          "price_collar_bps": 1_000}
COLLAR_BPS = LIMITS["price_collar_bps"]

SIDES = (pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT)
ORDER_TYPES = (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET)
HALT_MODES = (pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED)
HALT_SCOPES = (pb.HALT_SCOPE_GLOBAL, pb.HALT_SCOPE_ACCOUNT, pb.HALT_SCOPE_SYMBOL)

#: Printable ASCII without blanks: what order ids, venues and counterparties may hold.
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: What an account id or symbol may hold to name a Redis key (docs/redis-schema.md).
KEY_ID = re.compile(r"[A-Za-z0-9._/\-+=#@$&!~^]{1,39}")
MAX_ORDER_ID, MAX_TAG, MAX_HALT_TEXT = 63, 15, 512
MAX_TTL_SECONDS = 366 * 24 * 3600

ODD_TEXT = (
    "", " ", "\x00", "A\x00B", "ACC-1\x00", "\t", "\n", "ACC-1\n", " ACC-1", "ACC-1 ",
    "acc-1", "aapl", "\u200f", "\u202eACC-1", "ACC\u200b-1", "e\u0301", "A\u0308\u0308\u0308",
    "\U0001d518\U0001d52b", "\U0001f600", "\U0010ffff", "\ufeff", "\uffff", "\ufffd",
    "\uff21\uff21\uff30\uff2c", "\ufb03", "\u0130", "{ACC-1}", "halt:all", "*", "..", "/",
    "%s%n", "'; DROP TABLE", "x" * 39, "x" * 40, "x" * 63, "x" * 64, "x" * 4_000,
    "\U0001f600" * 500, "A" * 15, "A" * 16, "XNAS", "BRKR-1",
)
EDGE_INTEGERS = (INT64_MIN, INT64_MIN + 1, -(2**32), INT32_MIN, -1_000_000, -2, -1, 0, 1, 2,
                 3, 99, 1_000, 1_000_000, 1_000_001, INT32_MAX, 2**31, 2**32, 2**53 + 1,
                 10**15, 10**18, INT64_MAX - 1, INT64_MAX)
EDGE_ENUMS = (INT32_MIN, -1, 0, 1, 2, 3, 4, 42, 2**16, INT32_MAX)


@dataclass(frozen=True)
class HaltInForce:
    scope: int
    target: str
    expires_at_ms: int  # 0: until lifted


def shape_problem(order: pb.Order) -> str | None:
    """Why the order is malformed, or None: checked against the contract, not the code."""
    if not (0 < len(order.order_id) <= MAX_ORDER_ID
            and PRINTABLE_ASCII.fullmatch(order.order_id)):
        return "order_id"
    for name in ("account_id", "symbol"):
        if not KEY_ID.fullmatch(getattr(order, name)):
            return name
    if order.side not in SIDES:
        return "side"
    if order.order_type not in ORDER_TYPES:
        return "order_type"
    for name in ("venue", "counterparty"):
        text = getattr(order, name)
        if text and not (len(text) <= MAX_TAG and PRINTABLE_ASCII.fullmatch(text)):
            return name
    return None


def must_not_be_approved(order: pb.Order, halts: list[HaltInForce]) -> str | None:
    """Why this order must be refused (a reason), or None if it may be approved.

    Independent of the server: the order itself, the book this test seeded
    (no holdings, so a reduce-only halt lets nothing through) and the halts
    the Halt replies said are in force.
    """
    problem = shape_problem(order)
    if problem is not None:
        return f"malformed {problem}"
    if order.account_id not in ACCOUNTS:
        return "unknown account"
    if order.symbol not in SYMBOLS:
        return "unknown symbol"
    if order.quantity <= 0:
        return "quantity <= 0"
    if order.quantity > LIMITS["max_order_quantity"]:
        return "over max order quantity"
    last = PRICES.get(order.symbol)
    if last is None:
        return "no reference price (market valuation and collar need one)"
    if order.order_type == pb.ORDER_TYPE_LIMIT:
        if order.price <= 0:
            return "limit price <= 0"
        # Clearly outside the collar; the boundary itself is left to the server.
        if abs(order.price - last) * 10_000 > (COLLAR_BPS + 1) * last:
            return "outside the price collar"
        value = order.quantity * order.price
    else:
        value = order.quantity * last
    if value > INT64_MAX:
        return "notional overflows int64"
    if value > LIMITS["max_order_notional"]:
        return "over max order notional"
    if order.side != pb.SIDE_BUY:
        return "sale without holdings or locates"
    now_ms = time.time() * 1000
    for halt in halts:
        if halt.expires_at_ms and halt.expires_at_ms < now_ms + 1_000:
            continue  # may have lifted itself by now
        if (halt.scope == pb.HALT_SCOPE_GLOBAL
                or (halt.scope == pb.HALT_SCOPE_ACCOUNT and halt.target == order.account_id)
                or (halt.scope == pb.HALT_SCOPE_SYMBOL and halt.target == order.symbol)):
            return f"halted ({pb.HaltScope.Name(halt.scope)} {halt.target})"
    return None


def halt_problem(request: pb.HaltRequest) -> str | None:
    """Why a HaltRequest is malformed, or None: checked against the contract."""
    if request.scope not in HALT_SCOPES:
        return "scope"
    if request.mode not in HALT_MODES:
        return "mode"
    if request.scope == pb.HALT_SCOPE_GLOBAL and (request.account_id or request.symbol):
        return "GLOBAL with a target"
    if request.scope == pb.HALT_SCOPE_ACCOUNT and (
            request.symbol or not KEY_ID.fullmatch(request.account_id)):
        return "ACCOUNT target"
    if request.scope == pb.HALT_SCOPE_SYMBOL and (
            request.account_id or not KEY_ID.fullmatch(request.symbol)):
        return "SYMBOL target"
    if request.mode != pb.HALT_MODE_ACTIVE and not request.reason.strip():
        return "no reason"
    if len(request.reason) > MAX_HALT_TEXT or len(request.requested_by) > MAX_HALT_TEXT:
        return "text too long"
    if not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
        return "ttl"
    return None


def refused_as_unknown(request: pb.HaltRequest) -> bool:
    """A well-formed halt the gateway refuses FAILED_PRECONDITION: ``only_if_known`` set,
    halting (not lifting) an account or symbol the fuzz book does not hold."""
    if halt_problem(request) is not None or not request.only_if_known or \
            request.mode == pb.HALT_MODE_ACTIVE:
        return False
    if request.scope == pb.HALT_SCOPE_ACCOUNT:
        return request.account_id not in ACCOUNTS
    return request.scope == pb.HALT_SCOPE_SYMBOL and request.symbol not in SYMBOLS


@dataclass
class Fuzzer:
    rng: random.Random
    stub: risk_pb2_grpc.PreTradeRiskStub
    channel: grpc.Channel
    halts: list[HaltInForce] = field(default_factory=list)
    requests: int = 0
    approved: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    _ids: int = 0

    # -- generating --

    def text(self, longest: int = 64) -> str:
        roll = self.rng.random()
        if roll < 0.5:
            return self.rng.choice(ODD_TEXT)[:max(longest, 1)]
        if roll < 0.75:  # printable ASCII, sometimes with blanks
            alphabet = "".join(map(chr, range(0x20, 0x7f)))
            return "".join(self.rng.choices(alphabet, k=self.rng.randint(0, min(longest, 80))))
        # Any code point but the surrogates (a proto string must be valid UTF-8).
        points = []
        for _ in range(self.rng.randint(1, min(longest, 40))):
            point = self.rng.choice((self.rng.randint(0, 0x7f), self.rng.randint(0x80, 0xd7ff),
                                     self.rng.randint(0xe000, 0x10ffff)))
            points.append(chr(point))
        return "".join(points)

    def integer(self, typical: int) -> int:
        roll = self.rng.random()
        if roll < 0.3:
            return self.rng.choice(EDGE_INTEGERS)
        if roll < 0.4:
            return self.rng.randint(INT64_MIN, INT64_MAX)
        return max(1, typical + self.rng.randint(-typical // 5, typical // 5))

    def enum(self, valid: tuple[int, ...]) -> int:
        if self.rng.random() < 0.8:
            return self.rng.choice(valid)
        return self.rng.choice(EDGE_ENUMS)

    def order_id(self) -> str:
        self._ids += 1
        return f"fz-{self._ids}"

    def order(self, longest: int = 64) -> pb.Order:
        """A valid order with a few fields spoiled, or (a quarter of them) noise throughout."""
        symbol = self.rng.choice(SYMBOLS)
        order = pb.Order(
            order_id=self.order_id(), account_id=self.rng.choice(ACCOUNTS), symbol=symbol,
            side=pb.SIDE_BUY, quantity=self.rng.randint(1, 1_000),
            price=PRICES.get(symbol, 100_000) + self.rng.randint(-5_000, 5_000),
            order_type=self.rng.choice(ORDER_TYPES), venue=self.rng.choice(("", "XNAS")))
        spoil: dict[str, Callable[[], Any]] = {
            "order_id": lambda: self.text(longest), "account_id": lambda: self.text(longest),
            "symbol": lambda: self.text(longest), "side": lambda: self.enum(SIDES),
            "order_type": lambda: self.enum(ORDER_TYPES),
            "quantity": lambda: self.integer(500), "price": lambda: self.integer(order.price),
            "venue": lambda: self.text(longest), "counterparty": lambda: self.text(longest),
        }
        names = list(spoil) if self.rng.random() < 0.25 else self.rng.sample(
            list(spoil), self.rng.choice((0, 1, 1, 2, 3)))
        for name in names:
            setattr(order, name, spoil[name]())
        return order

    def halt_request(self) -> pb.HaltRequest:
        scope = self.enum(HALT_SCOPES)
        target = self.rng.choice((*ACCOUNTS, *SYMBOLS, "OTHER-9")) if \
            self.rng.random() < 0.7 else self.text(48)
        request = pb.HaltRequest(
            scope=scope, mode=self.enum(HALT_MODES),
            reason=self.rng.choice(("fuzz", "  ", "", self.text(600))),
            requested_by=self.rng.choice(("fuzzer", "", self.text(600))),
            ttl_seconds=self.rng.choice((0, 0, 0, 3_600, -1, MAX_TTL_SECONDS,
                                         MAX_TTL_SECONDS + 1, INT64_MAX, INT64_MIN)),
            only_if_known=self.rng.random() < 0.3)
        if scope == pb.HALT_SCOPE_ACCOUNT or self.rng.random() < 0.1:
            request.account_id = target
        if scope == pb.HALT_SCOPE_SYMBOL or self.rng.random() < 0.1:
            request.symbol = target
        return request

    # -- checking --

    def count(self, outcome: str, requests: int = 1) -> None:
        self.requests += requests
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def check_decision(self, order: pb.Order, decision: pb.Decision) -> None:
        if decision.approved:
            why = must_not_be_approved(order, self.halts)
            assert why is None, f"approved although {why}: {order!r:.600}"
            assert not decision.rejections, decision
            self.approved += 1
        else:
            assert decision.rejections, f"rejected without a code: {order!r:.600}"
            assert all(r.code != pb.REJECT_CODE_UNSPECIFIED for r in decision.rejections)

    def batch(self, size: int) -> None:
        orders = [self.order() for _ in range(size)]
        request = pb.OrderBatch(orders=orders)
        if request.ByteSize() > GRPC_MAX_MESSAGE // 2:
            request = pb.OrderBatch(orders=orders[: size // 4])
        reply = self.stub.EvaluateOrders(request, timeout=CALL_TIMEOUT)
        assert len(reply.decisions) == len(request.orders)
        for sent, decision in zip(request.orders, reply.decisions, strict=True):
            self.check_decision(sent, decision)
        self.count("batch", len(request.orders))

    def single(self, order: pb.Order) -> None:
        try:
            decision = self.stub.EvaluateOrder(order, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            code = error.code()
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, f"{order!r:.600}")
            assert shape_problem(order) is not None, f"a well-formed order refused: {order!r}"
            self.count("order INVALID_ARGUMENT")
            return
        assert shape_problem(order) is None, f"a malformed order decided: {order!r:.600}"
        self.check_decision(order, decision)
        self.count("order decided")

    def halt(self, request: pb.HaltRequest) -> None:
        problem = halt_problem(request)
        try:
            state = self.stub.Halt(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                assert refused_as_unknown(request), f"refused as unknown: {request!r:.600}"
                self.count("halt FAILED_PRECONDITION")
                return
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), request)
            assert problem is not None, f"a well-formed halt refused: {request!r:.600}"
            self.count("halt INVALID_ARGUMENT")
            return
        assert not refused_as_unknown(request), f"an unknown target halted: {request!r:.600}"
        assert problem is None, f"a malformed halt applied ({problem}): {request!r:.600}"
        self.halts = [HaltInForce(h.scope, h.target, h.expires_at_unix_ms) for h in state.halts]
        self.count("halt applied")

    def lift_every_halt(self) -> None:
        for halt in list(self.halts):
            request = pb.HaltRequest(scope=halt.scope, mode=pb.HALT_MODE_ACTIVE,
                                     requested_by="fuzzer")
            if halt.scope == pb.HALT_SCOPE_ACCOUNT:
                request.account_id = halt.target
            elif halt.scope == pb.HALT_SCOPE_SYMBOL:
                request.symbol = halt.target
            self.halt(request)
        assert self.halts == []

    def raw(self, method: str, valid: bytes) -> None:
        """Random bytes, or a valid message with bytes flipped, cut or appended."""
        if self.rng.random() < 0.5:
            payload = self.rng.randbytes(self.rng.randint(0, 200))
        else:
            data = bytearray(valid)
            for _ in range(self.rng.randint(1, 4)):
                at = self.rng.randrange(len(data))
                data[at] = self.rng.randrange(256)
            payload = bytes(data[: self.rng.randint(0, len(data))]
                            if self.rng.random() < 0.3 else data)
        call = self.channel.unary_unary(f"/pretrade.v1.PreTradeRisk/{method}")
        try:
            reply = call(payload, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and method == "Halt":
                # Flipped bits that set only_if_known on a halt of OTHER-9 (never seen).
                assert refused_as_unknown(pb.HaltRequest.FromString(payload)), payload
                self.count("raw Halt refused as unknown")
                return
            # Bytes that do not parse, or a message that is malformed: both INVALID_ARGUMENT.
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error, payload)
            parses = _parses(pb.Order if method == "EvaluateOrder" else pb.HaltRequest, payload)
            self.count(f"raw {method} {'malformed' if parses else 'unparseable'}")
            return
        if method == "EvaluateOrder":
            self.check_decision(pb.Order.FromString(payload), pb.Decision.FromString(reply))
        else:
            assert halt_problem(pb.HaltRequest.FromString(payload)) is None, payload
            state = pb.HaltState.FromString(reply)
            self.halts = [HaltInForce(h.scope, h.target, h.expires_at_unix_ms)
                          for h in state.halts]
        self.count(f"raw {method} OK")

    def expect_code(self, code: grpc.StatusCode, call: Callable[..., Any],
                    request: Any) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=CALL_TIMEOUT)
        assert raised.value.code() == code, raised.value
        self.count(f"{code.name} as expected")


def _parses(message: Any, payload: bytes) -> bool:
    try:
        message.FromString(payload)
    except DecodeError:
        return False
    return True


@pytest.fixture
def fuzz_book(redis_client: redis.Redis) -> redis.Redis:
    for symbol, price in PRICES.items():
        seed_instrument(redis_client, symbol, price=price)
    seed_instrument(redis_client, UNPRICED)
    for account in ACCOUNTS:
        seed_limits(redis_client, account, **LIMITS)
    return redis_client


def test_a_hundred_thousand_generated_requests_crash_nothing_and_approve_no_invalid_order(
        fuzz_book, gateway, channel, stub):
    seed = int(os.environ.get("PRETRADE_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    print(f"fuzz seed: {seed} (replay: PRETRADE_FUZZ_SEED={seed})")
    fuzz = Fuzzer(random.Random(seed), stub, channel)
    started = time.monotonic()

    # Volume: batches of orders, most of them nearly valid.
    for _ in range(BATCHES):
        fuzz.batch(BATCH_SIZE)
    # Single calls: a malformed order is INVALID_ARGUMENT, never a decision.
    for _ in range(SINGLE_ORDERS):
        fuzz.single(fuzz.order(longest=5_000))
    # Halts, each round followed by orders checked against the halts then in force.
    for _ in range(HALT_ROUNDS):
        for _ in range(HALTS_PER_ROUND):
            fuzz.halt(fuzz.halt_request())
        fuzz.batch(ORDERS_PER_HALT_ROUND)
    fuzz.lift_every_halt()
    # Bytes that are not (quite) a message, to the raw methods.
    valid_order = pb.Order(order_id="raw-1", account_id="ACC-1", symbol="AAPL",
                           side=pb.SIDE_BUY, quantity=10, price=683_378,
                           order_type=pb.ORDER_TYPE_LIMIT, venue="XNAS").SerializeToString()
    valid_halt = pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol="OTHER-9",
                                mode=pb.HALT_MODE_HALTED, reason="raw",
                                requested_by="fuzzer").SerializeToString()
    for n in range(RAW_CALLS):
        if n % 2:
            fuzz.raw("EvaluateOrder", valid_order)
        else:
            fuzz.raw("Halt", valid_halt)
    fuzz.lift_every_halt()
    # Sizes: just under gRPC's limit is our INVALID_ARGUMENT, over it is gRPC's refusal.
    under = GRPC_MAX_MESSAGE - 1_024
    fuzz.expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.EvaluateOrder,
                     pb.Order(order_id="x" * under, account_id="ACC-1", symbol="AAPL"))
    fuzz.expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Halt,
                     pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_HALTED,
                                    reason="r" * under))
    for over in (GRPC_MAX_MESSAGE + 1, 3 * GRPC_MAX_MESSAGE):
        fuzz.expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.EvaluateOrder,
                         pb.Order(order_id="x" * over))
        fuzz.expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Halt,
                         pb.HaltRequest(scope=pb.HALT_SCOPE_GLOBAL, mode=pb.HALT_MODE_HALTED,
                                        reason="\U0001f600" * (over // 4 + 1)))
    fuzz.expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.EvaluateOrders,
                     pb.OrderBatch(orders=[pb.Order(order_id="y" * 1_000)] * 5_000))
    fuzz.expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.EvaluateOrders,
                     pb.OrderBatch(orders=[pb.Order()] * 10_001))

    elapsed = time.monotonic() - started
    print(f"{fuzz.requests} requests in {elapsed:.1f} s, {fuzz.approved} approved; "
          f"outcomes: {sorted(fuzz.outcomes.items())}")
    assert fuzz.requests >= MINIMUM_REQUESTS
    # Every path was exercised, not only refusals.
    assert fuzz.approved > 10_000, fuzz.outcomes
    for outcome in ("order INVALID_ARGUMENT", "order decided", "halt applied",
                    "halt INVALID_ARGUMENT", "raw EvaluateOrder unparseable",
                    "raw Halt unparseable", "raw EvaluateOrder malformed", "raw Halt OK"):
        assert fuzz.outcomes.get(outcome), (outcome, fuzz.outcomes)

    # Still alive and well.
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert stub.GetStatus(pb.StatusRequest(), timeout=5).sync_live
    plain = pb.Order(order_id="after-fuzz", account_id="ACC-1", symbol="AAPL",
                     side=pb.SIDE_BUY, quantity=1, price=683_378,
                     order_type=pb.ORDER_TYPE_LIMIT)
    assert stub.EvaluateOrder(plain, timeout=5).approved


@pytest.mark.parametrize("method", [
    "/pretrade.v1.PreTradeRisk/EvaluateOrder", "/pretrade.v1.PreTradeRisk/EvaluateOrders",
    "/pretrade.v1.PreTradeRisk/Halt", "/pretrade.v1.PreTradeRisk/GetStatus",
    "/pretrade.v1.PreTradeRisk/StreamPortfolio", "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch"])
def test_bytes_that_do_not_parse_are_invalid_argument_on_every_method(gateway, channel,
                                                                       method):
    payload = b"\x0a\x05ab"  # field 1, length 5, and only 2 bytes follow
    if method.endswith(("StreamPortfolio", "Watch")):
        call = channel.unary_stream(method)(payload, timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.RpcError) as raised:
            next(call)
    else:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(method)(payload, timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in raised.value.details()
    assert "<class" not in raised.value.details()
