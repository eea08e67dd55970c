"""Calls to the feature services: discovery, per-feature deadlines, retries, breakers.

Each feature is one function from (pixels, options, timeout) to its part of an
``AnalyzeResponse``; a failure becomes that feature's ``FeatureError`` and
never fails the whole call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from gateway.admission import Ticket
from gateway.config import GatewayConfig
from gateway.discovery import Resolver
from gateway.resilience import call_with_retry
from services.common import tracing
from services.common.batch_rpc import MAX_BATCH_ITEMS
from services.common.errors import DeadlineExceeded, ServiceError
from visionmesh import features
from visionmesh.features import FeatureSpec
from visionmesh.v1 import common_pb2, gateway_pb2

FEATURE_SECONDS = Histogram(
    "visionmesh_gateway_feature_seconds",
    "Latency of one feature's service call(s), retries included",
    ["feature"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FEATURE_ERRORS = Counter(
    "visionmesh_gateway_feature_errors_total", "Feature calls that failed", ["feature", "code"]
)
FANOUT_WIDTH = Histogram(
    "visionmesh_gateway_fanout_width", "Features fanned out per image", buckets=(1, 2, 3, 4)
)


def _chunks(requests: list[Any], max_bytes: int, max_items: int) -> list[list[Any]]:
    """Consecutive groups of ``requests``, each within the byte and item bounds of one batched
    call."""
    chunks: list[list[Any]] = []
    size = 0
    for request in requests:
        n = request.ByteSize()
        if not chunks or len(chunks[-1]) >= max_items or size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(request)
        size += n
    return chunks


def feature_error(feature: int, exc: BaseException) -> common_pb2.FeatureError:
    if isinstance(exc, grpc.aio.AioRpcError):
        code, message = exc.code().name, exc.details() or ""
    elif isinstance(exc, ServiceError):
        code, message = exc.code.name, exc.message
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        code, message = "DEADLINE_EXCEEDED", "feature deadline passed"
    else:
        code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
    return common_pb2.FeatureError(feature=feature, code=code, message=message)  # type: ignore[arg-type]


async def _settled(run: Awaitable[Any]) -> Any:
    """``run``'s result, or the exception it raised (as ``gather(return_exceptions=True)``)."""
    try:
        return await run
    except Exception as exc:
        return exc


