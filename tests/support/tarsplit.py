"""The tar reader on two cores (mkerofs.writer.tarsplit) watched by the tests."""
from __future__ import annotations

import pytest

from mkerofs.writer.tarsplit import SplitTarReader


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
