"""--incremental through the Python API, read back with mkerofs.reader: the base's inodes that
stay keep their nids, new ones count from the base's inode count, the base's epoch and UUID
stay (unless a UUID is given), and a missing base creates nothing."""
from __future__ import annotations

import shutil
import uuid as uuidlib
from pathlib import Path

import pytest

from mkerofs import BuildError, BuildOptions, build
from mkerofs.reader import Image
from mkerofs.writer.options import IncrementalOptions


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _opts(**kw) -> BuildOptions:
    return BuildOptions(timestamp=1000000000, **kw)


def test_kept_inodes_keep_their_nids(tmp_path):
    lower = _tree(tmp_path / "lower", {"keep": b"k", "d/sub/f": b"f", "gone": b"g"})
    upper = _tree(tmp_path / "upper", {"new": b"n" * 5000, "d/g": b"g2"})
    base = tmp_path / "base.erofs"
    build(base, lower, _opts())
    with Image.open(base) as img:
        keep_nid = img.lookup("/keep").nid
        sub_nid = img.lookup("/d/sub").nid
        base_inos, epoch, uuid = img.superblock.inos, img.epoch, img.superblock.uuid
        base_size = img.image_size
    image = tmp_path / "inc.erofs"
    shutil.copy(base, image)
    result = build(image, upper, _opts(incremental=IncrementalOptions()))
    with Image.open(image) as img:
        assert img.lookup("/keep").nid == keep_nid
        sub = img.lookup("/d/sub")
        assert sub.nid == sub_nid
        assert dict((n, nid) for n, nid, _t in img._dirents(sub))[b".."] == \
            img.lookup("/d").nid
        assert img.read(img.lookup("/new")) == b"n" * 5000
        assert img.read(img.lookup("/d/sub/f")) == b"f"
        assert img.lookup("/new").ino > base_inos
        assert img.epoch == epoch and img.superblock.uuid == uuid
        assert img.image_size > base_size and img.verify() == []
        assert sorted(n for n, _nid, _t in img.listdir(img.root)) == [b"d", b"gone", b"keep",
                                                                       b"new"]
    assert result.uuid == uuid
    given = uuidlib.uuid4().bytes
    build(image, upper, _opts(incremental=IncrementalOptions(), uuid=given))
    with Image.open(image) as img:
        assert img.superblock.uuid == given and img.verify() == []


def test_missing_base_creates_nothing(tmp_path):
    upper = _tree(tmp_path / "upper", {"a": b"a"})
    with pytest.raises(BuildError, match="does not exist"):
        build(tmp_path / "none.erofs", upper, _opts(incremental=IncrementalOptions()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upper"]


def test_opaque_directory_source_is_honoured(tmp_path):
    """(mkfs.erofs 1.9.3 ignores a directory source's trusted.overlay.opaque.)"""
    import os
    lower = _tree(tmp_path / "lower", {"opq/old": b"o"})
    upper = _tree(tmp_path / "upper", {"opq/new": b"n"})
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    build(image, upper, _opts(incremental=IncrementalOptions(ovlfs_strip=True)))
    with Image.open(image) as img:
        assert [n for n, _nid, _t in img.listdir(img.lookup("/opq"))] == [b"new"]
