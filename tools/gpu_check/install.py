"""Install the carried wheels into a private folder and put it first on the import path.

A private ``--target`` folder (not the image's site-packages) means the image
is left as it was, and the carried protobuf/grpcio versions -- the ones the
generated code was built against -- win over any older copy in the image.
Without pip the wheels are unpacked directly (a wheel is a zip of its
installed files).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path


def install_wheels(wheel_dir: Path, target: Path) -> list[str]:
    """Install every ``*.whl`` of ``wheel_dir`` into ``target``; returns what was done, line by
    line."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {wheel_dir}: run `make gpu-kit` before carrying it")
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--disable-pip-version-check",
        "--upgrade",
        "--target",
        str(target),
        *map(str, wheels),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode == 0:
        notes = [f"pip installed {len(wheels)} wheels into {target}"]
    else:
        notes = [f"pip failed ({done.stderr.strip()[-300:]}); unpacking the wheels instead"]
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
        notes.append(f"unpacked {len(wheels)} wheels into {target}")
    activate(target)
    return notes


def activate(target: Path) -> None:
    """Import from ``target`` first, here and in every process started from here."""
    path = str(target.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (path, os.environ.get("PYTHONPATH", "")) if p
    )
    importlib.invalidate_caches()


def missing_imports(modules: tuple[str, ...]) -> dict[str, str]:
    """Module -> error for every module that does not import."""
    missing = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
            missing[name] = f"{exc.__class__.__name__}: {exc}"
    return missing
