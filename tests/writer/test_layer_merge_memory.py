"""What rebuild mode keeps while it merges, kept small (layers._Merged, _ImageBelow):

* a merged directory's entries are its own `entries` list, appended to as names come from
  the layers below, and sorted once at the end (no dict of names a directory held to the
  end); a directory given a name twice keeps the last one, in a whiteout's form where that
  is one, as a dict of its entries has it;
* an image's pages are given back every few directories listed (layers._DROP_EVERY), not
  only when a layer is done;
* only inodes that can be met again are remembered by nid (directories, files of more than
  one link): hard links stay one inode."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from mkerofs.reader.image import Image
from mkerofs.writer import layers
from mkerofs.writer.layers import LayerStack, merge_layers
from mkerofs.writer.walk import TreeInode
from support.run import run_mkerofs

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet", "-Enoinline_data")


def _dir(path: bytes, entries: list) -> TreeInode:
    return TreeInode(path, stat.S_IFDIR | 0o755, 0, 0, 0, 0, entries=entries)


def _file(path: bytes, size: int = 1) -> TreeInode:
    return TreeInode(path, stat.S_IFREG | 0o644, 0, 0, size, 0)


def _chardev(path: bytes) -> TreeInode:
    return TreeInode(path, stat.S_IFCHR | 0o644, 0, 0, 0, 0)


def test_merged_entries_are_sorted_unique_and_last_wins():
    first, second, lower_only = _file(b"/a"), _file(b"/a"), _file(b"/c")
    white = _chardev(b"/b")
    upper = _dir(b"/", [(b"z", _file(b"/z")), (b"a", first), (b"b", _file(b"/b0")),
                        (b"a", second), (b"b", white)])
    lower = _dir(b"/", [(b"a", _file(b"/a1")), (b"c", lower_only), (b"b", _file(b"/b1"))])
    root, _count = merge_layers([lower, upper], strip=False)
    names = [name for name, _child in root.entries]
    assert names == [b"a", b"b", b"c", b"z"]
    kids = dict(root.entries)
    assert kids[b"a"] is second                 # the last of the name
    assert stat.S_ISCHR(kids[b"b"].mode) and kids[b"b"].rdev == 0     # a whiteout, kept
    assert kids[b"c"] is lower_only             # what the upper layer does not hide
    assert root.xattrs == [(b"trusted.overlay.origin", b"")]


def test_merge_drops_pages_while_a_layer_is_read(tmp_path, monkeypatch):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for top in (lower, upper):
        for i in range(12):
            (top / f"d{i}").mkdir(parents=True)
            (top / f"d{i}" / "f").write_bytes(top.name.encode())
    images = []
    for top in (lower, upper):
        images.append(tmp_path / f"{top.name}.erofs")
        run_mkerofs(*FIXED, images[-1], top)
    drops = []
    real = Image.drop_pages
    monkeypatch.setattr(Image, "drop_pages", lambda img: (drops.append(1), real(img)))
    monkeypatch.setattr(layers, "_DROP_EVERY", 4)
    with LayerStack([str(p) for p in images]) as stack:
        root, _files = stack.merged_tree(False)
    assert [name for name, _child in root.entries] == [f"d{i}".encode() for i in
                                                        sorted(range(12), key=str)]
    # 13 directories of each image listed: 3 drops each on the way, 1 after each layer
    assert len(drops) >= 2 * 3 + 2


def test_hard_links_of_a_lower_layer_stay_one_inode(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "one").write_bytes(b"one name\n")
    (lower / "d" / "p").write_bytes(b"linked\n")
    os.link(lower / "d" / "p", lower / "d" / "q")
    os.link(lower / "d" / "p", lower / "r")
    (upper / "d").mkdir(parents=True)
    images = []
    for top in (lower, upper):
        images.append(tmp_path / f"{top.name}.erofs")
        run_mkerofs(*FIXED, images[-1], top)
    with LayerStack([str(p) for p in images]) as stack:
        root, _files = stack.merged_tree(False)
    kids = dict(root.entries)
    d = dict(kids[b"d"].entries)
    assert d[b"p"] is d[b"q"] is kids[b"r"]
    assert d[b"p"].nlink == 3 and d[b"one"].nlink == 1
    assert d[b"one"] is not d[b"p"]
