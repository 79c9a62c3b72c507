"""Access control over real channels: TLS and mutual TLS, bearer tokens, roles, accounts.

Certificates are made in the test (tests/pki.py); tokens by the same code
``pretrade token`` runs. Each rule is checked through a real gateway: a
trading client must never be able to lift a halt.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from book import codes, order, seed_account, wait_until
from conftest import GatewayThread, gateway_settings
from pki import Authority, Leaf
from pretrade.api.access import (
    OPEN_SERVICES,
    RULES,
    Principal,
    TokenTable,
    hash_token,
    load_tokens,
    new_token,
    token_entry,
)
from pretrade.app.config import ConfigError, Settings, environment_variable
from pretrade.app.security import ServerAccess
from pretrade.cli import commands as cli
from pretrade.state.schema import halt_key
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

RPC_TIMEOUT = 5.0
PRINCIPALS = {  # name: (role, accounts)
    "desk-1": ("trader", ["ACC-1"]),
    "oms-all": ("trader", ["*"]),
    "risk-desk": ("risk_operator", []),
    "root": ("admin", []),
}


# -- fixtures: certificates, tokens, gateways ----------------------------------


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client commands read $PRETRADE_TOKEN and friends: not from the developer's shell."""
    for name in cli.CLIENT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@dataclasses.dataclass(frozen=True)
class Pki:
    server_ca: Authority
    server: Leaf
    client_ca: Authority
    client: Leaf
    other_ca: Authority
    stranger: Leaf  # a client certificate from a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    server_ca = Authority(directory, "server-ca")
    client_ca = Authority(directory, "client-ca")
    other_ca = Authority(directory, "other-ca")
    return Pki(server_ca, server_ca.issue("gateway", server=True), client_ca,
               client_ca.issue("desk-1-client", server=False), other_ca,
               other_ca.issue("stranger", server=False))


@dataclasses.dataclass(frozen=True)
class Tokens:
    path: Path
    by_name: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.by_name[name]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    path = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    by_name = {name: new_token() for name in PRINCIPALS}
    path.write_text("\n".join(token_entry(name, role, accounts, by_name[name])
                              for name, (role, accounts) in PRINCIPALS.items()))
    return Tokens(path, by_name)


@pytest.fixture
def book(redis_client: redis.Redis) -> redis.Redis:
    """ACC-1 and ACC-2, each with generous limits on AAPL."""
    seed_account(redis_client, "ACC-1")
    seed_account(redis_client, "ACC-2")
    return redis_client


def tls_settings(pki: Pki, tokens: Tokens) -> dict[str, Any]:
    return {"insecure": False, "tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key),
            "auth": "tokens", "tokens_file": str(tokens.path)}


@pytest.fixture
def tls_gateway(book: redis.Redis, start_gateway: Callable[..., GatewayThread], pki: Pki,
                tokens: Tokens) -> GatewayThread:
    return start_gateway("tls", **tls_settings(pki, tokens))


@pytest.fixture
def mtls_gateway(book: redis.Redis, start_gateway: Callable[..., GatewayThread], pki: Pki,
                 tokens: Tokens) -> GatewayThread:
    return start_gateway("mtls", **tls_settings(pki, tokens), tls_client_ca=str(pki.client_ca.cert),
                         tls_require_client_cert=True)


def tls_channel(target: str, ca: Path, client: Leaf | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None)
    return grpc.secure_channel(target, credentials)


@pytest.fixture
def stub(tls_gateway: GatewayThread, pki: Pki) -> Iterator[risk_pb2_grpc.PreTradeRiskStub]:
    """A TLS client trusting the server's CA: tokens decide what it may do."""
    with tls_channel(tls_gateway.target, pki.server_ca.cert) as channel:
        yield risk_pb2_grpc.PreTradeRiskStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def halt_request(mode: int, account: str = "ACC-1") -> pb.HaltRequest:
    return pb.HaltRequest(scope=pb.HALT_SCOPE_ACCOUNT, account_id=account, mode=mode,
                          reason="risk check" if mode != pb.HALT_MODE_ACTIVE else "",
                          requested_by="test")


