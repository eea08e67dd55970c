"""The comparison harness every benchmark uses: alternating rounds, medians, per-round ratios.

A comparison has two or more *sides* (``Side``), each one callable that measures
one round and returns a figure (images/s, ms, ...). ``alternate`` runs them
round by round in turn (A B A B ...), so a busy moment on the machine lands on
both sides of a ratio instead of on one. ``Ratio`` turns two sides into the
per-round ratios and their median; a ratio whose rounds disagree by more than
``Report.max_spread`` makes the report *refuse*: the section then says why and
which rounds disagreed, and carries no figures. The spread is the range of the
rounds over their median; with ``TRIM_FROM`` rounds or more, the highest and the
lowest tenth of the rounds (at least one each) are left out of the range, as the
median leaves them out of the figure, so one busy moment does not void a run
whose other rounds agree, while rounds that disagree among themselves still do.
Every round is printed either way.

``Report`` writes one section of docs/benchmarks.md: the command, the machine
(CPU model, cores), the load average before and after, each side's threads,
concurrency and what its timed region holds, the figures, and only sentences
computed from the run (a goal is compared in code, never written as a verdict).
"""

from __future__ import annotations

import os
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.common import machine, write_section

# Per-round ratios may spread this much (see ``spread``) before figures are refused.
DEFAULT_MAX_SPREAD = 0.25
# From this many rounds on, the spread leaves out the highest and the lowest tenth of them.
TRIM_FROM = 5


