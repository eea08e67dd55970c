"""Face alignment: a similarity transform of the 5 landmarks onto a canonical face.

The canonical face is dlib's mean face (the frame ``get_face_chip_details``
uses, in which the age/gender nets' chips were cut): eye centres, nose tip
and mouth corners of its 68-point mean shape, in units of the chip before
padding. A chip of ``size`` px with ``padding`` maps that unit square to
``[padding, 1 + padding] / (1 + 2 padding) * size``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# Left eye, right eye (image left/right), nose tip, left / right mouth corner,
# from dlib's mean face shape (points 36-41 and 42-47 averaged, 30, 48, 54).
CANONICAL_FACE = np.array(
    [
        [0.225492, 0.215990],
        [0.754761, 0.215990],
        [0.490127, 0.515625],
        [0.254149, 0.780233],
        [0.726104, 0.780233],
    ],
    np.float64,
)
# Largest supersampling factor for chips much smaller than the face.
MAX_OVERSAMPLE = 4


def face_frame(landmarks: np.ndarray) -> np.ndarray:
    """3 x 3 image -> canonical-face matrix (least-squares similarity over the 5 points).

    Every chip of a face derives from it (``chip_matrix``): fitting the points to a scaled and
    shifted canonical face gives this fit, scaled and shifted the same way.
    """
    tform = SimilarityTransform.from_estimate(landmarks.astype(np.float64), CANONICAL_FACE)
    return np.asarray(tform.params, np.float64)


def chip_matrix(
    landmarks: np.ndarray, size: int, padding: float, frame: np.ndarray | None = None
) -> np.ndarray:
    """2 x 3 image -> chip matrix; ``frame``: the face's ``face_frame``, if already fitted."""
    frame = face_frame(landmarks) if frame is None else frame
    scale = size / (1 + 2 * padding)
    return np.asarray(frame[:2] * scale + np.array([[0, 0, padding * scale]] * 2), np.float64)


def extract_chip(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    padding: float,
    frame: np.ndarray | None = None,
) -> np.ndarray:
    """An aligned ``size x size`` chip; supersampled then area-averaged when shrinking a large
    face. ``frame``: the face's ``face_frame``, when several chips are cut from one face."""
    matrix = chip_matrix(landmarks, size, padding, frame)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    factor = min(MAX_OVERSAMPLE, max(1, math.ceil(1.0 / scale))) if scale > 0 else 1
    big = cv2.warpAffine(
        rgb,
        matrix * np.array([[factor], [factor]]),
        (size * factor, size * factor),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if factor == 1:
        return big
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
