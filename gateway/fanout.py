"""Calls to the feature services: discovery, per-feature deadlines, retries, breakers.

Each feature is one function from (pixels, options, timeout) to its part of an
``AnalyzeResponse``; a failure becomes that feature's ``FeatureError`` and
never fails the whole call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from gateway.admission import Ticket
from gateway.config import GatewayConfig
from gateway.discovery import Resolver
from gateway.merge import FEATURE_NAMES, text_tags
from gateway.resilience import call_with_retry
from services.common.errors import ServiceError
from visionmesh.v1 import (
    classify_pb2,
    classify_pb2_grpc,
    common_pb2,
    face_pb2,
    face_pb2_grpc,
    gateway_pb2,
    hash_pb2,
    hash_pb2_grpc,
    ocr_pb2,
    ocr_pb2_grpc,
)

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

_STUBS: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "classify": classify_pb2_grpc.ClassifyServiceStub,
    "ocr": ocr_pb2_grpc.OcrServiceStub,
    "face": face_pb2_grpc.FaceServiceStub,
    "hash": hash_pb2_grpc.HashServiceStub,
}


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


class FanOut:
    def __init__(self, resolver: Resolver, config: GatewayConfig) -> None:
        self.resolver = resolver
        self.config = config

    async def call(self, service: str, method: str, request: Any, timeout_s: float | None) -> Any:
        """One RPC to some healthy instance of ``service``, retried on UNAVAILABLE only."""

        async def attempt(remaining: float | None) -> Any:
            endpoint = self.resolver.pick(service)
            stub = _STUBS[service](endpoint.channel)
            try:
                reply = await getattr(stub, method)(request, timeout=remaining)
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
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: gateway_pb2.AnalyzeResponse,
        ticket: Ticket | None = None,
    ) -> None:
        """Fan ``image`` out to ``features`` concurrently, filling ``response`` (results + errors).

        Each feature's admission slot on ``ticket`` is released as that feature ends.
        """
        runners: dict[int, Callable[[], Awaitable[None]]] = {
            common_pb2.FEATURE_CLASSIFY: lambda: self._classify(
                image, options, timeout_s, response
            ),
            common_pb2.FEATURE_OCR: lambda: self._ocr(image, options, timeout_s, response),
            common_pb2.FEATURE_FACE: lambda: self._face(image, options, timeout_s, response),
            common_pb2.FEATURE_HASH: lambda: self.hash_item(
                [image], options.hash, timeout_s, response.hash
            ),
        }
        if ticket is not None and ticket.refused:
            # Features whose service could not take the call in time: RESOURCE_EXHAUSTED, not run.
            for feature in features:
                if (refusal := ticket.refused.get(FEATURE_NAMES[feature])) is not None:
                    err = feature_error(feature, refusal)
                    FEATURE_ERRORS.labels(common_pb2.Feature.Name(feature), err.code).inc()
                    response.errors.append(err)
            features = [f for f in features if FEATURE_NAMES[f] not in ticket.refused]
        FANOUT_WIDTH.observe(len(features))
        results = await asyncio.gather(
            *(self._timed(f, runners[f], ticket) for f in features), return_exceptions=True
        )
        for feature, result in zip(features, results, strict=True):
            if isinstance(result, BaseException):
                err = feature_error(feature, result)
                FEATURE_ERRORS.labels(common_pb2.Feature.Name(feature), err.code).inc()
                response.errors.append(err)

    async def _timed(
        self, feature: int, run: Callable[[], Awaitable[None]], ticket: Ticket | None
    ) -> None:
        start = time.perf_counter()
        measured = False
        try:
            await run()
            measured = True
        finally:
            FEATURE_SECONDS.labels(common_pb2.Feature.Name(feature)).observe(
                time.perf_counter() - start
            )
            if ticket is not None:
                ticket.finish(FEATURE_NAMES[feature], measured)

    async def _classify(
        self,
        image: common_pb2.Image,
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: gateway_pb2.AnalyzeResponse,
    ) -> None:
        reply = await self.call(
            "classify",
            "Classify",
            classify_pb2.ClassifyRequest(image=image, top_k=options.classify.top_k),
            timeout_s,
        )
        response.classify.CopyFrom(reply)
        response.tags.extend(reply.tags)

    async def _ocr(
        self,
        image: common_pb2.Image,
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: gateway_pb2.AnalyzeResponse,
    ) -> None:
        request = ocr_pb2.RecognizeRequest(
            image=image, max_lines=options.ocr.max_lines, min_confidence=options.ocr.min_confidence
        )
        reply = await self.call("ocr", "Recognize", request, timeout_s)
        response.ocr.CopyFrom(reply)
        response.tags.extend(text_tags(reply))

    async def _face(
        self,
        image: common_pb2.Image,
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float | None,
        response: gateway_pb2.AnalyzeResponse,
    ) -> None:
        request = face_pb2.DetectRequest(
            image=image, max_faces=options.face.max_faces, min_face_size=options.face.min_face_size
        )
        reply = await self.call("face", "Detect", request, timeout_s)
        response.face.CopyFrom(reply)
        response.tags.extend(reply.tags)

    async def hash_item(
        self,
        frames: list[common_pb2.Image],
        options: gateway_pb2.HashOptions,
        timeout_s: float | None,
        result: gateway_pb2.HashResult,
    ) -> None:
        """Encode one item (image or video frames); search its collection, then add it if asked."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        encoded = await self.call(
            "hash", "Encode", hash_pb2.EncodeRequest(frames=frames, bits=options.bits), left()
        )
        result.code.CopyFrom(encoded.code)
        if not options.collection:
            return
        search = hash_pb2.SearchRequest(
            collection=options.collection, code=encoded.code, k=options.k
        )
        if options.HasField("max_distance"):
            search.max_distance = options.max_distance
        try:
            found = await self.call("hash", "Search", search, left())
            result.near_duplicates.extend(found.matches)
        except grpc.aio.AioRpcError as exc:
            # A collection that does not exist yet simply has no duplicates.
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if options.add_id:
            await self.call(
                "hash",
                "Add",
                hash_pb2.AddRequest(
                    collection=options.collection, id=options.add_id, code=encoded.code
                ),
                left(),
            )
            result.added = True
