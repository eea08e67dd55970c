"""The hash service's crop costs what its output costs, not what the input's extreme shape would.

Each case runs in a child process (peak RSS is per process and only grows) with
its data segment capped at what it already uses + 256 MB, so a regression fails
with a MemoryError instead of taking gigabytes from the machine: resizing a
1 x 20000 image before cropping made a 256 x 5,120,000 intermediate (+5 GB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from services.hash.preprocess import center_crop

ROOT = Path(__file__).resolve().parent.parent

MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from services.hash.preprocess import center_crop

    h, w = int(sys.argv[1]), int(sys.argv[2])
    rgb = np.full((h, w, 3), 7, np.uint8)  # touched: its pages count before the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/status") as fh:
        data_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmData:"))
    cap = (data_kb + 256 * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:
        out = center_crop(rgb, 224, 0.875)
        shape, error = list(out.shape), ""
    except MemoryError as exc:
        shape, error = [], f"MemoryError {exc}"
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (after - before) / 1024, "shape": shape, "error": error}))
    """
)


@pytest.mark.parametrize(("height", "width"), [(1, 20000), (20000, 1), (7000, 7000)])
def test_center_crop_peak_memory_is_bounded(height: int, width: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(height), str(width)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] == "" and result["shape"] == [224, 224, 3], result
    # Measured: about 1 MB for the strips, 3 MB for 7000 x 7000 (the old code: 5 GB and 194 MB).
    assert result["peak_mb"] < 32, result


def test_center_crop_keeps_the_centre_square() -> None:
    # Left half black, right half white, a 600 x 400 image: the centre square straddles the edge.
    rgb = np.zeros((400, 600, 3), np.uint8)
    rgb[:, 300:] = 255
    out = center_crop(rgb, 224, 0.875)
    assert out.shape == (224, 224, 3)
    assert out[:, :100].max() == 0 and out[:, 124:].min() == 255
    # A huge image takes the pre-reduction path and gives the same picture.
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[:, 3000:] = 255
    out = center_crop(big, 224, 0.875)
    assert out[:, :100].max() == 0 and out[:, 124:].min() == 255
