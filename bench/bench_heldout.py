"""Accuracy on the held-out evaluation sets (bench/evalsets.py): images no tuning step saw.

    .venv/bin/python -m bench.bench_heldout [--quick]

Four figures, each on sources disjoint from the component's tuning sources
(``check_split`` runs first and stops the run on an overlap):

- face: the face service on the held-out face photo pasted onto face-free
  backgrounds and on the backgrounds alone — faces found / missed / spurious;
- OCR: the OCR service on text-free held-out pictures and their variants —
  images with any line (every line there is spurious);
- quality: the quality verdicts on held-out pictures under degradations made
  differently from the test's (box blur, gamma, contrast about mid-grey);
- hash: the served ``hash_itq`` on copies of the held-out pictures, with every
  scikit-image photo and their copies as distractors — recall@1.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import cv2
import grpc
import numpy as np

from bench.evalsets import HELDOUT, TUNING, VARIANTS, check_split, face_cases, load
from bench.harness import Report
from services.classify.config import QualityConfig
from services.classify.quality import assess
from services.common.protos import rgb_to_image
from services.face.config import FaceConfig
from services.face.main import DEFINITION as FACE
from services.hash.corpus import COPY_TRANSFORMS
from services.hash.main import DEFINITION as HASH
from services.ocr.main import DEFINITION as OCR
from tests.support import encode, running_service
from visionmesh.v1 import (
    common_pb2,
    face_pb2,
    face_pb2_grpc,
    hash_pb2,
    hash_pb2_grpc,
    ocr_pb2,
    ocr_pb2_grpc,
)


def gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(rgb: np.ndarray) -> np.ndarray:
        return (255 * (rgb.astype(np.float32) / 255) ** g).astype(np.uint8)

    return apply


def box_blur(rgb: np.ndarray) -> np.ndarray:
    k = max(3, int(max(rgb.shape[:2]) * 0.015) | 1)
    return cv2.blur(rgb, (k, k))


def squeeze_to_grey(rgb: np.ndarray) -> np.ndarray:
    return np.clip(128 + (rgb.astype(np.float32) - 128) * 0.2, 0, 255).astype(np.uint8)


# Made differently from tests/test_classify_quality.py's degradations (Gaussian blur, x0.25, +150,
# squeeze toward the image's own mean), which the thresholds were chosen on.
QUALITY_DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "box blur, 1.5 % of the long side": (box_blur, "quality/blurred"),
    "gamma 3 (darker)": (gamma(3.0), "quality/dark"),
    "gamma 0.2 (brighter)": (gamma(0.2), "quality/overexposed"),
    "contrast x0.2 about mid-grey": (squeeze_to_grey, "quality/low_contrast"),
}


def quality_section(report: Report) -> None:
    sources = HELDOUT["quality"]
    config = QualityConfig()
    originals = {s: [v.name for v in assess(load(s), config).verdicts] for s in sources}
    clean = [s for s, v in originals.items() if not v]
    rows = [
        "| degradation | expected verdict | flagged | exactly that verdict |",
        "|---|---|---:|---:|",
    ]
    for label, (fn, expected) in QUALITY_DEGRADATIONS.items():
        verdicts = [[v.name for v in assess(fn(load(s)), config).verdicts] for s in sources]
        flagged = sum(expected in v for v in verdicts)
        exact = sum(v == [expected] for v in verdicts)
        rows.append(
            f"| {label} | `{expected}` | {flagged} / {len(sources)} | {exact} / {len(sources)} |"
        )
    flagged_originals = (
        ", ".join(f"{s}: {', '.join(v)}" for s, v in originals.items() if v) or "none"
    )
    report.add(
        f"### Image quality verdicts\n\n{len(sources)} held-out pictures ({', '.join(sources)}), "
        "each degraded four ways unlike the tuning degradations.\n\n"
        + "\n".join(rows)
        + f"\n\nUndegraded, {len(clean)} of {len(sources)} get no verdict; verdicts on the others: "
        f"{flagged_originals}."
    )


async def face_section(report: Report) -> None:
    cases = face_cases()
    found = missed = spurious = 0
    per_case = []
    async with running_service(FACE) as server, grpc.aio.insecure_channel(server.address) as ch:
        stub = face_pb2_grpc.FaceServiceStub(ch)
        for case in cases:
            reply = await stub.Detect(
                face_pb2.DetectRequest(image=rgb_to_image(case.rgb)), timeout=120
            )
            boxes = [f.box for f in reply.faces]
            hit = [
                any(b.x_min <= x <= b.x_max and b.y_min <= y <= b.y_max for b in boxes)
                for x, y in case.faces
            ]
            matched = sum(hit)
            found += matched
            missed += len(case.faces) - matched
            extra = max(0, len(boxes) - matched)
            spurious += extra
            per_case.append(f"{case.name}: {len(boxes)} found, {len(case.faces)} expected")
    expected = sum(len(c.faces) for c in cases)
    report.add(
        f"### Face detection\n\nThe face service with its default detector "
        f"(`detector.kind={FaceConfig().detector.kind}`). {len(cases)} images: the "
        f"held-out face photo ({HELDOUT['face'][0]}) "
        f"on grey and pasted at 96-200 px onto {len(HELDOUT['face']) - 1} face-free held-out "
        "backgrounds, and those backgrounds alone. A face counts as found when a returned box "
        "contains its centre. One person only: this measures detection on unseen backgrounds, "
        "not across people.\n\n"
        "| faces expected | found | missed | spurious boxes |\n|---:|---:|---:|---:|\n"
        f"| {expected} | {found} | {missed} | {spurious} |\n\n"
        f"Recall {found / max(expected, 1):.2f}, precision {found / max(found + spurious, 1):.2f}. "
        "Per image: " + "; ".join(per_case) + "."
    )


async def ocr_section(report: Report, quick: bool) -> None:
    sources = HELDOUT["ocr-text-free"][: 3 if quick else None]
    with_lines: list[str] = []
    lines = images = 0
    async with running_service(OCR) as server, grpc.aio.insecure_channel(server.address) as ch:
        stub = ocr_pb2_grpc.OcrServiceStub(ch)
        for source in sources:
            rgb = load(source)
            for variant, fn in VARIANTS.items():
                image = np.ascontiguousarray(fn(rgb))
                reply = await stub.Recognize(
                    ocr_pb2.RecognizeRequest(
                        # PNG: the same pixels in a message under the services' 16 MiB limit.
                        image=common_pb2.Image(encoded=encode(image, "PNG"))
                    ),
                    timeout=300,
                )
                images += 1
                if reply.lines:
                    lines += len(reply.lines)
                    with_lines.append(
                        f"{source} {variant}: {', '.join(repr(x.text) for x in reply.lines)}"
                    )
    report.add(
        f"### OCR on pictures without text\n\n{images} images: {len(sources)} held-out text-free "
        f"pictures ({', '.join(sources)}) x {len(VARIANTS)} variants ({', '.join(VARIANTS)}). "
        f"Every line read is spurious.\n\n"
        f"Images with any line: {len(with_lines)} of {images}; lines: {lines}."
        + (" They: " + "; ".join(with_lines) + "." if with_lines else "")
    )


async def hash_section(report: Report) -> None:
    held = HELDOUT["hash"]
    distractor_sources = sorted(TUNING["hash"])
    async with running_service(HASH) as server, grpc.aio.insecure_channel(server.address) as ch:
        stub = hash_pb2_grpc.HashServiceStub(ch)

        async def code(rgb: np.ndarray, bits: int) -> np.ndarray:
            reply = await stub.Encode(
                hash_pb2.EncodeRequest(frames=[rgb_to_image(rgb)], bits=bits), timeout=120
            )
            return np.unpackbits(np.frombuffer(reply.code.code, np.uint8))

        rows = [
            "| bits | queries | recall@1 | mean rank of the original |",
            "|---:|---:|---:|---:|",
        ]
        for bits in (64, 128, 256):
            originals = [await code(load(s), bits) for s in held]
            distractors = []
            for s in distractor_sources:
                rgb = load(s)
                distractors.append(await code(rgb, bits))
                for t in COPY_TRANSFORMS.values():
                    distractors.append(await code(np.ascontiguousarray(t(rgb)), bits))
            db = np.stack(originals + distractors)
            ranks = []
            for i, s in enumerate(held):
                rgb = load(s)
                for t in COPY_TRANSFORMS.values():
                    q = await code(np.ascontiguousarray(t(rgb)), bits)
                    dist = np.count_nonzero(db != q, axis=1)
                    own = dist[i]
                    # pessimistic: every other item at the same distance ranks first
                    ranks.append(int(np.sum(np.delete(dist, i) <= own)) + 1)
            r = np.asarray(ranks)
            rows.append(f"| {bits} | {len(r)} | {np.mean(r == 1):.3f} | {r.mean():.2f} |")
    report.add(
        f"### Hash copy detection with the served projection\n\n{len(held)} held-out pictures "
        f"({', '.join(held)}) x {len(COPY_TRANSFORMS)} copies "
        f"({', '.join(COPY_TRANSFORMS)}) as queries; "
        f"the database is their originals plus all {len(distractor_sources)} training photos and "
        "their copies as distractors. Codes from the served `hash_itq` through the hash service "
        "(Encode). Ties rank pessimistically.\n\n" + "\n".join(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer OCR images (a smoke run)")
    args = parser.parse_args()
    for task in TUNING:
        check_split(task)
    report = Report("heldout", "Held-out evaluation sets: accuracy on images tuning never saw")
    report.add(
        "Sets and the split between tuning and evaluation sources: `bench/evalsets.py` "
        "(`make testdata` builds them as folders under `var/evalsets/`); the split is checked "
        "before this run and by `tests/test_evalsets.py`. The tests on the tuning images are "
        "the `regression` tests (`pytest -m regression`)."
    )
    quality_section(report)
    asyncio.run(face_section(report))
    asyncio.run(ocr_section(report, args.quick))
    asyncio.run(hash_section(report))
    report.write()


if __name__ == "__main__":
    main()
