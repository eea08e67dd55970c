"""The feature table: everything the mesh knows about a feature, written once.

One ``FeatureSpec`` per feature says which proto enum value selects it, which
service answers it (name, gRPC stub and method, default port, the module that
runs it), how the gateway builds its request from the validated image and the
``AnalyzeOptions``, where its answer goes in the ``AnalyzeResponse`` and how it
joins the merged tag list, and which repository models it needs.

Fan-out, merge, the gateway's default addresses, the registry, the local mesh,
the client, the model build and the consistency tests all read this table, so
adding a feature is one ``register(FeatureSpec(...))`` here plus one
``services/<name>/`` folder (see docs/architecture.md, "Adding a feature").
Consumers look the table up at call time, never copy it at import, so a spec
registered later (a test's dummy feature) is seen everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from visionmesh.v1 import (
    classify_pb2,
    classify_pb2_grpc,
    common_pb2,
    detect_pb2,
    detect_pb2_grpc,
    face_pb2,
    face_pb2_grpc,
    gateway_pb2,
    hash_pb2,
    hash_pb2_grpc,
    ocr_pb2,
    ocr_pb2_grpc,
)

# (method, request) -> reply, bound to the feature's service and deadline.
Call = Callable[[str, Message], Awaitable[Any]]


@dataclass(frozen=True)
class FeatureSpec:
    # Feature and service name: CLI (--features), registry, services/<name>/, metrics labels.
    name: str
    # common.v1.Feature value that asks for it in AnalyzeRequest.features.
    enum: int
    # gRPC service (in visionmesh.v1) the service hosts, its stub class and the fanned-out method.
    grpc_service: str
    stub: Callable[[Any], Any]
    method: str
    default_port: int
    # (validated images, options) -> the request of ``method``. One image per call, or every
    # sampled frame of a video for a feature with ``per_frame=False``.
    request: Callable[[Sequence[common_pb2.Image], gateway_pb2.AnalyzeOptions], Message]
    # Field of AnalyzeResponse (and AnalyzeVideoResponse when not per frame) holding the result.
    result_field: str
    # Merge hook: copy ``reply`` into the result field message; return the tags it adds to the
    # merged, ranked list.
    merge: Callable[[Any, Any], Iterable[common_pb2.Tag]]
    # Repository models the service loads with its default configuration (docs, k8s init).
    models: tuple[str, ...]
    # Module listing the feature's ``ModelExport``s (``MODELS``).
    export_module: str
    # Module holding the service's ``DEFINITION`` (``python -m`` runs its package).
    service_module: str
    # Scale every coordinate of the result by a factor, in place (service px -> client px).
    rescale: Callable[[Any, float], None] | None = None
    # Further calls after ``method`` (e.g. search / add to a collection).
    follow_up: Callable[[Call, Any, gateway_pb2.AnalyzeOptions, Any], Awaitable[None]] | None = None
    # True when the options ask for a side effect, so the answer must not be cached.
    side_effects: Callable[[gateway_pb2.AnalyzeOptions], bool] | None = None
    # Videos: analysed on every sampled frame (True) or once over all frames (False).
    per_frame: bool = True
    # Per-frame features: the method taking every frame's request in one call
    # (``<Method>BatchRequest{requests}`` -> ``<Method>BatchResponse{responses}``, same order),
    # and how to build its request from the single-image requests. None: one call per frame.
    batch_method: str | None = None
    batch_request: Callable[[list[Message]], Message] | None = None

    @property
    def service(self) -> str:
        """Name of the service (registry, discovery, Kubernetes) that answers the feature."""
        return self.name

    @property
    def enum_name(self) -> str:
        return f"FEATURE_{self.name.upper()}"


_TABLE: dict[str, FeatureSpec] = {}


def register(spec: FeatureSpec) -> FeatureSpec:
    """Add ``spec`` to the table (response order = registration order)."""
    for other in _TABLE.values():
        if other.name != spec.name and (
            other.enum == spec.enum or other.default_port == spec.default_port
        ):
            raise ValueError(f"feature {spec.name!r} reuses the enum or port of {other.name!r}")
    _TABLE[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _TABLE.pop(name, None)


def all_features() -> list[FeatureSpec]:
    return list(_TABLE.values())


def names() -> list[str]:
    return list(_TABLE)


def by_name(name: str) -> FeatureSpec:
    return _TABLE[name]


def by_enum(value: int) -> FeatureSpec | None:
    return next((s for s in _TABLE.values() if s.enum == value), None)


# Merge and rescale hooks.


def scale_box(box: common_pb2.Box, factor: float) -> None:
    box.x_min *= factor
    box.y_min *= factor
    box.x_max *= factor
    box.y_max *= factor


def scale_points(points: Iterable[common_pb2.Point], factor: float) -> None:
    for p in points:
        p.x *= factor
        p.y *= factor


def _copy_with_tags(reply: Any, result: Any) -> Iterable[common_pb2.Tag]:
    result.CopyFrom(reply)
    return list(reply.tags)


def _rescale_classify(result: classify_pb2.ClassifyResponse, factor: float) -> None:
    if result.safety.HasField("region"):
        scale_box(result.safety.region, factor)


def text_tags(ocr: ocr_pb2.RecognizeResponse) -> list[common_pb2.Tag]:
    """A ``text/present`` tag when OCR found lines (score: the best line's confidence)."""
    if not ocr.lines:
        return []
    best = max(line.confidence for line in ocr.lines)
    return [
        common_pb2.Tag(
            name="text/present",
            score=best,
            source="ocr",
            display_name_en="contains text",
            display_name_zh="含文字",
        )
    ]


def _merge_ocr(reply: ocr_pb2.RecognizeResponse, result: Any) -> list[common_pb2.Tag]:
    result.CopyFrom(reply)
    return text_tags(reply)


def _rescale_ocr(result: ocr_pb2.RecognizeResponse, factor: float) -> None:
    for line in result.lines:
        scale_points(line.polygon.points, factor)


def _rescale_face(result: face_pb2.DetectResponse, factor: float) -> None:
    for face in result.faces:
        scale_box(face.box, factor)
        scale_points(face.landmarks, factor)


def _merge_hash(reply: hash_pb2.EncodeResponse, result: gateway_pb2.HashResult) -> list[Any]:
    result.code.CopyFrom(reply.code)
    if reply.HasField("exact_code"):
        result.exact_code.CopyFrom(reply.exact_code)
    return []


async def _hash_follow_up(
    call: Call,
    encoded: hash_pb2.EncodeResponse,
    options: gateway_pb2.AnalyzeOptions,
    result: gateway_pb2.HashResult,
) -> None:
    """Search the item's collection for near-duplicates, then add the item if asked."""
    opts = options.hash
    if not opts.collection:
        return
    # The exact-copy tier's code (when Encode gave one) travels with the deep code.
    exact = encoded.exact_code if encoded.HasField("exact_code") else None
    search = hash_pb2.SearchRequest(
        collection=opts.collection, code=encoded.code, exact_code=exact, k=opts.k
    )
    if opts.HasField("max_distance"):
        search.max_distance = opts.max_distance
    try:
        found = await call("Search", search)
        result.near_duplicates.extend(found.matches)
    except grpc.aio.AioRpcError as exc:
        # A collection that does not exist yet simply has no duplicates.
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    if opts.add_id:
        await call(
            "Add",
            hash_pb2.AddRequest(
                collection=opts.collection, id=opts.add_id, code=encoded.code, exact_code=exact
            ),
        )
        result.added = True


CLASSIFY = register(
    FeatureSpec(
        name="classify",
        enum=common_pb2.FEATURE_CLASSIFY,
        grpc_service="ClassifyService",
        stub=classify_pb2_grpc.ClassifyServiceStub,
        method="Classify",
        default_port=50051,
        request=lambda images, o: classify_pb2.ClassifyRequest(
            image=images[0], top_k=o.classify.top_k
        ),
        result_field="classify",
        batch_method="ClassifyBatch",
        batch_request=lambda requests: classify_pb2.ClassifyBatchRequest(requests=requests),
        merge=_copy_with_tags,
        rescale=_rescale_classify,
        models=("efficientnet_lite0", "open_nsfw"),
        export_module="services.classify.export",
        service_module="services.classify.main",
    )
)
OCR = register(
    FeatureSpec(
        name="ocr",
        enum=common_pb2.FEATURE_OCR,
        grpc_service="OcrService",
        stub=ocr_pb2_grpc.OcrServiceStub,
        method="Recognize",
        default_port=50052,
        request=lambda images, o: ocr_pb2.RecognizeRequest(
            image=images[0], max_lines=o.ocr.max_lines, min_confidence=o.ocr.min_confidence
        ),
        result_field="ocr",
        batch_method="RecognizeBatch",
        batch_request=lambda requests: ocr_pb2.RecognizeBatchRequest(requests=requests),
        merge=_merge_ocr,
        rescale=_rescale_ocr,
        models=("ppocr_det", "ppocr_cls", "ppocr_rec"),
        export_module="services.ocr.export",
        service_module="services.ocr.main",
    )
)
FACE = register(
    FeatureSpec(
        name="face",
        enum=common_pb2.FEATURE_FACE,
        grpc_service="FaceService",
        stub=face_pb2_grpc.FaceServiceStub,
        method="Detect",
        default_port=50053,
        request=lambda images, o: face_pb2.DetectRequest(
            image=images[0], max_faces=o.face.max_faces, min_face_size=o.face.min_face_size
        ),
        result_field="face",
        merge=_copy_with_tags,
        rescale=_rescale_face,
        models=("face_retinaface", "face_age", "face_gender", "face_emotion"),
        export_module="services.face.export",
        service_module="services.face.main",
    )
)
HASH = register(
    FeatureSpec(
        name="hash",
        enum=common_pb2.FEATURE_HASH,
        grpc_service="HashService",
        stub=hash_pb2_grpc.HashServiceStub,
        method="Encode",
        default_port=50054,
        request=lambda images, o: hash_pb2.EncodeRequest(frames=images, bits=o.hash.bits),
        result_field="hash",
        merge=_merge_hash,
        follow_up=_hash_follow_up,
        side_effects=lambda o: bool(o.hash.add_id),
        models=("efficientnet_lite0", "hash_itq"),
        export_module="services.hash.export",
        service_module="services.hash.main",
        per_frame=False,
    )
)


def _rescale_detect(result: detect_pb2.DetectObjectsResponse, factor: float) -> None:
    for detection in result.detections:
        scale_box(detection.box, factor)
        for point in detection.keypoints:
            point.x *= factor
            point.y *= factor
    for tag in result.tags:
        if tag.HasField("box"):
            scale_box(tag.box, factor)


DETECT = register(
    FeatureSpec(
        name="detect",
        enum=common_pb2.FEATURE_DETECT,
        grpc_service="DetectionService",
        stub=detect_pb2_grpc.DetectionServiceStub,
        method="DetectObjects",
        default_port=50055,
        request=lambda images, o: detect_pb2.DetectObjectsRequest(
            image=images[0],
            min_score=o.detect.min_score,
            max_detections=o.detect.max_detections,
            no_pose=o.detect.no_pose,
            max_poses=o.detect.max_poses,
        ),
        result_field="detect",
        merge=_copy_with_tags,
        rescale=_rescale_detect,
        models=("person_ssdlite", "pose_landmark_full"),
        export_module="services.detect.export",
        service_module="services.detect.main",
    )
)


def markdown_table() -> str:
    """The services table of docs/operations.md (a test keeps the doc equal to this)."""
    rows = [
        "| service  | gRPC port | health service name              | models (in the "
        "image's repository)          |",
        "|----------|-----------|----------------------------------|---------------------------------------------|",
        "| gateway  | 50050     | `visionmesh.v1.GatewayService`   | "
        "none                                        |",
    ]
    for spec in all_features():
        health = f"`visionmesh.v1.{spec.grpc_service}`"
        models = ", ".join(f"`{m}`" for m in spec.models)
        rows.append(f"| {spec.name:<8} | {spec.default_port:<9} | {health:<32} | {models:<43} |")
    return "\n".join(rows)
