"""The metadata written by two processes (build._write_contents forks a part when no copier
runs and a second core is free, from 20,000 inodes on): the kernel mounts the image and it
equals its source.  The split is forced here on small inputs (threshold 1, the core taken to
be free), and the test fails if the build did not fork a part: test_meta_split.py shows such
an image is the one-process image byte for byte; this shows the kernel reads it."""
from __future__ import annotations

import os
import tarfile

import pytest

from mkerofs import BuildOptions, build
from mkerofs.writer import tarsplit
from mkerofs.writer.options import TarOptions
from support.compare import Expect, compare_trees
from support.metasplit import split_tree, spy_metadata_forks
from support.tarsplit import landed_parts, small_parts
from support.threads import settled

pytestmark = pytest.mark.kernel


@pytest.fixture
def forced_split(monkeypatch) -> list[int]:
    """The pids of the metadata parts the builds fork, the split forced on any size."""
    if not settled():
        pytest.skip("other threads run in the test process: the build writes alone")
    return spy_metadata_forks(monkeypatch)


def _tree(root) -> None:
    """split_tree's, and one small regular file (copied by the build's own process: no
    copier forked)."""
    split_tree(root)
    (root / "d05" / "file").write_bytes(b"0123456789" * 777)


def _whole_seconds(root) -> None:
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2, follow_symlinks=False)


def test_split_tree_mounts_as_its_source(tmp_path, forced_split, kernel):
    src = tmp_path / "src"
    _tree(src)
    image = tmp_path / "split.erofs"
    build(image, src, BuildOptions(uuid=bytes(16), workers=2))
    assert len(forced_split) == 1, "the build did not fork a metadata part"
    with kernel(image) as mnt:
        compare_trees(src, mnt, expect=Expect(xattrs=True))


def test_split_tar_index_mounts_as_its_source(tmp_path, monkeypatch, forced_split, kernel):
    """containerd's flow: the index, the tar appended, the layer mounted as a file; the tar's
    headers read on two cores as well (writer/tarsplit.py, forced on this small tar), with
    the forked reader's entries taken."""
    monkeypatch.setattr(tarsplit, "_SPLIT_MIN", 0)
    small_parts(monkeypatch)
    landed = landed_parts(monkeypatch)
    src = tmp_path / "src"
    _tree(src)
    for d in range(12):
        for i in range(d * 5):
            (src / f"d{d:02}" / f"f{i:03}").write_bytes(bytes([i % 251 + 1]) * ((i * 1531) % 9000))
    _whole_seconds(src)         # (tarfile's PAX mtimes keep microseconds)
    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(src, arcname=".")
    layer = tmp_path / "layer.erofs"
    build(layer, tar, BuildOptions(uuid=bytes(16), workers=2,
                                   tar=TarOptions(mode="i", aufs=True)))
    assert len(forced_split) == 1, "the build did not fork a metadata part"
    assert landed, "no entries were taken from the forked tar reader"
    with open(layer, "ab") as out:
        out.write(tar.read_bytes())
    with kernel(layer) as mnt:
        compare_trees(src, mnt)       # (tarfile stores no xattrs)
