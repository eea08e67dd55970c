"""Batch-size buckets and optimisation-profile shapes for the GPU engines.

Pure logic (no torch, no TensorRT) so it is unit-tested everywhere:

- CUDA graphs are captured once per *bucket*; a batch runs in the smallest
  bucket that holds it, padded (rows are independent at inference).
- A TensorRT optimisation profile gives every input a (min, opt, max) shape.
  Dim 0 is the batch (1 .. the model's max batch, which the batcher never
  exceeds); other dynamic dims need ranges from the model's config.yaml:
  ``dynamic_dims: {input_name: {axis: [min, opt, max]}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.repository import TensorSpec

DEFAULT_OPT_BATCH = 32


class ShapeError(ValueError):
    """A shape or profile setting that cannot work."""


def batch_buckets(max_batch: int, configured: Sequence[int] = ()) -> list[int]:
    """Sorted bucket sizes; the largest is always ``max_batch`` so every batch fits one."""
    if max_batch < 1:
        raise ShapeError(f"max batch must be >= 1, got {max_batch}")
    if configured:
        bad = [b for b in configured if b < 1 or b > max_batch]
        if bad:
            raise ShapeError(f"batch buckets {bad} are outside 1..{max_batch}")
        sizes = set(configured)
    else:
        sizes = set()
        size = 1
        while size < max_batch:
            sizes.add(size)
            size *= 2
    sizes.add(max_batch)
    return sorted(sizes)


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``batch`` rows."""
    for size in buckets:
        if size >= batch:
            return size
    raise ShapeError(f"batch of {batch} exceeds the largest bucket {buckets[-1] if buckets else 0}")


@dataclass(frozen=True)
class ProfileShape:
    """One input's (min, opt, max) shapes in a TensorRT optimisation profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def admits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )


def opt_batch(max_batch: int, configured: int = 0) -> int:
    if configured < 0 or configured > max_batch:
        raise ShapeError(f"opt batch size {configured} is outside 1..{max_batch}")
    return configured or min(DEFAULT_OPT_BATCH, max_batch)


def optimization_profile(
    inputs: Sequence[TensorSpec],
    max_batch: int,
    opt_batch_size: int = 0,
    dynamic_dims: Mapping[str, Mapping[int | str, Sequence[int]]] | None = None,
) -> list[ProfileShape]:
    """(min, opt, max) per input: batch 1..max_batch, other dynamic dims from ``dynamic_dims``."""
    if max_batch < 1:
        raise ShapeError(f"max batch must be >= 1, got {max_batch}")
    opt_b = opt_batch(max_batch, opt_batch_size)
    ranges = dynamic_dims or {}
    profile = []
    for spec in inputs:
        lo, mid, hi = [1], [opt_b], [max_batch]
        axis_ranges = {int(k): v for k, v in (ranges.get(spec.name) or {}).items()}
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if dim >= 0:
                lo.append(dim)
                mid.append(dim)
                hi.append(dim)
                continue
            span = axis_ranges.get(axis)
            if span is None:
                raise ShapeError(
                    f"input {spec.name!r} axis {axis} is dynamic: give its [min, opt, "
                    "max] in config.yaml "
                    f"under dynamic_dims: {{{spec.name}: {{{axis}: [min, opt, max]}}}}"
                )
            if len(span) != 3 or not 1 <= span[0] <= span[1] <= span[2]:
                raise ShapeError(
                    f"input {spec.name!r} axis {axis}: range {list(span)} is not 1 <= "
                    "min <= opt <= max"
                )
            lo.append(int(span[0]))
            mid.append(int(span[1]))
            hi.append(int(span[2]))
        profile.append(ProfileShape(spec.name, tuple(lo), tuple(mid), tuple(hi)))
    return profile


def profile_fingerprint(profile: Sequence[ProfileShape]) -> str:
    """A stable text form of a profile (part of the plan cache key)."""
    return ";".join(
        f"{p.name}:{'x'.join(map(str, p.min))}/"
        f"{'x'.join(map(str, p.opt))}/{'x'.join(map(str, p.max))}"
        for p in profile
    )


def has_static_rows(specs: Sequence[TensorSpec]) -> bool:
    """True when every dim but the batch is fixed (needed to capture a CUDA graph)."""
    return all(d >= 0 for spec in specs for d in spec.shape[1:])
