"""OrderSession end to end: a real gRPC stream, state in a real redis-server.

One stream of orders, one decision per order, in order; each decided exactly
as EvaluateOrder decides it; malformed messages answered, not fatal; the
decisions durable before they are answered; a bounded number of orders
decided ahead of a client that does not read; at shutdown (a real SIGTERM
to a real ``pretrade serve``) every decided order answered before the stream
ends UNAVAILABLE.
"""

from __future__ import annotations

import queue
import signal
import time

import grpc
import pytest
import redis

from book import codes, order, seed_account, wait_until
from pretrade.api.session import SESSION_CLOSED
from pretrade.state.journal import decode
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

TIMEOUT = 30


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 and ACC-2 alike: AAPL, max long position 100, max order quantity 50."""
    for account in ("ACC-1", "ACC-2"):
        seed_account(redis_client, account)
        redis_client.hset(f"limits:{{{account}}}", mapping={"max_long_position": 100,
                                                            "max_order_quantity": 50})
    return redis_client


def walk(account: str, tag: str) -> list[pb.Order]:
    """Approvals, limit rejections, a malformed order and a re-sent id, in one sequence."""
    orders = [order(account, quantity=40, order_id=f"{tag}-1"),
              order(account, quantity=60, order_id=f"{tag}-2"),   # over max_order_quantity
              order(account, quantity=50, order_id=f"{tag}-3"),
              order(account, quantity=20, order_id=f"{tag}-4"),   # 110 > max long 100
              order(account, quantity=10, order_id=f"{tag}-5"),   # exactly 100
              order(account, quantity=1, order_id=f"{tag}-6"),    # over again
              pb.Order(order_id=f"{tag}-7", account_id=account, symbol="AAPL",
                       quantity=1, price=683_378, order_type=pb.ORDER_TYPE_LIMIT),  # no side
              order(account, side=pb.SIDE_SELL, quantity=30, order_id=f"{tag}-8"),
              order(account, quantity=40, order_id=f"{tag}-1")]  # re-sent: a replay
    return orders


def comparable(decision: pb.Decision) -> tuple:
    return (decision.approved, decision.replayed, decision.notional, decision.currency,
            [(r.code, r.observed, r.limit) for r in decision.rejections],
            decision.order_id.split("-", 1)[1])


def unary(stub: risk_pb2_grpc.PreTradeRiskStub, sent: pb.Order) -> pb.Decision:
    """EvaluateOrder's answer; its INVALID_ARGUMENT as the decision a batch gives instead."""
    try:
        return stub.EvaluateOrder(sent, timeout=TIMEOUT)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return pb.Decision(order_id=sent.order_id, rejections=[pb.Rejection(
            code=pb.REJECT_CODE_INVALID_REQUEST, message=error.details())])


def test_a_session_decides_each_order_in_order_exactly_as_evaluate_order(book, stub):
    by_session = list(stub.OrderSession(iter(walk("ACC-1", "S")), timeout=TIMEOUT))
    by_unary = [unary(stub, o) for o in walk("ACC-2", "U")]
    assert [d.order_id for d in by_session] == [f"S-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 1)]
    assert [comparable(d) for d in by_session] == [comparable(d) for d in by_unary]
    # and the walk does what it says: a replay, limit rejections, a malformed order
    assert by_session[-1].replayed and by_session[-1].approved
    assert codes(by_session[1]) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY]
    assert codes(by_session[3]) == [pb.REJECT_CODE_MAX_LONG_POSITION]
    assert by_session[4].approved
    assert codes(by_session[6]) == [pb.REJECT_CODE_INVALID_REQUEST]
    assert by_session[6].rejections[0].message == by_unary[6].rejections[0].message


def test_a_message_that_is_not_an_order_is_answered_invalid_request_and_the_session_goes_on(
        book, gateway):
    with grpc.insecure_channel(gateway.target) as channel:
        raw = channel.stream_stream("/pretrade.v1.PreTradeRisk/OrderSession",
                                    request_serializer=None,
                                    response_deserializer=pb.Decision.FromString)
        good = order(quantity=5)
        answers = list(raw(iter([b"\x0a\xff", b"\x0a\x02\xc3\x28",  # truncated; not UTF-8
                                 good.SerializeToString()]), timeout=TIMEOUT))
    assert [codes(d) for d in answers[:2]] == [[pb.REJECT_CODE_INVALID_REQUEST]] * 2
    assert all("not a valid message for /pretrade.v1.PreTradeRisk/OrderSession"
               in d.rejections[0].message for d in answers[:2])
    assert answers[2].order_id == good.order_id and answers[2].approved


