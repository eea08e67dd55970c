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
    code = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = Status.DEADLINE_EXCEEDED


class NotFound(ServiceError):
    code = Status.NOT_FOUND


class Unavailable(ServiceError):
    code = Status.UNAVAILABLE
