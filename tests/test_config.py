"""Configuration: defaults < YAML < environment < --set, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classify.config import ClassifyConfig
from services.common import config as cfgmod


def test_precedence(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "server:\n  port: 6000\n  log_level: DEBUG\nclassifier:\n  batcher:\n    "
        "max_batch_size: 16\n"
    )
    env = {
        "VISIONMESH_SERVER__PORT": "7000",
        "VISIONMESH_CLASSIFIER__ENGINE__THREADS": "2",
        "VISIONMESH_UNRELATED__X": "1",
    }
    cfg = cfgmod.load(
        ClassifyConfig,
        yaml_path=yaml_file,
        environ=env,
        assignments=["server.port=8000", "top_k=3"],
    )
    assert cfg.server.port == 8000  # flag beats env beats YAML
    assert cfg.server.log_level == "DEBUG"  # YAML beats default
    assert cfg.classifier.batcher.max_batch_size == 16
    assert cfg.classifier.engine.threads == 2  # env, coerced to int
    assert cfg.classifier.name == "efficientnet_lite0"  # default kept
    assert cfg.top_k == 3


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(cfgmod.ConfigError, match="unknown setting 'server.prot'"):
        cfgmod.load(ClassifyConfig, environ={}, assignments=["server.prot=1"])


def test_bad_value_is_an_error() -> None:
    with pytest.raises(cfgmod.ConfigError, match="is not a int"):
        cfgmod.load(ClassifyConfig, environ={}, assignments=["server.port=abc"])


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(cfgmod.ConfigError, match="does not exist"):
        cfgmod.load(ClassifyConfig, yaml_path=tmp_path / "nope.yaml", environ={})
