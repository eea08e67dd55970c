"""Which recognised lines are believable enough to return.

Long lines are judged by recognition confidence alone. Short ones need more:
with a glyph or two the recogniser has no context, and blob-like things in
ordinary photos (a cat's eye, a cup seen from above, a row of camera knobs)
come out as "0", "8", "p" or "0000", some at confidences above 0.95. A short
line is kept only when both the recogniser and the detector are sure.

"Short" weighs characters by how much they tell: a Han character is one of
thousands of intricate shapes (about 12 bits for the 3,755 common ones,
against about 5 for a Latin letter or digit) and objects rarely imitate one,
so it counts double; "出口" is as long as "EXIT". A short piece on the same
row as a long line is judged as part of that line: the detector splits lines
at wide gaps ("03:50" and "(2/60)"), and a long line beside it is the context
a lone blob lacks. See ``LimitsConfig``.
"""

from __future__ import annotations

from services.ocr.config import LimitsConfig


def is_han(ch: str) -> bool:
    """CJK Unified Ideographs (basic block and extension A): the Chinese the recogniser reads."""
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def text_weight(text: str, cjk_char_weight: int) -> int:
    """Length with Han characters counted ``cjk_char_weight`` times; whitespace not counted."""
    return sum(cjk_char_weight if is_han(ch) else 1 for ch in text if not ch.isspace())


def is_long(text: str, limits: LimitsConfig) -> bool:
    return text_weight(text, limits.cjk_char_weight) > limits.short_line_weight


def keep_line(
    text: str,
    confidence: float,
    box_score: float,
    min_confidence: float,
    limits: LimitsConfig,
    beside_long_line: bool = False,
) -> bool:
    """``beside_long_line``: another line on the same row is long and passes ``min_confidence``."""
    weight = text_weight(text, limits.cjk_char_weight)
    if weight == 0 or confidence < min_confidence:
        return False
    if weight <= limits.short_line_weight and not beside_long_line:
        return (
            confidence >= max(min_confidence, limits.short_line_confidence)
            and box_score >= limits.short_line_box_score
        )
    return True
