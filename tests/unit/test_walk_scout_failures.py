"""writer/walk.py: the scout's failure paths.  Whatever happens to it or to the walk, a walk
leaves no process, no descriptor behind, and gives the tree the walk alone gives (or the
walk's own error)."""
from __future__ import annotations

import errno
import os
import signal

import pytest

from mkerofs.errors import BuildError
from mkerofs.writer import walk
from mkerofs.writer.options import BuildOptions
from mkerofs.writer.walk import walk_source

from tests.unit.test_walk_scout import _shape, _source, _walked, forks  # noqa: F401


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _spy_scouts(monkeypatch) -> list[int]:
    """The pids of the scouts started."""
    pids = []
    real_init = walk._Scout.__init__

    def init(self, *args):
        real_init(self, *args)
        pids.append(self.pid)
    monkeypatch.setattr(walk._Scout, "__init__", init)
    return pids


def _assert_reaped(pids: list[int]) -> None:
    assert len(pids) == 1, "no scout was started"
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)      # (gone, not even a zombie)


def test_scout_not_forked_walks_alone(tmp_path, monkeypatch, forks):
    """fork failing (EAGAIN: too many processes) leaves the walk to list every directory."""
    monkeypatch.setattr(walk, "_SCOUT_AFTER", 1)
    src = _source(tmp_path)
    alone = _walked(src, monkeypatch, False)

    def no_fork():
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    before = _fds()
    with monkeypatch.context() as mp:
        mp.setattr(os, "fork", no_fork)
        assert _walked(src, monkeypatch, True) == alone
    assert _fds() == before


class _Stopping:
    """A progress whose `entries` raises `error` once the walk has listed `after` directories."""

    def __init__(self, error: BaseException, after: int):
        self.error, self.left = error, after

    @property
    def entries(self):
        return 0

    @entries.setter
    def entries(self, _count):
        self.left -= 1
        if self.left == 0:
            raise self.error


@pytest.mark.parametrize("error", [BuildError("the walk went wrong"), KeyboardInterrupt()])
def test_walk_stopping_stops_the_scout(tmp_path, monkeypatch, forks, error):
    monkeypatch.setattr(walk, "_SCOUT_AFTER", 1)
    src = _source(tmp_path)
    pids = _spy_scouts(monkeypatch)
    before = _fds()
    with pytest.raises(type(error)):
        walk_source(src, BuildOptions(), progress=_Stopping(error, 3))
    _assert_reaped(pids)
    assert _fds() == before


def test_scout_with_children_ignored(tmp_path, monkeypatch, forks):
    """A process that ignores SIGCHLD (its children are reaped at once, waitpid finds none):
    the same tree, no error."""
    monkeypatch.setattr(walk, "_SCOUT_AFTER", 1)
    src = _source(tmp_path)
    alone = _walked(src, monkeypatch, False)
    before = _fds()
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        root, count = walk_source(src, BuildOptions())
        scouted = _shape(root), count
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert scouted == alone
    assert _fds() == before
