"""bench/bench.py loaded as a module (it is a script, not part of the package)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def load_bench(name: str):
    """A fresh copy of bench/bench.py as the module `name`."""
    spec = importlib.util.spec_from_file_location(name, BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module    # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
