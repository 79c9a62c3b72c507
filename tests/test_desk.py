"""The risk desk over HTTP, and the gateway reads it stands on, against real parts.

A real redis-server, a real gateway with bearer tokens (plaintext on the
loopback address), the desk's real web server on a free port; the reads
over a real gRPC channel. Prices and halts are written the way an operator
or a feed writes them, straight into Redis.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis

from book import order, seed_account, seed_lots, wait_until
from conftest import GatewayThread
from desk_parts import DeskThread, DeskTokens, WebClient, write_tokens
from pretrade.app.config import ConfigError, Settings
from pretrade.audit.entries import AUDIT_STREAM
from pretrade.audit.query import AuditQuery, read_audit
from pretrade.desk.process import check_desk_settings, gateway_target, stream_gateway_target
from pretrade.desk.web import stats_sample
from pretrade.state.schema import halt_key, price_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc
from serving import Serve, free_port

RPC_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> DeskTokens:
    return write_tokens(tmp_path_factory.mktemp("desk-tokens"))


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 holds 100 AAPL bought at $68.3378 (last price the same); ACC-2 holds nothing."""
    seed_account(redis_client, "ACC-1")
    seed_account(redis_client, "ACC-2")
    seed_lots(redis_client, "ACC-1", [("lot-1", "AAPL", 100, 683_378)])
    return redis_client


@pytest.fixture
def gateway(book: redis.Redis, start_gateway: Callable[..., GatewayThread],
            tokens: DeskTokens) -> GatewayThread:
    return start_gateway("desk", auth="tokens", tokens_file=str(tokens.path))


@pytest.fixture
def desk(gateway: GatewayThread) -> Iterator[DeskThread]:
    desk = DeskThread(gateway.target)
    yield desk
    desk.stop()


def call(stub: risk_pb2_grpc.PreTradeRiskStub, method: str, request: Any, token: str) -> Any:
    return getattr(stub, method)(request, timeout=RPC_TIMEOUT,
                                 metadata=[("authorization", f"Bearer {token}")])


def rejected_order(stub: risk_pb2_grpc.PreTradeRiskStub, tokens: DeskTokens,
                   account: str) -> pb.Decision:
    """An order over max_order_quantity (1,000): rejected MAX_ORDER_QUANTITY."""
    decision = call(stub, "EvaluateOrder", order(account=account, quantity=1_001), tokens["root"])
    assert not decision.approved
    return decision


# -- the reads on the gateway ---------------------------------------------------


def test_list_accounts_gives_a_trader_only_its_own_accounts_and_says_who_asks(stub, tokens):
    mine = call(stub, "ListAccounts", pb.AccountsRequest(), tokens["trader-1"])
    assert (list(mine.account_ids), mine.principal, mine.role) == (["ACC-1"], "trader-1",
                                                                   "trader")
    every = call(stub, "ListAccounts", pb.AccountsRequest(), tokens["operator"])
    assert list(every.account_ids) == ["ACC-1", "ACC-2"] and not every.truncated
    one = call(stub, "ListAccounts", pb.AccountsRequest(limit=1), tokens["root"])
    assert list(one.account_ids) == ["ACC-1"] and one.truncated


