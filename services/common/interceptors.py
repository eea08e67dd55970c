"""Server interceptors: per-RPC metrics, and the guard every request message passes first."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from services.common import metrics, options
from services.common.errors import InvalidInput
from services.common.rpc import status_code


def _split(method: str) -> tuple[str, str]:
    # "/visionmesh.v1.ClassifyService/Classify" -> ("visionmesh.v1.ClassifyService", "Classify")
    _, service, name = method.split("/", 2)
    return service, name


class PerMethodInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once, on its first call.

    A server's handlers are fixed per method, so the wrapped handler is kept and
    later calls skip the continuation and the wrapping (fewer objects and event-loop
    steps on every call). Unknown methods (no handler) are not kept.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            handler = self._handlers[method] = self.wrap(handler, method)
        return handler

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


_HANDLER_KINDS = (
    ("unary_unary", False, grpc.unary_unary_rpc_method_handler),
    ("unary_stream", False, grpc.unary_stream_rpc_method_handler),
    ("stream_unary", True, grpc.stream_unary_rpc_method_handler),
    ("stream_stream", True, grpc.stream_stream_rpc_method_handler),
)


def rebuild(
    handler: grpc.RpcMethodHandler,
    wrap_behavior: Callable[[Callable[..., Any], bool], Callable[..., Any]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` of whichever kind, its behaviour passed through ``wrap_behavior(behavior,
    request_streaming)`` (and its deserializer replaced when one is given)."""
    for kind, request_streaming, make in _HANDLER_KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(
                wrap_behavior(behavior, request_streaming),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError(f"handler has no behaviour: {handler!r}")


class MetricsInterceptor(PerMethodInterceptor):
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_streaming or handler.response_streaming:
            # Streaming RPCs are counted by their own servicers; wrapping them here
            # would hold the generator open.
            return handler
        service, name = _split(method)
        inner = handler.unary_unary
        in_flight = metrics.RPC_IN_FLIGHT.labels(service)
        latency = metrics.RPC_LATENCY.labels(service, name)

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            in_flight.inc()
            try:
                return await inner(request, context)
            finally:
                in_flight.dec()
                latency.observe(time.perf_counter() - start)
                code = context.code()
                if code not in (None, grpc.StatusCode.OK):
                    metrics.RPC_ERRORS.labels(service, name, metrics.status_name(code)).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class RejectedRequest:
    """What a guarded deserializer returns instead of raising: the handler answers with it."""

    code: grpc.StatusCode
    message: str


def _message_type(deserializer: Callable[[bytes], Any] | None) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


class RequestGuardInterceptor(PerMethodInterceptor):
    """Every request message is checked before a servicer sees it.

    gRPC answers UNKNOWN when a deserializer raises, so the deserializer is
    wrapped to return a ``RejectedRequest`` instead, and the handler wrapper
    turns that into INVALID_ARGUMENT naming the problem:

    * a message over the RPC's byte limit (``limits``: full method -> bytes) is
      refused before it is parsed;
    * bytes that are not a valid message of the RPC's type (truncated or
      malformed protobuf, invalid UTF-8 in a string field);
    * an option outside its documented range (``options.check_request``).
    """

    def __init__(self, limits: Mapping[str, int], default_limit: int) -> None:
        super().__init__()
        self.limits = dict(limits)
        self.default_limit = default_limit

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        limit = self.limits.get(method, self.default_limit)
        deserializer = self._guarded_deserializer(handler.request_deserializer, method, limit)
        return rebuild(
            handler,
            lambda behavior, request_streaming: (
                _guard_stream(behavior) if request_streaming else _guard_unary(behavior)
            ),
            deserializer,
        )

    @staticmethod
    def _guarded_deserializer(
        inner: Callable[[bytes], Any] | None, method: str, limit: int
    ) -> Callable[[bytes], Any]:
        type_name = _message_type(inner)

        def deserialize(data: bytes) -> Any:
            if len(data) > limit:
                return RejectedRequest(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request message is {len(data)} bytes: over the {limit}-byte "
                    f"limit of {method}",
                )
            if inner is None:
                return data
            try:
                message = inner(data)
            except Exception:  # DecodeError, or a RuntimeError from the upb parser
                return RejectedRequest(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request bytes are not a valid {type_name} message "
                    "(malformed protobuf or invalid UTF-8 in a string field)",
                )
            try:
                options.check_request(message)
            except InvalidInput as exc:
                return RejectedRequest(status_code(exc), exc.message)
            return message

        return deserialize


async def _reject(context: grpc.aio.ServicerContext, rejected: RejectedRequest) -> None:
    metrics.REJECTED_REQUESTS.labels(rejected.code.name).inc()
    await context.abort(rejected.code, rejected.message)


def _guard_unary(inner: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):

        async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, RejectedRequest):
                await _reject(context, request)
            async for response in inner(request, context):
                yield response

        return guarded_stream

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, RejectedRequest):
            await _reject(context, request)
        return await inner(request, context)

    return guarded


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, RejectedRequest):
            await _reject(context, request)
        yield request


def _guard_stream(inner: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):

        async def guarded_stream(requests: AsyncIterator[Any], context: Any) -> Any:
            async for response in inner(_checked(requests, context), context):
                yield response

        return guarded_stream

    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await inner(_checked(requests, context), context)

    return guarded
