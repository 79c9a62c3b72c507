"""The durable record of a decided order: any value a client may send survives it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pretrade._core.constants import MAX_TAG_LENGTH, STORED_REJECTIONS
from pretrade.state.journal import FORMAT, DecidedOrder, decode
from pretrade.state.schema import StateError
from pretrade.v1 import risk_pb2 as pb

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
#: What the wire accepts for a venue or counterparty: printable ASCII, no spaces.
TAGS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
               max_size=MAX_TAG_LENGTH).map(str.encode)


@st.composite
def decided_orders(draw: st.DrawFn) -> DecidedOrder:
    approved = draw(st.booleans())
    rejections = () if approved else tuple(draw(st.lists(
        st.tuples(st.sampled_from(list(pb.RejectCode.values())), INT64, INT64),
        max_size=STORED_REJECTIONS)))
    quantity = draw(st.integers(min_value=1, max_value=2**63 - 1))
    replaces = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=63)))
    carried = draw(st.integers(0, quantity - 1 if approved else 2**63 - 1)) if replaces else 0
    return DecidedOrder(
        account=b"ACC-1", order_id=draw(st.binary(min_size=1, max_size=63)),
        symbol=draw(st.from_regex(rb"[A-Za-z0-9._/\-+=#@$&!~^]{1,39}", fullmatch=True)),
        side=draw(st.sampled_from([pb.SIDE_BUY, pb.SIDE_SELL, pb.SIDE_SELL_SHORT])),
        order_type=draw(st.sampled_from([pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_MARKET])),
        quantity=quantity, price=draw(INT64),
        valuation_price=draw(INT64), notional=draw(INT64), venue=draw(TAGS),
        counterparty=draw(TAGS), approved=approved, rejections=rejections,
        time_in_force=draw(st.sampled_from(list(pb.TimeInForce.values()))),
        expire_at_unix_ms=draw(st.integers(0, 2**63 - 1)),
        working_until_unix_ms=draw(st.integers(0, 2**63 - 1)),
        replaces=replaces, carried=carried)


@given(decided_orders())
def test_every_record_comes_back_exactly_as_it_was_written(order):
    assert decode(order.account, order.order_id, order.encode(1_700_000_000_000)) == order


def test_a_venue_with_the_old_separators_does_not_break_the_record():
    order = DecidedOrder(b"ACC-1", b"o1", b"AAPL", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 100,
                         683_378, 683_378, 68_337_800, b"X;N:A,S", b";;", True, ())
    assert decode(b"ACC-1", b"o1", order.encode()) == order


def test_a_record_of_the_first_version_is_still_read():
    raw = b"1;AAPL;1;1;100;683378;683378;68337800;XNAS;;R;9:100:50"
    order = decode(b"ACC-1", b"o1", raw)
    assert (order.symbol, order.quantity, order.venue, order.approved, order.rejections) == (
        b"AAPL", 100, b"XNAS", False, ((9, 100, 50),))


@pytest.mark.parametrize("raw", [
    b"", b"garbage", b"\xff\xfe", FORMAT + b"\xff\xff\xff", FORMAT,
    b"1;AAPL;1;1;100;1;1;1;X;N;;A;",  # the old encoding of venue "X;N": 13 parts
    b"1;AAPL;1;1;x;1;1;1;;;A;",        # not an integer
    b"1;AAPL;1;1;100;1;1;1;;;R;9:1",   # a rejection without its limit
])
def test_an_unreadable_record_is_a_state_error_never_a_crash(raw):
    with pytest.raises(StateError):
        decode(b"ACC-1", b"o1", raw)


@pytest.mark.parametrize("replaces, carried", [(b"", 1), (b"A", -1), (b"A", 100)])
def test_a_replacement_whose_carried_fills_do_not_fit_is_a_state_error(replaces, carried):
    order = DecidedOrder(b"ACC-1", b"o2", b"AAPL", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 100,
                         683_378, 683_378, 68_337_800, b"", b"", True, (), replaces=replaces,
                         carried=carried)
    with pytest.raises(StateError):
        decode(b"ACC-1", b"o2", order.encode())


# -- on a Redis Cluster: one lost primary holds back only its own accounts' records --

def _decided(account: bytes, order_id: bytes) -> DecidedOrder:
    return DecidedOrder(account, order_id, b"AAPL", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10,
                        10_000, 10_000, 100_000, b"", b"", True, ())


def _ports_of_accounts(probe) -> dict[bytes, int]:
    """``J-<n>`` account ids by the port of the primary holding their ``orders:{ACC}``."""
    from pretrade.state.schema import orders_key

    return {f"J-{n}".encode(): int(probe.get_node_from_key(orders_key(f"J-{n}".encode())).port)
            for n in range(200)}


@pytest.mark.timeout(60)
def test_a_lost_primary_holds_back_only_the_decisions_of_its_own_slots(tmp_path):
    import asyncio

    import redis

    from pretrade.app.devredis import RedisClusterServer
    from pretrade.engine.errors import Unavailable
    from pretrade.state.connection import connect
    from pretrade.state.journal import Journal
    from pretrade.state.schema import orders_key

    with RedisClusterServer(data_dir=tmp_path / "cluster", replicas=0) as cluster:
        probe = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        ports = _ports_of_accounts(probe)
        lost_account = next(account for account, port in ports.items()
                            if port == cluster.nodes[0].port)
        other_account = next(account for account, port in ports.items()
                             if port != cluster.nodes[0].port)

        async def drill() -> None:
            client = connect(cluster.url, socket_timeout=1.0)
            journal = Journal(client)
            await journal.commit([_decided(other_account, b"before")], timeout=5)
            cluster.kill(cluster.nodes[0])
            # The lost account's record cannot be written (it is retried)...
            with pytest.raises(Unavailable):
                await journal.commit([_decided(lost_account, b"stuck")], timeout=1.5)
            # ...and the other primary's accounts are made durable all the same, in a
            # batch of their own and in one with the stuck record.
            await journal.commit([_decided(other_account, b"alone")], timeout=3)
            both = [_decided(lost_account, b"stuck-2"), _decided(other_account, b"mixed")]
            with pytest.raises(Unavailable):
                await journal.commit(both, timeout=3)
            await client.aclose()

        asyncio.run(drill())
        written = probe.hgetall(orders_key(other_account))
        assert {b"before", b"alone", b"mixed"} <= set(written)
        probe.close()


@pytest.mark.timeout(60)
def test_a_lost_primary_does_not_slow_the_other_primaries_past_the_lag_bound(tmp_path):
    """Found by the failover drill: every failed write to the lost primary made the
    cluster client close all its connections and re-read the slot map, so writes to
    the healthy primaries failed or waited past the 500 ms an order may wait."""
    import asyncio

    import redis

    from pretrade.app.devredis import RedisClusterServer
    from pretrade.engine.errors import Unavailable
    from pretrade.state.connection import redis_client
    from pretrade.state.journal import Journal
    from pretrade.state.schema import orders_key

    with RedisClusterServer(data_dir=tmp_path / "cluster", replicas=0) as cluster:
        probe = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        ports = _ports_of_accounts(probe)
        lost_account = next(account for account, port in ports.items()
                            if port == cluster.nodes[0].port)
        others = [next(account for account, port in ports.items() if port == node.port)
                  for node in cluster.nodes[1:]]
        slow: list[tuple[bytes, str]] = []

        async def drill() -> int:
            client = redis_client(cluster.url)  # the gateway's client, as configured
            journal = Journal(client)
            await journal.commit([_decided(account, b"before") for account in others], 5)
            cluster.kill(cluster.nodes[0])

            async def lost_flow() -> None:
                for n in range(40):
                    with pytest.raises(Unavailable):
                        await journal.commit([_decided(lost_account, b"L%d" % n)], 0.5)

            async def other_flow(account: bytes) -> int:
                for n in range(120):
                    try:
                        await journal.commit([_decided(account, b"O%d" % n)], 0.5)
                    except Unavailable as error:
                        slow.append((account, str(error)))
                    await asyncio.sleep(0.01)
                return n + 1

            counts = await asyncio.gather(lost_flow(), *(other_flow(a) for a in others))
            await client.aclose()
            return sum(count for count in counts if count)

        sent = asyncio.run(drill())
        assert not slow, f"{len(slow)} of {sent} writes to healthy primaries failed: {slow[:3]}"
        for account in others:
            assert len(probe.hgetall(orders_key(account))) == 121
        probe.close()
