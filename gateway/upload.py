"""Receiving a client-streamed video upload without letting slow or lying clients cost the gateway.

- A budget of its own: at most ``max_in_progress`` uploads are being received
  at once (past it RESOURCE_EXHAUSTED at once). Receiving does not hold an
  analysis slot, so silent streams cannot starve ``Analyze``; the clip takes
  an analysis slot only once it has fully arrived.
- An idle timeout between messages: a stream that sends nothing for
  ``idle_timeout_s`` is cut (DEADLINE_EXCEEDED naming the gap).
- Bounded memory: bytes are kept in memory up to ``spill_bytes`` per upload,
  then moved to an unlinked temporary file, so uploads in progress cost at most
  ``max_in_progress x spill_bytes`` of memory whatever their size.
- Sizes checked as bytes arrive: the per-upload limit (``max_bytes``) and the
  header's ``total_size`` both ways (negative, more than announced, fewer than
  announced) are INVALID_ARGUMENT, the first two before the excess is stored.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from prometheus_client import Gauge

from services.common.errors import DeadlineExceeded, InvalidInput, Overloaded
from visionmesh.v1 import gateway_pb2

UPLOADS_IN_PROGRESS = Gauge(
    "visionmesh_gateway_uploads_in_progress", "Video uploads being received"
)


@dataclass
class UploadLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_in_progress: int = 16
    idle_timeout_s: float = 10.0
    spill_bytes: int = 4 * 1024 * 1024
    # Where spilled uploads go ("" = the system's temporary directory).
    spill_dir: str = ""


@dataclass
class Upload:
    """A received upload: its header and its bytes in a file object positioned at 0."""

    header: gateway_pb2.VideoUploadHeader
    file: IO[bytes]
    size: int

    def close(self) -> None:
        self.file.close()


class UploadReceiver:
    """Receives uploads within the budget; ``receive`` returns the upload or raises a
    ``ServiceError``."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.in_progress = 0

    async def receive(self, messages: AsyncIterator[gateway_pb2.AnalyzeVideoRequest]) -> Upload:
        if self.in_progress >= self.limits.max_in_progress:
            raise Overloaded(
                f"gateway is receiving {self.in_progress} uploads: at its limit of "
                f"{self.limits.max_in_progress}; retry with backoff",
                retry_after_s=1.0,
            )
        self.in_progress += 1
        UPLOADS_IN_PROGRESS.set(self.in_progress)
        try:
            return await self._receive(messages)
        finally:
            self.in_progress -= 1
            UPLOADS_IN_PROGRESS.set(self.in_progress)

    async def _next(
        self, messages: AsyncIterator[gateway_pb2.AnalyzeVideoRequest], size: int
    ) -> gateway_pb2.AnalyzeVideoRequest | None:
        try:
            return await asyncio.wait_for(anext(messages), self.limits.idle_timeout_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise DeadlineExceeded(
                f"video upload stalled: nothing received for {self.limits.idle_timeout_s:g}s "
                f"after {size} bytes; upload cut"
            ) from None

    async def _receive(self, messages: AsyncIterator[gateway_pb2.AnalyzeVideoRequest]) -> Upload:
        limit = self.limits.max_bytes
        file = tempfile.SpooledTemporaryFile(
            max_size=self.limits.spill_bytes, dir=self.limits.spill_dir or None
        )
        header: gateway_pb2.VideoUploadHeader | None = None
        size = 0
        iterator = aiter(messages)
        try:
            while (message := await self._next(iterator, size)) is not None:
                if message.HasField("header"):
                    if header is not None:
                        raise InvalidInput("video upload sent a second header")
                    header = message.header
                    _check_total_size(header.total_size, limit)
                elif header is None:
                    raise InvalidInput("video upload must start with a header")
                size += len(message.chunk)
                if size > limit:
                    raise InvalidInput(f"video upload exceeds the {limit}-byte limit")
                if header.total_size and size > header.total_size:
                    raise InvalidInput(
                        f"video upload sent more than the {header.total_size} bytes "
                        "its header announced"
                    )
                # Past spill_bytes this goes to the page cache of a temporary file: fast enough
                # inline.
                file.write(message.chunk)
            if header is None:
                raise InvalidInput("video upload was empty (no header)")
            if size == 0:
                raise InvalidInput("video upload has no bytes")
            if header.total_size and size != header.total_size:
                raise InvalidInput(
                    f"video upload ended after {size} bytes; its header announced "
                    f"{header.total_size}"
                )
            file.seek(0)
            return Upload(header, file, size)
        except BaseException:
            file.close()
            raise


def _check_total_size(total_size: int, limit: int) -> None:
    if total_size < 0:
        raise InvalidInput(f"video header total_size is negative ({total_size})")
    if total_size > limit:
        raise InvalidInput(f"video is {total_size} bytes: over the {limit}-byte limit")
