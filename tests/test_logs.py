"""The server's log as a log pipeline reads it: JSON lines, and a flood that is cut short.

A real ``pretrade serve --log-format json`` subprocess, with a low
``log_rate_limit``; malformed orders over a real gRPC channel are the
per-request lines a client could send at full speed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from book import seed_account
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve

RATE = 5
SUPPRESSED = re.compile(r"suppressed (\d+) similar lines")


def malformed(number: int) -> pb.Order:
    """Side unspecified: INVALID_ARGUMENT, logged by the servicer with the ids."""
    return pb.Order(order_id=f"bad-{number}", account_id="ACC-1", symbol="AAPL", quantity=1,
                    price=1, order_type=pb.ORDER_TYPE_LIMIT)


def json_lines(server: Serve) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


@pytest.fixture
def json_server(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Serve]:
    seed_account(redis_client)
    server = Serve(tmp_path, "json-log", "--redis-url", redis_url, "--listen", "127.0.0.1:0",
                   "--log-format", "json", env={"PRETRADE_LOG_RATE_LIMIT": str(RATE)})
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        yield server
    finally:
        server.kill()


def test_json_log_lines_carry_utc_time_level_logger_message_and_the_order_ids(json_server):
    with grpc.insecure_channel(json_server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.EvaluateOrder(malformed(1), timeout=5)
    json_server.terminate()
    lines = json_lines(json_server)  # every line is one JSON object, or this fails
    assert len(lines) > 3
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert line["time"].endswith("Z")
        parsed = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
        assert abs(time.time() - parsed.timestamp()) < 300
    denied = [line for line in lines if line.get("order_id") == "bad-1"]
    assert len(denied) == 1
    assert denied[0]["account"] == "ACC-1"
    assert denied[0]["logger"] == "pretrade.servicer"
    assert denied[0]["level"] == "INFO"
    assert "INVALID_ARGUMENT" in denied[0]["message"]
    assert any(line["message"].startswith("serving pretrade.v1.PreTradeRisk")
               for line in lines)


def test_a_flood_of_bad_requests_is_rate_limited_and_summarised(json_server):
    sent = 200
    with grpc.insecure_channel(json_server.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        started = time.monotonic()
        for number in range(sent):
            with pytest.raises(grpc.RpcError):
                stub.EvaluateOrder(malformed(number), timeout=5)
        flood_seconds = time.monotonic() - started
        time.sleep(1.5)  # the bucket refills; the next line brings the summary with it
        with pytest.raises(grpc.RpcError):
            stub.EvaluateOrder(malformed(sent), timeout=5)
    lines = json_lines(json_server)
    written = [line for line in lines if str(line.get("order_id", "")).startswith("bad-")]
    summaries = [int(SUPPRESSED.search(line["message"])[1]) for line in lines
                 if SUPPRESSED.search(line["message"])]
    # At most a burst plus the refill during the flood, and the one after the pause.
    assert len(written) <= RATE + RATE * flood_seconds + 2
    assert summaries, "no summary of the suppressed lines"
    # Nothing vanished: every request is a line or counted in a summary.
    assert len(written) + sum(summaries) == sent + 1
    assert written[-1]["order_id"] == f"bad-{sent}"
