"""Scoring OCR output against rendered ground truth: CER and line recall.

Each ground-truth line collects the predicted lines whose centre falls inside
its quadrilateral (grown a little), joined left to right; the detector may
split a line at a wide gap, which is not an error. Texts are compared after
NFKC normalisation (full- and half-width punctuation are the same
character) with whitespace removed (CTC recognisers place spaces loosely).
CER = total edit distance / total ground-truth characters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rapidfuzz.distance import Levenshtein

from tools.ocr_render import RenderedImage


@dataclass(frozen=True)
class Prediction:
    text: str
    quad: np.ndarray  # 4 x 2


@dataclass
class Score:
    chars: int = 0
    edits: int = 0
    lines: int = 0
    found: int = 0  # ground-truth lines with at least one prediction on them
    exact: int = 0  # ground-truth lines read exactly
    spurious: int = 0  # predictions on no ground-truth line
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cer(self) -> float:
        return self.edits / max(1, self.chars)

    @property
    def line_recall(self) -> float:
        return self.found / max(1, self.lines)

    @property
    def line_accuracy(self) -> float:
        return self.exact / max(1, self.lines)

    def summary(self) -> str:
        return (
            f"CER {self.cer * 100:.2f}% ({self.edits}/{self.chars} chars), line recall "
            f"{self.line_recall * 100:.1f}%, "
            f"exact lines {self.line_accuracy * 100:.1f}% of {self.lines}, spurious {self.spurious}"
        )


def normalise(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def _grown(quad: np.ndarray, pixels: float) -> np.ndarray:
    centre = quad.mean(axis=0)
    direction = quad - centre
    norms = np.linalg.norm(direction, axis=1, keepdims=True)
    return (quad + direction / np.maximum(norms, 1e-6) * pixels).astype(np.float32)


def score_image(image: RenderedImage, predictions: Sequence[Prediction], score: Score) -> None:
    used = [False] * len(predictions)
    for truth in image.lines:
        region = _grown(truth.quad, 4.0)
        mine = []
        for i, pred in enumerate(predictions):
            cx, cy = pred.quad.mean(axis=0)
            if cv2.pointPolygonTest(region.reshape(-1, 1, 2), (float(cx), float(cy)), False) >= 0:
                mine.append((float(pred.quad[:, 0].min()), pred.text))
                used[i] = True
        want = normalise(truth.text)
        got = normalise("".join(t for _, t in sorted(mine)))
        edits = Levenshtein.distance(want, got)
        score.lines += 1
        score.chars += len(want)
        score.edits += edits
        score.found += bool(mine)
        score.exact += edits == 0
        if edits:
            score.errors.append((truth.text, got))
    score.spurious += used.count(False)


def rapidocr_reference(
    repository: Path, threads: int | None = None
) -> Callable[[np.ndarray], list[Prediction]]:
    """rapidocr's own pipeline on the same three ONNX files (taken from our model repository).

    Every model path is given explicitly, so rapidocr never reaches for its
    on-demand downloads. ``threads``: ONNX Runtime intra-op threads of each of its
    sessions (None = rapidocr's default, the library's).
    """
    from rapidocr import RapidOCR

    paths = {
        key: repository / name / "1" / "model.onnx"
        for key, name in (("Det", "ppocr_det"), ("Cls", "ppocr_cls"), ("Rec", "ppocr_rec"))
    }
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} missing: run `visionmesh models build ppocr_det ppocr_cls ppocr_rec`"
            )
    params: dict[str, Any] = {f"{key}.model_path": str(path) for key, path in paths.items()}
    params["Global.log_level"] = "error"
    if threads is not None:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
    engine = RapidOCR(params=params)

    def run(rgb: np.ndarray) -> list[Prediction]:
        # rapidocr takes numpy images as OpenCV BGR.
        out: Any = engine(np.ascontiguousarray(rgb[..., ::-1]))
        if out.boxes is None or out.txts is None:
            return []
        return [
            Prediction(text, np.asarray(box, np.float32))
            for box, text in zip(out.boxes, out.txts, strict=True)
        ]

    return run
