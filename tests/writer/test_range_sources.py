"""Files whose bytes are ranges of another file (rebuild --clean=data: a layer image; tar input:
the tar) are copied with that file opened once while the copies run, not once a file, and
closed when they are done; the copies are what they were."""
from __future__ import annotations

import os

import pytest

from mkerofs import BuildOptions, build
from mkerofs.reader import Image
from mkerofs.writer.options import RebuildOptions

FILES = 40


@pytest.fixture
def layer(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(FILES):
        (tree / f"f{i:02}").write_bytes(bytes([i + 1]) * (5000 + 97 * i))
    image = tmp_path / "layer.erofs"
    build(image, tree, BuildOptions(timestamp=0, uuid=bytes(16), inline_data=False))
    return image


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("workers", [1, 2])
def test_layer_opened_once_and_closed(layer, tmp_path, monkeypatch, workers):
    opened = []
    real_open = os.open

    def counting_open(path, *args, **kw):
        if os.fsencode(path) == os.fsencode(layer):
            opened.append(os.getpid())
        return real_open(path, *args, **kw)
    monkeypatch.setattr(os, "open", counting_open)
    before = _open_fds()
    out = tmp_path / "clean.erofs"
    build(out, [layer], BuildOptions(rebuild=RebuildOptions(clean="data"), timestamp=0,
                                     uuid=bytes(16), workers=workers))
    monkeypatch.undo()
    assert _open_fds() == before                   # nothing left open
    # (forked copiers' opens are not seen here; with one worker, every copy is this process')
    mine = opened.count(os.getpid())
    if workers == 1:
        assert mine <= 3, f"the layer opened {mine} times for {FILES} files"
    with Image(str(out)) as img:
        for i in range(FILES):
            assert img.read(img.lookup(f"/f{i:02}")) == bytes([i + 1]) * (5000 + 97 * i)
