"""The content taxonomy: two-level tags scored from ImageNet class probabilities.

The tags live in ``taxonomy.yaml`` beside this module (data, not code). A tag's
score is the sum of its member classes' probabilities, capped at 1; since each
class belongs to at most one tag, the tag scores of one image sum to at most 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

DEFAULT_FILE = Path(__file__).with_name("taxonomy.yaml")


class TaxonomyError(ValueError):
    """The taxonomy file is inconsistent with itself or with the model's classes."""


@dataclass(frozen=True)
class TaxonomyTag:
    name: str
    display_name_en: str
    display_name_zh: str
    classes: tuple[int, ...]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class ScoredTag:
    tag: TaxonomyTag
    score: float


class Taxonomy:
    def __init__(
        self,
        tags: list[TaxonomyTag],
        categories: dict[str, tuple[str, str]],
        excluded: frozenset[int],
        num_classes: int,
    ) -> None:
        self.tags = tags
        self.categories = categories
        self.excluded = excluded
        self.num_classes = num_classes
        self._check()
        # membership[t, c] = 1 when class c belongs to tag t: scoring is one matrix product.
        self._membership = np.zeros((len(tags), num_classes), np.float32)
        for row, tag in enumerate(tags):
            self._membership[row, list(tag.classes)] = 1.0

    def _check(self) -> None:
        owner: dict[int, str] = {}
        names = set()
        for tag in self.tags:
            if tag.name in names:
                raise TaxonomyError(f"tag {tag.name} is defined twice")
            names.add(tag.name)
            if tag.name.count("/") != 1 or tag.category not in self.categories:
                raise TaxonomyError(f"tag {tag.name} is not <declared category>/<name>")
            if not tag.classes:
                raise TaxonomyError(f"tag {tag.name} has no classes")
            for cls in tag.classes:
                if not 0 <= cls < self.num_classes:
                    raise TaxonomyError(
                        f"tag {tag.name}: class {cls} is outside 0..{self.num_classes - 1}"
                    )
                if cls in owner:
                    raise TaxonomyError(f"class {cls} is in both {owner[cls]} and {tag.name}")
                owner[cls] = tag.name
        both = self.excluded & owner.keys()
        if both:
            raise TaxonomyError(f"classes {sorted(both)} are both mapped and excluded")

    def unaccounted(self) -> list[int]:
        """Classes neither mapped to a tag nor deliberately excluded (should be none)."""
        mapped = {c for tag in self.tags for c in tag.classes}
        return [c for c in range(self.num_classes) if c not in mapped and c not in self.excluded]

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """``[..., num_classes]`` probabilities -> ``[..., num_tags]`` tag scores."""
        return np.minimum(probs @ self._membership.T, 1.0)

    def rank(self, probs: np.ndarray, min_score: float, max_tags: int) -> list[ScoredTag]:
        """The best tags of one image, highest first, at least ``min_score`` each."""
        scores = self.scores(probs)
        order = np.argsort(-scores, kind="stable")[:max_tags]
        return [ScoredTag(self.tags[i], float(scores[i])) for i in order if scores[i] >= min_score]

    def tag(self, name: str) -> TaxonomyTag:
        for tag in self.tags:
            if tag.name == name:
                return tag
        raise KeyError(name)


def load_taxonomy(path: Path | None = None, num_classes: int = 1000) -> Taxonomy:
    data = yaml.safe_load((path or DEFAULT_FILE).read_text(encoding="utf-8"))
    if data.get("score_rule") != "sum_capped":
        raise TaxonomyError(
            f"unknown score_rule {data.get('score_rule')!r} (only sum_capped is implemented)"
        )
    categories = {key: (str(v["en"]), str(v["zh"])) for key, v in data["categories"].items()}
    tags = [
        TaxonomyTag(t["name"], str(t["en"]), str(t["zh"]), tuple(int(c) for c in t["classes"]))
        for t in data["tags"]
    ]
    excluded = frozenset(int(c) for group in data.get("excluded", []) for c in group["classes"])
    return Taxonomy(tags, categories, excluded, num_classes)
