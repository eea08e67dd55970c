"""FaceService: RetinaFace (or MTCNN) detection, alignment, then age / gender / emotion heads
batched across calls."""

from __future__ import annotations

import grpc
import numpy as np

from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.protos import decode_image
from services.common.rpc import grpc_method, request_deadline
from services.face.config import FaceConfig
from services.face.pipeline import FacePipeline
from services.face.tags import face_tags
from visionmesh.v1 import face_pb2, face_pb2_grpc

# Smallest min_face_size a caller may ask for: RetinaFace's smallest prior is 16 px at stride 8.
MIN_FACE_FLOOR = 10.0


class FaceServicer(face_pb2_grpc.FaceServiceServicer):
    def __init__(self, config: FaceConfig) -> None:
        self.config = config
        # One served model (queue + batcher + engines) per network of the chosen detector
        # and the attribute heads, owned by the pipeline.
        self.pipeline = FacePipeline.served(config)
        self.image_limits = ImageLimits.from_config(config.images)

    async def start(self) -> None:
        await self.pipeline.start()

    async def close(self) -> None:
        await self.pipeline.close()

    def _limits(self, request: face_pb2.DetectRequest) -> tuple[float, int]:
        if request.max_faces < 0:
            raise InvalidInput(
                "max_faces must be >= 0 (0 = default "
                f"{self.config.detector.max_faces}), got {request.max_faces}"
            )
        size = request.min_face_size
        if not np.isfinite(size) or size < 0 or 0 < size < MIN_FACE_FLOOR:
            raise InvalidInput(
                "min_face_size must be 0 (default) or a finite value >= "
                f"{MIN_FACE_FLOOR:g} px, got {size}"
            )
        return (
            size or self.config.detector.min_face_size,
            request.max_faces or self.config.detector.max_faces,
        )

    @grpc_method
    async def Detect(
        self, request: face_pb2.DetectRequest, context: grpc.aio.ServicerContext
    ) -> face_pb2.DetectResponse:
        min_face, max_faces = self._limits(request)
        rgb = (await decode_image(request.image, self.image_limits)).rgb
        faces = await self.pipeline.analyse(rgb, min_face, max_faces, request_deadline(context))
        return face_pb2.DetectResponse(faces=faces, tags=face_tags(faces, self.config.tags))
