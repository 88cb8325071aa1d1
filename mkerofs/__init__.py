"""mkerofs: build EROFS images, a drop-in for mkfs.erofs.

The package is layered, imports pointing down only:
cli (front ends) -> writer / reader -> codecs -> ondisk (the format) -> errors, util.
Importing `mkerofs` itself loads none of them: `build` and the option types are bound on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["build", "BuildOptions", "BuildResult", "BuildReport", "BuildError", "TimeInherit",
           "__version__"]

_LAZY = {
    "build": "mkerofs.writer.build", "BuildResult": "mkerofs.writer.build",
    "BuildReport": "mkerofs.writer.report",
    "BuildOptions": "mkerofs.writer.options", "TimeInherit": "mkerofs.writer.options",
    "BuildError": "mkerofs.errors",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mkerofs' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
