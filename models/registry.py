"""Method registry: name -> Method class, imported lazily so that building one
method does not import the others."""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

from models.base import Method

_METHODS: Dict[str, Tuple[str, str]] = {
    "baseline": ("models.baseline", "BaselineCNN"),
    "ddmtl": ("models.ddmtl", "DDMTL"),
    "fersnet": ("models.fersnet", "FERSNet"),
    "sjmt": ("models.sjmt", "SJMT"),
    "multidataset": ("models.multidataset", "MultiDatasetNet"),
    "tracenorm": ("models.tracenorm", "TraceNormMTL"),
}


def method_names():
    return tuple(_METHODS)


def method_modules() -> Tuple[str, ...]:
    """The dotted module (or package) path of each method, in ``method_names`` order."""
    return tuple(module for module, _ in _METHODS.values())


def get_method(name: str) -> Method:
    """An instance of the method called ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(_METHODS)}")
    module, cls = _METHODS[name]
    return getattr(importlib.import_module(module), cls)()
