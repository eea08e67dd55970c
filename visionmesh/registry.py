"""Which services exist, where their definitions live, and which feature each serves.

The feature services come from the feature table (``visionmesh/features.py``);
the gateway is the one service that is not a feature.
"""

from __future__ import annotations

import importlib

from services.common.runner import ServiceDefinition
from visionmesh import features

GATEWAY_MODULE = "gateway.main"


def service_modules() -> dict[str, str]:
    """Service name -> module holding its ``DEFINITION`` (feature services, gateway last)."""
    modules = {spec.service: spec.service_module for spec in features.all_features()}
    modules["gateway"] = GATEWAY_MODULE
    return modules


def feature_services() -> dict[str, str]:
    """Features the gateway fans out, in response order, and the service behind each."""
    return {spec.name: spec.service for spec in features.all_features()}


def definition(name: str) -> ServiceDefinition:
    modules = service_modules()
    if name not in modules:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(modules)}")
    module = importlib.import_module(modules[name])
    return module.DEFINITION  # type: ignore[no-any-return]


def available() -> list[str]:
    """Services whose code is present in this checkout (gateway last)."""
    names = []
    for name, module in service_modules().items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue
            raise
        names.append(name)
    return names
