"""Start the gateway where PyAV is not installed (the GPU machine's image; its wheel alone is 36
MB).

``gateway.video`` imports ``av`` at module level but uses it only inside the
video functions. Where ``av`` does not import, this launcher registers an
``av`` package whose every attribute raises ImportError, so the gateway
starts, image calls work, and a video call fails loudly naming the missing
package. Where ``av`` is installed it runs the gateway unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

MISSING = "PyAV (av) is not installed here: the GPU check runs without video support"


class _AbsentModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{MISSING} (asked for {self.__name__}.{name})")


class _AbsentAv(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "av" or fullname.startswith("av."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _AbsentModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install_if_absent(force: bool = False) -> bool:
    """Register the absent-``av`` finder when ``av`` is not importable (or ``force``); True if
    registered."""
    if not force and importlib.util.find_spec("av") is not None:
        return False
    sys.meta_path.insert(0, _AbsentAv())
    return True


def main(argv: Sequence[str] | None = None) -> None:
    install_if_absent()
    from gateway.main import DEFINITION
    from services.common.runner import run_service

    run_service(DEFINITION, argv)


if __name__ == "__main__":
    main()
