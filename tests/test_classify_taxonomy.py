"""The taxonomy file: size, shape, display names and full coverage of the model's classes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.classify.taxonomy import Taxonomy, TaxonomyError, TaxonomyTag, load_taxonomy
from services.common.repository import load_entry

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return load_entry("efficientnet_lite0").labels()


def test_every_imagenet_class_is_mapped_or_deliberately_excluded(
    taxonomy: Taxonomy, labels: list[str]
) -> None:
    assert len(labels) == taxonomy.num_classes == 1000
    mapped = [c for tag in taxonomy.tags for c in tag.classes]
    # Exactly once: no class is in two tags, and none is both mapped and excluded.
    assert len(mapped) == len(set(mapped))
    assert not set(mapped) & taxonomy.excluded
    assert set(mapped) | taxonomy.excluded == set(range(1000))
    assert taxonomy.unaccounted() == []
    # Exclusions stay the exception, not a way to dodge the mapping.
    assert len(taxonomy.excluded) < 60


def test_at_least_120_two_level_tags_with_english_and_chinese_names(taxonomy: Taxonomy) -> None:
    assert len(taxonomy.tags) >= 120
    for tag in taxonomy.tags:
        assert re.fullmatch(r"[a-z]+/[a-z_]+", tag.name), tag.name
        assert tag.category in taxonomy.categories
        assert tag.display_name_en and not CJK.search(tag.display_name_en)
        assert CJK.search(tag.display_name_zh), tag.name
    for en, zh in taxonomy.categories.values():
        assert en and CJK.search(zh)


def test_short_video_targets_are_covered(taxonomy: Taxonomy, labels: list[str]) -> None:
    names = {t.name for t in taxonomy.tags}
    for wanted in (
        "animal/cat",
        "animal/dog",
        "food/dessert",
        "food/fruit",
        "drink/coffee",
        "sport/ball_game",
        "sport/soccer",
        "music/string_instrument",
        "music/guitar",
        "scene/beach",
        "scene/mountain",
        "vehicle/car",
        "toy/teddy_bear",
        "fashion/dress",
        "beauty/lipstick",
        "electronics/phone",
        "indoor/kitchen",
        "indoor/restaurant",
    ):
        assert wanted in names

    # Spot-check members by class name, not index, so a relabelled model would fail here.
    def members(tag: str) -> set[str]:
        return {labels[c].split(",")[0] for c in taxonomy.tag(tag).classes}

    assert {"tabby", "Persian cat", "Siamese cat"} <= members("animal/cat")
    assert {"acoustic guitar", "electric guitar"} <= members("music/guitar")
    assert {"ice cream", "trifle"} <= members("food/dessert")
    assert {"seashore", "sandbar"} <= members("scene/beach")
    assert {"sports car", "convertible"} <= members("vehicle/sports_car")


def test_score_is_the_capped_sum_of_member_probabilities(taxonomy: Taxonomy) -> None:
    probs = np.zeros(1000, np.float32)
    probs[[281, 282, 285]] = [0.3, 0.2, 0.1]  # three cat classes
    probs[207] = 0.25  # golden retriever
    probs[999] = 0.15  # toilet tissue
    ranked = taxonomy.rank(probs, min_score=0.05, max_tags=5)
    assert [(s.tag.name, round(s.score, 4)) for s in ranked] == [
        ("animal/cat", 0.6),
        ("animal/dog", 0.25),
        ("indoor/bathroom", 0.15),
    ]
    # The cap matters only if a caller feeds un-normalised scores.
    assert taxonomy.scores(np.full(1000, 1.0, np.float32)).max() == 1.0


def test_inconsistent_taxonomies_are_refused(tmp_path: Path) -> None:
    cats = {"animal": ("Animals", "动物")}
    with pytest.raises(TaxonomyError, match="both"):
        Taxonomy(
            [
                TaxonomyTag("animal/cat", "Cat", "猫", (1, 2)),
                TaxonomyTag("animal/dog", "Dog", "狗", (2,)),
            ],
            cats,
            frozenset(),
            10,
        )
    with pytest.raises(TaxonomyError, match="category"):
        Taxonomy([TaxonomyTag("food/cake", "Cake", "蛋糕", (1,))], cats, frozenset(), 10)
    with pytest.raises(TaxonomyError, match="outside"):
        Taxonomy([TaxonomyTag("animal/cat", "Cat", "猫", (10,))], cats, frozenset(), 10)
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({"score_rule": "max", "categories": {}, "tags": []}))
    with pytest.raises(TaxonomyError, match="score_rule"):
        load_taxonomy(bad)
