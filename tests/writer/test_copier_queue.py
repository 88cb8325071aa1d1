"""The forked file copiers take runs of files from one queue as they go (data.FlatCopier):
every run is copied once, by one child, whatever the number of children, and the image is
the one a single process makes."""
from __future__ import annotations

import os

import pytest

from mkerofs import BuildOptions, build
from mkerofs.writer import data


def _runs(copier: data.FlatCopier, count: int) -> list[int]:
    queue = copier._queue(list(range(count)))
    try:
        got = b""
        while chunk := os.read(queue, 4096):
            got += chunk
    finally:
        os.close(queue)
    return [int.from_bytes(got[at:at + 4], "little") for at in range(0, len(got), 4)]


@pytest.mark.parametrize("count", [2, 511, 512, 513, 60_000, 3_000_000])
def test_queue_holds_every_run_once(count):
    copier = data.FlatCopier(None, 2, None)
    starts = _runs(copier, count)
    assert starts == list(range(0, count, copier.run))
    assert copier.run >= data.FlatCopier.RUN
    assert len(starts) * 4 <= 4096            # written in one go into an empty pipe


def test_children_copy_what_one_process_copies(tmp_path):
    if not data.can_fork():
        pytest.skip("other threads run in the test process: no forked copiers")
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(700):         # more runs than children; bodies, tails, both
            size = (i * 977 + d * 4096) % 13000
            (src / f"d{d}" / f"f{i}").write_bytes(bytes([i % 251 + 1]) * size)
    forked = []
    real_fork = data.FlatCopier._fork

    def fork(self, nodes):
        real_fork(self, nodes)
        forked.append(len(self.pids))

    images = {}
    for workers in (1, 3):
        image = tmp_path / f"w{workers}.erofs"
        options = BuildOptions(workers=workers, uuid=bytes(16), timestamp=0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(data.FlatCopier, "_fork", fork)
            build(image, src, options)
        images[workers] = image.read_bytes()
    assert forked == [3]
    assert images[3] == images[1]
