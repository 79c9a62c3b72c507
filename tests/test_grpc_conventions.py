"""gRPC conventions clients expect: reflection under its v1 name, and keepalive both ways."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
import redis
from grpc_reflection.v1alpha import reflection_pb2
from tests.book import seed_account, seed_lots, wait_until
from tests.test_portfolio import tick

from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", [("L1", "AAPL", 10, 683_378)])
    return redis_client


def reflect(channel: grpc.Channel, method: str,
            request: reflection_pb2.ServerReflectionRequest
            ) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (reply,) = list(call(iter([request]), timeout=5))
    return reply


def test_reflection_answers_under_its_v1_name_as_under_v1alpha(gateway, channel):
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    for method in (REFLECTION_V1,
                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        reply = reflect(channel, method, listing)
        names = {service.name for service in reply.list_services_response.service}
        assert {"pretrade.v1.PreTradeRisk", "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names, method
    symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="pretrade.v1.PreTradeRisk")
    files = reflect(channel, REFLECTION_V1, symbol).file_descriptor_response.file_descriptor_proto
    assert files and any(b"pretrade/v1/risk.proto" in raw for raw in files)


def open_stream(target: str, options: list[tuple[str, int]]) -> tuple[grpc.Channel, object]:
    channel = grpc.insecure_channel(target, options=options)
    stub = risk_pb2_grpc.PreTradeRiskStub(channel)
    # A long heartbeat: no data flows after the snapshot, only pings.
    stream = stub.StreamPortfolio(
        pb.PortfolioRequest(account_id="ACC-1", heartbeat_interval_ms=300_000), timeout=30)
    first = next(stream)
    assert first.kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
    return channel, stream


def client_pinging_every(ms: int) -> list[tuple[str, int]]:
    return [("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", ms)]


def test_a_client_pinging_more_often_than_allowed_is_sent_away_and_a_polite_one_is_not(
        seeded, start_gateway):
    # gRPC's client pings at most once a second, whatever it is asked.
    gateway = start_gateway(keepalive_min_ping_interval_ms=3_000)
    greedy_channel, greedy = open_stream(gateway.target, client_pinging_every(1_000))
    polite_channel, polite = open_stream(gateway.target, client_pinging_every(3_500))
    states: dict[str, list[grpc.ChannelConnectivity]] = {"greedy": [], "polite": []}
    greedy_channel.subscribe(states["greedy"].append)
    polite_channel.subscribe(states["polite"].append)
    try:
        # GOAWAY too_many_pings: the greedy connection takes no new call (its
        # channel leaves READY), while the polite one, pinging twice meanwhile,
        # stays READY.
        wait_until(lambda: list(states["greedy"]),
                   lambda seen: seen and seen[-1] != grpc.ChannelConnectivity.READY, timeout=15)
        time.sleep(8)
        assert states["polite"] == [grpc.ChannelConnectivity.READY], states
        tick(seeded, "AAPL", 700_000)
        update = next(polite)
        assert update.kind == pb.PORTFOLIO_UPDATE_KIND_UPDATE
        assert update.holdings[0].last_price == 700_000
    finally:
        greedy_channel.close()
        polite_channel.close()


CLIENT = textwrap.dedent("""
    import sys, grpc
    from pretrade.v1 import risk_pb2 as pb, risk_pb2_grpc
    channel = grpc.insecure_channel(sys.argv[1])
    stream = risk_pb2_grpc.PreTradeRiskStub(channel).StreamPortfolio(
        pb.PortfolioRequest(account_id="ACC-1", heartbeat_interval_ms=300000))
    next(stream)
    print("snapshot", flush=True)
    for _ in stream:
        pass
""")


def test_the_server_ends_the_stream_of_a_client_that_stopped_answering(seeded, start_gateway):
    # A frozen client (or one behind a dead link) still has a TCP connection
    # its kernel keeps acknowledging: only the server's HTTP/2 ping finds out.
    gateway = start_gateway(keepalive_time_ms=500, keepalive_timeout_ms=500)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, gateway.target],
                              stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "snapshot"
        portfolio = gateway.gateway.portfolio
        assert portfolio.subscriber_count == 1
        os.kill(client.pid, signal.SIGSTOP)
        wait_until(lambda: portfolio.subscriber_count, lambda n: n == 0, timeout=10)
    finally:
        client.kill()
        client.wait(timeout=10)
