"""Results of a kit run: one JSON file and one markdown file, rewritten after every phase.

Rewriting after each phase means a run cut short (time budget, a crash, the
machine taken back) still leaves everything measured up to that point.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Table = list[dict[str, Any]]


@dataclass
class Section:
    name: str
    status: str = "running"  # ok | failed | skipped | partial
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Report:
    def __init__(self, out_dir: Path, title: str) -> None:
        self.out_dir = out_dir
        self.title = title
        self.header: dict[str, Any] = {}
        self.sections: list[Section] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def section(self, name: str) -> Iterator[Section]:
        """Run a phase; an exception marks it failed (with the traceback) and the run goes on."""
        sec = Section(name)
        self.sections.append(sec)
        start = time.monotonic()
        try:
            yield sec
            if sec.status == "running":
                sec.status = "ok"
        except Exception:
            sec.status = "failed"
            sec.error = traceback.format_exc(limit=8)
        finally:
            sec.seconds = round(time.monotonic() - start, 2)
            self.write()

    def skip(self, name: str, why: str) -> None:
        self.sections.append(Section(name, status="skipped", notes=[why]))
        self.write()

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "header": self.header,
            "sections": [asdict(s) for s in self.sections],
        }

    def write(self) -> None:
        (self.out_dir / "results.json").write_text(json.dumps(self.as_json(), indent=2) + "\n")
        (self.out_dir / "report.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.header.items()]
        for sec in self.sections:
            lines += ["", f"## {sec.name} — {sec.status} ({sec.seconds:.1f} s)", ""]
            lines += [f"- {note}" for note in sec.notes]
            lines += [f"- **{k}**: {_cell(v)}" for k, v in sec.values.items()]
            for label, table in sec.tables.items():
                lines += ["", f"**{label}**", "", *markdown_table(table)]
            if sec.error:
                lines += ["", "```", sec.error.rstrip(), "```"]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Table) -> list[str]:
    if not rows:
        return ["(no rows)"]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def guarded(fn: Callable[[], Any], default: Any = None) -> Any:
    """``fn()``, or ``default`` when it raises: for optional facts in the header."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a missing fact must not stop the run
        return default if default is not None else f"unavailable ({exc.__class__.__name__}: {exc})"
