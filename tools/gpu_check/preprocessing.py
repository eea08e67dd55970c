"""Classifier preprocessing on the CPU (what the classify service does) vs on the device.

CPU: the service's own path -- ``services.common.images.decode`` (PIL) and
``services.classify.preprocess.to_tensor`` (centre crop, OpenCV resize,
normalise) -- in one process and in a pool of one process per core.
Device: nvJPEG decode of a batch (``torchvision.io.decode_jpeg(device=...)``),
then the same centre crop, an antialiased bilinear resize and normalisation
as tensor ops on the device. Both feed EfficientNet-Lite0 on ONNX Runtime so
the two paths are also checked to give the same top-1.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.classify.preprocess import to_tensor
from services.common.images import decode

PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
)


def load_jpegs(folder: Path) -> list[bytes]:
    """The kit's JPEG photos; where the kit folder is absent (dry run), scikit-image photos encoded
    here."""
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    import skimage.data

    jpegs = []
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(rgb[:, :, :3][:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        assert ok
        jpegs.append(buf.tobytes())
    return jpegs


def cpu_preprocess(data: bytes, prep: dict[str, Any]) -> np.ndarray:
    return to_tensor(decode(data).rgb, prep)


def _cpu_worker(args: tuple[list[bytes], dict[str, Any], float]) -> int:
    jpegs, prep, seconds = args
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        cpu_preprocess(jpegs[done % len(jpegs)], prep)
        done += 1
    return done


def cpu_rate(jpegs: list[bytes], prep: dict[str, Any], seconds: float, processes: int) -> float:
    """Images/s of the service's CPU preprocessing in ``processes`` processes (1 = in this
    process)."""
    if processes == 1:
        return _cpu_worker((jpegs, prep, seconds)) / seconds
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        # Start-up (spawn + imports) happens before each worker's clock starts.
        counts = pool.map(_cpu_worker, [(jpegs, prep, seconds)] * processes)
    return sum(counts) / seconds


class DevicePreprocess:
    """Batch decode + crop + resize + normalise on ``device``."""

    def __init__(self, device: str, prep: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.size = int(prep["size"])
        self.crop = float(prep.get("crop_fraction", 0.875))
        self.mean = torch.tensor(prep["mean"], dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self.std = torch.tensor(prep["std"], dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        try:
            from torchvision.io import decode_jpeg

            self.decode_jpeg: Any = decode_jpeg
            self.decoder = f"torchvision.io.decode_jpeg(device={self.device})" + (
                " = nvJPEG" if self.device.type == "cuda" else ""
            )
        except ImportError as exc:
            self.decode_jpeg = None
            self.decoder = (
                f"cv2.imdecode on the CPU, copied to the device (torchvision absent: {exc})"
            )

    def decode(self, jpegs: list[bytes]) -> list[Any]:
        torch = self.torch
        if self.decode_jpeg is not None:
            data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
            return list(self.decode_jpeg(data, device=self.device))
        images = []
        for j in jpegs:
            bgr = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError("a kit photo is not a decodable JPEG")
            images.append(
                torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))).to(
                    self.device
                )
            )
        return images

    def __call__(self, jpegs: list[bytes]) -> Any:
        torch = self.torch
        crops = []
        for chw in self.decode(jpegs):
            h, w = int(chw.shape[1]), int(chw.shape[2])
            side = max(1, round(min(h, w) * self.crop))
            top, left = (h - side) // 2, (w - side) // 2
            square = chw[:, top : top + side, left : left + side].unsqueeze(0).float()
            crops.append(
                torch.nn.functional.interpolate(
                    square,
                    size=(self.size, self.size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            )
        batch = torch.cat(crops)
        return (batch.round().clamp_(0, 255) - self.mean) / self.std

    def rate(self, jpegs: list[bytes], batch: int, seconds: float) -> float:
        torch = self.torch
        batch_jpegs = [jpegs[i % len(jpegs)] for i in range(batch)]
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self(batch_jpegs)
        sync()
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            self(batch_jpegs)
            calls += 1
        sync()
        return calls * batch / (time.perf_counter() - start)
