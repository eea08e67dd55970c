"""The face pipeline: detect, align, run the attribute heads, assemble ``Face`` messages.

It runs on anything shaped like ``ServedModel`` (an ``entry`` and an async
``infer``): the service passes batched served models; the benchmark passes
bare ONNX Runtime sessions to measure what batching and serving add.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.common.config import ConfigError
from services.common.deadline import NO_DEADLINE, Deadline
from services.common.models import ServedModel
from services.common.pipeline import Pipeline
from services.common.protos import box
from services.face import attributes
from services.face.align import extract_chip, face_frame
from services.face.config import FaceConfig
from services.face.detector import (
    Detections,
    Detector,
    Model,
    MtcnnDetector,
    RetinaFaceDetector,
)
from visionmesh.v1 import common_pb2, face_pb2

# The emotion net was trained on loose face boxes; this padding around dlib's frame matches them.
EMOTION_CHIP_PADDING = 0.25


DETECTOR_MODELS = {"retinaface": ("retinaface",), "mtcnn": ("pnet", "rnet", "onet")}


@dataclass
class FaceModels:
    age: Model
    gender: Model
    emotion: Model
    # Only the chosen detector's models are loaded (``DETECTOR_MODELS``).
    retinaface: Model | None = None
    pnet: Model | None = None
    rnet: Model | None = None
    onet: Model | None = None


def make_detector(models: FaceModels, config: FaceConfig) -> Detector:
    kind = config.detector.kind
    if kind == "retinaface" and models.retinaface is not None:
        return RetinaFaceDetector(models.retinaface, config.detector.retinaface)
    if kind == "mtcnn" and models.pnet and models.rnet and models.onet:
        return MtcnnDetector(models.pnet, models.rnet, models.onet, config.detector)
    raise ValueError(
        f"detector.kind must be one of {sorted(DETECTOR_MODELS)} with its models "
        f"given, got {kind!r}"
    )


@dataclass
class Chips:
    """Each face's chips (uint8) and the heads' input tensors made from them."""

    age: np.ndarray
    gender: np.ndarray
    emotion: np.ndarray
    inputs: dict[str, np.ndarray]


async def _run(model: Model, x: np.ndarray, deadline: Deadline) -> np.ndarray:
    """Single-input, single-output call by the names the repository entry declares."""
    out = await model.infer({model.entry.inputs[0].name: x}, deadline)
    return out[model.entry.outputs[0].name]


class FacePipeline(Pipeline):
    def __init__(
        self, models: FaceModels, config: FaceConfig, owned: Iterable[ServedModel] = ()
    ) -> None:
        super().__init__(owned)
        self.models = models
        self.config = config
        self.detector = make_detector(models, config)
        self.age_bins = np.asarray(models.age.entry.extra["age_bins"], np.float64)
        self.gender_labels = models.gender.entry.labels()
        self.emotion_labels = models.emotion.entry.labels()

    @classmethod
    def served(cls, config: FaceConfig) -> FacePipeline:
        """The pipeline on batched served models, one per network of the chosen detector
        and the attribute heads (owned: started and closed with the pipeline)."""
        if config.detector.kind not in DETECTOR_MODELS:
            raise ConfigError(
                f"detector.kind must be one of {sorted(DETECTOR_MODELS)}, got "
                f"{config.detector.kind!r}"
            )
        sources = {"age": config.age, "gender": config.gender, "emotion": config.emotion}
        sources["retinaface"] = config.retinaface
        sources.update(pnet=config.mtcnn.pnet, rnet=config.mtcnn.rnet, onet=config.mtcnn.onet)
        names = ("age", "gender", "emotion", *DETECTOR_MODELS[config.detector.kind])
        served = {name: ServedModel(sources[name]) for name in names}
        return cls(FaceModels(**served), config, owned=served.values())

    def _chips(self, rgb: np.ndarray, det: Detections) -> Chips:
        """All chips and head inputs in one go (one worker-thread hop per call)."""
        m = self.models
        age_pre, gender_pre, emo_pre = (
            m.age.entry.preprocessing,
            m.gender.entry.preprocessing,
            m.emotion.entry.preprocessing,
        )
        # One landmark fit per face; its three chips are scaled and shifted copies of it.
        frames = [face_frame(lm) for lm in det.landmarks]

        def cut(size: int, padding: float) -> np.ndarray:
            return np.stack(
                [
                    extract_chip(rgb, lm, size, padding, frame)
                    for lm, frame in zip(det.landmarks, frames, strict=True)
                ]
            )

        age = cut(int(age_pre["size"]), float(age_pre["chip_padding"]))
        gender = cut(int(gender_pre["size"]), float(gender_pre["chip_padding"]))
        emotion = cut(int(emo_pre["size"]), EMOTION_CHIP_PADDING)
        inputs = {
            "age": attributes.rgb_chips_to_tensor(age, age_pre["mean"], age_pre["scale"]),
            "gender": attributes.rgb_chips_to_tensor(
                gender, gender_pre["mean"], gender_pre["scale"]
            ),
            "emotion": attributes.grey_chips_to_tensor(emotion, emo_pre["mean"], emo_pre["scale"]),
        }
        return Chips(age, gender, emotion, inputs)

    async def analyse(
        self,
        rgb: np.ndarray,
        min_face: float,
        max_faces: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> list[face_pb2.Face]:
        """Every face of ``rgb`` with all its attributes."""
        det = await self.detector.detect(rgb, min_face, max_faces, deadline)
        if len(det) == 0:
            return []
        chips = await asyncio.to_thread(self._chips, rgb, det)
        m, x = self.models, chips.inputs
        # The three heads run concurrently; each batcher merges these faces with other calls' faces.
        age_p, gender_p, emo_p = await asyncio.gather(
            _run(m.age, x["age"], deadline),
            _run(m.gender, x["gender"], deadline),
            _run(m.emotion, x["emotion"], deadline),
        )
        return [self._face(det, i, chips, age_p[i], gender_p[i], emo_p[i]) for i in range(len(det))]

    def _face(
        self,
        det: Detections,
        i: int,
        chips: Chips,
        age_p: np.ndarray,
        gender_p: np.ndarray,
        emo_p: np.ndarray,
    ) -> face_pb2.Face:
        age = attributes.age_from_probabilities(age_p, self.age_bins)
        pose = attributes.pose_from_landmarks(det.landmarks[i])
        quality = attributes.face_quality(chips.age[i], self.config.quality)
        g, e = int(np.argmax(gender_p)), int(np.argmax(emo_p))
        return face_pb2.Face(
            box=box(*det.boxes[i]),
            score=float(det.scores[i]),
            landmarks=[common_pb2.Point(x=float(x), y=float(y)) for x, y in det.landmarks[i]],
            pose=face_pb2.Pose(roll=pose.roll, yaw=pose.yaw, pitch=pose.pitch),
            age=face_pb2.Age(years=age.years, low=age.low, high=age.high),
            gender=face_pb2.Gender(label=self.gender_labels[g], confidence=float(gender_p[g])),
            emotion=face_pb2.Emotion(
                dominant=self.emotion_labels[e],
                scores={lab: float(p) for lab, p in zip(self.emotion_labels, emo_p, strict=True)},
            ),
            quality=face_pb2.FaceQuality(
                blur=quality.blur,
                blurred=quality.blurred,
                exposure=quality.exposure,
                under_exposed=quality.under_exposed,
                over_exposed=quality.over_exposed,
            ),
        )
