"""--incremental: a base directory the increment keeps (not reached) under a rewritten parent
gets its ".." entry patched in place, wherever that entry is: in an inline tail, in the
first data block, or in a later block (names that sort before "..", such as "!x", fill the
first); the patch changes nothing else."""
from __future__ import annotations

import shutil

import pytest

from mkerofs import BuildOptions, build
from mkerofs.reader import Image
from mkerofs.writer.incremental import _dotdot_index
from mkerofs.writer.options import IncrementalOptions


def _dotdot(img: Image, path: str) -> int:
    return dict((n, nid) for n, nid, _t in img._dirents(img.lookup(path)))[b".."]


@pytest.mark.parametrize("names, first", [
    (["f"], True),                                                  # inline tail
    ([f"file-{i:03d}-{'x' * 40}" for i in range(200)], True),       # ".." in block 0
    ([f"!{i:03d}-{'x' * 40}" for i in range(200)], False),          # ".." past block 0
], ids=["inline", "first-block", "later-block"])
def test_kept_directory_dotdot_names_the_new_parent(tmp_path, names, first):
    lower = tmp_path / "lower"
    kept = lower / "d" / "kept"
    kept.mkdir(parents=True)
    for name in names:
        (kept / name).write_bytes(b"k")
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "new").write_bytes(b"n")
    opts = BuildOptions(timestamp=1000000000)
    base = tmp_path / "base.erofs"
    build(base, lower, opts)
    with Image.open(base) as img:
        kept_nid = img.lookup("/d/kept").nid
        old_parent = _dotdot(img, "/d/kept")
        inode = img.lookup("/d/kept")
        listing = img.listdir(inode)
        block0 = img.read(inode, 0, min(inode.size, img.block_size))
        assert (_dotdot_index(block0) is not None) == first    # (where the case puts it)
    image = tmp_path / "inc.erofs"
    shutil.copy(base, image)
    build(image, upper, BuildOptions(timestamp=1000000000, incremental=IncrementalOptions()))
    with Image.open(image) as img:
        assert img.lookup("/d/kept").nid == kept_nid            # kept, not rewritten
        new_parent = img.lookup("/d").nid
        assert new_parent != old_parent
        assert _dotdot(img, "/d/kept") == new_parent
        assert img.listdir(img.lookup("/d/kept")) == listing
        assert img.verify() == []
