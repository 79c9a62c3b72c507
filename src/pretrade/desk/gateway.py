"""The desk's calls to the gateway: one grpc.aio channel, each call with its user's token.

Every call carries the token of the session it is made for (``authorization:
Bearer``), so the gateway applies that user's role: a trader's desk is the
gateway's trader view, and a trader's halt is refused by the gateway itself.
A failed call becomes a :class:`DeskError` with the HTTP status the page
shows and one readable line, never a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

from pretrade.cli.client import ClientError, GatewayClient
from pretrade.v1 import risk_pb2 as pb
from pretrade.v1 import risk_pb2_grpc

#: Deadline of one unary call, seconds.
CALL_SECONDS = 5.0

#: gRPC status -> the HTTP status the desk answers with.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class DeskError(Exception):
    """A request the desk cannot answer: ``status`` (HTTP) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _failed(method: str, error: grpc.RpcError) -> DeskError:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    details = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
    name = code.name if code is not None else "UNKNOWN"
    return DeskError(HTTP_STATUS.get(code, 502) if code is not None else 502,
                     f"{method}: {name}: {details}")


class DeskGateway:
    """The gateway as the desk reaches it: :meth:`call` and :meth:`stream_portfolio`."""

    def __init__(self, client: GatewayClient, streams: GatewayClient | None = None) -> None:
        self.target = client.target
        #: Where portfolio streams are opened (a gateway's ``stream_listen``), when not
        #: at ``client``'s address.
        self.stream_target = streams.target if streams is not None else client.target
        try:
            self.channel = client.open_aio_channel()
            self.stream_channel = (streams.open_aio_channel() if streams is not None
                                   else self.channel)
        except ClientError as error:
            raise DeskError(500, str(error)) from None
        self.stub = risk_pb2_grpc.PreTradeRiskStub(self.channel)
        self.stream_stub = risk_pb2_grpc.PreTradeRiskStub(self.stream_channel)

    @staticmethod
    def metadata(token: str | None) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {token}")] if token else None

    async def call(self, method: str, request: Message, token: str | None) -> Any:
        """One unary call with ``token``; its reply, or :class:`DeskError`."""
        try:
            return await getattr(self.stub, method)(request, timeout=CALL_SECONDS,
                                                    metadata=self.metadata(token))
        except grpc.RpcError as error:
            raise _failed(method, error) from None

    async def stream_portfolio(self, account: str, token: str | None
                               ) -> AsyncIterator[pb.PortfolioUpdate]:
        """StreamPortfolio for one account until it ends; :class:`DeskError` if it fails."""
        call = self.stream_stub.StreamPortfolio(pb.PortfolioRequest(account_id=account),
                                                metadata=self.metadata(token))
        try:
            async for update in call:
                yield update
        except grpc.RpcError as error:
            raise _failed("StreamPortfolio", error) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
        if self.stream_channel is not self.channel:
            await self.stream_channel.close()