def test_list_accounts_refuses_a_negative_limit(stub, tokens):
    with pytest.raises(grpc.RpcError) as refused:
        call(stub, "ListAccounts", pb.AccountsRequest(limit=-1), tokens["root"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_halts_shows_a_trader_no_halt_of_another_account(stub, tokens):
    for scope, account, symbol in ((pb.HALT_SCOPE_ACCOUNT, "ACC-1", ""),
                                   (pb.HALT_SCOPE_ACCOUNT, "ACC-2", ""),
                                   (pb.HALT_SCOPE_SYMBOL, "", "AAPL")):
        call(stub, "Halt", pb.HaltRequest(scope=scope, account_id=account, symbol=symbol,
                                          mode=pb.HALT_MODE_HALTED, reason="test"),
             tokens["operator"])
    every = call(stub, "ListHalts", pb.HaltsRequest(), tokens["operator"])
    assert [h.target for h in every.halts] == ["ACC-1", "ACC-2", "AAPL"]
    mine = call(stub, "ListHalts", pb.HaltsRequest(), tokens["trader-1"])
    assert [h.target for h in mine.halts] == ["ACC-1", "AAPL"]


def test_list_rejections_reads_the_audit_trail_newest_first_filtered_by_account_and_code(
        stub, tokens):
    first = rejected_order(stub, tokens, "ACC-1")
    second = rejected_order(stub, tokens, "ACC-2")
    approved = call(stub, "EvaluateOrder", order(account="ACC-1"), tokens["root"])
    assert approved.approved
    every = call(stub, "ListRejections", pb.RejectionsRequest(), tokens["operator"])
    assert [r.order_id for r in every.rejections] == [second.order_id, first.order_id]
    row = every.rejections[1]
    assert (row.account_id, row.symbol, row.side, row.quantity, row.price) == (
        "ACC-1", "AAPL", pb.SIDE_BUY, 1_001, 683_378)
    assert list(row.codes) == [pb.REJECT_CODE_MAX_ORDER_QUANTITY] and row.principal == "root"
    assert row.decided_at_unix_ms > 0
    one = call(stub, "ListRejections", pb.RejectionsRequest(account_id="ACC-1"),
               tokens["operator"])
    assert [r.order_id for r in one.rejections] == [first.order_id]
    other_code = call(stub, "ListRejections",
                      pb.RejectionsRequest(code=pb.REJECT_CODE_BUYING_POWER), tokens["operator"])
    assert list(other_code.rejections) == []
    limited = call(stub, "ListRejections", pb.RejectionsRequest(limit=1), tokens["operator"])
    assert [r.order_id for r in limited.rejections] == [second.order_id]


def test_list_rejections_keeps_a_trader_to_its_own_accounts(stub, tokens):
    mine = rejected_order(stub, tokens, "ACC-1")
    rejected_order(stub, tokens, "ACC-2")
    seen = call(stub, "ListRejections", pb.RejectionsRequest(), tokens["trader-1"])
    assert [r.order_id for r in seen.rejections] == [mine.order_id]
    with pytest.raises(grpc.RpcError) as refused:
        call(stub, "ListRejections", pb.RejectionsRequest(account_id="ACC-2"),
             tokens["trader-1"])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_get_status_counts_decisions_and_engine_time_in_buckets(stub, tokens):
    before = call(stub, "GetStatus", pb.StatusRequest(), tokens["operator"])
    rejected_order(stub, tokens, "ACC-1")
    call(stub, "EvaluateOrder", order(account="ACC-1"), tokens["root"])
    after = call(stub, "GetStatus", pb.StatusRequest(), tokens["operator"])
    assert after.decisions_approved - before.decisions_approved == 1
    assert after.decisions_rejected - before.decisions_rejected == 1
    assert len(after.engine_latency_counts) == len(after.engine_latency_bounds_ns) + 1
    assert sum(after.engine_latency_counts) - sum(before.engine_latency_counts) == 2
    sample = stats_sample(before, after, 2.0)
    assert sample["rate"] == 1.0
    assert sample["p50_us"] is not None and 0 < sample["p50_us"] <= sample["p99_us"]


def test_a_chart_sample_across_two_server_processes_is_left_blank():
    one = pb.ServerStatus(pid=1, decisions_approved=10)
    other = pb.ServerStatus(pid=2, decisions_approved=3)
    assert stats_sample(one, other, 1.0)["rate"] is None


# -- the desk over HTTP ---------------------------------------------------------


def test_the_page_and_its_assets_ship_in_the_package():
    static = importlib.resources.files("pretrade.desk") / "static"
    for name in ("index.html", "desk.js", "desk.css"):
        assert (static / name).is_file(), name
    assert "/static/desk.js" in (static / "index.html").read_text()


def test_the_page_is_served_with_headers_that_keep_it_out_of_frames(desk):
    client = WebClient(desk.port)
    status, body = client.request("GET", "/")
    assert status == 200 and "pretrade risk desk" in body
    assert client.last_headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in client.last_headers["content-security-policy"]
    status, script = client.request("GET", "/static/desk.js")
    assert status == 200 and "EventSource" in script


def test_without_a_session_the_api_answers_401(desk):
    client = WebClient(desk.port)
    for method, path in (("GET", "/api/me"), ("GET", "/api/events"),
                         ("GET", "/api/rejections"), ("POST", "/api/halt")):
        status, body = client.request(method, path, {})
        assert status == 401 and "sign in" in body["error"], (method, path, body)


def test_an_unknown_token_is_refused_and_a_known_one_gets_an_httponly_session(desk, tokens):
    client = WebClient(desk.port)
    status, body = client.request("POST", "/api/session", {"token": "not-a-token"})
    assert status == 401 and "UNAUTHENTICATED" in body["error"]
    me = client.sign_in(tokens["operator"])
    assert (me["principal"], me["role"], me["halts_allowed"]) == ("operator", "risk_operator",
                                                                   True)
    cookie = client.last_headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert tokens["operator"] not in cookie
    assert client.request("GET", "/api/me")[1]["principal"] == "operator"
    assert client.request("DELETE", "/api/session")[0] == 200
    assert client.request("GET", "/api/me")[0] == 401


def test_malformed_sign_in_and_halt_bodies_get_a_clear_4xx(desk, tokens):
    client = WebClient(desk.port)
    assert client.request("POST", "/api/session", {"token": 7})[0] == 400
    client.sign_in(tokens["operator"])
    cases = [
        ({"raw": b"{not json"}, 400, "not valid JSON"),
        ({"body": ["GLOBAL"]}, 400, "JSON object"),
        ({"body": {"scope": "GLOBAL"}, "content_type": "text/plain"}, 415, "application/json"),
        ({"body": {"scope": "ALL", "mode": "HALTED"}}, 400, "scope"),
        ({"body": {"scope": "GLOBAL", "mode": "STOP"}}, 400, "mode"),
        ({"body": {"scope": "ACCOUNT", "mode": "HALTED", "reason": "x"}}, 400, "target"),
        ({"body": {"scope": "GLOBAL", "mode": "HALTED", "reason": "x", "ttl_seconds": -5}}, 400,
         "ttl_seconds"),
        # The gateway's own check, passed on: a halt needs a reason.
        ({"body": {"scope": "GLOBAL", "mode": "HALTED", "reason": " "}}, 400, "needs a reason"),
    ]
    for arguments, status, words in cases:
        got, body = client.request("POST", "/api/halt", **arguments)
        assert (got, words in body["error"]) == (status, True), (arguments, body)


def test_the_event_stream_pushes_a_price_change_as_a_new_market_value(desk, tokens, book):
    client = WebClient(desk.port)
    client.sign_in(tokens["operator"])
    events = client.events("/api/events")
    try:
        assert events.status == 200
        listed = events.wait_for("accounts", lambda data: True)
        assert listed["account_ids"] == ["ACC-1", "ACC-2"]
        snapshot = events.wait_for("portfolio", lambda u: u["account_id"] == "ACC-1")
        assert snapshot["kind"] == "PORTFOLIO_UPDATE_KIND_SNAPSHOT"
        assert snapshot["totals"]["market_value"] == str(100 * 683_378)  # exact, as text
        book.set(price_key(b"AAPL"), 700_000)
        update = events.wait_for("portfolio", lambda u: u["account_id"] == "ACC-1"
                                 and u["kind"] == "PORTFOLIO_UPDATE_KIND_UPDATE")
        assert update["totals"]["market_value"] == str(100 * 700_000)
        assert update["holdings"][0]["last_price"] == "700000"
    finally:
        events.close()


def test_the_event_stream_pushes_halts_and_chart_samples_to_an_operator(desk, tokens, book,
                                                                        stub):
    client = WebClient(desk.port)
    client.sign_in(tokens["operator"])
    events = client.events("/api/events")
    try:
        call(stub, "Halt", pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol="AAPL",
                                          mode=pb.HALT_MODE_REDUCE_ONLY, reason="news"),
             tokens["operator"])
        halts = events.wait_for("halts", lambda halts: len(halts) == 1)
        assert (halts[0]["target"], halts[0]["mode"], halts[0]["reason"]) == (
            "AAPL", "HALT_MODE_REDUCE_ONLY", "news")
        sample = events.wait_for("stats", lambda s: s["rate"] is not None)
        assert set(sample) == {"t", "rate", "p50_us", "p99_us"}
    finally:
        events.close()


def test_an_operators_halt_from_the_desk_reaches_redis_and_rejects_the_next_order(
        desk, tokens, book, stub):
    client = WebClient(desk.port)
    client.sign_in(tokens["operator"])
    status, body = client.request("POST", "/api/halt", {
        "scope": "ACCOUNT", "target": "ACC-1", "mode": "HALTED", "reason": "desk test",
        "ttl_seconds": 600})
    assert status == 200, body
    assert [(h["scope"], h["target"]) for h in body["halts"]] == [("HALT_SCOPE_ACCOUNT",
                                                                    "ACC-1")]
    stored = book.hgetall(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"))
    assert stored[b"reason"] == b"desk test" and stored[b"by"] == b"operator"
    assert 0 < book.ttl(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1")) <= 600
    decision = call(stub, "EvaluateOrder", order(account="ACC-1"), tokens["root"])
    assert [r.code for r in decision.rejections] == [pb.REJECT_CODE_ACCOUNT_HALT]
    status, body = client.request("POST", "/api/halt", {
        "scope": "ACCOUNT", "target": "ACC-1", "mode": "ACTIVE"})
    assert status == 200 and body["halts"] == []
    assert not book.exists(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"))


def test_a_traders_halt_is_refused_by_the_gateway_and_nothing_is_halted(desk, tokens, book):
    client = WebClient(desk.port)
    me = client.sign_in(tokens["trader-1"])
    assert me["halts_allowed"] is False
    status, body = client.request("POST", "/api/halt", {
        "scope": "GLOBAL", "mode": "HALTED", "reason": "a trader tries"})
    assert status == 403 and "PERMISSION_DENIED" in body["error"]
    assert book.keys("halt:*") == []


def test_a_trader_sees_only_its_own_accounts_and_no_chart(desk, tokens):
    client = WebClient(desk.port)
    client.sign_in(tokens["trader-1"])
    events = client.events("/api/events")
    try:
        assert events.wait_for("accounts", lambda data: True)["account_ids"] == ["ACC-1"]
        events.wait_for("halts", lambda halts: True)
        events.wait_for("portfolio", lambda u: u["account_id"] == "ACC-1")
        assert not any(name in ("stats", "history") for name, _ in events.seen)
        assert not any(name == "portfolio" and data["account_id"] != "ACC-1"
                       for name, data in events.seen)
    finally:
        events.close()


def test_the_rejections_stream_follows_the_audit_trail_with_its_filter(desk, tokens, stub):
    client = WebClient(desk.port)
    client.sign_in(tokens["operator"])
    events = client.events("/api/rejections?account=ACC-2&code=MAX_ORDER_QUANTITY")
    try:
        assert events.wait_for("rejections", lambda rows: True) == []
        rejected_order(stub, tokens, "ACC-1")
        wanted = rejected_order(stub, tokens, "ACC-2")
        rows = events.wait_for("rejections", lambda rows: len(rows) > 0)
        assert [row["order_id"] for row in rows] == [wanted.order_id]
        assert rows[0]["codes"] == ["REJECT_CODE_MAX_ORDER_QUANTITY"]
    finally:
        events.close()


def test_a_rejections_filter_that_names_no_reject_code_or_a_foreign_account_is_refused(
        desk, tokens):
    client = WebClient(desk.port)
    client.sign_in(tokens["trader-1"])
    status, body = client.request("GET", "/api/rejections?code=TOO_BIG")
    assert status == 400 and "not a reject code" in body["error"]
    status, body = client.request("GET", "/api/rejections?account=ACC-2")
    assert status == 403 and "PERMISSION_DENIED" in body["error"]


def test_without_auth_everybody_is_admin_with_no_sign_in(book, start_gateway):
    gateway = start_gateway("open")
    desk = DeskThread(gateway.target, auth="none")
    try:
        client = WebClient(desk.port)
        status, me = client.request("GET", "/api/me")
        assert status == 200 and (me["role"], me["auth"]) == ("admin", "none")
        status, body = client.request("POST", "/api/halt", {
            "scope": "SYMBOL", "target": "AAPL", "mode": "HALTED", "reason": "demo"})
        assert status == 200 and body["halts"][0]["target"] == "AAPL"
        wait_until(lambda: book.exists(halt_key(pb.HALT_SCOPE_SYMBOL, b"AAPL")), bool)
    finally:
        desk.stop()


def test_a_desk_without_sign_in_is_refused_off_the_loopback_address():
    with pytest.raises(ConfigError, match="loopback"):
        check_desk_settings(Settings(desk_listen="0.0.0.0:8080", auth="none"))
    assert check_desk_settings(Settings(desk_listen="0.0.0.0:8080")) == "0.0.0.0:8080"
    with pytest.raises(ConfigError, match="go together"):
        check_desk_settings(Settings(desk_client_cert="/x.pem"))


def test_the_desk_calls_the_servers_own_address_unless_told_otherwise():
    assert gateway_target(Settings(listen="0.0.0.0:50051")) == "127.0.0.1:50051"
    assert gateway_target(Settings(listen="[::]:7000")) == "[::1]:7000"
    assert gateway_target(Settings(desk_gateway="gw.example:443")) == "gw.example:443"
    # With streams on an address of their own, the desk streams from that one and
    # calls the order address for the rest (its chart's figures are the deciders').
    apart = Settings(listen="127.0.0.1:50051", stream_listen="0.0.0.0:50052")
    assert (gateway_target(apart), stream_gateway_target(apart)) == (
        "127.0.0.1:50051", "127.0.0.1:50052")
    assert stream_gateway_target(Settings(listen="0.0.0.0:50051")) == "127.0.0.1:50051"
    told = Settings(desk_gateway="gw.example:443", stream_listen="0.0.0.0:50052")
    assert stream_gateway_target(told) == "gw.example:443"
    assert stream_gateway_target(Settings(desk_gateway="gw.example:443",
                                          desk_stream_gateway="gw.example:444")) == \
        "gw.example:444"


def test_a_bounded_audit_read_stops_after_its_rows_and_keeps_to_the_accounts_given(
        redis_client):
    for number, account in enumerate(("A", "B", "A", "C"), 1):
        redis_client.xadd(AUDIT_STREAM, {"event": "decision", "verdict": "REJECTED",
                                         "account": account, "order_id": f"o{number}",
                                         "codes": "MAX_ORDER_QUANTITY"})
    redis_client.xadd(AUDIT_STREAM, {"event": "decision", "verdict": "APPROVED",
                                     "account": "A", "order_id": "o5", "codes": ""})

    def read(**conditions: Any) -> list[str]:
        query = AuditQuery(event="decision", rejected_only=True, **conditions)
        return [fields["order_id"] for _, fields in read_audit(redis_client, query)]

    assert read() == ["o1", "o2", "o3", "o4"]
    assert read(max_rows=3) == ["o3", "o4"]  # o5, o4, o3 read; o5 approved
    assert read(accounts=frozenset({"A", "C"})) == ["o1", "o3", "o4"]


def test_pretrade_serve_with_desk_runs_it_beside_the_gateway_and_prints_its_url(
        redis_url, redis_client, tmp_path):
    listen, desk_port = f"127.0.0.1:{free_port()}", free_port()
    server = Serve(tmp_path, "with-desk", "--redis-url", redis_url, "--listen", listen,
                   "--desk", f"127.0.0.1:{desk_port}")
    try:
        server.wait_for_banner()
        assert f"Risk desk: http://127.0.0.1:{desk_port}/" in "".join(server.stdout)
        client = WebClient(desk_port)
        me = wait_until(lambda: _answer_or_none(client), lambda answer: answer is not None,
                        timeout=20)
        assert me == (200, "admin")  # serve's --auth none: no sign-in
        assert any(f"pretrade risk desk on http://127.0.0.1:{desk_port}/" in line
                   for line in server.stdout)
        assert server.terminate() == 0
        assert _answer_or_none(client) is None  # the desk stopped with the gateway
    finally:
        server.kill()


def test_with_streams_apart_the_desk_streams_from_the_stream_address_and_charts_the_orders(
        redis_url, redis_client, tmp_path):
    seed_account(redis_client)
    seed_lots(redis_client, "ACC-1", [("lot-1", "AAPL", 100, 650_000)])
    listen, streams, desk_port = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                                  free_port())
    server = Serve(tmp_path, "desk-apart", "--redis-url", redis_url, "--listen", listen,
                   "--stream-listen", streams, "--desk", f"127.0.0.1:{desk_port}")
    try:
        server.wait_for_banner()
        server.wait_until_serving()
        client = WebClient(desk_port)
        wait_until(lambda: _answer_or_none(client), lambda answer: answer is not None,
                   timeout=20)
        events = client.events("/api/events")
        try:
            snapshot = events.wait_for("portfolio", lambda u: u["account_id"] == "ACC-1")
            assert snapshot["totals"]["market_value"] == str(100 * 683_378)
            events.wait_for("stats", lambda sample: True)
            with grpc.insecure_channel(listen) as channel:
                stub = risk_pb2_grpc.PreTradeRiskStub(channel)
                for n in range(20):
                    assert stub.EvaluateOrder(order(order_id=f"apart-{n}"), timeout=10).approved
            # The chart's figures are the deciding process's: the orders above count.
            events.wait_for("stats", lambda sample: (sample["rate"] or 0) > 0)
        finally:
            events.close()
        assert "problem" not in {name for name, data in events.seen if data}
    finally:
        server.kill()


def _answer_or_none(client: WebClient) -> tuple[int, str] | None:
    try:
        status, body = client.request("GET", "/api/me")
    except OSError:
        return None
    return status, body["role"]
