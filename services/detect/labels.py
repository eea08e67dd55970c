"""English and Chinese names of the detector's classes."""

from __future__ import annotations

DISPLAY_NAMES: dict[str, tuple[str, str]] = {
    "person": ("Person", "人"),
}


def display_names(label: str) -> tuple[str, str]:
    return DISPLAY_NAMES.get(label, (label, label))
