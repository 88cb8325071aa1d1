"""The metadata written in two processes (mkerofs.writer.build._write_contents) as the tests
force it: the forks of its part watched."""
from __future__ import annotations

import os

import pytest

from mkerofs.writer import build as build_module


def spy_metadata_forks(monkeypatch: pytest.MonkeyPatch, split_min: int = 1) -> list[int]:
    """The pids of the parts the builds fork (a second core taken to be free, a part forked
    from `split_min` inodes on).  Any other process forked through fork_copier (a copier)
    fails the test: these builds have no file data to copy."""
    pids = []
    real = build_module.fork_copier

    def fork(*args, **kwargs):
        pid = real(*args, **kwargs)
        assert kwargs.get("doing") == "writing metadata"
        pids.append(pid)
        return pid

    monkeypatch.setattr(build_module, "fork_copier", fork)
    monkeypatch.setattr(build_module, "_second_core_free", lambda: True)
    monkeypatch.setattr(build_module, "_SPLIT_MIN_INODES", split_min)
    return pids


def split_tree(root) -> None:
    """Directories (small ones with inline tails, one of several blocks), symlinks (some
    longer than their inline room), fifos, an xattr on some: no regular file to copy."""
    for d in range(40):
        sub = root / f"d{d:02}" / "inner"
        sub.mkdir(parents=True)
        for i in range(d * 3):
            os.symlink(("ab/" * 1400)[:1 + (i * 37) % 4000], sub / f"link-{i}")
        if d % 5 == 0:
            os.mkfifo(root / f"d{d:02}" / "fifo")
            os.setxattr(root / f"d{d:02}", "user.k", b"v" * d)
    big = root / "big"
    big.mkdir()
    for i in range(600):
        (big / f"entry-with-a-longer-name-{i:04}").mkdir()
