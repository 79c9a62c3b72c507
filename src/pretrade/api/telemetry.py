"""The gRPC server metrics: calls started, handled (by method and code), handling time.

:class:`CallMetrics` is a server interceptor that counts in plain memory
(:mod:`pretrade.engine.tally`); the exporter (:mod:`pretrade.app.metrics`)
reads it at scrape time under the usual names (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_handling_seconds``). It sits
right after the malformed-request interceptor, so calls that access control
or a budget refuses are counted with their codes too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pretrade.engine.tally import SECONDS_BOUNDS, Buckets

#: (service, method) -> the gRPC type ("unary", "server_stream", ...).
Method = tuple[str, str]
_TYPES = {(False, False): "unary", (False, True): "server_stream",
          (True, False): "client_stream", (True, True): "bidi_stream"}


def split_method(full: str) -> Method:
    """``"/pretrade.v1.PreTradeRisk/Halt"`` -> ``("pretrade.v1.PreTradeRisk", "Halt")``."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def code_name(code: object) -> str:
    """The status name of what ``context.code()`` gives: a StatusCode, its number, or None (OK)."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return _CODE_NAMES.get(code, "UNKNOWN")
    return "UNKNOWN"


class CallMetrics(grpc.aio.ServerInterceptor):
    """Counts every call: started, and at its end, its code and how long it took."""

    def __init__(self) -> None:
        self.types: dict[Method, str] = {}
        self.started: defaultdict[Method, int] = defaultdict(int)
        #: (service, method, code name) -> calls that ended with it.
        self.handled: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.handling: dict[Method, Buckets] = {}
        #: Calls that found no handler (an unknown method): UNIMPLEMENTED, by gRPC.
        self.unknown = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            self.unknown += 1
            return None
        method = split_method(handler_call_details.method)
        if method not in self.types:
            self.types[method] = _TYPES[(handler.request_streaming, handler.response_streaming)]
            self.handling[method] = Buckets(SECONDS_BOUNDS)
        return self._counted(handler, method)

    def _done(self, method: Method, started: float, code: object) -> None:
        self.handled[(*method, code_name(code))] += 1
        self.handling[method].observe(time.perf_counter() - started)

    def _counted(self, handler: grpc.RpcMethodHandler, method: Method) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        behaviour, make = {
            (False, False): (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
            (False, True): (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            (True, False): (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
            (True, True): (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        }[kind]
        if inspect.isasyncgenfunction(behaviour):
            async def each(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self.started[method] += 1
                started = time.perf_counter()
                code: object = grpc.StatusCode.UNKNOWN
                try:
                    async for response in behaviour(request, context):
                        yield response
                    code = context.code()
                except grpc.aio.AbortError:
                    code = context.code()
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._done(method, started, code)

            wrapped: Callable[..., Any] = each
        else:
            async def one(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self.started[method] += 1
                started = time.perf_counter()
                code: object = grpc.StatusCode.UNKNOWN
                try:
                    result = behaviour(request, context)
                    reply = await result if inspect.isawaitable(result) else result
                    code = context.code()
                    return reply
                except grpc.aio.AbortError:
                    code = context.code()
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._done(method, started, code)

            wrapped = one
        return make(wrapped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
