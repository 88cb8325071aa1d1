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
from mkerofs.writer.options import TarOptions
from support.compare import Expect, compare_trees
from support.metasplit import spy_metadata_forks
from support.threads import settled

pytestmark = pytest.mark.kernel


@pytest.fixture
def forced_split(monkeypatch) -> list[int]:
    """The pids of the metadata parts the builds fork, the split forced on any size."""
    if not settled():
        pytest.skip("other threads run in the test process: the build writes alone")
    return spy_metadata_forks(monkeypatch)

def _tree(root) -> None:
    """Directories of one and of several blocks, symlinks inline and not, fifos, xattrs,
    one small regular file (copied by the build's own process: no copier forked)."""
    for d in range(24):
        sub = root / f"d{d:02}" / "inner"
        sub.mkdir(parents=True)
        for i in range(d * 3):
            os.symlink(("ab/" * 1400)[:1 + (i * 37) % 4000], sub / f"link-{i}")
        if d % 4 == 0:
            os.mkfifo(root / f"d{d:02}" / "fifo")
            os.setxattr(root / f"d{d:02}", "user.k", b"v" * (d + 1))
    big = root / "big"
    big.mkdir()
    for i in range(500):
        (big / f"entry-with-a-longer-name-{i:04}").mkdir()
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


def test_split_tar_index_mounts_as_its_source(tmp_path, forced_split, kernel):
    """containerd's flow: the index, the tar appended, the layer mounted as a file."""
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
    with open(layer, "ab") as out:
        out.write(tar.read_bytes())
    with kernel(layer) as mnt:
        compare_trees(src, mnt)       # (tarfile stores no xattrs)
