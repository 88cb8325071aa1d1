"""Paths as the tests handle them: everything works on bytes internally so that names that are
not valid UTF-8 survive; ``show`` gives a readable form for messages."""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, bytes, os.PathLike]


def fsb(p: PathLike) -> bytes:
    """Any path-like to bytes."""
    return os.fsencode(p)


def show(p: PathLike) -> str:
    """Readable form of a (possibly non-UTF-8) path."""
    return repr(fsb(p))[2:-1]
