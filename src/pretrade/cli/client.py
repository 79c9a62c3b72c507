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

import re
from collections.abc import Generator
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pretrade.v1 import risk_pb2_grpc

#: Deadline of one call, seconds.
RPC_TIMEOUT_SECONDS = 5.0
#: What to tell someone whose gateway does not answer.
HOW_TO_START = ("start one with `make serve` (or `pretrade serve --demo --insecure --auth none`), "
                "or point --target (or $PRETRADE_TARGET) at the address its banner prints")
_TARGET = re.compile(r"(?:[^\s:/]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")


def check_target(target: str) -> str | None:
    """Why ``target`` is not a ``HOST:PORT`` a gateway can be at, or None when it is.

    Catches a command copied from the README with ``PORT`` left in
    (``--target 127.0.0.1:PORT``) before any connection is tried.
    """
    if target.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return None  # gRPC's own target schemes
    found = _TARGET.fullmatch(target)
    if found is None:
        host, _, port = target.rpartition(":")
        if host and port and not port.isdigit():
            return (f"--target {target!r}: {port!r} is not a port number; put in the port the "
                    "server listens on (`make serve`: 127.0.0.1:50051)")
        return f"--target {target!r} is not HOST:PORT, e.g. 127.0.0.1:50051"
    if not 0 < int(found[1]) <= 65535:
        return f"--target {target!r}: the port must be 1 to 65535"
    return None


class ClientError(Exception):
    """A call that did not get a reply; the message is one line for the user.

    ``code`` is the call's status (None when no call was made) and ``reason``
    the ``ErrorInfo`` reason of its details, when the server sent one.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


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
        self._check_target()
        with self.open_channel() as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            try:
                reply: Message = getattr(stub, method)(request, timeout=self.timeout,
                                                       metadata=self.metadata())
            except grpc.RpcError as error:
                raise self._failed(method, error) from None
        return reply


    def stream(self, method: str, request: Message,
               timeout: float | None = None) -> Generator[Message, None, None]:
        """The messages of one server-streaming method, until it ends; :class:`ClientError`
        for a failed call. ``timeout`` None: the stream has no deadline."""
        self._check_target()
        with self.open_channel() as channel:
            stub = risk_pb2_grpc.PreTradeRiskStub(channel)
            call = getattr(stub, method)(request, timeout=timeout, metadata=self.metadata())
            try:
                yield from call
            except grpc.RpcError as error:
                raise self._failed(method, error) from None
            finally:
                call.cancel()

    def check(self) -> None:
        """ClientError (one line) when the target or a TLS file is unusable; before a call."""
        self._check_target()
        self.credentials()

    def _check_target(self) -> None:
        """ClientError when :attr:`target` is not an address a gateway can be at."""
        problem = check_target(self.target)
        if problem is not None:
            raise ClientError(problem)

    def _failed(self, method: str, error: grpc.RpcError) -> ClientError:
        code = error.code() if isinstance(error, grpc.Call) else None
        return ClientError(describe_rpc_error(method, self.target, error), code,
                           error_reason(error))


def error_reason(error: grpc.RpcError) -> str:
    """The ``ErrorInfo`` reason in a failed call's status details, or ``""``."""
    if not isinstance(error, grpc.Call):
        return ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the status: read none
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def describe_rpc_error(method: str, target: str, error: grpc.RpcError) -> str:
    # grpc.RpcError declares nothing, but what a call raises is also a grpc.Call.
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    details = " ".join(str(details or "").split())  # one line, whatever the server said
    code_name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and _not_connected(details):
        return f"no gateway answers at {target} ({method}: {code_name}); {HOW_TO_START}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "connect" in details.lower():
        return (f"no gateway answered at {target} within the call's deadline ({method}); "
                f"{HOW_TO_START}")
    return f"{method} on {target} failed: {code_name}: {details}"


def _not_connected(details: str) -> bool:
    """The channel never reached a server (as opposed to a server saying UNAVAILABLE)."""
    lowered = details.lower()
    return any(sign in lowered for sign in ("failed to connect", "connection refused",
                                            "connect failed", "dns resolution failed",
                                            "errors resolving", "name resolution"))


def _read_file(flag: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ClientError(f"cannot read {flag} {path}: {error.strerror}") from None
