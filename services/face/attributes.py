"""Per-face attributes from model outputs and landmarks: age, gender, emotion, pose, quality."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.face.config import QualityConfig

# Generic head geometry used for pose (arbitrary units): eyes and mouth lie
# ~135 behind the nose tip; eye centres are 330 apart; eyes to mouth is 320.
_NOSE_DEPTH_OVER_HALF_EYE_GAP = 135.0 / 165.0
_EYE_MOUTH_OVER_NOSE_DEPTH = 320.0 / 135.0
# Where the nose tip sits between the eye line (0) and mouth line (1) on a frontal face.
_FRONTAL_NOSE_RATIO = (0.515625 - 0.215990) / (0.780233 - 0.215990)


@dataclass
class Age:
    years: float
    low: float
    high: float


def age_from_probabilities(probs: np.ndarray, bins: np.ndarray, band: float = 0.8) -> Age:
    """Expected age over the bins, and the central ``band`` of the distribution as the range."""
    p = probs / max(float(probs.sum()), 1e-9)
    cdf = np.cumsum(p)
    tail = (1.0 - band) / 2
    low = float(bins[min(int(np.searchsorted(cdf, tail)), len(bins) - 1)])
    high = float(bins[min(int(np.searchsorted(cdf, 1.0 - tail)), len(bins) - 1)])
    years = float(p @ bins)
    # A peaked distribution with a long tail can put the mean just outside its central band.
    return Age(years, min(low, years), max(high, years))


@dataclass
class Pose:
    roll: float
    yaw: float
    pitch: float


def pose_from_landmarks(landmarks: np.ndarray) -> Pose:
    """Head pose in degrees from the 5 landmarks (a weak-perspective estimate).

    roll: angle of the eye line, positive when it descends to the image right;
    yaw: positive when the nose moves to the image right of the eye midpoint
    (the person turns toward their left); pitch: positive when looking up.
    """
    left_eye, right_eye, nose, mouth_l, mouth_r = landmarks.astype(np.float64)
    dx, dy = right_eye - left_eye
    roll = math.atan2(dy, dx)
    # Undo roll around the eye midpoint so yaw and pitch read along the face's own axes.
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    eye_mid = (left_eye + right_eye) / 2
    pts = (landmarks.astype(np.float64) - eye_mid) @ rot.T
    half_gap = max(abs(pts[1, 0] - pts[0, 0]) / 2, 1e-6)
    yaw = math.atan2((pts[2, 0]) / half_gap, _NOSE_DEPTH_OVER_HALF_EYE_GAP)
    mouth_y = (pts[3, 1] + pts[4, 1]) / 2
    if mouth_y <= 1e-6:
        return Pose(math.degrees(roll), math.degrees(yaw), 0.0)
    ratio = pts[2, 1] / mouth_y
    pitch = math.atan((_FRONTAL_NOSE_RATIO - ratio) * _EYE_MOUTH_OVER_NOSE_DEPTH)
    return Pose(math.degrees(roll), math.degrees(yaw), math.degrees(pitch))


@dataclass
class Quality:
    blur: float
    blurred: bool
    exposure: float
    under_exposed: bool
    over_exposed: bool


def face_quality(chip_rgb: np.ndarray, config: QualityConfig) -> Quality:
    """Sharpness (variance of the Laplacian) and mean luma of an aligned face chip."""
    grey = cv2.cvtColor(chip_rgb, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    luma = float(grey.mean())
    return Quality(
        blur=sharpness,
        blurred=sharpness < config.blur_threshold,
        exposure=luma,
        under_exposed=luma < config.under_exposed_below,
        over_exposed=luma > config.over_exposed_above,
    )


def rgb_chips_to_tensor(chips: np.ndarray, mean: list[float], scale: float) -> np.ndarray:
    """``N x S x S x 3`` uint8 -> NCHW float32, ``(x - mean) * scale``."""
    x = (chips.astype(np.float32) - np.asarray(mean, np.float32)) * np.float32(scale)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def grey_chips_to_tensor(chips: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """``N x S x S x 3`` uint8 RGB -> ``N x 1 x S x S`` float32 grey, ``(g - mean) * scale``."""
    grey = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in chips]).astype(np.float32)
    return np.ascontiguousarray(((grey - np.float32(mean)) * np.float32(scale))[:, None])
