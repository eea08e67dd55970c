"""Which services exist, where their definitions live, and which feature each serves."""

from __future__ import annotations

import importlib

from services.common.runner import ServiceDefinition

# Service name -> module holding its ``DEFINITION``.
SERVICE_MODULES = {
    "classify": "services.classify.main",
    "ocr": "services.ocr.main",
    "face": "services.face.main",
    "hash": "services.hash.main",
    "gateway": "gateway.main",
}

# Features the gateway fans out, in response order, and the service behind each.
FEATURE_SERVICES = {"classify": "classify", "ocr": "ocr", "face": "face", "hash": "hash"}


def definition(name: str) -> ServiceDefinition:
    if name not in SERVICE_MODULES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_MODULES)}")
    module = importlib.import_module(SERVICE_MODULES[name])
    return module.DEFINITION  # type: ignore[no-any-return]


def available() -> list[str]:
    """Services whose code is present in this checkout (gateway last)."""
    names = []
    for name, module in SERVICE_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue
            raise
        names.append(name)
    return names
