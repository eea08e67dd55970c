"""The servicer side of gRPC: status errors become aborts, the context becomes a deadline.

Part of the server layer (with ``server.py`` and ``interceptors.py``): the only
place below the servicers that knows the transport. Everything else raises
``ServiceError``s and takes a ``Deadline``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common.deadline import Deadline
from services.common.errors import ServiceError, retry_after_metadata

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status a ``ServiceError`` reaches the caller as."""
    return grpc.StatusCode[exc.code.name]


def request_deadline(context: grpc.aio.ServicerContext) -> Deadline:
    """The caller's deadline and cancellation, read once from the gRPC context."""
    return Deadline.after(context.time_remaining(), context.cancelled)


def grpc_method(func: F) -> F:
    """Turn ``ServiceError`` into ``context.abort(code, message)``; log anything else."""

    @functools.wraps(func)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(self, request, context)
        except ServiceError as exc:
            await context.abort(status_code(exc), exc.message, retry_after_metadata(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("unhandled error in %s", func.__qualname__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )

    return wrapper  # type: ignore[return-value]
