"""The GPU verification kit cannot rot: its CPU dry run runs every phase here, and the GPU install
path is pinned.

The dry run is the kit's own code path (``python -m tools.gpu_check --dry-run``)
on CPU with tiny sizes: real models, real photos, the classify service and the
gateway as processes under multiprocess load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from services.common.repository import default_root
from tools.gpu_check import KIT_MODELS, KIT_WHEELS, MODELS_ARCHIVE, REQUIRED_IMPORTS
from tools.gpu_check.prepare import canonical, kit_requirements, pack_models, pinned_versions

ROOT = Path(__file__).resolve().parent.parent
PHASES = (
    "environment",
    "accuracy: torch on the device vs onnxruntime CPU",
    "throughput: images/s per batch",
    "concurrency: two instances on two streams",
    "preprocessing: CPU (the service's path) vs device",
    "service: classify + gateway processes under load",
    "goals of the first GPU run",
)


def run_kit(out: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VISIONMESH_MODEL_REPOSITORY": str(default_root()),
    }
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--dry-run", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = run_kit(out)
    results = json.loads((out / "results.json").read_text())
    return {
        "out": out,
        "rc": done.returncode,
        "log": done.stdout[-4000:] + done.stderr[-4000:],
        **results,
    }


def sections(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in results["sections"]}


def test_dry_run_passes_every_phase(dry_run: dict[str, Any]) -> None:
    by_name = sections(dry_run)
    assert dry_run["rc"] == 0, dry_run["log"]
    for phase in PHASES:
        assert by_name[phase]["status"] == "ok", (phase, by_name[phase])
    assert by_name["install carried wheels"]["status"] == "skipped"
    assert (dry_run["out"] / "report.md").read_text().count("## ") == len(dry_run["sections"])


def test_dry_run_checks_torch_against_onnxruntime_in_every_variant(dry_run: dict[str, Any]) -> None:
    accuracy = sections(dry_run)["accuracy: torch on the device vs onnxruntime CPU"]
    rows = next(iter(accuracy["tables"].values()))
    asked = {(r["model"], r["asked"]) for r in rows}
    assert len(asked) == 4 and all(r["pass"] for r in rows), rows
    assert all(r["max err / scale"] <= r["tolerance"] for r in rows)
    # The fallback path: an unmeetable fp16 probe tolerance leaves the engine on fp32.
    assert "fp32" in accuracy["values"].values()


def test_dry_run_measures_throughput_and_streams(dry_run: dict[str, Any]) -> None:
    by_name = sections(dry_run)
    rows = by_name["throughput: images/s per batch"]["tables"][
        "images/s per batch (Engine.infer: host arrays in and out)"
    ]
    assert {r["batch"] for r in rows} == {1, 2}
    assert all(r["images/s"] > 0 for r in rows), rows
    streams = next(iter(by_name["concurrency: two instances on two streams"]["tables"].values()))
    assert streams and all(r["concurrency ratio"] > 0 for r in streams)


def test_dry_run_drives_the_service_and_gateway_processes(dry_run: dict[str, Any]) -> None:
    service = sections(dry_run)["service: classify + gateway processes under load"]
    rows = service["tables"]["answers/s and latency"]
    assert {(r["api"], r["mode"].split()[0]) for r in rows} == {
        ("classify", "saturation"),
        ("gateway", "saturation"),
        ("classify", "fixed"),
        ("gateway", "fixed"),
    }
    for row in rows:
        # Every call answered with a classification: no errors, and no gateway cache hits.
        assert set(row["outcomes"]) == {"ok"} and row["answers/s"] > 0, row
        assert row["p99 ms"] >= row["p50 ms"] > 0


def test_dry_run_leaves_no_process_running(dry_run: dict[str, Any]) -> None:
    assert (dry_run["out"] / "mesh" / "classify.yaml").is_file()
    assert processes_mentioning(str(dry_run["out"])) == []


def test_a_spent_budget_still_finishes_with_partial_results(tmp_path: Path) -> None:
    done = run_kit(tmp_path, "--budget-s", "0.5", timeout=120)
    results = json.loads((tmp_path / "results.json").read_text())
    statuses = {s["name"]: s["status"] for s in results["sections"]}
    assert done.returncode == 1, done.stdout[-2000:]
    assert statuses["environment"] == "ok"
    assert {"partial", "skipped"} & set(statuses.values()), statuses
    assert results["header"]["finished after s"] < 60
    assert processes_mentioning(str(tmp_path)) == []


def test_gateway_starts_without_pyav() -> None:
    # The GPU image has no PyAV: the launcher must let the gateway import, and video use must fail
    # loudly.
    code = (
        "from tools.gpu_check.gateway_without_av import install_if_absent\n"
        "import sys; sys.modules.pop('av', None)\n"
        "assert install_if_absent(force=True)\n"
        "import gateway.main, av\n"
        "try:\n    av.open\nexcept ImportError as exc:\n    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: PyAV (av) is not installed here" in done.stdout


def test_every_kit_wheel_is_pinned_in_requirements() -> None:
    wanted = kit_requirements(ROOT / "requirements.txt")
    pins = pinned_versions(ROOT / "requirements.txt")
    assert [w.split("==")[0] for w in wanted] == list(KIT_WHEELS)
    assert all(pins[canonical(w.split("==")[0])] == w.split("==")[1] for w in wanted)
    # Every third-party module the run imports comes from the image or a carried wheel.
    carried = {canonical(w) for w in KIT_WHEELS}
    image = {"numpy", "cv2", "PIL", "torch", "onnxruntime"}
    for module in REQUIRED_IMPORTS:
        top = module.split(".")[0]
        assert (
            top in image
            or canonical(
                {"yaml": "pyyaml", "grpc": "grpcio", "grpc_health": "grpcio-health-checking"}.get(
                    top,
                    {
                        "grpc_reflection": "grpcio-reflection",
                        "google": "protobuf",
                        "opentelemetry": "opentelemetry-sdk",
                    }.get(top, top),
                )
            )
            in carried
        ), module


def test_model_archive_holds_the_kit_models_without_plans(tmp_path: Path) -> None:
    archive = tmp_path / MODELS_ARCHIVE
    plan = default_root() / "efficientnet_lite0" / "1" / "model.gpu.trt.fp16.0.plan"
    pack_models(default_root(), archive, level=1)  # level 1: the test checks contents, not size
    with zipfile.ZipFile(archive) as packed:
        names = packed.namelist()
        assert packed.testzip() is None
    for model in KIT_MODELS:
        assert f"{model}/1/model.onnx" in names and f"{model}/1/config.yaml" in names
    assert not any(n.endswith(".plan") for n in names) and not plan.exists()


def test_gpu_install_path_pins_the_cuda_build_of_the_cpu_torch() -> None:
    # Regression: requirements.txt pins the CPU wheel, so without this path the GPU tests never run.
    cpu = pinned_versions(ROOT / "requirements.txt")["torch"]
    gpu_text = (ROOT / "requirements-gpu.txt").read_text()
    match = re.search(r"^torch==(\S+)\+(cu\d+)$", gpu_text, re.M)
    assert match, gpu_text
    assert match[1] == cpu.split("+")[0]
    assert f"download.pytorch.org/whl/{match[2]}" in gpu_text
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nsetup-gpu:", 1)[1].split("\n\n", 1)[0]
    assert "-r requirements-gpu.txt" in target and "torch.cuda.is_available()" in target
    docs = (ROOT / "docs" / "gpu.md").read_text()
    assert "make setup-gpu" in docs and "bash tools/gpu_check/run.sh" in docs
