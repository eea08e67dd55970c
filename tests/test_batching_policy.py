"""Batching policy has one home: the model's repository config.yaml; services override
explicitly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.classify.config import ClassifyConfig
from services.common import config as cfgmod
from services.common.config import BatcherConfig, ConfigError, ModelConfig
from services.common.exports import ModelExport
from services.common.models import ServedModel
from services.common.repository import BatchingPolicy, load_entry
from services.common.runner import model_configs
from services.detect.config import DetectConfig
from services.face.config import FaceConfig
from services.hash.config import HashConfig
from services.ocr.config import OcrConfig
from visionmesh import models_build

# What every service ran before the policy moved into the repository (service defaults,
# clamped to the model): the move must not change one number.
EXPECTED = {
    "efficientnet_lite0": BatchingPolicy(32, 2000, 512, 1),
    "open_nsfw": BatchingPolicy(32, 2000, 512, 1),
    "mtcnn_pnet": BatchingPolicy(8, 500, 512, 1),
    "mtcnn_rnet": BatchingPolicy(256, 2000, 512, 1),
    "mtcnn_onet": BatchingPolicy(128, 2000, 512, 1),
    "face_age": BatchingPolicy(64, 2000, 512, 1),
    "face_gender": BatchingPolicy(64, 2000, 512, 1),
    "face_emotion": BatchingPolicy(64, 2000, 512, 1),
    "ppocr_det": BatchingPolicy(4, 1000, 512, 1),
    "ppocr_cls": BatchingPolicy(64, 2000, 512, 1),
    "ppocr_rec": BatchingPolicy(32, 2000, 512, 1),
    "face_retinaface": BatchingPolicy(16, 2000, 512, 1),
    "person_ssdlite": BatchingPolicy(16, 2000, 512, 1),
    "pose_landmark_full": BatchingPolicy(16, 2000, 512, 1),
}
# Deliberate service-side changes made since (the service's config.py says why).
SERVICE_OVERRIDES: dict[str, dict[str, int]] = {
    **{name: {"max_queue_delay_us": 0} for name in ("face_age", "face_gender", "face_emotion")},
    # Measured on CPU: these cost more per image in larger batches (services/detect/config,
    # services/face/config).
    "face_retinaface": {"max_queue_delay_us": 0, "max_batch_size": 2},
    **{name: {"max_batch_size": 2} for name in ("person_ssdlite", "pose_landmark_full")},
}


@pytest.mark.parametrize(
    "config_cls", [ClassifyConfig, OcrConfig, FaceConfig, HashConfig, DetectConfig]
)
def test_default_service_configs_run_the_repository_policies(config_cls: type) -> None:
    for model in model_configs(config_cls()):
        policy = load_entry(model.name, model.version).batching_policy(model.batcher)
        expected = dataclasses.replace(
            EXPECTED[model.name], **SERVICE_OVERRIDES.get(model.name, {})
        )
        assert policy == expected, model.name


def test_served_model_takes_the_repository_policy_and_explicit_overrides() -> None:
    assert ServedModel(ModelConfig(name="mtcnn_pnet")).batching == EXPECTED["mtcnn_pnet"]
    served = ServedModel(
        ModelConfig(name="open_nsfw", batcher=BatcherConfig(max_batch_size=16, instances=2))
    )
    assert served.batching == BatchingPolicy(16, 2000, 512, 2)
    assert served.batcher.config == served.batching


def test_an_override_the_model_cannot_run_is_an_error_not_a_clamp() -> None:
    engine_max = load_entry("open_nsfw").max_batch_size
    with pytest.raises(
        ConfigError, match=f"open_nsfw: batching max_batch_size 128 .* {engine_max}"
    ):
        ServedModel(ModelConfig(name="open_nsfw", batcher=BatcherConfig(max_batch_size=128)))
    with pytest.raises(ConfigError, match="max_queue_size must be >= 1"):
        ServedModel(ModelConfig(name="open_nsfw", batcher=BatcherConfig(max_queue_size=0)))


def test_overrides_parse_from_flags_and_environment() -> None:
    cfg = cfgmod.load(
        ClassifyConfig,
        environ={"VISIONMESH_SAFETY_MODEL__BATCHER__INSTANCES": "2"},
        assignments=["classifier.batcher.max_batch_size=16"],
    )
    assert cfg.classifier.batcher == BatcherConfig(max_batch_size=16)
    assert cfg.safety_model.batcher == BatcherConfig(instances=2)
    with pytest.raises(ConfigError, match="is not a int"):
        cfgmod.load(ClassifyConfig, assignments=["classifier.batcher.max_batch_size=many"])


def test_build_writes_the_policy_and_rewrites_it_without_re_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[Path] = []

    def build(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        exported.append(folder)
        (folder / "weights.bin").write_bytes(b"\0" * 16)
        spec = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
        return {"inputs": spec, "outputs": spec, "max_batch_size": 16}, {"sources": []}

    def run(policy: BatchingPolicy) -> dict[str, Any]:
        toy = ModelExport("toy", 1, 1, build, policy)
        monkeypatch.setattr(models_build, "all_exports", lambda: [toy])
        models_build.build(tmp_path)
        return dict(yaml.safe_load((tmp_path / "toy" / "1" / "config.yaml").read_text()))

    assert run(BatchingPolicy(8))["dynamic_batching"]["max_batch_size"] == 8
    assert run(BatchingPolicy(16, 100))["dynamic_batching"] == {
        "max_batch_size": 16,
        "max_queue_delay_us": 100,
        "max_queue_size": 512,
        "instances": 1,
    }
    assert len(exported) == 1, "a policy change must not re-export the model"
    assert load_entry("toy", 1, tmp_path).batching == BatchingPolicy(16, 100)
    with pytest.raises(ConfigError, match="toy: batching max_batch_size 32 is over the 16"):
        run(BatchingPolicy(32))
