"""Merging per-frame answers into one video-level answer.

Input everywhere: ``[(timestamp_s, AnalyzeResponse), ...]``, one entry per
analysed frame (the gateway's per-image answer for that frame).

Video-level tag scores, by the tag's ``source``:

- ``classify`` — TSN average consensus: the sum of the tag's per-frame scores
  divided by the number of frames classified (a frame without the tag counts 0),
  so a label seen strongly in one frame of three scores a third.
- ``safety`` — the worst frame decides: the frame with the highest NSFW score
  (``classify.safety.nsfw_score``, or derived from its safety tag) contributes
  its safety tag — its verdict and score — as the video's.
- ``quality`` — the fraction of classified frames that carry the verdict
  ("blurred in 2 of 3 frames" scores 0.67).
- ``detect`` — the people tags of the frame with the most people (its count
  tag and score), plus ``people/close-up`` when any frame has one (best score);
  the clip's ``people_count`` is that frame's count.
- ``face``, ``ocr`` and anything else — the highest score in any frame.

Frames whose classify call failed (a ``FeatureError`` for FEATURE_CLASSIFY) are
left out of the classify/safety/quality denominators rather than counted as
"absent". Video-level tags carry no box: a region belongs to one frame, and the
per-frame results keep theirs.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.merge import ranked
from visionmesh.v1 import common_pb2, gateway_pb2, ocr_pb2

TimedResult = tuple[float, gateway_pb2.AnalyzeResponse]

# Sources computed from the classify service's answer (same denominator).
_CLASSIFY_SOURCES = ("classify", "safety", "quality")
# difflib ratio at or above which two OCR lines are the same text seen again.
TEXT_SIMILARITY = 0.8
CLOSE_UP = "people/close-up"
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _classified(results: Sequence[TimedResult]) -> list[gateway_pb2.AnalyzeResponse]:
    """Frames that have a classify answer (no classify error)."""
    return [
        r for _, r in results if not any(e.feature == common_pb2.FEATURE_CLASSIFY for e in r.errors)
    ]


def _bare(tag: common_pb2.Tag, score: float) -> common_pb2.Tag:
    """A copy of ``tag`` with a new score and no box."""
    return common_pb2.Tag(
        name=tag.name,
        score=score,
        source=tag.source,
        display_name_en=tag.display_name_en,
        display_name_zh=tag.display_name_zh,
    )


def _nsfw(response: gateway_pb2.AnalyzeResponse) -> float | None:
    """How unsafe a frame is: the service's NSFW score, else read back from its safety tag."""
    if response.HasField("classify") and response.classify.HasField("safety"):
        return response.classify.safety.nsfw_score
    for tag in response.tags:
        if tag.source == "safety":
            # Safety tags score confidence in their verdict: P(safe) for "normal".
            return 1.0 - tag.score if tag.name == "safety/normal" else tag.score
    return None


def _average(frames: list[gateway_pb2.AnalyzeResponse], source: str) -> list[common_pb2.Tag]:
    totals: dict[str, float] = {}
    first: dict[str, common_pb2.Tag] = {}
    for response in frames:
        for tag in response.tags:
            if tag.source == source:
                totals[tag.name] = totals.get(tag.name, 0.0) + tag.score
                first.setdefault(tag.name, tag)
    return [_bare(first[name], total / len(frames)) for name, total in totals.items()]


def _fraction(frames: list[gateway_pb2.AnalyzeResponse], source: str) -> list[common_pb2.Tag]:
    seen: dict[str, int] = {}
    first: dict[str, common_pb2.Tag] = {}
    for response in frames:
        for name in {t.name for t in response.tags if t.source == source}:
            seen[name] = seen.get(name, 0) + 1
        for tag in response.tags:
            if tag.source == source:
                first.setdefault(tag.name, tag)
    return [_bare(first[name], count / len(frames)) for name, count in seen.items()]


def _worst_frame_safety(frames: list[gateway_pb2.AnalyzeResponse]) -> list[common_pb2.Tag]:
    scored = [(score, i) for i, r in enumerate(frames) if (score := _nsfw(r)) is not None]
    if not scored:
        return []
    _, worst = max(scored)  # ties: the later frame, harmless either way
    return [_bare(t, t.score) for t in frames[worst].tags if t.source == "safety"]


