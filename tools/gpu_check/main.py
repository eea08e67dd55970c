"""``python -m tools.gpu_check``: the whole GPU check in one run with a global time budget.

Phases, each with its share of the budget (unused time passes to the next):
install the carried wheels -> environment and device facts -> torch vs
onnxruntime accuracy -> images/s per batch -> two streams vs one -> CPU vs
device preprocessing -> classify service + gateway under load. Results are
rewritten into ``<out>/results.json`` and ``<out>/report.md`` after every
phase; child processes are stopped in ``finally`` (and die with this process).
``--dry-run`` runs the same phases on CPU with tiny sizes and skips the install.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.gpu_check import KIT_DIR, KIT_MODELS, MODELS_ARCHIVE, REQUIRED_IMPORTS
from tools.gpu_check.budget import Budget, Deadline
from tools.gpu_check.install import activate, install_wheels, missing_imports
from tools.gpu_check.report import Report, guarded
from tools.gpu_check.sampling import sampled

SITE_DIR = Path("/tmp/visionmesh-gpu-kit-site")
MODELS_DIR = Path("/tmp/visionmesh-gpu-kit-models")
# A small model keeps the CPU dry run short; the service phase still loads the classifier and
# open_nsfw.
DRY_RUN_MODELS = ("face_retinaface",)
# Budget shares of the phases after the install, in run order.
PLAN = {
    "accuracy": 0.18,
    "throughput": 0.30,
    "streams": 0.06,
    "preprocessing": 0.10,
    "mesh": 0.30,
}
# Goals of the first GPU run (issue text): engine images/s, gateway share of the engine.
GOAL_ENGINE_IPS = 20_000
GOAL_GATEWAY_SHARE = 0.8


@dataclass
class Sizes:
    models: list[str]
    batches: list[int]
    point_s: float
    streams_batch: int
    streams_s: float
    prep_s: float
    prep_batch: int
    prep_processes: int
    client_processes: int
    client_concurrency: int
    load_s: float
    ready_timeout_s: float
    mesh_instances: int
    mesh_max_batch: int
    precision: str
    cuda_graphs: bool
    extra: dict[str, Any] = field(default_factory=dict)


def gpu_sizes(models: list[str]) -> Sizes:
    cores = os.cpu_count() or 16
    return Sizes(
        models=models,
        batches=[1, 8, 32, 128, 256],
        point_s=0.6,
        streams_batch=32,
        streams_s=3.0,
        prep_s=3.0,
        prep_batch=64,
        prep_processes=cores,
        client_processes=max(2, cores // 2),
        client_concurrency=16,
        load_s=20.0,
        ready_timeout_s=150.0,
        mesh_instances=2,
        mesh_max_batch=64,
        precision="fp16",
        cuda_graphs=True,
    )


def dry_sizes(models: list[str]) -> Sizes:
    return Sizes(
        models=models,
        batches=[1, 2],
        point_s=0.05,
        streams_batch=2,
        streams_s=0.3,
        prep_s=0.5,
        prep_batch=4,
        prep_processes=2,
        client_processes=2,
        client_concurrency=2,
        load_s=2.0,
        ready_timeout_s=90.0,
        mesh_instances=1,
        mesh_max_batch=4,
        precision="fp32",
        cuda_graphs=False,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: $OUT, else var/gpu-check/<time>)"
    )
    parser.add_argument("--kit", type=Path, default=Path(KIT_DIR), help="the carried kit folder")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="global time budget (default 480; dry run 200: its sizes are tiny, the budget "
        "only matters on a starved machine)",
    )
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--models", type=lambda s: s.split(","), help="models (default: the kit's)")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no wheel install")
    parser.add_argument("--skip-install", action="store_true", help="use what is installed")
    return parser.parse_args(argv)


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return Path("var/gpu-check") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    budget = Budget(args.budget_s or (200.0 if args.dry_run else 480.0))
    device = "cpu" if args.dry_run else args.device
    report = Report(
        (args.out or default_out()).resolve(),
        "VisionMesh GPU check" + (" (CPU dry run)" if args.dry_run else ""),
    )
    report.header |= {
        "mode": "dry run (CPU, tiny sizes)" if args.dry_run else "GPU",
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "tools.gpu_check",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "started (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "time budget s": budget.total_s,
        "engine device": device,
    }
    try:
        run_phases(args, budget, device, report)
    finally:
        report.header["finished after s"] = round(budget.elapsed(), 1)
        report.write()
    print(report.markdown())
    # Last, so a caller that keeps only the end of the output still sees the outcome.
    print(summary(report))
    print(f"gpu_check: results in {report.out_dir}")
    failed = [s.name for s in report.sections if s.status in ("failed", "partial")]
    sys.exit(1 if failed else 0)


def summary(report: Report) -> str:
    lines = ["== gpu_check summary ==", f"device: {report.header.get('device', '?')}"]
    for sec in report.sections:
        lines.append(f"{sec.status:>8}  {sec.name} ({sec.seconds:.0f} s)")
        for label in ("best images/s per model", "goals"):
            lines += [f"          {row}" for row in sec.tables.get(label, [])]
        if "saturation answers/s" in sec.values:
            lines.append(f"          saturation answers/s: {sec.values['saturation answers/s']}")
    return "\n".join(lines)


def run_phases(args: argparse.Namespace, budget: Budget, device: str, report: Report) -> None:
    kit = args.kit.resolve()
    install_phase(args, kit, report)
    if (kit / MODELS_ARCHIVE).is_file() and not args.dry_run:
        with report.section("unpack carried models") as sec:
            sec.notes.append(unpack_models(kit / MODELS_ARCHIVE, MODELS_DIR))
            os.environ["VISIONMESH_MODEL_REPOSITORY"] = str(MODELS_DIR)
    with report.section("environment") as sec:
        environment(device, sec, report)
    if report.sections[-1].status != "ok":
        report.skip("remaining phases", "the environment check failed (see above)")
        return

    from tests.support import repository_models

    available = repository_models()
    wanted = args.models or (DRY_RUN_MODELS if args.dry_run else KIT_MODELS)
    models = [m for m in wanted if m in available]
    if not models:
        report.skip(
            "remaining phases",
            f"none of the models is in {os.environ.get('VISIONMESH_MODEL_REPOSITORY')}",
        )
        return
    sizes = (dry_sizes if args.dry_run else gpu_sizes)(models)
    if args.dry_run:
        # One intra-op thread everywhere: on a small shared CPU, spinning thread pools cost more
        # than they give.
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    if args.batches:
        sizes.batches = args.batches
    report.header["models"] = ", ".join(models)

    def deadline(phase: str) -> Deadline:
        later = list(PLAN)[list(PLAN).index(phase) + 1 :]
        return Deadline(budget, budget.left() - sum(PLAN[p] * budget.total_s for p in later))

    from tools.gpu_check import engines, mesh_load, preprocessing

    with report.section("accuracy: torch on the device vs onnxruntime CPU") as sec:
        engines.check_accuracy(models, device, deadline("accuracy"), sec)
    with report.section("throughput: images/s per batch") as sec:
        engines.measure_throughput(
            models, device, sizes.batches, sizes.point_s, deadline("throughput"), sec
        )
    with report.section("concurrency: two instances on two streams") as sec:
        d = deadline("streams")
        if d.left() < 4 * sizes.streams_s:
            sec.status = "skipped"
            sec.notes.append("time budget spent")
        else:
            stream_model = "efficientnet_lite0" if "efficientnet_lite0" in models else models[0]
            engines.measure_streams(stream_model, device, sizes.streams_batch, sizes.streams_s, sec)
    with report.section("preprocessing: CPU (the service's path) vs device") as sec:
        preprocessing_phase(args, device, sizes, deadline("preprocessing"), sec, preprocessing)
    with report.section("service: classify + gateway processes under load") as sec:
        mesh_phase(args, device, sizes, deadline("mesh"), sec, report, mesh_load, preprocessing)
    with report.section("goals of the first GPU run") as sec:
        goals(report, sec, args.dry_run)


def unpack_models(archive: Path, dest: Path) -> str:
    import shutil
    import zipfile

    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(archive) as models:
        models.extractall(dest)
        return f"unpacked {len(models.namelist())} files of {archive.name} into {dest}"


def install_phase(args: argparse.Namespace, kit: Path, report: Report) -> None:
    if args.dry_run or args.skip_install:
        report.skip(
            "install carried wheels",
            "dry run: uses the installed environment" if args.dry_run else "--skip-install",
        )
        return
    with report.section("install carried wheels") as sec:
        sec.notes += install_wheels(kit / "wheels", SITE_DIR)
    if report.sections[-1].status != "ok" and SITE_DIR.is_dir():
        activate(SITE_DIR)


def nvidia_smi() -> str:
    done = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()


def environment(device: str, sec: Any, report: Report) -> None:
    from importlib import metadata

    from tools.gpu_check import KIT_WHEELS

    missing = missing_imports((*REQUIRED_IMPORTS, "visionmesh.v1.classify_pb2"))
    if missing:
        sec.status = "failed"
        sec.values["missing imports"] = missing
        return
    import onnxruntime
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "cuDNN": guarded(torch.backends.cudnn.version),
        "onnxruntime": onnxruntime.__version__,
        "torchvision": guarded(lambda: __import__("torchvision").__version__),
        "cudnn.allow_tf32 (fp32 convolutions may use TF32)": torch.backends.cudnn.allow_tf32,
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "model repository": os.environ.get("VISIONMESH_MODEL_REPOSITORY", "(default)"),
    }
    facts["packages"] = ", ".join(
        f"{w}=={guarded(functools.partial(metadata.version, w))}" for w in KIT_WHEELS
    )
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            sec.status = "failed"
            sec.values["CUDA"] = "torch.cuda.is_available() is False"
            return
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        facts |= {
            "gpu": props.name,
            "compute capability": f"{props.major}.{props.minor}",
            "gpu memory GiB": round(props.total_memory / 2**30, 1),
            "nvidia-smi (name, driver, memory, power limit, max SM clock)": guarded(nvidia_smi),
        }
        report.header["device"] = (
            f"{props.name}, driver "
            f"{facts['nvidia-smi (name, driver, memory, power limit, max SM clock)']}, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    else:
        report.header["device"] = (
            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"cores), torch {torch.__version__}"
        )
    sec.values |= facts


def preprocessing_phase(
    args: argparse.Namespace, device: str, sizes: Sizes, deadline: Deadline, sec: Any, prep_mod: Any
) -> None:
    import numpy as np

    from services.common.config import EngineConfig
    from services.common.engines import create_engine
    from services.common.repository import load_entry

    entry = load_entry("efficientnet_lite0")
    prep = entry.preprocessing
    jpegs = prep_mod.load_jpegs(args.kit.resolve() / "images")
    seconds = min(sizes.prep_s, deadline.left() / 4)
    rows = sec.tables.setdefault("classifier preprocessing images/s", [])
    rows.append(
        {
            "path": "CPU, 1 process (PIL decode + OpenCV crop/resize)",
            "images/s": round(prep_mod.cpu_rate(jpegs, prep, seconds, 1), 1),
        }
    )
    rows.append(
        {
            "path": f"CPU, {sizes.prep_processes} processes",
            "images/s": round(prep_mod.cpu_rate(jpegs, prep, seconds, sizes.prep_processes), 1),
        }
    )
    on_device = prep_mod.DevicePreprocess(device, prep)
    rate = on_device.rate(jpegs, sizes.prep_batch, seconds)
    rows.append(
        {
            "path": f"device: {on_device.decoder}, batch {sizes.prep_batch}",
            "images/s": round(rate, 1),
        }
    )
    # Same photos both ways through the same classifier: preprocessing must not change the answer.
    cpu_batch = np.concatenate([prep_mod.cpu_preprocess(j, prep) for j in jpegs])
    dev_batch = on_device(jpegs).cpu().numpy()
    reference = create_engine(entry, EngineConfig())
    cpu_logits = reference.infer({"images": cpu_batch})["logits"]
    dev_top = reference.infer({"images": dev_batch})["logits"].argmax(1)
    reference.close()
    cpu_top5 = cpu_logits.argsort(1)[:, -5:]
    in_top5 = [int(t) in row for t, row in zip(dev_top, cpu_top5, strict=True)]
    sec.values |= {
        "photos": len(jpegs),
        "max |device - CPU| input difference (normalised units)": float(
            np.abs(dev_batch - cpu_batch).max()
        ),
        "mean |device - CPU| input difference": float(np.abs(dev_batch - cpu_batch).mean()),
        "top-1 agreement, device vs CPU preprocessing": (
            f"{int((cpu_logits.argmax(1) == dev_top).sum())}/{len(jpegs)}"
        ),
        "device top-1 within the CPU top-5": f"{sum(in_top5)}/{len(jpegs)}",
    }
    sec.notes.append(
        "the classify service itself preprocesses on the CPU; this phase measures "
        "what moving decode+resize "
        "to the device would buy. The decoders differ (PIL/libjpeg vs nvJPEG) and so "
        "do the resamplers, so "
        "inputs differ by about a grey level and photos whose top-2 logits are close "
        "may swap; the check is "
        "that the device top-1 stays within the CPU top-5"
    )
    if not all(in_top5):
        sec.status = "failed"


def mesh_phase(
    args: argparse.Namespace,
    device: str,
    sizes: Sizes,
    deadline: Deadline,
    sec: Any,
    report: Report,
    mesh_mod: Any,
    prep_mod: Any,
) -> None:
    jpegs = prep_mod.load_jpegs(args.kit.resolve() / "images")
    settings = mesh_mod.MeshSettings(
        device, sizes.precision, sizes.cuda_graphs, sizes.mesh_instances, sizes.mesh_max_batch
    )
    sec.values["classify settings"] = settings
    rows: list[dict[str, Any]] = []
    sec.tables["answers/s and latency"] = rows
    with mesh_mod.Mesh(
        settings, report.out_dir / "mesh", min(sizes.ready_timeout_s, deadline.left())
    ) as mesh:
        mesh.wait_ready(jpegs[0])
        sec.values |= mesh.startup
        settle = 3.0
        window = max(1.0, min(sizes.load_s, deadline.left() / 4 - settle - 2))
        targets = {"classify": mesh.classify_addr, "gateway": mesh.gateway_addr}
        saturation: dict[str, float] = {}
        pids = {"classify": mesh.classify.pid, "gateway": mesh.gateway.pid}
        for api in ("classify", "gateway"):
            load = mesh_mod.Load(
                targets[api], api, sizes.client_processes, sizes.client_concurrency, window
            )
            usage: dict[str, Any] = {}
            with sampled(pids, device.startswith("cuda"), usage):
                row = mesh_mod.run_load(load, jpegs, settle)
            rows.append(row | usage)
            saturation[api] = row["answers/s"]
            report.write()
        for api in ("gateway", "classify"):
            if deadline.left() < window + settle + 2:
                sec.status = "partial"
                sec.notes.append(f"time budget reached before the fixed-rate run on {api}")
                break
            rate = max(1.0, 0.5 * saturation[api])
            rows.append(
                mesh_mod.run_load(
                    mesh_mod.Load(targets[api], api, sizes.client_processes, 0, window, rate),
                    jpegs,
                    settle,
                )
            )
            report.write()
    sec.notes.append(
        "fixed rate = half the saturation rate of the same API; latencies from each "
        "call's scheduled send time"
    )
    sec.notes.append(
        "CPU cores used = CPU seconds of the service process / wall time of the saturation run "
        "(including the clients' start, about 3 s); GPU util = nvidia-smi once a second"
    )
    sec.values["saturation answers/s"] = saturation
    bad = [r for r in rows if set(r["outcomes"]) - {"ok"} or r["answers/s"] <= 0]
    if bad:
        sec.notes.append("some calls did not answer with a classification: see outcomes")
        sec.status = "failed"


def goals(report: Report, sec: Any, dry_run: bool) -> None:
    """The issue's goal figures next to what this run measured."""
    best = {}
    service: dict[str, float] = {}
    for s in report.sections:
        for row in s.tables.get("best images/s per model", []):
            best[row["model"]] = row
        service |= s.values.get("saturation answers/s", {})
    engine = best.get("efficientnet_lite0", {}).get("images/s", 0.0)
    rows = [
        {
            "goal": f"classifier at the engine >= {GOAL_ENGINE_IPS}/s",
            "measured": engine or "not measured (efficientnet_lite0 not in this run's models)",
            "met": engine >= GOAL_ENGINE_IPS if engine else "n/a",
        },
    ]
    if service.get("gateway") and engine:
        share = service["gateway"] / engine
        rows.append(
            {
                "goal": f"through the gateway >= {GOAL_GATEWAY_SHARE}x the engine",
                "measured": round(share, 3),
                "met": share >= GOAL_GATEWAY_SHARE,
            }
        )
    rows.append(
        {
            "goal": "full analyses (all features) >= 4000/s",
            "measured": "not run: the OCR detector/recogniser and face attribute models and the "
            "person detector do not fit the carry",
            "met": "n/a",
        }
    )
    sec.tables["goals"] = rows
    if dry_run:
        sec.notes.append(
            "dry run on CPU: the goals are for a GPU and are not expected to be met here"
        )
