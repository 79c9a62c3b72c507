"""Requests whose bytes are not a valid message end INVALID_ARGUMENT, not UNKNOWN.

grpc.aio deserializes a request before any handler runs, and when the
protobuf parser refuses the bytes (a string field that is not UTF-8, a
truncated field, a wrong wire type) it ends the call with ``UNKNOWN`` and
the details ``Unexpected <class 'google.protobuf.message.DecodeError'>: ...``:
the wrong code for a malformed request, and a Python class name on the wire.
:class:`MalformedRequestInterceptor` takes the parsing over for every method
with a single request message, and refuses what does not parse with
``INVALID_ARGUMENT`` through :func:`pretrade.api.status.grpc_status`, like every
other malformed request.

A method that takes a stream of requests (OrderSession) must not end at one
bad message: its deserializer is made tolerant instead, and hands the
handler a :class:`MalformedMessage` in place of what did not parse, for the
handler to answer.

It must come first among the server's interceptors: the ones after it
(access control) wrap handlers that expect a parsed message, or a
:class:`MalformedMessage` in a request stream.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pretrade.api.status import grpc_status, status_details
from pretrade.engine.errors import InvalidRequest

log = logging.getLogger("pretrade.malformed")


class MalformedMessage:
    """A message of a request stream whose bytes did not parse: why, for the answer."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidRequest) -> None:
        self.error = error


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Parses each unary request itself; bytes that do not parse end INVALID_ARGUMENT.

    In a request stream, bytes that do not parse become a :class:`MalformedMessage`.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming:
            return _tolerant(handler, handler_call_details.method)
        return _parsing(handler, handler_call_details.method)


def _tolerant(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` whose request stream holds a :class:`MalformedMessage` for bad bytes."""
    deserialize = handler.request_deserializer

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as error:
            return MalformedMessage(InvalidRequest(
                f"the message is not a valid message for {method}: {error}"))

    make = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler)
    behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary
    return make(behaviour, request_deserializer=parse,
                response_serializer=handler.response_serializer)


def _parsing(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` taking raw bytes, parsed here with its own deserializer."""
    deserialize = handler.request_deserializer

    async def parse(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as error:
            invalid = InvalidRequest(f"the request is not a valid message for {method}: {error}")
            code, details = grpc_status(invalid)
            log.info("%s %s: %s", method, code.name, details)
            await context.abort(code, details, status_details(code, details, invalid))

    if not handler.response_streaming:
        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            result = handler.unary_unary(await parse(raw, context), context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=handler.response_serializer)

    stream = handler.unary_stream
    if inspect.isasyncgenfunction(stream):
        async def each(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in stream(await parse(raw, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            each, response_serializer=handler.response_serializer)

    async def writing(raw: bytes, context: grpc.aio.ServicerContext) -> None:
        # A handler that sends with context.write() and returns nothing.
        await stream(await parse(raw, context), context)

    return grpc.unary_stream_rpc_method_handler(
        writing, response_serializer=handler.response_serializer)