def _maximum(results: Sequence[TimedResult], skip: Sequence[str]) -> list[common_pb2.Tag]:
    best: dict[tuple[str, str], common_pb2.Tag] = {}
    for _, response in results:
        for tag in response.tags:
            if tag.source in skip:
                continue
            key = (tag.source, tag.name)
            if key not in best or tag.score > best[key].score:
                best[key] = tag
    return [_bare(tag, tag.score) for tag in best.values()]


def people_count(results: Sequence[TimedResult]) -> int:
    """Most people counted in one frame (0 when no frame has a detect answer)."""
    return max((r.detect.people_count for _, r in results if r.HasField("detect")), default=0)


def _people(results: Sequence[TimedResult]) -> list[common_pb2.Tag]:
    frames = [r for _, r in results if r.HasField("detect")]
    if not frames:
        return []
    # Ties: the earliest frame with the most people.
    most = max(frames, key=lambda r: r.detect.people_count)
    tags = [_bare(t, t.score) for t in most.tags if t.source == "detect" and t.name != CLOSE_UP]
    close_ups = [t for r in frames for t in r.tags if t.source == "detect" and t.name == CLOSE_UP]
    if close_ups:
        best = max(close_ups, key=lambda t: t.score)
        tags.append(_bare(best, best.score))
    return tags


def consensus_tags(results: Sequence[TimedResult]) -> list[common_pb2.Tag]:
    """One ranked video-level tag list from the frames' tags (rules in the module doc)."""
    tags: list[common_pb2.Tag] = []
    classified = _classified(results)
    if classified:
        tags += _average(classified, "classify")
        tags += _worst_frame_safety(classified)
        tags += _fraction(classified, "quality")
    tags += _people(results)
    tags += _maximum(results, skip=(*_CLASSIFY_SOURCES, "detect"))
    return ranked(tags)


def normalise_text(text: str) -> str:
    """Text as compared across frames: NFKC (full-width -> ASCII), case-folded, no spaces or
    punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub("", folded) or folded.strip()


def same_text(a: str, b: str) -> bool:
    """Whether two normalised lines are one text seen twice (exact, or difflib ratio >=
    TEXT_SIMILARITY)."""
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= TEXT_SIMILARITY


@dataclass
class _TextGroup:
    key: str
    best: ocr_pb2.TextLine
    first_seen: float
    order: int
    timestamps: set[float] = field(default_factory=set)


def dedupe_text_lines(results: Sequence[TimedResult]) -> list[gateway_pb2.VideoTextLine]:
    """OCR lines of every frame, one entry per distinct text.

    Each entry keeps the highest-confidence occurrence (its polygon is in that
    frame's pixels) and every timestamp the text was seen at. A line joins the
    group whose text it matches best (``same_text``); entries come out in order
    of first appearance, then reading order within that frame.
    """
    groups: list[_TextGroup] = []
    order = 0
    for timestamp, response in sorted(results, key=lambda item: item[0]):
        for line in response.ocr.lines:
            key = normalise_text(line.text)
            if not key:
                continue
            match = max(
                (g for g in groups if same_text(key, g.key)),
                key=lambda g: difflib.SequenceMatcher(None, key, g.key, autojunk=False).ratio(),
                default=None,
            )
            if match is None:
                match = _TextGroup(key, line, timestamp, order)
                order += 1
                groups.append(match)
            elif line.confidence > match.best.confidence:
                match.best, match.key = line, key
            match.timestamps.add(timestamp)
    groups.sort(key=lambda g: (g.first_seen, g.order))
    return [
        gateway_pb2.VideoTextLine(line=g.best, timestamps_s=sorted(g.timestamps)) for g in groups
    ]


def frame_results(results: Sequence[TimedResult]) -> list[gateway_pb2.VideoFrameResult]:
    """``AnalyzeVideoResponse.frames``: each frame's full answer with its timestamp, in time
    order."""
    return [
        gateway_pb2.VideoFrameResult(timestamp_s=t, result=r)
        for t, r in sorted(results, key=lambda item: item[0])
    ]
