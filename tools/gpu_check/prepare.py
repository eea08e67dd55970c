"""``make gpu-kit``: fill ``.gpu-kit/`` for the GPU machine, measure the carry, print the command.

    .venv/bin/python -m tools.gpu_check.prepare [--no-download]

- ``wheels/``: the distributions of ``KIT_WHEELS`` at their requirements.txt
  versions, for CPython 3.12 on manylinux x86_64 (``pip download``, binary only);
- ``model_repository.zip``: the ``KIT_MODELS`` folders of the built repository (deflated);
- ``images/``: JPEG photos for the preprocessing and load phases.

The size check counts everything the carry moves: the tracked files, untracked
files git does not ignore, and the carried ignored paths (``CARRY_PATHS``).
Exits non-zero when that is over ``CARRY_LIMIT_BYTES``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tools.gpu_check import (
    CARRY_LIMIT_BYTES,
    CARRY_PATHS,
    KIT_DIR,
    KIT_MODELS,
    KIT_WHEELS,
    MODELS_ARCHIVE,
)

PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)
MiB = 1024 * 1024


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[canonical(match[1])] = match[2]
    return pins


def kit_requirements(requirements: Path) -> list[str]:
    pins = pinned_versions(requirements)
    missing = [w for w in KIT_WHEELS if canonical(w) not in pins]
    if missing:
        raise SystemExit(f"gpu-kit: {', '.join(missing)} not pinned in {requirements}")
    return [f"{w}=={pins[canonical(w)]}" for w in KIT_WHEELS]


def download_wheels(wanted: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    keep = {canonical(r.split("==")[0]).replace("-", "_") + "-" + r.split("==")[1] for r in wanted}
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if f"{canonical(name).replace('-', '_')}-{version}" not in keep:
            wheel.unlink()  # a version no longer pinned
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
    ]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + wanted, check=True)


def pack_models(source: Path, archive: Path, level: int = 9) -> None:
    """The ``KIT_MODELS`` folders as one deflated zip (ONNX weights shrink by about 7.5%)."""
    for model in KIT_MODELS:
        if not (source / model / "1" / "model.onnx").is_file():
            raise SystemExit(
                f"gpu-kit: {source / model}/1/model.onnx missing: run `make models` first"
            )
    partial = archive.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as out:
        for model in KIT_MODELS:
            for path in sorted((source / model).rglob("*")):
                # TensorRT plans are built per GPU (and locks are transient): the kit carries the
                # ONNX.
                if path.is_file() and path.suffix not in (".plan", ".lock"):
                    out.write(path, path.relative_to(source).as_posix())
    partial.replace(archive)


def write_images(dest: Path) -> None:
    from tools.gpu_check.preprocessing import PHOTOS, load_jpegs

    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.jpg"):
        old.unlink()
    for name, jpeg in zip(PHOTOS, load_jpegs(Path("/nonexistent")), strict=True):
        (dest / f"{name}.jpg").write_bytes(jpeg)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def git_files(root: Path, *args: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *args], cwd=root, capture_output=True, check=True
    )
    return [root / p for p in out.stdout.decode().split("\0") if p]


def carry_sizes(root: Path) -> dict[str, int]:
    tracked = [p for p in git_files(root) if p.is_file() and not p.is_symlink()]
    untracked = [p for p in git_files(root, "--others", "--exclude-standard") if p.is_file()]
    sizes = {
        "tracked files": sum(p.stat().st_size for p in tracked),
        "untracked, not ignored files": sum(p.stat().st_size for p in untracked),
    }
    for carried in CARRY_PATHS:
        sizes[carried] = tree_bytes(root / carried)
    return sizes


def print_sizes(root: Path) -> int:
    sizes = carry_sizes(root)
    kit = root / KIT_DIR
    for part in ("wheels", MODELS_ARCHIVE, "images"):
        children = sorted((kit / part).iterdir()) if (kit / part).is_dir() else [kit / part]
        for child in children:
            print(f"    {child.relative_to(kit).as_posix():<80} {tree_bytes(child) / MiB:8.2f} MiB")
    for name, size in sizes.items():
        print(f"  {name:<40} {size / MiB:8.2f} MiB")
    total = sum(sizes.values())
    verdict = "fits" if total <= CARRY_LIMIT_BYTES else "DOES NOT FIT"
    print(
        f"  {'total carried':<40} {total / MiB:8.2f} MiB of "
        f"{CARRY_LIMIT_BYTES / MiB:.0f} MiB: {verdict} "
        f"({(CARRY_LIMIT_BYTES - total) / MiB:+.2f} MiB spare)"
    )
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-download", action="store_true", help="keep the wheels already there")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    root = Path.cwd()
    kit = root / KIT_DIR
    if not (root / "visionmesh" / "v1" / "classify_pb2.py").is_file():
        raise SystemExit("gpu-kit: visionmesh/v1 is not generated: run `make gen` first")
    if not args.no_download:
        download_wheels(kit_requirements(root / "requirements.txt"), kit / "wheels")
    pack_models(args.repository.resolve(), kit / MODELS_ARCHIVE)
    write_images(kit / "images")
    print(f"gpu-kit: {kit} ready; what the carry moves:")
    total = print_sizes(root)
    if total > CARRY_LIMIT_BYTES:
        raise SystemExit("gpu-kit: over the carry limit; drop a model from KIT_MODELS")
    carry = ", ".join(f'"{p}"' for p in CARRY_PATHS)
    print(
        "\nOn the GPU machine (repository root), run with these ignored paths carried:\n"
        f"  command: bash tools/gpu_check/run.sh\n"
        f"  carry:   [{carry}]\n"
        "  timeout: 570 s (the run budgets itself to 480 s, run.sh stops it at 540 s; "
        "results.json + report.md into $OUT)"
    )


if __name__ == "__main__":
    main()
