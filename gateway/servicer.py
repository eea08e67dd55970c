"""GatewayService: validate once, fan out, merge — for images, batches and videos."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np

from gateway import video, video_merge
from gateway.admission import Admission, Ticket
from gateway.cache import ResultCache
from gateway.config import GatewayConfig
from gateway.discovery import Resolver
from gateway.fanout import FanOut, feature_error
from gateway.merge import above_floors, link_people, ranked, rescale
from gateway.probe import ProbedImage, probe
from gateway.resilience import HealthProber, InFlightLimiter
from gateway.upload import UploadLimits, UploadReceiver
from services.common.errors import InvalidInput, Overloaded, retry_after_metadata
from services.common.images import DecodedImage, ImageLimits, fit_within
from services.common.protos import decode_image, rgb_to_image
from services.common.rpc import grpc_method, status_code
from visionmesh import features as feature_table
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

# Features over a whole clip (the video hash code) need only the classifier's 224 px:
# their frames travel small.
_CLIP_FRAME_SIDE = 512


def requested_features(features: Sequence[int]) -> list[int]:
    if not features:
        return [spec.enum for spec in feature_table.all_features()]
    unknown = [f for f in features if feature_table.by_enum(f) is None]
    if unknown:
        known = ", ".join(spec.enum_name for spec in feature_table.all_features())
        raise InvalidInput(f"unknown feature value(s) {unknown}; use {known}")
    return sorted(set(features), key=list(features).index)


def _spec(feature: int) -> feature_table.FeatureSpec:
    spec = feature_table.by_enum(feature)
    if spec is None:  # requested_features() let through only known values
        raise InvalidInput(f"unknown feature value {feature}")
    return spec


def _service(feature: int) -> str:
    return _spec(feature).service


def _hint_retry(context: grpc.aio.ServicerContext, ticket: Ticket) -> None:
    """A partly refused request still answers OK; its trailing metadata says when to retry the
    rest."""
    if ticket.retry_after_s is not None:
        context.set_trailing_metadata(retry_after_metadata(Overloaded("", ticket.retry_after_s)))


def _encoded(image: common_pb2.Image) -> bytes | None:
    return image.encoded if image.WhichOneof("source") == "encoded" else None


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, config: GatewayConfig, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.fanout = FanOut(resolver, config)
        self.cache = ResultCache(config.cache_max_bytes, config.cache_ttl_s)
        self.limiter = InFlightLimiter(config.max_in_flight)
        self.admission = Admission(
            feature_table.names(),
            headroom=config.admission_headroom,
            partial=config.admission_partial,
        )
        self.prober = HealthProber(
            resolver.endpoints,
            period_s=config.health_period_s,
            recovering_period_s=config.health_recovering_period_s,
            timeout_s=config.health_timeout_s,
            down_after=config.health_down_after,
        )
        self.uploads = UploadReceiver(
            UploadLimits(
                max_bytes=config.video_max_bytes,
                max_in_progress=config.upload_max_in_progress,
                idle_timeout_s=config.upload_idle_timeout_s,
                spill_bytes=config.upload_spill_bytes,
                spill_dir=config.upload_spill_dir,
            )
        )
        self.image_limits = ImageLimits.from_config(config.images)
        self.video_limits = video.VideoLimits(max_bytes=config.video_max_bytes)

    async def start(self) -> None:
        await self.resolver.start()
        self.prober.start()

    async def close(self) -> None:
        await self.prober.close()
        await self.resolver.close()

    def _admit(self, weights: dict[int, int], timeout_s: float) -> Ticket:
        """Admission for ``weights`` (feature -> calls) within ``timeout_s``; raises
        ``Overloaded``."""
        return self.admission.admit({_service(f): w for f, w in weights.items()}, timeout_s)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        budget = self.config.default_deadline_s if remaining is None else remaining
        return max(0.0, budget * self.config.feature_deadline_fraction)

    async def _validate(self, image: common_pb2.Image) -> DecodedImage | ProbedImage:
        """Header-checked bytes when they can travel as they came, else the decoded pixels."""
        if self.config.validation == "header" and image.WhichOneof("source") == "encoded":
            probed = probe(image.encoded, self.image_limits)
            if (
                max(probed.width, probed.height) <= self.config.fanout_max_side
                and len(image.encoded) < probed.width * probed.height * 3
            ):
                return probed
        return await self._decode(image)

    async def _decode(self, image: common_pb2.Image) -> DecodedImage:
        # The cache key needs the pixels' digest, raw ones too.
        return await decode_image(image, self.image_limits, digest_raw=True)

    def _cache_key(
        self,
        decoded: DecodedImage | ProbedImage,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
    ) -> str | None:
        if options.no_cache or any(
            spec.side_effects is not None and spec.side_effects(options)
            for spec in map(feature_table.by_enum, features)
            if spec is not None
        ):
            return None  # e.g. adds to a collection: never answered from the cache
        opts = gateway_pb2.AnalyzeOptions()
        opts.CopyFrom(options)
        return (
            f"{decoded.sha256}:{decoded.width}x{decoded.height}:"
            f"{','.join(map(str, sorted(features)))}:"
            f"{opts.SerializeToString(deterministic=True).hex()}"
        )

    async def analyze_decoded(
        self,
        decoded: DecodedImage | ProbedImage,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
        encoded: bytes | None = None,
        ticket: Ticket | None = None,
    ) -> gateway_pb2.AnalyzeResponse:
        key = self._cache_key(decoded, features, options)
        if key is not None and (hit := self.cache.get(key)) is not None:
            cached = gateway_pb2.AnalyzeResponse.FromString(hit)
            cached.cached = True
            return cached
        if isinstance(decoded, DecodedImage):
            response = await self.analyze_pixels(
                decoded.rgb, features, options, timeout_s, encoded, ticket
            )
        else:
            assert encoded is not None
            response = await self.analyze_encoded(encoded, features, options, timeout_s, ticket)
        response.image.CopyFrom(
            common_pb2.ImageInfo(
                width=decoded.width,
                height=decoded.height,
                format=decoded.format,
                sha256=decoded.sha256,
            )
        )
        if key is not None and not response.errors:
            self.cache.put(key, response.SerializeToString())
        return response

    async def analyze_pixels(
        self,
        rgb: np.ndarray,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
        encoded: bytes | None = None,
        ticket: Ticket | None = None,
    ) -> gateway_pb2.AnalyzeResponse:
        """Fan ``rgb`` out; ``encoded`` is the validated original, forwarded instead when no resize
        was needed.

        An encoded image is usually ~10x smaller than its pixels: on loopback a
        400 KB raw message costs more than the service's ~1 ms decode of the
        JPEG (measured), and across a network far more. Services decode with the
        same validated path (EXIF, modes), so coordinates agree either way.
        """
        if max(rgb.shape[:2]) > self.config.fanout_max_side:
            small, scale = await asyncio.to_thread(fit_within, rgb, self.config.fanout_max_side)
            image = rgb_to_image(small)
        else:
            scale = 1.0
            image = (
                common_pb2.Image(encoded=encoded)
                if encoded is not None and len(encoded) < rgb.nbytes
                else rgb_to_image(rgb)
            )
        response = gateway_pb2.AnalyzeResponse()
        await self.fanout.run_features(image, features, options, timeout_s, response, ticket)
        self._finish(response, options, scale)
        return response

    async def analyze_encoded(
        self,
        encoded: bytes,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
        ticket: Ticket | None = None,
    ) -> gateway_pb2.AnalyzeResponse:
        """Header-checked bytes straight to the services, whose decode validates the pixels.

        When no feature answered and some said INVALID_ARGUMENT, the image itself is bad
        (corrupt, truncated): the call fails with the service's reason, as a gateway
        decode would have.
        """
        response = gateway_pb2.AnalyzeResponse()
        await self.fanout.run_features(
            common_pb2.Image(encoded=encoded), features, options, timeout_s, response, ticket
        )
        invalid = [e for e in response.errors if e.code == "INVALID_ARGUMENT"]
        if invalid and len(response.errors) == len(features):
            raise InvalidInput(invalid[0].message)
        self._finish(response, options, 1.0)
        return response

    async def analyze_frames(
        self,
        frames: list[np.ndarray],
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
    ) -> list[gateway_pb2.AnalyzeResponse]:
        """A video's sampled frames: each feature gets all of them in one call where it can."""
        if not frames or not features:
            return []
        fitted = await asyncio.to_thread(
            lambda: [fit_within(rgb, self.config.fanout_max_side) for rgb in frames]
        )
        responses = [gateway_pb2.AnalyzeResponse() for _ in frames]
        await self.fanout.run_features_on_frames(
            [rgb_to_image(small) for small, _ in fitted],
            features,
            options,
            timeout_s,
            responses,
            batch_calls=self.config.video_batch_calls,
        )
        for response, (_, scale) in zip(responses, fitted, strict=True):
            self._finish(response, options, scale)
        return responses

    def _finish(
        self,
        response: gateway_pb2.AnalyzeResponse,
        options: gateway_pb2.AnalyzeOptions,
        scale: float,
    ) -> None:
        """Back to the client's pixels, people linked to faces, one ranked tag list."""
        rescale(response, 1.0 / scale)
        link_people(response)
        merged = ranked(response.tags)
        if not options.all_tag_scores:
            merged = above_floors(merged, self.config.tag_floors)
        del response.tags[:]
        response.tags.extend(merged)

    @grpc_method
    async def Analyze(
        self, request: gateway_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        async with self.limiter:
            features = requested_features(request.features)
            timeout_s = self._timeout(context)
            # Admitted (or refused) before any decoding: a refusal costs next to nothing.
            with self._admit(dict.fromkeys(features, 1), timeout_s) as ticket:
                _hint_retry(context, ticket)
                decoded = await self._validate(request.image)
                return await self.analyze_decoded(
                    decoded, features, request.options, timeout_s, _encoded(request.image), ticket
                )

    async def _batch_item(
        self,
        index: int,
        image: common_pb2.Image,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
        gate: asyncio.Semaphore,
    ) -> gateway_pb2.BatchItem:
        async with gate:
            try:
                with self._admit(dict.fromkeys(features, 1), timeout_s) as ticket:
                    decoded = await self._validate(image)
                    response = await self.analyze_decoded(
                        decoded, features, options, timeout_s, _encoded(image), ticket
                    )
                return gateway_pb2.BatchItem(index=index, response=response)
            except (InvalidInput, Overloaded) as exc:
                return gateway_pb2.BatchItem(
                    index=index,
                    error=gateway_pb2.ItemError(code=exc.code.name, message=exc.message),
                )

    def _batch_tasks(
        self,
        images: Sequence[common_pb2.Image],
        features: Sequence[int],
        options: gateway_pb2.AnalyzeOptions,
        context: grpc.aio.ServicerContext,
    ) -> list[asyncio.Task[gateway_pb2.BatchItem]]:
        if not images:
            raise InvalidInput("batch has no images")
        if len(images) > self.config.max_batch_images:
            raise InvalidInput(
                f"batch has {len(images)} images: over the limit of {self.config.max_batch_images}"
            )
        wanted = requested_features(features)
        gate = asyncio.Semaphore(self.config.batch_concurrency)
        timeout_s = self._timeout(context)
        return [
            asyncio.create_task(self._batch_item(i, img, wanted, options, timeout_s, gate))
            for i, img in enumerate(images)
        ]

    @grpc_method
    async def AnalyzeBatch(
        self, request: gateway_pb2.AnalyzeBatchRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AnalyzeBatchResponse:
        async with self.limiter:
            items = await asyncio.gather(
                *self._batch_tasks(request.images, request.features, request.options, context)
            )
            return gateway_pb2.AnalyzeBatchResponse(items=items)

    async def AnalyzeBatchStream(
        self, request: gateway_pb2.AnalyzeBatchStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.AnalyzeBatchStreamResponse]:
        try:
            async with self.limiter:
                tasks = self._batch_tasks(
                    request.images, request.features, request.options, context
                )
                try:
                    for done in asyncio.as_completed(tasks):
                        yield gateway_pb2.AnalyzeBatchStreamResponse(item=await done)
                finally:
                    for task in tasks:
                        task.cancel()
        except InvalidInput as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception as exc:  # the rpc must end with a status, not a hang
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("AnalyzeBatchStream failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

    @grpc_method
    async def AnalyzeVideo(
        self,
        request_iterator: AsyncIterator[gateway_pb2.AnalyzeVideoRequest],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.AnalyzeVideoResponse:
        # Receiving has its own budget; an analysis slot is taken only once the clip is here.
        upload = await self.uploads.receive(request_iterator)
        try:
            header = upload.header
            features = requested_features(header.features)
            wanted_frames = header.num_frames or self.config.video_frames
            if not 1 <= wanted_frames <= self.config.video_max_frames:
                raise InvalidInput(
                    f"num_frames must be between 1 and {self.config.video_max_frames}, "
                    f"got {wanted_frames}"
                )
            async with self.limiter:
                clip = await asyncio.to_thread(
                    video.decode_keyframes, upload.file, wanted_frames, self.video_limits
                )
                timeout_s = self._timeout(context)
                frames = len(clip.frames)
                weights = {f: frames if _spec(f).per_frame else 1 for f in features}
                with self._admit(weights, timeout_s) as ticket:
                    _hint_retry(context, ticket)
                    admitted = [f for f in features if _service(f) not in ticket.refused]
                    response = await self._analyze_clip(clip, admitted, header.options, timeout_s)
                    failed = {e.feature for e in response.errors}
                    for feature in admitted:
                        ticket.finish(_service(feature), measured=feature not in failed)
                    for feature in features:
                        if (refusal := ticket.refused.get(_service(feature))) is not None:
                            response.errors.append(feature_error(feature, refusal))
                    return response
        finally:
            upload.close()

    async def _analyze_clip(
        self,
        clip: video.DecodedVideo,
        features: list[int],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
    ) -> gateway_pb2.AnalyzeVideoResponse:
        specs = [s for s in map(feature_table.by_enum, features) if s is not None]
        per_frame = [s.enum for s in specs if s.per_frame]
        # Frames keep every score so the clip's consensus sees them; floors apply at the end.
        frame_options = gateway_pb2.AnalyzeOptions()
        frame_options.CopyFrom(options)
        frame_options.all_tag_scores = True
        whole_clip = gateway_pb2.AnalyzeVideoResponse()
        # Whole-clip features (one call with every frame) run beside the per-frame ones, as
        # an image's features do: run after them, their call would add its latency to the clip.
        frame_results, _ = await asyncio.gather(
            self.analyze_frames(
                [frame.rgb for frame in clip.frames], per_frame, frame_options, timeout_s
            ),
            self._analyze_whole_clip(
                clip, [s for s in specs if not s.per_frame], options, timeout_s, whole_clip
            ),
        )
        timed = [
            (frame.timestamp_s, result)
            for frame, result in zip(clip.frames, frame_results, strict=False)
        ]
        response = gateway_pb2.AnalyzeVideoResponse(
            video=common_pb2.VideoInfo(
                duration_s=clip.duration_s,
                width=clip.width,
                height=clip.height,
                codec=clip.codec,
                fps=clip.fps,
                keyframes_decoded=clip.keyframes_decoded,
                frames_analyzed=len(clip.frames),
            )
        )
        if timed:
            consensus = video_merge.consensus_tags(timed)
            if not options.all_tag_scores:
                consensus = above_floors(consensus, self.config.tag_floors)
                for _, frame_result in timed:
                    kept = above_floors(frame_result.tags, self.config.tag_floors)
                    del frame_result.tags[:]
                    frame_result.tags.extend(kept)
            response.tags.extend(consensus)
            response.people_count = video_merge.people_count(timed)
            response.text_lines.extend(video_merge.dedupe_text_lines(timed))
            response.frames.extend(video_merge.frame_results(timed))
            seen: set[tuple[int, str]] = set()
            for _, result in timed:
                for err in result.errors:
                    if (err.feature, err.code) not in seen:
                        seen.add((err.feature, err.code))
                        response.errors.append(err)
        # The per-frame errors come first, then the whole-clip features' results and errors.
        response.MergeFrom(whole_clip)
        return response

    async def _analyze_whole_clip(
        self,
        clip: video.DecodedVideo,
        specs: list[feature_table.FeatureSpec],
        options: gateway_pb2.AnalyzeOptions,
        timeout_s: float,
        response: gateway_pb2.AnalyzeVideoResponse,
    ) -> None:
        """Features that answer for the clip as a whole, each one call with every frame."""
        if not specs:
            return
        frames = await asyncio.to_thread(
            lambda: [rgb_to_image(fit_within(f.rgb, _CLIP_FRAME_SIDE)[0]) for f in clip.frames]
        )

        async def one(spec: feature_table.FeatureSpec) -> None:
            try:
                await self.fanout.run_feature(spec, frames, options, timeout_s, response)
            except Exception as exc:
                response.errors.append(feature_error(spec.enum, exc))

        await asyncio.gather(*(one(spec) for spec in specs))
