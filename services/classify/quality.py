"""Image quality without a model: brightness, contrast, sharpness and their verdicts.

All measures are taken on the luma (ITU-R BT.601) of the image shrunk so its
long side is at most ``working_size`` pixels, so figures do not depend on the
upload's resolution. Smaller images are measured as they are: upscaling adds
no detail and would make every thumbnail read as blurred. Sharpness is the variance of the Laplacian
of the luma after it is
rescaled to a fixed standard deviation: a dark or flat photo has a weak
Laplacian for the same reason it has a small standard deviation, and that is
an exposure problem, not blur.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from services.classify.config import QualityConfig

# Luma standard deviation the sharpness measure normalises to.
REFERENCE_STD = 50.0
# Below this std the image is flat; stretching it further would only measure noise.
MIN_STD_FOR_NORMALISING = 4.0

DISPLAY_NAMES = {
    "quality/dark": ("Dark", "过暗"),
    "quality/overexposed": ("Overexposed", "过曝"),
    "quality/low_contrast": ("Low contrast", "低对比度"),
    "quality/blurred": ("Blurred", "模糊"),
}


@dataclass
class QualityVerdict:
    name: str
    # 0.5 at the threshold, rising to 1 at the far end of the scale.
    score: float


@dataclass
class QualityReport:
    brightness: float
    contrast: float
    sharpness: float
    verdicts: list[QualityVerdict] = field(default_factory=list)


def working_luma(rgb: np.ndarray, working_size: int) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> float32 luma with its long side at most ``working_size``."""
    luma = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = luma.shape
    scale = working_size / max(h, w)
    if scale < 1:
        # INTER_AREA averages when shrinking (no aliasing that would read as detail).
        luma = cv2.resize(
            luma, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return luma.astype(np.float32)


def measure(rgb: np.ndarray, working_size: int = 512) -> tuple[float, float, float]:
    """(brightness, contrast, sharpness) of an RGB image."""
    luma = working_luma(rgb, working_size)
    mean, std = float(luma.mean()), float(luma.std())
    normalised = (luma - mean) * (REFERENCE_STD / max(std, MIN_STD_FOR_NORMALISING))
    sharpness = float(cv2.Laplacian(normalised, cv2.CV_32F).var())
    return mean, std, sharpness


def _severity(distance: float, span: float) -> float:
    return 0.5 + 0.5 * float(np.clip(distance / span, 0.0, 1.0))


def assess(rgb: np.ndarray, config: QualityConfig) -> QualityReport:
    brightness, contrast, sharpness = measure(rgb, config.working_size)
    report = QualityReport(brightness, contrast, sharpness)
    exposure_ok = True
    if brightness < config.dark_below:
        report.verdicts.append(
            QualityVerdict(
                "quality/dark", _severity(config.dark_below - brightness, config.dark_below)
            )
        )
        exposure_ok = False
    elif brightness > config.overexposed_above:
        report.verdicts.append(
            QualityVerdict(
                "quality/overexposed",
                _severity(brightness - config.overexposed_above, 255.0 - config.overexposed_above),
            )
        )
        exposure_ok = False
    # A dark or blown-out image has a compressed histogram by construction; the
    # exposure verdict is the one to act on, so contrast is judged only without it.
    if exposure_ok and contrast < config.low_contrast_below:
        report.verdicts.append(
            QualityVerdict(
                "quality/low_contrast",
                _severity(config.low_contrast_below - contrast, config.low_contrast_below),
            )
        )
    if sharpness < config.blurred_below:
        report.verdicts.append(
            QualityVerdict(
                "quality/blurred", _severity(config.blurred_below - sharpness, config.blurred_below)
            )
        )
    return report
