"""Test and evaluation data that is not in the repository, fetched once into var/test-data.

    .venv/bin/python -m tools.testdata        # what `make testdata` (part of `make setup`) runs

The insightface==2.1 wheel carries a few photos (no weights): the group photo
t1.jpg the face tests use, and others the held-out evaluation sets use
(bench/evalsets.py). The wheel is fetched with pip's own client and only its
images are kept; when they are all present nothing is fetched. Tests never
fetch: they read the cache and fail naming this command when it is missing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "var" / "test-data"
INSIGHTFACE_DIR = CACHE / "insightface-2.1"
INSIGHTFACE_IMAGES = (
    "t1.jpg",
    "Tom_Hanks_54745.png",
    "mask_black.jpg",
    "mask_blue.jpg",
    "mask_green.jpg",
    "mask_white.jpg",
)
MEMBER_DIR = "insightface/data/images/"


def missing_message(path: Path) -> str:
    return f"{path} is missing: run `make testdata` (or `.venv/bin/python -m tools.testdata`)"


def fetch_insightface_images(dest: Path = INSIGHTFACE_DIR) -> list[Path]:
    wanted = [dest / name for name in INSIGHTFACE_IMAGES]
    if all(p.is_file() for p in wanted):
        return wanted
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "insightface==2.1", "-d", tmp, "-q"],
            check=True,
            timeout=600,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("insightface-2.1-*.whl")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for path in wanted:
                path.write_bytes(archive.read(MEMBER_DIR + path.name))
    return wanted


def main() -> None:
    for path in fetch_insightface_images():
        print(f"test data: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
