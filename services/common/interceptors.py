"""Server interceptor that records per-RPC latency, errors and in-flight count."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common import metrics


def _split(method: str) -> tuple[str, str]:
    # "/visionmesh.v1.ClassifyService/Classify" -> ("visionmesh.v1.ClassifyService", "Classify")
    _, service, name = method.split("/", 2)
    return service, name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            # Streaming RPCs are counted by their own servicers; wrapping them here
            # would hold the generator open.
            return handler
        service, method = _split(handler_call_details.method)
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            metrics.RPC_IN_FLIGHT.labels(service).inc()
            try:
                return await inner(request, context)
            finally:
                metrics.RPC_IN_FLIGHT.labels(service).dec()
                metrics.RPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                code = context.code()
                if code not in (None, grpc.StatusCode.OK):
                    metrics.RPC_ERRORS.labels(service, method, metrics.status_name(code)).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
