"""Errors that carry a gRPC status code, and the servicer-side mapping to aborts."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with the gRPC status it should reach the caller as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(ServiceError):
    """Refused for lack of capacity; ``retry_after_s`` (if known) travels as ``retry-after-ms`` trailing metadata."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


RETRY_AFTER_KEY = "retry-after-ms"


def retry_after_metadata(exc: ServiceError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata telling the caller when to retry (empty when the error has no hint)."""
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None:
        return ()
    return ((RETRY_AFTER_KEY, str(max(1, round(retry_after * 1000)))),)


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def grpc_method(func: F) -> F:
    """Turn ``ServiceError`` into ``context.abort(code, message)``; log anything else."""

    @functools.wraps(func)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(self, request, context)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message, retry_after_metadata(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("unhandled error in %s", func.__qualname__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )

    return wrapper  # type: ignore[return-value]