def _trim_count(n: int) -> int:
    return max(1, n // 10) if n >= TRIM_FROM else 0


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of the rounds, the extreme tenth at each end left out from
    ``TRIM_FROM`` rounds on."""
    ordered = sorted(values)
    mid = statistics.median(ordered)
    cut = _trim_count(len(ordered))
    if cut:
        ordered = ordered[cut:-cut]
    return (ordered[-1] - ordered[0]) / mid if mid else 0.0


@dataclass(frozen=True)
class Side:
    """One side of a comparison and what exactly it measures."""

    key: str
    label: str
    threads: str  # compute threads it uses (ORT intra-op, torch, faiss, ...)
    concurrency: str  # calls in flight / client tasks / worker threads
    timed: str  # what is inside the timed region
    measure: Callable[[], float]  # one round -> the figure (its unit in Report.unit)
    unit: str = "images/s"


@dataclass(frozen=True)
class Goal:
    """A target for a figure: ``value op target`` (op is ">=" or "<=")."""

    op: str
    target: float

    def met(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target

    def sentence(self, what: str, value: float, fmt: str = "{:.2f}") -> str:
        verdict = "met" if self.met(value) else "not met"
        if fmt.format(value) == fmt.format(self.target) and not self.met(value):
            fmt = "{:.3f}"  # 0.896 is not 0.90: show the digit that decides
        return (
            f"Goal {what} {self.op} {fmt.format(self.target)}: {verdict} "
            f"({fmt.format(value)} in this run)."
        )


@dataclass(frozen=True)
class Ratio:
    """numerator side / denominator side, round by round."""

    label: str
    numerator: str
    denominator: str
    goal: Goal | None = None


@dataclass
class RatioResult:
    ratio: Ratio
    per_round: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def spread(self) -> float:
        return spread(self.per_round)


def _trimmed(values: Sequence[float]) -> str:
    cut = _trim_count(len(values))
    if not cut:
        return ""
    return (
        " (highest and lowest round left out)"
        if cut == 1
        else f" ({cut} highest and {cut} lowest rounds left out)"
    )


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def alternate(
    sides: Sequence[Side], rounds: int, warmup: bool = True, log: bool = True
) -> dict[str, list[float]]:
    """Measure every side once per round, in turn (A B A B ...); one unrecorded warm-up round
    first."""
    if warmup:
        for side in sides:
            side.measure()
    values: dict[str, list[float]] = {side.key: [] for side in sides}
    for r in range(rounds):
        for side in sides:
            value = side.measure()
            values[side.key].append(value)
            if log:
                print(f"round {r + 1}/{rounds}: {side.key} {value:.4g} {side.unit}", flush=True)
    return values


def fmt(value: float) -> str:
    """Three significant figures, without exponent noise for the usual ranges."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def command_line() -> str:
    """How this benchmark was started (module form, with its arguments)."""
    module = sys.modules["__main__"].__spec__
    name = module.name if module is not None else sys.argv[0]
    return shlex.join([".venv/bin/python", "-m", name, *sys.argv[1:]])


@dataclass
class Report:
    """One section of docs/benchmarks.md, written by one benchmark run."""

    key: str
    title: str
    max_spread: float = DEFAULT_MAX_SPREAD
    command: str = field(default_factory=command_line)
    load_before: tuple[float, float, float] = field(default_factory=load_average)
    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A benchmark stopped by SIGTERM (a timeout, make interrupted) unwinds like Ctrl-C, so the
        # `finally` blocks stop the services it started instead of leaving them running.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def add(self, text: str) -> None:
        self.parts.append(text.strip())

    def sides(self, sides: Sequence[Side]) -> None:
        """The table of what each side runs: threads, concurrency, timed region."""
        rows = [
            "| side | threads | concurrency | inside the timed region |",
            "|---|---|---|---|",
        ]
        rows += [f"| {s.label} | {s.threads} | {s.concurrency} | {s.timed} |" for s in sides]
        self.add("\n".join(rows))

    def figures(
        self,
        sides: Sequence[Side],
        values: dict[str, list[float]],
        ratios: Sequence[Ratio] = (),
    ) -> list[RatioResult]:
        """Median and rounds of every side, then every ratio with its per-round values.

        Checks each ratio's spread; a ratio over ``max_spread`` is recorded as a refusal.
        """
        rows = ["| what | median | rounds |", "|---|---:|---|"]
        for s in sides:
            rounds = ", ".join(fmt(v) for v in values[s.key])
            rows.append(
                f"| {s.label} | {fmt(statistics.median(values[s.key]))} {s.unit} | {rounds} |"
            )
        results = []
        for ratio in ratios:
            num, den = values[ratio.numerator], values[ratio.denominator]
            result = RatioResult(ratio, [a / b for a, b in zip(num, den, strict=True)])
            results.append(result)
            rows.append(
                f"| **{ratio.label}** | **{result.median:.2f}** | "
                f"{', '.join(f'{v:.2f}' for v in result.per_round)} |"
            )
            if result.spread > self.max_spread:
                self.refusals.append(
                    f"{ratio.label}: per-round ratios "
                    f"{', '.join(f'{v:.2f}' for v in result.per_round)} "
                    f"spread {result.spread:.0%} of their median{_trimmed(result.per_round)}, "
                    "more than the "
                    f"{self.max_spread:.0%} allowed"
                )
        self.add("\n".join(rows))
        goals = [r.ratio.goal.sentence(r.ratio.label, r.median) for r in results if r.ratio.goal]
        if goals:
            self.add("\n".join(goals))
        return results

    def check_spread(self, label: str, values: Sequence[float]) -> None:
        """Refuse when repeated measurements of one figure disagree by more than the spread."""
        value = spread(values)
        if value > self.max_spread:
            self.refusals.append(
                f"{label}: rounds {', '.join(fmt(v) for v in values)} spread {value:.0%} of their "
                f"median{_trimmed(values)}, more than the {self.max_spread:.0%} allowed"
            )

    def header(self) -> str:
        after = load_average()
        took = time.monotonic() - self.started
        return (
            f"Command: `{self.command}`\n"
            f"Machine: {machine()}. Load average (1/5/15 min) "
            f"{' / '.join(f'{v:.2f}' for v in self.load_before)} before, "
            f"{' / '.join(f'{v:.2f}' for v in after)} after; the run took {took:.0f} s."
        )

    def write(self) -> bool:
        """Write the section; False (and the section says why, with no figures) when refused."""
        if self.refusals:
            why = "\n".join(f"- {r}" for r in self.refusals)
            body = (
                f"{self.header()}\n\n"
                "**No figures from this run**: its rounds disagreed by more than the "
                "allowed spread "
                f"({self.max_spread:.0%}); re-run on a quieter machine or with more "
                f"rounds.\n\n{why}"
            )
            print(f"REFUSED to write figures for {self.key}:\n{why}", file=sys.stderr)
        else:
            body = self.header() + "\n\n" + "\n\n".join(self.parts)
        print(body)
        write_section(self.title, body, key=self.key)
        return not self.refusals