def first_update(stub: risk_pb2_grpc.PreTradeRiskStub, account: str,
                 token: str | None) -> pb.PortfolioUpdate:
    stream = stub.StreamPortfolio(pb.PortfolioRequest(account_id=account),
                                  timeout=RPC_TIMEOUT, metadata=bearer(token) if token else None)
    try:
        return next(stream)
    finally:
        stream.cancel()


# -- transport -----------------------------------------------------------------


def test_a_new_token_never_reads_as_a_command_line_option():
    # `--token -abc...` is an option to argparse, not a value: one random token
    # in 64 started with "-" and made a copied command fail.
    assert not any(new_token().startswith("-") for _ in range(5_000))


def test_a_tls_server_refuses_a_plaintext_client(tls_gateway, tokens):
    with grpc.insecure_channel(tls_gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        code, _ = code_of(lambda: stub.EvaluateOrder(
            order(), timeout=RPC_TIMEOUT, metadata=bearer(tokens["root"])))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_trusting_the_server_ca_is_served(stub, tokens):
    decision = stub.EvaluateOrder(order(), timeout=RPC_TIMEOUT, metadata=bearer(tokens["root"]))
    assert decision.approved, decision


def test_a_tls_client_trusting_another_ca_does_not_connect(tls_gateway, pki, tokens):
    with tls_channel(tls_gateway.target, pki.other_ca.cert) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        code, _ = code_of(lambda: stub.EvaluateOrder(
            order(), timeout=RPC_TIMEOUT, metadata=bearer(tokens["root"])))
    assert code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-certificate", "foreign-ca"])
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_client_ca(
        mtls_gateway, pki, tokens, client):
    leaf = getattr(pki, client) if client else None
    with tls_channel(mtls_gateway.target, pki.server_ca.cert, leaf) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        code, _ = code_of(lambda: stub.EvaluateOrder(
            order(), timeout=RPC_TIMEOUT, metadata=bearer(tokens["desk-1"])))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_client_ca(mtls_gateway, pki,
                                                                          tokens):
    with tls_channel(mtls_gateway.target, pki.server_ca.cert, pki.client) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        decision = stub.EvaluateOrder(order(), timeout=RPC_TIMEOUT,
                                      metadata=bearer(tokens["desk-1"]))
    assert decision.approved, decision


# -- authentication ------------------------------------------------------------


EVERY_CALL: dict[str, Callable[[risk_pb2_grpc.PreTradeRiskStub, Any], object]] = {
    "EvaluateOrder": lambda stub, md: stub.EvaluateOrder(order(), timeout=RPC_TIMEOUT,
                                                         metadata=md),
    "EvaluateOrders": lambda stub, md: stub.EvaluateOrders(
        pb.OrderBatch(orders=[order()]), timeout=RPC_TIMEOUT, metadata=md),
    "Halt": lambda stub, md: stub.Halt(halt_request(pb.HALT_MODE_HALTED), timeout=RPC_TIMEOUT,
                                       metadata=md),
    "GetStatus": lambda stub, md: stub.GetStatus(pb.StatusRequest(), timeout=RPC_TIMEOUT,
                                                 metadata=md),
    "StreamPortfolio": lambda stub, md: next(stub.StreamPortfolio(
        pb.PortfolioRequest(account_id="ACC-1"), timeout=RPC_TIMEOUT, metadata=md)),
    "ReplaceOrder": lambda stub, md: stub.ReplaceOrder(
        pb.ReplaceRequest(account_id="ACC-1", original_order_id="none", order_id="r-x"),
        timeout=RPC_TIMEOUT, metadata=md),
}


@pytest.mark.parametrize("method", EVERY_CALL)
def test_a_call_without_a_token_is_unauthenticated(stub, method, book):
    code, details = code_of(lambda: EVERY_CALL[method](stub, None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in details
    assert book.exists(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1")) == 0


@pytest.mark.parametrize("header", [
    "Bearer not-a-known-token",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "not-a-known-token",
])
def test_an_unknown_or_malformed_token_is_unauthenticated_and_not_echoed(stub, header):
    code, details = code_of(lambda: stub.EvaluateOrder(
        order(), timeout=RPC_TIMEOUT, metadata=[("authorization", header)]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-known-token" not in details and "dXNlcjpwYXNz" not in details


def test_a_token_from_another_principal_file_is_unauthenticated(stub):
    code, details = code_of(lambda: stub.GetStatus(
        pb.StatusRequest(), timeout=RPC_TIMEOUT, metadata=bearer(new_token())))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")


# -- roles and accounts ----------------------------------------------------------


def test_a_trader_may_trade_and_stream_its_own_account(stub, tokens):
    token = bearer(tokens["desk-1"])
    assert stub.EvaluateOrder(order(account="ACC-1"), timeout=RPC_TIMEOUT,
                              metadata=token).approved
    batch = stub.EvaluateOrders(pb.OrderBatch(orders=[order(), order()]), timeout=RPC_TIMEOUT,
                                metadata=token)
    assert [d.approved for d in batch.decisions] == [True, True]
    assert first_update(stub, "ACC-1", tokens["desk-1"]).account_id == "ACC-1"


def test_a_trader_may_not_trade_or_stream_a_foreign_account(stub, tokens):
    token = bearer(tokens["desk-1"])
    code, details = code_of(lambda: stub.EvaluateOrder(order(account="ACC-2"),
                                                       timeout=RPC_TIMEOUT, metadata=token))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "'desk-1' may not use account 'ACC-2' in EvaluateOrder"
    code, details = code_of(lambda: first_update(stub, "ACC-2", tokens["desk-1"]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'ACC-2' in StreamPortfolio" in details


def test_a_trader_replaces_in_its_own_account_only_and_a_risk_operator_not_at_all(stub,
                                                                                 tokens):
    # ReplaceOrder's access is EvaluateOrder's: traders and admins, their accounts
    first = order(account="ACC-1", quantity=5)
    assert stub.EvaluateOrder(first, timeout=RPC_TIMEOUT,
                              metadata=bearer(tokens["desk-1"])).approved
    replaced = stub.ReplaceOrder(
        pb.ReplaceRequest(account_id="ACC-1", original_order_id=first.order_id,
                          order_id=first.order_id + "-r", quantity=6),
        timeout=RPC_TIMEOUT, metadata=bearer(tokens["desk-1"]))
    assert replaced.approved, replaced
    code, details = code_of(lambda: stub.ReplaceOrder(
        pb.ReplaceRequest(account_id="ACC-2", original_order_id="x", order_id="y"),
        timeout=RPC_TIMEOUT, metadata=bearer(tokens["desk-1"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "'desk-1' may not use account 'ACC-2' in ReplaceOrder"
    code, _ = code_of(lambda: stub.ReplaceOrder(
        pb.ReplaceRequest(account_id="ACC-1", original_order_id=first.order_id + "-r",
                          order_id="z", quantity=7),
        timeout=RPC_TIMEOUT, metadata=bearer(tokens["risk-desk"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_one_foreign_order_refuses_the_whole_batch_and_decides_none_of_it(stub, tokens):
    token = bearer(tokens["desk-1"])
    own = order(account="ACC-1")
    batch = pb.OrderBatch(orders=[own, order(account="ACC-1"), order(account="ACC-2")])
    code, details = code_of(lambda: stub.EvaluateOrders(batch, timeout=RPC_TIMEOUT,
                                                        metadata=token))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'ACC-2' in EvaluateOrders (order 3 of the batch" in details
    # Had the first order been decided, sending it again would be a replay.
    again = stub.EvaluateOrder(own, timeout=RPC_TIMEOUT, metadata=token)
    assert again.approved and not again.replayed


def test_a_session_answers_a_traders_own_orders_then_ends_at_a_foreign_one_deciding_none_after(
        stub, tokens):
    token = bearer(tokens["desk-1"])
    first, second = order(account="ACC-1"), order(account="ACC-1")
    after = order(account="ACC-1")
    session = stub.OrderSession(iter([first, second, order(account="ACC-2"), after]),
                                timeout=RPC_TIMEOUT, metadata=token)
    answered = []
    with pytest.raises(grpc.RpcError) as raised:
        answered.extend(session)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "'desk-1' may not use account 'ACC-2' in OrderSession"
    # the orders before the foreign one were decided and answered, in order
    assert [(d.order_id, d.approved) for d in answered] == [
        (first.order_id, True), (second.order_id, True)]
    # the order after it was not decided: sent again it is new, not a replay
    again = stub.EvaluateOrder(after, timeout=RPC_TIMEOUT, metadata=token)
    assert again.approved and not again.replayed
    # a risk operator may not open a session at all
    code, _ = code_of(lambda: list(stub.OrderSession(
        iter([order(account="ACC-1")]), timeout=RPC_TIMEOUT,
        metadata=bearer(tokens["risk-desk"]))))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_trader_can_never_lift_a_halt(stub, tokens, book):
    operator, trader = bearer(tokens["risk-desk"]), bearer(tokens["desk-1"])
    stub.Halt(halt_request(pb.HALT_MODE_HALTED), timeout=RPC_TIMEOUT, metadata=operator)
    for mode in (pb.HALT_MODE_ACTIVE, pb.HALT_MODE_REDUCE_ONLY, pb.HALT_MODE_HALTED):
        code, details = code_of(lambda mode=mode: stub.Halt(
            halt_request(mode), timeout=RPC_TIMEOUT, metadata=trader))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("'desk-1' (role trader) may not call Halt")
    stored = book.hgetall(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-1"))
    assert stored[b"mode"] == b"HALTED", stored
    decision = stub.EvaluateOrder(order(), timeout=RPC_TIMEOUT, metadata=trader)
    assert codes(decision) == [pb.REJECT_CODE_ACCOUNT_HALT]


def test_a_trader_may_not_read_the_server_status(stub, tokens):
    code, details = code_of(lambda: stub.GetStatus(pb.StatusRequest(), timeout=RPC_TIMEOUT,
                                                   metadata=bearer(tokens["desk-1"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call GetStatus" in details


def test_a_trader_for_every_account_may_trade_any_account_but_not_halt(stub, tokens):
    token = bearer(tokens["oms-all"])
    for account in ("ACC-1", "ACC-2"):
        assert stub.EvaluateOrder(order(account=account), timeout=RPC_TIMEOUT,
                                  metadata=token).approved
    code, _ = code_of(lambda: stub.Halt(halt_request(pb.HALT_MODE_ACTIVE),
                                        timeout=RPC_TIMEOUT, metadata=token))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_risk_operator_halts_and_lifts_streams_any_account_and_reads_status(stub, tokens,
                                                                              book):
    token = bearer(tokens["risk-desk"])
    state = stub.Halt(halt_request(pb.HALT_MODE_HALTED, "ACC-2"), timeout=RPC_TIMEOUT,
                      metadata=token)
    assert [h.target for h in state.halts] == ["ACC-2"]
    assert book.exists(halt_key(pb.HALT_SCOPE_ACCOUNT, b"ACC-2")) == 1
    state = stub.Halt(halt_request(pb.HALT_MODE_ACTIVE, "ACC-2"), timeout=RPC_TIMEOUT,
                      metadata=token)
    assert list(state.halts) == []
    assert first_update(stub, "ACC-2", tokens["risk-desk"]).account_id == "ACC-2"
    assert stub.GetStatus(pb.StatusRequest(), timeout=RPC_TIMEOUT, metadata=token).sync_live


def test_a_risk_operator_does_not_send_orders(stub, tokens):
    code, details = code_of(lambda: stub.EvaluateOrder(order(), timeout=RPC_TIMEOUT,
                                                       metadata=bearer(tokens["risk-desk"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'risk-desk' (role risk_operator) may not call EvaluateOrder" in details


def test_an_admin_may_call_everything_for_every_account(stub, tokens):
    token = bearer(tokens["root"])
    for method, call in EVERY_CALL.items():
        assert call(stub, token) is not None, method
    assert stub.EvaluateOrder(order(account="ACC-2"), timeout=RPC_TIMEOUT,
                              metadata=token).approved
    assert first_update(stub, "ACC-2", tokens["root"]).account_id == "ACC-2"


def test_every_rpc_has_an_explicit_rule():
    service = pb.DESCRIPTOR.services_by_name["PreTradeRisk"]
    assert set(RULES) == {f"/{service.full_name}/{method.name}" for method in service.methods}


# -- open services ---------------------------------------------------------------


def test_health_and_reflection_need_no_token(tls_gateway, pki):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    with tls_channel(tls_gateway.target, pki.server_ca.cert) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="pretrade.v1.PreTradeRisk"),
                             timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "pretrade.v1.PreTradeRisk" in services
    assert set(services) - {"pretrade.v1.PreTradeRisk"} <= OPEN_SERVICES


# -- logging -----------------------------------------------------------------------


def test_every_refusal_is_logged_with_peer_and_principal_but_never_the_token(stub, tokens,
                                                                            caplog):
    caplog.set_level(logging.WARNING, logger="pretrade.access")
    code_of(lambda: stub.Halt(halt_request(pb.HALT_MODE_ACTIVE), timeout=RPC_TIMEOUT,
                              metadata=bearer(tokens["desk-1"])))
    code_of(lambda: stub.Halt(halt_request(pb.HALT_MODE_ACTIVE), timeout=RPC_TIMEOUT,
                              metadata=bearer("guessed-token")))
    records = wait_until(lambda: [r for r in caplog.records if r.name == "pretrade.access"],
                         lambda found: len(found) >= 2)
    denied, unknown = (record.getMessage() for record in records[:2])
    assert all(record.levelno == logging.WARNING for record in records)
    assert denied.startswith("PERMISSION_DENIED Halt from ipv4:127.0.0.1:")
    assert "principal desk-1 (role trader)" in denied
    assert unknown.startswith("UNAUTHENTICATED Halt from ipv4:127.0.0.1:")
    assert "principal -" in unknown
    for message in (denied, unknown):
        assert tokens["desk-1"] not in message and "guessed-token" not in message


# -- the tokens file -------------------------------------------------------------


def test_pretrade_token_prints_the_entry_to_stdout_and_the_token_once_to_stderr(capsys,
                                                                               tmp_path):
    assert cli.main(["token", "--name", "oms-9", "--role", "trader", "--account", "ACC-1",
                     "--account", "ACC-2"]) == cli.EXIT_APPROVED
    out, err = capsys.readouterr()
    token = err.strip().splitlines()[-1]
    assert len(token) >= 43 and token not in out
    entry = tomllib.loads(out)["token"][0]
    assert entry == {"name": "oms-9", "role": "trader", "accounts": ["ACC-1", "ACC-2"],
                     "sha256": hash_token(token)}
    path = tmp_path / "tokens.toml"
    path.write_text(out)
    principal = load_tokens(path).authenticate(token)
    assert principal is not None and principal.accounts == frozenset({"ACC-1", "ACC-2"})


def test_the_tokens_file_holds_hashes_not_tokens(tokens):
    text = tokens.path.read_text()
    for token in tokens.by_name.values():
        assert token not in text
        assert hash_token(token) in text


@pytest.mark.parametrize("argv", [
    ["--role", "trader"],
    ["--role", "admin", "--account", "ACC-1"],
    ["--role", "auditor"],
])
def test_pretrade_token_refuses_an_entry_that_would_not_load(capsys, argv):
    with pytest.raises(SystemExit) as raised:
        cli.main(["token", "--name", "x", *argv])
    assert raised.value.code == 2
    assert "token" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "complaint"), [
    ('name = "a"\nrole = "trader"\naccounts = ["ACC-1"]\ntoken = "secret"',
     "raw 'token'"),
    ('name = "a"\nrole = "trader"\nsha256 = "{h}"', "a trader needs accounts"),
    ('name = "a"\nrole = "admin"\naccounts = ["ACC-1"]\nsha256 = "{h}"',
     "accounts only apply to a trader"),
    ('name = "a"\nrole = "root"\nsha256 = "{h}"', "role 'root'"),
    ('name = "a"\nrole = "admin"\nsha256 = "ABC"', "64 lower-case hex"),
    ('name = "a"\nrole = "trader"\naccounts = ["*", "ACC-1"]\nsha256 = "{h}"', "every account"),
    ('name = "a"\nrole = "trader"\naccounts = ["BAD ID"]\nsha256 = "{h}"', "valid account"),
    ('name = "a"\nrole = "admin"\nsha256 = "{h}"\nexpires = 1', "unknown key"),
    ('name = "a b"\nrole = "admin"\nsha256 = "{h}"', "name must be"),
])
def test_a_malformed_tokens_file_is_refused_naming_the_entry(tmp_path, entry, complaint):
    path = tmp_path / "tokens.toml"
    path.write_text("[[token]]\n" + entry.replace("{h}", hash_token("t")) + "\n")
    with pytest.raises(ConfigError, match="token 1") as raised:
        load_tokens(path)
    assert complaint in str(raised.value)
    assert "secret" not in str(raised.value)


def test_a_tokens_file_with_a_repeated_name_or_hash_is_refused(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(token_entry("a", "admin", [], "t1") + token_entry("a", "admin", [], "t2"))
    with pytest.raises(ConfigError, match="used twice"):
        load_tokens(path)
    path.write_text(token_entry("a", "admin", [], "t1") + token_entry("b", "admin", [], "t1"))
    with pytest.raises(ConfigError, match="same sha256"):
        load_tokens(path)


def test_authentication_finds_the_principal_whose_hash_matches():
    first, second = Principal("first", "admin", None), Principal("second", "admin", None)
    table = TokenTable([(bytes.fromhex(hash_token("one")), first),
                        (bytes.fromhex(hash_token("two")), second)])
    assert table.authenticate("two") is second
    assert table.authenticate("three") is None


# -- settings that must not start a server -------------------------------------


@pytest.fixture
def files(pki: Pki, tokens: Tokens) -> dict[str, str]:
    return {"cert": str(pki.server.cert), "key": str(pki.server.key),
            "ca": str(pki.client_ca.cert), "tokens": str(tokens.path)}


@pytest.mark.parametrize(("settings", "complaint"), [
    ({}, "no transport security: set tls_cert and tls_key"),
    ({"insecure": True, "tls_cert": "cert", "tls_key": "key"},
     "insecure (plaintext) contradicts tls_cert, tls_key"),
    ({"tls_cert": "cert"}, "tls_key is not set"),
    ({"tls_key": "key"}, "tls_cert is not set"),
    ({"tls_cert": "cert", "tls_key": "key", "tls_require_client_cert": True},
     "tls_require_client_cert needs tls_client_ca"),
    ({"tls_cert": "cert", "tls_key": "key", "tls_client_ca": "ca"},
     "does not take optional client certificates"),
    ({"insecure": True, "auth": "tokens"}, "auth = 'tokens' needs tokens_file"),
    ({"insecure": True, "auth": "none", "tokens_file": "tokens"}, "auth = 'none' would ignore"),
    ({"insecure": True, "auth": "none", "listen": "0.0.0.0:0"},
     "refused on the non-loopback address 0.0.0.0:0"),
    ({"tls_cert": "key", "tls_key": "key", "auth": "none"}, "not a PEM certificate chain"),
    ({"tls_cert": "cert", "tls_key": "ca", "auth": "none"}, "the unencrypted PEM private key"),
    ({"tls_cert": "cert", "tls_key": "key", "tls_client_ca": "tokens",
      "tls_require_client_cert": True, "auth": "none"}, "not PEM CA certificates"),
    ({"insecure": True, "tokens_file": "/nonexistent/tokens.toml"}, "cannot read it"),
])
def test_contradictory_or_incomplete_access_settings_refuse_to_start(files, settings, complaint):
    values = {key: files.get(value, value) if isinstance(value, str) and key != "listen"
              and key != "auth" else value for key, value in settings.items()}
    with pytest.raises(ConfigError) as raised:
        ServerAccess.from_settings(Settings(**values))
    assert complaint in str(raised.value)


def test_plaintext_without_tokens_is_allowed_on_loopback_only_when_asked_for():
    access = ServerAccess.from_settings(Settings(insecure=True, auth="none",
                                                 listen="[::1]:0"))
    assert access.plaintext and access.interceptors == ()


def test_pretrade_serve_without_tls_or_insecure_exits_2_before_starting_anything(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PRETRADE_") and name != "REDIS_URL"}
    env[environment_variable("data_dir")] = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "pretrade", "serve", "--listen",
                             "127.0.0.1:0"], capture_output=True, text=True, env=env,
                            timeout=30, check=False)
    assert result.returncode == cli.EXIT_FAILED, result
    assert "no transport security" in result.stderr
    assert "auth = 'tokens' needs tokens_file" in result.stderr
    assert not (tmp_path / "run").exists()  # no embedded redis-server was started


def test_client_variables_are_not_server_settings():
    server = {environment_variable(field.name) for field in dataclasses.fields(Settings)}
    assert not server & set(cli.CLIENT_ENVIRONMENT)


# -- the pretrade client over TLS ------------------------------------------------


def test_pretrade_client_sends_its_token_over_tls_and_reports_a_denial(tls_gateway, pki, tokens,
                                                                        capsys):
    access = ["--target", tls_gateway.target, "--tls-ca", str(pki.server_ca.cert)]
    halt = ["halt", *access, "--scope", "account", "--account", "ACC-1", "--mode", "active"]
    assert cli.main([*halt, "--token", tokens["desk-1"]]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Halt" in err and "PERMISSION_DENIED" in err and tokens["desk-1"] not in err
    assert cli.main(["order", *access, "--account", "ACC-1", "--symbol", "AAPL", "--side",
                     "buy", "--qty", "10", "--price", "68.3378", "--token",
                     tokens["desk-1"]]) == cli.EXIT_APPROVED
    assert cli.main(["status", *access, "--token", tokens["risk-desk"]]) == cli.EXIT_APPROVED
    assert "sync live" in capsys.readouterr().out
    assert cli.main(["status", *access]) == cli.EXIT_FAILED
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_pretrade_client_presents_its_certificate_for_mutual_tls(mtls_gateway, pki, tokens,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv(cli.TOKEN_ENV, tokens["risk-desk"])
    monkeypatch.setenv(cli.TLS_CA_ENV, str(pki.server_ca.cert))
    monkeypatch.setenv(cli.CLIENT_CERT_ENV, str(pki.client.cert))
    monkeypatch.setenv(cli.CLIENT_KEY_ENV, str(pki.client.key))
    assert cli.main(["status", "--target", mtls_gateway.target]) == cli.EXIT_APPROVED
    monkeypatch.delenv(cli.CLIENT_CERT_ENV)
    monkeypatch.delenv(cli.CLIENT_KEY_ENV)
    assert cli.main(["status", "--target", mtls_gateway.target]) == cli.EXIT_FAILED
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_pretrade_client_needs_cert_and_key_together(capsys):
    with pytest.raises(SystemExit):
        cli.main(["status", "--tls-cert", "client.pem"])
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_pretrade_client_names_an_unreadable_ca_file(capsys, tmp_path):
    missing = str(tmp_path / "missing.pem")
    assert cli.main(["status", "--target", "127.0.0.1:1", "--tls-ca", missing]) == 2
    assert f"cannot read --tls-ca {missing}" in capsys.readouterr().err


def test_plaintext_gateway_settings_keep_working_for_the_other_tests(tmp_path):
    settings = gateway_settings(tmp_path)
    assert (settings.insecure, settings.auth) == (True, "none")
