"""Every service has the same shape: a Pipeline that owns its models, one decode path."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from services.classify.config import ClassifyConfig
from services.common import protos
from services.common.config import ImageLimitsConfig, ModelConfig
from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.pipeline import Pipeline
from services.common.protos import decode_image, rgb_to_image
from services.detect.config import DetectConfig
from services.detect.pipeline import DetectPipeline
from services.face.config import FaceConfig
from services.face.pipeline import FacePipeline
from services.hash.config import HashConfig
from services.hash.encoder import Encoder
from services.ocr.config import OcrConfig
from services.ocr.pipeline import OcrPipeline
from tests.support import encode
from visionmesh import features, registry
from visionmesh.v1 import common_pb2

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ImageLimits()


async def test_encoded_images_decode_off_the_event_loop(
    chelsea: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = protos.decode

    def spy(data: bytes, limits: ImageLimits, *rest: object) -> object:
        threads.append(threading.get_ident())
        return real(data, limits, *rest)

    monkeypatch.setattr(protos, "decode", spy)
    data = encode(chelsea)
    decoded = await decode_image(common_pb2.Image(encoded=data), LIMITS)
    assert threads and threads[0] != threading.get_ident()
    assert decoded.rgb.shape == chelsea.shape
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()


async def test_raw_images_are_checked_and_digested_only_when_asked() -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = rgb_to_image(rgb)
    plain = await decode_image(image, LIMITS)
    assert np.array_equal(plain.rgb, rgb) and plain.sha256 == "" and plain.format == "RAW"
    digested = await decode_image(image, LIMITS, digest_raw=True)
    assert digested.sha256 == hashlib.sha256(rgb.tobytes()).hexdigest()
    with pytest.raises(InvalidInput, match="no image"):
        await decode_image(common_pb2.Image(), LIMITS)


async def test_configured_limits_apply(chelsea: np.ndarray) -> None:
    small = ImageLimits.from_config(ImageLimitsConfig(max_bytes=1000, max_side=100))
    with pytest.raises(InvalidInput, match="1000-byte limit"):
        await decode_image(common_pb2.Image(encoded=encode(chelsea)), small)
    with pytest.raises(InvalidInput, match="100-pixel limit"):
        await decode_image(rgb_to_image(chelsea), small)


@pytest.mark.parametrize("name", features.names())
def test_every_service_reads_image_limits_from_its_config(name: str) -> None:
    assert registry.definition(name).config_cls().images == ImageLimitsConfig()


@pytest.mark.parametrize(
    "servicer",
    ["gateway/servicer.py", *(f"services/{name}/servicer.py" for name in features.names())],
)
def test_every_servicer_decodes_through_the_one_helper(servicer: str) -> None:
    source = (ROOT / servicer).read_text()
    assert "decode_image(" in source or "decode_frames(" in source
    direct = re.findall(r"(?<![\w.])(?:decode|from_raw|image_to_rgb)\(", source)
    assert not direct, f"{servicer} decodes outside decode_image: {direct}"


def test_pipelines_own_their_served_models() -> None:
    owned = {
        "classify": [m.name for m in _classify().served_models],
        "ocr": [m.name for m in OcrPipeline(OcrConfig()).served_models],
        "face": [m.name for m in FacePipeline.served(FaceConfig()).served_models],
        "hash": [m.name for m in Encoder(HashConfig()).served_models],
        "detect": [m.name for m in DetectPipeline.served(DetectConfig()).served_models],
    }
    assert owned == {
        "classify": ["efficientnet_lite0", "open_nsfw"],
        "ocr": ["ppocr_det", "ppocr_cls", "ppocr_rec"],
        "face": ["face_age", "face_gender", "face_emotion", "face_retinaface"],
        "hash": ["efficientnet_lite0"],
        "detect": ["person_ssdlite", "pose_landmark_full"],
    }


def _classify() -> Pipeline:
    from services.classify.pipeline import ClassifyPipeline

    return ClassifyPipeline(ClassifyConfig())


async def test_a_pipeline_starts_and_closes_what_it_serves() -> None:
    pipeline = Pipeline()
    model = pipeline.serve(ModelConfig(name="ppocr_cls"))
    await pipeline.start()
    try:
        x = np.zeros((1, *model.entry.inputs[0].shape[1:]), np.float32)
        out = await model.infer({model.entry.inputs[0].name: x})
        assert next(iter(out.values())).shape[0] == 1
    finally:
        await pipeline.close()
    assert pipeline.served_models == [model]
