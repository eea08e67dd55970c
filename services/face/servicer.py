"""FaceService: MTCNN detection, alignment, then age / gender / emotion heads batched across calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import numpy as np

from services.common.errors import InvalidInput, grpc_method
from services.common.models import ServedModel
from services.common.protos import box, image_to_rgb
from services.face import attributes
from services.face.align import extract_chip
from services.face.config import FaceConfig
from services.face.detector import Detections, MtcnnDetector
from services.face.tags import face_tags
from visionmesh.v1 import common_pb2, face_pb2, face_pb2_grpc

# Smallest min_face_size a caller may ask for: below it the pyramid upsamples a lot.
MIN_FACE_FLOOR = 10.0
# The emotion net was trained on loose face boxes; this padding around dlib's frame matches them.
EMOTION_CHIP_PADDING = 0.25


@dataclass
class Chips:
    age: np.ndarray
    gender: np.ndarray
    emotion: np.ndarray


class FaceServicer(face_pb2_grpc.FaceServiceServicer):
    def __init__(self, config: FaceConfig) -> None:
        self.config = config
        self.pnet, self.rnet, self.onet = ServedModel(config.pnet), ServedModel(config.rnet), ServedModel(config.onet)
        self.age, self.gender, self.emotion = ServedModel(config.age), ServedModel(config.gender), ServedModel(config.emotion)
        self.detector = MtcnnDetector(self.pnet, self.rnet, self.onet, config.detector)
        self.age_bins = np.asarray(self.age.entry.extra["age_bins"], np.float64)
        self.gender_labels = self.gender.entry.labels()
        self.emotion_labels = self.emotion.entry.labels()

    @property
    def models(self) -> list[ServedModel]:
        return [self.pnet, self.rnet, self.onet, self.age, self.gender, self.emotion]

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self.models))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.models))

    def _limits(self, request: face_pb2.DetectRequest) -> tuple[float, int]:
        if request.max_faces < 0:
            raise InvalidInput(f"max_faces must be >= 0 (0 = default {self.config.detector.max_faces}), got {request.max_faces}")
        if request.min_face_size < 0 or (0 < request.min_face_size < MIN_FACE_FLOOR) or not np.isfinite(request.min_face_size):
            raise InvalidInput(f"min_face_size must be 0 (default) or a finite value >= {MIN_FACE_FLOOR:g} px, got {request.min_face_size}")
        return request.min_face_size or self.config.detector.min_face_size, request.max_faces or self.config.detector.max_faces

    def _chips(self, rgb: np.ndarray, det: Detections) -> Chips:
        age_pre, gender_pre = self.age.entry.preprocessing, self.gender.entry.preprocessing
        emo_size = int(self.emotion.entry.preprocessing["size"])
        return Chips(
            age=np.stack([extract_chip(rgb, lm, int(age_pre["size"]), float(age_pre["chip_padding"])) for lm in det.landmarks]),
            gender=np.stack([extract_chip(rgb, lm, int(gender_pre["size"]), float(gender_pre["chip_padding"])) for lm in det.landmarks]),
            emotion=np.stack([extract_chip(rgb, lm, emo_size, EMOTION_CHIP_PADDING) for lm in det.landmarks]),
        )

    async def analyse(self, rgb: np.ndarray, min_face: float, max_faces: int, context: grpc.aio.ServicerContext | None = None) -> list[face_pb2.Face]:
        """Detect faces in ``rgb`` and fill every attribute (used by the RPC and the benchmark)."""
        det = await self.detector.detect(rgb, min_face, max_faces, context)
        if len(det) == 0:
            return []
        chips = await asyncio.to_thread(self._chips, rgb, det)
        age_pre, gender_pre, emo_pre = self.age.entry.preprocessing, self.gender.entry.preprocessing, self.emotion.entry.preprocessing
        age_in = attributes.rgb_chips_to_tensor(chips.age, age_pre["mean"], age_pre["scale"])
        gender_in = attributes.rgb_chips_to_tensor(chips.gender, gender_pre["mean"], gender_pre["scale"])
        emo_in = attributes.grey_chips_to_tensor(chips.emotion, emo_pre["mean"], emo_pre["scale"])
        age_out, gender_out, emo_out = await asyncio.gather(
            self.age.infer({self.age.entry.inputs[0].name: age_in}, context),
            self.gender.infer({self.gender.entry.inputs[0].name: gender_in}, context),
            self.emotion.infer({self.emotion.entry.inputs[0].name: emo_in}, context),
        )
        age_p = age_out[self.age.entry.outputs[0].name]
        gender_p = gender_out[self.gender.entry.outputs[0].name]
        emo_p = emo_out[self.emotion.entry.outputs[0].name]
        faces = []
        for i in range(len(det)):
            age = attributes.age_from_probabilities(age_p[i], self.age_bins)
            pose = attributes.pose_from_landmarks(det.landmarks[i])
            quality = attributes.face_quality(chips.age[i], self.config.quality)
            g = int(np.argmax(gender_p[i]))
            e = int(np.argmax(emo_p[i]))
            faces.append(
                face_pb2.Face(
                    box=box(*det.boxes[i]),
                    score=float(det.scores[i]),
                    landmarks=[common_pb2.Point(x=float(x), y=float(y)) for x, y in det.landmarks[i]],
                    pose=face_pb2.Pose(roll=pose.roll, yaw=pose.yaw, pitch=pose.pitch),
                    age=face_pb2.Age(years=age.years, low=age.low, high=age.high),
                    gender=face_pb2.Gender(label=self.gender_labels[g], confidence=float(gender_p[i, g])),
                    emotion=face_pb2.Emotion(dominant=self.emotion_labels[e], scores={lab: float(p) for lab, p in zip(self.emotion_labels, emo_p[i], strict=True)}),
                    quality=face_pb2.FaceQuality(blur=quality.blur, blurred=quality.blurred, exposure=quality.exposure, under_exposed=quality.under_exposed, over_exposed=quality.over_exposed),
                )
            )
        return faces

    @grpc_method
    async def Detect(self, request: face_pb2.DetectRequest, context: grpc.aio.ServicerContext) -> face_pb2.DetectResponse:
        min_face, max_faces = self._limits(request)
        rgb = image_to_rgb(request.image)
        faces = await self.analyse(rgb, min_face, max_faces, context)
        return face_pb2.DetectResponse(faces=faces, tags=face_tags(faces, self.config.tags))