def test_each_decision_is_durable_in_redis_before_the_session_answers_it(book, stub):
    sent = [order(quantity=1) for _ in range(200)]
    for decision in stub.OrderSession(iter(sent), timeout=TIMEOUT):
        # read the moment it arrives: already in orders:{ACC}
        raw = book.hget("orders:{ACC-1}", decision.order_id)
        assert raw is not None, decision.order_id
        assert decode(b"ACC-1", decision.order_id.encode(), raw).approved == decision.approved


def test_sessions_past_their_budget_are_refused_and_unary_orders_still_go(
        book, start_gateway):
    gateway = start_gateway(max_order_sessions=1)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        feed: queue.Queue[pb.Order | None] = queue.Queue()
        first = stub.OrderSession(iter(feed.get, None), timeout=TIMEOUT)
        feed.put(order(quantity=1))
        assert next(first).approved  # the first session is open and holds the one slot
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.OrderSession(iter([order(quantity=1)]), timeout=TIMEOUT))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_order_sessions" in raised.value.details()
        assert stub.EvaluateOrder(order(quantity=1), timeout=TIMEOUT).approved
        feed.put(None)
        assert list(first) == []


def test_a_client_that_does_not_read_is_held_to_a_bounded_number_of_decided_orders(
        book, start_gateway):
    window, sent = 8, 10_000
    gateway = start_gateway(order_session_window=window, max_orders=16_384)
    book.hset("limits:{ACC-1}", "max_long_position", 10**9)
    servicer = gateway.gateway.servicer
    # The client's receive window stays at HTTP/2's 64 KiB (no BDP probing to
    # grow it), so the decisions it does not read soon fill what the transport holds.
    with grpc.insecure_channel(gateway.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        orders = [order(quantity=1, order_id=f"w-{n}") for n in range(sent)]
        answers = stub.OrderSession(iter(orders), timeout=120)
        session = wait_until(lambda: next(iter(servicer.sessions), None), bool)

        def decided_settles() -> int:
            before = session.decided
            time.sleep(0.5)
            return before if session.decided == before else -1

        # Nothing read: the session stops deciding once the decisions written
        # fill the transport's buffers and its window, far short of all orders.
        held = wait_until(decided_settles, lambda n: n >= 0, timeout=30)
        assert window <= held < sent // 2
        assert session.unanswered <= window
        # Reading, every order is answered, in order.
        assert [d.order_id for d in answers] == [o.order_id for o in orders]


def test_shutdown_ends_a_session_unavailable_after_answering_every_order_it_decided(
        redis_url, book, tmp_path):
    server = Serve(tmp_path, "session", "--redis-url", redis_url)
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        feed: queue.Queue[pb.Order | None] = queue.Queue()
        sent: list[pb.Order] = []
        with grpc.insecure_channel(server.target) as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            answers = stub.OrderSession(iter(feed.get, None), timeout=TIMEOUT)
            received = []
            for _ in range(5):
                sent.append(order(quantity=1))
                feed.put(sent[-1])
                received.append(next(answers))
            server.process.send_signal(signal.SIGTERM)
            # orders keep coming, one at a time, until the session ends
            with pytest.raises(grpc.RpcError) as raised:
                for _ in range(100_000):
                    sent.append(order(quantity=1))
                    feed.put(sent[-1])
                    received.append(next(answers))
            feed.put(None)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == SESSION_CLOSED
        # what was answered is what was sent, in order, up to where the session ended
        assert [d.order_id for d in received] == [o.order_id for o in sent[:len(received)]]
        assert all(d.approved for d in received)
        for decision in received:  # each one durable
            assert book.hget("orders:{ACC-1}", decision.order_id) is not None
        assert server.wait() == 0
    finally:
        server.kill()
