"""Merging per-frame answers into video-level tags and text (pure logic on hand-built protos)."""

from __future__ import annotations

import pytest

from gateway.video_merge import (
    consensus_tags,
    dedupe_text_lines,
    frame_results,
    normalise_text,
    same_text,
)
from visionmesh.v1 import classify_pb2, common_pb2, gateway_pb2, ocr_pb2


def tag(name: str, score: float, source: str = "classify") -> common_pb2.Tag:
    return common_pb2.Tag(
        name=name,
        score=score,
        source=source,
        display_name_en=name.split("/")[-1],
        box=common_pb2.Box(x_max=10, y_max=10),
    )


def frame(
    *tags: common_pb2.Tag,
    nsfw: float | None = None,
    lines: list[tuple[str, float]] = (),
    classify_error: bool = False,
) -> gateway_pb2.AnalyzeResponse:  # type: ignore[assignment]
    response = gateway_pb2.AnalyzeResponse(tags=list(tags))
    if nsfw is not None:
        response.classify.safety.CopyFrom(classify_pb2.SafetyResult(nsfw_score=nsfw))
    for text, confidence in lines:
        response.ocr.lines.append(ocr_pb2.TextLine(text=text, confidence=confidence))
    if classify_error:
        response.errors.append(
            common_pb2.FeatureError(
                feature=common_pb2.FEATURE_CLASSIFY, code="UNAVAILABLE", message="down"
            )
        )
    return response


def by_name(tags: list[common_pb2.Tag]) -> dict[str, float]:
    return {t.name: t.score for t in tags}


def test_classify_scores_are_averaged_over_frames_absent_counting_zero() -> None:
    results = [
        (0.0, frame(tag("animal/cat", 0.9), tag("scene/indoor", 0.3))),
        (1.0, frame(tag("animal/cat", 0.6))),
        (2.0, frame(tag("food/coffee", 0.9))),
    ]
    scores = by_name(consensus_tags(results))
    assert scores["animal/cat"] == pytest.approx(0.5)
    assert scores["food/coffee"] == pytest.approx(0.3)
    assert scores["scene/indoor"] == pytest.approx(0.1)


def test_tags_are_ranked_and_lose_their_boxes() -> None:
    tags = consensus_tags(
        [(0.0, frame(tag("a/low", 0.2), tag("a/high", 0.8))), (1.0, frame(tag("a/high", 0.6)))]
    )
    assert [t.name for t in tags] == ["a/high", "a/low"]
    assert not any(t.HasField("box") for t in tags)
    assert tags[0].display_name_en == "high" and tags[0].source == "classify"


def test_safety_takes_the_worst_frame_and_its_verdict() -> None:
    results = [
        (0.0, frame(tag("safety/normal", 0.95, "safety"), nsfw=0.05)),
        (1.0, frame(tag("safety/nsfw", 0.91, "safety"), nsfw=0.91)),
        (2.0, frame(tag("safety/normal", 0.99, "safety"), nsfw=0.01)),
    ]
    safety = [t for t in consensus_tags(results) if t.source == "safety"]
    assert [(t.name, round(t.score, 2)) for t in safety] == [("safety/nsfw", 0.91)]


def test_safety_without_scores_reads_the_tags() -> None:
    # No classify.safety message: "normal" at 0.7 means NSFW 0.3, which beats "normal" at 0.9 (NSFW
    # 0.1).
    results = [
        (0.0, frame(tag("safety/normal", 0.9, "safety"))),
        (1.0, frame(tag("safety/normal", 0.7, "safety"))),
    ]
    safety = [t for t in consensus_tags(results) if t.source == "safety"]
    assert [(t.name, round(t.score, 2)) for t in safety] == [("safety/normal", 0.7)]


def test_quality_is_the_fraction_of_frames() -> None:
    results = [
        (0.0, frame(tag("quality/blurred", 0.4, "quality"))),
        (1.0, frame(tag("quality/blurred", 0.9, "quality"), tag("quality/dark", 0.5, "quality"))),
        (2.0, frame()),
        (3.0, frame()),
    ]
    scores = by_name(consensus_tags(results))
    assert scores == {"quality/blurred": pytest.approx(0.5), "quality/dark": pytest.approx(0.25)}


def test_face_and_ocr_tags_take_the_maximum() -> None:
    results = [
        (0.0, frame(tag("face/present", 0.7, "face"), tag("text/present", 0.8, "ocr"))),
        (1.0, frame(tag("face/present", 0.99, "face"))),
    ]
    assert by_name(consensus_tags(results)) == {
        "face/present": pytest.approx(0.99),
        "text/present": pytest.approx(0.8),
    }


def test_frames_without_a_classify_answer_are_not_counted() -> None:
    results = [(0.0, frame(tag("animal/cat", 0.8))), (1.0, frame(classify_error=True))]
    assert by_name(consensus_tags(results))["animal/cat"] == pytest.approx(0.8)
    assert consensus_tags([(0.0, frame(classify_error=True))]) == []


def test_text_normalisation_and_similarity() -> None:
    assert normalise_text("Coffee Shop 8:00-22:00") == "coffeeshop8002200"
    assert normalise_text("ＣＯＦＦＥＥ") == "coffee"  # full-width folds to ASCII
    assert same_text(
        normalise_text("Coffee Shop 8:00-22:00"), normalise_text("Cofee Shop 8:00-22:00")
    )
    assert same_text(normalise_text("欢迎光临 咖啡店"), normalise_text("欢迎光临咖啡店"))
    assert not same_text(normalise_text("欢迎光临"), normalise_text("营业时间"))


def test_text_lines_are_deduplicated_keeping_best_occurrence_and_all_times() -> None:
    results = [
        (2.0, frame(lines=[("Coffee Shop 8:00-22:00", 0.97), ("SALE", 0.6)])),
        (0.0, frame(lines=[("欢迎光临 咖啡店", 0.90), ("Cofee Shop 8:00-22:00", 0.80)])),
        (1.0, frame(lines=[("欢迎光临咖啡店", 0.95), ("", 0.5), ("!!", 0.5)])),
    ]
    merged = dedupe_text_lines(results)
    summary = [(m.line.text, round(m.line.confidence, 2), list(m.timestamps_s)) for m in merged]
    assert summary == [
        ("欢迎光临咖啡店", 0.95, [0.0, 1.0]),
        ("Coffee Shop 8:00-22:00", 0.97, [0.0, 2.0]),
        ("!!", 0.5, [1.0]),
        ("SALE", 0.6, [2.0]),
    ]


def test_frame_results_are_in_time_order() -> None:
    a, b = frame(tag("x/a", 0.5)), frame(tag("x/b", 0.5))
    frames = frame_results([(3.0, b), (1.0, a)])
    assert [f.timestamp_s for f in frames] == [1.0, 3.0]
    assert frames[0].result == a and frames[1].result == b
