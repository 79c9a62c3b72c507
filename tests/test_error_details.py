"""Machine-readable error details over a real channel (google.rpc.Status via grpcio-status).

INVALID_ARGUMENT carries a BadRequest naming the field; FAILED_PRECONDITION and
RESOURCE_EXHAUSTED an ErrorInfo of domain pretrade.dev with a reason.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from book import order, seed_account
from pretrade.api.status import ERROR_DOMAIN, TOO_MANY_CALLS
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc


def details_of(error: grpc.RpcError, kind: type) -> list:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the status carries no details"
    assert status.code == error.code().value[0]  # type: ignore[attr-defined]
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


@pytest.mark.parametrize("changes, field", [
    ({"account_id": "NOT AN ID"}, "account_id"),
    ({"symbol": ""}, "symbol"),
    ({"order_id": ""}, "order_id"),
    ({"side": pb.SIDE_UNSPECIFIED}, "side"),
    ({"order_type": pb.ORDER_TYPE_UNSPECIFIED}, "order_type"),
    ({"venue": "has space"}, "venue"),
])
def test_a_malformed_order_names_its_field_in_a_bad_request(redis_client, stub, changes, field):
    seed_account(redis_client)
    request = order()
    for name, value in changes.items():
        setattr(request, name, value)
    error = refused(lambda: stub.EvaluateOrder(request, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = details_of(error, error_details_pb2.BadRequest)
    [violation] = bad_request.field_violations
    assert violation.field == field
    assert violation.description == error.details()


def test_a_malformed_halt_names_its_field_too(redis_client, stub):
    error = refused(lambda: stub.Halt(pb.HaltRequest(scope=pb.HALT_SCOPE_SYMBOL, symbol="AAPL",
                                                     mode=pb.HALT_MODE_HALTED), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = details_of(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["reason"]


def test_bytes_that_are_not_a_message_get_a_bad_request_without_a_field(gateway, channel):
    call = channel.unary_unary("/pretrade.v1.PreTradeRisk/EvaluateOrder",
                               request_serializer=lambda raw: raw,
                               response_deserializer=lambda raw: raw)
    error = refused(lambda: call(b"\xff\xff\xff", timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = details_of(error, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == ""


@pytest.mark.parametrize("scope, field, name, reason", [
    (pb.HALT_SCOPE_ACCOUNT, "account_id", "ACC-NEVER", "UNKNOWN_ACCOUNT"),
    (pb.HALT_SCOPE_SYMBOL, "symbol", "NEVER", "UNKNOWN_SYMBOL"),
])
def test_halting_an_unknown_target_only_if_known_is_a_failed_precondition_with_error_info(
        redis_client, stub, scope, field, name, reason):
    seed_account(redis_client)
    request = pb.HaltRequest(scope=scope, mode=pb.HALT_MODE_HALTED, reason="typo?",
                             only_if_known=True, **{field: name})
    error = refused(lambda: stub.Halt(request, timeout=5))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    [info] = details_of(error, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert dict(info.metadata) == {"account" if field == "account_id" else "symbol": name}
    assert redis_client.keys("halt:*") == []
    # Known targets halt as before; lifting is never refused.
    known = {"account_id": "ACC-1", "symbol": "AAPL"}[field]
    request_known = pb.HaltRequest(scope=scope, mode=pb.HALT_MODE_HALTED, reason="real",
                                   only_if_known=True, **{field: known})
    assert len(stub.Halt(request_known, timeout=5).halts) == 1
    lift = pb.HaltRequest(scope=scope, mode=pb.HALT_MODE_ACTIVE, only_if_known=True,
                          **{field: name})
    stub.Halt(lift, timeout=5)


def test_a_call_over_its_budget_is_resource_exhausted_with_error_info(redis_client,
                                                                     start_gateway):
    seed_account(redis_client)
    gateway = start_gateway(max_portfolio_streams=1)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = risk_pb2_grpc.PreTradeRiskStub(channel)
        held = stub.StreamPortfolio(pb.PortfolioRequest(account_id="ACC-1"), timeout=10)
        assert next(held).kind == pb.PORTFOLIO_UPDATE_KIND_SNAPSHOT
        error = refused(lambda: next(stub.StreamPortfolio(
            pb.PortfolioRequest(account_id="ACC-1"), timeout=5)))
        held.cancel()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    [info] = details_of(error, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (TOO_MANY_CALLS, ERROR_DOMAIN)
    assert dict(info.metadata) == {"budget": "streams", "limit": "1",
                                   "setting": "max_portfolio_streams"}
