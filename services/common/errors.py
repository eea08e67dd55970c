"""Errors that say which gRPC status they should reach the caller as.

They carry the status by name (``Status``), so the code raising them (models,
batcher, pipelines) needs no gRPC; the server layer maps them to
``grpc.StatusCode`` (``services.common.rpc``).
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The gRPC status codes the mesh raises (names as in ``grpc.StatusCode``)."""

    INTERNAL = "internal"
    INVALID_ARGUMENT = "invalid argument"
    RESOURCE_EXHAUSTED = "resource exhausted"
    DEADLINE_EXCEEDED = "deadline exceeded"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"


class ServiceError(Exception):
    """An error with the status it should reach the caller as."""

    code: Status = Status.INTERNAL

    def __init__(self, message: str, code: Status | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(ServiceError):
    code = Status.INVALID_ARGUMENT


class Overloaded(ServiceError):
    """Refused for lack of capacity; ``retry_after_s`` (if known) reaches the caller as
    ``retry-after-ms``."""

    code = Status.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# Trailing-metadata key of the retry hint (milliseconds, an integer as text).
RETRY_AFTER_KEY = "retry-after-ms"


def retry_after_metadata(exc: ServiceError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata telling the caller when to retry (empty when the error has no hint)."""
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None:
        return ()
    return ((RETRY_AFTER_KEY, str(max(1, round(retry_after * 1000)))),)


class DeadlineExceeded(ServiceError):
    code = Status.DEADLINE_EXCEEDED


class NotFound(ServiceError):
    code = Status.NOT_FOUND


class Unavailable(ServiceError):
    code = Status.UNAVAILABLE
