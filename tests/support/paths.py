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


# Linux refuses paths of PATH_MAX (4096) bytes or more in system calls; deep trees have longer
# ones.  The tests reach them on their own (independently of mkerofs.util): the deepest
# directory opened one component at a time, the rest named through /proc/self/fd.
PATH_MAX = 4096


def deep_call(fn, path: PathLike, *args, **kw):
    """fn(path, *args, **kw) for a path of any length; fn must take a path (not follow a
    symlink at its end unless it would anyway): a long path is given to it as
    /proc/self/fd/<its directory>/<its last component>."""
    path = fsb(path)
    if len(path) < PATH_MAX:
        return fn(path, *args, **kw)
    head, _slash, name = path.rstrip(b"/").rpartition(b"/")
    fd = os.open(b"/" if path.startswith(b"/") else b".", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in head.split(b"/"):
            if part:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
        return fn(b"/proc/self/fd/%d/%s" % (fd, name), *args, **kw)
    finally:
        os.close(fd)