class CallSlots:
    """At most ``limit`` calls in flight per instance address (0: no limit); the peak is kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, address: str, timeout_s: float | None) -> AsyncIterator[float | None]:
        """Wait for a slot within ``timeout_s``; yields the time left for the call itself."""
        start = time.monotonic()
        slot = None
        if self.limit > 0:
            slot = self._slots.get(address)
            if slot is None:
                slot = self._slots[address] = asyncio.Semaphore(self.limit)
            try:
                if slot.locked():
                    await asyncio.wait_for(slot.acquire(), timeout_s)
                else:  # free: taken at once, without the task wait_for would start
                    await slot.acquire()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no free call slot on {address} within the deadline "
                    f"({self.limit} calls per instance)"
                ) from None
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        self.peak[address] = max(self.peak.get(address, 0), self._in_flight[address])
        try:
            yield None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - start))
        finally:
            self._in_flight[address] -= 1
            if slot is not None:
                slot.release()


class FanOut:
    def __init__(self, resolver: Resolver, config: GatewayConfig) -> None:
        self.resolver = resolver
        self.config = config
        self.slots = CallSlots(config.calls_per_instance)

    async def call(self, service: str, method: str, request: Any, timeout_s: float | None) -> Any:
        """One RPC to some healthy instance of ``service``, retried on UNAVAILABLE only."""
        metadata = tracing.outgoing_metadata() if self.config.server.tracing else None

        async def attempt(remaining: float | None) -> Any:
            endpoint = self.resolver.pick(service)
            stub = endpoint.stubs.get(service)
            if stub is None:
                stub = endpoint.stubs[service] = features.by_name(service).stub(endpoint.channel)
            async with self.slots.hold(endpoint.address, remaining) as left:
                try:
                    reply = await getattr(stub, method)(request, timeout=left, metadata=metadata)
                except Exception as exc:
                    endpoint.breaker.record(exc)
                    raise
            endpoint.breaker.record_success()
            return reply

        return await call_with_retry(
            attempt, timeout_s=timeout_s, attempts=self.config.retry_attempts
        )

    async def run_features(
        self,
        image: common_pb2.Image,
        wanted: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: gateway_pb2.AnalyzeResponse,
        ticket: Ticket | None = None,
    ) -> None:
        """Fan ``image`` out to ``wanted`` concurrently, filling ``response`` (results + errors).

        Each feature's admission slot on ``ticket`` is released as that feature ends;
        features ``ticket`` refused get a RESOURCE_EXHAUSTED error and are not called.
        """
        specs = [s for s in (features.by_enum(f) for f in wanted) if s is not None]
        if ticket is not None and ticket.refused:
            for spec in specs:
                if (refusal := ticket.refused.get(spec.service)) is not None:
                    err = feature_error(spec.enum, refusal)
                    FEATURE_ERRORS.labels(spec.enum_name, err.code).inc()
                    response.errors.append(err)
            specs = [s for s in specs if s.service not in ticket.refused]
        FANOUT_WIDTH.observe(len(specs))
        runs = [
            self._timed(spec, self.run_feature(spec, [image], options, timeout_s, response), ticket)
            for spec in specs
        ]
        if len(runs) == 1:  # awaited in place: no task to schedule and wait on
            results = [await _settled(runs[0])]
        else:
            results = await asyncio.gather(*runs, return_exceptions=True)
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                err = feature_error(spec.enum, result)
                FEATURE_ERRORS.labels(spec.enum_name, err.code).inc()
                response.errors.append(err)

    async def run_features_on_frames(
        self,
        images: list[common_pb2.Image],
        wanted: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        responses: list[gateway_pb2.AnalyzeResponse],
        batch_calls: bool = True,
    ) -> None:
        """A video's frames: one call per feature carrying every frame where the service has a batch
        method.

        ``responses[i]`` receives frame ``i``'s results; a feature that fails puts its
        ``FeatureError`` in every frame's response.
        """
        specs = [s for s in map(features.by_enum, wanted) if s is not None]
        FANOUT_WIDTH.observe(len(specs))

        async def per_frame(spec: FeatureSpec) -> None:
            results = await asyncio.gather(
                *(
                    self.run_feature(spec, [image], options, timeout_s, response)
                    for image, response in zip(images, responses, strict=True)
                ),
                return_exceptions=True,
            )
            for result, response in zip(results, responses, strict=True):
                if isinstance(result, BaseException):
                    response.errors.append(self._error(spec, result))

        async def batched(spec: FeatureSpec) -> None:
            assert spec.batch_method is not None and spec.batch_request is not None
            requests = [spec.request([image], options) for image in images]
            chunks = _chunks(requests, self.config.batch_call_max_bytes, MAX_BATCH_ITEMS)
            replies = await asyncio.gather(
                *(self._batch_call(spec, chunk, timeout_s) for chunk in chunks),
                return_exceptions=True,
            )
            start = 0
            for chunk, reply in zip(chunks, replies, strict=True):
                for i in range(start, start + len(chunk)):
                    response = responses[i]
                    if isinstance(reply, BaseException):
                        response.errors.append(self._error(spec, reply))
                        continue
                    answer = reply[i - start]
                    tags = list(spec.merge(answer, getattr(response, spec.result_field)))
                    if tags:
                        response.tags.extend(tags)
                start += len(chunk)

        await asyncio.gather(
            *(
                self._timed(
                    spec,
                    batched(spec) if batch_calls and spec.batch_method else per_frame(spec),
                    None,
                )
                for spec in specs
            )
        )

    async def _batch_call(
        self, spec: FeatureSpec, requests: list[Any], timeout_s: float | None
    ) -> list[Any]:
        assert spec.batch_method is not None and spec.batch_request is not None
        reply = await self.call(
            spec.service, spec.batch_method, spec.batch_request(requests), timeout_s
        )
        if len(reply.responses) != len(requests):
            raise RuntimeError(
                f"{spec.batch_method} answered {len(reply.responses)} of {len(requests)} frames"
            )
        return list(reply.responses)

    def _error(self, spec: FeatureSpec, exc: BaseException) -> common_pb2.FeatureError:
        err = feature_error(spec.enum, exc)
        FEATURE_ERRORS.labels(spec.enum_name, err.code).inc()
        return err

    async def _timed(self, spec: FeatureSpec, run: Awaitable[None], ticket: Ticket | None) -> None:
        start = time.perf_counter()
        measured = False
        try:
            await run
            measured = True
        finally:
            FEATURE_SECONDS.labels(spec.enum_name).observe(time.perf_counter() - start)
            if ticket is not None:
                ticket.finish(spec.service, measured)

    async def run_feature(
        self,
        spec: FeatureSpec,
        images: list[common_pb2.Image],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: Any,
    ) -> None:
        """One feature for one item (an image, or a video's frames): call, merge, follow up."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        reply = await self.call(spec.service, spec.method, spec.request(images, options), left())
        result = getattr(response, spec.result_field)
        tags = list(spec.merge(reply, result))
        if tags:
            response.tags.extend(tags)
        if spec.follow_up is not None:

            async def call(method: str, request: Any) -> Any:
                return await self.call(spec.service, method, request, left())

            await spec.follow_up(call, reply, options, result)
