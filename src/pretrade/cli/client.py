"""A small client of a running gateway: a channel, its credentials, one call at a time.

:class:`GatewayClient` is what the client commands (``order``, ``halt``,
``status``) share and what a script can use too: plaintext unless TLS is
asked for (``tls`` trusts the system's CAs; ``tls_ca``, ``tls_cert`` and
``tls_key`` name PEM files), the bearer token sent as call metadata, and a
deadline on every call. :meth:`GatewayClient.call` raises
:class:`ClientError` with one readable line for anything that went wrong
(a file it cannot read, a failed call), never a traceback's worth.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from pretrade.v1 import risk_pb2_grpc

#: Deadline of one call, seconds.
RPC_TIMEOUT_SECONDS = 5.0


class ClientError(Exception):
    """A call that did not get a reply; the message is one line for the user."""


@dataclass(frozen=True)
class GatewayClient:
    """How to reach one gateway: its address, TLS files and bearer token."""

    target: str
    token: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = RPC_TIMEOUT_SECONDS

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert or self.tls_key)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The TLS credentials of the channel; None for plaintext (no TLS option set)."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read_file("--tls-ca", self.tls_ca),
            private_key=_read_file("--tls-key", self.tls_key),
            certificate_chain=_read_file("--tls-cert", self.tls_cert))

    def open_channel(self) -> grpc.Channel:
        """A channel to :attr:`target`: plaintext, unless a TLS option is set."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, credentials)

    def open_aio_channel(self) -> grpc.aio.Channel:
        """:meth:`open_channel` for asyncio (grpc.aio), as the risk desk calls."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target)
        return grpc.aio.secure_channel(self.target, credentials)

    def metadata(self) -> list[tuple[str, str]] | None:
        """The call metadata: ``authorization: Bearer <token>`` when there is a token."""
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def call(self, method: str, request: Message) -> Message:
        """Call one unary ``PreTradeRisk`` method; its reply, or :class:`ClientError`."""
        with self.open_channel() as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            try:
                reply: Message = getattr(stub, method)(request, timeout=self.timeout,
                                                       metadata=self.metadata())
            except grpc.RpcError as error:
                raise ClientError(_describe_rpc_error(method, self.target, error)) from None
        return reply


def _describe_rpc_error(method: str, target: str, error: grpc.RpcError) -> str:
    # grpc.RpcError declares nothing, but what a call raises is also a grpc.Call.
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    code_name = code.name if code is not None else "UNKNOWN"
    return f"{method} on {target} failed: {code_name}: {details}"


def _read_file(flag: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ClientError(f"cannot read {flag} {path}: {error.strerror}") from None
