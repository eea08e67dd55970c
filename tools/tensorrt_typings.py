"""Make the installed ``tensorrt-stubs`` usable by mypy: ``python -m tools.tensorrt_typings
.typings``.

TensorRT cannot be installed on our CPU machines, so the tensorrt backend is
type-checked against ``tensorrt-stubs``. That wheel's stubs cannot be used as
installed: they carry no ``py.typed`` (so mypy ignores them) and a few
generated signatures are not valid Python (a parameter named ``in``; a
parameter without a default after ones with defaults). This copies them into
a folder on mypy's path (``mypy_path`` in pyproject.toml) with those
signatures repaired, and checks that every file then parses.
"""

from __future__ import annotations

import ast
import keyword
import re
import sys
from importlib import metadata
from pathlib import Path

STUB_FILES = (
    "tensorrt/__init__.pyi",
    "tensorrt_bindings/__init__.pyi",
    "tensorrt_bindings/tensorrt.pyi",
)
_KEYWORD_PARAM = re.compile(r"([(,]\s*)(" + "|".join(keyword.kwlist) + r")(\s*:)")
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*)$")


def _split_params(text: str) -> list[str]:
    """Split a parameter list on top-level commas (types hold brackets with commas)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _fix_default_order(line: str) -> str:
    match = _DEF.match(line)
    if not match:
        return line
    params = _split_params(match.group(2))
    seen_default, fixed = False, []
    for param in params:
        bare = param.strip()
        if bare.startswith("*"):
            seen_default = False  # keyword-only parameters may lack defaults
        elif "=" in bare:
            seen_default = True
        elif seen_default:
            param = f"{param} = ..."
        fixed.append(param)
    return f"{match.group(1)}{','.join(fixed)}{match.group(3)}"


def repair(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("def "):
            line = _fix_default_order(
                _KEYWORD_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}_{m.group(3)}", line)
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(out: str) -> int:
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        print(
            "tensorrt-stubs is not installed (requirements-nodeps.txt); nothing to do",
            file=sys.stderr,
        )
        return 0
    target = Path(out)
    for name in STUB_FILES:
        source = Path(str(dist.locate_file(name)))
        text = repair(source.read_text(encoding="utf-8"))
        try:
            ast.parse(text, filename=name)
        except SyntaxError as exc:
            print(f"{name}: still not valid Python after repair: {exc}", file=sys.stderr)
            return 1
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ".typings"))
