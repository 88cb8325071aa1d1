"""The tar reader on two cores (mkerofs.writer.tarsplit) watched by the tests."""
from __future__ import annotations

import os

import pytest

from mkerofs.writer import tarsplit
from mkerofs.writer.tarsplit import SplitTarReader
from support.threads import settled


def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of a few KiB, placed however near this process (as in a large tar): a test's
    tar of a few hundred KiB is split (if _SPLIT_MIN allows).  Skips the test if another
    thread runs (the reader would not fork)."""
    if not settled():
        pytest.skip("another thread runs: the reader would not fork")
    monkeypatch.setattr(tarsplit, "_MIN_GAP", 0)
    monkeypatch.setattr(tarsplit, "_POLL_FIRST", 4 << 10)
    monkeypatch.setattr(tarsplit, "_POLL_BYTES", (4 << 10, 4 << 10))


def no_children() -> bool:
    """Whether this process has no child left (running or unreaped)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def landed_parts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The list the parts go to whose entries the reader takes from its forked process.  The
    reader waits for the first part's start before it reads: else, on a busy machine, it may
    read past the starts of a small tar's parts before it learns of them, and read alone."""
    parts: list[int] = []
    entries, start = SplitTarReader._child_entries, SplitTarReader._start_child

    def noting(self, number):
        parts.append(number)
        return entries(self, number)

    def starting(self, target):
        start(self, target)
        self._take_records(wait=True)

    monkeypatch.setattr(SplitTarReader, "_child_entries", noting)
    monkeypatch.setattr(SplitTarReader, "_start_child", starting)
    return parts


@pytest.fixture(autouse=True)
def parts(monkeypatch):
    """(autouse where imported) Split tars of a few hundred KiB, in parts of a few KiB: as a
    large tar is split."""
    monkeypatch.setattr(tarsplit, "_SPLIT_MIN", 0)
    small_parts(monkeypatch)


@pytest.fixture
def landed(monkeypatch) -> list[int]:
    """The parts whose entries were taken from the forked process."""
    return landed_parts(monkeypatch)
